"""Drift: how the measuring conditions move over a session, and comparisons made under the same conditions.

The model. A run of variant v on hardware class h started at time t measures

    y = μ_v + e_h + β_h·t + ε,     ε ~ N(0, σ_h²)

where β_h is a common linear trend on the class (a machine whose load changes, thermal throttling, a noisy
neighbour). β_h is estimated *within* arms of identical code (same content hash: the baseline's and incumbent's
re-runs, controls, validation runs), so differences between variants never leak into it: the pooled within-arm
regression slope Σ C_ty / Σ C_tt, with residual σ² = (Σ C_yy − β Σ C_ty) / (df − 1). Everything is kept
incrementally (bivariate Welford per arm), so the keep rule asks after every run at O(1).

A comparison of candidate runs C with incumbent runs I on one class is then

    gain = (ȳ_I − ȳ_C) − β (t̄_I − t̄_C),   Var = σ² (1/n_C + 1/n_I) + (t̄_I − t̄_C)² σ² / Σ C_tt

(signs for minimisation). The keep rule also chooses I close in time to C (controls interleaved with the validation
runs), so that Δt̄ ≈ 0 and the comparison holds whatever the drift's shape; the trend only mops up what is left.

Throughput (the `num_steps` / `steps` a run prints) is *not* a covariate between variants: a change that makes
training faster earns its extra steps under a fixed time budget. It is used within an arm, as the second witness of
drift: `drift_summary` and `drift_warnings` say when the incumbent's or baseline's re-runs moved in metric or in
throughput by more than their noise floor, and by how much.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Iterable

from fleetlab.experiment import Experiment, State

__all__ = ["Timeline", "run_time", "adjusted_gain", "clamp", "drift_summary", "drift_warnings", "throughput"]

DRIFT_ROLES = ("baseline", "replicate", "validate", "control", "confirm")


def run_time(exp: Experiment) -> float | None:
    """When a run measured, in hours since the epoch of its clock: its start (its end when no start is known)."""
    t = exp.started_at if exp.started_at is not None else exp.finished_at
    return None if t is None else float(t) / 3600.0


def throughput(exp: Experiment) -> float | None:
    """The run's steps (`num_steps:` or `steps:`), None when it printed none."""
    for k in ("num_steps", "steps"):
        v = exp.extras.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    return None


class _Arm:
    """Bivariate running moments of (t, y) of one arm on one class."""

    __slots__ = ("n", "mt", "my", "ctt", "cty", "cyy", "runs", "lo", "hi")

    def __init__(self) -> None:
        self.n, self.mt, self.my, self.ctt, self.cty, self.cyy = 0, 0.0, 0.0, 0.0, 0.0, 0.0
        self.runs: list[tuple[float, float]] = []
        self.lo, self.hi = float("inf"), float("-inf")

    def add(self, t: float, y: float) -> None:
        self.n += 1
        dt, dy = t - self.mt, y - self.my
        self.mt += dt / self.n
        self.my += dy / self.n
        self.ctt += dt * (t - self.mt)
        self.cty += dt * (y - self.my)
        self.cyy += dy * (y - self.my)
        self.runs.append((t, y))
        self.lo, self.hi = min(self.lo, t), max(self.hi, t)


