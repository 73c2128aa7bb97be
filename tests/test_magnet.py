"""Magnet links and bare info hashes: what a download can start from without a .torrent."""

from __future__ import annotations

import base64
import itertools
import random
from pathlib import Path
from typing import Sequence

import hashlib

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import FakeDatagramTransport
from twisted.python.failure import Failure

from netsim import Faults
from swarm import Swarm
from test_loopback import MIB, Cluster, _registered, _seeders
from p2ptorrent import wire
from p2ptorrent.magnet import Magnet, MagnetError, is_info_hash, is_magnet, parse_magnet
from p2ptorrent.metainfo import MetainfoError, make_torrent, read_torrent
from p2ptorrent.node import metadata as m
from p2ptorrent.node.protocol import NodeProtocol
from p2ptorrent.node.serving import METADATA_ANSWER_BURST, Seeder

H = bytes(range(20))
HEX = H.hex()
B32 = base64.b32encode(H).decode()


def test_bare_hex_and_base32_info_hashes() -> None:
    assert parse_magnet(HEX) == Magnet(H)
    assert parse_magnet(HEX.upper()) == Magnet(H)
    assert parse_magnet(B32) == Magnet(H)
    assert parse_magnet(B32.lower()) == Magnet(H)
    assert is_info_hash(HEX) and is_info_hash(B32) and not is_info_hash(HEX[:-1])


def test_a_full_magnet_link() -> None:
    link = (f"magnet:?xt=urn:btih:{HEX}&dn=my%20file.bin&tr=http%3A%2F%2Ft1%3A8080%2Fannounce"
            "&tr=udp://t2:6969&tr=udp://t2:6969&xl=123&ws=http://w")
    assert is_magnet(link)
    assert parse_magnet(link) == Magnet(H, "my file.bin", ("http://t1:8080/announce", "udp://t2:6969"))


def test_base32_and_upper_case_in_a_link() -> None:
    assert parse_magnet(f"MAGNET:?XT=URN:BTIH:{B32}").info_hash == H
    assert parse_magnet(f"magnet:?dn=x&xt=urn:btih:{HEX}").name == "x"


def test_a_hybrid_link_uses_its_v1_hash() -> None:
    link = f"magnet:?xt=urn:btih:{HEX}&xt=urn:btmh:1220{'ab' * 32}"
    assert parse_magnet(link).info_hash == H


@pytest.mark.parametrize(
    ("link", "says"),
    [
        (f"magnet:?xt=urn:btmh:1220{'ab' * 32}", "v2-only"),
        ("magnet:?xt=urn:sha1:ABCDEF", "no BitTorrent info hash"),
        ("magnet:?dn=x", "no xt=urn:btih"),
        ("magnet:xt=urn:btih:" + HEX, "magnet:?xt"),
        (f"magnet:?xt=urn:btih:{HEX[:-1]}", "not an info hash"),
        (f"magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{'00' * 20}", "several info hashes"),
        (f"magnet:?xt=urn:btih:{HEX}&dn=", "empty dn"),
        (f"magnet:?xt=urn:btih:{HEX}&tr=a%0Ab", "control characters"),
        (f"magnet:?xt=urn:btih:{HEX}&dn=%FF", "cannot be read"),
        ("magnet:?xt=urn:btih:" + HEX + "&tr=x" * 5000, "too long"),
        ("not a hash", "not an info hash"),
        ("", "not an info hash"),
    ],
)
def test_refused_with_a_clear_message(link: str, says: str) -> None:
    with pytest.raises(MagnetError, match=says):
        parse_magnet(link)


def test_a_magnet_error_is_a_metainfo_error() -> None:
    with pytest.raises(MetainfoError):
        parse_magnet("magnet:?")


def test_too_many_trackers() -> None:
    link = f"magnet:?xt=urn:btih:{HEX}" + "".join(f"&tr=udp://t{i}" for i in range(40))
    with pytest.raises(MagnetError, match="trackers"):
        parse_magnet(link)


@given(st.text(max_size=300))
def test_any_text_is_parsed_or_refused_cleanly(text: str) -> None:
    try:
        m = parse_magnet(text)
    except MagnetError:
        return
    assert len(m.info_hash) == 20


@given(st.lists(st.sampled_from(["xt=urn:btih:" + HEX, "dn=a", "tr=u", "&", "=", "%", "%zz", "xt=", "tr=",
                                 "xt=urn:btmh:", "+", "\x00", "é"]), max_size=12))
