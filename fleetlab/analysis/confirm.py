"""The final confirmation: baseline and incumbent re-run interleaved (role confirm), and the paired gain with its
interval, the headline figure (facts.confirmed_gain).

Pairs are formed in time order: the i-th confirm run of the baseline's code with the i-th of the incumbent's, on the
same hardware class (one class's conditions for both halves of a pair; pairing by worker left runs unpaired when the
two halves of a pair started on different workers, as they do when the confirmation runs back to back). A pair's
difference cancels whatever drifted between pairs; the interval is Student's t on the pairs' differences.
"""

from __future__ import annotations

import math
from typing import Any

from fleetlab.experiment import Experiment, Proposal, Role, State

__all__ = ["confirmation", "confirmation_proposals", "confirmed_gain"]


def confirmation(view: Any, pairs: int = 3) -> list[Proposal]:
    """The confirmation a session's view asks for: its first baseline and its incumbent, `pairs` of each; nothing
    when the incumbent is still the baseline's code (or a confirmation of these two is in the session already)."""
    inc = view.incumbent()
    if inc is None:
        return []
    exps = [e for e in view.experiments() if e.tag == inc.tag]  # the incumbent's session: its baseline
    base = next((e for e in exps if e.role == Role.BASELINE), None)
    if base is None or _code(inc) == _code(base):
        return []
    done = {e.meta.get("confirm_of") for e in exps if e.role == Role.CONFIRM}
    if base.id in done and inc.id in done:
        return []
    return confirmation_proposals(base, inc, pairs)


def confirmation_proposals(baseline: Experiment, incumbent: Experiment, pairs: int = 3) -> list[Proposal]:
    """`pairs` runs of each, interleaved (baseline, incumbent, baseline, ...), for the loop to queue in that order
    (the scheduler runs them at session end; `fleetlab confirm` queues them for the next session)."""
    out = []
    for i in range(max(1, int(pairs))):
        for who in (baseline, incumbent):
            out.append(Proposal(description=f"confirm {who.id} (pair {i + 1})", parent=who.id, role=Role.CONFIRM,
                                strategy="confirm", meta={"confirm_pair": i + 1, "confirm_of": who.id}))
    return out


def _code(x: Experiment | dict[str, Any]) -> str:
    """The arm key of an experiment, or of a facts arm ({id, content_hash, ...})."""
    if isinstance(x, dict):
        return x.get("content_hash") or x["id"]
    return x.content_hash or x.id


def confirmed_gain(experiments: list[Experiment], baseline: Experiment | dict[str, Any],
                   incumbent: Experiment | dict[str, Any], goal: str = "minimize",
                   conf: float = 0.95) -> dict[str, Any] | None:
    """{abs, pct, ci: [low, high], n_pairs, baseline_n, incumbent_n, baseline_mean, incumbent_mean, p} — positive is
    better for either goal; None without two complete pairs (or when baseline and incumbent are the same code).
    `baseline` and `incumbent` are experiments or facts' arms."""
    from scipy import stats

    kb, ki = _code(baseline), _code(incumbent)
    if kb == ki:
        return None
    runs = [e for e in experiments if e.role == Role.CONFIRM and e.state is State.DONE and e.metric is not None]
    runs.sort(key=lambda e: (e.started_at or e.finished_at or 0.0, e.id))
    by_class: dict[str | None, tuple[list[float], list[float]]] = {}
    for e in runs:
        h = e.content_hash or e.id
        if h in (kb, ki):
            b, i = by_class.setdefault(e.hardware, ([], []))
            (b if h == kb else i).append(float(e.metric))
    pairs = [(x, y) for b, i in by_class.values() for x, y in zip(b, i)]
    if len(pairs) < 2:  # no two pairs on one class: pair across classes, in time order
        pooled_b = [float(e.metric) for e in runs if (e.content_hash or e.id) == kb]
        pooled_i = [float(e.metric) for e in runs if (e.content_hash or e.id) == ki]
        pairs = list(zip(pooled_b, pooled_i))
        if len(pairs) < 2:
            return None
    diffs = [(x - y if goal == "minimize" else y - x) for x, y in pairs]
    bs, is_ = [x for x, _ in pairs], [y for _, y in pairs]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = float(stats.t.ppf(0.5 + conf / 2, n - 1)) * sd / math.sqrt(n)
    p = float(stats.t.sf(mean / (sd / math.sqrt(n)), n - 1)) if sd > 0 else (0.0 if mean > 0 else 1.0)
    bmean = sum(bs) / n
    return {"abs": mean, "pct": 100.0 * mean / abs(bmean) if bmean else None, "ci": [mean - half, mean + half],
            "n_pairs": n, "baseline_n": n, "incumbent_n": n, "baseline_mean": bmean,
            "incumbent_mean": sum(is_) / n, "p": p, "confidence": conf}
