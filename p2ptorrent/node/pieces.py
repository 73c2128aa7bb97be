"""What a file is made of, for a download: pieces (hashed) and blocks (one datagram each), and what becomes of
an assembled piece once it is judged.  Plain data, shared by the scheduler (transfer.py) and the shell."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable

#: A peer's address, as the network gives it.
Addr = Hashable


@dataclass(frozen=True)
class Geometry:
    """How a file divides into pieces (hashed) and blocks (one datagram each)."""

    length: int
    piece_length: int
    chunk: int
    #: Derived once (read for every block received): pieces, blocks in a whole piece, the last piece's size.
    num_pieces: int = field(init=False)
    blocks_per_piece: int = field(init=False)
    last_size: int = field(init=False)

    def __post_init__(self) -> None:
        num = -(-self.length // self.piece_length)
        object.__setattr__(self, "num_pieces", num)
        object.__setattr__(self, "blocks_per_piece", -(-self.piece_length // self.chunk))
        object.__setattr__(self, "last_size", self.length - (num - 1) * self.piece_length if num else 0)

    def piece_size(self, piece: int) -> int:
        return self.piece_length if piece < self.num_pieces - 1 else self.last_size

    def blocks_in_piece(self, piece: int) -> int:
        return -(-self.piece_size(piece) // self.chunk)

    def block(self, bid: int) -> tuple[int, int, int]:
        """Block id -> (piece, offset in piece, length)."""
        piece, k = divmod(bid, self.blocks_per_piece)
        offset = k * self.chunk
        return piece, offset, min(self.chunk, self.piece_size(piece) - offset)

    def block_ids(self, piece: int) -> range:
        first = piece * self.blocks_per_piece
        return range(first, first + self.blocks_in_piece(piece))


@dataclass
class _Piece:
    data: bytearray
    missing: int
    sources: dict[int, Addr] = field(default_factory=dict)


@dataclass(frozen=True)
class PieceAssembled:
    """Every block of a piece is here; its hash is to be checked elsewhere (see :meth:`Transfer.checked`)."""

    piece: int
    data: bytearray
    sources: frozenset[Addr]


@dataclass(frozen=True)
class PieceVerified:
    piece: int
    data: bytes | bytearray
    sources: frozenset[Addr]
    #: Peers whose blocks in an earlier, failed copy of this piece differ from the good one.
    corrupt_from: frozenset[Addr] = frozenset()


@dataclass(frozen=True)
class PieceFailed:
    piece: int
    sources: frozenset[Addr]
