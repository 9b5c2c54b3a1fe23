"""The tiny process every local run is started through: `python -m fleetlab.fleet._wrapper --workdir DIR -- COMMAND`.

It outlives the orchestrator (the executor starts it in a new session), so a restarted orchestrator can still collect
the run; it stays outside the run's sandbox, so the files it writes are its word, not the run's. It starts
`/bin/sh -c COMMAND` (or the sandbox around it: `-- bwrap ... /bin/sh -c COMMAND`) in DIR in a process group of its
own, writes `.fleetlab_run.json` once the command is started and `.fleetlab_exit.json` (atomically) once it has
ended, enforces `--timeout` itself (SIGTERM to the group, SIGKILL after `--grace` seconds) and on SIGTERM/SIGINT/SIGHUP
kills the group the same way (a cancel). When the command ends, whatever it left behind in its group is killed too.

Its output is the run's: the executor opens `run.log` as the wrapper's stdout and stderr, and the command inherits it.
Standard library only, few imports: it sits on the critical path of every dispatch.
"""

import os
import select
import sys
import time

try:  # the C module: `signal` itself imports enum, which costs more than the rest of the wrapper's start
    import _signal as signal
except ImportError:  # pragma: no cover - other interpreters
    import signal

RUN_FILE = ".fleetlab_run.json"
EXIT_FILE = ".fleetlab_exit.json"


def write_json_atomic(path, data):
    """Write a flat dict of numbers and booleans as JSON (the json module's import would double our start time)."""
    text = ", ".join(f'"{k}": {str(v).lower() if isinstance(v, bool) else repr(v)}' for k, v in data.items())
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write("{" + text + "}\n")
    os.replace(tmp, path)


def parse_args(argv):
    """--workdir DIR [--timeout S] [--grace S] -- COMMAND | -- PROGRAM ARG... (argparse costs more to import).

    One word after `--` is a shell command; more are a program and its arguments (the sandbox, then the shell)."""
    opts = {"--workdir": None, "--timeout": "0", "--grace": "5"}
    i = 0
    while i < len(argv) and argv[i] != "--":
        if argv[i] not in opts or i + 1 >= len(argv):
            raise SystemExit(f"fleetlab wrapper: bad argument {argv[i]!r}")
        opts[argv[i]] = argv[i + 1]
        i += 2
    if opts["--workdir"] is None or i + 2 > len(argv):
        raise SystemExit("usage: python -m fleetlab.fleet._wrapper --workdir DIR [--timeout S] [--grace S] -- COMMAND")
    program = argv[i + 1:] if i + 2 < len(argv) else ["/bin/sh", "-c", argv[i + 1]]
    return opts["--workdir"], float(opts["--timeout"]), float(opts["--grace"]), program


def killpg(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


REAPED = {}  # pid -> wait status, where the platform has no waitid (macOS) and has_exited had to reap


def has_exited(pid):
    """True once the child has exited, without reaping it where possible: its zombie keeps the group id reserved."""
    if hasattr(os, "waitid"):
        try:
            return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        REAPED[pid] = status
    return bool(done)


def main(argv):
    workdir, timeout_s, grace_s, program = parse_args(argv)
    workdir = os.path.abspath(workdir)
    wrapper_pid = os.getpid()
    stop = []  # the signal that asked us to stop (a list so the handler can append without `global`)

    def on_signal(signum, _frame):
        if signum != signal.SIGCHLD and os.getpid() == wrapper_pid:  # not in the forked child before its exec
            stop.append(signum)

    # A self-pipe wakes the wait below on any handled signal: SIGCHLD (the command ended) or a stop request.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:  # the command: its own process group, in the run directory
        try:
            os.setpgid(0, 0)
            os.chdir(workdir)
            os.close(wake_r)
            os.close(wake_w)
            for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores these; the command must not inherit that
                signal.signal(sig, signal.SIG_DFL)
            os.execv(program[0], program)
        except BaseException as e:  # noqa: BLE001 - report anything and leave with the shell's "cannot run" code
            os.write(2, f"fleetlab wrapper: cannot start the command: {e}\n".encode())
        finally:
            os._exit(127)
    try:
        os.setpgid(pid, pid)  # also done in the child; whichever runs first wins, the other is a no-op or EACCES
    except OSError:
        pass
    started_at = time.time()
    write_json_atomic(os.path.join(workdir, RUN_FILE),
                      {"pid": pid, "pgid": pid, "wrapper_pid": wrapper_pid, "started_at": started_at})

    poller = select.poll()
    poller.register(wake_r, select.POLLIN)
    deadline = time.monotonic() + timeout_s if timeout_s > 0 else None
    timed_out = False
    term_at = None  # when SIGTERM went to the group
    killed = False
    while not has_exited(pid):
        now = time.monotonic()
        if term_at is None and (stop or (deadline is not None and now >= deadline)):
            timed_out = not stop
            reason = f"timed out after {timeout_s:g} s" if timed_out else f"got signal {stop[0]}"
            os.write(2, f"\n[fleetlab] the run {reason}: stopping it\n".encode())
            killpg(pid, signal.SIGTERM)
            term_at = now
        if term_at is not None and not killed and now >= term_at + grace_s:
            killpg(pid, signal.SIGKILL)
            killed = True
        waits = [1.0]
        if term_at is None and deadline is not None:
            waits.append(deadline - now)
        if term_at is not None and not killed:
            waits.append(term_at + grace_s - now)
        poller.poll(max(0.0, min(waits)) * 1000)
        try:
            os.read(wake_r, 512)
        except OSError:  # nothing to drain: the poll timed out
            pass

    killpg(pid, signal.SIGKILL)  # leftovers in the group; the zombie leader still holds the group id
    status = REAPED.pop(pid) if pid in REAPED else os.waitpid(pid, 0)[1]
    write_json_atomic(os.path.join(workdir, EXIT_FILE),
                      {"exit_code": os.waitstatus_to_exitcode(status), "timed_out": timed_out,
                       "cancelled": bool(stop) and not timed_out, "started_at": started_at,
                       "finished_at": time.time()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
