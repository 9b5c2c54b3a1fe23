"""From proposal to queued experiment: render knobs into edits, validate, de-duplicate, store the files.

Every proposal ends as edits to editable files (the "one kind of proposal" rule): knob values are rendered into the
knob file by knobs.py, SEARCH/REPLACE edits and whole files are applied as they are. Validation happens here, before
anything runs, so a bad proposal never reaches a worker.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from fleetlab.errors import ProposalRejected
from fleetlab.experiment import Experiment, Proposal, State
from fleetlab.project import Project
from fleetlab.store._base import Store
from fleetlab.store.sqlite import blob_hash
from fleetlab import workspace


@dataclass(frozen=True)
class Variant:
    files: dict[str, str]
    knobs: dict[str, Any]
    content_hash: str
    lines_added: int
    lines_removed: int


class Materializer:
    """Builds variants from proposals against a store's recorded files. Strategies may call `build` to pre-validate.

    File texts read or written are cached, least recently used first out, up to `cache_chars` characters: a wide fleet
    makes tens of thousands of variants in a night (256 workers, 8 h: ~23,000), each a copy of train.py, and the
    store already holds them all. Which blobs the store has is remembered apart (a hash each), so a blob is written once.
    """

    def __init__(self, project: Project, store: Store, cache_chars: int = 64 << 20):
        self.project = project
        self.store = store
        self.cache_chars = int(cache_chars)
        self._blobs: OrderedDict[str, str] = OrderedDict()
        self._cached = 0
        self._stored: set[str] = set()

    def _cache(self, h: str, text: str) -> None:
        if h in self._blobs:
            self._blobs.move_to_end(h)
            return
        self._blobs[h] = text
        self._cached += len(text)
        while self._cached > self.cache_chars and len(self._blobs) > 1:
            _, old = self._blobs.popitem(last=False)
            self._cached -= len(old)

    def blob(self, h: str) -> str:
        text = self._blobs.get(h)
        if text is None:
            text = self.store.get_blob(h)
            self._stored.add(h)
        self._cache(h, text)
        return text

    def files_of(self, exp: Experiment | None) -> dict[str, str]:
        """The editable files of an experiment (the project's own files when exp is None)."""
        if exp is None:
            return self.project.read_editable()
        return {name: self.blob(h) for name, h in exp.files.items()}

    def read_knobs(self, files: dict[str, str]) -> dict[str, Any]:
        name = self.project.knob_file
        if not name.endswith(".py") or name not in files:
            return {}
        from fleetlab.knobs import read_knobs

        try:
            return dict(read_knobs(files[name]))
        except Exception:  # a file the knob reader cannot parse has no knobs; the run decides the rest
            return {}

    def build(self, proposal: Proposal, parent: Experiment | None) -> Variant:
        """The variant a proposal describes, relative to `parent`; ProposalRejected when it cannot run."""
        base = self.files_of(parent)
        files = dict(base)
        if proposal.files is not None:
            for name, text in proposal.files.items():
                files[workspace.check_editable_path(self.project, name)] = text
        if proposal.edits:
            files = workspace.apply_edits(self.project, files, proposal.edits)
        if proposal.knobs:
            from fleetlab.knobs import apply_knobs

            name = self.project.knob_file
            files[name] = apply_knobs(files[name], proposal.knobs)
        if files != base and (proposal.edits or proposal.files is not None):
            # knob values are written as literals by knobs.py; edits and whole files must prove they compile
            workspace.check_compiles({k: v for k, v in files.items() if v != base.get(k)})
        added, removed = workspace.diff_size(base, files) if files != base else (0, 0)
        return Variant(files=files, knobs=self.read_knobs(files), content_hash=workspace.content_hash(files),
                       lines_added=added, lines_removed=removed)

    def to_experiment(self, proposal: Proposal, parent: Experiment | None, *, tag: str, seed: int,
                      now: float, strategy: str = "", variant: Variant | None = None) -> Experiment:
        variant = variant or self.build(proposal, parent)
        hashes = {}
        for name, text in variant.files.items():
            h = blob_hash(text)
            if h not in self._stored:  # a blob this materializer has read or written is already in the store
                self.store.put_blob(text)
                self._stored.add(h)
            self._cache(h, text)
            hashes[name] = h
        return Experiment(
            id="", tag=tag, description=proposal.description or "(no description)", state=State.QUEUED,
            parent=parent.id if parent else None, strategy=proposal.strategy or strategy, role=proposal.role,
            knobs=variant.knobs, edits=tuple(proposal.edits), files=hashes, content_hash=variant.content_hash,
            seed=seed if proposal.seed is None else proposal.seed, tier=proposal.tier,
            want_hardware=proposal.hardware, queued_at=now, lines_added=variant.lines_added,
            lines_removed=variant.lines_removed,
            meta={**({"hypothesis": proposal.hypothesis} if proposal.hypothesis else {}), **proposal.meta})


__all__ = ["Materializer", "Variant", "ProposalRejected"]
