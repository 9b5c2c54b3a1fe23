"""A keep rule that reads the truth: the bound any honest keep rule is measured against (benchmarks only).

On a simulated fleet the noise-free metric of every run is known (`SimExecutor.truth`), so a rule can keep exactly
the changes that are truly better than the incumbent by more than `margin`, at once, from their first (screening)
run: no replicates, no validation runs, no verdict latency, no false keep and no missed improvement. No real session
can do this; it answers "how fast could this strategy go if the keep rule were perfect?", which separates what the
proposals limit from what measuring under noise costs. `margin` = σ asks the same of a perfect rule that still needs
a change to be worth one noise σ (about what a single-run screen can see).

`fleetlab.bench.harness.run_one(..., keep_rule="truth")` or `keep_rule="truth:0.0015"` uses it.
"""

from __future__ import annotations

from typing import Any

from fleetlab.analysis._base import KeepRule, Verdict
from fleetlab.experiment import Decision, Experiment, State
from fleetlab.strategies._results import score

__all__ = ["TruthKeepRule"]


class TruthKeepRule(KeepRule):
    name = "truth"

    def __init__(self, executor: Any, goal: str = "minimize", margin: float = 0.0):
        self.executor, self.goal, self.margin = executor, goal, float(margin)

    def _score(self, exp: Experiment) -> float | None:
        from fleetlab.errors import ExecutorError

        try:
            value = self.executor.truth(exp.id)
        except ExecutorError:  # not started yet (a baseline still queued): nothing to compare with
            return None
        return None if value is None else score(value, self.goal)

    def judge(self, exp: Experiment, view: Any) -> Verdict:
        return Verdict(self._decide(exp, view))

    def _decide(self, exp: Experiment, view: Any) -> Decision:
        if exp.state is not State.DONE or exp.metric is None:
            return Decision("crash" if exp.state.is_failure else "discard", f"no result ({exp.state.value})")
        inc = view.incumbent()
        if inc is None and exp.role == "baseline":
            return Decision("keep", "the baseline", {"metric": exp.metric})
        inc = inc or (view.get(exp.parent) if exp.parent else None)  # before the baseline is in: against it
        if inc is None or exp.role not in ("explore", "combine"):
            return Decision("discard", f"{exp.role} run", {"metric": exp.metric})
        mine, theirs = self._score(exp), self._score(inc)
        if mine is not None and theirs is not None and mine < theirs - self.margin:
            return Decision("keep", f"truly better than {inc.id} by {theirs - mine:.6g}", {"metric": exp.metric})
        return Decision("discard", f"not truly better than {inc.id} by more than {self.margin:g}",
                        {"metric": exp.metric})


def parse(name: str) -> float | None:
    """The margin of a "truth" or "truth:MARGIN" keep-rule name; None for any other name."""
    if name == "truth":
        return 0.0
    if name.startswith("truth:"):
        return float(name.split(":", 1)[1])
    return None
