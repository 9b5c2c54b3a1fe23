"""`fleetlab bench`: parse nothing (cli.py does), run the harness, print the table, write the plot."""

from __future__ import annotations

import json
import sys
from typing import Any

from fleetlab.errors import ConfigError


def bench_main(a: Any) -> int:
    from fleetlab.bench.harness import render_table, run_bench, write_plot

    fleets = list(a.fleet or [])
    if getattr(a, "workers", None):
        if a.workers <= 0:
            raise ConfigError("--workers must be a positive number", key="workers")
        fleets.append(str(a.workers))
    fleets = fleets or ["13xH100+3xH200"]
    if a.hours <= 0 or a.seeds <= 0:
        raise ConfigError("--hours and --seeds must be positive", key="hours")

    def progress(rec: dict) -> None:
        best = "-" if rec["best_metric"] is None else f"{rec['best_metric']:.4f}"
        print(f"  {rec['fleet']} {rec['strategy']} seed {rec['seed']}: {rec['experiments']} experiments, "
              f"utilization {rec['utilization']:.3f}, best {best} ({rec['wall_s']:.1f} s)", file=sys.stderr)

    records = run_bench(a.surface, fleets, a.strategy, hours=a.hours, seeds=a.seeds, target=a.target,
                        prune=bool(getattr(a, "prune", False)), noise=getattr(a, "noise", None), progress=progress)
    plot = write_plot(records, a.plot or "bench.png", target=a.target)
    if getattr(a, "json", False):
        runs = [{k: v for k, v in r.items() if k != "trajectory"} for r in records]
        print(json.dumps({"runs": runs, "plot": str(plot)}, indent=2))
    else:
        print(render_table(records))
        print(f"\nplot: {plot}")
    return 0
