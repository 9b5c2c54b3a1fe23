"""The local executor with real subprocesses: output, exit codes, timeouts and cancels that kill whole process groups,
environment, progress lines, re-attaching after an orchestrator restart, GPU slots, bad fleet specs, setup."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fleetlab.errors import ConfigError, ExecutorError, SetupFailed, UnknownName
from fleetlab.fleet import FLEETS, make_executor
from fleetlab.fleet._base import Handle, RunSpec, Update
from fleetlab.fleet.local import THREAD_VARS, LocalExecutor, detect_gpus, gpu_label
from fleetlab.fleet.sandbox import Sandbox, probe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["none", "bwrap"])
def ex(request):
    """A local fleet run plainly and, where bubblewrap can run, in the sandbox: the contract is the same."""
    if request.param == "bwrap" and probe(shutil.which("bwrap")):
        pytest.skip(probe(shutil.which("bwrap")))
    executor = LocalExecutor(slots=2, grace_s=0.3, sandbox=Sandbox(request.param))
    yield executor
    executor.close()


@pytest.fixture(autouse=True)
def _kill_leftovers():
    """Whatever a test leaves running is killed by the pgids it recorded (never by name)."""
    started: list[Path] = []
    yield started
    for workdir in started:
        info = _read(workdir / ".fleetlab_run.json")
        if info:
            for pid_key, kill in (("pgid", os.killpg), ("wrapper_pid", os.kill)):
                try:
                    kill(info[pid_key], signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def make_spec(tmp_path: Path, command: str, experiment_id: str = "exp-0001", timeout_s: float = 30,
              env: dict | None = None) -> RunSpec:
    workdir = tmp_path / experiment_id
    workdir.mkdir(exist_ok=True)
    return RunSpec(experiment_id, workdir, command, env or {}, timeout_s)


def submit(ex: LocalExecutor, tmp_path: Path, command: str, worker: int = 0, **kw) -> Handle:
    return ex.submit(make_spec(tmp_path, command, **kw), ex.workers()[worker])


def wait(ex, handle: Handle, timeout_s: float = 10.0) -> tuple[list[str], Update]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for u in ex.poll([handle]):
            lines.extend(u.lines)
            if u.finished:
                return lines, u
        time.sleep(0.01)
    raise AssertionError(f"{handle.experiment_id} did not finish within {timeout_s} s")


def wait_for(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def gone(pid: int) -> bool:
    """Dead (a zombie that nobody reaped yet counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def left_in(workdir: Path) -> list[int]:
    """Live processes working in `workdir` (a run's children: in a sandbox, their own pids mean nothing out here)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.readlink(proc / "cwd") == str(workdir.resolve()) and not gone(int(proc.name)):
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


# ---------------------------------------------------------------------------------------------------------------------
# runs


def test_run_prints_lines_and_exits_0(ex, tmp_path):
    h = submit(ex, tmp_path, "echo one; echo two >&2; printf 'val_bpb: 1.5'")
    assert set(h.data) >= {"workdir", "wrapper_pid", "pgid", "started_at"}
    lines, u = wait(ex, h)
    assert lines == ["one", "two", "val_bpb: 1.5"]  # stderr too; the unterminated last line once the run ended
    assert (u.exit_code, u.timed_out, u.infra_failure) == (0, False, None)
    assert h.data["started_at"] <= u.started_at <= u.finished_at
    assert ex.logs(h) == "one\ntwo\nval_bpb: 1.5"
    workdir = Path(h.data["workdir"])
    assert _read(workdir / ".fleetlab_run.json").keys() >= {"pid", "pgid", "wrapper_pid", "started_at"}
    assert _read(workdir / ".fleetlab_exit.json")["exit_code"] == 0
    assert ex.poll([h]) == []  # reported once


def test_exit_code_1_is_reported(ex, tmp_path):
    lines, u = wait(ex, submit(ex, tmp_path, "echo failing; exit 1"))
    assert lines == ["failing"] and u.exit_code == 1 and not u.timed_out and u.infra_failure is None


def test_timeout_kills_the_run_and_its_children(ex, tmp_path, _kill_leftovers):
    h = submit(ex, tmp_path, "sleep 60 & echo $! > child.pid; wait", timeout_s=0.5)
    _kill_leftovers.append(Path(h.data["workdir"]))
    lines, u = wait(ex, h)  # the command sleeps 60 s: finishing within wait()'s bound means the timeout fired
    assert u.timed_out and u.exit_code != 0
    assert any("timed out" in line for line in lines)
    wait_for(lambda: not left_in(Path(h.data["workdir"])), 2)


def test_timeout_escalates_to_sigkill_for_a_run_that_ignores_sigterm(ex, tmp_path, _kill_leftovers):
    h = submit(ex, tmp_path, "trap '' TERM; sleep 60 & echo $! > child.pid; wait", timeout_s=0.3)
    _kill_leftovers.append(Path(h.data["workdir"]))
    _, u = wait(ex, h)
    # in the sandbox the group's SIGTERM ends bwrap itself, which takes the whole PID namespace with it
    assert u.timed_out and u.exit_code == (-signal.SIGKILL if not ex.sandbox.active else -signal.SIGTERM)
    wait_for(lambda: not left_in(Path(h.data["workdir"])), 2)


def test_cancel_kills_the_whole_group(ex, tmp_path, _kill_leftovers):
    h = submit(ex, tmp_path, "sleep 60 & echo $! > child.pid; echo started; wait")
    workdir = Path(h.data["workdir"])
    _kill_leftovers.append(workdir)
    lines: list[str] = []
    wait_for(lambda: "started" in [line for u in ex.poll([h]) for line in u.lines] or "started" in ex.logs(h))
    assert left_in(workdir)
    ex.cancel(h)
    lines, u = wait(ex, h, timeout_s=2)
    # killed by a signal: the wrapper's SIGTERM to the group or the executor's SIGKILL, whichever lands first
    assert u.finished and u.exit_code in (-signal.SIGKILL, -signal.SIGTERM) and not u.timed_out
    assert u.infra_failure is None
    wait_for(lambda: not left_in(workdir) and gone(h.data["wrapper_pid"]), 2)
    assert _read(workdir / ".fleetlab_exit.json")["cancelled"] is True


def test_a_run_cannot_forge_its_exit_or_name_another_group_to_kill(ex, tmp_path, _kill_leftovers):
    """The run may write the wrapper's files in its directory: a forged exit file is not believed while the wrapper
    lives, and a forged process group (one that is not the wrapper's child) is never killed on cancel."""
    victim = subprocess.Popen(["sleep", "60"], start_new_session=True)  # a process group that is not the run's
    try:
        forged_run = json.dumps({"pid": victim.pid, "pgid": victim.pid, "wrapper_pid": victim.pid, "started_at": 0})
        forged_exit = json.dumps({"exit_code": 0, "timed_out": False, "cancelled": False, "started_at": 0,
                                  "finished_at": 1})
        h = submit(ex, tmp_path, f"echo '{forged_run}' > .fleetlab_run.json; echo '{forged_exit}' > "
                                 f".fleetlab_exit.json; echo forged; sleep 60")
        _kill_leftovers.append(Path(h.data["workdir"]))
        wait_for(lambda: "forged" in ex.logs(h))
        time.sleep(0.2)
        assert not [u for u in ex.poll([h]) if u.finished]  # still running, whatever its exit file says
        ex.cancel(h)
        _, u = wait(ex, h, timeout_s=5)
        assert u.finished and u.exit_code != 0 and not left_in(Path(h.data["workdir"]))
        assert victim.poll() is None  # the group the run named was left alone
    finally:
        victim.kill()
        victim.wait()


def test_cancel_right_after_submit(ex, tmp_path, _kill_leftovers):
    h = submit(ex, tmp_path, "sleep 60")
    _kill_leftovers.append(Path(h.data["workdir"]))
    ex.cancel(h)  # the wrapper may not have started the command yet
    _, u = wait(ex, h, timeout_s=3)
    assert u.finished and u.exit_code != 0 and u.infra_failure is None


def test_env_thread_limits_and_workdir_reach_the_run(tmp_path):
    ex = LocalExecutor(slots=1, threads_per_slot=3)
    names = [*THREAD_VARS, "PYTHONUNBUFFERED", "FOO", "EXPERIMENT_ID"]
    command = " ; ".join(f'echo "{n}=${n}"' for n in names) + ' ; echo "CUDA=${CUDA_VISIBLE_DEVICES-unset}"; pwd'
    h = submit(ex, tmp_path, command, env={"FOO": "bar baz", "EXPERIMENT_ID": "exp-0001"})
    lines, u = wait(ex, h)
    assert u.exit_code == 0
    assert lines[:len(THREAD_VARS)] == [f"{n}=3" for n in THREAD_VARS]
    assert lines[len(THREAD_VARS):-2] == ["PYTHONUNBUFFERED=1", "FOO=bar baz", "EXPERIMENT_ID=exp-0001"]
    assert lines[-2] == "CUDA=" and lines[-1] == h.data["workdir"]  # a CPU slot hides the GPUs


def test_the_command_gets_default_signal_dispositions(ex, tmp_path):
    lines, u = wait(ex, submit(ex, tmp_path, "yes | head -n 1; echo done"))  # `yes` ends by SIGPIPE, silently
    assert lines == ["y", "done"] and u.exit_code == 0


def test_progress_lines_arrive_before_the_end(ex, tmp_path):
    h = submit(ex, tmp_path, "echo 'fleetlab: step=1 metric=2.5'; printf 'val_'; "
                             "while [ ! -f go ]; do sleep 0.01; done; echo 'bpb: 1.0'")
    seen: list[str] = []
    wait_for(lambda: bool(seen.extend(line for u in ex.poll([h]) for line in u.lines) or seen))
    time.sleep(0.1)
    for u in ex.poll([h]):  # the unfinished line is held back until it ends
        assert not u.finished
        seen.extend(u.lines)
    assert seen == ["fleetlab: step=1 metric=2.5"]
    (Path(h.data["workdir"]) / "go").touch()
    lines, u = wait(ex, h)
    assert lines == ["val_bpb: 1.0"] and u.exit_code == 0


def test_resubmit_in_the_same_workdir_ignores_the_earlier_attempt(ex, tmp_path):
    wait(ex, submit(ex, tmp_path, "echo first"))
    h = submit(ex, tmp_path, "while [ ! -f go ]; do sleep 0.01; done; echo second")
    time.sleep(0.2)
    assert not [u for u in ex.poll([h]) if u.finished]  # the old exit file is gone
    (Path(h.data["workdir"]) / "go").touch()
    lines, u = wait(ex, h)
    assert lines == ["second"] and u.exit_code == 0
    assert (Path(h.data["workdir"]) / "run.log.prev").read_text() == "first\n"


def test_two_slots_run_at_once(tmp_path):
    # each run waits for the other to have started: they can only both finish if they run at the same time (through
    # files outside their run directories, so unsandboxed: a sandboxed run sees no other's files)
    ex = LocalExecutor(slots=2)
    da, db = tmp_path / "sync-a", tmp_path / "sync-b"
    a = submit(ex, tmp_path, f"touch {da}; while [ ! -e {db} ]; do sleep 0.05; done; echo a",
               experiment_id="exp-0001", worker=0)
    b = submit(ex, tmp_path, f"touch {db}; while [ ! -e {da} ]; do sleep 0.05; done; echo b",
               experiment_id="exp-0002", worker=1)
    assert wait(ex, a)[0] == ["a"] and wait(ex, b)[0] == ["b"]


def test_submit_to_a_foreign_worker_or_missing_workdir_is_refused(ex, tmp_path):
    from fleetlab.fleet._base import Worker

    with pytest.raises(ExecutorError, match="not part of this local fleet"):
        ex.submit(make_spec(tmp_path, "true"), Worker("gpu-07", "H100"))
    with pytest.raises(ExecutorError, match="does not exist"):
        ex.submit(RunSpec("exp-0009", tmp_path / "nope", "true", {}, 10), ex.workers()[0])


# ---------------------------------------------------------------------------------------------------------------------
# orchestrator restarts


def test_reattach_from_a_new_executor_to_a_running_run(ex, tmp_path):
    h = submit(ex, tmp_path, "echo hi; while [ ! -f go ]; do sleep 0.01; done; echo bye")
    data = json.loads(json.dumps(h.data))
    fresh = LocalExecutor(slots=2)
    h2 = fresh.reattach("exp-0001", data)
    assert h2 is not None and h2.worker_id == h.worker_id
    (Path(data["workdir"]) / "go").touch()
    lines, u = wait(fresh, h2)
    assert lines == ["hi", "bye"] and u.exit_code == 0


ORCHESTRATOR = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from fleetlab.fleet.local import LocalExecutor
    from fleetlab.fleet._base import RunSpec
    from fleetlab.fleet.sandbox import Sandbox
    ex = LocalExecutor(slots=1, sandbox=Sandbox(sys.argv[3]))
    h = ex.submit(RunSpec("exp-0001", Path(sys.argv[1]), sys.argv[2], {}, 30), ex.workers()[0])
    print(json.dumps(h.data), flush=True)
    time.sleep(60)
""")


def _orchestrate_and_die(tmp_path: Path, command: str, sandbox: str = "none") -> dict:
    """Submit from a separate orchestrator process, then SIGKILL it: the run must live on."""
    workdir = tmp_path / "exp-0001"
    workdir.mkdir()
    orch = subprocess.Popen([sys.executable, "-c", ORCHESTRATOR, str(workdir), command, sandbox],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    data = json.loads(orch.stdout.readline())
    orch.kill()
    orch.wait()
    return data


@pytest.mark.parametrize("sandbox", ["none", "bwrap"])
def test_run_survives_a_killed_orchestrator_and_is_reattached(tmp_path, _kill_leftovers, sandbox):
    if sandbox == "bwrap" and probe(shutil.which("bwrap")):
        pytest.skip(probe(shutil.which("bwrap")))
    data = _orchestrate_and_die(tmp_path, "echo hi; while [ ! -f go ]; do sleep 0.01; done; echo 'val_bpb: 2.0'",
                                sandbox)
    _kill_leftovers.append(Path(data["workdir"]))
    fresh = LocalExecutor(slots=1)
    h = fresh.reattach("exp-0001", data)
    assert h is not None
    (Path(data["workdir"]) / "go").touch()
    lines, u = wait(fresh, h)
    assert lines == ["hi", "val_bpb: 2.0"] and u.exit_code == 0 and u.infra_failure is None


def test_a_run_that_finished_while_nobody_watched_is_collected(tmp_path):
    data = _orchestrate_and_die(tmp_path, "echo 'val_bpb: 3.0'; exit 2")
    wait_for(lambda: (Path(data["workdir"]) / ".fleetlab_exit.json").exists())
    wait_for(lambda: gone(data["wrapper_pid"]))
    fresh = LocalExecutor(slots=1)
    h = fresh.reattach("exp-0001", data)
    assert h is not None
    lines, u = wait(fresh, h)
    assert lines == ["val_bpb: 3.0"] and u.exit_code == 2


def test_a_run_whose_wrapper_was_killed_is_gone_and_its_command_killed(ex, tmp_path, _kill_leftovers):
    h = submit(ex, tmp_path, "sleep 60 & echo $! > child.pid; wait")
    workdir = Path(h.data["workdir"])
    _kill_leftovers.append(workdir)
    wait_for(lambda: (workdir / "child.pid").exists() and (workdir / "child.pid").read_text().strip() != "")
    os.kill(h.data["wrapper_pid"], signal.SIGKILL)
    _, u = wait(ex, h)
    assert u.infra_failure == "the run's wrapper died" and u.exit_code is None
    wait_for(lambda: not left_in(workdir), 2)  # the orphaned command does not live on
    assert LocalExecutor(slots=1).reattach("exp-0001", h.data) is None
    assert LocalExecutor(slots=1).reattach("exp-0001", {"workdir": str(workdir), "wrapper_pid": os.getpid()}) is None


def test_reattach_to_a_run_whose_wrapper_died_kills_what_it_left(tmp_path, _kill_leftovers):
    data = _orchestrate_and_die(tmp_path, "sleep 60 & echo $! > child.pid; wait")
    workdir = Path(data["workdir"])
    _kill_leftovers.append(workdir)
    wait_for(lambda: (workdir / "child.pid").exists() and (workdir / "child.pid").read_text().strip() != "")
    os.kill(data["wrapper_pid"], signal.SIGKILL)
    wait_for(lambda: gone(data["wrapper_pid"]))
    assert LocalExecutor(slots=1).reattach("exp-0001", data) is None
    wait_for(lambda: gone(int((workdir / "child.pid").read_text())), 2)


# ---------------------------------------------------------------------------------------------------------------------
# GPUs, fleet specs, setup


@pytest.mark.parametrize("name, label", [
    ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100"), ("NVIDIA H200", "H200"),
    ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA GeForce RTX 4090", "RTX 4090"), ("Tesla V100-SXM2-16GB", "V100"),
    ("NVIDIA RTX A6000", "RTX A6000"), ("NVIDIA GeForce RTX 3080 Ti", "RTX 3080 Ti"), ("NVIDIA L40S", "L40S"),
    ("Tesla T4", "T4"), ("NVIDIA A10G", "A10G"),
])
def test_gpu_labels(name, label):
    assert gpu_label(name) == label


@pytest.fixture
def fake_nvidia_smi(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '0, GPU-aaaa, NVIDIA H100 80GB HBM3'\necho '1, GPU-bbbb, NVIDIA H200'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_local_gpus_gives_one_slot_per_gpu_and_each_run_its_gpu(fake_nvidia_smi, tmp_path, monkeypatch):
    ex = make_executor("local:gpus", tmp_path)
    assert [(w.id, w.hardware) for w in ex.workers()] == [("local-gpu0", "H100"), ("local-gpu1", "H200")]
    lines, _ = wait(ex, ex.submit(make_spec(tmp_path, "echo $CUDA_VISIBLE_DEVICES"), ex.workers()[1]))
    assert lines == ["1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb")
    assert detect_gpus() == [("GPU-bbbb", "H200")]
    assert [(w.id, w.hardware) for w in make_executor("local:gpus", tmp_path).workers()] == [("local-GPU-bbbb", "H200")]
    assert LocalExecutor(gpus=["0"]).workers()[0].hardware == "H100"  # named by nvidia-smi whatever is visible
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert detect_gpus() == [("1", "H200"), ("0", "H100")]


@pytest.mark.parametrize("visible", [None, ""])
def test_local_gpus_without_a_gpu_is_one_clear_error(tmp_path, monkeypatch, visible):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with pytest.raises(ExecutorError) as err:
        make_executor("local:gpus", tmp_path)
    msg = str(err.value)
    assert "no GPU" in msg and "local:N" in msg and "\n" not in msg


@pytest.mark.parametrize("spec", ["local:0", "local:abc", "local:-1", "local:2.5"])
def test_bad_local_specs_are_one_sentence_config_errors(spec, tmp_path):
    with pytest.raises(ConfigError) as err:
        make_executor(spec, tmp_path)
    assert spec in str(err.value) and "\n" not in str(err.value)


def test_fleet_specs(tmp_path):
    ex = make_executor("local:3", tmp_path)
    assert [w.id for w in ex.workers()] == ["local-0", "local-1", "local-2"]
    assert {w.hardware for w in ex.workers()} == {"cpu"} and ex.SUPPORTS >= {"reattach", "early_stop"}
    assert len(make_executor("local", tmp_path).workers()) == 1
    with pytest.raises(UnknownName, match="local, ray, sim, sky") as err:
        make_executor("cloud:3", tmp_path)
    assert err.value.name == "cloud" and sorted(err.value.valid) == ["local", "ray", "sim", "sky"]


def test_a_backend_that_is_not_there_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setitem(FLEETS, "moon", ("fleetlab.fleet.moon", "MoonExecutor", None))
    with pytest.raises(ExecutorError, match="'moon' fleet is not available"):
        make_executor("moon:1", tmp_path)


def test_prepare_runs_setup_once_and_reports_a_failure(tmp_path):
    ex = LocalExecutor(slots=2)
    ex.prepare(tmp_path, "echo prepared >> marker; echo to-the-log")
    ex.prepare(tmp_path, "echo prepared >> marker")
    assert (tmp_path / "marker").read_text() == "prepared\n"
    assert (tmp_path / ".fleetlab" / "setup.log").read_text() == "to-the-log\n"
    with pytest.raises(SetupFailed) as err:
        LocalExecutor(slots=1).prepare(tmp_path, "echo broken; exit 4")
    assert "exit code 4" in str(err.value) and "setup.log" in str(err.value)
