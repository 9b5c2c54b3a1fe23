"""An outside agent's tools against a live detached session: checkout of the incumbent, diffs against the baseline,
warnings when a variant undoes a kept change, refusals, attribution by agent, backfill, wait --idle, stop.

The project is tiny and deterministic (train.py prints a constant), so every keep is certain and the tests are about
the mechanics, not the statistics."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import fleetlab_cmd, set_budget

TOML = """[project]
editable = ["train.py"]
readonly = ["prepare.py"]
command = "python train.py"
time_budget_s = 1
timeout_s = 30

[metric]
name = "val_loss"
goal = "minimize"
pattern = '^val_loss:\\s*(\\S+)'

[prune]
enabled = false
"""
TRAIN = """from prepare import OFFSET

X = 3.0
print(f"val_loss: {X + OFFSET}")
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "fleetlab.toml").write_text(TOML)
    (root / "train.py").write_text(TRAIN)
    (root / "prepare.py").write_text("OFFSET = 0.0\n")
    for args in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    return root


def fl(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return fleetlab_cmd(*args, "-C", str(root), check=check, timeout=180)


def edit(d: Path, old: str, new: str) -> None:
    p = d / "train.py"
    text = p.read_text()
    assert old in text
    p.write_text(text.replace(old, new, 1))


def serving(root: Path) -> bool:
    return json.loads(fl(root, "status", "--json").stdout)["serving"]


def results(root: Path, *args: str) -> dict[str, dict]:
    return {r["id"]: r for r in json.loads(fl(root, "results", "--json", *args).stdout)}


def test_checkout_carries_kept_changes_and_submit_takes_its_origin(project: Path, tmp_path: Path):
    r = fl(project, "run", "--strategy", "none", "--fleet", "local:2", "--keep-rule", "simple", "--detach")
    assert "serving in the background" in r.stdout and (project / ".fleetlab" / "run.pid").is_file()
    try:
        assert serving(project) and "serving: yes" in fl(project, "status").stdout
        fl(project, "wait")  # the baseline
        v1 = tmp_path / "v1"
        r = fl(project, "checkout", str(v1))
        base_id = json.loads((v1 / ".fleetlab" / "origin.json").read_text())["id"]
        assert base_id and base_id in r.stdout
        assert (v1 / "prepare.py").is_file() and not (v1 / "results.tsv").exists()
        edit(v1, "X = 3.0", "BONUS = 0.5\nX = 2.0 - BONUS")
        kept = fl(project, "submit", "--from", str(v1), "-m", "bonus", "--agent", "alice").stdout.strip()
        fl(project, "wait", kept)
        assert results(project)[kept]["status"] == "keep" and results(project)[kept]["parent"] == base_id
        tag = json.loads(fl(project, "status", "--json").stdout)["tag"]

        # a variant made with checkout after the keep contains the kept change: the keep branch's train.py
        v2 = tmp_path / "v2"
        fl(project, "checkout", str(v2))
        branch = subprocess.run(["git", "show", f"fleetlab/{tag}:train.py"], cwd=project, capture_output=True,
                                text=True, check=True).stdout
        assert (v2 / "train.py").read_text() == branch and "BONUS = 0.5" in branch
        assert (project / "train.py").read_text() == TRAIN  # the project directory stays at the baseline
        edit(v2, "X = 2.0 - BONUS", "X = 1.0 - BONUS  # smaller")
        second = fl(project, "submit", "--from", str(v2), "-m", "smaller", "--agent", "bob").stdout.strip()
        fl(project, "wait", second)
        res = results(project)
        assert res[second]["parent"] == kept and res[second]["status"] == "keep"

        # show --diff --against baseline of the incumbent: every change since the baseline
        d = fl(project, "show", "incumbent", "--diff", "--against", "baseline").stdout
        assert "-X = 3.0" in d and "+BONUS = 0.5" in d and "+X = 1.0 - BONUS  # smaller" in d
        own = fl(project, "show", second, "--diff").stdout  # against its parent: only its own change
        assert "+X = 1.0 - BONUS  # smaller" in own and "+BONUS" not in own and "-X = 3.0" not in own

        # a copy of the project directory (the baseline) undoes the kept change: submit warns, naming the line
        stale = tmp_path / "stale"
        shutil.copytree(project, stale, ignore=shutil.ignore_patterns(".fleetlab", ".git"))
        edit(stale, "X = 3.0", "X = 0.9")
        r = fl(project, "submit", "--from", str(stale), "-m", "from the project dir")
        assert "undoes a kept change" in r.stderr and "BONUS = 0.5" in r.stderr and r.stdout.startswith("exp-")

        # the same code from two agents: the second hears it joins the first's arm; results filter by agent
        twin = tmp_path / "twin"
        fl(project, "checkout", str(twin))
        edit(twin, "# smaller", "# twin")
        a = fl(project, "submit", "--from", str(twin), "-m", "twin", "--agent", "alice")
        b = fl(project, "submit", "--from", str(twin), "-m", "twin", "--agent", "bob")
        assert "same code" not in a.stderr and f"same code as {a.stdout.strip()} (alice)" in b.stderr
        assert set(results(project, "--agent", "bob")) == {second, b.stdout.strip()}
        assert results(project)[b.stdout.strip()]["content_hash"] == results(project)[a.stdout.strip()]["content_hash"]
        fl(project, "notes", "add", "twin submitted", "--agent", "bob")
        fl(project, "notes", "add", "hello", "--agent", "alice")
        notes = json.loads(fl(project, "notes", "list", "--json", "--agent", "bob").stdout)
        assert [n["text"] for n in notes] == ["twin submitted"]

        # refusals, one sentence each, nothing queued
        before = len(results(project))
        (twin / "prepare.py").unlink()
        r = fl(project, "submit", "--from", str(twin), "-m", "no prepare", check=False)
        assert r.returncode == 2 and "has no prepare.py" in r.stderr and "Traceback" not in r.stderr
        r = fl(project, "checkout", str(v2), check=False)
        assert r.returncode == 2 and "not empty" in r.stderr
        r = fl(project, "checkout", str(project / "inside"), check=False)
        assert r.returncode == 2 and "inside the project" in r.stderr
        r = fl(project, "checkout", str(v2), "--force")  # an earlier checkout may be replaced
        assert r.returncode == 0
        junk = tmp_path / "junk"
        junk.mkdir()
        (junk / "keep.txt").write_text("mine")
        r = fl(project, "checkout", str(junk), "--force", check=False)
        assert r.returncode == 2 and (junk / "keep.txt").read_text() == "mine"
        assert len(results(project)) == before
    finally:
        r = fl(project, "stop")
    assert "stopped" in r.stdout and not serving(project)
    assert "serving: no" in fl(project, "status").stdout
    assert not (project / ".fleetlab" / "run.pid").exists()
    assert "no `fleetlab run` is serving" in fl(project, "stop").stdout


def test_backfill_fills_idle_workers_and_submissions_go_first(project: Path, tmp_path: Path):
    set_budget(project, 1, 30)
    (project / "train.py").write_text(TRAIN.replace("X = 3.0", "X = 3.0\nY = 1.0") + "import time; time.sleep(1)\n")
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "knob"], cwd=project,
                   check=True)
    fl(project, "run", "--strategy", "none", "--backfill", "random", "--fleet", "local:2", "--keep-rule", "simple",
       "--detach")
    try:
        r = fl(project, "wait", "--idle", "--below", "1", "--json")
        seen = json.loads(r.stdout)
        assert seen["queue_depth"] == 0 or seen["idle_workers"] > 0
        deadline = time.time() + 60
        while time.time() < deadline and not any(e["backfill"] for e in results(project).values()):
            time.sleep(0.5)
        seen = json.loads(fl(project, "wait", "--idle", "--json").stdout)  # a worker running backfill is free
        assert seen["idle_workers"] + seen["backfill_workers"] >= 1
        v = tmp_path / "v"
        fl(project, "checkout", str(v))
        text = (v / "train.py").read_text()  # a backfill keep may already have moved Y
        (v / "train.py").write_text(re.sub(r"(?m)^Y = .*$", "Y = 1.234567", text))
        mine = fl(project, "submit", "--from", str(v), "-m", "mine", "--agent", "me").stdout.strip()
        fl(project, "wait", mine)
        res = results(project)
        # submitted while backfill kept both workers busy, it was launched before every backfill run queued after it
        # (after it in the store's order, the experiment number: `queued_at` is stamped before the write, so under
        # load a submission can carry an earlier time than a proposal the loop stored before it). Launch order is the
        # handle's time, taken as the loop starts the process; a run's `started_at` is its wrapper's own first moment,
        # which under load can come later for a run launched first in the same pass.
        from fleetlab.project import Project
        from fleetlab.store.sqlite import SQLiteStore

        store = SQLiteStore(Project.load(project).db_path)
        try:
            launched = {e.id: (e.handle or {}).get("started_at") for e in store.experiments()}
        finally:
            store.close()
        later = [e["id"] for e in res.values() if e["backfill"] and int(e["id"][4:]) > int(mine[4:])]
        early = [i for i in later if launched[i] is not None and launched[i] < launched[mine]]
        assert launched[mine] is not None and not early, (mine, early, launched)
        st = json.loads(fl(project, "status", "--json").stdout)
        assert st["serving"] and st["workers"] == 2 and st["queue_depth"] <= 1
    finally:
        fl(project, "stop")
    res = results(project)
    assert sum(1 for e in res.values() if e["backfill"] == "random") >= 2
    assert not serving(project)


