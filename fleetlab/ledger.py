"""The run ledger: the one owner of an experiment's state transitions, and the session's memory of the records.

Every transition goes through one method here, writes the store in one order, and leaves the ledger's copy of the
record equal to the stored one:

    add / adopt     -> queued              (a proposal, or a submission from another process)
    start           queued -> running      recorded *before* the launch: a crash in between re-queues, never runs twice
    launched        running (+ handle)     what a restarted orchestrator re-attaches to
    requeue         running -> queued      the infrastructure failed, the run was gone after a restart
    finish          queued/running -> final, with its decision (and an incumbent change) in one transaction

The ledger also keeps the books the loop needs for its limits (worker-seconds held and busy, dollars), checkpointed
with the session record. The figures surfaces show come from `fleetlab.facts`, not from here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable

from fleetlab.analysis._base import KeepRule, Verdict
from fleetlab.experiment import Decision, Experiment, Role, State, Worker
from fleetlab.store._base import Store

__all__ = ["Ledger", "LedgerView", "Running", "StoreView", "Summary", "pause_point"]


@dataclass
class Summary:
    """How a session ended, for its caller (surfaces show `fleetlab.facts`, not this)."""

    tag: str
    stop_reason: str
    experiments: int
    states: dict[str, int]
    incumbent: str | None
    best_metric: float | None
    baseline_metric: float | None
    elapsed_s: float
    busy_s: float
    available_s: float
    cost_usd: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def utilization(self) -> float:
        return self.busy_s / self.available_s if self.available_s > 0 else 0.0



class Running:
    """A run the loop watches: its record, the executor's handle, the worker, and what it printed so far."""

    __slots__ = ("exp", "handle", "worker", "workdir", "ro_hashes", "lines", "started_at", "prune")

    def __init__(self, exp: Experiment, handle: Any, worker: Worker, workdir: Any, ro_hashes: dict[str, str],
                 started_at: float):
        self.exp, self.handle, self.worker, self.workdir = exp, handle, worker, workdir
        self.ro_hashes, self.lines, self.started_at = ro_hashes, [], started_at
        self.prune: Any = None  # the pruner's Prune once it was stopped early


