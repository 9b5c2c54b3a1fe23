"""Asking for work: the strategy's proposals and the keep rule's follow-ups, from request to queued experiments.

The loop asks *before* the queue runs dry (`want`), in a background thread on the real clock when the strategy is slow
(`Strategy.threaded`), or with its simulated latency on a virtual clock. Every proposal is built into a variant
(refused, with the reason told to the strategy, when it cannot run or repeats an exploration) and queued through the
run ledger; notes the strategy took come back here and are recorded.
"""

from __future__ import annotations

import random
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from fleetlab.errors import FleetlabError
from fleetlab.experiment import Experiment, Proposal, Role

if TYPE_CHECKING:
    from fleetlab.scheduler import Scheduler

__all__ = ["Asking"]


class Asking:
    def __init__(self, scheduler: "Scheduler", seed: int):
        self.s = scheduler
        self.rng = random.Random(f"{scheduler.tag}:{seed}")  # experiment seeds
        self.followups: list[Proposal] = []  # runs the keep rule's verdicts asked for, queued with its follow-ups
        self.request: Future | None = None  # a threaded `propose` under way
        self.ready_at: float | None = None  # when an unthreaded request's answer is due (virtual clock: its latency)
        self.answer: list[Proposal] | None = None
        self.threads: ThreadPoolExecutor | None = None
        self.draining = False      # the experiment cap is reached: ask for nothing more
        self.strategy_done = False  # the strategy said it has nothing more

    @property
    def pending(self) -> bool:
        return self.request is not None or self.ready_at is not None

    # == queueing ======================================================================================================
    def default_parent(self) -> Experiment | None:
        led = self.s.ledger
        if led.incumbent is not None:
            return led.incumbent
        return next((e for e in led.order if e.tag == self.s.tag and e.role == Role.BASELINE), None)

    def add(self, prop: Proposal, parent: Experiment | None, variant=None) -> None:
        s, cap = self.s, self.s.limits.max_experiments
        for _ in range(max(1, prop.replicates)):
            if cap and s.ledger.added >= cap:
                break  # a hard cap: replicates and validations count too
            if variant is None:
                variant = s.materializer.build(prop, parent)  # replicates share one validated variant
            exp = s.materializer.to_experiment(prop, parent, tag=s.tag, seed=self.rng.randrange(2 ** 31),
                                               now=s.clock.now(), strategy=s.strategy.name, variant=variant)
            s.emit("queued", exp=s.ledger.add(exp))

    def accept(self, proposals: list[Proposal]) -> None:
        for prop in proposals:
            try:
                parent = self.s.get(prop.parent) if prop.parent else self.default_parent()
                variant = self.s.materializer.build(prop, parent)
                if prop.role == Role.EXPLORE and self.s.ledger.hashes.get(variant.content_hash):
                    self.reject(prop, "this variant was already tried (same content hash)")
                    continue
                self.add(prop, parent, variant)
            except FleetlabError as e:  # ProposalRejected included: the strategy hears why
                self.reject(prop, str(e))

    def reject(self, prop: Proposal, reason: str) -> None:
        self.s.strategy.rejected(prop, reason)
        self.s.emit("rejected", proposal=prop, reason=reason)

    def baseline(self, previous: Experiment | None) -> None:
        """The session's first incumbent: the project's files, or the incumbent an earlier session ended with (its
        files, measured again here, so this session goes on from it)."""
        reps = max(1, int(self.s.keep_rule.baseline_replicates))
        desc = "baseline" if previous is None else f"baseline: {previous.id}, the incumbent of session {previous.tag}"
        self.add(Proposal(description=desc, role=Role.BASELINE, strategy="baseline", replicates=reps), previous)

    def queue_followups(self) -> None:
        props, self.followups = self.followups + self.s.keep_rule.followups(self.s.view), []
        if props:
            self.accept(props)

    # == asking ========================================================================================================
    def want(self) -> int:
        """How many proposals to ask for now (0: enough is queued, or nothing more may be added)."""
        s = self.s
        if self.draining or self.strategy_done:
            return 0
        left = s.limits.max_experiments - s.ledger.added if s.limits.max_experiments else 1 << 30
        if left <= 0:
            return 0
        free = len(s.pool.workers) - len(s.ledger.running)
        # a slow strategy (an LLM) may ask to keep more queued: the runs that end while it thinks
        lookahead = max(s.lookahead, int(s.strategy.lookahead_hint or 0))
        # on a wide fleet runs end every few seconds: ask in batches (one model fit for several proposals, not one
        # each), with a batch's worth more queued so no worker waits for the batch to fill
        batch = max(1, len(s.pool.workers) // 32)
        queued = s.pool.queued_for_free(s.ledger.queue)
        want = free + lookahead + batch - 1 - queued
        if want < batch and queued > 0:
            return 0
        return max(0, min(want, left))

    def ask(self) -> None:
        s = self.s
        if self.pending:
            return
        self.queue_followups()
        n = self.want()
        if n <= 0:
            return
        ctx = s.context()
        if s.strategy.threaded and not s.virtual:
            if self.threads is None:
                self.threads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="strategy")
            self.request = self.threads.submit(s.strategy.propose, ctx, n)
        else:
            self.answer = s.strategy.propose(ctx, n)
            self.ready_at = s.clock.now() + (float(s.strategy.latency_s or 0.0) if s.virtual else 0.0)

    def receive(self) -> str | None:
        """Queue the proposals that arrived; returns why the session must stop (the strategy failed), else None."""
        s, props = self.s, None
        if self.request is not None and self.request.done():
            fut, self.request = self.request, None
            try:
                props = fut.result()
            except FleetlabError as e:
                return f"the strategy failed: {e}"
        elif self.ready_at is not None and s.clock.now() >= self.ready_at:
            props, self.answer, self.ready_at = self.answer, None, None
        if props is None:
            return None
        for note in s.strategy.notes():  # strategies never write the store: their notes are recorded here
            s.store.add_note(note.author, note.text, s.clock.now(), note.experiment)
        if not props and not s.ledger.running and not s.ledger.queue and s.strategy.finished:
            self.strategy_done = True
        self.accept(list(props))
        return None

    def close(self) -> None:
        if self.request is not None:
            self.request.cancel()
        if self.threads is not None:
            self.threads.shutdown(wait=False, cancel_futures=True)
