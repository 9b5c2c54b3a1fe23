"""Hardware effects and tiers: how much a hardware class shifts the metric, and which class validates.

The same config scores differently on different classes (an H200 does ~9 % more steps in a fixed time budget, so it
scores ~0.005 lower val_bpb). The effect of each class is estimated from configs that ran on several classes (the
keep rule spreads the incumbent's replicates across classes on purpose) with a fixed-effects model,
`metric ~ C(variant) + C(hardware)`, fitted by OLS (statsmodels); an effect is reported relative to the slowest class.
`offsets()` is the cheap incremental version the keep rule uses after every run: the precision-weighted mean of the
within-variant differences against the reference class (identical to the OLS estimate for two classes).

Tiers: with a mixed fleet the fastest class validates and the others screen, unless fleetlab.toml says otherwise
(`[fleet.tiers] H200 = "validate"`). A homogeneous fleet has one class that does both.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from fleetlab.analysis.noise import UNBIASED_ROLES, Measurements, measurements_from
from fleetlab.experiment import Experiment, State

__all__ = ["offsets", "hardware_effects", "rank_classes", "assign_tiers", "bench_estimates"]


def offsets(meas: Measurements, reference: str) -> dict[str, tuple[float, float]]:
    """hardware -> (additive effect vs `reference`, its weight Σ 1/(1/n_ref + 1/n_hw)) from multi-class variants."""
    sums: dict[str, list[float]] = {}
    for key in meas.multi:
        g = meas.groups[key]
        ref = g.get(reference)
        if ref is None:
            continue
        for hw, s in g.items():
            if hw == reference:
                continue
            w = 1.0 / (1.0 / ref.n + 1.0 / s.n)
            acc = sums.setdefault(hw, [0.0, 0.0])
            acc[0] += w * (s.mean - ref.mean)
            acc[1] += w
    out = {reference: (0.0, math.inf)}
    for hw, (sw, w) in sums.items():
        out[hw] = (sw / w, w)
    return out


def rank_classes(workers: Iterable[Any] = (), experiments: Iterable[Experiment] = ()) -> list[str]:
    """Hardware classes from slowest to fastest.

    Evidence in order: the workers' declared relative speed; the mean number of steps runs reported per class (a
    fixed time budget turns speed into steps); shorter run times; the price per hour; the name.
    """
    speed: dict[str, float] = {}
    price: dict[str, float] = {}
    for w in workers:
        speed[w.hardware] = max(speed.get(w.hardware, 0.0), float(getattr(w, "speed", 1.0) or 1.0))
        price[w.hardware] = max(price.get(w.hardware, 0.0), float(getattr(w, "price_per_hour", 0.0) or 0.0))
    steps: dict[str, list[float]] = {}
    runtime: dict[str, list[float]] = {}
    seen: set[str] = set()
    for e in experiments:
        if e.state is not State.DONE or not e.hardware:
            continue
        seen.add(e.hardware)
        for k, v in e.extras.items():
            if "step" in k and isinstance(v, (int, float)):
                steps.setdefault(e.hardware, []).append(float(v))
                break
        if e.runtime_s:
            runtime.setdefault(e.hardware, []).append(e.runtime_s)
    classes = sorted(set(speed) | seen)

    def mean(d: dict[str, list[float]], hw: str) -> float:
        v = d.get(hw)
        return sum(v) / len(v) if v else 0.0

    def key(hw: str) -> tuple:
        has_steps = all(h in steps for h in classes)
        has_rt = all(h in runtime for h in classes)
        return (speed.get(hw, 1.0), mean(steps, hw) if has_steps else 0.0, -mean(runtime, hw) if has_rt else 0.0,
                price.get(hw, 0.0), hw)

    return sorted(classes, key=key)


def assign_tiers(workers: Iterable[Any], configured: dict[str, str] | None = None) -> dict[str, str]:
    """hardware -> tier. Configured tiers win; else the fastest class of a mixed fleet validates, the others screen."""
    workers = list(workers)
    classes = rank_classes(workers)
    if configured:
        return {hw: str(configured.get(hw, "screen")) for hw in classes}
    if len(classes) <= 1:
        return {hw: "validate" for hw in classes}
    return {hw: ("validate" if hw == classes[-1] else "screen") for hw in classes}


def hardware_effects(experiments: list[Experiment], reference: str | None = None,
                     workers: Iterable[Any] = ()) -> dict[str, Any]:
    """Effect of each class relative to `reference` (default: the slowest), OLS with one fixed effect per variant.

    Returns {"reference", "effects": {hw: {effect, se, low, high}}, "variants", "runs", "method"}; effects is empty
    when no variant ran on two classes.
    """
    rows = [(e.content_hash or e.id, e.hardware, float(e.metric)) for e in experiments
            if e.state is State.DONE and e.metric is not None and e.hardware and e.role in UNBIASED_ROLES]
    classes_of: dict[str, set[str]] = {}
    for v, hw, _ in rows:
        classes_of.setdefault(v, set()).add(hw)
    multi = {v for v, c in classes_of.items() if len(c) > 1}
    rows = [r for r in rows if r[0] in multi]
    classes = sorted({hw for _, hw, _ in rows})
    order = [c for c in rank_classes(workers, experiments) if c in classes]
    ref = reference or (order[0] if order else None)
    out: dict[str, Any] = {"reference": ref, "effects": {}, "variants": len(multi), "runs": len(rows), "method": "ols"}
    if ref is None or len(classes) < 2 or len(rows) <= len(multi) + len(classes) - 1:
        if ref is not None and len(classes) >= 2:  # too few runs for residual degrees of freedom: point estimates
            meas = measurements_from(r for r in experiments if (r.content_hash or r.id) in multi)
            out["method"] = "paired means"
            for hw, (eff, _) in offsets(meas, ref).items():
                if hw != ref:
                    out["effects"][hw] = {"effect": eff, "se": None, "low": None, "high": None}
        return out
    import numpy as np
    import statsmodels.api as sm

    variants = sorted(multi)
    vi = {v: i for i, v in enumerate(variants)}
    others = [c for c in classes if c != ref]
    X = np.zeros((len(rows), len(variants) + len(others)))
    y = np.empty(len(rows))
    for i, (v, hw, m) in enumerate(rows):
        X[i, vi[v]] = 1.0
        if hw != ref:
            X[i, len(variants) + others.index(hw)] = 1.0
        y[i] = m
    fit = sm.OLS(y, X).fit()
    ci = fit.conf_int(0.05)
    for j, hw in enumerate(others):
        col = len(variants) + j
        out["effects"][hw] = {"effect": float(fit.params[col]), "se": float(fit.bse[col]),
                              "low": float(ci[col][0]), "high": float(ci[col][1])}
    out["residual_sigma"] = float(math.sqrt(fit.scale))
    return out


def bench_estimates(experiments: list[Experiment], workers: Iterable[Any] = ()) -> dict[str, Any]:
    """What `fleetlab bench` records: `noise_sigma_est` (pooled σ, None when nothing was replicated) and
    `hardware_effects_est` (hardware -> additive effect relative to the slowest class; {} on a one-class fleet)."""
    sigma = measurements_from(experiments).sigma()
    eff = hardware_effects(experiments, workers=workers)
    effects = {hw: round(v["effect"], 6) for hw, v in eff["effects"].items()}
    return {"noise_sigma_est": None if sigma is None else round(sigma, 6), "hardware_effects_est": effects}
