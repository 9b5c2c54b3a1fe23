"""`auto`, the default: factorial screening first, Bayesian optimization once enough is known.

The switch rule. Phase 1 is `factorial` alone: a one-factor-at-a-time screen around the incumbent, then a factorial
over the factors that paid. Phase 2 starts at the first request where either
- the factorial has finished a screen and the factorial wave designed from it (it is designing its third wave), or
- at least `2 x knobs + 4` distinct variants have a measured metric (whoever ran them: a resumed project, hand
  submissions and other strategies count),
because by then the surrogate has a design to learn from (the screen spans every axis, the factorial the
interactions of the ones that matter), which TPE's own random start-up would otherwise have to buy.
In phase 2 each request is split four ways:
- `descent_share` (default 0.4) to `descent` (fleetlab/strategies/descent.py): designed ±delta waves over every
  continuous knob at once and a path of steepest descent down their measured slopes. It is served first, up to its
  share of all slots given so far: while its wave is out it waits, its credit grows, and its next wave goes out in
  one burst. Its waves are also the best-designed local data the response model gets;
- `model_share` (default 0.3) to the response-surface model (`ResponseModel` below: a locally weighted quadratic
  fitted to every run, whose minimiser near the incumbent bundles many gains below the noise floor into one move the
  keep rule can validate);
- `bo_share` (default 0.2) to Optuna TPE (`optuna`, told every result since the start: global exploration, e.g.
  across ridges of interacting architecture knobs);
- the rest (0.1) to the factorial, which goes on re-centring on the incumbent with ever finer steps.
Measured on the `autoresearch` surface (13xH100+3xH200, 20 seeds, 8 h): with `descent` the median time to true
val_bpb 0.975 fell from 5.9 to 2.1 h (seeds 0-9) and 6.9 to 5.4 h (seeds 10-19); without it the shares were 0.35
TPE, 0.45 model, 0.2 factorial.
Shares are kept by counting the slots given to each side, so a small request still honours them over time. Every
side is told every finished experiment in both phases, so the switch loses nothing. The phase is recomputed from
what is known, so a resumed session resumes in phase 2 at once when the project already has the data.
"""

from __future__ import annotations

import math
import random
from typing import Any

from fleetlab.experiment import Experiment, Proposal
from fleetlab.strategies._base import Context, Strategy
from fleetlab.strategies._results import from_unit, measured, score, unit
from fleetlab.strategies.factorial import FactorialStrategy
from fleetlab.strategies.simple import describe_change, parent_knobs

__all__ = ["AutoStrategy", "ResponseModel"]


