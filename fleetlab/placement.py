"""The workers a session holds and where each queued run goes: the scheduler's fleet bookkeeping.

Kept apart from the event loop because it is the part a wide or mixed fleet stresses: which worker may take a run
(a hardware class asked for, a tier the keep rule assigns), which queued runs count as work the free workers can
start (validations waiting for the fastest class must neither starve the others of proposals nor hide a growing
queue), which free worker a run goes to (confirmations to the fastest class, screening to the slowest), and the
fleet's price, classes and speed ranks, cached until the worker list changes (nodes join, die, come back on other
hardware).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from fleetlab.experiment import Experiment, Worker

__all__ = ["FleetFacts", "WorkerPool", "PRIORITY", "priority"]

# roles dispatched before exploration: they decide what is kept. Replicates first (verdicts wait on them); controls
# with the validation runs they are interleaved with, so both sides run under the same conditions. Confirmations
# first of all: they are queued as the session nears its end, pair with each other only, and the headline waits on
# them (behind a late keep's replicates and a pending validation, a 5-minute session ran 2.3 minutes over)
PRIORITY = {"confirm": -1, "baseline": 0, "replicate": 0, "validate": 1, "control": 1, "combine": 2}
SUBMITTED = 2  # then what outside agents and people submitted (`fleetlab submit`, HTTP): backfill never delays it
OUTSIDE = "manual"  # the strategy name a submission is recorded with


def priority(exp: Experiment) -> tuple[int, int]:
    """Dispatch order: by role, outside submissions before the strategy's proposals, then by age."""
    if exp.role == "explore" and exp.strategy == OUTSIDE:
        return SUBMITTED, exp.number
    return PRIORITY.get(exp.role, 3), exp.number


class FleetFacts(NamedTuple):
    """What dispatch and accounting read about the fleet, recomputed only when the worker list is replaced."""

    price_per_hour: float               # dollars per hour of every worker together
    classes: frozenset[str]             # hardware classes present
    rank: dict[str, int]                # hardware class -> speed rank, 0 = slowest
    kinds: list[Worker]                 # one worker per (hardware, tier): what any worker could take


class WorkerPool:
    """The session's workers, which are busy, and the placement of queued runs on the free ones.

    `tier_of(worker)` (the keep rule's, when it assigns tiers) says which tier a worker without one serves."""

    def __init__(self, tier_of: Callable[[Worker], str | None] | None = None) -> None:
        self.workers: list[Worker] = []
        self.busy: set[str] = set()       # ids of the workers running something
        self.dropped: set[str] = set()    # ids of workers removed for good (their setup failed)
        self.tier_of = tier_of
        self._key: tuple[int, int] | None = None  # identity of the worker list the cached facts describe
        self._facts: FleetFacts | None = None

    def facts(self) -> FleetFacts:
        """The fleet's price, classes, speed ranks and worker kinds, cached until the worker list is replaced."""
        key = (id(self.workers), len(self.workers))
        if self._key != key or self._facts is None:
            from fleetlab.analysis.hardware import rank_classes

            self._key = key
            self._facts = FleetFacts(sum(w.price_per_hour for w in self.workers),
                                     frozenset(w.hardware for w in self.workers),
                                     {hw: i for i, hw in enumerate(rank_classes(self.workers))},
                                     list({(w.hardware, w.tier): w for w in self.workers}.values()))
        return self._facts

    def free(self) -> list[Worker]:
        return [w for w in self.workers if w.id not in self.busy]

    def match(self, exp: Experiment, worker: Worker) -> bool:
        """May `worker` run `exp` (its hardware class and tier)?"""
        if exp.want_hardware:
            if exp.want_hardware not in self.facts().classes:
                return True  # the asked-for hardware is absent from this fleet: run it anywhere
            if worker.hardware != exp.want_hardware:
                return False
        if exp.tier and worker.tier and worker.tier != exp.tier:
            return False
        if exp.tier and not worker.tier and self.tier_of is not None:
            tier = self.tier_of(worker)
            if tier is not None and tier != exp.tier:
                return False
        return True

    def queued_for_free(self, queue: list[Experiment]) -> int:
        """Queued experiments that count against the proposals asked for: those any worker could take, plus those a
        worker free right now could take. Runs waiting for one tier or hardware class (validations for the fastest
        GPUs) must not starve the other workers of proposals, and must not hide a growing queue of runs that can go
        anywhere either (with every worker busy, counting only what a free worker could take counted nothing, and
        each request queued `lookahead` more explorations: hundreds of stale proposals after an hour)."""
        if not any(e.want_hardware or e.tier for e in queue):
            return len(queue)
        kinds = self.facts().kinds
        free = self.free()
        return sum(1 for e in queue if all(self.match(e, w) for w in kinds) or any(self.match(e, w) for w in free))

    def place(self, queue: list[Experiment]) -> list[tuple[Experiment, Worker]]:
        """Take from `queue` (sorted in place by role priority, then age) the runs that can start now, each with
        the free worker it goes to; the caller starts them."""
        if not queue or len(self.busy) >= len(self.workers):
            return []
        free = self.free()
        if not free:
            return []
        queue.sort(key=priority)
        rank = self.facts().rank
        placed = []
        for exp in list(queue):
            if not free:
                break
            fits = [w for w in free if self.match(exp, w)]
            if not fits:
                continue
            # confirmations go to the fastest class free, screening to the slowest: a validation run that a screen
            # worker may also take (validations backed up) still prefers the validate class when both are free
            pick = max if exp.tier == "validate" else min
            worker = pick(fits, key=lambda w: rank.get(w.hardware, 0)) if len(rank) > 1 else fits[0]
            queue.remove(exp)
            free.remove(worker)  # started, or failed to start (re-queued): either way not this pass again
            placed.append((exp, worker))
        return placed

    def refresh(self, current: list[Worker], running_on: set[str]) -> bool:
        """Take the executor's `current` worker list (nodes join and leave, clusters come back on other hardware);
        workers dropped for good stay out. True when the list changed."""
        known = {w.id for w in self.workers}
        workers = [w for w in current if w.id in known or w.id not in self.dropped]
        if [(w.id, w.hardware) for w in workers] == [(w.id, w.hardware) for w in self.workers]:
            return False
        self.workers = workers
        self.busy &= {w.id for w in workers} | running_on
        return True

    def drop(self, worker: Worker) -> None:
        """Remove a worker for good (its setup failed)."""
        self.dropped.add(worker.id)
        self.workers = [w for w in self.workers if w.id != worker.id]
        self.busy.discard(worker.id)
