"""Several tracker processes serving one swarm through Redis (issue 13, item 6).

The pure part first: a change replayed from the log gives the same state and
outcome as where it was made, and the log never carries a token.  Then real
`twistd -n p2ptracker --store redis://...` processes on a real redis-server
(started per test, see rediskit.py): a node joins through one tracker and is
found through the other; a tracker killed with SIGKILL under load loses nothing
it acknowledged; a silent node is dropped once, by one check that every
tracker applies; trackers that disagree on the rules, or cannot reach Redis,
refuse to start and say why.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import signal
import threading
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from p2ptorrent.config import Config
from p2ptorrent.procs import Daemons, connects, free_port
from p2ptorrent.procs import wait_for as _wait_for
from p2ptorrent.tracker.changes import Check, Drop, apply, apply_change, decode, encode, to_change
from p2ptorrent.tracker.redis_store import LOG, RedisAddress, RedisConfigError, RedisSwarm, parse_entry
from p2ptorrent.tracker.state import (
    Exit,
    Own,
    Register,
    Registration,
    SwarmState,
    TrackerError,
    Update,
    Withdraw,
)
from tests.rediskit import RedisServer, shared_state
from tests.test_tracker_processes import FILES, OBSERVER, REAL_NODE, UPLOADER, Load, TrackerAPI, info_hash

wait_for = partial(_wait_for, timeout=30.0, fail=pytest.fail)

SETTINGS = Config(TRACKER_MAX_NODES_PER_HOST=5, TRACKER_MISSED_CHECKS=1)


# ---------------------------------------------------------------- the log, pure


def test_a_log_replayed_elsewhere_gives_the_same_state_and_the_same_outcomes() -> None:
    rng = random.Random(5)
    origin, replica = SwarmState(SETTINGS, random.Random(1)), SwarmState(SETTINGS, random.Random(2))
    tokens: dict[int, str] = {}
    log: list[str] = []
    outcomes = 0
    for step in range(3000):
        node = rng.randrange(12)
        host = f"10.0.0.{node % 3}"
        token = tokens.get(node) if rng.random() < 0.9 else "f" * 32
        hashes = [info_hash(i) for i in range(4)]
        kind = rng.random()
        request: Any
        if kind < 0.3:
            request = Register(node, 1000 + node + rng.randrange(2), token if node in tokens else
                               rng.choice([None, f"{rng.getrandbits(128):032x}"]))
        elif kind < 0.55:
            request = Own(node, token, rng.choice(hashes), "f", 100, *rng.choice([(None, None), (1, 4), (4, 4)]))
        elif kind < 0.65:
            request = Withdraw(node, token, rng.choice(hashes))
        elif kind < 0.8:
            request = Update(node, token, rng.choice(hashes), tuple(rng.sample(range(12), 3)))
        elif kind < 0.88:
            request = Exit(node, token)
        elif kind < 0.94:
            request = Check()
        else:
            request = Drop(rng.choice([1, 3, 2000]))
        fresh = f"{rng.getrandbits(128):032x}"
        now = float(step)
        try:
            made: Any = apply(origin, request, host, now, fresh)
        except TrackerError as e:
            made = e
        text = encode(to_change(request, host, now, fresh))
        log.append(text)
        change = decode(text)
        try:
            replayed: Any = apply_change(replica, change)
        except TrackerError as e:
            replayed = e
        if isinstance(made, Registration):
            assert isinstance(replayed, Registration)
            assert (made.node_id, made.new, made.host, made.port) == (
                replayed.node_id, replayed.new, replayed.host, replayed.port)
            tokens[node] = made.token
            if not made.new:
                assert made.token == token
        elif isinstance(made, TrackerError):
            assert isinstance(replayed, TrackerError) and (replayed.status, replayed.message) == (made.status, made.message)
        else:
            assert replayed == made, (request, made, replayed)
        outcomes += 1
        assert origin.snapshot() == replica.snapshot(), f"the states differ after change {step}: {request}"
    assert origin.summary()["nodes"] > 0 and outcomes == 3000
    # Joins, refusals, drops and credits all happened in this run (the comparison covered them).
    kinds = {json.loads(t)["kind"] for t in log}
    assert kinds == {"register", "own", "withdraw", "update", "exit", "check", "drop"}
    # No token the origin handed out is in the log: only their digests.
    text = "\n".join(log)
    assert tokens and not any(t in text for t in tokens.values())


def test_a_replayed_join_hands_out_the_token_the_origin_chose() -> None:
    replica = SwarmState(SETTINGS, random.Random(0))
    fresh = "ab" * 16
    change = decode(encode(to_change(Register(3, 4000, None), "10.0.0.1", 1.0, fresh)))
    assert fresh not in encode(change)
    joined = apply_change(replica, change)
    assert isinstance(joined, Registration) and joined.new
    # The node heartbeats with the token the origin gave it: the replica knows it by its digest.
    again = replica.register(3, "10.0.0.1", 4000, fresh, 2.0)
    assert not again.new
    with pytest.raises(TrackerError) as refused:
        replica.register(3, "10.0.0.1", 4000, "cd" * 16, 3.0)
    assert refused.value.status == 403


def test_a_tracker_reading_the_rows_drops_the_same_nodes_as_one_that_saw_every_change() -> None:
    """Epochs are saved with the rows: a tracker that starts later agrees on who is silent."""
    settings = Config(TRACKER_MISSED_CHECKS=2)
    old = SwarmState(settings, random.Random(0))
    old.track_epochs = True
    tokens = {n: old.register(n, "10.0.0.1", 1000 + n, None, 0.0).token for n in range(20)}
    for check in range(3):
        old.start_check(float(check))
        old.drop_silent()
        for n in range(20):
            if n % (check + 2) == 0 and n in old:
                old.register(n, "10.0.0.1", 1000 + n, tokens[n], float(check))
    nodes_doc, files_doc = old.snapshot()
    epochs = {n: old.epoch(n) for n in old.node_ids()}
    new = SwarmState(settings, random.Random(0))
    new.restore(nodes_doc, files_doc, 99.0, (old.checks, {n: e for n, e in epochs.items() if e is not None}))
    for check in range(3, 6):
        old.start_check(float(check))
        new.start_check(float(check))
        dropped_old, dropped_new = sorted(old.drop_silent()), sorted(new.drop_silent())
        assert dropped_old == dropped_new
    assert old.node_ids() == new.node_ids()


def test_redis_addresses_are_parsed_or_refused_with_the_reason() -> None:
    assert RedisAddress.parse("redis://10.1.2.3:7000/2") == RedisAddress("10.1.2.3", 7000, 2)
    assert RedisAddress.parse("redis://db.example") == RedisAddress("db.example", 6379, 0)
    assert RedisAddress.parse("redis://:secret@[::1]:7000/1") == RedisAddress("::1", 7000, 1, "secret")
    for bad, why in [("redis://h:99999/0", "(?i)port"), ("http://h/0", "redis://"), ("redis://h/x", "number")]:
        with pytest.raises(RedisConfigError, match=why):
            RedisAddress.parse(bad)


# ---------------------------------------------------------------- real processes on a real Redis


class Trackers(Daemons):
    """Tracker processes sharing one real redis-server; each with its own port, folder and log."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, fail=pytest.fail, search_path=False, ctl_timeout=30.0)
        self.redis = RedisServer(root / "redis")
        self.ports: dict[str, int] = {}

    def start_tracker(self, name: str, *extra: str, wait: bool = True) -> int:
        port = self.ports.setdefault(name, free_port())
        loaded = self.log(name).count("] loaded ")
        self.start(name, [
            "p2ptracker", "--listen", f"tcp:{port}:interface=127.0.0.1", "--store", self.redis.url,
            "--tracker-db-dir", str(self.root / name / "db"), "--logs-dir", str(self.root / name / "logs"), *extra,
        ])
        if wait:
            wait_for(lambda: connects(port) or self.check_alive(name), f"{name} listening")
            wait_for(lambda: self.log(name).count("] loaded ") > loaded or self.check_alive(name),
                     f"{name} read the Redis store")
        return port

    def log(self, name: str) -> str:
        path = self.root / name / "logs" / "tracker.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def api(self, name: str) -> TrackerAPI:
        return TrackerAPI(self.ports[name])

    def summary(self, name: str) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.ports[name], timeout=10)
        try:
            conn.request("GET", "/")
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def close(self) -> None:
        self.stop(grace=5)
        self.redis.stop()


