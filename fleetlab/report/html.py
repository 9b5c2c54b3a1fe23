"""report.html: one self-contained page (the plot embedded as base64, no scripts, no external files)."""

from __future__ import annotations

import base64
import math
import os
from html import escape
from pathlib import Path
from typing import Any

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.8em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.keep { color: #1b5e20; } .crash { color: #b71c1c; } .pending { color: #b26a00; } .muted { color: #777; }
img { max-width: 100%; border: 1px solid #eee; }
"""


def fmt(value: Any) -> str:
    """A table cell: floats to 6 significant digits, None as a dash, everything else as text."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt(v)}" for k, v in value.items()) or "—"
    return str(value)


def _row(label: str, value: Any, cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return f"<tr><th>{escape(label)}</th><td{klass}>{escape(fmt(value))}</td></tr>"


def _summary_table(stats: dict[str, Any], metric: str, goal: str, summary: dict[str, Any]) -> str:
    rows = [
        _row("metric", f"{metric} ({goal})"),
        _row("experiments", stats["experiments"]),
        _row("finished", stats["finished"]),
        _row("in flight", stats["in_flight"]),
        _row("kept", stats["kept"], "keep"),
        _row("discarded", stats["discarded"]),
        _row("pending validation", stats["pending"], "pending"),
        _row("crashes / failures", stats["failed"], "crash"),
    ]
    if stats["failures_by_state"]:
        rows.append(_row("failures by state", stats["failures_by_state"]))
    if stats["cancelled"] or stats["pruned"]:
        rows.append(_row("cancelled / pruned", f"{stats['cancelled']} / {stats['pruned']}"))
    baseline = fmt(stats["baseline"])
    if stats["baseline_id"]:
        baseline += f" ({stats['baseline_id']}" + (f", mean of {stats['baseline_n']}" if stats["baseline_n"] > 1 else "") + ")"
    rows.append(_row("baseline", baseline))
    best = f"{fmt(stats['best'])} ({stats['best_id']})" if stats["best_id"] else "no keep yet"
    rows.append(_row("best", best, "keep"))
    if stats["improvement"] is not None:
        pct = f" ({stats['improvement_pct']:+.2f}%)" if stats["improvement_pct"] is not None else ""
        rows.append(_row("improvement over baseline", f"{fmt(stats['improvement'])}{pct}"))
    for key, value in summary.items():
        rows.append(_row(str(key).replace("_", " "), value))
    return "<table>" + "".join(rows) + "</table>"


def _kept_table(stats: dict[str, Any]) -> str:
    kept = stats["kept_experiments"]
    if not kept:
        return '<p class="muted">No experiment has been kept yet.</p>'
    baseline = stats["baseline"]
    head = "<tr><th>id</th><th>metric</th><th>vs baseline</th><th>description</th></tr>"
    rows = []
    for e in kept:
        delta = fmt(e.metric - baseline) if baseline is not None else "—"
        best = ' class="keep"' if e.id == stats["best_id"] else ""
        rows.append(f"<tr{best}><td>{escape(e.id)}</td><td class=\"num\">{escape(fmt(e.metric))}</td>"
                    f"<td class=\"num\">{escape(delta)}</td><td>{escape(e.description)}</td></tr>")
    return "<table>" + head + "".join(rows) + "</table>"


def _all_table(stats: dict[str, Any]) -> str:
    exps = stats["ordered"]
    if not exps:
        return ""
    head = "<tr><th>id</th><th>state</th><th>status</th><th>metric</th><th>hardware</th><th>description</th></tr>"
    rows = []
    for e in exps:
        status = stats["statuses"][e.id]
        cls = {"keep": "keep", "crash": "crash", "pending": "pending"}.get(status, "")
        rows.append(f"<tr class=\"{cls}\"><td>{escape(e.id)}</td><td>{escape(e.state.value)}</td><td>{escape(status)}</td>"
                    f"<td class=\"num\">{escape(fmt(e.metric))}</td><td>{escape(fmt(e.hardware))}</td>"
                    f"<td>{escape(e.description)}</td></tr>")
    return (f"<details><summary>All {len(exps)} experiments</summary><table>{head}{''.join(rows)}</table></details>")


def render_html(stats: dict[str, Any], metric: str, goal: str, title: str, png: Path, summary: dict[str, Any]) -> str:
    """The whole page as a string; the PNG at `png` is embedded."""
    image = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    if stats["experiments"] == 0:
        intro = '<p class="muted">No experiments yet: this report fills in as results land.</p>'
    elif stats["with_metric"] == 0:
        intro = '<p class="muted">No experiment has finished with a metric yet.</p>'
    else:
        intro = ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>fleetlab report: {escape(metric)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>fleetlab report: {escape(metric)}</h1>
<p>{escape(title)}</p>
{intro}
<h2>Summary</h2>
{_summary_table(stats, metric, goal, summary)}
<h2>Progress</h2>
<img alt="progress plot: {escape(metric)} per experiment" src="data:image/png;base64,{image}">
<h2>Kept experiments</h2>
{_kept_table(stats)}
{_all_table(stats)}
</body>
</html>
"""


def write_text(path: Path, text: str) -> Path:
    """Write `text` whole, then move it into place (a reader never sees half a report)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
