"""results.tsv: the autoresearch-compatible export, rewritten as results land (the store stays the source of truth).

Columns: experiment_id, <metric>, memory_gb, status (keep/discard/crash), description — as autoresearch's parallel
variant writes them — then fleetlab's own columns after them.
"""

from __future__ import annotations

import os
from pathlib import Path

from fleetlab.experiment import Experiment, State
from fleetlab.project import Project

EXTRA_COLUMNS = ("state", "strategy", "parent", "hardware", "worker", "seed", "runtime_s", "lines_added",
                 "lines_removed", "tag")


def memory_gb(exp: Experiment) -> float:
    x = exp.extras
    for key, scale in (("memory_gb", 1.0), ("memory_mb", 1 / 1024), ("peak_vram_mb", 1 / 1024)):
        v = x.get(key)
        if isinstance(v, (int, float)):
            return float(v) * scale
    return 0.0


def status_of(exp: Experiment, decision: str | None) -> str:
    if exp.state.is_failure:
        return "crash"
    if not exp.state.is_final:
        return exp.state.value
    return decision if decision in ("keep", "discard", "pending") else "discard"


def rows(project: Project, store) -> list[list[str]]:
    decisions = store.decisions()
    out = [["experiment_id", project.metric, "memory_gb", "status", "description", *EXTRA_COLUMNS]]
    for e in store.experiments():
        d = decisions.get(e.id)
        status = status_of(e, d.status if d else None)
        metric = f"{e.metric:.6f}" if e.metric is not None and e.state is State.DONE else "0.000000"
        mem = f"{memory_gb(e):.1f}" if e.state is State.DONE else "0.0"
        desc = " ".join(e.description.split())
        rt = e.runtime_s
        out.append([e.id, metric, mem, status, desc, e.state.value, e.strategy, e.parent or "", e.hardware or "",
                    e.worker or "", str(e.seed), f"{rt:.1f}" if rt is not None else "", str(e.lines_added),
                    str(e.lines_removed), e.tag])
    return out


def render(table: list[list[str]]) -> str:
    return "".join("\t".join(r) + "\n" for r in table)


def write_results_tsv(project: Project, store, path: Path | None = None) -> Path:
    path = path or project.root / "results.tsv"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(rows(project, store)))
    os.replace(tmp, path)
    return path
