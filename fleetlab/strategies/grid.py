"""`grid`: an exhaustive grid over the knob space, in a fixed order, then `finished`.

Levels: every choice of a categorical knob; three levels of a range knob (low, middle, high; the middle is the
geometric mean on a log range; integers rounded). Configs that break a constraint, and configs already measured,
are skipped. The grid is walked lazily (`itertools.product`), so a space too large to finish still starts at once;
it holds prod(levels) configs, which grows fast: use `[knobs]` in fleetlab.toml to fix what should not be swept.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterator

from fleetlab.experiment import Experiment, Proposal
from fleetlab.strategies._base import Context, Strategy
from fleetlab.knobs import unwarp, warp, warps
from fleetlab.strategies._results import config_key
from fleetlab.strategies.simple import describe_change, parent_knobs

__all__ = ["GridStrategy", "grid_levels"]


def grid_levels(space, name: str) -> list[Any]:
    """The grid's levels of one knob: its choices, or low/middle/high of its range."""
    k = space.knobs[name]
    if k.choices is not None:
        return list(k.choices)
    lo, hi = float(k.low), float(k.high)
    mid = unwarp(k, (warp(k, lo) + warp(k, hi)) / 2) if warps(k) else (lo + hi) / 2
    out = []
    for x in (lo, mid, hi):
        v = space.clip(name, int(round(x)) if k.kind == "int" else float(f"{x:.4g}"))
        if v not in out:
            out.append(v)
    return out


class GridStrategy(Strategy):
    """Every combination of every knob's levels, once."""

    name = "grid"

    def __init__(self) -> None:
        self._iter: Iterator[tuple] | None = None
        self._names: list[str] = []
        self._done = False
        self._known: set[str] = set()
        self.total = 0

    def observe(self, experiment: Experiment, context: Context) -> None:
        if context.space is not None:
            self._known.add(config_key(experiment.knobs, context.space.knobs))

    def propose(self, context: Context, n: int) -> list[Proposal]:
        space = context.space
        if space is None or not space.knobs:
            self._done = True
            return []
        if self._iter is None:
            self._names = list(space.knobs)
            levels = [grid_levels(space, name) for name in self._names]
            self.total = math.prod(len(lv) for lv in levels)
            self._iter = itertools.product(*levels)
        base = parent_knobs(context)
        out: list[Proposal] = []
        for cell in self._iter:
            config = dict(zip(self._names, cell))
            key = config_key(config, space.knobs)
            if key in self._known or space.violation(config) is not None:
                continue
            self._known.add(key)
            change = {k: v for k, v in config.items() if base.get(k) != v}
            if not change:
                continue
            out.append(Proposal(description=f"grid: {describe_change(base, change)}", knobs=change,
                                strategy=self.name, meta={"design": "grid"}))
            if len(out) >= n:
                return out
        self._done = True
        return out

    @property
    def finished(self) -> bool:
        return self._done

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "cells": self.total, "done": self._done}
