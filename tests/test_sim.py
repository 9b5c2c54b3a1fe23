"""The simulated fleet's own invariants: virtual time adds up, setup once per worker, timeouts, crashes, cancels."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from fleetlab.bench.autoresearch import STARTUP_S
from fleetlab.bench.surfaces import NoisyBowl, Quadratic, load_surface
from fleetlab.clock import VirtualClock
from fleetlab.errors import ConfigError, ExecutorError
from fleetlab.fleet._base import RunSpec
from fleetlab.fleet.sim import SimExecutor, parse_sim_spec


def spec(exp_id: str, source: str, seed: int = 0, timeout_s: float = 600.0) -> RunSpec:
    return RunSpec(exp_id, Path("."), "python train.py", {}, timeout_s, files={"train.py": source}, seed=seed)


def bowl_source(lr: float, wd: float = 0.1, width: int = 256, act: str = "relu2") -> str:
    return f'LR = {lr}  # learning rate\nWD = {wd}\nWIDTH = {width}\nACT = "{act}"\n'


def drive(ex: SimExecutor, clock: VirtualClock, sources, until: float, rng=None):
    """A minimal scheduler: keep every worker busy until `until`; returns {id: finished Update}."""
    free = {w.id: w for w in ex.workers()}
    running, done, n = {}, {}, 0
    while True:
        for u in ex.poll(list(running.values())):
            if u.finished:
                h = running.pop(u.experiment_id)
                done[u.experiment_id] = u
                free[h.worker_id] = next(w for w in ex.workers() if w.id == h.worker_id)
        for wid in list(free):
            if clock.now() >= until:
                break
            n += 1
            h = ex.submit(spec(f"exp-{n:04d}", sources(n), seed=n), free.pop(wid))
            running[h.experiment_id] = h
        if not running and clock.now() >= until:
            return done
        t = ex.next_event_at()
        if t is None:
            return done
        clock.wait(t)


# -- fleet specs ----------------------------------------------------------------------------------------------------------


def test_fleet_specs():
    hw = {"H100": 1.0, "H200": 1.08}
    assert parse_sim_spec("sim:13xH100+3xH200", hw) == [("H100", 13), ("H200", 3)]
    assert parse_sim_spec("sim:256xH100", hw) == [("H100", 256)]
    assert parse_sim_spec("sim:4", hw) == [("H100", 4)]
    assert parse_sim_spec("sim:2xh200 + 1xH200", hw) == [("H200", 3)]


@pytest.mark.parametrize("bad", ["sim:", "sim:xH100", "sim:4xTPU", "sim:0xH100", "sim:4xH100+", "sim:four"])
def test_bad_fleet_specs_give_one_sentence(bad):
    with pytest.raises(ConfigError) as info:
        parse_sim_spec(bad, {"H100": 1.0, "H200": 1.08})
    assert "sim:" in str(info.value) and "\n" not in str(info.value)


def test_workers_ids_hardware_and_prices():
    ex = SimExecutor("sim:13xH100+3xH200", load_surface("autoresearch"), VirtualClock())
    ws = ex.workers()
    assert len(ws) == 16 and ws[2].id == "sim-H100-03" and ws[-1].id == "sim-H200-03"
    assert {w.hardware: w.price_per_hour for w in ws} == {"H100": 2.0, "H200": 2.3}
    assert ex.fastest == "H200" and ex.name == "sim" and {"virtual_clock", "early_stop"} <= ex.SUPPORTS
    custom = SimExecutor("sim:2xH100", load_surface("autoresearch"), VirtualClock(), prices={"H100": 3.5})
    assert custom.workers()[0].price_per_hour == 3.5
    assert SimExecutor("sim:4", Quadratic(), VirtualClock()).workers()[0].hardware == "cpu"


# -- virtual time ---------------------------------------------------------------------------------------------------------


def test_virtual_time_adds_up_on_a_busy_fleet():
    clock = VirtualClock()
    ex = SimExecutor("sim:5xH100+2xH200", NoisyBowl(), clock, setup_s=60.0)
    rng = random.Random(1)
    done = drive(ex, clock, lambda n: bowl_source(rng.choice([0.001, 0.01, 0.03, 0.08])), until=4 * 3600)
    elapsed = clock.now()
    assert len(done) > 7 * 40
    total = 0.0
    for w in ex.workers():
        runs = ex.worker_runs(w.id)
        assert runs[0][0] == pytest.approx(60.0)  # setup paid once, before the first run ...
        for (s1, e1, _), (s2, e2, _) in zip(runs, runs[1:]):
            assert e1 <= s2 == pytest.approx(e1)  # ... never again, and runs never overlap
        busy = sum(e - s for s, e, _ in runs)
        assert busy <= elapsed
        total += busy
    assert ex.setup_paid_s == 7 * 60.0
    assert ex.busy_seconds() == pytest.approx(total)
    assert 0.9 < ex.utilization() <= 1.0
    # H200 runs are shorter (speed 283/263), crashes (LR 0.08) end after 20 s with exit code 1
    crashes = [u for u in done.values() if u.exit_code == 1]
    assert crashes and all(u.finished_at - u.started_at == pytest.approx(20.0) for u in crashes)
    assert all("Traceback" in u.lines[0] for u in crashes)


def test_finished_output_and_truth():
    clock = VirtualClock()
    ex = SimExecutor("sim:1xH100+1xH200", NoisyBowl(sigma=0.002), clock)
    w100, w200 = ex.workers()
    h = ex.submit(spec("exp-0001", bowl_source(0.01), seed=5), w100)
    assert ex.poll([h]) == []
    assert ex.next_event_at() == pytest.approx(60 + 300)
    clock.wait(ex.next_event_at())
    (u,) = ex.poll([h])
    assert u.finished and u.exit_code == 0 and not u.timed_out
    metric = float(next(line for line in u.lines if line.startswith("val_bpb:")).split()[1])
    assert metric == pytest.approx(NoisyBowl().optimum + 0.005, abs=0.01)
    assert ex.truth("exp-0001") == pytest.approx(NoisyBowl().optimum)  # on the fleet's fastest class, no noise
    assert "val_bpb" in ex.logs(h) and ex.poll([h]) == []  # reported finished once
    assert ex.reattach("exp-0001", h.data) is None
    assert ex.config("exp-0001")["LR"] == 0.01


def test_timeout_ends_the_run_at_timeout_s():
    clock = VirtualClock()
    ex = SimExecutor("sim:1", Quadratic(seconds=900.0), clock, setup_s=0.0)
    h = ex.submit(spec("exp-0001", "X0 = 0.1\nX1 = 0.2\n", timeout_s=600.0), ex.workers()[0])
    clock.wait(ex.next_event_at())
    (u,) = ex.poll([h])
    assert clock.now() == 600.0 and u.finished and u.timed_out and u.exit_code != 0
    assert not any(line.startswith("val_bpb") for line in u.lines)
    assert ex.busy_seconds() == 600.0


def test_cancel_charges_only_up_to_now():
    clock = VirtualClock()
    ex = SimExecutor("sim:1xH100", load_surface("autoresearch"), clock, setup_s=60.0)
    w = ex.workers()[0]
    h = ex.submit(spec("exp-0001", "MATRIX_LR = 0.05\n", seed=1), w)
    clock.wait(160.0)
    ex.cancel(h)
    assert ex.next_event_at() == 160.0
    (u,) = ex.poll([h])
    assert u.finished and u.exit_code == -15 and u.finished_at == 160.0
    assert ex.busy_seconds() == pytest.approx(100.0)
    h2 = ex.submit(spec("exp-0002", "MATRIX_LR = 0.05\n", seed=2), w)  # the worker is free again, no second setup
    assert h2.data["start"] == 160.0


def test_progress_lines_arrive_when_their_time_has_come():
    clock = VirtualClock()
    ex = SimExecutor("sim:1xH100", load_surface("autoresearch"), clock, setup_s=0.0, wake_on_progress=True)
    h = ex.submit(spec("exp-0001", "TOTAL_BATCH_SIZE = 2**18\n", seed=1), ex.workers()[0])
    seen = []
    while (t := ex.next_event_at()) is not None:
        clock.wait(t)
        for u in ex.poll([h]):
            seen.append((clock.now(), u))
    progress = [(t, u) for t, u in seen if not u.finished]
    assert len(progress) == 9 and progress[0][0] == pytest.approx(STARTUP_S + 30)
    first = progress[0][1].lines[0]
    assert first.startswith("fleetlab: step=") and "elapsed=30.0" in first
    assert int(first.split("step=")[1].split()[0]) == pytest.approx(1449 * 30 / 300, abs=1)
    final = seen[-1][1]
    assert final.finished and any(line.startswith("num_steps:") for line in final.lines)


def test_progress_lines_without_waking_arrive_with_the_next_poll():
    clock = VirtualClock()
    ex = SimExecutor("sim:1xH100", load_surface("autoresearch"), clock, setup_s=0.0)
    h = ex.submit(spec("exp-0001", "", seed=1), ex.workers()[0])
    assert ex.next_event_at() == pytest.approx(STARTUP_S + 300 + 8.0)  # start-up, the budget, evaluation
    clock.wait(100.0)
    (u,) = ex.poll([h])
    assert not u.finished and len(u.lines) == 2  # elapsed 30 and 60 s of training have passed (after start-up)


def test_busy_worker_and_unparsable_file():
    clock = VirtualClock()
    ex = SimExecutor("sim:1", NoisyBowl(), clock, setup_s=0.0)
    w = ex.workers()[0]
    ex.submit(spec("exp-0001", bowl_source(0.01)), w)
    with pytest.raises(ExecutorError):
        ex.submit(spec("exp-0002", bowl_source(0.01)), w)
    clock.wait(ex.next_event_at())
    ex.poll([])
    ex2 = SimExecutor("sim:1", NoisyBowl(), VirtualClock(), setup_s=0.0)
    h = ex2.submit(spec("exp-0003", "LR = (\n"), ex2.workers()[0])
    ex2.clock.wait(ex2.next_event_at())
    (u,) = ex2.poll([h])
    assert u.exit_code == 1 and "SyntaxError" in u.lines[-1]


def test_unknown_hardware_for_the_surface():
    with pytest.raises(ConfigError, match="H100"):
        SimExecutor("sim:2xH100", Quadratic(), VirtualClock())


def test_many_workers_are_fast():
    import time

    clock = VirtualClock()
    ex = SimExecutor("sim:256xH100", load_surface("autoresearch"), clock)
    rng = random.Random(0)
    t = time.perf_counter()
    done = drive(ex, clock, lambda n: f"MATRIX_LR = {rng.uniform(0.02, 0.08):.4f}\n", until=2 * 3600)
    assert len(done) > 256 * 20
    assert time.perf_counter() - t < 20  # ~1-2 s on a laptop core


def test_unknown_handle_is_an_infrastructure_failure():
    from fleetlab.fleet._base import Handle

    for progress in (True, False):
        clock = VirtualClock()
        ex = SimExecutor("sim:1", Quadratic(), clock, progress=progress)
        h = ex.submit(spec("exp-0001", "X0 = 0.1\n"), ex.workers()[0])
        clock.wait(ex.next_event_at())
        (u1, u2) = ex.poll([h, Handle("exp-9999", "sim-cpu-01")])
        assert u1.finished and u1.exit_code == 0
        assert u2.finished and u2.infra_failure
