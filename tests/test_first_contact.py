"""What a node says and keeps when things go wrong: the tracker away, a file already here, two files with one
name, owners gone part way.  The real tracker and real nodes in one reactor, over loopback.

The tracker's "outage" is a switch in front of the node's HTTP client that the
test owns (it can go off right after the NEED answer), so what is in flight when
it goes down never depends on the machine's speed.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionRefusedError

from gates import share_only
from p2ptorrent.metainfo import read_torrent
from p2ptorrent.node import tap as node_tap
from p2ptorrent.node.service import CommandFailed, Node, verified_text
from p2ptorrent.tracker import tap as tracker_tap

MIB = 1024 * 1024


class TrackerSwitch:
    """A treq-like client that passes calls to the real one, or fails them as a tracker that is down would."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.pool = real.pool  # closed by the node as it stops
        self.down = False
        #: Go down as soon as a NEED has been answered (the download knows its owners, then the tracker is gone).
        self.down_after_need = False

    def post(self, url: str, data: bytes, headers: Any) -> defer.Deferred[Any]:
        if self.down:
            return defer.fail(ConnectionRefusedError("the test switched the tracker off"))
        d = self.real.post(url, data=data, headers=headers)
        if self.down_after_need and json.loads(data)["mode"] == 2:
            def off(response: Any) -> Any:
                self.down = True
                return response
            d.addCallback(off)
        return d


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.services: list[Any] = []
        self.tracker: Any = None
        self.port = 0

    async def start_tracker(self) -> None:
        opts = tracker_tap.Options()
        opts.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", "--tracker-db-dir", str(self.tmp / "db"),
                           "--logs-dir", str(self.tmp / "logs")])
        svc = tracker_tap.makeService(opts, reactor)
        svc.privilegedStartService()
        svc.startService()
        self.services.append(svc)
        self.tracker = svc
        self.port = (await svc.getServiceNamed("http").listening()).getHost().port

    def node(self, node_id: int, switch: bool = False, *extra: str, down: bool = False) -> Node:
        opts = node_tap.Options()
        opts.parseOptions(["--id", str(node_id), "--interface", "127.0.0.1", "--tracker", f"127.0.0.1:{self.port}",
                           "--node-files-dir", str(self.tmp / "nf"), "--logs-dir", str(self.tmp / "logs"),
                           "--no-stdin", "--node-interval", "3600", *extra])  # heartbeats only when the test beats
        svc = node_tap.makeService(opts, reactor)
        svc.stop_process = None
        if switch:
            svc.http = TrackerSwitch(svc.http)
            svc.http.down = down
        svc.privilegedStartService()
        svc.startService()
        self.services.append(svc)
        return svc

    @property
    def state(self) -> Any:
        return self.tracker.tracker.state

    async def stop(self, svc: Any) -> None:
        if svc.running:
            await defer.maybeDeferred(svc.stopService)

    async def stop_all(self) -> None:
        for svc in reversed(self.services):
            await self.stop(svc)


@pytest.fixture
def cluster(tmp_path: Path):  # type: ignore[no-untyped-def]
    c = Cluster(tmp_path)
    yield c
    pytest_twisted.blockon(defer.ensureDeferred(c.stop_all()))


