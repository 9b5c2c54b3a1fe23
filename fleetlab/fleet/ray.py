"""The Ray fleet: `--fleet ray:http://HOST:8265`, one Ray job per experiment through Ray's Jobs API.

Every alive node of the cluster gives workers: one per GPU on a GPU node, one per `cpus_per_run` CPUs otherwise.
A worker's hardware class is its node's `accelerator_type:<NAME>` resource (Ray sets it on GPU nodes; a custom one
works too); a node with GPUs and no such resource is "gpu", one without GPUs "cpu".

A run is a job whose `working_dir` is the experiment's snapshot (so no two runs share files), pinned to its worker's
node with the `ray.io/node-id` label and holding one GPU (or one CPU slot) as entrypoint resources. The project's
setup runs once per node in `prepare`; a node whose setup fails is taken out of the fleet with its reason. The
timeout is enforced here (stop_job once a run has been RUNNING for timeout_s). A job that fails because its node
died (Ray reports JOB_SUPERVISOR_ACTOR_DIED) is an infrastructure failure: the scheduler re-queues it.

Runs and setup run in the project's sandbox (`[sandbox]`, fleetlab.fleet.sandbox) on every node where bwrap works.
The setup's `fleetlab: data=...` line is its node's data fingerprint.

A cluster with Ray's token authentication (on by default since Ray 2.52 for clusters that `ray start` or `ray.init`
made) is reached with its token: `[fleet.ray] token` or `token_file`, else $RAY_AUTH_TOKEN, else the file
$RAY_AUTH_TOKEN_PATH names, else the file Ray writes, ~/.ray/auth_token (`ray get-auth-token` prints it on the head).

`[fleet.ray]` in fleetlab.toml (all optional):
    address = "http://HOST:8265"   used when --fleet is plain `ray`
    token = "..."                   the cluster's authentication token (or token_file = "path/to/it")
    cpus_per_run = 1                CPUs a CPU run holds (and the size of a CPU slot)
    gpus_per_run = 1                GPUs a GPU run holds
    max_slots_per_node = 0          cap on workers per node (0: no cap)
    setup_timeout_s = 3600          how long the setup of one node may take
    env = { NAME = "value" }        extra environment for every run
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

from fleetlab.errors import ConfigError, ExecutorError, SetupFailed
from fleetlab.fleet._base import Executor, Handle, RunSpec, Update, Worker
from fleetlab.fleet._logtail import LogTail

LOG_FILE = "run.log"  # the job's output, mirrored into the run directory as it arrives (what `fleetlab show --log` reads)
POLL_INTERVAL_S = 0.5  # the scheduler polls every 50 ms; the Jobs API is asked at most this often
NODES_INTERVAL_S = 2.0  # how often node liveness is refreshed while runs are in flight
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
AGENT_WAIT_S = 30.0  # how long a submit waits for the head's job agent to come up before it counts as refused
# Ray's error types that mean the infrastructure, not the experiment, failed
INFRA_ERRORS = ("JOB_SUPERVISOR_ACTOR_DIED", "JOB_SUPERVISOR_ACTOR_UNSCHEDULABLE", "JOB_SUPERVISOR_ACTOR_START_TIMEOUT",
                "JOB_SUPERVISOR_ACTOR_UNKNOWN_FAILURE")
SETTINGS = {"address": str, "cpus_per_run": (int, float), "gpus_per_run": (int, float), "max_slots_per_node": int,
            "setup_timeout_s": (int, float), "env": dict, "token": str, "token_file": str}
EXCLUDES = [".git", ".fleetlab", "__pycache__", ".venv", "venv", f"{LOG_FILE}*"]
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
NODE_LABEL = "ray.io/node-id"
# Ray writes lines of its own into a job's log ("<time>\tINFO job_manager.py:581 -- Runtime env is setting up.",
# "Running entrypoint for job <id>: <command>"), not always before the command's output: poll leaves them out.
RAY_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\t[A-Z]+ job_manager\.py:\d+ -- |Running entrypoint for job "
                      r"fleetlab-)")


def check_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The [fleet.ray] table, validated: unknown keys and wrong types are ConfigErrors of one sentence."""
    for key, value in settings.items():
        if key not in SETTINGS:
            raise ConfigError(f"unknown setting fleet.ray.{key}; valid ones are: {', '.join(sorted(SETTINGS))}",
                              key=f"fleet.ray.{key}")
        if not isinstance(value, SETTINGS[key]) or isinstance(value, bool):
            raise ConfigError(f"fleet.ray.{key} has the wrong type ({type(value).__name__})", key=f"fleet.ray.{key}")
    for key in ("cpus_per_run", "gpus_per_run"):
        if key in settings and settings[key] <= 0:
            raise ConfigError(f"fleet.ray.{key} must be positive, not {settings[key]!r}", key=f"fleet.ray.{key}")
    return settings


