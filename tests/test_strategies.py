"""Strategies without an LLM: the designs (fractional factorial balance, OFAT levels, re-centring), Optuna told every
result (also across sessions), `auto`'s switch, grid, portfolios, main effects; and real 12-experiment sessions on
the mlp template for factorial, optuna and auto."""

from __future__ import annotations

import functools
import itertools
import random
from pathlib import Path

import pytest
from conftest import fleetlab_cmd, set_budget

from fleetlab.analysis.effects import estimate
from fleetlab.experiment import Experiment, State, better, format_id
from fleetlab.knobs import infer_space
from fleetlab.store.sqlite import SQLiteStore
from fleetlab.strategies import make_strategy
from fleetlab.strategies._base import Context
from fleetlab.strategies._results import config_key, unit
from fleetlab.strategies.factorial import FactorialStrategy, fractional_factorial, full_factorial, ofat_levels

MLP_TRAIN = Path(__file__).resolve().parents[1] / "fleetlab" / "templates" / "mlp" / "train.py"


@pytest.fixture(scope="module")
def space():
    return infer_space(MLP_TRAIN.read_text())


# ---------------------------------------------------------------------------------------------------------------------
# A tiny in-process loop (the scheduler's contract: propose -> run -> observe every finished experiment; the incumbent
# moves when a result beats it), over a synthetic truth, so designs can be checked run by run.


class Loop:
    def __init__(self, space, truth, goal="minimize", workers=4):
        self.space, self.truth, self.goal = space, truth, goal
        self.baseline = {n: k.value for n, k in space.knobs.items()}
        self.exps: list[Experiment] = []
        self.incumbent: Experiment | None = None
        self.workers = [object()] * workers
        self.told: dict[int, set] = {}
        self.add(self.baseline, "baseline", "baseline", {})

    def context(self) -> Context:
        return Context(goal=self.goal, metric="loss", incumbent=self.incumbent, baseline_knobs=self.baseline,
                       space=self.space, experiments=self.exps, workers=self.workers, free_workers=len(self.workers))

    def add(self, knobs, strategy, role="explore", meta=None, finish=True) -> Experiment:
        n = len(self.exps) + 1
        exp = Experiment(format_id(n), "t", "x", State.QUEUED, strategy=strategy, role=role, knobs=dict(knobs),
                         content_hash=config_key(knobs), meta=dict(meta or {}))
        self.exps.append(exp)
        return self.finish(len(self.exps) - 1) if finish else exp

    def finish(self, i: int, strategy=None) -> Experiment:
        exp = self.exps[i]
        m = self.truth(exp.knobs)
        exp = exp.evolve(state=State.DONE if m is not None else State.CRASH, metric=m)
        self.exps[i] = exp
        if m is not None and (self.incumbent is None or better(m, self.incumbent.metric, self.goal)):
            self.incumbent = exp
        for s in (strategy or []):
            s.observe(exp, self.context())
            self.told.setdefault(id(s), set()).add(exp.id)
        return exp

    def step(self, strategy, n: int) -> list:
        told = self.told.setdefault(id(strategy), set())
        for e in self.exps:  # like the scheduler at start-up: replay what finished before this strategy existed
            if e.state.is_final and e.id not in told:
                strategy.observe(e, self.context())
        props = strategy.propose(self.context(), n)
        base = dict(self.incumbent.knobs)
        start = len(self.exps)
        for p in props:
            config = {**base, **p.knobs}
            assert self.space.violation(config) is None, (p, self.space.violation(config))
            self.add(config, p.strategy, p.role, p.meta, finish=False)
        for i in range(start, len(self.exps)):
            self.finish(i, [strategy])
        return props


def bowl(space, optimum_u=0.7):
    """A smooth bowl over the range knobs' unit coordinates, minimum at optimum_u on every axis."""
    def f(knobs):
        s = 0.0
        for name, k in space.knobs.items():
            u = unit(space, name, knobs[name])
            if u is not None:
                s += (u - optimum_u) ** 2
            elif k.choices is not None and knobs[name] != k.choices[0]:
                s += 0.01
        return 1.0 + s
    return f


# ---------------------------------------------------------------------------------------------------------------------
# Designs


