"""The block scheduler, driven directly: no network, no clock but the numbers we pass."""

from __future__ import annotations

import hashlib
import random

from p2ptorrent.node.transfer import (
    INITIAL_WINDOW,
    MAX_REQUESTERS,
    Geometry,
    PeerDropped,
    PieceAssembled,
    PieceFailed,
    PieceVerified,
    UNASKED_BLOCK,
    UNMATCHED_BLOCK,
    Transfer,
)

CHUNK = 1000
PIECE = 4000
DATA = random.Random(3).randbytes(10 * PIECE + 1234)
GEO = Geometry(len(DATA), PIECE, CHUNK)
HASHES = b"".join(hashlib.sha1(DATA[i : i + PIECE]).digest() for i in range(0, len(DATA), PIECE))
A, B = ("10.0.0.1", 1), ("10.0.0.2", 2)


#: Every request of these tests carries this nonce (the transfer takes a block only with a nonce it sent).
NONCE = 0x5EED


def _transfer(**kw: object) -> Transfer:
    kw.setdefault("peer_timeout", 5.0)
    kw.setdefault("nonce", lambda: NONCE)
    t = Transfer(GEO, HASHES, first_timeout=1.0, max_batch=8, **kw)  # type: ignore[arg-type]
    t.add_peer(A, 1, b"a" * 8, 0.0)
    return t


def _answer(t: Transfer, addr: object, piece: int, offset: int, length: int, now: float, data: bytes = DATA):
    """One block in; a piece it completes is judged at once, as the writer thread would."""
    start = piece * PIECE + offset
    out = t.on_block(addr, NONCE, piece, offset, data[start : start + length], now)
    if isinstance(out, PieceAssembled):
        return t.checked(out.piece, hashlib.sha1(out.data).digest() == t.piece_hash(out.piece))
    return out


def test_geometry() -> None:
    assert GEO.num_pieces == 11 and GEO.blocks_per_piece == 4
    assert GEO.piece_size(10) == 1234 and GEO.blocks_in_piece(10) == 2
    assert GEO.block(10 * 4 + 1) == (10, 1000, 234)


def test_requests_fill_the_window_in_batches_without_repeats() -> None:
    t = _transfer()
    out = t.requests(0.0)
    blocks = [b for _, _, batch in out for b in batch]
    assert len(blocks) == INITIAL_WINDOW
    assert all(len(batch) <= 8 for _, _, batch in out)
    assert len(set(blocks)) == len(blocks)
    assert t.requests(0.0) == []  # the window is full


def test_whole_file_from_one_peer_verifies_every_piece() -> None:
    t = _transfer()
    verified = []
    now = 0.0
    while not t.done:
        now += 0.01
        for peer, _, batch in t.requests(now):
            for piece, offset, length in batch:
                r = _answer(t, peer.addr, piece, offset, length, now)
                if isinstance(r, PieceVerified):
                    assert r.data == DATA[piece * PIECE : piece * PIECE + GEO.piece_size(piece)]
                    verified.append(piece)
    assert sorted(verified) == list(range(11))
    assert t.peers[A].srtt is not None and t.peers[A].window > INITIAL_WINDOW


def test_lost_requests_time_out_back_off_and_go_to_another_peer() -> None:
    t = _transfer(peer_timeout=10.0)  # the back-off's ceiling is PEER_TIMEOUT / PROBES_BEFORE_DROP = 2.5 s
    lost = [b for _, _, batch in t.requests(0.0) for b in batch]
    assert t.tick(0.5) == []  # not yet
    assert t.tick(1.01) == []
    a = t.peers[A]
    assert a.timeouts == len(lost) and not a.inflight
    assert a.window == INITIAL_WINDOW / 2 and a.rto == 2.0
    t.add_peer(B, 2, b"b" * 8, 1.01)
    again = [b for _, _, batch in t.requests(1.01, only=B) for b in batch]
    assert again == lost  # requeued at the front, in order


def test_silent_peer_is_dropped_and_its_blocks_released() -> None:
    t = _transfer()
    t.requests(0.0)
    dropped = []
    now = 0.0
    while not dropped:
        now += 0.5
        dropped = t.tick(now)
        t.requests(now)
    [d] = dropped
    assert isinstance(d, PeerDropped) and d.peer.addr == A and "sent nothing for" in d.reason
    assert 5.0 < now <= 6.0
    assert not t.peers and not t.requesters


