"""The SkyPilot fleet's logic against tests/fake_sky.py (a fake of the narrow adapter boundary, real processes):
launch once and exec per experiment, per-experiment directories, hardware from the launch, preemption and
relaunch, log parsing (incl. the original experiment.yaml), setup failures, teardown; and the dry-run YAMLs checked
by SkyPilot's own `sky.Task.from_yaml_config`. No cloud is involved."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import set_budget
from executor_contract import Harness
from fake_sky import FakeSky

from fleetlab.errors import ConfigError, SetupFailed
from fleetlab.fleet.skypilot import SkyExecutor, check_settings, parse_fleet, translate


def _project(tmp_path: Path) -> Path:
    (tmp_path / "proj").mkdir(exist_ok=True)
    return tmp_path / "proj"


def _executor(tmp_path: Path, spec: str = "sky:2", **kw) -> tuple[SkyExecutor, FakeSky]:
    fake = FakeSky(tmp_path / "clusters", hardware=kw.pop("hardware", None),
                   failing_setup=kw.pop("failing_setup", None), validate=kw.pop("validate", False))
    settings = {"sky": kw.pop("sky", {"accelerators": ["H100:1", "H200:1"]})}
    return SkyExecutor(spec, settings=settings, adapter=fake, poll_interval_s=0.05, **kw), fake


def _add_sky_settings(project: Path, lines: str) -> None:
    p = project / "fleetlab.toml"
    p.write_text(p.read_text() + "\n[fleet.sky]\n" + lines + "\n")


def _session(project: Path, fake: FakeSky, fleet: str = "sky:2", **opts):
    from fleetlab.api import open_project
    from fleetlab.session import RunOptions, run_session

    opened = open_project(project)
    try:
        return opened, run_session(opened, RunOptions(fleet=fleet, strategy="random",
                                                      executor_options={"adapter": fake, "poll_interval_s": 0.05},
                                                      **opts))
    finally:
        opened.close()


def _experiments(project: Path):
    from fleetlab.store.sqlite import SQLiteStore

    return SQLiteStore(project / ".fleetlab" / "fleetlab.db").experiments()


# -- parsing and settings ------------------------------------------------------------------------------------------


def test_fleet_specs_and_settings():
    assert parse_fleet("sky:3") == ["gpu-01", "gpu-02", "gpu-03"]
    assert parse_fleet("sky:gpu-01,h200-a") == ["gpu-01", "h200-a"]
    for bad in ("sky:", "sky:0", "sky:GPU_1", "sky:a,a"):
        with pytest.raises(ConfigError):
            parse_fleet(bad)
    with pytest.raises(ConfigError, match="unknown setting fleet.sky.accelerator;"):
        check_settings({"accelerator": "H100:1"})
    with pytest.raises(ConfigError, match="is not NAME or NAME:COUNT"):
        check_settings({"accelerators": ["H100 x1"]})
    with pytest.raises(ConfigError, match="wrong type"):
        check_settings({"autostop": "10"})
    assert translate("EXPERIMENT_RESULT: exp-0003 val_bpb=0.981 memory_gb=44.1") == ["val_bpb: 0.981",
                                                                                     "memory_gb: 44.1"]


# -- a session -----------------------------------------------------------------------------------------------------


def test_session_launches_each_cluster_once_and_pipelines_with_exec(mlp_project, tmp_path):
    set_budget(mlp_project, 0.5)
    toml = mlp_project / "fleetlab.toml"
    toml.write_text(toml.read_text().replace('command = "python train.py"',
                                             'command = "python train.py"\nsetup = "echo prepared > ../marker"'))
    _add_sky_settings(mlp_project, 'accelerators = ["H100:1", "H200:1"]\ninfra = "k8s"')
    fake = FakeSky(tmp_path / "clusters", hardware={"gpu-02": "H200"}, validate=True)
    _, summary = _session(mlp_project, fake, max_experiments=6)
    exps = _experiments(mlp_project)
    assert len(exps) == 6 and all(e.state.value == "done" for e in exps), [(e.id, e.state, e.meta) for e in exps]
    launches = [c for m, c in fake.calls if m == "launch"]
    assert sorted(launches) == ["gpu-01", "gpu-02"]  # once each, setup included
    assert len([m for m, _ in fake.calls if m == "exec"]) == 6
    assert {e.worker: e.hardware for e in exps} == {"gpu-01": "H100", "gpu-02": "H200"}  # from the launch
    assert sorted(c for m, c in fake.calls if m == "down") == ["gpu-01", "gpu-02"]  # torn down on exit
    for e in exps:  # every experiment ran from its own directory on its cluster, with its own train.py
        homes = list((tmp_path / "clusters" / e.worker).glob("home*/sky_workdir/fleetlab-runs/" + e.id))
        assert len(homes) == 1
        assert (homes[0] / "train.py").read_text() == \
            (mlp_project / ".fleetlab" / "runs" / e.id / "train.py").read_text()
    # exec tasks ask for exactly what the cluster got; launch tasks for any of the configured accelerators
    launch_cfg = next(c for c in fake.configs if c["name"] == "fleetlab-setup")
    assert launch_cfg["resources"]["accelerators"] == {"H100": 1, "H200": 1}
    assert launch_cfg["resources"]["infra"] == "k8s" and "prepared" in launch_cfg["setup"]
    exec_hw = {c["envs"]["EXPERIMENT_ID"]: c["resources"]["accelerators"] for c in fake.configs if "run" in c}
    assert {next(iter(v)) for v in exec_hw.values()} == {"H100", "H200"}


def test_keep_clusters_leaves_them_up(tmp_path):
    ex, fake = _executor(tmp_path, "sky:1", keep_clusters=True)
    ex.prepare(_project(tmp_path), None)
    ex.close()
    assert not [c for m, c in fake.calls if m == "down"] and fake.cluster_status("gpu-01")[0] == "UP"


# -- the executor directly -----------------------------------------------------------------------------------------


def test_queued_jobs_each_run_their_own_files(tmp_path):
    """Two experiments queued on one cluster: SkyPilot re-syncs ~/sky_workdir for the second before the first runs;
    each still runs its own snapshot."""
    ex, fake = _executor(tmp_path, "sky:1")
    h = Harness(ex, tmp_path)
    handles = []
    for i, text in enumerate(("first", "second")):
        spec = h.spec(f"exp-000{i + 1}", "sleep 0.3; cat marker.txt")
        (spec.workdir / "marker.txt").write_text(text)
        handles.append(ex.submit(spec, ex.workers()[0]))
    results = h.wait(handles, timeout_s=30)
    assert results["exp-0001"][0] == ["first"] and results["exp-0002"][0] == ["second"]
    assert [m for m, _ in fake.calls] == ["launch", "exec", "exec"]
    h.cleanup()


def test_preempted_cluster_is_relaunched_and_its_runs_requeued(tmp_path):
    ex, fake = _executor(tmp_path, "sky:1", hardware={"gpu-01": "H200"})
    ex.prepare(_project(tmp_path), None)
    h = Harness(ex, tmp_path)
    a = h.submit("exp-0001", "echo started; sleep 30")
    deadline = time.monotonic() + 20
    while [j["status"] for j in fake.queue("gpu-01")] != ["RUNNING"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    fake.preempt("gpu-01")
    _, u = h.wait([a], timeout_s=20)["exp-0001"]
    assert u.finished and u.infra_failure and "preempted" in u.infra_failure
    b = h.submit("exp-0001", "echo again")  # the scheduler re-queues it; the cluster comes back
    lines, u = h.wait([b], timeout_s=20)["exp-0001"]
    assert u.exit_code == 0 and lines == ["again"]
    assert [m for m, _ in fake.calls].count("launch") == 2
    h.cleanup()


def test_setup_failure_takes_the_cluster_out(tmp_path):
    ex, _ = _executor(tmp_path, "sky:2", failing_setup={"gpu-02"})
    ex.prepare(_project(tmp_path), "true")
    assert [w.id for w in ex.workers()] == ["gpu-01"]
    h = Harness(ex, tmp_path)
    with pytest.raises(SetupFailed, match="gpu-02 left the fleet: setup failed"):
        ex.submit(h.spec("exp-0001", "true"), type(ex.workers()[0])("gpu-02"))
    ex2, _ = _executor(tmp_path / "b", "sky:1")
    with pytest.raises(SetupFailed, match="no cluster could be launched"):
        ex2.prepare(_project(tmp_path), "exit 3")


def test_the_original_experiment_yaml_works_as_a_template(tmp_path):
    (tmp_path / "experiment.yaml").write_text("""\
