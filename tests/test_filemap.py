"""Tests for p2ptorrent.filemap: content byte ranges to file segments and back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2ptorrent.filemap import FileMap, Segment
from p2ptorrent.metainfo import FileEntry, Metainfo


def test_a_range_across_files() -> None:
    fm = FileMap([5, 0, 3, 0, 0, 4])
    assert fm.total == 12
    assert fm.starts == (0, 5, 5, 8, 8, 8)
    assert fm.segments(3, 7) == [Segment(0, 3, 2), Segment(2, 0, 3), Segment(5, 0, 2)]
    assert fm.segments(5, 3) == [Segment(2, 0, 3)]  # the empty file 1 at offset 5 gets nothing
    assert fm.segments(0, 12) == [Segment(0, 0, 5), Segment(2, 0, 3), Segment(5, 0, 4)]
    assert fm.segments(12, 0) == [] and fm.segments(0, 0) == []
    assert fm.content_offset(5, 4) == 12 and fm.content_offset(1, 0) == 5
    assert fm.file_range(2) == (5, 3)
    assert fm.pieces_of_file(2, 4) == range(1, 2)
    assert fm.pieces_of_file(5, 4) == range(2, 3)
    assert fm.pieces_of_file(1, 4) == range(0)


def test_refuses_out_of_range() -> None:
    fm = FileMap([5, 3])
    for offset, length in ((-1, 1), (0, 9), (8, 1), (2, -1)):
        with pytest.raises(ValueError, match="outside the content"):
            fm.segments(offset, length)
    with pytest.raises(ValueError, match="file 2 out of range"):
        fm.content_offset(2, 0)
    with pytest.raises(ValueError, match="outside file 1"):
        fm.content_offset(1, 4)
    with pytest.raises(ValueError, match="whole numbers"):
        FileMap([1, -1])
    with pytest.raises(ValueError, match="whole numbers"):
        FileMap([True])


def meta(length: int, files: tuple[FileEntry, ...] = ()) -> Metainfo:
    return Metainfo(announce="http://x", name="n", length=length, piece_length=4, pieces=b"\0" * 60, sha256=None,
                    info_hash=b"\0" * 20, files=files)


def test_of_metainfo() -> None:
    assert FileMap.of(meta(10)).segments(2, 8) == [Segment(0, 2, 8)]
    folder = meta(10, (FileEntry(("a",), 6), FileEntry(("b", "c"), 0), FileEntry(("d",), 4)))
    assert FileMap.of(folder).segments(4, 4) == [Segment(0, 4, 2), Segment(2, 0, 2)]
    assert FileMap([]).total == 0 and FileMap([]).segments(0, 0) == []


@st.composite
def map_and_range(draw: st.DrawFn) -> tuple[list[int], int, int]:
    lengths = draw(st.lists(st.one_of(st.just(0), st.integers(0, 50), st.integers(0, 10**6)), min_size=1, max_size=30))
    total = sum(lengths)
    offset = draw(st.integers(0, total))
    length = draw(st.integers(0, total - offset))
    return lengths, offset, length


@given(map_and_range())
def test_segments_cover_the_range_exactly(case: tuple[list[int], int, int]) -> None:
    lengths, offset, length = case
    fm = FileMap(lengths)
    segments = fm.segments(offset, length)
    assert sum(s.length for s in segments) == length
    position = offset
    previous = -1
    for s in segments:
        assert s.length > 0  # an empty file never gets a segment
        assert s.file > previous  # in file order, each file once
        assert 0 <= s.offset and s.offset + s.length <= lengths[s.file]  # inside its file
        assert fm.content_offset(s.file, s.offset) == position  # contiguous, and back again
        position += s.length
        previous = s.file
    assert position == offset + length
    # Only the first segment may start inside its file, only the last may end inside it.
    for s in segments[1:]:
        assert s.offset == 0
    for s in segments[:-1]:
        assert s.offset + s.length == lengths[s.file]


@given(st.lists(st.integers(0, 40), min_size=1, max_size=12), st.integers(1, 50))
def test_pieces_of_file_hold_its_bytes(lengths: list[int], piece_length: int) -> None:
    fm = FileMap(lengths)
    pieces = [fm.segments(p * piece_length, min(piece_length, fm.total - p * piece_length))
              for p in range(-(-fm.total // piece_length))]
    for file in range(len(lengths)):
        touching = [p for p, segments in enumerate(pieces) if any(s.file == file for s in segments)]
        assert list(fm.pieces_of_file(file, piece_length)) == touching
