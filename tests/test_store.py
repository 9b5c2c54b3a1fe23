"""The Store contract, written against the base class and run on every implementation; then what only SQLite
promises (the database itself protects finished rows, WAL, schema versions, concurrent writers)."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import fleetlab
from fleetlab.errors import StoreError
from fleetlab.experiment import Decision, Experiment, State
from fleetlab.store._base import Store
from fleetlab.store.sqlite import SCHEMA_VERSION, SQLiteStore

# every implementation the library ships, as (name, factory(tmp_path) -> Store)
IMPLEMENTATIONS = {
    "sqlite-file": lambda tmp: SQLiteStore(tmp / "db.sqlite"),
    "sqlite-memory": lambda tmp: SQLiteStore(":memory:"),
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def store(request, tmp_path: Path) -> Store:
    s = IMPLEMENTATIONS[request.param](tmp_path)
    assert isinstance(s, Store)
    yield s
    s.close()


def _exp(**kw) -> Experiment:
    return Experiment(id="", tag=kw.pop("tag", "t1"), description=kw.pop("description", "d"), state=State.QUEUED,
                      **kw)


# == the contract ======================================================================================================
def test_ids_and_lifecycle(store: Store):
    a = store.add_experiment(_exp(knobs={"LR": 0.1}))
    b = store.add_experiment(_exp(tag="t2"))
    assert (a.id, b.id) == ("exp-0001", "exp-0002") and a.state is State.QUEUED
    store.mark_running(a.id, "w0", "H100", 10.0, {"workdir": "x"}, "x/run.log")
    store.set_handle(a.id, {"pid": 1})
    running = store.get(a.id)
    assert running.state is State.RUNNING and running.attempts == 1 and running.handle == {"pid": 1}
    assert running.log_path == "x/run.log" and running.worker == "w0"
    assert store.finish(a.id, State.DONE, metric=0.5, extras={"steps": 3}, exit_code=0, finished_at=20.0,
                        log_tail="x" * 5000, meta={"k": 1}) is None
    done = store.get(a.id)
    assert done.metric == 0.5 and done.extras == {"steps": 3} and done.runtime_s == 10.0
    assert done.knobs == {"LR": 0.1} and done.hardware == "H100" and done.meta == {"k": 1}
    assert len(done.log_tail) == 4000
    for write in (lambda: store.finish(a.id, State.CRASH, finished_at=30.0),
                  lambda: store.mark_running(a.id, "w1", "cpu", 1.0, {}),
                  lambda: store.requeue(a.id, "again"),
                  lambda: store.set_handle(a.id, {}),
                  lambda: store.finish(b.id, State.RUNNING, finished_at=1.0),  # not a final state
                  lambda: store.get("exp-9999")):
        with pytest.raises(StoreError):
            write()
    assert store.get(a.id) == done  # refused writes changed nothing
    assert [e.id for e in store.experiments(states=[State.QUEUED])] == [b.id]
    assert [e.id for e in store.experiments(tag="t1")] == [a.id]
    assert [e.id for e in store.experiments(after_num=1)] == [b.id]
    assert store.count() == 2 and store.count(tag="t2", states=[State.QUEUED]) == 1
    c = store.add_experiment(_exp(content_hash="h1"))
    assert store.find_hash("h1") == [c.id] and store.find_hash("none") == []


def test_a_run_records_its_own_start_when_it_finishes(store: Store):
    e = store.add_experiment(_exp())
    store.mark_running(e.id, "w0", "cpu", 10.0, {})
    store.finish(e.id, State.DONE, metric=1.0, started_at=12.5, finished_at=20.0)  # after the worker's setup
    assert store.get(e.id).runtime_s == 7.5


def test_a_new_session_adopts_what_others_left_queued(store: Store):
    a = store.add_experiment(_exp(tag="old"))
    b = store.add_experiment(_exp(tag="older"))
    c = store.add_experiment(_exp(tag="old"))
    store.finish(c.id, State.DONE, metric=1.0, finished_at=1.0)
    d = store.add_experiment(_exp(tag="new"))
    assert store.adopt_queued("new") == [a.id, b.id]
    assert [(e.id, e.tag) for e in store.experiments()] == [(a.id, "new"), (b.id, "new"), (c.id, "old"), (d.id, "new")]
    assert store.adopt_queued("new") == []


def test_a_queued_experiment_can_be_cancelled_without_running(store: Store):
    e = store.add_experiment(_exp())
    store.finish(e.id, State.CANCELLED, finished_at=1.0, meta={"reason": "cancelled before it ran"})
    assert store.get(e.id).state is State.CANCELLED


def test_requeue_keeps_history(store: Store):
    e = store.add_experiment(_exp(meta={"prune": False}))
    store.mark_running(e.id, "w0", "cpu", 1.0, {})
    store.requeue(e.id, "node died")
    back = store.get(e.id)
    assert back.state is State.QUEUED and back.worker is None and back.started_at is None and back.handle is None
    assert back.meta == {"prune": False, "requeued": ["node died"]}
    store.mark_running(e.id, "w1", "cpu", 2.0, {})
    store.requeue(e.id, "orchestrator restarted")
    assert store.get(e.id).meta["requeued"] == ["node died", "orchestrator restarted"]
    store.mark_running(e.id, "w1", "cpu", 3.0, {})
    assert store.get(e.id).attempts == 3


def test_decisions_incumbents_notes_blobs_observations_sessions(store: Store):
    e = store.add_experiment(_exp())
    f = store.add_experiment(_exp())
    store.add_decision(e.id, Decision("pending", "promoted"), 1.0)
    store.add_decision(e.id, Decision("keep", "validated", {"p": 0.01}), 2.0)
    store.add_decision(f.id, Decision("discard", "worse"), 2.5)
    assert store.decisions() == {e.id: Decision("keep", "validated", {"p": 0.01}), f.id: Decision("discard", "worse")}
    assert [d.status for d in store.decision_history(e.id)] == ["pending", "keep"]
    assert store.incumbent("t1") is None and store.incumbent_history("t1") == []
    store.set_incumbent("t1", f.id, 3.0)
    store.set_incumbent("t1", e.id, 4.0)
    assert store.incumbent("t1") == e.id and store.incumbent("other") is None
    assert store.incumbent_history("t1") == [(f.id, 3.0), (e.id, 4.0)]
    h = store.put_blob("print(1)\n")
    assert store.put_blob("print(1)\n") == h and store.get_blob(h) == "print(1)\n"
    with pytest.raises(StoreError):
        store.get_blob("0" * 20)
    n1 = store.add_note("agent-1", "LR above 0.1 diverges", 4.0, e.id)
    n2 = store.add_note("person", "try a wider model", 5.0)
    assert store.notes() == [{"id": n1, "author": "agent-1", "text": "LR above 0.1 diverges", "at": 4.0,
                              "experiment": e.id},
                             {"id": n2, "author": "person", "text": "try a wider model", "at": 5.0, "experiment": None}]
    assert [n["id"] for n in store.notes(limit=1)] == [n2]
    store.add_observation(e.id, 10, 1.5, 2.0)
    store.add_observation(e.id, 20, 1.2, 4.0)
    assert store.observations(e.id) == [(10, 1.5, 2.0), (20, 1.2, 4.0)] and store.observations(f.id) == []
    assert store.session("t1") is None and store.sessions() == []
    store.save_session("t1", started_at=1.0, status="running", busy_s=2.0)
    store.save_session("t1", status="finished", stop_reason="done")
    store.save_session("t2", started_at=5.0, status="running")
    s = store.session("t1")
    assert s["status"] == "finished" and s["busy_s"] == 2.0 and s["started_at"] == 1.0 and s["stop_reason"] == "done"
    assert [x["tag"] for x in store.sessions()] == ["t1", "t2"]
    assert store.integrity_check() == "ok"


def test_a_transaction_writes_all_or_nothing_and_nests(store: Store):
    e = store.add_experiment(_exp())
    with store.transaction():
        with store.transaction():
            store.finish(e.id, State.DONE, metric=1.0, finished_at=1.0)
        store.add_decision(e.id, Decision("keep", "baseline"), 1.0)
        store.set_incumbent("t1", e.id, 1.0)
    assert store.get(e.id).state is State.DONE and store.decisions()[e.id].status == "keep"
    assert store.incumbent("t1") == e.id


def test_the_base_declares_every_method_the_library_calls_on_a_store():
    """Callers are typed to the base: any `store.NAME(` / `opened.store.NAME(` in the package must be declared there."""
    declared = {n for n in dir(Store) if not n.startswith("_")}
    called: dict[str, str] = {}
    root = Path(fleetlab.__file__).parent
    for path in root.rglob("*.py"):
        if path.parts[-2] == "store":
            continue  # the implementations themselves
        for name in re.findall(r"\bstore\.([a-z_]+)\(", path.read_text()):
            called.setdefault(name, str(path.relative_to(root)))
    missing = {n: where for n, where in called.items() if n not in declared}
    assert not missing, f"called on a store but not declared by fleetlab.store._base.Store: {missing}"


# == what SQLite promises besides ======================================================================================
def test_finished_rows_are_protected_by_the_database_itself(tmp_path: Path):
    s = SQLiteStore(tmp_path / "db.sqlite")
    e = s.add_experiment(_exp())
    s.finish(e.id, State.CRASH, exit_code=1, finished_at=1.0, log_tail="boom")
    con = sqlite3.connect(tmp_path / "db.sqlite")
    with pytest.raises(sqlite3.IntegrityError):
        con.execute("UPDATE experiments SET metric = 0.1 WHERE id = ?", (e.id,))
    with pytest.raises(sqlite3.IntegrityError):
        con.execute("DELETE FROM experiments WHERE id = ?", (e.id,))
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)


def test_a_process_killed_inside_a_transaction_leaves_none_of_it(tmp_path: Path):
    """SIGKILL between a run's final state and its decision, both written in one transaction: neither is there."""
    path = tmp_path / "db.sqlite"
    s = SQLiteStore(path)
    e = s.add_experiment(_exp())
    s.close()
    code = f"""
import os, signal
from fleetlab.experiment import Decision, State
from fleetlab.store.sqlite import SQLiteStore
s = SQLiteStore({str(path)!r})
with s.transaction():
    s.finish({e.id!r}, State.DONE, metric=1.0, finished_at=1.0)
    s.add_decision({e.id!r}, Decision("keep", "baseline"), 1.0)
    os.kill(os.getpid(), signal.SIGKILL)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == -9, r.stderr
    s = SQLiteStore(path)
    assert s.get(e.id).state is State.QUEUED and s.decisions() == {} and s.integrity_check() == "ok"
    s.close()


def test_concurrent_writers_get_distinct_ids(tmp_path: Path):
    path = tmp_path / "db.sqlite"
    SQLiteStore(path).close()
    ids: list[str] = []
    lock = threading.Lock()

    def writer():
        s = SQLiteStore(path)  # separate connections, as `fleetlab submit` beside `fleetlab run`
        for _ in range(25):
            e = s.add_experiment(_exp())
            with lock:
                ids.append(e.id)
        s.close()

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 100 and len(set(ids)) == 100
    assert SQLiteStore(path).integrity_check() == "ok"


def test_newer_schema_is_refused(tmp_path: Path):
    path = tmp_path / "db.sqlite"
    SQLiteStore(path).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="newer"):
        SQLiteStore(path)


def test_materializer_cache_is_bounded_and_each_blob_written_once(mlp_project: Path):
    """256 workers make ~23,000 variants a night: file texts are cached LRU up to a size, the store keeps them all."""
    from fleetlab.experiment import Proposal
    from fleetlab.project import Project
    from fleetlab.proposals import Materializer

    class Counting(SQLiteStore):
        puts = 0

        def put_blob(self, content: str) -> str:
            Counting.puts += 1
            return super().put_blob(content)

    project = Project.load(mlp_project)
    store = Counting(":memory:")
    size = len(project.read_editable()["train.py"])
    mat = Materializer(project, store, cache_chars=3 * size)
    exps = []
    for i in range(20):
        exp = mat.to_experiment(Proposal(description=f"lr {i}", knobs={"LEARNING_RATE": 0.001 * (i + 1)}), None,
                                tag="t", seed=i, now=0.0)
        exps.append(store.add_experiment(exp))
    assert mat._cached <= 3 * size and len(mat._blobs) <= 3
    assert Counting.puts == 20
    again = mat.to_experiment(Proposal(description="lr 0", knobs={"LEARNING_RATE": 0.001}), None, tag="t", seed=0,
                              now=0.0)
    assert Counting.puts == 20 and again.content_hash == exps[0].content_hash  # known to the store: not written again
    first = mat.files_of(exps[0])["train.py"]  # evicted long ago: read back from the store
    assert "LEARNING_RATE = 0.001" in first and mat._cached <= 3 * size
    store.close()
