"""The loop itself, driven directly on the simulated fleet through the composition root: the ledger's records are
the store's, outside submissions go first, a resumed session repairs what a killed orchestrator left, and a new
session goes on from the previous one's incumbent and runs what was left queued."""

from __future__ import annotations

from pathlib import Path

from fleetlab.bench.harness import write_project
from fleetlab.bench.surfaces import NoisyBowl
from fleetlab.clock import VirtualClock
from fleetlab.experiment import Proposal, State
from fleetlab.fleet.sim import SimExecutor
from fleetlab.project import Project
from fleetlab.proposals import Materializer
from fleetlab.session import RunOptions, build_scheduler
from fleetlab.store.sqlite import SQLiteStore

FLEET = "sim:3xH100+1xH200"


def _scheduler(root: Path, store, tag: str, hours: float, *, start: float = 0.0, events=None, **opts):
    surface = NoisyBowl()
    if not (root / "fleetlab.toml").exists():
        write_project(surface, root)
    project = Project.load(root)
    clock = VirtualClock(start)
    executor = SimExecutor(FLEET, surface, clock, setup_s=0.0)
    options = RunOptions(strategy=opts.pop("strategy", "random"), seed=opts.pop("seed", 0), max_hours=hours, **opts)
    on_event = (lambda kind, **info: events.append((kind, info))) if events is not None else None
    return build_scheduler(project, store, executor, options, tag=tag, on_event=on_event, git=False,
                           export_tsv=False)


def _submit(sched, description: str, lr: float):
    """What `fleetlab submit` does from another process: a queued variant of the incumbent, recorded as manual."""
    store, project = sched.store, sched.project
    tag = store.sessions()[-1]["tag"]
    inc = store.incumbent(tag)
    parent = store.get(inc) if inc else None
    exp = Materializer(project, store).to_experiment(Proposal(description=description, knobs={"LR": lr}), parent,
                                                     tag=tag, seed=7, now=0.0, strategy="manual")
    return store.add_experiment(exp)


def test_the_ledgers_records_are_the_stores_and_a_finished_session_leaves_nothing_open(tmp_path: Path):
    store = SQLiteStore(tmp_path / "db.sqlite")
    events: list = []
    sched = _scheduler(tmp_path / "p", store, "t", 4.0, events=events)
    summary = sched.run()
    assert summary.stop_reason == "--max-hours 4 reached"
    stored = store.experiments()
    assert [e.id for e in sched.experiments()] == [e.id for e in stored] and len(stored) > 40
    for mine, theirs in zip(sched.experiments(), stored):
        assert mine == theirs, mine.id  # one write order: the ledger's copy is the record
    decisions = store.decisions()
    assert not [e for e in stored if e.state is State.RUNNING]  # what ran was collected or cancelled
    assert all(e.id in decisions for e in stored if e.state.is_final)  # every final state came with its decision
    assert all(e.id not in decisions for e in stored if not e.state.is_final)  # queued ones wait for the next session
    assert "pending" not in {d.status for d in decisions.values()}  # candidates of an ended session are settled
    assert [d.status for d in map(decisions.get, [e.id for e in stored if e.state is State.CANCELLED])] == \
        ["discard"] * sum(e.state is State.CANCELLED for e in stored)
    kept = [info["incumbent"].id for kind, info in events if kind in ("finished", "decision") and info["incumbent"]]
    changes = [x for i, x in enumerate(kept) if i == 0 or x != kept[i - 1]]
    assert [i for i, _ in store.incumbent_history("t")] == changes and changes[-1] == summary.incumbent
    assert len(changes) >= 2  # the baseline and at least one validated improvement


def test_outside_submissions_are_dispatched_before_the_strategys_proposals(tmp_path: Path):
    store = SQLiteStore(tmp_path / "db.sqlite")
    events: list = []
    sched = _scheduler(tmp_path / "p", store, "t", 3.0, events=events, lookahead=4)
    box: dict = {}

    def watch(kind, **info):
        events.append((kind, info))
        explores = [i["exp"] for k, i in events if k == "started_run" and i["exp"].role == "explore"]
        if kind == "started_run" and len(explores) == 3 and "sub" not in box:
            box["waiting"] = [e.id for e in sched.ledger.queue if e.role == "explore"]
            box["sub"] = _submit(sched, "an agent's variant", 0.01)

    sched.emit = watch
    sched.run()
    assert box["waiting"], "the strategy had explorations queued when the submission arrived"
    started = [info["exp"].id for kind, info in events if kind == "started_run"]
    assert all(started.index(box["sub"].id) < started.index(w) for w in box["waiting"] if w in started)
    assert store.get(box["sub"].id).state.is_final


def test_a_resumed_session_repairs_what_a_killed_orchestrator_left(tmp_path: Path):
    """A run recorded running with a handle (the orchestrator died while it ran), and a run finished without its
    decision (as an older store could be left): on resume the first runs again, the second gets its decision."""
    store = SQLiteStore(tmp_path / "db.sqlite")
    first = _scheduler(tmp_path / "p", store, "t", 1.0)
    first.run()
    inc = store.get(store.incumbent("t"))
    mat = Materializer(first.project, store)
    orphan, undecided = (store.add_experiment(mat.to_experiment(Proposal(description=d, knobs={"LR": lr}), inc,
                                                                tag="t", seed=3, now=3600.0, strategy="random"))
                         for d, lr in (("was running", 0.02), ("finished, no decision", 0.03)))
    for e in (orphan, undecided):
        store.mark_running(e.id, "sim-H100-01", "H100", 3600.0, {"workdir": "gone"})
    store.finish(undecided.id, State.DONE, metric=inc.metric + 0.05, finished_at=3700.0)
    store.save_session("t", status="interrupted")
    events: list = []
    second = _scheduler(tmp_path / "p", store, "t", 2.0, start=3800.0, events=events)
    second.run()
    kinds = {(kind, info["exp"].id) for kind, info in events if "exp" in info}
    assert ("requeued", orphan.id) in kinds and ("started_run", orphan.id) in kinds
    assert store.get(orphan.id).state.is_final and store.get(orphan.id).meta["requeued"]
    assert store.decisions()[undecided.id].status == "discard"  # re-derived: much worse than the incumbent
    assert all(e.id in store.decisions() for e in store.experiments() if e.state.is_final)


def test_a_new_session_goes_on_from_the_last_incumbent_and_runs_what_was_left_queued(tmp_path: Path):
    store = SQLiteStore(tmp_path / "db.sqlite")
    first = _scheduler(tmp_path / "p", store, "a", 4.0)
    first.run()
    inc = store.get(store.incumbent("a"))
    assert inc.role != "baseline"  # the first session found something to go on from
    submitted = _submit(first, "submitted between sessions", 0.012)
    events: list = []
    second = _scheduler(tmp_path / "p", store, "b", 1.0, start=10 * 3600.0, events=events)
    second.run()
    started = [info["exp"] for kind, info in events if kind == "started_run"]
    assert started[0].role == "baseline" and started[0].content_hash == inc.content_hash  # re-measured first
    assert started[0].parent == inc.id and started[0].tag == "b"
    back = store.get(submitted.id)
    assert back.tag == "b" and back.state.is_final and submitted.id in [e.id for e in started]
