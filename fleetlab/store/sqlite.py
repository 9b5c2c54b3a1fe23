"""SQLite store (the embedded default): WAL journal, one transaction per write, versioned schema.

Finished experiments are protected by a trigger, so even a bug elsewhere cannot rewrite history.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable

from fleetlab.errors import StoreError
from fleetlab.experiment import Decision, Edit, Experiment, State, format_id
from fleetlab.store._base import Store

SCHEMA_VERSION = 1

_FINAL = ", ".join(f"'{s.value}'" for s in State if s.is_final)

_DDL = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
  tag TEXT PRIMARY KEY, data TEXT NOT NULL DEFAULT '{{}}', started_at REAL, updated_at REAL, status TEXT
);
CREATE TABLE IF NOT EXISTS experiments (
  num INTEGER PRIMARY KEY,
  id TEXT UNIQUE NOT NULL,
  tag TEXT NOT NULL,
  parent TEXT,
  strategy TEXT NOT NULL DEFAULT '',
  role TEXT NOT NULL DEFAULT 'explore',
  description TEXT NOT NULL DEFAULT '',
  knobs TEXT NOT NULL DEFAULT '{{}}',
  edits TEXT NOT NULL DEFAULT '[]',
  files TEXT NOT NULL DEFAULT '{{}}',
  content_hash TEXT NOT NULL DEFAULT '',
  seed INTEGER NOT NULL DEFAULT 0,
  tier TEXT,
  want_hardware TEXT,
  state TEXT NOT NULL,
  metric REAL,
  extras TEXT NOT NULL DEFAULT '{{}}',
  worker TEXT,
  hardware TEXT,
  queued_at REAL NOT NULL,
  started_at REAL,
  finished_at REAL,
  exit_code INTEGER,
  log_path TEXT,
  log_tail TEXT NOT NULL DEFAULT '',
  lines_added INTEGER NOT NULL DEFAULT 0,
  lines_removed INTEGER NOT NULL DEFAULT 0,
  attempts INTEGER NOT NULL DEFAULT 0,
  handle TEXT,
  meta TEXT NOT NULL DEFAULT '{{}}'
);
CREATE INDEX IF NOT EXISTS experiments_state ON experiments(state);
CREATE INDEX IF NOT EXISTS experiments_tag ON experiments(tag);
CREATE INDEX IF NOT EXISTS experiments_hash ON experiments(content_hash);
CREATE TRIGGER IF NOT EXISTS finished_experiments_never_change
  BEFORE UPDATE ON experiments WHEN OLD.state IN ({_FINAL})
  BEGIN SELECT RAISE(ABORT, 'finished experiments never change'); END;
CREATE TRIGGER IF NOT EXISTS finished_experiments_never_vanish
  BEFORE DELETE ON experiments WHEN OLD.state IN ({_FINAL})
  BEGIN SELECT RAISE(ABORT, 'finished experiments never change'); END;
CREATE TABLE IF NOT EXISTS blobs (hash TEXT PRIMARY KEY, content TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS observations (exp_id TEXT NOT NULL, step INTEGER, metric REAL, elapsed REAL);
CREATE INDEX IF NOT EXISTS observations_exp ON observations(exp_id);
CREATE TABLE IF NOT EXISTS decisions (
  n INTEGER PRIMARY KEY, exp_id TEXT NOT NULL, status TEXT NOT NULL, reason TEXT, numbers TEXT, at REAL
);
CREATE TABLE IF NOT EXISTS incumbents (n INTEGER PRIMARY KEY, tag TEXT NOT NULL, exp_id TEXT NOT NULL, at REAL);
CREATE TABLE IF NOT EXISTS notes (n INTEGER PRIMARY KEY, author TEXT, text TEXT NOT NULL, at REAL, exp_id TEXT);
"""

_COLUMNS = ("num", "id", "tag", "parent", "strategy", "role", "description", "knobs", "edits", "files", "content_hash",
            "seed", "tier", "want_hardware", "state", "metric", "extras", "worker", "hardware", "queued_at",
            "started_at", "finished_at", "exit_code", "log_path", "log_tail", "lines_added", "lines_removed",
            "attempts", "handle", "meta")


