"""The SkyPilot fleet: `--fleet sky:N` (clusters gpu-01..gpu-N) or `sky:gpu-01,gpu-02`, one worker per cluster.

The pattern of the original system, made safe:
- each cluster is launched once, with the project's setup as the task's setup (`prepare` launches them all at once);
  experiments are then queued onto it with `exec`, which neither provisions nor re-runs the setup;
- every experiment runs from its own directory on the cluster. SkyPilot re-syncs the task's workdir into one
  `~/sky_workdir` on every launch/exec (rsync, no delete), so a queued job would run whatever was synced last.
  Here the workdir synced for an experiment holds one folder, `fleetlab-runs/<experiment id>/`: the syncs add up
  side by side and each run `cd`s into its own;
- the hardware of a cluster is read from its launched resources (an any-of request gets H100 or H200);
- results come from the job's log; the original experiment.yaml's `EXPERIMENT_RESULT: <id> k=v ...` lines are
  passed on as `k: v` lines too, and `EXPERIMENT_STATUS: crash` counts as a failed run;
- the timeout is enforced on the cluster (`timeout` around the command), so it counts from the run's start;
- a cluster found gone or stopped (preempted) has its runs re-queued as infrastructure failures and is relaunched by
  the next run sent to it; a cluster whose setup fails leaves the fleet (SetupFailed);
- clusters are torn down on close unless `keep_clusters` (`--keep-clusters`);
- the project's setup and every run use the project's sandbox (`[sandbox]`) on a node where bwrap works.

`[fleet.sky]` in fleetlab.toml (all optional):
    accelerators = ["H100:1", "H200:1"]   any of these (a string for one); none: CPU clusters
    cpus = "4+"                            CPUs per cluster
    infra = "k8s"                          where: a cloud, k8s, k8s/context, aws/us-east-1, ...
    image = "docker:nvcr.io/..."           the image_id
    setup = "pip install uv"               run before the project's setup
    autostop = 10                          idle minutes before a cluster stops itself
    down = true                            with autostop: tear down instead of stopping
    task = "experiment.yaml"               a task template: its resources, envs, setup and run are used
    envs = { HF_TOKEN = "..." }            extra environment for every run
    prefix = "gpu"                         names of sky:N clusters (gpu-01, ...)

Every call into SkyPilot goes through `fleetlab.fleet.sky_adapter.SkyAdapter` (or a test's fake of it); each cluster
has one thread that makes its launch/exec calls, so `submit` returns at once.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fleetlab.errors import ConfigError, ExecutorError, SetupFailed
from fleetlab.fleet._base import Executor, Handle, RunSpec, Update, Worker
from fleetlab.fleet._logtail import LogTail
from fleetlab.fleet.sandbox import Sandbox

RUNS = "fleetlab-runs"  # the folder of per-experiment directories inside ~/sky_workdir
SETUP_DIR = "fleetlab-setup"
LOG_FILE = "run.log"
POLL_INTERVAL_S = 2.0  # every status and log read is an API request: not more often than this
EXIT_LINE = "FLEETLAB_EXIT:"
TIMEOUT_LINE = "FLEETLAB_TIMED_OUT:"
ALIVE = ("UP",)
RESULT_LINE = re.compile(r"^EXPERIMENT_RESULT:\s*\S+\s+(.*)$")
STATUS_LINE = re.compile(r"^EXPERIMENT_STATUS:\s*(\w+)")
SETTINGS = {"accelerators": (list, str), "cpus": (str, int), "infra": str, "image": str, "setup": str,
            "autostop": int, "down": bool, "task": str, "envs": dict, "prefix": str}
COPY_EXCLUDES = shutil.ignore_patterns(".git", ".fleetlab", "__pycache__", ".venv", "venv", "run.log*",
                                       ".fleetlab_*.json", "sky-stage")


def check_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The [fleet.sky] table, validated: unknown keys and wrong types are ConfigErrors of one sentence."""
    for key, value in settings.items():
        if key not in SETTINGS:
            raise ConfigError(f"unknown setting fleet.sky.{key}; valid ones are: {', '.join(sorted(SETTINGS))}",
                              key=f"fleet.sky.{key}")
        if not isinstance(value, SETTINGS[key]) or (isinstance(value, bool) and SETTINGS[key] is not bool):
            raise ConfigError(f"fleet.sky.{key} has the wrong type ({type(value).__name__})", key=f"fleet.sky.{key}")
    accs = settings.get("accelerators", [])
    for acc in [accs] if isinstance(accs, str) else accs:
        if not isinstance(acc, str) or not re.fullmatch(r"[A-Za-z0-9_-]+(:\d+(\.\d+)?)?", acc):
            raise ConfigError(f"fleet.sky.accelerators entry {acc!r} is not NAME or NAME:COUNT, e.g. 'H100:1'",
                              key="fleet.sky.accelerators")
    return settings