@pytest.fixture
def trackers(tmp_path: Path) -> Iterator[Trackers]:
    t = Trackers(tmp_path)
    try:
        yield t
    finally:
        t.close()


def test_a_node_joins_through_one_tracker_and_is_found_through_the_other(trackers: Trackers) -> None:
    trackers.start_tracker("a")
    trackers.start_tracker("b")
    a, b = trackers.api("a"), trackers.api("b")
    h = info_hash(1)
    seeder = a.ok({"mode": 0, "node_id": 1, "port": 6001})
    assert seeder["new"] is True
    token = seeder["token"]
    # The token handed out by a is the node's token at b too; a wrong one is refused by both.
    assert b.ok({"mode": 0, "node_id": 1, "port": 6001, "token": token})["new"] is False
    for api in (a, b):
        assert api.call({"mode": 0, "node_id": 1, "port": 6001, "token": "0" * 32}) == (
            403, {"ok": False, "error": "wrong token for node 1"})
    b.ok({"mode": 1, "node_id": 1, "token": token, "info_hash": h, "name": "film.mkv", "length": 1234})
    leecher = b.ok({"mode": 0, "node_id": 2, "port": 6002})["token"]
    need = a.ok({"mode": 2, "node_id": 2, "token": leecher, "info_hash": h})
    assert need["name"] == "film.mkv"
    assert [(o["node_id"], o["port"]) for o in need["owners"]] == [(1, 6001)]
    # A credit through one is counted once, whichever tracker is asked again.
    assert a.ok({"mode": 3, "node_id": 2, "token": leecher, "info_hash": h, "uploaders": [1]})["credited"] == [1]
    assert b.ok({"mode": 3, "node_id": 2, "token": leecher, "info_hash": h, "uploaders": [1]})["credited"] == []
    assert b.ok({"mode": 2, "node_id": 2, "token": leecher, "info_hash": h})["owners"][0]["frequency"] == 1
    # Node 2 joins again through b: refused there as at a, for the same reason (it is known, with a token).
    assert b.call({"mode": 0, "node_id": 2, "port": 6002}) == (
        403, {"ok": False, "error": "node 2 is registered: its token is required"})
    b.ok({"mode": 4, "node_id": 1, "token": token})
    assert a.ok({"mode": 2, "node_id": 2, "token": leecher, "info_hash": h})["owners"] == []
    assert trackers.summary("a") == trackers.summary("b") == {"ok": True, "nodes": 1, "files": 0}
    state, counts = shared_state(trackers.redis.client, Config())
    assert state.node_ids() == [2] and counts["changes"] >= 8


