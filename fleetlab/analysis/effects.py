"""Main effects, two-way interactions and parameter importance from finished experiments (a pure function).

`estimate(experiments, goal, space=None, factors=None, wave=None)` fits, by ordinary least squares (statsmodels),

    metric ~ b0 + sum_i b_i x_i + sum_{i<j} b_ij x_i x_j

over the knobs that vary among the experiments' variants. Each numeric factor is coded to [-1, +1] over the range it
was run at (log scale for a log-range knob, or for positive values spanning more than a factor of 4 when no space is
given), so `effect = 2 b_i` is the change of the metric from its lowest to its highest level, as in a 2-level design.
A categorical factor (strings, or a knob with unordered choices) enters as treatment dummies against its most common
level, one term per other level (`WINDOW_PATTERN=SL`). Variants are folded by content hash (replicates and validation
runs count once, with their mean), only `done` results with a finite metric are used.
Interactions are included while the fit keeps at least 2 residual degrees of freedom (strongest main effects' pairs
first); otherwise main effects only. Importance is each factor's share of the explained sum of squares of a type-II
ANOVA, with every interaction's share split equally between its two factors.

Signs: `effect` is in the metric's own units (positive = the metric goes up); `gain` is the same made goal-aware
(positive = better).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from fleetlab.experiment import Experiment, State

__all__ = ["Effects", "Term", "estimate"]


@dataclass(frozen=True)
class Term:
    name: str               # "MATRIX_LR", "WINDOW_PATTERN=SL", "MATRIX_LR:DEPTH"
    effect: float           # metric change from the low to the high level (2 x coefficient for coded factors)
    stderr: float | None
    p_value: float | None
    gain: float             # effect made goal-aware: positive means "the high level is better"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "effect": self.effect, "stderr": self.stderr, "p_value": self.p_value,
                "gain": self.gain}


@dataclass
class Effects:
    n: int                                        # variants used
    factors: list[str]
    main: list[Term] = field(default_factory=list)
    interactions: list[Term] = field(default_factory=list)
    importance: dict[str, float] = field(default_factory=dict)
    r2: float | None = None
    residual_sd: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "factors": self.factors, "main": [t.to_dict() for t in self.main],
                "interactions": [t.to_dict() for t in self.interactions], "importance": self.importance,
                "r2": self.r2, "residual_sd": self.residual_sd, "note": self.note}


def _fold(experiments: Iterable[Experiment], wave: int | None) -> list[tuple[dict[str, Any], float]]:
    groups: dict[str, tuple[dict[str, Any], list[float]]] = {}
    for e in experiments:
        if e.state is not State.DONE or e.metric is None or not math.isfinite(e.metric):
            continue
        if wave is not None and e.meta.get("wave") != wave:
            continue
        key = e.content_hash or repr(sorted(e.knobs.items()))
        groups.setdefault(key, (dict(e.knobs), []))[1].append(float(e.metric))
    return [(k, sum(v) / len(v)) for k, v in groups.values()]


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def estimate(experiments: Iterable[Experiment], goal: str = "minimize", space: Any = None,
             factors: list[str] | None = None, wave: int | None = None, interactions: bool = True) -> Effects:
    """Main effects, two-way interactions and importance (see the module docstring). Never raises on thin data:
    with fewer than 3 variants, or nothing varying, it returns an empty Effects with a `note`."""
    import numpy as np

    rows = _fold(experiments, wave)
    if len(rows) < 3:
        return Effects(len(rows), [], note="fewer than 3 measured variants")
    names = factors or sorted({k for knobs, _ in rows for k in knobs})
    y = np.array([m for _, m in rows], dtype=float)
    columns: dict[str, np.ndarray] = {}
    owner: dict[str, str] = {}
    varying = []
    for name in names:
        vals = [knobs.get(name) for knobs, _ in rows]
        if any(v is None for v in vals) or len(set(map(repr, vals))) < 2:
            continue
        varying.append(name)
        knob = space.knobs.get(name) if space is not None else None
        categorical = not _numeric(vals) or (knob is not None and knob.choices is not None and not _numeric(
            list(knob.choices)))
        if categorical:
            ref = Counter(map(repr, vals)).most_common(1)[0][0]
            for level in sorted(set(map(repr, vals)) - {ref}):
                col = f"{name}={level.strip(chr(39))}"
                columns[col] = np.array([1.0 if repr(v) == level else 0.0 for v in vals])
                owner[col] = name
            continue
        x = np.array(vals, dtype=float)
        log = (knob is not None and knob.log) if knob is not None else (x.min() > 0 and x.max() / x.min() > 4)
        if log and x.min() > 0:
            x = np.log(x)
        elif knob is not None and knob.log1m and x.max() < 1:
            x = -np.log1p(-x)
        lo, hi = x.min(), x.max()
        columns[name] = 2 * (x - lo) / (hi - lo) - 1
        owner[name] = name
    if not columns:
        return Effects(len(rows), [], note="no knob varies among the measured variants")
    main_cols = list(columns)
    max_params = len(rows) - 2  # keep >= 2 residual degrees of freedom
    if len(main_cols) + 1 > max_params:
        # too many factors for the data: keep those most correlated with the metric
        corr = {c: abs(np.corrcoef(columns[c], y)[0, 1]) if np.std(columns[c]) > 0 and np.std(y) > 0 else 0.0
                for c in main_cols}
        main_cols = sorted(main_cols, key=lambda c: -corr[c])[: max(1, max_params - 1)]
    X_cols = {c: columns[c] for c in main_cols}
    result = _fit(X_cols, y)
    inter_cols: dict[str, np.ndarray] = {}
    if interactions and result is not None:
        ranked = sorted(main_cols, key=lambda c: -abs(result.params[c]))
        room = max_params - 1 - len(main_cols)
        for i, a in enumerate(ranked):
            for b in ranked[i + 1:]:
                if room <= 0 or owner[a] == owner[b]:
                    continue
                col = columns[a] * columns[b]
                if np.std(col) == 0:
                    continue
                inter_cols[f"{a}:{b}"] = col
                room -= 1
        if inter_cols:
            full = _fit({**X_cols, **inter_cols}, y)
            if full is not None:
                result = full
            else:
                inter_cols = {}
    if result is None:
        return Effects(len(rows), varying, note="the least-squares fit failed (collinear factors)")
    sign = -1.0 if goal == "minimize" else 1.0

    def term(col: str, coded: bool) -> Term:
        b = float(result.params[col])
        se = float(result.bse[col]) if math.isfinite(result.bse[col]) else None
        p = float(result.pvalues[col]) if math.isfinite(result.pvalues[col]) else None
        scale = 2.0 if coded else 1.0
        return Term(col, scale * b, None if se is None else scale * se, p, sign * scale * b)

    main = [term(c, owner[c] == c) for c in main_cols]
    inter = [term(c, True) for c in inter_cols]
    importance = _importance(result, X_cols, inter_cols, owner, y)
    resid_sd = float(math.sqrt(result.mse_resid)) if result.df_resid > 0 else None
    return Effects(len(rows), varying, sorted(main, key=lambda t: -abs(t.effect)),
                   sorted(inter, key=lambda t: -abs(t.effect)), importance, float(result.rsquared), resid_sd)


def _fit(cols: dict[str, Any], y):
    import numpy as np
    import pandas as pd
    import statsmodels.api as sm

    X = pd.DataFrame(cols)
    X.insert(0, "const", 1.0)
    if np.linalg.matrix_rank(X.values) < X.shape[1]:
        return None
    return sm.OLS(y, X).fit()


def _importance(result, mains: dict, inters: dict, owner: dict[str, str], y) -> dict[str, float]:
    """Type-II-like shares: the drop in explained sum of squares when one term is removed, split onto factors."""
    cols = {**mains, **inters}
    total = float(result.ess) if result.ess > 0 else 0.0
    if total <= 0:
        return {}
    share: dict[str, float] = {}
    for c in cols:
        rest = {k: v for k, v in cols.items() if k != c}
        sub = _fit(rest, y) if rest else None
        ess = float(sub.ess) if sub is not None else 0.0
        drop = max(0.0, total - ess)
        parts = [owner[p] for p in c.split(":")] if c in inters else [owner[c]]
        for f in parts:
            share[f] = share.get(f, 0.0) + drop / len(parts)
    s = sum(share.values())
    return {f: v / s for f, v in sorted(share.items(), key=lambda t: -t[1])} if s > 0 else {}
