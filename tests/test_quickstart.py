"""`fleetlab quickstart` end to end. The real thing (gpt template, five minutes) is marked slow; the same path on the
seconds-fast mlp template runs in CI."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import fleetlab_cmd

from fleetlab.store.sqlite import SQLiteStore


def _check(dest: Path, out: str, metric: str) -> None:
    from fleetlab.facts import compute, headline
    from fleetlab.project import Project

    store = SQLiteStore(dest / ".fleetlab" / "fleetlab.db")
    facts = compute(Project.load(dest), store)
    for line in headline(facts):  # the last lines are the facts every other surface shows
        assert line in out, (line, out)
    assert (dest / ".fleetlab" / "report" / "report.html").is_file()
    exps = SQLiteStore(dest / ".fleetlab" / "fleetlab.db").experiments()
    assert any(e.role == "baseline" and e.state.value == "done" for e in exps)
    assert len(exps) >= 3
    assert f"baseline {metric}" in out


def test_quickstart_on_the_mlp_template(tmp_path: Path):
    dest = tmp_path / "qs"
    # -C DIR is the project directory, as for every other command (it was once accepted and ignored)
    r = fleetlab_cmd("quickstart", "-C", str(dest), "--template", "mlp", "--minutes", "0.5", timeout=180, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (tmp_path / "fleetlab-quickstart").exists()
    _check(dest, r.stdout, "val_loss")
    # running it again resumes the same project
    r2 = fleetlab_cmd("quickstart", "--dir", str(dest), "--template", "mlp", "--minutes", "0.2", timeout=180)
    assert r2.returncode == 0 and "resuming" in r2.stdout


def test_quickstart_refuses_two_directories(tmp_path: Path):
    r = fleetlab_cmd("quickstart", "-C", str(tmp_path / "a"), "--dir", str(tmp_path / "b"), "--template", "mlp",
                     cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == ["fleetlab: error: give the quickstart's project directory once, as -C DIR "
                                             "or --dir DIR"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow
def test_quickstart_gpt_five_minutes(tmp_path: Path):
    dest = tmp_path / "qs"
    r = fleetlab_cmd("quickstart", "--dir", str(dest), "--minutes", "5", timeout=900,
                     env={"FLEETLAB_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stdout + r.stderr
    _check(dest, r.stdout, "val_bpb")
