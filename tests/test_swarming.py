"""Swarming, with the real tracker and real nodes in one reactor over loopback sockets.

1 seeder and 8 nodes start downloading a 32 MiB file together: every copy is
identical, the seeder uploads at most twice the file (the rest flows between
the nodes, which serve the pieces they have verified while they download),
and a node that comes after the seeder has left completes from the others.
A node restarted mid-download serves the pieces it had verified.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol

from p2ptorrent import wire
from p2ptorrent.node.service import Node
from test_loopback import Cluster, _registered, _seeders, _sleep, cluster  # noqa: F401  (the fixture)

MIB = 1024 * 1024
SIZE = 32 * MIB
NODES = range(2, 10)


def _uploaded(node: Node) -> int:
    return sum(f.uploaded for f in node.seeder.files.values())


@pytest_twisted.ensureDeferred
async def test_one_seeder_feeds_eight_nodes_that_share_among_themselves(cluster: Cluster) -> None:
    [seeder], want, torrent = await _seeders(cluster, 1, SIZE)
    nodes = [cluster.node(i) for i in NODES]
    for node in nodes:
        await _registered(node)
    statuses: list[dict[str, Any]] = []

    async def watch() -> None:
        # While they download, status shows pieces, peers, rates and who sends what.
        while len(statuses) < 400 and not all(d.called for d in downloads):
            for n in nodes:
                for job in n.status()["downloading"]:
                    statuses.append(job)
            await _sleep(0.25)

    downloads = [defer.ensureDeferred(_download(n, torrent)) for n in nodes]
    watcher = defer.ensureDeferred(watch())
    messages = await defer.gatherResults(downloads, consumeErrors=True)
    await watcher
    for i, message in zip(NODES, messages):
        out = cluster.tmp / "nf" / str(i) / "data.bin"
        assert hashlib.sha256(out.read_bytes()).hexdigest() == want, message
    seeder_up = _uploaded(seeder)
    from_nodes = {n.node_id: _uploaded(n) for n in nodes}
    print(f"\nseeder uploaded {seeder_up / SIZE:.2f} x the file; nodes uploaded {[round(v / SIZE, 2) for v in from_nodes.values()]} x")
    assert seeder_up <= 2 * SIZE, f"the seeder uploaded {seeder_up / SIZE:.2f} x the file"
    assert sum(from_nodes.values()) >= 8 * SIZE - seeder_up
    assert sum(1 for v in from_nodes.values() if v > 0) >= 6  # most nodes served others
    # Status showed partial progress with peers that were themselves downloading.
    assert statuses, "no status was taken while downloading"
    assert any(0 < s["pieces"] < s["pieces_total"] for s in statuses)
    assert any(not p["complete"] for s in statuses for p in s["peer_details"])
    for s in statuses:
        assert {"download_rate", "upload_rate", "peer_details", "pieces", "pieces_total"} <= set(s)

    # The seeder leaves; a newcomer still gets the file, from the nodes.
    await defer.maybeDeferred(seeder.stopService)
    late = cluster.node(10)
    await _registered(late)
    message = await _download(late, torrent)
    out = cluster.tmp / "nf" / "10" / "data.bin"
    assert hashlib.sha256(out.read_bytes()).hexdigest() == want
    assert "node 1:" not in message, message


async def _download(node: Node, torrent: Path) -> str:
    return await node.download(str(torrent), lambda _: None)


class _Probe(DatagramProtocol):
    """A bare UDP endpoint that asks a node things and keeps the answers."""

    def __init__(self) -> None:
        self.answers: list[Any] = []
        self.waiting: defer.Deferred[Any] | None = None

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.answers.append(wire.decode(data))
        if self.waiting is not None:
            d, self.waiting = self.waiting, None
            d.callback(None)

    async def ask(self, datagram: bytes, addr: Any) -> Any:
        self.waiting = defer.Deferred()
        self.waiting.addTimeout(10, reactor)
        self.transport.write(datagram, addr)
        await self.waiting
        return self.answers[-1]


@pytest_twisted.ensureDeferred
async def test_a_restarted_node_serves_the_pieces_it_had_verified(cluster: Cluster) -> None:
    cluster.extra = ["--set", "NODE_TIME_INTERVAL=1"]  # it checks in soon after the tracker is back
    [seeder], want, torrent = await _seeders(cluster, 1, 48 * MIB)
    data = (cluster.tmp / "nf" / "1" / "data.bin").read_bytes()
    node = cluster.node(2)
    await _registered(node)
    downloading = defer.ensureDeferred(_download(node, torrent))
    while True:  # stop the node once some pieces, not all, are verified
        job = next(iter(node.jobs.values()), None)
        if job is not None and job.download is not None and 0 < len(job.part.verified()) < job.meta.num_pieces // 2:
            break
        assert not downloading.called, "the download ended before it could be stopped"
        await _sleep(0.002)
    await defer.maybeDeferred(node.stopService)
    try:
        await downloading
    except Exception as e:
        assert "stopping" in str(e), e
    # The tracker goes down too: the restarted node waits for it, serving what it has meanwhile.
    tracker = cluster.services[0]
    port = cluster.tracker_port
    await defer.maybeDeferred(tracker.stopService)
    again = cluster.node(2)
    for _ in range(500):
        if again.jobs and next(iter(again.jobs.values())).state == "waiting for the tracker":
            break
        await _sleep(0.02)
    [job] = again.jobs.values()
    assert job.state == "waiting for the tracker"
    held = sorted(job.part.verified())
    assert 0 < len(held) < job.meta.num_pieces, held

    probe = _Probe()
    listening = reactor.listenUDP(0, probe, interface="127.0.0.1")
    try:
        at = ("127.0.0.1", again.udp.port)
        info = await probe.ask(wire.encode_info_request(7, job.meta.info_hash), at)
        assert info.status == wire.PARTIAL
        have = await probe.ask(wire.encode_have_request(job.meta.info_hash, info.cookie, 0, job.meta.num_pieces, wire.F_INTERESTED), at)
        assert isinstance(have, wire.Have) and not have.flags & wire.F_COMPLETE
        assert have.pieces() == held
        piece = held[-1]
        block = await probe.ask(
            wire.encode_block_request(job.meta.info_hash, info.cookie, [(piece, 0, 1000)]), at,
        )
        start = piece * job.meta.piece_length
        assert isinstance(block, wire.Block) and block.data == data[start : start + 1000]
    finally:
        await listening.stopListening()

    # The tracker is back (same port): the download resumes and completes.
    await cluster.start_tracker(port)
    for _ in range(1500):
        if not again.jobs:
            break
        await _sleep(0.02)
    out = cluster.tmp / "nf" / "2" / "data.bin"
    assert hashlib.sha256(out.read_bytes()).hexdigest() == want
