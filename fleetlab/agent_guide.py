"""`fleetlab agent-guide`: AGENTS.md for Claude Code, Codex or any shell-using coding agent.

The original system *was* such an agent driving the fleet by hand. With fleetlab the agent keeps the research —
reading results, designing variants, keeping notes — and fleetlab does the fleet work: `fleetlab run --strategy none
--backfill auto --detach` serves submissions (and fills idle workers), runs each in its own snapshot, collects results
and decides keep/discard. The guide is written for the project at hand (its metric, files and two real edits), and
every command in its ```bash blocks runs as written, in order, from the project directory, from starting the session
to `fleetlab stop` (tests/test_agent_guide.py does exactly that).
"""

from __future__ import annotations

import re
from pathlib import Path

from fleetlab.project import Project


def example_edits(project: Project, limit: int = 2) -> list[tuple[str, str, str]]:
    """(old line, new line, description) of first knob edits in the knob file, one knob each (learning rates first,
    doubled; momenta halfway to 1; integers a quarter up)."""
    name = project.knob_file
    path = project.root / name
    if not name.endswith(".py") or not path.is_file():
        return []
    from fleetlab.knobs import apply_knobs, read_knobs

    source = path.read_text()
    try:
        knobs = read_knobs(source)
    except Exception:  # noqa: BLE001 - a file the knob reader cannot parse gets a guide without the example
        return []
    numeric = [(k, v) for k, v in knobs.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and v
               and "[" not in k]
    lr = [kv for kv in numeric if "LR" in kv[0] or "LEARNING_RATE" in kv[0]]
    out: list[tuple[str, str, str]] = []
    for k, v in lr + [kv for kv in numeric if kv not in lr]:
        if isinstance(v, float):  # a momentum or beta moves toward 1, anything else doubles
            new_value = round(1 - (1 - v) / 2, 6) if 0.5 <= v < 1 else v * 2
        else:
            new_value = v + max(1, v // 4)
        new_source = apply_knobs(source, {k: new_value})
        old_lines = source.splitlines()
        new_lines = new_source.splitlines()
        if len(old_lines) != len(new_lines):
            continue
        changed = [(a, b) for a, b in zip(old_lines, new_lines) if a != b]
        if len(changed) != 1:
            continue
        old, new = (_code(x) for x in changed[0])
        if source.count(old) == 1 and "'" not in old + new and all(old != o for o, _, _ in out):
            out.append((old, new, f"{k} = {new_value!r}"))
        if len(out) == limit:
            break
    return out


def example_edit(project: Project) -> tuple[str, str, str] | None:
    """The first of `example_edits`, or None."""
    edits = example_edits(project, 1)
    return edits[0] if edits else None


def _code(line: str) -> str:
    return re.sub(r"\s*#.*$", "", line).rstrip()


def _edit_command(project: Project, d: str, edit: tuple[str, str, str] | None) -> tuple[str, str]:
    if edit is None:
        return f"true  # edit {d}/{project.editable[0]} with your editor", "describe your change here"
    # sets the knob whatever its value is now: the checkout is the incumbent, which may have moved it since the
    # guide was written (a literal replace of the old line would silently change nothing)
    old, new, desc = edit
    name, value = old.split("=", 1)[0].strip(), new.split("=", 1)[1].strip()
    return (f"python -c \"import pathlib, re; p = pathlib.Path('{d}/{project.knob_file}'); "
            f"p.write_text(re.sub(r'(?m)^({name} *= *)\\S+', r'\\g<1>{value}', p.read_text(), count=1))\""), desc


def render_agent_guide(project: Project, agent: str = "agent1") -> str:
    root = project.root
    name = root.name
    variants = f"../{name}-variants"
    v1, v2 = f"{variants}/{agent}-v1", f"{variants}/{agent}-v2"
    editable = ", ".join(f"`{f}`" for f in project.editable)
    readonly = ", ".join(f"`{f}`" for f in project.readonly) or "none"
    edits = example_edits(project, 2)
    edit1, desc1 = _edit_command(project, v1, edits[0] if edits else None)
    edit2, desc2 = _edit_command(project, v2, edits[1] if len(edits) > 1 else None)
    better = "lower" if project.goal == "minimize" else "higher"
    fleet = project.section("fleet")["default"] or "local:2"
    return f"""# AGENTS.md — research on a fleet with fleetlab

You are a researcher of this project: improve `{project.metric}` ({better} is better) by editing {editable}.
fleetlab is your lab: it runs every variant you submit in its own copy of the project on a fleet of workers,
measures it, decides keep or discard, and remembers everything. You design experiments; you never run them yourself.
Read `program.md` first: it holds the rules of this project (what you may change, what counts as a win).

## Ground rules
- Edit only {editable}. Read-only: {readonly} (fleetlab checks their hashes; a changed read-only file fails the run,
  a variant without them is refused).
- Never edit files inside this directory: it stays at the baseline, even after keeps (a keep moves the git branch
  `fleetlab/<session>`, not these files). Make every variant with `fleetlab checkout DIR`, which writes the
  *incumbent's* files (every kept change so far) into DIR, outside this directory; edit DIR; submit DIR.
- Do not start `{project.command}` yourself and do not touch `.fleetlab/` (the results database and the runs).
- Every submission needs a short description of what it changes (`-m`) and your name (`--agent`); with several agents,
  each uses its own name in `--agent` and in its variant directories.
- Keep the fleet busy: submit several variants before you wait, and submit again when `fleetlab wait --idle` says a
  worker is idle.
- Never stop on your own: after each result, read, think, submit the next variants. Stop only when a person asks.

## 1. Start the session (once)
`fleetlab status` says on its first line whether a session is serving. If it says `serving: no`, start one in the
background; it runs the baseline first (several times, to measure the noise), then everything you submit:
```bash
fleetlab status
fleetlab run --strategy none --backfill auto --fleet {fleet} --detach
```
`--backfill auto` puts workers that would otherwise idle to use: whenever nothing of yours is queued for a free
worker, fleetlab's own `auto` strategy proposes a variant of the same incumbent. Your submissions always go first
(they are dispatched before anything a strategy proposes), so backfill never delays your work by more than the runs
already started. Its results are yours to read (`backfill` in `results --json`); its keeps move the incumbent too.
The log is `.fleetlab/run.log`. (`--backfill none` leaves idle workers idle.)

## 2. Where things stand
The incumbent, every result so far, the analysis, and the shared notepad:
```bash
fleetlab status
fleetlab results --json --last 10
fleetlab analyze
fleetlab notes list
fleetlab show incumbent --diff --against baseline
```
The last command shows every change kept so far (`--against parent` shows one experiment's own change,
`--against incumbent` how it differs from the current best).

## 3. Make variants and submit them
Check out the incumbent into a fresh directory per variant, edit it, submit it. `checkout` records where the copy came
from, and `submit` takes that experiment as the parent. The example edits below are real; replace them with yours.
```bash
fleetlab checkout {v1} --force
{edit1}
fleetlab submit --from {v1} -m "{desc1}" --agent {agent}
fleetlab checkout {v2} --force
{edit2}
fleetlab submit --from {v2} -m "{desc2}" --agent {agent}
```
`--force` replaces an earlier checkout in the same directory (and nothing else). `submit` prints the experiment id
and warns when a variant removes lines its parent added (it would undo a kept change: check out again) or repeats
code already submitted (it joins that code's arm instead of running as a new candidate).

## 4. Wait, then read
`wait --any` returns when any queued or running experiment finishes; `wait --idle` as soon as a worker is free for
your next submission (idle, or running backfill while nothing is queued: your submission takes the next worker it
frees; `--below N`: or fewer than N experiments are queued), which is when to submit more.
```bash
fleetlab wait --any
fleetlab wait --idle --below 2
fleetlab results --json --last 5 --agent {agent}
```
`fleetlab show ID` prints one experiment's decision with every number it was judged by, `--log` its log,
`--diff` its change. `fleetlab status --json` has `idle_workers`, `queue_depth` and `utilization`.

## 5. Write down what you learned
For the other agents and the people (`--experiment ID` ties a note to a run); `notes list --agent NAME` filters:
```bash
fleetlab notes add "submitted {desc1} and {desc2}; waiting for the screen" --agent {agent}
fleetlab notes list --agent {agent}
```
Then go back to 2.

## How a keep is decided
- **Noise floor.** The baseline runs several times; the spread of those runs (and of every later re-run of the same
  code) is the noise floor σ. `fleetlab analyze` prints it. A difference smaller than that is not a result.
- **Screen.** Each variant runs once and is compared with the incumbent *as it is when the variant finishes* (not
  when you submitted it), on the same hardware class. Beating it by more than a few σ makes it `pending`.
- **Validation.** A pending variant gets validation runs (role `validate`; they use workers like any run) and fresh
  runs of the incumbent; it is kept only if the validation runs beat the incumbent's in a one-sided test. Most
  single lucky runs end here as `discard` with the reason "screening false positive".
- **Arms.** Runs of identical code (same content hash: replicates, duplicate submissions of any agent, re-runs of the
  incumbent) are one arm, answered with one decision: `--replicates 3` is one pooled decision, not three.
- **Like with like.** Validation runs are compared with re-runs of the incumbent made close in time (controls), so a
  machine whose load or speed drifts during the session does not decide; `fleetlab analyze` reports drift it sees.
- **Parents.** Each variant records its parent (the checkout's origin). A variant that beats its parent but not an
  incumbent that moved while it was queued is recorded as an improvement of its parent, and its change is offered on
  top of the incumbent instead of being lost. `fleetlab show ID` says what it was compared with.
- **Pruning** is on: a run whose progress shows it cannot beat the incumbent is stopped early (state `pruned`, the
  bound in `reason`), and only while the incumbent was measured within the last two run lengths (after a machine's
  load changes, nothing is stopped until it is re-measured); runs of the incumbent's or baseline's code, controls,
  replicates and validation runs never are.
  `fleetlab submit --no-prune` runs one submission to the end (a change that starts slow).
- `keep` means the variant became the incumbent; the next `fleetlab checkout` starts from it.

## Reading the results
`fleetlab results --json` lists every experiment: `id`, `state` (done, crash, timeout, pruned, ...), `metric`,
`status` (keep / discard / crash / pending), `description`, `parent`, `agent`, `backfill`, `role`, `knobs`, `reason`,
and `decision` (with its numbers). `fleetlab analyze` gives the noise floor, hardware effects and the effect of each
knob and each code change, as better/worse in the goal's direction: use it to choose what to try next instead of
re-discovering known results. `fleetlab knobs` lists the search space of `{project.knob_file}`.

## Stopping
A person decides when the session ends. `fleetlab stop` (from any terminal) stops the serving session cleanly:
running experiments are cancelled and recorded, queued ones stay queued for the next `fleetlab run`, which resumes.
```bash
fleetlab stop
```
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


__all__ = ["write_agent_guide", "render_agent_guide", "guide_commands", "example_edit", "example_edits"]
