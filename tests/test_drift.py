"""Decisions that survive drift: pooled arms, runs of the reference code never pruned, an improvement of a parent the
incumbent moved away from, the simulated fleet's drift, and the drift summary the surfaces read."""

from __future__ import annotations

import random

import pytest

from fleetlab.analysis.drift import Timeline, adjusted_gain, drift_warnings
from fleetlab.analysis.pruning import Pruner
from fleetlab.analysis.validity import ValidityKeepRule
from fleetlab.bench.surfaces import Quadratic
from fleetlab.clock import VirtualClock
from fleetlab.errors import ConfigError
from fleetlab.experiment import Experiment, State, format_id
from fleetlab.fleet.sim import SimExecutor, sim_options


class Session:
    """The keep rule fed by hand, with queued runs and times: what a SessionView gives a rule."""

    goal = "minimize"
    workers_now: list = []

    def __init__(self):
        self.rule = ValidityKeepRule()
        self.keep_rule = self.rule
        self.exps: dict[str, Experiment] = {}
        self.inc: Experiment | None = None
        self.others: list = []
        self.props: list = []
        self.t = 0.0

    def get(self, i):
        return self.exps[i]

    def incumbent(self):
        return self.inc

    def experiments(self):
        return list(self.exps.values())

    def curve(self, _):
        return []

    def queue(self, role, key, parent=None, knobs=None):
        e = Experiment(format_id(len(self.exps) + 1), "t", role, State.QUEUED, role=role, parent=parent,
                       content_hash=key, knobs=dict(knobs or {}), hardware="cpu")
        self.exps[e.id] = e
        return e

    def finish(self, e, value, minutes=5.0):
        self.t += minutes * 60
        e = e.evolve(state=State.DONE, metric=value, started_at=self.t - 300, finished_at=self.t)
        self.exps[e.id] = e
        v = self.rule.judge(e, self)
        self.others.extend(v.others)
        self.props.extend(v.proposals)
        if v.decision.status == "keep":
            self.inc = e
        for i, d in v.others:
            if d.status == "keep":
                self.inc = self.exps[i]
        return v.decision

    def run(self, role, key, value, parent=None, knobs=None):
        return self.finish(self.queue(role, key, parent, knobs), value)

    def run_controls(self, key, mean, rng, parent, sigma=0.01):
        """Every control the rule asked for so far, each run once at `mean` plus noise."""
        for p in [p for p in self.props if p.role == "control"]:
            for _ in range(p.replicates):
                self.run("control", key, mean + rng.gauss(0, sigma), parent=parent)


def baseline(s, rng, n=3, sigma=0.01):
    for _ in range(n):
        s.run("baseline", "base", 1.0 + rng.gauss(0, sigma))
    for _ in range(4):  # replicates of other code: the noise floor gets degrees of freedom
        for key in ("r1", "r2"):
            s.run("replicate", key, 1.0 + rng.gauss(0, sigma))


def test_a_pooled_arm_gives_one_decision():
    rng = random.Random(1)
    s = Session()
    baseline(s, rng)
    base = next(iter(s.exps))
    arm = [s.queue("explore", "X", parent=base) for _ in range(3)]  # submit --replicates 3
    d1 = s.finish(arm[0], 0.95 + rng.gauss(0, 0.01))
    assert d1.status == "pending" and "3 runs of the same code" in d1.reason
    assert not [p for p in s.props if p.role == "validate"]  # the arm is its own validation: no screen
    assert s.finish(arm[1], 0.95 + rng.gauss(0, 0.01)).status == "pending"
    s.finish(arm[2], 0.95 + rng.gauss(0, 0.01))
    assert not s.others  # the baseline ran long before: first its controls, close in time
    s.run_controls("base", 1.0, rng, base)
    verdicts = dict(s.others)
    assert set(verdicts) == {e.id for e in arm}  # one decision, delivered to every run of the arm
    assert verdicts[arm[0].id].status == "keep" and verdicts[arm[0].id].numbers["n"] == 3
    assert all(verdicts[e.id].status == "discard" and "decided with its arm" in verdicts[e.id].reason
               for e in arm[1:])
    assert s.inc.id == arm[0].id
    # a later duplicate of that code joins the arm (the incumbent's, now): it is answered, not screened again
    d = s.run("explore", "X", 0.97, parent=base)
    assert d.status == "discard" and "same code as the incumbent" in d.reason
    # code screened out once is answered with that decision when it comes again
    n_before = s.rule.meas.stat("base", "cpu").n
    d = s.run("explore", "Y", 1.2, parent=base)  # screened: clearly worse
    assert d.status == "discard"
    d = s.run("explore", "Y", 0.5, parent=base)  # a lucky duplicate cannot overturn it
    assert d.status == "discard" and "already decided" in d.reason
    assert s.rule.meas.stat("base", "cpu").n == n_before


