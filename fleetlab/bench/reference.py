"""Reference behaviours: the original's ways of working, as strategies, so `fleetlab bench` can report ratios to them.

- `seq-greedy`: autoresearch (Karpathy). One experiment at a time: read the result, change one knob of the incumbent,
  run, keep it if it is better. The agent's design time per experiment (`latency_s`, default 30 s: read the log, edit
  train.py, commit) is simulated; nothing is designed while a run is in flight.
- `wave-sync`: the SkyPilot run. Wait until every experiment of the wave has finished, spend 60 s collecting results
  cluster by cluster and 60 s designing the next wave (`latency_s` = 120 s per wave), then launch it. A wave is a set
  of one-knob sweeps around the incumbent (e.g. ASPECT_RATIO 48..112 in one wave). Its size follows the original's
  "10-16 experiments per wave" on 16 GPUs, scaled to the fleet: uniform in [0.625, 1] of the workers
  (`wave_fraction=(1.0, 1.0)` gives full waves).

Both use the original's keep rule ("lower than before"): `keep_rule = "simple"` tells the bench harness so.
"""

from __future__ import annotations

import math
import random
from typing import Any

from fleetlab.experiment import Proposal
from fleetlab.strategies._base import Context, Strategy
from fleetlab.strategies.simple import describe_change, parent_knobs

__all__ = ["SeqGreedy", "WaveSync", "neighbours"]


def neighbours(knob: Any, value: Any, direction: int, step: int = 1) -> Any:
    """The value `step` moves from `value` in `direction` (+1 up, -1 down) the way an agent edits a constant:
    the next choice, or x1.25 per step on a log range, or +-10 % of the range per step on a linear one."""
    if knob.choices is not None:
        choices = list(knob.choices)
        if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices):
            choices.sort()
        i = choices.index(value) if value in choices else 0
        return choices[min(max(i + direction * step, 0), len(choices) - 1)]
    lo, hi = float(knob.low), float(knob.high)
    if knob.log and value > 0:
        x = value * 1.25 ** (direction * step)
    else:
        x = value + direction * step * 0.1 * (hi - lo)
    x = min(max(x, lo), hi)
    if knob.kind == "int":
        return int(round(x))
    return float(f"{x:.4g}")


def _pending(context: Context) -> bool:
    """Something is still running. O(1): the scheduler dispatches what it can before it asks for proposals, and
    these strategies' experiments can run on any worker, so nothing waits in the queue while a worker is free."""
    return context.free_workers < len(context.workers)


class SeqGreedy(Strategy):
    """autoresearch: one knob change at a time around the incumbent, keep if better (see the module docstring)."""

    name = "seq-greedy"
    keep_rule = "simple"

    def __init__(self, seed: int = 0, design_s: float = 30.0):
        self.rng = random.Random(seed)
        self.design_s = float(design_s)
        self.latency_s = 0.0
        self._direction: dict[str, int] = {}
        self._order: list[str] = []

    def propose(self, context: Context, n: int) -> list[Proposal]:
        self.latency_s = 0.0  # "nothing to do yet" costs no design time
        space = context.space
        if space is None or not space.knobs or _pending(context):
            return []
        base = parent_knobs(context)
        for _ in range(4 * len(space.knobs)):
            if not self._order:
                self._order = self.rng.sample(sorted(space.knobs), len(space.knobs))
            name = self._order.pop()
            knob = space.knobs[name]
            direction = self._direction.get(name) or self.rng.choice((-1, 1))
            value = neighbours(knob, base.get(name, knob.value), direction)
            if value == base.get(name) or space.violation({**base, name: value}):
                self._direction[name] = -direction
                continue
            self.latency_s = self.design_s
            return [Proposal(description=f"greedy: {describe_change(base, {name: value})}", knobs={name: value},
                             strategy=self.name, meta={"knob": name, "direction": direction})]
        return []

    def observe(self, experiment, context: Context) -> None:
        knob, direction = experiment.meta.get("knob"), experiment.meta.get("direction")
        if knob is None or direction is None:
            return
        inc = context.incumbent
        kept = inc is not None and inc.id == experiment.id
        # keep going the way that worked; turn round after a failure
        self._direction[knob] = direction if kept else -direction
        if kept:
            self._order.append(knob)  # an improving knob is tried again next


class WaveSync(Strategy):
    """The SkyPilot run: whole waves of one-knob sweeps, 120 s of collecting and designing between waves."""

    name = "wave-sync"
    keep_rule = "simple"

    def __init__(self, seed: int = 0, collect_s: float = 60.0, design_s: float = 60.0,
                 wave_fraction: tuple[float, float] = (0.625, 1.0), sweep: int = 4):
        self.rng = random.Random(seed)
        self.wave_latency_s = float(collect_s) + float(design_s)
        self.latency_s = 0.0
        self.wave_fraction = (float(wave_fraction[0]), float(wave_fraction[1]))
        self.sweep = max(1, int(sweep))
        self.waves = 0

    def propose(self, context: Context, n: int) -> list[Proposal]:
        self.latency_s = 0.0
        space = context.space
        if space is None or not space.knobs or _pending(context):
            return []
        workers = max(1, len(context.workers))
        size = max(1, min(workers, int(round(self.rng.uniform(*self.wave_fraction) * workers))))
        base = parent_knobs(context)
        wave: list[Proposal] = []
        seen: set[tuple[str, Any]] = set()
        names = sorted(space.knobs)
        tries = 0
        while len(wave) < size and tries < 20 * size:
            tries += 1
            name = self.rng.choice(names)
            knob = space.knobs[name]
            current = base.get(name, knob.value)
            # a sweep: values on both sides of the current one, up to `sweep` of them
            for step in range(1, math.ceil(self.sweep / 2) + 1):
                for direction in (-1, 1):
                    value = neighbours(knob, current, direction, step)
                    if len(wave) >= size or value == current or (name, value) in seen:
                        continue
                    if space.violation({**base, name: value}):
                        continue
                    seen.add((name, value))
                    wave.append(Proposal(description=f"wave {self.waves + 1}: {describe_change(base, {name: value})}",
                                         knobs={name: value}, strategy=self.name))
        if wave:
            self.waves += 1
            self.latency_s = self.wave_latency_s
        return wave
