"""Rate limits held by real nodes over loopback, in one reactor: measured on the node's own clock.

A 512 KiB/s limit is far below what any machine moves on loopback, so each test measures what the
limit lets through, not the machine: over 10 s of ``reactor.seconds()`` the rate must be at most 10%
above the limit (the bucket's burst is 2.5% of that) and at least half of it.  While limited, the node
still answers its control socket at once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread

from p2ptorrent.cli import prepare, request
from p2ptorrent.node.service import Node
from test_loopback import MIB, Cluster, _file, _registered, _sleep, _until

LIMIT = 512 * 1024
WINDOW = 10.0
SIZE = 24 * MIB  # more than the limit moves in the test: the download is still going when it ends


@pytest.fixture
def cluster(tmp_path: Path):  # type: ignore[no-untyped-def]
    c = Cluster(tmp_path)
    yield c
    pytest_twisted.blockon(defer.ensureDeferred(c.stop()))


def _received(node: Node) -> int:
    """Block bytes the node's downloads received so far (from peers met, and from those dropped)."""
    return sum(sum(p.bytes for p in job.download.transfer.peers.values()) + job.download.stats.dropped_bytes
               for job in node.jobs.values() if job.download is not None)


def _uploaded(node: Node) -> int:
    return sum(shared.uploaded for shared in node.seeder.files.values())


async def _rate(count: Any) -> float:
    """Bytes a second over WINDOW seconds of the reactor's clock, once the transfer has run a second."""
    await _sleep(1.0)
    start, t0 = count(), reactor.seconds()
    await _sleep(WINDOW)
    return (count() - start) / (reactor.seconds() - t0)


async def _pair(cluster: Cluster, seeder_options: list[str]) -> tuple[Node, Node, Any]:
    await cluster.start_tracker()
    _file(cluster.tmp / "nf" / "1" / "data.bin", SIZE)
    cluster.extra = seeder_options
    seeder = cluster.node(1)
    await _registered(seeder)
    await seeder.send("data.bin")
    cluster.extra = []
    downloader = cluster.node(2)
    await _registered(downloader)
    d = downloader.download(str(cluster.tmp / "nf" / "1" / "data.bin.torrent"), lambda p: None)
    d.addErrback(lambda _: None)  # stopped with the cluster
    await _until(lambda: _received(downloader) > 0, "the first blocks")
    return seeder, downloader, d


@pytest_twisted.ensureDeferred
async def test_upload_limit_holds_on_loopback(cluster: Cluster) -> None:
    seeder, downloader, _ = await _pair(cluster, ["--max-upload-rate", "512KiB"])
    assert seeder.limits() == {"upload": LIMIT, "download": 0}
    sent = await _rate(lambda: _uploaded(seeder))
    print(f"upload limited to {LIMIT} B/s: {sent:.0f} B/s sent ({sent / LIMIT:.3f} of the limit)")
    assert LIMIT * 0.5 <= sent <= LIMIT * 1.10
    assert seeder.protocol.counts["limited:upload rate"] > 0


@pytest_twisted.ensureDeferred
async def test_download_limit_set_live_holds_and_the_control_socket_answers(cluster: Cluster) -> None:
    seeder, downloader, _ = await _pair(cluster, [])
    # Set while the download runs, through the control socket, as `p2ptorrent --node 2 limit --down 512KiB` does.
    req = prepare(["--node-files-dir", str(cluster.tmp / "nf"), "--node", "2", "limit", "--down", "512KiB"])
    reply = await deferToThread(request, req.target, req.command.line(), lambda p: None)
    assert reply["ok"] and "download limit 512 KiB/s" in reply["result"]
    got = await _rate(lambda: _received(downloader))
    print(f"download limited to {LIMIT} B/s: {got:.0f} B/s received ({got / LIMIT:.3f} of the limit)")
    assert LIMIT * 0.5 <= got <= LIMIT * 1.10
    # Limited, the node still answers `status` at once (TCP, never limited).
    status = prepare(["--node-files-dir", str(cluster.tmp / "nf"), "--node", "2", "status"])
    began = time.monotonic()
    reply = await deferToThread(request, status.target, status.command.line(), lambda p: None)
    assert reply["ok"] and reply["result"]["limits"] == {"upload": 0, "download": LIMIT}
    assert time.monotonic() - began < 5.0  # (a guard against a stall, not a speed test)


@pytest_twisted.ensureDeferred
async def test_the_download_limit_is_the_nodes_across_its_downloads(cluster: Cluster) -> None:
    await cluster.start_tracker()
    seeder = cluster.node(1)
    await _registered(seeder)
    for name in ("a.bin", "b.bin"):
        _file(cluster.tmp / "nf" / "1" / name, SIZE, seed=len(name) + ord(name[0]))
        await seeder.send(name)
    cluster.extra = ["--max-download-rate", "512KiB"]
    downloader = cluster.node(2)
    await _registered(downloader)
    for name in ("a.bin", "b.bin"):
        d = downloader.download(str(cluster.tmp / "nf" / "1" / f"{name}.torrent"), lambda p: None)
        d.addErrback(lambda _: None)  # stopped with the cluster
    await _until(lambda: len(downloader.downloads) == 2 and all(
        sum(p.bytes for p in d.transfer.peers.values()) for d in downloader.downloads.values()), "both downloads")
    downloads = list(downloader.downloads.values())

    def each() -> list[int]:
        return [sum(p.bytes for p in d.transfer.peers.values()) + d.stats.dropped_bytes for d in downloads]

    before = each()
    got = await _rate(lambda: _received(downloader))
    moved = [after - first for after, first in zip(each(), before, strict=True)]
    print(f"two downloads limited to {LIMIT} B/s together: {got:.0f} B/s received ({got / LIMIT:.3f} of the limit),"
          f" shared {moved}")
    assert LIMIT * 0.5 <= got <= LIMIT * 1.10
    assert min(moved) >= 0.3 * sum(moved)  # shared, not taken by one


@pytest_twisted.ensureDeferred
async def test_the_upload_limit_is_the_nodes_across_its_peers(cluster: Cluster) -> None:
    seeder, first, _ = await _pair(cluster, ["--max-upload-rate", "512KiB"])
    second = cluster.node(3)
    await _registered(second)
    d = second.download(str(cluster.tmp / "nf" / "1" / "data.bin.torrent"), lambda p: None)
    d.addErrback(lambda _: None)  # stopped with the cluster
    await _until(lambda: _received(second) > 0, "the second downloader's first blocks")
    sent = await _rate(lambda: _uploaded(seeder))
    # (The two also trade pieces with each other, which the seeder's limit does not touch.)
    print(f"upload limited to {LIMIT} B/s, two downloaders: {sent:.0f} B/s sent ({sent / LIMIT:.3f} of the limit)")
    assert LIMIT * 0.5 <= sent <= LIMIT * 1.10