class AutoStrategy(Strategy):
    name = "auto"
    # keep a few explorations queued beyond the free workers: on a mixed fleet the keep rule's validation runs wait
    # in the queue for the validate tier, and without slack they count as work the free screen workers cannot take
    # (13xH100+3xH200, 8 h: utilization 0.94-0.95 without it)
    lookahead_hint = 3

    def __init__(self, seed: int = 0, bo_share: float = 0.2, model_share: float = 0.3, descent_share: float = 0.4,
                 sampler: str = "tpe", descent_delta: float = 0.2, descent_z: float = 1.0):
        from fleetlab.strategies.descent import DescentStrategy
        from fleetlab.strategies.optuna import OptunaGPStrategy, OptunaStrategy

        self.factorial = FactorialStrategy(seed=seed)
        self.descent = DescentStrategy(seed=seed, delta=descent_delta, z=descent_z)
        self.bo = (OptunaGPStrategy if sampler == "gp" else OptunaStrategy)(seed=seed)
        self.model = ResponseModel()
        self.rng = random.Random(seed + 7919)
        self.bo_share = bo_share
        self.model_share = model_share
        self.descent_share = descent_share
        self.phase = 1
        self._given = {"bo": 0, "model": 0, "descent": 0, "fx": 0}
        self._switched_at: int | None = None

    def observe(self, experiment: Experiment, context: Context) -> None:
        self.factorial.observe(experiment, context)
        self.bo.observe(experiment, context)
        self.model.add(experiment, context.goal, context.space)
        self.descent.observe(experiment, context)

    @property
    def finished(self) -> bool:
        return self.factorial.finished  # every config of a finite space ran (each side is told every result)

    def rejected(self, proposal: Proposal, reason: str) -> None:
        self.factorial.rejected(proposal, reason)
        self.bo.rejected(proposal, reason)
        self.descent.rejected(proposal, reason)

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
        # the descent design first, up to its share of every slot given so far: while its wave is out it waits and
        # its credit grows, so its next wave is handed out in one burst and completes in one round of the fleet
        out: list[Proposal] = []
        if self.descent_share > 0:
            credit = math.ceil(self.descent_share * (sum(self._given.values()) + n) - self._given["descent"])
            out = self.descent.propose(context, min(n, max(1, credit)))
            self._given["descent"] += len(out)
            n -= len(out)
        rest = max(1.0 - self.descent_share, 1e-9)
        shares = {"bo": self.bo_share / rest, "model": self.model_share / rest,
                  "fx": max(0.0, 1.0 - (self.bo_share + self.model_share) / rest)}
        take = {"bo": 0, "model": 0, "fx": 0}
        for _ in range(n):  # each slot to whichever side is furthest below its share
            total = self._given["bo"] + self._given["model"] + self._given["fx"] + 1
            side = max(shares, key=lambda s: shares[s] * total - self._given[s])
            self._given[side] += 1
            take[side] += 1
        model = self._model_proposals(context, take["model"]) if take["model"] else []
        take["bo"] += take["model"] - len(model)  # the model has nothing (yet): TPE takes its slots
        out += model
        out += self.bo.propose(context, take["bo"]) + self.factorial.propose(context, take["fx"])
        return [self._tag(p) for p in out]

    def _model_proposals(self, context: Context, n: int) -> list[Proposal]:
        space = context.space
        if space is None or not space.knobs:
            return []
        base = parent_knobs(context)
        centre = {name: base.get(name, k.value) for name, k in space.knobs.items()}
        fx = self.factorial

        def known(config: dict[str, Any]) -> bool:
            return fx._known(config, space)

        out = []
        for config in self.model.propose(space, centre, self.rng, n, known):
            change = {k: v for k, v in config.items() if base.get(k) != v}
            if change:
                out.append(Proposal(description=f"model: {describe_change(base, change)}", knobs=change,
                                    strategy="model", meta={"fits": self.model.fits}))
        return out

    def _tag(self, p: Proposal) -> Proposal:
        from dataclasses import replace

        return replace(p, meta={**p.meta, "auto_phase": self.phase, "via": p.strategy}, strategy=self.name)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "phase": self.phase, "switched_after": self._switched_at,
                "bo": self.bo.describe(), "factorial": self.factorial.describe(), "model_fits": self.model.fits,
                "descent": self.descent.describe(), "given": dict(self._given)}


# ---------------------------------------------------------------------------------------------------------------------
# The response-surface model: a locally weighted quadratic fitted to every run, and its minimiser near the incumbent


