"""The harness behind `fleetlab bench`: the real scheduler and strategies on a simulated fleet, against a surface.

For every (fleet, strategy, seed) it writes a throwaway project (a train.py of `NAME = value` lines from the surface's
baseline and a fleetlab.toml whose [knobs] is the surface's space) into a temporary directory, opens an in-memory
store, and runs `fleetlab.scheduler.Scheduler` on a VirtualClock with a `SimExecutor` for `hours` of simulated time.
Nothing is mocked: proposals are rendered into train.py edits, the simulated fleet reads the knobs back out, the
collector parses the printed `val_bpb:` lines, the keep rule decides.

One record per run (`run_bench` returns them; `--json` prints them under `runs`):
  surface, fleet (as given), strategy, seed, experiments (finished in the session), experiments_per_hour,
  utilization (busy worker-seconds / available worker-seconds; setup is not busy), best_metric (noise-free metric of
  the final incumbent on the fleet's fastest hardware class), optimum (the surface's declared optimum or None),
  hours_to_target, gpu_hours_to_target (first time the incumbent's *true* metric reaches the target; GPU-hours are
  worker-hours held, busy or idle, as the critics of the original counted them), cost_usd (worker-hours x price),
  keeps (incumbent changes after the baseline), false_keep_rate (share of keeps whose true metric is not better than
  their parent's), plus valid_experiments, gpu_hours, workers, optimum_on_fleet, stop_reason, wall_s and cpu_s (real and
  CPU seconds the simulation took), trajectory ([hours, true metric of the incumbent] at every change),
  noise_sigma_est (the final pooled σ estimate, None when nothing was replicated) and hardware_effects_est (hardware ->
  estimated additive effect on the metric relative to the slowest class; {} on a one-class fleet).
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

from fleetlab.bench.surfaces import load_surface
from fleetlab.errors import ConfigError
from fleetlab.experiment import Experiment, State

__all__ = ["run_bench", "run_one", "render_table", "write_plot", "write_project", "normalize_fleet"]

RECORD_FIELDS = ("surface", "fleet", "strategy", "seed", "experiments", "experiments_per_hour", "utilization",
                 "best_metric", "optimum", "hours_to_target", "gpu_hours_to_target", "cost_usd", "keeps",
                 "false_keep_rate")


# ---------------------------------------------------------------------------------------------------------------------
# The throwaway project


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return repr(value)
    if isinstance(value, int) and value >= 1024 and value & (value - 1) == 0:
        return f"2**{value.bit_length() - 1}"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    raise ConfigError(f"surface baseline value {value!r} is not a number, string or bool")


def train_py(baseline: dict[str, Any]) -> str:
    """`NAME = value` lines; knobs named `NAME[i]` are written back as one tuple `NAME = (a, b)`."""
    lines = ["# train.py written by `fleetlab bench` from the surface's baseline; the simulated fleet reads these knobs",
             ""]
    tuples: dict[str, dict[int, Any]] = {}
    for name, value in baseline.items():
        base, _, index = name.partition("[")
        if index:
            tuples.setdefault(base, {})[int(index.rstrip("]"))] = value
            if len(tuples[base]) == 1:
                lines.append(f"@{base}")  # placeholder keeps the baseline's order
        else:
            lines.append(f"{name} = {_literal(value)}")
    out = []
    for line in lines:
        if line.startswith("@"):
            items = tuples[line[1:]]
            out.append(f"{line[1:]} = ({', '.join(_literal(items[i]) for i in sorted(items))})")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def write_project(surface: Any, root: Path) -> Path:
    """Write train.py and fleetlab.toml for `surface` into root (created); return root."""
    import tomli_w

    root.mkdir(parents=True, exist_ok=True)
    (root / "train.py").write_text(train_py(surface.baseline))
    knobs: dict[str, Any] = {}
    for name, dom in surface.space.items():
        if "choices" in dom:
            knobs[name] = {"choices": list(dom["choices"])}
        else:
            knobs[name] = {"low": float(dom["low"]), "high": float(dom["high"]), "log": bool(dom.get("log", False))}
    constraints = list(getattr(surface, "constraints", []) or [])
    if constraints:
        knobs["constraints"] = constraints
    budget = float(getattr(surface, "time_budget_s", 300.0) or 300.0)
    config = {
        "project": {"name": "bench", "editable": ["train.py"], "command": "python train.py",
                    "time_budget_s": budget, "timeout_s": max(600.0, 2 * budget)},
        "metric": {"name": getattr(surface, "metric_name", "val_bpb"), "goal": getattr(surface, "goal", "minimize")},
        "knobs": knobs,
    }
    (root / "fleetlab.toml").write_text(tomli_w.dumps(config))
    return root


def normalize_fleet(fleet: str) -> str:
    """`13xH100+3xH200` or `sim:13xH100+3xH200` -> `sim:13xH100+3xH200`."""
    fleet = fleet.strip()
    return fleet if fleet.startswith("sim:") else f"sim:{fleet}"


# ---------------------------------------------------------------------------------------------------------------------
# One run


class _Trace:
    """Follows the scheduler's events: every change of incumbent, with the simulated time it happened."""

    def __init__(self, clock: Any):
        self.clock = clock
        self.incumbents: list[tuple[float, Experiment]] = []

    def __call__(self, kind: str, **info: Any) -> None:
        inc = info.get("incumbent")
        if inc is not None and (not self.incumbents or self.incumbents[-1][1].id != inc.id):
            self.incumbents.append((self.clock.now(), inc))


