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
from typing import Any, ContextManager, Iterable

from fleetlab.experiment import Decision, Experiment, State


class Store(abc.ABC):
    """Every method the library calls on a store. Callers are typed to this class, never to an implementation."""

    path: str = ""  # where the store lives (":memory:" for a throwaway one)

    # -- transactions ---------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def transaction(self) -> ContextManager[None]:
        """A context in which every write is one transaction, committed at its end (rolled back if it raises); they
        nest. The loop writes a run's final state, its decision and an incumbent change in one; a simulation writes
        a whole turn of the loop in one."""

    # -- experiments ----------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def add_experiment(self, exp: Experiment) -> Experiment:
        """Insert a queued experiment; the store assigns `id` (the given one is ignored) and returns the record."""

    @abc.abstractmethod
    def get(self, exp_id: str) -> Experiment:
        """One experiment; StoreError if unknown."""

    @abc.abstractmethod
    def experiments(self, tag: str | None = None, states: Iterable[State] | None = None,
                    after_num: int = 0) -> list[Experiment]:
        """Experiments in id order, optionally filtered by session tag and states, and numbered above `after_num`."""

    @abc.abstractmethod
    def count(self, tag: str | None = None, states: Iterable[State] | None = None) -> int: ...

    @abc.abstractmethod
    def find_hash(self, content_hash: str) -> list[str]:
        """Ids of the experiments of one variant (same content hash), in id order."""

    @abc.abstractmethod
    def mark_running(self, exp_id: str, worker: str, hardware: str, started_at: float, handle: dict[str, Any],
                     log_path: str | None = None) -> None:
        """queued -> running (attempts + 1). StoreError unless it is queued."""

    @abc.abstractmethod
    def set_handle(self, exp_id: str, handle: dict[str, Any]) -> None:
        """The executor's handle of a running experiment (what a restarted orchestrator re-attaches to)."""

    @abc.abstractmethod
    def finish(self, exp_id: str, state: State, *, metric: float | None = None, extras: dict | None = None,
               exit_code: int | None = None, started_at: float | None = None, finished_at: float,
               log_tail: str = "", meta: dict | None = None) -> None:
        """queued/running -> a final state; `meta` is merged into the stored meta, `log_tail` keeps its last 4000
        characters, `started_at` (when given) is when the run itself started. StoreError if it is already final."""

    @abc.abstractmethod
    def adopt_queued(self, tag: str) -> list[str]:
        """Move every queued experiment of other sessions into session `tag` (a new session runs what an earlier one
        left queued, submissions made between sessions included); their ids, in id order."""

    @abc.abstractmethod
    def requeue(self, exp_id: str, reason: str) -> None:
        """running -> queued (infrastructure failure, dead orchestrator); the reason is appended to meta["requeued"]."""

    # -- decisions and incumbents -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def add_decision(self, exp_id: str, decision: Decision, at: float) -> None: ...

    @abc.abstractmethod
    def decisions(self) -> dict[str, Decision]:
        """The latest decision per experiment id."""

    @abc.abstractmethod
    def decision_history(self, exp_id: str) -> list[Decision]:
        """Every decision about one experiment, oldest first."""

    @abc.abstractmethod
    def set_incumbent(self, tag: str, exp_id: str, at: float) -> None: ...

    @abc.abstractmethod
    def incumbent(self, tag: str) -> str | None:
        """The session's latest incumbent id."""

    @abc.abstractmethod
    def incumbent_history(self, tag: str) -> list[tuple[str, float]]:
        """(experiment id, when) of every incumbent change of the session, oldest first."""

    # -- blobs, observations, notes -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def put_blob(self, content: str) -> str:
        """Store file content; returns its hash."""

    @abc.abstractmethod
    def get_blob(self, h: str) -> str: ...

    @abc.abstractmethod
    def add_observation(self, exp_id: str, step: int, metric: float, elapsed: float) -> None: ...

    @abc.abstractmethod
    def observations(self, exp_id: str) -> list[tuple[int, float, float]]:
        """(step, metric, elapsed) progress points of one experiment, in the order recorded."""

    @abc.abstractmethod
    def add_note(self, author: str, text: str, at: float, exp_id: str | None = None) -> int: ...

    @abc.abstractmethod
    def notes(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The notepad, oldest first (the last `limit`): dicts with id, author, text, at, experiment."""

    # -- sessions ---------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def session(self, tag: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def sessions(self) -> list[dict[str, Any]]:
        """Every session record, oldest first."""

    @abc.abstractmethod
    def save_session(self, tag: str, **fields: Any) -> None:
        """Create or update a session record (status, stop_reason, started_at, accounting...)."""

    @abc.abstractmethod
    def integrity_check(self) -> str:
        """"ok" when the underlying storage is consistent, else what is wrong."""

    def close(self) -> None:
        pass
