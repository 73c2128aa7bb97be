"""The datagram format spoken between nodes: encode and decode, bounds-checked, pure.

Every datagram starts with a 4-byte header: the magic ``b"PT"``, a version
byte and a type byte.  All integers are big-endian.  Nothing from the wire is
trusted: lengths and counts are checked against the datagram's real size and
against fixed limits before use; anything that does not fit raises
:class:`WireError`, which the protocol counts and drops.

    INFO_REQ   nonce u64, info_hash 20                                "what is this file?"
    INFO_RESP  nonce u64, info_hash 20, status u8, length u64,
               piece_length u32, cookie 8                             size, piece length, cookie
    BLOCK_REQ  info_hash 20, cookie 8, nonce u64, count u16,
               count x (piece u32, offset u32, length u32)            ask for blocks
    BLOCK      info_hash 20, nonce u64, piece u32, offset u32, data   one block (data = the rest)
    ERROR      info_hash 20, nonce u64, code u8, message (UTF-8)      refusal
    HAVE_REQ   info_hash 20, cookie 8, nonce u64, first u32,
               count u32, flags u8                                    "which of these pieces have you?"
    HAVE       info_hash 20, nonce u64, first u32, count u32, flags u8,
               bits (ceil(count / 8) bytes, first piece = top bit)    the answer, and whether we may ask
    METADATA_REQ info_hash 20, cookie 8, nonce u64, piece u32         "send me this piece of the info dict"
    METADATA   info_hash 20, nonce u64, total u32, piece u32, data    one piece of the bencoded info dict

The nonce (version 2) binds every answer to its request: each request
carries a fresh random 64-bit value, and each answer (INFO_RESP, BLOCK,
ERROR, HAVE) carries the nonce of the request it answers.  A node takes an
answer only when its nonce is one it sent that address lately, so a host
that can forge a peer's source address but cannot see the traffic has one
chance in 2**64 per datagram of being heard.  A HAVE sent unasked (NEWS)
carries the nonce of the asker's latest HAVE_REQ.

INFO_RESP status is OK (every piece here), PARTIAL (still downloading: some
pieces; ask HAVE which) or NOT_FOUND.  HAVE flags: CHOKED (no upload slot for
the asker now: block requests would be refused with E_CHOKED; ask HAVE again
later), COMPLETE (every piece here), NEWS (sent unasked when pieces verify,
to those that asked HAVE lately: it says nothing of slots).  HAVE_REQ flags: INTERESTED (the
asker still wants pieces: it competes for an upload slot).

The cookie is a keyed hash of the asker's address that the seeder hands out
in INFO_RESP and checks on every BLOCK_REQ, so that a forged source address
cannot make a node send file data to a victim (no amplification: an
INFO_RESP is less than twice the size of the INFO_REQ that caused it, and an
ERROR is never longer than the request it refuses).

Metadata (magnet links).  A node that has only the info hash fetches the
torrent's bencoded ``info`` dictionary from owners, METADATA_PIECE bytes at a
time (every piece but the last is exactly that long, so an answer stays
within SAFE_DATAGRAM), and uses it only once its SHA-1 is the info hash.
*total* is the dictionary's size, 1 to MAX_METADATA_SIZE bytes.  A
METADATA_REQ carries the cookie like a BLOCK_REQ: only a proven address gets
data.  The wire version is unchanged: the old kinds are as they were, and a
node that predates these two drops kind 8 as an unknown type and answers
nothing, which the asker takes as a silent peer and asks another.

Another version.  A request (INFO_REQ, BLOCK_REQ, HAVE_REQ) of another
version gets one short ERROR with code E_VERSION naming both versions
(:func:`version_refusal`), laid out as the asker's version lays out an ERROR
where that is known (version 1), so an older node can read it; it is no
longer than twice the request.  Answers of another version are never
answered.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass
from typing import Union

MAGIC = b"PT"
VERSION = 2
#: Versions whose ERROR layout we know (a version refusal is written the way the asker reads it).
V1 = 1

INFO_REQ = 1
INFO_RESP = 2
BLOCK_REQ = 3
BLOCK = 4
ERROR = 5
HAVE_REQ = 6
HAVE = 7
METADATA_REQ = 8
METADATA = 9

# INFO_RESP status
OK = 0
NOT_FOUND = 1
PARTIAL = 2

# HAVE flags
F_CHOKED = 1
F_COMPLETE = 2
F_NEWS = 4  # pushed when a piece verified, not an answer: says nothing of slots
# HAVE_REQ flags
F_INTERESTED = 1

# ERROR codes
E_NOT_FOUND = 1  # the file is not (or no longer) served here
E_BAD_COOKIE = 2  # ask INFO again for a fresh cookie
E_BAD_REQUEST = 3  # a block outside the file, or a malformed request
E_CHOKED = 4  # no upload slot for you now: ask HAVE again later
E_VERSION = 5  # another wire version here (the message names both)

COOKIE_SIZE = 8
NONCE_SIZE = 8
HASH_SIZE = 20
MAX_BLOCKS_PER_REQUEST = 256
MAX_ERROR_MESSAGE = 200

_HEADER = struct.Struct("!2sBB")
_INFO_REQ = struct.Struct("!Q20s")
_INFO_RESP = struct.Struct("!Q20sBQI8s")
_BLOCK_REQ = struct.Struct("!20s8sQH")
_TRIPLE = struct.Struct("!III")
_BLOCK = struct.Struct("!20sQII")
_ERROR = struct.Struct("!20sQB")
_HAVE_REQ = struct.Struct("!20s8sQIIB")
_HAVE = struct.Struct("!20sQIIB")
_METADATA_REQ = struct.Struct("!20s8sQI")
_METADATA = struct.Struct("!20sQII")
#: Version 1: where its requests carry the info hash, and its ERROR (to refuse it in a way it reads).
_V1_HASH_AT = {1: 8, 3: 4, 6: 4}
_V1_ERROR = struct.Struct("!20sB")

HEADER_SIZE = _HEADER.size
#: Sizes of the fixed-size messages, and of an ERROR without its message: an
#: answer to an address that has not proven it receives (no cookie yet) is
#: never more than twice the size of what it answers (INFO_RESP_SIZE <
#: 2 * INFO_REQ_SIZE; an ERROR is cut to the size of the request it refuses).
INFO_REQ_SIZE = HEADER_SIZE + _INFO_REQ.size
INFO_RESP_SIZE = HEADER_SIZE + _INFO_RESP.size
ERROR_OVERHEAD = HEADER_SIZE + _ERROR.size
#: Bytes in front of a block's data (config.py checks that a chunk and this fit in BUFFER_SIZE).
BLOCK_OVERHEAD = HEADER_SIZE + _BLOCK.size
#: Bytes of a BLOCK_REQ before its triples, and of each triple.
BLOCK_REQ_OVERHEAD = HEADER_SIZE + _BLOCK_REQ.size
TRIPLE_SIZE = _TRIPLE.size
HAVE_REQ_SIZE = HEADER_SIZE + _HAVE_REQ.size
#: The largest datagram that crosses a 1500-byte-MTU path whole, over IPv4 (1472) and IPv6 (1452): requests
#: and HAVE answers are never bigger, whatever BUFFER_SIZE allows, and a block bigger than the path is sent as
#: several BLOCK datagrams (see split_block), so nothing a node sends depends on IP fragmentation.
SAFE_DATAGRAM = 1452
HAVE_OVERHEAD = HEADER_SIZE + _HAVE.size
#: Pieces one HAVE_REQ may ask about (a HAVE answering it is 8 KiB of bits at most).
MAX_HAVE_COUNT = 65536
METADATA_REQ_SIZE = HEADER_SIZE + _METADATA_REQ.size
METADATA_OVERHEAD = HEADER_SIZE + _METADATA.size
#: Bytes of the info dict per METADATA answer (the last piece may be shorter): 1 KiB, so that an answer
#: (40 bytes more) crosses any path whole (SAFE_DATAGRAM), whatever BUFFER_SIZE allows.
METADATA_PIECE = 1024
#: Largest info dict a node fetches or answers for.  Ours hold 20 bytes per piece and aim at ~2048 pieces
#: (tens of KiB); even a 1 TiB file in 16 MiB pieces needs 1.3 MiB.  4 MiB (BitTorrent clients use limits of
#: a few MiB too) bounds what a lying peer can make a fetch hold in memory.
MAX_METADATA_SIZE = 4 * 1024 * 1024
MAX_METADATA_PIECES = MAX_METADATA_SIZE // METADATA_PIECE
#: A seeder pushes NEWS to a peer for this many seconds after its latest HAVE_REQ (with that request's
#: nonce): the asker keeps each HAVE_REQ nonce answerable at least this long.
NEWS_SECONDS = 5.0


class WireError(ValueError):
    """A datagram that is not a well-formed message of our protocol.

    ``str()`` says exactly what is wrong; :attr:`reason` is a short, fixed
    label for counting (``"bad magic"``, ``"bad INFO_REQ size"``...).
    """

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class InfoRequest:
    nonce: int
    info_hash: bytes


@dataclass(frozen=True, slots=True)
class InfoResponse:
    nonce: int
    info_hash: bytes
    status: int
    length: int
    piece_length: int
    cookie: bytes


@dataclass(frozen=True, slots=True)
class BlockRequest:
    info_hash: bytes
    cookie: bytes
    nonce: int
    blocks: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True, slots=True)
class Block:
    info_hash: bytes
    nonce: int
    piece: int
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Error:
    info_hash: bytes
    nonce: int
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class HaveRequest:
    info_hash: bytes
    cookie: bytes
    nonce: int
    first: int
    count: int
    flags: int = 0


@dataclass(frozen=True, slots=True)
class Have:
    info_hash: bytes
    nonce: int
    first: int
    count: int
    flags: int
    #: One bit per piece from *first*, the top bit of the first byte first.
    bits: bytes

    def pieces(self) -> list[int]:
        """The piece indexes the bits name."""
        first, bits = self.first, self.bits
        return [first + i for i in range(self.count) if bits[i >> 3] & (0x80 >> (i & 7))]


@dataclass(frozen=True, slots=True)
class MetadataRequest:
    info_hash: bytes
    cookie: bytes
    nonce: int
    piece: int


@dataclass(frozen=True, slots=True)
class Metadata:
    info_hash: bytes
    nonce: int
    #: The info dict's size in bytes (1 to MAX_METADATA_SIZE), and which METADATA_PIECE-byte piece this is.
    total: int
    piece: int
    data: bytes


Message = Union[InfoRequest, InfoResponse, BlockRequest, Block, Error, HaveRequest, Have, MetadataRequest, Metadata]


def metadata_pieces(total: int) -> int:
    """How many METADATA pieces an info dict of *total* bytes is cut into."""
    return -(-total // METADATA_PIECE)


def metadata_piece_size(total: int, piece: int) -> int:
    """Bytes in METADATA piece *piece* of an info dict of *total* bytes (0 for a piece past its end)."""
    return max(0, min(METADATA_PIECE, total - piece * METADATA_PIECE))


def new_nonce() -> int:
    """A fresh request nonce: 64 bits from the system's CSPRNG, never 0 (0 answers no request)."""
    while True:
        nonce = secrets.randbits(64)
        if nonce:
            return nonce