@pytest.mark.parametrize("k,runs", [(3, 4), (4, 8), (6, 8), (5, 16), (8, 16), (12, 16)])
def test_fractional_factorial_is_balanced_and_orthogonal(k, runs):
    d = fractional_factorial(k, runs)
    assert len(d) == runs and len(set(d)) == runs
    cols = list(zip(*d))
    assert len(cols) == k
    for c in cols:
        assert sum(c) == 0  # balanced: as many high as low
    for a, b in itertools.combinations(cols, 2):
        assert sum(x * y for x, y in zip(a, b)) == 0  # orthogonal main effects
    if k <= runs // 2:  # resolution IV: main effects are clear of two-factor interactions
        for a in cols:
            for b, c in itertools.combinations(cols, 2):
                assert sum(x * y * z for x, y, z in zip(a, b, c)) == 0


def test_fractional_factorial_rejects_impossible_sizes():
    with pytest.raises(ValueError):
        fractional_factorial(8, 8)
    with pytest.raises(ValueError):
        fractional_factorial(3, 6)


def test_full_factorials():
    assert len(set(full_factorial(3, 2))) == 8
    d = full_factorial(2, 3)
    assert len(set(d)) == 9 and {c for row in d for c in row} == {0, 1, 2}


def test_ofat_levels_straddle_the_centre_and_satisfy_the_space(space):
    rng = random.Random(0)
    for name, k in space.knobs.items():
        levels = ofat_levels(space, name, k.value, 0.25, rng)
        if k.choices is not None and len(k.choices) < 2:  # a fixed string (ACTIVATION): nothing to screen
            assert levels == []
            continue
        assert levels, name
        for lv in levels:
            assert lv != k.value
            assert space.violation({name: lv}) is None, (name, lv)
        if k.choices is None:
            assert sorted(levels) == levels or len(levels) == 1
            assert min(levels) < k.value < max(levels) or len(levels) == 1
    # at a range's edge only the inner side is left
    lr = space.knobs["LEARNING_RATE"]
    assert all(v < lr.high for v in ofat_levels(space, "LEARNING_RATE", lr.high, 0.25, rng))
    assert len(ofat_levels(space, "LEARNING_RATE", lr.high, 0.25, rng)) == 1


def test_first_wave_is_a_one_factor_at_a_time_screen(space):
    loop = Loop(space, bowl(space), workers=8)
    fx = FactorialStrategy(seed=1, fill=False)
    props = fx.propose(loop.context(), 100)
    assert props and all(p.meta["design"] == "ofat" and p.meta["wave"] == 1 for p in props)
    assert all(len(p.knobs) == 1 for p in props)  # only the changed knob
    per = {}
    for p in props:
        (name, v), = p.knobs.items()
        per.setdefault(name, []).append(v)
    assert set(per) == {n for n, k in space.knobs.items() if k.choices is None or len(k.choices) > 1}
    for name, vals in per.items():  # ranges: a step each side; choice knobs: the whole axis in the first screen
        k = space.knobs[name]
        assert 1 <= len(vals) <= 2 if k.choices is None else sorted(map(str, vals)) == sorted(
            str(c) for c in k.choices if c != k.value)
    # later screens, and every screen on a small fleet, step to the neighbours of an ordered choice only
    for fx2, workers in ((FactorialStrategy(seed=1, fill=False, sweep=0), 8), (FactorialStrategy(seed=1, fill=False), 2)):
        small = Loop(space, bowl(space), workers=workers)
        props = fx2.propose(small.context(), 100)
        assert props and all(len(levels) <= 2 for levels in fx2.wave.levels.values())