def _promoted(seed: int, key: str, value: float):
    """A hand-fed session with its baseline measured and one candidate of code `key` promoted to validation."""
    rng = random.Random(seed)
    s = Session()
    baseline(s, rng)
    base = next(iter(s.exps))
    cand = s.queue("explore", key, parent=base)
    assert s.finish(cand, value).status == "pending"
    return s, rng, base, cand


def test_a_screened_arm_pools_a_duplicate_into_its_validation():
    s, rng, base, cand = _promoted(2, "Z", 0.96)
    dup = s.run("explore", "Z", 0.96 + rng.gauss(0, 0.01), parent=base)  # identical code submitted meanwhile
    assert dup.status == "pending" and "pooled with its arm" in dup.reason
    for _ in range(3):
        s.run("validate", "Z", 0.96 + rng.gauss(0, 0.01), parent=cand.id)
    s.run_controls("base", 1.0, rng, base)
    verdicts = dict(s.others)
    assert verdicts[cand.id].status == "keep" and verdicts[cand.id].numbers["n"] == 4  # 3 validations + the duplicate
    assert len(verdicts) == 2  # and the duplicate is answered with the arm's decision
    (other,) = [d for i, d in verdicts.items() if i != cand.id]
    assert other.status == "discard" and f"same code as {cand.id}" in other.reason


def test_a_run_of_the_incumbents_or_baselines_code_is_never_pruned():
    class View:
        goal, keep_rule = "minimize", None

        def __init__(self):
            self.exps, self.curves, self.inc = [], {}, None

        def incumbent(self):
            return self.inc

        def curve(self, i):
            return self.curves.get(i, [])

        def experiments(self):
            return self.exps

    v = View()
    for i in range(6):
        e = Experiment(format_id(i + 1), "t", "x", State.DONE, role="baseline" if i == 0 else "explore",
                       content_hash="base" if i == 0 else f"h{i}", metric=1.0 + 0.01 * i, hardware="cpu",
                       started_at=0.0, finished_at=300.0)
        v.exps.append(e)
        v.curves[e.id] = [(t, e.metric + 1.0 * (1 - t / 240) + 0.05) for t in range(30, 241, 30)] + [(300, e.metric)]
    v.inc = v.exps[0]
    bad = [(t, 5.0 + 1.0 * (1 - t / 240)) for t in range(30, 151, 30)]
    p = Pruner("minimize", 300)

    def running(key):
        e = Experiment(format_id(len(v.exps) + 1), "t", "x", State.RUNNING, role="explore", content_hash=key,
                       hardware="cpu", started_at=300.0)
        v.exps.append(e)
        return e

    assert p.should_prune(running("base"), bad, v) is None  # an exact copy of the baseline: a measurement of it
    v.inc = v.exps[3]
    assert p.should_prune(running("h3"), bad, v) is None   # of the incumbent's code
    assert p.should_prune(running("base"), bad, v) is None  # the baseline's code, after the incumbent moved on
    for role in ("control", "replicate", "validate", "confirm"):
        e = running("other").evolve(role=role)
        assert p.should_prune(e, bad, v) is None
    assert p.should_prune(running("other"), bad, v)  # other code with the same curve cannot win: stopped


