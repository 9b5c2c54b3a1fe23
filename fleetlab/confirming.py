"""The end of a session: the keep rule's final confirmation (analysis.confirm), run before the session stops.

`mode="end"`: when the session ends for a limit, --max-experiments, the stop rule or an exhausted strategy, the
baseline's and the incumbent's code are re-run interleaved (role confirm), so the headline gain is a paired figure
measured under one set of conditions; only confirmation runs start then. `mode="only"` (`fleetlab confirm`): the
session runs the confirmation queued for it and nothing else.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from fleetlab.experiment import Role

if TYPE_CHECKING:
    from fleetlab.scheduler import Scheduler

__all__ = ["Confirmation"]

LOOKAHEAD_RUNS = 16  # the most confirmation runs `early` plans for: further out it does not ask the rule


class Confirmation:
    def __init__(self, scheduler: "Scheduler", mode: str | None):
        self.s, self.mode = scheduler, mode
        self.why: str | None = None  # why the session ends, once its confirmation runs are queued
        self.asked = False  # queued ahead of the time limit (`early`)
        self._key: tuple | None = None  # (incumbent, record length) the cached `_props` were asked for
        self._props: list = []

    def ending(self, why: str) -> str | None:
        """The session ends for `why`; first, with mode "end", the confirmation runs. Not after a failure (nothing to
        trust) or at --max-cost (a spending cap is a promise)."""
        if self.mode != "end" or self.s._stop_reason or why.startswith(("the baseline", "--max-cost")):
            return why
        self.queue()  # nothing when the incumbent's was queued early, or is the baseline's code
        self.why = why
        self.s.asking.draining = True
        return self.step()

    def early(self) -> None:
        """With a time limit, the confirmation is queued as many run lengths before it as it takes rounds of the
        fleet (a run length and a little each: a worker must come free first), so its runs start while the rest of
        the fleet still works and the session ends about on time (after the limit, a wide fleet idled through it; on
        two workers, three pairs take three rounds)."""
        s = self.s
        if self.mode != "end" or self.asked or not s.limits.max_hours:
            return
        lengths = [e.runtime_s for e in s.ledger.order[-512:] if e.runtime_s and e.tag == s.tag][-16:]
        if not lengths:
            return
        left = s.limits.max_hours * 3600 - s.accounting(busy=False)["elapsed_s"]
        workers = max(1, len(s.pool.workers))
        if left > 1.2 * max(lengths) * math.ceil(LOOKAHEAD_RUNS / workers):
            return
        key = (s.ledger.incumbent.id if s.ledger.incumbent else None, len(s.ledger.order))
        if key != self._key:  # what the rule would queue changes only with the incumbent and the record
            self._key, self._props = key, s.keep_rule.confirmation(s.view)
        if self._props and left <= 1.2 * max(lengths) * math.ceil(len(self._props) / workers):
            self.asked = True
            self.queue()

    def queue(self) -> None:
        props = self.s.keep_rule.confirmation(self.s.view)
        if props:
            self.s.asking.accept(props)
            self.s.emit("confirming", runs=len(props))

    def step(self) -> str | None:
        """While confirming, only confirmation runs start; the session ends when none is queued or running."""
        s = self.s
        queue = [e for e in s.ledger.queue if e.role == Role.CONFIRM]
        for exp, worker in s.pool.place(queue):
            s.ledger.queue.remove(exp)
            s._start_run(exp, worker)
        if queue or any(r.exp.role == Role.CONFIRM for r in s.ledger.running.values()):
            return None
        return self.why
