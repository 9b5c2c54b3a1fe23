"""results.tsv: the autoresearch-compatible export, rewritten as results land (the store stays the source of truth).

One row per finished experiment (queued, running and cancelled runs have no result and no row). The first columns are
autoresearch's parallel variant's: experiment_id, <metric>, memory_gb, status, description, where status is only
keep / discard / crash and `0.000000` only marks a crash, so a script that reads "the best non-crash row" reads a
measurement. A pruned run is `discard` with the last value it showed (state `pruned`). fleetlab's own columns follow:
role (replicates, validation runs and controls say so), state, decision (the keep rule's verdict, e.g. pending), ...
Statuses come from fleetlab.facts, like every other surface's.
"""

from __future__ import annotations

import os
from pathlib import Path

from fleetlab.facts import Row, rows as fact_rows
from fleetlab.project import Project

EXTRA_COLUMNS = ("role", "state", "decision", "strategy", "parent", "hardware", "worker", "seed", "runtime_s",
                 "lines_added", "lines_removed", "tag", "content_hash")


def _line(r: Row, e) -> list[str]:
    if r.status == "crash":
        metric = "0.000000"
    else:  # a run pruned before it printed any progress has no value to show
        metric = "" if r.metric is None else f"{r.metric:.6f}"
    mem = "0.0" if r.status == "crash" or r.memory_gb is None else f"{r.memory_gb:.1f}"
    rt = e.runtime_s
    return [r.id, metric, mem, r.status, r.description, r.role, r.state, r.decision or "", e.strategy,
            e.parent or "", e.hardware or "", e.worker or "", str(e.seed), f"{rt:.1f}" if rt is not None else "",
            str(e.lines_added), str(e.lines_removed), e.tag, e.content_hash]


def rows(project: Project, store) -> list[list[str]]:
    exps = store.experiments()
    out = [["experiment_id", project.metric, "memory_gb", "status", "description", *EXTRA_COLUMNS]]
    out += [_line(r, e) for r, e in zip(fact_rows(store, None, exps), exps) if r.finished]
    return out


def render(table: list[list[str]]) -> str:
    return "".join("\t".join(c.replace("\t", " ").replace("\n", " ") for c in r) + "\n" for r in table)


def write_results_tsv(project: Project, store, path: Path | None = None) -> Path:
    path = path or project.root / "results.tsv"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(rows(project, store)))
    os.replace(tmp, path)
    return path
