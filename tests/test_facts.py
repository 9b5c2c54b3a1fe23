"""fleetlab.facts: each derived figure has one definition (baseline and incumbent arms, gain signed positive=better,
counts, accounting, warnings), a live session is told apart from an ended one by its run lock, and the figures are
JSON-safe."""

from __future__ import annotations

import json

import pytest
from test_report import CRASH, D, SESSION, T0, make

from fleetlab.api import RunLock
from fleetlab.experiment import Decision, Experiment, State
from fleetlab.facts import compute, serving


def test_facts_have_one_definition_of_each_figure(tmp_path):
    project, store = make(tmp_path, SESSION)
    f = compute(project, store)
    assert f.tag == "t" and f.serving is False
    b, i, g = f.baseline, f.incumbent, f.gain
    assert b["id"] == "exp-0001" and b["n"] == 3 and b["mean"] == pytest.approx(0.065)
    assert b["sd"] == pytest.approx(0.001) and b["ci"][0] < 0.065 < b["ci"][1]
    # the incumbent's mean is over its validation runs: its own screening run (0.050) was picked for looking good
    assert i["id"] == "exp-0006" and i["n"] == 2 and i["mean"] == pytest.approx(0.055) and i["validated"]
    assert g["abs"] == pytest.approx(0.010) and g["pct"] == pytest.approx(100 * 0.010 / 0.065)
    assert g["ci"][0] < g["abs"] < g["ci"][1]
    assert f.confirmed_gain is None
    # counts: finished = a final state but cancelled; the baseline is no keep; nothing in flight after the end
    assert f.experiments == 10
    c = f.counts
    # screened variants by verdict; the replicates and validation runs by their role, never as discards
    assert c["by_decision"] == {"baseline": 1, "replicate": 2, "validate": 2, "keep": 1, "discard": 2, "crash": 1,
                                "pending": 1}
    assert c["by_state"] == {"done": 8, "crash": 1, "pruned": 1}
    assert c["by_role"] == {"baseline": 1, "replicate": 2, "explore": 5, "validate": 2}
    assert c["cancelled"] == 1 and c["queued"] == 1 and c["running"] == 0 and f.queue_depth == 1
    assert f.idle_workers is None and f.workers == 2
    assert f.utilization == pytest.approx(6000 / 7200) and f.gpu_hours == pytest.approx(2.0)
    assert f.cost_usd == 4.5 and f.experiments_per_hour == pytest.approx(10 / f.wall_hours)
    assert f.training_share == pytest.approx(6.0 / 8.0)
    assert any("more than once" in w and "exp-0010" in w for w in f.warnings)


def test_gain_is_signed_by_the_goal_and_the_confirmation_is_paired(tmp_path):
    spec = [(D, 0.90, "baseline", "baseline", "B", "keep"), (D, 0.92, "base", "replicate", "B", "discard"),
            (D, 0.97, "wider", "explore", "K", "keep"), (D, 0.94, "val", "validate", "K", "discard"),
            (D, 0.96, "val", "validate", "K", "discard"),
            (D, 0.91, "confirm baseline", "confirm", "B", "discard"), (D, 0.93, "confirm baseline", "confirm", "B", ""),
            (D, 0.94, "confirm incumbent", "confirm", "K", "discard"), (D, 0.98, "confirm inc", "confirm", "K", "")]
    project, store = make(tmp_path, spec, goal="maximize")
    f = compute(project, store)
    # every fair draw of the code counts (baseline, replicates, validation, confirmations), not the screening run
    assert f.baseline["n"] == 4 and f.baseline["mean"] == pytest.approx(0.915)
    assert f.incumbent["n"] == 4 and f.incumbent["mean"] == pytest.approx(0.955)
    assert f.gain["abs"] == pytest.approx(0.04) and f.gain["pct"] == pytest.approx(100 * 0.04 / 0.915)
    cg = f.confirmed_gain  # pairs in time order on the class: 0.91/0.94, 0.93/0.98
    assert cg["abs"] == pytest.approx(0.04) and (cg["baseline_n"], cg["incumbent_n"]) == (2, 2)
    assert cg["ci"][0] < cg["abs"] < cg["ci"][1]

    flipped = [(st, None if m is None else 2 - m, *rest) for st, m, *rest in spec]  # the same story, minimised
    project, store = make(tmp_path / "min", flipped)
    g = compute(project, store).gain
    assert g["abs"] == pytest.approx(0.04) and g["ci"] == pytest.approx(f.gain["ci"])


