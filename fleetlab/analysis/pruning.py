"""Early stopping: stop a running experiment once it cannot win.

The rule ("can it still catch up?"), checked at every progress point (elapsed t, metric m) of a running exploration:

1. Reference: the incumbent's final metric, and its own curve at the same elapsed time when it has one.
2. Catch-up allowance: from the curves of finished runs of the project, how much each improved from time t to its
   end (`curve(t) - final`); the allowance is the largest such improvement (the most any run has caught up from
   here), plus `slack` times their spread. Curves cross (a high learning rate with a long warmdown looks worse early
   and better late), and this is what makes the rule safe for that: the history says how much crossing happens.
3. Prune when even the allowance would not take it past the incumbent: `m - allowance` is worse than the
   incumbent's final metric by more than `margin` (in the metric's units; default: none).

It stays silent until `min_history` finished curves exist, before `min_fraction` of the time budget (learning-rate
warm-up and compile time make early points meaningless), after `max_fraction` of it (almost nothing left to save),
and for every role but `explore` (baselines, replicates and validation runs must finish). The median and successive-
halving rules of Optuna's pruners were considered: they compare trials of one study at equal *steps*, and our runs are
equal in *time*, not steps (a bigger batch takes fewer, slower steps), and they know nothing of curves crossing; the
rule above is the median rule's idea on the time axis with a data-driven margin.

Finished curves are resampled once onto a grid of `grid` points over the time budget, so a check costs one column
lookup whatever the history length (the last `history` finished curves are kept).
"""

from __future__ import annotations

from typing import Any

from fleetlab.experiment import Experiment, State

__all__ = ["Pruner", "make_pruner"]


def _interp(curve: list[tuple[float, float]], t: float) -> float:
    """The curve's metric at time t (linear between points, flat beyond its ends)."""
    if t <= curve[0][0]:
        return curve[0][1]
    for (t0, m0), (t1, m1) in zip(curve, curve[1:]):
        if t <= t1:
            return m0 if t1 == t0 else m0 + (m1 - m0) * (t - t0) / (t1 - t0)
    return curve[-1][1]


class Pruner:
    def __init__(self, goal: str = "minimize", time_budget_s: float = 300.0, *, min_fraction: float = 0.2,
                 max_fraction: float = 0.9, min_history: int = 5, slack: float = 0.5, margin: float = 0.0,
                 history: int = 300, grid: int = 60):
        self.goal, self.budget = goal, float(time_budget_s)
        self.min_fraction, self.max_fraction = min_fraction, max_fraction
        self.min_history, self.slack, self.margin = min_history, slack, margin
        self.history, self.grid = history, grid
        self._open = 0                      # index of the oldest experiment not yet final
        self._folded: set[str] = set()
        self._rows: list[list[float]] = []  # finished curves minus their final metric, on the grid (score units)
        self._matrix = None
        self.checks = 0
        self.pruned = 0

    def _score(self, m: float) -> float:
        return m if self.goal == "minimize" else -m

    def _times(self) -> list[float]:
        return [self.budget * (i + 1) / self.grid for i in range(self.grid)]

    def _update(self, view: Any) -> None:
        """Fold in runs that finished since the last check (scanning from the oldest one still open)."""
        exps = view.experiments()
        i = self._open
        while i < len(exps) and exps[i].state.is_final:
            self._fold(exps[i], view)
            i += 1
        self._open = i
        for e in exps[i:]:
            if e.state.is_final:
                self._fold(e, view)

    def _fold(self, e: Experiment, view: Any) -> None:
        if e.id in self._folded or e.state is not State.DONE or e.metric is None:
            return
        self._folded.add(e.id)
        curve = view.curve(e.id)
        if len(curve) < 2:
            return
        final = self._score(e.metric)
        self._rows.append([self._score(_interp(curve, t)) - final for t in self._times()])
        if len(self._rows) > self.history:
            self._rows = self._rows[-self.history:]
        self._matrix = None

    def allowance(self, t: float) -> float | None:
        """How much a run at time t may still improve, from the history (None: not enough history)."""
        if len(self._rows) < self.min_history:
            return None
        import numpy as np

        if self._matrix is None:
            self._matrix = np.array(self._rows)
        i = min(self.grid - 1, max(0, int(round(t / self.budget * self.grid)) - 1))
        col = self._matrix[:, i]
        return float(col.max() + self.slack * col.std())

    def should_prune(self, exp: Experiment, curve: list[tuple[float, float]], view: Any) -> str | None:
        if not curve or exp.role != "explore":
            return None
        t, m = curve[-1]
        if t < self.min_fraction * self.budget or t > self.max_fraction * self.budget:
            return None
        inc = view.incumbent()
        if inc is None or inc.id == exp.id or inc.metric is None:
            return None
        self.checks += 1
        self._update(view)
        allow = self.allowance(t)
        if allow is None:
            return None
        best_case = self._score(m) - max(0.0, allow)
        target = self._score(inc.metric) + self.margin
        if best_case <= target:
            return None
        self.pruned += 1
        ref = view.curve(inc.id)
        at = f", incumbent {_interp(ref, t):.6g} at the same time" if len(ref) >= 1 else ""
        return (f"at {t:.0f}s metric {m:.6g}{at}; no finished run improved more than {allow:.4g} from there, "
                f"so it cannot beat {inc.id} ({inc.metric:.6g})")


def make_pruner(project: Any) -> Pruner:
    """The project's pruner: its goal and time budget, options from fleetlab.toml `[prune]` when that section exists."""
    opts: dict[str, Any] = {}
    try:
        section = project.section("prune")
        opts = {k: section[k] for k in ("min_fraction", "max_fraction", "min_history", "slack", "margin")
                if k in section and section[k] is not None}
    except Exception:  # noqa: BLE001 - no [prune] section in this version of the config schema
        opts = {}
    return Pruner(project.goal, project.time_budget_s, **opts)
