"""Research-validity figures on simulated surfaces with a known truth (the closing note's numbers).

    python benchmarks/validity.py [--seeds 20] [--first-seed 0] [--stop-seeds 3] [--threshold 2e-4] [--drift -2]

1. Planted surface (tests/test_validity.py): 20 seeds x 4 h on sim:6xH100+2xH200, σ = 0.002, H200 effect -0.005,
   true improvements of exactly 3σ among null changes: σ error, hardware-effect error, nulls kept, 3σ kept, and the
   share of runs spent on the baseline, replicates, validations and controls; then again with the fleet's metric
   drifting by `--drift` σ over the session (`sim:...@drift=D@over=4`).
2. Stop rule on the `autoresearch` surface (random strategy, sim:13xH100+3xH200, up to 8 h): where it stops, the gain
   reached there vs at 8 h, and the GPU-hours saved against running 8 hours.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def planted(seeds: int, first: int = 0, drift: float = 0.0, **rule_options) -> dict:
    """The planted-truth figures over seeds first .. first+seeds-1 (the tests use 0..19).

    True 3σ improvements are scored two ways: against their parent (every scripted true improvement that reached a
    verdict: what the test asserts) and against the incumbent they were judged against, counting only those whose true
    gain over it is ≥ 3σ (a rule-made combination can become the incumbent while a true improvement is in flight and
    already hold an equal gain). `null_keep_vs_parent` is the α-level figure: among promoted nulls judged against their
    own parent, the share kept. `cost_share` is the share of finished runs spent on baseline, replicate and validate
    roles (the rest explore and combine)."""
    from test_validity import SIGMA, Planted, Scripted, simulate
    from fleetlab.analysis.validity import ValidityKeepRule

    sig, hw, nulls, kept_nulls, trues, kept_trues = [], [], 0, 0, 0, 0
    vs_inc, kept_vs_inc, promoted_own, kept_own = 0, 0, 0, 0
    roles: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(first, first + seeds):
            strat = Scripted(seed)
            rule = ValidityKeepRule(**rule_options) if rule_options else None
            fleet = "sim:6xH100+2xH200" + (f"@drift={drift * SIGMA}@over=4" if drift else "")
            sched, rule, _, _ = simulate(Planted(), fleet, strat, 4.0, Path(tmp) / f"p{seed}", seed, rule=rule)
            surface = Planted()
            sig.append(abs(rule.meas.sigma() - SIGMA) / SIGMA)
            hw.append(abs(rule.hardware_offsets()["H200"] + 0.005) / 0.005)
            for e in sched.experiments():
                if e.state.is_final and e.metric is not None:
                    roles[str(e.role)] = roles.get(str(e.role), 0) + 1
                hist = sched.store.decision_history(e.id)
                if e.role == "explore" and e.meta.get("null") and hist:
                    nulls += 1
                    kept_nulls += hist[-1].status == "keep"
                    if len(hist) > 1 and hist[-1].numbers.get("inc") == e.parent:
                        promoted_own += 1
                        kept_own += hist[-1].status == "keep"
            for cid in strat.true_ids:
                hist = sched.store.decision_history(cid)
                if hist and hist[-1].status in ("keep", "discard") and hist[-1].reason != "cancelled":
                    kept = hist[-1].status == "keep"
                    trues += 1
                    kept_trues += kept
                    inc = hist[-1].numbers.get("inc")
                    truth = lambda i: surface.truth({**surface.baseline, **sched.get(i).knobs})  # noqa: E731
                    if inc is None or truth(inc) - truth(cid) >= 3 * SIGMA - 1e-9:
                        vs_inc += 1
                        kept_vs_inc += kept
    runs = sum(roles.values())
    cost = sum(roles.get(r, 0) for r in ("baseline", "replicate", "validate", "control", "confirm"))
    return {"seeds": f"{first}..{first + seeds - 1}", "rule": rule_options or "defaults", "drift_sigma": drift,
            "control_share": round(roles.get("control", 0) / runs, 3),
            "sigma_err_median": round(statistics.median(sig), 3), "sigma_err_max": round(max(sig), 3),
            "sigma_within_30pct": sum(e <= 0.3 for e in sig), "hw_err_median": round(statistics.median(hw), 3),
            "hw_err_max": round(max(hw), 3), "hw_within_20pct": sum(e <= 0.2 for e in hw),
            "null_keep_rate": round(kept_nulls / nulls, 4), "nulls": nulls,
            "null_keep_vs_parent": round(kept_own / promoted_own, 4) if promoted_own else None,
            "promoted_nulls_vs_parent": promoted_own,
            "true_keep_rate": round(kept_trues / trues, 4), "trues": trues,
            "true_keep_vs_incumbent": round(kept_vs_inc / vs_inc, 4), "trues_vs_incumbent": vs_inc,
            "runs": runs, "cost_share": round(cost / runs, 3),
            "role_share": {r: round(n / runs, 3) for r, n in sorted(roles.items())}}


def stop(seed: int, threshold: float, strategy: str = "random") -> dict:
    from fleetlab.analysis.stop import StopRule
    from fleetlab.api import knob_space, make_keep_rule
    from fleetlab.bench.harness import write_project
    from fleetlab.bench.surfaces import load_surface
    from fleetlab.clock import VirtualClock
    from fleetlab.fleet.sim import SimExecutor
    from fleetlab.project import Project
    from fleetlab.scheduler import Limits, Scheduler
    from fleetlab.store.sqlite import SQLiteStore
    from fleetlab.strategies import make_strategy

    surface = load_surface("autoresearch")
    with tempfile.TemporaryDirectory() as tmp:
        project = Project.load(write_project(surface, Path(tmp)))
        clock = VirtualClock()
        ex = SimExecutor("sim:13xH100+3xH200", surface, clock)
        rule = StopRule(0.0)  # record the whole 8 h, then replay the rule on the trajectory
        sched = Scheduler(project, SQLiteStore(":memory:"), ex, make_strategy(strategy, seed=seed, project=project,
                          settings=project.settings), clock, tag="b", limits=Limits(max_hours=8),
                          keep_rule=make_keep_rule(project), git=False, export_tsv=False, record_progress=False,
                          seed=seed, stop_rule=rule)
        sched.set_space(knob_space(project))
        sched.run()
        traj, total = rule.trajectory, 16 * 8.0
        replay = StopRule(threshold)
        stopped = None
        t = 0.0
        while t <= total and stopped is None:
            replay.trajectory = [p for p in traj if p[0] <= t]
            replay._inc_id = "fixed"
            if replay.should_stop(type("V", (), {"incumbent": lambda self: None})(), {"gpu_hours": t}):
                stopped = t
            t += 0.25
        final = traj[-1][1] if traj else 0.0
        at_stop = max([g for tt, g in traj if stopped is not None and tt <= stopped] or [0.0])
        last_gain_at = traj[-1][0] if traj else None
        return {"seed": seed, "stopped_gpu_h": stopped, "saved_gpu_h": None if stopped is None else total - stopped,
                "gain_at_stop": at_stop, "gain_8h": final, "share_of_8h_gain": at_stop / final if final else None,
                "last_improvement_gpu_h": last_gain_at, "improvements": len(traj), "reason": replay.reason}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--stop-seeds", type=int, default=3)
    ap.add_argument("--threshold", type=float, default=2e-4)
    ap.add_argument("--drift", type=float, default=-2.0, help="drift over the 4 h session, in σ (0: none)")
    a = ap.parse_args()
    t0 = time.time()
    print(planted(a.seeds, a.first_seed))
    if a.drift:
        print(planted(a.seeds, a.first_seed, drift=a.drift))
    for s in range(a.stop_seeds):
        print(stop(s, a.threshold))
    print(f"wall {time.time() - t0:.0f} s")