class Timeline:
    """Runs of every arm (content hash) on every class, in time, and the pooled within-arm trend per class."""

    def __init__(self) -> None:
        self.arms: dict[str, dict[str, _Arm]] = {}
        self._tot: dict[str, list[float]] = {}  # class -> [Σ C_tt, Σ C_ty, Σ C_yy, Σ (n − 1)]
        self._reach: dict[str, float] = {}  # class -> the longest time one arm's runs there span

    def add(self, key: str, hardware: str, t: float, y: float) -> None:
        a = self.arms.setdefault(key, {}).setdefault(hardware, _Arm())
        tot = self._tot.setdefault(hardware, [0.0, 0.0, 0.0, 0.0])
        before = (a.ctt, a.cty, a.cyy)
        a.add(t, y)
        tot[0] += a.ctt - before[0]
        tot[1] += a.cty - before[1]
        tot[2] += a.cyy - before[2]
        if a.n > 1:
            tot[3] += 1
            self._reach[hardware] = max(self._reach.get(hardware, 0.0), a.hi - a.lo)

    def runs(self, key: str, hardware: str) -> list[tuple[float, float]]:
        a = self.arms.get(key, {}).get(hardware)
        return list(a.runs) if a else []

    def trend(self, hardware: str) -> tuple[float, float, float, int] | None:
        """(β per hour, its standard error, residual σ, residual df) on a class; None until it is estimable."""
        tot = self._tot.get(hardware)
        if not tot or tot[0] <= 1e-12 or tot[3] < 3:
            return None
        ctt, cty, cyy, df = tot
        beta = cty / ctt
        dof = int(df) - 1
        sigma = math.sqrt(max(0.0, cyy - beta * cty) / dof)
        return beta, sigma / math.sqrt(ctt), sigma, dof

    def seen(self, hardware: str, z: float = 2.5) -> float | None:
        """β on the class when it differs from zero by more than z standard errors (more on few degrees of
        freedom: Student's 99.5 % point), else None."""
        tr = self.trend(hardware)
        if tr is None or tr[1] <= 0 or abs(tr[0]) < max(z, _t995(tr[3])) * tr[1]:
            return None
        return tr[0]

    def reach(self, hardware: str) -> float:
        """The longest span of time (hours) one arm's runs cover on the class: how far the trend was seen to hold.
        Shifts are taken over at most this much time (a slope seen within minutes says nothing about an hour)."""
        return self._reach.get(hardware, 0.0)


def _t995(df: int) -> float:
    return _t_crit(0.01, df)


@functools.lru_cache(maxsize=256)
def _t_crit(level: float, df: int) -> float:
    """Student's t beyond which a two-sided test at `level` rejects, on `df` degrees of freedom (cached: facts are
    recomputed on every `status` and dashboard poll)."""
    from scipy import stats

    return float(stats.t.ppf(1 - level / 2, max(1, df)))


def clamp(dt: float, reach: float | None) -> float:
    """A time difference limited to ±reach (None: unlimited)."""
    return dt if reach is None else max(-reach, min(reach, dt))


def adjusted_gain(cand: list[tuple[float, float]], inc: list[tuple[float, float]], goal: str,
                  trend: tuple[float, float, float, int] | None, sigma: float | None, df: int,
                  reach: float | None = None) -> dict[str, Any]:
    """The candidate's gain over the incumbent (positive: better, for either goal), both taken to the same time by
    the class's trend (over at most `reach` hours), with its one-sided test. `cand` and `inc` are (t, y) runs; σ
    and df are the class's noise floor (the trend's residual σ when the trend rests on more degrees of freedom)."""
    from scipy import stats

    n_c, n_i = len(cand), len(inc)
    tc, yc = sum(t for t, _ in cand) / n_c, sum(y for _, y in cand) / n_c
    ti, yi = sum(t for t, _ in inc) / n_i, sum(y for _, y in inc) / n_i
    beta, beta_se = (trend[0], trend[1]) if trend else (0.0, 0.0)
    if trend:  # the residual σ around the trend: drift does not inflate it
        sigma, df = trend[2], trend[3]
    if sigma is None or df < 1:  # no pooled floor: the two samples' own variances (Welch)
        var = 0.0
        for side, m, n in ((cand, yc, n_c), (inc, yi, n_i)):
            if n < 2:
                return {"gain": None}
            var += sum((y - m) ** 2 for _, y in side) / (n - 1) / n
        se, dof = math.sqrt(var), max(1, min(n_c, n_i) - 1)
    else:
        se, dof = sigma * math.sqrt(1.0 / n_c + 1.0 / n_i), df
    dt = clamp(tc - ti, reach)
    shift = beta * dt  # how much the trend alone moves the candidate's mean against the incumbent's
    se = math.sqrt(se * se + (beta_se * dt) ** 2)
    diff = (yi - (yc - shift)) if goal == "minimize" else ((yc - shift) - yi)
    t = diff / se if se > 0 else (math.inf if diff > 0 else -math.inf if diff < 0 else 0.0)
    p = float(stats.t.sf(t, dof)) if se > 0 else (0.0 if diff > 0 else 1.0)
    m2c, m2i = sum((y - yc) ** 2 for _, y in cand), sum((y - yi) ** 2 for _, y in inc)
    return {"gain": diff, "t": t, "p": p, "dof": dof, "mean": yc, "n": n_c, "m2": m2c, "inc_mean": yi, "inc_n": n_i,
            "inc_m2": m2i,
            "dt_h": tc - ti, "trend_per_h": beta, "trend_shift": shift, "se": se}


