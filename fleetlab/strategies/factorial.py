"""`factorial`: wave-based design of experiments centred on the incumbent, without an LLM.

The waves alternate between two designs:

1. **Screen (one factor at a time).** Every knob is run at a lower and a higher level than the incumbent, all other
   knobs held at the incumbent's values: `step` of its range on each side (in log space for log ranges), the
   neighbouring values of an ordered choice, up to two other values of an unordered one. On a fleet of at least
   `sweep_workers` workers the first screen sweeps every value of a choice knob with at most `sweep` values (the
   original's agent swept ASPECT_RATIO 48...112 in one wave: a non-monotonic axis whose best value is two steps away
   is found at once, not after two keeps that may lead elsewhere); on a laptop's two slots that wave would take the
   whole session, so it steps to the neighbours. A level outside the range
   is dropped; a level that breaks a constraint is retried at half the step, then dropped. The screen says which
   factors matter and in which direction.
2. **Factorial over the top factors.** The factors whose better screen level beat the centre, best first, form a
   2-level design with levels {centre, better level}: full (2^k) when the fleet holds it, else a resolution-IV
   fractional (2^(k-p), at most runs/2 factors) with generators on the highest-order interactions of the base
   columns. With at most 3 promising factors and room for 3^k runs it is a 3-level full factorial instead, with
   levels {centre, one step, two steps} in the better direction (curvature along the axes that matter). Cells
   already measured (the centre, the screen's own runs) are reused, not run again.

A wave is sized to the fleet: max(free workers, requested proposals, workers in the fleet, 4) runs, so a wave
fills the fleet in one round. When a wave completes, the next one is designed around the incumbent as it is then
(re-centring when it moved); a wave that found nothing better halves the steps of its factors, and once every
step is below `min_step` they are reset (a restart at the coarse scale). While a wave's runs are all handed out but
not finished, free workers are filled with small random moves around the incumbent (design "fill"), so the fleet
never idles waiting for a wave.

Every proposal names only the knobs it changes, with `meta={"wave": k, "design": ..., "run": i, "factors": [...]}`.
Main effects and two-way interactions of the finished waves come from `fleetlab.analysis.effects`.
"""

from __future__ import annotations

import itertools
import math
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from fleetlab.experiment import Experiment, Proposal
from fleetlab.strategies._base import Context, Strategy
from fleetlab.strategies._results import Coverage, Results, config_key, from_unit, measured, score, unit
from fleetlab.strategies.simple import describe_change, parent_knobs

__all__ = ["FactorialStrategy", "fractional_factorial", "full_factorial", "ofat_levels"]


# ---------------------------------------------------------------------------------------------------------------------
# Designs (pure functions; coded levels)


def full_factorial(k: int, levels: int = 2) -> list[tuple[int, ...]]:
    """Every combination of `levels` coded levels (0..levels-1) of k factors, in standard order."""
    return [tuple(reversed(c)) for c in itertools.product(range(levels), repeat=k)]


def fractional_factorial(k: int, runs: int) -> list[tuple[int, ...]]:
    """A balanced 2-level design of k factors in `runs` (a power of two) runs, coded -1/+1.

    The first log2(runs) factors form a full factorial; each further factor is the product of a set of base columns.
    Odd sets of three or more come first (ABC, ABD, ...): any word then has at least four letters, so the design has
    resolution IV (main effects clear of two-factor interactions) for k <= runs/2; beyond that even sets follow
    (resolution III). Every column is balanced and every pair of columns orthogonal."""
    base = int(round(math.log2(runs)))
    if 2 ** base != runs or runs < 2:
        raise ValueError(f"runs must be a power of two >= 2, not {runs}")
    if k < base:
        raise ValueError(f"{k} factors fit a full factorial of {2 ** k} runs; use full_factorial")
    if k >= runs:
        raise ValueError(f"{k} factors need more than {runs} runs")
    sizes = [z for z in range(base, 2, -1) if z % 2] + [z for z in range(base, 1, -1) if z % 2 == 0]
    words = [c for size in sizes for c in itertools.combinations(range(base), size)]
    gens = words[: k - base]
    out = []
    for cell in itertools.product((-1, 1), repeat=base):
        cell = tuple(reversed(cell))
        row = list(cell) + [math.prod(cell[i] for i in g) for g in gens]
        out.append(tuple(row))
    return out


