"""What a scheduler does when it starts on a session that ran before (or after an earlier session of the project).

A SIGKILLed orchestrator can leave: runs still going (re-attached) or gone (re-queued); a candidate whose verdict was
reached but not written, or a finished run without its decision when the store predates one-transaction finishes
(re-derived: the keep rule judges the session's finished runs again, in the order they finished); follow-up runs the
rule asked for that never reached the queue (queued now, so nothing stays `pending` forever); an incumbent the store
has and the keep branch lacks (committed again). A new session starts from the incumbent an earlier one ended with.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING

from fleetlab import workspace
from fleetlab.experiment import Experiment, Proposal, State
from fleetlab.ledger import Running

if TYPE_CHECKING:
    from fleetlab.scheduler import Scheduler

__all__ = ["Resume"]


class Resume:
    def __init__(self, scheduler: "Scheduler"):
        self.s = scheduler
        self.ledger = scheduler.ledger

    def rejudge(self) -> list[Proposal]:
        """Rebuild the keep rule's state, write the decisions the store lacks, and return the follow-ups the rule
        asked for that the session has no experiment for. The stored incumbent stays authoritative."""
        s, led = self.s, self.ledger
        done = sorted((e for e in led.mine() if e.state.is_final), key=lambda e: (e.finished_at or 0.0, e.number))
        if not done:
            return []
        stored, asked, now = led.incumbent, [], s.clock.now()
        for exp in done:
            verdict = s.keep_rule.judge(exp, s.view)
            asked += verdict.proposals
            kept = led.kept_by(exp, verdict.decision)
            if kept is not None:
                led.incumbent = kept
            if exp.id not in led.decided:  # finished without a decision: an older store, killed in between
                stored = self._write(exp.id, verdict.decision, kept, now) or stored
            for other_id, d in verdict.others:
                other = led.exps.get(other_id)
                if other is None:
                    continue
                if d.status == "keep":
                    led.incumbent = other
                have = led.decided.get(other_id)
                if have is None or (have.status == "pending" and d.status != "pending"):  # reached, never written
                    stored = self._write(other_id, d, other if d.status == "keep" else None, now) or stored
        asked += s.keep_rule.followups(s.view)
        led.incumbent = stored
        return self._missing(asked)

    def _write(self, exp_id: str, decision, kept: Experiment | None, now: float) -> Experiment | None:
        with self.s.store.transaction():
            self.ledger.decide(exp_id, decision, now)
            if kept is not None:
                self.s.store.set_incumbent(self.s.tag, kept.id, now)
        self.s.emit("decision", exp=self.ledger.get(exp_id), decision=decision, incumbent=kept)
        return kept

    def _missing(self, asked: list[Proposal]) -> list[Proposal]:
        have = Counter()
        for e in self.ledger.mine():
            have[(e.role, e.parent, e.description)] += 1
            have[(e.role, None, e.description)] += 1
        out = []
        for p in asked:
            key = (p.role, p.parent, p.description)
            took = min(have[key], max(1, p.replicates))
            have[key] -= took
            if max(1, p.replicates) > took:
                out.append(replace(p, replicates=max(1, p.replicates) - took))
        return out

    def reattach(self) -> None:
        """Runs an earlier orchestrator started: re-attach to the live ones, re-queue the others."""
        s, led = self.s, self.ledger
        now = s.clock.now()
        for exp in list(led.order):
            if exp.tag != s.tag or exp.state is not State.RUNNING:
                continue
            handle = s.executor.reattach(exp.id, exp.handle or {}) if exp.handle else None
            worker = next((w for w in s.pool.workers if w.id == exp.worker), None)
            if handle is not None and worker is not None:
                led.running[exp.id] = Running(exp, handle, worker, s.project.runs_dir / exp.id,
                                              exp.meta.get("readonly_hashes") or {}, exp.started_at or now)
                s.pool.busy.add(worker.id)
                s.emit("reattached", exp=exp)
            else:
                s.emit("requeued", exp=led.requeue(exp.id, "its run was gone when the orchestrator restarted"),
                       reason="run gone after restart")

    def reconcile_branch(self) -> None:
        """The keep branch fleetlab/<tag> ends at the store's incumbent (a crash between the two is repaired)."""
        s, inc = self.s, self.ledger.incumbent
        if not s.git or inc is None:
            return
        files = s.materializer.files_of(inc)
        if workspace.is_git_repo(s.project.root) and workspace.keep_branch_files(s.project, s.tag, files) != files:
            s._commit_keep(inc)

    def previous_incumbent(self) -> Experiment | None:
        """The incumbent the latest earlier session of the project ended with (None: no earlier session kept one)."""
        for sess in reversed(self.s.store.sessions()):
            inc = self.s.store.incumbent(sess["tag"]) if sess["tag"] != self.s.tag else None
            if inc:
                return self.ledger.get(inc)
        return None