def test_foreign_and_malformed_blocks_are_ignored() -> None:
    t = _transfer()
    t.requests(0.0)
    assert _answer(t, ("6.6.6.6", 6), 0, 0, CHUNK, 0.1) == UNMATCHED_BLOCK  # not a peer
    assert t.on_block(A, NONCE, 0, 1, DATA[1:1001], 0.1) == UNASKED_BLOCK  # a part running past its block's end
    assert t.on_block(A, NONCE, 0, 1000, b"", 0.1) == UNASKED_BLOCK  # an empty part
    assert t.on_block(A, NONCE, 9, 100, DATA[9 * PIECE + 100 : 9 * PIECE + 200], 0.1) == UNASKED_BLOCK  # never asked
    assert t.on_block(A, NONCE, 9, 0, DATA[9 * PIECE : 9 * PIECE + CHUNK], 0.1) == UNASKED_BLOCK  # a whole one, never asked
    assert t.on_block(A, NONCE, 99, 0, b"x", 0.1) == UNASKED_BLOCK  # no such piece
    assert t.on_block(A, NONCE + 1, 0, 0, DATA[:CHUNK], 0.1) == UNMATCHED_BLOCK  # asked, but not with that nonce
    assert t.rejected == 7 and not any(t.received) and not t.pieces and t.peers[A].last_data == 0.0


def test_a_block_sent_in_parts_counts_once_every_byte_is_here_in_any_order() -> None:
    """A sender whose path cannot carry a block whole sends it in several datagrams (wire.split_block)."""
    t = _transfer()
    t.requests(0.0)
    parts = [(300, 700), (0, 300), (300, 700), (700, 1000)]  # out of order, one twice
    results = [t.on_block(A, NONCE, 0, a, DATA[a:b], 0.1) for a, b in parts]
    assert results == [None] * 4
    assert t.received[0] and not any(t.received[1:])  # whole at the last byte, not before
    assert t.duplicates == 1 and t.peers[A].blocks == 1 and t.peers[A].bytes == CHUNK and not t.parts
    assert 0 not in t.peers[A].inflight
    for a in range(CHUNK, PIECE, CHUNK):  # the rest of piece 0 whole: it verifies with the parts' bytes
        out = _answer(t, A, 0, a, CHUNK, 0.1)
    assert isinstance(out, PieceVerified) and t.verified[0]


def test_duplicates_are_counted_once() -> None:
    t = _transfer()
    t.requests(0.0)
    _answer(t, A, 0, 0, CHUNK, 0.1)
    _answer(t, A, 0, 0, CHUNK, 0.1)
    assert t.duplicates == 1 and t.peers[A].blocks == 1


def test_corrupt_data_fails_the_piece_and_three_strikes_drop_the_peer() -> None:
    t = _transfer()
    bad = bytes(b ^ 1 for b in DATA)
    failures = 0
    now = 0.0
    while A in t.peers:
        now += 0.01
        for peer, _, batch in t.requests(now):
            for piece, offset, length in batch:
                r = _answer(t, peer.addr, piece, offset, length, now, data=bad)
                failures += isinstance(r, PieceFailed)
                assert not isinstance(r, PieceVerified)
        for d in t.tick(now):
            assert "sent corrupt data for" in d.reason and d.peer.strikes >= 3
    assert failures >= 3 and not any(t.verified)


def test_endgame_asks_a_second_peer_for_what_the_first_still_owes() -> None:
    t = _transfer()
    t.requests(0.0, only=A)  # A is asked first and never answers
    owed = set(t.peers[A].inflight)
    assert len(owed) == INITIAL_WINDOW
    t.add_peer(B, 2, b"b" * 8, 0.0)
    now = 0.0
    extra: set[int] = set()
    # B answers everything except the blocks A owes, which B is asked for only at the end.
    while True:
        now += 0.001
        out = t.requests(now, only=B)
        if not out:
            break
        for _, _, batch in out:
            for piece, offset, length in batch:
                bid = GEO.blocks_per_piece * piece + offset // CHUNK
                if bid in owed:
                    # Only when every other block is here or already asked of B.
                    every = [b for p in range(GEO.num_pieces) for b in GEO.block_ids(p)]
                    assert all(t.received[b] or b in owed or b in t.peers[B].inflight for b in every)
                    extra.add(bid)
                else:
                    _answer(t, B, piece, offset, length, now)
    assert extra == owed
    assert all(len(h) <= MAX_REQUESTERS for h in t.requesters.values())
    for bid in extra:
        piece, offset, length = GEO.block(bid)
        _answer(t, B, piece, offset, length, now)
    assert t.done and not t.peers[A].inflight


