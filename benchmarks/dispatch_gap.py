"""Dispatch gap of the local fleet: time from a run ending to the next run starting on the same slot.

Runs 40 one-second experiments on `local:2` (a project whose train.py sleeps 1 s and prints a metric), then reads
each run's start and end as the run wrapper recorded them (.fleetlab_run.json / .fleetlab_exit.json) and reports the
median and p95 gap per slot. Also times `fleetlab --help` (lazy imports keep it short).

    python benchmarks/dispatch_gap.py [--experiments 40] [--slots 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAIN = """import os, time, random
LEARNING_RATE = 0.1  # a knob, so the random strategy has something to vary
time.sleep(1.0)
random.seed(int(os.environ.get("FLEETLAB_SEED", "0")))
print(f"val_loss: {1.0 + random.random() * LEARNING_RATE:.6f}")
"""

TOML = """[project]
editable = ["train.py"]
command = "python train.py"
time_budget_s = 1
timeout_s = 30
[metric]
name = "val_loss"
goal = "minimize"
"""


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=40)
    ap.add_argument("--slots", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "proj"
        root.mkdir()
        (root / "train.py").write_text(TRAIN)
        (root / "fleetlab.toml").write_text(TOML)
        t0 = time.time()
        r = subprocess.run([sys.executable, "-m", "fleetlab.cli", "run", "-C", str(root), "--fleet",
                            f"local:{a.slots}", "--strategy", "random", "--max-experiments", str(a.experiments),
                            "--keep-rule", "simple", "-q"], capture_output=True, text=True)
        wall = time.time() - t0
        if r.returncode != 0:
            print(r.stdout, r.stderr)
            return 1
        from fleetlab.store.sqlite import SQLiteStore

        exps = SQLiteStore(root / ".fleetlab" / "fleetlab.db").experiments()
        by_worker: dict[str, list[tuple[float, float]]] = {}
        for e in exps:
            d = root / ".fleetlab" / "runs" / e.id
            start = json.loads((d / ".fleetlab_run.json").read_text())["started_at"]
            end = json.loads((d / ".fleetlab_exit.json").read_text())["finished_at"]
            by_worker.setdefault(e.worker, []).append((start, end))
        gaps = []
        for runs in by_worker.values():
            runs.sort()
            gaps += [b[0] - a_[1] for a_, b in zip(runs, runs[1:])]
        busy = sum(end - start for runs in by_worker.values() for start, end in runs)
    helps = []
    for _ in range(5):
        t = time.time()
        subprocess.run([sys.executable, "-m", "fleetlab.cli", "--help"], capture_output=True)
        helps.append(time.time() - t)
    bare = []
    for _ in range(5):
        t = time.time()
        subprocess.run([sys.executable, "-c", "pass"], capture_output=True)
        bare.append(time.time() - t)
    print(f"experiments: {len(exps)} on {a.slots} slots, session wall {wall:.1f} s, "
          f"slot utilization {busy / (wall * a.slots):.3f}")
    print(f"dispatch gap (run end -> next start, same slot), n={len(gaps)}: median {statistics.median(gaps):.3f} s, "
          f"p95 {percentile(gaps, 0.95):.3f} s, max {max(gaps):.3f} s")
    print(f"`fleetlab --help`: median {statistics.median(helps):.3f} s "
          f"(bare python start {statistics.median(bare):.3f} s; ratio {statistics.median(helps) / statistics.median(bare):.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