def test_hostile_queries_are_parsed_or_refused_cleanly(parts: list[str]) -> None:
    try:
        m = parse_magnet("magnet:?" + "".join(parts))
    except MagnetError:
        return
    assert m.info_hash == H
    assert all(t and t.isprintable() for t in m.trackers)


# ---- the seeder answers METADATA_REQ (the info dict, piece by piece, to proven addresses only)

A, B = ("10.0.0.1", 7001), ("10.0.0.2", 7002)
N = 0xC0FFEE


def _shared(tmp: Path, pieces: int = 200) -> tuple[Seeder, bytes, bytes]:
    """A seeder sharing a file whose info dict is several METADATA pieces long (20 bytes a piece hash)."""
    path = tmp / "f.bin"
    path.write_bytes(random.Random(4).randbytes(pieces * 16))
    meta, _ = make_torrent(path, "http://tracker.invalid:1", 16)
    seeder = Seeder(b"s" * 32, 9000)
    seeder.add(meta, path)
    assert wire.metadata_pieces(len(meta.info_bytes)) > 2
    return seeder, meta.info_hash, meta.info_bytes


def _ask(seeder: Seeder, ih: bytes, piece: int, addr: object = A, cookie: bytes | None = None,
         now: float = 0.0) -> tuple[str | None, list[wire.Message]]:
    req = wire.MetadataRequest(ih, seeder.cookie(addr) if cookie is None else cookie, N, piece)
    reason, replies = seeder.on_metadata(req, addr, wire.METADATA_REQ_SIZE, now)
    return reason, [wire.decode(d) for d in replies]


def test_the_seeder_hands_out_the_info_dict_piece_by_piece(tmp_path: Path) -> None:
    seeder, ih, info = _shared(tmp_path)
    got = b""
    for piece in range(wire.metadata_pieces(len(info))):
        reason, [answer] = _ask(seeder, ih, piece)
        assert reason is None and isinstance(answer, wire.Metadata)
        assert (answer.info_hash, answer.nonce, answer.total, answer.piece) == (ih, N, len(info), piece)
        got += answer.data
    assert got == info


def test_no_metadata_without_the_cookie(tmp_path: Path) -> None:
    seeder, ih, _ = _shared(tmp_path)
    reason, [answer] = _ask(seeder, ih, 0, cookie=seeder.cookie(B))
    assert reason == "bad cookie"
    assert isinstance(answer, wire.Error) and answer.code == wire.E_BAD_COOKIE
    assert len(wire.encode_error(answer.info_hash, answer.nonce, answer.code, answer.message)) <= wire.METADATA_REQ_SIZE


def test_no_metadata_for_a_file_not_shared(tmp_path: Path) -> None:
    seeder, _, _ = _shared(tmp_path)
    reason, [answer] = _ask(seeder, b"\x01" * 20, 0)
    assert reason == "not shared"
    assert isinstance(answer, wire.Error) and answer.code == wire.E_NOT_FOUND


def test_a_piece_past_the_end_is_a_bad_request(tmp_path: Path) -> None:
    seeder, ih, info = _shared(tmp_path)
    reason, [answer] = _ask(seeder, ih, wire.metadata_pieces(len(info)))
    assert reason == "bad metadata piece"
    assert isinstance(answer, wire.Error) and answer.code == wire.E_BAD_REQUEST


def test_metadata_answers_are_rate_limited_per_address(tmp_path: Path) -> None:
    seeder, ih, _ = _shared(tmp_path)
    answered = sum(1 for _ in range(int(METADATA_ANSWER_BURST) + 50) if _ask(seeder, ih, 0)[1])
    assert answered == METADATA_ANSWER_BURST
    assert seeder.counts["limited:metadata"] == 50
    assert _ask(seeder, ih, 0, addr=B)[1]  # another address has its own budget
    assert _ask(seeder, ih, 0, now=1.0)[1]  # and the budget refills with time


# ---- the metadata fetch, as pure decisions (times passed in, nonces counted)

P, Q = ("10.0.0.5", 6881), ("10.0.0.6", 6881)
COOKIE = b"C" * 8


def _info_dict(tmp: Path) -> tuple[bytes, bytes]:
    path = tmp / "g.bin"
    path.write_bytes(random.Random(5).randbytes(100 * 16))
    meta, _ = make_torrent(path, "http://tracker.invalid:1", 16)
    assert wire.metadata_pieces(len(meta.info_bytes)) == 3
    return meta.info_hash, meta.info_bytes