def run_one(surface: Any, fleet: str, strategy: str, seed: int, hours: float, target: float | None = None, *,
            surface_name: str | None = None, prune: bool = False, setup_s: float = 60.0, workdir: Path | None = None,
            strategy_options: dict[str, Any] | None = None, keep_rule: str | None = None) -> dict[str, Any]:
    """Run one simulated session and return its record (see the module docstring)."""
    from fleetlab.clock import VirtualClock
    from fleetlab.fleet.sim import SimExecutor
    from fleetlab.project import Project
    from fleetlab.session import RunOptions, build_scheduler, make_session_strategy
    from fleetlab.store.sqlite import SQLiteStore

    surface = load_surface(surface)
    fleet_spec = normalize_fleet(fleet)
    with tempfile.TemporaryDirectory(prefix="fleetlab-bench-", dir=workdir) as tmp:
        project = Project.load(write_project(surface, Path(tmp)))
        store = SQLiteStore(":memory:")
        clock = VirtualClock()
        executor = SimExecutor(fleet_spec, surface, clock, setup_s=setup_s, progress=prune, wake_on_progress=prune,
                               session_s=hours * 3600.0)  # `@drift=D` spreads over the session's hours
        opts = RunOptions(fleet=fleet_spec, strategy=strategy, seed=seed, max_hours=hours, prune=prune,
                          strategy_options=dict(strategy_options or {}))
        strat = make_session_strategy(project, opts)
        from fleetlab.bench import oracle

        opts.keep_rule = keep_rule or strat.keep_rule
        margin = oracle.parse(opts.keep_rule)
        keep = None if margin is None else oracle.TruthKeepRule(executor, project.goal, margin)
        trace = _Trace(clock)
        sched = build_scheduler(project, store, executor, opts, tag="bench", strategy=strat, keep_rule=keep,
                                on_event=trace, git=False, export_tsv=False, record_progress=prune)
        t0, c0 = time.perf_counter(), time.process_time()
        summary = sched.run()
        wall_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        end = clock.now()
        exps = [e for e in sched.experiments() if e.tag == "bench"]
        record = _record(surface, executor, exps, trace, summary, end, hours, target)
        from fleetlab.analysis.hardware import bench_estimates

        record.update(bench_estimates(exps, executor.workers()))  # noise_sigma_est, hardware_effects_est (issue 6)
        ran = [str(e.role) for e in exps if e.state.is_final and e.state is not State.CANCELLED]
        for role in ("control", "confirm"):  # what like-with-like comparisons cost: a share of the runs
            record[f"{role}_share"] = round(ran.count(role) / max(1, len(ran)), 4)
        store.close()
    record.update(surface=surface_name or getattr(surface, "name", type(surface).__name__), fleet=fleet,
                  strategy=strategy, seed=seed, wall_s=round(wall_s, 2),
                  cpu_s=round(cpu_s, 2))
    return {k: record[k] for k in RECORD_FIELDS} | {k: v for k, v in record.items() if k not in RECORD_FIELDS}


def _training_share(finished: list[Experiment], busy_s: float) -> float | None:
    """Training seconds the runs printed / busy worker-seconds: what utilization hides (start-up, evaluation, crashes)."""
    seconds = [e.extras.get("training_seconds") for e in finished]
    trained = sum(float(s) for s in seconds if s is not None)
    return round(trained / busy_s, 4) if busy_s > 0 and any(s is not None for s in seconds) else None


