"""`optuna` and `optuna-gp`: Bayesian optimization over the knob space with Optuna's samplers, through ask/tell.

- `optuna`: TPE, multivariate, with the constant liar (asked trials still running count as bad results, so parallel
  asks spread out instead of piling onto one point).
- `optuna-gp`: Optuna's GPSampler (a Gaussian-process surrogate with log-EI); it has no constant liar, so duplicate
  asks within one request are replaced by small moves around the incumbent.

Everything the project knows is in the study. `observe` is called for every finished experiment of the project,
including other strategies', hand submissions and earlier sessions' (the scheduler replays them all at start-up):
an experiment this study asked for is told to its trial; any other becomes a trial with `optuna.trial.create_trial`.
Variants are folded by content hash: replicates and validation runs of a variant count once, with their mean.
Failures of asked trials are told as FAIL, pruned runs as PRUNED; an asked trial that never became an experiment
(rejected as a duplicate, or dropped at a session's experiment limit) is told FAIL at the next request, so no trial
stays RUNNING for ever. Configs that break the space's constraints are never proposed: they are told FAIL and
asked again (up to 10 times, then a random valid move around the incumbent).

Speed: the study is rebuilt from the folded results, capped at `history` trials (the `keep_best` best and the most
recent rest), whenever it has grown past 1.5x the cap or replicates changed the means of ten told variants. Measured
on the simulated autoresearch surface (18 knobs): see `describe()["ask_ms"]` and the module's tests; with history 300
one TPE ask takes about 15-30 ms whatever the length of the project's history.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from typing import Any

from fleetlab.experiment import Experiment, Proposal, State
from fleetlab.strategies._base import Context, Strategy
from fleetlab.strategies._results import Coverage, Results, config_key, score
from fleetlab.strategies.simple import describe_change, parent_knobs

__all__ = ["OptunaStrategy", "OptunaGPStrategy", "distributions"]


def distributions(space) -> dict[str, Any]:
    """Optuna distributions of a knob Space: categorical for choices, int or float ranges (log where the knob is).
    A `log1m` knob (a beta) is a linear range here: Optuna has no log(1 - x) distribution, and trials told with values
    on a warped axis would not be the values the store holds."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for name, k in space.knobs.items():
        if k.choices is not None:
            out[name] = CategoricalDistribution(list(k.choices))
        elif k.kind == "int":
            lo, hi = int(math.ceil(k.low)), int(math.floor(k.high))
            out[name] = IntDistribution(lo, max(lo, hi), log=bool(k.log and lo > 0))
        elif k.low is not None and k.high is not None:
            out[name] = FloatDistribution(float(k.low), float(k.high), log=bool(k.log and k.low > 0))
    return out


