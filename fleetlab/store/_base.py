"""The Store interface: the single source of truth of a project's research.

Rules every store follows (tests/test_store.py runs the same suite on each):
- Every write is one transaction; a killed orchestrator leaves a consistent database.
- Finished experiments never change: updating one raises StoreError. Decisions about an experiment (keep/discard,
  validation numbers) are appended as separate records, the latest one wins.
- Ids are allocated by the store (`exp-0001`, ...), unique across sessions of the project.
- The queue lives in the store: `fleetlab submit` from another process adds a queued experiment that the running
  scheduler picks up.
"""

from __future__ import annotations

import abc
from typing import Any, Iterable

from fleetlab.experiment import Decision, Experiment, State


class Store(abc.ABC):
    @abc.abstractmethod
    def add_experiment(self, exp: Experiment) -> Experiment:
        """Insert a queued experiment; the store assigns `id` (the given one is ignored) and returns the record."""

    @abc.abstractmethod
    def get(self, exp_id: str) -> Experiment:
        """One experiment; StoreError if unknown."""

    @abc.abstractmethod
    def experiments(self, tag: str | None = None, states: Iterable[State] | None = None) -> list[Experiment]:
        """Experiments in id order, optionally filtered by session tag and states."""

    @abc.abstractmethod
    def mark_running(self, exp_id: str, worker: str, hardware: str, started_at: float, handle: dict[str, Any],
                     log_path: str | None = None) -> None: ...

    @abc.abstractmethod
    def finish(self, exp_id: str, state: State, *, metric: float | None = None, extras: dict | None = None,
               exit_code: int | None = None, finished_at: float, log_tail: str = "",
               meta: dict | None = None) -> Experiment:
        """Move a queued/running experiment to a final state. Raises StoreError if it is already final."""

    @abc.abstractmethod
    def requeue(self, exp_id: str, reason: str) -> None:
        """Put a running experiment back in the queue (infrastructure failure, dead orchestrator)."""

    @abc.abstractmethod
    def add_decision(self, exp_id: str, decision: Decision, at: float) -> None: ...

    @abc.abstractmethod
    def decisions(self) -> dict[str, Decision]:
        """The latest decision per experiment id."""

    @abc.abstractmethod
    def set_incumbent(self, tag: str, exp_id: str, at: float) -> None: ...

    @abc.abstractmethod
    def incumbent(self, tag: str) -> str | None: ...

    @abc.abstractmethod
    def put_blob(self, content: str) -> str:
        """Store file content; returns its hash."""

    @abc.abstractmethod
    def get_blob(self, h: str) -> str: ...

    @abc.abstractmethod
    def add_observation(self, exp_id: str, step: int, metric: float, elapsed: float) -> None: ...

    @abc.abstractmethod
    def observations(self, exp_id: str) -> list[tuple[int, float, float]]: ...

    @abc.abstractmethod
    def add_note(self, author: str, text: str, at: float, exp_id: str | None = None) -> int: ...

    @abc.abstractmethod
    def notes(self, limit: int | None = None) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def session(self, tag: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def sessions(self) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def save_session(self, tag: str, **fields: Any) -> None:
        """Create or update a session record (status, stop_reason, started_at, accounting...)."""

    def close(self) -> None:
        pass