def _record(surface, executor, exps: list[Experiment], trace: _Trace, summary, end: float, hours: float,
            target: float | None) -> dict[str, Any]:
    goal = getattr(surface, "goal", "minimize")
    sign = 1.0 if goal == "minimize" else -1.0
    workers = executor.workers()
    finished = [e for e in exps if e.state.is_final and not (e.state is State.CANCELLED and e.finished_at is not None
                                                               and e.finished_at >= end)]
    elapsed_h = max(end - executor.started_at, 1e-9) / 3600.0

    def truth(exp: Experiment | None) -> float | None:
        if exp is None:
            return surface.evaluate(dict(surface.baseline), executor.fastest, None).get("metric")
        try:
            return executor.truth(exp.id)
        except Exception:  # an experiment that never ran on this fleet (recorded elsewhere)
            return surface.evaluate({**surface.baseline, **exp.knobs}, executor.fastest, None).get("metric")

    by_id = {e.id: e for e in exps}
    trajectory, keeps, false_keeps, reached = [], 0, 0, None
    for i, (t, inc) in enumerate(trace.incumbents):
        value = truth(inc)
        h = (t - executor.started_at) / 3600.0
        trajectory.append([round(h, 4), value])
        if i > 0:
            keeps += 1
            parent_value = truth(by_id.get(inc.parent)) if inc.parent else truth(None)
            if value is None or parent_value is None or sign * value >= sign * parent_value:
                false_keeps += 1
        if reached is None and target is not None and value is not None and sign * value <= sign * target:
            reached = h
    best = trajectory[-1][1] if trajectory else None
    optimum = getattr(surface, "optimum", None)
    on_fleet = surface.optimum_on(executor.fastest) if hasattr(surface, "optimum_on") else optimum
    prices = sum(w.price_per_hour for w in workers)
    return {
        "experiments": len(finished),
        "experiments_per_hour": round(len(finished) / elapsed_h, 2),
        "utilization": round(executor.utilization(end), 4),
        "best_metric": best,
        "optimum": optimum,
        "hours_to_target": None if reached is None else round(reached, 3),
        "gpu_hours_to_target": None if reached is None else round(reached * len(workers), 2),
        "cost_usd": round(prices * elapsed_h, 2),
        "keeps": keeps,
        "false_keep_rate": round(false_keeps / keeps, 4) if keeps else None,
        "valid_experiments": sum(1 for e in finished if e.state is State.DONE),
        "gpu_hours": round(elapsed_h * len(workers), 2),
        "workers": len(workers),
        "optimum_on_fleet": on_fleet,
        "stop_reason": summary.stop_reason,
        "scheduler_utilization": round(summary.utilization, 4),
        "training_share": _training_share(finished, executor.busy_seconds(end)),
        "trajectory": trajectory,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Many runs, the table and the plot


def run_bench(surface: str | Any, fleets: Iterable[str], strategies: Iterable[str], hours: float = 8.0,
              seeds: int | Iterable[int] = 3, target: float | None = None, *, prune: bool = False,
              noise: float | None = None, setup_s: float = 60.0, strategy_options: dict[str, dict] | None = None,
              progress: Any = None) -> list[dict[str, Any]]:
    """One record per (fleet, strategy, seed); `strategies` may be one comma-separated string."""
    name = surface if isinstance(surface, str) else getattr(surface, "name", type(surface).__name__)
    options = {} if noise is None else {"noise_sigma": noise} if name == "autoresearch" else {"sigma": noise}
    surf = load_surface(surface, **options) if isinstance(surface, str) else surface
    if isinstance(strategies, str):
        strategies = [s.strip() for s in strategies.split(",") if s.strip()]
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    records = []
    for fleet in fleets:
        for strategy in strategies:
            for seed in seed_list:
                rec = run_one(surf, fleet, strategy, seed, hours, target, surface_name=name, prune=prune,
                              setup_s=setup_s, strategy_options=(strategy_options or {}).get(strategy))
                records.append(rec)
                if progress is not None:
                    progress(rec)
    return records


def _median(values: list[Any]) -> Any:
    xs = [v for v in values if v is not None]
    if not xs:
        return None
    return statistics.median(xs)


def _median_reached(values: list[Any]) -> Any:
    """Median over every seed of a time to target, a seed that never reached it counting as infinitely late: None
    when fewer than half of the seeds reached it (the median of the reached ones alone flatters)."""
    xs = sorted(math.inf if v is None else v for v in values)
    if not xs:
        return None
    m = statistics.median(xs)
    return None if math.isinf(m) else m


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.{digits}f}"
    return str(v)


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians over seeds per (fleet, strategy); `reached` counts seeds that hit the target. Times to the target
    are medians over every seed, one that never reached it counting as never ('-' when fewer than half did)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["fleet"], r["strategy"]), []).append(r)
    rows = []
    for (fleet, strategy), rs in groups.items():
        row = {"fleet": fleet, "strategy": strategy, "seeds": len(rs)}
        for k in ("experiments", "experiments_per_hour", "utilization", "best_metric", "cost_usd", "keeps",
                  "false_keep_rate"):
            row[k] = _median([r[k] for r in rs])
        for k in ("hours_to_target", "gpu_hours_to_target"):  # a seed that never reached it counts as never
            row[k] = _median_reached([r[k] for r in rs])
        row["reached"] = sum(1 for r in rs if r["hours_to_target"] is not None)
        opt = rs[0].get("optimum_on_fleet", rs[0]["optimum"])  # the fleet's fastest class: an H100 fleet's own optimum
        row["gap"] = None if opt is None or row["best_metric"] is None else abs(row["best_metric"] - opt)
        rows.append(row)
    return rows


