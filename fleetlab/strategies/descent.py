"""`descent`: designed waves over every continuous knob, and a path of steepest descent down their slopes.

Response-surface methodology's path of steepest descent, run on a fleet.

1. **A wave.** Around a centre, a 2-level fractional factorial over all numeric range knobs at ±`delta` of each
   range (log scale for log ranges): 16 runs for 8 to 15 knobs (`two_level_design`). A least-squares fit (an
   intercept, the runs' unit offsets, one indicator per hardware class as a nuisance term) gives every slope with a
   standard error of about σ/2, whatever the number of knobs, and the centre's level with one of about σ/4.
2. **A step.** From the last accepted centre, every knob whose slope is more than `z` standard errors from zero moves
   `delta` downhill (by the slope's sign: its size is too noisy to scale the step by). The next wave is centred there,
   and one run at the new centre goes to the keep rule, which screens and validates it like any candidate.
3. **Accept or back off.** When the wave is in, its fitted centre level is compared with the accepted wave's (one
   joint fit, hardware classes shared): better, and the path moves on from it; not better, and the path steps again
   from the accepted centre at half the step (back to `delta` once below `min_delta`). No slope clear of the noise:
   a fold-over wave (every sign flipped) at the accepted centre, pooled with it; still none: the path ends there and
   proposes nothing (`auto` gives its slots to the others) until the incumbent moves.

The path starts at the incumbent and goes on while the incumbent is one of its centres; a new incumbent from elsewhere
starts a new path at it (a wave still out is abandoned).

Why: near an optimum the gains left are spread over many knobs, each below the noise floor (on the `autoresearch`
surface at `auto`'s 0.65 h incumbent: 5σ over nine knobs, none above 1.2σ alone). No single-knob comparison sees them
and one-knob steps are too small to validate, but a wave measures all slopes at once and the step bundles them
(offline, on that surface, from that incumbent: ~1.5σ true gain for the first step, ~2.5σ after five waves).
The path's levels are judged by whole waves (s.e. ~σ/4 each), not single runs, so it can walk down a slope of
sub-σ steps that the keep rule could not validate one by one.

Every design run and step run opts out of early stopping (`meta["prune"] = False`): a wave is a designed
measurement, and most of its runs are worse than the centre by design. With them pruned (13xH100+3xH200, seeds
10-29, 2.5 h, `--prune`) the median best at 2 h was 0.97858, against 0.97650 with them opted out and 0.97626 without
pruning. The first figure already enters each stopped run at its bound (below), and no estimate of a stopped run's
final from its curve is close enough to fit slopes with: at its bound, at the history's median catch-up from its
curve, or at the incumbent's final plus the gap between their curves, each was ~6σ off the run's true final
(root-mean-square over the design runs of seeds 1 and 12). If a design run is stopped anyway (a
pruner that ignores the opt-out), it enters the fit at its bound, the best final metric the pruner's history says it
could still have reached (`meta["bound"]`), rather than as missing (`censored=False` drops it).

Categorical knobs are left to the other strategies (`auto` runs this beside them).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any

from fleetlab.experiment import Experiment, Proposal, State
from fleetlab.strategies._base import Context, Strategy
from fleetlab.strategies._results import Coverage, config_key, from_unit, measured, score, unit
from fleetlab.strategies.factorial import fractional_factorial, full_factorial
from fleetlab.strategies.simple import describe_change, parent_knobs

__all__ = ["DescentStrategy", "two_level_design"]


def two_level_design(m: int) -> list[tuple[int, ...]]:
    """A balanced ±1 design of m factors: a full factorial when it fits in the smallest power of two above m (and at
    least 4 runs: 2 for one factor), else a fractional factorial of that many runs (16 for 8 to 15 factors)."""
    runs = 4
    while runs <= m:
        runs *= 2
    if 2 ** m <= runs:
        return [tuple(2 * c - 1 for c in row) for row in full_factorial(m, 2)]
    return fractional_factorial(m, runs)


@dataclass
class _Wave:
    number: int
    centre: dict[str, Any]
    rows: list[tuple[int, ...]]
    out: set[int] = field(default_factory=set)              # run numbers handed out and not finished
    data: list[tuple[list[float], str, float]] = field(default_factory=list)  # (unit offsets, hardware, score)


class DescentStrategy(Strategy):
    """A path of steepest descent: designed ±delta waves, each centred one step down the last accepted wave's slope."""

    name = "descent"

    def __init__(self, seed: int = 0, delta: float = 0.15, z: float = 1.0, min_delta: float = 0.02,
                 censored: bool = True):
        self.censored = censored
        self.delta0, self.delta, self.z, self.min_delta = delta, delta, z, min_delta
        self.token = uuid.uuid4().hex[:8]   # tells this instance's runs from an earlier session's
        self.goal = "minimize"
        self.nums: list[str] = []
        self.anchor: str | None = None      # config key of the incumbent the path started from
        self.path: set[str] = set()         # config keys of the path's centres (one of them kept: the path goes on)
        self.wave: _Wave | None = None      # the wave being run
        self.accepted: _Wave | None = None  # the last wave whose centre was accepted
        self.waves = self.steps = self.rejected_steps = 0
        self._run = 0
        self._folds = 0
        self.stalled = False                # no slope clears the noise at the accepted centre, fold-over included
        self.last: dict[str, Any] = {}
        self.coverage = Coverage()
        self.no_numeric = False             # the space has no numeric range: nothing to descend

    # -- ask/tell ----------------------------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """Nothing to descend, every config ran, or the path ended (it resumes if a new incumbent comes from
        elsewhere; alone, nothing else can bring one)."""
        return self.no_numeric or self.coverage.exhausted or self.stalled

    def observe(self, experiment: Experiment, context: Context) -> None:
        self.goal = context.goal
        self.coverage.add(experiment, context.space)
        meta, w = experiment.meta, self.wave
        if meta.get("descent") != self.token or w is None or meta.get("wave") != w.number:
            return
        w.out.discard(meta.get("run"))
        value = float(experiment.metric) if measured(experiment) else None
        if value is None and self.censored and experiment.state is State.PRUNED and meta.get("bound") is not None:
            value = float(meta["bound"])  # stopped early: the best it could still have reached, not a missing run
        if value is not None and math.isfinite(value):
            x = []
            for k in self.nums:
                u, u0 = unit(context.space, k, experiment.knobs.get(k)), unit(context.space, k, w.centre.get(k))
                x.append(0.0 if u is None or u0 is None else u - u0)
            w.data.append((x, experiment.hardware or "", score(value, context.goal)))

    def rejected(self, proposal: Proposal, reason: str) -> None:
        if self.wave is not None and proposal.meta.get("descent") == self.token \
                and proposal.meta.get("wave") == self.wave.number:
            self.wave.out.discard(proposal.meta.get("run"))

    def propose(self, context: Context, n: int) -> list[Proposal]:
        space = context.space
        self.coverage.bind(space)
        if space is None or n <= 0:
            return []
        self.goal = context.goal
        if not self.nums:
            self.nums = [k for k, kn in space.knobs.items()
                         if kn.choices is None and kn.low is not None and kn.high is not None and kn.high > kn.low]
            if not self.nums:
                self.no_numeric = True
                return []
        base = parent_knobs(context)
        incumbent = {name: base.get(name, k.value) for name, k in space.knobs.items()}
        key = config_key(incumbent, space.knobs)
        out: list[Proposal] = []
        if self.anchor is None or (key != self.anchor and key not in self.path):
            # a new incumbent from elsewhere: a new path from it (a wave still out is abandoned)
            self.anchor, self.path, self.accepted, self.delta = key, {key}, None, self.delta0
            self.stalled = False
            self._start(incumbent, space)
        elif key != self.anchor:
            self.anchor = key  # the keep rule kept one of the path's centres: the path goes on
        w = self.wave
        if self.stalled:
            return []
        if not w.rows and not w.out:
            self._advance(space, context)
            if self.stalled:
                return []
            out += self._centre_run(space, base)
        while len(out) < n and self.wave.rows:
            prop = self._design_run(space, base, self.wave.rows.pop(0))
            if prop is not None:
                out.append(prop)
        return out

    # -- the path ----------------------------------------------------------------------------------------------------

    def _start(self, centre: dict[str, Any], space, fold: bool = False) -> None:
        """The next wave at `centre`; `fold`: the last wave's fold-over (every sign flipped), at the same centre."""
        self.waves += 1
        self._folds = self._folds + 1 if fold else 0
        sign = -1 if self._folds % 2 else 1
        rows = [tuple(sign * c for c in row) for row in two_level_design(len(self.nums))]
        self.wave = _Wave(self.waves, dict(centre), rows)
        self.path.add(config_key(centre, space.knobs))

    def _advance(self, space, context: Context) -> None:
        """The wave is in: accept its centre if it beats the last accepted one, then step from the accepted centre
        (a rejected step is retried at half the step)."""
        w, acc = self.wave, self.accepted
        sigma = self._sigma(context)
        if acc is None or not w.data:
            if w.data:
                self.accepted = w
        elif w.centre == acc.centre:  # a fold-over at the accepted centre: pooled
            acc.data.extend(w.data)
        else:
            diff = self._difference(acc, w)
            self.last = {"difference": diff, "delta": self.delta}
            if diff is not None and diff < 0:
                self.accepted = w
                self.steps += 1
            else:
                self.rejected_steps += 1
                self.delta /= 2
                if self.delta < self.min_delta:
                    self.delta = self.delta0
        acc = self.accepted
        if acc is None:  # nothing measured yet: the fold-over; nothing from it either: the path ends here
            if self._folds == 0:
                self._start(w.centre, space, fold=True)
            else:
                self.stalled = True
            return
        est = self.slopes(acc, sigma)
        centre = dict(acc.centre)
        moved = []
        for k, b, se in est or []:
            zk = abs(b) / se if se else math.inf
            if zk <= self.z or b == 0.0:
                continue
            u = unit(space, k, centre[k])
            v = from_unit(space, k, u - math.copysign(self.delta, b))
            if v != centre[k]:
                centre[k] = v
                moved.append(k)
        self.last.update(moved=moved, runs=len(acc.data))
        if not moved or space.violation(centre) is not None:
            if self._folds == 0 and w.centre == acc.centre:
                self._start(acc.centre, space, fold=True)  # no slope clear of the noise: the fold-over, pooled
            else:  # not after the fold-over either: the path ends here until the incumbent moves
                self.stalled = True
        else:
            self._start(centre, space)

    def _centre_run(self, space, base: dict[str, Any]) -> list[Proposal]:
        """One run at the new wave's centre: the keep rule screens the path's position like any candidate."""
        change = {k: v for k, v in self.wave.centre.items() if base.get(k) != v}
        if not change:
            return []
        self._run += 1
        self.wave.out.add(self._run)
        return [Proposal(description=f"descent step {self.waves}: {describe_change(base, change)}", knobs=change,
                         strategy=self.name, meta={"descent": self.token, "design": "step", "run": self._run,
                                                   "wave": self.waves, "prune": False})]

    def _design_run(self, space, base: dict[str, Any], row: tuple[int, ...]) -> Proposal | None:
        config = dict(self.wave.centre)
        for k, c in zip(self.nums, row):
            u = unit(space, k, config[k])
            if u is not None:
                config[k] = from_unit(space, k, u + c * self.delta)
        if space.violation(config) is not None:
            return None
        change = {k: v for k, v in config.items() if base.get(k) != v}
        if not change:
            return None
        self._run += 1
        self.wave.out.add(self._run)
        return Proposal(description=f"descent w{self.waves}: {len(change)} knobs ±{self.delta:g}", knobs=change,
                        strategy=self.name,
                        meta={"descent": self.token, "design": "descent", "run": self._run, "wave": self.waves,
                              "prune": False})

    # -- estimates ---------------------------------------------------------------------------------------------------

    @staticmethod
    def _fit(blocks: list[list[tuple[list[float], str, float]]]):
        """Least squares over one or more waves: per wave an intercept and slopes, one indicator per hardware class
        shared by all. Returns (beta, A, y, column count per wave)."""
        import numpy as np

        rows = [(b, x, h, y) for b, block in enumerate(blocks) for x, h, y in block]
        m = len(rows[0][1])
        hws = sorted({h for _, _, h, _ in rows})
        A = np.zeros((len(rows), len(blocks) * (1 + m) + len(hws) - 1))
        y = np.array([r[3] for r in rows])
        for i, (b, x, h, _) in enumerate(rows):
            A[i, b * (1 + m)] = 1.0
            A[i, b * (1 + m) + 1: (b + 1) * (1 + m)] = x
            if h in hws[1:]:
                A[i, len(blocks) * (1 + m) + hws.index(h) - 1] = 1.0
        beta, *_ = np.linalg.lstsq(A, y, rcond=None)
        return beta, A, y, 1 + m

    def _difference(self, a: _Wave, b: _Wave) -> float | None:
        """The fitted score at b's centre minus a's (negative: b is better), hardware classes adjusted."""
        if len(a.data) < 2 or len(b.data) < 2:
            return None
        beta, _, _, per = self._fit([a.data, b.data])
        return float(beta[per] - beta[0])

    def slopes(self, w: _Wave, sigma: float | None = None) -> list[tuple[str, float, float | None]] | None:
        """(knob, slope per unit of its range, standard error or None) of one wave's runs. The standard error uses
        the fit's residuals when they have at least 6 degrees of freedom, else `sigma` (the keep rule's floor)."""
        import numpy as np

        if len(w.data) < 4:
            return None
        beta, A, y, per = self._fit([w.data])
        dof = len(y) - np.linalg.matrix_rank(A)
        if dof >= 6:
            resid = y - A @ beta
            sigma = math.sqrt(float(resid @ resid) / dof)
        se = np.sqrt(np.clip(np.diag(np.linalg.pinv(A.T @ A)), 0.0, None)) * sigma if sigma else None
        return [(k, float(beta[1 + j]), None if se is None else float(se[1 + j]))
                for j, k in enumerate(self.nums) if np.ptp(A[:, 1 + j]) > 1e-12]

    def _sigma(self, context: Context) -> float | None:
        rule = context.view.keep_rule if context.view is not None else None
        if rule is None or self.wave is None:
            return None
        vals = [v for v in (rule.sigma(h) for h in {h for _, h, _ in self.wave.data}) if v]
        return max(vals) if vals else None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "waves": self.waves, "steps": self.steps, "rejected_steps": self.rejected_steps,
                "delta": self.delta, "last": self.last}