# == what the surfaces say (facts.py calls these) =====================================================================

def _arm_series(experiments: Iterable[Experiment], key: str) -> dict[str, list[Experiment]]:
    out: dict[str, list[Experiment]] = {}
    for e in experiments:
        if ((e.content_hash or e.id) == key and e.state is State.DONE and e.metric is not None
                and e.role in DRIFT_ROLES + ("explore",) and run_time(e) is not None):
            out.setdefault(e.hardware or "unknown", []).append(e)
    return out


def _slope(points: list[tuple[float, float]]) -> tuple[float, float, float] | None:
    """(slope, its standard error, residual sd) of an ordinary least-squares line; None under 4 points or no spread."""
    n = len(points)
    if n < 4:
        return None
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    ctt = sum((t - mt) ** 2 for t, _ in points)
    if ctt <= 1e-12:
        return None
    cty = sum((t - mt) * (y - my) for t, y in points)
    cyy = sum((y - my) ** 2 for _, y in points)
    b = cty / ctt
    sd = math.sqrt(max(0.0, cyy - b * cty) / (n - 2))
    return b, sd / math.sqrt(ctt), sd


def _step(points: list[tuple[float, float]]) -> tuple[float, float, float, int, float] | None:
    """The strongest split of the time-ordered points into two levels: (later mean − earlier mean, its standard
    error, the pooled within-level sd, the number of candidate splits, the earlier mean); None under 4 points. A
    laptop's load starting or stopping moves throughput in a step, which a straight line fits badly: its residuals
    swallow it."""
    ys = [y for _, y in sorted(points)]
    n = len(ys)
    if n < 4:
        return None
    best = None
    for k in range(2, n - 1):
        a, b = ys[:k], ys[k:]
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        ss = sum((y - ma) ** 2 for y in a) + sum((y - mb) ** 2 for y in b)
        sd = math.sqrt(ss / (n - 2))
        se = sd * math.sqrt(1 / len(a) + 1 / len(b))
        score = abs(mb - ma) / se if se > 0 else (math.inf if mb != ma else 0.0)
        if best is None or score > best[0]:
            best = (score, mb - ma, se, sd, ma)
    return best[1], best[2], best[3], n - 3, best[4]


def _moved(points: list[tuple[float, float]], level: float = 0.01
           ) -> tuple[float, float, float, bool, str, float] | None:
    """(change over the span, its se, noise floor, moved, kind, the level it moved from) of the line or the step
    that explains the points better; None under 4 points. Moved: |change| exceeds the noise floor and Student's t
    (n − 2 degrees of freedom: a handful of re-runs) is beyond the two-sided `level`; a step, the best of several
    splits, divides `level` among the splits tried. The step is fitted only when the line does not call it."""
    def significant(change: float, se: float, sd: float, crit: float) -> bool:
        return abs(change) > sd and (se == 0 or abs(change) / se > crit)

    df = len(points) - 2
    out = None
    line = _slope(points)
    if line:
        ts = [t for t, _ in points]
        t0, span = min(ts), max(ts) - min(ts)
        mt, my = sum(ts) / len(points), sum(y for _, y in points) / len(points)
        change, se, sd = line[0] * span, line[1] * span, line[2]
        out = (change, se, sd, significant(change, se, sd, _t_crit(level, df)), "trend", my - line[0] * (mt - t0))
        if out[3]:
            return out
    step = _step(points)
    if step:
        change, se, sd, splits, start = step
        moved = significant(change, se, sd, _t_crit(level / splits, df))
        if moved or out is None:
            out = (change, se, sd, moved, "step", start)
    return out


