"""The datagram codec: round trips, and refusal of everything else."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2ptorrent import wire

H = bytes(range(20))
u32 = st.integers(0, 2**32 - 1)


@given(u32, st.binary(min_size=20, max_size=20))
def test_info_request_round_trip(req_id: int, ih: bytes) -> None:
    assert wire.decode(wire.encode_info_request(req_id, ih)) == wire.InfoRequest(req_id, ih)


@given(u32, st.integers(0, 1), st.integers(0, 2**64 - 1), u32, st.binary(min_size=8, max_size=8))
def test_info_response_round_trip(req_id: int, status: int, length: int, pl: int, cookie: bytes) -> None:
    msg = wire.decode(wire.encode_info_response(req_id, H, status, length, pl, cookie))
    assert msg == wire.InfoResponse(req_id, H, status, length, pl, cookie)


@given(st.lists(st.tuples(u32, u32, u32), min_size=1, max_size=wire.MAX_BLOCKS_PER_REQUEST))
def test_block_request_round_trip(blocks: list[tuple[int, int, int]]) -> None:
    msg = wire.decode(wire.encode_block_request(H, b"c" * 8, blocks))
    assert msg == wire.BlockRequest(H, b"c" * 8, tuple(blocks))


@given(u32, u32, st.binary(max_size=9000))
def test_block_round_trip(piece: int, offset: int, data: bytes) -> None:
    assert wire.decode(wire.encode_block(H, piece, offset, data)) == wire.Block(H, piece, offset, data)


def test_error_round_trip_and_message_bound() -> None:
    msg = wire.decode(wire.encode_error(H, wire.E_BAD_COOKIE, "x" * 1000))
    assert isinstance(msg, wire.Error) and msg.code == wire.E_BAD_COOKIE and len(msg.message) == wire.MAX_ERROR_MESSAGE


def test_block_request_limits() -> None:
    with pytest.raises(ValueError):
        wire.encode_block_request(H, b"c" * 8, [])
    assert wire.max_blocks_per_request(9216) == wire.MAX_BLOCKS_PER_REQUEST
    assert wire.max_blocks_per_request(1400) == (1400 - wire.BLOCK_REQ_OVERHEAD) // 12


@pytest.mark.parametrize(
    "datagram, reason",
    [
        (b"", "shorter than the header"),
        (b"PT", "shorter than the header"),
        (b"XX\x01\x01" + bytes(24), "bad magic"),
        (b"PT\x02\x01" + bytes(24), "unsupported protocol version 2"),
        (b"PT\x01\x09", "unknown message type 9"),
        (wire.encode_info_request(1, H)[:-1], "INFO_REQ of the wrong size"),
        (wire.encode_info_request(1, H) + b"x", "INFO_REQ of the wrong size"),
        (wire.encode_info_response(1, H, 0, 1, 1, bytes(8))[:-3], "INFO_RESP of the wrong size"),
        (wire.encode_block(H, 0, 0, b"")[:-1], "truncated BLOCK"),
        (wire.encode_block_request(H, bytes(8), [(0, 0, 1)])[:-1], "does not match its block count"),
        (b"PT\x01\x03" + H + bytes(8) + struct.pack("!H", 0), "BLOCK_REQ with 0 blocks"),
        (b"PT\x01\x03" + H + bytes(8) + struct.pack("!H", 60000) + bytes(12), "BLOCK_REQ with 60000 blocks"),
        (b"PT\x01\x05" + H, "ERROR of the wrong size"),
        (wire.encode_have_request(H, bytes(8), 0, 8)[:-1], "HAVE_REQ of the wrong size"),
        (wire.encode_have_request(H, bytes(8), 0, 0), "HAVE_REQ for 0 pieces"),
        (wire.encode_have_request(H, bytes(8), 0, wire.MAX_HAVE_COUNT + 1), "HAVE_REQ for 65537 pieces"),
        (wire.encode_have(H, 0, 9, 0, b"\xff\x80")[:-1], "HAVE size does not match"),
        (wire.encode_have(H, 0, 9, 0, b"\xff\x80") + b"x", "HAVE size does not match"),
        (b"PT\x01\x07" + H, "truncated HAVE"),
        (b"PT\x01\x07" + H + struct.pack("!IIB", 0, 0, 0), "HAVE for 0 pieces"),
        (b"PT\x01\x04" + bytes(70000), "exceeds the limit"),
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
    valid = wire.encode_block_request(H, bytes(8), [(1, 2, 3), (4, 5, 6)])
    mutated = valid[:at] + noise + valid[at + len(noise):]
    try:
        wire.decode(mutated, 9216)
    except wire.WireError:
        pass


def test_peek_block_reads_only_blocks() -> None:
    datagram = wire.encode_block(H, 7, 14432, b"abc")
    assert wire.peek_block(datagram) == (H, 7, 14432)
    assert wire.peek_block(wire.encode_info_request(1, H)) is None
    assert wire.peek_block(datagram[: wire.BLOCK_OVERHEAD - 1]) is None
    assert wire.peek_block(b"PT\x02\x04" + datagram[4:]) is None  # another version


@given(u32, st.lists(st.booleans(), min_size=1, max_size=3000), st.integers(0, 3), st.binary(min_size=8, max_size=8))
def test_have_round_trip(first: int, flags_list: list[bool], flags: int, cookie: bytes) -> None:
    count = len(flags_list)
    have = bytearray(flags_list)
    bits = wire.pack_bits(have, 0, count)
    msg = wire.decode(wire.encode_have(H, first, count, flags, bits))
    assert msg == wire.Have(H, first, count, flags, bits)
    assert isinstance(msg, wire.Have)
    assert msg.pieces() == [first + i for i, b in enumerate(flags_list) if b]
    req = wire.decode(wire.encode_have_request(H, cookie, first, count, flags & 1))
    assert req == wire.HaveRequest(H, cookie, first, count, flags & 1)


def test_have_fits_the_buffer() -> None:
    n = wire.max_have_count(9216)
    assert len(wire.encode_have(H, 0, n, 0, bytes((n + 7) // 8))) <= 9216
    assert wire.max_have_count(1 << 20) == wire.MAX_HAVE_COUNT
