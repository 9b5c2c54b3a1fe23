"""Early stopping on synthetic curves (a view with the scheduler's read-only interface), and on the simulated fleet:
pruned runs are recorded with the time saved and the session loses nothing."""

from __future__ import annotations

from fleetlab.analysis.pruning import Pruner
from fleetlab.experiment import Experiment, State, format_id


class View:
    """What the scheduler gives a pruner: incumbent(), curve(id), experiments(), goal."""

    keep_rule = None  # no keep rule to ask unless a test sets one

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
        e = Experiment(format_id(len(self.exps) + 1), "t", "x", State.DONE, role=role, metric=final,
                       content_hash=f"code{len(self.exps) + 1}", started_at=0.0, finished_at=300.0)  # side by side on a wide fleet: every reference is fresh
        self.exps.append(e)
        self.curves[e.id] = [(t, final + 1.0 * (1 - t / 240) + late_drop) for t in range(30, 241, 30)] + \
                            [(300, final)]
        if self.inc is None or final < self.inc.metric:
            self.inc = e
        return e


def running(view, role="explore", meta=None, started_at=300.0) -> Experiment:
    e = Experiment(format_id(len(view.exps) + 1), "t", "x", State.RUNNING, role=role, meta=meta or {},
                   started_at=started_at)
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
    assert why and "cannot beat" in why.reason and v.inc.id in why.reason
    # the censored measurement: the best final it could still have reached, worse than the incumbent, better than
    # where its curve stands now (it would have kept improving)
    now = curve_like(1.5, 0.05, 150)[-1][1]
    assert v.inc.metric < why.bound < now


def test_stops_only_against_an_incumbent_measured_close_in_time():
    """The incumbent's last run ended more than `fresh` (2) run lengths before this run started: its figure may
    be from other conditions (a load started since makes every run look worse at the same second), so nothing is
    stopped until the incumbent is measured again; a control of its code makes the reference fresh."""
    v = View()
    history(v)
    p = Pruner("minimize", 300)
    late = running(v, started_at=300.0 + 3 * 300.0)
    assert p.should_prune(late, curve_like(1.5, 0.05, 150), v) is None
    ctl = Experiment(format_id(len(v.exps) + 1), "t", "x", State.DONE, role="control", metric=1.0,
                     content_hash=v.inc.content_hash, started_at=900.0, finished_at=1200.0)
    v.exps.append(ctl)
    assert p.should_prune(late, curve_like(1.5, 0.05, 150), v) is not None
    assert p.should_prune(running(v, started_at=1200.0 + 3 * 300.0), curve_like(1.5, 0.05, 150), v) is None


def test_keeps_a_run_that_is_behind_by_less_than_history_says_runs_catch_up():
    v = View()
    history(v, late=0.05)
    v.finished(1.05, 0.30)  # one run that caught up 0.3 late (curves cross: a long warmdown)
    p = Pruner("minimize", 300)
    # 0.2 behind the incumbent's curve at 150 s: runs have caught up 0.3 from there, so it may still win
    assert p.should_prune(running(v), curve_like(1.0 - 0.1 + 0.2, 0.05, 150), v) is None
    # but 0.6 behind is beyond any catch-up seen
    assert p.should_prune(running(v), curve_like(1.0 + 0.6, 0.05, 150), v)


def test_never_early_never_late_never_a_validation_or_opted_out_run():
    v = View()
    history(v)
    p = Pruner("minimize", 300, min_fraction=0.2, max_fraction=0.9)
    bad = 5.0
    assert p.should_prune(running(v), curve_like(bad, 0, 30), v) is None  # 30 s < 20 % of 300 s
    assert p.should_prune(running(v), curve_like(bad, 0, 240) + [(285, bad)], v) is None  # past 90 %
    assert p.should_prune(running(v, role="validate"), curve_like(bad, 0, 150), v) is None
    assert p.should_prune(running(v, role="replicate"), curve_like(bad, 0, 150), v) is None
    # a run its strategy needs measured to the end (a designed wave's run) opts out
    assert p.should_prune(running(v, meta={"prune": False}), curve_like(bad, 0, 150), v) is None
    assert p.should_prune(running(v), curve_like(bad, 0, 150), v)


