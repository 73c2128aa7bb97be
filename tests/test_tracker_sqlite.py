"""The SQLite store: group commit (an answer waits for the commit that holds its change), rows written per
change, read back whole, JSON imported, snapshots written from the database (issue 13, item 1).

The commit order is driven by a gate the test owns (the write's Deferred), and time by a Clock: nothing
here depends on the machine's speed."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path
from typing import Any

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock

from p2ptorrent.config import Config
from p2ptorrent.tracker.http import TrackerHTTP
from p2ptorrent.tracker.sqlite_store import DB_FILE, GroupCommit, Rows, SqliteStore
from p2ptorrent.tracker.state import SwarmState
from p2ptorrent.tracker.store import JsonStore

CFG = Config()
URL = "http://tracker.test/"
IH = "ab" * 20


class GatedWrites:
    """A store's write whose commits the test lets through one by one."""

    def __init__(self) -> None:
        self.pending: list[tuple[Rows, defer.Deferred[None]]] = []
        self.committed: list[Rows] = []

    def write(self, rows: Rows) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.pending.append((rows, d))
        return d

    def finish(self, ok: bool = True) -> Rows:
        rows, d = self.pending.pop(0)
        if ok:
            self.committed.append(rows)
            d.callback(None)
        else:
            d.errback(OSError(28, "No space left on device"))
        return rows


class Tracker:
    """A TrackerHTTP with a real SQLite store, whose commits go through a gate (or really to disk)."""

    def __init__(self, folder: Path, gated: bool = True) -> None:
        self.clock = Clock()
        self.state = SwarmState(CFG, random.Random(3))
        self.store = SqliteStore(folder, self.clock)
        self.web = TrackerHTTP(self.state, self.store, self.clock, CFG)
        self.gate = GatedWrites()
        if gated:
            self.web.commit = GroupCommit(self.state, self.gate.write, lambda f: self.clock.callLater(0, f))
        self.stub = StubTreq(self.web.resource())

    def post(self, doc: dict[str, Any]) -> defer.Deferred[tuple[int, dict[str, Any]]]:
        async def go() -> tuple[int, dict[str, Any]]:
            response = await self.stub.post(URL, data=json.dumps(doc).encode())
            return response.code, json.loads(await response.content())

        return defer.ensureDeferred(go())


def _fired(d: defer.Deferred[Any], t: Tracker | None = None) -> Any:
    if t is not None:
        t.stub.flush()  # (StubTreq delivers an answer written later, by a Deferred, when flushed)
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "not answered"
    return out[0]


def test_an_answer_waits_for_the_commit_that_holds_its_change_and_changes_meanwhile_go_together(tmp_path: Path) -> None:
    t = Tracker(tmp_path)
    first = t.post({"mode": 0, "node_id": 1, "port": 9001})
    t.clock.advance(0)  # the commit starts at the next turn of the reactor
    assert len(t.gate.pending) == 1
    # Two more changes while the first commit runs: they wait for the next one, together.
    second = t.post({"mode": 0, "node_id": 2, "port": 9002})
    third = t.post({"mode": 0, "node_id": 3, "port": 9003})
    t.stub.flush()
    assert not first.called and not second.called and not third.called  # nothing answered before its commit
    rows = t.gate.finish()
    assert set(rows[0]) == {1}
    assert _fired(first, t)[0] == 200 and not second.called and not third.called  # (flushed by _fired)
    assert len(t.gate.pending) == 1  # the next commit started at once, with both
    rows = t.gate.finish()
    assert set(rows[0]) == {2, 3} and not rows[1]
    assert _fired(second, t)[0] == 200 and _fired(third, t)[0] == 200


def test_a_request_that_changes_nothing_waits_for_the_commit_under_way_only_if_there_is_one(tmp_path: Path) -> None:
    t = Tracker(tmp_path)
    joined = t.post({"mode": 0, "node_id": 1, "port": 9001})
    t.clock.advance(0)
    t.gate.finish()
    token = _fired(joined, t)[1]["token"]
    heartbeat_before = t.post({"mode": 0, "node_id": 1, "port": 9001, "token": token})
    assert _fired(heartbeat_before, t)[0] == 200 and not t.gate.pending  # nothing to save: answered at once
    own = t.post({"mode": 1, "node_id": 1, "token": token, "info_hash": IH, "name": "f", "length": 10})
    t.clock.advance(0)
    beat = t.post({"mode": 0, "node_id": 1, "port": 9001, "token": token})
    # The heartbeat changed nothing, but a change made before it is still being committed: it waits
    # (else a node could be told "ok" about a state that a kill -9 would lose).
    t.stub.flush()
    assert not own.called and not beat.called
    rows = t.gate.finish()
    assert set(rows[1]) == {IH}
    assert _fired(own, t)[0] == 200 and _fired(beat, t)[0] == 200