resources:
  accelerators: {H100: 1, H200: 1}
envs:
  EXPERIMENT_ID: baseline
  EXPERIMENT_DESC: "baseline run"
setup: |
  echo installing
run: |
  python -c "print('val_bpb:          0.9911')" > run.log 2>&1
  EXIT_CODE=$?
  if [ $EXIT_CODE -ne 0 ] || [ "$CRASH" = 1 ]; then
    echo "EXPERIMENT_STATUS: crash"
  else
    VAL_BPB=$(grep "^val_bpb:" run.log | awk '{print $2}')
    echo "EXPERIMENT_STATUS: done"
    echo "EXPERIMENT_RESULT: ${EXPERIMENT_ID} val_bpb=${VAL_BPB} memory_gb=44.0"
  fi
""")
    ex, fake = _executor(tmp_path, "sky:1", sky={"task": str(tmp_path / "experiment.yaml")}, validate=True)
    h = Harness(ex, tmp_path)
    ok = h.submit("exp-0001", "ignored: the template's run is used")
    lines, u = h.wait([ok], timeout_s=30)["exp-0001"]
    assert u.exit_code == 0 and "EXPERIMENT_RESULT: exp-0001 val_bpb=0.9911 memory_gb=44.0" in lines
    assert "val_bpb: 0.9911" in lines and "val_bpb: 0.9911" in ex.logs(ok)  # what the metric pattern reads
    spec = h.spec("exp-0002", "")
    crash = ex.submit(type(spec)(**{**spec.__dict__, "env": {**spec.env, "CRASH": "1"}}), ex.workers()[0])
    _, u = h.wait([crash], timeout_s=30)["exp-0002"]
    assert u.exit_code == 1  # EXPERIMENT_STATUS: crash, though the script exits 0
    assert "installing" in next(c for c in fake.configs if c["name"] == "fleetlab-setup")["setup"]
    h.cleanup()


# -- dry run -------------------------------------------------------------------------------------------------------


def test_dry_run_writes_task_yamls_skypilot_accepts(mlp_project, tmp_path):
    import sky
    import yaml

    _add_sky_settings(mlp_project, 'accelerators = ["H100:1", "H200:1"]\nimage = "docker:pytorch/pytorch"\n'
                                   'autostop = 10\ndown = true')
    fake = FakeSky(tmp_path / "clusters")
    _, paths = _session(mlp_project, fake, fleet="sky:3", dry_run=True)
    assert fake.calls == []  # nothing launched
    names = sorted(p.name for p in paths)
    assert [n for n in names if n.startswith("launch-")] == ["launch-gpu-01.yaml", "launch-gpu-02.yaml",
                                                            "launch-gpu-03.yaml"]
    execs = [p for p in paths if ".exec-" in p.name]
    assert len(execs) == 3
    for p in paths:
        config = yaml.safe_load(p.read_text())
        task = sky.Task.from_yaml_config(yaml.safe_load(p.read_text()))  # SkyPilot's own parser accepts it
        assert Path(config["workdir"]).is_dir()
        if p in execs:
            assert set(task.envs) >= {"EXPERIMENT_ID", "EXPERIMENT_DESC", "FLEETLAB_TIME_BUDGET", "FLEETLAB_SEED"}
            exp_id = config["envs"]["EXPERIMENT_ID"]
            assert (Path(config["workdir"]) / "fleetlab-runs" / exp_id / "train.py").is_file()
            assert f"cd fleetlab-runs/{exp_id}" in config["run"]


def test_a_restarted_orchestrator_reattaches_by_job_name(tmp_path):
    ex, fake = _executor(tmp_path, "sky:1")
    h = Harness(ex, tmp_path)
    first = h.submit("exp-0001", "sleep 0.5; echo finished")
    deadline = time.monotonic() + 20
    while not fake.clusters.get("gpu-01") or not fake.queue("gpu-01"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    data = dict(first.data)  # what the store kept
    later = SkyExecutor("sky:1", settings={"sky": {"accelerators": "H100:1"}}, adapter=fake, poll_interval_s=0.05)
    again = later.reattach("exp-0001", data)
    assert again is not None and again.worker_id == "gpu-01"
    lines, u = Harness(later, tmp_path).wait([again], timeout_s=20)["exp-0001"]
    assert u.exit_code == 0 and lines == ["finished"]
    fake.preempt("gpu-01")
    assert later.reattach("exp-0001", data) is None  # the cluster is gone: the scheduler re-queues it


def test_the_adapter_speaks_the_sdk_shapes(monkeypatch, tmp_path):
    """The real adapter over SkyPilot's own functions replaced at the SDK's edge (request ids, sky.get): this checks
    what it sends and how it reads SkyPilot's own types back, not SkyPilot or a cloud."""
    from types import SimpleNamespace

    import sky
    from sky.skylet.job_lib import JobStatus

    from fleetlab.fleet.sky_adapter import SkyAdapter, SkyFailure

    calls = []
    results = {}

    def request(name, value):
        def fn(*args, **kwargs):
            calls.append((name, args, kwargs))
            results[name] = value
            return name  # the request id
        return fn

    handle = SimpleNamespace(launched_resources=sky.Resources(accelerators={"H200": 1}))
    monkeypatch.setattr(sky, "launch", request("launch", (None, handle)))
    monkeypatch.setattr(sky, "exec", request("exec", (7, handle)))
    monkeypatch.setattr(sky, "status", request("status", [{"name": "gpu-01", "status": sky.ClusterStatus.UP,
                                                             "handle": handle}]))
    monkeypatch.setattr(sky, "job_status", request("job_status", {7: JobStatus.RUNNING}))
    monkeypatch.setattr(sky, "queue", request("queue", [{"job_id": 7, "job_name": "fleetlab-exp-0001",
                                                           "status": JobStatus.SUCCEEDED}]))
    monkeypatch.setattr(sky, "get", lambda rid: results[rid])
    monkeypatch.setattr(sky, "stream_and_get", lambda rid, **kw: results[rid])
    monkeypatch.setattr(sky, "tail_logs", lambda c, j, follow, output_stream=None: output_stream.write("val_bpb: 1\n"))
    a = SkyAdapter()
    config = {"name": "fleetlab-setup", "workdir": str(tmp_path), "resources": {"accelerators": {"H100": 1, "H200": 1}},
              "setup": "true"}
    assert a.launch(config, "gpu-01", autostop_minutes=10, down=True) is None
    task = calls[-1][1][0]
    assert isinstance(task, sky.Task) and calls[-1][2] == {"cluster_name": "gpu-01", "idle_minutes_to_autostop": 10,
                                                           "down": True}
    assert config["workdir"] == str(tmp_path)  # the caller's dict is left alone
    assert a.exec({**config, "run": "echo"}, "gpu-01") == 7
    assert a.cluster_status("gpu-01") == ("UP", "H200") and a.cluster_status("gpu-02") == (None, None)
    assert a.job_status("gpu-01", 7) == "RUNNING"
    assert a.queue("gpu-01") == [{"job_id": 7, "name": "fleetlab-exp-0001", "status": "SUCCEEDED"}]
    assert a.logs("gpu-01", 7) == "val_bpb: 1\n"

    def unavailable(*a, **k):
        raise sky.exceptions.ResourcesUnavailableError("no H100 anywhere")

    monkeypatch.setattr(sky, "launch", unavailable)
    with pytest.raises(SkyFailure, match="no cloud could provide") as e:
        a.launch(config, "gpu-01")
    assert not e.value.setup
