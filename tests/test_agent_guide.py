"""AGENTS.md: every command of the generated guide runs, in order, against a live `fleetlab run --strategy none`."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import fleetlab_cmd, set_budget


def test_guide_is_written_for_the_project(mlp_project: Path):
    r = fleetlab_cmd("agent-guide", "-C", str(mlp_project), check=True)
    text = (mlp_project / "AGENTS.md").read_text()
    assert "wrote" in r.stdout and "`val_loss` (lower is better)" in text and "`train.py`" in text
    for cmd in ("fleetlab submit --from", "fleetlab wait --any", "fleetlab results --json", "fleetlab analyze",
                "fleetlab notes add", "fleetlab run --strategy none"):
        assert cmd in text, cmd
    out = mlp_project.parent / "guide"
    out.mkdir()
    fleetlab_cmd("agent-guide", "-C", str(mlp_project), "--out", str(out), check=True)
    assert (out / "AGENTS.md").read_text() == text


def test_every_command_of_the_guide_runs_against_a_live_session(mlp_project: Path):
    from fleetlab.agent_guide import guide_commands, write_agent_guide
    from fleetlab.project import Project

    set_budget(mlp_project, 1, 30)
    guide = write_agent_guide(Project.load(mlp_project))
    commands = guide_commands(guide.read_text())
    assert len(commands) >= 10
    bindir = str(Path(sys.executable).parent)  # `fleetlab` and `python` of this environment come first on PATH
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"}
    serve = subprocess.Popen([sys.executable, "-m", "fleetlab.cli", "run", "--strategy", "none", "--fleet", "local:2",
                              "--keep-rule", "simple", "-q"], cwd=mlp_project, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ran = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # the session is up once it has a tag and is running
            st = json.loads(fleetlab_cmd("status", "-C", str(mlp_project), "--json", check=True).stdout)
            if (st.get("session") or {}).get("status") == "running":
                break
            assert serve.poll() is None, serve.stdout.read()
            time.sleep(0.3)
        has_analysis = importlib.util.find_spec("fleetlab.analysis.report") is not None
        for cmd in commands:
            if cmd == "fleetlab analyze" and not has_analysis:
                continue  # the analysis module is another part of fleetlab; its own tests cover it
            r = subprocess.run(cmd, shell=True, cwd=mlp_project, env=env, capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, f"{cmd!r} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
            ran.append((cmd, r.stdout))
        assert serve.poll() is None, "the session kept serving"
    finally:
        serve.send_signal(signal.SIGTERM)  # stop it by its own pid
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
    submitted = next(out.strip() for cmd, out in ran if cmd.startswith("fleetlab submit"))
    assert submitted.startswith("exp-")
    res = {e["id"]: e for e in json.loads(fleetlab_cmd("results", "-C", str(mlp_project), "--json",
                                                       check=True).stdout)}
    mine = res[submitted]
    assert mine["strategy"] == "manual" and mine["description"] == "LEARNING_RATE 0.01 -> 0.02"
    assert mine["knobs"]["LEARNING_RATE"] == 0.02
    assert any(e["role"] == "baseline" and e["state"] == "done" for e in res.values())
    notes = json.loads(fleetlab_cmd("notes", "list", "-C", str(mlp_project), "--json", check=True).stdout)
    assert notes and notes[-1]["author"] == "agent"
    assert "LEARNING_RATE = 0.01" in (mlp_project / "train.py").read_text()  # the project itself is untouched
