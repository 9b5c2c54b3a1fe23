"""A replayed model for the simulated fleet: no network, deterministic, answers in `latency_s` (60 s) of virtual time.

It reads the incumbent's files out of the prompt the way a real model would (`<file path="train.py">` blocks), and
answers in the wire contract with knob edits: each proposal moves one to three UPPERCASE constants of the knob file
(values drawn near the current ones from the search space the strategy hands it), written as SEARCH/REPLACE edits of
the constant's line. Good enough to plan fleets and measure the scheduler with `--strategy llm` on `sim:` fleets;
it is not a researcher.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from fleetlab.llm.providers import Budget, Provider

_FILE = re.compile(r'<file path="([^"]+)">\n(.*?)\n</file>', re.S)
_ASK = re.compile(r"Propose (\d+) new experiment")


class ReplayModel(Provider):
    name = "replay"

    def __init__(self, latency_s: float = 60.0, seed: int = 0, knob_file: str = "train.py", tokens_per_answer: int = 400,
                 budget: Budget | None = None):
        super().__init__("replay-knobs", budget=budget)
        self.latency_s = latency_s
        self.rng = random.Random(seed)
        self.knob_file = knob_file
        self.tokens_per_answer = tokens_per_answer
        self.space: Any = None  # set by the strategy from the scheduler's context
        self.calls = 0

    def _preflight(self) -> None:
        return None

    def _call(self, system: str, messages: list[dict[str, str]]) -> tuple[str, int, int]:
        from fleetlab.knobs import apply_knobs, read_knobs

        self.calls += 1
        first = messages[0]["content"]
        files = dict(_FILE.findall(first))
        m = _ASK.search(first)
        n = int(m.group(1)) if m else 4
        if len(messages) > 1:  # a follow-up (rejections): offer fresh ones instead
            n = max(1, sum(1 for line in messages[-1]["content"].splitlines() if line.startswith("- ")))
        source = files.get(self.knob_file)
        proposals = []
        if source is not None and self.space is not None and self.space.knobs:
            current = read_knobs(source)
            names = list(self.space.knobs)
            for _ in range(n):
                k = self.rng.choice((1, 1, 2, 3))
                picked = self.rng.sample(names, min(k, len(names)))
                near = self.space.sample(self.rng, around=current, scale=1.0)
                change = {name: near[name] for name in picked if near[name] != current.get(name)}
                if not change:
                    continue
                new = apply_knobs(source, change)
                edits = _line_edits(self.knob_file, source, new)
                desc = ", ".join(f"{name} {current.get(name)!r} -> {v!r}" for name, v in change.items())
                proposals.append({"description": desc, "hypothesis": "a nearby setting may train better in the budget",
                                  "edits": edits})
        text = json.dumps({"proposals": proposals, "notes": []})
        tin = sum(len(x["content"]) for x in messages) // 4 + len(system) // 4
        return f"```json\n{text}\n```", tin, self.tokens_per_answer


def _line_edits(name: str, old: str, new: str) -> list[dict[str, str]]:
    """SEARCH/REPLACE edits of the changed lines (a whole-file edit when a changed line is not unique)."""
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    if len(a) != len(b):
        return [{"file": name, "content": new}]
    edits = []
    for la, lb in zip(a, b):
        if la != lb:
            if old.count(la) != 1:
                return [{"file": name, "content": new}]
            edits.append({"file": name, "search": la, "replace": lb})
    return edits


__all__ = ["ReplayModel"]