def _get(port: int, path: str, accept: str = "application/json") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Accept": accept})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_every_tracker_of_a_shared_swarm_shows_it_on_its_page_api_and_metrics(trackers: Trackers) -> None:
    trackers.start_tracker("a")
    trackers.start_tracker("b")
    a, b = trackers.api("a"), trackers.api("b")
    h = info_hash(7)
    token = a.ok({"mode": 0, "node_id": 1, "port": 6001})["token"]
    b.ok({"mode": 1, "node_id": 1, "token": token, "info_hash": h, "name": "<b>film</b>.mkv", "length": 1234})
    for name in ("a", "b"):
        port = trackers.ports[name]
        nodes = json.loads(_get(port, "/api/nodes")[1])
        assert [(n["node_id"], n["port"], n["files"]) for n in nodes["nodes"]] == [(1, 6001, 1)]
        file = json.loads(_get(port, f"/api/files/{h}")[1])
        assert (file["name"], file["complete"], [o["node_id"] for o in file["owners"]["owners"]]) == (
            "<b>film</b>.mkv", 1, [1])
        # The events come from the shared log: both trackers saw the join and the new file.
        events = json.loads(_get(port, "/api/events")[1])["events"]
        assert [e["kind"] for e in events] == ["file", "join"]
        code, page = _get(port, "/", "text/html")
        assert code == 200 and "&lt;b&gt;film&lt;/b&gt;.mkv" in page and token not in page
        metrics = _get(port, "/metrics")[1]
        assert "p2ptracker_nodes 1.0" in metrics and "p2ptracker_files 1.0" in metrics
    assert 'p2ptracker_requests_total{mode="REGISTER",outcome="ok"} 1.0' in _get(trackers.ports["a"], "/metrics")[1]
    assert 'p2ptracker_requests_total{mode="OWN",outcome="ok"} 1.0' in _get(trackers.ports["b"], "/metrics")[1]


