"""The LLM researcher's context, bounded: program.md, the incumbent's editable files and a compact digest.

The digest is what a researcher needs to decide the next experiments — the best results, the recent ones, recent
failures with their log tails, the noise floor, hardware notes, what each knob has been tried at, what is queued and
running (and by whom), and the shared notepad — never the raw history. Every list has a fixed length and every line a
fixed width, so the prompt stays the same size however long the session runs (see `measure_prompt` and the numbers in
tests/test_llm.py).
"""

from __future__ import annotations

import statistics
from typing import Iterable

from fleetlab.experiment import Experiment, State

# how much of each part goes into the prompt (entries, characters)
BEST, RECENT, FAILURES, QUEUED, NOTES, OWN, KNOB_VALUES = 8, 8, 4, 16, 12, 8, 6
KNOB_WINDOW = 500
_MISSING = object()
DESC_CHARS, TAIL_LINES, TAIL_CHARS, NOTE_CHARS, PROGRAM_CHARS = 140, 12, 900, 300, 12000

CONTRACT = """\
## How to answer
Answer with one JSON object and nothing else (a ```json fence around it is fine):
{"proposals": [{"description": "<one line: what changes>", "hypothesis": "<why it should help>",
                "edits": [{"file": "train.py", "search": "<exact text of the current file>", "replace": "<new text>"}]}],
 "notes": ["<a finding worth sharing with the other researchers, optional>"]}
- Each proposal is one experiment, run in its own copy of the project, starting from the incumbent's files shown below.
- An edit is either {"file", "search", "replace"} where `search` occurs exactly once in the current file, or
  {"file", "content"} with the whole new file. Only the editable files may change; the result must compile.
- Do not repeat a variant that was already run, is queued, or is running; make every proposal different.
- Keep descriptions short and specific (e.g. "MATRIX_LR 0.04 -> 0.05"); they are how everyone reads the results.
"""


def system_prompt(project) -> str:
    """The fixed part: the role, program.md (the researcher's rules) and the answer format."""
    program = ""
    path = project.root / "program.md"
    if path.is_file():
        program = _clip(path.read_text(errors="replace"), PROGRAM_CHARS)
    editable = ", ".join(project.editable)
    return (f"You are an autonomous ML researcher. Many experiments run at once on a fleet of workers; fleetlab runs "
            f"them, measures `{project.metric}` ({project.goal}) and keeps the winners. You propose the next "
            f"experiments as edits to the editable files ({editable}).\n\n"
            f"# program.md\n{program}\n\n{CONTRACT}")


def user_prompt(project, context, files: dict[str, str], n: int, *, agent: str = "llm",
                rejections: Iterable[str] = (), agents: int = 1) -> str:
    """The per-call part: the digest of the session, the incumbent's files and the request for n proposals."""
    parts = [digest(project, context, agent=agent, rejections=rejections, agents=agents)]
    inc = context.incumbent
    parts.append(f"# The incumbent's editable files ({inc.id if inc else 'the project as it is'}) — edit these")
    for name in sorted(files):
        parts.append(f'<file path="{name}">\n{files[name]}\n</file>')
    parts.append(f"# Your task\nPropose {n} new experiment{'s' if n != 1 else ''} as the JSON object described in "
                 f"the instructions.")
    return "\n\n".join(parts)