def ofat_levels(space, name: str, centre: Any, step: float, rng: random.Random, sweep: int = 0) -> list[Any]:
    """A lower and a higher level of one knob around `centre` (fewer at a range's edge; other values for categories).
    `sweep`: a choice knob with at most this many values has every other value screened (the whole axis at once)."""
    knob = space.knobs[name]
    if knob.choices is not None:
        if len(knob.choices) <= sweep:
            return [c for c in knob.choices if c != centre]
        numeric = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in knob.choices)
        if numeric:
            ordered = sorted(knob.choices)
            i = ordered.index(centre) if centre in ordered else ordered.index(space.clip(name, centre))
            return [ordered[j] for j in (i - 1, i + 1) if 0 <= j < len(ordered)]
        others = [c for c in knob.choices if c != centre]
        rng.shuffle(others)
        return others[:2]
    u = unit(space, name, centre)
    if u is None:
        return []
    out = []
    for sign in (-1, 1):
        v = from_unit(space, name, u + sign * step)
        if knob.kind == "int" and v == centre:
            v = space.clip(name, centre + sign)
        if v != centre and v not in out and ((v < centre) == (sign < 0)):
            out.append(v)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The strategy


@dataclass
class _Wave:
    number: int
    design: str
    centre: dict[str, Any]                  # full config the wave is centred on
    centre_score: float | None              # its measured score (lower is better), if known
    factors: list[str]
    runs: list[dict[str, Any]]              # full configs still to hand out (in order)
    levels: dict[str, list[Any]] = field(default_factory=dict)  # screen: the levels of each factor
    handed: int = 0
    total: int = 0
    cells: list[dict[str, Any]] = field(default_factory=list)  # factorial: every cell of the design, run or reused
    out: dict[int, bool] = field(default_factory=dict)  # runs handed out and not finished -> seen as an experiment


