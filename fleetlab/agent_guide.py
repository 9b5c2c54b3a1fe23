"""`fleetlab agent-guide`: AGENTS.md for Claude Code, Codex or any shell-using coding agent.

The original system *was* such an agent driving the fleet by hand. With fleetlab the agent keeps the research —
reading results, designing variants, keeping notes — and fleetlab does the fleet work: `fleetlab run --strategy none`
serves submissions, runs each in its own snapshot, collects results and decides keep/discard. The guide is written
for the project at hand (its metric, files and a real first edit), and every command in its ```bash blocks runs as
written, in order, from the project directory (tests/test_agent_guide.py does exactly that).
"""

from __future__ import annotations

import re
from pathlib import Path

from fleetlab.project import Project


def example_edit(project: Project) -> tuple[str, str, str] | None:
    """(old line, new line, description) of a first knob edit in the knob file, e.g. doubling a learning rate."""
    name = project.knob_file
    path = project.root / name
    if not name.endswith(".py") or not path.is_file():
        return None
    from fleetlab.knobs import apply_knobs, read_knobs

    source = path.read_text()
    try:
        knobs = read_knobs(source)
    except Exception:  # noqa: BLE001 - a file the knob reader cannot parse gets a guide without the example
        return None
    numeric = [(k, v) for k, v in knobs.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and v
               and "[" not in k]
    lr = [kv for kv in numeric if "LR" in kv[0] or "LEARNING_RATE" in kv[0]]
    for k, v in lr + numeric:
        new_value = v * 2 if isinstance(v, float) else v + max(1, v // 4)
        new_source = apply_knobs(source, {k: new_value})
        old_lines = source.splitlines()
        new_lines = new_source.splitlines()
        if len(old_lines) != len(new_lines):
            continue
        changed = [(a, b) for a, b in zip(old_lines, new_lines) if a != b]
        if len(changed) != 1:
            continue
        old, new = (_code(x) for x in changed[0])
        if source.count(old) == 1 and "'" not in old + new:
            return old, new, f"{k} {v!r} -> {new_value!r}"
    return None


def _code(line: str) -> str:
    return re.sub(r"\s*#.*$", "", line).rstrip()


def render_agent_guide(project: Project) -> str:
    root = project.root
    name = root.name
    variants = f"../{name}-variants"
    v1 = f"{variants}/v1"
    editable = ", ".join(f"`{f}`" for f in project.editable)
    readonly = ", ".join(f"`{f}`" for f in project.readonly) or "none"
    edit = example_edit(project)
    if edit is not None:
        old, new, desc = edit
        edit_cmd = (f"python -c \"import pathlib; p = pathlib.Path('{v1}/{project.knob_file}'); "
                    f"p.write_text(p.read_text().replace('{old}', '{new}', 1))\"")
    else:
        desc = "describe your change here"
        edit_cmd = f"true  # edit {v1}/{project.editable[0]} with your editor"
    better = "lower" if project.goal == "minimize" else "higher"
    return f"""# AGENTS.md — research on a fleet with fleetlab

You are the researcher of this project: improve `{project.metric}` ({better} is better) by editing {editable}.
fleetlab is your lab: it runs every variant you submit in its own copy of the project on a fleet of workers,
measures it, decides keep or discard, and remembers everything. You design experiments; you never run them yourself.
Read `program.md` first: it holds the rules of this project (what you may change, what counts as a win).

## Ground rules
- Edit only {editable}. Read-only: {readonly} (fleetlab checks their hashes; a changed read-only file fails the run).
- Never edit files inside this directory. Make every variant in a copy of the project outside it, and submit the copy.
- Do not start `{project.command}` yourself and do not touch `.fleetlab/` (the results database and the runs).
- Every submission needs a short description of what it changes (`-m`); it is how everyone reads the results.
- Submit several variants before you wait: the fleet has several workers, and an idle worker is wasted.
- Differences smaller than the noise floor (`fleetlab analyze`) are not wins; replicate before you believe a small gain.
- Never stop on your own: after each result, read, think, submit the next variants. A person stops the session.

## The session
Someone (a person, or you once at the start) serves the fleet in another terminal and leaves it running:
`fleetlab run --strategy none --fleet local:2` (or a GPU fleet: `--fleet local:gpus`, `--fleet sky:16`, ...).
It queues and runs the baseline first, then everything you submit. `fleetlab status` tells you whether it is running.

## The loop (every command runs from the project directory)
1. See where things stand: the incumbent, every result so far, the analysis and the shared notepad.
```bash
fleetlab status
fleetlab results --json
fleetlab analyze
fleetlab notes list
```
2. Make a variant: copy the project (without its `.fleetlab` state), edit the copy. Use a fresh directory per variant
   (`v1`, `v2`, ...); with several agents, put your own name in it. The example edit below is real; replace it with yours.
```bash
rm -rf {v1} && mkdir -p {v1}
tar --exclude=./.fleetlab --exclude=./.git -cf - . | tar -xf - -C {v1}
{edit_cmd}
```
3. Queue it (prints the experiment id; `--replicates 3` runs it three times with different seeds to beat the noise):
```bash
fleetlab submit --from {v1} -m "{desc}"
```
4. Wait for the next result, then read it (`fleetlab show ID --log` shows a failed run's log, `--diff` its change):
```bash
fleetlab wait --any
fleetlab results --json --last 5
```
5. Write down what you learned, for the other agents and the people (`--experiment ID` ties a note to a run):
```bash
fleetlab notes add "first variant submitted: {desc}; waiting for its result" --author agent
```
Then go back to 1. The incumbent moves as results come in; start each variant from the project as it is now
(`fleetlab show ID --diff` shows how the incumbent differs from the baseline; `--parent ID` submits relative to another
experiment).

## Reading the results
`fleetlab results --json` lists every experiment: `id`, `state` (done, crash, timeout, ...), `metric`, `status`
(keep / discard / crash), `description`, `knobs`, `hardware`, `reason`. `keep` means it became the incumbent.
`fleetlab analyze` gives the noise floor, hardware effects and the main effects of the knobs: use it to choose what to
try next instead of re-discovering known results. `fleetlab knobs` lists the search space of `{project.knob_file}`.
"""


def write_agent_guide(project: Project, out: Path | None = None) -> Path:
    """Write the guide (default: AGENTS.md in the project) and return its path."""
    path = Path(out) if out else project.root / "AGENTS.md"
    if path.is_dir():
        path = path / "AGENTS.md"
    path.write_text(render_agent_guide(project))
    return path


def guide_commands(text: str) -> list[str]:
    """The commands of the guide's ```bash blocks, in order (one per line)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        out += [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
    return out


__all__ = ["write_agent_guide", "render_agent_guide", "guide_commands", "example_edit"]