class ResponseModel:
    """A locally weighted, ridge-regularised quadratic over the knob space, refitted from every finished run.

    Features (centred on the incumbent): for each numeric range knob its unit-scale offset x and x² (log scale for
    log ranges, so rates move multiplicatively); for each categorical knob one indicator per level other than the
    incumbent's; one indicator per hardware class (a nuisance term: runs on faster hardware are not credited to the
    knobs). Each run weighs by its locality to the incumbent (unit distance over the ranges, a factor per categorical
    that differs), so the fit is a trust region around the incumbent fed by hundreds of noisy runs at once: it
    averages the noise out that no single comparison can, and its minimiser bundles many small gains, each below the
    noise floor, into one move large enough to be validated.

    Generic: it only reads the Space (ranges, log flags, choices) and the runs' metrics; nothing about any surface."""

    def __init__(self, radius: float = 0.2, bandwidth: float = 0.35, cat_weight: float = 0.35, ridge: float = 1.0,
                 max_runs: int = 3000):
        self.radius, self.bandwidth, self.cat_weight, self.ridge = radius, bandwidth, cat_weight, ridge
        self.max_runs = max_runs
        self.space = None
        self.nums: list[str] = []
        self.cats: list[str] = []
        self.U: list[list[float]] = []          # per run: unit positions of the numeric knobs (nan: not expressible)
        self.C: list[tuple] = []                # per run: categorical values
        self.H: list[str] = []                  # per run: hardware class
        self.Y: list[float] = []                # per run: score (lower is better)
        self.failed: dict[tuple, list[int]] = {}   # categorical combo -> [failures, runs]
        self.fits = 0
        self.transplanted: set[tuple[tuple, tuple]] = set()

    def _bind(self, space) -> bool:
        if space is None or not space.knobs:
            return False
        if self.space is None:
            self.space = space
            self.nums = [k for k, kn in space.knobs.items() if kn.choices is None and kn.low is not None
                         and kn.high is not None]
            self.cats = [k for k, kn in space.knobs.items() if kn.choices is not None]
        return True

    def _combo(self, knobs: dict[str, Any]) -> tuple:
        return tuple(knobs.get(k, self.space.knobs[k].value) for k in self.cats)

    def add(self, exp: Experiment, goal: str, space) -> None:
        if not self._bind(space) or not exp.state.is_final:
            return
        combo = self._combo(exp.knobs)
        f = self.failed.setdefault(combo, [0, 0])
        f[1] += 1
        if exp.state.is_failure:
            f[0] += 1
        if measured(exp):
            u = [unit(self.space, k, exp.knobs.get(k, self.space.knobs[k].value)) for k in self.nums]
            self.U.append([math.nan if v is None else v for v in u])
            self.C.append(combo)
            self.H.append(exp.hardware or "")
            self.Y.append(score(float(exp.metric), goal))

    def crashes(self, config: dict[str, Any]) -> bool:
        f = self.failed.get(self._combo(config))
        return f is not None and f[0] * 2 > f[1]

    def propose(self, space, centre: dict[str, Any], rng, n: int, known) -> list[dict[str, Any]]:
        """Up to n full configs: the model's minimiser within the trust region and moves along the way to it."""
        import numpy as np

        if n <= 0 or len(self.Y) < 8 or not self._bind(space):
            return []
        nums, cats = self.nums, self.cats
        lo_run = max(0, len(self.Y) - self.max_runs)
        runs = len(self.Y) - lo_run
        # explicit shapes: a space with no numeric (or no categorical) knob has rows of length 0, which reshape(-1, 0)
        # cannot size
        U = np.array(self.U[lo_run:], dtype=float).reshape(runs, len(nums))
        C = self.C[lo_run:]
        H = self.H[lo_run:]
        y = np.array(self.Y[lo_run:])
        uc = np.array([unit(space, k, centre.get(k)) if unit(space, k, centre.get(k)) is not None else 0.5
                       for k in nums])
        Xn = np.nan_to_num(U - uc, nan=0.0)
        own = self._combo(centre)
        hws = sorted(set(H))
        levels = {k: [c for c in space.knobs[k].choices if c != centre.get(k)] for k in cats}
        Carr = np.empty((runs, len(cats)), dtype=object)
        for i, combo in enumerate(C):
            Carr[i, :] = combo
        parts = [np.ones((len(y), 1)), Xn, Xn * Xn]
        mism = np.zeros(len(y))
        for j, k in enumerate(cats):
            col = Carr[:, j]
            for c in levels[k]:
                parts.append((col == c).astype(float)[:, None])
            mism += (col != own[j]).astype(float)
        Harr = np.array(H, dtype=object)
        for h in hws[1:]:
            parts.append((Harr == h).astype(float)[:, None])
        X = np.hstack(parts)
        cols = X.shape[1]
        w = np.exp(-(Xn * Xn).sum(axis=1) / (2 * self.bandwidth ** 2)) * self.cat_weight ** mism
        if w.sum() < 4:
            return []
        sw = np.sqrt(w)
        A = X * sw[:, None]
        reg = self.ridge * np.eye(cols) * (w.sum() / len(w)) * 1e-3
        reg[0, 0] = 0.0
        try:
            beta = np.linalg.solve(A.T @ A + reg, A.T @ (y * sw))
        except np.linalg.LinAlgError:
            return []
        self.fits += 1
        m = len(nums)
        b_lin, b_sq = beta[1:1 + m], beta[1 + m:1 + 2 * m]
        # the minimiser: per numeric knob the clamped vertex of its parabola, per categorical its best level
        move: dict[str, float] = {}
        for j, k in enumerate(nums):
            b, c = b_lin[j], b_sq[j]
            lo, hi = max(-self.radius, -uc[j]), min(self.radius, 1 - uc[j])
            if c > 1e-9:
                x = min(max(-b / (2 * c), lo), hi)
            else:
                x = (hi if b < 0 else lo) / 2
            if b * x + c * x * x < 0:
                move[k] = float(x)
        off = 1 + 2 * m
        cat_best: dict[str, tuple[float, Any]] = {}
        for k in cats:
            coef = beta[off: off + len(levels[k])]
            off += len(levels[k])
            if len(coef) and float(coef.min()) < 0:
                cat_best[k] = (float(coef.min()), levels[k][int(coef.argmin())])
        hw_coef = dict(zip(hws[1:], beta[off:]))
        # categorical combinations seen elsewhere (TPE's global samples, old incumbents), each run adjusted for its
        # numeric knobs and hardware by the local fit: a combination that beats the incumbent's once adjusted is
        # transplanted onto the fitted numeric optimum (moves across interacting categoricals no single-knob step
        # or additive indicator can find). Single-level changes of the incumbent's combination never measured are
        # probed the same way, once each.
        adj = y - Xn @ b_lin - (Xn * Xn) @ b_sq - np.array([hw_coef.get(h, 0.0) for h in H])
        sums: dict[tuple, list[float]] = {}
        for combo, a in zip(C, adj):
            t = sums.setdefault(combo, [0.0, 0])
            t[0] += float(a)
            t[1] += 1
        ref = sums[own][0] / sums[own][1] if own in sums else float(beta[0])
        better = sorted((t[0] / t[1], combo) for combo, t in sums.items()
                        if combo != own and t[0] / t[1] < ref and (own, combo) not in self.transplanted)
        targets = [combo for _, combo in better[:2]]
        # pairs: two categorical knobs moved together (interacting architecture knobs, e.g. a wider and shallower
        # model at equal cost), ranked by the adjusted mean of every run that has that pair of values
        pair_gain: list[tuple[float, tuple]] = []
        codes = [np.unique(Carr[:, j].astype(str), return_inverse=True) for j in range(len(cats))]
        for j1 in range(len(cats)):
            for j2 in range(j1 + 1, len(cats)):
                names1, inv1 = codes[j1]
                names2, inv2 = codes[j2]
                pair = inv1 * len(names2) + inv2
                cnt = np.bincount(pair, minlength=len(names1) * len(names2))
                tot = np.bincount(pair, weights=adj, minlength=len(names1) * len(names2))
                own_i = np.flatnonzero(names1 == str(own[j1]))
                own_k = np.flatnonzero(names2 == str(own[j2]))
                if not len(own_i) or not len(own_k):
                    continue
                own_code = own_i[0] * len(names2) + own_k[0]
                if cnt[own_code] == 0:
                    continue
                own_mean = tot[own_code] / cnt[own_code]
                for code in np.flatnonzero(cnt >= 2):
                    a, b = divmod(int(code), len(names2))
                    if names1[a] == str(own[j1]) or names2[b] == str(own[j2]):
                        continue
                    gain = own_mean - tot[code] / cnt[code]
                    if gain > 0:
                        v1 = next(c for c in space.knobs[cats[j1]].choices if str(c) == names1[a])
                        v2 = next(c for c in space.knobs[cats[j2]].choices if str(c) == names2[b])
                        combo = list(own)
                        combo[j1], combo[j2] = v1, v2
                        pair_gain.append((-float(gain), tuple(combo)))
        pair_gain.sort(key=lambda t: t[0])
        for _, combo in pair_gain:
            if len(targets) >= 4:
                break
            if combo not in targets and (own, combo) not in self.transplanted and not self.crashes(
                    dict(zip(cats, combo))):
                targets.append(combo)
        for j, k in enumerate(cats):
            for c in space.knobs[k].choices:
                combo = own[:j] + (c,) + own[j + 1:]
                if c != own[j] and combo not in sums and (own, combo) not in self.transplanted \
                        and combo not in self.failed and len(targets) < max(2, n // 2):
                    targets.append(combo)
        out: list[dict[str, Any]] = []

        def build(scale: float, cat_keys, jitter: float, cat_values: dict[str, Any] | None = None) -> None:
            config = dict(centre)
            config.update(cat_values or {})
            for k, x in move.items():
                config[k] = from_unit(space, k, uc[nums.index(k)] + scale * x + rng.gauss(0.0, jitter))
            for k in cat_keys:
                config[k] = cat_best[k][1]
            if config == centre or space.violation(config) is not None or self.crashes(config):
                return
            if known(config) or config in out:
                return
            out.append(config)

        ranked_cats = sorted(cat_best, key=lambda k: cat_best[k][0])
        for combo in targets:
            self.transplanted.add((own, combo))
            before = len(out)
            build(1.0, [], 0.0, dict(zip(cats, combo)))
            if len(out) == before:
                build(1.0, [], 0.02, dict(zip(cats, combo)))
        build(1.0, [], 0.0)
        if ranked_cats:
            build(1.0, ranked_cats[:1], 0.0)
        build(0.5, [], 0.0)
        build(1.5, [], 0.0)
        tries = 0
        while len(out) < n and tries < 6 * n:
            tries += 1
            r = rng.random()
            cat_keys = [k for k in ranked_cats[:2] if rng.random() < 0.3]
            build(rng.uniform(0.5, 1.25), cat_keys, 0.03 if r < 0.7 else 0.08)
        return out[:n]  # transplants and probes first
