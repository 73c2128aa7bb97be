"""The datagram codec: round trips, and refusal of everything else."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2ptorrent import wire

H = bytes(range(20))
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
N = 0x0123456789ABCDEF  # a nonce


@given(u64, st.binary(min_size=20, max_size=20))
def test_info_request_round_trip(nonce: int, ih: bytes) -> None:
    assert wire.decode(wire.encode_info_request(nonce, ih)) == wire.InfoRequest(nonce, ih)


@given(u64, st.integers(0, 1), st.integers(0, 2**64 - 1), u32, st.binary(min_size=8, max_size=8))
def test_info_response_round_trip(nonce: int, status: int, length: int, pl: int, cookie: bytes) -> None:
    msg = wire.decode(wire.encode_info_response(nonce, H, status, length, pl, cookie))
    assert msg == wire.InfoResponse(nonce, H, status, length, pl, cookie)


@given(u64, st.lists(st.tuples(u32, u32, u32), min_size=1, max_size=wire.MAX_BLOCKS_PER_REQUEST))
def test_block_request_round_trip(nonce: int, blocks: list[tuple[int, int, int]]) -> None:
    msg = wire.decode(wire.encode_block_request(H, b"c" * 8, nonce, blocks))
    assert msg == wire.BlockRequest(H, b"c" * 8, nonce, tuple(blocks))


@given(u64, u32, u32, st.binary(max_size=9000))
def test_block_round_trip(nonce: int, piece: int, offset: int, data: bytes) -> None:
    assert wire.decode(wire.encode_block(H, nonce, piece, offset, data)) == wire.Block(H, nonce, piece, offset, data)


def test_error_round_trip_and_message_bound() -> None:
    msg = wire.decode(wire.encode_error(H, N, wire.E_BAD_COOKIE, "x" * 1000))
    assert isinstance(msg, wire.Error) and msg.code == wire.E_BAD_COOKIE and len(msg.message) == wire.MAX_ERROR_MESSAGE
    assert msg.nonce == N


def test_every_request_carries_a_fresh_nonce_of_64_bits() -> None:
    nonces = {wire.new_nonce() for _ in range(10000)}
    assert len(nonces) == 10000 and 0 not in nonces
    assert max(nonces).bit_length() == 64  # (1 in 2**10000 to fail by chance)
    for encoded, at in ((wire.encode_info_request(N, H), 4), (wire.encode_block_request(H, bytes(8), N, [(0, 0, 1)]), 32),
                        (wire.encode_have_request(H, bytes(8), N, 0, 8), 32)):
        assert encoded[at : at + 8] == N.to_bytes(8, "big")
    for answer in (wire.encode_info_response(N, H, 0, 1, 1, bytes(8)), wire.encode_block(H, N, 0, 0, b"x"),
                   wire.encode_error(H, N, 1), wire.encode_have(H, N, 0, 8, 0, b"\xff")):
        assert wire.decode(answer).nonce == N


def test_a_block_cut_to_the_path_keeps_its_nonce_in_every_part() -> None:
    datagram = wire.encode_block(H, N, 3, 1400, bytes(range(256)) * 20)
    parts = [wire.decode(p) for p in wire.split_block(datagram, 1452)]
    assert len(parts) == 4 and all(isinstance(p, wire.Block) and p.nonce == N and p.piece == 3 for p in parts)
    assert b"".join(p.data for p in parts if isinstance(p, wire.Block)) == bytes(range(256)) * 20


def test_block_request_limits() -> None:
    with pytest.raises(ValueError):
        wire.encode_block_request(H, b"c" * 8, N, [])
    assert wire.max_blocks_per_request(9216) == wire.MAX_BLOCKS_PER_REQUEST
    assert wire.max_blocks_per_request(1400) == (1400 - wire.BLOCK_REQ_OVERHEAD) // 12


@pytest.mark.parametrize(
    "datagram, reason",
    [
        (b"", "shorter than the header"),
        (b"PT", "shorter than the header"),
        (b"XX\x01\x01" + bytes(24), "bad magic"),
        (b"PT\x01\x01" + bytes(24), "unsupported protocol version 1 \\(this node speaks 2\\)"),
        (b"PT\x03\x01" + bytes(24), "unsupported protocol version 3"),
        (b"PT\x02\x0a", "unknown message type 10"),
        (wire.encode_info_request(1, H)[:-1], "INFO_REQ of the wrong size"),
        (wire.encode_info_request(1, H) + b"x", "INFO_REQ of the wrong size"),
        (wire.encode_info_response(1, H, 0, 1, 1, bytes(8))[:-3], "INFO_RESP of the wrong size"),
        (wire.encode_block(H, N, 0, 0, b"")[:-1], "truncated BLOCK"),
        (wire.encode_block_request(H, bytes(8), N, [(0, 0, 1)])[:-1], "does not match its block count"),
        (b"PT\x02\x03" + H + bytes(16) + struct.pack("!H", 0), "BLOCK_REQ with 0 blocks"),
        (b"PT\x02\x03" + H + bytes(16) + struct.pack("!H", 60000) + bytes(12), "BLOCK_REQ with 60000 blocks"),
        (b"PT\x02\x05" + H + bytes(8), "ERROR of the wrong size"),
        (wire.encode_have_request(H, bytes(8), N, 0, 8)[:-1], "HAVE_REQ of the wrong size"),
        (wire.encode_have_request(H, bytes(8), N, 0, 0), "HAVE_REQ for 0 pieces"),
        (wire.encode_have_request(H, bytes(8), N, 0, wire.MAX_HAVE_COUNT + 1), "HAVE_REQ for 65537 pieces"),
        (wire.encode_have(H, N, 0, 9, 0, b"\xff\x80")[:-1], "HAVE size does not match"),
        (wire.encode_have(H, N, 0, 9, 0, b"\xff\x80") + b"x", "HAVE size does not match"),
        (b"PT\x02\x07" + H + bytes(8), "truncated HAVE"),
        (b"PT\x02\x07" + H + bytes(8) + struct.pack("!IIB", 0, 0, 0), "HAVE for 0 pieces"),
        (b"PT\x02\x04" + bytes(70000), "exceeds the limit"),
    ],
)
def test_malformed_datagrams_are_refused(datagram: bytes, reason: str) -> None:
    with pytest.raises(wire.WireError, match=reason):
        wire.decode(datagram, max_size=65507)


@given(st.binary(max_size=2048))
def test_garbage_never_raises_anything_else(data: bytes) -> None:
    try:
        wire.decode(data, 9216)
    except wire.WireError:
        pass


@given(st.binary(min_size=1, max_size=64), st.integers(0, 40))
def test_mutated_valid_datagrams(noise: bytes, at: int) -> None:
    valid = wire.encode_block_request(H, bytes(8), N, [(1, 2, 3), (4, 5, 6)])
    mutated = valid[:at] + noise + valid[at + len(noise):]
    try:
        wire.decode(mutated, 9216)
    except wire.WireError:
        pass


def test_peek_block_reads_only_blocks() -> None:
    datagram = wire.encode_block(H, N, 7, 14432, b"abc")
    assert wire.peek_block(datagram) == (H, N, 7, 14432)
    assert wire.peek_block(wire.encode_info_request(1, H)) is None
    assert wire.peek_block(datagram[: wire.BLOCK_OVERHEAD - 1]) is None
    assert wire.peek_block(b"PT\x01\x04" + datagram[4:]) is None  # another version


@given(u32, st.lists(st.booleans(), min_size=1, max_size=3000), st.integers(0, 3), st.binary(min_size=8, max_size=8), u64)
def test_have_round_trip(first: int, flags_list: list[bool], flags: int, cookie: bytes, nonce: int) -> None:
    count = len(flags_list)
    have = bytearray(flags_list)
    bits = wire.pack_bits(have, 0, count)
    msg = wire.decode(wire.encode_have(H, nonce, first, count, flags, bits))
    assert msg == wire.Have(H, nonce, first, count, flags, bits)
    assert isinstance(msg, wire.Have)
    assert msg.pieces() == [first + i for i, b in enumerate(flags_list) if b]
    req = wire.decode(wire.encode_have_request(H, cookie, nonce, first, count, flags & 1))
    assert req == wire.HaveRequest(H, cookie, nonce, first, count, flags & 1)


def test_have_fits_the_buffer() -> None:
    n = wire.max_have_count(9216)
    assert len(wire.encode_have(H, N, 0, n, 0, bytes((n + 7) // 8))) <= 9216
    assert wire.max_have_count(1 << 20) == wire.MAX_HAVE_COUNT


#: A request of wire version 1, as a node of that version writes it (header, then its own layout).
V1_INFO_REQ = b"PT\x01\x01" + struct.pack("!I", 7) + H
V1_BLOCK_REQ = b"PT\x01\x03" + H + bytes(8) + struct.pack("!HIII", 1, 0, 0, 1400)
V1_HAVE_REQ = b"PT\x01\x06" + H + bytes(8) + struct.pack("!IIB", 0, 8, 1)


@pytest.mark.parametrize("request_", [V1_INFO_REQ, V1_BLOCK_REQ, V1_HAVE_REQ])
def test_a_version_1_request_gets_an_error_a_version_1_node_reads(request_: bytes) -> None:
    answer = wire.version_refusal(request_)
    assert answer is not None and len(answer) <= 2 * len(request_)
    # Version 1's ERROR: header, info_hash 20, code u8, message: what its decoder takes as a refusal.
    assert answer[:4] == b"PT\x01\x05" and answer[4:24] == H and answer[24] == wire.E_VERSION
    assert answer[25:].decode() == "wire version 2 here, not 1"


def test_a_version_refusal_is_bounded_and_answers_only_requests() -> None:
    future = b"PT\x09\x01" + bytes(28)
    answer = wire.version_refusal(future)
    assert answer is not None and len(answer) <= 2 * len(future)
    msg = wire.decode(answer)
    assert isinstance(msg, wire.Error) and msg.code == wire.E_VERSION and msg.message.startswith("wire version 2")
    assert wire.version_refusal(b"PT\x09\x01" + bytes(12)) is None  # too short for any ERROR within the bound
    for answer_kind in (wire.INFO_RESP, wire.BLOCK, wire.ERROR, wire.HAVE, 99):
        assert wire.version_refusal(bytes([0x50, 0x54, 1, answer_kind]) + bytes(40)) is None
    assert wire.version_refusal(wire.encode_info_request(N, H)) is None  # our own version
    assert wire.version_refusal(b"XX\x01\x01" + bytes(24)) is None  # not ours at all
    assert wire.version_refusal(b"PT\x01\x01" + bytes(5)) is None  # too short to name its file


# ---- METADATA_REQ and METADATA (magnet links: the info dict from peers)

@given(u64, st.integers(0, wire.MAX_METADATA_PIECES - 1), st.binary(min_size=8, max_size=8))
def test_metadata_request_round_trip(nonce: int, piece: int, cookie: bytes) -> None:
    datagram = wire.encode_metadata_request(H, cookie, nonce, piece)
    assert len(datagram) == wire.METADATA_REQ_SIZE
    assert wire.decode(datagram) == wire.MetadataRequest(H, cookie, nonce, piece)


@given(u64, st.integers(1, wire.MAX_METADATA_SIZE), st.data())
def test_metadata_round_trip(nonce: int, total: int, data: st.DataObject) -> None:
    piece = data.draw(st.integers(0, wire.metadata_pieces(total) - 1))
    body = bytes([piece & 0xFF]) * wire.metadata_piece_size(total, piece)
    datagram = wire.encode_metadata(H, nonce, total, piece, body)
    assert len(datagram) <= wire.SAFE_DATAGRAM
    assert wire.decode(datagram) == wire.Metadata(H, nonce, total, piece, body)


def test_metadata_pieces_cut_the_dict() -> None:
    assert wire.metadata_pieces(1) == 1
    assert wire.metadata_pieces(wire.METADATA_PIECE) == 1
    assert wire.metadata_pieces(wire.METADATA_PIECE + 1) == 2
    assert wire.metadata_piece_size(wire.METADATA_PIECE + 1, 1) == 1
    assert wire.metadata_piece_size(wire.METADATA_PIECE + 1, 2) == 0


def _metadata(total: int, piece: int, data: bytes) -> bytes:
    return wire._head(wire.METADATA) + struct.pack("!20sQII", H, N, total, piece) + data


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (wire.encode_metadata_request(H, bytes(8), N, 0)[:-1], "bad METADATA_REQ size"),
        (wire.encode_metadata_request(H, bytes(8), N, 0) + b"x", "bad METADATA_REQ size"),
        (wire._head(wire.METADATA_REQ) + struct.pack("!20s8sQI", H, bytes(8), N, wire.MAX_METADATA_PIECES),
         "bad METADATA_REQ piece"),
        (wire._head(wire.METADATA) + bytes(20), "bad METADATA size"),
        (_metadata(0, 0, b""), "bad METADATA total"),
        (_metadata(wire.MAX_METADATA_SIZE + 1, 0, bytes(wire.METADATA_PIECE)), "bad METADATA total"),
        (_metadata(2**32 - 1, 0, bytes(wire.METADATA_PIECE)), "bad METADATA total"),
        (_metadata(100, 1, b""), "bad METADATA piece"),
        (_metadata(100, 0, bytes(99)), "bad METADATA size"),
        (_metadata(100, 0, bytes(101)), "bad METADATA size"),
        (_metadata(5000, 0, bytes(1000)), "bad METADATA size"),
    ],
)
def test_bad_metadata_messages_are_refused(datagram: bytes, reason: str) -> None:
    with pytest.raises(wire.WireError) as e:
        wire.decode(datagram)
    assert e.value.reason == reason


def test_encode_metadata_checks_its_piece() -> None:
    with pytest.raises(ValueError):
        wire.encode_metadata(H, N, 100, 0, bytes(99))
    with pytest.raises(ValueError):
        wire.encode_metadata(H, N, 0, 0, b"")
