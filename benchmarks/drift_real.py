"""Decisions under a real machine's drift: the gpt template on CPU, a CPU load switched on or off mid-session.

    python benchmarks/drift_real.py [--scenario both|before|after] [--budget 20] [--nulls 10] [--load 2]
                                    [--lr-cut 3] [--dir DIR] [--timeout-min 40]

A short time budget makes val_bpb measure throughput as much as the code: a busy-loop load (`--load` processes,
started and stopped by their own handles) halves the steps a run gets, which moves val_bpb far more than the noise.

- before: the load runs while the baseline and its replicates are measured and is stopped after; then `--nulls`
  null variants (a comment changed, nothing else) are submitted. None may be kept: at full speed they all beat the
  loaded baseline on screening, and only a comparison with incumbent runs made close in time stops them.
- after: the baseline is measured at full speed, then the load starts; the same null variants, then a real
  improvement are submitted. No null may be kept, the improvement must be. In this scenario the project's train.py
  starts with its four learning rates divided by `--lr-cut` (default 3), and the improvement restores the template's
  values: better at any step count, so whether it is kept depends on the rule, not on how loaded the machine was.
  (A throughput change such as a halved TOTAL_BATCH_SIZE is no such check: it helps at few steps and hurts at many.)
  On a shared machine other work moves throughput too, often more than `--load` does: read `steps_by_role`.

Each scenario is one `fleetlab run --strategy none --never-stop --no-prune` on `local:2` (one thread per run), fed
by `fleetlab submit`, stopped by its own process handle. Prints one JSON object: per scenario the decisions, the
steps per run with and without the load, the share of runs spent on controls, the drift warnings, and `ok`.
Takes about 10-20 minutes per scenario on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

FLEETLAB = [sys.executable, "-m", "fleetlab.cli"]  # this Python's fleetlab, whatever is on PATH


class Load:
    """Busy-loop processes, started and stopped by their own handles."""

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def start(self) -> None:
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.n)]

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        self.procs = []


def _cli(*args: str, check: bool = True) -> str:
    r = subprocess.run([*FLEETLAB, *args], capture_output=True, text=True, timeout=300)
    if check and r.returncode != 0:
        raise SystemExit(f"fleetlab {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout


def _store(root: Path):
    from fleetlab.project import Project
    from fleetlab.store.sqlite import SQLiteStore

    return SQLiteStore(Project.load(root).db_path)


def _wait(root: Path, done, timeout_s: float, what: str) -> None:
    end = time.time() + timeout_s
    while time.time() < end:
        store = _store(root)
        try:
            if done(store):
                return
        finally:
            store.close()
        time.sleep(3)
    raise SystemExit(f"timed out waiting for {what}")


def _settled(store, ids: list[str]) -> bool:
    """Every one of `ids` has a final decision, and nothing is queued or running (its follow-ups are in)."""
    from fleetlab.experiment import State

    dec = store.decisions()
    if any(i not in dec or dec[i].status == "pending" for i in ids):
        return False
    return not store.experiments(states=[State.QUEUED, State.RUNNING])


def _variant(root: Path, dest: Path, edit) -> Path:
    _cli("checkout", "-C", str(root), str(dest))
    train = dest / "train.py"
    train.write_text(edit(train.read_text()))
    return dest


def _submit(root: Path, src: Path, message: str) -> str:
    return _cli("submit", "-C", str(root), "--from", str(src), "-m", message).split()[0]


LRS = ("EMBEDDING_LR", "UNEMBEDDING_LR", "MATRIX_LR", "SCALAR_LR")


def _cut_lrs(text: str, cut: float) -> str:
    def one(m: re.Match) -> str:
        return f"{m.group(1)}{float(m.group(2)) / cut:.6g}"
    for name in LRS:
        text, n = re.subn(rf"(?m)^({name} = )([0-9.eE+-]+)", one, text)
        if n != 1:
            raise SystemExit(f"the gpt template's train.py has no line `{name} = ...`")
    return text


def _restore_lrs(text: str, tuned: str) -> str:
    for name in LRS:
        line = re.search(rf"(?m)^{name} = .*$", tuned).group(0)
        text = re.sub(rf"(?m)^{name} = .*$", lambda m, line=line: line, text)
    return text


def scenario(name: str, base: Path, budget: int, nulls: int, load_n: int, timeout_s: float,
             lr_cut: float = 3.0) -> dict:
    from fleetlab.experiment import State
    from fleetlab.templates import write_template

    root = base / name
    write_template("gpt", root)
    toml = root / "fleetlab.toml"
    toml.write_text(re.sub(r"(?m)^time_budget_s = \d+", f"time_budget_s = {budget}", toml.read_text()))
    if name == "after":  # the baseline with its learning rates cut; the improvement puts them back
        train = root / "train.py"
        tuned = train.read_text()
        train.write_text(_cut_lrs(tuned, lr_cut))
        subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qam",
                        f"learning rates / {lr_cut:g}"], cwd=root, check=True)
    load = Load(load_n)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if name == "before":
        load.start()
    t0 = time.time()
    run = subprocess.Popen([*FLEETLAB, "run", "-C", str(root), "--fleet", "local:2", "--strategy", "none",
                            "--never-stop", "--no-prune", "-q"], env=env, stdout=subprocess.DEVNULL,
                           stderr=open(base / f"{name}.run.log", "w"))
    out: dict = {"scenario": name}
    try:
        _wait(root, lambda s: sum(1 for e in s.experiments() if e.role == "baseline" and e.state.is_final) >= 3,
              timeout_s, "the baseline")
        if name == "before":
            load.stop()
        else:
            load.start()
        out["baseline_done_s"] = round(time.time() - t0)
        ids = [_submit(root, _variant(root, base / f"{name}-null{i}", lambda t, i=i: t + f"\n# null variant {i}\n"),
                       f"null {i}: a comment") for i in range(nulls)]
        _wait(root, lambda s: _settled(s, ids), timeout_s, "the null variants' decisions")
        better = None
        if name == "after":
            src = _variant(root, base / f"{name}-better", lambda t: _restore_lrs(t, tuned))
            better = _submit(root, src, f"learning rates x {lr_cut:g} (the template's values)")
            _wait(root, lambda s: _settled(s, [better]), timeout_s, "the improvement's decision")
    finally:
        run.send_signal(signal.SIGTERM)
        try:
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
        load.stop()
    out["wall_s"] = round(time.time() - t0)
    store = _store(root)
    try:
        dec = store.decisions()
        exps = store.experiments()
        finished = [e for e in exps if e.state is State.DONE]
        out["nulls"] = [{"id": i, "status": dec[i].status, "reason": dec[i].reason[:160]} for i in ids]
        out["nulls_kept"] = sum(1 for i in ids if dec[i].status == "keep")
        if better:
            out["improvement"] = {"id": better, "status": dec[better].status, "reason": dec[better].reason[:200]}
        steps = {}
        for e in finished:
            s = e.extras.get("num_steps")
            if s is not None:
                steps.setdefault(str(e.role), []).append(int(s))
        out["steps_by_role"] = steps
        roles: dict[str, int] = {}
        for e in finished:
            roles[str(e.role)] = roles.get(str(e.role), 0) + 1
        out["runs_by_role"] = roles
        out["control_share"] = round((roles.get("control", 0) + roles.get("confirm", 0)) / max(1, len(finished)), 3)
        from fleetlab.facts import compute
        from fleetlab.project import Project

        out["warnings"] = compute(Project.load(root), store, store.sessions()[-1]["tag"]).warnings
    finally:
        store.close()
    out["ok"] = out["nulls_kept"] == 0 and (better is None or out["improvement"]["status"] == "keep")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=["both", "before", "after"], default="both")
    ap.add_argument("--budget", type=int, default=20)
    ap.add_argument("--nulls", type=int, default=10)
    ap.add_argument("--load", type=int, default=2)
    ap.add_argument("--lr-cut", type=float, default=3.0, help="the after scenario's baseline: learning rates / this")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--timeout-min", type=float, default=40.0)
    a = ap.parse_args()
    import tempfile

    base = Path(a.dir or tempfile.mkdtemp(prefix="drift-real-"))
    base.mkdir(parents=True, exist_ok=True)
    names = ["before", "after"] if a.scenario == "both" else [a.scenario]
    res = [scenario(n, base, a.budget, a.nulls, a.load, a.timeout_min * 60, a.lr_cut) for n in names]
    print(json.dumps({"dir": str(base), "budget_s": a.budget, "load": a.load, "scenarios": res}, indent=1))
    return 0 if all(r["ok"] for r in res) else 1


if __name__ == "__main__":
    sys.exit(main())
