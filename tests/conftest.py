"""Shared fixtures: real projects written from templates into tmp_path, and a way to run the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs say `python train.py`: in CI the venv is not activated, so put this interpreter first on PATH for everything the
# tests start (subprocess fleets, local Ray nodes), as an activated venv would.
_BIN = os.path.dirname(sys.executable)
if os.environ.get("PATH", "").split(os.pathsep)[0] != _BIN:
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")


@pytest.fixture
def mlp_project(tmp_path: Path) -> Path:
    from fleetlab.templates import write_template

    return write_template("mlp", tmp_path / "proj")


def fleetlab_cmd(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None,
                 check: bool = False) -> subprocess.CompletedProcess:
    """Run the real `fleetlab` command line in a subprocess (python -m fleetlab.cli)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    r = subprocess.run([sys.executable, "-m", "fleetlab.cli", *args], cwd=cwd, capture_output=True, text=True,
                       timeout=timeout, env=full_env)
    if check and r.returncode != 0:
        raise AssertionError(f"fleetlab {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def set_budget(project: Path, seconds: float, timeout: float | None = None) -> None:
    """Shorten a project's time budget (tests must be fast)."""
    import re

    p = project / "fleetlab.toml"
    text = re.sub(r"(?m)^time_budget_s = .*$", f"time_budget_s = {seconds}", p.read_text())
    if timeout is not None:
        text = re.sub(r"(?m)^timeout_s = .*$", f"timeout_s = {timeout}", text)
    p.write_text(text)


def commit_all(root: Path) -> None:
    """Make `root` a git repository with everything in it committed: `fleetlab run` refuses a project that is not one,
    or whose editable and read-only files differ from HEAD."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "test project", "--allow-empty"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, env=env)
