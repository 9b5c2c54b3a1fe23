"""What the knob strategies know: finished results aggregated by variant, and small helpers over a Space.

A variant run several times (replicates, validation runs, the same config proposed by two strategies) counts once,
with the mean of its `done` metrics, so replicates never weigh twice in a model or a screen. Failures and runs that
ended without a metric are kept apart: they say where not to go, not how good a config is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from fleetlab.experiment import Experiment, State
from fleetlab.knobs import unwarp, warp, warps


@dataclass
class Variant:
    """One distinct variant (content hash): its full knob values and every metric measured for it."""

    key: str
    knobs: dict[str, Any]
    metrics: list[float] = field(default_factory=list)
    failed: int = 0
    ids: list[str] = field(default_factory=list)

    @property
    def mean(self) -> float | None:
        return sum(self.metrics) / len(self.metrics) if self.metrics else None


class Results:
    """Finished experiments of a project folded by content hash; fed one experiment at a time (`add`)."""

    def __init__(self) -> None:
        self.variants: dict[str, Variant] = {}
        self.seen: set[str] = set()

    def add(self, exp: Experiment) -> Variant | None:
        """Fold in one finished experiment; returns its variant (None if already seen or not final)."""
        if exp.id in self.seen or not exp.state.is_final:
            return None
        self.seen.add(exp.id)
        key = exp.content_hash or config_key(exp.knobs)
        v = self.variants.get(key)
        if v is None:
            v = self.variants[key] = Variant(key, dict(exp.knobs))
        v.ids.append(exp.id)
        if measured(exp):
            v.metrics.append(float(exp.metric))
        elif exp.state.is_failure:
            v.failed += 1
        return v

    def measured(self) -> list[Variant]:
        return [v for v in self.variants.values() if v.metrics]

    def __len__(self) -> int:
        return len(self.variants)


class Coverage:
    """Which configs of the space have been run. A strategy says `finished` once the space holds nothing it can
    propose: no knob at all, or a finite space (every knob categorical or an integer range) whose every config ran.
    Without that an idle fleet waits for proposals that cannot come, and the session never ends."""

    def __init__(self) -> None:
        self.space: Any = None
        self.bound = False
        self.keys: set[str] = set()

    def bind(self, space) -> None:
        self.space, self.bound = space, True

    def add(self, exp: Experiment, space) -> None:
        self.bind(space)
        if space is not None and exp.state.is_final:
            self.keys.add(config_key({n: exp.knobs.get(n, k.value) for n, k in space.knobs.items()}, space.knobs))

    @property
    def exhausted(self) -> bool:
        if not self.bound:
            return False
        if self.space is None or not self.space.knobs:
            return True
        n = space_size(self.space)
        return n is not None and len(self.keys) >= n


def space_size(space) -> int | None:
    """How many configs the space holds when every knob takes finitely many values, else None (constraints are not
    counted: an upper bound)."""
    total = 1
    for k in space.knobs.values():
        if k.choices is not None:
            total *= len(k.choices)
        elif k.kind == "int":
            total *= max(0, int(math.floor(k.high)) - int(math.ceil(k.low)) + 1)
        else:
            return None
    return total


def measured(exp: Experiment) -> bool:
    """Did this run end with a usable metric (done, finite)? Failures and runs without one did not."""
    return exp.state is State.DONE and exp.metric is not None and math.isfinite(exp.metric)


def config_key(config: dict[str, Any], names: Any = None) -> str:
    """A stable key of a config (floats to 6 significant digits), over `names` when given."""
    names = sorted(config) if names is None else sorted(names)
    parts = []
    for n in names:
        v = config.get(n)
        parts.append(f"{n}={float(v):.6g}" if isinstance(v, float) else f"{n}={v!r}")
    return ";".join(parts)


def score(metric: float, goal: str) -> float:
    """Lower is better whatever the goal."""
    return metric if goal == "minimize" else -metric


def unit(space, name: str, value: Any) -> float | None:
    """The position of a numeric value in its knob's range, 0..1 (on its scale: log, log(1 - x)); None for
    categories."""
    k = space.knobs[name]
    if k.choices is not None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    lo, hi, x = float(k.low), float(k.high), float(value)
    if hi <= lo:
        return 0.5
    if warps(k, x):
        return (warp(k, x) - warp(k, lo)) / (warp(k, hi) - warp(k, lo))
    return (x - lo) / (hi - lo)


def from_unit(space, name: str, u: float) -> Any:
    """The knob value at position u (clamped to 0..1) of its range, rounded like the space's own samples."""
    k = space.knobs[name]
    u = min(max(u, 0.0), 1.0)
    lo, hi = float(k.low), float(k.high)
    if warps(k):
        x = unwarp(k, warp(k, lo) + u * (warp(k, hi) - warp(k, lo)))
    else:
        x = lo + u * (hi - lo)
    if k.kind == "int":
        return space.clip(name, int(round(x)))
    x = float(f"{x:.4g}")
    return space.clip(name, x)


__all__ = ["Coverage", "Results", "Variant", "space_size", "config_key", "measured", "score", "unit", "from_unit"]