def test_a_tracker_killed_under_load_loses_nothing_it_acknowledged(trackers: Trackers) -> None:
    """Load through a; a is killed with SIGKILL at seeded random moments and started again, three times.

    What Redis holds (its rows and log, replayed by the test) has every
    acknowledged change; b, alive throughout, and a started again agree.
    """
    rng = random.Random(13)
    trackers.start_tracker("a", "--tracker-interval", "60")
    trackers.start_tracker("b", "--tracker-interval", "60")
    b = trackers.api("b")
    tokens: dict[int, str] = {}
    for node_id in (UPLOADER, OBSERVER, REAL_NODE):
        tokens[node_id] = b.ok({"mode": 0, "node_id": node_id, "port": 9000 + node_id})["token"]
    for h in FILES:
        b.ok({"mode": 1, "node_id": UPLOADER, "token": tokens[UPLOADER], "info_hash": h, "name": "f", "length": 1000})
    load = Load(trackers.api("a"), tokens)
    for _ in range(3):
        before = load.answered
        # Kill after a seeded number of answered requests (not after a time): the same on any machine.
        target = before + rng.randrange(20, 200)
        while load.answered < target:
            if not load.one():
                pytest.fail(f"a stopped answering before it was killed:\n{trackers.tail('a', 40)}")
        killed = threading.Event()

        def killer(killed: threading.Event = killed) -> None:
            trackers.kill("a")
            killed.set()

        # The kill lands while requests stream (one of them may be left in doubt).
        threading.Thread(target=killer, daemon=True).start()
        while not killed.is_set():
            load.one()
        load.api.close()
        state, _ = shared_state(trackers.redis.client, Config())
        nodes_doc, files_doc = state.snapshot()
        frequency = load.check_disk(nodes_doc, files_doc)
        load.settle(frequency)
        # b saw the same: the uploader's frequency through b's NEED, and the node counts.
        need = b.ok({"mode": 2, "node_id": OBSERVER, "token": tokens[OBSERVER], "info_hash": FILES[0]})
        assert {o["node_id"]: o["frequency"] for o in need["owners"]}[UPLOADER] == frequency
        assert trackers.summary("b")["nodes"] == state.summary()["nodes"]
        trackers.start_tracker("a", "--tracker-interval", "60")
        assert trackers.summary("a") == trackers.summary("b")
        assert "Traceback" not in trackers.log("a") + trackers.log("b")
    assert load.acked_updates > 0 and load.exited


