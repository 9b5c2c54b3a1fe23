"""Templates: `write_template` writes a committed git project, and the mlp project is a real, fast research workload."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from fleetlab.errors import FleetlabError, UnknownName
from fleetlab.templates import TEMPLATES, write_template

PROJECT_FILES = {"fleetlab.toml", "prepare.py", "program.md", "train.py"}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


# ---------------------------------------------------------------------------
# write_template


def test_mlp_is_a_git_repository_with_one_commit(tmp_path):
    dest = write_template("mlp", tmp_path / "proj")
    assert dest == (tmp_path / "proj").resolve()
    assert PROJECT_FILES <= {p.name for p in dest.iterdir()}
    assert _git(dest, "rev-list", "--count", "HEAD").strip() == "1"
    assert _git(dest, "status", "--porcelain").strip() == ""  # everything written is committed
    assert PROJECT_FILES | {".gitignore"} == set(_git(dest, "ls-files").split())
    assert ".fleetlab/" in (dest / ".gitignore").read_text().splitlines()


def test_commits_without_a_configured_git_identity(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(var, raising=False)
    dest = write_template("mlp", tmp_path / "proj")
    assert _git(dest, "log", "-1", "--format=%an <%ae>").strip() == "fleetlab <fleetlab@localhost>"


def test_refuses_a_non_empty_directory_and_writes_nothing(tmp_path):
    dest = tmp_path / "proj"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine\n")
    with pytest.raises(FleetlabError, match="is not empty; pass --force"):
        write_template("mlp", dest)
    assert sorted(p.name for p in dest.iterdir()) == ["notes.txt"]


def test_force_writes_into_a_non_empty_directory(tmp_path):
    dest = tmp_path / "proj"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine\n")
    write_template("mlp", dest, force=True)
    assert (dest / "notes.txt").read_text() == "mine\n"  # left alone ...
    assert "notes.txt" not in _git(dest, "ls-files").split()  # ... and out of the commit
    assert PROJECT_FILES <= set(_git(dest, "ls-files").split())
    write_template("mlp", dest, force=True)  # again over itself: no error, no empty commit
    assert _git(dest, "rev-list", "--count", "HEAD").strip() == "1"


def test_unknown_template_names_the_valid_ones(tmp_path):
    with pytest.raises(UnknownName) as info:
        write_template("transformer", tmp_path / "proj")
    assert "gpt" in str(info.value) and "mlp" in str(info.value)
    assert not (tmp_path / "proj").exists()


def test_a_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "proj").write_text("x")
    with pytest.raises(FleetlabError, match="not a directory"):
        write_template("mlp", tmp_path / "proj", force=True)


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_shipped_template_is_a_complete_project(name):
    root = resources.files("fleetlab.templates").joinpath(name)
    if not root.joinpath("fleetlab.toml").is_file():
        pytest.skip(f"template {name} is not in this checkout yet")  # written by a colleague; checked once it lands
    names = {p.name for p in root.iterdir()}
    assert PROJECT_FILES <= names
    config = tomllib.loads(root.joinpath("fleetlab.toml").read_text())
    for rel in config["project"]["editable"] + config["project"]["readonly"]:
        assert rel in names
    re.compile(config["metric"]["pattern"], re.M)


# ---------------------------------------------------------------------------
# The mlp project runs


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> Path:
    return write_template("mlp", tmp_path_factory.mktemp("mlp") / "proj")


def _run(project: Path, budget: float, seed: int = 0, train: str | None = None) -> tuple[str, dict[str, str]]:
    workdir = project
    if train is not None:  # a variant: a sibling copy with its own train.py
        workdir = project.parent / f"variant-{abs(hash(train))}"
        workdir.mkdir(exist_ok=True)
        (workdir / "prepare.py").write_bytes((project / "prepare.py").read_bytes())
        (workdir / "train.py").write_text(train)
    env = dict(os.environ, FLEETLAB_TIME_BUDGET=str(budget), FLEETLAB_SEED=str(seed), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "train.py"], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    summary = proc.stdout.split("\n---\n")[-1]
    return proc.stdout, dict(re.findall(r"^(\w+):\s*(\S+)$", summary, re.M))


@pytest.fixture(scope="module")
def one_second_run(mlp):
    return _run(mlp, 1.0, seed=0)


def test_run_prints_progress_and_the_summary(mlp, one_second_run):
    out, summary = one_second_run
    progress = re.findall(r"^fleetlab: step=(\d+) metric=(\S+) elapsed=(\S+)$", out, re.M)
    assert len(progress) >= 1
    assert all(math.isfinite(float(m)) for _, m, _ in progress)
    assert set(summary) >= {"val_loss", "val_accuracy", "training_seconds", "num_steps", "num_params"}
    assert re.search(r"^val_loss:\s+\d+\.\d{6}$", out, re.M)
    assert 0.0 < float(summary["val_loss"]) < 1.0
    assert float(summary["val_accuracy"]) > 0.8
    assert 0.9 <= float(summary["training_seconds"]) < 3.0
    # the project's own metric pattern finds the same number
    config = tomllib.loads((mlp / "fleetlab.toml").read_text())
    assert re.findall(config["metric"]["pattern"], out, re.M)[-1] == summary["val_loss"]


def test_same_seed_reproduces(mlp, one_second_run):
    _, first = one_second_run
    _, again = _run(mlp, 1.0, seed=0)
    steps = sorted([int(first["num_steps"]), int(again["num_steps"])])
    assert steps[1] <= 4 * steps[0]  # wall-clock budget: the same order of steps, not the same count
    assert abs(float(first["val_loss"]) - float(again["val_loss"])) < 0.03


def test_longer_training_is_better(mlp, one_second_run):
    _, short = _run(mlp, 0.2, seed=0)
    _, long = _run(mlp, 2.0, seed=0)
    assert float(long["val_loss"]) < float(short["val_loss"])


def test_divergence_prints_nan_and_exits_normally(mlp):
    train = (mlp / "train.py").read_text()
    variant, n = re.subn(r"^LEARNING_RATE = .*$", "LEARNING_RATE = 1e3", train, flags=re.M)
    assert n == 1
    out, summary = _run(mlp, 1.0, seed=0, train=variant)
    assert summary["val_loss"] == "nan"
    assert "Traceback" not in out
