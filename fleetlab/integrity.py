"""What keeps a session's measurements comparable while it runs: the project's own files stay as they were at the
start, and every run measures on the data the session pinned."""

from __future__ import annotations

from typing import Any

from fleetlab import workspace
from fleetlab.experiment import Worker
from fleetlab.fleet._base import Executor
from fleetlab.project import Project
from fleetlab.store._base import Store

__all__ = ["Integrity"]


class Integrity:
    def __init__(self, project: Project, store: Store, executor: Executor, tag: str):
        self.project, self.store, self.executor, self.tag = project, store, executor, tag
        self.own: dict[str, str] = {}  # the project's own files' hashes at session start
        self.data: str | None = None   # the data fingerprint the session's runs measure on

    def start(self) -> None:
        self.own = workspace.own_hashes(self.project)

    def changed_own_file(self) -> str | None:
        """Why the session must stop when one of the project's own files changed since it started, else None."""
        changed = workspace.changed_own_file(self.project, self.own) if self.own else None
        if not changed:
            return None
        return (f"{changed} changed in the project while the session ran, not through fleetlab: "
                f"later runs would measure another {changed} than the runs they are compared with")

    def other_data(self, worker: Worker, printed: Any) -> tuple[str | None, str | None]:
        """(why the worker leaves the fleet, why the run fails), each None when all is well.

        A worker's data fingerprint is what its setup printed (`fleetlab: data=...`, Executor.data_fingerprint). The
        first a session sees is pinned (kept with the session, so a resumed session checks against it): every metric
        it compares must come from the same data and tokenizer, which a worker that prepared its own (another Python's
        standard library as the offline corpus, another download) would silently break. A run may print the
        fingerprint too but never decides it: a run printing another one fails alone, its worker stays."""
        setup = self.executor.data_fingerprint(worker.id)
        if self.data is None:
            self.data = (self.store.session(self.tag) or {}).get("data_fingerprint") or setup
            if self.data is not None:
                self.store.save_session(self.tag, data_fingerprint=self.data)
        if setup is not None and setup != self.data:
            return (f"{worker.id} measured on other data (its setup's fingerprint is {setup}, this session's is "
                    f"{self.data}), so its results cannot be compared: run the project's setup (the same data "
                    f"source) on it again"), None
        expected = setup or self.data
        if printed is not None and expected is not None and str(printed) != expected:
            return None, f"the run printed the data fingerprint {printed}, but its worker's setup prepared {expected}"
        return None, None
