"""Surfaces: the protocol, the loader, and every calibration fact of the built-in `autoresearch` surface."""

from __future__ import annotations

import statistics

import pytest

from fleetlab.bench.autoresearch import BASELINE, PUBLISHED_BEST, AutoresearchSurface
from fleetlab.bench.surfaces import SURFACES, NoisyBowl, Quadratic, load_surface, seeded_gauss
from fleetlab.errors import FleetlabError, UnknownName


@pytest.fixture(scope="module")
def ar() -> AutoresearchSurface:
    return AutoresearchSurface()


def truth(surface, hardware="H100", **changes):
    return surface.evaluate({**BASELINE, **changes}, hardware, None)["metric"]


def best(surface, hardware="H100", **changes):
    return surface.evaluate({**PUBLISHED_BEST, **changes}, hardware, None)["metric"]


# -- calibration: each fact of ORIGINAL_SYSTEM.md -----------------------------------------------------------------------


def test_baseline_is_1_003_on_h100(ar):
    assert truth(ar) == pytest.approx(1.003, abs=0.003)


def test_published_best_is_0_974_on_h200(ar):
    assert best(ar, "H200") == pytest.approx(0.974, abs=0.003)


def test_batch_2_18_beats_2_19_through_more_steps(ar):
    r18 = ar.evaluate({**BASELINE, "TOTAL_BATCH_SIZE": 2**18}, "H100", None)
    r19 = ar.evaluate(BASELINE, "H100", None)
    assert r18["metric"] < r19["metric"]
    assert r18["steps"] > 1.8 * r19["steps"]
    # and 2**17 (which needs a smaller device batch) is worse again
    assert best(ar, TOTAL_BATCH_SIZE=2**17, DEVICE_BATCH_SIZE=64) > best(ar)


def test_aspect_ratio_non_monotonic_with_optimum_at_96(ar):
    values = {a: best(ar, ASPECT_RATIO=a) for a in (48, 64, 80, 96, 112)}
    assert values[96] < values[64] and values[96] < values[112]
    assert min(values, key=values.get) == 96
    steps96 = ar.evaluate(PUBLISHED_BEST, "H100", None)["steps"]
    steps64 = ar.evaluate({**PUBLISHED_BEST, "ASPECT_RATIO": 64}, "H100", None)["steps"]
    assert steps96 == pytest.approx(1060, rel=0.03) and steps64 == pytest.approx(1450, rel=0.03)


def test_muon_beta2_0_98_is_best_and_worth_about_0_001(ar):
    values = {b: best(ar, MUON_BETA2=b) for b in (0.95, 0.98, 0.99)}
    assert min(values, key=values.get) == 0.98
    assert values[0.95] - values[0.98] == pytest.approx(0.001, abs=0.0004)


@pytest.mark.parametrize("config", [BASELINE, PUBLISHED_BEST])
def test_h200_is_about_0_005_lower_for_the_same_config(ar, config):
    h100 = ar.evaluate(config, "H100", None)
    h200 = ar.evaluate(config, "H200", None)
    assert h100["metric"] - h200["metric"] == pytest.approx(0.005, abs=0.0008)
    assert h200["steps"] / h100["steps"] == pytest.approx(283 / 263, rel=0.01)  # through the number of steps


def test_step_times_match_the_published_ones(ar):
    assert ar.physics(PUBLISHED_BEST, "H100")["step_s"] == pytest.approx(0.283, rel=0.02)
    assert ar.physics(PUBLISHED_BEST, "H200")["step_s"] == pytest.approx(0.263, rel=0.02)


def test_final_lr_frac_ranking_flips_between_hardware(ar):
    assert best(ar, "H100", FINAL_LR_FRAC=0.03) < best(ar, "H100", FINAL_LR_FRAC=0.05)
    assert best(ar, "H200", FINAL_LR_FRAC=0.03) > best(ar, "H200", FINAL_LR_FRAC=0.05)


