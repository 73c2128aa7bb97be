"""Disk full during a download (issue 3, item 13).

A download that runs out of space fails with a clear reason (ENOSPC, and the
path), nothing under the file's real name, nothing unverified believed; the
verified pieces are kept in ``.incomplete/`` so the same download, retried
once there is space again, resumes and ends byte-identical.

The real test mounts a small tmpfs as the downloading node's folder, which
needs root (mount(2)); it fails, saying so, when mounting is impossible.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import subprocess
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import pytest

from daemonkit import node_args, registered, seed_file, start_tracker
from p2ptorrent.metainfo import Metainfo, make_torrent, read_torrent
from p2ptorrent.node.storage import NoSpace, PartFile, read_record, record_path
from p2ptorrent.procs import Daemons, free_port, sha256
from p2ptorrent.procs import wait_for as _wait_for

KIB = 1024
MIB = 1024 * KIB
PIECE = 16 * KIB
wait_for = partial(_wait_for, timeout=30.0, fail=pytest.fail)


# ---- the part file meets a full disk (simulated: no root needed)

def _meta(tmp: Path, size: int = 8 * PIECE + 5) -> tuple[Metainfo, bytes]:
    (tmp / "src").mkdir()
    data = random.Random(2).randbytes(size)
    (tmp / "src" / "f.bin").write_bytes(data)
    return make_torrent(tmp / "src" / "f.bin", "http://tracker.invalid:1", PIECE)[0], data


def _opened(tmp: Path) -> tuple[Metainfo, bytes, Path, PartFile]:
    """The file's metainfo and bytes, and its part file opened in ``tmp/node``."""
    meta, data = _meta(tmp)
    folder = tmp / "node"
    part = PartFile(folder, meta)
    part.open()
    return meta, data, folder, part


def _full_after(limit: int) -> Any:
    """An os.pwrite that writes *limit* bytes in all, short when it reaches it, then raises ENOSPC."""
    real = os.pwrite
    left = [limit]

    def pwrite(fd: int, data: Any, offset: int) -> int:
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real(fd, bytes(data[: left[0]]), offset)
        left[0] -= n
        return n

    return pwrite


def test_no_space_is_a_clear_error_and_the_verified_pieces_stay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta, data, folder, part = _opened(tmp_path)
    part.write_piece(0, data[:PIECE])
    part.write_piece(1, data[PIECE : 2 * PIECE])
    monkeypatch.setattr(os, "pwrite", _full_after(PIECE // 2))  # half of piece 2 fits, then the disk is full
    with pytest.raises(NoSpace) as caught:
        part.write_piece(2, data[2 * PIECE : 3 * PIECE])
    monkeypatch.undo()
    message = str(caught.value)
    assert "No space left on device (ENOSPC)" in message
    assert str(part.path) in message and "kept" in message, message
    # The torn piece is not recorded; the download fails (discard) but keeps what was verified.
    assert read_record(part.record, meta) == [0, 1]
    part.discard()
    assert part.path.exists() and part.record.exists()
    assert not (folder / meta.name).exists()
    again = PartFile(folder, meta)
    assert again.prepare().pieces == 2
    for p in range(2, meta.num_pieces):
        again.write_piece(p, data[p * PIECE : p * PIECE + meta.piece_size(p)])
    assert again.whole_hash_ok()
    assert again.finish().read_bytes() == data


def test_no_space_before_anything_verified_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta, data, folder, part = _opened(tmp_path)
    monkeypatch.setattr(os, "pwrite", _full_after(0))
    with pytest.raises(NoSpace, match="ENOSPC"):
        part.write_piece(3, data[3 * PIECE : 4 * PIECE])
    monkeypatch.undo()
    part.discard()  # nothing worth keeping: the space is given back
    assert not any((folder / ".incomplete").iterdir())


def test_no_space_for_the_record_is_a_clear_error_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta, data, folder, part = _opened(tmp_path)
    part.write_piece(0, data[:PIECE])
    real_write = os.write

    def write(fd: int, chunk: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(NoSpace) as caught:
        part.write_piece(1, data[PIECE : 2 * PIECE])
    monkeypatch.setattr(os, "write", real_write)
    assert str(part.record) in str(caught.value) and "ENOSPC" in str(caught.value)
    part.discard()
    # Piece 1's bytes may be on disk, but it is not in the record: only piece 0 is trusted.
    assert PartFile(folder, meta).prepare().pieces == 1


# ---- for real: a node whose folder is a small tmpfs

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """node_files/2 as a 12 MiB tmpfs; unmounted at teardown."""
    where = tmp_path / "node_files" / "2"
    where.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m,mode=0755", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.fail(
            "this test needs to mount a small tmpfs (run the tests as root, with mount(2) allowed):"
            f" `mount -t tmpfs` exited {mounted.returncode}: {mounted.stderr.strip()}"
        )
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_disk_full_for_real_then_retry_when_space_is_back(tmp_path: Path, small_disk: Path) -> None:
    d = Daemons(tmp_path, fail=pytest.fail, search_path=False, ctl_timeout=120.0)
    port = free_port()
    size = 24 * MIB
    try:
        start_tracker(d, port, timeout=30.0)
        seed_dir, want = seed_file(d, "big.bin", size, seed=13)
        for n in (1, 2):
            d.start(f"node{n}", node_args(d, n, port))
        for n in (1, 2):
            wait_for(lambda n=n: registered(d, n), f"node {n} to register", alive=lambda n=n: d.check_alive(f"node{n}"))
        d.ok(1, "send", "big.bin")
        torrent = seed_dir / "big.bin.torrent"
        meta = read_torrent(torrent)

        # 24 MiB into 12 MiB: a failure that says why and where.
        failed = d.ctl(2, "download", str(torrent), timeout=120)
        assert failed.returncode == 1, failed
        reason = failed.stderr
        assert "No space left on device (ENOSPC)" in reason, reason
        part = small_disk / ".incomplete" / f"{meta.info_hash_hex}.part"
        assert str(part) in reason, reason
        d.check_alive("node2")
        # Nothing under its real name, nothing unverified believed: every recorded piece is right.
        assert not (small_disk / "big.bin").exists()
        record = read_record(record_path(small_disk, meta.info_hash), meta)
        assert record, "the verified pieces were kept for a retry"
        with open(part, "rb") as f:
            for p in record:
                f.seek(p * meta.piece_length)
                assert hashlib.sha1(f.read(meta.piece_size(p))).digest() == meta.piece_hash(p), p
        kept = len(set(record))
        status = json.loads(d.ok(2, "status", "--json"))
        assert status["seeding"] == [] and status["downloading"] == [], status

        # Space is back: the same command resumes and finishes, byte-identical.
        grown = subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], capture_output=True, text=True)
        assert grown.returncode == 0, grown.stderr
        said = d.ok(2, "download", str(torrent), timeout=120)
        assert f"resumed: {kept} of {meta.num_pieces} pieces" in said, said
        assert sha256(small_disk / "big.bin") == want
        assert not any((small_disk / ".incomplete").iterdir())
        log = (tmp_path / "logs" / "node_2.log").read_text()
        assert "ENOSPC" in log and f"resuming big.bin: {kept} of {meta.num_pieces} pieces already verified" in log
        print(f"\ndisk full after {kept} of {meta.num_pieces} pieces; the retry fetched the other {meta.num_pieces - kept}")
    finally:
        d.stop(grace=5)
