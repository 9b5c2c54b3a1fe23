"""The local fleet: runs as subprocesses of this machine, one per slot (a CPU slot or a GPU).

Every run goes through `fleetlab.fleet._wrapper`, started in a session of its own so that it outlives the orchestrator.
The wrapper owns the run: it starts the command in its own process group, enforces the timeout and writes
`.fleetlab_run.json` / `.fleetlab_exit.json` into the run directory. This executor only launches wrappers and reads
those files and `run.log`; a restarted orchestrator re-attaches to runs from the same files.

Runs and the setup command are sandboxed (fleetlab.fleet.sandbox) when the executor is given a Sandbox: a project's
fleet always is (`[sandbox]`). Every run gets `FLEETLAB_CACHE_DIR`, a directory of its worker's own that persists
across its experiments (compiler caches), under `<state_dir>/cache/<worker>`.

    local:N      N CPU slots (workers local-0..N-1, hardware "cpu"; GPUs hidden from the runs)
    local:gpus   one slot per visible GPU (nvidia-smi, honouring CUDA_VISIBLE_DEVICES); each run sees only its GPU
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from fleetlab.errors import ConfigError, ExecutorError, SetupFailed
from fleetlab.fleet._base import Executor, Handle, RunSpec, Update, Worker
from fleetlab.fleet._wrapper import EXIT_FILE, RUN_FILE
from fleetlab.fleet.sandbox import Sandbox

LOG_FILE = "run.log"
WRAPPER_MODULE = "fleetlab.fleet._wrapper"
# Thread pools of the usual numeric libraries, each limited to `threads_per_slot` so N slots share the CPUs fairly.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "TORCH_NUM_THREADS")
MAX_PARTIAL_LINE = 64 * 1024  # a line longer than this (e.g. a progress bar redrawn with \r) is passed on in pieces
CANCEL_WAIT_S = 3.0  # how long cancel waits for the wrapper to write its exit file before killing it outright
# The directory that holds the fleetlab package: the wrapper is started there so `-m` finds it without site-packages.
PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


# ---------------------------------------------------------------------------------------------------------------------
# GPUs


def gpu_label(name: str) -> str:
    """A hardware class from an nvidia-smi GPU name: "NVIDIA H100 80GB HBM3" -> "H100", "NVIDIA GeForce RTX 4090" ->
    "RTX 4090", "NVIDIA A100-SXM4-80GB" -> "A100", "Tesla V100-SXM2-16GB" -> "V100", "NVIDIA RTX A6000" -> "RTX A6000"."""
    words = [w for w in name.replace("-", " ").split() if w not in ("NVIDIA", "GeForce", "Tesla", "Quadro")]
    if not words:
        return "gpu"
    if words[0] in ("RTX", "GTX", "TITAN") and len(words) > 1:
        keep = words[:2] + [w for w in words[2:3] if w in ("Ti", "SUPER", "Ada")]
        return " ".join(keep)
    return words[0]


def _nvidia_smi(env: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """Every GPU of the machine as (index, uuid, name), in PCI bus order; [] without nvidia-smi."""
    rows = []
    smi = shutil.which("nvidia-smi", path=env.get("PATH"))
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=index,uuid,name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=30, env=dict(env)).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in out.splitlines():
            parts = [p.strip() for p in line.split(",", 2)]
            if len(parts) == 3 and parts[0].isdigit():
                rows.append((parts[0], parts[1], parts[2]))
    return rows


def detect_gpus(env: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """The visible GPUs as (CUDA_VISIBLE_DEVICES value, hardware label), in nvidia-smi's (PCI bus) order.

    CUDA_VISIBLE_DEVICES, when set, chooses the GPUs (by index or UUID; "" or "-1" means none); nvidia-smi names them.
    """
    env = os.environ if env is None else env
    rows = _nvidia_smi(env)
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [(index, gpu_label(name)) for index, _, name in rows]
    gpus = []
    for token in (t.strip() for t in visible.split(",")):
        if not token or token.startswith("-"):
            break  # CUDA stops at the first invalid entry too
        name = next((n for i, u, n in rows if token in (i, u)), "")
        gpus.append((token, gpu_label(name) if name else "gpu"))
    return gpus


# ---------------------------------------------------------------------------------------------------------------------
# the executor


def _read_json(path: str | Path) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_our_wrapper(pid: int | None, workdir: str) -> bool:
    """True if pid is alive and is the wrapper of this workdir (a reused pid, or a zombie, has another cmdline)."""
    if not _pid_alive(pid):
        return False
    if not Path("/proc/self").is_dir():
        return True  # no procfs (macOS): the pid being alive is all we can check
    for _ in range(40):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        if args or state in (b"Z", b"X"):
            break
        time.sleep(0.005)  # a process in the middle of its exec shows an empty cmdline for a moment
    return WRAPPER_MODULE.encode() in args.split(b"\0") and workdir.encode() in args.split(b"\0")


def _parent_of(pid: int) -> int | None:
    """The parent of a live process; None if it is gone, -1 where there is no procfs to ask (macOS)."""
    if not Path("/proc/self").is_dir():
        return -1
    try:
        return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _killpg(pgid: int | None, sig: int) -> None:
    if pgid:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _kill_orphaned_run(workdir: str) -> None:
    """After its wrapper died, kill the command it left behind, so a re-queued run does not share the slot with it.

    Only a group whose leader still runs in this run's directory is killed (the group id could otherwise be another's).
    """
    pgid = (_read_json(os.path.join(workdir, RUN_FILE)) or {}).get("pgid")
    try:
        if pgid and os.readlink(f"/proc/{pgid}/cwd") == os.path.realpath(workdir):
            _killpg(pgid, signal.SIGKILL)
    except OSError:  # gone already, or no procfs to check it with
        pass


def _pidfd(pid: int) -> int | None:
    """A descriptor that stays bound to this very process (no pid reuse), readable once it ends; None if unsupported."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


