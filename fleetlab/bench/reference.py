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


def _moves(first: int) -> list[tuple[int, int]]:
    """(direction, steps) in the order an agent tries them: near moves first, the promising direction first."""
    return [(d, step) for step in range(1, 9) for d in (first, -first)]


def _multi_knob_change(space: Any, base: dict[str, Any], rng: random.Random, k: int = 2) -> dict[str, Any]:
    """k knobs moved one or two steps each, in random directions (empty if a move lands where it started)."""
    change = {}
    for name in rng.sample(sorted(space.knobs), min(k, len(space.knobs))):
        knob = space.knobs[name]
        value = neighbours(knob, base.get(name, knob.value), rng.choice((-1, 1)), rng.choice((1, 2)))
        if value == base.get(name, knob.value):
            return {}
        change[name] = value
    return change


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
        self._tried: set[tuple[str, str, Any]] = set()  # (incumbent id, knob, value): an agent remembers results.tsv

    def propose(self, context: Context, n: int) -> list[Proposal]:
        self.latency_s = 0.0  # "nothing to do yet" costs no design time
        space = context.space
        if space is None or not space.knobs or _pending(context):
            return []
        base = parent_knobs(context)
        inc = context.incumbent.id if context.incumbent is not None else ""
        for _ in range(4 * len(space.knobs)):
            if not self._order:
                self._order = self.rng.sample(sorted(space.knobs), len(space.knobs))
            name = self._order.pop()
            knob = space.knobs[name]
            first = self._direction.get(name) or self.rng.choice((-1, 1))
            for direction, step in _moves(first):
                value = neighbours(knob, base.get(name, knob.value), direction, step)
                if value == base.get(name) or (inc, name, value) in self._tried or space.violation({**base, name: value}):
                    continue
                self._tried.add((inc, name, value))
                self.latency_s = self.design_s
                return [Proposal(description=f"greedy: {describe_change(base, {name: value})}", knobs={name: value},
                                 strategy=self.name, meta={"knob": name, "direction": direction})]
        for i in range(400):  # every one-knob move around the incumbent has run: try two (then more) knobs at once
            change = _multi_knob_change(space, base, self.rng, 2 + i // 100)
            key = (inc, tuple(sorted(change.items(), key=lambda kv: kv[0])))
            if change and key not in self._tried and not space.violation({**base, **change}):
                self._tried.add(key)
                self.latency_s = self.design_s
                return [Proposal(description=f"greedy: {describe_change(base, change)}", knobs=change,
                                 strategy=self.name)]
        self._exhausted = True
        return []

    @property
    def finished(self) -> bool:
        return getattr(self, "_exhausted", False)

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
        self._tried: set[tuple[str, str, Any]] = set()  # (incumbent id, knob, value)

    def propose(self, context: Context, n: int) -> list[Proposal]:
        self.latency_s = 0.0
        space = context.space
        if space is None or not space.knobs or _pending(context):
            return []
        workers = max(1, len(context.workers))
        size = max(1, min(workers, int(round(self.rng.uniform(*self.wave_fraction) * workers))))
        base = parent_knobs(context)
        inc = context.incumbent.id if context.incumbent is not None else ""
        wave: list[Proposal] = []
        names = sorted(space.knobs)
        tries = 0
        while len(wave) < size and tries < 20 * size:
            tries += 1
            name = self.rng.choice(names)
            knob = space.knobs[name]
            current = base.get(name, knob.value)
            # a sweep: values on both sides of the current one, up to `sweep` new ones (wider if the near ones ran)
            added = 0
            for step in range(1, 4 * self.sweep):
                for direction in (-1, 1):
                    value = neighbours(knob, current, direction, step)
                    if len(wave) >= size or added >= self.sweep or value == current or (inc, name, value) in self._tried:
                        continue
                    if space.violation({**base, name: value}):
                        continue
                    self._tried.add((inc, name, value))
                    added += 1
                    wave.append(Proposal(description=f"wave {self.waves + 1}: {describe_change(base, {name: value})}",
                                         knobs={name: value}, strategy=self.name))
        # every one-knob sweep around this incumbent has run: combine knobs (the original's phase 5), two at first,
        # more when the pairs run out (a 256-worker wave needs many)
        tries = 0
        while len(wave) < size and tries < 200 * size:
            tries += 1
            change = _multi_knob_change(space, base, self.rng, 2 + tries // (20 * size))
            key = (inc, tuple(sorted(change.items(), key=lambda kv: kv[0])))
            if not change or key in self._tried or space.violation({**base, **change}):
                continue
            self._tried.add(key)
            wave.append(Proposal(description=f"wave {self.waves + 1}: {describe_change(base, change)}", knobs=change,
                                 strategy=self.name))
        if wave:
            self.waves += 1
            self.latency_s = self.wave_latency_s
        else:
            self._exhausted = True
        return wave

    @property
    def finished(self) -> bool:
        return getattr(self, "_exhausted", False)
