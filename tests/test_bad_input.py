"""Bad input: one clear sentence, a non-zero exit, no traceback, nothing half-written."""

from __future__ import annotations

import os
import shutil
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
}


@pytest.mark.parametrize("case", sorted(TOML_CASES))
def test_bad_toml(mlp_project: Path, case: str):
    text, needle = TOML_CASES[case]
    (mlp_project / "fleetlab.toml").write_text(text)
    r = fleetlab_cmd("run", "-C", str(mlp_project), "--fleet", "local:1")
    _one_sentence_error(r, needle)
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