def test_a_keep_without_validation_is_said_to_be_one(tmp_path):
    spec = [(D, 1.0, "baseline", "baseline", "B", "keep"), (D, 0.8, "better", "explore", "K", "keep"),
            (D, 0.7, "better still", "explore", "K2", "keep"), (D, 0.6, "and again", "explore", "K3", "keep")]
    project, store = make(tmp_path, spec)
    f = compute(project, store)
    assert f.incumbent["id"] == "exp-0004" and f.incumbent["n"] == 1 and not f.incumbent["validated"]
    assert f.incumbent["ci"] is None and f.gain["ci"] is None and f.gain["abs"] == pytest.approx(0.4)
    assert f.counts["by_decision"] == {"baseline": 1, "keep": 3}
    assert f.projection["improvements"] == 3 and f.projection["gain_per_gpu_hour"] > 0
    assert f.hours_to_best == pytest.approx((10 * 3 + 9) / 3600)


def test_a_live_session_is_seen_through_its_run_lock(tmp_path):
    spec = [(D, 1.0, "baseline", "baseline", "B", "keep"), (State.RUNNING, None, "x", "explore", "x", None),
            (State.QUEUED, None, "y", "explore", "y", None)]
    project, store = make(tmp_path, spec)
    store.save_session("t", status="running", updated_at=T0 + 100)
    assert serving(project) is False
    f = compute(project, store)
    assert f.serving is False and f.counts["running"] == 0 and f.counts["queued"] == 2  # a run left behind
    assert any("left running" in w for w in f.warnings)
    with RunLock(project):
        assert serving(project) is True
        live = compute(project, store, now=T0 + 200)
        assert live.serving and live.ended_at is None and live.counts["running"] == 1 and live.counts["queued"] == 1
        assert live.idle_workers == 1 and live.queue_depth == 1
        # the record's accounting is a checkpoint: the running run and the held workers count up to now
        assert live.busy_s == pytest.approx(6000 + (200 - 10))
        assert live.available_s == pytest.approx(7200 + 2 * 100)
        assert live.wall_hours == pytest.approx(200 / 3600)
    assert serving(project) is False
    json.dumps(live.to_dict(), allow_nan=False)


def test_only_finished_runs_count_and_failures_are_crashes(tmp_path):
    spec = [(CRASH, None, "baseline", "baseline", "B", "crash"), (State.TIMEOUT, None, "slow", "explore", "s", "crash"),
            (State.NAN, None, "diverged", "explore", "n", None)]
    project, store = make(tmp_path, spec)
    f = compute(project, store)
    assert f.baseline is None and f.incumbent is None and f.gain is None
    assert f.experiments == 3 and f.counts["by_decision"] == {"crash": 3}
    assert f.counts["by_state"] == {"crash": 1, "timeout": 1, "nan": 1}
    e = store.add_experiment(Experiment(id="", tag="t", description="later", state=State.QUEUED, queued_at=T0))
    store.add_decision(e.id, Decision("pending"), T0)  # a verdict does not make a queued run finished
    assert compute(project, store).experiments == 3


def test_drift_of_the_baselines_reruns_is_a_warning(tmp_path):
    spec = [(D, 1.0 + 0.02 * i + (0.001 if i % 2 else 0.0), "baseline", "baseline" if i == 0 else "replicate", "B",
             "keep" if i == 0 else "discard") for i in range(6)]
    project, store = make(tmp_path, spec)
    warnings = compute(project, store).warnings
    assert any("metric drifted" in w and "exp-0001" in w and "worse" in w for w in warnings), warnings
    steady = [(D, 1.0 + (0.001 if i % 2 else 0.0), *rest) for i, (_, _, *rest) in enumerate(spec)]
    project, store = make(tmp_path / "steady", steady)
    assert not any("drifted" in w for w in compute(project, store).warnings)
