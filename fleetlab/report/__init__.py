"""Reports: `progress.png` (autoresearch's plot, honest about validation) and a small, self-contained `report.html`.

Both read fleetlab.facts (the session's figures and every experiment's status) and decide nothing; `fleetlab report
--json` prints the same facts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleetlab import facts as _facts

__all__ = ["write_report", "plot_points"]

PLOT_NAME, HTML_NAME = "progress.png", "report.html"


def plot_points(rows: list[_facts.Row]) -> list[dict[str, Any]]:
    """The finished experiments as plot points: kind is one of keep, discard, pending, measure (a replicate,
    validation run, control or confirmation of some code), pruned (drawn at its last observed value) or crash."""
    points = []
    for r in rows:
        if not r.finished:
            continue
        if r.status == "crash":
            kind = "crash"
        elif r.state == "pruned":
            kind = "pruned"
        elif (r.role in _facts.MEASURE_ROLES or r.status == "keep") and r.decision != "keep":
            kind = "measure"  # another run of some code (a kept one's duplicates included), not a screening
        elif r.decision == "pending":
            kind = "pending"
        else:
            kind = "keep" if r.status == "keep" else "discard"
        if r.metric is None and kind != "crash":
            continue  # pruned before its first progress line: nothing to draw
        points.append({"number": r.number, "metric": r.metric, "kind": kind, "role": r.role,
                       "description": r.description, "id": r.id})
    return points


def title_of(f: _facts.Facts) -> str:
    dec = f.counts["by_decision"]
    title = (f"{f.metric}, session {f.tag or '-'}: {f.experiments} experiments, {dec.get('keep', 0)} kept, "
             f"{dec.get('crash', 0)} crashed")
    inc, g = f.incumbent, f.gain
    if inc is not None and not inc["is_baseline"] and g is not None:
        better = "better" if g["abs"] >= 0 else "worse"
        title += (f"\nincumbent {inc['id']}: {_facts.fmt(inc['mean'])} (mean of {inc['n']}), "
                  f"{abs(g['pct'] or 0.0):.2f}% {better} than the baseline's {_facts.fmt(f.baseline['mean'])}")
    return title


def write_report(project, store, out_dir: Path, tag: str | None = None) -> dict[str, Path]:
    """Write progress.png and report.html of session `tag` (default: the latest) into `out_dir`; return
    {"png": path, "html": path}. Works on any session, including one with nothing finished yet."""
    from fleetlab.report.html import render_html, write_text
    from fleetlab.report.plot import plot_progress

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    f = _facts.compute(project, store, tag)
    rows = _facts.rows(store, f.tag) if f.tag else []
    path = _facts.incumbent_path(store, f.tag)
    png = plot_progress(plot_points(rows), path, f.noise_sigma, out_dir / PLOT_NAME, f.metric, f.goal, title_of(f))
    html = write_text(out_dir / HTML_NAME, render_html(f, rows, path, png))
    return {"png": png, "html": html}
