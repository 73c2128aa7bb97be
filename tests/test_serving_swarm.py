"""The seeder's swarming side, driven directly (no network, times passed in).

A file still downloading is served piece by piece as its map says; upload
slots refuse peers beyond them with E_CHOKED; a complete file wanted by
several peers at once offers each only its least-uploaded pieces; peers that
asked HAVE hear of new pieces at once.
"""

from __future__ import annotations

import random
from pathlib import Path

from p2ptorrent import wire
from p2ptorrent.metainfo import Metainfo, make_torrent
from p2ptorrent.node.choker import Choker
from p2ptorrent.node.serving import Seeder

PIECE = 16 * 1024
A, B = ("10.0.0.1", 7001), ("10.0.0.2", 7002)
N = 0xC0FFEE  # the nonce of these requests


def _file(tmp: Path, pieces: int = 8) -> tuple[Metainfo, Path, bytes]:
    data = random.Random(4).randbytes(pieces * PIECE)
    path = tmp / "f.bin"
    path.write_bytes(data)
    return make_torrent(path, "http://tracker.invalid:1", PIECE)[0], path, data


def _seeder(slots: int = 4) -> Seeder:
    return Seeder(b"s" * 32, 9000, slots=Choker(slots, random.Random(1)))


def _decoded(reply: tuple[str | None, object]) -> list[wire.Message]:
    return [wire.decode(d) for d in reply[1]]  # type: ignore[attr-defined]


def _info(seeder: Seeder, meta: Metainfo, addr: object) -> wire.InfoResponse:
    [resp] = _decoded(seeder.on_info(wire.InfoRequest(N, meta.info_hash), addr))
    assert isinstance(resp, wire.InfoResponse)
    return resp


def _blocks(seeder: Seeder, meta: Metainfo, addr: object, pieces: list[int], now: float) -> list[wire.Message]:
    req = wire.BlockRequest(meta.info_hash, seeder.cookie(addr), N, tuple((p, 0, 1000) for p in pieces))
    return _decoded(seeder.on_blocks(req, addr, 100, now))


def test_a_file_still_downloading_is_served_as_its_map_says(tmp_path: Path) -> None:
    meta, path, data = _file(tmp_path)
    have = bytearray(meta.num_pieces)
    have[2] = have[5] = 1
    seeder = _seeder()
    seeder.add_partial(meta, path, have)
    assert _info(seeder, meta, A).status == wire.PARTIAL
    req = wire.HaveRequest(meta.info_hash, seeder.cookie(A), N, 0, meta.num_pieces, wire.F_INTERESTED)
    [answer] = _decoded(seeder.on_have(req, A, 37, 0.0))
    assert isinstance(answer, wire.Have) and answer.pieces() == [2, 5] and answer.flags == 0
    # Blocks of pieces held are served; the others are skipped and counted.
    got = _blocks(seeder, meta, A, [2, 3, 5], 0.0)
    assert [(m.piece, m.data) for m in got if isinstance(m, wire.Block)] == [
        (2, data[2 * PIECE : 2 * PIECE + 1000]), (5, data[5 * PIECE : 5 * PIECE + 1000]),
    ]
    assert seeder.counts["limited:not held"] == 1
    have[3] = 1  # written since: served from now on
    assert [m.piece for m in _blocks(seeder, meta, A, [3], 0.1) if isinstance(m, wire.Block)] == [3]


def test_peers_beyond_the_upload_slots_are_refused_until_a_slot_frees(tmp_path: Path) -> None:
    meta, path, _ = _file(tmp_path)
    seeder = _seeder(slots=1)
    seeder.add(meta, path)
    assert isinstance(_blocks(seeder, meta, A, [0], 0.0)[0], wire.Block)  # the free regular slot
    assert isinstance(_blocks(seeder, meta, B, [0], 0.0)[0], wire.Block)  # the optimistic one
    C = ("10.0.0.3", 7003)
    [refusal] = _blocks(seeder, meta, C, [0], 0.0)
    assert isinstance(refusal, wire.Error) and refusal.code == wire.E_CHOKED
    assert seeder.counts["limited:choked"] == 1
    req = wire.HaveRequest(meta.info_hash, seeder.cookie(C), N, 0, meta.num_pieces, wire.F_INTERESTED)
    [have] = _decoded(seeder.on_have(req, C, 37, 1.0))
    assert isinstance(have, wire.Have) and have.flags & wire.F_CHOKED
    # A and B stop asking; C keeps asking: after the interest timeout and a rotation it is served.
    for t in range(2, 40):
        seeder.on_have(req, C, 37, float(t))
    assert isinstance(_blocks(seeder, meta, C, [0], 40.0)[0], wire.Block)


