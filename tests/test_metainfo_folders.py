"""Folders as BEP 3 multi-file torrents: making, parsing, hostile paths, v2, where files go, and the node refusing them."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import unicodedata
from pathlib import Path
from typing import Any

import libtorrent as lt
import pytest
from fastbencode import bdecode, bencode
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock

from p2ptorrent.config import Config
from p2ptorrent.filemap import FileMap
from p2ptorrent.metainfo import (
    KIB,
    MAX_FILES,
    MAX_PATH_DEPTH,
    FileEntry,
    Metainfo,
    MetainfoError,
    make_torrent,
    parse,
    read_torrent,
    safe_name,
    target_file,
    target_paths,
)
from p2ptorrent.node.service import Node
from p2ptorrent.node.storage import INCOMPLETE, PartFile, unfinished

ANNOUNCE = "http://localhost:12345"
PIECE = 16 * KIB


def tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def rand(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


ALBUM = {
    "a.bin": rand(40000, 1),
    "empty1": b"",
    "sub/b.bin": rand(5, 2),
    "sub/deeper/c.bin": rand(30000, 3),
    "sub/deeper/zero": b"",
    "z/empty": b"",
}
ALBUM_ORDER = [("a.bin",), ("empty1",), ("sub", "b.bin"), ("sub", "deeper", "c.bin"), ("sub", "deeper", "zero"), ("z", "empty")]


def folder_torrent(files: Any, pieces: bytes | None = None, **info: Any) -> bytes:
    """A foreign folder torrent listing *files*, with as many (dummy) piece hashes as their total needs."""
    listed = files if isinstance(files, list) else []
    total = sum(f[b"length"] for f in listed if isinstance(f, dict) and isinstance(f.get(b"length"), int))
    d: dict[bytes, Any] = {
        b"files": files,
        b"name": b"folder",
        b"piece length": PIECE,
        # No hashes for a total too large to allocate them: parse refuses it before it counts them.
        b"pieces": b"\x01" * 20 * -(-min(max(total, 0), 2**30) // PIECE) if pieces is None else pieces,
    }
    d.update({k.encode(): v for k, v in info.items()})
    return bencode({b"announce": ANNOUNCE.encode(), b"info": d})


def entry(*parts: bytes, length: int = 1, **extra: Any) -> dict[bytes, Any]:
    return {b"length": length, b"path": list(parts), **{k.encode(): v for k, v in extra.items()}}


# ---- making and reading

def test_folder_round_trip(tmp_path: Path) -> None:
    root = tree(tmp_path / "album", ALBUM)
    (root / "empty dir" / "inside").mkdir(parents=True)  # empty folders cannot be represented: left out
    meta, data = make_torrent(root, ANNOUNCE, PIECE, creation_date=1)

    assert meta.is_folder and meta.name == "album"
    assert [f.path for f in meta.files] == ALBUM_ORDER
    assert [f.length for f in meta.files] == [len(ALBUM["/".join(p)]) for p in ALBUM_ORDER]
    content = b"".join(ALBUM["/".join(p)] for p in ALBUM_ORDER)
    assert meta.length == len(content) == 70005
    assert meta.num_pieces == 5
    for i in range(meta.num_pieces):
        assert meta.piece_hash(i) == hashlib.sha1(content[i * PIECE : (i + 1) * PIECE]).digest()
    assert meta.sha256 == hashlib.sha256(content).digest()  # of the concatenation
    # Piece 2 (bytes 32768 to 49152) runs across a.bin, the empty file, b.bin and into c.bin.
    segments = FileMap.of(meta).segments(2 * PIECE, meta.piece_size(2))
    assert [meta.files[s.file].path for s in segments] == [("a.bin",), ("sub", "b.bin"), ("sub", "deeper", "c.bin")]
    assert parse(data) == meta
    assert read_torrent(tree(tmp_path, {"album.torrent": data}) / "album.torrent") == meta

    info = bdecode(data)[b"info"]
    assert set(info) == {b"files", b"name", b"piece length", b"pieces", b"sha256"}
    assert info[b"files"][2] == {b"length": 5, b"path": [b"sub", b"b.bin"]}
    assert meta.info_hash == hashlib.sha1(bencode(info)).digest()
    # The same folder gives the same torrent: the order comes from the names, not the directory listing.
    assert make_torrent(root, ANNOUNCE, PIECE, creation_date=1)[1] == data


def test_libtorrent_reads_our_folder_torrent(tmp_path: Path) -> None:
    root = tree(tmp_path / "album", ALBUM)
    meta, data = make_torrent(root, ANNOUNCE, PIECE)
    ti = lt.torrent_info(lt.bdecode(data))
    assert ti.info_hashes().v1.to_bytes() == meta.info_hash
    assert ti.num_pieces() == meta.num_pieces and ti.total_size() == meta.length
    fs = ti.layout()
    listed = [(tuple(Path(fs.file_path(i)).parts), fs.file_size(i)) for i in range(fs.num_files())]
    assert listed == [(("album", *f.path), f.length) for f in meta.files]


def test_libtorrent_checks_our_pieces(tmp_path: Path) -> None:
    """libtorrent, hashing the folder's files in our order, gets our pieces (across file boundaries alike)."""
    root = tree(tmp_path / "album", ALBUM)
    meta, _ = make_torrent(root, ANNOUNCE, PIECE)
    entries = [lt.create_file_entry(os.path.join("album", *f.path), f.length) for f in meta.files]
    ct = lt.create_torrent(entries, PIECE, lt.create_torrent.v1_only)
    lt.set_piece_hashes(ct, str(tmp_path))
    info = ct.generate()[b"info"]
    assert [tuple(p.decode() for p in f[b"path"]) for f in info[b"files"]] == [f.path for f in meta.files]
    assert info[b"pieces"] == meta.pieces


