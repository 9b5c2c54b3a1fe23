"""One truth: a real mlp session (local:2, auto), a submission between sessions, a second session; every figure the
run summary, `status --json`, `report --json`, `results --json`, `analyze --json`, results.tsv and report.html show
agrees, the second session starts from the first one's incumbent, and the submission made between sessions runs."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import fleetlab_cmd, set_budget
from test_report import html_facts_agree, read_page

from fleetlab.store.sqlite import SQLiteStore

# figures that depend on when they are read: none, once a session is over (no session serves the project here)
FIGURES = ("tag", "baseline", "incumbent", "gain", "confirmed_gain", "experiments", "counts", "queue_depth",
           "workers", "wall_hours", "experiments_per_hour", "busy_s", "available_s", "utilization", "training_s",
           "training_share", "gpu_hours", "gpu_hours_busy", "cost_usd", "hours_to_best", "noise_sigma", "warnings",
           "serving", "session_status", "stop_reason")


def _json(project: Path, *args: str):
    return json.loads(fleetlab_cmd(*args, "-C", str(project), "--json", check=True).stdout)


def _session(project: Path, n: int, *options: str) -> str:
    r = fleetlab_cmd("run", "-C", str(project), "--fleet", "local:2", "--strategy", "auto", "--max-experiments",
                     str(n), "--seed", "3", *options, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _summary_agrees(out: str, f: dict) -> None:
    """The run summary's lines (fleetlab.facts.headline) carry the facts' figures."""
    m = re.search(r"session (\S+): (\d+) experiments finished(?: \(([^)]*)\))?", out)
    assert m, out
    assert m.group(1) == f["tag"] and int(m.group(2)) == f["experiments"]
    shown = {k: int(n) for n, k in re.findall(r"(\d+) (keep|discard|crash|pending)", m.group(3) or "")}
    assert shown == {k: v for k, v in f["counts"]["by_decision"].items() if k != "baseline"}
    b = f["baseline"]
    m = re.search(r"baseline val_loss (\S+) \(n=(\d+), (exp-\d+)\)", out)
    assert m and float(m.group(1)) == pytest.approx(b["mean"], rel=1e-5) and int(m.group(2)) == b["n"]
    assert m.group(3) == b["id"]
    i = f["incumbent"]
    if i["is_baseline"]:
        assert "the incumbent is the baseline" in out
    else:
        m = re.search(r"incumbent (exp-\d+) val_loss (\S+) \(n=(\d+)", out)
        assert m and m.group(1) == i["id"] and float(m.group(2)) == pytest.approx(i["mean"], rel=1e-5)
        assert int(m.group(3)) == i["n"]
        m = re.search(r"gain (\S+) \((\S+)%", out)
        assert float(m.group(1)) == pytest.approx(f["gain"]["abs"], rel=1e-5)
        assert float(m.group(2)) == pytest.approx(f["gain"]["pct"], abs=0.006)
    m = re.search(r"([\d.]+) h wall, ([\d.]+) experiments/h, ([\d.]+) GPU-h \(busy (\d+)%", out)
    assert m, out
    assert float(m.group(1)) == pytest.approx(f["wall_hours"], abs=6e-4)
    assert float(m.group(2)) == pytest.approx(f["experiments_per_hour"], abs=0.06)
    assert float(m.group(3)) == pytest.approx(f["gpu_hours"], abs=6e-4)
    assert int(m.group(4)) == round(100 * f["utilization"])


def _everything_agrees(project: Path, run_output: str) -> dict:
    f = _json(project, "report")
    st = _json(project, "status")
    assert {k: st[k] for k in FIGURES} == {k: f[k] for k in FIGURES}
    assert st["running"] == [] and f["serving"] is False and f["counts"]["running"] == 0  # the session is over
    _summary_agrees(run_output, f)

    tag = f["tag"]
    res = [r for r in _json(project, "results") if r["tag"] == tag]
    finished = [r for r in res if r["status"] is not None]
    assert len(finished) == f["experiments"]
    by_state: dict[str, int] = {}
    for r in finished:
        by_state[r["state"]] = by_state.get(r["state"], 0) + 1
    assert by_state == f["counts"]["by_state"]
    assert sum(r["state"] == "cancelled" for r in res) == f["counts"]["cancelled"]
    for arm in ("baseline", "incumbent"):  # each mean is the mean of the runs it names
        runs = {r["id"]: r["metric"] for r in res if r["id"] in f[arm]["runs"]}
        assert len(runs) == f[arm]["n"] and sum(runs.values()) / len(runs) == pytest.approx(f[arm]["mean"])

    with open(project / "results.tsv", newline="") as fh:
        tsv = [row for row in csv.DictReader(fh, delimiter="\t") if row["tag"] == tag]
    assert [row["experiment_id"] for row in tsv] == [r["id"] for r in finished]  # never stale, finished only
    for row, r in zip(tsv, finished):
        assert row["status"] == r["status"] in ("keep", "discard", "crash")
        assert row["state"] == r["state"] and row["role"] == r["role"]
        if r["status"] == "crash":
            assert row["val_loss"] == "0.000000"
        else:
            assert row["val_loss"] != "0.000000" and float(row["val_loss"]) == pytest.approx(r["metric"], abs=1e-6)

    a = _json(project, "analyze")
    assert a["experiments"] == f["experiments"] and a["counts"] == f["counts"] and a["warnings"] == f["warnings"]
    assert a["cost"] == {k: f[k] for k in a["cost"]}
    if not f["incumbent"]["is_baseline"]:
        assert a["recommendation"]["gain"] == f["gain"] and a["recommendation"]["mean"] == f["incumbent"]["mean"]

    fleetlab_cmd("report", "-C", str(project), check=True)
    page = read_page((project / ".fleetlab" / "report" / "report.html").read_text())
    assert html_facts_agree(page, f) >= 20
    assert page.facts["experiments"] == str(f["experiments"]) and page.facts["baseline.id"] == f["baseline"]["id"]
    return f


def test_every_surface_tells_the_same_story_across_two_sessions(tmp_path: Path):
    project = tmp_path / "proj"
    fleetlab_cmd("init", str(project), "--template", "mlp", check=True)
    set_budget(project, 1.0)
    # the first session keeps with autoresearch's rule (any gain over the incumbent), so it ends on a variant
    first = _everything_agrees(project, _session(project, 8, "--keep-rule", "simple", "--no-prune"))
    assert first["experiments"] == 8 and not first["incumbent"]["is_baseline"]

    # a variant submitted while no session runs
    variant = tmp_path / "variant"
    shutil.copytree(project, variant, ignore=shutil.ignore_patterns(".git", ".fleetlab", "results.tsv"))
    train = variant / "train.py"
    train.write_text(train.read_text().replace("HIDDEN = 64 ", "HIDDEN = 96 ", 1))
    submitted = fleetlab_cmd("submit", "-C", str(project), "--from", str(variant), "-m", "between sessions",
                             check=True).stdout.split()[0]

    # the second one validates (replicates, validation runs, pruning): more kinds of row to agree on
    second = _everything_agrees(project, _session(project, 6))
    assert second["tag"] != first["tag"]
    store = SQLiteStore(project / ".fleetlab" / "fleetlab.db")
    try:
        ran = sorted((e for e in store.experiments(tag=second["tag"]) if e.started_at), key=lambda e: e.started_at)
        assert ran[0].content_hash == first["incumbent"]["content_hash"]  # it starts by re-measuring the incumbent
        assert second["baseline"]["content_hash"] == first["incumbent"]["content_hash"]
        assert store.get(submitted).state.is_final and store.get(submitted).state.value != "cancelled"
    finally:
        store.close()
