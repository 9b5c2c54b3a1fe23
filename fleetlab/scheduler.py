"""The scheduler: the only place where project, store, fleet, strategy and keep rule are wired together.

An event loop: collect what finished -> decide -> tell the strategy -> dispatch queued experiments onto free workers
-> ask the strategy for more *before* the queue runs dry -> wait for the next event. Only the waiting differs between
the real clock and the virtual clock, so the simulated fleet runs exactly this code.

Runs outlive the orchestrator: a restarted scheduler re-attaches to runs that are still alive and re-queues those
that died, so nothing is lost and nothing runs twice.
"""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time as _time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from fleetlab import workspace
from fleetlab.analysis.keep import KeepRule, SimpleKeepRule
from fleetlab.clock import RealClock
from fleetlab.collect import classify, log_tail, parse_progress
from fleetlab.errors import ExecutorError, FleetlabError, SetupFailed
from fleetlab.experiment import Decision, Experiment, Proposal, State, better
from fleetlab.fleet._base import Executor, Handle, RunSpec, Worker
from fleetlab.placement import WorkerPool
from fleetlab.project import Project
from fleetlab.proposals import Materializer
from fleetlab.store.sqlite import SQLiteStore
from fleetlab.strategies._base import Context, Strategy

@dataclass
class Limits:
    max_experiments: int = 0      # experiments created in this session (0: no limit)
    max_hours: float = 0.0        # wall-clock hours of this session
    max_gpu_hours: float = 0.0    # worker-hours held (busy + idle)
    max_cost: float = 0.0         # dollars of worker time
    target: float | None = None   # stop once the incumbent reaches it


@dataclass
class Summary:
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


def _noop(kind: str, **info: Any) -> None:
    pass


class _Running:
    __slots__ = ("exp", "handle", "worker", "workdir", "ro_hashes", "lines", "started_at")

    def __init__(self, exp, handle, worker, workdir, ro_hashes, started_at):
        self.exp, self.handle, self.worker, self.workdir = exp, handle, worker, workdir
        self.ro_hashes, self.lines, self.started_at = ro_hashes, [], started_at


