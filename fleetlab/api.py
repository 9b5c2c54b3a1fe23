"""The library behind the CLI: open a project, build and run a session, submit variants, wait, query.

The CLI (cli.py) only parses arguments, calls these functions and prints. Anything a dashboard or a notebook needs is
here too.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fleetlab.errors import ConfigError, FleetlabError
from fleetlab.experiment import Experiment, Proposal, State
from fleetlab.project import Project, find_root
from fleetlab.store.sqlite import SQLiteStore

RESUMABLE = ("running", "interrupted", "pending")


@dataclass
class Opened:
    project: Project
    store: SQLiteStore

    def close(self) -> None:
        self.store.close()


def open_project(directory: str | os.PathLike | None = None, readonly: bool = False) -> Opened:
    """`readonly`: for commands that only read (they then work on a read-only `.fleetlab`)."""
    project = Project.load(find_root(directory))
    store = SQLiteStore(project.db_path, readonly=readonly)
    return Opened(project, store)


def knob_space(project: Project):
    """The search space inferred from the knob file and fleetlab.toml's [knobs] (None if the file has no knobs)."""
    if not project.knob_file.endswith(".py"):
        return None
    from fleetlab.knobs import infer_space, read_constants

    constants: dict[str, Any] = {}  # read-only files' constants (e.g. prepare.py's MAX_SEQ_LEN) for constraints
    for rel in project.readonly:
        if rel.endswith(".py"):
            try:
                constants.update(read_constants((project.root / rel).read_text()))
            except SyntaxError:
                pass
    return infer_space((project.root / project.knob_file).read_text(), project.knob_overrides,
                       list(project.constraints), constants=constants)


def current_tag(store: SQLiteStore) -> str | None:
    sessions = store.sessions()
    return sessions[-1]["tag"] if sessions else None


def choose_tag(store: SQLiteStore, tag: str | None, now: float | None = None) -> tuple[str, bool]:
    """(tag, resuming). An explicit tag is used as is; otherwise an unfinished session is resumed, or a new tag made
    from the date (autoresearch style: `nov22`, then `nov22-2`, ...)."""
    if tag:
        check_tag(tag)
        s = store.session(tag)
        return tag, s is not None
    sessions = store.sessions()
    if sessions and sessions[-1]["status"] in RESUMABLE:
        return sessions[-1]["tag"], True
    base = _dt.datetime.fromtimestamp(now or time.time()).strftime("%b%d").lower()
    taken = {s["tag"] for s in sessions}
    new, i = base, 2
    while new in taken:
        new, i = f"{base}-{i}", i + 1
    return new, False


def check_tag(tag: str) -> None:
    import re

    # git's ref rules within that alphabet: no '..', no trailing '.', no '.lock' ending
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}", tag) or ".." in tag or tag.endswith((".", ".lock")):
        raise ConfigError(f"--tag {tag!r} must be letters, digits, '.', '_' or '-', without '..' or a trailing '.' "
                          "or '.lock' (a git branch name part)", key="tag")


class RunLock:
    """One orchestrator per project: a second `fleetlab run` on the same project is refused in one sentence."""

    def __init__(self, project: Project):
        project.state_dir.mkdir(parents=True, exist_ok=True)
        self.path = project.state_dir / "run.lock"
        self._f = None

    def __enter__(self):
        self._f = open(self.path, "a+")
        try:
            fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._f.seek(0)
            pid = self._f.read().strip() or "?"
            self._f.close()
            raise FleetlabError(f"another `fleetlab run` (pid {pid}) is already running this project; "
                                "use `fleetlab status` to follow it") from None
        self._f.seek(0)
        self._f.truncate()
        self._f.write(str(os.getpid()))
        self._f.flush()
        return self

    def __exit__(self, *exc):
        if self._f is not None:
            fcntl.flock(self._f, fcntl.LOCK_UN)
            self._f.close()
        return False


def make_keep_rule(project: Project, name: str = "auto"):
    """The keep rule in use: the statistical research-validity rule when available, else the simple one."""
    from fleetlab.analysis.keep import SimpleKeepRule

    if name == "simple":
        return SimpleKeepRule()
    try:
        from fleetlab.analysis.validity import ValidityKeepRule
    except ImportError:
        return SimpleKeepRule()
    return ValidityKeepRule.from_project(project)


