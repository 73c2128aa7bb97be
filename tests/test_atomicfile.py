"""atomic_write: the one way a file is replaced whole, and what it promises."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from p2ptorrent.atomicfile import atomic_write, stale_temporaries


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("fsync", [True, False])
def test_replaces_the_file_whole(tmp_path: Path, fsync: bool) -> None:
    path = tmp_path / "f"
    atomic_write(path, b"x" * 100_000, fsync=fsync)
    assert path.read_bytes() == b"x" * 100_000
    with open(path, "rb") as before:  # a reader that opened the old file
        atomic_write(path, b"short", fsync=fsync)
        assert before.read() == b"x" * 100_000  # still sees the old file, whole
    assert path.read_bytes() == b"short"  # no tail of the longer old file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_accepts_a_str_path_and_empty_data(tmp_path: Path) -> None:
    atomic_write(str(tmp_path / "f"), b"")
    assert (tmp_path / "f").read_bytes() == b""


@pytest.mark.parametrize("fsync", [True, False])
def test_never_writes_through_a_symlink_at_the_temporary_name(tmp_path: Path, fsync: bool) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"not yours")
    path = tmp_path / "f"
    _temp_name(path).symlink_to(victim)
    atomic_write(path, b"data", fsync=fsync)
    assert victim.read_bytes() == b"not yours"
    assert path.read_bytes() == b"data" and not path.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "victim"]


def test_a_dangling_symlink_at_the_temporary_name_creates_nothing_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "f"
    _temp_name(path).symlink_to(tmp_path / "elsewhere")
    atomic_write(path, b"data")
    assert not (tmp_path / "elsewhere").exists()
    assert path.read_bytes() == b"data"


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o640])
def test_mode_is_honoured(tmp_path: Path, umask_022: None, mode: int) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")
    path.chmod(0o666)
    atomic_write(path, b"new", mode=mode)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_mode_is_honoured_over_a_stale_temporary_file(tmp_path: Path, umask_022: None) -> None:
    # A crash of an earlier process with our pid left its temporary file, readable by all.
    path = tmp_path / "token"
    stale = _temp_name(path)
    stale.write_bytes(b"stale")
    stale.chmod(0o666)
    atomic_write(path, b"secret", mode=0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == b"secret"
    assert not stale.exists()


def test_the_umask_still_applies(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "f", b"x", mode=0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o600


def _fails_with_nothing_left(tmp_path: Path, path: Path, monkeypatch: pytest.MonkeyPatch, name: str, error: int) -> None:
    path.write_bytes(b"old")

    def broken(*args: Any) -> Any:
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, name, broken)
    with pytest.raises(OSError) as caught:
        atomic_write(path, b"new" * 1000)
    monkeypatch.undo()
    assert caught.value.errno == error
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_full_disk_while_writing_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fails_with_nothing_left(tmp_path, tmp_path / "f", monkeypatch, "write", errno.ENOSPC)


def test_a_failed_fsync_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fails_with_nothing_left(tmp_path, tmp_path / "f", monkeypatch, "fsync", errno.EIO)


def test_a_failed_rename_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fails_with_nothing_left(tmp_path, tmp_path / "f", monkeypatch, "replace", errno.EXDEV)


def test_a_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "nowhere" / "f", b"x")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (root only): a real full disk and a real read-only folder."""
    where = tmp_path / "mnt"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def test_a_read_only_folder_refuses_and_keeps_the_file(small_tmpfs: Path) -> None:
    path = small_tmpfs / "f"
    atomic_write(path, b"old")
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True, capture_output=True, timeout=30)
    with pytest.raises(OSError) as caught:
        atomic_write(path, b"new")
    assert caught.value.errno == errno.EROFS
    assert path.read_bytes() == b"old"
    assert [p.name for p in small_tmpfs.iterdir()] == ["f"]


def test_a_really_full_disk_keeps_the_old_file_and_frees_the_temporary(small_tmpfs: Path) -> None:
    path = small_tmpfs / "f"
    atomic_write(path, b"old")
    with pytest.raises(OSError) as caught:
        atomic_write(path, b"x" * (1024 * 1024))
    assert caught.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old"
    assert [p.name for p in small_tmpfs.iterdir()] == ["f"]
    atomic_write(path, b"new")  # the space the temporary file took is free again
    assert path.read_bytes() == b"new"


def test_fsync_syncs_the_file_then_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[bool] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    atomic_write(tmp_path / "f", b"x", fsync=True)
    assert synced == [False, True]
    synced.clear()
    atomic_write(tmp_path / "f", b"y", fsync=False)
    assert synced == []


def test_a_folder_that_cannot_be_synced_does_not_fail_a_write_that_happened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def folder_refuses(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", folder_refuses)
    atomic_write(tmp_path / "f", b"x")
    assert (tmp_path / "f").read_bytes() == b"x"


def test_stale_temporaries_names_only_those_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nodes.json"
    for name in (".nodes.json.123.tmp", ".nodes.json.9.tmp", ".files.json.123.tmp", "nodes.json.tmp", "nodes.json"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in stale_temporaries(path)] == [".nodes.json.123.tmp", ".nodes.json.9.tmp"]
    # Glob characters in a name are taken literally.
    (tmp_path / ".[odd]name.5.tmp").write_bytes(b"")
    (tmp_path / ".oname.5.tmp").write_bytes(b"")
    assert [p.name for p in stale_temporaries(tmp_path / "[odd]name")] == [".[odd]name.5.tmp"]
    assert stale_temporaries(tmp_path / "missing" / "f") == []
