"""AGENTS.md: every command of the generated guide runs, in order, against the live detached session it starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import fleetlab_cmd, set_budget


def test_guide_is_written_for_the_project(mlp_project: Path):
    r = fleetlab_cmd("agent-guide", "-C", str(mlp_project), check=True)
    text = (mlp_project / "AGENTS.md").read_text()
    assert "wrote" in r.stdout and "`val_loss` (lower is better)" in text and "`train.py`" in text
    for cmd in ("fleetlab checkout", "fleetlab submit --from", "--agent", "fleetlab wait --any", "fleetlab wait --idle",
                "fleetlab results --json", "fleetlab analyze", "fleetlab notes add", "--backfill auto", "--detach",
                "fleetlab stop", "--no-prune", "show incumbent --diff --against baseline"):
        assert cmd in text, cmd
    for idea in ("Screen", "Validation", "Arms", "Like with like", "Parents", "Pruning",
                 "as it is when the variant finishes"):
        assert idea in text, idea
    out = mlp_project.parent / "guide"
    out.mkdir()
    fleetlab_cmd("agent-guide", "-C", str(mlp_project), "--out", str(out), check=True)
    assert (out / "AGENTS.md").read_text() == text


def test_every_command_of_the_guide_runs_against_a_live_session(mlp_project: Path):
    """The guide starts a detached session, checks out, edits and submits two variants, waits, reads, writes notes
    and stops the session with `fleetlab stop`: each command as written, in order, each in its own shell."""
    from fleetlab.agent_guide import guide_commands, write_agent_guide
    from fleetlab.project import Project

    set_budget(mlp_project, 1, 30)
    guide = write_agent_guide(Project.load(mlp_project))
    commands = guide_commands(guide.read_text())
    assert len(commands) >= 15 and commands[-1] == "fleetlab stop"
    assert any("--detach" in c for c in commands[:2])
    bindir = str(Path(sys.executable).parent)  # `fleetlab` and `python` of this environment come first on PATH
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"}
    ran = []
    try:
        for cmd in commands:
            r = subprocess.run(cmd, shell=True, cwd=mlp_project, env=env, capture_output=True, text=True, timeout=180)
            assert r.returncode == 0, f"{cmd!r} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
            ran.append((cmd, r.stdout))
    finally:
        if len(ran) < len(commands):  # a command failed: stop the session this test started, by its pid
            fleetlab_cmd("stop", "-C", str(mlp_project))
    st = json.loads(fleetlab_cmd("status", "-C", str(mlp_project), "--json", check=True).stdout)
    assert not st["serving"] and "stopped" in ran[-1][1]
    submitted = [out.strip() for cmd, out in ran if cmd.startswith("fleetlab submit")]
    assert len(submitted) == 2 and all(s.startswith("exp-") for s in submitted)
    res = {e["id"]: e for e in json.loads(fleetlab_cmd("results", "-C", str(mlp_project), "--json",
                                                       check=True).stdout)}
    first, second = (res[i] for i in submitted)
    assert first["strategy"] == "manual" and first["description"] == "LEARNING_RATE = 0.02"
    assert first["knobs"]["LEARNING_RATE"] == 0.02 and second["knobs"]["MOMENTUM"] == 0.95
    assert first["agent"] == second["agent"] == "agent1"
    # each the incumbent it was checked out from (backfill keeps may move it between the two checkouts)
    assert all(e["parent"] is not None and res[e["parent"]]["status"] == "keep" for e in (first, second))
    assert any(e["role"] == "baseline" and e["state"] == "done" for e in res.values())
    mine = json.loads(next(out for cmd, out in ran if cmd.startswith("fleetlab results") and "--agent" in cmd))
    assert {e["id"] for e in mine} <= set(submitted)
    notes = json.loads(fleetlab_cmd("notes", "list", "-C", str(mlp_project), "--json", check=True).stdout)
    assert notes and notes[0]["author"] == "agent1"
    assert "LEARNING_RATE = 0.01" in (mlp_project / "train.py").read_text()  # the project itself is untouched