def auth_token(cfg: dict[str, Any], env: dict[str, str] | None = None) -> tuple[str | None, list[str]]:
    """(the cluster's authentication token or None, the places looked at): fleet.ray.token, fleet.ray.token_file,
    then Ray's own order: $RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH names, ~/.ray/auth_token."""
    env = os.environ if env is None else env
    if cfg.get("token_file"):
        try:
            return Path(cfg["token_file"]).expanduser().read_text().strip() or None, ["fleet.ray.token_file"]
        except OSError as e:
            raise ConfigError(f"fleet.ray.token_file {cfg['token_file']!r} cannot be read ({e.strerror})",
                              key="fleet.ray.token_file") from None
    home = Path(env.get("HOME") or Path.home())
    sources = [("fleet.ray.token", cfg.get("token")), ("$RAY_AUTH_TOKEN", env.get("RAY_AUTH_TOKEN"))]
    for name, path in (("$RAY_AUTH_TOKEN_PATH", env.get("RAY_AUTH_TOKEN_PATH")),
                       ("~/.ray/auth_token", str(home / ".ray" / "auth_token"))):
        try:
            sources.append((name, Path(path).expanduser().read_text() if path else None))
        except OSError:
            sources.append((name, None))
    token = next((value.strip() for _, value in sources if value and value.strip()), None)
    return token, [name for name, _ in sources]


def node_hardware(resources: dict[str, float]) -> str:
    """A node's hardware class: its `accelerator_type:<NAME>` resource, else "gpu" with GPUs, else "cpu"."""
    for key in resources:
        if key.startswith("accelerator_type:"):
            return key.partition(":")[2]
    return "gpu" if resources.get("GPU", 0) > 0 else "cpu"


class _Node:
    __slots__ = ("id", "hardware", "gpus", "cpus", "alive", "setup_error", "fingerprint")

    def __init__(self, node_id: str, resources: dict[str, float]):
        self.id = node_id
        self.hardware = node_hardware(resources)
        self.gpus = resources.get("GPU", 0.0)
        self.cpus = resources.get("CPU", 0.0)
        self.alive = True
        self.setup_error: str | None = None
        self.fingerprint: str | None = None  # the data fingerprint its setup printed


class _Job:
    """What poll remembers about one job."""

    __slots__ = ("tail", "running_since", "reported", "cancelled", "timed_out", "last")

    def __init__(self) -> None:
        self.tail: LogTail | None = None  # the job's log, read whole each time
        self.running_since: float | None = None
        self.reported = False
        self.cancelled = False
        self.timed_out = False
        self.last: Any = None  # the latest JobDetails


