"""One fault per final state: a run that exits 1, sleeps past the timeout, prints NaN, prints no metric, or edits
a read-only file. Variants go in through `fleetlab submit`, the way an external agent would send them."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import fleetlab_cmd, set_budget

from fleetlab.experiment import State
from fleetlab.store.sqlite import SQLiteStore

FAULTS = {
    "crash": ("import sys\nprint('about to fail')\nsys.exit(1)\n", "crash"),
    "timeout": ("import time, subprocess\nsubprocess.Popen(['sleep', '300'])\nprint('sleeping')\ntime.sleep(300)\n",
                "timeout"),
    "nan": ("print('val_loss: nan')\nraise SystemExit(0)\n", "nan"),
    "no_metric": ("print('I forgot to print the metric')\nraise SystemExit(0)\n", "no_metric"),
    "tamper": ("open('prepare.py', 'a').write('# changed by the run\\n')\nprint('val_loss: 0.01')\n"
               "raise SystemExit(0)\n", "tampered"),
}


def test_every_final_state(mlp_project: Path, tmp_path: Path):
    set_budget(mlp_project, 1.0, timeout=4)
    ids = {}
    for name, (prefix, _) in FAULTS.items():
        variant = tmp_path / f"variant-{name}"
        shutil.copytree(mlp_project, variant, ignore=shutil.ignore_patterns(".git", ".fleetlab"))
        train = variant / "train.py"
        train.write_text(prefix + train.read_text())
        r = fleetlab_cmd("submit", "-C", str(mlp_project), "--from", str(variant), "-m", f"fault: {name}", check=True)
        ids[name] = r.stdout.strip()
    r = fleetlab_cmd("run", "-C", str(mlp_project), "--fleet", "local:2", "--strategy", "none",
                     "--max-experiments", str(len(FAULTS) + 1), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    store = SQLiteStore(mlp_project / ".fleetlab" / "fleetlab.db")
    for name, (_, state) in FAULTS.items():
        e = store.get(ids[name])
        assert e.state.value == state, (name, e.state, e.log_tail)
        assert e.metric is None
        assert e.log_tail, name  # the log tail is kept with every failure
        assert store.decisions()[e.id].status == "crash"
    assert "about to fail" in store.get(ids["crash"]).log_tail
    assert "I forgot" in store.get(ids["no_metric"]).log_tail
    # the timed-out run's child was killed with its process group
    import subprocess

    out = subprocess.run(["pgrep", "-f", "sleep 300"], capture_output=True, text=True).stdout.split()
    for pid in out:
        cwd = Path(f"/proc/{pid}/cwd")
        assert not (cwd.exists() and str(mlp_project) in str(cwd.resolve())), "a timed-out child survived"
    # the project's own read-only file was never touched: only the snapshot was
    assert "changed by the run" not in (mlp_project / "prepare.py").read_text()
    tsv = (mlp_project / "results.tsv").read_text().splitlines()
    crash_rows = [ln for ln in tsv[1:] if ln.split("\t")[3] == "crash"]
    assert len(crash_rows) == len(FAULTS)
    assert all(ln.split("\t")[1] == "0.000000" and ln.split("\t")[2] == "0.0" for ln in crash_rows)
    baseline = [e for e in store.experiments() if e.role == "baseline"]
    assert baseline and all(b.state.value == "done" for b in baseline)  # replicated by the validity rule


def test_cancel_on_interrupt(mlp_project: Path):
    """SIGINT (Ctrl-C) stops cleanly: running experiments are cancelled and recorded as such."""
    import os
    import signal
    import subprocess
    import sys
    import time

    set_budget(mlp_project, 30, timeout=60)
    # as from a terminal: a test runner started in the background (CI scripts, `cmd &`) has SIGINT ignored, the
    # child would inherit that and Python would never raise KeyboardInterrupt in it
    p = subprocess.Popen([sys.executable, "-m", "fleetlab.cli", "run", "-C", str(mlp_project), "--fleet", "local:2",
                          "--strategy", "random"], env={**os.environ, "OMP_NUM_THREADS": "1"},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    db = mlp_project / ".fleetlab" / "fleetlab.db"
    deadline = time.time() + 30
    while time.time() < deadline:
        time.sleep(0.5)
        if db.exists() and SQLiteStore(db).count(states=[__import__("fleetlab.experiment").experiment.State.RUNNING]) >= 2:
            break
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    store = SQLiteStore(db)
    exps = store.experiments()
    states = [e.state.value for e in exps]
    assert states.count("cancelled") == 2, states
    assert all(e.state.is_final or e.state.value == "queued" for e in exps)
    assert store.sessions()[-1]["status"] == "interrupted"
    for e in exps:
        pid = (e.handle or {}).get("wrapper_pid")
        if pid:
            assert not Path(f"/proc/{pid}").exists() or b"_wrapper" not in Path(f"/proc/{pid}/cmdline").read_bytes()


# == crash windows: SIGKILL the orchestrator where it pauses in the real code path, then resume ==================
def _kill_at(project: Path, point: str, tmp_path: Path, *run_args: str) -> None:
    """Start `fleetlab run`, wait until it reaches `point` (an env-guarded pause in the loop itself), SIGKILL it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    marker = tmp_path / f"at-{point}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FLEETLAB_PAUSE_AT": point, "FLEETLAB_PAUSE_FILE": str(marker),
           "FLEETLAB_PAUSE_S": "300"}
    log = open(tmp_path / f"run-{point}.log", "w")
    p = subprocess.Popen([sys.executable, "-m", "fleetlab.cli", "run", "-C", str(project), *run_args], env=env,
                         stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while not marker.exists() and p.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert marker.exists(), (tmp_path / f"run-{point}.log").read_text()[-3000:]
        os.kill(p.pid, signal.SIGKILL)
        assert p.wait(timeout=30) == -signal.SIGKILL
    finally:
        if p.poll() is None:
            p.kill()
        log.close()


def _branch_file(project: Path, tag: str, rel: str) -> str | None:
    import subprocess

    r = subprocess.run(["git", "show", f"fleetlab/{tag}:{rel}"], cwd=project, capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else None


RUN = ("--fleet", "local:2", "--strategy", "none", "--no-prune", "--tag", "w")


def test_sigkill_while_the_keep_commit_is_written_then_resume(mlp_project: Path, tmp_path: Path):
    """Killed after the store recorded the new incumbent and before its git commit: the next start commits it."""
    set_budget(mlp_project, 1.0, timeout=30)
    _kill_at(mlp_project, "keep-commit", tmp_path, *RUN, "--max-experiments", "3")
    store = SQLiteStore(mlp_project / ".fleetlab" / "fleetlab.db")
    inc = store.incumbent("w")
    assert inc is not None and store.decisions()[inc].status == "keep"
    assert _branch_file(mlp_project, "w", "train.py") is None  # the window: kept in the store, no branch yet
    store.close()
    r = fleetlab_cmd("run", "-C", str(mlp_project), *RUN, "--max-experiments", "3", timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    store = SQLiteStore(mlp_project / ".fleetlab" / "fleetlab.db")
    kept = store.get(store.incumbent("w"))
    assert _branch_file(mlp_project, "w", "train.py") == store.get_blob(kept.files["train.py"])
    assert all(e.id in store.decisions() for e in store.experiments() if e.state.is_final)
    assert store.integrity_check() == "ok"


def test_sigkill_between_a_runs_finish_and_its_decision_then_resume(mlp_project: Path, tmp_path: Path):
    """Killed inside the transaction that writes a run's final state and its decision: neither is there, the run
    (which finished on its own) is collected again on resume, and gets both."""
    set_budget(mlp_project, 1.0, timeout=30)
    _kill_at(mlp_project, "decision", tmp_path, *RUN, "--max-experiments", "3")
    store = SQLiteStore(mlp_project / ".fleetlab" / "fleetlab.db")
    running = [e for e in store.experiments() if e.state is State.RUNNING]
    assert running and not store.decisions()  # the first run to end was in the window: nothing of it written
    finished_in_window = running[0].id
    store.close()
    r = fleetlab_cmd("run", "-C", str(mlp_project), *RUN, "--max-experiments", "3", timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    store = SQLiteStore(mlp_project / ".fleetlab" / "fleetlab.db")
    exps = store.experiments()
    decisions = store.decisions()
    assert store.get(finished_in_window).state.is_final and finished_in_window in decisions
    assert all(e.id in decisions for e in exps if e.state.is_final)
    assert "pending" not in {d.status for d in decisions.values()}
    assert store.get(store.incumbent("w")).state is State.DONE
    assert _branch_file(mlp_project, "w", "train.py") is not None
    assert [e.state for e in exps].count(State.RUNNING) == 0 and store.integrity_check() == "ok"
