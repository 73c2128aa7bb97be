"""Where a torrent's bytes lie in its files: byte ranges of the content to per-file segments, and back.

A torrent's content is one byte string: its file, or a folder's files
concatenated in torrent order.  Pieces and blocks are ranges of that string
and may run across file boundaries; storage reads and writes files.  A
:class:`FileMap` translates between the two, with no I/O: a single-file
torrent is a map of one file, so callers need no second code path.

Lookups bisect the files' start offsets, O(log files), then walk only the
files the range touches.  Zero-length files hold no bytes, so they never
get a segment (a writer creates them empty on its own).
"""

from __future__ import annotations

from bisect import bisect_right
from typing import NamedTuple, Sequence

from p2ptorrent.metainfo import Metainfo


class Segment(NamedTuple):
    """*length* bytes at *offset* in file number *file* (an index in torrent order)."""

    file: int
    offset: int
    length: int


class FileMap:
    """The files' lengths, in torrent order, laid end to end."""

    def __init__(self, lengths: Sequence[int]) -> None:
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in lengths):
            raise ValueError(f"file lengths must be whole numbers of bytes, got {list(lengths)!r}")
        self.lengths = tuple(lengths)
        starts = []
        total = 0
        for n in self.lengths:
            starts.append(total)
            total += n
        #: Where each file starts in the content (a zero-length file starts where the next one does).
        self.starts = tuple(starts)
        self.total = total
        # Only files that hold bytes are searched: a range never lands in an empty one.
        self._holding = [i for i, n in enumerate(self.lengths) if n]
        self._holding_starts = [self.starts[i] for i in self._holding]

    @classmethod
    def of(cls, meta: Metainfo) -> FileMap:
        """The map of *meta*'s content: its files, or its one file."""
        return cls([f.length for f in meta.files] if meta.is_folder else [meta.length])

    def segments(self, offset: int, length: int) -> list[Segment]:
        """The file segments holding content bytes ``[offset, offset + length)``, in order.

        Raises ValueError for a range outside the content.
        """
        self._check_range(offset, length)
        found: list[Segment] = []
        k = bisect_right(self._holding_starts, offset) - 1
        while length:
            i = self._holding[k]
            inside = offset - self.starts[i]
            take = min(length, self.lengths[i] - inside)
            found.append(Segment(i, inside, take))
            offset += take
            length -= take
            k += 1
        return found

    def content_offset(self, file: int, offset: int) -> int:
        """Where byte *offset* of file number *file* lies in the content (the way back from a segment)."""
        if not 0 <= file < len(self.lengths):
            raise ValueError(f"file {file} out of range: there are {len(self.lengths)} files")
        if not 0 <= offset <= self.lengths[file]:
            raise ValueError(f"offset {offset} is outside file {file} ({self.lengths[file]} bytes)")
        return self.starts[file] + offset

    def file_range(self, file: int) -> tuple[int, int]:
        """(offset, length) of file number *file* in the content."""
        return self.content_offset(file, 0), self.lengths[file]

    def pieces_of_file(self, file: int, piece_length: int) -> range:
        """The pieces holding bytes of file number *file* (none for an empty file).

        Pieces at either end may also hold bytes of the neighbouring files.
        """
        start, length = self.file_range(file)
        if not length:
            return range(0)
        return range(start // piece_length, (start + length - 1) // piece_length + 1)

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.total:
            raise ValueError(f"bytes {offset} to {offset + length} are outside the content ({self.total} bytes)")