class FactorialStrategy(Strategy):
    """Screens, then factorials over the factors that matter; re-centred on the incumbent wave after wave."""

    name = "factorial"

    def __init__(self, seed: int = 0, step: float = 0.25, min_step: float = 1 / 64, fill_scale: float = 0.3,
                 fill: bool = True, sweep: int = 8, sweep_workers: int = 8):
        self.rng = random.Random(seed)
        self.sweep, self.sweep_workers = sweep, sweep_workers
        self.step0, self.min_step, self.fill_scale, self.fill = step, min_step, fill_scale, fill
        self.token = uuid.uuid4().hex[:8]   # tells this instance's proposals from an earlier session's
        self.results = Results()
        self.coverage = Coverage()
        self.by_config: dict[str, list[float]] = {}  # config key -> metrics of every variant with that config
        self.steps: dict[str, float] = {}
        self.wave: _Wave | None = None
        self.waves = 0
        self.screens = 0
        self.ranking: list[tuple[str, float, Any]] = []  # last screen: (factor, gain, better level), best first
        self.goal = "minimize"
        self._scanned = 0

    # -- ask/tell ----------------------------------------------------------------------------------------------------

    def observe(self, experiment: Experiment, context: Context) -> None:
        self.goal = context.goal
        w = self.wave
        if w is not None and experiment.meta.get("fx") == self.token and experiment.meta.get("wave") == w.number:
            w.out.pop(experiment.meta.get("run"), None)
        self.coverage.add(experiment, context.space)
        v = self.results.add(experiment)
        if v is None or context.space is None or not measured(experiment):  # a failed replicate measured nothing
            return
        key = config_key(experiment.knobs, context.space.knobs)
        vals = self.by_config.setdefault(key, [])
        vals.append(experiment.metric)

    @property
    def finished(self) -> bool:
        return self.coverage.exhausted

    def rejected(self, proposal: Proposal, reason: str) -> None:
        w = self.wave  # a rejected run never finishes: the wave completes without it
        if w is not None and proposal.meta.get("fx") == self.token and proposal.meta.get("wave") == w.number:
            w.out.pop(proposal.meta.get("run"), None)

    def propose(self, context: Context, n: int) -> list[Proposal]:
        space = context.space
        self.coverage.bind(space)
        if space is None or not space.knobs or n <= 0:
            return []
        self.goal = context.goal
        self._sweep(context)
        out: list[Proposal] = []
        base = parent_knobs(context)
        guard = 0
        while len(out) < n and guard < 4:
            guard += 1
            if self.wave is None or (self.wave.handed >= self.wave.total and self._complete(context)):
                self.wave = self._design(context, base, n)
            w = self.wave
            while len(out) < n and w.runs:
                config = w.runs.pop(0)
                w.handed += 1
                prop = self._proposal(config, base, w, w.handed - 1)
                if prop is not None:
                    out.append(prop)
                    w.out[w.handed - 1] = False
            if not w.runs and not self._complete(context):
                break  # the wave is out; fill below while it finishes
        while self.fill and len(out) < n:  # fill: small moves around the incumbent while the wave finishes
            prop = self._fill(context, base)
            if prop is None:
                break
            out.append(prop)
        return out

    # -- wave bookkeeping ------------------------------------------------------------------------------------------

    def _complete(self, context: Context) -> bool:
        """All of the current wave is handed out, and every run handed out has finished (or was never queued)."""
        w = self.wave
        return w is None or (not w.runs and not w.out)

    def _sweep(self, context: Context) -> None:
        """Runs handed out at an earlier request that never became experiments (rejected, dropped at a limit) are
        given up, so a wave always completes."""
        exps = context.experiments
        w = self.wave
        for e in exps[self._scanned:]:
            if w is not None and e.meta.get("fx") == self.token and e.meta.get("wave") == w.number \
                    and e.meta.get("run") in w.out:
                w.out[e.meta["run"]] = True
        self._scanned = len(exps)
        if w is not None:
            for run in [r for r, seen in w.out.items() if not seen]:
                del w.out[run]

    def _proposal(self, config: dict[str, Any], base: dict[str, Any], w: _Wave, run: int) -> Proposal | None:
        change = {k: v for k, v in config.items() if base.get(k) != v}
        if not change:
            return None
        label = "screen" if w.design == "ofat" else w.design
        return Proposal(description=f"{label} w{w.number}: {describe_change(base, change)}", knobs=change,
                        strategy=self.name,
                        meta={"wave": w.number, "design": w.design, "run": run, "factors": list(w.factors),
                              "fx": self.token})

    def _fill(self, context: Context, base: dict[str, Any]) -> Proposal | None:
        space = context.space
        # wider only when every nearby draw ran already (a small discrete space), so the fleet is not left idle
        for _, around, scale in [(i, base, self.fill_scale) for i in range(20)] + [(i, None, 1.0) for i in range(20)]:
            config = space.sample(self.rng, around=around, scale=scale)
            if self._known(config, space):
                continue
            change = {k: v for k, v in config.items() if base.get(k) != v}
            if change:
                w = self.wave
                return Proposal(description=f"fill: {describe_change(base, change)}", knobs=change,
                                strategy=self.name, meta={"wave": w.number if w else 0, "design": "fill",
                                                          "fx": self.token})
        return None

    def _known(self, config: dict[str, Any], space) -> bool:
        return config_key(config, space.knobs) in self.by_config

    def _measured(self, config: dict[str, Any], space) -> float | None:
        vals = self.by_config.get(config_key(config, space.knobs))
        return score(sum(vals) / len(vals), self.goal) if vals else None

    # -- designing the next wave -----------------------------------------------------------------------------------

    def _design(self, context: Context, base: dict[str, Any], n: int) -> _Wave:
        space = context.space
        centre = {name: base.get(name, k.value) for name, k in space.knobs.items()}
        for name, k in space.knobs.items():
            self.steps.setdefault(name, self.step0)
        prev = self.wave
        if prev is not None:
            self._learn(prev, centre, space)
        size = max(context.free_workers, n, len(context.workers), 4)
        self.waves += 1
        inc = context.incumbent
        cscore = self._measured(centre, space)
        if cscore is None and inc is not None and inc.metric is not None:
            cscore = score(inc.metric, context.goal)
        if prev is not None and prev.design == "ofat" and self.ranking:
            wave = self._factorial(space, prev, size)
            if wave is not None:
                return wave
        return self._screen(space, centre, cscore, wide=len(context.workers) >= self.sweep_workers)

    def _learn(self, prev: _Wave, centre: dict[str, Any], space) -> None:
        """Rank the factors of a finished screen; shrink the steps of factors that found nothing."""
        base_score = self._measured(prev.centre, space)
        if base_score is None:
            base_score = prev.centre_score
        if prev.design == "ofat":
            ranking = []
            for name, levels in prev.levels.items():
                scored = [(self._measured({**prev.centre, name: lv}, space), lv) for lv in levels]
                scored = [(s, lv) for s, lv in scored if s is not None]
                if not scored or base_score is None:
                    continue
                best_s, best_lv = min(scored, key=lambda t: t[0])
                ranking.append((name, base_score - best_s, best_lv))
            ranking.sort(key=lambda t: -t[1])
            self.ranking = ranking
            for name, gain, _ in ranking:
                if gain <= 0:
                    self.steps[name] = self.steps[name] / 2
        else:  # a factorial: if nothing in it beat its centre, refine those factors
            best = min((s for s in (self._measured(c, space) for c in prev.cells) if s is not None),
                       default=None)
            if best is None or base_score is None or best >= base_score:
                for name in prev.factors:
                    self.steps[name] = self.steps[name] / 2
            self.ranking = []
        if all(s < self.min_step for s in self.steps.values()):
            self.steps = {k: self.step0 for k in self.steps}

    def _screen(self, space, centre: dict[str, Any], cscore: float | None, wide: bool = True) -> _Wave:
        sweep = self.sweep if self.screens == 0 and wide else 0
        self.screens += 1
        runs, levels = [], {}
        factors = [n for n in space.knobs if self.steps[n] >= self.min_step or space.knobs[n].choices is not None]
        for name in factors:
            got = []
            for lv in ofat_levels(space, name, centre[name], self.steps[name], self.rng, sweep):
                config = self._valid({**centre, name: lv}, space, name, centre)
                if config is not None and not self._known(config, space):
                    got.append(config[name])
                    runs.append(config)
            if got:
                levels[name] = got
        w = _Wave(self.waves, "ofat", dict(centre), cscore, list(levels), runs, levels=levels, total=len(runs))
        return w

    def _valid(self, config: dict[str, Any], space, name: str, centre: dict[str, Any]) -> dict[str, Any] | None:
        if space.violation(config) is None:
            return config
        k = space.knobs[name]
        if k.choices is None:  # retry at half the distance
            u0, u1 = unit(space, name, centre[name]), unit(space, name, config[name])
            if u0 is not None and u1 is not None:
                half = {**config, name: from_unit(space, name, (u0 + u1) / 2)}
                if half[name] != centre[name] and space.violation(half) is None:
                    return half
        return None

    def _factorial(self, space, screen: _Wave, size: int) -> _Wave | None:
        promising = [(n, g, lv) for n, g, lv in self.ranking if g > 0]
        if not promising:
            return None
        centre = screen.centre
        k_all = len(promising)
        if k_all <= 3 and k_all >= 2 and 3 ** k_all <= size:
            factors = promising[:k_all]
            lv = {}
            for name, _, best in factors:
                further = self._further(space, name, centre[name], best)
                lv[name] = [centre[name], best] + ([further] if further is not None else [best])
            coded = full_factorial(len(factors), 3)
            design = f"3^{len(factors)}"
        else:
            runs = 2 ** int(math.floor(math.log2(size)))
            k = min(k_all, max(1, runs // 2)) if runs >= 8 else min(k_all, int(math.log2(runs)))
            factors = promising[:k]
            lv = {name: [centre[name], best] for name, _, best in factors}
            if 2 ** k <= runs:
                coded = full_factorial(k, 2)
                design = f"2^{k}"
            else:
                coded = [tuple(0 if c < 0 else 1 for c in row) for row in fractional_factorial(k, runs)]
                design = f"2^({k}-{k - int(math.log2(runs))})"
        cells, todo = [], []
        names = [f[0] for f in factors]
        for row in coded:
            config = dict(centre)
            for name, c in zip(names, row):
                config[name] = lv[name][c]
            if space.violation(config) is not None:
                continue
            cells.append(config)
            if not self._known(config, space) and config not in todo:
                todo.append(config)
        if not todo:
            return None
        return _Wave(self.waves, design, dict(centre), screen.centre_score, names, todo, total=len(todo), cells=cells)

    def _further(self, space, name: str, centre: Any, best: Any) -> Any | None:
        """One more step beyond `best` in the direction it lies from `centre` (None if there is none)."""
        k = space.knobs[name]
        if k.choices is not None:
            numeric = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in k.choices)
            if not numeric:
                others = [c for c in k.choices if c not in (centre, best)]
                return others[0] if others else None
            ordered = sorted(k.choices)
            i, j = ordered.index(centre), ordered.index(best)
            nxt = j + (j - i)
            return ordered[nxt] if 0 <= nxt < len(ordered) else None
        u0, u1 = unit(space, name, centre), unit(space, name, best)
        if u0 is None or u1 is None:
            return None
        v = from_unit(space, name, 2 * u1 - u0)
        return v if v != best else None

    def describe(self) -> dict[str, Any]:
        w = self.wave
        return {"name": self.name, "waves": self.waves, "screens": self.screens,
                "wave": None if w is None else {"number": w.number, "design": w.design, "factors": w.factors},
                "ranking": [(n, g) for n, g, _ in self.ranking], "steps": dict(self.steps)}
