"""The scheduler: the event loop that keeps every worker of a fleet busy with the strategy's experiments.

    start (resume.py) -> loop { collect and judge finished runs -> take outside submissions -> check limits ->
    accept proposals -> dispatch onto free workers -> ask for more before the queue runs dry (asking.py) -> wait }
    -> stop (cancel what runs, write the books)

Only the waiting differs between the real clock and the virtual one, so the simulated fleet runs this same code (on a
virtual clock a turn of the loop is one store transaction: nobody else reads the store meanwhile). Every state
transition goes through the run ledger; rules and strategies read the session's read-only view, never the store.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time as _time
from dataclasses import dataclass
from typing import Any, Callable

from fleetlab import workspace
from fleetlab.analysis._base import KeepRule, Pruner, StopRule, Verdict
from fleetlab.analysis.keep import SimpleKeepRule
from fleetlab.clock import RealClock
from fleetlab.collect import classify, log_tail, parse_progress
from fleetlab.confirming import Confirmation
from fleetlab.asking import Asking
from fleetlab.errors import ExecutorError, FleetlabError, SetupFailed
from fleetlab.experiment import Decision, Experiment, Role, RunSpec, State, Worker, better
from fleetlab.fleet._base import Executor, Handle
from fleetlab.integrity import Integrity
from fleetlab.ledger import Ledger, LedgerView, Running, Summary, pause_point
from fleetlab.placement import WorkerPool
from fleetlab.project import Project
from fleetlab.proposals import Materializer
from fleetlab.store._base import Store
from fleetlab.strategies._base import Context, Strategy

__all__ = ["Scheduler", "Limits", "Summary", "run_spec"]


@dataclass
class Limits:
    max_experiments: int = 0      # experiments created in this session (0: no limit)
    max_hours: float = 0.0        # wall-clock hours of this session
    max_gpu_hours: float = 0.0    # worker-hours held (busy + idle)
    max_cost: float = 0.0         # dollars of worker time
    target: float | None = None   # stop once the incumbent reaches it


def run_spec(project: Project, exp_id: str, description: str, seed: int, files: dict[str, str]) -> RunSpec:
    """The launch spec of one experiment: dispatch and `--dry-run` build it here."""
    env = {"EXPERIMENT_ID": exp_id, "EXPERIMENT_DESC": description,
           "FLEETLAB_TIME_BUDGET": f"{project.time_budget_s:g}", "FLEETLAB_SEED": str(seed)}
    return RunSpec(experiment_id=exp_id, workdir=project.runs_dir / exp_id, command=project.command, env=env,
                   timeout_s=project.timeout_s, setup=project.setup or None, description=description, files=files,
                   seed=seed)


def _noop(kind: str, **info: Any) -> None:
    pass


class Scheduler:
    def __init__(self, project: Project, store: Store, executor: Executor, strategy: Strategy, clock=None, *,
                 tag: str, limits: Limits | None = None, keep_rule: KeepRule | None = None, lookahead: int | None = None,
                 pruner: Pruner | None = None, on_event: Callable[..., None] | None = None, git: bool = True,
                 export_tsv: bool = True, record_progress: bool = True, seed: int = 0,
                 stop_rule: StopRule | None = None, confirm: str | None = None):
        self.project, self.store, self.executor, self.strategy = project, store, executor, strategy
        self.clock = clock or RealClock()
        self.virtual = bool(self.clock.virtual)
        self.tag, self.goal = tag, project.goal
        self.limits = limits or Limits()
        self.keep_rule = keep_rule or SimpleKeepRule()
        self.lookahead = project.section("strategy")["lookahead"] if lookahead is None else lookahead
        self.pruner, self.stop_rule = pruner, stop_rule
        self.emit = on_event or _noop
        self.git, self.export_tsv, self.record_progress = git, export_tsv, record_progress
        self.materializer = Materializer(project, store)
        self.snapshots = "spec_files" not in executor.SUPPORTS  # the executor runs from a snapshot directory
        self.ledger = Ledger(store, tag)
        self.pool = WorkerPool(self.keep_rule.tier_of)
        self.view = LedgerView(self.ledger, self.goal, self.keep_rule, lambda: self.pool.workers, self.curve)
        self.asking = Asking(self, seed)
        self.integrity = Integrity(project, store, executor, tag)
        self._curves: dict[str, list[tuple[float, float]]] = {}
        self._space: Any = None
        self._bk: dict[str, Any] | None = None
        self._stop_reason: str | None = None
        self._tsv_dirty = False
        self._tsv_written_at = 0.0
        self._due_at: float | None = None  # virtual clock: the event time the loop last waited for
        self._pulled = 0  # the newest experiment number `_pull_submissions` has read
        self._handles: list[Handle] | None = None  # handles of the running experiments (rebuilt when they change)
        self.confirmation = Confirmation(self, confirm)  # "end": before the session stops; "only": nothing else

    # == what callers read (rules and strategies get `self.view`) ===================================================
    def experiments(self) -> list[Experiment]:
        return self.ledger.order

    def incumbent(self) -> Experiment | None:
        return self.ledger.incumbent

    def get(self, exp_id: str) -> Experiment:
        return self.ledger.get(exp_id)

    @property
    def workers_now(self) -> list[Worker]:
        return self.pool.workers

    def set_space(self, space: Any) -> None:
        self._space = space

    def curve(self, exp_id: str) -> list[tuple[float, float]]:
        """Progress points (elapsed, metric) seen for an experiment in this process (or recorded in the store)."""
        c = self._curves.get(exp_id)
        if c is None and self.record_progress:
            c = self._curves[exp_id] = [(el, m) for _, m, el in self.store.observations(exp_id)]
        return c or []

    def context(self) -> Context:
        if self._bk is None:
            self._bk = self.materializer.read_knobs(self.project.read_editable())
        return Context(goal=self.goal, metric=self.project.metric, incumbent=self.ledger.incumbent,
                       baseline_knobs=self._bk, space=self._space, experiments=self.ledger.order,
                       workers=self.pool.workers, free_workers=len(self.pool.workers) - len(self.pool.busy),
                       now=self.clock.now(), view=self.view, materializer=self.materializer, tag=self.tag)

    # == the loop ====================================================================================================
    def run(self) -> Summary:
        self._start()
        reason, interrupted, old = "finished", False, None
        if threading.current_thread() is threading.main_thread() and not self.virtual:
            old = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            while True:
                with self.store.transaction() if self.virtual else contextlib.nullcontext():
                    why = self._step()
                if why:
                    reason = why
                    break
                nxt = self._next_event()
                if nxt is None and self.virtual:
                    reason = "the strategy proposed nothing and nothing is running"
                    break  # on a virtual clock nothing else can ever happen
                if self.virtual:
                    self._due_at = nxt
                self.clock.wait(nxt)
        except KeyboardInterrupt:
            interrupted, reason = True, "interrupted"
        finally:
            self._stop(reason, interrupted)
            if old is not None:
                signal.signal(signal.SIGTERM, old)
        return self.summary(reason)

    def _step(self) -> str | None:
        """One turn of the loop; returns why the session ends, or None to go on."""
        self._collect()
        self._pull_submissions()
        if self.confirmation.why is not None:
            return self.confirmation.step()
        why = self._check_limits() or self._baseline_failed()
        if why:
            return self.confirmation.ending(why)
        self.confirmation.early()
        self._receive()
        self._dispatch()
        self.asking.ask()
        self._receive()
        self._dispatch()
        self._maybe_export()
        if self.limits.max_experiments and self.ledger.added >= self.limits.max_experiments:
            self.asking.draining = True
        if self._exhausted():
            return self.confirmation.ending(f"--max-experiments {self.limits.max_experiments} done"
                                            if self.asking.draining and self.limits.max_experiments
                                            else "the strategy has nothing more to propose")
        return None

    def _receive(self) -> None:
        self._stop_reason = self.asking.receive() or self._stop_reason

    def _next_event(self) -> float | None:
        times = [t for t in (self.executor.next_event_at(), self.asking.ready_at) if t is not None]
        return min(times) if times else None

    # == start-up and resume ========================================================================================
    def _start(self) -> None:
        from fleetlab.resume import Resume

        now = self.clock.now()
        self.pool.workers = list(self.executor.workers())
        if not self.pool.workers:
            raise ExecutorError(f"the {self.executor.name} fleet has no workers")
        self.integrity.start()  # the project's own files, checked as runs end
        for exp_id in self.store.adopt_queued(self.tag):  # what earlier sessions left queued runs in this one
            self.emit("adopted", exp_id=exp_id)
        self.ledger.load()
        self.ledger.open_session(now, executor=self.executor.name, strategy=self.strategy.name)
        resume = Resume(self)
        self.asking.accept(resume.rejudge())
        for exp in self.ledger.order:
            if exp.state.is_final:
                self.strategy.observe(exp, self.context())
        resume.reattach()
        self.ledger.queue = [e for e in self.ledger.order if e.tag == self.tag and e.state is State.QUEUED]
        resume.reconcile_branch()
        if self.ledger.incumbent is None and not any(e.role == Role.BASELINE for e in self.ledger.mine()):
            self.asking.baseline(resume.previous_incumbent())
        if self.confirmation.mode == "only":  # `fleetlab confirm`: the confirmation queued for it, nothing else
            self.confirmation.why = "the confirmation is done"
        self.emit("started", tag=self.tag, workers=self.pool.workers, resumed=bool(self.ledger.mine()))

    # == dispatch ====================================================================================================
    def _pull_submissions(self) -> None:
        """Experiments queued by other processes (`fleetlab submit`) since we last looked. Read from our own
        watermark, not the ledger's newest number: a submission stored just before one of the loop's own proposals
        would have a smaller number than it and be skipped for good (with backfill proposing all the time, it was)."""
        for exp in self.store.experiments(after_num=self._pulled):
            self._pulled = max(self._pulled, exp.number)
            if exp.id in self.ledger.exps:
                continue  # the loop's own
            if exp.tag == self.tag and exp.state is State.QUEUED:
                self.ledger.adopt(exp)
                self.emit("queued", exp=exp)
            else:
                self.ledger.remember(exp)

    def _dispatch(self) -> None:
        if not self.virtual:  # a submission that landed while the strategy was asked goes ahead of its proposals
            self._pull_submissions()
        for exp, worker in self.pool.place(self.ledger.queue):
            self._start_run(exp, worker)

    def _start_run(self, exp: Experiment, worker: Worker) -> None:
        now = self.clock.now()
        files = self.materializer.files_of(exp)
        spec = run_spec(self.project, exp.id, exp.description, exp.seed, files)
        ro_hashes = workspace.make_snapshot(self.project, spec.workdir, files) if self.snapshots else {}
        exp = self.ledger.start(exp, worker, spec.workdir, now, str(spec.workdir / "run.log") if self.snapshots
                                else None)
        try:
            handle = self.executor.submit(spec, worker)
        except ExecutorError as e:
            self.ledger.requeue(exp.id, f"could not start on {worker.id}: {e}")
            if isinstance(e, SetupFailed):
                self._drop_worker(worker, str(e))
            else:
                self.emit("warning", message=f"{exp.id} could not start on {worker.id}: {e}")
            return
        run = Running(exp, handle, worker, spec.workdir, ro_hashes, now)
        self.ledger.launched(run)
        self._handles = None
        self.pool.busy.add(worker.id)
        self.emit("started_run", exp=run.exp, worker=worker)

    def _refresh_workers(self) -> None:
        """Re-read the fleet's workers (nodes join and leave, clusters get relaunched on other hardware)."""
        if self.pool.refresh(self.executor.workers(), {r.worker.id for r in self.ledger.running.values()}):
            self.emit("fleet_changed", workers=self.pool.workers)

    def _drop_worker(self, worker: Worker, reason: str) -> None:
        self.pool.drop(worker)
        self.emit("worker_removed", worker=worker, reason=reason)
        if not self.pool.workers:
            self._stop_reason = f"no workers left: {reason}"

    # == collect and judge ===========================================================================================
    def _collect(self) -> None:
        if not self.ledger.running:
            return
        if self._due_at is not None and self.clock.now() < self._due_at:
            return  # on the virtual clock nothing happens before the event the loop last waited for
        if self._handles is None:
            self._handles = [r.handle for r in self.ledger.running.values()]
        for up in self.executor.poll(self._handles):
            run = self.ledger.running.get(up.experiment_id)
            if run is None:
                continue
            if up.lines:
                run.lines.extend(up.lines)
                self._progress(run, up.lines)
            if up.finished:
                self._finish(run, up)
            elif self.pruner is not None and up.lines and run.prune is None:
                run.prune = self.pruner.should_prune(run.exp, self.curve(run.exp.id), self.view)
                if run.prune is not None:
                    self.executor.cancel(run.handle)

    def _progress(self, run: Running, lines: tuple[str, ...]) -> None:
        for line in lines:
            p = parse_progress(self.project, line)
            if p is None:
                continue
            step, metric, elapsed = p
            if self.record_progress:
                self.store.add_observation(run.exp.id, step, metric, elapsed)
            self._curves.setdefault(run.exp.id, []).append((elapsed, metric))

    def _finish(self, run: Running, up) -> None:
        exp, worker = run.exp, run.worker
        self._handles = None
        self.pool.busy.discard(worker.id)
        ended = up.finished_at if up.finished_at is not None else self.clock.now()
        started = up.started_at if up.started_at is not None else run.started_at
        if up.infra_failure:
            self._refresh_workers()  # a node died or a cluster came back on other hardware
            self.emit("requeued", exp=self.ledger.requeue(exp.id, up.infra_failure, ended - started),
                      reason=up.infra_failure)
            return
        text = self.executor.logs(run.handle)
        tampered = workspace.tampered_files(self.project, run.workdir, run.ro_hashes) if run.ro_hashes else []
        state, metric, extras, reason = classify(self.project, text, up.exit_code, up.timed_out, tampered)
        other_worker, other_run = self.integrity.other_data(worker, extras.get("data"))
        if other_worker:  # its worker prepared other data: not comparable, and not the variant's fault
            back = self.ledger.requeue(exp.id, f"measured on other data on {worker.id}: it runs again elsewhere",
                                       ended - started)
            self.emit("requeued", exp=back, reason=f"{worker.id} measured it on other data")
            self._drop_worker(worker, other_worker)
            return
        if other_run and state is not State.TAMPERED:  # the run claims other data than it was given: its own failure
            state, metric, reason = State.TAMPERED, None, other_run
        meta: dict[str, Any] = {"reason": reason} if reason else {}
        if run.ro_hashes:
            meta["readonly_hashes"] = run.ro_hashes
        if run.prune is not None and state is not State.DONE:
            state, metric, meta["reason"] = State.PRUNED, None, run.prune.reason
            if run.prune.bound is not None:  # the best final metric it could still have reached (censored)
                meta["bound"] = run.prune.bound
            meta["saved_s"] = max(0.0, self.project.time_budget_s - (ended - started))
        exp, verdict, kept = self.ledger.finish(
            exp.id, state, now=self.clock.now(), judge=lambda e: self.keep_rule.judge(e, self.view), metric=metric,
            extras=extras, exit_code=up.exit_code, started_at=started, finished_at=ended,
            log_tail="" if state is State.DONE else log_tail(text), meta=meta)
        self._after_verdict(exp, verdict, kept)
        self._stop_reason = self._stop_reason or self.integrity.changed_own_file()

    def _after_verdict(self, exp: Experiment, verdict: Verdict, kept: Experiment | None) -> None:
        """What follows a recorded verdict: the keep branch, events, the strategy told, and the decisions the rule
        reached about other experiments (each with its incumbent change in one transaction)."""
        self.asking.followups.extend(verdict.proposals)
        if kept is not None:
            self._commit_keep(kept)
        self.emit("finished", exp=exp, decision=verdict.decision, incumbent=self.ledger.incumbent)
        self.strategy.observe(exp, self.context())
        self._tsv_dirty = True
        now = self.clock.now()
        for other_id, d in verdict.others:
            with self.store.transaction():
                self.ledger.decide(other_id, d, now)
                changed = d.status == "keep" and self.ledger.set_incumbent(self.get(other_id), now)
            if changed:
                self._commit_keep(self.get(other_id))
            self.emit("decision", exp=self.get(other_id), decision=d, incumbent=self.ledger.incumbent)

    def _commit_keep(self, exp: Experiment) -> None:
        """The kept files on branch fleetlab/<tag> (after the store has the incumbent: a crash in between is
        repaired when the session starts again)."""
        if not self.git:
            return
        pause_point("keep-commit")
        try:
            sha = workspace.commit_keep(self.project, self.tag, self.materializer.files_of(exp),
                                        f"{exp.id}: {exp.description}")
            if sha:
                self.emit("committed", exp=exp, sha=sha, branch=f"fleetlab/{self.tag}")
        except FleetlabError as e:
            self.emit("warning", message=f"could not commit {exp.id} to git: {e}")

    # == limits and the end ==========================================================================================
    def accounting(self, busy: bool = True) -> dict[str, float]:
        return self.ledger.books(self.clock.now(), len(self.pool.workers), self.pool.facts().price_per_hour, busy)

    def _check_limits(self) -> str | None:
        if self._stop_reason:
            return self._stop_reason
        lim, acc = self.limits, self.accounting(busy=False)
        if lim.max_hours and acc["elapsed_s"] >= lim.max_hours * 3600:
            return f"--max-hours {lim.max_hours:g} reached"
        if lim.max_gpu_hours and acc["gpu_hours"] >= lim.max_gpu_hours:
            return f"--max-gpu-hours {lim.max_gpu_hours:g} reached"
        if lim.max_cost and acc["cost_usd"] >= lim.max_cost:
            return f"--max-cost ${lim.max_cost:g} spent"
        inc = self.ledger.incumbent
        if lim.target is not None and inc is not None and inc.metric is not None and \
                (inc.metric == lim.target or better(inc.metric, lim.target, self.goal)):
            return f"target {lim.target:g} reached by {inc.id} ({inc.metric:.6g})"
        return self.stop_rule.should_stop(self.view, acc) if self.stop_rule is not None else None

    def _exhausted(self) -> bool:
        """Nothing runs, nothing is queued, and nothing more will come."""
        if self.ledger.running or self.ledger.queue or self.asking.pending:
            return False
        if self.asking.strategy_done or self.asking.draining:
            return True
        if self.asking.want() != 0:
            return False
        self.asking.queue_followups()  # a rule hands each follow-up out once: queue it, never drop it
        return not self.ledger.queue

    def _baseline_failed(self) -> str | None:
        if self.ledger.incumbent is not None:
            return None
        base = [e for e in self.ledger.mine() if e.role == Role.BASELINE]
        if base and all(e.state.is_final for e in base) and not any(e.state is State.DONE for e in base):
            e = base[0]
            why = "the metric pattern matched no line" if e.state is State.NO_METRIC else next(
                (ln.strip()[:160] for ln in reversed(e.log_tail.splitlines()) if ln.strip()), "")
            return (f"the baseline {e.id} ended as {e.state.value}" + (f" ({why})" if why else "")
                    + f"; see `fleetlab show {e.id} --log`")
        return None

    def _stop(self, reason: str, interrupted: bool) -> None:
        self._stop_reason = reason
        for run in list(self.ledger.running.values()):
            try:
                self.executor.cancel(run.handle)
            except FleetlabError:
                pass
        deadline = _time.time() + 15.0
        while self.ledger.running and _time.time() < deadline:
            for up in self.executor.poll([r.handle for r in self.ledger.running.values()]):
                run = self.ledger.running.get(up.experiment_id)
                if run is not None and up.finished:
                    self._cancel_record(run, up)
            if self.ledger.running and self.virtual:
                break
            if self.ledger.running:
                _time.sleep(0.05)
        for run in list(self.ledger.running.values()):  # the executor never confirmed: record them cancelled anyway
            self._cancel_record(run, None)
        if not interrupted:  # an interrupted session resumes (and re-judges); a finished one leaves nothing pending
            for exp_id in self.ledger.settle_pending(reason, self.clock.now()):
                self.emit("decision", exp=self.get(exp_id), decision=self.ledger.decided[exp_id],
                          incumbent=self.ledger.incumbent)
        self.asking.close()
        self.ledger.checkpoint(self.clock.now(), len(self.pool.workers), self.pool.facts().price_per_hour,
                               status="interrupted" if interrupted else "finished", stop_reason=reason)
        self._maybe_export(force=True)
        self.emit("stopped", reason=reason)

    def _cancel_record(self, run: Running, up) -> None:
        self.pool.busy.discard(run.worker.id)
        self._handles = None
        try:
            text = self.executor.logs(run.handle)
        except FleetlabError:
            text = "\n".join(run.lines)
        cancelled = Verdict(Decision("discard", "cancelled"))
        self.ledger.finish(run.exp.id, State.CANCELLED, now=self.clock.now(), judge=lambda e: cancelled,
                           exit_code=up.exit_code if up else None, started_at=run.started_at,
                           finished_at=(up.finished_at if up and up.finished_at else None) or self.clock.now(),
                           log_tail=log_tail(text), meta={"reason": f"cancelled: {self._stop_reason}"})

    def _maybe_export(self, force: bool = False) -> None:
        """Rewrite results.tsv and checkpoint the books, at most once a second of real time (a SIGKILLed
        orchestrator loses at most that much of its worker-hour accounting)."""
        now = _time.time()
        if not self._tsv_dirty or (not force and now - self._tsv_written_at < 1.0):
            return
        if self.export_tsv:
            from fleetlab.store.tsv import write_results_tsv

            write_results_tsv(self.project, self.store)
        if not self.virtual:
            self.ledger.checkpoint(self.clock.now(), len(self.pool.workers), self.pool.facts().price_per_hour)
        self._tsv_written_at, self._tsv_dirty = now, False

    def summary(self, reason: str) -> Summary:
        return self.ledger.summary(reason, self.accounting())


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
