"""Start a session in the background and stop it from any terminal, as an agent working from a shell must.

Whether a session serves a project is read from the run lock (`.fleetlab/run.lock`, held by `fleetlab run` for its
whole life and released by the kernel when the process dies; facts.serving), so a crashed orchestrator never looks
alive. The detached process's pid and log sit beside it: `.fleetlab/run.pid`, `.fleetlab/run.log`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fleetlab.errors import FleetlabError


def _paths(project) -> tuple[Path, Path, Path]:
    d = project.state_dir
    return d / "run.lock", d / "run.pid", d / "run.log"


def serving_pid(project) -> int | None:
    """The pid of the `fleetlab run` serving this project now (-1: serving, pid not written yet), or None."""
    from fleetlab.facts import serving

    if not serving(project):
        return None
    lock, _, _ = _paths(project)
    try:
        text = lock.read_text().strip()
    except OSError:
        return -1
    return int(text) if text.isdigit() else -1


def _alive(pid: int) -> bool:
    """Running: alive and not an ended child nobody reaped yet (a zombie)."""
    from fleetlab.fleet.local import _pid_alive

    if not _pid_alive(pid):
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def detach(project, argv: list[str], ready_timeout: float = 120.0) -> tuple[int, Path]:
    """Start `fleetlab <argv>` (a run command without --detach) in its own session, output to the log file; return
    (pid, log path) once it serves the project, or raise with the log's last line if it ended first."""
    lock, pid_file, log = _paths(project)
    pid = serving_pid(project)
    if pid is not None:
        raise FleetlabError(f"a `fleetlab run` (pid {pid}) is already serving this project; stop it with "
                            "`fleetlab stop`")
    project.state_dir.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n== fleetlab {' '.join(argv)} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode())
        out.flush()
        child = subprocess.Popen([sys.executable, "-m", "fleetlab.cli", *argv], stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    tmp = pid_file.with_name(pid_file.name + ".tmp")
    tmp.write_text(f"{child.pid}\n")
    os.replace(tmp, pid_file)
    deadline = time.time() + ready_timeout
    while time.time() < deadline:
        if child.poll() is not None:
            pid_file.unlink(missing_ok=True)
            lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
            raise FleetlabError(f"the detached run ended at once (exit {child.returncode}): "
                                f"{lines[-1] if lines else 'no output'} (log: {log})")
        if serving_pid(project) == child.pid:
            return child.pid, log
        time.sleep(0.1)
    return child.pid, log  # still starting (a slow fleet): it serves once its setup is done


def stop(project, timeout: float = 120.0) -> int | None:
    """SIGTERM the serving `fleetlab run` and wait until it has ended (its runs cancelled and recorded). Returns its
    pid, or None when nothing was serving."""
    _, pid_file, _ = _paths(project)
    pid = serving_pid(project)
    if pid is None or pid < 0:
        pid_file.unlink(missing_ok=True)  # a detached run that ended on its own
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if serving_pid(project) is None and not _alive(pid):
            pid_file.unlink(missing_ok=True)
            return pid
        time.sleep(0.1)
    raise FleetlabError(f"`fleetlab run` (pid {pid}) did not stop within {timeout:g} s; `kill -KILL {pid}` ends it "
                        "(its running experiments are re-queued by the next `fleetlab run`)")


__all__ = ["serving_pid", "detach", "stop"]