def _sleep(seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


async def _until(check: Any, what: str, seconds: float = 60.0) -> None:
    """Poll *check*; fail after *seconds* (a guard against a hang, not a speed limit)."""
    deadline = reactor.seconds() + seconds
    while not check():
        if reactor.seconds() > deadline:
            raise AssertionError(f"{what}: not seen in {seconds:.0f} s")
        await _sleep(0.01)


async def _registered(node: Node) -> None:
    await _until(lambda: node.client is not None and node.client.registered_once, f"node {node.node_id} to register")


def _file(path: Path, size: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def _complete_owner(cluster: Cluster, ih: str, node_id: int) -> bool:
    return node_id in cluster.state.owners(ih) and cluster.state.progress(ih, node_id) is None


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def _seeder(cluster: Cluster, node_id: int, name: str, size: int, seed: int) -> tuple[Node, Path]:
    _file(cluster.tmp / "nf" / str(node_id) / name, size, seed)
    node = cluster.node(node_id)
    await _registered(node)
    said = await node.send(name)
    assert "announced to the tracker" in said, said
    return node, cluster.tmp / "nf" / str(node_id) / f"{name}.torrent"


@pytest_twisted.ensureDeferred
async def test_send_while_the_tracker_is_down_is_announced_when_it_answers(cluster: Cluster) -> None:
    await cluster.start_tracker()
    _file(cluster.tmp / "nf" / "1" / "a.bin", 300_000, 1)
    node = cluster.node(1, switch=True, down=True)  # the tracker is "down" from the start
    await node.heartbeat.beat()
    said = await node.send("a.bin")
    assert f"not announced yet: the tracker at http://127.0.0.1:{cluster.port} did not answer;" \
           " it will be announced when it answers" in said, said
    ih = read_torrent(str(cluster.tmp / "nf" / "1" / "a.bin.torrent")).info_hash_hex
    assert 1 not in cluster.state.owners(ih)
    status = node.status()
    assert status["pending_announcements"] == 1 and status["tracker_problem"], status
    # The tracker answers again: the next heartbeat that gets through announces it.
    node.http.down = False
    await node.heartbeat.beat()
    await _until(lambda: 1 in cluster.state.owners(ih), "the file announced once the tracker answers")
    await _until(lambda: node.status()["pending_announcements"] == 0, "nothing left pending")
    assert node.status()["tracker_problem"] is None
    assert not (node.folder / ".outbox.json").exists()


@pytest_twisted.ensureDeferred
async def test_a_download_finished_while_the_tracker_is_down_is_announced_and_credited_later(cluster: Cluster) -> None:
    await cluster.start_tracker()
    seeder, torrent = await _seeder(cluster, 1, "d.bin", 2 * MIB + 77, 2)
    ih = read_torrent(str(torrent)).info_hash_hex
    node = cluster.node(2, switch=True)
    await _registered(node)
    node.http.down_after_need = True  # the download meets its owner, then the tracker is gone
    said = await node.download(str(torrent), lambda p: None)
    assert "downloaded d.bin" in said and "not announced yet" in said, said
    assert _sha(node.folder / "d.bin") == _sha(seeder.folder / "d.bin")
    assert not _complete_owner(cluster, ih, 2)  # at most its progress was heard, before the outage
    assert cluster.state.owner_info(1).frequency == 0
    pending = json.loads((node.folder / ".outbox.json").read_text())
    assert [o["info_hash"] for o in pending["own"]] == [ih]
    assert pending["update"] == [{"info_hash": ih, "uploaders": [1]}]
    # The node stops before the tracker is back (its EXIT is lost too), then starts again with it back.
    await cluster.stop(node)
    again = cluster.node(2)
    await _registered(again)
    await _until(lambda: _complete_owner(cluster, ih, 2), "the restarted node's OWN delivered")
    await _until(lambda: cluster.state.owner_info(1).frequency == 1, "node 1 credited for the upload")
    await _until(lambda: not (again.folder / ".outbox.json").exists(), "the outbox emptied")
    assert again.status()["pending_announcements"] == 0


@pytest_twisted.ensureDeferred
async def test_download_of_a_file_already_seeded_keeps_seeding(cluster: Cluster) -> None:
    await cluster.start_tracker()
    seeder, torrent = await _seeder(cluster, 1, "s.bin", 500_000, 3)
    meta = read_torrent(str(torrent))
    said = await seeder.download(str(torrent), lambda p: None)
    assert said.startswith("already complete: seeding s.bin") and "announced to the tracker" in said, said
    assert seeder.seeder.files[meta.info_hash].complete
    assert 1 in cluster.state.owners(meta.info_hash_hex)
    assert [f["name"] for f in seeder.status()["seeding"]] == ["s.bin"]


@pytest_twisted.ensureDeferred
async def test_a_complete_file_found_in_the_folder_is_announced(cluster: Cluster) -> None:
    await cluster.start_tracker()
    _, torrent = await _seeder(cluster, 1, "f.bin", 400_000, 4)
    meta = read_torrent(str(torrent))
    (cluster.tmp / "nf" / "2").mkdir(parents=True)
    (cluster.tmp / "nf" / "2" / "f.bin").write_bytes((cluster.tmp / "nf" / "1" / "f.bin").read_bytes())
    node = cluster.node(2)
    await _registered(node)
    said = await node.download(str(torrent), lambda p: None)
    assert said.startswith("already complete:") and "announced to the tracker" in said, said
    assert 2 in cluster.state.owners(meta.info_hash_hex)


@pytest_twisted.ensureDeferred
async def test_two_files_with_one_name_never_overwrite_each_other(cluster: Cluster) -> None:
    await cluster.start_tracker()
    # Same name, same length, different bytes: only the info hash tells them apart.
    _, torrent_a = await _seeder(cluster, 1, "same.bin", 600_000, 5)
    _, torrent_b = await _seeder(cluster, 3, "same.bin", 600_000, 6)
    a, b = read_torrent(str(torrent_a)), read_torrent(str(torrent_b))
    node = cluster.node(2)
    await _registered(node)
    first = await node.download(str(torrent_a), lambda p: None)
    assert f"to {node.folder / 'same.bin'};" in first, first
    second = await node.download(str(torrent_b), lambda p: None)
    assert f"to {node.folder / 'same (2).bin'} (not {node.folder / 'same.bin'}: that name holds another file)" in second
    assert _sha(node.folder / "same.bin") == a.sha256.hex()
    assert _sha(node.folder / "same (2).bin") == b.sha256.hex()
    # After a restart each info hash is served from its own bytes.
    await cluster.stop(node)
    again = cluster.node(2)
    await _registered(again)
    for meta in (a, b):
        assert _sha(again.seeder.files[meta.info_hash].path) == meta.sha256.hex()
    # And asking again for either is answered from what is there, not downloaded over the other.
    said = await again.download(str(torrent_b), lambda p: None)
    assert said.startswith(f"already complete: seeding same.bin ({again.folder / 'same (2).bin'})"), said


@pytest_twisted.ensureDeferred
async def test_owners_gone_part_way_keeps_the_verified_pieces_and_download_again_resumes(cluster: Cluster) -> None:
    await cluster.start_tracker()
    seeder, torrent = await _seeder(cluster, 1, "r.bin", 4 * MIB, 7)
    meta = read_torrent(str(torrent))
    # The seeder serves the first quarter only, as a node still downloading would; then it goes away.
    share_only(seeder.seeder, meta.info_hash, meta.num_pieces // 4)
    # Default timeouts: a shorter PEER_TIMEOUT could drop the seeder for a pause of a loaded machine
    # before the quarter is in, and the test would wait for a quarter that never comes.
    node = cluster.node(2)
    await _registered(node)
    downloading = defer.ensureDeferred(node.download(str(torrent), lambda p: None))
    quarter = sum(meta.piece_size(p) for p in range(meta.num_pieces // 4))
    await _until(lambda: downloading.called or (
        node.status()["downloading"] and node.status()["downloading"][0]["done"] >= quarter), "the first quarter verified")
    assert not downloading.called, downloading  # it ended before the seeder left: say how, do not wait
    await cluster.stop(seeder)  # the only owner goes away
    with pytest.raises(CommandFailed) as failed:
        await downloading
    message = str(failed.value)
    assert "every owner of r.bin is gone: node 1 (127.0.0.1:" in message, message
    assert f"{quarter} of {meta.length} bytes verified are kept; run download again to resume" in message
    assert not (node.folder / "r.bin").exists()
    assert (node.folder / ".incomplete" / f"{meta.info_hash_hex}.part").exists()
    # The owner is back, sharing the whole file again: download again fetches only the rest.
    back = cluster.node(1)
    await _until(lambda: 1 in cluster.state.owners(meta.info_hash_hex), "node 1 announcing r.bin again")
    assert back.seeder.files[meta.info_hash].complete
    said = await node.download(str(torrent), lambda p: None)
    pieces = meta.num_pieces // 4
    assert f"resumed: {pieces} of {meta.num_pieces} pieces ({quarter} bytes) were already verified" in said, said
    assert _sha(node.folder / "r.bin") == meta.sha256.hex()


def test_the_success_line_says_what_was_verified() -> None:
    class Meta:
        num_pieces = 3
        is_folder = False
        sha256: bytes | None = b"x" * 32

    assert verified_text(Meta()) == "all 3 pieces (SHA-1) and the whole file (SHA-256) verified"  # type: ignore[arg-type]
    Meta.sha256 = None
    assert "SHA-256" not in verified_text(Meta()).split(";")[0]  # type: ignore[arg-type]
    assert verified_text(Meta()) == "all 3 pieces verified (SHA-1; the torrent has no whole-file SHA-256)"  # type: ignore[arg-type]


def test_blocks_arriving_just_after_a_download_ended_are_late_not_hostile() -> None:
    import os

    from twisted.internet.task import Clock
    from twisted.logger import globalLogPublisher

    from p2ptorrent import wire
    from p2ptorrent.config import load
    from p2ptorrent.node.protocol import LATE_GRACE, NodeProtocol
    from p2ptorrent.node.serving import Seeder

    settings = load(None, {})
    clock = Clock()
    proto = NodeProtocol(Seeder.from_settings(os.urandom(32), settings), clock, settings.BUFFER_SIZE, settings.SOCKET_BUFFER)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        ih = b"\x07" * 20
        block = wire.encode_block(ih, 1, 0, 0, b"x" * 100)
        proto.ended(ih)
        for _ in range(50):
            proto.datagramReceived(block, ("192.0.2.9", 6881))
        assert proto.counts["late"] == 50 and proto.counts["rejected"] == 0
        assert not [e for e in events if "refused" in str(e.get("log_format", ""))]
        clock.advance(LATE_GRACE + 1)  # long after: a stranger's block again
        proto.datagramReceived(block, ("192.0.2.9", 6881))
        assert proto.counts["rejected:unknown download"] == 1
    finally:
        globalLogPublisher.removeObserver(events.append)