def _head(kind: int) -> bytes:
    return _HEADER.pack(MAGIC, VERSION, kind)


_BLOCK_HEAD = _head(BLOCK)


def encode_info_request(nonce: int, info_hash: bytes) -> bytes:
    return _head(INFO_REQ) + _INFO_REQ.pack(nonce, info_hash)


def encode_info_response(
    nonce: int, info_hash: bytes, status: int, length: int, piece_length: int, cookie: bytes
) -> bytes:
    return _head(INFO_RESP) + _INFO_RESP.pack(nonce, info_hash, status, length, piece_length, cookie)


def encode_block_request(info_hash: bytes, cookie: bytes, nonce: int, blocks: list[tuple[int, int, int]]) -> bytes:
    if not 1 <= len(blocks) <= MAX_BLOCKS_PER_REQUEST:
        raise ValueError(f"a block request carries 1-{MAX_BLOCKS_PER_REQUEST} blocks, not {len(blocks)}")
    parts = [_head(BLOCK_REQ), _BLOCK_REQ.pack(info_hash, cookie, nonce, len(blocks))]
    parts.extend(_TRIPLE.pack(*b) for b in blocks)
    return b"".join(parts)


def encode_block(info_hash: bytes, nonce: int, piece: int, offset: int, data: bytes | memoryview) -> bytes:
    return b"".join((_BLOCK_HEAD, _BLOCK.pack(info_hash, nonce, piece, offset), data))