def test_a_variant_beating_its_moved_away_parent_is_recorded_and_offered():
    rng = random.Random(3)
    s = Session()
    baseline(s, rng)
    base = s.get("exp-0001")
    s.exps[base.id] = base.evolve(knobs={"LR": 1.0, "DEPTH": 4})
    # C (DEPTH 6) is screened against the baseline, and promoted
    c = s.queue("explore", "C", parent=base.id, knobs={"LR": 1.0, "DEPTH": 6})
    assert s.finish(c, 0.965).status == "pending"
    # meanwhile B (LR 2) became the incumbent: better than C
    b = s.queue("explore", "B", parent=base.id, knobs={"LR": 2.0, "DEPTH": 4})
    s.exps[b.id] = b.evolve(state=State.DONE, metric=0.93)
    s.inc = s.exps[b.id]
    for _ in range(3):
        s.run("replicate", "B", 0.93 + rng.gauss(0, 0.01), parent=b.id)
    for _ in range(3):
        s.run("validate", "C", 0.965 + rng.gauss(0, 0.01), parent=c.id)
    s.run_controls("B", 0.93, rng, b.id)
    d = dict(s.others)[c.id]
    assert d.status == "discard"  # it does not beat the incumbent B
    imp = d.numbers["improves_parent"]
    assert imp["parent"] == base.id and imp["gain"] > 0.02 and imp["p"] < 0.05
    assert f"improvement of {base.id}" in d.reason
    offer = [p for p in s.props if p.role == "combine"]
    assert len(offer) == 1 and offer[0].parent == b.id and offer[0].knobs == {"DEPTH": 6}
    assert s.rule.comb.improved[base.id] == [c.id]


def test_controls_close_in_time_hold_a_null_change_under_drift():
    """A null candidate validated late in a drifting session, against an incumbent measured early: compared with
    all of the incumbent's runs it looks like a gain; with controls close in time and the trend, it does not."""
    rng = random.Random(4)
    tl = Timeline()
    drift = -0.01  # per hour: later runs look better
    early = [(t, 1.0 + drift * t + rng.gauss(0, 0.002)) for t in (0.0, 0.1, 0.2)]
    for key in ("a", "b", "c", "d"):  # arms re-measured across the session: the trend is seen within them
        for t in (0.0, 1.0, 2.0, 3.0):
            tl.add(key, "cpu", t, 1.0 + drift * t + rng.gauss(0, 0.002))
    cand = [(t, 1.0 + drift * t + rng.gauss(0, 0.002)) for t in (3.0, 3.1, 3.2)]
    naive = adjusted_gain(cand, early, "minimize", None, 0.002, 30)
    assert naive["p"] < 0.001  # the drift alone looks like a 3σ+ gain
    assert tl.seen("cpu") is not None and abs(tl.trend("cpu")[0] - drift) < 0.003
    fair = adjusted_gain(cand, early, "minimize", tl.trend("cpu"), 0.002, 30)
    assert fair["p"] > 0.05 and abs(fair["gain"]) < 0.004


def test_the_simulated_fleet_drifts_linearly_over_the_session():
    assert sim_options("sim:12xH100+4xH200@drift=-0.004@over=4") == {"drift": -0.004, "over": 4.0}
    for bad in ("sim:4@drift=x", "sim:4@speed=2", "sim:4@over=0"):
        with pytest.raises(ConfigError):
            sim_options(bad)
    from fleetlab.experiment import RunSpec

    clock = VirtualClock()
    ex = SimExecutor("sim:1@drift=-0.5@over=2", Quadratic(dims=1, sigma=0.0), clock, setup_s=0.0)
    w = ex.workers()[0]
    values = []
    for i in range(3):  # runs started at 0 h, 1 h and 2 h of the session
        spec = RunSpec(f"exp-{i}", ".", "python train.py", {}, 0.0, files={"train.py": "X0 = 0.0\n"})
        handle = ex.submit(spec, w)
        clock.advance(60.0)
        (up,) = ex.poll([handle])
        values.append(float(next(x for x in up.lines if x.startswith("val_bpb")).split()[-1]))
        clock.advance(3600.0 - 60.0)
    assert values[1] - values[0] == pytest.approx(-0.25, abs=1e-5)
    assert values[2] - values[0] == pytest.approx(-0.5, abs=1e-5)
    assert ex.truth("exp-2") == ex.truth("exp-0")  # the truth does not drift: only what runs measure