def test_factorial_waves_rank_factors_then_recentre_on_the_incumbent(space):
    loop = Loop(space, bowl(space), workers=8)
    fx = FactorialStrategy(seed=2, fill=False)
    screen = loop.step(fx, 100)
    assert all(p.meta["design"] == "ofat" for p in screen)
    centre1 = dict(loop.exps[0].knobs)
    wave2 = loop.step(fx, 8)
    assert wave2 and wave2[0].meta["design"].startswith(("2^", "3^")) and wave2[0].meta["wave"] == 2
    assert fx.ranking and fx.ranking[0][1] > 0  # the screen found a factor that pays
    factors = wave2[0].meta["factors"]
    assert set(factors) <= {n for n, g, _ in fx.ranking if g > 0}
    # the factorial's cells vary only its factors, around the screen's centre
    for p in wave2:
        full = {**loop.incumbent.knobs, **p.knobs}
        moved = {n for n in space.knobs if full[n] != centre1[n]}
        assert moved <= set(factors) | {n for n in space.knobs if loop.incumbent.knobs[n] != centre1[n]}
    # the next wave is a screen centred on the incumbent as it is now (it moved)
    inc = dict(loop.incumbent.knobs)
    assert inc != centre1
    wave3 = loop.step(fx, 100)
    assert wave3 and all(p.meta["design"] == "ofat" and p.meta["wave"] == 3 for p in wave3)
    for p in wave3:
        assert sum(1 for n in space.knobs if {**inc, **p.knobs}[n] != inc[n]) == 1
    # and the waves improve on the baseline
    assert loop.incumbent.metric < loop.exps[0].metric


def test_factorial_fills_free_workers_while_a_wave_finishes(space):
    loop = Loop(space, bowl(space), workers=2)
    fx = FactorialStrategy(seed=3)
    first = fx.propose(loop.context(), 40)  # the whole screen, not run yet
    for p in first:
        loop.add({**loop.baseline, **p.knobs}, p.strategy, p.role, p.meta, finish=False)
    more = fx.propose(loop.context(), 2)
    assert [p.meta["design"] for p in more] == ["fill", "fill"]


def test_factorial_ignores_a_failed_run_of_a_variant_it_has_measured(space):
    """A variant measured once and then run again without a metric (a replicate that crashed, a validation run that
    hung) must leave its mean alone; the factorial used to record None and then fail summing it."""
    loop = Loop(space, bowl(space), workers=8)
    fx = FactorialStrategy(seed=4, fill=False)
    screen = loop.step(fx, 100)
    first = next(e for e in loop.exps if e.meta.get("wave") == 1)
    crashed = first.evolve(id=format_id(len(loop.exps) + 1), state=State.CRASH, metric=None, role="validate")
    loop.exps.append(crashed)
    fx.observe(crashed, loop.context())
    assert fx._measured(first.knobs, space) == pytest.approx(first.metric)
    assert screen and loop.step(fx, 8)  # the next wave learns from the screen without tripping over the crash


# ---------------------------------------------------------------------------------------------------------------------
# Optuna, auto, grid, portfolio


def test_optuna_is_told_every_result_and_beats_its_start(space):
    loop = Loop(space, bowl(space), workers=4)
    # results it did not ask for: another strategy's, and a replicate of the baseline (folded, not a second trial)
    loop.add({**loop.baseline, "HIDDEN": 80}, "random")
    loop.add(loop.baseline, "baseline", role="replicate")
    opt = make_strategy("optuna", seed=0)
    for e in loop.exps:
        opt.observe(e, loop.context())
    assert len(opt.study.trials) == 2
    for _ in range(15):
        props = loop.step(opt, 4)
        assert all(p.strategy == "optuna" and p.meta["sampler"] == "tpe" for p in props)
    trials = opt.study.trials
    assert sum(t.state.name == "COMPLETE" for t in trials) == len(opt.results.measured())
    assert not any(t.state.name == "RUNNING" for t in trials)
    assert loop.incumbent.metric < loop.exps[0].metric - 0.05


def test_optuna_tells_failures_and_never_leaves_a_trial_running(space):
    crash_hidden = {k: None for k in ()}
    truth = bowl(space)
    loop = Loop(space, lambda kn: None if kn["HIDDEN"] > 90 else truth(kn), workers=4)
    opt = make_strategy("optuna", seed=1)
    for _ in range(8):
        loop.step(opt, 4)
    states = {t.state.name for t in opt.study.trials}
    assert "RUNNING" not in states
    # a proposal the scheduler rejects, and one it drops silently, end as FAIL too
    p = opt.propose(loop.context(), 2)
    opt.rejected(p[0], "duplicate")
    opt.propose(loop.context(), 1)  # p[1] never became an experiment: swept
    assert not opt.pending or all(v["seen"] is False for v in opt.pending.values())
    assert sum(t.state.name == "RUNNING" for t in opt.study.trials) == len(opt.pending)
    del crash_hidden


