"""The CPU quickstart under a laptop's load swing: do its keeps hold?

    python benchmarks/quickstart_load.py [--swing on-off|off-on|none] [--minutes 5] [--load 2] [--dir DIR]

Runs `fleetlab quickstart` (the gpt template, local:2, the quickstart's own budget) in a fresh directory while
`--load` busy-loop processes (started and stopped by their own handles) run during the first half of the session
(`on-off`: the machine gets faster, runs look better as time goes on) or the second (`off-on`). Prints one JSON
object: the keep rule's verdicts, each keep's decision, the final paired confirmation (does its 95 % interval lie
above zero: the keep held under the same conditions for both sides?), steps per run by role with and without the
load, the share of runs spent on controls and confirmation, the drift warnings and the wall time against the
session budget. A keep whose confirmed interval includes zero or lies below it did not hold.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drift_real import Load  # noqa: E402  (a sibling script: busy loops by their own handles)

FLEETLAB = [sys.executable, "-m", "fleetlab.cli"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--swing", choices=["on-off", "off-on", "none"], default="on-off")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--load", type=int, default=2)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()

    base = Path(a.dir or tempfile.mkdtemp(prefix="quickstart-load-"))
    base.mkdir(parents=True, exist_ok=True)
    root = base / "qs"
    load = Load(a.load)
    half = a.minutes * 30.0
    switch = threading.Event()

    def swing() -> None:  # flips the load at half the session budget, unless the session ended first
        if not switch.wait(half):
            (load.stop if a.swing == "on-off" else load.start)()

    if a.swing == "on-off":
        load.start()
    t0 = time.time()
    flipper = threading.Thread(target=swing, daemon=True)
    if a.swing != "none":
        flipper.start()
    try:
        r = subprocess.run([*FLEETLAB, "quickstart", "-C", str(root), "--minutes", f"{a.minutes:g}"],
                           capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        switch.set()
        load.stop()
    wall = time.time() - t0
    if r.returncode != 0:
        raise SystemExit(f"quickstart failed ({r.returncode}): {r.stderr.strip()[-500:]}")

    from fleetlab.facts import compute
    from fleetlab.project import Project
    from fleetlab.store.sqlite import SQLiteStore

    project = Project.load(root)
    store = SQLiteStore(project.db_path)
    try:
        tag = store.sessions()[-1]["tag"]
        f = compute(project, store, tag)
        dec = store.decisions()
        exps = [e for e in store.experiments(tag=tag) if e.state.is_final]
        steps: dict[str, list[int]] = {}
        for e in exps:
            if e.extras.get("num_steps") is not None:
                steps.setdefault(str(e.role), []).append(int(e.extras["num_steps"]))
        roles: dict[str, int] = {}
        for e in exps:
            roles[str(e.role)] = roles.get(str(e.role), 0) + 1
        screened = {e.id for e in exps if e.role in ("explore", "combine")}  # the baseline is no keep
        keeps = [{"id": i, "reason": d.reason[:200]} for i, d in dec.items() if d.status == "keep" and i in screened]
        cg = f.confirmed_gain
        out = {
            "dir": str(base), "swing": a.swing, "load": a.load, "minutes": a.minutes,
            "wall_s": round(wall), "over_budget_s": round(wall - a.minutes * 60),
            "experiments": f.experiments, "by_decision": f.counts["by_decision"], "keeps": keeps,
            "gain": f.gain, "confirmed_gain": cg,
            "held": None if not keeps else bool(cg and cg["ci"] and cg["ci"][0] > 0),
            "queued_left": f.queue_depth,
            "control_share": round(roles.get("control", 0) / max(1, len(exps)), 3),
            "confirm_share": round(roles.get("confirm", 0) / max(1, len(exps)), 3),
            "steps_by_role": steps, "warnings": f.warnings,
            "headline": r.stdout.strip().splitlines()[-8:],
        }
    finally:
        store.close()
    print(json.dumps(out, indent=1))
    return 0 if out["held"] in (None, True) else 1


if __name__ == "__main__":
    sys.exit(main())