class _Run:
    """What poll remembers about one run. Paths are kept as strings: poll is on the dispatch path, pathlib is slow."""

    def __init__(self, handle: Handle, proc: subprocess.Popen | None) -> None:
        self.workdir = handle.data["workdir"]
        self.wrapper_pid = handle.data.get("wrapper_pid")
        self.exit_path = os.path.join(self.workdir, EXIT_FILE)
        self.proc = proc  # the wrapper, when this executor started it (else it is watched through a pidfd)
        self.pidfd: int | None = None
        self.log = None  # the log opened for reading, once it exists
        self.partial = b""  # bytes of an unfinished last line
        self.reported = False
        self.cancelled = False

    def wrapper_alive(self) -> bool:
        if self.proc is not None:  # our own child: poll() also reaps it, so an ended wrapper never lingers as a zombie
            return self.proc.poll() is None
        if self.pidfd is not None:
            return not select.select([self.pidfd], [], [], 0)[0]
        if not _is_our_wrapper(self.wrapper_pid, self.workdir):
            return False
        self.pidfd = _pidfd(self.wrapper_pid)
        # Checked again now the pidfd pins the process: the pid could have been reused just before it was opened.
        return _is_our_wrapper(self.wrapper_pid, self.workdir)

    def read_lines(self, final: bool) -> tuple[str, ...]:
        if self.log is None:
            try:
                self.log = open(os.path.join(self.workdir, LOG_FILE), "rb", buffering=0)
            except OSError:
                return ()
        data = self.partial + (self.log.read() or b"")
        pieces = data.split(b"\n")
        self.partial = pieces.pop()
        if final or len(self.partial) > MAX_PARTIAL_LINE:
            if self.partial:
                pieces.append(self.partial)
            self.partial = b""
        return tuple(p.decode(errors="replace").rstrip("\r") for p in pieces)

    def release(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        self.proc = None


class LocalExecutor(Executor):
    """Runs experiments as wrapped subprocesses on this machine: `slots` CPU slots, or one slot per GPU in `gpus`.

    `gpus` are CUDA_VISIBLE_DEVICES values (indices or UUIDs); their hardware labels come from nvidia-smi.
    `state_dir` is where the executor's own files go (setup.log, the workers' caches); default
    `<project_root>/.fleetlab`. `sandbox` wraps every run and the setup (None: unsandboxed, as a bare library call).
    """

    name = "local"
    SUPPORTS = frozenset({"reattach", "early_stop"})

    def __init__(self, slots: int | None = None, gpus: list[str] | None = None, threads_per_slot: int = 1,
                 state_dir: Path | None = None, grace_s: float = 5.0, sandbox: Sandbox | None = None):
        if gpus:
            labels = {key: gpu_label(name) for index, uuid, name in _nvidia_smi(os.environ) for key in (index, uuid)}
            self._workers = [Worker(f"local-gpu{g}" if str(g).isdigit() else f"local-{g}",
                                    hardware=labels.get(str(g), "gpu")) for g in gpus]
            self._gpu = {w.id: str(g) for w, g in zip(self._workers, gpus)}
        else:
            slots = 1 if slots is None else slots
            if not isinstance(slots, int) or slots < 1:
                raise ConfigError(f"a local fleet needs at least one slot, not {slots!r}", key="fleet")
            self._workers = [Worker(f"local-{i}", hardware="cpu") for i in range(slots)]
            self._gpu = {}
        if threads_per_slot < 1:
            raise ConfigError(f"threads_per_slot must be at least 1, not {threads_per_slot!r}", key="threads_per_slot")
        self.threads_per_slot = threads_per_slot
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.grace_s = grace_s
        self._procs: dict[int, subprocess.Popen] = {}  # wrapper pid -> Popen, for the wrappers this instance started
        self._runs: dict[tuple[str, int], _Run] = {}
        self._prepared = False
        self.sandbox = sandbox or Sandbox("none")
        self._fingerprint: str | None = None  # the data fingerprint the setup printed (`fleetlab: data=...`)

    @classmethod
    def from_spec(cls, spec: str, project_root: Path | None = None, **kw: Any) -> "LocalExecutor":
        """`local`, `local:N` or `local:gpus`. `sandbox` is the project's `[sandbox]` table (or a Sandbox)."""
        _, _, arg = spec.partition(":")
        arg = arg.strip().lower()
        if project_root is not None and kw.get("state_dir") is None:
            kw["state_dir"] = Path(project_root) / ".fleetlab"
        if not isinstance(kw.get("sandbox"), Sandbox):
            kw["sandbox"] = Sandbox.from_settings(kw.get("sandbox"), project_root)
        if arg == "gpus":
            gpus = detect_gpus()
            if not gpus:
                why = ("CUDA_VISIBLE_DEVICES hides them all" if os.environ.get("CUDA_VISIBLE_DEVICES") is not None
                       else "nvidia-smi found none" if shutil.which("nvidia-smi") else "nvidia-smi is not installed")
                raise ExecutorError(f"--fleet local:gpus found no GPU on this machine ({why}); use local:N for N CPU "
                                    f"slots instead")
            return cls(gpus=[g for g, _ in gpus], **kw)
        if arg == "":
            return cls(slots=1, **kw)
        if not arg.isdigit() or int(arg) < 1:
            raise ConfigError(f"--fleet {spec!r} is not valid: use local:N with N a whole number of slots of at "
                              f"least 1, or local:gpus", key="fleet")
        return cls(slots=int(arg), **kw)

    # -- the interface -------------------------------------------------------------------------------------------------

    def workers(self) -> list[Worker]:
        return list(self._workers)

    def notices(self) -> list[str]:
        return [self.sandbox.notice] if self.sandbox.notice else []

    def data_fingerprint(self, worker_id: str) -> str | None:
        return self._fingerprint  # one setup serves every slot of this machine

    def prepare(self, project_root: Path, setup: str | None) -> None:
        """Run the setup command once, in project_root (in the sandbox), with its output in `.fleetlab/setup.log`."""
        if self._prepared or not setup:
            self._prepared = True
            return
        state_dir = self.state_dir or Path(project_root) / ".fleetlab"
        state_dir.mkdir(parents=True, exist_ok=True)
        log = state_dir / "setup.log"
        argv = [*self.sandbox.setup_argv(Path(project_root)), "/bin/sh", "-c", setup]
        with open(log, "wb") as out:
            rc = subprocess.run(argv, cwd=project_root, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=self._env({}, None)).returncode
        if rc != 0:
            where = (" (in the sandbox, where the project is read-only and the data cache ~/.cache writable; "
                     "[sandbox] mode = \"none\" runs it plainly)") if self.sandbox.active else ""
            raise SetupFailed(f"the setup command {setup!r} failed with exit code {rc}{where}; see {log}",
                              worker_id="local")
        from fleetlab.collect import DATA_LINE

        found = DATA_LINE.findall(log.read_text(errors="replace"))
        self._fingerprint = found[-1] if found else None
        self._prepared = True

    def submit(self, spec: RunSpec, worker: Worker) -> Handle:
        if worker.id not in {w.id for w in self._workers}:
            raise ExecutorError(f"worker {worker.id!r} is not part of this local fleet")
        workdir = Path(spec.workdir).resolve()
        if not workdir.is_dir():
            raise ExecutorError(f"the run directory {workdir} of {spec.experiment_id} does not exist")
        for stale in (EXIT_FILE, RUN_FILE):  # left by an earlier attempt of the same experiment
            (workdir / stale).unlink(missing_ok=True)
        if (workdir / LOG_FILE).exists():
            os.replace(workdir / LOG_FILE, workdir / f"{LOG_FILE}.prev")
        cache = (self.state_dir or workdir.parent) / "cache" / worker.id
        cache.mkdir(parents=True, exist_ok=True)
        sandbox = self.sandbox.run_argv(workdir, [cache.resolve()])
        argv = [sys.executable, "-E", "-S", "-m", WRAPPER_MODULE, "--workdir", str(workdir),
                "--timeout", repr(float(spec.timeout_s or 0)), "--grace", repr(float(self.grace_s)), "--",
                *([*sandbox, "/bin/sh", "-c", spec.command] if sandbox else [spec.command])]
        env = self._env({**spec.env, "FLEETLAB_CACHE_DIR": str(cache.resolve())}, self._gpu.get(worker.id, ""))
        started_at = time.time()
        try:
            with open(workdir / LOG_FILE, "ab") as log:
                proc = subprocess.Popen(argv, cwd=PACKAGE_PARENT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            raise ExecutorError(f"could not start {spec.experiment_id} on {worker.id}: {e}") from e
        self._procs[proc.pid] = proc
        return Handle(spec.experiment_id, worker.id, {"workdir": str(workdir), "wrapper_pid": proc.pid, "pgid": None,
                                                      "started_at": started_at, "worker_id": worker.id})

    def poll(self, handles: list[Handle]) -> list[Update]:
        """New complete output lines and finished runs; a handle with nothing new is left out of the answer."""
        updates = []
        for h in handles:
            run = self._run(h)
            if run.reported:
                continue
            # the run can write into its directory too: its exit file is the wrapper's word only once the wrapper ended
            exit_info = None
            if not run.wrapper_alive():
                exit_info = _read_json(run.exit_path)
                if exit_info is None:
                    _kill_orphaned_run(run.workdir)
                    exit_info = {"exit_code": -9} if run.cancelled else {"infra_failure": "the run's wrapper died"}
            lines = run.read_lines(final=exit_info is not None)
            if exit_info is None:
                if lines:
                    updates.append(Update(h.experiment_id, False, lines))
                continue
            run.reported = True
            run.release()
            self._procs.pop(run.wrapper_pid, None)
            run_info = _read_json(os.path.join(run.workdir, RUN_FILE)) or {}
            updates.append(Update(h.experiment_id, True, lines, exit_code=exit_info.get("exit_code"),
                                  timed_out=bool(exit_info.get("timed_out")),
                                  infra_failure=exit_info.get("infra_failure"),
                                  started_at=exit_info.get("started_at") or run_info.get("started_at")
                                  or h.data.get("started_at"),
                                  finished_at=exit_info.get("finished_at") or time.time()))
        return updates

    def logs(self, handle: Handle) -> str:
        try:
            return (Path(handle.data["workdir"]) / LOG_FILE).read_text(errors="replace")
        except OSError:
            return ""

    def cancel(self, handle: Handle) -> None:
        """Kill the run's process group at once, ask the wrapper to record it, and wait (briefly) until it has."""
        run = self._run(handle)
        if run.reported:
            return
        run.cancelled = True
        if not run.wrapper_alive():
            return
        try:  # the wrapper first, so it knows it was cancelled before it sees its command die
            os.kill(run.wrapper_pid, signal.SIGTERM)  # it kills the group too (also before it could tell us the pgid)
        except ProcessLookupError:
            return
        _killpg(self._pgid(handle), signal.SIGKILL)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline and run.wrapper_alive():  # it ends right after writing its exit file
            time.sleep(0.005)
        if run.wrapper_alive():
            _killpg(self._pgid(handle), signal.SIGKILL)
            os.kill(run.wrapper_pid, signal.SIGKILL)

    def reattach(self, experiment_id: str, data: dict[str, Any]) -> Handle | None:
        """A handle if the run finished meanwhile (its exit file exists) or its wrapper still runs; else None."""
        workdir = data.get("workdir")
        if not workdir:
            return None
        exit_file = Path(workdir) / EXIT_FILE
        # The exit file is looked for again after the wrapper: it may have finished between the two looks.
        if exit_file.exists() or _is_our_wrapper(data.get("wrapper_pid"), workdir) or exit_file.exists():
            return Handle(experiment_id, data.get("worker_id", "local"), dict(data))
        _kill_orphaned_run(workdir)  # the scheduler re-queues it: what is left of the old run must not compete
        return None

    def close(self) -> None:
        """Forget the runs; the wrappers keep running by design (a later orchestrator can re-attach)."""
        for run in self._runs.values():
            run.release()
        self._runs.clear()

    # -- helpers -------------------------------------------------------------------------------------------------------

    def _env(self, extra: dict[str, str], gpu: str | None) -> dict[str, str]:
        env = dict(os.environ)
        # `python` in a run's command means the interpreter fleetlab runs on (its venv, activated or not)
        bindir = os.path.dirname(sys.executable)
        if bindir and env.get("PATH", "").split(os.pathsep)[0] != bindir:
            env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        env.update({var: str(self.threads_per_slot) for var in THREAD_VARS})
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra)
        if gpu is not None:  # the slot decides which GPU a run sees ("" = none: a CPU slot's run is labelled "cpu")
            env["CUDA_VISIBLE_DEVICES"] = gpu
            if gpu:
                env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # the order nvidia-smi's indices use
        return env

    def _run(self, handle: Handle) -> _Run:
        key = (handle.experiment_id, handle.data.get("wrapper_pid") or 0)
        run = self._runs.get(key)
        if run is None:
            run = self._runs[key] = _Run(handle, self._procs.get(handle.data.get("wrapper_pid")))
        return run

    def _pgid(self, handle: Handle) -> int | None:
        """The run's process group from the wrapper's run file, believed only for a child of the wrapper: the run
        can write that file too, and must not name another process group to be killed."""
        if not handle.data.get("pgid"):
            pgid = (_read_json(Path(handle.data["workdir"]) / RUN_FILE) or {}).get("pgid")
            if isinstance(pgid, int) and _parent_of(pgid) in (handle.data.get("wrapper_pid"), -1):
                handle.data["pgid"] = pgid
        return handle.data.get("pgid")