def accelerators(value: list[str] | str | dict | None) -> dict[str, float] | None:
    """["H100:1", "H200:1"] -> {"H100": 1, "H200": 1} (SkyPilot's any-of form); None for CPU clusters."""
    if not value:
        return None
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    out = {}
    for acc in [value] if isinstance(value, str) else value:
        name, _, count = acc.partition(":")
        n = float(count or 1)
        out[name] = int(n) if n.is_integer() else n
    return out


def parse_fleet(spec: str, prefix: str = "gpu") -> list[str]:
    """`sky:N` -> [prefix-01 .. prefix-N]; `sky:a,b` -> [a, b]."""
    arg = spec.partition(":")[2].strip()
    if arg.isdigit() and int(arg) >= 1:
        return [f"{prefix}-{i:02d}" for i in range(1, int(arg) + 1)]
    names = [n.strip() for n in arg.split(",") if n.strip()]
    if not names or arg.isdigit() or any(not re.fullmatch(r"[a-z][a-z0-9-]{0,62}", n) for n in names):
        raise ConfigError(f"--fleet {spec!r} is not valid: use sky:N (N clusters) or sky:NAME,NAME,... with "
                          f"lowercase cluster names", key="fleet")
    if len(set(names)) != len(names):
        raise ConfigError(f"--fleet {spec!r} names a cluster twice", key="fleet")
    return names


def run_script(command: str, experiment_id: str, timeout_s: float, sandbox: Sandbox | None = None) -> str:
    """The task's `run`: cd into the experiment's own directory, run the command under a timeout (in the project's
    sandbox where bwrap works on the node), report its exit."""
    limit = f"timeout --kill-after=10 {timeout_s:g} " if timeout_s and timeout_s > 0 else ""
    inner = sandbox.node_script(command) if sandbox is not None else command
    return (f"cd {RUNS}/{shlex.quote(experiment_id)} || exit 97\n"
            f"{limit}bash -c {shlex.quote(inner)}\n"
            f"rc=$?\n"
            + (f'if [ "$rc" -eq 124 ]; then echo "{TIMEOUT_LINE} {timeout_s:g}"; fi\n' if limit else "")
            + f'echo "{EXIT_LINE} $rc"\n'
            f"exit $rc\n")


def translate(line: str) -> list[str]:
    """The original experiment.yaml's result line as `key: value` lines the metric patterns read."""
    m = RESULT_LINE.match(line)
    if not m:
        return []
    return [f"{k}: {v}" for k, _, v in (kv.partition("=") for kv in m.group(1).split()) if v]


class _Cluster:
    """One cluster and the single thread that makes its launch/exec calls."""

    def __init__(self, name: str):
        self.name = name
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sky-{name}")
        self.launched = False  # by this executor, up and set up
        self.hardware: str | None = None
        self.setup_error: str | None = None
        self.launches = 0


class _Run:
    __slots__ = ("future", "job_id", "tail", "reported", "cancelled", "polled_at", "status", "text")

    def __init__(self, future: Future | None, job_id: int | None = None):
        self.future = future
        self.job_id = job_id
        self.tail: LogTail | None = None
        self.reported = False
        self.cancelled = False
        self.polled_at = 0.0
        self.status: str | None = None
        self.text = ""