def encode_error(info_hash: bytes, nonce: int, code: int, message: str = "") -> bytes:
    text = message.encode("utf-8")[:MAX_ERROR_MESSAGE]
    return _head(ERROR) + _ERROR.pack(info_hash, nonce, code) + text


def encode_have_request(info_hash: bytes, cookie: bytes, nonce: int, first: int, count: int, flags: int = 0) -> bytes:
    return _head(HAVE_REQ) + _HAVE_REQ.pack(info_hash, cookie, nonce, first, count, flags)


def encode_have(info_hash: bytes, nonce: int, first: int, count: int, flags: int, bits: bytes) -> bytes:
    if len(bits) != (count + 7) // 8:
        raise ValueError(f"{count} pieces take {(count + 7) // 8} bytes of bits, not {len(bits)}")
    return _head(HAVE) + _HAVE.pack(info_hash, nonce, first, count, flags) + bits


def encode_metadata_request(info_hash: bytes, cookie: bytes, nonce: int, piece: int) -> bytes:
    return _head(METADATA_REQ) + _METADATA_REQ.pack(info_hash, cookie, nonce, piece)


def encode_metadata(info_hash: bytes, nonce: int, total: int, piece: int, data: bytes) -> bytes:
    if not 0 < total <= MAX_METADATA_SIZE or len(data) != metadata_piece_size(total, piece) or not data:
        raise ValueError(f"piece {piece} of a {total}-byte info dict is not {len(data)} bytes")
    return _head(METADATA) + _METADATA.pack(info_hash, nonce, total, piece) + data