def test_drift_warnings_say_when_throughput_moved_beyond_its_noise():
    rng = random.Random(5)
    exps = []
    for i in range(8):
        steps = 20 + rng.gauss(0, 1) if i < 4 else 45 + rng.gauss(0, 1)  # load during the first half, then none
        e = Experiment(format_id(i + 1), "t", "b", State.DONE, role="baseline" if i == 0 else "control",
                       content_hash="base", metric=2.5 - 0.005 * steps, hardware="cpu", started_at=i * 600.0,
                       finished_at=i * 600.0 + 30, extras={"num_steps": steps})
        exps.append(e)
    warn = drift_warnings(exps, "minimize", baseline_id="exp-0001", incumbent_id="exp-0001")
    assert any(w.startswith("throughput drifted") and "steps" in w and "%" in w for w in warn), warn
    assert any(w.startswith("metric drifted") and "better" in w for w in warn), warn
    steady = [e.evolve(extras={"num_steps": 30 + rng.gauss(0, 1)}, metric=2.4 + rng.gauss(0, 0.01)) for e in exps]
    assert drift_warnings(steady, "minimize", baseline_id="exp-0001") == []


def test_a_step_in_throughput_is_seen_where_a_line_misses_it_and_noise_is_not():
    """The drift_real "before" session: two baseline runs under load (31, 34 steps), then the load stopped (49, 49,
    47, 47). A line through six such points leaves residuals as large as the move; the two-level fit sees the step.
    Steady series of the same length and noise warn rarely (the split is chosen after looking: its threshold pays
    for that)."""
    def arm(steps, metrics):
        return [Experiment(format_id(i + 1), "t", "b", State.DONE, role="baseline" if i < 3 else "control",
                           content_hash="base", metric=m, hardware="cpu", started_at=t, finished_at=t + 30,
                           extras={"num_steps": n})
                for i, (t, n, m) in enumerate(zip((0, 0, 28, 160, 211, 213), steps, metrics))]

    from fleetlab.analysis.drift import _slope

    steps = [31, 34, 49, 49, 47, 47]
    exps = arm(steps, [2.715, 2.679, 2.527, 2.520, 2.547, 2.548])
    b, se, _ = _slope([(e.started_at, e.extras["num_steps"]) for e in exps])
    assert abs(b * 213) < 2.5 * se * 213  # the line alone does not call it
    warn = drift_warnings(exps, "minimize", baseline_id="exp-0001")
    assert any(w.startswith("throughput drifted") and "in a step" in w for w in warn), warn
    assert any(w.startswith("metric drifted") and "better" in w for w in warn), warn
    rng = random.Random(11)
    alarms = sum(bool(drift_warnings(arm([40 + rng.gauss(0, 1.5) for _ in range(6)],
                                         [2.55 + rng.gauss(0, 0.02) for _ in range(6)]), "minimize",
                                     baseline_id="exp-0001"))
                 for _ in range(200))
    assert alarms <= 10, alarms  # two tests (metric, throughput) at about 1 % each, plus the line's