class Ledger:
    def __init__(self, store: Store, tag: str):
        self.store, self.tag = store, tag
        self.exps: dict[str, Experiment] = {}
        self.order: list[Experiment] = []       # every experiment of the project, in id order
        self._index: dict[str, int] = {}
        self.last_num = 0
        self.queue: list[Experiment] = []       # this session's queued experiments
        self.running: dict[str, Running] = {}
        self.incumbent: Experiment | None = None
        self.decided: dict[str, Decision] = {}  # the latest decision per experiment id
        self.hashes: dict[str, int] = {}        # content hash -> explorations of it (duplicates are refused)
        self.added = 0                          # experiments of this session (limits count them)
        # the books: worker-seconds held and busy, dollars, since the session started (across restarts)
        self.started_at = 0.0
        self.busy_s = 0.0
        self._available_base = 0.0
        self._cost_base = 0.0
        self._segment_start = 0.0

    # == memory ========================================================================================================
    def load(self) -> None:
        for exp in self.store.experiments():
            self.remember(exp)
        self.decided = self.store.decisions()
        inc = self.store.incumbent(self.tag)
        self.incumbent = self.exps.get(inc) if inc else None
        self.added = sum(1 for e in self.order if e.tag == self.tag)

    def remember(self, exp: Experiment) -> Experiment:
        if exp.id in self._index:
            self.order[self._index[exp.id]] = exp
        else:
            self._index[exp.id] = len(self.order)
            self.order.append(exp)
            self.last_num = max(self.last_num, exp.number)
            if exp.role == Role.EXPLORE:
                self.hashes[exp.content_hash] = self.hashes.get(exp.content_hash, 0) + 1
        self.exps[exp.id] = exp
        return exp

    def get(self, exp_id: str) -> Experiment:
        exp = self.exps.get(exp_id)
        return exp if exp is not None else self.store.get(exp_id)

    def mine(self) -> list[Experiment]:
        return [e for e in self.order if e.tag == self.tag]

    # == transitions ===================================================================================================
    def add(self, exp: Experiment) -> Experiment:
        """A new queued experiment of this session (the store assigns its id)."""
        exp = self.remember(self.store.add_experiment(exp))
        self.queue.append(exp)
        self.added += 1
        return exp

    def adopt(self, exp: Experiment) -> None:
        """A queued experiment another process stored (`fleetlab submit`), now this session's to run."""
        self.remember(exp)
        self.queue.append(exp)
        self.added += 1

    def start(self, exp: Experiment, worker: Worker, workdir: Any, now: float, log_path: str | None) -> Experiment:
        """queued -> running, written before the launch."""
        self.store.mark_running(exp.id, worker.id, worker.hardware, now, {"workdir": str(workdir)}, log_path)
        return self.remember(exp.evolve(state=State.RUNNING, worker=worker.id, hardware=worker.hardware,
                                         started_at=now, handle={"workdir": str(workdir)}, log_path=log_path,
                                         attempts=exp.attempts + 1))

    def launched(self, run: Running) -> None:
        self.store.set_handle(run.exp.id, run.handle.data)
        run.exp = self.remember(run.exp.evolve(handle=run.handle.data))
        self.running[run.exp.id] = run

    def requeue(self, exp_id: str, reason: str, busy_s: float = 0.0) -> Experiment:
        """running -> queued (its worker time, if any, counted as busy)."""
        self.running.pop(exp_id, None)
        self.store.requeue(exp_id, reason)
        cur = self.exps[exp_id]
        exp = self.remember(cur.evolve(state=State.QUEUED, worker=None, hardware=None, started_at=None, handle=None,
                                       meta={**cur.meta, "requeued": [*cur.meta.get("requeued", []), reason]}))
        self.queue.append(exp)
        self.busy_s += max(0.0, busy_s)
        return exp

    def finish(self, exp_id: str, state: State, *, now: float, judge: Callable[[Experiment], Verdict],
               metric: float | None = None, extras: dict[str, Any] | None = None, exit_code: int | None = None,
               started_at: float | None = None, finished_at: float, log_tail: str = "",
               meta: dict[str, Any] | None = None) -> tuple[Experiment, Verdict, Experiment | None]:
        """queued/running -> final. The record is final in memory before `judge` sees it; its final state, its
        decision and the incumbent change the decision makes are then written in one transaction, so no crash leaves
        a finished run without its decision. Returns (record, verdict, the new incumbent or None)."""
        run = self.running.pop(exp_id, None)
        cur = self.exps[exp_id]
        started = started_at if started_at is not None else cur.started_at
        if run is not None:
            self.busy_s += max(0.0, finished_at - (started if started is not None else finished_at))
        exp = self.remember(cur.evolve(state=state, metric=metric, extras=dict(extras or {}), exit_code=exit_code,
                                       started_at=started, finished_at=finished_at, log_tail=log_tail[-4000:],
                                       meta={**cur.meta, **(meta or {})}))
        verdict = judge(exp)
        kept = self.kept_by(exp, verdict.decision)
        with self.store.transaction():
            self.store.finish(exp_id, state, metric=metric, extras=extras, exit_code=exit_code, started_at=started,
                              finished_at=finished_at, log_tail=log_tail, meta=meta)
            pause_point("decision")
            self.decide(exp_id, verdict.decision, now)
            if kept is not None:
                self.set_incumbent(kept, now)
        return exp, verdict, kept

    def decide(self, exp_id: str, decision: Decision, now: float) -> None:
        self.store.add_decision(exp_id, decision, now)
        self.decided[exp_id] = decision

    def settle_pending(self, reason: str, now: float) -> list[str]:
        """Discard, saying why, the candidates of a session that ended (not interrupted) while they still awaited
        their validation: no session resumes it on its own, so they would stay pending forever."""
        ids = [e.id for e in self.mine() if (d := self.decided.get(e.id)) is not None and d.status == "pending"]
        with self.store.transaction():
            for exp_id in ids:
                self.decide(exp_id, Decision("discard", f"not validated: the session ended first ({reason})",
                                             self.decided[exp_id].numbers), now)
        return ids

    def set_incumbent(self, exp: Experiment, now: float) -> bool:
        """Record a new incumbent; False when it already is."""
        if self.incumbent is not None and self.incumbent.id == exp.id:
            return False
        self.incumbent = exp
        self.store.set_incumbent(self.tag, exp.id, now)
        return True

    def kept_by(self, exp: Experiment, decision: Decision) -> Experiment | None:
        """The experiment a keep decision makes the incumbent (a rule may keep another one, e.g. a re-based merge)."""
        if decision.status != "keep":
            return None
        target = (decision.numbers or {}).get("incumbent_id")
        return self.get(target) if target else exp

    # == the session and its books =====================================================================================
    def open_session(self, now: float, **fields: Any) -> None:
        """Create the session record (`fields`: what it runs on) or mark it running again, and open its books."""
        session = self.store.session(self.tag)
        if session is None:
            self.store.save_session(self.tag, started_at=now, updated_at=now, status="running", busy_s=0.0,
                                    available_s=0.0, cost_usd=0.0, **fields)
            session = self.store.session(self.tag)
        else:
            self.store.save_session(self.tag, status="running", updated_at=now)
        self.started_at = session["started_at"] if session.get("started_at") is not None else now
        self.busy_s = float(session.get("busy_s", 0.0))
        self._available_base = float(session.get("available_s", 0.0))
        self._cost_base = float(session.get("cost_usd", 0.0))
        self._segment_start = now

    def books(self, now: float, workers: int, price_per_hour: float, busy: bool = True) -> dict[str, float]:
        """Worker-seconds held (busy + idle) and busy, and dollars, since the session started. `busy=False` leaves
        out the running experiments' time so far (the loop checks its limits on every event)."""
        seg = max(0.0, now - self._segment_start)
        available = self._available_base + seg * workers
        cost = self._cost_base + seg * price_per_hour / 3600.0
        b = self.busy_s + (sum(max(0.0, now - r.started_at) for r in self.running.values()) if busy else 0.0)
        return {"elapsed_s": now - self.started_at, "busy_s": b, "available_s": available,
                "gpu_hours": available / 3600.0, "busy_gpu_hours": b / 3600.0, "cost_usd": cost}

    def checkpoint(self, now: float, workers: int, price_per_hour: float, **fields: Any) -> None:
        """Write the books to the session record (a SIGKILLed orchestrator loses only what came after)."""
        acc = self.books(now, workers, price_per_hour)
        self.store.save_session(self.tag, updated_at=now, busy_s=self.busy_s, available_s=acc["available_s"],
                                cost_usd=acc["cost_usd"], **fields)
        self._available_base, self._cost_base, self._segment_start = acc["available_s"], acc["cost_usd"], now


    def summary(self, reason: str, books: dict[str, float]) -> Summary:
        mine = self.mine()
        states: dict[str, int] = {}
        for e in mine:
            states[e.state.value] = states.get(e.state.value, 0) + 1
        base = next((e for e in mine if e.role == Role.BASELINE and e.metric is not None), None)
        inc = self.incumbent
        return Summary(tag=self.tag, stop_reason=reason, experiments=len(mine), states=states,
                       incumbent=inc.id if inc else None, best_metric=inc.metric if inc else None,
                       baseline_metric=base.metric if base else None, elapsed_s=books["elapsed_s"],
                       busy_s=books["busy_s"], available_s=books["available_s"], cost_usd=books["cost_usd"])