def test_folder_order_is_bytes_of_components(tmp_path: Path) -> None:
    root = tree(tmp_path / "f", {"a-b": b"1", "a/b": b"2", "B": b"3", "é": b"4", "z": b"5", "a/a/x": b"6"})
    meta, _ = make_torrent(root, ANNOUNCE, PIECE)
    # ("a", ...) sorts before ("a-b",): component by component, as BEP 52's file tree; "B" < "a"; "é" > "z".
    assert [f.path for f in meta.files] == [("B",), ("a", "a", "x"), ("a", "b"), ("a-b",), ("z",), ("é",)]


def test_folder_name_from_dot_and_trailing_slash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tree(tmp_path / "named", {"x": b"x"})
    monkeypatch.chdir(root)
    assert make_torrent(".", ANNOUNCE)[0].name == "named"
    assert make_torrent(str(root) + "/", ANNOUNCE)[0].name == "named"


def test_folder_given_as_a_link_is_followed(tmp_path: Path) -> None:
    """The folder named on the command line may be a link (as a single file may); links inside it may not."""
    root = tree(tmp_path / "real", {"x": b"x"})
    (tmp_path / "alias").symlink_to(root)
    meta, _ = make_torrent(tmp_path / "alias", ANNOUNCE)
    assert meta.name == "alias" and [f.path for f in meta.files] == [("x",)]


def test_make_refuses_links_and_special_files(tmp_path: Path) -> None:
    root = tree(tmp_path / "f", {"a": b"a"})
    (root / "link").symlink_to(root / "a")
    with pytest.raises(MetainfoError, match=r"f/link is a symbolic link \(links inside a folder are not followed\)"):
        make_torrent(root, ANNOUNCE)
    (root / "link").unlink()
    (root / "sub").mkdir()
    (root / "sub" / "up").symlink_to(tmp_path)
    with pytest.raises(MetainfoError, match="sub/up is a symbolic link"):
        make_torrent(root, ANNOUNCE)
    (root / "sub" / "up").unlink()
    os.mkfifo(root / "sub" / "pipe")
    with pytest.raises(MetainfoError, match="sub/pipe is a FIFO, not a regular file"):
        make_torrent(root, ANNOUNCE)


def test_make_refuses_a_socket(tmp_path: Path) -> None:
    short = Path(os.path.relpath(tmp_path))  # UNIX socket paths are short
    root = tree(tmp_path / "f", {"a": b"a"})
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(short / "f" / "s"))
        with pytest.raises(MetainfoError, match="f/s is a socket"):
            make_torrent(root, ANNOUNCE)
    finally:
        s.close()


