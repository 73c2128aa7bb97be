"""A node follows a torrent's own trackers (announce, announce-list with failover) and falls back to --tracker.

Real trackers and real nodes in one reactor, over loopback.  Each tracker is a
tracker process's service of its own (its own database and port); a "dead"
tracker is a port nobody listens on, so it refuses at once and only the test of a
timeout waits for one.  Heartbeats run only when a link is made (NODE_TIME_INTERVAL is
an hour but in that test), so what is sent never depends on the machine's speed.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.web.resource import Resource
from twisted.web.server import Site

from gates import share_only
from p2ptorrent.metainfo import make_torrent, read_torrent
from p2ptorrent.node import tap as node_tap
from p2ptorrent.node.service import CommandFailed, Node
from p2ptorrent.tracker import tap as tracker_tap

MIB = 1024 * 1024


class Tracker:
    def __init__(self, service: Any, port: int) -> None:
        self.service = service
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    @property
    def state(self) -> Any:
        return self.service.tracker.state

    def complete_owner(self, ih: str, node_id: int) -> bool:
        return node_id in self.state.owners(ih) and self.state.progress(ih, node_id) is None

    def knows(self, node_id: int) -> bool:
        return node_id in self.state.node_ids()


class _Listening:
    """A bare listening port, stopped with the cluster."""

    def __init__(self, port: Any) -> None:
        self.port = port
        self.running = True

    def stopService(self) -> Any:
        self.running = False
        return self.port.stopListening()


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.services: list[Any] = []

    async def tracker(self, name: str) -> Tracker:
        opts = tracker_tap.Options()
        opts.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", "--tracker-db-dir", str(self.tmp / f"db-{name}"),
                           "--logs-dir", str(self.tmp / f"logs-{name}"), "--udp-port", "-1"])
        svc: Any = tracker_tap.makeService(opts, reactor)
        svc.privilegedStartService()
        svc.startService()
        self.services.append(svc)
        return Tracker(svc, (await svc.getServiceNamed("http").listening()).getHost().port)

    async def dead_port(self) -> int:
        """A port nobody listens on (taken, then let go): a tracker there refuses at once."""
        port: Any = reactor.listenTCP(0, ServerFactory(), interface="127.0.0.1")
        number: int = port.getHost().port
        await defer.maybeDeferred(port.stopListening)
        return number

    async def hung_port(self) -> int:
        """A tracker that takes connections and never answers: only a timeout ends a call to it."""
        port: Any = reactor.listenTCP(0, ServerFactory.forProtocol(Protocol), interface="127.0.0.1")
        self.services.append(_Listening(port))
        number: int = port.getHost().port
        return number

    async def foreign_port(self) -> int:
        """A web server that answers every request with a bencoded announce answer: a BitTorrent-only tracker."""
        class Foreign(Resource):
            isLeaf = True

            def render(self, request: Any) -> bytes:
                return b"d8:intervali1800e5:peers0:e"

        port: Any = reactor.listenTCP(0, Site(Foreign()), interface="127.0.0.1")
        self.services.append(_Listening(port))
        number: int = port.getHost().port
        return number

    def node(self, node_id: int, tracker: Tracker, interval: float = 3600) -> Node:
        opts = node_tap.Options()
        opts.parseOptions(["--id", str(node_id), "--interface", "127.0.0.1", "--tracker", f"127.0.0.1:{tracker.port}",
                           "--node-files-dir", str(self.tmp / "nf"), "--logs-dir", str(self.tmp / "logs"),
                           "--no-stdin", "--node-interval", f"{interval:g}"])
        svc: Any = node_tap.makeService(opts, reactor)
        svc.stop_process = None
        svc.privilegedStartService()
        svc.startService()
        self.services.append(svc)
        return svc

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


async def _until(check: Callable[[], bool], what: str, seconds: float = 60.0) -> None:
    """Poll *check*; fail after *seconds* (a guard against a hang, not a speed limit)."""
    deadline = reactor.seconds() + seconds
    while not check():
        if reactor.seconds() > deadline:
            raise AssertionError(f"{what}: not seen in {seconds:.0f} s")
        await _sleep(0.01)


async def _registered(node: Node) -> None:
    await _until(lambda: node.client is not None and node.client.registered_once, f"node {node.node_id} to register")


async def _seeder(cluster: Cluster, node_id: int, tracker: Tracker, name: str, size: int) -> tuple[Node, Path]:
    """A node of *tracker* sharing a new file: its torrent names that tracker (``send``)."""
    path = cluster.tmp / "nf" / str(node_id) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(node_id).randbytes(size))
    node = cluster.node(node_id, tracker)
    await _registered(node)
    said = await node.send(name)
    assert "announced to the tracker" in said, said
    return node, path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest_twisted.ensureDeferred
async def test_a_torrent_naming_another_tracker_is_downloaded_and_announced_there_and_exit_leaves_both(
    cluster: Cluster,
) -> None:
    a, b = await cluster.tracker("a"), await cluster.tracker("b")
    seeder, path = await _seeder(cluster, 1, b, "b.bin", 2 * MIB + 3)
    torrent = path.with_name("b.bin.torrent")
    meta = read_torrent(str(torrent))
    assert meta.announce == f"{b.url}/announce"
    node = cluster.node(2, a)  # its own tracker is A, which knows nothing of the file
    await _registered(node)
    said = await node.download(str(torrent), lambda p: None)
    assert "downloaded b.bin" in said and "announced to the tracker" in said, said
    assert _sha(node.folder / "b.bin") == _sha(path)
    # Registered with B (its own link, its own token file), announced there, and credited its uploader there.
    assert b.knows(2) and b.complete_owner(meta.info_hash_hex, 2)
    assert b.state.owner_info(1).frequency == 1
    assert a.knows(2) and 2 not in a.state.owners(meta.info_hash_hex)
    assert len(list((node.folder / "trackers").glob("*.token"))) == 1
    status = node.status()
    assert status["tracker"] == a.url and status["registered"]
    assert [t["tracker"] for t in status["trackers"]] == [b.url] and status["trackers"][0]["registered"]
    assert [(s["name"], s["tracker"]) for s in status["seeding"]] == [("b.bin", b.url)]
    # Exit says goodbye to both, and says which answered.
    said = await node.exit()
    assert said == f"left the tracker (EXIT acknowledged); left the tracker at {b.url} (EXIT acknowledged);" \
                   " the node is stopping", said
    assert not a.knows(2) and not b.knows(2)
    assert seeder.status()["trackers"] == []  # the seeder's torrent names its own tracker: one link


@pytest_twisted.ensureDeferred
async def test_a_restarted_node_announces_a_file_again_at_the_tracker_its_torrent_names(cluster: Cluster) -> None:
    a, b = await cluster.tracker("a"), await cluster.tracker("b")
    _, path = await _seeder(cluster, 1, b, "r.bin", 300_000)
    meta = read_torrent(str(path.with_name("r.bin.torrent")))
    node = cluster.node(2, a)
    await _registered(node)
    await node.download(str(path.with_name("r.bin.torrent")), lambda p: None)
    await node.exit()  # B forgets node 2 and its file
    await cluster.stop(node)
    assert not b.knows(2)
    again = cluster.node(2, a)
    await _until(lambda: b.complete_owner(meta.info_hash_hex, 2), "the file announced again at B")
    assert [t["tracker"] for t in again.status()["trackers"]] == [b.url]


@pytest_twisted.ensureDeferred
async def test_a_download_resumed_at_start_asks_the_tracker_its_torrent_names(cluster: Cluster) -> None:
    a, b = await cluster.tracker("a"), await cluster.tracker("b")
    seeder, path = await _seeder(cluster, 1, b, "p.bin", 4 * MIB)
    torrent = path.with_name("p.bin.torrent")
    meta = read_torrent(str(torrent))
    whole = share_only(seeder.seeder, meta.info_hash, meta.num_pieces // 4)  # held back: the download cannot end
    node = cluster.node(2, a)
    await _registered(node)
    downloading = defer.ensureDeferred(node.download(str(torrent), lambda p: None))
    quarter = sum(meta.piece_size(p) for p in range(meta.num_pieces // 4))
    await _until(lambda: downloading.called or (
        node.status()["downloading"] and node.status()["downloading"][0]["done"] >= quarter), "the first quarter")
    assert not downloading.called, downloading
    assert node.status()["downloading"][0]["tracker"] == b.url
    await cluster.stop(node)
    with pytest.raises(CommandFailed):
        await downloading
    whole()
    again = cluster.node(2, a)  # resumes by itself, from .incomplete/ (the torrent kept there names B)
    await _until(lambda: b.complete_owner(meta.info_hash_hex, 2), "the resumed download finished and announced at B")
    assert _sha(again.folder / "p.bin") == _sha(path)
    assert 2 not in a.state.owners(meta.info_hash_hex)


@pytest_twisted.ensureDeferred
async def test_a_dead_first_tier_fails_over_to_the_next_tracker(cluster: Cluster) -> None:
    a, b = await cluster.tracker("a"), await cluster.tracker("b")
    _, path = await _seeder(cluster, 1, b, "f.bin", MIB + 11)
    sent = read_torrent(str(path.with_name("f.bin.torrent")))
    dead = f"http://127.0.0.1:{await cluster.dead_port()}"
    meta, data = make_torrent(path, f"{dead}/announce", sent.piece_length,
                              announce_list=[[f"{dead}/announce"], [f"{b.url}/announce", "udp://127.0.0.1:1/announce"]])
    assert meta.info_hash == sent.info_hash
    torrent = cluster.tmp / "failover.torrent"
    torrent.write_bytes(data)
    node = cluster.node(2, a)
    await _registered(node)
    notes: list[str] = []
    said = await node.download(str(torrent), lambda p: notes.append(p["note"]) if "note" in p else None)
    assert "downloaded f.bin" in said, said
    moved = [n for n in notes if n.startswith(f"tracker {dead} did not answer (")]
    assert moved and moved[0].endswith(f"; trying {b.url}"), notes
    assert "connection refused" in moved[0], moved
    assert b.complete_owner(meta.info_hash_hex, 2)
    assert 2 not in a.state.owners(meta.info_hash_hex)
    assert node.status()["seeding"][0]["tracker"] == b.url
    # The dead tracker, tried and used by nothing now, is let go; B stays for the file we share.
    assert [t["tracker"] for t in node.status()["trackers"]] == [b.url]


@pytest_twisted.ensureDeferred
async def test_a_restarted_node_shares_past_a_dead_first_tier(cluster: Cluster) -> None:
    a, b = await cluster.tracker("a"), await cluster.tracker("b")
    _, path = await _seeder(cluster, 1, b, "d.bin", 300_000)
    sent = read_torrent(str(path.with_name("d.bin.torrent")))
    dead = f"http://127.0.0.1:{await cluster.dead_port()}"
    meta, data = make_torrent(path, f"{dead}/announce", sent.piece_length,
                              announce_list=[[f"{dead}/announce"], [f"{b.url}/announce"]])
    torrent = cluster.tmp / "dead-first.torrent"
    torrent.write_bytes(data)
    node = cluster.node(2, a)
    await _registered(node)
    await node.download(str(torrent), lambda p: None)
    await node.exit()  # B forgets node 2 and its file
    await cluster.stop(node)
    assert not b.knows(2)
    # Restarted, the node starts with the first tier again: its heartbeat there fails, and the file moves on.
    again = cluster.node(2, a)
    await _until(lambda: b.complete_owner(meta.info_hash_hex, 2), "the file announced again at B")
    assert again.status()["seeding"][0]["tracker"] == b.url
    assert 2 not in a.state.owners(meta.info_hash_hex)


@pytest_twisted.ensureDeferred
async def test_a_first_tracker_that_does_not_answer_in_time_fails_over_to_the_next(cluster: Cluster) -> None:
    a, b = await cluster.tracker("a"), await cluster.tracker("b")
    _, path = await _seeder(cluster, 1, b, "h.bin", 400_000)
    sent = read_torrent(str(path.with_name("h.bin.torrent")))
    hung = f"http://127.0.0.1:{await cluster.hung_port()}"
    meta, data = make_torrent(path, f"{hung}/announce", sent.piece_length,
                              announce_list=[[f"{hung}/announce"], [f"{b.url}/announce"]])
    torrent = cluster.tmp / "hung.torrent"
    torrent.write_bytes(data)
    # The node's calls time out after half its heartbeat interval: 2 s here (the defaults: 10 s), still
    # long for the live trackers on loopback.
    node = cluster.node(2, a, interval=4)
    await _registered(node)
    notes: list[str] = []
    said = await node.download(str(torrent), lambda p: notes.append(p["note"]) if "note" in p else None)
    assert "downloaded h.bin" in said, said
    moved = [n for n in notes if n.startswith(f"tracker {hung} did not answer (")]
    assert moved and "no answer within 2 s" in moved[0] and moved[0].endswith(f"; trying {b.url}"), notes
    assert b.complete_owner(meta.info_hash_hex, 2)


@pytest_twisted.ensureDeferred
async def test_a_first_tracker_that_is_not_a_p2ptorrent_tracker_is_passed_over(cluster: Cluster) -> None:
    a, b = await cluster.tracker("a"), await cluster.tracker("b")
    _, path = await _seeder(cluster, 1, b, "x.bin", 200_000)
    sent = read_torrent(str(path.with_name("x.bin.torrent")))
    foreign = f"http://127.0.0.1:{await cluster.foreign_port()}"
    meta, data = make_torrent(path, f"{foreign}/announce", sent.piece_length,
                              announce_list=[[f"{foreign}/announce"], [f"{b.url}/announce"]])
    torrent = cluster.tmp / "foreign.torrent"
    torrent.write_bytes(data)
    node = cluster.node(2, a)
    await _registered(node)
    notes: list[str] = []
    said = await node.download(str(torrent), lambda p: notes.append(p["note"]) if "note" in p else None)
    assert "downloaded x.bin" in said, said
    moved = [n for n in notes if n.startswith(f"tracker {foreign} did not answer (")]
    assert moved and "no JSON result: d8:interval" in moved[0] and moved[0].endswith(f"; trying {b.url}"), notes
    assert b.complete_owner(meta.info_hash_hex, 2)


@pytest_twisted.ensureDeferred
async def test_a_torrent_naming_no_tracker_a_node_can_use_falls_back_to_its_own(cluster: Cluster) -> None:
    a = await cluster.tracker("a")
    _, path = await _seeder(cluster, 1, a, "u.bin", 200_000)
    sent = read_torrent(str(path.with_name("u.bin.torrent")))
    meta, data = make_torrent(path, "udp://127.0.0.1:1/announce", sent.piece_length)
    torrent = cluster.tmp / "udp-only.torrent"
    torrent.write_bytes(data)
    node = cluster.node(2, a)
    await _registered(node)
    said = await node.download(str(torrent), lambda p: None)
    assert "downloaded u.bin" in said and "announced to the tracker" in said, said
    assert a.complete_owner(meta.info_hash_hex, 2)
    assert node.status()["trackers"] == [] and not (node.folder / "trackers").exists()


@pytest_twisted.ensureDeferred
async def test_a_magnet_link_asks_the_tracker_its_tr_names_and_its_torrent_keeps_it(cluster: Cluster) -> None:
    a, b = await cluster.tracker("a"), await cluster.tracker("b")
    _, path = await _seeder(cluster, 1, b, "m.bin", MIB + 5)
    meta = read_torrent(str(path.with_name("m.bin.torrent")))
    node = cluster.node(2, a)  # its own tracker, A, knows nothing of the file
    await _registered(node)
    notes: list[str] = []
    link = f"magnet:?xt=urn:btih:{meta.info_hash_hex}&dn=m.bin&tr={b.url}/announce"
    downloading = defer.ensureDeferred(node.download(link, lambda p: notes.append(p["note"]) if "note" in p else None))
    # Asking B for the owners (the first thing it waits for): `list` shows it, with the link's name.
    [row] = node.transfers()["transfers"]
    assert (row["name"], row["state"], row["info_hash"], row["total"]) == ("m.bin", "fetching metadata",
                                                                          meta.info_hash_hex, None)
    said = await downloading
    assert "downloaded m.bin" in said and "announced to the tracker" in said, said
    assert [(r["name"], r["state"]) for r in node.transfers()["transfers"]] == [("m.bin", "seeding")]
    assert _sha(node.folder / "m.bin") == _sha(path)
    saved = read_torrent(str(node.folder / "m.bin.torrent"))
    assert (saved.info_hash, saved.announce) == (meta.info_hash, f"{b.url}/announce")
    assert b.complete_owner(meta.info_hash_hex, 2) and 2 not in a.state.owners(meta.info_hash_hex)
    assert not any("did not answer" in n for n in notes), notes


@pytest_twisted.ensureDeferred
async def test_a_bare_info_hash_asks_the_nodes_own_tracker(cluster: Cluster) -> None:
    a = await cluster.tracker("a")
    _, path = await _seeder(cluster, 1, a, "h.bin", 200_003)
    meta = read_torrent(str(path.with_name("h.bin.torrent")))
    node = cluster.node(2, a)
    await _registered(node)
    said = await node.download(meta.info_hash_hex, lambda p: None)
    assert "downloaded h.bin" in said, said
    assert _sha(node.folder / "h.bin") == _sha(path)
    assert read_torrent(str(node.folder / "h.bin.torrent")).announce == f"{a.url}/announce"
    assert a.complete_owner(meta.info_hash_hex, 2)
