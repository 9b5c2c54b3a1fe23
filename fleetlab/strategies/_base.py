"""The Strategy interface: who proposes what to run next (Optuna-like ask/tell).

A strategy is asked for proposals with `propose(context, n)` and told every finished experiment with `observe`.
It never touches an executor. It may be slow (an LLM call): the scheduler asks for the next proposals *before* the
queue runs dry, in a background thread on the real clock, or with a simulated latency (`latency_s`) on a virtual one.

Rules:
- `propose` may return fewer than `n` proposals (or none: "nothing to add now"); returning none while nothing
  is running or queued and `finished` is True ends the session.
- `observe` is called once per finished experiment of the project, including experiments proposed by other
  strategies, submitted by hand, or recorded in earlier sessions (`context.history` holds those at start-up).
- Strategies keep their own state small and rebuildable from the store: a restarted run calls `observe` again.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from fleetlab.experiment import Experiment, Proposal
    from fleetlab.fleet._base import Worker
    from fleetlab.knobs import Space


@dataclass
class Context:
    """What a strategy may look at when proposing. Built fresh by the scheduler for each request."""

    goal: str                              # "minimize" | "maximize"
    metric: str                            # metric name, e.g. "val_bpb"
    incumbent: "Experiment | None"         # the current best kept experiment (None before the baseline finished)
    baseline_knobs: dict[str, Any]         # knob values of the project's editable file as it is
    space: "Space | None"                  # the knob search space (None when the project has no knobs)
    experiments: list["Experiment"] = field(default_factory=list)  # every experiment of the project, any state
    workers: list["Worker"] = field(default_factory=list)
    free_workers: int = 0
    now: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # noise floor, hardware notes, notepad, ...

    @property
    def pending(self) -> list["Experiment"]:
        return [e for e in self.experiments if not e.state.is_final]

    @property
    def finished(self) -> list["Experiment"]:
        return [e for e in self.experiments if e.state.is_final]


class Strategy(abc.ABC):
    """Base class of every strategy. Subclasses set `name` and implement `propose`; `observe` is optional."""

    name: ClassVar[str] = "strategy"
    latency_s: float = 0.0  # simulated design time per `propose` call on a virtual clock
    threaded: bool = False  # True: on the real clock, call `propose` in a background thread (slow strategies)

    @abc.abstractmethod
    def propose(self, context: Context, n: int) -> list["Proposal"]:
        """Up to n proposals to run next."""

    def observe(self, experiment: "Experiment", context: Context) -> None:
        """Told about every finished experiment (any strategy's), once."""

    @property
    def finished(self) -> bool:
        """True when the strategy has nothing more to propose (e.g. a grid is exhausted)."""
        return False

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}
