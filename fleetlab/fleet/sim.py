"""The simulated fleet: runs on a virtual clock against a Surface (see fleetlab.bench.surfaces).

`SimExecutor("sim:13xH100+3xH200", surface, clock)` owns 16 simulated workers. `submit` reads the knob values of the
variant out of its editable file (the same way `fleetlab knobs` does), asks the surface what the run measures on the
worker's hardware with the experiment's seed, and schedules the end of the run at `now + seconds` (plus `setup_s` the
first time a worker is used). Nothing sleeps: the scheduler asks `next_event_at()` and the virtual clock jumps there.
`poll` prints what the real template prints (`val_bpb: ...`, `num_steps: ...`, an out-of-memory line for a crash) and
the progress lines `fleetlab: step=<n> metric=<x> elapsed=<s>` whose time has come.

Fleet specs: `sim:N` (N workers of the surface's first hardware class), `sim:NxHW` and mixes `sim:13xH100+3xH200`, with
options `@drift=D` (every run's metric moves linearly by D over the session) and `@over=H` (that session's hours).
The executor keeps the books a benchmark needs: busy worker-seconds (setup is not busy time), and the noise-free truth
of every run (`truth(experiment_id)`: the metric with seed=None on the fleet's fastest hardware class).
"""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from fleetlab.errors import ConfigError, ExecutorError
from fleetlab.fleet._base import Executor, Handle, RunSpec, Update, Worker

__all__ = ["SimExecutor", "parse_sim_spec", "sim_options", "DEFAULT_PRICES"]

DEFAULT_PRICES: dict[str, float] = {"H100": 2.00, "H200": 2.30, "A100": 1.30, "cpu": 0.0}  # $ per GPU-hour

_PART = re.compile(r"^\s*(\d+)\s*(?:[xX*]\s*([A-Za-z][\w.-]*))?\s*$")


def parse_sim_spec(spec: str, hardware: dict[str, float] | None = None) -> list[tuple[str, int]]:
    """`sim:13xH100+3xH200` -> [("H100", 13), ("H200", 3)]; `sim:4` -> [(first hardware class, 4)].

    Hardware names are checked against the surface's `hardware` when given; any error is one ConfigError sentence.
    """
    known = list(hardware or {"cpu": 1.0})
    body = spec[4:] if spec.startswith("sim:") else spec
    body = body.split("@", 1)[0]  # options (`@drift=D`) are read by sim_options
    usage = "write sim:N, sim:NxHW or a mix such as sim:13xH100+3xH200"
    if not body.strip():
        raise ConfigError(f"fleet {spec!r} names no workers; {usage}", key="fleet")
    fleet: dict[str, int] = {}
    for part in body.split("+"):
        m = _PART.match(part)
        if not m:
            raise ConfigError(f"fleet {spec!r}: cannot read {part.strip()!r}; {usage}", key="fleet")
        count, hw = int(m.group(1)), m.group(2) or known[0]
        match = next((k for k in known if k.lower() == hw.lower()), None)
        if match is None:
            raise ConfigError(f"fleet {spec!r}: hardware {hw!r} is unknown to this surface; "
                              f"it knows {', '.join(known)}", key="fleet")
        if count <= 0:
            raise ConfigError(f"fleet {spec!r}: {part.strip()!r} has no workers", key="fleet")
        fleet[match] = fleet.get(match, 0) + count
    return list(fleet.items())


def sim_options(spec: str) -> dict[str, float]:
    """The options after the workers: `sim:12xA+4xB@drift=D@over=H` -> {"drift": D, "over": H}.

    `drift` moves every run's metric linearly with the time its run starts, by D metric units over `over` hours of
    session (default: the session length the executor is given, else 8 h), as a machine whose load changes does. It is
    applied outside the surface, so every surface drifts the same way."""
    usage = "write options as @drift=D (metric units over the session) and @over=H (hours)"
    out: dict[str, float] = {}
    for part in spec.split("@")[1:]:
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if key not in ("drift", "over") or not eq:
            raise ConfigError(f"fleet {spec!r}: unknown option {part.strip()!r}; {usage}", key="fleet")
        try:
            out[key] = float(value.strip().rstrip("hH") if key == "over" else value)
        except ValueError:
            raise ConfigError(f"fleet {spec!r}: {key} must be a number, not {value.strip()!r}", key="fleet") from None
        if key == "over" and out[key] <= 0:
            raise ConfigError(f"fleet {spec!r}: over must be a positive number of hours", key="fleet")
    return out