def _fetch(ih: bytes, owners: list[tuple[object, int]], **kw: object) -> m.MetadataFetch:
    counter = itertools.count(1)
    return m.MetadataFetch(ih, owners, request_timeout=1.0, nonce=lambda: next(counter), **kw)  # type: ignore[arg-type]


def _resp(ih: bytes, status: int = wire.OK) -> wire.InfoResponse:
    return wire.InfoResponse(0, ih, status, 10, 16, COOKIE)


def _sent(actions: list[m.Action]) -> list[wire.MetadataRequest]:
    out = []
    for a in actions:
        assert isinstance(a, m.Send)
        msg = wire.decode(a.datagram)
        assert isinstance(msg, wire.MetadataRequest)
        out.append(msg)
    return out


def _answer(req: wire.MetadataRequest, info: bytes, total: int | None = None) -> wire.Metadata:
    at = req.piece * wire.METADATA_PIECE
    return wire.Metadata(req.info_hash, req.nonce, len(info) if total is None else total, req.piece,
                         info[at : at + wire.METADATA_PIECE])


def _serve(f: m.MetadataFetch, addr: object, info: bytes, reqs: list[wire.MetadataRequest], now: float) -> list[m.Action]:
    """Answer requests one by one, and the ones they lead to, until no request is left: the final actions."""
    last: list[m.Action] = []
    while reqs:
        req = reqs.pop(0)
        refused, last = f.metadata_received(_answer(req, info), addr, now)
        assert refused is None
        reqs += [r for r in _sent([a for a in last if isinstance(a, m.Send)])]
    return last


def test_the_info_dict_is_fetched_from_the_first_owner(tmp_path: Path) -> None:
    ih, info = _info_dict(tmp_path)
    f = _fetch(ih, [(P, 1), (Q, 2)])
    assert f.started(0.0) == [m.Note("fetching the torrent's metadata from 2 owners"), m.Greet(P, 1.0)]
    [first] = _sent(f.info_answered(P, _resp(ih), 0.1))
    assert (first.piece, first.cookie, first.info_hash) == (0, COOKIE, ih)
    # The size learned from piece 0: the rest asked at once (within the window).
    refused, actions = f.metadata_received(_answer(first, info), P, 0.2)
    assert refused is None and [r.piece for r in _sent(actions)] == [1, 2]
    assert _serve(f, P, info, _sent(actions), 0.3) == [m.Done(info)]


def test_lost_requests_are_asked_again_then_the_silent_owner_dropped(tmp_path: Path) -> None:
    ih, info = _info_dict(tmp_path)
    f = _fetch(ih, [(P, 1), (Q, 2)])
    f.started(0.0)
    [first] = _sent(f.info_answered(P, _resp(ih), 0.0))
    assert f.tick(0.5) == []
    [again] = _sent(f.tick(1.0))  # lost: asked again with a fresh nonce
    assert again.piece == 0 and again.nonce != first.nonce
    # The late answer to the first request still counts.
    refused, actions = f.metadata_received(_answer(first, info), P, 1.25)
    assert refused is None and [r.piece for r in _sent(actions)] == [1, 2]
    assert f.metadata_received(_answer(again, info), P, 1.5) == ("late", [])  # piece 0 is in already
    t = 1.25  # (times exact in binary: the timeout is reached exactly)
    for _ in range(m.MAX_TRIES - 1):
        t += 1.0
        assert [r.piece for r in _sent(f.tick(t))] == [1, 2]
    dropped, greet = f.tick(t + 1.0)
    assert isinstance(dropped, m.Dropped) and dropped.addr == P and "stopped answering" in dropped.reason
    assert greet == m.Greet(Q, 1.0)


def test_a_wrong_info_dict_is_caught_by_the_hash_and_the_next_owner_used(tmp_path: Path) -> None:
    ih, info = _info_dict(tmp_path)
    wrong = info[:-2] + b"xe"
    f = _fetch(ih, [(P, 1), (Q, 2)])
    f.started(0.0)
    actions = _serve(f, P, wrong, _sent(f.info_answered(P, _resp(ih), 0.0)), 0.1)
    dropped, greet = actions
    assert isinstance(dropped, m.Dropped) and dropped.node_id == 1 and "SHA-1 is not the info hash" in dropped.reason
    assert greet == m.Greet(Q, 1.0)
    # What the liar still sends is late; the second owner starts afresh and gives the right dict.
    assert f.metadata_received(wire.Metadata(ih, 1, len(info), 0, info[:1024]), P, 0.2)[0] == "late"
    assert _serve(f, Q, info, _sent(f.info_answered(Q, _resp(ih), 0.3)), 0.4) == [m.Done(info)]


