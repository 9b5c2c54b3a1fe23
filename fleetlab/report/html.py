"""report.html: one self-contained page (the plot embedded as base64, no scripts, no external files).

Every figure of the summary table carries `data-fact="<key path in the facts>"`, so a reader (or a test) can find
it and check it against `fleetlab report --json`.
"""

from __future__ import annotations

import base64
import os
from html import escape
from pathlib import Path
from typing import Any

from fleetlab.facts import Facts, Row, fmt, ordered_decisions

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.8em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.keep { color: #1b5e20; } .crash { color: #b71c1c; } .pending { color: #b26a00; } .muted { color: #777; }
.warn { color: #8a4b00; }
img { max-width: 100%; border: 1px solid #eee; }
"""


def _cell(key: str, value: Any, spec: str = ".6g", suffix: str = "") -> str:
    text = fmt(value, spec) if isinstance(value, float) or value is None else str(value)
    return f'<span data-fact="{escape(key)}">{escape(text)}</span>{escape(suffix)}'


def _row(label: str, html: str, cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return f"<tr><th>{escape(label)}</th><td{klass}>{html}</td></tr>"


def _arm(prefix: str, arm: dict[str, Any] | None) -> str:
    if arm is None:
        return "—"
    ci = arm.get("ci")
    out = (f"{_cell(prefix + '.mean', arm['mean'])} (n={_cell(prefix + '.n', arm['n'])}, "
           f"sd {_cell(prefix + '.sd', arm['sd'], '.3g')}")
    if ci:
        out += f", 95% CI [{_cell(prefix + '.ci.0', ci[0])}, {_cell(prefix + '.ci.1', ci[1])}]"
    return out + f"; {_cell(prefix + '.id', arm['id'])})"


def _gain(prefix: str, g: dict[str, Any] | None) -> str:
    if g is None:
        return "—"
    out = f"{_cell(prefix + '.abs', g['abs'], '+.6g')} ({_cell(prefix + '.pct', g['pct'], '+.2f', '%')})"
    if g.get("ci"):
        lo, hi = _cell(prefix + ".ci.0", g["ci"][0], "+.6g"), _cell(prefix + ".ci.1", g["ci"][1], "+.6g")
        out += f", 95% CI [{lo}, {hi}]"
    return out


def _summary_table(f: Facts) -> str:
    c = f.counts
    rows = [
        _row("metric", escape(f"{f.metric} ({f.goal}; gains are positive when better)")),
        _row("session", f"{_cell('tag', f.tag)} ({_cell('session_status', f.session_status)}"
                        + (f": {escape(f.stop_reason)}" if f.stop_reason else "") + ")"
                        + (" — serving now" if f.serving else "")),
        _row("experiments (finished)", _cell("experiments", f.experiments)),
        _row("by decision", ", ".join(f"{_cell('counts.by_decision.' + k, v)} {escape(k)}"
                                      for k, v in ordered_decisions(c["by_decision"])) or "—"),
        _row("by state", ", ".join(f"{_cell('counts.by_state.' + k, v)} {escape(k)}"
                                   for k, v in sorted(c["by_state"].items())) or "—"),
        _row("by role", ", ".join(f"{_cell('counts.by_role.' + k, v)} {escape(k)}"
                                  for k, v in sorted(c["by_role"].items())) or "—"),
        _row("cancelled / queued / running", f"{_cell('counts.cancelled', c['cancelled'])} / "
                                             f"{_cell('counts.queued', c['queued'])} / "
                                             f"{_cell('counts.running', c['running'])}"),
        _row("baseline", _arm("baseline", f.baseline)),
    ]
    inc = f.incumbent
    if inc is not None and not inc["is_baseline"]:
        rows.append(_row("incumbent", _arm("incumbent", inc) + " " + escape(inc["description"]), "keep"))
    else:
        rows.append(_row("incumbent", "no keep yet: the baseline" if f.baseline else "—"))
    rows.append(_row("gain over the baseline", _gain("gain", f.gain)))
    rows.append(_row("confirmed gain (paired re-runs)", _gain("confirmed_gain", f.confirmed_gain)))
    rows += [
        _row("noise floor σ", _cell("noise_sigma", f.noise_sigma, ".4g")),
        _row("wall-clock hours", _cell("wall_hours", f.wall_hours, ".4f")),
        _row("experiments per hour", _cell("experiments_per_hour", f.experiments_per_hour, ".2f")),
        _row("GPU-hours held / busy", f"{_cell('gpu_hours', f.gpu_hours, '.4f')} / "
                                      f"{_cell('gpu_hours_busy', f.gpu_hours_busy, '.4f')}"),
        _row("utilization", _cell("utilization", f.utilization, ".3f")),
        _row("training share of busy time", _cell("training_share", f.training_share, ".3f")),
        _row("cost (USD)", _cell("cost_usd", f.cost_usd, ".2f")),
        _row("hours to the incumbent", _cell("hours_to_best", f.hours_to_best, ".4f")),
        _row("expected gain per further GPU-hour",
             _cell("projection.gain_per_gpu_hour", f.projection["gain_per_gpu_hour"], ".3g")
             + f" (power law over {f.projection['improvements']} improvements)" if f.projection else "—"),
        _row("workers", _cell("workers", f.workers)),
    ]
    return "<table>" + "".join(rows) + "</table>"


def _kept_table(f: Facts, path: list[dict[str, Any]], rows: list[Row]) -> str:
    if len(path) <= 1:
        return '<p class="muted">No experiment has been kept yet.</p>'
    desc = {r.id: r.description for r in rows}
    head = "<tr><th>id</th><th>mean</th><th>n</th><th>description</th></tr>"
    body = []
    for p in path:
        cls = ' class="keep"' if f.incumbent and p["id"] == f.incumbent["id"] else ""
        body.append(f"<tr{cls}><td>{escape(p['id'])}</td><td class=\"num\">{escape(fmt(p['mean']))}</td>"
                    f"<td class=\"num\">{p['n']}</td><td>{escape(desc.get(p['id'], ''))}</td></tr>")
    return "<table>" + head + "".join(body) + "</table>"


def _all_table(rows: list[Row]) -> str:
    if not rows:
        return ""
    head = ("<tr><th>id</th><th>status</th><th>decision</th><th>role</th><th>state</th><th>metric</th>"
            "<th>hardware</th><th>description</th></tr>")
    body = []
    for r in rows:
        cls = {"keep": "keep", "crash": "crash"}.get(r.status or "", "pending" if r.decision == "pending" else "")
        metric = fmt(r.metric) + (" (last seen)" if r.metric_observed else "")
        body.append(f"<tr class=\"{cls}\"><td>{escape(r.id)}</td><td>{escape(r.status or '—')}</td>"
                    f"<td>{escape(r.decision or '—')}</td><td>{escape(r.role)}</td><td>{escape(r.state)}</td>"
                    f"<td class=\"num\">{escape(metric)}</td><td>{escape(r.hardware or '—')}</td>"
                    f"<td>{escape(r.description)}</td></tr>")
    return f"<details><summary>All {len(rows)} experiments</summary><table>{head}{''.join(body)}</table></details>"


def render_html(f: Facts, rows: list[Row], path: list[dict[str, Any]], png: Path) -> str:
    """The whole page as a string; the PNG at `png` is embedded."""
    from fleetlab.facts import headline

    image = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    if not rows:
        intro = '<p class="muted">No experiments yet: this report fills in as results land.</p>'
    elif f.experiments == 0:
        intro = '<p class="muted">No experiment has finished yet.</p>'
    else:
        intro = ""
    lead = "".join(f"<p>{escape(line)}</p>" for line in headline(f) if not line.startswith("warning:"))
    warnings = "".join(f'<li class="warn">{escape(w)}</li>' for w in f.warnings)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>fleetlab report: {escape(f.metric)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>fleetlab report: {escape(f.metric)}</h1>
{lead}
{intro}
{f'<h2>Warnings</h2><ul>{warnings}</ul>' if warnings else ''}
<h2>Summary</h2>
{_summary_table(f)}
<h2>Progress</h2>
<img alt="progress plot: {escape(f.metric)} per experiment" src="data:image/png;base64,{image}">
<h2>Incumbents</h2>
{_kept_table(f, path, rows)}
{_all_table(rows)}
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