def digest(project, context, *, agent: str = "llm", rejections: Iterable[str] = (), agents: int = 1) -> str:
    exps: list[Experiment] = context.experiments
    goal, metric = context.goal, context.metric
    done = [e for e in exps if e.state is State.DONE and e.metric is not None]
    finished = [e for e in exps if e.state.is_final]
    lines = [f"# Session digest ({agent})",
             f"{len(exps)} experiments so far: " + ", ".join(f"{n} {s}" for s, n in sorted(_counts(exps).items())),
             f"workers: {_workers(context.workers)}; {context.free_workers} free now"]
    if agents > 1:
        lines.append(f"You are {agent}, one of {agents} researchers sharing this fleet; avoid what the others queued.")
    base = next((e for e in exps if e.role == "baseline" and e.metric is not None), None)
    inc = context.incumbent
    if base is not None:
        lines.append(f"baseline {base.id}: {metric} {_m(base.metric)}")
    if inc is not None:
        lines.append(f"incumbent {inc.id}: {metric} {_m(inc.metric)} — {_d(inc.description)}")
    noise = noise_floor(exps, context)
    if noise:
        lines.append(f"noise floor: {noise}")

    best = sorted(done, key=lambda e: e.metric if goal == "minimize" else -e.metric)[:BEST]
    status = _statuses(context)
    if best:
        lines.append(f"\n## Best results ({metric}, {goal})")
        lines += [_line(e, status) for e in best]
    recent = finished[-RECENT:]
    if recent:
        lines.append("\n## Most recent results")
        lines += [_line(e, status) for e in recent]
    fails = [e for e in finished if e.state.is_failure][-FAILURES:]
    if fails:
        lines.append("\n## Recent failures (with the end of their logs)")
        for e in fails:
            reason = _d(e.meta.get("reason", ""), 200)
            lines.append(f"- {e.id} {e.state.value}{': ' + reason if reason else ''} — {_d(e.description)}")
            tail = _tail(e.log_tail)
            if tail:
                lines.append("  ```\n" + "\n".join("  " + t for t in tail.splitlines()) + "\n  ```")
    hw = hardware_notes(done, goal)
    if hw:
        lines.append("\n## Hardware")
        lines += hw
    eff = knob_summary(done, context, goal)
    if eff:
        lines.append(f"\n## Knobs: values tried in the last {KNOB_WINDOW} results (best result at each, runs)")
        lines += eff
    extra_effects = context.extra.get("main_effects") if isinstance(context.extra, dict) else None
    if extra_effects:
        lines.append("\n## Main effects (from the analysis)")
        lines += [_d(str(x), 200) for x in list(extra_effects)[:12]]
    pending = [e for e in exps if not e.state.is_final]
    if pending:
        running = [e for e in pending if e.state is State.RUNNING]
        queued = [e for e in pending if e.state is State.QUEUED]
        lines.append(f"\n## Running ({len(running)}) and queued ({len(queued)}) now — do not propose these again")
        for e in (running + queued)[:QUEUED]:
            who = e.meta.get("agent") or e.strategy or "?"
            lines.append(f"- {e.id} {e.state.value} by {who}: {_d(e.description)}")
        if len(pending) > QUEUED:
            lines.append(f"- ... and {len(pending) - QUEUED} more")
    own = [e for e in exps if e.meta.get("agent") == agent][-OWN:]
    rej = list(rejections)[-OWN:]
    if own or rej:
        lines.append(f"\n## Your own recent proposals ({agent})")
        lines += [_line(e, status) for e in own]
        lines += [f"- rejected before running: {_d(r, 240)}" for r in rej]
    notes = _notes(context)
    if notes:
        lines.append("\n## Shared notepad (latest notes of every researcher and person)")
        lines += notes
    return "\n".join(lines)


# -- parts ------------------------------------------------------------------------------------------------------------
def noise_floor(exps: list[Experiment], context) -> str:
    """The spread of repeated runs of one variant (the baseline's replicates first), or what the analysis measured."""
    given = context.extra.get("noise_floor") if isinstance(context.extra, dict) else None
    if given:
        return str(given)
    groups: dict[str, list[float]] = {}
    for e in exps:
        if e.state is State.DONE and e.metric is not None:
            groups.setdefault(e.content_hash, []).append(e.metric)
    reps = [v for v in groups.values() if len(v) >= 2]
    if not reps:
        return ""
    v = max(reps, key=len)
    sd = statistics.stdev(v)
    return f"sigma {sd:.4g} from {len(v)} repeated runs of one variant; treat differences under ~{2 * sd:.3g} as noise"


