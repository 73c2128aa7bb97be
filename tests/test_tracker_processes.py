"""The tracker as a real `twistd -n p2ptracker` process: SIGKILL in a loop, and outages (issue 3, items 10, 11, 18).

Load is plain HTTP from the test (http.client), one request at a time, so at
any moment at most one request is "in doubt" (sent, never answered).  A kill
comes at a seeded random moment from a second thread while requests stream.
Only what the processes write is judged: their output, tracker.log, and
what the tracker saved on disk (tracker.db, read as nodes.json / files.json
documents; the JSON snapshots beside it must be whole whenever they exist).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import re
import shutil
import signal
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest

from p2ptorrent.metainfo import read_torrent
from p2ptorrent.procs import Daemons, connects, free_port
from p2ptorrent.procs import wait_for as _wait_for
from p2ptorrent.tracker.sqlite_store import read_docs

wait_for = partial(_wait_for, timeout=20.0, fail=pytest.fail)

#: The real node's heartbeat interval in these tests (seconds).
NODE_INTERVAL = 1.0
#: Allowance on top of NODE_INTERVAL for the test to notice a check-in (it polls every 20 ms).
NOTICE = 1.0


class TrackerAPI:
    """One keep-alive HTTP/1.1 connection to the tracker; None for "no answer"."""

    def __init__(self, port: int, host: str = "127.0.0.1", source: str | None = None) -> None:
        self.port = port
        self.host = host
        self.source = source
        self.conn: http.client.HTTPConnection | None = None

    def call(self, doc: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        body = json.dumps(doc).encode()
        try:
            if self.conn is None:
                source = (self.source, 0) if self.source else None
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=5, source_address=source)
            self.conn.request("POST", "/", body, {"Content-Type": "application/json"})
            response = self.conn.getresponse()
            return response.status, json.loads(response.read())
        except (OSError, http.client.HTTPException, ValueError):
            self.close()
            return None

    def ok(self, doc: dict[str, Any]) -> dict[str, Any]:
        answer = self.call(doc)
        assert answer is not None and answer[0] == 200, (doc, answer)
        return answer[1]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Cluster(Daemons):
    """A tracker that can be killed and started again on the same port and database, and nodes."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, fail=pytest.fail, search_path=False, ctl_timeout=30.0)
        self.port = free_port()
        self.db = root / "tracker_db"
        self.logs = root / "logs"
        self.starts = 0

    def start_tracker(self, *extra: str) -> float:
        """Start the tracker; returns the monotonic time it was first seen accepting connections."""
        self.starts += 1
        self.start("tracker", [
            "p2ptracker", "--listen", f"tcp:{self.port}:interface=127.0.0.1",
            "--tracker-db-dir", str(self.db), "--logs-dir", str(self.logs), *extra,
        ])
        deadline = time.monotonic() + 20
        while not connects(self.port):
            self.check_alive("tracker")
            if time.monotonic() > deadline:
                pytest.fail(f"the tracker did not listen within 20 s:\n{self.tail('tracker')}")
            time.sleep(0.02)
        return time.monotonic()

    def kill_tracker(self) -> None:
        proc = self.procs["tracker"]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def tracker_output(self) -> str:
        """What the running (or last) tracker process printed: one start's worth."""
        return (self.root / "tracker.out").read_text(errors="replace")

    def start_node(self, node_id: int, *extra: str) -> None:
        name = f"node{node_id}"
        self.start(name, [
            "p2pnode", "--id", str(node_id), "--node-files-dir", str(self.nodes_dir), "--logs-dir", str(self.logs),
            "--tracker", f"127.0.0.1:{self.port}", "--no-stdin", "--interface", "127.0.0.1",
            "--node-interval", str(NODE_INTERVAL), *extra,
        ])
        sock = self.nodes_dir / str(node_id) / ".control.sock"
        wait_for(sock.exists, f"node {node_id}'s control socket", alive=lambda: self.check_alive(name))

    def saved(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """What the tracker has saved: tracker.db, as nodes.json/files.json documents.  The JSON snapshots
        beside it, where written yet, must be whole JSON (they are written atomically), also after a kill."""
        for name in ("nodes.json", "files.json"):
            try:
                data = (self.db / name).read_bytes()
            except FileNotFoundError:
                continue
            try:
                json.loads(data)
            except ValueError as e:
                pytest.fail(f"{name} is not whole JSON after a kill ({e}): {data[:200]!r}...")
        return read_docs(self.db)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop(grace=5)


def info_hash(n: int) -> str:
    return hashlib.sha1(b"file %d" % n).hexdigest()


def wait_in_output(cluster: Cluster, pattern: str, what: str, timeout: float = 10.0) -> float:
    """Poll the tracker's output every 20 ms for *pattern*; the monotonic time it was seen."""
    deadline = time.monotonic() + timeout
    while True:
        if re.search(pattern, cluster.tracker_output()):
            return time.monotonic()
        cluster.check_alive("tracker")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not seen in {timeout} s; the tracker printed:\n{cluster.tail('tracker', 40)}")
        time.sleep(0.02)


# ---------------------------------------------------------------- 10: SIGKILL in a loop


FILES = [info_hash(n) for n in range(10)]
UPLOADER, OBSERVER, REAL_NODE = 1, 2, 9


class Load:
    """Downloaders that join, credit the uploader for each of FILES, own them, and leave.

    Keeps a model of what the tracker acknowledged, to compare with the disk.
    """

    def __init__(self, api: TrackerAPI, tokens: dict[int, str]) -> None:
        self.api = api
        self.tokens = tokens
        self.next_id = 100
        self.current: int | None = None  # the downloader at work (its REGISTER was acknowledged)
        self.step = 0  # FILES[step] is next: UPDATE, then OWN; after the last one, EXIT
        self.updated = False  # the UPDATE of FILES[step] was sent (acknowledged or not)
        self.owned: set[str] = set()  # acknowledged OWNs of the current downloader
        self.credited: set[str] = set()  # acknowledged credits of the current downloader
        self.exited: set[int] = set()  # acknowledged EXITs
        self.acked_updates = 0  # acknowledged UPDATEs (each credited the uploader once)
        self.in_doubt_updates = 0  # UPDATEs sent and never answered
        self.requests = 0
        self.answered = 0

    def send(self, doc: dict[str, Any]) -> dict[str, Any] | None:
        self.requests += 1
        answer = self.api.call(doc)
        if answer is None:
            return None
        self.answered += 1
        status, body = answer
        assert status == 200, f"{doc} refused: {status} {body} (an acknowledged change lost in a restart?)"
        return body

    def one(self) -> bool:
        """One request; False when it got no answer.  Nothing in doubt is ever sent again."""
        if self.current is None:
            node_id = self.next_id
            self.next_id += 1
            body = self.send({"mode": 0, "node_id": node_id, "port": 20000 + node_id % 40000})
            if body is None:
                return False  # maybe registered, with a token we never learnt: not used again
            assert body["new"] is True
            self.tokens[node_id] = body["token"]
            self.current, self.step, self.updated = node_id, 0, False
            self.owned, self.credited = set(), set()
            return True
        me, token = self.current, self.tokens[self.current]
        if self.step == len(FILES):
            body = self.send({"mode": 4, "node_id": me, "token": token})
            self.current = None
            if body is None:
                return False
            self.exited.add(me)
            return True
        h = FILES[self.step]
        if not self.updated:
            self.updated = True
            body = self.send({"mode": 3, "node_id": me, "token": token, "info_hash": h, "uploaders": [UPLOADER]})
            if body is None:
                self.in_doubt_updates += 1
                return False
            assert body["credited"] == [UPLOADER], body
            self.acked_updates += 1
            self.credited.add(h)
            return True
        self.step, self.updated = self.step + 1, False
        body = self.send({"mode": 1, "node_id": me, "token": token, "info_hash": h, "name": "f", "length": 1000})
        if body is None:
            return False
        self.owned.add(h)
        return True

    def check_disk(self, nodes_doc: dict[str, Any], files_doc: dict[str, Any]) -> int:
        """Every acknowledged change is in the database; returns the uploader's saved frequency."""
        nodes = {n["node_id"]: n for n in nodes_doc["nodes"]}
        files = {f["info_hash"]: f for f in files_doc["files"]}
        assert {UPLOADER, OBSERVER, REAL_NODE} <= nodes.keys(), sorted(nodes)
        frequency = int(nodes[UPLOADER]["frequency"])
        assert self.acked_updates <= frequency <= self.acked_updates + self.in_doubt_updates, (
            f"uploader frequency {frequency} on disk, {self.acked_updates} UPDATEs acknowledged, "
            f"{self.in_doubt_updates} in doubt"
        )
        assert not self.exited & nodes.keys(), "an acknowledged EXIT was lost"
        assert all(UPLOADER in files[h]["owners"] for h in FILES)
        if self.current is not None:
            assert self.current in nodes, "an acknowledged REGISTER was lost"
            for h in self.owned:
                assert self.current in files[h]["owners"], "an acknowledged OWN was lost"
            for h in self.credited:
                given = {c["downloader"]: c["uploaders"] for c in files[h]["credits"]}
                assert given.get(self.current) == [UPLOADER], "an acknowledged credit was lost"
        return frequency

    def settle(self, frequency: int) -> None:
        """The restarted tracker's answer decides the UPDATEs that were in doubt."""
        self.acked_updates, self.in_doubt_updates = frequency, 0


def run_kill_loop(cluster: Cluster, kills: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    figures: dict[str, Any] = {"kills": 0, "mid_save": 0, "check_in": []}
    # A long liveness interval: here only kills, never liveness, may drop anyone.
    tracker_args = ("--tracker-interval", "60")
    cluster.start_tracker(*tracker_args)
    api = TrackerAPI(cluster.port)
    tokens: dict[int, str] = {}
    for node_id in (UPLOADER, OBSERVER):
        tokens[node_id] = api.ok({"mode": 0, "node_id": node_id, "port": 9000 + node_id})["token"]
    for h in FILES:
        api.ok({"mode": 1, "node_id": UPLOADER, "token": tokens[UPLOADER], "info_hash": h, "name": "f", "length": 1000})
    cluster.start_node(REAL_NODE)
    wait_in_output(cluster, rf"node {REAL_NODE} joined from", "the real node's first REGISTER")
    wait_for(lambda: REAL_NODE in {n["node_id"] for n in cluster.saved()[0]["nodes"]}, "the real node in nodes.json")
    load = Load(api, tokens)
    up = time.monotonic()

    def check_in_after(up: float) -> float:
        """Seconds from the restarted tracker listening to the real node's first heartbeat to it."""
        seen = wait_in_output(cluster, rf"node {REAL_NODE} checked in again", "the real node's check-in")
        took = seen - up
        figures["check_in"].append(took)
        assert took <= NODE_INTERVAL + NOTICE, (
            f"the real node checked in {took:.2f} s after restart {cluster.starts - 1}: "
            f"more than one heartbeat interval ({NODE_INTERVAL} s)"
        )
        return took

    for n in range(kills):
        # Requests stream from this thread; another one kills the tracker at a seeded random
        # moment, after the real node has checked in (so every restart is measured).
        delay = rng.uniform(0.02, 0.5)
        killed = threading.Event()
        failed: list[BaseException] = []

        def killer(
            up: float = up, delay: float = delay, n: int = n,
            failed: list[BaseException] = failed, killed: threading.Event = killed,
        ) -> None:
            try:
                if n > 0:
                    check_in_after(up)
                time.sleep(max(0.0, up + delay - time.monotonic()))
            except BaseException as e:  # pytest.fail in this thread: report it in the main one
                failed.append(e)
            finally:
                cluster.procs["tracker"].send_signal(signal.SIGKILL)
                killed.set()

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        while not killed.is_set():
            if not load.one() and not killed.wait(2.0):
                pytest.fail(f"the tracker stopped answering before it was killed:\n{cluster.tail('tracker', 40)}")
        thread.join(30)
        if failed:
            raise failed[0]
        cluster.procs["tracker"].wait(10)
        api.close()  # the last request may have been answered just before the kill: its connection is dead
        figures["kills"] += 1
        assert "Traceback" not in cluster.tracker_output(), cluster.tail("tracker", 60)

        # After the kill: both files whole, every acknowledged change in them.
        if any(cluster.db.glob(".*.tmp")):
            figures["mid_save"] += 1
        frequency = load.check_disk(*cluster.saved())

        # Restart: it loads whole files without complaint and serves what it acknowledged.
        up = cluster.start_tracker(*tracker_args)
        # The port may accept connections before the line is in the output file: wait for it, not for time.
        wait_in_output(cluster, r"loaded \d+ nodes and \d+ files from", f"restart {cluster.starts - 1} loading the database")
        out = cluster.tracker_output()
        for complaint in ("corrupt", "database:", "could not save", "Traceback", "Unhandled"):
            assert complaint not in out, f"{complaint!r} after restart {cluster.starts - 1}:\n{out}"
        owners = api.ok({"mode": 2, "node_id": OBSERVER, "token": tokens[OBSERVER], "info_hash": FILES[0]})["owners"]
        assert {o["node_id"]: o["frequency"] for o in owners}[UPLOADER] == frequency
        load.settle(frequency)

    check_in_after(up)  # the last restart too
    figures.update(
        requests=load.requests, answered=load.answered, acked_updates=load.acked_updates,
        downloaders=load.next_id - 100, exits=len(load.exited),
    )
    # Tokens are secrets: never in the log, never in the database.
    text = (cluster.logs / "tracker.log").read_text() + "".join(p.read_text() for p in cluster.db.glob("*.json"))
    for token in tokens.values():
        assert token not in text
    cluster.check_alive(f"node{REAL_NODE}")
    return figures


@pytest.mark.parametrize(
    "kills", [pytest.param(6, id="6-kills"), pytest.param(50, id="50-kills", marks=pytest.mark.slow)]
)
def test_sigkill_in_a_loop_loses_no_acknowledged_change(cluster: Cluster, kills: int) -> None:
    figures = run_kill_loop(cluster, kills, seed=2024 + kills)
    check_in = figures["check_in"]
    print(f"\nkill loop: {figures['kills']} SIGKILLs ({figures['mid_save']} left a save half done), "
          f"{figures['requests']} requests, {figures['answered']} answered, "
          f"{figures['acked_updates']} credits acknowledged and all found after the restarts, "
          f"{figures['downloaders']} downloaders joined, {figures['exits']} left; the real node checked in "
          f"{min(check_in):.2f}-{max(check_in):.2f} s after each restart (mean {sum(check_in) / len(check_in):.2f} s)")
    assert figures["kills"] == kills and len(check_in) == kills
    assert figures["acked_updates"] > kills


# ---------------------------------------------------------------- 11: the tracker down for a while


def test_a_node_rides_out_tracker_outages_and_announces_again(cluster: Cluster) -> None:
    cluster.start_tracker()
    api = TrackerAPI(cluster.port)
    observer = api.ok({"mode": 0, "node_id": OBSERVER, "port": 9002})["token"]
    folder = cluster.nodes_dir / "1"
    folder.mkdir(parents=True)
    (folder / "payload.bin").write_bytes(random.Random(11).randbytes(300_000))
    cluster.start_node(1, "--log-level", "debug")  # every failed heartbeat, not just the first of an outage
    said = cluster.ok(1, "send", str(folder / "payload.bin"))
    assert "announced to the tracker" in said, said
    h = read_torrent(folder / "payload.bin.torrent").info_hash_hex
    node_log = cluster.logs / "node_1.log"

    def owners(token: str) -> list[int]:
        answer = api.ok({"mode": 2, "node_id": OBSERVER, "token": token, "info_hash": h})
        return [o["node_id"] for o in answer["owners"]]

    assert owners(observer) == [1]

    def outage(lose_database: bool) -> float:
        """Kill the tracker, keep it down for two of the node's heartbeats, start it again; when it listened.

        Down for two heartbeats, counted in the node's log rather than timed: a
        slow machine's node may beat late, and the outage lasts as long as it takes.
        """
        mark = len(node_log.read_text())
        cluster.kill_tracker()
        api.close()
        if lose_database:
            shutil.rmtree(cluster.db)
        failed = f"heartbeat failed: tracker at http://127.0.0.1:{cluster.port} did not answer REGISTER"
        # The node lives on: it logs each failed heartbeat (the first of an outage at warn, the others at
        # debug), every interval, and answers commands.
        wait_for(lambda: node_log.read_text()[mark:].count(failed) >= 2, "two failed heartbeats while the tracker is down",
                 alive=lambda: cluster.check_alive("node1"))
        assert json.loads(cluster.ok(1, "status", "--json"))["node_id"] == 1
        return cluster.start_tracker()

    # 1. The tracker comes back with its database: the node checks in within one interval and
    #    still owns its file there.
    up = outage(lose_database=False)
    took = wait_in_output(cluster, r"node 1 checked in again", "node 1's check-in") - up
    assert took <= NODE_INTERVAL + NOTICE
    assert owners(observer) == [1]

    # 2. The tracker comes back with nothing (a new disk): the node joins afresh within one
    #    interval and sends its OWN again by itself.
    mark = len(node_log.read_text())
    up = outage(lose_database=True)
    joined = wait_in_output(cluster, r"node 1 joined from", "node 1 joining the new tracker") - up
    assert joined <= NODE_INTERVAL + NOTICE
    wait_in_output(cluster, rf"node 1 owns {h} \(payload\.bin, 300000 bytes\)", "node 1's OWN sent again")
    observer = api.ok({"mode": 0, "node_id": OBSERVER, "port": 9002})["token"]
    assert owners(observer) == [1]
    after = node_log.read_text()[mark:]
    for needle in ("registered with the tracker", "announcing what we share", f"OWN payload.bin ({h}) announced"):
        assert needle in after, after
    assert json.loads(cluster.ok(1, "status", "--json"))["registered"] is True

    # Errors were logged, never raised: nothing unhandled in the node's output.
    out = (cluster.root / "node1.out").read_text()
    for bad in ("Traceback", "Unhandled", "heartbeat loop stopped"):
        assert bad not in out, out
    print(f"\noutage: node back {took:.2f} s after a restart with the database, "
          f"joined again {joined:.2f} s after a restart without it")


# ---------------------------------------------------------------- 18: a flood of joins from one address


@pytest.mark.slow  # ~10 s; tests/test_tracker_hostile.py floods the same code in memory in every run
def test_a_real_tracker_flooded_with_joins_from_one_address_stays_small_and_serves_others(cluster: Cluster) -> None:
    cluster.start_tracker()
    tracker = psutil.Process(cluster.procs["tracker"].pid)
    api = TrackerAPI(cluster.port)
    codes: dict[int, int] = {}
    rss: dict[int, int] = {}
    started = time.monotonic()
    for n in range(10_000):
        answer = api.call({"mode": 0, "node_id": 1000 + n, "port": 9000})
        assert answer is not None, cluster.tail("tracker")
        codes[answer[0]] = codes.get(answer[0], 0) + 1
        if n in (999, 9999):
            rss[n] = tracker.memory_info().rss
    seconds = time.monotonic() - started
    assert codes == {200: 256, 429: 10_000 - 256}
    saved, _ = cluster.saved()
    assert len(saved["nodes"]) == 256
    # Another address is served at once (the whole of 127.0.0.0/8 is this machine's loopback).
    other = TrackerAPI(cluster.port, source="127.0.0.2").ok({"mode": 0, "node_id": 7, "port": 9007})
    assert (other["new"], other["host"]) == (True, "127.0.0.2")
    growth = rss[9999] - rss[999]
    log_lines = (cluster.logs / "tracker.log").read_text().count("\n")
    print(f"\nreal flood: 10,000 REGISTERs in {seconds:.1f} s, {codes}; tracker RSS {rss[999] >> 10} KiB after 1,000, "
          f"{rss[9999] >> 10} KiB after 10,000 ({growth / 1024:+.0f} KiB); tracker.log {log_lines} lines")
    assert growth < 2 * 1024 * 1024
    assert log_lines < 256 + 100
