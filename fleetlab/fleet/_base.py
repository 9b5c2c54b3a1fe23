"""The Executor interface: where experiments run.

An executor owns a set of workers (one slot each: a GPU, a CPU slot, a cluster, a simulated machine). The scheduler
asks it to start a `RunSpec` on a free worker, polls the handles it got back, and reads logs. The executor never
decides anything about metrics: it reports the run's output lines and how the run ended; the collector parses them.

Rules every executor follows (checked by tests/test_executor_contract.py):
- `submit` returns quickly; the run goes on in the background (a process, a Ray job, a cluster job, a virtual event).
- `poll` reports each handle at most once as finished, with its exit code (None if it never started), whether it was
  killed at the timeout, and `infra_failure` when the *infrastructure* failed (a node died, a cluster was preempted):
  such experiments are re-queued, not counted as crashes.
- `poll` also returns the output lines that appeared since the previous poll (progress lines feed early stopping).
- `cancel` stops the run and everything it started; a later `poll` reports it finished.
- `handle.data` is JSON-serialisable; `reattach(data)` turns it back into a live handle after an orchestrator
  restart, or returns None if the run is gone (the scheduler then re-queues it).
- Capabilities are data: `SUPPORTS` lists what the executor can do beyond the basics ("reattach", "early_stop",
  "heterogeneous", "virtual_clock"; "spec_files": it runs from `RunSpec.files` alone, so no snapshot directory is
  written for it).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from fleetlab.experiment import RunSpec, Worker  # records; re-exported for the executors and older imports

__all__ = ["Executor", "Handle", "Update", "RunSpec", "Worker"]


@dataclass
class Handle:
    experiment_id: str
    worker_id: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Update:
    """What `poll` learned about one handle."""

    experiment_id: str
    finished: bool
    lines: tuple[str, ...] = ()
    exit_code: int | None = None
    timed_out: bool = False
    infra_failure: str | None = None  # a reason when the infrastructure, not the experiment, failed
    started_at: float | None = None
    finished_at: float | None = None


class Executor(abc.ABC):
    """Base class of every fleet. Subclasses set `name` and `SUPPORTS` and implement the abstract methods."""

    name: ClassVar[str] = "executor"
    SUPPORTS: ClassVar[frozenset[str]] = frozenset()
    clock: Any = None  # the virtual clock a simulated fleet runs on (None: real time)

    @abc.abstractmethod
    def workers(self) -> list[Worker]:
        """The workers available now (a worker taken out after a setup failure is no longer listed)."""

    @abc.abstractmethod
    def submit(self, spec: RunSpec, worker: Worker) -> Handle:
        """Start `spec` on `worker` and return at once."""

    @abc.abstractmethod
    def poll(self, handles: list[Handle]) -> list[Update]:
        """Report on the given handles: new output lines, and which finished and how."""

    @abc.abstractmethod
    def logs(self, handle: Handle) -> str:
        """The run's whole output so far (stdout and stderr together)."""

    @abc.abstractmethod
    def cancel(self, handle: Handle) -> None:
        """Stop the run and everything it started."""

    def reattach(self, experiment_id: str, data: dict[str, Any]) -> Handle | None:
        """Re-attach to a run started by an earlier orchestrator; None if it is gone. Default: never possible."""
        return None

    def next_event_at(self) -> float | None:
        """For executors on a virtual clock: when the next run ends. Real executors return None."""
        return None

    def prepare(self, project_root: Path, setup: str | None) -> None:
        """Run the project's setup once per worker before the first experiment (default: nothing to do)."""

    def data_fingerprint(self, worker_id: str) -> str | None:
        """The data fingerprint (`fleetlab: data=...`) the worker's setup printed, None if it printed none. A run's
        own output is never trusted for it: a run may only repeat it."""
        return None

    def notices(self) -> list[str]:
        """Sentences to show once at session start (a run sandbox that is not available here)."""
        return []

    def dry_run(self, specs: list[tuple[RunSpec, Worker]], out_dir: Path) -> list[Path]:
        """Write the exact launch specs for `specs` into out_dir without launching anything; return their paths."""
        import json

        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for spec, worker in specs:
            p = out_dir / f"{spec.experiment_id}.json"
            p.write_text(json.dumps({"executor": self.name, "worker": worker.id, "hardware": worker.hardware,
                                     "workdir": str(spec.workdir), "command": spec.command, "envs": spec.env,
                                     "timeout_s": spec.timeout_s}, indent=2))
            paths.append(p)
        return paths

    def close(self) -> None:
        """Release what the executor holds (processes it owns stay alive only if they outlive it by design)."""