def drift_summary(experiments: list[Experiment], goal: str = "minimize", baseline_id: str | None = None,
                  incumbent_id: str | None = None, level: float = 0.01) -> dict[str, Any]:
    """Trends of the baseline's and the incumbent's re-runs, per hardware class, in metric and in throughput.

    Returns {"arms": [{"arm": "baseline"|"incumbent", "id", "hardware", "runs", "hours", "metric": {change, se,
    noise, moved, kind, worse}, "throughput": {change, pct, se, noise, moved, kind} | None}]}: `change` is the move
    over the runs' time span, of a fitted line (kind "trend") or of a step between two levels (kind "step": a load
    that started or stopped), `noise` the residual sd (the noise floor), `moved` when |change| exceeds the noise
    floor and is significant (see `_moved`)."""
    by_id = {e.id: e for e in experiments}
    if baseline_id is None:
        base = next((e for e in experiments if e.role == "baseline"), None)
        baseline_id = base.id if base else None
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for label, exp_id in (("baseline", baseline_id), ("incumbent", incumbent_id)):
        exp = by_id.get(exp_id) if exp_id else None
        if exp is None:
            continue
        key = exp.content_hash or exp.id
        if key in seen:
            continue
        seen.add(key)
        for hw, runs in sorted(_arm_series(experiments, key).items()):
            ts = [run_time(e) for e in runs]
            row: dict[str, Any] = {"arm": label, "id": exp.id, "hardware": hw, "runs": len(runs),
                                   "hours": (max(ts) - min(ts)) if ts else 0.0, "metric": None, "throughput": None}
            fit = _moved([(t, float(e.metric)) for t, e in zip(ts, runs)], level)
            if fit:
                change, se, noise, moved, kind, _ = fit
                row["metric"] = {"change": change, "se": se, "noise": noise, "moved": moved, "kind": kind,
                                 "worse": (change > 0) == (goal == "minimize")}
            steps = [(t, throughput(e)) for t, e in zip(ts, runs)]
            steps = [(t, float(s)) for t, s in steps if s is not None]
            fit = _moved(steps, level)
            if fit:
                change, se, noise, moved, kind, start = fit
                mean = sum(s for _, s in steps) / len(steps)
                row["throughput"] = {"change": change, "pct": 100.0 * change / start if start else None, "se": se,
                                     "noise": noise, "moved": moved, "kind": kind, "mean": mean, "from": start}
            rows.append(row)
    return {"arms": rows}


def drift_warnings(experiments: list[Experiment], goal: str = "minimize", baseline_id: str | None = None,
                   incumbent_id: str | None = None) -> list[str]:
    """Sentences for `status`, `analyze`, the report and the run summary: throughput or metric of the same code
    moved over the session by more than the noise floor."""
    out = []
    for row in drift_summary(experiments, goal, baseline_id, incumbent_id)["arms"]:
        who = f"the {row['arm']} {row['id']}'s {row['runs']} runs on {row['hardware']}"
        tp = row["throughput"]
        if tp and tp["moved"]:
            pct = f" ({tp['pct']:+.0f} %)" if tp["pct"] is not None else ""
            how = " in a step" if tp.get("kind") == "step" else ""
            out.append(f"throughput drifted: {who} moved by {tp['change']:+.4g} steps{pct}{how} over "
                       f"{row['hours']:.2g} h, beyond the noise floor of {tp['noise']:.3g}; the keep rule "
                       "compares runs close in time")
        m = row["metric"]
        if m and m["moved"]:
            how = " in a step" if m.get("kind") == "step" else ""
            out.append(f"metric drifted: {who} moved by {m['change']:+.4g} ({'worse' if m['worse'] else 'better'})"
                       f"{how} over {row['hours']:.2g} h with unchanged code, beyond the noise floor of "
                       f"{m['noise']:.3g}")
    return out
