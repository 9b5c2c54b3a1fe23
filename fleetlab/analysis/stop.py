"""The stop rule: GPU-hours and dollars accounted all along, and a stop when more compute is unlikely to pay.

The research trajectory is the incumbent's metric at each change, against GPU-hours held (busy or idle: the critics
of the original counted it so). Its cumulative gain G(t) over the baseline is fitted with a decaying power law,
G(t) = a·t^b with 0 < b < 1 (log-log least squares over the recent improvements and the plateau reached so far), so
the expected gain per further GPU-hour is G'(t) = b·G(t)/t. It falls as improvements thin out, and it keeps falling
while nothing is found, because the plateau point moves right.

`should_stop(view, accounting)` returns a sentence when G'(t) < `min_gain_per_gpu_hour` (0 turns the rule off), once
there is a trajectory to fit (`min_improvements` validated improvements, and the first improvement at least
`warmup` of the current GPU-hours ago). The scheduler stops and prints it; `--never-stop` leaves the rule out.
"""

from __future__ import annotations

import math
from typing import Any

from fleetlab.analysis import _base

__all__ = ["StopRule", "fit_power_law", "expected_gain_rate"]


def fit_power_law(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """(a, b) of G = a·t^b by least squares on log G = log a + b·log t; None without two usable points."""
    pts = [(math.log(t), math.log(g)) for t, g in points if t > 0 and g > 0]
    if len(pts) < 2:
        return None
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if sxx <= 0:
        return None
    b = sum((x - mx) * (y - my) for x, y in pts) / sxx
    return math.exp(my - b * mx), b


def expected_gain_rate(trajectory: list[tuple[float, float]], now: float, window: int = 8) -> dict[str, Any] | None:
    """Expected gain per GPU-hour at `now` from (gpu_hours, cumulative gain) points of validated improvements.

    The fit uses the last `window` improvements plus the plateau (now, latest gain); b is clipped to [0, 1]
    (returns diminish, never accelerate).
    """
    pts = [(t, g) for t, g in trajectory if g > 0]
    if not pts or now <= 0:
        return None
    g_now = pts[-1][1]
    recent = pts[-window:] + [(now, g_now)]
    fit = fit_power_law(recent)
    if fit is None:
        return None
    a, b = fit
    b = min(1.0, max(0.0, b))
    level = a * now ** b if b > 0 else g_now
    return {"rate": b * level / now, "a": a, "b": b, "gain": g_now, "points": len(recent)}


class StopRule(_base.StopRule):
    """Stops a session in diminishing returns; also keeps the trajectory that reports and benchmarks read."""

    def __init__(self, min_gain_per_gpu_hour: float = 0.0, min_improvements: int = 3, warmup: float = 0.5,
                 window: int = 8, check_every_gpu_hours: float = 0.25):
        self.threshold = float(min_gain_per_gpu_hour or 0.0)
        self.min_improvements = int(min_improvements)
        self.warmup = float(warmup)
        self.window = int(window)
        self.check_every = float(check_every_gpu_hours)
        self.trajectory: list[tuple[float, float]] = []  # (gpu_hours, cumulative gain) at each incumbent change
        self.baseline: float | None = None
        self._inc_id: str | None = None
        self._last_check = -math.inf
        self.last: dict[str, Any] | None = None
        self.reason: str | None = None

    @classmethod
    def from_options(cls, project: Any, min_gain_per_gpu_hour: float | None = None) -> "StopRule":
        value = min_gain_per_gpu_hour
        if value is None:
            value = project.section("stop").get("min_gain_per_gpu_hour") or 0.0
        if value < 0:
            from fleetlab.errors import ConfigError

            raise ConfigError("--min-gain-per-gpu-hour cannot be negative", key="min_gain_per_gpu_hour")
        return cls(min_gain_per_gpu_hour=value)

    def _value(self, view: Any, inc: Any) -> float | None:
        rule = view.keep_rule
        v = rule.estimate(inc) if rule is not None else None
        return float(v) if v is not None else (float(inc.metric) if inc.metric is not None else None)

    def observe(self, view: Any, gpu_hours: float) -> None:
        inc = view.incumbent()
        if inc is None or inc.id == self._inc_id:
            return
        self._inc_id = inc.id
        value = self._value(view, inc)
        if value is None:
            return
        if self.baseline is None:
            self.baseline = value
            return
        goal = view.goal
        gain = (self.baseline - value) if goal == "minimize" else (value - self.baseline)
        best = self.trajectory[-1][1] if self.trajectory else 0.0
        if gain > best:
            self.trajectory.append((gpu_hours, gain))

    def should_stop(self, view: Any, accounting: dict[str, float]) -> str | None:
        t = float(accounting.get("gpu_hours", 0.0))
        self.observe(view, t)
        if self.threshold <= 0 or t - self._last_check < self.check_every:
            return None
        self._last_check = t
        if len(self.trajectory) < self.min_improvements or self.trajectory[0][0] > self.warmup * t:
            return None
        est = expected_gain_rate(self.trajectory, t, self.window)
        self.last = est
        if est is None or est["rate"] >= self.threshold:
            return None
        self.reason = (f"diminishing returns: expected gain {est['rate']:.3g} per GPU-hour < "
                       f"--min-gain-per-gpu-hour {self.threshold:g} (power-law fit G ∝ t^{est['b']:.2f} over "
                       f"{len(self.trajectory)} improvements, {est['gain']:.4g} gained in {t:.1f} GPU-hours, "
                       f"${accounting.get('cost_usd', 0.0):.2f})")
        return self.reason

    def describe(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "trajectory": self.trajectory, "last_fit": self.last,
                "reason": self.reason}
