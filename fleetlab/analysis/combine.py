"""Combinations the keep rule offers: validated improvements of one parent merged, and an improvement of a parent
that the incumbent moved away from laid on top of the incumbent instead of being lost."""

from __future__ import annotations

from typing import Any

from fleetlab.experiment import Experiment, Proposal, Role

__all__ = ["Combinations"]


class Combinations:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.improved: dict[str, list[str]] = {}  # parent id -> candidates validated better than it
        self._combined: set[frozenset] = set()
        self._merged: list[dict[str, Any]] = []    # knobs of the combinations proposed

    def improves(self, parent_id: str, cand_id: str, view: Any, kept: bool) -> list[Proposal]:
        """`cand_id` was validated better than `parent_id`: remember it, and merge it with the parent's other
        validated improvements (knob changes only: a 3-way merge of code edits is left to the strategy)."""
        lst = self.improved.setdefault(parent_id, [])
        if cand_id not in lst:
            lst.append(cand_id)
        if not self.enabled:
            return []
        try:
            parent, new = view.get(parent_id), view.get(cand_id)
        except Exception:
            return []
        out = []
        for other_id in lst:
            pair = frozenset((other_id, cand_id))
            if other_id == cand_id or pair in self._combined:
                continue
            try:
                other = view.get(other_id)
            except Exception:
                continue
            if other.edits or new.edits or not other.knobs or not new.knobs:
                continue
            # the one that will be (or is) the incumbent is the base; the other's change is laid on top
            base, add = (new, other) if kept else (other, new)
            change = {k: v for k, v in add.knobs.items() if parent.knobs.get(k) != v}
            change = {k: v for k, v in change.items() if base.knobs.get(k) != v}
            self._combined.add(pair)
            merged = {**base.knobs, **change}
            if not change or merged == add.knobs or self._ran(merged, view):
                # alternatives on the same knobs (ASPECT_RATIO 96 "+" 112 is just 112 again), or a config already
                # run: nothing new to screen
                continue
            out.append(Proposal(description=f"combine {base.id} + {add.id}", parent=base.id, knobs=change,
                                role=Role.COMBINE, strategy="validity", meta={"combines": [base.id, add.id]}))
        return out

    def onto_incumbent(self, parent: Experiment, cand: Experiment, inc: Experiment, view: Any) -> Proposal | None:
        """`cand` beat its parent but not the incumbent that replaced the parent while it was queued: its change
        (knobs against the parent, or its code edits) laid on top of the incumbent, screened like any candidate."""
        pair = frozenset((inc.id, cand.id))
        if not self.enabled or pair in self._combined:
            return None
        self._combined.add(pair)
        change = {k: v for k, v in cand.knobs.items() if parent.knobs.get(k) != v and inc.knobs.get(k) != v}
        if cand.knobs and not cand.edits:
            merged = {**inc.knobs, **change}
            if not change or self._ran(merged, view):
                return None
            return Proposal(description=f"combine {inc.id} + {cand.id} (an improvement of {parent.id})",
                            parent=inc.id, knobs=change, role=Role.COMBINE, strategy="validity",
                            meta={"combines": [inc.id, cand.id], "improves_parent": parent.id})
        if cand.edits and not cand.knobs:
            return Proposal(description=f"combine {inc.id} + {cand.id}'s edit (an improvement of {parent.id})",
                            parent=inc.id, edits=tuple(cand.edits), role=Role.COMBINE, strategy="validity",
                            meta={"combines": [inc.id, cand.id], "improves_parent": parent.id})
        return None

    def _ran(self, knobs: dict[str, Any], view: Any) -> bool:
        """Whether a variant with exactly these knobs (and no code edits) was proposed already: one scan, only when a
        combination is about to be proposed (rare)."""
        if knobs not in self._merged:
            self._merged.append(knobs)
            return any(e.knobs == knobs and not e.edits for e in view.experiments())
        return True