def render_table(records: list[dict[str, Any]]) -> str:
    """A markdown table: medians over seeds per (fleet, strategy). `gap to opt` is measured against the true optimum
    on the fleet's fastest hardware class (for an all-H100 fleet, the H100 optimum)."""
    head = ["fleet", "strategy", "seeds", "exp", "exp/h", "util", "best (true)", "gap to opt", "h to target",
            "GPU-h to target", "reached", "cost $", "keeps", "false keeps"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summarize(records):
        cells = [row["fleet"], row["strategy"], str(row["seeds"]), _fmt(row["experiments"], 0),
                 _fmt(row["experiments_per_hour"], 1), _fmt(row["utilization"], 3), _fmt(row["best_metric"], 4),
                 _fmt(row["gap"], 4), _fmt(row["hours_to_target"], 2), _fmt(row["gpu_hours_to_target"], 1),
                 f"{row['reached']}/{row['seeds']}", _fmt(row["cost_usd"], 0), _fmt(row["keeps"], 0),
                 _fmt(row["false_keep_rate"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _step_median(trajectories: list[list[list[float]]], grid: list[float]) -> list[float | None]:
    """Median over seeds of the best-so-far true metric at each grid time (a step function per seed)."""
    out = []
    for t in grid:
        values = []
        for traj in trajectories:
            v = None
            for h, m in traj:
                if h > t:
                    break
                v = m
            if v is not None:
                values.append(v)
        out.append(statistics.median(values) if values else None)
    return out


def write_plot(records: list[dict[str, Any]], path: str | Path, target: float | None = None) -> Path:
    """Best true metric vs wall hours and vs GPU-hours, one line per strategy (median over seeds), a row per fleet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fleets = list(dict.fromkeys(r["fleet"] for r in records))
    fig, axes = plt.subplots(len(fleets), 2, figsize=(12, 4 * len(fleets)), squeeze=False)
    for row, fleet in enumerate(fleets):
        rs = [r for r in records if r["fleet"] == fleet]
        hours = max(r["trajectory"][-1][0] if r["trajectory"] else 0 for r in rs)
        hours = max(hours, max(r["gpu_hours"] / max(r["workers"], 1) for r in rs))
        grid = [hours * i / 400 for i in range(401)]
        for strategy in dict.fromkeys(r["strategy"] for r in rs):
            mine = [r for r in rs if r["strategy"] == strategy]
            ys = _step_median([r["trajectory"] for r in mine], grid)
            pts = [(t, y) for t, y in zip(grid, ys) if y is not None]
            if not pts:
                continue
            xs, vals = zip(*pts)
            n = mine[0]["workers"]
            axes[row][0].step(xs, vals, where="post", label=f"{strategy} ({len(mine)} seeds)")
            axes[row][1].step([x * n for x in xs], vals, where="post", label=strategy)
        optimum = rs[0].get("optimum_on_fleet")
        for ax, xlabel in zip(axes[row], ("wall-clock hours", "GPU-hours (workers held)")):
            if optimum is not None:
                ax.axhline(optimum, color="green", ls=":", lw=1, label="true optimum")
            if target is not None:
                ax.axhline(target, color="grey", ls="--", lw=1, label="target")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("best true metric (final incumbent)")
            ax.set_title(f"{rs[0]['surface']} on {fleet}")
            ax.grid(alpha=0.3)
        axes[row][0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