def test_an_oversized_claim_is_refused(tmp_path: Path) -> None:
    ih, info = _info_dict(tmp_path)
    f = _fetch(ih, [(P, 1)], max_size=2048)
    f.started(0.0)
    [first] = _sent(f.info_answered(P, _resp(ih), 0.0))
    refused, actions = f.metadata_received(_answer(first, info, total=4096), P, 0.1)
    assert refused is None
    dropped, failed = actions
    assert isinstance(dropped, m.Dropped) and "4096 bytes, more than the 2048 allowed" in dropped.reason
    assert isinstance(failed, m.Failed) and "node 1 at 10.0.0.5:6881 claimed an info dict of 4096" in failed.reason
    assert f.tick(100.0) == []


def test_a_changed_size_claim_is_refused(tmp_path: Path) -> None:
    ih, info = _info_dict(tmp_path)
    f = _fetch(ih, [(P, 1), (Q, 2)])
    f.started(0.0)
    [first] = _sent(f.info_answered(P, _resp(ih), 0.0))
    _, actions = f.metadata_received(_answer(first, info), P, 0.1)
    second = _sent(actions)[0]
    _, actions = f.metadata_received(_answer(second, info + b"x" * 1024), P, 0.2)
    dropped, greet = actions
    assert isinstance(dropped, m.Dropped) and "changed its info dict's size" in dropped.reason
    assert greet == m.Greet(Q, 1.0)


def test_forged_and_unasked_answers_change_nothing(tmp_path: Path) -> None:
    ih, info = _info_dict(tmp_path)
    f = _fetch(ih, [(P, 1)])
    f.started(0.0)
    [first] = _sent(f.info_answered(P, _resp(ih), 0.0))
    forged = wire.Metadata(ih, first.nonce + 99, len(info), 0, info[:1024])
    assert f.metadata_received(forged, P, 0.1) == ("unmatched METADATA", [])
    assert f.metadata_received(_answer(first, info), Q, 0.1) == ("unmatched METADATA", [])
    other_piece = wire.Metadata(ih, first.nonce, len(info), 1, info[1024:2048])
    assert f.metadata_received(other_piece, P, 0.1) == ("unmatched METADATA", [])
    assert f.error_received(wire.Error(ih, 12345, wire.E_NOT_FOUND, "x"), P, 0.1) == ("unmatched ERROR", [])
    assert f.info_answered(Q, _resp(ih), 0.1) == []
    assert f.current is not None and f.current.addr == P and f.current.asked


def test_a_refused_cookie_greets_again_once(tmp_path: Path) -> None:
    ih, info = _info_dict(tmp_path)
    f = _fetch(ih, [(P, 1)])
    f.started(0.0)
    [first] = _sent(f.info_answered(P, _resp(ih), 0.0))
    refused, actions = f.error_received(wire.Error(ih, first.nonce, wire.E_BAD_COOKIE, "bad cookie"), P, 0.1)
    assert refused is None and actions == [m.Greet(P, 1.0)]
    [again] = _sent(f.info_answered(P, _resp(ih), 0.2))
    _, actions = f.error_received(wire.Error(ih, again.nonce, wire.E_BAD_COOKIE, "bad cookie"), P, 0.3)
    dropped, failed = actions
    assert isinstance(dropped, m.Dropped) and isinstance(failed, m.Failed)


def test_owners_that_do_not_share_it_or_stay_silent(tmp_path: Path) -> None:
    ih, _ = _info_dict(tmp_path)
    f = _fetch(ih, [(P, 1), (Q, 2)])
    f.started(0.0)
    dropped, greet = f.info_answered(P, _resp(ih, wire.NOT_FOUND), 0.1)
    assert isinstance(dropped, m.Dropped) and "does not share it" in dropped.reason and greet == m.Greet(Q, 1.0)
    assert f.info_timed_out(Q, "no answer", 1.1) == [m.Greet(Q, 2.0)]
    dropped, failed = f.info_timed_out(Q, "no answer", 3.1)
    assert isinstance(failed, m.Failed)
    assert "node 1 at 10.0.0.5:6881 does not share it" in failed.reason
    assert "node 2 at 10.0.0.6:6881 did not answer INFO" in failed.reason


