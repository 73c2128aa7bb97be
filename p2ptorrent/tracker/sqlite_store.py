"""The tracker's durable store in SQLite, written by group commit on a thread of its own.

One row per node and one per file (``tracker.db`` in the database folder, WAL
journal, ``synchronous=FULL``), each holding the JSON entry that nodes.json or
files.json would hold for it (:meth:`SwarmState.node_entry`,
:meth:`SwarmState.file_entry`), so a write costs what changed, not the size of
the swarm, and reading back goes through the same checks as the JSON files
(:meth:`SwarmState.restore`).

Group commit (:class:`GroupCommit`): a request that changed something is
answered only once a commit that holds its change has returned; changes made
while a commit runs go into the next one, together.  Rows are encoded on the
reactor thread (only those that changed, with the C JSON encoder) and written
on the store's thread; the reactor never waits for the disk.

nodes.json and files.json stay, as the original design has them: written from
the database (compact, atomically) at most every ``SNAPSHOT_INTERVAL`` seconds
when something changed, and at a clean stop.  They are snapshots for people
and tools; the database is what a restart reads.  A folder that holds only the
JSON files (the format before this store) is imported at start.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from threading import Thread
from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from p2ptorrent.atomicfile import atomic_write
from p2ptorrent.tracker.state import DB_VERSION, SwarmState
from p2ptorrent.tracker.store import FILES_FILE, NODES_FILE, JsonStore

DB_FILE = "tracker.db"
#: Seconds between two JSON snapshots at most (only when something was committed since).
SNAPSHOT_INTERVAL = 5.0

#: (node rows, file rows): key -> JSON text, or None for a row to delete.
Rows = tuple[dict[int, "str | None"], dict[str, "str | None"]]


def _encode(entry: dict[str, Any] | None) -> str | None:
    return None if entry is None else json.dumps(entry, separators=(",", ":"), sort_keys=True)


class SqliteStore:
    """tracker.db: opened, read and imported into on the caller's thread at start; written on its own thread."""

    log = Logger()

    def __init__(self, folder: str | os.PathLike[str], reactor: Any) -> None:
        self.folder = Path(folder)
        self.reactor = reactor
        self.path = self.folder / DB_FILE
        self._pool = ThreadPool(1, 1, name="tracker-db")
        # A daemon thread: a tracker that was never stopped cleanly must not keep its process alive.
        self._pool.threadFactory = _daemon_thread  # type: ignore[assignment]
        #: A reactor that cannot take calls from other threads (a memory reactor in tests) gets its writes
        #: done in-line, on its own thread.
        self.threaded = IReactorFromThreads.providedBy(reactor)
        self._db: sqlite3.Connection | None = None

    # ---- start (the caller's thread, before the tracker listens)
    def load(self, state: SwarmState, now: float) -> list[str]:
        """Fill *state* from tracker.db, or from nodes.json/files.json if there is no database yet (then saved
        into a new one at once).  Returns the problems met, for the log."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists()
        db = self._connect()
        try:
            if fresh:
                nodes_doc, files_doc = JsonStore(self.folder).load()
                problems = state.restore(nodes_doc, files_doc, now)
                rows = state.all_rows()
                _write(db, ({k: _encode(v) for k, v in rows[0].items()}, {k: _encode(v) for k, v in rows[1].items()}))
                if nodes_doc or files_doc:
                    self.log.info("imported nodes.json and files.json into {path}", path=str(self.path))
                return problems
            return state.restore(*_docs(db), now)
        finally:
            db.close()

    def start(self) -> None:
        """The store's thread starts with the reactor: twistd loads the database before it forks into a
        daemon, and a thread started before a fork does not exist after it (work queued till then waits)."""
        if self.threaded:
            self.reactor.callWhenRunning(self._pool.start)

    def _run(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if self.threaded:
            return deferToThreadPool(self.reactor, self._pool, f, *args)
        return maybeDeferred(f, *args)

    def stop(self) -> Deferred[None]:
        """After the writes under way: close the database (checkpointing the WAL into it), stop the thread."""
        d = self._run(self._close_now)
        d.addBoth(self._stop_pool)
        return d

    def _stop_pool(self, result: Any) -> Any:
        if self.threaded:
            self._pool.stop()
        return result

    def _close_now(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # ---- the store's thread
    def write(self, rows: Rows) -> Deferred[None]:
        """Commit *rows* in one transaction on the store's thread; fires once it is on disk."""
        return self._run(self._write_now, rows)

    def snapshot(self) -> Deferred[None]:
        """Write nodes.json and files.json from the database, atomically, on the store's thread."""
        return self._run(self._snapshot_now)

    def _thread_db(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = self._connect()
        return self._db

    def _write_now(self, rows: Rows) -> None:
        _write(self._thread_db(), rows)

    def _snapshot_now(self) -> None:
        db = self._thread_db()
        nodes = ",".join(doc for (doc,) in db.execute("SELECT doc FROM nodes ORDER BY node_id"))
        files = ",".join(doc for (doc,) in db.execute("SELECT doc FROM files ORDER BY info_hash"))
        for name, key, body in ((NODES_FILE, "nodes", nodes), (FILES_FILE, "files", files)):
            text = f'{{"version":{DB_VERSION},"{key}":[{body}]}}\n'
            atomic_write(self.folder / name, text.encode("utf-8"), mode=0o600, fsync=True)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a commit that returned is on disk, power loss included
        db.execute("CREATE TABLE IF NOT EXISTS nodes (node_id INTEGER PRIMARY KEY, doc TEXT NOT NULL)")
        db.execute("CREATE TABLE IF NOT EXISTS files (info_hash TEXT PRIMARY KEY, doc TEXT NOT NULL)")
        os.chmod(self.path, 0o600)  # the nodes' token hashes are nobody else's business
        return db


def _daemon_thread(*args: Any, **kwargs: Any) -> Thread:
    return Thread(*args, daemon=True, **kwargs)


def read_docs(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """What tracker.db in *folder* holds, as the nodes.json and files.json documents (read only: for tools
    and tests, also while a tracker runs)."""
    db = sqlite3.connect(f"file:{Path(folder) / DB_FILE}?mode=ro", uri=True)
    try:
        return _docs(db)
    finally:
        db.close()


def _docs(db: sqlite3.Connection) -> tuple[dict[str, Any], dict[str, Any]]:
    nodes = [json.loads(doc) for (doc,) in db.execute("SELECT doc FROM nodes ORDER BY node_id")]
    files = [json.loads(doc) for (doc,) in db.execute("SELECT doc FROM files ORDER BY info_hash")]
    return {"version": DB_VERSION, "nodes": nodes}, {"version": DB_VERSION, "files": files}


def _write(db: sqlite3.Connection, rows: Rows) -> None:
    nodes, files = rows
    db.execute("BEGIN IMMEDIATE")
    try:
        db.executemany("DELETE FROM nodes WHERE node_id = ?", [(k,) for k, v in nodes.items() if v is None])
        db.executemany("INSERT OR REPLACE INTO nodes VALUES (?, ?)", [(k, v) for k, v in nodes.items() if v is not None])
        db.executemany("DELETE FROM files WHERE info_hash = ?", [(k,) for k, v in files.items() if v is None])
        db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?)", [(k, v) for k, v in files.items() if v is not None])
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class GroupCommit:
    """Answers wait for their change to be committed; changes that come while a commit runs go together.

    :meth:`durable` fires once every change made to the state so far is on disk (at once if there is none),
    or fails if the commit that holds it failed (the rows stay dirty and go with the next commit).
    """

    log = Logger()

    def __init__(self, state: SwarmState, write: Callable[[Rows], Deferred[None]], call_soon: Callable[..., Any]) -> None:
        self.state = state
        self._write = write
        self._call_soon = call_soon
        self._running: list[Deferred[None]] | None = None  # the waiters of the commit under way
        self._next: list[Deferred[None]] = []
        self._scheduled = False
        self.commits = 0
        #: Changes committed since the last JSON snapshot.
        self.unsnapshotted = False

    def durable(self) -> Deferred[None]:
        if self.state.dirty:
            d: Deferred[None] = Deferred()
            self._next.append(d)
            if self._running is None and not self._scheduled:
                self._scheduled = True
                self._call_soon(self._start)  # the requests read in this reactor turn join the same commit
            return d
        if self._running is not None:
            d = Deferred()
            self._running.append(d)
            return d
        return succeed(None)

    def _start(self) -> None:
        self._scheduled = False
        if self._running is not None:
            return
        waiters, self._next = self._next, []
        node_ids, info_hashes = self.state.take_dirty()
        rows: Rows = ({i: _encode(self.state.node_entry(i)) for i in node_ids},
                      {h: _encode(self.state.file_entry(h)) for h in info_hashes})
        self._running = waiters
        self._write(rows).addBoth(self._done, node_ids, info_hashes)

    def _done(self, result: Any, node_ids: Iterable[int], info_hashes: Iterable[str]) -> None:
        waiters, self._running = self._running or [], None
        if isinstance(result, Failure):
            self.log.failure("could not commit to the tracker database", result)
            self.state.mark_dirty(node_ids, info_hashes)  # with the next commit
            for d in waiters:
                d.errback(result)
        else:
            self.commits += 1
            self.unsnapshotted = True
            for d in waiters:
                d.callback(None)
        # After a failure only new requests try again (no retry loop against a full disk).
        if self._next or (self.state.dirty and not isinstance(result, Failure)):
            self._start()