def test_a_complete_file_wanted_by_several_offers_its_least_uploaded_pieces(tmp_path: Path) -> None:
    meta, path, _ = _file(tmp_path, pieces=4)
    seeder = _seeder()
    seeder.add(meta, path)
    # Alone, A gets what it asks: the whole of piece 0.
    req = wire.BlockRequest(meta.info_hash, seeder.cookie(A), N, tuple((0, k * 4096, 4096) for k in range(4)))
    assert len(_decoded(seeder.on_blocks(req, A, 100, 0.0))) == 4
    # B asks too: piece 0 went out once already, the others never; B is offered 1-3 only.
    got = _blocks(seeder, meta, B, [0, 1], 0.5)
    offers = [m for m in got if isinstance(m, wire.Have)]
    blocks = [m for m in got if isinstance(m, wire.Block)]
    assert [b.piece for b in blocks] == [1]
    assert len(offers) == 1 and offers[0].pieces() == [1, 2, 3] and not offers[0].flags & wire.F_COMPLETE
    assert seeder.counts["limited:offered elsewhere"] == 1
    # Its HAVE answer says the same; once every piece went out once, everything is offered again.
    have_req = wire.HaveRequest(meta.info_hash, seeder.cookie(B), N, 0, 4, wire.F_INTERESTED)
    [have] = _decoded(seeder.on_have(have_req, B, 37, 0.6))
    assert isinstance(have, wire.Have) and have.pieces() == [1, 2, 3]
    for p in (1, 2, 3):
        whole = wire.BlockRequest(meta.info_hash, seeder.cookie(A), N, tuple((p, k * 4096, 4096) for k in range(4)))
        assert len(_decoded(seeder.on_blocks(whole, A, 100, 0.7))) == 4  # (blocks are read as they are sent)
    [have] = _decoded(seeder.on_have(have_req, B, 37, 0.8))
    assert have.pieces() == [0, 1, 2, 3]


def test_peers_that_asked_hear_of_new_pieces_at_once(tmp_path: Path) -> None:
    meta, path, _ = _file(tmp_path)
    have = bytearray(meta.num_pieces)
    seeder = _seeder()
    seeder.add_partial(meta, path, have)
    assert seeder.news(meta.info_hash, 0, 0.0) == []  # nobody asked yet
    req = wire.HaveRequest(meta.info_hash, seeder.cookie(A), N, 0, meta.num_pieces, wire.F_INTERESTED)
    seeder.on_have(req, A, 37, 1.0)
    have[4] = 1
    [(datagram, to)] = seeder.news(meta.info_hash, 4, 2.0)
    news = wire.decode(datagram)
    assert to == A and isinstance(news, wire.Have) and news.pieces() == [4] and news.flags == wire.F_NEWS
    assert news.nonce == N  # the nonce of A's latest HAVE_REQ: what A takes news by
    seeder.on_have(wire.HaveRequest(meta.info_hash, seeder.cookie(A), N + 1, 0, meta.num_pieces, wire.F_INTERESTED), A, 37, 2.5)
    [(datagram, _)] = seeder.news(meta.info_hash, 4, 3.0)
    assert wire.decode(datagram).nonce == N + 1
    assert seeder.news(meta.info_hash, 4, 10.0) == []  # A has not asked for a while: no more news
    # Forged addresses never get news: only a HAVE_REQ with the right cookie enrols.
    forged = wire.HaveRequest(meta.info_hash, b"x" * 8, N, 0, meta.num_pieces, wire.F_INTERESTED)
    seeder.on_have(forged, B, 37, 11.0)
    assert seeder.news(meta.info_hash, 4, 11.5) == []