def test_a_backgrounded_run_stops_on_sigint(project: Path, tmp_path: Path):
    """A shell's `&` starts the job with SIGINT ignored; `fleetlab run` restores the handler and stops cleanly."""
    pid_file = tmp_path / "pid"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    shell = subprocess.Popen(["bash", "-c", f"'{sys.executable}' -m fleetlab.cli run -C '{project}' --strategy none "
                              f"--fleet local:2 -q > '{tmp_path / 'log'}' 2>&1 & echo $! > '{pid_file}'; wait $!; "
                              "echo exit=$?"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (pid_file.is_file() and serving(project)):
            time.sleep(0.2)
        assert serving(project)
        os.kill(int(pid_file.read_text()), signal.SIGINT)
        out, _ = shell.communicate(timeout=60)
    finally:
        if shell.poll() is None:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
            shell.wait()
    assert "exit=130" in out, (tmp_path / "log").read_text()
    assert not serving(project)
    st = json.loads(fl(project, "status", "--json").stdout)
    assert st["session_status"] == "interrupted"


def test_backfill_proposes_only_for_workers_nothing_queued_will_take(mlp_project: Path):
    from fleetlab.api import knob_space
    from fleetlab.experiment import Experiment, State
    from fleetlab.project import Project
    from fleetlab.strategies import make_strategy
    from fleetlab.strategies._base import Context
    from fleetlab.strategies.backfill import Backfill

    space = knob_space(Project.load(mlp_project))
    strategy = make_strategy("none", backfill="random", seed=1)
    assert isinstance(strategy, Backfill) and strategy.name == "backfill:random" and strategy.lookahead_hint == 0

    def ctx(free: int, queued: int, other_tag: int = 0) -> Context:
        exps = [Experiment(id=f"exp-{i:04d}", tag="s" if i < queued else "old", description="x", state=State.QUEUED)
                for i in range(queued + other_tag)]
        return Context(goal="minimize", metric="val_loss", incumbent=None, baseline_knobs={k: kn.value for k, kn in space.knobs.items()},
                       space=space, experiments=exps, free_workers=free, tag="s")

    assert strategy.propose(ctx(free=2, queued=2), 4) == []   # the queue takes both free workers
    assert strategy.propose(ctx(free=1, queued=3), 4) == []
    props = strategy.propose(ctx(free=3, queued=1, other_tag=5), 4)  # another session's queue is not this one's
    assert len(props) == 2 and all(p.meta["backfill"] == "random" for p in props)
    assert len(strategy.propose(ctx(free=2, queued=0), 1)) == 1  # never more than the loop asked for
    assert make_strategy("auto", backfill="none").name == "auto"


def test_a_submission_stored_just_before_a_proposal_is_not_lost(project: Path, tmp_path: Path):
    """The race backfill made common: `fleetlab submit` stores a variant, then the loop stores a proposal of its own
    (a higher number) before it looks for submissions. The submission must still run."""
    from fleetlab.api import open_project, submit
    from fleetlab.experiment import Proposal, State
    from fleetlab.fleet import make_executor
    from fleetlab.scheduler import Scheduler
    from fleetlab.strategies._base import Strategy

    set_budget(project, 0.2, 30)
    opened, outside = open_project(project), open_project(project)
    variant = tmp_path / "variant"
    ids: list[str] = []

    class SubmitsThenProposes(Strategy):
        name = "racer"

        def propose(self, context, n):
            if ids or context.incumbent is None:
                return []
            ids.extend(e.id for e in submit(outside, variant, "outside"))
            return [Proposal(description="inside", knobs={"X": 2.5})]

        @property
        def finished(self):
            return bool(ids)

    try:
        from fleetlab.agents import checkout

        checkout(opened, variant)
        edit(variant, "X = 3.0", "X = 2.0")
        executor = make_executor("local:2", project, threads_per_slot=1)
        try:
            summary = Scheduler(opened.project, opened.store, executor, SubmitsThenProposes(), tag="race",
                                git=False).run()
        finally:
            executor.close()
        exps = {e.description: e for e in opened.store.experiments(tag="race")}
        assert ids and exps["inside"].number > exps["outside"].number  # the race happened
        assert exps["outside"].state is State.DONE, summary.stop_reason
    finally:
        opened.close()
        outside.close()