class Scheduler:
    def __init__(self, project: Project, store: SQLiteStore, executor: Executor, strategy: Strategy, clock=None, *,
                 tag: str, limits: Limits | None = None, keep_rule: KeepRule | None = None, lookahead: int | None = None,
                 pruner: Any = None, on_event: Callable[..., None] | None = None, git: bool = True,
                 export_tsv: bool = True, record_progress: bool = True, seed: int = 0, stop_rule: Any = None):
        self.project, self.store, self.executor, self.strategy = project, store, executor, strategy
        self.clock = clock or RealClock()
        self.tag = tag
        self.limits = limits or Limits()
        self.keep_rule = keep_rule or SimpleKeepRule()
        self.lookahead = project.section("strategy")["lookahead"] if lookahead is None else lookahead
        self.pruner = pruner
        self.stop_rule = stop_rule
        self.emit = on_event or _noop
        self.git = git
        self.export_tsv = export_tsv
        self.record_progress = record_progress
        self.goal = project.goal
        self.materializer = Materializer(project, store)
        self.in_memory = "in_memory" in executor.SUPPORTS
        self._rng = random.Random(f"{tag}:{seed}")
        self._exps: dict[str, Experiment] = {}
        self._order: list[Experiment] = []  # every experiment of the project, in id order (strategy context)
        self._index: dict[str, int] = {}
        self._queue: list[Experiment] = []
        self._data: str | None = None  # the data fingerprint the session's runs measured on (`_other_data`)
        self._own: dict[str, str] = {}  # the project's own files' hashes at session start (`_check_own_files`)
        self._running: dict[str, _Running] = {}
        self.pool = WorkerPool(self.keep_rule.tier_of)
        self._followups: list[Proposal] = []  # runs the keep rule's verdicts asked for, queued with its follow-ups
        self._hashes: dict[str, int] = {}
        self._incumbent: Experiment | None = None
        self._last_num = 0
        self._request: Future | None = None
        self._request_ready_at: float | None = None
        self._request_result: list[Proposal] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._session_count = 0
        self._busy_s = 0.0
        self._available_base = 0.0
        self._segment_start = 0.0
        self._tsv_dirty = False
        self._tsv_written_at = 0.0
        self._stop_reason: str | None = None
        self._draining = False
        self._strategy_done = False
        self._curves: dict[str, list[tuple[float, float]]] = {}
        self._bk: dict[str, Any] | None = None  # knob values of the project's own files
        self._space: Any = None  # the knob search space strategies sample (set_space)
        self._due_at: float | None = None  # virtual clock: the event time the loop last waited for
        self._pulled = 0  # the newest experiment number `_pull_submissions` has read
        self._handles: list[Handle] | None = None  # handles of the running experiments (rebuilt when they change)

    # == view for keep rules / strategies ==========================================================================
    def get(self, exp_id: str) -> Experiment:
        exp = self._exps.get(exp_id)
        return exp if exp is not None else self.store.get(exp_id)

    def incumbent(self) -> Experiment | None:
        return self._incumbent

    def experiments(self) -> list[Experiment]:
        return self._order

    @property
    def workers_now(self) -> list[Worker]:
        return self.pool.workers

    @property
    def _price_per_hour(self) -> float:
        return self.pool.facts().price_per_hour

    # == start-up and resume ========================================================================================
    def _load(self) -> None:
        for exp in self.store.experiments():
            self._remember(exp)
        self._replay_keep_rule()
        inc = self.store.incumbent(self.tag)
        self._incumbent = self._exps.get(inc) if inc else None
        for exp in self._order:
            if exp.state.is_final:
                self.strategy.observe(exp, self._context())

    def _replay_keep_rule(self) -> None:
        """Rebuild the keep rule's state after a restart: judge this session's finished experiments again in the
        order they finished. Nothing is written; follow-ups it asks for were queued by the earlier orchestrator and
        are in the store already. The stored incumbent stays authoritative."""
        done = sorted((e for e in self._order if e.tag == self.tag and e.state.is_final),
                      key=lambda e: (e.finished_at or 0.0, e.number))
        if not done:
            return
        for exp in done:
            verdict = self.keep_rule.judge(exp, self)
            decision = verdict.decision
            if decision.status == "keep":
                target = (decision.numbers or {}).get("incumbent_id")
                self._incumbent = self._exps.get(target, exp) if target else exp
            for exp_id, d in verdict.others:
                if d.status == "keep" and exp_id in self._exps:
                    self._incumbent = self._exps[exp_id]
        self.keep_rule.followups(self)

    def _remember(self, exp: Experiment) -> None:
        if exp.id in self._index:
            self._order[self._index[exp.id]] = exp
        else:
            self._index[exp.id] = len(self._order)
            self._order.append(exp)
            self._last_num = max(self._last_num, exp.number)
            if exp.role == "explore":
                self._hashes[exp.content_hash] = self._hashes.get(exp.content_hash, 0) + 1
        self._exps[exp.id] = exp

    def _resume(self) -> None:
        now = self.clock.now()
        for exp in list(self._order):
            if exp.tag != self.tag or exp.state is not State.RUNNING:
                continue
            handle = self.executor.reattach(exp.id, exp.handle or {}) if exp.handle else None
            worker = next((w for w in self.pool.workers if w.id == exp.worker), None)
            if handle is not None and worker is not None:
                workdir = self.project.runs_dir / exp.id
                ro = (exp.meta.get("readonly_hashes") or {})
                self._running[exp.id] = _Running(exp, handle, worker, workdir, ro, exp.started_at or now)
                self._handles = None
                self.pool.busy.add(worker.id)
                self.emit("reattached", exp=exp)
            else:
                self.store.requeue(exp.id, "its run was gone when the orchestrator restarted")
                self._remember(self.store.get(exp.id))
                self.emit("requeued", exp=exp, reason="run gone after restart")
        self._queue = [e for e in self._order if e.tag == self.tag and e.state is State.QUEUED]

    def _start(self) -> None:
        now = self.clock.now()
        self.pool.workers = list(self.executor.workers())
        if not self.pool.workers:
            raise ExecutorError(f"the {self.executor.name} fleet has no workers")
        self._own = {} if self.in_memory else workspace.own_hashes(self.project)  # checked as runs end
        self._load()
        sess = self.store.session(self.tag)
        if sess is None:
            self.store.save_session(self.tag, started_at=now, updated_at=now, status="running",
                                    executor=self.executor.name, strategy=self.strategy.name, busy_s=0.0,
                                    available_s=0.0, cost_usd=0.0)
            sess = self.store.session(self.tag)
        else:
            self.store.save_session(self.tag, status="running", updated_at=now)
        self._session_started = sess["started_at"] if sess["started_at"] is not None else now
        self._busy_s = float(sess.get("busy_s", 0.0))
        self._available_base = float(sess.get("available_s", 0.0))
        self._cost_base = float(sess.get("cost_usd", 0.0))
        self._segment_start = now
        self._session_count = sum(1 for e in self._order if e.tag == self.tag)
        self._resume()
        if self._incumbent is None and not any(e.tag == self.tag and e.role == "baseline" for e in self._order):
            self._queue_baseline()
        self.emit("started", tag=self.tag, workers=self.pool.workers, resumed=self._session_count > 0)

    def _queue_baseline(self) -> None:
        reps = max(1, int(self.keep_rule.baseline_replicates))
        prop = Proposal(description="baseline", role="baseline", strategy="baseline", replicates=reps)
        self._add(prop, parent=None)

    # == proposals ===================================================================================================
    def context(self) -> Context:
        return self._context()

    def _context(self) -> Context:
        free = len(self.pool.workers) - len(self.pool.busy)
        space = self._space
        return Context(goal=self.goal, metric=self.project.metric, incumbent=self._incumbent,
                       baseline_knobs=self._baseline_knobs(), space=space, experiments=self._order,
                       workers=self.pool.workers, free_workers=free, now=self.clock.now(),
                       view=self, materializer=self.materializer, tag=self.tag)

    def decisions(self):
        return self.store.decisions()

    def notes(self, limit: int | None = None):
        return self.store.notes(limit)

    def _baseline_knobs(self) -> dict[str, Any]:
        if self._bk is None:
            self._bk = self.materializer.read_knobs(self.project.read_editable())
        return self._bk

    def set_space(self, space: Any) -> None:
        self._space = space

    def _default_parent(self) -> Experiment | None:
        if self._incumbent is not None:
            return self._incumbent
        for e in self._order:
            if e.tag == self.tag and e.role == "baseline":
                return e
        return None

    def _add(self, prop: Proposal, parent: Experiment | None | str = "default", variant=None) -> list[Experiment]:
        if parent == "default":
            parent = self.get(prop.parent) if prop.parent else self._default_parent()
        added = []
        for _ in range(max(1, prop.replicates)):
            if self.limits.max_experiments and self._session_count >= self.limits.max_experiments:
                break  # a hard cap: replicates and validations count too
            if variant is None:
                variant = self.materializer.build(prop, parent)  # replicates share one validated variant
            exp = self.materializer.to_experiment(prop, parent, tag=self.tag, seed=self._rng.randrange(2 ** 31),
                                                  now=self.clock.now(), strategy=self.strategy.name, variant=variant)
            exp = self.store.add_experiment(exp)
            self._remember(exp)
            self._queue.append(exp)
            self._session_count += 1
            added.append(exp)
            self.emit("queued", exp=exp)
        return added

    def _accept(self, proposals: list[Proposal]) -> None:
        for prop in proposals:
            try:
                parent = self.get(prop.parent) if prop.parent else self._default_parent()
                variant = self.materializer.build(prop, parent)
                if prop.role == "explore" and self._hashes.get(variant.content_hash):
                    self._reject(prop, "this variant was already tried (same content hash)")
                    continue
                self._add(prop, parent, variant)
            except FleetlabError as e:  # ProposalRejected included: the strategy hears why
                self._reject(prop, str(e))

    def _reject(self, prop: Proposal, reason: str) -> None:
        self.strategy.rejected(prop, reason)
        self.emit("rejected", proposal=prop, reason=reason)

    def _want(self) -> int:
        if self._draining or self._strategy_done:
            return 0
        if self.limits.max_experiments:
            left = self.limits.max_experiments - self._session_count
            if left <= 0:
                return 0
        else:
            left = 1 << 30
        free = len(self.pool.workers) - len(self._running)
        # a slow strategy (an LLM) may ask to keep more queued: the runs that end while it thinks
        lookahead = max(self.lookahead, int(self.strategy.lookahead_hint or 0))
        # on a wide fleet runs end every few seconds: ask in batches (one model fit for several proposals, not one
        # each), with a batch's worth more queued so no worker waits for the batch to fill
        batch = max(1, len(self.pool.workers) // 32)
        queued = self.pool.queued_for_free(self._queue)
        want = free + lookahead + batch - 1 - queued
        if want < batch and queued > 0:
            return 0
        return max(0, min(want, left))

    def _request_proposals(self) -> None:
        if self._request is not None or self._request_ready_at is not None:
            return
        self._queue_followups()
        n = self._want()
        if n <= 0:
            return
        ctx = self._context()
        if self.strategy.threaded and not getattr(self.clock, "virtual", False):
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="strategy")
            self._request = self._pool.submit(self.strategy.propose, ctx, n)
        else:
            self._request_result = self.strategy.propose(ctx, n)
            latency = float(self.strategy.latency_s or 0.0)
            self._request_ready_at = self.clock.now() + (latency if getattr(self.clock, "virtual", False) else 0.0)

    def _receive_proposals(self) -> None:
        props = None
        if self._request is not None and self._request.done():
            fut, self._request = self._request, None
            try:
                props = fut.result()
            except FleetlabError as e:
                self._stop_reason = f"the strategy failed: {e}"
                return
        elif self._request_ready_at is not None and self.clock.now() >= self._request_ready_at:
            props, self._request_result, self._request_ready_at = self._request_result, None, None
        if props is None:
            return
        for note in self.strategy.notes():
            self.store.add_note(note.author, note.text, self.clock.now(), note.experiment)
        if not props and not self._running and not self._queue and self.strategy.finished:
            self._strategy_done = True
        self._accept(list(props))

    # == dispatch ====================================================================================================
    def _pull_submissions(self) -> None:
        """Experiments queued by other processes (`fleetlab submit`) since we last looked. Read from our own
        watermark, not the newest number remembered: a submission stored just before one of the loop's own proposals
        would have a smaller number than it and be skipped for good (with backfill proposing all the time, it was)."""
        for exp in self.store.experiments(after_num=self._pulled):
            self._pulled = max(self._pulled, exp.number)
            if exp.id in self._exps:
                continue  # the loop's own
            self._remember(exp)
            if exp.tag == self.tag and exp.state is State.QUEUED:
                self._queue.append(exp)
                self._session_count += 1
                self.emit("queued", exp=exp)

    def _dispatch(self) -> None:
        for exp, worker in self.pool.place(self._queue):
            self._start_run(exp, worker)

    def _start_run(self, exp: Experiment, worker: Worker) -> bool:
        now = self.clock.now()
        files = self.materializer.files_of(exp)
        workdir = self.project.runs_dir / exp.id
        ro_hashes: dict[str, str] = {}
        if not self.in_memory:
            ro_hashes = workspace.make_snapshot(self.project, workdir, files)
        env = {"EXPERIMENT_ID": exp.id, "EXPERIMENT_DESC": exp.description,
               "FLEETLAB_TIME_BUDGET": f"{self.project.time_budget_s:g}", "FLEETLAB_SEED": str(exp.seed)}
        spec = RunSpec(experiment_id=exp.id, workdir=workdir, command=self.project.command, env=env,
                       timeout_s=self.project.timeout_s, setup=self.project.setup or None,
                       description=exp.description, files=files, seed=exp.seed)
        log_path = None if self.in_memory else str(workdir / "run.log")
        # recorded as running *before* the launch: a crash in between re-queues it instead of running it twice
        # (simulated runs cannot outlive the orchestrator, so they are recorded once, after the launch)
        if not self.in_memory:
            self.store.mark_running(exp.id, worker.id, worker.hardware, now, {"workdir": str(workdir)}, log_path)
        try:
            handle = self.executor.submit(spec, worker)
        except ExecutorError as e:
            if not self.in_memory:
                self.store.requeue(exp.id, f"could not start on {worker.id}: {e}")
                self._remember(self.store.get(exp.id))
            self._queue.append(self._exps[exp.id])
            if isinstance(e, SetupFailed):
                self._drop_worker(worker, str(e))
            else:
                self.emit("warning", message=f"{exp.id} could not start on {worker.id}: {e}")
            return False
        if self.in_memory:
            self.store.mark_running(exp.id, worker.id, worker.hardware, now, handle.data, None)
        else:
            self.store.set_handle(exp.id, handle.data)
        exp = self.store.get(exp.id) if not self.in_memory else exp.evolve(
            state=State.RUNNING, worker=worker.id, hardware=worker.hardware, started_at=now, handle=handle.data,
            attempts=exp.attempts + 1)
        self._remember(exp)
        self._running[exp.id] = _Running(exp, handle, worker, workdir, ro_hashes, now)
        self._handles = None
        self.pool.busy.add(worker.id)
        self.emit("started_run", exp=exp, worker=worker)
        return True

    def _refresh_workers(self) -> None:
        """Re-read the fleet's workers (nodes join and leave, clusters get relaunched on other hardware)."""
        if self.pool.refresh(self.executor.workers(), {r.worker.id for r in self._running.values()}):
            self.emit("fleet_changed", workers=self.pool.workers)

    def _drop_worker(self, worker: Worker, reason: str) -> None:
        self.pool.drop(worker)
        self.emit("worker_removed", worker=worker, reason=reason)
        if not self.pool.workers:
            self._stop_reason = f"no workers left: {reason}"

    # == collect =====================================================================================================
    def _collect(self) -> None:
        if not self._running:
            return
        if self._due_at is not None and self.clock.now() < self._due_at:
            return  # on the virtual clock nothing happens before the event the loop last waited for
        if self._handles is None:
            self._handles = [r.handle for r in self._running.values()]
        updates = self.executor.poll(self._handles)
        for up in updates:
            run = self._running.get(up.experiment_id)
            if run is None:
                continue
            if up.lines:
                run.lines.extend(up.lines)
                self._progress(run, up.lines)
            if up.finished:
                self._finish(run, up)
            elif run.exp.id in self._running and self.pruner is not None and up.lines:
                self._maybe_prune(run)

    def _progress(self, run: _Running, lines: tuple[str, ...]) -> None:
        for line in lines:
            p = parse_progress(self.project, line)
            if p is None:
                continue
            step, metric, elapsed = p
            if self.record_progress:
                self.store.add_observation(run.exp.id, step, metric, elapsed)
            self._curves.setdefault(run.exp.id, []).append((elapsed, metric))

    def curve(self, exp_id: str) -> list[tuple[float, float]]:
        """Progress points (elapsed, metric) seen for an experiment in this process (or recorded in the store)."""
        c = self._curves.get(exp_id)
        if c is None and self.record_progress:
            c = [(el, m) for _, m, el in self.store.observations(exp_id)]
            self._curves[exp_id] = c
        return c or []

    def _maybe_prune(self, run: _Running) -> None:
        prune = self.pruner.should_prune(run.exp, self.curve(run.exp.id), self)
        if prune:
            self.executor.cancel(run.handle)
            extra = {} if prune.bound is None else {"bound": prune.bound}
            run.exp = run.exp.evolve(meta={**run.exp.meta, "pruned": prune.reason, **extra})

    def _finish(self, run: _Running, up) -> None:
        exp = run.exp
        del self._running[exp.id]
        self._handles = None
        self.pool.busy.discard(run.worker.id)
        ended = up.finished_at if up.finished_at is not None else self.clock.now()
        started = up.started_at if up.started_at is not None else run.started_at
        if up.infra_failure:
            self._refresh_workers()  # a node died or a cluster came back on other hardware
            self._requeue_finished(exp.id, up.infra_failure, ended - started)
            return
        text = "\n".join(run.lines) if self.in_memory else self.executor.logs(run.handle)
        tampered = workspace.tampered_files(self.project, run.workdir, run.ro_hashes) if run.ro_hashes else []
        state, metric, extras, reason = classify(self.project, text, up.exit_code, up.timed_out, tampered)
        other_worker, other_run = self._other_data(run.worker, extras.get("data"))
        if other_worker:  # its worker prepared other data: not comparable, and not the variant's fault
            self._requeue_finished(exp.id, f"measured on other data on {run.worker.id}: it runs again elsewhere",
                                   ended - started, event=f"{run.worker.id} measured it on other data")
            self._drop_worker(run.worker, other_worker)
            return
        if other_run and state is not State.TAMPERED:  # the run claims other data than it was given: its own failure
            state, metric, reason = State.TAMPERED, None, other_run
        meta: dict[str, Any] = {"reason": reason} if reason else {}
        if run.ro_hashes:
            meta["readonly_hashes"] = run.ro_hashes
        if "pruned" in exp.meta and state is not State.DONE:
            state, metric = State.PRUNED, None
            meta["reason"] = exp.meta["pruned"]
            if "bound" in exp.meta:  # the best final metric it could still have reached (a censored measurement)
                meta["bound"] = exp.meta["bound"]
            meta["saved_s"] = max(0.0, self.project.time_budget_s - (ended - started))
        self._busy_s += max(0.0, ended - started)
        tail = "" if state is State.DONE else log_tail(text)
        if self.in_memory:
            exp = exp.evolve(state=state, metric=metric, extras=extras, exit_code=up.exit_code, finished_at=ended,
                             log_tail=tail, meta={**exp.meta, **meta}, started_at=started)
            self.store.finish(exp.id, state, metric=metric, extras=extras, exit_code=up.exit_code,
                              finished_at=ended, log_tail=tail, meta=meta)
        else:
            self.store.finish(exp.id, state, metric=metric, extras=extras, exit_code=up.exit_code,
                              finished_at=ended, log_tail=tail, meta=meta)
            exp = self.store.get(exp.id)
        self._remember(exp)
        self._judge(exp)
        self._check_own_files()

    def _check_own_files(self) -> None:
        """Stop the session when one of the project's own files changed since it started (hashed in `_start`)."""
        changed = workspace.changed_own_file(self.project, self._own) if self._own else None
        if changed and not self._stop_reason:
            self._stop_reason = (f"{changed} changed in the project while the session ran, not through fleetlab: "
                                 f"later runs would measure another {changed} than the runs they are compared with")

    def _requeue_finished(self, exp_id: str, reason: str, busy_s: float, event: str | None = None) -> None:
        """A run that ended without a result of its variant's own (its node died, it measured on other data): back
        in the queue for another worker, its worker time counted as busy."""
        self.store.requeue(exp_id, reason)
        exp = self.store.get(exp_id)
        self._remember(exp)
        self._queue.append(exp)
        self._busy_s += max(0.0, busy_s)
        self.emit("requeued", exp=exp, reason=event or reason)

    def _other_data(self, worker: Worker, printed: Any) -> tuple[str | None, str | None]:
        """(why the worker leaves the fleet, why the run fails), each None when all is well.

        A worker's data fingerprint is what its setup printed (`fleetlab: data=...`, Executor.data_fingerprint). The
        first a session sees is pinned (kept with the session, so a resumed session checks against it): every metric
        it compares must come from the same data and tokenizer, which a worker that prepared its own (another Python's
        standard library as the offline corpus, another download) would silently break. A run may print the
        fingerprint too but never decides it: a run printing another one fails alone, its worker stays."""
        setup = self.executor.data_fingerprint(worker.id)
        if self._data is None:
            self._data = (self.store.session(self.tag) or {}).get("data_fingerprint") or setup
            if self._data is not None:
                self.store.save_session(self.tag, data_fingerprint=self._data)
        if setup is not None and setup != self._data:
            return (f"{worker.id} measured on other data (its setup's fingerprint is {setup}, this session's is "
                    f"{self._data}), so its results cannot be compared: run the project's setup (the same data "
                    f"source) on it again"), None
        expected = setup or self._data
        if printed is not None and expected is not None and str(printed) != expected:
            return None, f"the run printed the data fingerprint {printed}, but its worker's setup prepared {expected}"
        return None, None

    def _judge(self, exp: Experiment) -> None:
        now = self.clock.now()
        verdict = self.keep_rule.judge(exp, self)
        decision = verdict.decision
        self._followups.extend(verdict.proposals)
        self.store.add_decision(exp.id, decision, now)
        kept = exp
        if decision.status == "keep":
            target_id = decision.numbers.get("incumbent_id") if decision.numbers else None
            kept = self.get(target_id) if target_id else exp
            self._set_incumbent(kept, now)
        self.emit("finished", exp=exp, decision=decision, incumbent=self._incumbent)
        self.strategy.observe(exp, self._context())
        self._tsv_dirty = True
        for d_exp_id, d in verdict.others:
            # decisions the rule reached about *other* experiments (validation verdicts)
            self.store.add_decision(d_exp_id, d, now)
            if d.status == "keep":
                self._set_incumbent(self.get(d_exp_id), now)
            self.emit("decision", exp=self.get(d_exp_id), decision=d, incumbent=self._incumbent)

    def _set_incumbent(self, exp: Experiment, now: float) -> None:
        if self._incumbent is not None and self._incumbent.id == exp.id:
            return
        self._incumbent = exp
        self.store.set_incumbent(self.tag, exp.id, now)
        if self.git and not self.in_memory:
            try:
                sha = workspace.commit_keep(self.project, self.tag, self.materializer.files_of(exp),
                                            f"{exp.id}: {exp.description}")
                if sha:
                    self.emit("committed", exp=exp, sha=sha, branch=f"fleetlab/{self.tag}")
            except FleetlabError as e:
                self.emit("warning", message=f"could not commit {exp.id} to git: {e}")

    # == accounting and limits =======================================================================================
    def accounting(self, busy: bool = True) -> dict[str, float]:
        """Worker-hours held (busy + idle) and busy, and dollars, since the session started (across restarts).
        `busy=False` skips summing the running experiments (the loop checks limits on every event)."""
        now = self.clock.now()
        seg = max(0.0, now - self._segment_start)
        available = self._available_base + seg * len(self.pool.workers)
        cost = self._cost_base + seg * self._price_per_hour / 3600.0
        if busy:
            busy = self._busy_s + sum(max(0.0, now - r.started_at) for r in self._running.values())
        else:
            busy = self._busy_s
        return {"elapsed_s": now - self._session_started, "busy_s": busy, "available_s": available,
                "gpu_hours": available / 3600.0, "busy_gpu_hours": busy / 3600.0, "cost_usd": cost}

    def _check_limits(self) -> str | None:
        if self._stop_reason:
            return self._stop_reason
        lim = self.limits
        acc = self.accounting(busy=False)
        if lim.max_hours and acc["elapsed_s"] >= lim.max_hours * 3600:
            return f"--max-hours {lim.max_hours:g} reached"
        if lim.max_gpu_hours and acc["gpu_hours"] >= lim.max_gpu_hours:
            return f"--max-gpu-hours {lim.max_gpu_hours:g} reached"
        if lim.max_cost and acc["cost_usd"] >= lim.max_cost:
            return f"--max-cost ${lim.max_cost:g} spent"
        inc = self._incumbent
        if lim.target is not None and inc is not None and inc.metric is not None and \
                (inc.metric == lim.target or better(inc.metric, lim.target, self.goal)):
            return f"target {lim.target:g} reached by {inc.id} ({inc.metric:.6g})"
        if self.stop_rule is not None:
            why = self.stop_rule.should_stop(self, acc)
            if why:
                return why
        return None

    def _exhausted(self) -> bool:
        """Nothing runs, nothing is queued, and nothing more will come."""
        if self._running or self._queue or self._request is not None or self._request_ready_at is not None:
            return False
        if self._strategy_done or self._draining:
            return True
        if self._want() != 0:
            return False
        self._queue_followups()  # a rule hands each follow-up out once: queue it, never drop it
        return not self._queue

    def _queue_followups(self) -> None:
        props, self._followups = self._followups + self.keep_rule.followups(self), []
        if props:
            self._accept(props)

    def _baseline_failed(self) -> str | None:
        if self._incumbent is not None:
            return None
        base = [e for e in self._order if e.tag == self.tag and e.role == "baseline"]
        if base and all(e.state.is_final for e in base) and not any(e.state is State.DONE for e in base):
            b = base[0]
            why = "the metric pattern matched no line" if b.state is State.NO_METRIC else next(
                (ln.strip()[:160] for ln in reversed(b.log_tail.splitlines()) if ln.strip()), "")
            return (f"the baseline {b.id} ended as {b.state.value}" + (f" ({why})" if why else "")
                    + f"; see `fleetlab show {b.id} --log`")
        return None

    # == the loop ====================================================================================================
    def run(self) -> Summary:
        self._start()
        reason = "finished"
        interrupted = False
        old = None
        virtual = getattr(self.clock, "virtual", False)
        if threading.current_thread() is threading.main_thread() and not virtual:
            old = signal.signal(signal.SIGTERM, _raise_interrupt)
        # on a virtual clock nobody else reads the store while we run: one transaction per step, not per write
        batch = self.store.transaction if virtual else None
        try:
            while True:
                with batch() if batch is not None else contextlib.nullcontext():
                    why = self._step()
                if why:
                    reason = why
                    break
                nxt = self._next_event()
                if nxt is None and virtual:
                    reason = "the strategy proposed nothing and nothing is running"
                    break  # on a virtual clock nothing else can ever happen
                if virtual:
                    self._due_at = nxt
                self.clock.wait(nxt)
        except KeyboardInterrupt:
            interrupted = True
            reason = "interrupted"
        finally:
            self._stop(reason, interrupted)
            if old is not None:
                signal.signal(signal.SIGTERM, old)
        return self.summary(reason)

    def _step(self) -> str | None:
        """One turn of the loop; returns why the session ends, or None to go on."""
        self._collect()
        self._pull_submissions()
        why = self._check_limits() or self._baseline_failed()
        if why:
            return why
        self._receive_proposals()
        self._dispatch()
        self._request_proposals()
        self._receive_proposals()
        self._dispatch()
        self._maybe_export()
        if self.limits.max_experiments and self._session_count >= self.limits.max_experiments:
            self._draining = True
        if self._exhausted():
            return (f"--max-experiments {self.limits.max_experiments} done" if self._draining
                    and self.limits.max_experiments else "the strategy has nothing more to propose")
        return None

    def _next_event(self) -> float | None:
        times = [t for t in (self.executor.next_event_at(), self._request_ready_at) if t is not None]
        return min(times) if times else None

    def _stop(self, reason: str, interrupted: bool) -> None:
        self._stop_reason = reason
        for run in list(self._running.values()):
            try:
                self.executor.cancel(run.handle)
            except FleetlabError:
                pass
        deadline = _time.time() + 15.0
        while self._running and _time.time() < deadline:
            updates = self.executor.poll([r.handle for r in self._running.values()])
            for up in updates:
                run = self._running.get(up.experiment_id)
                if run is not None and up.finished:
                    self._cancel_record(run, up)
            if self._running and not getattr(self.clock, "virtual", False):
                _time.sleep(0.05)
            elif self._running:
                break
        for run in list(self._running.values()):  # the executor never confirmed: record them cancelled anyway
            self._cancel_record(run, None)
        if self._request is not None:
            self._request.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        acc = self.accounting()
        self.store.save_session(self.tag, status="interrupted" if interrupted else "finished", stop_reason=reason,
                                updated_at=self.clock.now(), busy_s=acc["busy_s"], available_s=acc["available_s"],
                                cost_usd=acc["cost_usd"])
        self._maybe_export(force=True)
        self.emit("stopped", reason=reason)

    def _cancel_record(self, run: _Running, up) -> None:
        self._running.pop(run.exp.id, None)
        self._handles = None
        self.pool.busy.discard(run.worker.id)
        ended = (up.finished_at if up and up.finished_at else None) or self.clock.now()
        self._busy_s += max(0.0, ended - run.started_at)
        text = "\n".join(run.lines)
        if not self.in_memory:
            try:
                text = self.executor.logs(run.handle)
            except FleetlabError:
                pass
        self.store.finish(run.exp.id, State.CANCELLED, exit_code=up.exit_code if up else None,
                          finished_at=ended, log_tail=log_tail(text), meta={"reason": f"cancelled: {self._stop_reason}"})
        exp = self.store.get(run.exp.id)
        self._remember(exp)
        self.store.add_decision(exp.id, Decision("discard", "cancelled"), self.clock.now())

    def _maybe_export(self, force: bool = False) -> None:
        """Rewrite results.tsv and checkpoint the session's accounting, at most once a second of real time
        (a SIGKILLed orchestrator loses at most that much of its worker-hour accounting)."""
        if not self._tsv_dirty:
            return
        now = _time.time()
        if not force and now - self._tsv_written_at < 1.0:
            return
        if self.export_tsv:
            from fleetlab.store.tsv import write_results_tsv

            write_results_tsv(self.project, self.store)
        if not getattr(self.clock, "virtual", False):
            acc = self.accounting()
            self.store.save_session(self.tag, updated_at=self.clock.now(), busy_s=self._busy_s,
                                    available_s=acc["available_s"], cost_usd=acc["cost_usd"])
            self._available_base, self._cost_base = acc["available_s"], acc["cost_usd"]
            self._segment_start = self.clock.now()
        self._tsv_written_at = now
        self._tsv_dirty = False

    def summary(self, reason: str) -> Summary:
        mine = [e for e in self._order if e.tag == self.tag]
        states: dict[str, int] = {}
        for e in mine:
            states[e.state.value] = states.get(e.state.value, 0) + 1
        base = next((e for e in mine if e.role == "baseline" and e.metric is not None), None)
        acc = self.accounting()
        inc = self._incumbent
        return Summary(tag=self.tag, stop_reason=reason, experiments=len(mine), states=states,
                       incumbent=inc.id if inc else None, best_metric=inc.metric if inc else None,
                       baseline_metric=base.metric if base else None, elapsed_s=acc["elapsed_s"],
                       busy_s=acc["busy_s"], available_s=acc["available_s"], cost_usd=acc["cost_usd"])


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


__all__ = ["Scheduler", "Limits", "Summary"]
