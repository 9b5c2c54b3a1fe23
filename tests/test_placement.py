"""Placement of queued runs on a mixed fleet (fleetlab/placement.py), checked directly on a pool of workers."""

from __future__ import annotations

from fleetlab.experiment import Experiment, State, format_id
from fleetlab.fleet._base import Worker
from fleetlab.placement import WorkerPool


def _exp(n: int, role: str = "explore", tier: str | None = None, hardware: str | None = None) -> Experiment:
    return Experiment(format_id(n), "t", "x", State.QUEUED, role=role, tier=tier, want_hardware=hardware)


def _pool(h100: int = 3, h200: int = 1) -> WorkerPool:
    pool = WorkerPool(tier_of=lambda w: "validate" if w.hardware == "H200" else "screen")
    pool.workers = ([Worker(f"h100-{i}", "H100", speed=1.0, price_per_hour=2.0) for i in range(h100)]
                    + [Worker(f"h200-{i}", "H200", speed=1.076, price_per_hour=3.0) for i in range(h200)])
    return pool


def test_validations_go_to_the_fastest_free_class_and_screening_to_the_slowest():
    pool = _pool()
    queue = [_exp(1), _exp(2, "validate", tier="validate"), _exp(3), _exp(4, "replicate")]
    placed = pool.place(queue)
    where = {e.id: w.hardware for e, w in placed}
    assert [e.id for e, _ in placed][:2] == [format_id(4), format_id(2)]  # replicates, then validations, first
    assert where[format_id(2)] == "H200"
    assert where[format_id(1)] == where[format_id(3)] == "H100"
    assert not queue  # all four started
    assert pool.facts().price_per_hour == 9.0 and pool.facts().classes == {"H100", "H200"}


def test_a_run_that_only_one_class_may_take_waits_for_it():
    pool = _pool()
    pool.busy.add("h200-0")
    queue = [_exp(1, "validate", tier="validate"), _exp(2)]
    placed = pool.place(queue)
    assert [e.id for e, _ in placed] == [format_id(2)] and [e.id for e in queue] == [format_id(1)]
    # it counts as work a free worker could take only when one of its class is free
    assert pool.queued_for_free(queue) == 0
    pool.busy.discard("h200-0")
    assert pool.queued_for_free(queue) == 1
    # hardware asked for but absent from the fleet: it may run anywhere
    assert pool.match(_exp(3, hardware="A100"), pool.workers[0])


def test_refresh_keeps_dropped_workers_out_and_busy_ids_consistent():
    pool = _pool()
    pool.busy |= {"h100-0", "h200-0"}
    pool.drop(pool.workers[0])
    assert "h100-0" not in pool.busy and len(pool.workers) == 3
    # the executor still lists the dropped worker, and the H200 node came back as an H100
    current = [Worker("h100-0", "H100"), Worker("h100-1", "H100"), Worker("h100-2", "H100"), Worker("h200-0", "H100")]
    assert pool.refresh(current, running_on=set())
    assert [w.id for w in pool.workers] == ["h100-1", "h100-2", "h200-0"]
    assert pool.busy == {"h200-0"}  # still listed, so still busy until its run ends
    assert pool.facts().classes == {"H100"}  # the cached facts follow the new list
    assert not pool.refresh(list(current), running_on=set())


def test_the_final_confirmation_goes_ahead_of_everything_queued_before_it():
    """Queued as the session nears its end, the confirmation must not wait behind a late keep's replicates and a
    pending validation (a 5-minute quickstart ran 2.3 minutes over)."""
    pool = _pool(h100=2, h200=0)
    queue = [_exp(1, "validate"), _exp(2, "replicate"), _exp(3), _exp(4, "confirm"), _exp(5, "confirm")]
    placed = pool.place(queue)
    assert [e.id for e, _ in placed] == [format_id(4), format_id(5)]