def test_pieces_checked_elsewhere_are_handed_out_then_judged() -> None:
    """A full piece comes back assembled; checked() gives the verdict later."""
    t = _transfer()
    t.add_peer(B, 2, b"b" * 8, 0.0)
    t.requests(0.0)  # piece 0 of A, the rest of B
    for b in range(4):
        out = t.on_block(A, NONCE, 0, b * CHUNK, DATA[b * CHUNK : (b + 1) * CHUNK], 0.1)
    assert isinstance(out, PieceAssembled) and out.piece == 0 and out.sources == {A}
    assert bytes(out.data) == DATA[:PIECE]
    assert not t.verified[0] and t.remaining == GEO.num_pieces
    # While it is checked, its blocks are neither taken again nor asked for again.
    assert _answer(t, B, 0, 0, CHUNK, 0.2) is None and t.duplicates == 1
    asked = [blk for _, _, batch in t.requests(0.3) for blk in batch]
    assert all(piece != 0 for piece, _, _ in asked)
    ok = t.checked(0, True)
    assert isinstance(ok, PieceVerified) and ok.piece == 0 and bytes(ok.data) == DATA[:PIECE]
    assert t.verified[0] and t.remaining == GEO.num_pieces - 1
    assert t.checked(0, True) is None  # judged once

    for b in range(4):
        out = t.on_block(B, NONCE, 1, b * CHUNK, bytes(CHUNK), 0.4)
    assert isinstance(out, PieceAssembled)
    bad = t.checked(1, False)
    assert isinstance(bad, PieceFailed) and bad.sources == {B}
    assert t.peers[B].strikes == 1 and not t.verified[1]
    assert list(t.ask_again)[:4] == list(GEO.block_ids(1))  # asked again first


def test_scheduler_state_grows_by_bytes_per_block_not_objects() -> None:
    """2 GiB of 7216-byte blocks (297,620 of them): the scheduler stays under 2 MiB.

    Two bytes a block (received, asked) are expected; a list of every block id
    would add ~36 bytes a block, over 10 MiB.
    """
    import tracemalloc

    geo = Geometry(2 * 1024**3, 1024 * 1024, 7216)
    hashes = bytes(20 * geo.num_pieces)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        t = Transfer(geo, hashes)
        t.add_peer(A, 1, b"a" * 8, 0.0)
        t.requests(0.0)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used < 2 * 1024 * 1024, used
    assert sum(len(b) for _, _, b in t.requests(0.0)) == 0  # the window is full: nothing more asked


def test_a_silent_peer_is_probed_steadily_and_kept_if_it_answers_before_the_peer_timeout() -> None:
    """Requests lost for 9 s of a 10 s PEER_TIMEOUT: the back-off stays under PEER_TIMEOUT / PROBES_BEFORE_DROP,
    so the peer is asked again all along, and one answer just before the deadline keeps it."""
    from p2ptorrent.node.transfer import PROBES_BEFORE_DROP

    t = _transfer(peer_timeout=10.0)
    asked_at = []
    now = 0.0
    while now < 9.0:  # everything sent is lost
        now = round(now + 0.05, 2)
        assert not t.tick(now)
        if t.requests(now):
            asked_at.append(now)
    assert t.peers[A].rto <= 10.0 / PROBES_BEFORE_DROP
    assert len([x for x in asked_at if x > 1.0]) >= PROBES_BEFORE_DROP  # asked again, again and again
    # It answers at last: alive.
    piece, offset, length = GEO.block(next(iter(t.peers[A].inflight)))
    _answer(t, A, piece, offset, length, 9.5)
    assert not t.tick(10.5) and A in t.peers