def test_optuna_history_is_capped_and_asks_stay_fast(space):
    loop = Loop(space, bowl(space), workers=8)
    opt = make_strategy("optuna", seed=2, history=60, keep_best=10)
    rng = random.Random(0)
    for _ in range(200):  # a long history from someone else
        loop.add(space.sample(rng), "random")
    for e in loop.exps:
        opt.observe(e, loop.context())
    loop.step(opt, 8)
    assert opt.rebuilds >= 2 and len(opt.study.trials) <= 1.5 * 60 + 8 + 10
    assert opt.describe()["ask_ms"] < 500


def test_optuna_gp_sampler(space):
    loop = Loop(space, bowl(space), workers=4)
    gp = make_strategy("optuna-gp", seed=0, n_startup_trials=4)
    for n in (2, 2, 1):  # four random start-up trials, then one GP ask (seconds each on a CPU)
        props = loop.step(gp, n)
        assert all(p.meta["sampler"] == "gp" for p in props)
    assert loop.incumbent.metric < loop.exps[0].metric


def test_auto_screens_first_then_switches_to_bayesian_optimization(space):
    loop = Loop(space, bowl(space), workers=8)
    auto = make_strategy("auto", seed=0)
    first = loop.step(auto, 100)
    assert auto.phase == 1 and all(p.meta["via"] == "factorial" and p.strategy == "auto" for p in first)
    for _ in range(6):
        loop.step(auto, 8)
    assert auto.phase == 2
    via = [e.meta.get("via") for e in loop.exps[len(first) + 1:]]
    assert "optuna" in via and "descent" in via
    # descent is served first, up to its share (0.4) of the phase-2 slots; here the incumbent moves at every step (a
    # noise-free bowl), so each request starts a new path and only its credit goes out
    phase2 = [e for e in loop.exps if e.meta.get("auto_phase") == 2]
    assert 0.3 <= sum(e.meta.get("via") == "descent" for e in phase2) / len(phase2) <= 0.5
    # both halves were told everything
    assert len(auto.bo.results.seen) == len(auto.factorial.results.seen) == len(loop.exps)


def test_auto_response_model_steps_towards_the_optimum_through_noise(space):
    """The model's minimiser, fitted to noisy runs scattered around the incumbent, lies closer to the optimum on the
    range knobs than the incumbent does, though no single run's difference is above the noise."""
    import random as _random

    from fleetlab.strategies.auto import ResponseModel

    truth, rng = bowl(space, optimum_u=0.7), _random.Random(3)
    loop = Loop(space, lambda k: truth(k) + rng.gauss(0.0, 0.02))
    model = ResponseModel()
    centre = dict(loop.baseline)
    for _ in range(120):
        loop.add(space.sample(rng, around=centre, scale=0.4), "random")
    for e in loop.exps:
        model.add(e, "minimize", space)
    props = model.propose(space, centre, rng, 4, lambda c: False)
    assert props and model.fits == 1
    ranges = [n for n, k in space.knobs.items() if k.choices is None and unit(space, n, centre[n]) is not None]

    def dist(c):
        return sum((unit(space, n, c[n]) - 0.7) ** 2 for n in ranges)

    assert dist(props[0]) < dist(centre)
    assert all(space.violation(c) is None for c in props)


def test_grid_covers_every_cell_once_then_finishes():
    space = infer_space("A = 2**4\nB = 0.5  # ratio\nMODE = 'x'\n", {"MODE": {"choices": ["x", "y"]}})
    loop = Loop(space, lambda k: 1.0)
    grid = make_strategy("grid")
    seen = []
    while not grid.finished:
        props = loop.step(grid, 5)
        seen += [config_key({**loop.baseline, **p.knobs}, space.knobs) for p in props]
    assert len(seen) == len(set(seen)) == 5 * 3 * 2 - 1  # every cell but the baseline itself
    assert grid.propose(loop.context(), 3) == []


def test_portfolio_auto_random_splits_requests_and_tells_both(space):
    loop = Loop(space, bowl(space), workers=4)
    pf = make_strategy("auto,random", seed=0)
    names = []
    for _ in range(6):
        names += [p.strategy for p in loop.step(pf, 4)]
    assert names.count("auto") == names.count("random") == 12
    auto = pf.members[0][0]
    assert len(auto.factorial.results.seen) == len(loop.exps)


# ---------------------------------------------------------------------------------------------------------------------
# Main effects and interactions