class OptunaStrategy(Strategy):
    """Optuna TPE (multivariate, constant liar) told every finished experiment of the project."""

    name = "optuna"
    sampler_name = "tpe"

    def __init__(self, seed: int = 0, history: int = 300, keep_best: int = 50, n_startup_trials: int = 10):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.seed = seed
        self.rng = random.Random(seed)
        self.history, self.keep_best, self.n_startup = history, keep_best, n_startup_trials
        self.token = uuid.uuid4().hex[:8]
        self.results = Results()
        self.coverage = Coverage()
        self.goal = "minimize"
        self.space = None
        self.dists: dict[str, Any] = {}
        self.study = None
        self.told: dict[str, int] = {}          # variant key -> trial number in the current study
        self.known: set[str] = set()            # config keys of every finished variant
        self.pending: dict[int, dict] = {}      # ask id -> {"trial": number, "params": ..., "seen": bool}
        self._asks = 0
        self._dirty = 0
        self._scanned = 0
        self.rebuilds = 0
        self.ask_s = 0.0
        self.asked = 0
        self.fallbacks = 0

    # -- the study -------------------------------------------------------------------------------------------------

    def _sampler(self):
        import optuna

        return optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=self.seed + self.rebuilds,
                                          n_startup_trials=self.n_startup)

    def _setup(self, context: Context) -> bool:
        if self.space is None:
            if context.space is None or not context.space.knobs:
                return False
            self.space = context.space
            self.dists = distributions(self.space)
            self.goal = context.goal
        if self.study is None:
            self._rebuild()
        return True

    def _rebuild(self) -> None:
        """A fresh study holding the capped history and the asked trials still pending."""
        import optuna
        from optuna.trial import TrialState, create_trial

        self.rebuilds += 1
        self.study = optuna.create_study(direction=self.goal, sampler=self._sampler())
        self.told = {}
        measured = self.results.measured()
        keep = measured
        if len(measured) > self.history:
            best = sorted(measured, key=lambda v: score(v.mean, self.goal))[: self.keep_best]
            ids = {id(v) for v in best}
            recent = [v for v in measured if id(v) not in ids][-(self.history - len(best)):]
            keep = best + recent
        trials = []
        for v in keep:
            params = self._params(v.knobs)
            if params is not None:
                trials.append((v.key, create_trial(params=params, distributions=self.dists, value=v.mean)))
        self.study.add_trials([t for _, t in trials])
        for i, (key, _) in enumerate(trials):
            self.told[key] = i
        for ask_id, p in self.pending.items():
            self.study.add_trial(create_trial(state=TrialState.RUNNING, params=p["params"],
                                              distributions={k: self.dists[k] for k in p["params"]}))
            p["trial"] = self._n_trials() - 1
        self._dirty = 0

    def _n_trials(self) -> int:
        """The study's trial count without `study.trials`, which deep-copies every trial (it dominated the run time
        of whole simulated sessions: ~75 % of a 2-hour 16-worker bench run)."""
        return len(self.study.get_trials(deepcopy=False))

    def _params(self, knobs: dict[str, Any]) -> dict[str, Any] | None:
        """A variant's knob values as trial params (clipped into the space; None if one cannot be expressed)."""
        out = {}
        for name, dist in self.dists.items():
            value = knobs.get(name, self.space.knobs[name].value)
            try:
                value = self.space.clip(name, value)
            except Exception:  # noqa: BLE001 - a value the space cannot hold: leave this variant out
                return None
            if isinstance(value, bool) or not dist._contains(dist.to_internal_repr(value)):
                if not (hasattr(dist, "choices") and value in dist.choices):
                    return None
            out[name] = value
        return out

    @property
    def finished(self) -> bool:
        return self.coverage.exhausted

    # -- ask/tell ----------------------------------------------------------------------------------------------------

    def observe(self, experiment: Experiment, context: Context) -> None:
        self.coverage.add(experiment, context.space)
        if not self._setup(context):
            return
        before = self.results.variants.get(experiment.content_hash)
        had = len(before.metrics) if before is not None else 0
        v = self.results.add(experiment)
        if v is None:
            return
        self.known.add(config_key(v.knobs, self.dists))
        ask_id = experiment.meta.get("ask") if experiment.meta.get("ot") == self.token else None
        mine = self.pending.pop(ask_id, None) if ask_id is not None else None
        if mine is not None:
            self._tell_mine(mine["trial"], experiment, v)
            return
        if not v.metrics or len(v.metrics) == had:
            return
        if v.key in self.told:
            self._dirty += 1  # a replicate: the mean changed; folded in at the next rebuild
            return
        params = self._params(v.knobs)
        if params is None:
            return
        from optuna.trial import create_trial

        self.study.add_trial(create_trial(params=params, distributions=self.dists, value=v.mean))
        self.told[v.key] = self._n_trials() - 1

    def _tell_mine(self, number: int, exp: Experiment, v) -> None:
        from optuna.trial import TrialState

        if exp.state is State.DONE and v.metrics:
            if v.key in self.told:  # the same variant was already told under another trial
                self.study.tell(number, state=TrialState.FAIL)
                self._dirty += 1
                return
            self.study.tell(number, v.mean)
            self.told[v.key] = number
        elif exp.state is State.PRUNED:
            self.study.tell(number, state=TrialState.PRUNED)
        else:
            self.study.tell(number, state=TrialState.FAIL)

    def rejected(self, proposal: Proposal, reason: str) -> None:
        from optuna.trial import TrialState

        p = self.pending.pop(proposal.meta.get("ask"), None) if proposal.meta.get("ot") == self.token else None
        if p is not None and self.study is not None:
            self.study.tell(p["trial"], state=TrialState.FAIL)

    def _sweep(self, context: Context) -> None:
        """Asked trials that never became experiments (dropped at a limit) are told FAIL."""
        from optuna.trial import TrialState

        exps = context.experiments
        for e in exps[self._scanned:]:
            if e.meta.get("ot") == self.token and e.meta.get("ask") in self.pending:
                self.pending[e.meta["ask"]]["seen"] = True
        self._scanned = len(exps)
        for ask_id in [a for a, p in self.pending.items() if not p["seen"]]:
            self.study.tell(self.pending.pop(ask_id)["trial"], state=TrialState.FAIL)

    def propose(self, context: Context, n: int) -> list[Proposal]:
        self.coverage.bind(context.space)
        if n <= 0 or not self._setup(context):
            return []
        self.goal = context.goal
        self._sweep(context)
        if self._n_trials() > 1.5 * self.history + len(self.pending) or self._dirty >= max(10, len(self.pending)):
            self._rebuild()
        base = parent_knobs(context)
        out = []
        taken = {config_key(p["params"], self.dists) for p in self.pending.values()}
        for _ in range(n):
            prop = self._ask(base, taken)
            if prop is not None:
                out.append(prop)
        return out

    def _ask(self, base: dict[str, Any], taken: set[str]) -> Proposal | None:
        from optuna.trial import TrialState

        known = self.known
        t0 = time.perf_counter()
        config = None
        number = None
        for _ in range(10):
            trial = self.study.ask(self.dists)
            params = {k: self._round(k, v) for k, v in trial.params.items()}
            full = {**{n: k.value for n, k in self.space.knobs.items()}, **base, **params}
            key = config_key(params, self.dists)
            if self.space.violation(full) is None and key not in known and key not in taken:
                config, number = params, trial.number
                break
            self.study.tell(trial.number, state=TrialState.FAIL)
        self.ask_s += time.perf_counter() - t0
        self.asked += 1
        if config is None:  # nothing new from the sampler: a small random move around the incumbent
            self.fallbacks += 1
            for _ in range(20):
                sample = self.space.sample(self.rng, around=base, scale=0.3)
                key = config_key(sample, self.dists)
                if key not in known and key not in taken:
                    break
            else:
                return None
            params = {k: sample[k] for k in self.dists}
            from optuna.trial import create_trial

            self.study.add_trial(create_trial(state=TrialState.RUNNING, params=params, distributions=self.dists))
            config, number = params, self._n_trials() - 1
        taken.add(config_key(config, self.dists))
        self._asks += 1
        self.pending[self._asks] = {"trial": number, "params": config, "seen": False}
        change = {k: v for k, v in config.items() if base.get(k) != v}
        if not change:
            return None
        return Proposal(description=f"{self.name}: {describe_change(base, change)}", knobs=change, strategy=self.name,
                        meta={"ask": self._asks, "ot": self.token, "sampler": self.sampler_name})

    def _round(self, name: str, value: Any) -> Any:
        """Floats to 4 significant digits (readable train.py diffs; equal configs compare equal)."""
        if isinstance(value, float) and not isinstance(value, bool) and self.space.knobs[name].choices is None:
            return self.space.clip(name, float(f"{value:.4g}"))
        return value

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "sampler": self.sampler_name, "variants": len(self.results),
                "trials": self._n_trials() if self.study is not None else 0, "pending": len(self.pending),
                "rebuilds": self.rebuilds, "fallbacks": self.fallbacks,
                "ask_ms": 1000 * self.ask_s / self.asked if self.asked else None}


class OptunaGPStrategy(OptunaStrategy):
    """Optuna's GPSampler; a smaller history (the GP is cubic in it)."""

    name = "optuna-gp"
    sampler_name = "gp"

    def __init__(self, seed: int = 0, history: int = 120, keep_best: int = 30, n_startup_trials: int = 10):
        super().__init__(seed=seed, history=history, keep_best=keep_best, n_startup_trials=n_startup_trials)

    def _sampler(self):
        import optuna

        return optuna.samplers.GPSampler(seed=self.seed + self.rebuilds, n_startup_trials=self.n_startup,
                                         warn_independent_sampling=False)