def test_a_silent_node_is_dropped_once_by_one_check_that_every_tracker_applies(trackers: Trackers) -> None:
    fast = ("--tracker-interval", "0.5", "--set", "TRACKER_MISSED_CHECKS=1")
    trackers.start_tracker("a", *fast)
    trackers.start_tracker("b", *fast)
    a, b = trackers.api("a"), trackers.api("b")
    a.ok({"mode": 0, "node_id": 7, "port": 7007})
    b.ok({"mode": 0, "node_id": 8, "port": 7008})
    wait_for(lambda: trackers.summary("a")["nodes"] == trackers.summary("b")["nodes"] == 0, "both nodes dropped")
    state, counts = shared_state(trackers.redis.client, Config(TRACKER_MISSED_CHECKS=1), rows=False)
    assert counts["dropped"] == 2 and state.summary()["nodes"] == 0
    # Each drop is logged once, by the tracker that made the check (7 and 8 may fall to two checks).
    lines = {name: [line for line in trackers.log(name).splitlines() if "stopped heartbeating" in line]
             for name in ("a", "b")}
    logged = sorted(int(i) for found in lines.values() for line in found
                    for i in re.search(r" ids ([\d ]+)", line).group(1).split())  # type: ignore[union-attr]
    assert logged == [7, 8] and not (lines["a"] and lines["b"]), lines
    # One tracker made every check; the other made none while it lived.
    entries = [parse_entry(fields) for _, fields in trackers.redis.client.xrange(LOG)]
    origins = {origin for _, origin, text in entries if json.loads(text)["kind"] in ("check", "drop")}
    assert len(origins) == 1
    checker = "a" if "makes the liveness checks" in trackers.log("a") else "b"
    other = "b" if checker == "a" else "a"
    assert "makes the liveness checks" not in trackers.log(other)
    # The checker dies: the other takes the lease once it runs out, and drops the next silent node.
    trackers.kill(checker)
    trackers.api(other).ok({"mode": 0, "node_id": 9, "port": 7009})
    wait_for(lambda: "makes the liveness checks" in trackers.log(other), f"{other} taking over the checks")
    wait_for(lambda: trackers.summary(other)["nodes"] == 0, "node 9 dropped by the new checker")
    assert re.search(r"dropped 1 nodes .*ids 9\b", trackers.log(other))


def test_a_tracker_with_other_rules_than_the_swarm_refuses_to_join_it(trackers: Trackers) -> None:
    trackers.start_tracker("a")
    trackers.start_tracker("b", "--set", "TRACKER_MISSED_CHECKS=5", wait=False)
    proc = trackers.procs["b"]
    assert proc.wait(30) == 1  # refused before it forked: an exit status a supervisor sees
    said = trackers.tail("b")  # one line on stderr, as for any start twistd refuses
    assert "needs the same settings" in said and '"TRACKER_MISSED_CHECKS": 5' in said, said
    # The swarm is untouched: a still serves it.
    assert trackers.api("a").ok({"mode": 0, "node_id": 1, "port": 6001})["new"] is True


def test_a_tracker_that_cannot_reach_redis_says_so_and_exits(tmp_path: Path) -> None:
    d = Daemons(tmp_path, fail=pytest.fail, search_path=False)
    port = free_port()
    proc = d.start("t", ["p2ptracker", "--listen", f"tcp:{free_port()}:interface=127.0.0.1",
                         "--store", f"redis://127.0.0.1:{port}/0", "--tracker-db-dir", str(tmp_path / "db"),
                         "--logs-dir", str(tmp_path / "logs")])
    assert proc.wait(30) == 1
    assert f"cannot reach the store at redis://127.0.0.1:{port}/0" in d.tail("t"), d.tail("t")


# ---------------------------------------------------------------- in one process: rows, trimming, reading again


class LocalSwarms:
    """RedisSwarms in this process (on its reactor) sharing one real redis-server."""

    def __init__(self, folder: Path, settings: Config) -> None:
        self.server = RedisServer(folder / "redis")
        self.settings = settings
        self.swarms: list[RedisSwarm] = []

    async def started(self) -> RedisSwarm:
        from twisted.internet import reactor

        swarm = RedisSwarm(RedisAddress.parse(self.server.url), SwarmState(self.settings, random.Random(0)),
                           reactor, self.settings)
        self.swarms.append(swarm)
        await swarm.start()
        return swarm

    async def close(self) -> None:
        for swarm in self.swarms:
            await swarm.stop()
        self.server.stop()


