"""How far the keep rule, not the proposals, limits time-to-target: `auto` with the statistical keep rule against
keep rules that read the truth (fleetlab/bench/oracle.py), on the `autoresearch` surface.

    python benchmarks/keep_bounds.py [--fleet 13xH100+3xH200] [--strategy auto] [--seeds 10] [--hours 2.5]
                                     [--target 0.975] [--jobs 2]

Rows: `validity` (the default keep rule: single-run screen at 1σ, R validation replicates, Welch test),
`truth` (keeps every truly better change at once: the bound for these proposals), `truth:σ` (keeps at once every
change truly better by more than one noise σ: a perfect rule that still needs a change worth σ). Columns: median true
val_bpb of the incumbent at 1 h, 2 h and the end, seeds that reached the target within 2 h and at all, the median
hours to the target (a seed that never reached it counts as never), median keeps.
"""

from __future__ import annotations

import argparse
import statistics
from concurrent.futures import ProcessPoolExecutor


def _at(trajectory: list, hours: float) -> float:
    value = trajectory[0][1]
    for t, v in trajectory:
        if t <= hours:
            value = v
    return value


def _one(args: tuple) -> dict:
    from fleetlab.bench.autoresearch import AutoresearchSurface
    from fleetlab.bench.harness import run_one

    fleet, strategy, seed, hours, target, rule = args
    surface = AutoresearchSurface()
    return run_one(surface, fleet, strategy, seed, hours, target, surface_name="autoresearch",
                   keep_rule=None if rule == "validity" else rule) | {"rule": rule}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fleet", default="13xH100+3xH200")
    ap.add_argument("--strategy", default="auto")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--hours", type=float, default=2.5)
    ap.add_argument("--target", type=float, default=0.975)
    ap.add_argument("--sigma", type=float, default=0.0015, help="the surface's noise σ (the truth:σ row's margin)")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    from fleetlab.bench.harness import _median_reached

    rules = ["validity", "truth", f"truth:{a.sigma:g}"]
    jobs = [(a.fleet, a.strategy, s, a.hours, a.target, r) for r in rules for s in range(a.seeds)]
    with ProcessPoolExecutor(a.jobs) as pool:
        records = list(pool.map(_one, jobs))
    print(f"{a.fleet}, {a.strategy}, {a.seeds} seeds, {a.hours:g} h, target {a.target}")
    print("| keep rule | true best at 1 h | at 2 h | at the end | reached by 2 h | reached | h to target | keeps |")
    print("|---|---|---|---|---|---|---|---|")
    for rule in rules:
        rs = [r for r in records if r["rule"] == rule]
        med = [statistics.median(_at(r["trajectory"], h) for r in rs) for h in (1.0, 2.0, a.hours)]
        hits = [r["hours_to_target"] for r in rs]
        by2 = sum(1 for h in hits if h is not None and h <= 2.0)
        reached = sum(1 for h in hits if h is not None)
        h = _median_reached(hits)
        print(f"| {rule} | {med[0]:.5f} | {med[1]:.5f} | {med[2]:.5f} | {by2}/{len(rs)} | {reached}/{len(rs)} | "
              f"{'-' if h is None else f'{h:.2f}'} | {statistics.median(r['keeps'] for r in rs):g} |")


if __name__ == "__main__":
    main()