def pack_bits(have: bytes | bytearray, first: int, count: int) -> bytes:
    """Bits for pieces first..first+count-1 of a one-byte-per-piece map (nonzero = have)."""
    out = bytearray((count + 7) // 8)
    for i in range(count):
        if have[first + i]:
            out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)


def have_request_ranges(num_pieces: int, buffer_size: int) -> list[tuple[int, int]]:
    """(first, count) of the HAVE_REQs asking about every piece of a file, as few as *buffer_size* allows."""
    step = max_have_count(buffer_size)
    return [(first, min(step, num_pieces - first)) for first in range(0, num_pieces, step)]


def max_have_count(buffer_size: int) -> int:
    """How many pieces one HAVE of at most *buffer_size* bytes can describe."""
    return max(8, min(MAX_HAVE_COUNT, (buffer_size - HAVE_OVERHEAD) * 8))


def max_blocks_per_request(buffer_size: int) -> int:
    """How many block triples fit in one request datagram of *buffer_size* bytes."""
    return max(1, min(MAX_BLOCKS_PER_REQUEST, (buffer_size - BLOCK_REQ_OVERHEAD) // TRIPLE_SIZE))


def split_block(datagram: bytes, limit: int) -> list[bytes]:
    """A BLOCK datagram as BLOCK datagrams of at most *limit* bytes each (same file, nonce, piece; consecutive
    offsets).

    A block is a unit of requests and bookkeeping; a datagram is what the path carries whole.  The receiver
    puts the parts together (a part is a BLOCK whose data is shorter than the block, at an offset inside it).
    """
    room = limit - BLOCK_OVERHEAD
    if len(datagram) <= limit or room <= 0 or datagram[:HEADER_SIZE] != _BLOCK_HEAD:
        return [datagram]
    info_hash, nonce, piece, offset = _BLOCK.unpack_from(datagram, HEADER_SIZE)
    data = memoryview(datagram)[BLOCK_OVERHEAD:]
    # Equal parts (the last no longer than the others), as few as fit.
    parts = -(-len(data) // room)
    size = -(-len(data) // parts)
    return [encode_block(info_hash, nonce, piece, offset + at, data[at : at + size]) for at in range(0, len(data), size)]


def peek_block(data: bytes | memoryview) -> tuple[bytes, int, int, int] | None:
    """(info_hash, nonce, piece, offset) of a BLOCK datagram, without building a message.

    Blocks are nearly every datagram a downloader receives: this is its hot path.
    The data is everything after BLOCK_OVERHEAD.  None for any other datagram.
    """
    if len(data) < BLOCK_OVERHEAD or data[:HEADER_SIZE] != _BLOCK_HEAD:
        return None
    return _BLOCK.unpack_from(data, HEADER_SIZE)


def foreign_version(data: bytes | memoryview) -> int | None:
    """The version of a datagram of our magic but another version (None for ours, or not ours at all)."""
    if len(data) < HEADER_SIZE or data[:2] != MAGIC or data[2] == VERSION:
        return None
    return data[2]


def version_refusal(data: bytes | memoryview) -> bytes | None:
    """The one ERROR that answers a request of another version, or None when nothing should answer it.

    Only requests are answered (an answer of another version never is, so two nodes of different versions
    cannot keep each other busy).  For version 1 the ERROR is laid out as version 1 lays it out, with the
    info hash of the request, so an older node reads it as a refusal from that peer; for any other version
    in our own layout.  It is never longer than twice the request (as INFO_RESP against INFO_REQ): a request
    too short for even the ERROR's fixed part gets nothing.
    """
    version = foreign_version(data)
    if version is None:
        return None
    kind = data[3]
    if kind not in (INFO_REQ, BLOCK_REQ, HAVE_REQ):
        return None
    text = f"wire version {VERSION} here, not {version}".encode()
    if version == V1:
        at = _V1_HASH_AT[kind]
        info_hash = bytes(data[at : at + HASH_SIZE])
        if len(info_hash) != HASH_SIZE:
            return None
        head = _HEADER.pack(MAGIC, V1, ERROR) + _V1_ERROR.pack(info_hash, E_VERSION)
    else:
        head = _head(ERROR) + _ERROR.pack(bytes(HASH_SIZE), 0, E_VERSION)
    room = 2 * len(data) - len(head)
    if room < 0:
        return None  # too short to be answered within the bound: not answered at all
    return head + text[: min(room, MAX_ERROR_MESSAGE)]


def decode(data: bytes, max_size: int = 65507) -> Message:
    """Parse one datagram; raise WireError if it is not exactly one valid message."""
    size = len(data)
    if size > max_size:
        raise WireError(f"datagram of {size} bytes exceeds the limit of {max_size}", "too long")
    if size < HEADER_SIZE:
        raise WireError(f"datagram of {size} bytes is shorter than the header", "too short")
    magic, version, kind = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise WireError("not a p2ptorrent datagram (bad magic)", "bad magic")
    if version != VERSION:
        raise WireError(f"unsupported protocol version {version} (this node speaks {VERSION})", "bad version")
    body = size - HEADER_SIZE
    if kind == BLOCK:
        if body < _BLOCK.size:
            raise WireError("truncated BLOCK", "bad BLOCK size")
        info_hash, nonce, piece, offset = _BLOCK.unpack_from(data, HEADER_SIZE)
        return Block(info_hash, nonce, piece, offset, data[BLOCK_OVERHEAD:])
    if kind == BLOCK_REQ:
        if body < _BLOCK_REQ.size:
            raise WireError("truncated BLOCK_REQ", "bad BLOCK_REQ size")
        info_hash, cookie, nonce, count = _BLOCK_REQ.unpack_from(data, HEADER_SIZE)
        if not 1 <= count <= MAX_BLOCKS_PER_REQUEST:
            raise WireError(f"BLOCK_REQ with {count} blocks", "bad BLOCK_REQ count")
        if body != _BLOCK_REQ.size + count * TRIPLE_SIZE:
            raise WireError("BLOCK_REQ size does not match its block count", "bad BLOCK_REQ size")
        blocks = tuple(_TRIPLE.iter_unpack(data[BLOCK_REQ_OVERHEAD:]))
        return BlockRequest(info_hash, cookie, nonce, blocks)
    if kind == INFO_REQ:
        if body != _INFO_REQ.size:
            raise WireError("INFO_REQ of the wrong size", "bad INFO_REQ size")
        return InfoRequest(*_INFO_REQ.unpack_from(data, HEADER_SIZE))
    if kind == INFO_RESP:
        if body != _INFO_RESP.size:
            raise WireError("INFO_RESP of the wrong size", "bad INFO_RESP size")
        return InfoResponse(*_INFO_RESP.unpack_from(data, HEADER_SIZE))
    if kind == HAVE_REQ:
        if body != _HAVE_REQ.size:
            raise WireError("HAVE_REQ of the wrong size", "bad HAVE_REQ size")
        info_hash, cookie, nonce, first, count, flags = _HAVE_REQ.unpack_from(data, HEADER_SIZE)
        if not 1 <= count <= MAX_HAVE_COUNT:
            raise WireError(f"HAVE_REQ for {count} pieces", "bad HAVE_REQ count")
        return HaveRequest(info_hash, cookie, nonce, first, count, flags)
    if kind == HAVE:
        if body < _HAVE.size:
            raise WireError("truncated HAVE", "bad HAVE size")
        info_hash, nonce, first, count, flags = _HAVE.unpack_from(data, HEADER_SIZE)
        if not 1 <= count <= MAX_HAVE_COUNT:
            raise WireError(f"HAVE for {count} pieces", "bad HAVE count")
        if body != _HAVE.size + (count + 7) // 8:
            raise WireError("HAVE size does not match its piece count", "bad HAVE size")
        return Have(info_hash, nonce, first, count, flags, data[HAVE_OVERHEAD:])
    if kind == METADATA_REQ:
        if body != _METADATA_REQ.size:
            raise WireError("METADATA_REQ of the wrong size", "bad METADATA_REQ size")
        info_hash, cookie, nonce, piece = _METADATA_REQ.unpack_from(data, HEADER_SIZE)
        if piece >= MAX_METADATA_PIECES:
            raise WireError(f"METADATA_REQ for piece {piece}", "bad METADATA_REQ piece")
        return MetadataRequest(info_hash, cookie, nonce, piece)
    if kind == METADATA:
        if body < _METADATA.size:
            raise WireError("truncated METADATA", "bad METADATA size")
        info_hash, nonce, total, piece = _METADATA.unpack_from(data, HEADER_SIZE)
        if not 0 < total <= MAX_METADATA_SIZE:
            raise WireError(f"METADATA claiming a {total}-byte info dict", "bad METADATA total")
        expected = metadata_piece_size(total, piece)
        if expected == 0:
            raise WireError(f"METADATA piece {piece} past the end of a {total}-byte info dict", "bad METADATA piece")
        if body - _METADATA.size != expected:
            raise WireError(f"METADATA piece {piece} of {body - _METADATA.size} bytes, not {expected}", "bad METADATA size")
        return Metadata(info_hash, nonce, total, piece, data[METADATA_OVERHEAD:])
    if kind == ERROR:
        if body < _ERROR.size or body > _ERROR.size + MAX_ERROR_MESSAGE:
            raise WireError("ERROR of the wrong size", "bad ERROR size")
        info_hash, nonce, code = _ERROR.unpack_from(data, HEADER_SIZE)
        message = data[HEADER_SIZE + _ERROR.size :].decode("utf-8", "replace")
        return Error(info_hash, nonce, code, message)
    raise WireError(f"unknown message type {kind}", "unknown type")