class SkyExecutor(Executor):
    """A pool of SkyPilot clusters, one worker each."""

    name = "sky"
    SUPPORTS = frozenset({"reattach", "early_stop", "heterogeneous"})

    def __init__(self, spec: str = "sky:1", project: Any = None, settings: dict[str, Any] | None = None,
                 adapter: Any = None, keep_clusters: bool = False, poll_interval_s: float = POLL_INTERVAL_S):
        cfg = check_settings(dict((settings or {}).get("sky") or {}))
        self.project = project
        self.cfg = cfg
        self.sandbox = Sandbox.from_settings(project.section("sandbox") if project is not None else None, here=False)
        self.template: dict[str, Any] = {}
        if cfg.get("task"):
            self.template = self._load_template(cfg["task"])
        self.keep_clusters = keep_clusters
        self.poll_interval_s = poll_interval_s
        if adapter is None:
            from fleetlab.fleet.sky_adapter import SkyAdapter

            adapter = SkyAdapter()
        self.sky = adapter
        self.accelerators = accelerators(cfg.get("accelerators")) or \
            (self.template.get("resources") or {}).get("accelerators")
        self._clusters = {n: _Cluster(n) for n in parse_fleet(spec, cfg.get("prefix", "gpu"))}
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._setup: str | None = None
        self._root: Path | None = Path(project.root) if project is not None else None

    def _load_template(self, path: str) -> dict[str, Any]:
        import yaml

        p = Path(path)
        if not p.is_absolute() and self.project is not None:
            p = Path(self.project.root) / p
        try:
            data = yaml.safe_load(p.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"fleet.sky.task {path!r} cannot be read as a task YAML: {e}", key="fleet.sky.task")
        if not isinstance(data, dict):
            raise ConfigError(f"fleet.sky.task {path!r} is not a SkyPilot task (a YAML mapping)", key="fleet.sky.task")
        return data

    # -- task configs (exactly what is launched; --dry-run writes them) ------------------------------------------------

    def _resources(self, cluster: _Cluster | None) -> dict[str, Any]:
        res = dict(self.template.get("resources") or {})
        if cluster is not None and cluster.launched and cluster.hardware:  # exec: what the cluster actually has
            res.pop("accelerators", None)
            if cluster.hardware != "cpu" and self.accelerators:
                res["accelerators"] = {cluster.hardware: self.accelerators.get(cluster.hardware, 1)}
            return res
        if self.accelerators:
            res["accelerators"] = dict(self.accelerators)
        for key, field in (("infra", "infra"), ("image", "image_id"), ("cpus", "cpus")):
            if key in self.cfg:
                res[field] = self.cfg[key]
        return res

    def _envs(self, extra: dict[str, str]) -> dict[str, str]:
        envs = {str(k): str(v) for k, v in (self.template.get("envs") or {}).items() if v is not None}
        envs.update({str(k): str(v) for k, v in (self.cfg.get("envs") or {}).items()})
        envs.update(extra)
        return envs

    def launch_config(self, setup: str | None, workdir: Path, cluster: _Cluster | None = None) -> dict[str, Any]:
        """The task that launches a cluster: provisioning plus the setup (the sky setup, then the project's)."""
        parts = [p for p in (self.template.get("setup"), self.cfg.get("setup")) if p]
        if setup:
            parts.append(f"cd {SETUP_DIR} && bash -c {shlex.quote(self.sandbox.node_script(setup, setup=True))}")
        config: dict[str, Any] = {"name": "fleetlab-setup", "workdir": str(workdir),
                                  "resources": self._resources(None), "envs": self._envs({}),
                                  "setup": "\n".join(parts) or "true"}
        return config

    def exec_config(self, spec: RunSpec, workdir: Path, cluster: _Cluster | None = None) -> dict[str, Any]:
        """The task that runs one experiment on a launched cluster, from its own directory."""
        command = self.template.get("run") or spec.command
        return {"name": self._job_name(spec.experiment_id), "workdir": str(workdir),
                "resources": self._resources(cluster), "envs": self._envs(dict(spec.env)),
                "run": run_script(command, spec.experiment_id, spec.timeout_s, self.sandbox)}

    @staticmethod
    def _job_name(experiment_id: str) -> str:
        return f"fleetlab-{experiment_id}"

    def _stage(self, spec: RunSpec, root: Path) -> Path:
        """A workdir holding only fleetlab-runs/<id>/ (the snapshot): synced next to earlier ones on the cluster."""
        dest = root / spec.experiment_id / RUNS / spec.experiment_id
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        src = Path(spec.workdir)
        if src.is_dir():
            shutil.copytree(src, dest, ignore=COPY_EXCLUDES)
        elif self.project is not None:  # a dry run: nothing is snapshotted yet
            from fleetlab import workspace

            workspace.make_snapshot(self.project, dest, spec.files)
        else:
            dest.mkdir(parents=True)
        return root / spec.experiment_id

    def _stage_setup(self, root: Path, cluster: str) -> Path:
        dest = root / "_setup" / cluster / SETUP_DIR  # one per cluster: they launch at the same time
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if self._root is not None:
            shutil.copytree(self._root, dest, ignore=COPY_EXCLUDES)
        else:
            dest.mkdir()
        return dest.parent

    def _stage_root(self, spec: RunSpec | None = None) -> Path:
        if self.project is not None:
            return Path(self.project.state_dir) / "sky-stage"
        return Path(spec.workdir).resolve().parent.parent / "sky-stage" if spec else Path.cwd() / ".sky-stage"

    # -- cluster lifecycle (runs on the cluster's own thread) ----------------------------------------------------------

    def _ensure_launched(self, cluster: _Cluster, stage_root: Path) -> None:
        if cluster.launched:
            return
        if cluster.setup_error:
            raise SetupFailed(cluster.setup_error, worker_id=cluster.name)
        from fleetlab.fleet.sky_adapter import SkyFailure

        config = self.launch_config(self._setup, self._stage_setup(stage_root, cluster.name), cluster)
        cluster.launches += 1
        try:
            self.sky.launch(config, cluster.name, autostop_minutes=self.cfg.get("autostop"),
                            down=bool(self.cfg.get("down")))
        except SkyFailure as e:
            if e.setup:
                cluster.setup_error = f"{cluster.name} left the fleet: {e}"
                raise SetupFailed(cluster.setup_error, worker_id=cluster.name) from e
            raise
        _, hardware = self.sky.cluster_status(cluster.name)
        cluster.hardware = hardware or cluster.hardware
        cluster.launched = True

    def _start(self, cluster: _Cluster, spec: RunSpec, stage_root: Path, run: _Run) -> int:
        self._ensure_launched(cluster, stage_root)
        job_id = self.sky.exec(self.exec_config(spec, self._stage(spec, stage_root), cluster), cluster.name)
        if run.cancelled:
            self.sky.cancel(cluster.name, job_id)
        return job_id

    # -- the interface -------------------------------------------------------------------------------------------------

    def workers(self) -> list[Worker]:
        guess = "cpu" if not self.accelerators else (next(iter(self.accelerators)) if len(self.accelerators) == 1
                                                     else "gpu")
        return [Worker(c.name, hardware=c.hardware or guess) for c in self._clusters.values() if not c.setup_error]

    def prepare(self, project_root: Path, setup: str | None) -> None:
        """Launch every cluster at once (setup included) and read the hardware each got."""
        self._root = Path(project_root)
        self._setup = setup
        stage_root = self._stage_root()
        futures = {c.name: c.pool.submit(self._ensure_launched, c, stage_root) for c in self._clusters.values()}
        errors = []
        for name, fut in futures.items():
            try:
                fut.result()
            except ExecutorError as e:
                errors.append(str(e))
                if not isinstance(e, SetupFailed):
                    self._clusters[name].setup_error = f"{name} could not be launched: {e}"
        if errors and not self.workers():
            raise SetupFailed(f"no cluster could be launched: {errors[0]}", worker_id="sky")

    def submit(self, spec: RunSpec, worker: Worker) -> Handle:
        cluster = self._clusters.get(worker.id)
        if cluster is None:
            raise ExecutorError(f"worker {worker.id!r} is not a cluster of this SkyPilot fleet")
        if cluster.setup_error:
            raise SetupFailed(cluster.setup_error, worker_id=worker.id)
        run = _Run(None)
        run.future = cluster.pool.submit(self._start, cluster, spec, self._stage_root(spec), run)
        key = f"{worker.id}/{spec.experiment_id}/{time.time_ns()}"
        self._runs[key] = run
        return Handle(spec.experiment_id, worker.id, {"cluster": worker.id, "key": key,
                                                      "job_name": self._job_name(spec.experiment_id),
                                                      "workdir": str(spec.workdir), "submitted_at": time.time()})

    def poll(self, handles: list[Handle]) -> list[Update]:
        updates = []
        gone: dict[str, bool] = {}
        for h in handles:
            run = self._run(h)
            if run.reported:
                continue
            cluster = self._clusters[h.data["cluster"]]
            if run.job_id is None:
                if run.future is None and run.cancelled:
                    run.reported = True
                    updates.append(Update(h.experiment_id, True, exit_code=-15, finished_at=time.time()))
                    continue
                if run.future is None or not run.future.done():
                    continue
                try:
                    run.job_id = run.future.result()
                except ExecutorError as e:
                    run.reported = True
                    cluster.launched = False
                    updates.append(Update(h.experiment_id, True, infra_failure=f"could not start on {cluster.name}: "
                                                                                f"{e}"))
                    continue
                h.data["job_id"] = run.job_id
            now = time.monotonic()
            if now - run.polled_at < self.poll_interval_s and not run.cancelled:
                continue
            run.polled_at = now
            update = self._poll_one(h, run, cluster, gone)
            if update is not None:
                updates.append(update)
        return updates

    def _poll_one(self, h: Handle, run: _Run, cluster: _Cluster, gone: dict[str, bool]) -> Update | None:
        from fleetlab.fleet.sky_adapter import JOB_FINAL, SkyFailure

        try:
            status = self.sky.job_status(cluster.name, run.job_id)
        except SkyFailure:
            status = None
        if status is None or status == "FAILED_DRIVER":  # the job or its cluster may be gone: look at the cluster
            if cluster.name not in gone:
                try:
                    cstatus, _ = self.sky.cluster_status(cluster.name)
                except SkyFailure:
                    cstatus = "UNKNOWN"
                gone[cluster.name] = cstatus not in ALIVE and cstatus != "UNKNOWN"
            if gone[cluster.name]:
                cluster.launched = False  # the next run sent to it relaunches it
                run.reported = True
                return Update(h.experiment_id, True, self._lines(h, run, final=True, fetch=False),
                              infra_failure=f"cluster {cluster.name} was preempted or went down")
            if status is None:
                return None
        final = status in JOB_FINAL
        lines = self._lines(h, run, final)
        if not final:
            return Update(h.experiment_id, False, lines) if lines else None
        run.reported = True
        text = run.text
        exit_code = _last_int(text, EXIT_LINE)
        if exit_code is None:
            exit_code = 0 if status == "SUCCEEDED" else (-15 if status == "CANCELLED" else 1)
        verdict = [m.group(1) for m in map(STATUS_LINE.match, text.splitlines()) if m]
        if exit_code == 0 and verdict and verdict[-1].lower() != "done":
            exit_code = 1  # the original experiment.yaml reports a crash this way and exits 0
        if run.cancelled and exit_code == 0 and status == "CANCELLED":
            exit_code = -15
        return Update(h.experiment_id, True, lines, exit_code=exit_code, timed_out=TIMEOUT_LINE in text,
                      finished_at=time.time())

    def _lines(self, h: Handle, run: _Run, final: bool, fetch: bool = True) -> tuple[str, ...]:
        if fetch:
            try:
                run.text = self.sky.logs(h.data["cluster"], run.job_id)
            except ExecutorError:
                pass
        if run.tail is None:
            run.tail = LogTail(os.path.join(h.data["workdir"], LOG_FILE))
        out = []
        for p in run.tail.feed(run.text, final):
            cut = min((p.index(m) for m in (TIMEOUT_LINE, EXIT_LINE) if m in p), default=None)
            if cut is not None:  # the script's own line (glued to the output when that ended without a newline)
                if cut == 0:
                    continue
                p = p[:cut]
            out.append(p)
            out.extend(translate(p))
        return tuple(out)

    def logs(self, handle: Handle) -> str:
        run = self._runs.get(handle.data.get("key", ""))
        text = run.text if run is not None else ""
        if run is not None and run.job_id is not None:
            try:
                text = self.sky.logs(handle.data["cluster"], run.job_id)
            except ExecutorError:
                pass
        extra = [t for line in text.splitlines() for t in translate(line)]
        return text + ("\n" + "\n".join(extra) + "\n" if extra else "")

    def cancel(self, handle: Handle) -> None:
        run = self._run(handle)
        if run.reported or run.cancelled:
            return
        run.cancelled = True
        if run.job_id is None and run.future is not None and run.future.cancel():
            run.future = None  # never started: poll reports it cancelled
            return
        if run.job_id is not None:
            try:
                self.sky.cancel(handle.data["cluster"], run.job_id)
            except ExecutorError:
                pass

    def reattach(self, experiment_id: str, data: dict[str, Any]) -> Handle | None:
        cluster = self._clusters.get(data.get("cluster", ""))
        if cluster is None:
            return None
        try:
            status, hardware = self.sky.cluster_status(cluster.name)
            if status not in ALIVE:
                return None
            job = next((j for j in reversed(self.sky.queue(cluster.name)) if j["name"] == data.get("job_name")), None)
        except ExecutorError:
            return None
        if job is None:
            return None
        cluster.launched, cluster.hardware = True, hardware
        key = f"{cluster.name}/{experiment_id}/reattached"
        self._runs[key] = _Run(None, job_id=job["job_id"])
        return Handle(experiment_id, cluster.name, {**data, "key": key, "job_id": job["job_id"]})

    def dry_run(self, specs: list[tuple[RunSpec, Worker]], out_dir: Path) -> list[Path]:
        """A task YAML per launch (one per cluster used) and per exec (one per experiment), as SkyPilot reads them."""
        import yaml

        out_dir.mkdir(parents=True, exist_ok=True)
        stage = out_dir / "workdirs"
        paths = []
        setup = self.project.setup if self.project is not None else self._setup
        for name in dict.fromkeys(w.id for _, w in specs):
            p = out_dir / f"launch-{name}.yaml"
            config = self.launch_config(setup or None, self._stage_setup(stage, name))
            p.write_text(yaml.safe_dump(config, sort_keys=False))
            paths.append(p)
        for spec, worker in specs:
            p = out_dir / f"{spec.experiment_id}.exec-{worker.id}.yaml"
            config = self.exec_config(spec, self._stage(spec, stage), None)
            p.write_text(yaml.safe_dump(config, sort_keys=False))
            paths.append(p)
        return paths

    def close(self) -> None:
        """Tear the clusters down (all at once) unless keep_clusters; stop the cluster threads."""
        launched = [c for c in self._clusters.values() if c.launches]
        if not self.keep_clusters and launched:
            downs = [c.pool.submit(self.sky.down, c.name) for c in launched]
            for fut in downs:
                try:
                    fut.result()
                except ExecutorError:
                    pass
            for c in launched:
                c.launched = False
        for c in self._clusters.values():
            c.pool.shutdown(wait=False, cancel_futures=True)

    # -- helpers -------------------------------------------------------------------------------------------------------

    def _run(self, handle: Handle) -> _Run:
        key = handle.data.get("key", "")
        run = self._runs.get(key)
        if run is None:
            run = self._runs[key] = _Run(None, job_id=handle.data.get("job_id"))
        return run


def _last_int(text: str, prefix: str) -> int | None:
    found = re.findall(re.escape(prefix) + r"\s*(-?\d+)", text)
    return int(found[-1]) if found else None
