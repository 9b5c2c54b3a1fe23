"""What the dashboard's panels read, assembled from the library's own records and figures.

Nothing here computes a figure: status and results come from fleetlab.api, noise and effects from fleetlab.analysis,
pooled arm means from fleetlab.facts. These functions only select and link records (an
experiment's arm, its ancestors, the tree of keeps) so the page can draw them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from fleetlab import api
from fleetlab.errors import ConfigError

__all__ = ["experiment_detail", "diff_view", "progress", "lineage", "analysis", "submit_files"]

LOG_TAIL_CHARS = 20_000


def _arm(store: Any, e: Any, exps: list | None = None) -> dict[str, Any]:
    """The pooled figures of every run of e's code in its session (fleetlab.facts.arm_stats, as status shows)."""
    from fleetlab.facts import arm_stats

    exps = store.experiments(tag=e.tag) if exps is None else exps
    return arm_stats([x for x in exps if (x.content_hash or x.id) == (e.content_hash or e.id)]) or {}


def experiment_detail(opened: api.Opened, exp_id: str) -> dict[str, Any]:
    """`fleetlab show --json`'s record plus the progress curve, the arm (every run of the same files, pooled by the
    keep rule) and the lineage (parents up to the session's first experiment)."""
    store = opened.store
    rec = api.show(opened, exp_id)
    e = store.get(exp_id)
    rec["observations"] = [{"step": s, "metric": m, "elapsed": t} for s, m, t in store.observations(exp_id)]
    decisions = store.decisions()
    same = store.find_hash(e.content_hash) if e.content_hash else [e.id]
    arm = []
    for other_id in same:
        o = store.get(other_id)
        d = decisions.get(o.id)
        arm.append({"id": o.id, "state": o.state.value, "metric": o.metric, "hardware": o.hardware, "role": o.role,
                    "status": d.status if d else None})
    rec["arm"] = arm
    rec["arm_stats"] = _arm(store, e)
    chain, seen, cur = [], {e.id}, e.parent
    while cur and cur not in seen:
        seen.add(cur)
        p = store.get(cur)
        d = decisions.get(p.id)
        chain.append({"id": p.id, "description": p.description, "metric": p.metric, "role": p.role,
                      "status": d.status if d else None})
        cur = p.parent
    rec["lineage"] = chain
    return rec


def diff_view(opened: api.Opened, exp_id: str, against: str = "parent") -> dict[str, Any]:
    """The experiment's diff against its parent, the session's incumbent, its baseline, or any experiment id."""
    store = opened.store
    e = store.get(exp_id)
    if against == "parent":
        other = e.parent
    elif against == "incumbent":
        other = store.incumbent(e.tag)
    elif against == "baseline":
        other = next((x.id for x in store.experiments(tag=e.tag) if x.role == "baseline"), None)
    else:
        other = store.get(against).id
    if other is None and against != "parent":
        return {"experiment": exp_id, "against": against, "against_id": None, "diff": "",
                "note": f"this session has no {against} yet"}
    return {"experiment": exp_id, "against": against, "against_id": other,
            "diff": api.diff(opened, exp_id, other) if other != exp_id else ""}


def progress(opened: api.Opened) -> dict[str, Any]:
    """The validated-best line (each incumbent from when it took over, at its arm's pooled mean as status shows it)
    and the noise floor per hardware class for the band around it."""
    from fleetlab.analysis.noise import noise_floor

    store = opened.store
    tag = api.current_tag(store)
    if tag is None:
        return {"tag": None, "incumbents": [], "noise": {}}
    exps = store.experiments(tag=tag)
    line = []
    for inc_id, at in store.incumbent_history(tag):
        e = store.get(inc_id)
        arm = _arm(store, e, exps)
        line.append({"id": inc_id, "at": at, "mean": arm.get("mean"), "n": arm.get("n"), "hardware": e.hardware,
                     "description": e.description})
    sess = store.session(tag) or {}
    return {"tag": tag, "started_at": sess.get("started_at"), "incumbents": line, "noise": noise_floor(exps)}


def lineage(opened: api.Opened) -> list[dict[str, Any]]:
    """The tree of keeps: the baseline and every kept experiment, each linked to its nearest kept ancestor."""
    store = opened.store
    tag = api.current_tag(store)
    if tag is None:
        return []
    decisions = store.decisions()
    exps = {e.id: e for e in store.experiments(tag=tag)}
    inc = store.incumbent(tag)
    members = {i for i, e in exps.items()
               if e.role == "baseline" or (decisions.get(i) is not None and decisions[i].status == "keep")}
    nodes = []
    for i in sorted(members, key=lambda x: exps[x].queued_at):
        e = exps[i]
        up, seen = e.parent, set()
        while up and up not in members and up in exps and up not in seen:
            seen.add(up)
            up = exps[up].parent
        arm = _arm(store, e, list(exps.values()))
        mean, n = arm.get("mean"), arm.get("n")
        nodes.append({"id": i, "parent": up if up in members else None, "description": e.description,
                      "role": e.role, "metric": e.metric, "mean": mean, "n": n, "incumbent": i == inc})
    return nodes


def analysis(opened: api.Opened) -> dict[str, Any]:
    """`fleetlab analyze --json`: noise per hardware class, hardware effects, knob effects."""
    from fleetlab.analysis.report import analyze

    try:
        space = api.knob_space(opened.project)
    except Exception:  # a knob file the space cannot be inferred from: effects without ranges
        space = None
    return analyze(opened.project, opened.store, space=space)


def _safe_relpath(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("every key of \"files\" must be a file name such as \"train.py\"", key="files")
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or "\\" in name:
        raise ConfigError(f"{name!r} is not a path inside the project", key="files")
    return str(p)


def submit_files(opened: api.Opened, files: dict[str, str], description: str, replicates: int = 1,
                 parent: str | None = None, agent: str | None = None) -> list[str]:
    """`fleetlab submit` for files sent over HTTP: the files are written over a scratch copy of the project and the
    library's submit runs on it, so the same checks apply (only editable files may differ, nothing is added)."""
    from fleetlab.workspace import project_files

    project = opened.project
    names = {_safe_relpath(k): v for k, v in files.items()}
    project.state_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="submit-", dir=project.state_dir))
    try:
        for rel in project_files(project):
            dest = scratch / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if rel in names or rel in project.editable:
                shutil.copyfile(project.root / rel, dest)
                continue
            try:  # unchanged files: a hard link costs nothing, even for a large data file
                os.link(project.root / rel, dest)
            except OSError:
                shutil.copyfile(project.root / rel, dest)
        for rel, text in names.items():
            dest = scratch / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                dest.unlink()  # never write through a hard link into the project
            dest.write_text(text)
        exps = api.submit(opened, scratch, description, replicates=replicates, parent=parent, agent=agent)
        return [e.id for e in exps]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