def test_the_time_bound(tmp_path: Path) -> None:
    ih, _ = _info_dict(tmp_path)
    f = _fetch(ih, [(P, 1)], seconds=5.0)
    f.started(0.0)
    f.info_answered(P, _resp(ih), 0.0)
    assert all(isinstance(a, m.Send) for a in f.tick(4.0))
    [failed] = f.tick(5.0)
    assert isinstance(failed, m.Failed)
    assert "no owner gave it within 5 s (still asking node 1 at 10.0.0.5:6881)" in failed.reason
    assert f.tick(6.0) == []


def test_no_owner_at_all() -> None:
    [failed] = _fetch(b"\x01" * 20, []).started(0.0)
    assert isinstance(failed, m.Failed) and "no other owner" in failed.reason


# ---- the fetcher's I/O shell over the in-memory network (virtual time), and the real node over loopback

def _fetched(swarm: Swarm, owners: Sequence[tuple[object, int]]) -> tuple[list[object], m.MetadataFetcher]:
    fetch = m.MetadataFetch(swarm.meta.info_hash, owners, request_timeout=0.5)
    fetcher = m.MetadataFetcher(fetch, swarm.proto, swarm.clock)
    outcome: list[object] = []
    fetcher.start().addBoth(outcome.append)
    swarm.net.run(lambda: bool(outcome), limit=120.0)
    return outcome, fetcher


def test_the_info_dict_arrives_over_a_lossy_network(tmp_path: Path) -> None:
    swarm = Swarm(tmp_path, 1000 * 16, seeders=2, piece_length=16, faults=Faults(loss=0.2, duplicate=0.05, reorder=0.1))
    owners = [((o.host, o.port), o.node_id) for o in swarm.owners]
    outcome, _ = _fetched(swarm, owners)
    assert outcome == [swarm.meta.info_bytes]
    assert wire.metadata_pieces(len(swarm.meta.info_bytes)) > 10
    assert not swarm.proto.fetches
    assert swarm.proto.counts["rejected"] == 0  # late duplicates are counted late, never as hostile


def test_a_peer_sending_a_wrong_info_dict_is_dropped_and_the_fetch_goes_on(tmp_path: Path) -> None:
    def lie(src: object, dst: object, data: bytes) -> bytes:
        if src == liar and data[3] == wire.METADATA:
            return data[:-1] + bytes([data[-1] ^ 1])  # the same length: only the hash can tell
        return data

    swarm = Swarm(tmp_path, 100 * 16, seeders=2, piece_length=16, faults=Faults(tamper=lie))
    liar = (swarm.owners[0].host, swarm.owners[0].port)
    owners = [((o.host, o.port), o.node_id) for o in swarm.owners]
    outcome, fetcher = _fetched(swarm, owners)
    assert outcome == [swarm.meta.info_bytes]
    assert fetcher.fetch.gone == {liar}
    assert any("SHA-1 is not the info hash" in t for t in fetcher.fetch.tried)


def test_a_fetch_with_nobody_answering_fails_in_its_time(tmp_path: Path) -> None:
    swarm = Swarm(tmp_path, 100 * 16, seeders=1, piece_length=16)
    swarm.stop_seeder(0)
    outcome, _ = _fetched(swarm, [((swarm.owners[0].host, swarm.owners[0].port), 1)])
    [failure] = outcome
    assert isinstance(failure, Failure) and failure.check(m.MetadataError)
    assert "node 1 at 10.0.0.1:6000 did not answer INFO" in failure.getErrorMessage()


def test_metadata_from_a_stranger_is_refused_by_the_protocol(tmp_path: Path) -> None:
    swarm = Swarm(tmp_path, 100 * 16, seeders=1, piece_length=16)
    fetch = m.MetadataFetch(swarm.meta.info_hash, [(("10.0.0.1", 6000), 1)], request_timeout=0.5)
    m.MetadataFetcher(fetch, swarm.proto, swarm.clock).start()
    info = swarm.meta.info_bytes
    forged = wire.encode_metadata(swarm.meta.info_hash, 1, len(info), 0, info[:1024])
    swarm.proto.datagramReceived(forged, ("10.9.9.9", 1))
    swarm.proto.datagramReceived(wire.encode_metadata(b"\x07" * 20, 1, len(info), 0, info[:1024]), ("10.0.0.1", 6000))
    assert swarm.proto.counts["rejected:stranger"] == 1
    assert swarm.proto.counts["rejected:unknown download"] == 1
    assert fetch.current is not None and not fetch.current.pieces


