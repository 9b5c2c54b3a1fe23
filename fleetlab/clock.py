"""Two clocks, one scheduler: real time for real fleets, virtual time for the simulated fleet.

The scheduler never calls `time` directly. It asks `clock.now()` and, when it has nothing to do, calls
`clock.wait(until)` where `until` is the earliest moment something is known to happen (None: unknown).
The real clock sleeps a short poll interval (or until `until`, whichever is sooner); the virtual clock jumps
straight to `until`, so eight simulated hours pass in seconds.
"""

from __future__ import annotations

import time


class RealClock:
    virtual = False  # every clock says which it is: the loop batches writes and skips sleeps on a virtual one

    def __init__(self, poll_interval: float = 0.05):
        self.poll_interval = poll_interval

    def now(self) -> float:
        return time.time()

    def wait(self, until: float | None) -> None:
        delay = self.poll_interval
        if until is not None:
            delay = max(0.0, min(delay, until - time.time()))
        if delay > 0:
            time.sleep(delay)


class VirtualClock:
    """Simulated time in seconds since `start`; `wait` advances instantly to the next known event."""

    virtual = True

    def __init__(self, start: float = 0.0):
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += max(0.0, seconds)

    def wait(self, until: float | None) -> None:
        if until is None:
            raise RuntimeError("the virtual clock was asked to wait with no event pending: the simulation is stuck")
        if until > self._now:
            self._now = until