def test_oversized_config_crashes_and_fits_on_a_bigger_gpu(ar):
    huge = ar.evaluate({**BASELINE, "DEPTH": 12, "ASPECT_RATIO": 128}, "H200", 1)
    assert huge["metric"] is None and "out of memory" in huge["error"]
    assert huge["seconds"] < 60
    wide = {**PUBLISHED_BEST, "ASPECT_RATIO": 128}
    assert ar.evaluate(wide, "H100", None)["metric"] is None
    assert ar.evaluate(wide, "H200", None)["metric"] is not None


def test_other_crashes_diverged_lr_and_indivisible_batch(ar):
    nan = ar.evaluate({**BASELINE, "MATRIX_LR": 0.9}, "H100", 0)
    assert nan["metric"] is None and "NaN" in nan["error"]
    bad = ar.evaluate({**BASELINE, "TOTAL_BATCH_SIZE": 2**17}, "H100", 0)  # device batch 128 is 2**18 tokens
    assert bad["metric"] is None and "AssertionError" in bad["error"]
    assert ar.evaluate({**BASELINE, "WINDOW_PATTERN": "SXL"}, "H100", 0)["metric"] is None
    assert ar.evaluate({**BASELINE, "DEPTH": "eight"}, "H100", 0)["metric"] is None


def test_noise_sigma_measured_from_replicates(ar):
    for sigma in (0.0015, 0.004):
        s = AutoresearchSurface(noise_sigma=sigma)
        xs = [s.evaluate(PUBLISHED_BEST, "H100", seed)["metric"] for seed in range(400)]
        assert statistics.mean(xs) == pytest.approx(best(s), abs=4 * sigma / 20)
        assert statistics.stdev(xs) == pytest.approx(sigma, rel=0.12)
    assert ar.evaluate(BASELINE, "H100", 7)["metric"] == ar.evaluate(BASELINE, "H100", 7)["metric"]


def test_seconds_is_the_budget_plus_overhead(ar):
    r = ar.evaluate(BASELINE, "H100", 1)
    assert 300 < r["seconds"] < 340
    assert all(0 < t < 300 for t, _ in r["curve"])


def test_progress_curve_ends_near_the_final_metric(ar):
    r = ar.evaluate(PUBLISHED_BEST, "H100", 3)
    values = [m for _, m in r["curve"]]
    assert values[0] > values[-1] > r["metric"] - 0.01
    assert values[0] - r["metric"] > 0.1


def test_declared_optimum_is_exact_and_a_little_beyond_the_published_best(ar):
    opt = ar.best_config("H200")
    assert ar.evaluate(opt, "H200", None)["metric"] == pytest.approx(ar.optimum, abs=1e-12)
    assert 0 < best(ar, "H200") - ar.optimum < 0.001
    assert opt["ASPECT_RATIO"] == 96 and opt["TOTAL_BATCH_SIZE"] == 2**18 and opt["DEPTH"] == 8
    # no random config nor any one-knob move from the optimum beats it
    import random

    rng = random.Random(0)
    for _ in range(3000):
        c = dict(opt)
        for k in rng.sample(sorted(ar.space), 3):
            dom = ar.space[k]
            c[k] = rng.choice(dom["choices"]) if "choices" in dom else rng.uniform(dom["low"], dom["high"])
        m = ar.evaluate(c, "H200", None)["metric"]
        assert m is None or m >= ar.optimum - 1e-12


def test_evaluate_is_deterministic_per_seed(ar):
    """The same (config, seed) measures the same everywhere (a resumed or re-run benchmark reproduces itself); another
    seed draws other noise. How fast `evaluate` is belongs to the benchmarks, not to an assertion here."""
    configs = [{**BASELINE, "MATRIX_LR": 0.02 + i * 1e-5} for i in range(200)]
    first = [ar.evaluate(c, "H100", i)["metric"] for i, c in enumerate(configs)]
    again = [ar.evaluate(dict(c), "H100", i)["metric"] for i, c in enumerate(configs)]
    other = [ar.evaluate(c, "H100", i + 1)["metric"] for i, c in enumerate(configs)]
    assert first == again
    assert sum(a != b for a, b in zip(first, other)) == len(configs)


