"""`fleetlab analyze`: what the results say, as data (`analyze`) and as text (`render_analysis`).

Noise floor per hardware class with its 95 % interval, hardware effects (OLS with a fixed effect per variant) and
tiers, main effects / two-way interactions / parameter importance (fleetlab.analysis.effects), the keep rule's
verdicts (kept, screening false positives, pending), code edits no knob captures, the current recommendation, and the
cost of getting there. Baseline, incumbent, gain, counts and cost are fleetlab.facts's; every change is said as
better or worse for the goal (a gain is positive when better), never as a bare signed difference.
"""

from __future__ import annotations

import math
from typing import Any

from fleetlab.analysis.hardware import hardware_effects, rank_classes
from fleetlab.analysis.noise import noise_floor

__all__ = ["analyze", "render_analysis"]


def analyze(project: Any, store: Any, tag: str | None = None, space: Any = None) -> dict[str, Any]:
    """Everything `fleetlab analyze --json` prints for session `tag` (default: the latest). `space` is the knob
    space (None: effects without ranges). Baseline, incumbent, gain, counts and cost are fleetlab.facts's."""
    from fleetlab.facts import compute

    f = compute(project, store, tag)
    exps = store.experiments(tag=f.tag) if f.tag else []
    decisions = store.decisions()
    goal = project.goal
    out: dict[str, Any] = {"session": f.tag, "metric": project.metric, "goal": goal, "experiments": f.experiments,
                           "counts": f.counts}
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
    from fleetlab.analysis.effects import estimate

    out["effects"] = estimate(exps, goal, space=space).to_dict()
    out["code_edits"] = _code_edits(exps, f.baseline, goal)
    out["verdicts"] = _verdicts(exps, decisions)
    out["recommendation"] = _recommendation(f, exps, decisions)
    out["cost"] = {k: getattr(f, k) for k in ("wall_hours", "gpu_hours", "gpu_hours_busy", "cost_usd",
                                               "experiments_per_hour", "hours_to_best", "utilization",
                                               "training_share")}
    out["warnings"] = list(f.warnings)
    return out


def _code_edits(exps, baseline, goal) -> list[dict[str, Any]]:
    """Variants whose code differs from their parent's while their knobs do not (edits the knob regression cannot
    see), each with its arm's gain over the baseline (positive is better)."""
    from fleetlab.facts import arm_stats, gain_between, is_finished

    if baseline is None:
        return []
    by_id = {e.id: e for e in exps}
    arms: dict[str, list] = {}
    for e in exps:
        if is_finished(e):
            arms.setdefault(e.content_hash or e.id, []).append(e)
    out = []
    for key, arm in arms.items():
        head = arm[0]
        parent = by_id.get(head.parent or "")
        if key == baseline["content_hash"] or parent is None or head.knobs != parent.knobs:
            continue
        st = arm_stats(arm)
        if st is None:
            continue
        g = gain_between(goal, baseline, st)
        out.append({"id": head.id, "description": head.description, "n": st["n"], "mean": st["mean"],
                    "gain": g["abs"], "pct": g["pct"], "ci": g["ci"],
                    "lines_added": head.lines_added, "lines_removed": head.lines_removed})
    return sorted(out, key=lambda r: -r["gain"])


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


def _recommendation(f, exps, decisions) -> dict[str, Any]:
    inc, base = f.incumbent, f.baseline
    if inc is None or inc["is_baseline"]:
        return {"incumbent": inc["id"] if inc else None, "text": "no variant has been kept yet: keep the baseline"}
    by_id = {e.id: e for e in exps}
    inc_exp, base_exp = by_id.get(inc["id"]), by_id.get(base["id"]) if base else None
    d = decisions.get(inc["id"])
    nums = dict(d.numbers) if d and d.numbers else {}
    changed = {k: v for k, v in (inc_exp.knobs if inc_exp else {}).items()
               if base_exp is None or base_exp.knobs.get(k) != v}
    rec = {"incumbent": inc["id"], "description": inc["description"], "mean": inc["mean"], "n": inc["n"],
           "ci": inc["ci"], "validated": inc["validated"], "p": nums.get("p"), "reason": d.reason if d else "",
           "changed_knobs": changed, "baseline": base["id"] if base else None,
           "baseline_mean": base["mean"] if base else None, "gain": f.gain, "confirmed_gain": f.confirmed_gain}
    rec["text"] = (f"use {inc['id']} ({inc['description']}): mean {inc['mean']:.6g} over {inc['n']} runs"
                   + ("" if inc["validated"] else " (not validated)"))
    return rec


# ---------------------------------------------------------------------------------------------------------------------
# Text


