"""Reports: `progress.png` (every experiment a grey dot, the kept ones green with a best-so-far step line) and a small,
self-contained `report.html` (summary table, the plot embedded, the kept experiments).

The report reads records and decisions; it decides nothing. `summarize` holds the numbers both files show.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from fleetlab.experiment import Experiment, State, better, is_finite

__all__ = ["summarize", "write_report"]

PLOT_NAME, HTML_NAME = "progress.png", "report.html"


def _number(e: Experiment, fallback: int) -> int:
    try:
        return e.number
    except ValueError:  # an id that is not exp-NNNN: keep the given order
        return fallback


def _status(e: Experiment, decisions: dict[str, str]) -> str:
    """keep / discard / crash / pending as decided; undecided experiments get the obvious status for their state."""
    if e.id in decisions:
        return decisions[e.id]
    if e.state.is_failure:
        return "crash"
    if e.state.is_final:
        return "discard"
    return e.state.value  # queued / running


def _failed(e: Experiment, status: str) -> bool:
    return e.state.is_failure or status == "crash"


def summarize(experiments: list[Experiment], decisions: dict[str, str], goal: str) -> dict[str, Any]:
    """The numbers of a report: counts by state and status, the baseline, the best kept experiment, the improvement.

    The baseline is the mean over finished `baseline`-role experiments (the first finished experiment when none has that
    role); the best is the best kept experiment. `improvement` is positive when the best beats the baseline.
    """
    order = sorted(range(len(experiments)), key=lambda i: (_number(experiments[i], i), i))
    exps = [experiments[i] for i in order]
    statuses = {e.id: _status(e, decisions) for e in exps}
    scored = [e for e in exps if e.state == State.DONE and is_finite(e.metric)]
    failed = [e for e in exps if _failed(e, statuses[e.id])]
    kept = [e for e in scored if statuses[e.id] == "keep"]

    baselines = [e for e in scored if e.role == "baseline"] or scored[:1]
    baseline = sum(e.metric for e in baselines) / len(baselines) if baselines else None
    best = None
    for e in kept:
        if best is None or better(e.metric, best.metric, goal):
            best = e
    improvement = improvement_pct = None
    if best is not None and baseline is not None:
        improvement = baseline - best.metric if goal == "minimize" else best.metric - baseline
        improvement_pct = 100.0 * improvement / abs(baseline) if baseline else None

    return {
        "experiments": len(exps),
        "finished": sum(e.state.is_final for e in exps),
        "in_flight": sum(not e.state.is_final for e in exps),
        "with_metric": len(scored),
        "kept": len(kept),
        "discarded": sum(statuses[e.id] == "discard" and not _failed(e, "discard") for e in exps),
        "pending": sum(statuses[e.id] == "pending" for e in exps),
        "failed": len(failed),
        "failures_by_state": dict(Counter(e.state.value for e in failed)),
        "cancelled": sum(e.state == State.CANCELLED for e in exps),
        "pruned": sum(e.state == State.PRUNED for e in exps),
        "baseline_id": baselines[0].id if baselines else None,
        "baseline_n": len(baselines),
        "baseline": baseline,
        "best_id": best.id if best else None,
        "best": best.metric if best else None,
        "best_description": best.description if best else None,
        "improvement": improvement,
        "improvement_pct": improvement_pct,
        "kept_experiments": kept,
        "ordered": exps,
        "statuses": statuses,
    }


def _points(stats: dict[str, Any]) -> list[dict[str, Any]]:
    points = []
    for i, e in enumerate(stats["ordered"]):
        status = stats["statuses"][e.id]
        failed = _failed(e, status)
        if not e.state.is_final and not failed:
            continue  # queued / running: nothing to show yet
        metric = e.metric if (is_finite(e.metric) and e.state in (State.DONE, State.PRUNED)) else None
        if metric is None and not failed:
            continue  # cancelled before any result
        points.append({"number": _number(e, i), "metric": metric, "status": status, "failed": failed,
                       "description": e.description, "id": e.id})
    return points


def _title(stats: dict[str, Any], metric: str) -> str:
    title = f"{metric}: {stats['experiments']} experiments, {stats['kept']} kept, {stats['failed']} failed"
    if stats["best"] is not None:
        title += f" — best {stats['best']:.6g} ({stats['best_id']})"
        if stats["improvement_pct"] is not None:
            pct = stats["improvement_pct"]
            title += f", {abs(pct):.2f}% {'better' if pct >= 0 else 'worse'} than the baseline"
    return title


def write_report(experiments: list[Experiment], decisions: dict[str, str], out_dir: Path, metric: str, goal: str,
                 summary: dict | None = None) -> dict[str, Path]:
    """Write progress.png and report.html into `out_dir`; return {"png": path, "html": path}.

    `decisions` maps experiment id -> keep / discard / crash / pending (undecided ones are inferred from their state);
    `summary` adds key/value rows to the HTML summary table (GPU-hours, dollars, experiments per hour, time to best, ...).
    Works on any list, including an empty one (a report that says nothing has finished yet).
    """
    from fleetlab.report.html import render_html, write_text
    from fleetlab.report.plot import plot_progress

    if goal not in ("minimize", "maximize"):
        raise ValueError(f"goal must be 'minimize' or 'maximize', not {goal!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = summarize(experiments, decisions, goal)
    title = _title(stats, metric)
    png = plot_progress(_points(stats), out_dir / PLOT_NAME, metric, goal, title)
    html = write_text(out_dir / HTML_NAME, render_html(stats, metric, goal, title, png, summary or {}))
    return {"png": png, "html": html}