def test_maximize_goal_mirrors():
    v = View(goal="maximize")
    for i in range(6):
        e = Experiment(format_id(i + 1), "t", "x", State.DONE, metric=0.9 - 0.01 * i, started_at=0.0,
                       finished_at=300.0)
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


class _Rule:
    """The parts of the research-validity keep rule a pruner reads: the incumbent's mean per hardware class, σ, k."""

    k_sigma = 1.0

    def __init__(self, means: dict[str, float], sigma: float):
        self.means, self._sigma = means, sigma

    def reference(self, exp, hardware):
        from fleetlab.analysis.noise import Stat

        m = self.means.get(hardware)
        return None if m is None else (Stat(3, m, self._sigma ** 2), "same class")

    def sigma(self, hardware=None):
        return self._sigma


def test_a_run_is_judged_against_the_incumbent_on_its_own_hardware_class():
    """The incumbent's own run was on an H200, 0.45 better than its H100 replicates: an H100 run heading for 0.4
    behind that H200 figure is still ahead of the incumbent's H100 mean and may win on its class."""
    v = View()
    history(v, late=0.0)
    v.inc = v.inc.evolve(hardware="H200")     # the incumbent: final 1.0, measured on an H200
    e = running(v).evolve(hardware="H100")
    late = curve_like(1.0 + 0.4, 0.0, 150)
    p = Pruner("minimize", 300, slack=0.0)
    assert p.should_prune(e, late, v)         # no keep rule to ask: the incumbent's own figure is the reference
    v.keep_rule = _Rule({"H100": 1.45, "H200": 1.0}, sigma=0.01)
    assert p.should_prune(e, late, v) is None  # against the incumbent's H100 runs it may still win
    why = p.should_prune(e, curve_like(1.0 + 0.75, 0.0, 150), v)  # 0.3 behind them: it cannot
    assert why and "(1.45, its mean on H100)" in why.reason  # the figure it was compared with, not the incumbent's H200 one


def test_screen_mode_stops_runs_that_cannot_clear_the_screens_bar():
    """With `screen`, the bar is the incumbent minus k sigma: a run that can at best tie the incumbent is stopped
    (the keep rule would discard it when it ends); without it, the same run goes on."""
    v = View()
    history(v, late=0.0)
    v.keep_rule = _Rule({"H100": 1.0}, sigma=0.05)
    e = running(v).evolve(hardware="H100")
    plain = Pruner("minimize", 300, slack=0.0, screen=False)
    screen = Pruner("minimize", 300, slack=0.0, screen=True)
    ahead = curve_like(1.0 - 0.03, 0.0, 150)  # may beat it, but by less than the screen's 0.05
    assert plain.should_prune(e, ahead, v) is None
    why = screen.should_prune(e, ahead, v)
    assert why and "screen" in why.reason
    assert screen.should_prune(e, curve_like(1.0 - 0.08, 0.0, 150), v) is None  # may clear the bar: it goes on


def test_prune_options_come_from_fleetlab_toml(mlp_project):
    import pytest

    from fleetlab.analysis.pruning import make_pruner
    from fleetlab.errors import ConfigError
    from fleetlab.project import Project

    toml = mlp_project / "fleetlab.toml"
    base = toml.read_text()
    default = make_pruner(Project.load(mlp_project))
    assert (default.quantile, default.screen, default.slack) == (0.95, True, 0.5)
    toml.write_text(base + "\n[prune]\nscreen = false\nquantile = 1.0\nmin_history = 8\n")
    p = make_pruner(Project.load(mlp_project))
    assert (p.quantile, p.screen, p.min_history) == (1.0, False, 8)
    for key in ("screen", "enabled"):
        toml.write_text(base + f"\n[prune]\n{key} = \"yes\"\n")
        with pytest.raises(ConfigError) as e:
            Project.load(mlp_project)
        assert e.value.key == f"prune.{key}"


