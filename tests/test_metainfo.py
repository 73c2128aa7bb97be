"""Tests for p2ptorrent.metainfo: making, parsing and refusing torrents."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any

import pytest
from fastbencode import bdecode, bencode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2ptorrent.metainfo import (
    MAX_TORRENT_SIZE,
    KIB,
    MIB,
    Metainfo,
    MetainfoError,
    auto_piece_length,
    make_torrent,
    parse,
    read_torrent,
    torrent_from_info,
    safe_name,
    target_path,
)

ANNOUNCE = "http://localhost:12345"
PIECE = 16 * KIB


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def torrent_dict(**info_changes: Any) -> dict[bytes, Any]:
    """A valid torrent dict for a 3-piece, 40000-byte file, with *info_changes* applied."""
    info: dict[bytes, Any] = {
        b"length": 40000,
        b"name": b"file.bin",
        b"piece length": PIECE,
        b"pieces": b"\x01" * 60,
        b"sha256": b"\x02" * 32,
    }
    for key, value in info_changes.items():
        k = key.replace("_", " ").encode()
        if value is None:
            info.pop(k, None)
        else:
            info[k] = value
    return {b"announce": ANNOUNCE.encode(), b"info": info}


def refused(data: bytes, *fragments: str) -> str:
    with pytest.raises(MetainfoError) as e:
        parse(data)
    for fragment in fragments:
        assert fragment in str(e.value)
    return str(e.value)


# ---- making and parsing

@pytest.mark.parametrize("size", [0, 1, PIECE - 1, PIECE, PIECE + 1, 3 * PIECE, 5 * PIECE + 123])
def test_round_trip(tmp_path: Path, size: int) -> None:
    content = random.Random(size).randbytes(size)
    path = write(tmp_path, "data file.bin", content)
    meta, data = make_torrent(path, ANNOUNCE, PIECE)

    assert meta.name == "data file.bin"
    assert meta.length == size
    assert meta.piece_length == PIECE
    assert meta.num_pieces == -(-size // PIECE)
    assert meta.sha256 == hashlib.sha256(content).digest()
    for i in range(meta.num_pieces):
        chunk = content[i * PIECE : (i + 1) * PIECE]
        assert meta.piece_hash(i) == hashlib.sha1(chunk).digest()
        assert meta.piece_size(i) == len(chunk)
    assert sum(meta.piece_size(i) for i in range(meta.num_pieces)) == size
    assert parse(data) == meta
    assert read_torrent(write(tmp_path, "x.torrent", data)) == meta


def test_piece_helpers_refuse_out_of_range(tmp_path: Path) -> None:
    meta, _ = make_torrent(write(tmp_path, "f", b"x" * (PIECE + 1)), ANNOUNCE, PIECE)
    assert meta.num_pieces == 2
    assert meta.piece_size(1) == 1
    for bad in (-1, 2):
        with pytest.raises(IndexError):
            meta.piece_hash(bad)
        with pytest.raises(IndexError):
            meta.piece_size(bad)


def test_empty_file_has_no_pieces(tmp_path: Path) -> None:
    meta, data = make_torrent(write(tmp_path, "empty", b""), ANNOUNCE)
    assert meta.num_pieces == 0
    assert meta.pieces == b""
    assert meta.sha256 == hashlib.sha256(b"").digest()
    assert parse(data) == meta


def test_file_is_standard_bencode(tmp_path: Path) -> None:
    path = write(tmp_path, "f.bin", os.urandom(PIECE * 2 + 5))
    meta, data = make_torrent(path, ANNOUNCE, PIECE, creation_date=1700000000)
    top = bdecode(data)
    assert set(top) == {b"announce", b"created by", b"creation date", b"info"}
    assert top[b"announce"] == ANNOUNCE.encode()
    assert top[b"created by"] == b"p2ptorrent"
    assert top[b"creation date"] == 1700000000
    info = top[b"info"]
    assert set(info) == {b"length", b"name", b"piece length", b"pieces", b"sha256"}
    assert info[b"name"] == b"f.bin"
    assert info[b"length"] == PIECE * 2 + 5
    assert info[b"piece length"] == PIECE
    assert len(info[b"pieces"]) == 3 * 20
    assert len(info[b"sha256"]) == 32
    assert meta.info_hash == hashlib.sha1(bencode(info)).digest()
    assert meta.info_hash_hex == meta.info_hash.hex()
    # The info dict's bytes appear verbatim in the file: the hash is of them.
    assert bencode(info) in data


def test_info_hash_ignores_outer_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "f", b"abc" * 1000)
    a, data_a = make_torrent(path, "http://a:1", creation_date=1)
    b, data_b = make_torrent(path, "http://b:2", creation_date=2)
    assert data_a != data_b
    assert a.info_hash == b.info_hash


def test_parse_keeps_unknown_keys_in_the_hash() -> None:
    d = torrent_dict(private=1)
    meta = parse(bencode(d))
    assert meta.info_hash == hashlib.sha1(bencode(d[b"info"])).digest()
    assert meta.info_hash != parse(bencode(torrent_dict())).info_hash


def test_parse_without_sha256() -> None:
    assert parse(bencode(torrent_dict(sha256=None))).sha256 is None


def test_make_streams_and_picks_piece_length(tmp_path: Path) -> None:
    path = write(tmp_path, "big", b"\0" * (3 * MIB + 7))
    meta, _ = make_torrent(path, ANNOUNCE)
    assert meta.piece_length == 256 * KIB
    assert meta.num_pieces == 13


def test_make_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(MetainfoError, match="cannot read .*missing"):
        make_torrent(tmp_path / "missing", ANNOUNCE)
    with pytest.raises(MetainfoError, match="holds no files"):
        make_torrent(tmp_path, ANNOUNCE)  # a folder is a multi-file torrent now; an empty one has nothing
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(MetainfoError, match="not a regular file"):
        make_torrent(tmp_path / "fifo", ANNOUNCE)
    with pytest.raises(MetainfoError, match="piece length"):
        make_torrent(write(tmp_path, "f", b"x"), ANNOUNCE, -1)
    with pytest.raises(MetainfoError, match="piece length"):
        make_torrent(write(tmp_path, "f", b"x"), ANNOUNCE, 128 * MIB)
    with pytest.raises(MetainfoError, match="control characters"):
        make_torrent(write(tmp_path, "bad\x1bname", b"x"), ANNOUNCE)


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (0, 256 * KIB),
        (1, 256 * KIB),
        (2048 * 256 * KIB, 256 * KIB),
        (2048 * 256 * KIB + 1, 512 * KIB),
        (2048 * MIB, MIB),
        (10**12, 16 * MIB),
        (2**53, 16 * MIB),
    ],
)
def test_auto_piece_length(length: int, expected: int) -> None:
    assert auto_piece_length(length) == expected


@given(st.integers(min_value=0, max_value=2**53))
def test_auto_piece_length_properties(length: int) -> None:
    piece = auto_piece_length(length)
    assert piece & (piece - 1) == 0
    assert 256 * KIB <= piece <= 16 * MIB
    if piece < 16 * MIB:
        assert -(-length // piece) <= 2048
    if piece > 256 * KIB:
        assert -(-length // (piece // 2)) > 2048


# ---- refusing bad torrents

def test_refuses_non_bencode() -> None:
    refused(b"", "empty")
    refused(b"hello", "not valid bencode")
    refused(bencode(torrent_dict()) + b"junk", "not valid bencode")
    refused(b"d8:announce3:abce" + b"x", "not valid bencode")


def test_refuses_non_dict() -> None:
    refused(b"i5e", "dictionary", "integer")
    refused(b"le", "dictionary", "list")
    refused(b"3:abc", "dictionary", "byte string")


def test_refuses_missing_or_mistyped_fields() -> None:
    d = torrent_dict()
    del d[b"announce"]
    refused(bencode(d), "no announce")
    refused(bencode({**torrent_dict(), b"announce": 5}), "announce must be a byte string")
    refused(bencode({b"announce": b"x"}), "no info")
    refused(bencode({b"announce": b"x", b"info": b"x"}), "info must be a dictionary")
    refused(bencode(torrent_dict(name=None)), "no info name")
    refused(bencode(torrent_dict(name=5)), "name must be a byte string")
    refused(bencode(torrent_dict(length=b"40000")), "length must be an integer")
    refused(bencode(torrent_dict(pieces=[b"a"])), "pieces must be a byte string")
    refused(bencode(torrent_dict(piece_length=None)), "no info piece length")


def test_reads_multi_file() -> None:
    """Multi-file torrents used to be refused here; they are parsed now (tests/test_metainfo_folders.py)."""
    d = torrent_dict(length=None, pieces=b"\x01" * 20, files=[{b"length": 1, b"path": [b"a"]}])
    meta = parse(bencode(d))
    assert meta.is_folder and meta.length == 1 and meta.files[0].path == ("a",)
    refused(bencode(torrent_dict(files=[{b"length": 1, b"path": [b"a"]}])), "both a length (one file) and files")


def test_refuses_non_utf8() -> None:
    refused(bencode(torrent_dict(name=b"caf\xe9")), "name is not valid UTF-8", "caf\\xe9")
    refused(bencode({**torrent_dict(), b"announce": b"\xff"}), "announce is not valid UTF-8")


@pytest.mark.parametrize("bad", [0, -1, 64 * MIB + 1, 2**70])
def test_refuses_piece_length(bad: int) -> None:
    refused(bencode(torrent_dict(piece_length=bad)), "piece length must be 1 byte to 64 MiB")


def test_refuses_lengths() -> None:
    refused(bencode(torrent_dict(length=-1)), "must not be negative")
    refused(bencode(torrent_dict(length=2**53 + 1)), "too large")
    refused(bencode(torrent_dict(length=10**40)), "too large")


def test_refuses_piece_count_mismatch() -> None:
    refused(bencode(torrent_dict(pieces=b"\x01" * 40)), "lists 2 piece hashes", "has 3")
    refused(bencode(torrent_dict(pieces=b"\x01" * 80)), "lists 4 piece hashes")
    refused(bencode(torrent_dict(pieces=b"\x01" * 59)), "multiple of 20")
    refused(bencode(torrent_dict(length=0)), "lists 3 piece hashes", "has 0")
    assert parse(bencode(torrent_dict(length=0, pieces=b""))).num_pieces == 0


def test_refuses_bad_sha256() -> None:
    refused(bencode(torrent_dict(sha256=b"\x00" * 31)), "32-byte")
    refused(bencode(torrent_dict(sha256=7)), "32-byte")


def test_refuses_oversized_data() -> None:
    big = bencode({**torrent_dict(), b"padding": b"x" * MAX_TORRENT_SIZE})
    refused(big, "too large", "16 MiB")


def test_refuses_every_truncation() -> None:
    data = bencode(torrent_dict())
    for end in range(len(data)):
        refused(data[:end])


def test_refuses_deep_nesting() -> None:
    refused(b"l" * 100000 + b"e" * 100000, "dictionary")
    refused(b"l" * 100000, "not valid bencode")
    refused(b"d1:x" + b"l" * 1000000 + b"e" * 1000000 + b"e", "no announce")
    nested = bencode(torrent_dict())[:-2] + b"1:z" + b"l" * 1000000 + b"e" * 1000000 + b"ee"
    # Unknown deeply nested value inside info: accepted, and hashed as stored.
    meta = parse(nested)
    assert meta.info_hash == hashlib.sha1(nested[nested.index(b"4:info") + 6 : -1]).digest()


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../x", 'must not contain "/"'),
        ("/etc/passwd", 'must not contain "/"'),
        ("a/../../b", 'must not contain "/"'),
        ("C:\\x", 'must not contain "\\"'),
        ("C:x", "drive prefix"),
        ("..", 'must not be ".."'),
        (".", 'must not be "."'),
        ("...", "only of dots and spaces"),
        (" . ", "only of dots and spaces"),
        ("a\x00b", "NUL"),
        ("a\nb", "control characters"),
        ("tab\there", "control characters"),
        ("del\x7f", "control characters"),
        ("x" * 256, "at most 255 bytes"),
        ("é" * 128, "at most 255 bytes"),
    ],
)
def test_hostile_names_refused(name: str, why: str) -> None:
    with pytest.raises(MetainfoError) as e:
        safe_name(name)
    assert why in str(e.value)
    assert str(e.value).startswith("torrent names \"")
    # And the same inside a torrent.
    refused(bencode(torrent_dict(name=name.encode())), why)


def test_name_messages_are_readable() -> None:
    with pytest.raises(MetainfoError) as e:
        safe_name("../x")
    assert str(e.value) == 'torrent names "../x": a file name must not contain "/"'
    with pytest.raises(MetainfoError) as e:
        safe_name("a\x00b")
    assert "\x00" not in str(e.value) and "a\\x00b" in str(e.value)
    with pytest.raises(MetainfoError) as e:
        safe_name("x" * 300)
    assert len(str(e.value)) < 200
    with pytest.raises(MetainfoError, match="empty"):
        safe_name("")
    with pytest.raises(MetainfoError, match="valid Unicode"):
        safe_name("a\udcff")


@pytest.mark.parametrize("name", ["file.bin", "a b c", "..hidden", "x" * 255, "é" * 127, "日本語.txt", "ab:c", ".x."])
def test_fine_names_kept(name: str) -> None:
    assert safe_name(name) == name


def test_target_path(tmp_path: Path) -> None:
    assert target_path(tmp_path, "f.bin") == tmp_path / "f.bin"
    with pytest.raises(MetainfoError, match='must not contain "/"'):
        target_path(tmp_path, "../f.bin")


def test_target_path_refuses_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / "f.bin").symlink_to(outside / "victim")
    with pytest.raises(MetainfoError, match="symbolic link"):
        target_path(folder, "f.bin")
    (folder / "dangling").symlink_to(folder / "nowhere")
    with pytest.raises(MetainfoError, match="symbolic link"):
        target_path(folder, "dangling")


def test_target_path_in_a_symlinked_folder(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    assert target_path(link, "f") == link / "f"


def test_read_torrent_errors(tmp_path: Path) -> None:
    with pytest.raises(MetainfoError) as e:
        read_torrent(tmp_path / "nope.torrent")
    assert str(e.value) == f"cannot read torrent {tmp_path / 'nope.torrent'}: No such file or directory"
    with pytest.raises(MetainfoError, match="cannot read torrent"):
        read_torrent(tmp_path)
    bad = write(tmp_path, "bad.torrent", b"garbage")
    with pytest.raises(MetainfoError, match=f"^{bad}: torrent is not valid bencode"):
        read_torrent(bad)
    big = write(tmp_path, "big.torrent", b"x" * (MAX_TORRENT_SIZE + 10))
    with pytest.raises(MetainfoError, match="too large"):
        read_torrent(big)


# ---- property tests: hostile input only ever raises MetainfoError

bencodable = st.recursive(
    st.integers(min_value=-(2**70), max_value=2**70) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.binary(max_size=12), children, max_size=4),
    max_leaves=12,
)


def parse_or_refuse(data: bytes) -> Metainfo | None:
    try:
        return parse(data)
    except MetainfoError:
        return None


@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    parse_or_refuse(data)


@given(st.binary(max_size=100).map(lambda b: b"d8:announce4:http4:infod" + b))
def test_random_bytes_after_a_plausible_prefix(data: bytes) -> None:
    parse_or_refuse(data)


VALID = bencode(torrent_dict())


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255), st.sampled_from("rid")), min_size=1, max_size=6))
def test_mutated_bytes(edits: list[tuple[int, int, str]]) -> None:
    data = bytearray(VALID)
    for pos, byte, op in edits:
        pos = min(pos, len(data) - 1) if data else 0
        if op == "r" and data:
            data[pos] = byte
        elif op == "i":
            data.insert(pos, byte)
        elif op == "d" and data:
            del data[pos]
    meta = parse_or_refuse(bytes(data))
    if meta is not None:
        assert meta.num_pieces == -(-meta.length // meta.piece_length)


@given(
    st.sampled_from([b"length", b"name", b"piece length", b"pieces", b"sha256", b"files", b"extra"]),
    bencodable,
    st.booleans(),
)
def test_mutated_fields(key: bytes, value: Any, top_level: bool) -> None:
    d = torrent_dict()
    (d if top_level else d[b"info"])[key] = value
    meta = parse_or_refuse(bencode(d))
    if meta is not None:
        safe_name(meta.name)
        assert 0 <= meta.length <= 2**53


@given(bencodable)
def test_random_structures(value: Any) -> None:
    parse_or_refuse(bencode(value))
    parse_or_refuse(bencode({b"announce": b"x", b"info": value}))


@given(st.binary(min_size=1, max_size=300))
def test_random_names(raw: bytes) -> None:
    meta = parse_or_refuse(bencode(torrent_dict(name=raw)))
    if meta is not None:
        assert "/" not in meta.name and "\\" not in meta.name and meta.name not in (".", "..")
        assert len(meta.name.encode()) <= 255


def test_deep_nesting_with_pure_python_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """fastbencode falls back to a recursive decoder when its extension is missing."""
    from fastbencode import _bencode_py

    import p2ptorrent.metainfo

    monkeypatch.setattr(p2ptorrent.metainfo, "bdecode", _bencode_py.bdecode)
    refused(b"l" * 100000 + b"e" * 100000, "not valid bencode")
    assert parse(VALID).name == "file.bin"


def test_info_bytes_are_the_hashed_info_dict(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 1000)
    made, data = make_torrent(f, "http://t/announce", 256)
    parsed = parse(data)
    assert hashlib.sha1(made.info_bytes).digest() == made.info_hash
    assert parsed.info_bytes == made.info_bytes
    # A torrent rebuilt around the info dict alone (a magnet link's download) keeps the info hash.
    meta, rebuilt = torrent_from_info(made.info_bytes, "http://other/announce", [["http://other/announce", "udp://x"]])
    assert meta.info_hash == made.info_hash and meta.announce == "http://other/announce"
    assert meta.announce_list == (("http://other/announce", "udp://x"),)
    assert parse(rebuilt).info_hash == made.info_hash


@pytest.mark.parametrize("info", [b"", b"i1e", b"d4:name1:ae", b"de", b"d4:name1:a4:name1:ae"])
def test_torrent_from_a_bad_info_dict_is_refused(info: bytes) -> None:
    with pytest.raises(MetainfoError):
        torrent_from_info(info, "http://t/announce")
