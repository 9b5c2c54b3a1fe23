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
- Strategies never write the store: what they read of the session is `context.view` (read-only), and the notes they
  take come back through `notes()`, which the loop calls right after each `propose` and records.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from fleetlab.analysis._base import SessionView
    from fleetlab.experiment import Experiment, Note, Proposal, Worker
    from fleetlab.knobs import Space
    from fleetlab.proposals import Materializer


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
    extra: dict[str, Any] = field(default_factory=dict)  # what a caller adds: noise floor, main effects, ...
    view: "SessionView | None" = None                    # the session, read-only (None outside a session)
    materializer: "Materializer | None" = None          # builds variants from proposals (to pre-validate them)
    tag: str = ""                                        # the session's tag

    @property
    def pending(self) -> list["Experiment"]:
        return [e for e in self.experiments if not e.state.is_final]

    @property
    def finished(self) -> list["Experiment"]:
        return [e for e in self.experiments if e.state.is_final]


class Strategy(abc.ABC):
    """Base class of every strategy. Subclasses set `name` and implement `propose`; every other hook is optional
    and declared here with its default (the loop calls nothing else)."""

    name: ClassVar[str] = "strategy"
    latency_s: float = 0.0  # simulated design time per `propose` call on a virtual clock
    threaded: bool = False  # True: on the real clock, call `propose` in a background thread (slow strategies)
    lookahead_hint: int = 0  # proposals to keep queued beyond the free workers (runs that end while it thinks)
    keep_rule: str = "auto"  # the keep rule the strategy was designed for (the bench harness reads it)

    @abc.abstractmethod
    def propose(self, context: Context, n: int) -> list["Proposal"]:
        """Up to n proposals to run next."""

    def observe(self, experiment: "Experiment", context: Context) -> None:
        """Told about every finished experiment (any strategy's), once."""

    def rejected(self, proposal: "Proposal", reason: str) -> None:
        """One of its proposals was refused before it ran (a duplicate, an edit that does not apply), and why."""

    def notes(self) -> list["Note"]:
        """Notes taken while proposing since the last call, for the project's notepad (the loop records them)."""
        return []

    @property
    def finished(self) -> bool:
        """True when the strategy has nothing more to propose (e.g. a grid is exhausted)."""
        return False

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}