@dataclass
class _Run:
    experiment_id: str
    worker: Worker
    config: dict[str, Any]
    result: dict[str, Any]
    start: float          # the run itself starts (after a first-use setup)
    end: float            # the run ends (finished, crashed, or killed at the timeout)
    timed_out: bool
    progress: list[tuple[float, str]] = field(default_factory=list)  # (wall time, line)
    shown: int = 0        # progress lines already returned by poll
    lines: list[str] = field(default_factory=list)  # everything returned so far (for logs)
    done: bool = False    # reported finished by poll
    cancelled: bool = False


class SimExecutor(Executor):
    """A simulated fleet on a virtual clock. See the module docstring."""

    name: ClassVar[str] = "sim"
    SUPPORTS: ClassVar[frozenset[str]] = frozenset({"virtual_clock", "spec_files", "early_stop"})

    def __init__(self, spec: str, surface: Any, clock: Any, setup_s: float = 60.0, prices: dict[str, float] | None = None,
                 progress: bool = True, wake_on_progress: bool = False, read_knobs: Callable[[str], dict[str, Any]] | None = None,
                 session_s: float | None = None):
        if not callable(getattr(surface, "evaluate", None)):
            raise ConfigError(f"the simulated fleet needs a surface object (load one with "
                              f"fleetlab.bench.surfaces.load_surface), not {surface!r}", key="surface")
        self.spec = spec
        opts = sim_options(spec)
        self.drift = opts.get("drift", 0.0)
        self.drift_span_s = opts["over"] * 3600.0 if "over" in opts else float(session_s or 8 * 3600.0)
        self.surface = surface
        self.clock = clock
        self.setup_s = float(setup_s)
        self.prices = {**DEFAULT_PRICES, **(prices or {})}
        # Print the surface's progress points as `fleetlab: step=...` lines (they cost time: off for benchmarks that
        # never stop a run early). Wake the virtual clock at every progress point, not only at run ends: needed only when the scheduler stops
        # runs early, and it multiplies the number of events by the number of progress points.
        self.progress = progress
        self.wake_on_progress = wake_on_progress and progress
        self._read_knobs = read_knobs
        speeds: dict[str, float] = dict(getattr(self.surface, "hardware", None) or {"cpu": 1.0})
        self._workers: list[Worker] = []
        for hw, count in parse_sim_spec(spec, speeds):
            for i in range(1, count + 1):
                self._workers.append(Worker(id=f"sim-{hw}-{i:02d}", hardware=hw, price_per_hour=self.prices.get(hw, 0.0),
                                            speed=float(speeds[hw])))
        self.fastest = max((w.hardware for w in self._workers), key=lambda hw: speeds[hw])
        self.metric_name = getattr(self.surface, "metric_name", "val_bpb")
        self.time_budget_s = getattr(self.surface, "time_budget_s", None)
        self.startup_s = float(getattr(self.surface, "startup_s", 0.0))
        self._runs: dict[str, _Run] = {}        # every run ever submitted (finished ones keep only what logs need)
        self._active: dict[str, _Run] = {}      # worker id -> the run on it
        self._used: set[str] = set()            # workers that paid their setup
        self._ends: list[tuple[float, int, str]] = []      # heap of (end, seq, experiment id)
        self._wakes: list[tuple[float, int, str]] = []     # heap of progress times (wake_on_progress only)
        self._seq = 0
        self._due: set[str] = set()            # ended runs not yet reported by poll
        self._knob_cache: dict[str, dict[str, Any]] = {}
        self._truth: dict[str, float | None] = {}
        self._busy_done = 0.0                   # busy worker-seconds of runs already ended
        self._setup_paid = 0.0
        self.started_at = clock.now()

    # -- the Executor interface ---------------------------------------------------------------------------------------

    def workers(self) -> list[Worker]:
        return list(self._workers)

    def submit(self, spec: RunSpec, worker: Worker) -> Handle:
        now = self.clock.now()
        if worker.id in self._active:
            raise ExecutorError(f"simulated worker {worker.id} is already running {self._active[worker.id].experiment_id}")
        if spec.experiment_id in self._runs and not self._runs[spec.experiment_id].done:
            raise ExecutorError(f"experiment {spec.experiment_id} is already running on the simulated fleet")
        try:
            config = self._config(spec)
        except ValueError as e:  # a variant whose train.py does not parse crashes at once, like the real one would
            config, result = dict(self.surface.baseline), {"metric": None, "seconds": 5.0, "error": str(e)}
        else:
            result = self.surface.evaluate(config, worker.hardware, int(spec.seed))
        start = now
        if worker.id not in self._used:
            self._used.add(worker.id)
            start += self.setup_s
            self._setup_paid += self.setup_s
        if self.drift and result.get("metric") is not None:
            result = self._drifted(result, start)
        seconds = max(0.0, float(result.get("seconds", 0.0)))
        timed_out = spec.timeout_s is not None and 0 < spec.timeout_s < seconds
        end = start + (spec.timeout_s if timed_out else seconds)
        run = _Run(spec.experiment_id, worker, config, result, start, end, timed_out)
        if self.progress and result.get("curve"):
            run.progress = self._progress_lines(result, start, end)
        self._runs[spec.experiment_id] = run
        self._active[worker.id] = run
        self._push_end(run)
        if self.wake_on_progress:
            for t, _ in run.progress:
                heapq.heappush(self._wakes, (t, self._seq, spec.experiment_id))
        return Handle(spec.experiment_id, worker.id, {"sim": True, "start": start, "end": end})

    def poll(self, handles: list[Handle]) -> list[Update]:
        now = self.clock.now()
        # runs whose end has come, from the heap of end times: a poll costs O(handles) set look-ups, not more
        due = self._due
        while self._ends and self._ends[0][0] <= now:
            entry = heapq.heappop(self._ends)
            if not self._stale_end(entry):
                due.add(entry[2])
        if not due and not self.progress:
            return []  # nothing ended and no progress lines to show: the common case between events
        updates = []
        runs = self._runs
        if not self.progress:  # only ended runs to report: a set look-up per handle
            for h in handles:
                if h.experiment_id in due:
                    updates.append(self._report_end(h.experiment_id))
                elif h.experiment_id not in runs:
                    updates.append(Update(h.experiment_id, True, infra_failure="the simulated fleet has no such run"))
            return updates
        for h in handles:
            exp_id = h.experiment_id
            if exp_id in due:
                updates.append(self._report_end(exp_id))
                continue
            run = self._runs.get(exp_id)
            if run is None:
                updates.append(Update(exp_id, True, infra_failure="the simulated fleet has no such run"))
            elif run.progress and not run.done and run.shown < len(run.progress) and run.progress[run.shown][0] <= now:
                i = run.shown
                while i < len(run.progress) and run.progress[i][0] <= now:
                    i += 1
                lines = [line for _, line in run.progress[run.shown:i]]
                run.shown = i
                run.lines.extend(lines)
                updates.append(Update(exp_id, False, tuple(lines), started_at=run.start))
        return updates

    def _report_end(self, exp_id: str) -> Update:
        self._due.discard(exp_id)
        run = self._runs[exp_id]
        lines = [line for _, line in run.progress[run.shown:]] + self._final_lines(run)
        run.shown = len(run.progress)
        run.lines.extend(lines)
        self._finish(run)
        exit_code = -15 if run.cancelled else -9 if run.timed_out else (0 if run.result.get("metric") is not None else 1)
        return Update(exp_id, True, tuple(lines), exit_code=exit_code, timed_out=run.timed_out,
                      started_at=run.start, finished_at=run.end)

    def logs(self, handle: Handle) -> str:
        run = self._runs.get(handle.experiment_id)
        return "" if run is None else "\n".join(run.lines) + ("\n" if run.lines else "")

    def cancel(self, handle: Handle) -> None:
        """End the run now: it is charged only up to now, and the next poll reports it finished."""
        run = self._runs.get(handle.experiment_id)
        if run is None or run.done or run.cancelled:
            return
        now = self.clock.now()
        if now < run.end:
            run.cancelled, run.timed_out = True, False
            run.end = now  # cancelled during setup: no busy time at all
            run.progress = [p for p in run.progress if p[0] <= run.end]
            self._push_end(run)

    def next_event_at(self) -> float | None:
        """The earliest pending run end (or, with wake_on_progress, progress point) the scheduler has not seen yet."""
        while self._ends and self._stale_end(self._ends[0]):
            heapq.heappop(self._ends)
        nxt = self._ends[0][0] if self._ends else None
        if self._due:  # ended, but nobody polled them yet
            nxt = self.clock.now()
        if self.wake_on_progress:
            now = self.clock.now()
            while self._wakes and (self._wakes[0][0] <= now or self._runs[self._wakes[0][2]].done):
                heapq.heappop(self._wakes)
            if self._wakes and (nxt is None or self._wakes[0][0] < nxt):
                nxt = self._wakes[0][0]
        return nxt

    # -- the books a benchmark reads ----------------------------------------------------------------------------------

    def truth(self, experiment_id: str) -> float | None:
        """The noise-free metric of this run's config on the fleet's fastest hardware class (None: it crashes)."""
        if experiment_id not in self._truth:
            run = self._runs.get(experiment_id)
            if run is None:
                raise ExecutorError(f"the simulated fleet never ran {experiment_id}")
            self._truth[experiment_id] = self.surface.evaluate(run.config, self.fastest, None).get("metric")
        return self._truth[experiment_id]

    def config(self, experiment_id: str) -> dict[str, Any]:
        """The knob values a run was evaluated with."""
        return dict(self._runs[experiment_id].config)

    def busy_seconds(self, until: float | None = None) -> float:
        """Worker-seconds spent running experiments up to `until` (default now); setup time is not busy time."""
        until = self.clock.now() if until is None else until
        busy = self._busy_done
        for run in self._active.values():
            busy += max(0.0, min(until, run.end) - run.start)
        return busy

    def utilization(self, until: float | None = None) -> float:
        """Busy worker-seconds / available worker-seconds since the executor was created."""
        until = self.clock.now() if until is None else until
        available = len(self._workers) * (until - self.started_at)
        return self.busy_seconds(until) / available if available > 0 else 0.0

    def worker_runs(self, worker_id: str) -> list[tuple[float, float, str]]:
        """(start, end, experiment id) of every run a worker started, in order (for invariant checks)."""
        return sorted((r.start, r.end, r.experiment_id) for r in self._runs.values() if r.worker.id == worker_id)

    @property
    def setup_paid_s(self) -> float:
        return self._setup_paid

    # -- internals ----------------------------------------------------------------------------------------------------

    def _config(self, spec: RunSpec) -> dict[str, Any]:
        baseline = self.surface.baseline
        config = dict(baseline)
        for path in sorted(spec.files):
            source = spec.files[path]
            knobs = self._knob_cache.get(source)
            if knobs is None:
                knobs = self._knobs_of(source)
                if len(self._knob_cache) > 4096:
                    self._knob_cache.clear()
                self._knob_cache[source] = knobs
            for k, v in knobs.items():
                if k in baseline or k in self.surface.space:
                    config[k] = v
        return config

    def _knobs_of(self, source: str) -> dict[str, Any]:
        if self._read_knobs is None:
            from fleetlab.knobs import read_knobs

            self._read_knobs = read_knobs
        try:
            return dict(self._read_knobs(source))
        except Exception as e:
            raise ValueError(f"SyntaxError: the variant's file cannot be read ({type(e).__name__}: {e})") from e

    def _drifted(self, result: dict[str, Any], start: float) -> dict[str, Any]:
        """The run's result moved by the fleet's drift at its start (its whole curve too, so pruning sees it)."""
        shift = self.drift * (start - self.started_at) / self.drift_span_s
        out = {**result, "metric": float(result["metric"]) + shift}
        if result.get("curve"):
            out["curve"] = [(t, m + shift) for t, m in result["curve"]]
        return out

    def _progress_lines(self, result: dict[str, Any], start: float, end: float) -> list[tuple[float, str]]:
        curve = result.get("curve") or ()
        steps = result.get("steps")
        lines = []
        for k, (elapsed, metric) in enumerate(curve, 1):
            t = start + self.startup_s + float(elapsed)
            if t >= end:
                break
            step = int(steps * elapsed / self.time_budget_s) if steps and self.time_budget_s else k
            lines.append((t, f"fleetlab: step={step} metric={metric:.6f} elapsed={elapsed:.1f}"))
        return lines

    def _final_lines(self, run: _Run) -> list[str]:
        r = run.result
        if run.cancelled:
            return ["Terminated"]
        if run.timed_out:
            return []
        if r.get("metric") is None:
            return ["Traceback (most recent call last):", '  File "train.py", line 1, in <module>',
                    str(r.get("error") or "RuntimeError: the run crashed")]
        lines = ["---", f"{self.metric_name}:          {r['metric']:.6f}"]
        if self.time_budget_s:
            lines.append(f"training_seconds: {self.time_budget_s:.1f}")
        lines.append(f"total_seconds:    {run.end - run.start:.1f}")
        if r.get("memory_gb") is not None:
            lines.append(f"peak_vram_mb:     {r['memory_gb'] * 1024:.1f}")
        if r.get("steps") is not None:
            lines.append(f"num_steps:        {r['steps']}")
        return lines

    def _push_end(self, run: _Run) -> None:
        self._seq += 1
        heapq.heappush(self._ends, (run.end, self._seq, run.experiment_id))

    def _stale_end(self, entry: tuple[float, int, str]) -> bool:
        run = self._runs[entry[2]]
        return run.done or entry[0] != run.end

    def _finish(self, run: _Run) -> None:
        run.done = True
        self._busy_done += max(0.0, run.end - run.start)
        if self._active.get(run.worker.id) is run:
            del self._active[run.worker.id]
        run.result.pop("curve", None)  # keep memory flat over 100k runs
        run.progress = []
