"""What an outside agent needs beyond submit and wait: the incumbent's files to start from, diffs against the
baseline, warnings when a variant undoes a kept change, and a wait that returns when a worker is about to idle.

A keep moves only the `fleetlab/<tag>` branch: the project directory stays at the baseline. An agent that copied the
project directory would silently drop every kept change, so `checkout` writes an experiment's files (by default the
incumbent's) into a directory of the agent's, with a marker that `submit --from` reads as the variant's parent.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from fleetlab.errors import ConfigError, FleetlabError, ProposalRejected
from fleetlab.experiment import Experiment

# The marker lives under the state directory's name, which every snapshot and submission leaves out.
ORIGIN = Path(".fleetlab") / "origin.json"
# Written into a project by fleetlab itself, never part of a variant (results.tsv is excluded by the project).
NOT_COPIED = ("AGENTS.md",)


def incumbent_id(store) -> str | None:
    """The incumbent of the latest session that has one (a new session's first minutes have none yet)."""
    for s in reversed(store.sessions()):
        inc = store.incumbent(s["tag"])
        if inc:
            return inc
    return None


def baseline_of(store) -> Experiment | None:
    """The project's first baseline run: the code every change is measured from."""
    return next((e for e in store.experiments() if e.role == "baseline"), None)


def resolve_id(store, word: str, required: bool = True) -> str | None:
    """An experiment id, or `incumbent` / `baseline` for those experiments (None when there is none yet and not
    `required`: the project's own files stand for both then)."""
    if word == "incumbent":
        found = incumbent_id(store)
    elif word == "baseline":
        found = getattr(baseline_of(store), "id", None)
    else:
        return word
    if not found and required:
        raise FleetlabError(f"this project has no {word} yet; `fleetlab status` says where the session stands")
    return found


# -- checkout -------------------------------------------------------------------------------------------------------
def checkout(opened, dest: str | os.PathLike, exp_id: str | None = None, force: bool = False) -> tuple[str | None, Path]:
    """Write the project with `exp_id`'s editable files (default: the incumbent; the project's own files when there is
    none yet) into dest, plus the origin marker. Returns (origin id or None, dest)."""
    from fleetlab.proposals import Materializer
    from fleetlab.workspace import make_snapshot

    project, store = opened.project, opened.store
    dest = Path(dest).resolve()
    if dest.is_relative_to(project.root.resolve()):
        raise ConfigError(f"{dest} is inside the project; check out into a directory outside it "
                          f"(e.g. ../{project.root.name}-variants/v1)", key="dir")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        if not force:
            raise ConfigError(f"{dest} exists and is not empty; choose a new directory or pass --force to replace "
                              "an earlier checkout", key="dir")
        if not (dest / ORIGIN).is_file():
            raise ConfigError(f"{dest} is not an earlier checkout (no {ORIGIN}); --force replaces only those",
                              key="dir")
    # before the first keep (or the baseline's first result) the baseline stands for the incumbent: same files, and
    # the variant's parent is then the code it was really made from
    origin = resolve_id(store, exp_id) if exp_id else (incumbent_id(store) or getattr(baseline_of(store), "id", None))
    exp = store.get(origin) if origin else None
    files = Materializer(project, store).files_of(exp)
    make_snapshot(project, dest, files)
    for name in NOT_COPIED:
        (dest / name).unlink(missing_ok=True)
    marker = dest / ORIGIN
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"id": exp.id if exp else None, "content_hash": exp.content_hash if exp else None,
                                  "description": exp.description if exp else "the project's own files",
                                  "project": str(project.root), "at": time.time()}, indent=2) + "\n")
    return (exp.id if exp else None), dest


def origin_of(src: str | os.PathLike) -> str | None:
    """The experiment a checked-out directory was made from (None: not a checkout, or a checkout of the project's
    own files)."""
    p = Path(src) / ORIGIN
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text()).get("id")
    except (ValueError, AttributeError):
        raise ConfigError(f"{p} is not a fleetlab checkout marker; delete it or check out again") from None


# -- diffs and warnings ---------------------------------------------------------------------------------------------
def diff_against(opened, exp_id: str, against: str = "parent") -> tuple[str, str]:
    """(what it was compared with, unified diff) of an experiment's files against its parent, the baseline, the
    incumbent or another experiment (by id)."""
    from fleetlab.proposals import Materializer
    from fleetlab.workspace import unified_diff

    store = opened.store
    found = resolve_id(store, exp_id, required=False)
    exp = store.get(found) if found else None  # no incumbent yet: the project's own files
    m = Materializer(opened.project, store)
    if against == "parent":
        other = store.get(exp.parent) if exp and exp.parent else None
        label = f"its parent {other.id}" if other else "the project's files (it has no parent)"
    elif against == "baseline":
        other = baseline_of(store)
        label = f"the baseline {other.id}" if other else "the project's files (no baseline has been queued)"
    elif against == "incumbent":
        inc = incumbent_id(store)
        other = store.get(inc) if inc else None
        label = f"the incumbent {other.id}" if other else "the project's files (there is no incumbent yet)"
    else:  # an experiment id
        other = store.get(resolve_id(store, against))
        label = other.id
    return label, unified_diff(m.files_of(other), m.files_of(exp))


