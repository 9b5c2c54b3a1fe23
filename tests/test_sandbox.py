"""Runs cannot touch the record: every escape a red-team pass found, attempted by a submitted train.py through the real
local fleet (the mlp template, `fleetlab init`, `fleetlab submit`, `fleetlab run`), is blocked by the sandbox, and the
session goes on with every earlier record intact. Without the sandbox the project's own files are still checked as
runs end. The sandbox's pieces (setup, network, modes) are checked on the executor itself."""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import fleetlab_cmd, set_budget

from fleetlab.errors import ConfigError
from fleetlab.fleet.sandbox import Sandbox, probe

WHY_NOT = probe(shutil.which("bwrap"))
needs_bwrap = pytest.mark.skipif(WHY_NOT is not None, reason=f"bubblewrap cannot run here: {WHY_NOT}")

# Each escape runs before the real training (which then prints the metric as usual). Its attempt is printed, so the
# log shows it ran; whether it got anywhere is judged from outside.
ESCAPES = {
    "store": '''
import sqlite3
try:
    db = sqlite3.connect("../../fleetlab.db")
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        db.execute(f"DROP TRIGGER {name}")
    db.execute("UPDATE experiments SET metric = 1e-7")
    db.commit()
    print("escape store: done", flush=True)
except Exception as e:
    print(f"escape store: {type(e).__name__}: {e}", flush=True)
''',
    "project": '''
for name in ("prepare.py", "train.py"):
    try:
        with open("../../../" + name, "a") as f:
            f.write("# appended by a run\\n")
        print(f"escape project {name}: appended", flush=True)
    except Exception as e:
        print(f"escape project {name}: {type(e).__name__}: {e}", flush=True)
''',
    "outside": '''
import os
for path in (os.environ["ESCAPE_HOME"], os.environ["ESCAPE_BESIDE"]):
    try:
        with open(path, "w") as f:
            f.write("written by a run\\n")
        print(f"escape outside {path}: written", flush=True)
    except Exception as e:
        print(f"escape outside {path}: {type(e).__name__}: {e}", flush=True)
''',
    "git": '''
import os, subprocess
try:
    hook = "../../../.git/hooks/post-commit"
    with open(hook, "w") as f:
        f.write("#!/bin/sh\\necho owned\\n")
    os.chmod(hook, 0o755)
    print("escape git hook: written", flush=True)
except Exception as e:
    print(f"escape git hook: {type(e).__name__}: {e}", flush=True)
r = subprocess.run(["git", "-C", "../../..", "update-ref", "refs/heads/escaped", "HEAD"], capture_output=True,
                   text=True)
print(f"escape git ref: exit {r.returncode} {r.stderr.strip()}", flush=True)
''',
    "setsid": '''
import os, subprocess
subprocess.Popen(["setsid", "sleep", os.environ["ESCAPE_SLEEP"]], start_new_session=True)
if os.fork() == 0:  # a classic daemon as well: fork, setsid, fork again, parent gone
    os.setsid()
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", os.environ["ESCAPE_SLEEP"]])
    os._exit(0)
print("escape setsid: started", flush=True)
''',
    "data": '''
import uuid
print(f"fleetlab: data={uuid.uuid4().hex[:16]}", flush=True)
''',
}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(root: Path) -> dict[str, str]:
    """Every file of the project outside its state, its results.tsv and the repository's objects and keep branch
    (which the session itself writes), the repository's configuration and hooks included."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith((".fleetlab/", ".git/objects/", ".git/logs/", ".git/refs/")) \
                and rel != "results.tsv":
            out[rel] = _sha(p)
    return out


def _refs(root: Path) -> list[str]:
    out = subprocess.run(["git", "for-each-ref", "--format=%(refname) %(objectname)"], cwd=root, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    return [r for r in out if not r.startswith("refs/heads/fleetlab/")]  # the session's own keep branch may move


def _db(root: Path) -> tuple[list[str], dict[str, tuple]]:
    db = sqlite3.connect(root / ".fleetlab" / "fleetlab.db")
    try:
        triggers = sorted(r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"))
        rows = {r[0]: tuple(r[1:]) for r in db.execute("SELECT id, state, metric FROM experiments")}
    finally:
        db.close()
    return triggers, rows


def _alive_with(token: str) -> list[int]:
    """Live processes whose command line carries `token` (the escapes' sleepers), not zombies."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and token.encode() in (proc / "cmdline").read_bytes() and \
                    (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                pids.append(int(proc.name))
        except (OSError, IndexError):
            pass
    return pids


def _submit(project: Path, tmp_path: Path, name: str, prefix: str, replicates: int = 1) -> list[str]:
    variant = tmp_path / f"variant-{name}"
    shutil.copytree(project, variant, ignore=shutil.ignore_patterns(".git", ".fleetlab", "results.tsv"))
    train = variant / "train.py"
    train.write_text(prefix + train.read_text())
    r = fleetlab_cmd("submit", "-C", str(project), "--from", str(variant), "-m", f"escape: {name}",
                     "--replicates", str(replicates), check=True)
    return r.stdout.split()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    fleetlab_cmd("init", str(root), "--template", "mlp", check=True)
    set_budget(root, 0.5, timeout=30)
    subprocess.run(["git", "commit", "-qam", "short runs"], cwd=root, check=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"})
    return root


@needs_bwrap
def test_every_escape_is_blocked_and_the_session_goes_on(project: Path, tmp_path: Path):
    token = f"{os.getpid()}.{uuid.uuid4().int % 10**6:06d}"  # a sleep length no other process uses
    home_target = Path.home() / f".fleetlab-escape-{token}"
    beside_target = tmp_path / f"escape-{token}"  # next to the project: /tmp, which the run sees as its own
    env = {"ESCAPE_SLEEP": f"300.{token.replace('.', '')}", "ESCAPE_HOME": str(home_target),
           "ESCAPE_BESIDE": str(beside_target)}
    # the earlier record: a baseline session
    r = fleetlab_cmd("run", "-C", str(project), "--fleet", "local:2", "--strategy", "none", "--max-experiments", "3",
                     env=env, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    triggers, before = _db(project)
    assert triggers and before and all(state == "done" for state, _ in before.values())
    files, refs = _files(project), _refs(project)
    hooks = sorted(p.name for p in (project / ".git" / "hooks").iterdir())

    ids = {name: _submit(project, tmp_path, name, code, replicates=2 if name == "data" else 1)
           for name, code in ESCAPES.items()}
    after_ids = _submit(project, tmp_path, "none", "")  # an ordinary variant after them all
    from fleetlab.store.sqlite import SQLiteStore

    store = SQLiteStore(project / ".fleetlab" / "fleetlab.db")
    tag = store.sessions()[-1]["tag"]
    store.close()
    total = len(before) + sum(len(group) for group in ids.values()) + 1  # the session resumed runs exactly these
    r = fleetlab_cmd("run", "-C", str(project), "--fleet", "local:2", "--strategy", "none", "--tag", tag,
                     "--max-experiments", str(total), env=env, timeout=300)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Traceback" not in r.stdout + r.stderr and "no workers left" not in r.stdout
        assert "not sandboxed" not in r.stdout
        triggers_after, rows = _db(project)
        assert triggers_after == triggers  # the store's triggers are all there
        assert {k: rows[k] for k in before} == before  # every earlier record unchanged
        every = [i for group in [*ids.values(), after_ids] for i in group]
        assert all(rows[i][0] != "queued" and rows[i][0] != "running" for i in every), rows
        assert rows[after_ids[0]][0] == "done"  # the session went on after the escapes
        logs = {name: "".join((project / ".fleetlab" / "runs" / i / "run.log").read_text() for i in group)
                for name, group in ids.items()}
        # each escape ran, and got nowhere
        assert "escape store:" in logs["store"] and "escape store: done" not in logs["store"]
        assert "escape project prepare.py" in logs["project"]
        assert "escape outside" in logs["outside"] and "escape git ref: exit" in logs["git"]
        assert "escape setsid: started" in logs["setsid"] and "fleetlab: data=" in logs["data"]
        assert _files(project) == files  # prepare.py, train.py, fleetlab.toml and the repository: untouched
        assert _refs(project) == refs and sorted(p.name for p in (project / ".git" / "hooks").iterdir()) == hooks
        assert not home_target.exists() and not beside_target.exists()  # nothing written outside the project
        assert _alive_with(env["ESCAPE_SLEEP"]) == []  # no descendant outlived its run
        # a run's stdout decides no data fingerprint: the session pinned none, and no worker left the fleet
        store = SQLiteStore(project / ".fleetlab" / "fleetlab.db")
        sessions = store.sessions()
        store.close()
        assert all(not s.get("data_fingerprint") for s in sessions)
        assert "taken out of the fleet" not in r.stdout
    finally:
        home_target.unlink(missing_ok=True)
        for pid in _alive_with(env["ESCAPE_SLEEP"]):
            os.kill(pid, 9)


def test_an_out_of_band_change_stops_the_session_naming_the_file(project: Path, tmp_path: Path):
    """Unsandboxed ([sandbox] mode = "none"), a run that appends to the project's prepare.py is caught as it ends: the
    session stops with one sentence naming the file and exits non-zero; nothing after it runs."""
    with open(project / "fleetlab.toml", "a") as f:
        f.write('\n[sandbox]\nmode = "none"\n')
    subprocess.run(["git", "commit", "-qam", "unsandboxed"], cwd=project, check=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"})
    bad = _submit(project, tmp_path, "project", ESCAPES["project"])
    later = _submit(project, tmp_path, "later", "import time\ntime.sleep(3)\n", replicates=3)
    r = fleetlab_cmd("run", "-C", str(project), "--fleet", "local:1", "--strategy", "none", "--max-experiments", "7",
                     timeout=180)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    from fleetlab.store.sqlite import SQLiteStore

    store = SQLiteStore(project / ".fleetlab" / "fleetlab.db")
    reason = store.sessions()[-1]["stop_reason"]
    states = {e.id: e.state.value for e in store.experiments()}
    store.close()
    assert reason.startswith("prepare.py changed in the project while the session ran"), reason
    assert "\n" not in reason and states[bad[0]] != "queued"
    assert any(states[i] in ("queued", "cancelled") for i in later)  # the session stopped: not everything ran


# ---------------------------------------------------------------------------------------------------------------------
# the sandbox's pieces, on the executor


def _run(sandbox: Sandbox, root: Path, command: str, worker: int = 0) -> tuple[str, int | None]:
    import time

    from fleetlab.fleet._base import RunSpec
    from fleetlab.fleet.local import LocalExecutor

    ex = LocalExecutor(slots=2, state_dir=root / ".fleetlab", sandbox=sandbox)
    workdir = root / ".fleetlab" / "runs" / f"exp-{uuid.uuid4().hex[:6]}"
    workdir.mkdir(parents=True)
    h = ex.submit(RunSpec(workdir.name, workdir, command, {}, 30), ex.workers()[worker])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for u in ex.poll([h]):
            if u.finished:
                return ex.logs(h), u.exit_code
        time.sleep(0.02)
    raise AssertionError("the run did not finish")


@needs_bwrap
def test_a_run_sees_its_snapshot_its_cache_and_a_private_tmp(tmp_path: Path):
    root = tmp_path / "proj"
    (root / ".fleetlab" / "runs" / "exp-other").mkdir(parents=True)
    (root / "prepare.py").write_text("x = 1\n")
    (tmp_path / "beside.txt").write_text("outside\n")
    sandbox = Sandbox("bwrap")
    cmd = ("ls ..; cat ../../../prepare.py; cat ../../../../beside.txt; ls /tmp | wc -l; "
           "touch $FLEETLAB_CACHE_DIR/kept && echo cache-ok; python -c 'import numpy' && echo python-ok")
    log, rc = _run(sandbox, root, cmd)
    assert rc == 0, log
    assert "exp-other" not in log and "x = 1" not in log and "outside" not in log  # nothing else is visible
    assert "cache-ok" in log and "python-ok" in log
    assert (root / ".fleetlab" / "cache" / "local-0" / "kept").exists()  # the worker's cache persists
    log, _ = _run(sandbox, root, "ls $FLEETLAB_CACHE_DIR", worker=0)
    assert "kept" in log
    log, _ = _run(sandbox, root, "ls $FLEETLAB_CACHE_DIR; echo listed", worker=1)
    assert "kept" not in log and "listed" in log  # another worker has a cache of its own


@needs_bwrap
def test_network_off_cuts_it_and_setup_writes_only_the_data_cache(tmp_path: Path, monkeypatch):
    from fleetlab.errors import SetupFailed
    from fleetlab.fleet.local import LocalExecutor

    root = tmp_path / "proj"
    (root / ".fleetlab").mkdir(parents=True)
    (root / "prepare.py").write_text("x = 1\n")
    probe_net = f"{sys.executable} -c \"import socket; print(len(socket.if_nameindex()))\""
    on, _ = _run(Sandbox("bwrap", network=True), root, probe_net)
    off, _ = _run(Sandbox("bwrap", network=False), root, probe_net)
    assert int(off.split()[-1]) == 1 and int(on.split()[-1]) >= 1  # loopback only, when network = false
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    ex = LocalExecutor(slots=1, state_dir=root / ".fleetlab", sandbox=Sandbox("bwrap"))
    (root / ".fleetlab" / "fleetlab.db").write_text("the store")
    ex.prepare(root, "mkdir -p $XDG_CACHE_HOME/data && cat prepare.py > $XDG_CACHE_HOME/data/copy && "
                     "! test -e .fleetlab/fleetlab.db && echo 'fleetlab: data=0123456789abcdef'")
    assert (cache / "data" / "copy").read_text() == "x = 1\n"  # project read, data cache written, store hidden
    assert ex.data_fingerprint("local-0") == "0123456789abcdef"
    with pytest.raises(SetupFailed, match="in the sandbox, where the project is read-only"):
        LocalExecutor(slots=1, state_dir=root / ".fleetlab", sandbox=Sandbox("bwrap")).prepare(
            root, "echo changed >> prepare.py")
    assert (root / "prepare.py").read_text() == "x = 1\n"
    # the data cache is the setup's: a run reads it but cannot write it
    log, rc = _run(Sandbox("bwrap"), root, f"cat {cache}/data/copy && echo more >> {cache}/data/copy")
    assert "x = 1" in log and rc != 0 and (cache / "data" / "copy").read_text() == "x = 1\n"


@needs_bwrap
@pytest.mark.skipif(not shutil.which("nvidia-smi") or not glob.glob("/dev/nvidia[0-9]*"),
                    reason="no NVIDIA GPU on this machine")
def test_a_sandboxed_run_sees_the_gpus(tmp_path: Path):
    outside = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60).stdout
    log, rc = _run(Sandbox("bwrap"), tmp_path / "proj", "nvidia-smi -L")
    assert rc == 0 and log.strip() == outside.strip() and "GPU 0" in log, log


def test_sandbox_settings_are_checked(tmp_path: Path):
    with pytest.raises(ConfigError, match="sandbox.mode must be one of"):
        Sandbox("docker")
    with pytest.raises(ConfigError, match="unknown key sandbox.netwrk"):
        Sandbox.from_settings({"netwrk": False})
    none = Sandbox("none")
    assert not none.active and none.notice is None and none.run_argv(tmp_path) == []
    missing = Sandbox("auto", bwrap=str(tmp_path / "no-bwrap"))
    assert not missing.active and "not sandboxed" in missing.notice and "\n" not in missing.notice
    with pytest.raises(ConfigError, match="sandbox.mode is \"bwrap\" but"):
        Sandbox("bwrap", bwrap=str(tmp_path / "no-bwrap"))
    from fleetlab.project import Project

    (tmp_path / "train.py").write_text("print('loss: 1')\n")
    for table, match in (({"mode": "docker"}, "sandbox.mode must be"), ({"network": "off"}, "sandbox.network must be"),
                         ({"nework": False}, "unknown key sandbox.nework")):
        with pytest.raises(ConfigError, match=match) as err:
            Project.from_dict(tmp_path, {"sandbox": table})
        assert err.value.key.startswith("sandbox.") and "\n" not in str(err.value)


def test_a_project_without_bwrap_says_so_once_and_runs(project: Path, tmp_path: Path):
    """Where bwrap is missing (macOS), one warning at session start, and the runs go on unsandboxed."""
    bin_dir = tmp_path / "bin"  # every program of the PATH but bwrap
    bin_dir.mkdir()
    for d in reversed(os.environ["PATH"].split(os.pathsep)):
        for prog in Path(d).glob("*") if Path(d).is_dir() else ():
            if prog.name != "bwrap":
                (bin_dir / prog.name).unlink(missing_ok=True)
                (bin_dir / prog.name).symlink_to(prog)
    r = fleetlab_cmd("run", "-C", str(project), "--fleet", "local:2", "--strategy", "none", "--max-experiments", "2",
                     env={"PATH": f"{Path(sys.executable).parent}{os.pathsep}{bin_dir}"}, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("not sandboxed") == 1 and "bwrap" in r.stdout