def test_a_peer_silent_past_the_peer_timeout_is_dropped_with_the_figures() -> None:
    t = _transfer(peer_timeout=10.0)
    now, dropped = 0.0, []
    while not dropped and now < 30.0:
        now = round(now + 0.05, 2)
        dropped = t.tick(now)
        t.requests(now)
    [gone] = dropped
    assert 10.0 < now <= 10.1
    assert gone.reason.startswith("sent nothing for 10.") and "requests timed out" in gone.reason
    assert "round trip never measured" in gone.reason and "last timeout 2.5 s" in gone.reason


def test_a_block_lost_is_seen_from_the_blocks_asked_after_it_and_asked_again_at_once() -> None:
    """Long before its 1 s timeout: the peer answers in order, so what came after it says it is lost."""
    t = _transfer()
    [(_, _, batch), *_rest] = t.requests(0.0)
    first, *later = batch
    for piece, offset, length in later[:2]:  # two later blocks: could still be reordering
        _answer(t, A, piece, offset, length, 0.01)
    assert t.batch_done(0.01) == [A] and t.peers[A].lost_in_order == 0
    for piece, offset, length in later[2:4]:  # past REORDERING: lost
        _answer(t, A, piece, offset, length, 0.02)
    assert t.batch_done(0.02) == [A]
    assert t.peers[A].lost_in_order == 1 and t.retransmits == 1 and t.peers[A].timeouts == 0
    again = [b for _, _, batch in t.requests(0.02) for b in batch]
    assert again[0] == first  # asked again first, 0.02 s after it was asked, not after 1 s
    assert t.batch_done(0.03) == []  # nothing came in this batch: nothing to decide


def _lossy_run(loss: float, rounds: int = 40, seed: int = 5) -> tuple[Transfer, list[float]]:
    """One peer with a 10 ms round trip losing *loss* of the blocks at random; the window after every round.

    The file (1 GiB of zeros, never checked) is bigger than the run moves: the end of a download is not measured.
    """
    data = memoryview(bytes(256 * 1024))
    geo = Geometry(1 << 30, 256 * 1024, 1400)
    t = Transfer(geo, bytes(20 * geo.num_pieces), first_timeout=1.0, peer_timeout=10.0, max_window=2048, max_batch=119,
                 nonce=lambda: NONCE)
    t.add_peer(A, 1, b"a" * 8, 0.0)
    rng = random.Random(seed)
    windows = []
    now = 0.0
    for _ in range(rounds):
        asked = [b for _, _, batch in t.requests(now) for b in batch]
        now = round(now + 0.01, 3)
        for piece, offset, length in asked:
            if rng.random() >= loss:
                t.on_block(A, NONCE, piece, offset, data[:length], now)
        t.batch_done(now)
        t.tick(now)
        t.judging.clear()  # no writer here: the scheduling is what is measured
        windows.append(t.peers[A].window)
    return t, windows


def test_random_loss_is_not_taken_for_congestion() -> None:
    """1% and 10% of the blocks lost at random: every loss is found from later arrivals (no timeouts), and the
    window, which only a growing round trip or a round with over CONGESTED_LOSS lost may shrink, is never
    halved: it reaches MAX_REQUESTS_IN_FLIGHT as without loss.  (It used to halve at every loss.)"""
    from p2ptorrent.node.transfer import CONGESTED_LOSS

    clean, clean_windows = _lossy_run(0.0)
    for loss in (0.01, 0.10):
        t, windows = _lossy_run(loss)
        peer = t.peers[A]
        assert peer.lost_in_order > 0 and peer.timeouts == 0, loss
        assert all(b >= a for a, b in zip(windows, windows[1:])), f"the window shrank at {loss:.0%} loss"
        assert windows[-1] == clean_windows[-1] == 2048
    assert CONGESTED_LOSS > 0.10


