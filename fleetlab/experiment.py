"""Frozen records shared by every part of fleetlab: proposals, experiments, workers, run specs, decisions, and the
enums for state, role and decision status (str-valued, so the strings stored in a database compare equal to them)."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


class State(str, enum.Enum):
    """Where an experiment is. Every experiment ends in exactly one final state."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"            # exit 0 and a finite metric
    CRASH = "crash"          # exit code != 0
    TIMEOUT = "timeout"      # killed at timeout_s
    NO_METRIC = "no_metric"  # exit 0 but the metric pattern never matched
    NAN = "nan"              # the metric is NaN or infinite
    TAMPERED = "tampered"    # a read-only file changed during the run
    CANCELLED = "cancelled"  # stopped by the user (Ctrl-C) or by `fleetlab cancel`
    PRUNED = "pruned"        # stopped early because it could not win

    @property
    def is_final(self) -> bool:
        return self not in (State.QUEUED, State.RUNNING)

    @property
    def is_failure(self) -> bool:
        return self.is_final and self not in (State.DONE, State.PRUNED, State.CANCELLED)


FINAL_STATES = tuple(s for s in State if s.is_final)


class Role(enum.StrEnum):
    """Why an experiment runs. Screening roles (explore, combine) compete for a keep; the others measure."""

    EXPLORE = "explore"        # a strategy's (or a person's) new variant
    BASELINE = "baseline"      # the session's starting files (its first incumbent), replicated
    REPLICATE = "replicate"    # another run of an incumbent's files (noise, hardware effects)
    VALIDATE = "validate"      # a promoted candidate's validation runs
    COMBINE = "combine"        # a merge of two validated improvements of one parent
    CONTROL = "control"        # a re-run of the incumbent interleaved as a drift control
    CONFIRM = "confirm"        # end-of-session paired re-runs of baseline and incumbent


class DecisionStatus(enum.StrEnum):
    """The keep rule's verdict on one experiment."""

    KEEP = "keep"          # it (or the candidate it validated) is the new incumbent
    DISCARD = "discard"
    CRASH = "crash"        # it failed (crash, timeout, no metric, NaN, tampered)
    PENDING = "pending"    # promoted: awaiting its validation runs


@dataclass(frozen=True)
class Worker:
    """One slot of a fleet. `hardware` is a class label such as "H100", "H200", "cpu"; `tier` is screen/validate/None."""

    id: str
    hardware: str = "cpu"
    tier: str | None = None
    price_per_hour: float = 0.0
    speed: float = 1.0  # relative speed, informational (sim fleets know it; real fleets measure it)


@dataclass(frozen=True)
class RunSpec:
    """Everything needed to start one experiment: its snapshot directory, command, environment and limits."""

    experiment_id: str
    workdir: Path
    command: str
    env: dict[str, str]
    timeout_s: float
    setup: str | None = None
    description: str = ""
    files: dict[str, str] = field(default_factory=dict)  # the editable files' content (sim fleets read knobs from it)
    seed: int = 0


@dataclass(frozen=True)
class Note:
    """A line for the project's notepad. Strategies hand notes back to the loop, which records them."""

    author: str
    text: str
    experiment: str | None = None


@dataclass(frozen=True)
class Edit:
    """One change to one editable file: a SEARCH/REPLACE pair (search must occur exactly once) or a whole new file."""

    file: str
    search: str | None = None
    replace: str | None = None
    content: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.content is not None:
            return {"file": self.file, "content": self.content}
        return {"file": self.file, "search": self.search, "replace": self.replace}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Edit":
        return cls(file=d["file"], search=d.get("search"), replace=d.get("replace"), content=d.get("content"))


@dataclass(frozen=True)
class Proposal:
    """What a strategy asks to run. Knob values are rendered into edits by knobs.py; edits arrive as they are.

    `parent` is the experiment whose files the proposal starts from (None: the current incumbent).
    `replicates` > 1 queues the same variant several times with different seeds; `tier` asks for a worker tier.
    """

    description: str
    parent: str | None = None
    knobs: dict[str, Any] = field(default_factory=dict)
    edits: tuple[Edit, ...] = ()
    files: dict[str, str] | None = None  # whole editable files (used by `fleetlab submit --from DIR`)
    replicates: int = 1
    tier: str | None = None
    hardware: str | None = None  # ask for one hardware class (replicates spread across classes)
    seed: int | None = None
    hypothesis: str = ""
    strategy: str = ""
    role: str = Role.EXPLORE  # a Role value
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """One run of one variant, as recorded in the store."""

    id: str
    tag: str
    description: str
    state: State
    parent: str | None = None
    strategy: str = ""
    role: str = Role.EXPLORE  # a Role value
    knobs: dict[str, Any] = field(default_factory=dict)
    edits: tuple[Edit, ...] = ()
    files: dict[str, str] = field(default_factory=dict)  # editable path -> blob hash
    content_hash: str = ""
    seed: int = 0
    tier: str | None = None
    want_hardware: str | None = None
    metric: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    worker: str | None = None
    hardware: str | None = None
    queued_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    log_path: str | None = None
    log_tail: str = ""
    lines_added: int = 0
    lines_removed: int = 0
    attempts: int = 0
    handle: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def number(self) -> int:
        return int(self.id.split("-")[-1])

    @property
    def runtime_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.started_at)

    def evolve(self, **changes: Any) -> "Experiment":
        return replace(self, **changes)


@dataclass(frozen=True)
class Result:
    """What the collector concluded about a finished run."""

    experiment_id: str
    state: State
    metric: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    log_tail: str = ""
    worker: str | None = None
    hardware: str | None = None


@dataclass(frozen=True)
class Decision:
    """The keep rule's verdict on an experiment: keep (new incumbent), discard, crash, or pending (awaiting validation)."""

    status: str  # a DecisionStatus value
    reason: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)


def format_id(n: int) -> str:
    return f"exp-{n:04d}"


def is_finite(x: float | None) -> bool:
    return x is not None and not math.isnan(x) and not math.isinf(x)


def better(a: float, b: float, goal: str) -> bool:
    """True when metric a is strictly better than b under goal ('minimize' or 'maximize')."""
    return a < b if goal == "minimize" else a > b