def test_make_refuses_what_parse_would(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty" / "only folders").mkdir(parents=True)
    with pytest.raises(MetainfoError, match="holds no files"):
        make_torrent(tmp_path / "empty", ANNOUNCE)
    with pytest.raises(MetainfoError, match='"A" and "a": names that differ only in case .* are one file on case-insensitive file systems'):
        make_torrent(tree(tmp_path / "case", {"a": b"1", "A": b"2"}), ANNOUNCE)
    with pytest.raises(MetainfoError, match=r"bad\\x1bname.*control characters"):
        make_torrent(tree(tmp_path / "ctl", {"bad\x1bname": b"1"}), ANNOUNCE)
    monkeypatch.setattr("p2ptorrent.metainfo.MAX_FILES", 3)
    with pytest.raises(MetainfoError, match="more than 3 files"):
        make_torrent(tree(tmp_path / "many", {str(i): b"" for i in range(4)}), ANNOUNCE)


def test_a_single_file_torrent_is_not_a_folder(tmp_path: Path) -> None:
    meta, data = make_torrent(tree(tmp_path, {"f.bin": b"abc"}) / "f.bin", ANNOUNCE)
    assert not meta.is_folder and meta.files == ()
    assert b"files" not in bdecode(data)[b"info"]


# ---- foreign torrents

def test_parse_foreign_folder_in_any_order() -> None:
    meta = parse(folder_torrent([entry(b"z", length=PIECE), entry(b"a", b"b", length=0), entry(b"a", b"c", length=3)]))
    assert [f.path for f in meta.files] == [("z",), ("a", "b"), ("a", "c")]  # the torrent's order is the content's
    assert meta.length == PIECE + 3 and meta.num_pieces == 2


@pytest.mark.parametrize(
    ("files", "why"),
    [
        ([entry(b"..")], 'must not be ".."'),
        ([entry(b"a", b"..", b"b")], 'must not be ".." (in info files[0] path "a/../b")'),
        ([entry(b".")], 'must not be "."'),
        ([entry(b"/etc/passwd")], 'must not contain "/"'),
        ([entry(b"", b"etc", b"passwd")], "empty file name"),
        ([entry(b"a", b"")], "empty file name"),
        ([entry()], "info files[0] path is empty"),
        ([entry(b"C:x")], "drive prefix"),
        ([entry(b"a\\b")], 'must not contain "\\"'),
        ([entry(b"a\x00b")], "NUL"),
        ([entry(b"a\nb")], "control characters"),
        ([entry(b"x" * 256)], "at most 255 bytes"),
        ([entry(b"caf\xe9")], "not valid UTF-8"),
        ([entry(b"a"), entry(b"a", b"b")], '"a" both as a file and as a folder (of "a/b")'),
        ([entry(b"a", b"b", b"c"), entry(b"a", b"b")], '"a/b" both as a file and as a folder (of "a/b/c")'),
        ([entry(b"d", b"x"), entry(b"d", b"x")], 'lists "d/x" twice'),
        ([entry(b"README"), entry(b"readme")], "one file on case-insensitive file systems"),
        ([entry(b"Dir", b"x"), entry(b"dir")], "both as a file and as a folder"),
        ([entry("é".encode()), entry(unicodedata.normalize("NFD", "é").encode())], "case-insensitive"),
        ([entry(*[b"d"] * (MAX_PATH_DEPTH + 1), b"f")], f"at most {MAX_PATH_DEPTH} folders deep"),
        ([entry(*[b"x" * 255] * 17)], "too long: 4358 bytes of path, at most 4096"),
        ([entry(b"a", length=-1)], "info files[0] length must not be negative"),
        ([entry(b"a", length=2**53), entry(b"b", length=2**53)], "too large"),
        ([entry(b"a", length=2**60)], "info files[0] length 1152921504606846976 is too large"),
        ([{b"path": [b"a"]}], "no info files[0] length"),
        ([{b"length": 1}], "no info files[0] path"),
        ([entry(b"a", length=b"1")], "length must be an integer"),
        ([{b"length": 1, b"path": b"a"}], "path must be a list"),
        ([{b"length": 1, b"path": [1]}], "path must be a list of names"),
        ([entry(b"a", attr=1)], "attr must be a byte string"),
        ([b"a"], "info files[0] must be a dictionary"),
        ([], "info files is empty"),
    ],
)
def test_hostile_paths_refused(files: list[Any], why: str) -> None:
    with pytest.raises(MetainfoError) as e:
        parse(folder_torrent(files))
    assert why in str(e.value)


def test_refuses_odd_file_lists() -> None:
    with pytest.raises(MetainfoError, match="files must be a list, got a dictionary"):
        parse(folder_torrent({}))
    with pytest.raises(MetainfoError, match="both a length"):
        parse(folder_torrent([entry(b"a")], length=1))
    with pytest.raises(MetainfoError, match="lists 2 piece hashes, but a 1-byte folder in 16384-byte pieces has 1"):
        parse(folder_torrent([entry(b"a")], pieces=b"\x01" * 40))


def test_refuses_too_many_files() -> None:
    files = [entry(b"f", length=0)] * (MAX_FILES + 1)
    with pytest.raises(MetainfoError, match=f"lists {MAX_FILES + 1} files, more than the {MAX_FILES}"):
        parse(folder_torrent(files))


def test_padding_files_may_share_a_path() -> None:
    """libtorrent names every padding file ".pad/<size>", so two of a size share one."""
    pad = entry(b".pad", b"100", length=100, attr=b"p")
    meta = parse(folder_torrent([entry(b"a", length=PIECE - 100), pad, entry(b"b", length=PIECE - 100), pad, entry(b"c")]))
    assert [f.padding for f in meta.files] == [False, True, False, True, False]


names = st.sampled_from([b"a", b"A", b"b", b"..", b"", b".pad", "é".encode(), "e\u0301".encode(), b"c/d", b"x\x00"])


@given(st.lists(st.fixed_dictionaries({
    b"length": st.integers(-1, 3),
    b"path": st.lists(names, max_size=3),
}, optional={b"attr": st.sampled_from([b"", b"p", b"x", 5])}), max_size=6))
def test_random_file_lists(files: list[dict[bytes, Any]]) -> None:
    try:
        meta = parse(folder_torrent(files))
    except MetainfoError:
        return
    real = [f for f in meta.files if not f.padding]
    keys = [tuple(unicodedata.normalize("NFD", p).casefold() for p in f.path) for f in real]
    assert len(set(keys)) == len(keys)
    for k in keys:
        assert not any(other != k and other[: len(k)] == k for other in keys)
    for f in meta.files:
        assert f.path and all(safe_name(p) == p for p in f.path)


values = st.recursive(
    st.one_of(st.integers(-2, 2**64), st.binary(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from([b"length", b"path", b"attr", b"x"]), inner, max_size=4)),
    max_leaves=12,
)


@given(values)
def test_random_files_values(files: Any) -> None:
    """Whatever ``files`` holds, parse returns or raises MetainfoError, never anything else."""
    try:
        parse(folder_torrent(files, pieces=b""))
    except MetainfoError:
        pass


# ---- v2 and hybrid

def test_v2_only_refused(tmp_path: Path) -> None:
    root = tree(tmp_path / "album", ALBUM)
    for path in (root, root / "a.bin"):
        ct = lt.create_torrent(lt.list_files(str(path)), PIECE, lt.create_torrent.v2_only)
        ct.add_tracker(ANNOUNCE)
        lt.set_piece_hashes(ct, str(path.parent))
        with pytest.raises(MetainfoError) as e:
            parse(lt.bencode(ct.generate()))
        assert "v2-only torrent (BEP 52" in str(e.value)
        assert "p2ptorrent reads v1 torrents and hybrid v1+v2 ones" in str(e.value)


@pytest.mark.parametrize("single", [True, False])
def test_hybrid_read_through_its_v1_part(tmp_path: Path, single: bool) -> None:
    root = tree(tmp_path / "album", ALBUM)
    path = root / "a.bin" if single else root
    ct = lt.create_torrent(lt.list_files(str(path)), PIECE)  # libtorrent 2 makes hybrid torrents by default
    ct.add_tracker(ANNOUNCE)
    lt.set_piece_hashes(ct, str(path.parent))
    data = lt.bencode(ct.generate())
    info = bdecode(data)[b"info"]
    assert info[b"meta version"] == 2 and b"pieces" in info

    meta = parse(data)
    ti = lt.torrent_info(lt.bdecode(data))
    assert meta.info_hash == ti.info_hashes().v1.to_bytes()
    assert meta.is_folder is not single
    if single:
        assert meta.length == len(ALBUM["a.bin"])
        return
    # libtorrent pads each file to a piece boundary: those zeros are in the pieces, never on disk.
    assert [f.path for f in meta.files if not f.padding] == [("a.bin",), ("empty1",), ("sub", "b.bin"),
                                                              ("sub", "deeper", "c.bin"), ("sub", "deeper", "zero"),
                                                              ("z", "empty")]
    assert any(f.padding for f in meta.files)
    content = b"".join(b"\0" * f.length if f.padding else ALBUM["/".join(f.path)] for f in meta.files)
    assert len(content) == meta.length
    for i in range(meta.num_pieces):
        assert meta.piece_hash(i) == hashlib.sha1(content[i * PIECE : (i + 1) * PIECE]).digest()
    assert target_paths(tmp_path / "dl", meta).count(None) == sum(f.padding for f in meta.files)


# ---- where files go

def test_target_paths(tmp_path: Path) -> None:
    meta = parse(folder_torrent([entry(b"a", b"b"), entry(b"c"), entry(b".pad", b"3", length=3, attr=b"p")]))
    dl = tmp_path / "dl"
    dl.mkdir()
    assert target_paths(dl, meta) == (dl / "folder" / "a" / "b", dl / "folder" / "c", None)
    single, _ = make_torrent(tree(tmp_path, {"one": b"1"}) / "one", ANNOUNCE)
    assert target_paths(dl, single) == (dl / "one",)


def test_target_file_refuses_links_and_clashes(tmp_path: Path) -> None:
    dl = tmp_path / "dl"
    (dl / "t" / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    assert target_file(dl, ("t", "sub", "new", "f")) == dl / "t" / "sub" / "new" / "f"

    (dl / "t" / "hop").symlink_to(outside)
    with pytest.raises(MetainfoError, match=r"refusing to write .*t/hop/f: .*t/hop is a symbolic link"):
        target_file(dl, ("t", "hop", "f"))
    (dl / "t" / "sub" / "f").symlink_to(outside / "victim")  # a dangling link: still a link, never written through
    with pytest.raises(MetainfoError, match="sub/f is a symbolic link"):
        target_file(dl, ("t", "sub", "f"))
    (dl / "t" / "plain").write_bytes(b"")
    with pytest.raises(MetainfoError, match="t/plain is a file, where the torrent has a folder"):
        target_file(dl, ("t", "plain", "f"))
    with pytest.raises(MetainfoError, match="it is a folder, where the torrent has a file"):
        target_file(dl, ("t", "sub"))
    with pytest.raises(MetainfoError, match='must not be ".."'):
        target_file(dl, ("t", "..", "x"))
    with pytest.raises(MetainfoError, match="empty file path"):
        target_file(dl, ())
    # The download folder itself may be a link (the user chose it).
    (tmp_path / "dl-alias").symlink_to(dl)
    assert target_file(tmp_path / "dl-alias", ("t", "sub", "g")) == tmp_path / "dl-alias" / "t" / "sub" / "g"


# ---- the node takes folders in (the transfers themselves: tests/test_folders.py)

def folder_meta(tmp_path: Path) -> tuple[Metainfo, bytes]:
    return make_torrent(tree(tmp_path / "src" / "album", ALBUM), ANNOUNCE, PIECE)


def node(tmp_path: Path) -> Node:
    settings = Config(node_files_dir=str(tmp_path / "nf"), logs_dir=str(tmp_path / "logs"))
    n = Node(settings, 1, MemoryReactorClock(), http=None, log_file=False)
    n.folder.mkdir(parents=True)
    return n


def test_node_send_says_what_it_cannot_find(tmp_path: Path) -> None:
    n = node(tmp_path)
    failed: list[Any] = []
    n.send("nothing-here").addErrback(failed.append)
    assert failed[0].getErrorMessage().startswith("no such file or folder: nothing-here")


def test_storage_and_serving_take_a_folder(tmp_path: Path) -> None:
    meta, data = folder_meta(tmp_path)
    n = node(tmp_path)
    (n.folder / INCOMPLETE).mkdir()
    (n.folder / INCOMPLETE / f"{meta.info_hash_hex}.torrent").write_bytes(data)
    found, skipped = unfinished(n.folder)
    assert [u.meta for u in found] == [meta] and skipped == []
    assert PartFile(n.folder, meta, data).final == n.folder / "album"
    shared = n.seeder.add(meta, tmp_path / "src" / "album")
    content = b"".join(ALBUM["/".join(p)] for p in ALBUM_ORDER)
    assert shared.content.read(0, meta.length) == content
    n.seeder.close()


def test_file_entry_display() -> None:
    assert FileEntry(("a", "b"), 1).display == "a/b"
