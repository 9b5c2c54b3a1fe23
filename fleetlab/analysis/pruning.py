"""Early stopping: stop a running experiment once it cannot win.

The rule ("can it still catch up?"), checked at every progress point (elapsed t, metric m) of a running exploration:

1. Reference: the incumbent's final metric on the running experiment's hardware class, as the keep rule will compare
   them (its replicates there, or hardware-normalised), or its own final metric when the keep rule has no per-class
   reference. (Before, a run on an H100 was held against an incumbent figure measured on an H200, ~0.005 better on
   the autoresearch surface for the same config: runs that would have won on their class were stopped.)
2. Catch-up allowance: from the curves of finished runs of the project, how much each improved from time t to its
   end (`curve(t) - final`); the allowance is the `quantile` (default 0.95; 1 = the largest: the most any run has
   caught up from here) of those improvements, plus `slack` times their spread. Curves cross (a high
   learning rate with a long warmdown looks worse early and better late), and this is what makes the rule safe for
   that: the history says how much crossing happens.
3. Prune when even the allowance would not take it past the incumbent: `m - allowance` is worse than the
   incumbent's final metric by more than `margin` (in the metric's units; default: none). With `screen` (the
   default; it needs a keep rule that screens, the research-validity one), the bar is the screen's instead: a
   screening run is promoted only if it beats the incumbent by k·σ (σ of its hardware class, as the keep rule
   measures it), so a run whose best case cannot clear that can only be discarded when it ends; it is stopped now.

4. Only against a fresh reference: the incumbent's code must have run (on the run's class, else anywhere) within
   `fresh` (2) run lengths before the run started. An older figure may come from other conditions: on a laptop whose
   load started since, every run looks worse at the same second, and every run was stopped as unable to beat an
   incumbent measured before the load. The keep rule's controls re-measure the incumbent; until one is in, runs go on.

A run whose strategy needs its final metric whatever it is opts out (`meta["prune"] = False`): `descent`'s designed
waves do. By design most of a wave's runs are worse than its centre; stopping them leaves a fit of the lucky ones, and
no early-curve estimate of their finals is good enough to fit slopes at σ/2 (curves cross: the learning rates and the
warmdown the wave varies change a curve's shape; from the point it was stopped at, a design run's final was off by
~6σ root-mean-square, whether taken at the pruner's bound, at the history's median catch-up from its curve, or at the
incumbent's final plus the gap between their curves).
Measured (13xH100+3xH200, seeds 10-29, 2.5 h): with design runs pruned, median best at 2 h 0.97858; with them opted
out 0.97650; without pruning at all 0.97626.

Defaults (quantile 0.95, screen on) measured with `fleetlab bench --prune` on the `autoresearch` surface, 8 h, 5
seeds, against no pruning: `auto` runs 4 % more experiments per hour (186.8 against 178.7 on 13xH100+3xH200: most of
its runs after the screening phase are designed measurements or validations, which are not stopped); `random` saves
about two thirds of its GPU-hours per experiment.

On by default for `fleetlab run` (`[prune] enabled`; `--no-prune` for one session); `fleetlab bench` only with
`--prune`. It stays silent until `min_history` finished curves exist, before `min_fraction` of the time budget (learning-rate
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

from fleetlab.analysis import _base
from fleetlab.analysis._base import Prune
from fleetlab.experiment import Experiment, State

__all__ = ["Pruner", "Prune", "make_pruner"]


def _interp(curve: list[tuple[float, float]], t: float) -> float:
    """The curve's metric at time t (linear between points, flat beyond its ends)."""
    if t <= curve[0][0]:
        return curve[0][1]
    for (t0, m0), (t1, m1) in zip(curve, curve[1:]):
        if t <= t1:
            return m0 if t1 == t0 else m0 + (m1 - m0) * (t - t0) / (t1 - t0)
    return curve[-1][1]


