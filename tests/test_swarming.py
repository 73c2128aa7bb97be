"""Swarming, with the real tracker and real nodes in one reactor over loopback sockets.

1 seeder and 8 nodes start downloading a 32 MiB file together: every copy is
identical, the seeder uploads at most twice the file (the rest flows between
the nodes, which serve the pieces they have verified while they download),
and a node that comes after the seeder has left completes from the others.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import defer

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