class RayExecutor(Executor):
    """Experiments as Ray jobs on an existing cluster, reached through its dashboard address."""

    name = "ray"
    SUPPORTS = frozenset({"reattach", "early_stop", "heterogeneous"})

    def __init__(self, spec: str = "ray", project: Any = None, settings: dict[str, Any] | None = None,
                 client: Any = None, keep_clusters: bool = False, poll_interval_s: float = POLL_INTERVAL_S):
        cfg = check_settings(dict((settings or {}).get("ray") or {}))
        address = spec.partition(":")[2].strip() or cfg.get("address") or os.environ.get("RAY_ADDRESS", "")
        if not address:
            raise ConfigError("--fleet ray needs the cluster's dashboard address, e.g. ray:http://HOST:8265",
                              key="fleet")
        if "://" not in address:
            address = f"http://{address}"
        self.address = address
        self.cpus_per_run = float(cfg.get("cpus_per_run", 1))
        self.gpus_per_run = float(cfg.get("gpus_per_run", 1))
        self.max_slots = int(cfg.get("max_slots_per_node", 0))
        self.setup_timeout_s = float(cfg.get("setup_timeout_s", 3600))
        self.extra_env = {str(k): str(v) for k, v in (cfg.get("env") or {}).items()}
        self.poll_interval_s = poll_interval_s
        from fleetlab.fleet.sandbox import Sandbox

        self.sandbox = Sandbox.from_settings(project.section("sandbox") if project is not None else None, here=False)
        self._token, self._looked = auth_token(cfg)
        self._headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        self._state: Any = None  # the State API client, made with the first listing of the nodes
        self._client = client if client is not None else self._connect()
        self._jobs: dict[str, _Job] = {}  # submission id -> state
        self._nodes: dict[str, _Node] = {}
        self._nodes_at = 0.0
        self._polled_at = 0.0
        self._refresh_nodes(force=True)
        if not self._workers():
            raise ExecutorError(f"the Ray cluster at {self.address} has no node with a free CPU or GPU to run on")

    # -- cluster -------------------------------------------------------------------------------------------------------

    def _connect(self) -> Any:
        from ray.job_submission import JobSubmissionClient

        try:
            return JobSubmissionClient(self.address, headers=dict(self._headers) or None)
        except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
            raise ExecutorError(self._why(e)) from e

    def _why(self, e: Exception) -> str:
        """One sentence for a failure to talk to the cluster, naming what is missing when it is the token."""
        text = str(e)
        if "uthentication" not in text and "401" not in text and "403" not in text:
            first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
            return f"cannot reach the Ray cluster at {self.address}: {first}"
        if self._token is None:
            return (f"the Ray cluster at {self.address} requires an authentication token and none was found (looked "
                    f"at {', '.join(self._looked)}): set RAY_AUTH_TOKEN or [fleet.ray] token to the cluster's token "
                    f"(`ray get-auth-token` on its head prints it)")
        return (f"the Ray cluster at {self.address} refused the authentication token fleetlab sent: set "
                f"RAY_AUTH_TOKEN or [fleet.ray] token to the cluster's own (`ray get-auth-token` on its head)")

    def _refresh_nodes(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._nodes_at < NODES_INTERVAL_S:
            return
        from ray.util.state.api import StateApiClient
        from ray.util.state.common import ListApiOptions, StateResource

        try:
            if self._state is None:
                self._state = StateApiClient(self.address, headers={"Content-Type": "application/json",
                                                                    **self._headers})
            nodes = self._state.list(StateResource.NODES, options=ListApiOptions(detail=True),
                                     raise_on_missing_output=False)
        except Exception as e:  # noqa: BLE001
            if force:
                raise ExecutorError(self._why(e).replace("cannot reach", "cannot list the nodes of")) from e
            return  # a passing hiccup while runs are in flight: keep what we knew
        self._nodes_at = time.monotonic()
        seen = set()
        for n in nodes:
            seen.add(n.node_id)
            node = self._nodes.get(n.node_id)
            if node is None and n.state == "ALIVE":
                node = self._nodes[n.node_id] = _Node(n.node_id, dict(n.resources_total or {}))
            if node is not None:
                node.alive = n.state == "ALIVE"
        for node_id, node in self._nodes.items():
            if node_id not in seen:
                node.alive = False

    def _slots(self, node: _Node) -> int:
        n = int(node.gpus // self.gpus_per_run) if node.gpus > 0 else int(node.cpus // self.cpus_per_run)
        return min(n, self.max_slots) if self.max_slots else n

    def _workers(self) -> list[Worker]:
        return [Worker(f"ray-{node.id[:8]}-{i}", hardware=node.hardware)
                for node in self._nodes.values() if node.alive and node.setup_error is None
                for i in range(self._slots(node))]

    def _node_of(self, worker_id: str) -> _Node | None:
        prefix = worker_id.split("-")[1] if worker_id.count("-") >= 2 else ""
        return next((n for n in self._nodes.values() if n.id.startswith(prefix)), None) if prefix else None

    def _resources(self, node: _Node) -> dict[str, Any]:
        if node.gpus > 0:
            return {"entrypoint_num_gpus": self.gpus_per_run, "entrypoint_num_cpus": 0}
        return {"entrypoint_num_cpus": self.cpus_per_run}

    def job_spec(self, spec: RunSpec, worker: Worker, node_id: str, submission_id: str) -> dict[str, Any]:
        """The exact keyword arguments of JobSubmissionClient.submit_job for one run (also what --dry-run writes)."""
        node = self._nodes.get(node_id)
        env = {var: str(max(1, int(self.cpus_per_run))) for var in THREAD_VARS}
        env.update({"PYTHONUNBUFFERED": "1", **self.extra_env, **spec.env})
        return {"submission_id": submission_id, "entrypoint": self.sandbox.node_script(spec.command),
                "runtime_env": {"working_dir": str(Path(spec.workdir).resolve()), "excludes": EXCLUDES,
                                "env_vars": env},
                **(self._resources(node) if node else {"entrypoint_num_cpus": self.cpus_per_run}),
                "entrypoint_label_selector": {NODE_LABEL: node_id},
                "metadata": {"fleetlab_experiment": spec.experiment_id, "fleetlab_worker": worker.id}}

    # -- the interface -------------------------------------------------------------------------------------------------

    def workers(self) -> list[Worker]:
        return self._workers()

    def data_fingerprint(self, worker_id: str) -> str | None:
        node = self._node_of(worker_id)
        return node.fingerprint if node is not None else None

    def prepare(self, project_root: Path, setup: str | None) -> None:
        """Run the setup once on every node, all nodes at once; a node whose setup fails leaves the fleet."""
        if not setup:
            return
        started = {}
        for node in self._nodes.values():
            if not node.alive or node.setup_error is not None or not self._slots(node):
                continue
            sid = f"fleetlab-setup-{node.id[:8]}-{uuid.uuid4().hex[:6]}"
            self._client.submit_job(submission_id=sid, entrypoint=self.sandbox.node_script(setup, setup=True),
                                    **self._resources(node),
                                    runtime_env={"working_dir": str(Path(project_root).resolve()),
                                                 "excludes": EXCLUDES, "env_vars": dict(self.extra_env)},
                                    entrypoint_label_selector={NODE_LABEL: node.id})
            started[sid] = node
        deadline = time.monotonic() + self.setup_timeout_s
        while started:
            for sid, node in list(started.items()):
                status = str(self._client.get_job_status(sid))
                status = status.rpartition(".")[2]
                if status not in TERMINAL and time.monotonic() < deadline:
                    continue
                del started[sid]
                if status == "SUCCEEDED":
                    from fleetlab.collect import DATA_LINE

                    found = DATA_LINE.findall(self._client.get_job_logs(sid))
                    node.fingerprint = found[-1] if found else None
                if status != "SUCCEEDED":
                    if status not in TERMINAL:
                        self._client.stop_job(sid)
                    tail = " | ".join(self._client.get_job_logs(sid).strip().splitlines()[-3:])
                    node.setup_error = (f"the setup {setup!r} failed on Ray node {node.id[:8]} ({status.lower()}): "
                                        f"{tail or 'no output'}")
            time.sleep(0.2 if started else 0)
        failed = [n.setup_error for n in self._nodes.values() if n.setup_error]
        if failed and not self._workers():
            raise SetupFailed(failed[0], worker_id="ray")

    def submit(self, spec: RunSpec, worker: Worker) -> Handle:
        node = self._node_of(worker.id)
        if node is None:
            raise ExecutorError(f"worker {worker.id!r} is not part of this Ray fleet")
        if node.setup_error:
            raise SetupFailed(node.setup_error, worker_id=worker.id)
        if not node.alive:
            raise SetupFailed(f"Ray node {node.id[:8]} of worker {worker.id} is gone", worker_id=worker.id)
        workdir = Path(spec.workdir).resolve()
        if not workdir.is_dir():
            raise ExecutorError(f"the run directory {workdir} of {spec.experiment_id} does not exist")
        if (workdir / LOG_FILE).exists():  # an earlier attempt of the same experiment
            os.replace(workdir / LOG_FILE, workdir / f"{LOG_FILE}.prev")
        sid = f"fleetlab-{spec.experiment_id}-{uuid.uuid4().hex[:8]}"
        # a freshly started head (or a loaded one) answers 500 "No available agent" until its job agent is up:
        # that is a wait, not a refusal
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                self._client.submit_job(**self.job_spec(spec, worker, node.id, sid))
                break
            except Exception as e:  # noqa: BLE001 - the SDK raises RuntimeError for every HTTP failure
                if "No available agent" in str(e) and time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
                raise ExecutorError(f"Ray refused {spec.experiment_id} on {worker.id}: {e}") from e
        self._jobs[sid] = _Job()
        return Handle(spec.experiment_id, worker.id, {"submission_id": sid, "node_id": node.id,
                                                      "workdir": str(workdir), "timeout_s": float(spec.timeout_s or 0),
                                                      "submitted_at": time.time(), "worker_id": worker.id})

    def poll(self, handles: list[Handle]) -> list[Update]:
        now = time.monotonic()
        if now - self._polled_at < self.poll_interval_s and not any(self._job(h).cancelled for h in handles):
            return []
        self._polled_at = now
        self._refresh_nodes()
        updates = []
        for h in handles:
            job = self._job(h)
            if job.reported:
                continue
            sid = h.data["submission_id"]
            try:
                info = self._client.get_job_info(sid)
            except Exception:  # noqa: BLE001 - unreachable for a moment, or the job is gone
                info = None
            job.last = info
            status = str(getattr(info, "status", "") or "").rpartition(".")[2] or "GONE"
            node = self._nodes.get(h.data.get("node_id", ""))
            infra = None
            if status == "RUNNING" and job.running_since is None:
                job.running_since = time.time()
            timeout_s = h.data.get("timeout_s") or 0
            if status == "RUNNING" and timeout_s and not job.timed_out and not job.cancelled \
                    and time.time() - job.running_since > timeout_s:
                job.timed_out = True
                self._stop(sid)
            if status not in TERMINAL:
                if node is not None and not node.alive:
                    self._stop(sid)
                    infra = f"Ray node {node.id[:8]} died"
                elif status == "GONE":
                    infra = "the Ray job disappeared (the head node restarted?)"
                else:
                    lines = self._read(h, job, final=False)
                    if lines:
                        updates.append(Update(h.experiment_id, False, lines))
                    continue
            elif status == "FAILED" and (getattr(info, "error_type", None) in INFRA_ERRORS
                                         or (node is not None and not node.alive)):
                infra = f"Ray node {(info.driver_node_id or h.data.get('node_id', ''))[:8]} died: " \
                        f"{(info.message or '').splitlines()[0] if info.message else info.error_type}"
                if node is not None and "died" in (info.message or "") + str(info.error_type):
                    node.alive = False
            lines = self._read(h, job, final=True) if status != "GONE" else ()
            job.reported = True
            exit_code = getattr(info, "driver_exit_code", None)
            if status == "SUCCEEDED":
                exit_code = 0 if exit_code is None else exit_code
            elif status == "STOPPED" or job.timed_out:
                exit_code = exit_code if exit_code not in (None, 0) else -15
            elif exit_code in (None, 0):
                exit_code = 1
            start_ms, end_ms = getattr(info, "start_time", None), getattr(info, "end_time", None)
            started = job.running_since or (start_ms / 1000 if start_ms else None)
            ended = end_ms / 1000 if end_ms else time.time()
            if started is not None and started > ended:
                # `running_since` is when a poll first saw the job running: a run of a few milliseconds may have
                # ended (Ray's end_time) before that poll, so it started no later than it ended
                started = ended
            updates.append(Update(h.experiment_id, True, lines, exit_code=None if infra else exit_code,
                                  timed_out=job.timed_out and not infra, infra_failure=infra,
                                  started_at=started, finished_at=ended))
        return updates

    def logs(self, handle: Handle) -> str:
        try:
            return self._client.get_job_logs(handle.data["submission_id"])
        except Exception:  # noqa: BLE001 - the job (or the cluster) is gone: what was mirrored is all there is
            try:
                return (Path(handle.data["workdir"]) / LOG_FILE).read_text(errors="replace")
            except OSError:
                return ""

    def cancel(self, handle: Handle) -> None:
        job = self._job(handle)
        if job.reported:
            return
        job.cancelled = True
        self._stop(handle.data["submission_id"])

    def reattach(self, experiment_id: str, data: dict[str, Any]) -> Handle | None:
        sid = data.get("submission_id")
        if not sid:
            return None
        try:
            self._client.get_job_info(sid)
        except Exception:  # noqa: BLE001 - unknown to this cluster
            return None
        return Handle(experiment_id, data.get("worker_id", ""), dict(data))

    def dry_run(self, specs: list[tuple[RunSpec, Worker]], out_dir: Path) -> list[Path]:
        """One JSON file per job: the exact submit_job arguments, plus where it would be submitted."""
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for spec, worker in specs:
            node = self._node_of(worker.id)
            job = self.job_spec(spec, worker, node.id if node else "", f"fleetlab-{spec.experiment_id}")
            p = out_dir / f"{spec.experiment_id}.ray-job.json"
            p.write_text(json.dumps({"address": self.address, "worker": worker.id, "hardware": worker.hardware,
                                     "timeout_s": spec.timeout_s, "submit_job": job}, indent=2))
            paths.append(p)
        return paths

    def close(self) -> None:
        """Forget the jobs; the cluster and its runs belong to the user (a later orchestrator can re-attach)."""
        self._jobs.clear()

    # -- helpers -------------------------------------------------------------------------------------------------------

    def _job(self, handle: Handle) -> _Job:
        sid = handle.data["submission_id"]
        job = self._jobs.get(sid)
        if job is None:
            job = self._jobs[sid] = _Job()
        return job

    def _stop(self, sid: str) -> None:
        try:
            self._client.stop_job(sid)
        except Exception:  # noqa: BLE001 - already finished, or gone with its node
            pass

    def _read(self, handle: Handle, job: _Job, final: bool) -> tuple[str, ...]:
        """The job's complete new lines (all of them when final), mirrored into the run directory's run.log."""
        try:
            text = self._client.get_job_logs(handle.data["submission_id"])
        except Exception:  # noqa: BLE001
            text = ""
        if job.tail is None:
            job.tail = LogTail(os.path.join(handle.data["workdir"], LOG_FILE))
        return tuple(p for p in job.tail.feed(text, final) if not RAY_LINE.match(p))