def _exp(i, knobs, metric, wave=None):
    return Experiment(format_id(i), "t", "x", State.DONE, knobs=knobs, metric=metric, content_hash=str(i),
                      meta={"wave": wave} if wave else {})


def test_effects_recover_main_effects_and_an_interaction():
    # y = 1 + 0.3 a - 0.1 b + 0.05 a b (coded), a 2^3 full factorial with c inert, plus small noise; replicated twice
    rng = random.Random(0)
    exps, i = [], 0
    for a, b, c in itertools.product((-1, 1), repeat=3):
        for _ in range(2):
            i += 1
            y = 1 + 0.3 * a - 0.1 * b + 0.05 * a * b + rng.gauss(0, 0.005)
            exps.append(_exp(i, {"A": 0.01 if a < 0 else 0.04, "B": 10 + 5 * b, "C": ("x" if c < 0 else "y")}, y))
    eff = estimate(exps, goal="minimize")
    main = {t.name: t for t in eff.main}
    assert main["A"].effect == pytest.approx(0.6, abs=0.02) and main["A"].gain < 0
    assert main["B"].effect == pytest.approx(-0.2, abs=0.02) and main["B"].gain > 0
    assert abs(main["C=y"].effect) < 0.02 and main["C=y"].p_value > 0.01
    inter = {t.name: t for t in eff.interactions}
    assert inter["A:B"].effect == pytest.approx(0.1, abs=0.02)
    assert eff.importance["A"] > eff.importance["B"] > eff.importance["C"]
    assert eff.r2 > 0.99


def test_effects_on_thin_data_and_by_wave():
    assert estimate([_exp(1, {"A": 1.0}, 1.0)]).note
    exps = [_exp(i, {"A": float(i)}, float(i), wave=1 + i % 2) for i in range(1, 9)]
    eff = estimate(exps, wave=1)
    assert eff.n == 4 and eff.main[0].name == "A"


# ---------------------------------------------------------------------------------------------------------------------
# Real sessions on the mlp template (subprocesses, local:2)


FINISHED = (State.DONE, State.PRUNED)  # early stopping is on by default: a run that could not win ends pruned


