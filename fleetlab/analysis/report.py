"""`fleetlab analyze`: what the results say, as data (`analyze`) and as text (`render_analysis`).

Noise floor per hardware class with its 95 % interval, hardware effects (OLS with a fixed effect per variant) and
tiers, main effects / two-way interactions / parameter importance (fleetlab.analysis.effects), the keep rule's
verdicts (kept, screening false positives, pending), the current recommendation, and the cost of getting there:
GPU-hours held and busy, dollars, experiments per hour and time to best next to wall-clock.
"""

from __future__ import annotations

import math
from typing import Any

from fleetlab.analysis.hardware import hardware_effects, rank_classes
from fleetlab.analysis.noise import noise_floor
from fleetlab.experiment import State

__all__ = ["analyze", "render_analysis"]


def analyze(opened: Any, tag: str | None = None) -> dict[str, Any]:
    """Everything `fleetlab analyze --json` prints, for the current session's tag (or `tag`)."""
    from fleetlab.api import current_tag, knob_space, session_accounting

    project, store = opened.project, opened.store
    tag = tag or current_tag(store)
    exps = store.experiments(tag=tag) if tag else []
    decisions = store.decisions()
    goal = project.goal
    out: dict[str, Any] = {"session": tag, "metric": project.metric, "goal": goal, "experiments": len(exps),
                           "states": {}}
    for e in exps:
        out["states"][e.state.value] = out["states"].get(e.state.value, 0) + 1
    out["noise"] = noise_floor(exps)
    hw = hardware_effects(exps)
    classes = rank_classes(experiments=exps)
    configured = project.section("fleet").get("tiers") or {}
    if configured:
        hw["tiers"] = {c: str(configured.get(c, "screen")) for c in classes}
    else:
        hw["tiers"] = {c: ("validate" if c == classes[-1] or len(classes) == 1 else "screen") for c in classes}
    hw["classes_slowest_first"] = classes
    out["hardware"] = hw
    try:
        from fleetlab.analysis.effects import estimate

        try:
            space = knob_space(project)
        except Exception:  # a knob file the space cannot be inferred from: effects without ranges
            space = None
        out["effects"] = estimate(exps, goal, space=space).to_dict()
    except ImportError:
        out["effects"] = {"note": "fleetlab.analysis.effects is not installed"}
    out["verdicts"] = _verdicts(exps, decisions)
    out["recommendation"] = _recommendation(store, tag, exps, decisions)
    out["cost"] = session_accounting(opened, tag) if tag else {}
    return out


def _verdicts(exps, decisions) -> dict[str, Any]:
    counts = {"kept": 0, "pending": 0, "screening_false_positives": 0, "promoted": 0, "flagged_for_code_size": 0}
    for e in exps:
        d = decisions.get(e.id)
        if d is None:
            continue
        if d.status == "keep" and e.role != "baseline":
            counts["kept"] += 1
        if d.status == "pending":
            counts["pending"] += 1
        if "screening false positive" in d.reason:
            counts["screening_false_positives"] += 1
        if d.numbers and d.numbers.get("screening"):
            counts["promoted"] += 1
        if d.numbers and d.numbers.get("simplicity_flag"):
            counts["flagged_for_code_size"] += 1
    return counts


def _recommendation(store, tag, exps, decisions) -> dict[str, Any]:
    inc_id = store.incumbent(tag) if tag else None
    if inc_id is None:
        return {"incumbent": None, "text": "no experiment has been kept yet"}
    inc = store.get(inc_id)
    base = next((e for e in exps if e.role == "baseline" and e.state is State.DONE), None)
    d = decisions.get(inc_id)
    nums = dict(d.numbers) if d and d.numbers else {}
    changed = {k: v for k, v in inc.knobs.items() if base is None or base.knobs.get(k) != v}
    rec = {"incumbent": inc_id, "description": inc.description, "metric": inc.metric,
           "validated_mean": nums.get("mean"), "validated_n": nums.get("n"), "p": nums.get("p"),
           "reason": d.reason if d else "", "changed_knobs": changed,
           "baseline": base.id if base else None, "baseline_metric": base.metric if base else None}
    best = rec["validated_mean"] if rec["validated_mean"] is not None else inc.metric
    if base is not None and base.metric is not None and best is not None:
        rec["gain_vs_baseline"] = base.metric - best
    rec["text"] = (f"use {inc_id} ({inc.description})" + (f": validated mean {best:.6g} over {rec['validated_n']} runs"
                                                          if rec["validated_mean"] is not None else ""))
    return rec


