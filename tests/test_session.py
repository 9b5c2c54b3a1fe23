"""The research loop end to end on the mlp template with real subprocesses: database, results.tsv, keep branch,
report; plus resume after the orchestrator is SIGKILLed at random moments."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import commit_all, fleetlab_cmd, set_budget

from fleetlab.experiment import State
from fleetlab.store.sqlite import SQLiteStore


def test_random_session_end_to_end(mlp_project: Path):
    set_budget(mlp_project, 1.5)
    r = fleetlab_cmd("run", "-C", str(mlp_project), "--fleet", "local:2", "--strategy", "random",
                     "--max-experiments", "8", "--keep-rule", "simple", "--no-prune", timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    store = SQLiteStore(mlp_project / ".fleetlab" / "fleetlab.db")
    exps = store.experiments()
    assert len(exps) == 8
    assert exps[0].role == "baseline" and exps[0].id == "exp-0001"
    assert all(e.state.is_final for e in exps)
    assert all(e.state is State.DONE for e in exps), [(e.id, e.state, e.log_tail) for e in exps]
    assert len({e.worker for e in exps}) == 2  # both slots were used
    assert all(e.metric is not None and e.metric > 0 for e in exps)
    assert all(e.parent is not None for e in exps[1:])
    # every run happened in its own snapshot; the project itself is untouched
    for e in exps:
        assert (mlp_project / ".fleetlab" / "runs" / e.id / "run.log").is_file()
    assert subprocess.run(["git", "status", "--porcelain", "train.py", "prepare.py"], cwd=mlp_project,
                          capture_output=True, text=True).stdout == ""
    # decisions: the incumbent is the best kept experiment, and the keep branch carries it
    decisions = store.decisions()
    kept = [e for e in exps if decisions[e.id].status == "keep"]
    assert kept[0].id == "exp-0001"
    best = min(kept, key=lambda e: e.metric)
    tag = store.sessions()[-1]["tag"]
    assert store.incumbent(tag) == best.id
    branch_file = subprocess.run(["git", "show", f"fleetlab/{tag}:train.py"], cwd=mlp_project, capture_output=True,
                                 text=True, check=True).stdout
    assert branch_file == store.get_blob(best.files["train.py"])
    log = subprocess.run(["git", "log", "--format=%s", f"fleetlab/{tag}"], cwd=mlp_project, capture_output=True,
                         text=True).stdout
    assert len([ln for ln in log.splitlines() if ln.startswith("exp-")]) == len(kept)
    # results.tsv is autoresearch-compatible
    lines = (mlp_project / "results.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    assert header[:5] == ["experiment_id", "val_loss", "memory_gb", "status", "description"]
    assert len(lines) == 9
    assert {ln.split("\t")[3] for ln in lines[1:]} <= {"keep", "discard", "crash"}
    # report
    r = fleetlab_cmd("report", "-C", str(mlp_project), check=True)
    png = mlp_project / ".fleetlab" / "report" / "progress.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert best.id in (mlp_project / ".fleetlab" / "report" / "report.html").read_text()
    # the query commands work on the finished session
    import json

    res = json.loads(fleetlab_cmd("results", "-C", str(mlp_project), "--json", check=True).stdout)
    assert [x["id"] for x in res] == [e.id for e in exps]
    for width in (80, 160):  # one line per experiment at the terminal's width, ids and figures whole
        table = fleetlab_cmd("results", "-C", str(mlp_project), env={"COLUMNS": str(width)}, check=True).stdout
        rows = [ln for ln in table.splitlines() if ln.startswith("exp-")]
        assert len(rows) == len(exps) and all(len(ln) <= width for ln in table.splitlines())
        assert [ln.split()[0] for ln in rows] == [e.id for e in exps]
        assert all(ln.split()[1].rstrip("*") == (f"{e.metric:.6f}" if e.metric is not None else "-")
                   for ln, e in zip(rows, exps) if e.state.value != "pruned")
    show = fleetlab_cmd("show", exps[1].id, "-C", str(mlp_project), "--diff", check=True).stdout
    assert show.startswith("--- a/train.py")
    st = json.loads(fleetlab_cmd("status", "-C", str(mlp_project), "--json", check=True).stdout)
    assert st["incumbent"]["id"] == best.id and st["experiments"] == 8


def _integrity(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


@pytest.mark.parametrize("keep_rule", ["simple", "auto"])
def test_sigkill_and_resume(mlp_project: Path, keep_rule: str):
    """Kill the orchestrator with SIGKILL at random moments, restart it, and check nothing is lost or doubled
    (with the simple keep rule and with the default statistical one, whose state is rebuilt on restart)."""
    set_budget(mlp_project, 2.0)
    n = 12
    rng = random.Random(1234)
    args = [sys.executable, "-m", "fleetlab.cli", "run", "-C", str(mlp_project), "--fleet", "local:2", "--strategy",
            "random", "--max-experiments", str(n), "--keep-rule", keep_rule, "--no-prune", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    db = mlp_project / ".fleetlab" / "fleetlab.db"
    kills = 0
    for attempt in range(12):
        p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < 4:
            time.sleep(rng.uniform(1.0, 3.5))
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
                kills += 1
                assert _integrity(db) == "ok"
                sess = SQLiteStore(db).sessions()
                if sess and sess[-1]["status"] == "finished":
                    break  # killed while shutting down after the last experiment: nothing left to resume
                continue
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err.decode()
        break
    assert kills >= 3
    store = SQLiteStore(db)
    exps = store.experiments()
    explore = [e for e in exps if e.role == "explore"]
    assert len(exps) == n  # nothing twice, nothing lost (replicates and validations count toward the limit)
    assert len({e.content_hash for e in explore}) == len(explore)  # no variant proposed twice
    if keep_rule == "auto":
        assert len([e for e in exps if e.role == "baseline"]) == 3
    assert all(e.state.is_final for e in exps), [(e.id, e.state) for e in exps]
    assert not any(e.state is State.RUNNING or e.state is State.QUEUED for e in exps)
    assert all(e.state is State.DONE for e in exps), [(e.id, e.state.value, e.log_tail[-200:]) for e in exps]
    # every run directory holds exactly one finished run (a re-queued run was started again, never twice at once)
    for e in exps:
        assert (mlp_project / ".fleetlab" / "runs" / e.id / ".fleetlab_exit.json").is_file()
    assert len(store.sessions()) == 1
    assert _integrity(db) == "ok"
    # nothing left running on this machine from our runs
    for e in exps:
        h = e.handle or {}
        pid = h.get("wrapper_pid")
        if pid:
            assert not Path(f"/proc/{pid}").exists() or "fleetlab.fleet._wrapper" not in \
                Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")


DATA_TRAIN = '''import os
LR = 0.1
n = int(os.environ["EXPERIMENT_ID"].split("-")[1])
# from the 6th experiment on, the run claims other data than its worker's setup prepared
print("fleetlab: data=" + ("bbbbbbbbbbbbbbbb" if n >= 6 else "aaaaaaaaaaaaaaaa"))
print(f"loss: {abs(LR - 0.05) + 0.001 * (n % 3):.6f}")
'''


def test_the_data_fingerprint_comes_from_setup_and_a_run_cannot_evict_workers(tmp_path: Path):
    """The setup prints `fleetlab: data=<fingerprint>`; the session pins it. A run printing another fails alone
    (tampered, its worker stays); a worker whose setup prepared other data than the session's (a resumed session
    after the data changed) leaves the fleet with one sentence saying why and what to do, its run re-queued, and with
    no worker left the session stops with a non-zero exit."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "train.py").write_text(DATA_TRAIN)
    (root / "source.txt").write_text("a" * 16)
    (root / "fleetlab.toml").write_text(
        "[project]\neditable = [\"train.py\"]\ncommand = \"python train.py\"\ntime_budget_s = 1\ntimeout_s = 30\n"
        "setup = 'echo \"fleetlab: data=$(cat source.txt)\"'\n\n"
        "[metric]\nname = \"loss\"\ngoal = \"minimize\"\npattern = '^loss:\\s*(\\S+)'\n\n"
        "[knobs.LR]\nlow = 0.01\nhigh = 1.0\nlog = true\n")
    commit_all(root)
    r = fleetlab_cmd("run", "-C", str(root), "--fleet", "local:2", "--strategy", "random", "--max-experiments", "10",
                     "--keep-rule", "simple", timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    store = SQLiteStore(root / ".fleetlab" / "fleetlab.db")
    exps = {e.id: e for e in store.experiments()}
    sess = store.sessions()[-1]
    assert sess["data_fingerprint"] == "a" * 16 and "no workers left" not in sess["stop_reason"]
    assert len(exps) == 10 and all(e.state.is_final for e in exps.values())
    early = [e for e in exps.values() if e.number < 6]
    assert early and all(e.state is State.DONE and e.extras["data"] == "a" * 16 for e in early)
    late = [e for e in exps.values() if e.number >= 6]
    assert late and all(e.state is State.TAMPERED and e.metric is None for e in late)
    assert all("printed the data fingerprint " + "b" * 16 in e.meta["reason"] for e in late)
    store.close()

    # the data changed on this machine: resuming the session, every worker's setup now prepares other data
    (root / "source.txt").write_text("c" * 16)
    r = fleetlab_cmd("run", "-C", str(root), "--fleet", "local:2", "--strategy", "random", "--max-experiments", "14",
                     "--keep-rule", "simple", "--tag", sess["tag"], timeout=240)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "measured on other data" in r.stdout and "Traceback" not in r.stdout + r.stderr
    store = SQLiteStore(root / ".fleetlab" / "fleetlab.db")
    sess = store.sessions()[-1]
    after = {e.id: e for e in store.experiments()}
    store.close()
    assert sess["data_fingerprint"] == "a" * 16
    assert "no workers left" in sess["stop_reason"] and "run the project's setup" in sess["stop_reason"]
    assert "fingerprint is " + "c" * 16 in sess["stop_reason"]
    # nothing measured on the other data was recorded as a result: those runs wait in the queue for a good worker
    new = [e for e in after.values() if e.id not in exps]
    assert new and all(e.state is State.QUEUED and e.metric is None for e in new)