def _session(mlp_project: Path, strategy: str, n: int = 12):
    set_budget(mlp_project, 2, timeout=60)
    r = fleetlab_cmd("run", "-C", str(mlp_project), "--fleet", "local:2", "--strategy", strategy,
                     "--max-experiments", str(n), "--keep-rule", "simple", "-q", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return SQLiteStore(mlp_project / ".fleetlab" / "fleetlab.db").experiments()


def test_factorial_session_on_mlp(mlp_project: Path):
    exps = _session(mlp_project, "factorial")
    assert len(exps) == 12 and all(e.state in FINISHED for e in exps), [(e.id, e.state) for e in exps]
    base = exps[0].knobs
    explore = [e for e in exps if e.role == "explore"]
    assert len(explore) == 11 and all(e.strategy == "factorial" for e in explore)
    assert all(e.meta["design"] == "ofat" and e.meta["wave"] == 1 for e in explore)
    assert all(sum(e.knobs[k] != base[k] for k in base) == 1 for e in explore)


def test_optuna_session_on_mlp_continues_from_earlier_sessions(mlp_project: Path, monkeypatch):
    first = _session(mlp_project, "optuna", 8)
    assert [e.strategy for e in first[1:]] == ["optuna"] * 7 and all(e.state in FINISHED for e in first)
    # the second session (in process, so the strategy can be inspected) is told the first session's results
    from fleetlab import cli
    from fleetlab.strategies import optuna as optuna_mod

    made = []
    init = optuna_mod.OptunaStrategy.__init__

    @functools.wraps(init)  # keeps the signature: make_strategy passes only the options it takes
    def record(self, *a, **kw):
        init(self, *a, **kw)
        made.append(self)

    monkeypatch.setattr(optuna_mod.OptunaStrategy, "__init__", record)
    assert cli.main(["run", "-C", str(mlp_project), "--fleet", "local:2", "--strategy", "optuna",
                     "--max-experiments", "4", "--keep-rule", "simple", "--tag", "second", "-q"]) == 0
    (opt,) = made
    first_ids = {e.id for e in first}
    assert first_ids <= opt.results.seen
    complete = [t for t in opt.study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(complete) >= len({e.content_hash for e in first})
    exps = SQLiteStore(mlp_project / ".fleetlab" / "fleetlab.db").experiments()
    assert len(exps) == 12 and {e.tag for e in exps} >= {"second"}


def test_auto_session_on_mlp(mlp_project: Path):
    exps = _session(mlp_project, "auto")
    assert len(exps) == 12 and all(e.state in FINISHED for e in exps)
    explore = [e for e in exps if e.role == "explore"]
    assert all(e.strategy == "auto" and e.meta["via"] == "factorial" for e in explore)
    assert len({e.content_hash for e in exps}) == 12


# ---------------------------------------------------------------------------------------------------------------------
# descent: designed waves over the range knobs and a path of steepest descent


@pytest.mark.parametrize("m", [1, 2, 3, 5, 7, 12, 15, 16])
def test_two_level_design_is_balanced_and_orthogonal(m):
    from fleetlab.strategies.descent import two_level_design

    d = two_level_design(m)
    runs = len(d)
    assert runs >= min(4, 2 ** m) and runs > m and runs & (runs - 1) == 0 and len(set(d)) == runs
    cols = list(zip(*d))
    assert len(cols) == m and all(set(c) <= {-1, 1} and sum(c) == 0 for c in cols)
    assert all(sum(a * b for a, b in zip(c1, c2)) == 0 for c1, c2 in itertools.combinations(cols, 2))


def _fixed_incumbent_loop(space, truth, workers=16):
    """A Loop whose incumbent stays the baseline: the path is judged by its own waves, not by a moving incumbent."""
    loop = Loop(space, truth, workers=workers)
    base = loop.incumbent

    def finish(i, strategy=None, _finish=loop.finish):
        out = _finish(i, strategy)
        loop.incumbent = base
        return out
    loop.finish = finish
    return loop


def test_descent_walks_a_noisy_bowl_down_its_slope(space):
    """With noise that hides every single comparison (σ 0.02 against steps worth ~0.01), the path of designed waves
    moves every range knob towards the optimum: its accepted centre ends much nearer than the incumbent it left."""
    from fleetlab.strategies.descent import DescentStrategy

    truth, rng = bowl(space, optimum_u=0.75), random.Random(5)
    loop = _fixed_incumbent_loop(space, lambda k: truth(k) + rng.gauss(0.0, 0.02))
    d = DescentStrategy(seed=0, delta=0.1)
    ranges = [n for n in d.nums or space.knobs if space.knobs[n].choices is None and n != "DEPTH"]

    def dist(c):
        return sum((unit(space, n, c[n]) - 0.75) ** 2 for n in ranges)

    first = loop.step(d, 16)
    # 6 range knobs: a 2^(6-3) design
    assert len(first) == 8 and all(p.meta["design"] == "descent" for p in first)
    # every design run moves every range knob by ±delta, except where the range ends (WARMDOWN_RATIO is 0.0, its
    # lower bound: only its + rows move) and DEPTH (an int of range 1..2: ±0.1 of it rounds back)
    moves = {n: sum(n in p.knobs for p in first) for n in ranges}
    assert moves == {**{n: 8 for n in ranges}, "WARMDOWN_RATIO": 4}
    for _ in range(12):
        loop.step(d, 9)
    assert d.steps >= 3 and d.accepted is not None
    assert dist(d.accepted.centre) < 0.5 * dist(loop.baseline)
    assert truth(d.accepted.centre) < truth(loop.baseline) - 0.02
    steps = [e for e in loop.exps if e.meta.get("design") == "step"]
    assert len(steps) >= d.steps  # the path's centres are run, for the keep rule


def test_descent_rejects_a_step_that_does_not_pay_and_halves_it(space):
    """A wave whose centre fits worse than the accepted one is not accepted: the path steps again from the accepted
    centre at half the step."""
    from fleetlab.strategies.descent import DescentStrategy

    # a narrow valley: the first step of 0.3 jumps over the optimum at 0.6 from 0.5 on LEARNING_RATE
    def truth(k):
        return 1.0 + 50 * (unit(space, "LEARNING_RATE", k["LEARNING_RATE"]) - 0.6) ** 2

    loop = _fixed_incumbent_loop(space, truth)
    d = DescentStrategy(seed=0, delta=0.3, z=0.5)
    for _ in range(6):
        loop.step(d, 17)
    assert d.rejected_steps >= 1 and d.delta < 0.3
    best = truth(d.accepted.centre)
    assert best < truth(loop.baseline)


def test_descent_starts_a_new_path_at_a_new_incumbent_from_elsewhere(space):
    from fleetlab.strategies.descent import DescentStrategy

    loop = _fixed_incumbent_loop(space, bowl(space))
    d = DescentStrategy(seed=0)
    loop.step(d, 16)
    old = d.wave.number
    elsewhere = loop.add({**loop.baseline, "HIDDEN": 128}, "random")
    loop.incumbent = elsewhere
    props = d.propose(loop.context(), 16)
    assert d.wave.number == old + 1 and d.wave.centre["HIDDEN"] == 128 and d.accepted is None
    assert len(props) == 8 and all(p.meta["wave"] == d.wave.number for p in props)


def test_descent_path_ends_where_no_slope_clears_the_noise(space):
    """On a flat response no slope clears the noise: a wave, its fold-over (new points: every sign flipped), then the
    path ends and proposes nothing (`auto` gives its slots to the others) until the incumbent moves. No config is ever
    proposed twice."""
    from fleetlab.strategies.descent import DescentStrategy

    rng = random.Random(2)
    loop = _fixed_incumbent_loop(space, lambda k: 1.0 + rng.gauss(0.0, 0.01))
    d = DescentStrategy(seed=0, z=50.0)  # nothing is ever significant
    d._sigma = lambda context: 0.01      # the keep rule's noise floor (8 runs over 6 knobs leave no residual to use)
    for _ in range(5):
        loop.step(d, 9)
    runs = [config_key(e.knobs) for e in loop.exps if e.strategy == "descent"]
    assert d.waves == 2 and d.stalled and d.steps == 0 and len(runs) == 16 and len(set(runs)) == 16
    assert d.propose(loop.context(), 8) == []
    loop.incumbent = loop.add({**loop.baseline, "HIDDEN": 128}, "random")  # a new incumbent: a new path
    assert len(d.propose(loop.context(), 8)) == 8 and not d.stalled


def test_descent_runs_opt_out_of_early_stopping(space):
    """A wave is a designed measurement: early stopping would end its worst runs (by design most are worse than the
    centre) and leave a fit of the lucky ones. Every design run and every step run asks to be measured to the end."""
    from fleetlab.analysis.pruning import Pruner
    from fleetlab.strategies.descent import DescentStrategy

    loop = _fixed_incumbent_loop(space, bowl(space))
    d = DescentStrategy(seed=0)
    props = loop.step(d, 16)
    assert props and all(p.meta.get("prune") is False for p in props)
    assert {p.meta["design"] for p in props} <= {"descent", "step"}
    exp = loop.add({**loop.baseline, **props[0].knobs}, "descent", meta=props[0].meta, finish=False)
    assert Pruner().should_prune(exp, [(150.0, 99.0)], None) is None  # hopeless at half time, and not stopped


def test_descent_fits_a_pruned_design_run_at_its_bound_not_as_missing(space):
    """A design run stopped early has no metric but a bound (the best it could still have reached): the fit uses it,
    so the runs that looked worst are not silently dropped (which would bias the slopes towards the lucky ones)."""
    from fleetlab.strategies.descent import DescentStrategy

    loop = _fixed_incumbent_loop(space, bowl(space))
    d = DescentStrategy(seed=0)
    props = loop.step(d, 8)
    assert len(d.wave.data) == 8
    pruned = loop.add({**loop.baseline, **props[0].knobs}, "descent", meta={**props[0].meta, "run": 999},
                      finish=False).evolve(state=State.PRUNED, meta={**props[0].meta, "run": 999, "bound": 1.5})
    d.observe(pruned, loop.context())
    assert len(d.wave.data) == 9 and d.wave.data[-1][2] == 1.5
    d2 = DescentStrategy(seed=0, censored=False)  # the other way: a pruned run is missing from the fit
    loop2 = _fixed_incumbent_loop(space, bowl(space))
    loop2.step(d2, 8)
    d2.observe(pruned.evolve(meta={**pruned.meta, "descent": d2.token, "wave": d2.wave.number}), loop2.context())
    assert len(d2.wave.data) == 8


# ---------------------------------------------------------------------------------------------------------------------
# Every strategy on any space: continuous-only, categorical-only, integer-only and mixed, of 1 and 20 knobs. Each either
# proposes valid configs or says it is finished: a strategy that returns nothing and is not finished leaves the fleet
# idle for good. `llm` is left out: its proposals are edits an LLM writes, the space only feeds its prompt.


def _space_source(kind: str, n: int) -> tuple[str, dict]:
    lines, overrides = [], {}
    for i in range(n):
        slot = {"continuous": 0, "categorical": 1, "integer": 2}.get(kind, i % 4)
        if slot == 0:
            lines.append(f"RATE_{i} = {0.01 * (i + 1)}")
        elif slot == 1 and i % 2:
            lines.append(f"MODE_{i} = 'a'")
            overrides[f"MODE_{i}"] = {"choices": ["a", "b", "c"]}
        elif slot == 1:
            lines.append(f"FLAG_{i} = True")
        elif slot == 2:
            lines.append(f"COUNT_{i} = {5 + 2 * i}")
        else:
            lines.append(f"WIDTH_{i} = {2 ** (3 + i % 4)}")
    return "\n".join(lines) + "\n", overrides


def _noisy_bowl(space, seed=0):
    rng = random.Random(seed)
    target = {n: rng.random() for n in space.knobs}

    def f(knobs):
        s = 1.0
        for name, k in space.knobs.items():
            u = unit(space, name, knobs[name])
            if u is not None:
                s += (u - target[name]) ** 2
            elif knobs[name] != k.choices[-1]:
                s += 0.05
        return s + rng.gauss(0.0, 0.001)
    return f


_ANY_SPACE = [s for s in ("none", "baseline", "random", "grid", "factorial", "optuna", "optuna-gp", "descent", "auto",
                          "seq-greedy", "wave-sync")]


def _any_space_cases():
    for name in _ANY_SPACE:
        for size in (1, 20):
            for kind in ("continuous", "categorical", "integer", "mixed"):
                # Optuna's GPSampler optimises its acquisition over 20 discrete knobs for minutes per ask
                slow = name == "optuna-gp" and size == 20 and kind != "continuous"
                yield pytest.param(name, kind, size, marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("name, kind, size", list(_any_space_cases()))
def test_every_strategy_works_on_any_space(name, kind, size):
    from fleetlab.strategies import available

    if name not in available():
        pytest.skip(f"{name} is not installed")
    source, overrides = _space_source(kind, size)
    space = infer_space(source, overrides)
    assert len(space.knobs) == size
    loop = Loop(space, _noisy_bowl(space), workers=4)
    # the GP is slow on 20 discrete knobs: a short start-up and a few requests still reach its sampler
    strategy = make_strategy(name, seed=0, n_startup_trials=3) if name == "optuna-gp" else make_strategy(name, seed=0)
    steps, proposed, empty = (4 if name == "optuna-gp" else 25), 0, 0
    for _ in range(steps):
        props = loop.step(strategy, 2 if name == "optuna-gp" else 4)  # Loop checks every config against the space
        for p in props:
            assert set(p.knobs) <= set(space.knobs), p
        proposed += len(props)
        if strategy.finished:
            break
        empty = empty + 1 if not props else 0
        if name != "none":  # `none` serves `fleetlab submit` and waits for it by design
            assert empty < 3, f"{name} proposes nothing on a {kind} space of {size} and is not finished"
    if name != "none" and not (name == "descent" and kind == "categorical"):  # descent moves numeric knobs only
        assert proposed >= 1


@pytest.mark.parametrize("name", [s for s in _ANY_SPACE if s not in ("none", "baseline", "seq-greedy", "wave-sync")])
def test_a_strategy_with_no_knob_to_move_is_finished(name):
    """A train.py without knobs: a knob strategy has nothing to propose and says so, so the session ends."""
    from fleetlab.strategies import available

    if name not in available():
        pytest.skip(f"{name} is not installed")
    space = infer_space("import os\nSEED = 1\n")
    assert not space.knobs
    loop = Loop(space, lambda k: 1.0, workers=2)
    strategy = make_strategy(name, seed=0)
    assert loop.step(strategy, 4) == [] and strategy.finished
