"""The Ray fleet against a real local Ray cluster (tests/ray_cluster.py): hardware classes, a research session through
the CLI, a node killed mid-run, setup failures, dry-run job specs, and settings validation."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from conftest import set_budget  # noqa: E402
from ray_cluster import ray_cluster  # noqa: E402

from fleetlab.errors import ConfigError  # noqa: E402
from fleetlab.fleet.ray import RayExecutor, check_settings, node_hardware  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    return ray_cluster()


def _experiments(project: Path):
    from fleetlab.store.sqlite import SQLiteStore

    return SQLiteStore(project / ".fleetlab" / "fleetlab.db").experiments()


def test_hardware_classes_from_node_resources():
    assert node_hardware({"CPU": 8, "GPU": 1, "accelerator_type:H100": 1}) == "H100"
    assert node_hardware({"CPU": 8, "GPU": 2}) == "gpu"
    assert node_hardware({"CPU": 8}) == "cpu"
    assert node_hardware({"CPU": 1, "accelerator_type:XYZ": 1}) == "XYZ"


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="unknown setting fleet.ray.adress"):
        check_settings({"adress": "x"})
    with pytest.raises(ConfigError, match="must be positive"):
        check_settings({"cpus_per_run": 0})
    with pytest.raises(ConfigError, match="needs the cluster's dashboard address"):
        RayExecutor("ray", settings={})


def test_unreachable_cluster_is_one_clear_error():
    from fleetlab.errors import ExecutorError

    with pytest.raises(ExecutorError, match="cannot reach the Ray cluster"):
        RayExecutor("ray:http://127.0.0.1:9")


def test_a_session_runs_on_a_heterogeneous_ray_fleet(cluster, mlp_project):
    from fleetlab.cli import main

    _, address = cluster
    set_budget(mlp_project, 1)
    assert main(["run", "-C", str(mlp_project), "--fleet", f"ray:{address}", "--strategy", "random",
                 "--max-experiments", "6"]) == 0
    exps = _experiments(mlp_project)
    assert len(exps) == 6 and all(e.state.value == "done" for e in exps), [(e.id, e.state) for e in exps]
    assert {e.hardware for e in exps} == {"cpu", "XYZ"}  # both nodes ran experiments, each with its own class
    assert all(e.worker.startswith("ray-") and e.metric is not None for e in exps)
    # the job's output is mirrored into the run directory
    assert "val_loss:" in (mlp_project / ".fleetlab" / "runs" / exps[0].id / "run.log").read_text()


def test_a_dead_node_requeues_its_experiments(cluster, mlp_project):
    from ray.job_submission import JobSubmissionClient

    from fleetlab.cli import main

    c, address = cluster
    doomed = c.add_node(num_cpus=1, node_ip_address="127.0.0.1", object_store_memory=80 * 2**20,
                        resources={"accelerator_type:DOOMED": 1})
    c.wait_for_nodes()
    set_budget(mlp_project, 4)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", main(
        ["run", "-C", str(mlp_project), "--fleet", f"ray:{address}", "--strategy", "random",
         "--max-experiments", "5"])))
    t.start()
    client = JobSubmissionClient(address)
    deadline = time.monotonic() + 90
    killed = False
    while t.is_alive() and time.monotonic() < deadline and not killed:
        for job in client.list_jobs():
            if job.status == "RUNNING" and job.driver_node_id == doomed.node_id and \
                    (job.metadata or {}).get("fleetlab_experiment"):
                time.sleep(1.0)  # well into the run
                c.remove_node(doomed, allow_graceful=False)
                killed = True
                break
        time.sleep(0.3)
    t.join(timeout=120)
    assert killed, "no experiment ever ran on the node to kill"
    assert result.get("rc") == 0
    exps = _experiments(mlp_project)
    requeued = [e for e in exps if e.meta.get("requeued")]
    assert requeued, "the experiment on the dead node was not re-queued"
    assert any("died" in reason for e in requeued for reason in e.meta["requeued"])
    for e in requeued:  # the one that ran there, and any sent to the dead node before it was taken out
        assert e.state.value == "done" and e.hardware in ("cpu", "XYZ")  # finished elsewhere
    assert all(e.state.value == "done" for e in exps)


def test_setup_failure_takes_nodes_out(cluster, tmp_path):
    from fleetlab.errors import SetupFailed

    _, address = cluster
    ex = RayExecutor(f"ray:{address}", poll_interval_s=0.1)
    (tmp_path / "p").mkdir()
    with pytest.raises(SetupFailed, match="failed on Ray node"):
        ex.prepare(tmp_path / "p", "echo no-data-here; exit 4")
    assert ex.workers() == []


def test_dry_run_writes_the_exact_job_specs(cluster, mlp_project):
    from fleetlab.cli import main

    _, address = cluster
    assert main(["run", "-C", str(mlp_project), "--fleet", f"ray:{address}", "--strategy", "random",
                 "--dry-run"]) == 0
    specs = sorted((mlp_project / ".fleetlab" / "dry-run").glob("*.ray-job.json"))
    assert len(specs) == 2  # baseline + one per other worker
    job = json.loads(specs[0].read_text())["submit_job"]
    assert set(job["runtime_env"]["env_vars"]) >= {"EXPERIMENT_ID", "EXPERIMENT_DESC", "FLEETLAB_TIME_BUDGET",
                                                   "FLEETLAB_SEED"}
    assert job["entrypoint_num_cpus"] == 1 and "ray.io/node-id" in job["entrypoint_label_selector"]
    assert Path(job["runtime_env"]["working_dir"]).name.startswith("dry-")
    assert not list(mlp_project.glob(".fleetlab/runs/*"))  # nothing was launched


def test_a_cluster_started_by_ray_start_with_token_auth(tmp_path, monkeypatch):
    """Ray 2.60 turns token authentication on for the clusters users start. Against `ray start --head` in another
    process: no token anywhere is one sentence naming where it was looked for; the token file (a setting), or
    RAY_AUTH_TOKEN, lets the fleet list the node and run an experiment; a wrong token is one sentence too."""
    from ray_cluster import RayHead

    from fleetlab.errors import ExecutorError
    from fleetlab.fleet._base import RunSpec
    from fleetlab.fleet.sandbox import probe

    head = RayHead(tmp_path / "head-home")
    try:
        token = head.wait()
        for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HOME", str(tmp_path / "user-home"))  # no ~/.ray/auth_token for this user
        with pytest.raises(ExecutorError) as err:
            RayExecutor(f"ray:{head.address}")
        msg = str(err.value)
        assert "requires an authentication token and none was found" in msg and "RAY_AUTH_TOKEN" in msg, msg
        assert "\n" not in msg
        ex = RayExecutor(f"ray:{head.address}", settings={"ray": {"token_file": str(head.token_file)}})
        assert [w.hardware for w in ex.workers()] == ["cpu"]
        monkeypatch.setenv("RAY_AUTH_TOKEN", token)
        ex = RayExecutor(f"ray:{head.address}", poll_interval_s=0.1)
        workdir = tmp_path / "exp-0001"
        workdir.mkdir()
        # on a node with bwrap the run is sandboxed: its shell is the second process of a PID namespace of its own
        h = ex.submit(RunSpec("exp-0001", workdir, "echo 'val_bpb: 1.5'; [ $$ -le 3 ] && echo sandboxed", {}, 60),
                      ex.workers()[0])
        deadline, done, lines = time.monotonic() + 60, None, []
        while done is None and time.monotonic() < deadline:
            for u in ex.poll([h]):
                lines.extend(u.lines)
                done = u if u.finished else None
            time.sleep(0.1)
        sandboxed = ["sandboxed"] if probe(shutil.which("bwrap")) is None else []
        assert done is not None and done.exit_code == 0 and lines == ["val_bpb: 1.5", *sandboxed], (done, lines)
        monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
        with pytest.raises(ExecutorError, match="refused the authentication token"):
            RayExecutor(f"ray:{head.address}")
    finally:
        head.stop()
