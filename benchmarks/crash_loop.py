"""Crash loop: SIGKILL a real `fleetlab run` (mlp template, local:2) at random moments, resume it each time, and count
what the record lost.

    .venv/bin/python benchmarks/crash_loop.py --kills 20 [--seed 0] [--budget 1.5] [--max-experiments 60] [--keep DIR]

Every round starts `fleetlab run --tag crash` on the same project (so it resumes the session), waits a random time
(uniform between --min-wait and --max-wait seconds), and SIGKILLs the orchestrator alone (runs outlive it by design).
After the last kill one more run goes to the end (--max-experiments). Printed as JSON:
  kills, experiments (of the session), finished, lost (left running or queued after the final run), duplicated (an
  exploration's files recorded twice), requeued (runs started again because the killed orchestrator's run was gone),
  undecided (final without a decision), pending (candidates still awaiting validation), integrity_check (SQLite),
  branch_ok (the keep branch holds the store's incumbent), wall_s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

TAG = "crash"


def _run(project: Path, max_experiments: int, log) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "fleetlab.cli", "run", "-C", str(project), "--fleet", "local:2",
                             "--strategy", "random", "--no-prune", "--tag", TAG, "--max-experiments",
                             str(max_experiments)], env=env, stdout=log, stderr=subprocess.STDOUT)


def _figures(project: Path) -> dict:
    from fleetlab.experiment import State
    from fleetlab.store.sqlite import SQLiteStore

    store = SQLiteStore(project / ".fleetlab" / "fleetlab.db")
    exps = store.experiments(tag=TAG)
    decisions = store.decisions()
    hashes = Counter(e.content_hash for e in exps if e.role == "explore")
    inc = store.incumbent(TAG)
    branch_ok = False
    if inc:
        r = subprocess.run(["git", "show", f"fleetlab/{TAG}:train.py"], cwd=project, capture_output=True, text=True)
        branch_ok = r.returncode == 0 and r.stdout == store.get_blob(store.get(inc).files["train.py"])
    out = {"experiments": len(exps), "finished": sum(e.state.is_final for e in exps),
           "lost": sum(e.state in (State.RUNNING, State.QUEUED) for e in exps),
           "duplicated": sum(n - 1 for n in hashes.values() if n > 1),
           "requeued": sum(1 for e in exps if e.meta.get("requeued")),
           "undecided": sum(1 for e in exps if e.state.is_final and e.id not in decisions),
           "pending": sum(1 for d in decisions.values() if d.status == "pending"),
           "integrity_check": store.integrity_check(), "branch_ok": branch_ok}
    store.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=float, default=1.5, help="time_budget_s of every run")
    ap.add_argument("--max-experiments", type=int, default=60)
    ap.add_argument("--min-wait", type=float, default=1.0)
    ap.add_argument("--max-wait", type=float, default=8.0)
    ap.add_argument("--keep", type=Path, help="write the project here instead of a temporary directory")
    a = ap.parse_args()
    from fleetlab.templates import write_template

    rng = random.Random(a.seed)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="fleetlab-crash-") as tmp:
        project = write_template("mlp", (a.keep or Path(tmp)) / "proj")
        toml = project / "fleetlab.toml"
        text = re.sub(r"(?m)^time_budget_s = .*$", f"time_budget_s = {a.budget}", toml.read_text())
        toml.write_text(re.sub(r"(?m)^timeout_s = .*$", f"timeout_s = {max(30.0, 10 * a.budget)}", text))
        subprocess.run(["git", "commit", "-qam", "crash loop budget"], cwd=project, check=True)
        log = open(project.parent / "runs.log", "w")
        kills = 0
        for _ in range(a.kills):
            p = _run(project, a.max_experiments, log)
            time.sleep(rng.uniform(a.min_wait, a.max_wait))
            if p.poll() is not None:
                break  # the session ended before this kill: nothing left to interrupt
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            kills += 1
        final = _run(project, a.max_experiments, log)
        rc = final.wait(timeout=1800)
        log.close()
        out = {"kills": kills, "final_exit": rc, **_figures(project), "wall_s": round(time.time() - t0, 1)}
    print(json.dumps(out, indent=2))
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
