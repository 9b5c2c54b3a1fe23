"""The run ledger: the one owner of an experiment's state transitions, and the session's in-memory record of them.
(The read-only `StoreView` for contexts built outside a session lives here too.)"""

from __future__ import annotations

from typing import Any

from fleetlab.experiment import Decision, Experiment
from fleetlab.store._base import Store

__all__ = ["StoreView"]


class StoreView:
    """A read-only SessionView over a store, for what runs outside a session (a strategy tried by hand, a dry run)."""

    keep_rule = None

    def __init__(self, store: Store, goal: str = "minimize", tag: str | None = None):
        self.store, self.goal, self.tag = store, goal, tag
        self.workers_now: list = []

    def get(self, exp_id: str) -> Experiment:
        return self.store.get(exp_id)

    def incumbent(self) -> Experiment | None:
        inc = self.store.incumbent(self.tag) if self.tag else None
        return self.store.get(inc) if inc else None

    def experiments(self) -> list[Experiment]:
        return self.store.experiments()

    def curve(self, exp_id: str) -> list[tuple[float, float]]:
        return [(el, m) for _, m, el in self.store.observations(exp_id)]

    def decisions(self) -> dict[str, Decision]:
        return self.store.decisions()

    def notes(self, limit: int | None = None) -> list[dict[str, Any]]:
        return self.store.notes(limit)