# -- small surfaces and the loader ---------------------------------------------------------------------------------------


def test_quadratic_is_deterministic_with_known_optimum():
    q = load_surface("quadratic")
    opt = {f"X{i}": c for i, c in enumerate(q.center)}
    assert q.evaluate(opt, "cpu", 5)["metric"] == q.optimum == 1.0
    assert q.evaluate(q.baseline, "cpu", 1)["metric"] == q.evaluate(q.baseline, "cpu", 2)["metric"] > 1.0


def test_noisy_bowl_has_configurable_sigma_and_known_hardware_offset():
    bowl = load_surface("noisy-bowl?sigma=0.01,h200_offset=-0.02")
    assert isinstance(bowl, NoisyBowl) and bowl.noise_sigma == 0.01
    assert bowl.evaluate(bowl.baseline, "H200", None)["metric"] - bowl.evaluate(bowl.baseline, "H100", None)["metric"] \
        == pytest.approx(-0.02)
    xs = [bowl.evaluate(bowl.baseline, "H100", s)["metric"] for s in range(300)]
    assert statistics.stdev(xs) == pytest.approx(0.01, rel=0.15)
    assert bowl.evaluate({"LR": 0.09}, "H100", 1)["metric"] is None
    assert bowl.evaluate({"LR": 0.01, "WD": 0.1, "WIDTH": 256, "ACT": "relu2"}, "H200", None)["metric"] == \
        pytest.approx(bowl.optimum)
    assert load_surface("noisy-bowl", sigma=0.0).evaluate(bowl.baseline, "H100", 3)["metric"] == \
        pytest.approx(bowl.truth(bowl.baseline))


def test_seeded_noise_is_the_same_in_every_process():
    import subprocess
    import sys

    here = seeded_gauss(42, 7)
    there = subprocess.run([sys.executable, "-c", "from fleetlab.bench.surfaces import seeded_gauss; print(repr(seeded_gauss(42, 7)))"],
                           capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout
    assert float(there) == here


USER_SURFACE = '''
class Line:
    space = {"X": {"low": 0.0, "high": 1.0, "log": False}}
    baseline = {"X": 0.5}
    hardware = {"A10": 1.0}
    optimum = 0.0

    def evaluate(self, config, hardware, seed):
        return {"metric": abs(config["X"] - 0.25), "seconds": 10.0}


def make():
    return Line()
'''


def test_user_surface_loads_from_file(tmp_path):
    path = tmp_path / "mysurf.py"
    path.write_text(USER_SURFACE)
    s = load_surface(f"{path}:make")
    assert s.evaluate({"X": 0.75}, "A10", None)["metric"] == 0.5
    assert s.hardware == {"A10": 1.0}
    with pytest.raises(FleetlabError, match="built-in surfaces only"):
        load_surface(f"{path}:make", sigma=0.1)


@pytest.mark.parametrize("spec, message", [
    ("{dir}/missing.py:make", "does not exist"),
    ("{dir}/mysurf.py:nothere", "no callable"),
    ("{dir}/broken.py:make", "failed to import"),
    ("{dir}/notasurface.py:make", "no dict attribute"),
    ("{dir}/mysurf.py", "no factory"),
    ("noisy-bowl?sigma", "key=value"),
    ("quadratic?nonsense=3", "does not take"),
])
def test_bad_surface_files_give_one_sentence(tmp_path, spec, message):
    (tmp_path / "mysurf.py").write_text(USER_SURFACE)
    (tmp_path / "broken.py").write_text("def make(:\n")
    (tmp_path / "notasurface.py").write_text("def make():\n    return 3\n")
    with pytest.raises(FleetlabError) as info:
        load_surface(spec.format(dir=tmp_path))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unknown_surface_name_lists_the_valid_ones():
    with pytest.raises(UnknownName) as info:
        load_surface("autoresarch")
    assert all(name in str(info.value) for name in SURFACES)


def test_quadratic_class_is_a_surface():
    assert load_surface(Quadratic(dims=3)).optimum == 1.0