def submit(opened: Opened, src: str | os.PathLike, description: str, replicates: int = 1,
           parent: str | None = None, agent: str | None = None,
           on_warning: Callable[[str], None] | None = None, prune: bool = True) -> list[Experiment]:
    """Queue a hand-made variant (a copy of the project with edited editable files). Returns the queued records.
    The parent is `parent`, else the experiment `fleetlab checkout` made src from, else the incumbent; `on_warning`
    hears when the variant undoes a change its parent has or repeats code already submitted (agents.py);
    `prune=False`: the pruner leaves its runs alone."""
    from fleetlab.agents import check_variant_dir, origin_of, same_code, undone_changes
    from fleetlab.proposals import Materializer
    from fleetlab.workspace import files_from_dir

    project, store = opened.project, opened.store
    if not description.strip():
        raise ConfigError("a submission needs a description (-m)", key="message")
    if replicates < 1:
        raise ConfigError("--replicates must be at least 1", key="replicates")
    check_variant_dir(project, Path(src))
    files = files_from_dir(project, Path(src))
    origin = origin_of(src)
    for given in (parent, origin):
        if given:
            store.get(given)  # an unknown parent fails before anything is written
    tag = current_tag(store)
    now = time.time()
    if tag is None:
        tag, _ = choose_tag(store, None, now)
        store.save_session(tag, started_at=now, updated_at=now, status="pending")
    parent_id = parent or origin or store.incumbent(tag)
    parent_exp = store.get(parent_id) if parent_id else None
    m = Materializer(project, store)
    meta: dict[str, Any] = {"agent": agent} if agent else {}
    if not prune:
        meta["prune"] = False
    prop = Proposal(description=description, files=files, strategy="manual", replicates=replicates, meta=meta)
    variant = m.build(prop, parent_exp)
    warnings = undone_changes(opened, parent_exp, variant.files)
    same = same_code(store, variant.content_hash)
    if same:
        who = f" ({same[0].meta['agent']})" if same[0].meta.get("agent") else ""
        warnings.append(f"this is the same code as {same[0].id}{who}"
                        f"{f' and {len(same) - 1} more' if len(same) > 1 else ''}: it joins that arm")
    for w in warnings:
        if on_warning:
            on_warning(w)
    out = []
    import random

    rng = random.Random()
    for _ in range(replicates):
        exp = m.to_experiment(prop, parent_exp, tag=tag, seed=rng.randrange(2 ** 31), now=now, strategy="manual",
                              variant=variant)
        out.append(store.add_experiment(exp))
    return out


def confirm(opened: Opened, pairs: int | None = None) -> list[Experiment]:
    """Queue the final confirmation of the latest session: its baseline and its incumbent re-run interleaved (role
    confirm, `pairs` of each, default [validity] replicates), for the `fleetlab run` serving the project or
    `fleetlab confirm`'s own session to run. Refused in one sentence when there is nothing to confirm."""
    import random

    from fleetlab.analysis.confirm import confirmation
    from fleetlab.ledger import StoreView
    from fleetlab.proposals import Materializer

    project, store = opened.project, opened.store
    n = int(pairs if pairs is not None else project.section("validity")["replicates"])
    if n < 2:
        raise ConfigError("--pairs must be at least 2: an interval needs two pairs", key="pairs")
    tag = current_tag(store)
    view = StoreView(store, project.goal, tag)
    if tag is None or view.incumbent() is None:
        raise ConfigError("nothing to confirm: no session has a result yet (`fleetlab run` first)", key="confirm")
    props = confirmation(view, n)
    if not props:
        raise ConfigError(f"nothing to confirm in session {tag}: its incumbent is the baseline's code, or it was "
                          "confirmed already", key="confirm")
    m, rng, now = Materializer(project, store), random.Random(), time.time()
    out = []
    for prop in props:
        parent = store.get(prop.parent)
        exp = m.to_experiment(prop, parent, tag=tag, seed=rng.randrange(2 ** 31), now=now, strategy="confirm")
        out.append(store.add_experiment(exp))
    return out


def wait(store: SQLiteStore, ids: list[str] | None = None, any_: bool = False, timeout: float | None = None,
         poll: float = 0.5, on_tick: Callable[[], None] | None = None) -> list[Experiment]:
    """Block until the given experiments (default: every pending one) are finished, or any one of them with any_.
    Returns the finished ones among them."""
    for i in ids or []:
        store.get(i)  # unknown ids fail at once
    watch = list(ids) if ids else [e.id for e in store.experiments(states=[State.QUEUED, State.RUNNING])]
    if not watch:
        return []
    start = time.time()
    while True:
        exps = [store.get(i) for i in watch]
        done = [e for e in exps if e.state.is_final]
        if (any_ and done) or len(done) == len(exps):
            return done
        if timeout is not None and time.time() - start > timeout:
            raise FleetlabError(f"gave up waiting after {timeout:g} s; {len(exps) - len(done)} experiment(s) are "
                                "still queued or running")
        if on_tick:
            on_tick()
        time.sleep(poll)


def facts(opened: Opened, tag: str | None = None):
    """The session's derived figures (fleetlab.facts.Facts): what every surface shows."""
    from fleetlab import facts as _facts

    return _facts.compute(opened.project, opened.store, tag)