@pytest.fixture
def nodes(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A tracker and nodes in this reactor (test_loopback's Cluster)."""
    c = Cluster(tmp_path)
    yield c
    pytest_twisted.blockon(defer.ensureDeferred(c.stop()))


@pytest_twisted.ensureDeferred
async def test_a_node_with_only_the_magnet_link_downloads_from_two_seeders(nodes: Cluster) -> None:
    cluster = nodes
    seeders, want, torrent = await _seeders(cluster, 2, 3 * MIB + 99)
    meta = read_torrent(torrent)
    downloader = cluster.node(3)
    await _registered(downloader)
    link = f"magnet:?xt=urn:btih:{meta.info_hash_hex}&dn=data.bin&tr=http%3A%2F%2Felsewhere.invalid%2Fannounce"
    notes: list[str] = []
    message = await downloader.download(link, lambda p: notes.append(p.get("note", "")))
    out = cluster.tmp / "nf" / "3" / "data.bin"
    assert hashlib.sha256(out.read_bytes()).hexdigest() == want
    assert "downloaded data.bin" in message
    assert "fetching the torrent's metadata from 2 owners" in notes
    saved = read_torrent(cluster.tmp / "nf" / "3" / "data.bin.torrent")
    assert saved.info_hash == meta.info_hash and saved.announce == "http://elsewhere.invalid/announce"
    # A bare info hash for a file seeded here now: nothing to fetch.
    again = await downloader.download(meta.info_hash_hex, lambda p: None)
    assert "already complete" in again


@pytest_twisted.ensureDeferred
async def test_two_downloads_of_one_link_share_the_fetch_and_no_torrent_is_overwritten(nodes: Cluster) -> None:
    cluster = nodes
    _, want, torrent = await _seeders(cluster, 1, 100_000)
    meta = read_torrent(torrent)
    downloader = cluster.node(2)
    await _registered(downloader)
    other = cluster.tmp / "nf" / "2" / "data.bin.torrent"
    other.write_bytes(b"not this torrent")
    link = f"magnet:?xt=urn:btih:{meta.info_hash_hex}"
    first = downloader.download(link, lambda p: None)
    second = downloader.download(meta.info_hash_hex.upper(), lambda p: None)
    said = await defer.gatherResults([first, second])
    assert all("data.bin" in s for s in said)
    assert hashlib.sha256((cluster.tmp / "nf" / "2" / "data.bin").read_bytes()).hexdigest() == want
    assert other.read_bytes() == b"not this torrent"
    saved = read_torrent(cluster.tmp / "nf" / "2" / f"data.bin.{meta.info_hash_hex}.torrent")
    assert saved.info_hash == meta.info_hash
    # Announced with this node's tracker: the link named none.
    assert saved.announce == downloader.settings.announce_url


def test_an_error_the_fetch_did_not_ask_for_goes_to_a_download_of_that_file() -> None:
    class Sink:
        def __init__(self, answer: str | None) -> None:
            self.answer = answer
            self.got: list[object] = []

        def on_message(self, msg: object, addr: object) -> str | None:
            self.got.append(msg)
            return self.answer

        def stop(self, reason: str) -> None:
            pass

    clock = Clock()
    proto = NodeProtocol(Seeder(b"s" * 32, 9000), clock, 9000)
    proto.makeConnection(FakeDatagramTransport())
    ih = b"\x05" * 20
    fetch, download = Sink("unmatched ERROR"), Sink(None)
    proto.fetches[ih] = fetch
    proto.downloads = {ih: download}  # type: ignore[dict-item]
    proto.ask_info(P, ih, 1.0).addErrback(lambda _: None)
    error = wire.encode_error(ih, 7, wire.E_CHOKED, "later")
    proto.datagramReceived(error, P)
    assert len(fetch.got) == len(download.got) == 1
    assert proto.counts["rejected"] == 0
    proto.datagramReceived(wire.encode_metadata(ih, 7, 10, 0, bytes(10)), P)
    assert len(fetch.got) == 2 and len(download.got) == 1  # METADATA is the fetch's alone
    clock.advance(2.0)
