"""The contracts of the session's judges: keep rule, pruner and stop rule, and the read-only view they (and the
strategies) are given.

Every judgement is a return value; the loop applies it and writes the record:
- `KeepRule.judge(exp, view) -> Verdict`: the decision about `exp`, the decisions reached at the same time about
  *other* experiments (a candidate's validation verdict lands when its last validation run ends), and the follow-up
  runs the rule asks for (validation runs, combinations). `followups(view)` asks for runs that are not tied to one
  result (an incumbent's replicates once it changed); decisions it reaches come back with the next verdict.
- `Pruner.should_prune(exp, curve, view) -> Prune | None`: the reason a running experiment is stopped and the bound
  (the best final metric it could still have reached: a censored measurement other parts of the loop fit).
- `StopRule.should_stop(view, accounting) -> str | None`: the sentence that ends the session.

No judge writes the store or holds the scheduler: the `SessionView` is all they read.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from fleetlab.experiment import Decision, Experiment, Proposal, Worker

if TYPE_CHECKING:
    from fleetlab.analysis.noise import Stat

__all__ = ["SessionView", "Verdict", "KeepRule", "Prune", "Pruner", "StopRule"]


class SessionView(Protocol):
    """What a keep rule, pruner, stop rule or strategy may read of the running session. Read-only."""

    goal: str                       # "minimize" | "maximize"
    keep_rule: "KeepRule | None"    # for its noise estimates (sigma, reference, estimate); never to judge

    @property
    def workers_now(self) -> list[Worker]:
        """The session's workers now (the list object is replaced whenever the fleet changes)."""

    def get(self, exp_id: str) -> Experiment:
        """One experiment of the project, as the session knows it now."""

    def incumbent(self) -> Experiment | None:
        """The session's incumbent (None before the baseline is kept)."""

    def experiments(self) -> list[Experiment]:
        """Every experiment of the project in id order, any state (do not modify the list)."""

    def curve(self, exp_id: str) -> list[tuple[float, float]]:
        """Progress points (elapsed seconds, metric) seen for an experiment."""

    def decisions(self) -> dict[str, Decision]:
        """The latest decision per experiment id."""

    def notes(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The project's notepad, oldest first (the last `limit`)."""


@dataclass(frozen=True)
class Verdict:
    """What a keep rule concluded: `decision` about the experiment judged, `others` (experiment id, decision) reached
    about other experiments, `proposals` the follow-up runs it asks for."""

    decision: Decision
    others: tuple[tuple[str, Decision], ...] = ()
    proposals: tuple[Proposal, ...] = ()


class KeepRule(abc.ABC):
    """Decides what becomes the incumbent. The loop calls `judge` once per finished experiment, in the order they
    finish (again, in the same order, when a session resumes: a rule rebuilds its state from the judgements alone),
    and `followups` at every turn.

    The noise hooks below are read by the pruner, the stop rule and strategies; a rule that measures no noise keeps
    the defaults."""

    name = "keep-rule"
    baseline_replicates: int = 1    # runs of the baseline a session starts with
    k_sigma: float = 0.0            # a screening run must beat the incumbent by k_sigma * sigma to be promoted

    @abc.abstractmethod
    def judge(self, exp: Experiment, view: SessionView) -> Verdict:
        """The verdict on a finished experiment (any final state)."""

    def followups(self, view: SessionView) -> list[Proposal]:
        """Runs the rule wants now, not tied to one result. Each is handed out once: the loop queues every one."""
        return []

    def confirmation(self, view: SessionView) -> list[Proposal]:
        """The runs that confirm the session's headline at its end (role "confirm": the baseline's and the
        incumbent's code re-run interleaved, so the gain is a paired figure); none by default."""
        return []

    def tier_of(self, worker: Worker) -> str | None:
        """The tier ("screen" / "validate") a worker without a configured one serves; None: any."""
        return None

    def sigma(self, hardware: str | None = None) -> float | None:
        """The measured noise σ of one run on `hardware` (pooled when None); None: not measured."""
        return None

    def reference(self, exp: Experiment, hardware: str) -> "tuple[Stat, str] | None":
        """The statistics of `exp`'s variant comparable with a run on `hardware`, and how they were made comparable;
        None when the rule keeps no per-class statistics."""
        return None

    def estimate(self, exp: Experiment, hardware: str | None = None) -> float | None:
        """The best estimate of a variant's metric (default: its own run's)."""
        return exp.metric

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


@dataclass(frozen=True)
class Prune:
    """Why a running experiment is stopped, and the best final metric it could still have reached (None: unknown)."""

    reason: str
    bound: float | None = None

    def __str__(self) -> str:
        return self.reason


class Pruner(abc.ABC):
    """Stops running experiments that cannot win. Called at each progress point of a running experiment."""

    @abc.abstractmethod
    def should_prune(self, exp: Experiment, curve: list[tuple[float, float]], view: SessionView) -> Prune | None:
        """A Prune to stop `exp` now, None to let it run. `curve` is its (elapsed, metric) points so far."""


class StopRule(abc.ABC):
    """Ends a session early (diminishing returns, a budget of its own). Called at every turn of the loop."""

    @abc.abstractmethod
    def should_stop(self, view: SessionView, accounting: dict[str, float]) -> str | None:
        """The sentence that ends the session, or None. `accounting` holds elapsed_s, busy_s, available_s,
        gpu_hours, busy_gpu_hours and cost_usd since the session started."""

    def describe(self) -> dict[str, Any]:
        return {}