def status(opened: Opened) -> dict[str, Any]:
    """`status --json`: the facts of the latest session plus its live lists (running, queued) and session record."""
    store = opened.store
    f = facts(opened)
    now = time.time()
    exps = store.experiments(tag=f.tag) if f.tag else []
    running = [{"id": e.id, "worker": e.worker, "hardware": e.hardware, "elapsed_s": round(now - (e.started_at or now), 1),
                "description": e.description} for e in exps if e.state is State.RUNNING] if f.serving else []
    queued = [e.id for e in store.experiments(states=[State.QUEUED])]
    return {**f.to_dict(), "session": store.session(f.tag) if f.tag else None, "running": running, "queued": queued}


def experiment_record(e: Experiment, decision=None, row=None) -> dict[str, Any]:
    """One experiment as `results --json`, `wait --json` and `show --json` print it; `row` (fleetlab.facts.Row) gives
    the status and metric every surface shows (a pruned run's last observed value, `metric_observed` true)."""
    d = {"id": e.id, "tag": e.tag, "state": e.state.value, "metric": e.metric, "status": None,
         "description": e.description, "parent": e.parent, "strategy": e.strategy, "role": e.role,
         "knobs": e.knobs, "extras": e.extras, "worker": e.worker, "hardware": e.hardware, "seed": e.seed,
         "queued_at": e.queued_at, "started_at": e.started_at, "finished_at": e.finished_at,
         "runtime_s": e.runtime_s, "exit_code": e.exit_code, "content_hash": e.content_hash,
         "lines_added": e.lines_added, "lines_removed": e.lines_removed, "reason": e.meta.get("reason", ""),
         "agent": e.meta.get("agent"), "backfill": e.meta.get("backfill")}
    if decision is not None:
        d["status"] = decision.status
        d["decision"] = {"status": decision.status, "reason": decision.reason, "numbers": decision.numbers}
    elif e.state.is_failure:
        d["status"] = "crash"
    if row is not None:
        d.update(status=row.status, metric=row.metric, metric_observed=row.metric_observed)
    return d


def records(opened: Opened, exps: list[Experiment]) -> list[dict[str, Any]]:
    """`experiment_record` of each, with the status and metric of fleetlab.facts."""
    from fleetlab.facts import rows

    decisions = opened.store.decisions()
    return [experiment_record(e, decisions.get(e.id), r) for e, r in zip(exps, rows(opened.store, None, exps))]


def results(opened: Opened, tag: str | None = None, agent: str | None = None) -> list[dict[str, Any]]:
    """Every experiment's record; `agent`: only those submitted with `--agent` that name."""
    return records(opened, [e for e in opened.store.experiments(tag=tag)
                            if agent is None or e.meta.get("agent") == agent])


def show(opened: Opened, exp_id: str) -> dict[str, Any]:
    """One experiment as `fleetlab show --json` prints it: its record, every decision taken on it, log tail, meta."""
    store = opened.store
    e = store.get(exp_id)
    rec = records(opened, [e])[0]
    rec["decision_history"] = [d.__dict__ for d in store.decision_history(e.id)]
    rec["log_tail"] = e.log_tail
    rec["meta"] = {k: v for k, v in e.meta.items() if k != "readonly_hashes"}
    return rec


def diff(opened: Opened, exp_id: str, against: str | None = None) -> str:
    """Unified diff of an experiment's editable files against another experiment's (default: its parent; the
    project's own files when it has none)."""
    from fleetlab.proposals import Materializer
    from fleetlab.workspace import unified_diff

    store = opened.store
    e = store.get(exp_id)
    other_id = against or e.parent
    other = store.get(other_id) if other_id else None
    m = Materializer(opened.project, store)
    return unified_diff(m.files_of(other), m.files_of(e))


def log_text(opened: Opened, exp_id: str, tail_chars: int | None = None) -> str:
    """The run's whole log (its last `tail_chars` characters), or the stored tail when the log file is gone."""
    e = opened.store.get(exp_id)
    log = Path(e.log_path) if e.log_path else None
    text = log.read_text(errors="replace") if log and log.is_file() else e.log_tail or ""
    return text[-tail_chars:] if tail_chars else text


def add_note(opened: Opened, author: str, text: str, experiment: str | None = None) -> int:
    """Add a note to the shared notepad; an unknown experiment id is refused before anything is written."""
    text = text.strip()
    if not text:
        raise ConfigError("a note needs its text", key="text")
    if experiment:
        opened.store.get(experiment)
    return opened.store.add_note(author or "anonymous", text, time.time(), experiment)


def fmt_metric(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.6f}"


def build_report(opened: Opened, out_dir: Path | None = None, tag: str | None = None) -> dict[str, Path]:
    """progress.png and report.html of session `tag` (default: the latest) from its facts; {"png": .., "html": ..}."""
    from fleetlab.report import write_report

    return write_report(opened.project, opened.store, out_dir or opened.project.state_dir / "report", tag)
