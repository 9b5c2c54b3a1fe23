"""Early stopping on synthetic curves (a view with the scheduler's read-only interface), and on the simulated fleet:
pruned runs are recorded with the time saved and the session loses nothing."""

from __future__ import annotations

from fleetlab.analysis.pruning import Pruner
from fleetlab.experiment import Experiment, State, format_id


class View:
    """What the scheduler gives a pruner: incumbent(), curve(id), experiments(), goal."""

    def __init__(self, goal="minimize"):
        self.goal = goal
        self.exps: list[Experiment] = []
        self.curves: dict[str, list] = {}
        self.inc: Experiment | None = None

    def incumbent(self):
        return self.inc

    def curve(self, exp_id):
        return self.curves.get(exp_id, [])

    def experiments(self):
        return self.exps

    def finished(self, final: float, late_drop: float, role="explore") -> Experiment:
        """A finished run whose curve falls linearly to `final + late_drop` at 80 % of 300 s, then to `final`."""
        e = Experiment(format_id(len(self.exps) + 1), "t", "x", State.DONE, role=role, metric=final)
        self.exps.append(e)
        self.curves[e.id] = [(t, final + 1.0 * (1 - t / 240) + late_drop) for t in range(30, 241, 30)] + \
                            [(300, final)]
        if self.inc is None or final < self.inc.metric:
            self.inc = e
        return e


def running(view, role="explore") -> Experiment:
    e = Experiment(format_id(len(view.exps) + 1), "t", "x", State.RUNNING, role=role)
    view.exps.append(e)
    return e


def history(view, n=6, final=1.0, late=0.05):
    for i in range(n):
        view.finished(final + 0.01 * i, late)


def curve_like(final, late, until):
    return [(t, final + 1.0 * (1 - t / 240) + late) for t in range(30, until + 1, 30)]


def test_silent_without_enough_history():
    v = View()
    history(v, n=3)
    p = Pruner("minimize", 300, min_history=5)
    assert p.should_prune(running(v), curve_like(2.0, 0.05, 150), v) is None


def test_prunes_a_run_that_cannot_catch_up():
    v = View()
    history(v)
    p = Pruner("minimize", 300)
    e = running(v)
    why = p.should_prune(e, curve_like(1.5, 0.05, 150), v)  # 0.5 worse than anything at the same time
    assert why and "cannot beat" in why and v.inc.id in why


def test_keeps_a_run_that_is_behind_by_less_than_history_says_runs_catch_up():
    v = View()
    history(v, late=0.05)
    v.finished(1.05, 0.30)  # one run that caught up 0.3 late (curves cross: a long warmdown)
    p = Pruner("minimize", 300)
    # 0.2 behind the incumbent's curve at 150 s: runs have caught up 0.3 from there, so it may still win
    assert p.should_prune(running(v), curve_like(1.0 - 0.1 + 0.2, 0.05, 150), v) is None
    # but 0.6 behind is beyond any catch-up seen
    assert p.should_prune(running(v), curve_like(1.0 + 0.6, 0.05, 150), v)


def test_never_early_never_late_never_a_validation_run():
    v = View()
    history(v)
    p = Pruner("minimize", 300, min_fraction=0.2, max_fraction=0.9)
    bad = 5.0
    assert p.should_prune(running(v), curve_like(bad, 0, 30), v) is None  # 30 s < 20 % of 300 s
    assert p.should_prune(running(v), curve_like(bad, 0, 240) + [(285, bad)], v) is None  # past 90 %
    assert p.should_prune(running(v, role="validate"), curve_like(bad, 0, 150), v) is None
    assert p.should_prune(running(v, role="replicate"), curve_like(bad, 0, 150), v) is None
    assert p.should_prune(running(v), curve_like(bad, 0, 150), v)


def test_maximize_goal_mirrors():
    v = View(goal="maximize")
    for i in range(6):
        e = Experiment(format_id(i + 1), "t", "x", State.DONE, metric=0.9 - 0.01 * i)
        v.exps.append(e)
        v.curves[e.id] = [(t, e.metric * t / 300) for t in range(30, 301, 30)]
    v.inc = v.exps[0]
    p = Pruner("maximize", 300)
    low = [(t, 0.2 * t / 300) for t in range(30, 151, 30)]
    high = [(t, 0.95 * t / 300) for t in range(30, 151, 30)]
    assert p.should_prune(running(v), low, v)
    assert p.should_prune(running(v), high, v) is None


def test_pruning_on_the_simulated_fleet_saves_time_at_no_loss():
    from fleetlab.bench.harness import run_one

    off = run_one("autoresearch", "8xH100", "random", 0, 1.0, surface_name="autoresearch", prune=False)
    on = run_one("autoresearch", "8xH100", "random", 0, 1.0, surface_name="autoresearch", prune=True)
    assert on["experiments"] >= 1.2 * off["experiments"]
    assert on["best_metric"] <= off["best_metric"] + 0.003  # 2 sigma of the surface's noise
