"""Folders as multi-file torrents in the node: stored, resumed, served and moved end to end.

Storage units first (a part folder written piece by piece, resumed, padding
files never on disk, links planted in the part folder not followed), then
hostile targets refused before anything is written, then real nodes in one
reactor over loopback (tests/test_loopback.py): a round trip, two seeders,
and a node stopped half way that resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
from pathlib import Path
from typing import Any

import libtorrent as lt
import pytest
import pytest_twisted
from fastbencode import bencode
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from gates import share_only
from p2ptorrent.config import Config
from p2ptorrent.filemap import FileMap
from p2ptorrent.metainfo import Metainfo, make_torrent, parse, read_torrent
from p2ptorrent.node.service import CommandFailed, Node
from p2ptorrent.node import files
from p2ptorrent.node.files import ContentFiles
from p2ptorrent.node.writer import InlineWriter, WholeHashMismatch
from p2ptorrent.node.storage import INCOMPLETE, PartFile, file_matches, unfinished

KIB = 1024
PIECE = 16 * KIB
ANNOUNCE = "http://localhost:12345"


def rand(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


#: Piece 0 (16 KiB) holds all of a.bin, empty1, sub/b.bin and the start of sub/deeper/c.bin:
#: a piece across three files with an empty one among them.  Then files over many pieces.
TREE = {
    "a.bin": rand(10000, 1),
    "empty1": b"",
    "sub/b.bin": rand(3000, 2),
    "sub/deeper/c.bin": rand(5000, 3),
    "sub/deeper/zero": b"",
    "sub/large.bin": rand(150 * KIB + 7, 4),
    "z/empty": b"",
    "z/last.bin": rand(20000, 5),
}


def tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def contents(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) below *root*, by relative path."""
    return {
        str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(root.rglob("*"))
    }


def as_tree(files: dict[str, bytes]) -> dict[str, bytes | None]:
    found: dict[str, bytes | None] = {}
    for rel, data in files.items():
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            found["/".join(parts[:depth])] = None
        found[rel] = data
    return dict(sorted(found.items()))


def content_of(meta: Metainfo, files: dict[str, bytes]) -> bytes:
    return b"".join(bytes(f.length) if f.padding else files["/".join(f.path)] for f in meta.files)


def piece(meta: Metainfo, content: bytes, p: int) -> bytes:
    return content[p * meta.piece_length : p * meta.piece_length + meta.piece_size(p)]


def album(tmp_path: Path) -> tuple[Metainfo, bytes, bytes]:
    meta, data = make_torrent(tree(tmp_path / "src" / "album", TREE), ANNOUNCE, PIECE)
    return meta, data, content_of(meta, TREE)


# ---- storage

def test_piece_zero_spans_three_files(tmp_path: Path) -> None:
    meta, _, _ = album(tmp_path)
    held = [meta.files[s.file].display for s in FileMap.of(meta).segments(0, PIECE)]
    assert held == ["a.bin", "sub/b.bin", "sub/deeper/c.bin"]


def test_content_files_keep_few_descriptors_and_follow_no_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "MAX_OPEN", 2)
    meta, _, content = album(tmp_path)
    disk = ContentFiles.of(tmp_path / "out", meta, writable=True)
    (tmp_path / "out").mkdir()
    disk.create()
    for at in range(0, meta.length, 7000):  # writes across file boundaries, every file touched
        disk.write(at, content[at : at + 7000])
    assert len(disk._open) <= 2
    assert disk.read(0, meta.length) == content
    os.rename(tmp_path / "out", tmp_path / "renamed")  # as a finished part folder is, while still served
    assert disk.read(0, meta.length) == content
    os.rename(tmp_path / "renamed", tmp_path / "out")
    disk.close()
    assert contents(tmp_path / "out") == as_tree(TREE)
    reader = ContentFiles.of(tmp_path / "out", meta, writable=False)
    os.unlink(tmp_path / "out" / "z" / "last.bin")
    (tmp_path / "out" / "z" / "last.bin").symlink_to(tmp_path / "src" / "album" / "z" / "last.bin")
    with pytest.raises(OSError):
        reader.check()
    assert not reader.present()
    reader.close()


def test_a_folder_written_piece_by_piece_lands_whole_under_its_name(tmp_path: Path) -> None:
    meta, data, content = album(tmp_path)
    folder = tmp_path / "nf"
    folder.mkdir()
    part = PartFile(folder, meta, data)
    part.open()
    assert part.path.is_dir() and not (folder / "album").exists()
    # Empty files exist from the start; the others at their length (sparse).
    assert (part.path / "sub" / "deeper" / "zero").read_bytes() == b""
    assert (part.path / "sub" / "large.bin").stat().st_size == len(TREE["sub/large.bin"])
    for p in reversed(range(meta.num_pieces)):  # out of order: the whole hash catches up at the end
        part.write_piece(p, piece(meta, content, p))
    assert part.whole_hash_ok()
    assert part.finish() == folder / "album"
    assert contents(folder / "album") == as_tree(TREE)
    assert not any((folder / INCOMPLETE).iterdir())
    assert file_matches(folder / "album", meta)
    (folder / "album" / "z" / "last.bin").write_bytes(b"x" * len(TREE["z/last.bin"]))
    assert not file_matches(folder / "album", meta)