def _f(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def _bw(gain: float | None, digits: int = 4) -> str:
    """A goal-aware change in words: '0.0123 better' / '0.0123 worse' (positive gain is better)."""
    if gain is None or (isinstance(gain, float) and math.isnan(gain)):
        return "-"
    return f"{abs(gain):.{digits}g} {'better' if gain > 0 else 'worse' if gain < 0 else 'no change'}"


def _term(t: dict[str, Any]) -> str:
    return f"  {t['name']:28s} high level {_bw(t['gain']):18s} p {_f(t['p_value'], 2)}"


def render_analysis(a: dict[str, Any]) -> str:
    counts = a.get("counts") or {}
    dec = counts.get("by_decision", {})
    better = "lower" if a.get("goal") == "minimize" else "higher"
    from fleetlab.facts import decision_parts

    lines = [f"session {a.get('session') or '-'}: {a.get('experiments', 0)} experiments finished "
             f"({', '.join(decision_parts(dec)) or 'none'}); "
             f"{a.get('metric')} ({better} is better)", ""]
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
    lines += ["", f"Hardware effects (metric shift vs {hw.get('reference') or '-'}, the slowest class; "
                  f"{hw.get('method', '')} over {hw.get('variants', 0)} configs run on several classes)"]
    if not hw.get("effects"):
        lines.append("  none measured (one hardware class, or no config ran on two)")
    for name, e in hw.get("effects", {}).items():
        ci = f"  [{_f(e['low'])}, {_f(e['high'])}]" if e.get("low") is not None else ""
        lines.append(f"  {name:10s} {e['effect']:+.5f}{ci}")
    if hw.get("tiers"):
        lines.append("  tiers: " + ", ".join(f"{k} {v}" for k, v in hw["tiers"].items()))
    eff = a.get("effects", {})
    lines += ["", "Main effects (each knob's high level against its low level, better or worse for the goal)"]
    if not eff.get("main"):
        lines.append(f"  {eff.get('note') or 'none'}")
    for t in sorted(eff.get("main", []), key=lambda t: -abs(t["effect"]))[:12]:
        lines.append(_term(t))
    if eff.get("interactions"):
        lines.append("Two-way interactions")
        for t in sorted(eff["interactions"], key=lambda t: -abs(t["effect"]))[:8]:
            lines.append(_term(t))
    if eff.get("importance"):
        lines.append("Parameter importance: " + ", ".join(
            f"{k} {v:.0%}" for k, v in sorted(eff["importance"].items(), key=lambda kv: -kv[1])[:8]))
    edits = a.get("code_edits") or []
    if edits:
        lines += ["", "Code edits (changes no knob captures, each arm against the baseline)"]
        for r in edits[:12]:
            lines.append(f"  {r['id']}  {_bw(r['gain']):18s} n {r['n']}  +{r['lines_added']}/-{r['lines_removed']} "
                         f"lines  {r['description'][:60]}")
    v = a.get("verdicts", {})
    lines += ["", f"Verdicts: {v.get('kept', 0)} kept, {v.get('promoted', 0)} validated, "
                  f"{v.get('screening_false_positives', 0)} screening false positives, {v.get('pending', 0)} pending, "
                  f"{v.get('flagged_for_code_size', 0)} flagged for code size"]
    r = a.get("recommendation", {})
    lines += ["", f"Recommendation: {r.get('text', '-')}"]
    if r.get("changed_knobs"):
        lines.append("  knobs: " + ", ".join(f"{k}={_f(x)}" for k, x in r["changed_knobs"].items()))
    g = r.get("gain")
    if g:
        pct = f" ({abs(g['pct']):.2f}%)" if g.get("pct") is not None else ""
        lines.append(f"  {_bw(g['abs'], 6)}{pct} than the baseline {r.get('baseline')}'s mean "
                     f"{_f(r.get('baseline_mean'), 6)}")
    cg = r.get("confirmed_gain")
    if cg:
        lines.append(f"  confirmed by paired re-runs: {_bw(cg['abs'], 6)} (n {cg['baseline_n']}+{cg['incumbent_n']})")
    c = a.get("cost", {})
    if c:
        lines += ["", f"Cost: {_f(c.get('wall_hours'))} h wall-clock, {_f(c.get('gpu_hours'))} GPU-hours held "
                      f"({_f(c.get('gpu_hours_busy'))} busy), ${_f(c.get('cost_usd'))}, "
                      f"{_f(c.get('experiments_per_hour'))} experiments/hour, incumbent after "
                      f"{_f(c.get('hours_to_best'))} h"]
    for w in a.get("warnings") or []:
        lines.append(f"warning: {w}")
    return "\n".join(lines)
