"""Bad input: one clear sentence, a non-zero exit, no traceback, nothing half-written."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import fleetlab_cmd

from fleetlab.errors import ConfigError, ProposalRejected
from fleetlab.experiment import Edit, Proposal
from fleetlab.project import Project
from fleetlab.proposals import Materializer
from fleetlab.store.sqlite import SQLiteStore


def _one_sentence_error(r, *needles: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("fleetlab: error: ")
    for n in needles:
        assert n in lines[0], lines[0]


TOML_CASES = {
    "malformed": ("[project\neditable = [", "not valid TOML"),
    "unknown_key": ("[project]\neditable = ['train.py']\nbogus = 1\n", "project.bogus"),
    "unknown_section": ("[projects]\neditable = ['train.py']\n", "[projects]"),
    "wrong_type": ("[project]\neditable = 'train.py'\n", "project.editable"),
    "wrong_type_number": ("[project]\ntime_budget_s = 'five'\n", "project.time_budget_s"),
    "missing_file": ("[project]\neditable = ['nothere.py']\n", "nothere.py"),
    "both": ("[project]\neditable = ['train.py']\nreadonly = ['train.py']\n", "train.py"),
    "bad_regex": ("[project]\neditable = ['train.py']\n[metric]\nname = 'val_loss'\npattern = '^val_loss: ([0-9'\n",
                  "metric.pattern"),
    "bad_extra_regex": ("[project]\neditable = ['train.py']\n[metric.extra]\nacc = '(('\n", "metric.extra.acc"),
    "bad_goal": ("[metric]\ngoal = 'lower'\n", "metric.goal"),
    "bad_knob": ("[knobs]\nLEARNING_RATE = 0.1\n", "knobs.LEARNING_RATE"),
    "bad_alpha": ("[validity]\nalpha = 5.0\n", "validity.alpha must be between 0 and 1"),
    "bad_extend_rounds": ("[validity]\nextend_rounds = -1\n", "validity.extend_rounds"),
    "budget_nan": ("[project]\ntime_budget_s = nan\n", "project.time_budget_s must be a finite number"),
    "budget_inf": ("[project]\ntime_budget_s = inf\n", "project.time_budget_s must be a finite number"),
    "timeout_nan": ("[project]\ntimeout_s = nan\n", "project.timeout_s must be a finite number"),
    "timeout_below_budget": ("[project]\ntime_budget_s = 30\ntimeout_s = 10\n", "project.timeout_s (10 s) must be "
                             "above project.time_budget_s (30 s)"),
    "replicates_zero": ("[validity]\nreplicates = 0\n", "validity.replicates must be 1 or more"),
    "baseline_replicates_negative": ("[validity]\nbaseline_replicates = -1\n", "validity.baseline_replicates"),
    "lookahead_negative": ("[strategy]\nlookahead = -2\n", "strategy.lookahead must be 0 or more"),
    "quantile": ("[prune]\nquantile = 2\n", "prune.quantile must be between 0 and 1"),
    "stop_negative": ("[stop]\nmax_experiments = -3\n", "stop.max_experiments must be 0 or more"),
    "target_inf": ("[stop]\ntarget = inf\n", "stop.target"),
    "min_gain_negative": ("[stop]\nmin_gain_per_gpu_hour = -0.1\n", "stop.min_gain_per_gpu_hour"),
    "toml_editable": ("[project]\neditable = ['train.py', 'fleetlab.toml']\n", "project.editable lists 'fleetlab.toml'"),
    "toml_readonly": ("[project]\nreadonly = ['fleetlab.toml']\n", "project.readonly lists 'fleetlab.toml'"),
    "state_dir_readonly": ("[project]\nreadonly = ['.git/config']\n", "project.readonly lists '.git/config'"),
    "knob_log1m_type": ("[knobs]\nMOMENTUM = { low = 0.5, high = 0.99, log1m = 1 }\n", "knobs.MOMENTUM.log1m"),
}


@pytest.mark.parametrize("case", sorted(TOML_CASES))
def test_bad_toml(mlp_project: Path, case: str):
    text, needle = TOML_CASES[case]
    (mlp_project / "fleetlab.toml").write_text(text)
    r = fleetlab_cmd("run", "-C", str(mlp_project), "--fleet", "local:1")
    _one_sentence_error(r, needle)
    assert "--" not in r.stderr  # the key in fleetlab.toml is named, not a command-line flag
    assert not (mlp_project / ".fleetlab").exists()  # nothing half-written


def test_bad_toml_raises_config_error_with_key(mlp_project: Path):
    (mlp_project / "fleetlab.toml").write_text("[project]\neditable = ['train.py']\ntimeout_s = true\n")
    with pytest.raises(ConfigError) as e:
        Project.load(mlp_project)
    assert e.value.key == "project.timeout_s"


def test_no_project(tmp_path: Path):
    _one_sentence_error(fleetlab_cmd("run", "-C", str(tmp_path)), "fleetlab.toml")


@pytest.mark.parametrize("args,needle", [
    (["--fleet", "cloud:4", "--strategy", "random"], "unknown fleet 'cloud'"),
    (["--fleet", "local:zero", "--strategy", "random"], "local:N"),
    (["--strategy", "genius"], "unknown strategy 'genius'"),
    (["--strategy", "random,genius"], "unknown strategy 'genius'"),
    (["--max-experiments", "-3", "--strategy", "random"], "max-experiments"),
    (["--tag", "a b/c", "--strategy", "random"], "--tag"),
])
def test_bad_names(mlp_project: Path, args, needle):
    r = fleetlab_cmd("run", "-C", str(mlp_project), *args)
    _one_sentence_error(r, needle)
    store = mlp_project / ".fleetlab" / "fleetlab.db"
    if store.exists():
        assert SQLiteStore(store).count() == 0


@pytest.mark.parametrize("args, needle", [
    (["run", "--lookahead", "-1"], "--lookahead cannot be negative"),
    (["run", "--max-hours", "nan"], "--max-hours must be a finite number"),
    (["run", "--max-cost", "inf"], "--max-cost must be a finite number"),
    (["run", "--target", "inf"], "--target must be a finite number"),
    (["run", "--min-gain-per-gpu-hour", "-1"], "--min-gain-per-gpu-hour cannot be negative"),
    (["run", "--max-experiments", "-3"], "--max-experiments cannot be negative"),
    (["submit", "--from", ".", "-m", "x", "--replicates", "0"], "--replicates must be at least 1"),
])
def test_a_bad_flag_is_refused_before_anything_is_written(mlp_project: Path, args, needle):
    _one_sentence_error(fleetlab_cmd(*args, "-C", str(mlp_project)), needle)
    assert not (mlp_project / ".fleetlab").exists()


@pytest.mark.parametrize("tag", ["a..b", "end.", "x.lock", "a/b", "-x", "a b"])
def test_a_tag_git_refuses_is_refused_before_anything_is_written(mlp_project: Path, tag: str):
    r = fleetlab_cmd("run", "-C", str(mlp_project), "--strategy", "random", f"--tag={tag}")
    _one_sentence_error(r, "--tag", repr(tag))
    assert not (mlp_project / ".fleetlab").exists()


def test_a_project_that_is_not_a_git_repository_is_refused(mlp_project: Path):
    shutil.rmtree(mlp_project / ".git")
    r = fleetlab_cmd("run", "-C", str(mlp_project), "--strategy", "random")
    _one_sentence_error(r, "is not a git repository", "git init")
    assert not (mlp_project / ".fleetlab").exists()


def test_uncommitted_changes_to_the_projects_files_are_refused(mlp_project: Path):
    """They would silently become the baseline, which no commit holds: the files are named, to be committed first."""
    for name in ("train.py", "prepare.py"):
        (mlp_project / name).write_text((mlp_project / name).read_text() + "\n# an edit nobody committed\n")
    r = fleetlab_cmd("run", "-C", str(mlp_project), "--strategy", "random")
    _one_sentence_error(r, "prepare.py, train.py have changes not committed", "commit them first")
    assert not (mlp_project / ".fleetlab").exists()
    subprocess.run(["git", "commit", "-qam", "the edit"], cwd=mlp_project, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"})
    r = fleetlab_cmd("run", "-C", str(mlp_project), "--strategy", "random", "--dry-run")
    assert r.returncode == 0, r.stderr


BASELINE_FAILS = {
    # a metric pattern that matches nothing, on a run that prints bytes that are not UTF-8
    "no_metric": ("python -c 'import sys; sys.stdout.buffer.write(bytes([118, 97, 108, 32, 255, 254, 10]))'",
                  "ended as no_metric (the metric pattern matched no line)"),
    "no_command": ("fleetlab-no-such-command --fast", "fleetlab-no-such-command"),
}


@pytest.mark.parametrize("case", sorted(BASELINE_FAILS))
def test_a_failed_baseline_ends_the_run_non_zero_with_the_reason(mlp_project: Path, case: str):
    command, needle = BASELINE_FAILS[case]
    toml = mlp_project / "fleetlab.toml"
    text = re.sub(r"(?m)^command = .*$", lambda _: f'command = "{command}"', toml.read_text())
    toml.write_text(re.sub(r"(?m)^time_budget_s = .*$", "time_budget_s = 1", text))
    r = fleetlab_cmd("run", "-C", str(mlp_project), "--fleet", "local:1", "--strategy", "none", "-q", timeout=120)
    _one_sentence_error(r, "the baseline exp-0001 ended as", needle)
    if case == "no_metric":  # its log is shown with replacement characters, even on an ASCII terminal
        for env in ({}, {"PYTHONIOENCODING": "ascii"}):
            shown = fleetlab_cmd("show", "exp-0001", "--log", "-C", str(mlp_project), env=env)
            assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
            assert ("val \ufffd\ufffd" if not env else "val ??") in shown.stdout


def test_a_newer_database_is_refused_untouched(mlp_project: Path):
    db = mlp_project / ".fleetlab" / "fleetlab.db"
    db.parent.mkdir()
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.execute("INSERT INTO meta VALUES ('schema_version', '99')")
    con.commit()
    con.close()
    before = db.read_bytes()
    for args in (["status"], ["run", "--strategy", "none"], ["results", "--json"]):
        _one_sentence_error(fleetlab_cmd(*args, "-C", str(mlp_project)), "schema version 99", "upgrade fleetlab")
    assert db.read_bytes() == before
    assert sorted(p.name for p in db.parent.iterdir()) == ["fleetlab.db"]


def _read_only(path: Path) -> list[str]:
    """A prefix that runs a command with `path` read-only: a read-only bind mount (root ignores file modes)."""
    if shutil.which("bwrap") is None:
        pytest.skip("bwrap is needed to mount a directory read-only")
    probe = subprocess.run(["bwrap", "--bind", "/", "/", "--ro-bind", str(path), str(path), "--dev", "/dev", "--proc",
                            "/proc", "sh", "-c", f"! touch {path}/probe"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"bwrap cannot mount here: {probe.stderr.decode(errors='replace').strip()}")
    return ["bwrap", "--bind", "/", "/", "--ro-bind", str(path), str(path), "--dev", "/dev", "--proc", "/proc"]


def test_read_only_commands_work_on_a_read_only_state_directory(mlp_project: Path, tmp_path: Path):
    variant = tmp_path / "v"
    shutil.copytree(mlp_project, variant, ignore=shutil.ignore_patterns(".git"))
    (variant / "train.py").write_text((variant / "train.py").read_text().replace("HIDDEN = 64", "HIDDEN = 96"))
    r = fleetlab_cmd("submit", "-C", str(mlp_project), "--from", str(variant), "-m", "wider")
    assert r.returncode == 0, r.stderr
    state = mlp_project / ".fleetlab"
    before = {p.name: p.read_bytes() for p in state.rglob("*") if p.is_file()}
    prefix = _read_only(state)
    for args in (["status"], ["status", "--json"], ["results", "--json"], ["show", "exp-0001"], ["report", "--json"],
                 ["knobs"], ["analyze"]):
        r = subprocess.run([*prefix, sys.executable, "-m", "fleetlab.cli", *args, "-C", str(mlp_project)],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, (args, r.stderr)
        assert "exp-0001" in r.stdout or args[0] in ("knobs", "analyze", "report"), (args, r.stdout)
    assert {p.name: p.read_bytes() for p in state.rglob("*") if p.is_file()} == before


def test_unknown_template_and_non_empty_dir(tmp_path: Path):
    _one_sentence_error(fleetlab_cmd("init", str(tmp_path / "x"), "--template", "cnn"), "unknown template")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a.txt").write_text("x")
    _one_sentence_error(fleetlab_cmd("init", str(tmp_path / "full"), "--template", "mlp"), "not empty")
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["a.txt"]


def test_show_unknown_experiment(mlp_project: Path):
    _one_sentence_error(fleetlab_cmd("show", "exp-9999", "-C", str(mlp_project)), "exp-9999")


# -- workspace: only editable files may change -----------------------------------------------------------------------
EDIT_CASES = {
    "readonly": (Edit(file="prepare.py", content="x = 1\n"), "readonly"),
    "outside": (Edit(file="../x.py", content="x = 1\n"), "outside"),
    "absolute": (Edit(file="/etc/passwd", content="x\n"), "outside"),
    "not_editable": (Edit(file="program.md", content="hi\n"), "not_editable"),
    "search_missing": (Edit(file="train.py", search="THIS DOES NOT OCCUR", replace="x"), "search_missing"),
    "search_twice": (Edit(file="train.py", search="import", replace="import"), "search_ambiguous"),
    "syntax": (Edit(file="train.py", search="LEARNING_RATE = 0.01", replace="LEARNING_RATE = = 0.01"), "syntax"),
}


@pytest.mark.parametrize("case", sorted(EDIT_CASES))
def test_edit_rejected_before_anything_runs(mlp_project: Path, tmp_path: Path, case: str):
    edit, reason = EDIT_CASES[case]
    project = Project.load(mlp_project)
    store = SQLiteStore(tmp_path / "db.sqlite")
    with pytest.raises(ProposalRejected) as e:
        Materializer(project, store).build(Proposal(description=case, edits=(edit,)), None)
    assert e.value.reason == reason
    assert str(e.value).count("\n") == 0
    assert store.count() == 0


def test_symlink_escape(mlp_project: Path, tmp_path: Path):
    outside = tmp_path / "outside.py"
    outside.write_text("SECRET = 1\n")
    (mlp_project / "train.py").unlink()
    os.symlink(outside, mlp_project / "train.py")
    project = Project.load(mlp_project)
    with pytest.raises(ProposalRejected) as e:
        Materializer(project, SQLiteStore(":memory:")).build(
            Proposal(description="x", edits=(Edit(file="train.py", content="SECRET = 2\n"),)), None)
    assert e.value.reason == "outside"
    assert outside.read_text() == "SECRET = 1\n"


def test_submit_rejects_changed_readonly_file(mlp_project: Path, tmp_path: Path):
    variant = tmp_path / "v"
    shutil.copytree(mlp_project, variant, ignore=shutil.ignore_patterns(".git", ".fleetlab"))
    (variant / "prepare.py").write_text((variant / "prepare.py").read_text() + "\n# sneaky\n")
    r = fleetlab_cmd("submit", "-C", str(mlp_project), "--from", str(variant), "-m", "sneaky")
    _one_sentence_error(r, "prepare.py", "read-only")
    variant2 = tmp_path / "v2"
    shutil.copytree(mlp_project, variant2, ignore=shutil.ignore_patterns(".git", ".fleetlab"))
    (variant2 / "extra.py").write_text("x = 1\n")
    _one_sentence_error(fleetlab_cmd("submit", "-C", str(mlp_project), "--from", str(variant2), "-m", "extra"),
                        "extra.py")
    db = mlp_project / ".fleetlab" / "fleetlab.db"
    assert not db.exists() or SQLiteStore(db).count() == 0
