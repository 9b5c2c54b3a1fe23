"""Backfill: a strategy that runs only on workers that would otherwise idle.

`fleetlab run --strategy none --backfill auto` serves an outside agent first: its submissions are dispatched before
anything a strategy proposes, and the backfill strategy is asked only for the workers left with nothing to run
after every queued experiment has been placed. It never queues ahead, so an agent's next submission waits at most
for the backfill runs already started. It sees the same incumbent and history as everyone (the agent's results
teach it, and its results are the agent's to read), and its experiments carry `meta["backfill"]` so every surface
can tell them apart.
"""

from __future__ import annotations

from dataclasses import replace

from fleetlab.experiment import Proposal, State
from fleetlab.strategies._base import Context, Strategy


def idle_after_queue(context: Context) -> int:
    """Workers that nothing queued will occupy: free workers minus this session's experiments waiting for one."""
    queued = sum(1 for e in context.experiments
                 if e.state is State.QUEUED and (not context.tag or e.tag == context.tag))
    return max(0, context.free_workers - queued)


class Backfill(Strategy):
    """`primary` proposes as usual (`none`: nothing); `filler` only for the workers that would otherwise idle."""

    def __init__(self, primary: Strategy, filler: Strategy):
        self.primary, self.filler = primary, filler
        self.name = f"{primary.name}+backfill:{filler.name}" if primary.name != "none" else f"backfill:{filler.name}"
        self.latency_s = max(primary.latency_s, filler.latency_s)
        self.threaded = primary.threaded or filler.threaded

    @property
    def lookahead_hint(self) -> int:
        # only the primary may queue ahead: a backfill run queued early would sit in front of an agent's next
        # submission on the next free worker
        return self.primary.lookahead_hint

    def propose(self, context: Context, n: int) -> list[Proposal]:
        out = list(self.primary.propose(context, n)) if n > 0 else []
        idle = min(n - len(out), idle_after_queue(context) - len(out))
        if idle <= 0:
            return out
        for prop in self.filler.propose(context, idle):
            out.append(replace(prop, meta={**prop.meta, "backfill": self.filler.name}))
        return out

    def observe(self, experiment, context: Context) -> None:
        self.primary.observe(experiment, context)
        self.filler.observe(experiment, context)

    def rejected(self, proposal: Proposal, reason: str) -> None:
        member = self.filler if proposal.meta.get("backfill") else self.primary
        member.rejected(proposal, reason)

    def notes(self):
        return self.primary.notes() + self.filler.notes()

    @property
    def finished(self) -> bool:
        return self.primary.finished and self.filler.finished

    def describe(self) -> dict:
        return {"name": self.name, "primary": self.primary.describe(), "backfill": self.filler.describe()}


__all__ = ["Backfill", "idle_after_queue"]