def test_a_failed_commit_is_answered_503_and_its_rows_go_with_the_next(tmp_path: Path) -> None:
    t = Tracker(tmp_path)
    joined = t.post({"mode": 0, "node_id": 1, "port": 9001})
    t.clock.advance(0)
    t.gate.finish(ok=False)
    code, answer = _fired(joined, t)
    assert code == 503 and "could not save" in answer["error"]
    assert not t.gate.pending  # no retry loop against a full disk
    # The node sends its REGISTER again (its proposed token makes that safe): now it is saved, and answered.
    again = t.post({"mode": 0, "node_id": 2, "port": 9002})
    t.clock.advance(0)
    rows = t.gate.finish()
    assert set(rows[0]) == {1, 2}  # node 1's row, still unsaved, went with this commit
    assert _fired(again, t)[0] == 200


def test_rows_are_written_per_change_and_read_back_whole(tmp_path: Path) -> None:
    t = Tracker(tmp_path)
    t.store.load(t.state, 0.0)
    tokens = {}
    for node_id in range(1, 6):
        tokens[node_id] = t.state.register(node_id, "10.0.0.1", 9000 + node_id, None, 0.0).token
    t.state.own(1, tokens[1], IH, "data.bin", 1000)
    t.state.own(2, tokens[2], IH, "data.bin", 1000, have=3, pieces=10)
    t.state.update(3, tokens[3], IH, [1, 2])
    t.state.exit(5, tokens[5])
    # The store's own write, run here rather than on its thread (that thread is the reactor's business).
    commit = GroupCommit(t.state, lambda rows: defer.succeed(t.store._write_now(rows)), lambda f: f())
    assert _fired(commit.durable()) is None and not t.state.dirty
    with sqlite3.connect(tmp_path / DB_FILE) as db:
        nodes = {i: json.loads(doc) for i, doc in db.execute("SELECT node_id, doc FROM nodes")}
        files = {h: json.loads(doc) for h, doc in db.execute("SELECT info_hash, doc FROM files")}
    assert sorted(nodes) == [1, 2, 3, 4]
    assert nodes[1]["frequency"] == 1 and nodes[2]["frequency"] == 1
    assert files[IH]["owners"] == [1, 2] and files[IH]["partial"] == [{"node_id": 2, "have": 3, "pieces": 10}]
    # Read back: the same state as the one written.
    again = SwarmState(CFG, random.Random(1))
    assert SqliteStore(tmp_path, Clock()).load(again, 5.0) == []
    assert again.snapshot() == t.state.snapshot()


def test_a_change_writes_only_what_it_changed(tmp_path: Path) -> None:
    state = SwarmState(CFG, random.Random(3))
    writes = GatedWrites()
    commit = GroupCommit(state, writes.write, lambda f: f())
    tokens = {i: state.register(i, f"10.0.{i >> 8}.{i & 255}", 9000, None, 0.0).token for i in range(1, 2001)}
    for i in range(1, 1001):
        state.own(i, tokens[i], f"{i:040x}", "f", 10)
    commit.durable()
    writes.finish()
    # One more OWN, one credit, one exit: each commit holds the rows it changed, however big the swarm.
    state.own(7, tokens[7], IH, "g", 5)
    commit.durable()
    assert writes.finish() == ({}, {IH: writes.committed[-1][1][IH]})
    state.update(8, tokens[8], IH, [7])
    commit.durable()
    nodes, files = writes.finish()
    assert set(nodes) == {7} and set(files) == {IH}
    state.exit(7, tokens[7])
    commit.durable()
    nodes, files = writes.finish()
    assert nodes == {7: None} and set(files) == {IH, f"{7:040x}"}


def test_a_folder_with_only_the_json_files_is_imported_and_snapshots_come_from_the_database(tmp_path: Path) -> None:
    old = SwarmState(CFG, random.Random(5))
    tokens = {i: old.register(i, "10.0.0.2", 7000 + i, None, 0.0).token for i in (1, 2, 3)}
    old.own(1, tokens[1], IH, "old.bin", 123)
    old.update(2, tokens[2], IH, [1])
    JsonStore(tmp_path).save(*old.snapshot())  # today's format, written by the JSON store
    state = SwarmState(CFG, random.Random(6))
    store = SqliteStore(tmp_path, Clock())
    assert store.load(state, 1.0) == []
    assert (tmp_path / DB_FILE).exists() and state.snapshot() == old.snapshot()
    # From now on the database is what a restart reads (the JSON files are snapshots of it).
    (tmp_path / "nodes.json").write_text("{}")
    again = SwarmState(CFG, random.Random(7))
    assert SqliteStore(tmp_path, Clock()).load(again, 2.0) == [] and again.snapshot() == old.snapshot()
    store._snapshot_now()  # (what snapshot() runs on the store's thread)
    assert json.loads((tmp_path / "nodes.json").read_text()) == old.snapshot()[0]
    assert json.loads((tmp_path / "files.json").read_text()) == old.snapshot()[1]
