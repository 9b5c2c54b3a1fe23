"""A portfolio splits the fleet between strategies by shares: each request is divided in proportion, and every
member is told every result (so each learns from all)."""

from __future__ import annotations

from fleetlab.experiment import Note, Proposal
from fleetlab.strategies._base import Context, Strategy


class Portfolio(Strategy):
    name = "portfolio"

    def __init__(self, members: list[tuple[Strategy, float]]):
        self.members = members
        self.name = ",".join(m.name for m, _ in members)
        self.latency_s = max((m.latency_s for m, _ in members), default=0.0)
        self.threaded = any(m.threaded for m, _ in members)
        self._given = [0] * len(members)  # slots handed to each member so far

    def propose(self, context: Context, n: int) -> list[Proposal]:
        out: list[Proposal] = []
        counts = [0] * len(self.members)
        for _ in range(n):  # each slot goes to the member furthest below its share so far
            i = min(range(len(self.members)), key=lambda j: (self._given[j] + counts[j]) / self.members[j][1])
            counts[i] += 1
        self._given = [g + c for g, c in zip(self._given, counts)]
        for (member, _), k in zip(self.members, counts):
            if k > 0:
                out.extend(member.propose(context, k))
        return out

    def observe(self, experiment, context: Context) -> None:
        for member, _ in self.members:
            member.observe(experiment, context)

    def rejected(self, proposal: Proposal, reason: str) -> None:
        for member, _ in self.members:
            if member.name == proposal.strategy:
                member.rejected(proposal, reason)

    @property
    def lookahead_hint(self) -> int:
        return max((m.lookahead_hint for m, _ in self.members), default=0)

    def notes(self) -> list[Note]:
        return [n for m, _ in self.members for n in m.notes()]

    @property
    def finished(self) -> bool:
        return all(m.finished for m, _ in self.members)