class LedgerView:
    """The SessionView the loop hands to keep rules, pruners, stop rules and strategies: reads, never writes."""

    def __init__(self, ledger: Ledger, goal: str, keep_rule: KeepRule | None, workers: Callable[[], list[Worker]],
                 curve: Callable[[str], list[tuple[float, float]]]):
        self._ledger, self.goal, self.keep_rule, self._workers, self._curve = ledger, goal, keep_rule, workers, curve

    @property
    def workers_now(self) -> list[Worker]:
        return self._workers()

    def get(self, exp_id: str) -> Experiment:
        return self._ledger.get(exp_id)

    def incumbent(self) -> Experiment | None:
        return self._ledger.incumbent

    def experiments(self) -> list[Experiment]:
        return self._ledger.order

    def curve(self, exp_id: str) -> list[tuple[float, float]]:
        return self._curve(exp_id)

    def decisions(self) -> dict[str, Decision]:
        return self._ledger.decided

    def notes(self, limit: int | None = None) -> list[dict[str, Any]]:
        return self._ledger.store.notes(limit)


def pause_point(name: str) -> None:
    """Crash-window tests: with FLEETLAB_PAUSE_AT=<name>, the orchestrator announces (FLEETLAB_PAUSE_FILE) that it
    reached this point of the real code path and waits there (FLEETLAB_PAUSE_S seconds) for the test's SIGKILL."""
    if os.environ.get("FLEETLAB_PAUSE_AT") != name:
        return
    marker = os.environ.get("FLEETLAB_PAUSE_FILE")
    if marker:
        Path(marker).write_text(str(os.getpid()))
    time.sleep(float(os.environ.get("FLEETLAB_PAUSE_S", "60")))


class StoreView:
    """A read-only SessionView over a store, for what runs outside a session (a strategy tried by hand, a dry run)."""

    keep_rule = None

    def __init__(self, store: Store, goal: str = "minimize", tag: str | None = None):
        self.store, self.goal, self.tag = store, goal, tag
        self.workers_now: list[Worker] = []

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