# ---------------------------------------------------------------------------------------------------------------------
# Text


def _f(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def render_analysis(a: dict[str, Any]) -> str:
    lines = [f"session {a.get('session') or '-'}: {a.get('experiments', 0)} experiments "
             f"({', '.join(f'{n} {s}' for s, n in sorted(a.get('states', {}).items())) or 'none'}); "
             f"{a.get('metric')} ({a.get('goal')})", ""]
    noise = a.get("noise", {})
    lines.append("Noise floor (σ from replicates, 95% interval)")
    rows = noise.get("by_hardware", {})
    if not rows:
        lines.append("  no replicated runs yet")
    for hw, r in rows.items():
        lines.append(f"  {hw:10s} σ {_f(r['sigma'])}  [{_f(r['low'])}, {_f(r['high'])}]  df {r['df']}  runs {r['runs']}")
    p = noise.get("pooled", {})
    if p.get("df"):
        lines.append(f"  {'pooled':10s} σ {_f(p['sigma'])}  [{_f(p['low'])}, {_f(p['high'])}]  df {p['df']}")
    hw = a.get("hardware", {})
    lines += ["", f"Hardware effects (vs {hw.get('reference') or '-'}, the slowest class; {hw.get('method', '')} over "
                  f"{hw.get('variants', 0)} configs run on several classes)"]
    if not hw.get("effects"):
        lines.append("  none measured (one hardware class, or no config ran on two)")
    for name, e in hw.get("effects", {}).items():
        ci = f"  [{_f(e['low'])}, {_f(e['high'])}]" if e.get("low") is not None else ""
        lines.append(f"  {name:10s} {e['effect']:+.5f}{ci}")
    if hw.get("tiers"):
        lines.append("  tiers: " + ", ".join(f"{k} {v}" for k, v in hw["tiers"].items()))
    eff = a.get("effects", {})
    lines += ["", "Main effects (metric change low -> high level; gain > 0 is better)"]
    if not eff.get("main"):
        lines.append(f"  {eff.get('note') or 'none'}")
    for t in sorted(eff.get("main", []), key=lambda t: -abs(t["effect"]))[:12]:
        lines.append(f"  {t['name']:28s} {t['effect']:+.5f}  p {_f(t['p_value'], 2)}")
    if eff.get("interactions"):
        lines.append("Two-way interactions")
        for t in sorted(eff["interactions"], key=lambda t: -abs(t["effect"]))[:8]:
            lines.append(f"  {t['name']:28s} {t['effect']:+.5f}  p {_f(t['p_value'], 2)}")
    if eff.get("importance"):
        lines.append("Parameter importance: " + ", ".join(
            f"{k} {v:.0%}" for k, v in sorted(eff["importance"].items(), key=lambda kv: -kv[1])[:8]))
    v = a.get("verdicts", {})
    lines += ["", f"Verdicts: {v.get('kept', 0)} kept, {v.get('promoted', 0)} validated, "
                  f"{v.get('screening_false_positives', 0)} screening false positives, {v.get('pending', 0)} pending, "
                  f"{v.get('flagged_for_code_size', 0)} flagged for code size"]
    r = a.get("recommendation", {})
    lines += ["", f"Recommendation: {r.get('text', '-')}"]
    if r.get("changed_knobs"):
        lines.append("  knobs: " + ", ".join(f"{k}={_f(x)}" for k, x in r["changed_knobs"].items()))
    if r.get("gain_vs_baseline") is not None:
        lines.append(f"  gain vs the baseline {r.get('baseline')}: {r['gain_vs_baseline']:+.5g}")
    c = a.get("cost", {})
    if c:
        lines += ["", f"Cost: {c.get('wall_hours')} h wall-clock, {c.get('worker_hours_held')} GPU-hours held "
                      f"({c.get('worker_hours_busy')} busy), ${c.get('cost_usd')}, {c.get('experiments_per_hour')} "
                      f"experiments/hour, best after {_f(c.get('hours_to_best'))} h"]
    return "\n".join(lines)