def test_a_round_that_loses_many_blocks_here_and_there_halves_the_window_once() -> None:
    """An overflowing queue drops blocks here and there: that is congestion, and the window halves, once per
    round trip.  A run of blocks lost back to back (a lost BLOCK_REQ takes its whole batch) counts as one loss."""
    t = _transfer(max_window=64)
    t.peers[A].window = 64.0
    t.peers[A].srtt = 0.05
    batch = [b for _, _, bs in t.requests(0.0) for b in bs]
    assert len(batch) == 42  # (the whole file)
    for piece, offset, length in batch[::2]:  # every other block arrives
        _answer(t, A, piece, offset, length, 0.06)
    t.batch_done(0.06)
    assert t.peers[A].lost_in_order == 19 and t.peers[A].window == 32.0
    t2 = _transfer(max_window=64)
    t2.peers[A].window = 64.0
    t2.peers[A].srtt = 0.05
    batch = [b for _, _, bs in t2.requests(0.0) for b in bs]
    for piece, offset, length in batch[-5:]:  # 37 lost back to back, then 5 arrive: one loss, not congestion
        _answer(t2, A, piece, offset, length, 0.06)
    t2.batch_done(0.06)
    assert t2.peers[A].lost_in_order == 37 and t2.peers[A].window == 64.0


def test_a_late_first_copy_of_a_block_asked_again_does_not_make_everything_since_look_lost() -> None:
    """A block taken as lost is asked again; its first copy then arrives late.  It answers the old request,
    not the new one: the blocks asked in between are not taken as lost (that cascade once asked for most of
    a download twice)."""
    t = _transfer()
    first = [b for _, _, bs in t.requests(0.0) for b in bs]
    for piece, offset, length in first[4:8]:  # blocks 0-3 are late: taken as lost, asked again
        _answer(t, A, piece, offset, length, 0.01)
    t.batch_done(0.01)
    assert t.peers[A].lost_in_order == 4
    again = [b for _, _, bs in t.requests(0.01) for b in bs]
    assert again[:4] == first[:4]
    piece, offset, length = first[0]
    _answer(t, A, piece, offset, length, 0.02)  # the first copy of block 0, late
    t.batch_done(0.02)
    assert t.peers[A].lost_in_order == 4  # blocks 8-31, asked before the second request, are still owed
    assert len(t.peers[A].inflight) == len(first) - 8 + len(again) - 1


def test_a_complete_owner_that_withdraws_its_pieces_in_progress_is_asked_for_pieces_it_offers() -> None:
    """While nodes still downloading serve us, a complete owner works on at most SEED_PIECES_AHEAD pieces.
    Serving several of us, it offers only its least uploaded pieces and may withdraw the ones it was
    working on (their lost blocks then wait for someone who has them): it must be asked for others, not
    left idle for good (with 1% loss, 1 seeder to 8 nodes stalled this way)."""
    from p2ptorrent.node.transfer import SEED_PIECES_AHEAD

    t = _transfer()
    t.add_peer(B, 2, b"b" * 8, 0.0, pieces=())  # a node still downloading, with nothing yet
    started = {piece for _, _, bs in t.requests(0.0) for piece, _, _ in bs}
    assert started == t.peers[A].in_progress and len(started) == SEED_PIECES_AHEAD
    offered = [p for p in range(GEO.num_pieces) if p not in started]
    t.on_have(A, 0, 0, GEO.num_pieces, offered, 0.1)  # it now offers every piece but those
    assert not t.peers[A].in_progress
    asked = {piece for _, _, bs in t.requests(0.1) for piece, _, _ in bs}
    assert asked and asked <= set(offered)


def test_answers_to_a_peer_dropped_are_late_while_their_nonce_lives_then_unmatched() -> None:
    """A dropped peer's blocks still on the way are late (an honest peer's, not counted as forged); a nonce
    never sent, or one past its lifetime, is unmatched."""
    from p2ptorrent.node.transfer import LATE

    nonces = iter(range(1, 1000))
    t = _transfer(nonce=lambda: next(nonces))
    [(_, nonce, batch), *_] = t.requests(0.0)
    t.remove_peer(A)
    piece, offset, length = batch[0]
    assert t.on_block(A, nonce, piece, offset, DATA[offset : offset + length], 0.1) == LATE
    assert t.unmatched(A, nonce, "ERROR") == LATE and t.unmatched(A, 999, "ERROR") == "unmatched ERROR"
    assert t.on_block(A, 999, piece, offset, DATA[offset : offset + length], 0.1) == UNMATCHED_BLOCK
    assert t.rejected == 1 and not any(t.received)
    t.tick(t.nonce_lifetime + 0.01)
    assert t.on_block(A, nonce, piece, offset, DATA[offset : offset + length], t.nonce_lifetime + 0.02) == UNMATCHED_BLOCK
