"""The real tracker and real nodes in one reactor, over loopback sockets.

Tracker + 3 seeders + 1 downloader move a random multi-megabyte file; the
same through a lossy, duplicating, reordering transport; a seeder that stops
mid-download; every owner gone.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from gates import watch_verdicts
from p2ptorrent.metainfo import read_torrent
from p2ptorrent.node import tap as node_tap
from p2ptorrent.node.service import CommandFailed, Node
from p2ptorrent.tracker import tap as tracker_tap

MIB = 1024 * 1024


class Cluster:
    def __init__(self, tmp: Path, extra: list[str] | None = None) -> None:
        self.tmp = tmp
        self.extra = extra or []
        self.services: list[Any] = []
        self.tracker_port = 0

    async def start_tracker(self, port: int = 0) -> None:
        opts = tracker_tap.Options()
        opts.parseOptions([
            "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--tracker-db-dir", str(self.tmp / "tracker_db"),
            "--logs-dir", str(self.tmp / "logs"),
        ])
        svc = tracker_tap.makeService(opts, reactor)
        svc.privilegedStartService()
        svc.startService()
        self.services.append(svc)
        port = await svc.getServiceNamed("http").listening()
        self.tracker_port = port.getHost().port

    def node(self, node_id: int) -> Node:
        opts = node_tap.Options()
        opts.parseOptions([
            "--id", str(node_id),
            "--interface", "127.0.0.1",
            "--tracker", f"127.0.0.1:{self.tracker_port}",
            "--node-files-dir", str(self.tmp / "nf"),
            "--logs-dir", str(self.tmp / "logs"),
            "--no-stdin",
            *self.extra,
        ])
        svc = node_tap.makeService(opts, reactor)
        svc.stop_process = None  # the test, not the node, ends the reactor
        svc.privilegedStartService()
        svc.startService()
        self.services.append(svc)
        return svc

    async def stop(self) -> None:
        for svc in reversed(self.services):
            if svc.running:
                await defer.maybeDeferred(svc.stopService)


@pytest.fixture
def cluster(tmp_path: Path):  # type: ignore[no-untyped-def]
    c = Cluster(tmp_path)
    yield c
    pytest_twisted.blockon(defer.ensureDeferred(c.stop()))


def _file(path: Path, size: int, seed: int = 5) -> str:
    data = random.Random(seed).randbytes(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


async def _registered(node: Node) -> None:
    await _until(lambda: node.client is not None and bool(node.client.token), f"node {node.node_id} to register")


def _sleep(seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


async def _until(check: Callable[[], bool], what: str, seconds: float = 60.0) -> None:
    """Poll *check* every 10 ms; fail after *seconds* (a guard against a hang, not a speed limit)."""
    deadline = reactor.seconds() + seconds
    while not check():
        if reactor.seconds() > deadline:
            raise AssertionError(f"{what}: not seen in {seconds:.0f} s")
        await _sleep(0.01)


async def _seeders(cluster: Cluster, n: int, size: int) -> tuple[list[Node], str, Path]:
    await cluster.start_tracker()
    want = ""
    seeders = []
    for i in range(1, n + 1):
        want = _file(cluster.tmp / "nf" / str(i) / "data.bin", size)
        node = cluster.node(i)
        await _registered(node)
        message = await node.send("data.bin")
        assert "seeding data.bin" in message and "announced to the tracker" in message
        seeders.append(node)
    return seeders, want, cluster.tmp / "nf" / "1" / "data.bin.torrent"


def _lossy(node: Node, rng: random.Random, loss: float = 0.05, dup: float = 0.02, reorder: float = 0.1) -> dict[str, int]:
    """Make the node's UDP path lose, duplicate and reorder datagrams in both directions."""
    proto = node.protocol
    stats = {"lost": 0, "dup": 0, "late": 0}
    real_write = proto.transport.write
    real_receive = proto.datagramReceived

    def mangle(deliver: Any, data: bytes, addr: Any) -> None:
        if rng.random() < loss:
            stats["lost"] += 1
            return
        copies = 2 if rng.random() < dup else 1
        stats["dup"] += copies - 1
        for _ in range(copies):
            if rng.random() < reorder:
                stats["late"] += 1
                reactor.callLater(rng.random() * 0.05, deliver, data, addr)
            else:
                deliver(data, addr)

    proto.transport.write = lambda data, addr: mangle(real_write, data, addr)
    proto.datagramReceived = lambda data, addr: mangle(real_receive, data, addr)
    # The node's port sends runs and reads batches: every datagram of them goes through the same mangling.
    proto.transport.write_many = lambda run, addr: (len([mangle(real_write, d, addr) for d in run]), 0)

    def batch(data: memoryview, segment: int, addr: Any) -> None:
        for at in range(0, len(data), segment):
            mangle(real_receive, bytes(data[at : at + segment]), addr)

    proto.datagramsReceived = batch
    return stats


