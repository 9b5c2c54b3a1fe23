"""`auto`, the default: factorial screening first, Bayesian optimization once enough is known.

The switch rule. Phase 1 is `factorial` alone: a one-factor-at-a-time screen around the incumbent, then a factorial
over the factors that paid. Phase 2 starts at the first request where either
- the factorial has finished a screen and the factorial wave designed from it (it is designing its third wave), or
- at least `2 x knobs + 4` distinct variants have a measured metric (whoever ran them: a resumed project, hand
  submissions and other strategies count),
because by then the surrogate has a design to learn from (the screen spans every axis, the factorial the
interactions of the ones that matter), which TPE's own random start-up would otherwise have to buy.
In phase 2 each request is split: a `bo_share` (default 3/4) goes to Optuna TPE (`optuna`, told every result since
the start), the rest to the factorial, which goes on re-centring on the incumbent with ever finer steps: local
refinement that the global surrogate is slow at in many dimensions. Both are told every finished experiment in both
phases, so the switch loses nothing. The phase is recomputed from what is known, so a resumed session resumes in
phase 2 at once when the project already has the data.
"""

from __future__ import annotations

from typing import Any

from fleetlab.experiment import Experiment, Proposal
from fleetlab.strategies._base import Context, Strategy
from fleetlab.strategies.factorial import FactorialStrategy

__all__ = ["AutoStrategy"]


class AutoStrategy(Strategy):
    name = "auto"

    def __init__(self, seed: int = 0, bo_share: float = 0.75, sampler: str = "tpe"):
        from fleetlab.strategies.optuna import OptunaGPStrategy, OptunaStrategy

        self.factorial = FactorialStrategy(seed=seed)
        self.bo = (OptunaGPStrategy if sampler == "gp" else OptunaStrategy)(seed=seed)
        self.bo_share = bo_share
        self.phase = 1
        self._bo_given = 0
        self._fx_given = 0
        self._switched_at: int | None = None

    def observe(self, experiment: Experiment, context: Context) -> None:
        self.factorial.observe(experiment, context)
        self.bo.observe(experiment, context)

    def rejected(self, proposal: Proposal, reason: str) -> None:
        self.factorial.rejected(proposal, reason)
        self.bo.rejected(proposal, reason)

    def _enough(self, context: Context) -> bool:
        if self.factorial.waves >= 3:
            return True
        knobs = len(context.space.knobs) if context.space is not None else 0
        return len(self.factorial.results.measured()) >= 2 * knobs + 4

    def propose(self, context: Context, n: int) -> list[Proposal]:
        if n <= 0:
            return []
        if self.phase == 1 and self._enough(context):
            self.phase = 2
            self._switched_at = len(self.factorial.results.measured())
        if self.phase == 1:
            out = self.factorial.propose(context, n)
            return [self._tag(p) for p in out]
        n_bo = 0
        for _ in range(n):  # each slot to whichever side is furthest below its share
            total = self._bo_given + self._fx_given + 1
            if (self._bo_given + 1) / total <= self.bo_share + 1e-9 or self.bo_share >= 1:
                self._bo_given += 1
                n_bo += 1
            else:
                self._fx_given += 1
        out = self.bo.propose(context, n_bo) + self.factorial.propose(context, n - n_bo)
        return [self._tag(p) for p in out]

    def _tag(self, p: Proposal) -> Proposal:
        from dataclasses import replace

        return replace(p, meta={**p.meta, "auto_phase": self.phase, "via": p.strategy}, strategy=self.name)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "phase": self.phase, "switched_after": self._switched_at,
                "bo": self.bo.describe(), "factorial": self.factorial.describe()}
