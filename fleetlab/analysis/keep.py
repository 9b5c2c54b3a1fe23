"""The keep rule: the one place that decides whether an experiment becomes the incumbent.

`SimpleKeepRule` is autoresearch's rule ("lower than before"): a finished experiment is kept when it beats its
parent and the current incumbent. The research-validity rule replaces it through the same interface
(`fleetlab.analysis._base.KeepRule`).
"""

from __future__ import annotations

from fleetlab.analysis._base import KeepRule, SessionView, Verdict
from fleetlab.experiment import Decision, Experiment, State, better

__all__ = ["KeepRule", "SimpleKeepRule", "Verdict"]


class SimpleKeepRule(KeepRule):
    name = "simple"

    def judge(self, exp: Experiment, view: SessionView) -> Verdict:
        return Verdict(self._decide(exp, view))

    def _decide(self, exp: Experiment, view: SessionView) -> Decision:
        if exp.state is not State.DONE or exp.metric is None:
            status = "crash" if exp.state.is_failure else "discard"
            return Decision(status, f"no result ({exp.state.value})")
        inc = view.incumbent()
        if exp.role == "baseline" and inc is None:
            return Decision("keep", "baseline", {"metric": exp.metric})
        if exp.role in ("baseline", "replicate"):
            return Decision("discard", f"{exp.role} of {exp.parent or 'the baseline'}", {"metric": exp.metric})
        parent = view.get(exp.parent) if exp.parent else None
        if parent is not None and (parent.metric is None):
            return Decision("discard", f"its parent {parent.id} has no result", {"metric": exp.metric})
        if parent is not None and not better(exp.metric, parent.metric, view.goal):
            return Decision("discard", f"not better than its parent {parent.id} ({parent.metric:.6g})",
                            {"metric": exp.metric, "parent_metric": parent.metric})
        if inc is not None and inc.metric is not None and not better(exp.metric, inc.metric, view.goal):
            return Decision("discard", f"beats its parent but not the incumbent {inc.id} ({inc.metric:.6g})",
                            {"metric": exp.metric, "incumbent_metric": inc.metric})
        return Decision("keep", f"better than {inc.id if inc else 'nothing'}",
                        {"metric": exp.metric, "incumbent_metric": inc.metric if inc else None})