def test_a_wrong_whole_folder_hash_fails_and_nothing_is_renamed(tmp_path: Path) -> None:
    meta, data, content = album(tmp_path)
    meta = dataclasses.replace(meta, sha256=bytes(32))  # every piece right, the whole content's hash not
    folder = tmp_path / "nf"
    folder.mkdir()
    part = PartFile(folder, meta, data)
    part.open()
    writer = InlineWriter(part, lambda e: None)
    for p in range(meta.num_pieces):
        writer.submit(p, piece(meta, content, p), meta.piece_hash(p), lambda p, ok: None)
    failed: list[Failure] = []
    writer.finish().addErrback(failed.append)
    assert failed[0].check(WholeHashMismatch)
    assert failed[0].getErrorMessage() == (
        "album: every piece verified but the whole-folder SHA-256 does not match the torrent"
    )
    assert not (folder / "album").exists()


def test_a_folder_name_taken_by_another_folder_gets_a_free_name(tmp_path: Path) -> None:
    meta, data, content = album(tmp_path)
    folder = tmp_path / "nf"
    tree(folder / "album", {"mine.txt": b"the user's own"})
    part = PartFile(folder, meta, data)
    part.open()
    for p in range(meta.num_pieces):
        part.write_piece(p, piece(meta, content, p))
    assert part.finish() == folder / "album (2)"
    assert contents(folder / "album") == {"mine.txt": b"the user's own"}
    assert contents(folder / "album (2)") == as_tree(TREE)


def test_a_folder_part_is_resumed_and_a_damaged_piece_fetched_again(tmp_path: Path) -> None:
    meta, data, content = album(tmp_path)
    folder = tmp_path / "nf"
    folder.mkdir()
    part = PartFile(folder, meta, data)
    part.open()
    for p in range(0, meta.num_pieces, 2):
        part.write_piece(p, piece(meta, content, p))
    part.close()
    # Piece 0's last bytes are in sub/deeper/c.bin: damage them there.
    with open(part.path / "sub" / "deeper" / "c.bin", "r+b") as f:
        f.write(b"\xff")
    again = PartFile(folder, meta, data)
    report = again.prepare()
    assert report.found and report.rejected == 1
    assert again.verified() == set(range(2, meta.num_pieces, 2))
    for p in set(range(meta.num_pieces)) - again.verified():
        again.write_piece(p, piece(meta, content, p))
    assert again.whole_hash_ok()
    assert contents(again.finish()) == as_tree(TREE)
    assert [u.meta for u in unfinished(folder)[0]] == []


def test_a_link_planted_in_the_part_folder_is_never_followed(tmp_path: Path) -> None:
    meta, data, content = album(tmp_path)
    folder = tmp_path / "nf"
    folder.mkdir()
    part = PartFile(folder, meta, data)
    part.open()
    part.write_piece(0, piece(meta, content, 0))
    part.close()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "large.bin").write_bytes(b"precious")
    os.rename(part.path / "sub", tmp_path / "moved-away")
    (part.path / "sub").symlink_to(outside)
    again = PartFile(folder, meta, data)
    report = again.prepare()  # the part is not what we wrote: started afresh, the link removed, not followed
    assert report.found is False and again.verified() == set()
    assert not (again.path / "sub").is_symlink()
    for p in range(meta.num_pieces):
        again.write_piece(p, piece(meta, content, p))
    assert contents(again.finish()) == as_tree(TREE)
    assert contents(outside) == {"large.bin": b"precious"}


def test_padding_files_are_zeros_in_the_pieces_and_never_on_disk(tmp_path: Path) -> None:
    root = tree(tmp_path / "src" / "album", TREE)
    ct = lt.create_torrent(lt.list_files(str(root)), PIECE)  # hybrid: padding files align each file
    ct.add_tracker(ANNOUNCE)
    lt.set_piece_hashes(ct, str(root.parent))
    data = lt.bencode(ct.generate())
    meta = parse(data)
    assert any(f.padding for f in meta.files)
    content = content_of(meta, TREE)
    folder = tmp_path / "nf"
    folder.mkdir()
    part = PartFile(folder, meta, data)
    part.open()
    for p in range(meta.num_pieces):
        part.write_piece(p, piece(meta, content, p))
    assert part.whole_hash_ok()
    assert contents(part.finish()) == as_tree(TREE)
    assert file_matches(folder / "album", meta)