def test_a_control_every_n_screens_follows_drift_nothing_else_reveals():
    """The machine slows down after the baseline: every screen looks worse, none is promoted, so no validation
    asks for controls. A control after `control_every` screens still re-measures the incumbent; once the trend is
    seen, the screen takes its reference to the run's time and a real improvement is promoted again."""
    rng = random.Random(6)
    s = Session()
    s.rule = s.keep_rule = ValidityKeepRule(control_every=4)
    baseline(s, rng)
    base = next(e for e in s.exps.values() if e.role == "baseline")
    s.inc = base
    slow = 0.05  # the load's cost on the metric, 5σ
    for i in range(4):
        d = s.run("explore", f"null{i}", 1.0 + slow + rng.gauss(0, 0.01), parent=base.id)
        assert d.status == "discard"
    ctl = [p for p in s.props if p.role == "control"]
    assert len(ctl) == 1 and ctl[0].parent == base.id and ctl[0].replicates == 1
    s.props.clear()
    for _ in range(3):  # the control, then two more (one every 4 screens: here asked for directly)
        s.run("control", "base", 1.0 + slow + rng.gauss(0, 0.01), parent=base.id)
    assert s.rule.tl.seen("cpu") is not None
    d = s.run("explore", "better", 1.0 + slow - 0.03 + rng.gauss(0, 0.005), parent=base.id)
    assert d.status == "pending" and "drift-adjusted" in d.numbers["compared"], d.reason
    assert d.numbers["sigma"] < 0.02  # the residual σ around the trend, not the arm's spread across the load step


def test_the_confirmation_pairs_baseline_and_incumbent_once():
    from fleetlab.analysis.confirm import confirmation, confirmed_gain

    rng = random.Random(7)
    s = Session()
    baseline(s, rng)
    base = next(e for e in s.exps.values() if e.role == "baseline")
    s.inc = base
    assert confirmation(s, 3) == []  # the incumbent is the baseline's code: nothing to confirm
    s.inc = s.queue("explore", "kept", parent=base.id)
    props = confirmation(s, 3)
    assert [(p.role, p.parent) for p in props] == [("confirm", base.id), ("confirm", s.inc.id)] * 3
    for p in props:  # run on one worker, in order: a drift of -0.01 a run cancels within each pair
        e = s.queue("confirm", "base" if p.parent == base.id else "kept", parent=p.parent)
        s.exps[e.id] = e.evolve(meta=dict(p.meta))
        s.t += 60
        x = (1.0 if p.parent == base.id else 0.98) - 0.01 * len(s.exps) + rng.gauss(0, 0.001)
        s.exps[e.id] = s.exps[e.id].evolve(state=State.DONE, metric=x, started_at=s.t, worker="w1")
    assert confirmation(s, 3) == []  # confirmed already
    g = confirmed_gain(s.experiments(), base, s.inc, "minimize")
    # each pair's incumbent run comes one run later (0.01 of drift): the paired gain is 0.02 + 0.01, tightly
    assert g["n_pairs"] == 3 and g["abs"] == pytest.approx(0.03, abs=0.005) and g["ci"][1] - g["ci"][0] < 0.02


