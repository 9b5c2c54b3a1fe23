"""The store contract: ids, one transaction per write, finished experiments never change, decisions appended."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from fleetlab.errors import StoreError
from fleetlab.experiment import Decision, Experiment, State
from fleetlab.store.sqlite import SCHEMA_VERSION, SQLiteStore

STORES = ["file", "memory"]


@pytest.fixture(params=STORES)
def store(request, tmp_path: Path):
    s = SQLiteStore(tmp_path / "db.sqlite" if request.param == "file" else ":memory:")
    yield s
    s.close()


def _exp(**kw) -> Experiment:
    return Experiment(id="", tag=kw.pop("tag", "t1"), description=kw.pop("description", "d"), state=State.QUEUED,
                      **kw)


def test_ids_and_lifecycle(store):
    a = store.add_experiment(_exp(knobs={"LR": 0.1}))
    b = store.add_experiment(_exp())
    assert (a.id, b.id) == ("exp-0001", "exp-0002")
    store.mark_running(a.id, "w0", "H100", 10.0, {"pid": 1})
    assert store.get(a.id).state is State.RUNNING and store.get(a.id).attempts == 1
    done = store.finish(a.id, State.DONE, metric=0.5, extras={"steps": 3}, exit_code=0, finished_at=20.0)
    assert done.metric == 0.5 and done.extras == {"steps": 3} and done.runtime_s == 10.0
    assert done.knobs == {"LR": 0.1} and done.hardware == "H100"
    with pytest.raises(StoreError):
        store.finish(a.id, State.CRASH, finished_at=30.0)
    with pytest.raises(StoreError):
        store.mark_running(a.id, "w1", "cpu", 1.0, {})
    with pytest.raises(StoreError):
        store.get("exp-9999")
    assert [e.id for e in store.experiments(states=[State.QUEUED])] == [b.id]


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


def test_requeue_keeps_history(store):
    e = store.add_experiment(_exp())
    store.mark_running(e.id, "w0", "cpu", 1.0, {})
    store.requeue(e.id, "node died")
    back = store.get(e.id)
    assert back.state is State.QUEUED and back.worker is None and back.meta["requeued"] == ["node died"]
    store.mark_running(e.id, "w1", "cpu", 2.0, {})
    assert store.get(e.id).attempts == 2


def test_decisions_incumbents_notes_blobs_sessions(store):
    e = store.add_experiment(_exp())
    store.add_decision(e.id, Decision("pending", "promoted"), 1.0)
    store.add_decision(e.id, Decision("keep", "validated", {"p": 0.01}), 2.0)
    assert store.decisions()[e.id] == Decision("keep", "validated", {"p": 0.01})
    assert [d.status for d in store.decision_history(e.id)] == ["pending", "keep"]
    store.set_incumbent("t1", e.id, 3.0)
    assert store.incumbent("t1") == e.id and store.incumbent("other") is None
    h = store.put_blob("print(1)\n")
    assert store.put_blob("print(1)\n") == h and store.get_blob(h) == "print(1)\n"
    n = store.add_note("agent-1", "LR above 0.1 diverges", 4.0, e.id)
    assert store.notes()[-1] == {"id": n, "author": "agent-1", "text": "LR above 0.1 diverges", "at": 4.0,
                                 "experiment": e.id}
    store.save_session("t1", started_at=1.0, status="running", busy_s=2.0)
    store.save_session("t1", status="finished", stop_reason="done")
    s = store.session("t1")
    assert s["status"] == "finished" and s["busy_s"] == 2.0 and s["started_at"] == 1.0
    store.add_observation(e.id, 10, 1.5, 2.0)
    assert store.observations(e.id) == [(10, 1.5, 2.0)]


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