def _added_lines(old: dict[str, str], new: dict[str, str]) -> dict[str, list[str]]:
    import difflib

    out: dict[str, list[str]] = {}
    for name in sorted(set(new)):
        a, b = old.get(name, "").splitlines(), new[name].splitlines()
        added = [ln[1:] for ln in difflib.unified_diff(a, b, lineterm="", n=0)
                 if ln.startswith("+") and not ln.startswith("+++") and ln[1:].strip()]
        if added:
            out[name] = added
    return out


def undone_changes(opened, parent: Experiment | None, files: dict[str, str]) -> list[str]:
    """Sentences naming the lines that the parent's code added since the baseline and this variant drops: the variant
    silently undoes a kept change (typically: it was made from the project directory, which stays at the baseline)."""
    from fleetlab.proposals import Materializer

    if parent is None:
        return []
    m = Materializer(opened.project, opened.store)
    base = baseline_of(opened.store)
    kept = _added_lines(m.files_of(base), m.files_of(parent))
    out = []
    for name, lines in kept.items():
        have = files.get(name, "").splitlines()
        missing = [ln for ln in lines if ln not in have]
        if missing:
            out.append(f"this variant removes {len(missing)} line(s) of {name} that its parent {parent.id} has and "
                       f"the baseline has not (first: {missing[0].strip()!r}): it undoes a kept change; make variants "
                       f"with `fleetlab checkout DIR` to start from the incumbent")
    return out


def missing_readonly(project, src: Path) -> list[str]:
    return [rel for rel in project.readonly if not (Path(src) / rel).is_file()]


def check_variant_dir(project, src: Path) -> None:
    """A variant must be a whole copy of the project: a missing read-only file means it was not made from one."""
    missing = missing_readonly(project, src)
    if missing:
        raise ProposalRejected(f"{src} has no {', '.join(missing)} (read-only); a variant is a whole copy of the "
                               f"project: make one with `fleetlab checkout {src}`", reason="missing")


def same_code(store, content_hash: str) -> list[Experiment]:
    """Earlier experiments with exactly this code (any agent's): a submission of it joins their arm."""
    return [store.get(i) for i in store.find_hash(content_hash)]


# -- waiting for an idle worker -------------------------------------------------------------------------------------
def wait_idle(opened, below: int | None = None, timeout: float | None = None, poll: float = 0.5,
              on_tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """Block until a worker of the serving session is free for the agent's next submission, or (with `below`) the
    queue holds fewer than `below` experiments. A worker running backfill counts as free while nothing is queued:
    backfill only fills idle time, and a submission takes the next worker it frees. Returns what it saw
    (idle_workers, backfill_workers, queue_depth, utilization)."""
    from fleetlab import facts as _facts
    from fleetlab.experiment import State

    if below is not None and below < 1:
        raise ConfigError("--below must be at least 1", key="below")
    start = time.time()
    while True:
        f = _facts.compute(opened.project, opened.store)
        if not f.serving:
            raise FleetlabError("no `fleetlab run` is serving this project, so no worker will free up; start one "
                                "with `fleetlab run --strategy none --detach`")
        filling = sum(1 for e in opened.store.experiments(tag=f.tag, states=[State.RUNNING]) if e.meta.get("backfill"))
        free = f.idle_workers + (filling if f.queue_depth == 0 else 0)
        if free > 0 or (below is not None and f.queue_depth < below):
            return {"idle_workers": f.idle_workers, "backfill_workers": filling, "queue_depth": f.queue_depth,
                    "utilization": f.utilization}
        if timeout is not None and time.time() - start > timeout:
            raise FleetlabError(f"gave up waiting after {timeout:g} s; every worker is busy and "
                                f"{f.queue_depth} experiment(s) are queued")
        if on_tick:
            on_tick()
        time.sleep(poll)


__all__ = ["resolve_id", "checkout", "origin_of", "diff_against", "undone_changes", "check_variant_dir", "same_code",
           "wait_idle", "incumbent_id", "baseline_of", "ORIGIN"]
