"""The noise floor: σ per hardware class from replicated runs, with a confidence interval.

Replicates are runs of the same variant (same content hash) on the same hardware class with different seeds. σ² of a
class is the pooled within-variant variance: Σ (within-group sum of squares) / Σ (n_group − 1), which is unbiased
whatever the variants' true metrics are. Its 95 % interval is the χ² interval on those degrees of freedom.

`Measurements` keeps these statistics incrementally (Welford), so the keep rule can ask for σ after every finished
run without rescanning anything; `noise_floor(experiments)` builds the same numbers from a store for reports.
Only unbiased runs count: baselines, replicates and validations. A screening run was kept for a second look because it
looked good, so it is not a fair draw of its variant's noise.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from fleetlab.experiment import Experiment, State

__all__ = ["Stat", "Measurements", "UNBIASED_ROLES", "sigma_interval", "noise_floor", "measurements_from"]

UNBIASED_ROLES = ("baseline", "replicate", "validate", "control", "confirm")


class Stat:
    """Running count, mean and sum of squared deviations (Welford)."""

    __slots__ = ("n", "mean", "m2")

    def __init__(self, n: int = 0, mean: float = 0.0, m2: float = 0.0):
        self.n, self.mean, self.m2 = n, mean, m2

    def add(self, x: float) -> None:
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)

    def merged(self, other: "Stat", shift: float = 0.0) -> "Stat":
        """This and `other` (its values shifted by `shift`) as one sample (Chan et al.)."""
        if other.n == 0:
            return Stat(self.n, self.mean, self.m2)
        if self.n == 0:
            return Stat(other.n, other.mean + shift, other.m2)
        n = self.n + other.n
        d = other.mean + shift - self.mean
        return Stat(n, self.mean + d * other.n / n, self.m2 + other.m2 + d * d * self.n * other.n / n)

    @property
    def var(self) -> float | None:
        return self.m2 / (self.n - 1) if self.n > 1 else None

    def __repr__(self) -> str:
        return f"Stat(n={self.n}, mean={self.mean:.6g}, m2={self.m2:.3g})"


def sigma_interval(m2: float, df: int, conf: float = 0.95) -> tuple[float, float] | None:
    """The χ² confidence interval of σ given the pooled sum of squares and its degrees of freedom."""
    if df < 1:
        return None
    from scipy.stats import chi2

    a = 1.0 - conf
    return math.sqrt(m2 / chi2.ppf(1 - a / 2, df)), math.sqrt(m2 / chi2.ppf(a / 2, df))


class Measurements:
    """Per-variant, per-hardware running statistics and the pooled σ of each hardware class, kept incrementally."""

    def __init__(self) -> None:
        self.groups: dict[str, dict[str, Stat]] = {}  # variant key -> hardware -> Stat
        self._m2: dict[str, float] = {}
        self._df: dict[str, int] = {}
        self.multi: set[str] = set()  # variants measured on more than one class (they carry hardware effects)
        self.version = 0               # bumps whenever a multi-class variant changes (offsets need recomputing)

    def add(self, key: str, hardware: str, value: float) -> None:
        g = self.groups.setdefault(key, {})
        s = g.get(hardware)
        if s is None:
            s = g[hardware] = Stat()
        before = s.m2
        s.add(value)
        self._m2[hardware] = self._m2.get(hardware, 0.0) + s.m2 - before
        if s.n > 1:
            self._df[hardware] = self._df.get(hardware, 0) + 1
        if len(g) > 1:
            self.multi.add(key)
            self.version += 1

    def stat(self, key: str, hardware: str) -> Stat | None:
        g = self.groups.get(key)
        return g.get(hardware) if g else None

    def df(self, hardware: str | None = None) -> int:
        return sum(self._df.values()) if hardware is None else self._df.get(hardware, 0)

    def sigma(self, hardware: str | None = None) -> float | None:
        """σ of one class; the pooled σ of every class when that class has no replicates yet (None: nothing known)."""
        if hardware is not None and self._df.get(hardware, 0) > 0:
            return math.sqrt(max(0.0, self._m2[hardware]) / self._df[hardware])
        df = sum(self._df.values())
        return math.sqrt(max(0.0, sum(self._m2.values())) / df) if df else None

    def sigma_ci(self, hardware: str | None = None, conf: float = 0.95) -> tuple[float, float] | None:
        if hardware is None:
            return sigma_interval(sum(self._m2.values()), sum(self._df.values()), conf)
        return sigma_interval(self._m2.get(hardware, 0.0), self._df.get(hardware, 0), conf)

    def classes(self) -> list[str]:
        return sorted(set(self._m2) | {hw for g in self.groups.values() for hw in g})

    def summary(self, conf: float = 0.95) -> dict[str, Any]:
        """{"by_hardware": {hw: {sigma, low, high, df}}, "pooled": {...}}: what `fleetlab analyze` prints."""
        out: dict[str, Any] = {"by_hardware": {}, "confidence": conf}
        for hw in self.classes():
            df = self._df.get(hw, 0)
            runs = sum(g[hw].n for g in self.groups.values() if hw in g)
            row: dict[str, Any] = {"sigma": None, "low": None, "high": None, "df": df, "runs": runs}
            if df:
                ci = self.sigma_ci(hw, conf)
                row.update(sigma=self.sigma(hw), low=ci[0], high=ci[1])
            out["by_hardware"][hw] = row
        df = self.df()
        pooled: dict[str, Any] = {"sigma": self.sigma(), "df": df, "low": None, "high": None}
        if df:
            ci = self.sigma_ci(None, conf)
            pooled.update(low=ci[0], high=ci[1])
        out["pooled"] = pooled
        return out


def measurements_from(experiments: Iterable[Experiment], roles: tuple[str, ...] = UNBIASED_ROLES) -> Measurements:
    """Measurements of every finished run with a metric, of the given roles, grouped by content hash and hardware."""
    m = Measurements()
    for e in experiments:
        if e.state is State.DONE and e.metric is not None and e.role in roles:
            m.add(e.content_hash or e.id, e.hardware or "unknown", float(e.metric))
    return m


def noise_floor(experiments: Iterable[Experiment], conf: float = 0.95) -> dict[str, Any]:
    """σ per hardware class (and pooled) with its confidence interval, from the replicated runs among `experiments`."""
    return measurements_from(experiments).summary(conf)