@pytest_twisted.ensureDeferred
async def test_three_seeders_one_downloader(cluster: Cluster) -> None:
    seeders, want, torrent = await _seeders(cluster, 3, 6 * MIB + 4321)
    downloader = cluster.node(4)
    await _registered(downloader)
    progress: list[dict[str, Any]] = []
    message = await downloader.download(str(torrent), progress.append)
    out = cluster.tmp / "nf" / "4" / "data.bin"
    assert hashlib.sha256(out.read_bytes()).hexdigest() == want
    assert "and the whole file (SHA-256) verified" in message
    for i in (1, 2, 3):
        assert f"node {i}:" in message
    assert progress and progress[-1]["done"] == progress[-1]["total"] == 6 * MIB + 4321
    # The tracker credited every uploader and now lists the downloader as an owner.
    state = cluster.services[0].tracker.state
    nodes, files = state.snapshot()
    assert {n["node_id"]: n["frequency"] for n in nodes["nodes"]} == {1: 1, 2: 1, 3: 1, 4: 0}
    [shared] = files["files"]
    assert shared["info_hash"] == next(iter(seeders[0].seeder.files)).hex()
    assert shared["owners"] == [1, 2, 3, 4]
    # Downloading again finds the verified file in place.
    again = await downloader.download(str(torrent), progress.append)
    assert "already complete" in again


@pytest_twisted.ensureDeferred
async def test_lossy_path(cluster: Cluster) -> None:
    _, want, torrent = await _seeders(cluster, 3, 3 * MIB)
    downloader = cluster.node(4)
    await _registered(downloader)
    stats = _lossy(downloader, random.Random(11))
    await downloader.download(str(torrent), lambda p: None)
    out = cluster.tmp / "nf" / "4" / "data.bin"
    assert hashlib.sha256(out.read_bytes()).hexdigest() == want
    assert stats["lost"] > 10 and stats["dup"] > 0 and stats["late"] > 0


@pytest.mark.parametrize("batching", [1, 0])
@pytest_twisted.ensureDeferred
async def test_kernel_batching_and_the_plain_path_both_move_a_file_identical(cluster: Cluster, batching: int) -> None:
    """Over real UDP sockets: with UDP_BATCHING=1 the seeder sends runs of blocks in one GSO call each and the
    downloader reads them coalesced (GRO); with 0 both go one datagram per call.  The file is the same."""
    cluster.extra = ["--set", f"UDP_BATCHING={batching}"]
    [seeder], want, torrent = await _seeders(cluster, 1, 8 * MIB + 777)
    downloader = cluster.node(2)
    await _registered(downloader)
    await downloader.download(str(torrent), lambda p: None)
    assert hashlib.sha256((cluster.tmp / "nf" / "2" / "data.bin").read_bytes()).hexdigest() == want
    up, down = seeder.status()["batching"], downloader.status()["batching"]
    if batching:
        assert up["gso"] and down["gro"], (up, down)  # this kernel offers both (Linux 4.18 and later)
        assert up["gso_datagrams"] > 2 * up["gso_sends"] > 0  # runs, not single datagrams
        assert down["gro_datagrams"] > 2 * down["gro_reads"] > 0
    else:
        assert not (up["gso"] or up["gro"] or down["gso"] or down["gro"])
        assert up["gso_sends"] == down["gro_reads"] == 0
    assert down["receive_buffer_drops"] == 0


@pytest_twisted.ensureDeferred
async def test_seeder_stops_mid_download(cluster: Cluster) -> None:
    cluster.extra = ["--set", "PEER_TIMEOUT=1"]
    seeders, want, torrent = await _seeders(cluster, 3, 24 * MIB)
    downloader = cluster.node(4)
    await _registered(downloader)
    verified: list[int] = []

    def first_piece(piece: int, ok: bool) -> None:
        if not ok:
            return
        verified.append(piece)
        if len(verified) == 1:
            # The first piece verified (of 96, while every seeder owes blocks): pull the plug on
            # seeder 1 (its UDP port closes).  A point in the file, not in time: mid-download on any machine.
            seeders[0].udp.listening.stopListening()

    downloader.make_writer = watch_verdicts(downloader.make_writer, first_piece)
    message = await downloader.download(str(torrent), lambda p: None)
    out = cluster.tmp / "nf" / "4" / "data.bin"
    assert hashlib.sha256(out.read_bytes()).hexdigest() == want
    # Mid-download: the plug was pulled at the first piece verified, and every other piece came after it.
    assert sorted(verified) == list(range(read_torrent(torrent).num_pieces)), verified
    assert "node 2:" in message and "node 3:" in message


@pytest_twisted.ensureDeferred
async def test_every_owner_gone(cluster: Cluster) -> None:
    cluster.extra = ["--set", "PEER_TIMEOUT=1", "--set", "REQUEST_TIMEOUT=0.2"]
    seeders, _, torrent = await _seeders(cluster, 2, 4 * MIB)
    for s in seeders:
        s.udp.listening.stopListening()
    downloader = cluster.node(4)
    await _registered(downloader)
    with pytest.raises(CommandFailed, match="gone|unreachable"):
        await downloader.download(str(torrent), lambda p: None)
    folder = cluster.tmp / "nf" / "4"
    assert not (folder / "data.bin").exists()
    assert not any((folder / ".incomplete").iterdir())