def hardware_notes(done: list[Experiment], goal: str) -> list[str]:
    by: dict[str, list[float]] = {}
    for e in done:
        by.setdefault(e.hardware or "?", []).append(e.metric)
    if len(by) < 2:
        return []
    pick = min if goal == "minimize" else max
    out = [f"- {hw}: {len(v)} runs, best {_m(pick(v))}, median {_m(statistics.median(v))}" for hw, v in sorted(by.items())]
    out.append("- results on different hardware are not directly comparable; compare like with like")
    return out


def knob_summary(done: list[Experiment], context, goal: str) -> list[str]:
    """Per knob: the values tried in the last KNOB_WINDOW results with the best result at each (KNOB_VALUES values
    per knob at most)."""
    names = list(context.space.knobs) if context.space is not None and getattr(context.space, "knobs", None) else []
    if not names or not done:
        return []
    pick = min if goal == "minimize" else max
    recent = done[-KNOB_WINDOW:]  # bounded work per call, however long the session
    out = []
    for name in names:
        at: dict[str, list[float]] = {}
        for e in recent:
            v = e.knobs.get(name, _MISSING)
            if v is not _MISSING:
                at.setdefault(repr(v), []).append(e.metric)
        if len(at) < 2:
            continue
        ranked = sorted(at.items(), key=lambda kv: pick(kv[1]) if goal == "minimize" else -pick(kv[1]))
        shown = ", ".join(f"{k}: {_m(pick(v))} ({len(v)})" for k, v in ranked[:KNOB_VALUES])
        more = f", +{len(ranked) - KNOB_VALUES} more values" if len(ranked) > KNOB_VALUES else ""
        out.append(f"- {name}: {shown}{more}")
    return out


def _notes(context) -> list[str]:
    if context.view is None:
        return []
    notes = context.view.notes(limit=NOTES)
    return [f"- [{n.get('author') or '?'}{' on ' + n['experiment'] if n.get('experiment') else ''}] "
            f"{_d(n.get('text') or '', NOTE_CHARS)}" for n in notes]


def _statuses(context) -> dict[str, str]:
    if context.view is None:
        return {}
    return {k: d.status for k, d in context.view.decisions().items()}


def _line(e: Experiment, statuses: dict[str, str]) -> str:
    m = _m(e.metric) if e.metric is not None else e.state.value
    hw = f" on {e.hardware}" if e.hardware else ""
    status = statuses.get(e.id, "")
    return f"- {e.id} {m}{hw}{' ' + status if status else ''} — {_d(e.description)}"


def _counts(exps: list[Experiment]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in exps:
        out[e.state.value] = out.get(e.state.value, 0) + 1
    return out


def _workers(workers) -> str:
    by: dict[str, int] = {}
    for w in workers:
        by[w.hardware] = by.get(w.hardware, 0) + 1
    return " + ".join(f"{n}x{hw}" for hw, n in sorted(by.items())) or "none"


def _tail(text: str) -> str:
    lines = [l.rstrip() for l in (text or "").strip().splitlines()][-TAIL_LINES:]
    return _clip("\n".join(l[:200] for l in lines), TAIL_CHARS, keep_end=True)


def _m(x: float | None) -> str:
    return "-" if x is None else f"{x:.6g}"


def _d(text: str, n: int = DESC_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _clip(text: str, n: int, keep_end: bool = False) -> str:
    if len(text) <= n:
        return text
    return "..." + text[-(n - 3):] if keep_end else text[: n - 3] + "..."


def measure_prompt(project, context, files: dict[str, str], n: int = 4) -> dict[str, int]:
    """Characters (and ~tokens at 4 characters each) of the whole prompt for one call."""
    system = system_prompt(project)
    user = user_prompt(project, context, files, n)
    chars = len(system) + len(user)
    return {"system_chars": len(system), "user_chars": len(user), "chars": chars, "approx_tokens": chars // 4}


__all__ = ["system_prompt", "user_prompt", "digest", "measure_prompt", "noise_floor", "CONTRACT"]