class Pruner(_base.Pruner):
    def __init__(self, goal: str = "minimize", time_budget_s: float = 300.0, *, min_fraction: float = 0.2,
                 max_fraction: float = 0.9, min_history: int = 5, slack: float = 0.5, margin: float = 0.0,
                 history: int = 300, grid: int = 60, quantile: float = 0.95, screen: bool = True,
                 recent: int = 30, fresh: float = 2.0):
        self.goal, self.budget = goal, float(time_budget_s)
        self.min_fraction, self.max_fraction = min_fraction, max_fraction
        self.min_history, self.slack, self.margin = min_history, slack, margin
        self.history, self.grid = history, grid
        self.quantile = float(quantile)
        self.screen = bool(screen)
        self._open = 0                      # index of the oldest experiment not yet final
        self._folded: set[str] = set()
        self._rows: list[list[float]] = []  # finished curves minus their final metric, on the grid (score units)
        self._matrix = None
        self.recent = int(recent)
        self._by_class: dict[str, list[list[float]]] = {}  # class -> its `recent` last finished curves (as _rows)
        self.fresh = float(fresh)
        # (code, class or None for any) -> its last finished run's (start, length)
        self._last: dict[tuple[str, str | None], tuple[float, float]] = {}
        self._base_hash: str | None = None
        self._base_scan = 0
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
        if e.started_at is not None and e.finished_at is not None:
            for key in ((e.content_hash or e.id, e.hardware or "unknown"), (e.content_hash or e.id, None)):
                if e.started_at >= self._last.get(key, (float("-inf"), 0.0))[0]:
                    self._last[key] = (e.started_at, e.finished_at - e.started_at)
        curve = view.curve(e.id)
        if len(curve) < 2:
            return
        final = self._score(e.metric)
        row = [self._score(_interp(curve, t)) - final for t in self._times()]
        self._rows.append(row)
        if len(self._rows) > self.history:
            self._rows = self._rows[-self.history:]
        recent = self._by_class.setdefault(e.hardware or "unknown", [])
        recent.append(row)
        if len(recent) > self.recent:
            del recent[0]
        self._matrix = None

    def allowance(self, t: float, hardware: str | None = None) -> float | None:
        """How much a run at time t may still improve (None: not enough history). From the `recent` finished runs
        on the run's own class when there are `min_history` of them (they ran under the conditions it runs under),
        else from every class's history."""
        import numpy as np

        rows = self._by_class.get(hardware or "unknown", [])
        if len(rows) >= self.min_history:
            matrix = np.array(rows)
        elif len(self._rows) >= self.min_history:
            if self._matrix is None:
                self._matrix = np.array(self._rows)
            matrix = self._matrix
        else:
            return None
        i = min(self.grid - 1, max(0, int(round(t / self.budget * self.grid)) - 1))
        col = matrix[:, i]
        top = col.max() if self.quantile >= 1.0 else np.quantile(col, self.quantile)
        return float(top + self.slack * col.std())

    def should_prune(self, exp: Experiment, curve: list[tuple[float, float]], view: Any) -> Prune | None:
        if not curve or exp.role != "explore" or exp.meta.get("prune") is False or self._protected(exp, view):
            return None
        t, m = curve[-1]
        if t < self.min_fraction * self.budget or t > self.max_fraction * self.budget:
            return None
        inc = view.incumbent()
        if inc is None or inc.id == exp.id or inc.metric is None:
            return None
        self.checks += 1
        self._update(view)
        if not self._fresh(exp, inc):
            return None
        allow = self.allowance(t, exp.hardware)
        if allow is None:
            return None
        best_case = self._score(m) - max(0.0, allow)
        inc_mean, bar = self._reference(exp, inc, view)
        target = self._score(inc_mean if inc_mean is not None else inc.metric) + self.margin - bar
        if best_case <= target:
            return None
        self.pruned += 1
        inc_curve = view.curve(inc.id)
        at = f", incumbent {_interp(inc_curve, t):.6g} at the same time" if inc_curve else ""
        ref = (f"{inc_mean:.6g}, its mean on {exp.hardware}" if inc_mean is not None and exp.hardware
               else f"{inc.metric:.6g}")
        beat = f"beat {inc.id} ({ref})" + (f" by the screen's {bar:.4g}" if bar else "")
        return Prune(f"at {t:.0f}s metric {m:.6g}{at}; no finished run improved more than {allow:.4g} from there, "
                     f"so it cannot {beat}", bound=self._score(best_case))

    def _fresh(self, exp: Experiment, inc: Experiment) -> bool:
        """Was the incumbent measured on this run's class within `fresh` run lengths before the run started? Its
        reference is then what the run would be compared with; an older one may have been made under other
        conditions (a laptop whose load started since makes every run look worse at the same second, and every
        run was stopped as unable to beat an incumbent measured before the load)."""
        code = inc.content_hash or inc.id
        # its runs on this class; where it never ran here (compared hardware-normalised), its runs anywhere
        last = self._last.get((code, exp.hardware or "unknown")) or self._last.get((code, None))
        if last is None or exp.started_at is None:
            return False
        started, length = last
        return exp.started_at - started <= (1.0 + self.fresh) * max(length, 1e-9)

    def _protected(self, exp: Experiment, view: Any) -> bool:
        """A run of the incumbent's or the baseline's code is a measurement of the reference itself: never stopped
        (an exact copy of the baseline was pruned as unable to beat itself)."""
        inc = view.incumbent()
        exps = view.experiments()
        while self._base_hash is None and self._base_scan < len(exps):  # the first baseline, found once
            e = exps[self._base_scan]
            self._base_scan += 1
            if e.role == "baseline":
                self._base_hash = e.content_hash or e.id
        h = exp.content_hash or exp.id
        return h == self._base_hash or (inc is not None and h == (inc.content_hash or inc.id))

    def _reference(self, exp: Experiment, inc: Experiment, view: Any) -> tuple[float | None, float]:
        """(the incumbent's mean on this run's hardware class as the keep rule will compare them, or None when the
        rule has no per-class reference; the screen's bar k·σ on that class, or 0 without `screen`). A run on an H100
        is judged against the incumbent's H100 runs, not its H200 one: the H200 is ~0.005 better for the same config,
        and comparing across classes stopped runs that would have won on their own class."""
        rule = view.keep_rule
        hw = exp.hardware or "unknown"
        ref = rule.reference(inc, hw) if rule is not None else None
        mean = ref[0].mean if ref is not None else None
        if not self.screen or rule is None or not rule.k_sigma:
            return mean, 0.0
        sigma = rule.sigma(hw) or rule.sigma()
        return mean, (float(rule.k_sigma) * float(sigma) if sigma else 0.0)


def make_pruner(project: Any) -> Pruner:
    """The project's pruner: its goal and time budget, options from fleetlab.toml's `[prune]`."""
    section = project.section("prune")
    keys = ("min_fraction", "max_fraction", "min_history", "slack", "margin", "quantile", "screen", "recent", "fresh")
    return Pruner(project.goal, project.time_budget_s, **{k: section[k] for k in keys if k in section})
