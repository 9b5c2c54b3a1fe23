"""The simplest strategies: `baseline` (replicates of the baseline), `random` (knob values sampled around the
incumbent and across the space) and `none` (propose nothing; serve `fleetlab submit`)."""

from __future__ import annotations

import random
from typing import Any

from fleetlab.experiment import Experiment, Proposal
from fleetlab.strategies._base import Context, Strategy
from fleetlab.strategies._results import Coverage


def describe_change(old: dict[str, Any], new: dict[str, Any], limit: int = 4) -> str:
    """A short description of the knobs that changed, e.g. 'MATRIX_LR 0.04 -> 0.05, DEPTH 8 -> 6'."""
    changed = [(k, old.get(k), v) for k, v in new.items() if old.get(k) != v]
    parts = [f"{k} {_fmt(a)} -> {_fmt(b)}" for k, a, b in changed[:limit]]
    if len(changed) > limit:
        parts.append(f"+{len(changed) - limit} more")
    return ", ".join(parts) or "no change"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def parent_knobs(context: Context) -> dict[str, Any]:
    inc = context.incumbent
    return dict(inc.knobs) if inc is not None and inc.knobs else dict(context.baseline_knobs)


class NoneStrategy(Strategy):
    """Proposes nothing: the fleet runs what people and external agents `fleetlab submit`."""

    name = "none"

    def propose(self, context: Context, n: int) -> list[Proposal]:
        return []


class BaselineStrategy(Strategy):
    """Replicates of the baseline (the project as it is), each with its own seed: measures the noise floor."""

    name = "baseline"

    def propose(self, context: Context, n: int) -> list[Proposal]:
        base = next((e for e in context.experiments if e.role == "baseline"), None)
        return [Proposal(description="baseline replicate", parent=base.id if base else None, role="replicate",
                         strategy=self.name) for _ in range(n)]


class RandomStrategy(Strategy):
    """Random search: half the proposals perturb the incumbent, half sample the whole space."""

    name = "random"

    def __init__(self, seed: int = 0, local_share: float = 0.5, scale: float = 1.0):
        self.rng = random.Random(seed)
        self.local_share = local_share
        self.scale = scale
        self.coverage = Coverage()

    def observe(self, experiment: Experiment, context: Context) -> None:
        self.coverage.add(experiment, context.space)

    @property
    def finished(self) -> bool:
        return self.coverage.exhausted

    def propose(self, context: Context, n: int) -> list[Proposal]:
        space = context.space
        self.coverage.bind(space)
        if space is None or not space.knobs:
            return []
        base = parent_knobs(context)
        out = []
        for _ in range(n):
            around = base if self.rng.random() < self.local_share else None
            config = space.sample(self.rng, around=around, scale=self.scale)
            change = {k: v for k, v in config.items() if base.get(k) != v}
            if not change:
                continue
            out.append(Proposal(description=f"random: {describe_change(base, change)}", knobs=change,
                                strategy=self.name))
        return out
