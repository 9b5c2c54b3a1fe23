"""A fake of fleetlab.fleet.sky_adapter.SkyAdapter, the narrow SkyPilot boundary: clusters are folders on this
machine and jobs real bash processes, run one at a time per cluster in the order they were queued, as SkyPilot's
job queue runs single-GPU jobs on a single-GPU cluster.

It keeps SkyPilot's behaviours that the executor must cope with: every launch/exec rsyncs the task's workdir into
one `~/sky_workdir` (no delete), setup runs on launch only, `exec` needs an UP cluster, the hardware of an any-of
request is decided at launch, and a preempted cluster forgets its jobs. Every task config is checked by SkyPilot's
own `sky.Task.from_yaml_config` when `validate` is on.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from fleetlab.fleet.sky_adapter import SkyFailure


class _Job:
    def __init__(self, job_id: int, name: str, run: str, envs: dict[str, str], log: Path):
        self.id, self.name, self.run, self.envs, self.log = job_id, name, run, envs, log
        self.status = "PENDING"
        self.proc: subprocess.Popen | None = None


class _Cluster:
    def __init__(self, name: str, home: Path, hardware: str):
        self.name, self.home, self.hardware = name, home, hardware
        self.status = "UP"
        self.jobs: list[_Job] = []
        self.setups = 0
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._runner, daemon=True, name=f"fake-sky-{name}")
        self.thread.start()

    def _runner(self) -> None:
        while True:
            with self.cond:
                while self.status == "UP" and not any(j.status == "PENDING" for j in self.jobs):
                    self.cond.wait(0.2)
                if self.status != "UP":
                    return
                job = next(j for j in self.jobs if j.status == "PENDING")
                env = {**os.environ, **job.envs, "HOME": str(self.home)}
                with open(job.log, "ab") as out:
                    job.proc = subprocess.Popen(["bash", "-c", job.run], cwd=self.home / "sky_workdir", env=env,
                                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True)
                job.status = "RUNNING"
            rc = job.proc.wait()
            with self.cond:
                if job.status == "RUNNING":
                    job.status = "SUCCEEDED" if rc == 0 else "FAILED"

    def kill_all(self) -> None:
        with self.cond:
            self.status = "GONE"
            for j in self.jobs:
                if j.proc is not None and j.proc.poll() is None:
                    try:
                        os.killpg(j.proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            self.cond.notify_all()


class FakeSky:
    """`hardware` maps cluster names to what their launch gets (default: the first accelerator asked for);
    `failing_setup` names clusters whose setup fails."""

    def __init__(self, root: Path, hardware: dict[str, str] | None = None, failing_setup: set[str] | None = None,
                 validate: bool = True):
        self.root = Path(root)
        self.hardware = dict(hardware or {})
        self.failing_setup = set(failing_setup or ())
        self.validate = validate
        self.clusters: dict[str, _Cluster] = {}
        self.calls: list[tuple[str, str]] = []  # (method, cluster)
        self.configs: list[dict[str, Any]] = []
        self._next_job = 0

    def _check(self, config: dict[str, Any]) -> None:
        self.configs.append(config)
        if self.validate:
            import sky

            sky.Task.from_yaml_config(copy.deepcopy(config))  # it consumes the dict it is given

    def _sync(self, cluster: _Cluster, config: dict[str, Any]) -> None:
        if config.get("workdir"):  # rsync without --delete, like SkyPilot's workdir sync
            shutil.copytree(config["workdir"], cluster.home / "sky_workdir", dirs_exist_ok=True)

    def _alive(self, name: str) -> _Cluster:
        c = self.clusters.get(name)
        if c is None or c.status != "UP":
            raise SkyFailure(f"cluster {name} is not up")
        return c

    # -- the adapter's interface ---------------------------------------------------------------------------------------

    def launch(self, config: dict[str, Any], cluster: str, *, autostop_minutes: int | None = None,
               down: bool = False) -> int | None:
        self.calls.append(("launch", cluster))
        self._check(config)
        c = self.clusters.get(cluster)
        if c is None or c.status != "UP":
            accs = (config.get("resources") or {}).get("accelerators")
            hardware = self.hardware.get(cluster) or (next(iter(accs)) if accs else "cpu")
            home = self.root / cluster / f"home{len([k for k in self.calls if k == ('launch', cluster)])}"
            (home / "sky_workdir").mkdir(parents=True, exist_ok=True)
            c = self.clusters[cluster] = _Cluster(cluster, home, hardware)
        self._sync(c, config)
        c.setups += 1
        r = subprocess.run(["bash", "-c", config.get("setup") or "true"], cwd=c.home / "sky_workdir",
                           env={**os.environ, **(config.get("envs") or {}), "HOME": str(c.home)},
                           capture_output=True, text=True)
        if r.returncode != 0 or cluster in self.failing_setup:
            raise SkyFailure(f"setup failed on {cluster} with exit code {r.returncode or 1}", setup=True)
        return None

    def exec(self, config: dict[str, Any], cluster: str) -> int:
        self.calls.append(("exec", cluster))
        self._check(config)
        c = self._alive(cluster)
        self._sync(c, config)
        with c.cond:
            self._next_job += 1
            job = _Job(self._next_job, config.get("name", ""), config["run"],
                       {k: str(v) for k, v in (config.get("envs") or {}).items()},
                       c.home / f"job-{self._next_job}.log")
            job.log.touch()
            c.jobs.append(job)
            c.cond.notify_all()
        return job.id

    def cluster_status(self, cluster: str) -> tuple[str | None, str | None]:
        c = self.clusters.get(cluster)
        if c is None or c.status != "UP":
            return None, None
        return "UP", c.hardware

    def _job(self, cluster: str, job_id: int) -> _Job | None:
        c = self.clusters.get(cluster)
        return next((j for j in c.jobs if j.id == job_id), None) if c is not None and c.status == "UP" else None

    def job_status(self, cluster: str, job_id: int) -> str | None:
        self._alive(cluster)
        job = self._job(cluster, job_id)
        return job.status if job else None

    def queue(self, cluster: str) -> list[dict[str, Any]]:
        c = self._alive(cluster)
        return [{"job_id": j.id, "name": j.name, "status": j.status} for j in c.jobs]

    def logs(self, cluster: str, job_id: int) -> str:
        self._alive(cluster)
        job = self._job(cluster, job_id)
        return job.log.read_text(errors="replace") if job else ""

    def cancel(self, cluster: str, job_id: int) -> None:
        c = self._alive(cluster)
        with c.cond:
            job = self._job(cluster, job_id)
            if job is None or job.status not in ("PENDING", "RUNNING"):
                return
            job.status = "CANCELLED"
            if job.proc is not None and job.proc.poll() is None:
                os.killpg(job.proc.pid, signal.SIGKILL)

    def down(self, cluster: str) -> None:
        self.calls.append(("down", cluster))
        c = self.clusters.pop(cluster, None)
        if c is not None:
            c.kill_all()

    # -- what tests do to it -------------------------------------------------------------------------------------------

    def preempt(self, cluster: str) -> None:
        """The cloud takes the cluster away: its processes die and it is gone from `status`."""
        c = self.clusters.pop(cluster)
        c.kill_all()