CURVE_TRAIN = '''"""A run whose progress curve is known: metric = QUALITY + a decay that every config shares + seeded noise."""
import os
import random
import time

QUALITY = 0.5

print(f"pid: {os.getpid()}", flush=True)
budget = float(os.environ.get("FLEETLAB_TIME_BUDGET", "3"))
noise = random.Random(int(os.environ.get("FLEETLAB_SEED", "0"))).gauss(0.0, 0.01)
t0, step = time.time(), 0
while (elapsed := time.time() - t0) < budget:
    step += 1
    print(f"fleetlab: step={step} metric={QUALITY + 1.0 / (1.0 + elapsed) + noise:.6f} elapsed={elapsed:.3f}", flush=True)
    time.sleep(0.1)
print(f"score: {QUALITY + 1.0 / (1.0 + budget) + noise:.6f}")
'''


def _curve_project(root, extra_toml: str = ""):
    root.mkdir()
    (root / "train.py").write_text(CURVE_TRAIN)
    (root / "fleetlab.toml").write_text(
        "[project]\neditable = [\"train.py\"]\ncommand = \"python train.py\"\ntime_budget_s = 3\ntimeout_s = 30\n\n"
        "[metric]\nname = \"score\"\ngoal = \"minimize\"\npattern = '^score:\\s*(\\S+)'\n\n"
        "[knobs.QUALITY]\nlow = 0.0\nhigh = 2.0\n" + extra_toml)
    from conftest import commit_all

    commit_all(root)
    return root


def _states(root):
    from fleetlab.store.sqlite import SQLiteStore

    store = SQLiteStore(root / ".fleetlab" / "fleetlab.db")
    try:
        return store.experiments()
    finally:
        store.close()


def test_real_runs_are_pruned_by_default_and_not_with_no_prune(tmp_path):
    """`fleetlab run` on real subprocesses, pruning on by default: runs whose curve cannot reach the incumbent are
    killed mid-run and recorded `pruned` with the seconds saved; `--no-prune` (or `[prune] enabled = false`) lets
    every run finish."""
    import os

    from conftest import fleetlab_cmd

    from fleetlab.experiment import State

    on = _curve_project(tmp_path / "on")
    r = fleetlab_cmd("run", "-C", str(on), "--fleet", "local:2", "--strategy", "random", "--max-experiments", "16",
                     "--never-stop", timeout=240)
    assert r.returncode == 0, r.stderr
    exps = _states(on)
    pruned = [e for e in exps if e.state is State.PRUNED]
    assert pruned, [(e.id, e.state, e.metric) for e in exps]
    best = min(e.knobs.get("QUALITY", 0.5) for e in exps if e.state is State.DONE)
    for e in pruned:
        assert e.role == "explore" and e.meta["saved_s"] > 0.3 and "cannot" in e.meta["reason"]
        assert e.knobs["QUALITY"] > best + 0.03  # only configs truly worse than what was found (noise σ 0.01)
        assert "score:" not in (e.log_tail or "")  # stopped before the end: it never printed its result
    for e in pruned:  # the killed process is gone (its printed pid is its sandbox's: look for its directory)
        workdir = str((on / ".fleetlab" / "runs" / e.id).resolve())
        assert "pid:" in (on / ".fleetlab" / "runs" / e.id / "run.log").read_text()
        for proc in os.listdir("/proc"):
            try:
                assert not (proc.isdigit() and os.readlink(f"/proc/{proc}/cwd") == workdir), f"{e.id} lives on"
            except OSError:
                pass

    for name, args, toml in (("off", ["--no-prune"], ""), ("toml", [], "\n[prune]\nenabled = false\n")):
        root = _curve_project(tmp_path / name, toml)
        r = fleetlab_cmd("run", "-C", str(root), "--fleet", "local:2", "--strategy", "random", "--max-experiments",
                         "12", "--never-stop", *args, timeout=240)
        assert r.returncode == 0, r.stderr
        exps = _states(root)
        assert not [e for e in exps if e.state is State.PRUNED]
        best = min(e.knobs.get("QUALITY", 0.5) for e in exps if e.state is State.DONE)
        assert [e for e in exps if e.role == "explore" and e.state is State.DONE and e.knobs["QUALITY"] > best + 0.1
                and e.number > 6]  # runs the default would have stopped ran to the end
