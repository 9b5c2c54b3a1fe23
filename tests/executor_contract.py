"""The contract every Executor passes (see fleetlab/fleet/_base.py), run by tests/test_executor_contract.py.

To add an executor, add a factory to FACTORIES: it takes pytest's tmp_path and returns a Harness. An executor whose
module does not exist yet (or whose optional dependency is not installed) is skipped, not failed. A Harness knows how
to turn a shell command into a RunSpec and how to wait for runs; override `spec` or `wait` for an executor that does
not run shell commands or that runs on a virtual clock.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from fleetlab.fleet._base import Executor, Handle, RunSpec, Update


@dataclass
class Harness:
    executor: Executor
    root: Path
    handles: list[Handle] = field(default_factory=list)

    def spec(self, experiment_id: str, command: str, timeout_s: float = 60.0) -> RunSpec:
        workdir = self.root / "runs" / experiment_id
        workdir.mkdir(parents=True, exist_ok=True)
        return RunSpec(experiment_id, workdir, command, {"EXPERIMENT_ID": experiment_id}, timeout_s)

    def submit(self, experiment_id: str, command: str, timeout_s: float = 60.0, worker_index: int = 0) -> Handle:
        handle = self.executor.submit(self.spec(experiment_id, command, timeout_s),
                                      self.executor.workers()[worker_index])
        self.handles.append(handle)
        return handle

    def wait(self, handles: list[Handle], timeout_s: float = 20.0) -> dict[str, tuple[list[str], Update]]:
        """Poll until every handle finished; per experiment id, the lines seen and the finishing update."""
        lines: dict[str, list[str]] = {h.experiment_id: [] for h in handles}
        final: dict[str, Update] = {}
        deadline = time.monotonic() + timeout_s
        while len(final) < len(handles):
            assert time.monotonic() < deadline, f"runs still unfinished after {timeout_s} s: {set(lines) - set(final)}"
            for u in self.executor.poll([h for h in handles if h.experiment_id not in final]):
                lines[u.experiment_id].extend(u.lines)
                if u.finished:
                    assert u.experiment_id not in final, "a run was reported finished twice"
                    final[u.experiment_id] = u
            time.sleep(0.01)
        return {k: (lines[k], final[k]) for k in final}

    def cleanup(self) -> None:
        for h in self.handles:
            try:
                self.executor.cancel(h)
            except Exception:  # noqa: BLE001 - best effort at teardown
                pass
        self.executor.close()


def _local(tmp_path: Path) -> Harness:
    from fleetlab.fleet.local import LocalExecutor

    return Harness(LocalExecutor(slots=2, state_dir=tmp_path / ".fleetlab", grace_s=0.5), tmp_path)


def _local_sandboxed(tmp_path: Path) -> Harness:
    from fleetlab.fleet.local import LocalExecutor
    from fleetlab.fleet.sandbox import Sandbox

    sandbox = Sandbox("auto")
    if not sandbox.active:
        pytest.skip(sandbox.notice)
    return Harness(LocalExecutor(slots=2, state_dir=tmp_path / ".fleetlab", grace_s=0.5, sandbox=sandbox), tmp_path)


def _ray(tmp_path: Path) -> Harness:
    pytest.importorskip("ray")
    from ray_cluster import ray_cluster

    from fleetlab.fleet.ray import RayExecutor

    return Harness(RayExecutor(f"ray:{ray_cluster()[1]}", poll_interval_s=0.1), tmp_path)


def _sky(tmp_path: Path) -> Harness:
    from fake_sky import FakeSky

    from fleetlab.fleet.skypilot import SkyExecutor

    fake = FakeSky(tmp_path / "clusters", validate=False)  # tests/test_skypilot.py checks the configs with SkyPilot
    return Harness(SkyExecutor("sky:2", adapter=fake, poll_interval_s=0.05), tmp_path)


# name -> factory; each engineer adds theirs here.
FACTORIES: dict[str, Callable[[Path], Harness]] = {
    "local": _local,
    "local-sandboxed": _local_sandboxed,
    "ray": _ray,
    "sky": _sky,
}


@pytest.fixture(params=sorted(FACTORIES))
def harness(request, tmp_path):
    try:
        h = FACTORIES[request.param](tmp_path)
    except ModuleNotFoundError as e:
        pytest.skip(f"executor {request.param!r} is not available: {e}")
    yield h
    h.cleanup()


# ---------------------------------------------------------------------------------------------------------------------
# the contract


def test_workers_have_ids_and_hardware_labels(harness):
    workers = harness.executor.workers()
    assert workers
    assert len({w.id for w in workers}) == len(workers)
    assert all(isinstance(w.hardware, str) and w.hardware for w in workers)


def test_successful_run_finishes_with_exit_0_and_its_output(harness):
    h = harness.submit("exp-0001", "echo 'val_bpb: 1.0'")
    assert json.loads(json.dumps(h.data)) == h.data  # handle data must survive the store
    lines, u = harness.wait([h])["exp-0001"]
    assert u.finished and u.exit_code == 0 and not u.timed_out and u.infra_failure is None
    assert "val_bpb: 1.0" in lines
    assert "val_bpb: 1.0" in harness.executor.logs(h)
    if u.started_at is not None and u.finished_at is not None:
        assert u.started_at <= u.finished_at


def test_failing_run_finishes_with_nonzero_exit(harness):
    h = harness.submit("exp-0002", "echo oops; exit 3")
    lines, u = harness.wait([h])["exp-0002"]
    assert u.finished and u.exit_code not in (0, None) and u.infra_failure is None
    assert "oops" in lines


def test_cancelled_run_is_reported_finished(harness):
    h = harness.submit("exp-0003", "sleep 60")
    harness.executor.cancel(h)
    _, u = harness.wait([h], timeout_s=10)["exp-0003"]
    assert u.finished and u.exit_code != 0


def test_run_past_its_timeout_is_killed(harness):
    h = harness.submit("exp-0004", "sleep 60", timeout_s=0.5)
    _, u = harness.wait([h], timeout_s=15)["exp-0004"]
    assert u.finished and u.timed_out and u.exit_code != 0


def test_finished_run_is_reported_once(harness):
    h = harness.submit("exp-0005", "echo done")
    harness.wait([h])
    assert not [u for u in harness.executor.poll([h]) if u.finished]


def test_workers_run_in_parallel(harness):
    workers = harness.executor.workers()
    if len(workers) < 2:
        pytest.skip("a single-worker fleet")
    a = harness.submit("exp-0006", "echo a", worker_index=0)
    b = harness.submit("exp-0007", "echo b", worker_index=1)
    results = harness.wait([a, b])
    assert results["exp-0006"][0] == ["a"] and results["exp-0007"][0] == ["b"]
    assert all(u.exit_code == 0 for _, u in results.values())