def test_a_confirmation_run_back_to_back_on_two_workers_pairs_every_run():
    """Confirmations go first, so on two workers they run back to back and a pair's halves start on different
    workers (b1 w0, i1 w1, b2 w1, i2 w0, ...): pairing by worker left two of three pairs; by class, in time order,
    all three."""
    from fleetlab.analysis.confirm import confirmed_gain

    s = Session()
    base = s.queue("baseline", "base")
    inc = s.queue("explore", "kept", parent=base.id)
    for n, (who, worker) in enumerate([(base, "w0"), (inc, "w1"), (base, "w1"), (inc, "w0"), (base, "w0"),
                                       (inc, "w1")]):
        e = s.queue("confirm", "base" if who is base else "kept", parent=who.id)
        x = (1.0 if who is base else 0.97) + 0.001 * (n % 3)
        s.exps[e.id] = e.evolve(state=State.DONE, metric=x, started_at=60.0 * (n // 2), worker=worker, hardware="cpu")
    g = confirmed_gain(s.experiments(), base, inc, "minimize")
    assert g["n_pairs"] == 3 and g["abs"] == pytest.approx(0.03, abs=0.002)


def test_submit_no_prune_and_confirm_refusals(tmp_path):
    """`submit --no-prune` marks its runs for the pruner to leave alone; `fleetlab confirm` refuses in one sentence
    when there is nothing to confirm."""
    from conftest import fleetlab_cmd

    from fleetlab.api import open_project
    from fleetlab.templates import write_template

    root = write_template("mlp", tmp_path / "proj")
    r = fleetlab_cmd("confirm", "-C", str(root))
    assert r.returncode != 0 and "nothing to confirm" in r.stderr and "Traceback" not in r.stderr
    fleetlab_cmd("checkout", "-C", str(root), str(tmp_path / "v"), check=True)
    (tmp_path / "v" / "train.py").write_text((tmp_path / "v" / "train.py").read_text() + "\n# a comment\n")
    r = fleetlab_cmd("submit", "-C", str(root), "--from", str(tmp_path / "v"), "-m", "x", "--no-prune", check=True)
    opened = open_project(root)
    try:
        assert opened.store.get(r.stdout.split()[0]).meta["prune"] is False
    finally:
        opened.close()
    r = fleetlab_cmd("confirm", "-C", str(root), "--pairs", "1")
    assert r.returncode != 0 and "at least 2" in r.stderr


def _confirming_session(tmp_path, fleet: str, hours: float):
    """A planted-improvement session on a simulated fleet that ends with the final confirmation."""
    from test_validity import Planted, Scripted, write_project

    from fleetlab.api import knob_space
    from fleetlab.scheduler import Limits, Scheduler
    from fleetlab.store.sqlite import SQLiteStore

    surface = Planted()
    project = write_project(surface, tmp_path / "p")
    store, clock = SQLiteStore(project.db_path), VirtualClock()
    ex = SimExecutor(fleet, surface, clock, setup_s=0.0)
    sched = Scheduler(project, store, ex, Scripted(1), clock, tag="t", limits=Limits(max_hours=hours),
                      keep_rule=ValidityKeepRule.from_project(project), git=False, export_tsv=False, confirm="end")
    sched.set_space(knob_space(project))
    return sched, store, ex, surface, project


def test_a_session_ends_with_the_paired_confirmation(tmp_path):
    """With `confirm="end"` the loop's last runs are the baseline and the incumbent re-run interleaved, nothing else
    starts meanwhile, and facts' confirmed gain is their paired difference, bracketing the true gain."""
    from fleetlab.analysis.confirm import confirmed_gain
    from fleetlab.facts import compute

    sched, store, ex, surface, project = _confirming_session(tmp_path, "sim:6xH100@drift=-0.004@over=3", 3.0)
    summary = sched.run()
    assert summary.stop_reason.startswith("--max-hours")
    exps = sched.experiments()
    conf = [e for e in exps if e.role == "confirm"]
    inc, base = sched.incumbent(), next(e for e in exps if e.role == "baseline")
    assert len(conf) == 6 and all(e.state is State.DONE for e in conf)
    assert {e.content_hash for e in conf} == {inc.content_hash, base.content_hash}
    first = min(e.started_at for e in conf)
    assert not [e for e in exps if e.role != "confirm" and (e.started_at or 0) >= first]
    cg = compute(project, store, "t").confirmed_gain
    assert cg == confirmed_gain(exps, base, inc) and cg["n_pairs"] == 3
    true_gain = surface.truth({}) - ex.truth(inc.id)
    assert true_gain > 0 and cg["ci"][0] < true_gain < cg["ci"][1]
    store.close()


def test_fleetlab_confirm_runs_the_confirmation_and_nothing_else(tmp_path):
    """`fleetlab confirm` on a finished session: real mlp runs on local:2, baseline and incumbent interleaved, three
    pairs; a variant left queued is not run; the run summary prints the confirmed gain."""
    import time

    from conftest import commit_all, fleetlab_cmd, set_budget

    from fleetlab.api import open_project
    from fleetlab.experiment import Decision
    from fleetlab.templates import write_template

    root = write_template("mlp", tmp_path / "proj")
    set_budget(root, 1)
    commit_all(root)
    r = fleetlab_cmd("run", "-C", str(root), "--fleet", "local:2", "--strategy", "none", "--max-experiments", "3",
                     timeout=240)
    assert r.returncode == 0, r.stderr
    ids = []
    for i, extra in enumerate(("\nHIDDEN = 48\n", "\n# left queued\n")):
        fleetlab_cmd("checkout", "-C", str(root), str(tmp_path / f"v{i}"), check=True)
        train = tmp_path / f"v{i}" / "train.py"
        train.write_text(train.read_text() + extra)
        ids.append(fleetlab_cmd("submit", "-C", str(root), "--from", str(tmp_path / f"v{i}"), "-m", extra.strip(),
                                check=True).stdout.split()[0])
    opened = open_project(root)
    store, now = opened.store, time.time()
    tag = store.sessions()[-1]["tag"]
    # a kept variant, recorded by hand: how a keep is reached is test_validity's business
    store.mark_running(ids[0], "local-0", "cpu", now, {})
    store.finish(ids[0], State.DONE, metric=0.05, finished_at=now + 1)
    store.add_decision(ids[0], Decision("keep", "by hand"), now + 1)
    store.set_incumbent(tag, ids[0], now + 1)
    opened.close()
    r = fleetlab_cmd("confirm", "-C", str(root), "--fleet", "local:2", timeout=240)
    assert r.returncode == 0, r.stderr
    assert "confirmed gain" in r.stdout, r.stdout
    opened = open_project(root)
    try:
        exps = opened.store.experiments(tag=tag)
        conf = [e for e in exps if e.role == "confirm"]
        assert len(conf) == 6 and all(e.state is State.DONE for e in conf)
        assert [e.parent for e in sorted(conf, key=lambda e: e.number)] == ["exp-0001", ids[0]] * 3
        assert opened.store.get(ids[1]).state is State.QUEUED  # not this session's business
    finally:
        opened.close()


def test_on_a_small_fleet_the_confirmation_is_queued_early_enough_to_end_near_the_limit(tmp_path):
    """Three pairs on two workers take three rounds: queued a run length before the limit, they ran two run lengths
    past it. Queued as many run lengths ahead as they take rounds, the session ends within a run length of it."""
    sched, store, *_ = _confirming_session(tmp_path, "sim:2xH100", 2.0)
    sched.run()
    exps = sched.experiments()
    conf = [e for e in exps if e.role == "confirm"]
    assert len(conf) == 6 and all(e.state is State.DONE for e in conf)
    run_s = max(e.runtime_s for e in exps if e.runtime_s)
    over = max(e.finished_at for e in conf) - (sched.ledger.started_at + 2.0 * 3600)
    assert over <= run_s, (over, run_s)
    store.close()


def test_a_validation_run_stopped_with_its_session_is_run_again_not_counted_failed():
    """Ctrl-C while a candidate is validated cancels its runs; on resume the rule is replayed. A cancelled run says
    nothing about the code: it is replaced by one more run, and the verdict waits for R real ones (it used to count
    as failed, and a candidate whose validation runs were all stopped was discarded)."""
    s, rng, base, c = _promoted(7, "C", 0.95)
    val = [p for p in s.props if p.role == "validate"]
    assert len(val) == 1 and val[0].replicates == 3
    runs = [s.queue("validate", "C", parent=c.id) for _ in range(3)]
    s.t += 60
    stopped = runs[0].evolve(state=State.CANCELLED, started_at=s.t - 30, finished_at=s.t,
                             description=val[0].description)
    s.exps[stopped.id] = stopped
    v = s.rule.judge(stopped, s)
    assert v.decision.status == "discard" and v.decision.reason.startswith("no result")  # the run, not the candidate
    again = [p for p in v.proposals if p.role == "validate"]
    assert len(again) == 1 and again[0].replicates == 1 and again[0].parent == c.id
    s.props.extend(v.proposals)
    for e in runs[1:] + [s.queue("validate", "C", parent=c.id)]:
        s.finish(e, 0.95 + rng.gauss(0, 0.01))
    s.run_controls("base", 1.0, rng, base)
    d = dict(s.others)[c.id]
    assert d.status == "keep" and d.numbers["n"] == 3, d.reason
