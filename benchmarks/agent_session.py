"""An outside agent's session, scripted: does backfill keep the fleet busy while the agent thinks?

A scripted agent follows AGENTS.md's loop on the mlp template, local:2, through the real command line: start a
detached session, then each round check out the incumbent, change one constant (two variants: one knob up, one
down), submit both with `--agent`, wait for them, and think for three run lengths before the next round; finally
`fleetlab stop`. The same script runs once with `--backfill none` and once with `--backfill auto` (or the strategies
given). Reported per mode, from `fleetlab status --json` (the facts) after the stop: utilization, experiments from the
agent and from backfill, keeps, and the incumbent reached against the baseline.

    python benchmarks/agent_session.py [--rounds 6] [--budget 5] [--think 3] [--modes none,auto] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KNOBS = ("LEARNING_RATE", "MOMENTUM", "WEIGHT_DECAY", "INIT_SCALE", "WARMDOWN_RATIO", "HIDDEN")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def fl(root: Path, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "fleetlab.cli", *args, "-C", str(root)], capture_output=True, text=True,
                       env=ENV, timeout=900)
    if r.returncode != 0:
        raise SystemExit(f"fleetlab {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def change_constant(path: Path, knob: str, up: bool) -> str:
    """Move one constant of train.py up or down; return the description."""
    text = path.read_text()
    m = re.search(rf"(?m)^{knob} = ([^\s#]+)", text)
    old = m.group(1)
    v = float(old)
    if knob == "MOMENTUM":
        new = 1 - (1 - v) * (0.7 if up else 1.4)
    elif knob == "WARMDOWN_RATIO":
        new = min(0.9, v + 0.2) if up else max(0.0, v - 0.1)
    elif knob == "HIDDEN":
        new = int(v * 1.5) if up else max(8, int(v / 1.5))
    else:
        new = v * (1.5 if up else 1 / 1.5)
    new_text = new if isinstance(new, int) else f"{new:.6g}"
    path.write_text(text[:m.start(1)] + str(new_text) + text[m.end(1):])
    return f"{knob} {old} -> {new_text}"


def session(mode: str, rounds: int, budget: float, think: float, seed: int) -> dict:
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix=f"agent-{mode}-"))
    root = tmp / "proj"
    subprocess.run([sys.executable, "-m", "fleetlab.cli", "init", str(root), "--template", "mlp"], check=True,
                   capture_output=True, env=ENV)
    toml = root / "fleetlab.toml"
    toml.write_text(re.sub(r"(?m)^time_budget_s = .*$", f"time_budget_s = {budget:g}", toml.read_text()))
    fl(root, "run", "--strategy", "none", "--backfill", mode, "--fleet", "local:2", "--detach")
    started = time.time()
    submitted: list[str] = []
    try:
        fl(root, "wait")  # the baseline and its replicates: the agent reads before it designs
        base_runs = [r["runtime_s"] for r in json.loads(fl(root, "results", "--json"))
                     if r["role"] == "baseline" and r["runtime_s"]]
        run_len = statistics.median(base_runs) if base_runs else budget
        for i in range(rounds):
            knob = KNOBS[i % len(KNOBS)] if i < len(KNOBS) else rng.choice(KNOBS)
            ids = []
            for j, up in enumerate((True, False)):
                d = tmp / "variants" / f"r{i}-{j}"
                fl(root, "checkout", str(d), "--force")
                desc = change_constant(d / "train.py", knob, up)
                ids.append(fl(root, "submit", "--from", str(d), "-m", desc, "--agent", "scripted").strip())
            submitted += ids
            fl(root, "wait", *ids, "--timeout", f"{max(120.0, 30 * run_len):g}")  # a lost submission fails loudly
            time.sleep(think * run_len)  # the agent reads the results and thinks
    finally:
        fl(root, "stop")
    wall = time.time() - started
    facts = json.loads(fl(root, "status", "--json"))
    res = json.loads(fl(root, "results", "--json"))
    agent = [r for r in res if r.get("agent") == "scripted"]
    backfill = [r for r in res if r.get("backfill")]
    keeps = [r for r in res if r["status"] == "keep" and r["role"] in ("explore", "combine")]  # not replicates
    waits = [r["started_at"] - r["queued_at"] for r in agent if r["started_at"]]
    inc, base = facts.get("incumbent") or {}, facts.get("baseline") or {}
    return {"mode": mode, "rounds": rounds, "run_length_s": round(run_len, 2), "think_s": round(think * run_len, 1),
            "wall_s": round(wall, 1), "utilization": facts.get("utilization"),
            "experiments": len([r for r in res if r["state"] not in ("queued", "running")]),
            "from_agent": len(agent), "from_backfill": len(backfill),
            "backfill_finished": sum(1 for r in backfill if r["state"] in ("done", "pruned")),
            "agent_wait_s": round(statistics.median(waits), 2) if waits else None,
            "agent_wait_max_s": round(max(waits), 2) if waits else None,
            "keeps": [(r["id"], "agent" if r.get("agent") else "backfill" if r.get("backfill") else r["strategy"])
                      for r in keeps],
            "baseline": base.get("mean"), "incumbent": inc.get("mean"), "incumbent_id": inc.get("id"),
            "gain": facts.get("gain"), "project": str(root)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--budget", type=float, default=5.0, help="time_budget_s of the mlp template")
    ap.add_argument("--think", type=float, default=3.0, help="think time between rounds, in run lengths")
    ap.add_argument("--modes", default="none,auto", help="backfill strategies to compare (none: no backfill)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the figures here too")
    a = ap.parse_args()
    out = []
    for mode in a.modes.split(","):
        r = session(mode.strip(), a.rounds, a.budget, a.think, a.seed)
        out.append(r)
        gain = (r["gain"] or {}).get("pct")
        print(f"backfill {r['mode']:5s}: utilization {r['utilization'] or 0:.3f}, {r['experiments']} experiments "
              f"({r['from_agent']} agent, {r['from_backfill']} backfill), {len(r['keeps'])} keeps "
              f"{r['keeps']}, baseline {r['baseline'] or float('nan'):.4f} -> incumbent "
              f"{r['incumbent'] or float('nan'):.4f} ({r['incumbent_id']}"
              f"{f', {gain:+.1f} %' if gain is not None else ''}), agent's runs waited {r['agent_wait_s']} s "
              f"(median; max {r['agent_wait_max_s']} s) for a worker, wall {r['wall_s']:.0f} s", flush=True)
    if len(out) == 2 and out[0]["utilization"] and out[1]["utilization"]:
        print(f"utilization ratio {out[1]['mode']}/{out[0]['mode']}: {out[1]['utilization'] / out[0]['utilization']:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