# ---- hostile targets: refused before anything is written

def offline_node(tmp_path: Path) -> Node:
    settings = Config(node_files_dir=str(tmp_path / "nf"), logs_dir=str(tmp_path / "logs"))
    n = Node(settings, 2, MemoryReactorClock(), http=None, log_file=False)
    n.folder.mkdir(parents=True)
    return n


def snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def refused(n: Node, torrent: Path) -> str:
    failed: list[Failure] = []
    n.download(str(torrent), lambda report: None).addErrback(failed.append)
    assert len(failed) == 1 and failed[0].check(CommandFailed), failed
    assert not n.jobs
    return failed[0].getErrorMessage()


def test_a_link_planted_at_a_folder_of_the_target_is_refused(tmp_path: Path) -> None:
    _, data, _ = album(tmp_path)
    torrent = tmp_path / "album.torrent"
    torrent.write_bytes(data)
    n = offline_node(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (n.folder / "album").mkdir()
    (n.folder / "album" / "sub").symlink_to(outside)
    before = snapshot(tmp_path)
    assert refused(n, torrent) == (
        f"refusing to write {n.folder / 'album' / 'sub' / 'b.bin'}: {n.folder / 'album' / 'sub'} is a symbolic link"
    )
    assert snapshot(tmp_path) == before and not (n.folder / INCOMPLETE).exists()


def test_a_file_where_the_torrent_has_a_folder_is_refused(tmp_path: Path) -> None:
    _, data, _ = album(tmp_path)
    torrent = tmp_path / "album.torrent"
    torrent.write_bytes(data)
    n = offline_node(tmp_path)
    tree(n.folder / "album", {"sub": b"a file"})
    before = snapshot(tmp_path)
    assert refused(n, torrent) == (
        f"cannot write {n.folder / 'album' / 'sub' / 'b.bin'}: {n.folder / 'album' / 'sub'} is a file,"
        " where the torrent has a folder"
    )
    assert snapshot(tmp_path) == before


def test_a_foreign_torrent_climbing_out_is_refused(tmp_path: Path) -> None:
    info = {b"name": b"album", b"piece length": PIECE, b"pieces": b"\x01" * 20,
            b"files": [{b"length": 5, b"path": [b"..", b"evil"]}]}
    torrent = tmp_path / "evil.torrent"
    torrent.write_bytes(bencode({b"announce": ANNOUNCE.encode(), b"info": info}))
    n = offline_node(tmp_path)
    before = snapshot(tmp_path)
    assert 'a file name must not be ".."' in refused(n, torrent)
    assert snapshot(tmp_path) == before


def test_the_node_folder_itself_is_not_shared(tmp_path: Path) -> None:
    n = offline_node(tmp_path)
    failed: list[Failure] = []
    for name in (str(n.folder), str(n.folder.parent)):
        n.send(name).addErrback(failed.append)
    assert [f.getErrorMessage() for f in failed] == [
        f"refusing to share {n.folder}: it holds this node's own folder {n.folder}",
        f"refusing to share {n.folder.parent}: it holds this node's own folder {n.folder}",
    ]


# ---- real nodes over loopback

@pytest_twisted.ensureDeferred
async def test_a_folder_round_trip_between_two_nodes(tmp_path: Path) -> None:
    from test_loopback import Cluster, _registered

    cluster = Cluster(tmp_path, ["--set", f"PIECE_LENGTH={PIECE}"])
    try:
        await cluster.start_tracker()
        tree(tmp_path / "nf" / "1" / "album", TREE)
        seeder = cluster.node(1)
        await _registered(seeder)
        sent = await seeder.send("album")
        assert sent.startswith(f"seeding album (folder of 8 files, {len(b''.join(TREE.values()))} bytes,"), sent
        torrent = tmp_path / "nf" / "1" / "album.torrent"
        meta = read_torrent(torrent)
        assert meta.is_folder and meta.piece_length == PIECE
        [shared] = seeder.status()["seeding"]
        assert (shared["name"], shared["files"]) == ("album", 8)

        downloader = cluster.node(2)
        await _registered(downloader)
        message = await downloader.download(str(torrent), lambda p: None)
        out = tmp_path / "nf" / "2" / "album"
        assert message.startswith("downloaded album (folder of 8 files, "), message
        assert f"to {out};" in message and "and the whole folder (SHA-256) verified" in message
        assert contents(out) == as_tree(TREE)
        assert not any((tmp_path / "nf" / "2" / INCOMPLETE).iterdir())
        assert [(f["name"], f["files"]) for f in downloader.status()["seeding"]] == [("album", 8)]
        again = await downloader.download(str(torrent), lambda p: None)
        assert again.startswith("already complete: seeding album"), again
    finally:
        await cluster.stop()


@pytest_twisted.ensureDeferred
async def test_two_seeders_of_a_folder(tmp_path: Path) -> None:
    from test_loopback import Cluster, _registered

    cluster = Cluster(tmp_path, ["--set", f"PIECE_LENGTH={PIECE}"])
    big = {**TREE, "sub/large.bin": rand(3 * 1024 * KIB + 5, 6)}
    try:
        await cluster.start_tracker()
        for i in (1, 3):
            tree(tmp_path / "nf" / str(i) / "album", big)
            node = cluster.node(i)
            await _registered(node)
            await node.send("album")
        torrent = tmp_path / "nf" / "1" / "album.torrent"
        assert read_torrent(torrent).info_hash == read_torrent(tmp_path / "nf" / "3" / "album.torrent").info_hash
        downloader = cluster.node(2)
        await _registered(downloader)
        message = await downloader.download(str(torrent), lambda p: None)
        assert "node 1:" in message and "node 3:" in message, message
        assert contents(tmp_path / "nf" / "2" / "album") == as_tree(big)
    finally:
        await cluster.stop()


@pytest_twisted.ensureDeferred
async def test_a_folder_download_stopped_half_way_resumes(tmp_path: Path) -> None:
    from test_loopback import Cluster, _registered, _until

    cluster = Cluster(tmp_path, ["--set", f"PIECE_LENGTH={PIECE}"])
    try:
        await cluster.start_tracker()
        tree(tmp_path / "nf" / "1" / "album", TREE)
        seeder = cluster.node(1)
        await _registered(seeder)
        await seeder.send("album")
        torrent = tmp_path / "nf" / "1" / "album.torrent"
        meta = read_torrent(torrent)
        # The seeder serves the first half of the pieces only, until the test lets it share the rest.
        half = meta.num_pieces // 2
        share_everything = share_only(seeder.seeder, meta.info_hash, half)
        node = cluster.node(2)
        await _registered(node)
        halfway: defer.Deferred[None] = defer.Deferred()

        def watch(p: dict[str, Any]) -> None:
            if p.get("done", 0) >= half * PIECE and not halfway.called:
                halfway.callback(None)

        ended: list[Any] = []
        node.download(str(torrent), watch).addBoth(ended.append)
        await halfway
        [entry] = node.status()["downloading"]
        assert (entry["name"], entry["files"]) == ("album", 8)
        await defer.maybeDeferred(node.stopService)
        [failed] = ended
        assert isinstance(failed, Failure) and "stopping" in failed.getErrorMessage()
        folder = tmp_path / "nf" / "2"
        assert not (folder / "album").exists()
        [part] = (folder / INCOMPLETE).glob("*.part")
        assert part.is_dir()

        again = cluster.node(2)
        await _until(lambda: bool(again.jobs), "node 2 resuming the folder by itself")
        [job] = again.jobs.values()
        await _until(lambda: job.state == "downloading", "the resumed download under way")
        assert job.part.resumed.pieces >= half
        joined = again.download(str(torrent), lambda p: None)
        share_everything()
        message = await joined
        assert "resumed:" in message and "already verified on disk" in message, message
        assert contents(folder / "album") == as_tree(TREE)
        assert not any((folder / INCOMPLETE).iterdir())
    finally:
        await cluster.stop()


def test_whole_content_hash(tmp_path: Path) -> None:
    meta, _, content = album(tmp_path)
    assert meta.sha256 == hashlib.sha256(content).digest()


@pytest_twisted.ensureDeferred
async def test_a_folder_finished_as_the_node_died_is_shared_not_fetched(tmp_path: Path) -> None:
    """Killed after the part folder was renamed but before .incomplete/ was cleared: nothing is fetched."""
    from test_loopback import Cluster, _registered, _until

    cluster = Cluster(tmp_path)
    try:
        await cluster.start_tracker()
        meta, data, content = album(tmp_path)
        folder = tmp_path / "nf" / "5"
        folder.mkdir(parents=True)
        part = PartFile(folder, meta, data)
        part.open()
        for p in range(meta.num_pieces):
            part.write_piece(p, piece(meta, content, p))
        part.close()
        os.rename(part.path, folder / "album")
        node = cluster.node(5)
        await _registered(node)
        await _until(lambda: not node.jobs and bool(node.status()["seeding"]), "node 5 sharing the finished folder")
        assert [(f["name"], f["files"]) for f in node.status()["seeding"]] == [("album", 8)]
        assert not any((folder / INCOMPLETE).iterdir())
        assert contents(folder / "album") == as_tree(TREE)
        assert (folder / "album.torrent").read_bytes() == data
    finally:
        await cluster.stop()