def blob_hash(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()[:20]


class _Tx:
    """One write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error), serialised across threads."""

    __slots__ = ("store",)

    def __init__(self, store: "SQLiteStore"):
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        self.store._lock.acquire()
        if self.store._batch_depth:  # inside transaction(): the outer transaction holds this write
            return self.store._db
        try:
            self.store._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.store._lock.release()
            raise
        return self.store._db

    def __exit__(self, et, ev, tb) -> bool:
        try:
            if not self.store._batch_depth:
                self.store._db.execute("COMMIT" if et is None else "ROLLBACK")
        finally:
            self.store._lock.release()
        return False


class _Batch:
    """Many writes in one transaction (simulations: thousands of experiments a second, no other reader)."""

    __slots__ = ("store",)

    def __init__(self, store: "SQLiteStore"):
        self.store = store

    def __enter__(self) -> None:
        st = self.store
        st._lock.acquire()
        if st._batch_depth == 0:
            st._db.execute("BEGIN IMMEDIATE")
        st._batch_depth += 1

    def __exit__(self, et, ev, tb) -> bool:
        st = self.store
        try:
            st._batch_depth -= 1
            if st._batch_depth == 0:
                st._db.execute("COMMIT")  # what was written stays written, as the loop's memory has it
        finally:
            st._lock.release()
        return False


class SQLiteStore(Store):
    """`SQLiteStore(path)`; `path=":memory:"` for throwaway stores (simulations)."""

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL", readonly: bool = False):
        """`readonly`: for commands that only read; works where `.fleetlab` cannot be written (a read-only mount)."""
        self.path = str(path)
        readonly = readonly and self.path != ":memory:" and Path(self.path).is_file()
        if self.path != ":memory:" and not readonly:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock = threading.RLock()
            self._batch_depth = 0
            if readonly:
                self._db = self._connect_readonly()
                self._check_version()
                return
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._check_version()  # a newer database is refused before this version writes anything into it
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot open the results database {self.path}: {e}") from None

    def transaction(self) -> _Batch:
        """A context in which every write shares one transaction (committed at the end: a SIGKILL inside leaves none
        of it; an exception leaves what was written, as the caller's memory has it)."""
        return _Batch(self)

    # -- plumbing -------------------------------------------------------------------------------------------------
    def _tx(self) -> "_Tx":
        return _Tx(self)

    def _connect_readonly(self) -> sqlite3.Connection:
        uri = "file:" + Path(self.path).resolve().as_posix()
        try:
            db = sqlite3.connect(uri + "?mode=ro", uri=True, timeout=30.0, isolation_level=None,
                                 check_same_thread=False)
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError:
            # the directory is not writable and the WAL index cannot be made: no writer can be there either
            return sqlite3.connect(uri + "?immutable=1", uri=True, isolation_level=None, check_same_thread=False)

    def _check_version(self) -> None:
        has_meta = self._db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() if has_meta else None
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise StoreError(f"the results database {self.path} has schema version {row[0]}, newer than this "
                             f"fleetlab understands ({SCHEMA_VERSION}); upgrade fleetlab")

    def _migrate(self) -> None:
        with self._lock:
            self._db.executescript(_DDL)
            with self._tx() as db:
                row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                if row is None:
                    db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    @staticmethod
    def _row(row: tuple) -> Experiment:
        d = dict(zip(_COLUMNS, row))
        return Experiment(
            id=d["id"], tag=d["tag"], description=d["description"], state=State(d["state"]), parent=d["parent"],
            strategy=d["strategy"], role=d["role"], knobs=json.loads(d["knobs"]),
            edits=tuple(Edit.from_dict(e) for e in json.loads(d["edits"])), files=json.loads(d["files"]),
            content_hash=d["content_hash"], seed=d["seed"], tier=d["tier"], want_hardware=d["want_hardware"],
            metric=d["metric"], extras=json.loads(d["extras"]), worker=d["worker"], hardware=d["hardware"],
            queued_at=d["queued_at"], started_at=d["started_at"], finished_at=d["finished_at"],
            exit_code=d["exit_code"], log_path=d["log_path"], log_tail=d["log_tail"], lines_added=d["lines_added"],
            lines_removed=d["lines_removed"], attempts=d["attempts"],
            handle=json.loads(d["handle"]) if d["handle"] else None, meta=json.loads(d["meta"]))

    def _update(self, exp_id: str, sets: dict[str, Any], expect: Iterable[State]) -> None:
        expect = [s.value for s in expect]
        cols = ", ".join(f"{k} = ?" for k in sets)
        try:
            with self._tx() as db:
                row = db.execute("SELECT state FROM experiments WHERE id = ?", (exp_id,)).fetchone()
                if row is None:
                    raise StoreError(f"no experiment {exp_id}")
                if row[0] not in expect:
                    raise StoreError(f"{exp_id} is {row[0]}, not {' or '.join(expect)}")
                db.execute(f"UPDATE experiments SET {cols} WHERE id = ?", (*sets.values(), exp_id))
        except sqlite3.IntegrityError as e:
            raise StoreError(f"{exp_id}: {e}") from None

    # -- experiments ----------------------------------------------------------------------------------------------
    def add_experiment(self, exp: Experiment) -> Experiment:
        with self._tx() as db:
            num = db.execute("SELECT COALESCE(MAX(num), 0) + 1 FROM experiments").fetchone()[0]
            exp = exp.evolve(id=format_id(num), state=State.QUEUED)
            db.execute(
                f"INSERT INTO experiments ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                (num, exp.id, exp.tag, exp.parent, exp.strategy, exp.role, exp.description, json.dumps(exp.knobs),
                 json.dumps([e.to_dict() for e in exp.edits]), json.dumps(exp.files), exp.content_hash, exp.seed,
                 exp.tier, exp.want_hardware, exp.state.value, exp.metric, json.dumps(exp.extras), exp.worker,
                 exp.hardware, exp.queued_at, exp.started_at, exp.finished_at, exp.exit_code, exp.log_path,
                 exp.log_tail, exp.lines_added, exp.lines_removed, exp.attempts,
                 json.dumps(exp.handle) if exp.handle else None, json.dumps(exp.meta)))
        return exp

    def get(self, exp_id: str) -> Experiment:
        rows = self._query(f"SELECT {', '.join(_COLUMNS)} FROM experiments WHERE id = ?", (exp_id,))
        if not rows:
            raise StoreError(f"no experiment {exp_id!r} in this project")
        return self._row(rows[0])

    @staticmethod
    def _where(tag: str | None, states: Iterable[State] | None, after_num: int = 0) -> tuple[str, list[Any]]:
        sql, args = " WHERE num > ?", [after_num]
        if tag is not None:
            sql += " AND tag = ?"
            args.append(tag)
        if states is not None:
            values = [s.value for s in states]
            sql += f" AND state IN ({', '.join('?' * len(values))})"
            args.extend(values)
        return sql, args

    def experiments(self, tag: str | None = None, states: Iterable[State] | None = None,
                    after_num: int = 0) -> list[Experiment]:
        where, args = self._where(tag, states, after_num)
        sql = f"SELECT {', '.join(_COLUMNS)} FROM experiments{where} ORDER BY num"
        return [self._row(r) for r in self._query(sql, tuple(args))]

    def count(self, tag: str | None = None, states: Iterable[State] | None = None) -> int:
        where, args = self._where(tag, states)
        return self._query("SELECT COUNT(*) FROM experiments" + where, tuple(args))[0][0]

    def find_hash(self, content_hash: str) -> list[str]:
        return [r[0] for r in self._query("SELECT id FROM experiments WHERE content_hash = ? ORDER BY num",
                                          (content_hash,))]

    def mark_running(self, exp_id, worker, hardware, started_at, handle, log_path=None) -> None:
        with self._tx() as db:
            row = db.execute("SELECT state, attempts FROM experiments WHERE id = ?", (exp_id,)).fetchone()
            if row is None or row[0] != State.QUEUED.value:
                raise StoreError(f"{exp_id} is {row[0] if row else 'unknown'}, not queued")
            db.execute("UPDATE experiments SET state=?, worker=?, hardware=?, started_at=?, handle=?, log_path=?, "
                       "attempts=? WHERE id=?", (State.RUNNING.value, worker, hardware, started_at,
                                                  json.dumps(handle), log_path, row[1] + 1, exp_id))

    def set_handle(self, exp_id: str, handle: dict[str, Any]) -> None:
        self._update(exp_id, {"handle": json.dumps(handle)}, expect=[State.RUNNING])

    def finish(self, exp_id, state, *, metric=None, extras=None, exit_code=None, started_at=None, finished_at,
               log_tail="", meta=None) -> None:
        if not state.is_final:
            raise StoreError(f"finish() needs a final state, not {state.value}")
        with self._tx() as db:
            row = db.execute("SELECT state, meta, started_at FROM experiments WHERE id = ?", (exp_id,)).fetchone()
            if row is None:
                raise StoreError(f"no experiment {exp_id}")
            if row[0] not in (State.QUEUED.value, State.RUNNING.value):
                raise StoreError(f"{exp_id} is {row[0]}, not queued or running")
            merged = json.dumps({**json.loads(row[1]), **meta}) if meta else row[1]
            db.execute("UPDATE experiments SET state=?, metric=?, extras=?, exit_code=?, started_at=?, finished_at=?, "
                       "log_tail=?, meta=? WHERE id=?",
                       (state.value, metric, json.dumps(extras or {}), exit_code,
                        row[2] if started_at is None else started_at, finished_at, log_tail[-4000:], merged, exp_id))

    def adopt_queued(self, tag: str) -> list[str]:
        with self._tx() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM experiments WHERE state = ? AND tag != ? ORDER BY num",
                                            (State.QUEUED.value, tag))]
            db.execute("UPDATE experiments SET tag = ? WHERE state = ? AND tag != ?", (tag, State.QUEUED.value, tag))
        return ids

    def requeue(self, exp_id: str, reason: str) -> None:
        cur = self.get(exp_id)
        meta = {**cur.meta, "requeued": [*cur.meta.get("requeued", []), reason]}
        self._update(exp_id, {"state": State.QUEUED.value, "worker": None, "hardware": None, "started_at": None,
                              "handle": None, "meta": json.dumps(meta)}, expect=[State.RUNNING])

    # -- decisions and incumbents ----------------------------------------------------------------------------------
    def add_decision(self, exp_id: str, decision: Decision, at: float) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO decisions (exp_id, status, reason, numbers, at) VALUES (?, ?, ?, ?, ?)",
                       (exp_id, decision.status, decision.reason, json.dumps(decision.numbers, default=float), at))

    def decisions(self) -> dict[str, Decision]:
        out = {}
        for exp_id, status, reason, numbers in self._query(
                "SELECT exp_id, status, reason, numbers FROM decisions ORDER BY n"):
            out[exp_id] = Decision(status=status, reason=reason or "", numbers=json.loads(numbers or "{}"))
        return out

    def decision_history(self, exp_id: str) -> list[Decision]:
        return [Decision(status=s, reason=r or "", numbers=json.loads(n or "{}")) for s, r, n in
                self._query("SELECT status, reason, numbers FROM decisions WHERE exp_id = ? ORDER BY n", (exp_id,))]

    def set_incumbent(self, tag: str, exp_id: str, at: float) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO incumbents (tag, exp_id, at) VALUES (?, ?, ?)", (tag, exp_id, at))

    def incumbent(self, tag: str) -> str | None:
        rows = self._query("SELECT exp_id FROM incumbents WHERE tag = ? ORDER BY n DESC LIMIT 1", (tag,))
        return rows[0][0] if rows else None

    def incumbent_history(self, tag: str) -> list[tuple[str, float]]:
        return [(r[0], r[1]) for r in self._query("SELECT exp_id, at FROM incumbents WHERE tag = ? ORDER BY n", (tag,))]

    # -- blobs, observations, notes, sessions -----------------------------------------------------------------------
    def put_blob(self, content: str) -> str:
        h = blob_hash(content)
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO blobs VALUES (?, ?)", (h, content))
        return h

    def get_blob(self, h: str) -> str:
        rows = self._query("SELECT content FROM blobs WHERE hash = ?", (h,))
        if not rows:
            raise StoreError(f"no stored file content {h}")
        return rows[0][0]

    def add_observation(self, exp_id: str, step: int, metric: float, elapsed: float) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO observations VALUES (?, ?, ?, ?)", (exp_id, step, metric, elapsed))

    def observations(self, exp_id: str) -> list[tuple[int, float, float]]:
        return [tuple(r) for r in self._query(
            "SELECT step, metric, elapsed FROM observations WHERE exp_id = ? ORDER BY rowid", (exp_id,))]

    def add_note(self, author: str, text: str, at: float, exp_id: str | None = None) -> int:
        with self._tx() as db:
            cur = db.execute("INSERT INTO notes (author, text, at, exp_id) VALUES (?, ?, ?, ?)",
                             (author, text, at, exp_id))
            return cur.lastrowid

    def notes(self, limit: int | None = None) -> list[dict[str, Any]]:
        sql = "SELECT n, author, text, at, exp_id FROM notes ORDER BY n DESC"
        rows = self._query(sql + (f" LIMIT {int(limit)}" if limit else ""))
        return [dict(zip(("id", "author", "text", "at", "experiment"), r)) for r in reversed(rows)]

    def session(self, tag: str) -> dict[str, Any] | None:
        rows = self._query("SELECT tag, data, started_at, updated_at, status FROM sessions WHERE tag = ?", (tag,))
        if not rows:
            return None
        tag, data, started, updated, status = rows[0]
        return {**json.loads(data), "tag": tag, "started_at": started, "updated_at": updated, "status": status}

    def sessions(self) -> list[dict[str, Any]]:
        return [self.session(r[0]) for r in self._query("SELECT tag FROM sessions ORDER BY started_at")]

    def save_session(self, tag: str, **fields: Any) -> None:
        with self._tx() as db:
            row = db.execute("SELECT data, started_at, status FROM sessions WHERE tag = ?", (tag,)).fetchone()
            data = json.loads(row[0]) if row else {}
            started = fields.pop("started_at", row[1] if row else None)
            status = fields.pop("status", row[2] if row else "running")
            updated = fields.pop("updated_at", started)
            data.update(fields)
            db.execute("INSERT OR REPLACE INTO sessions (tag, data, started_at, updated_at, status) VALUES (?,?,?,?,?)",
                       (tag, json.dumps(data, default=float), started, updated, status))

    def integrity_check(self) -> str:
        return self._query("PRAGMA integrity_check")[0][0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
