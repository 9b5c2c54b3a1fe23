"""Noise floor, hardware effects, the stop rule's fit, and `fleetlab analyze` on a simulated session."""

from __future__ import annotations

import random

from fleetlab.analysis.hardware import bench_estimates, hardware_effects
from fleetlab.analysis.noise import noise_floor
from fleetlab.analysis.stop import StopRule, expected_gain_rate, fit_power_law
from fleetlab.experiment import Experiment, State


def run(i, key, hw, metric, role="replicate"):
    return Experiment(id=f"exp-{i:04d}", tag="t", description=key, state=State.DONE, role=role, content_hash=key,
                      hardware=hw, metric=metric)


def synthetic(seed, sigma=0.002, offset=-0.005, variants=12, reps=3):
    rng = random.Random(seed)
    exps, i = [], 0
    for v in range(variants):
        truth = 1.0 + rng.uniform(-0.02, 0.02)
        for hw, off in (("H100", 0.0), ("H200", offset)):
            for _ in range(reps):
                i += 1
                exps.append(run(i, f"v{v}", hw, truth + off + rng.gauss(0, sigma)))
    return exps


def test_noise_floor_interval_covers_sigma_and_screening_runs_do_not_count():
    covered = 0
    for seed in range(40):
        nf = noise_floor(synthetic(seed))
        p = nf["pooled"]
        assert p["df"] == 12 * 2 * 2
        covered += p["low"] <= 0.002 <= p["high"]
    assert covered >= 34  # a 95 % interval
    exps = synthetic(0) + [run(999, "v0", "H100", 5.0, role="explore")]
    assert noise_floor(exps)["pooled"]["sigma"] < 0.01


def test_hardware_effects_ols_recovers_the_offset_within_20_percent():
    for seed in range(20):
        exps = synthetic(seed, variants=20)
        eff = hardware_effects(exps)
        assert eff["reference"] in ("H100", "H200")
        h200 = eff["effects"].get("H200") or {"effect": -eff["effects"]["H100"]["effect"]}
        assert abs(h200["effect"] - -0.005) <= 0.001
        est = bench_estimates(synthetic(seed))
        assert abs(est["noise_sigma_est"] - 0.002) <= 0.0006 and "H200" in str(est["hardware_effects_est"])


def test_power_law_fit_and_rate():
    pts = [(t, 0.01 * t ** 0.3) for t in (1, 2, 4, 8, 16)]
    a, b = fit_power_law(pts)
    assert abs(a - 0.01) < 1e-9 and abs(b - 0.3) < 1e-9
    est = expected_gain_rate(pts, 16)
    assert abs(est["rate"] - 0.3 * 0.01 * 16 ** -0.7) < 1e-9
    # a long plateau lowers the expected rate
    assert expected_gain_rate(pts, 64)["rate"] < est["rate"] / 4


def test_stop_rule_says_why_in_diminishing_returns():
    class View:
        goal = "minimize"
        keep_rule = None

        def __init__(self):
            self.inc = None

        def incumbent(self):
            return self.inc

    view, rule = View(), StopRule(min_gain_per_gpu_hour=1e-4)
    stopped_at = None
    for step in range(1, 400):
        t = step * 0.5
        value = 1.0 - 0.01 * (t ** 0.3)
        if step in (1, 2, 4, 8, 16, 32, 64):
            view.inc = run(step, f"v{step}", "H100", value, role="explore")
        why = rule.should_stop(view, {"gpu_hours": t, "cost_usd": 2 * t})
        if why:
            stopped_at = t
            break
    assert stopped_at is not None and 20 < stopped_at < 200
    assert "diminishing returns" in why and "per GPU-hour" in why
    assert StopRule(0.0).should_stop(view, {"gpu_hours": 1e6}) is None  # 0: off


def test_analyze_and_render_on_a_simulated_session(tmp_path):
    from fleetlab.analysis.report import analyze, render_analysis
    from fleetlab.analysis.validity import ValidityKeepRule
    from fleetlab.bench.surfaces import NoisyBowl
    from fleetlab.clock import VirtualClock
    from fleetlab.facts import compute
    from fleetlab.fleet.sim import SimExecutor
    from fleetlab.scheduler import Limits, Scheduler
    from fleetlab.store.sqlite import SQLiteStore
    from fleetlab.strategies.simple import RandomStrategy
    from test_validity import write_project

    surface = NoisyBowl()
    project = write_project(surface, tmp_path / "p")
    store = SQLiteStore(project.db_path)
    clock = VirtualClock()
    sched = Scheduler(project, store, SimExecutor("sim:6xH100+2xH200", surface, clock), RandomStrategy(seed=0), clock,
                      tag="t", limits=Limits(max_hours=3), keep_rule=ValidityKeepRule(), git=False,
                      export_tsv=False, record_progress=False)
    from fleetlab.api import knob_space

    sched.set_space(knob_space(project))
    sched.run()
    a = analyze(project, store, space=knob_space(project))
    assert set(a["noise"]["by_hardware"]) == {"H100", "H200"}
    assert a["hardware"]["reference"] == "H100" and "H200" in a["hardware"]["effects"]
    assert a["hardware"]["tiers"] == {"H100": "screen", "H200": "validate"}
    assert a["recommendation"]["incumbent"] and a["cost"]["gpu_hours"] > 0
    f = compute(project, store, "t")  # analyze speaks the facts' figures, with the goal's sign
    assert a["recommendation"]["gain"] == f.to_dict()["gain"] and a["experiments"] == f.experiments
    text = render_analysis(a)
    for words in ("Noise floor", "Hardware effects", "Main effects", "Recommendation", "GPU-hours"):
        assert words in text
    if not f.incumbent["is_baseline"]:
        assert f"{abs(f.gain['abs']):.6g} {'better' if f.gain['abs'] > 0 else 'worse'}" in text
    store.close()