async def settled(*swarms: RedisSwarm) -> None:
    """Until every tracker applied every change, the drops that follow a check included."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    for _ in range(1000):
        for swarm in swarms:
            await swarm.caught_up()
        if all(s._dropping is None and not (s.checker and s.state.has_silent()) for s in swarms):
            for swarm in swarms:
                await swarm.caught_up()
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("the trackers did not settle")


@pytest_twisted.ensureDeferred
async def test_the_checker_writes_rows_and_trims_the_log_and_a_new_tracker_reads_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:

    from p2ptorrent.tracker import redis_store

    monkeypatch.setattr(redis_store, "RETENTION_MS", 0)  # trim right up to the rows' position
    local = LocalSwarms(tmp_path, Config(TRACKER_MISSED_CHECKS=1))
    server, started = local.server, local.started
    try:
        a, b = await started(), await started()
        assert await a.check() is True and await b.check() is False  # one holder of the lease
        tokens = {}
        for n in range(40):
            joined = await (a if n % 2 else b).change(Register(n, 5000 + n, None), "10.0.0.1")
            assert isinstance(joined, Registration)
            tokens[n] = joined.token
        for n in range(0, 40, 3):
            await (b if n % 2 else a).change(Own(n, tokens[n], info_hash(n % 4), "f", 10), "10.0.0.1")
        await a.check()  # nodes that do not register again before the next check are dropped at it
        for n in range(20):
            await b.change(Register(n, 5000 + n, tokens[n]), "10.0.0.1")
        await a.caught_up()
        await b.caught_up()
        assert a.state.snapshot() == b.state.snapshot()
        total = server.client.xlen(LOG)
        await a.save()
        assert int(server.client.hget(redis_store.META, "seq")) == a.applied == total
        assert server.client.hlen(redis_store.NODES) == 40 and server.client.xlen(LOG) < total
        await b.save()  # b does not hold the lease: it writes nothing
        # A tracker started now reads the rows and the (trimmed) log after them, and agrees.
        c = await started()
        await c.caught_up()
        assert c.state.snapshot() == a.state.snapshot()
        assert {n: c.state.epoch(n) for n in range(40)} == {n: a.state.epoch(n) for n in range(40)}
        await a.check()
        await settled(a, c)
        assert c.state.node_ids() == a.state.node_ids() == list(range(20))
        # A tracker that lost its place (the log was trimmed before what it read) reads the rows again.
        await a.save()
        c.applied, c._applied_id = 0, "0-0"
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        try:
            try:
                joined = await c.change(Register(99, 5099, None), "10.0.0.2")
            except TrackerError as lost:
                # The change was in flight when the tracker found the gap: refused, to be sent again...
                assert lost.status == 503 and "read its store again" in lost.message
            else:
                # ... or Redis's answer to the append came after the rows were read again and the change
                # applied from the log after them (the two arrive on different connections).
                assert isinstance(joined, Registration)
        finally:
            globalLogPublisher.removeObserver(events.append)
        assert any("reading the rows again" in formatEvent(e) for e in events)
        await c.caught_up()
        await a.caught_up()
        assert c.state.snapshot() == a.state.snapshot() and 99 in c.state
    finally:
        await local.close()


def test_two_trackers_on_one_port_with_reuse_port_both_serve_the_swarm(trackers: Trackers) -> None:
    port = free_port()
    for name in ("a", "b"):
        trackers.ports[name] = port
        loaded = trackers.log(name).count("] loaded ")
        trackers.start(name, [
            "p2ptracker", "--host", "127.0.0.1", "--port", str(port), "--reuse-port", "--store", trackers.redis.url,
            "--tracker-db-dir", str(trackers.root / name / "db"), "--logs-dir", str(trackers.root / name / "logs"),
        ])
        wait_for(lambda name=name, loaded=loaded: trackers.log(name).count("] loaded ") > loaded
                 or trackers.check_alive(name), f"{name} read the Redis store")
    tokens = {}
    for node_id in range(1, 65):
        api = TrackerAPI(port)  # a new connection each time: the kernel picks a tracker for each
        tokens[node_id] = api.ok({"mode": 0, "node_id": node_id, "port": 6000 + node_id})["token"]
        api.close()
    joined = {name: set(map(int, re.findall(r"node (\d+) joined from", trackers.log(name)))) for name in ("a", "b")}
    assert joined["a"] and joined["b"], "the kernel gave every connection to one tracker"
    assert joined["a"] | joined["b"] == set(range(1, 65)) and not joined["a"] & joined["b"]
    # Whichever tracker answers, every node is known with its token.
    for node_id in range(1, 65):
        api = TrackerAPI(port)
        assert api.ok({"mode": 0, "node_id": node_id, "port": 6000 + node_id, "token": tokens[node_id]})["new"] is False
        api.close()


@pytest_twisted.ensureDeferred
async def test_a_new_checker_writes_every_row_and_trackers_follow_redis_when_it_lost_its_data(tmp_path: Path) -> None:

    from p2ptorrent.tracker import redis_store

    local = LocalSwarms(tmp_path, Config())
    server, started = local.server, local.started

    def rows() -> dict[str, str]:
        return server.client.hgetall(redis_store.NODES)

    try:
        a, b = await started(), await started()
        assert await a.check() is True
        tokens = {}
        for n in range(30):
            joined = await b.change(Register(n, 5000 + n, None), "10.0.0.1")
            assert isinstance(joined, Registration)
            tokens[n] = joined.token
        await a.caught_up()  # (the rows a writes are those of the changes it applied)
        await a.save()
        assert len(rows()) == 30
        # Changes b noted while it was not the checker are not kept (its memory would grow with churn).
        for n in range(10):
            await a.change(Exit(n, tokens[n]), "10.0.0.1")
        await b.caught_up()
        await b.save()
        assert not b.state.dirty and len(rows()) == 30
        # a goes; b takes the lease and writes every row in place of what is there.
        await a.stop()
        local.swarms.remove(a)
        assert await b.check() is True
        await b.caught_up()
        await b.save()
        assert sorted(map(int, rows())) == list(range(10, 30))
        assert int(server.client.hget(redis_store.META, "seq")) == b.applied
        # Redis loses everything (a FLUSHALL stands for a restart without its files): b starts over with it.
        server.client.flushall()
        c = await started()
        joined = await c.change(Register(77, 5077, None), "10.0.0.3")
        assert isinstance(joined, Registration) and joined.new
        await b.caught_up()
        assert b.state.node_ids() == [77] == c.state.node_ids()
    finally:
        await local.close()


@pytest_twisted.ensureDeferred
async def test_while_redis_is_away_changes_are_refused_and_the_tracker_goes_on_once_it_is_back(tmp_path: Path) -> None:
    """Redis killed (SIGKILL) and started again on its append-only file: in between a change fails (the HTTP
    layer answers 503), nothing is half done; after, the same trackers go on and agree."""
    local = LocalSwarms(tmp_path, Config())
    try:
        a, b = await local.started(), await local.started()
        joined = await a.change(Register(1, 5001, None), "10.0.0.1")
        assert isinstance(joined, Registration)
        local.server.kill()
        with pytest.raises(Exception) as away:
            await a.change(Register(2, 5002, None), "10.0.0.1")
        assert not isinstance(away.value, TrackerError) or away.value.status == 503
        local.server.start()
        # txredisapi connects again by itself; the first tries may still find the old connection gone.
        for _ in range(200):
            try:
                again = await b.change(Register(3, 5003, None), "10.0.0.2")
                break
            except Exception:
                from twisted.internet import reactor
                from twisted.internet.task import deferLater

                await deferLater(reactor, 0.05, lambda: None)
        else:
            raise AssertionError("the tracker did not reach Redis again")
        assert isinstance(again, Registration) and again.new
        await settled(a, b)
        assert a.state.snapshot() == b.state.snapshot()
        assert 1 in a.state and 3 in a.state and 2 not in b.state
    finally:
        await local.close()
