"""Where a download's bytes go: a part file written piece by piece, finished by rename.

Only verified pieces are ever written, at their offsets, with ``os.pwrite``,
into ``<node folder>/.incomplete/<info hash>.part``; nothing holds the whole
file in memory.  The SHA-256 of the whole file is computed as the verified
prefix grows (pieces that arrived early are read back once the prefix reaches
them), so the final check costs no second pass.  Only a file whose every
piece and whole hash checked is renamed to its real name in the node folder.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from p2ptorrent.metainfo import Metainfo, target_path

INCOMPLETE = ".incomplete"


class StorageError(Exception):
    """The disk refused: the message says what and where."""


class PartFile:
    def __init__(self, folder: Path, meta: Metainfo) -> None:
        self.meta = meta
        self.final = target_path(folder, meta.name)
        self.path = folder / INCOMPLETE / f"{meta.info_hash.hex()}.part"
        self._fd: int | None = None
        self._sha256 = hashlib.sha256()
        self._prefix = 0  # pieces fed to the whole-file hash so far
        self._have = bytearray(meta.num_pieces)

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            os.ftruncate(self._fd, self.meta.length)
        except OSError as e:
            raise StorageError(f"cannot create {self.path}: {e.strerror}") from None

    def verified(self) -> set[int]:
        """Pieces already verified on disk (none for a fresh part file)."""
        return {p for p, ok in enumerate(self._have) if ok}

    def write_piece(self, piece: int, data: bytes) -> None:
        """Write one verified piece and advance the whole-file hash."""
        assert self._fd is not None
        offset = piece * self.meta.piece_length
        try:
            written = os.pwrite(self._fd, data, offset)
            if written != len(data):
                raise OSError(28, "short write")
        except OSError as e:
            raise StorageError(f"cannot write {self.path} at offset {offset}: {e.strerror}") from None
        self._have[piece] = 1
        if piece == self._prefix:
            self._sha256.update(data)
            self._prefix += 1
            while self._prefix < len(self._have) and self._have[self._prefix]:
                size = self.meta.piece_size(self._prefix)
                self._sha256.update(os.pread(self._fd, size, self._prefix * self.meta.piece_length))
                self._prefix += 1

    def whole_hash_ok(self) -> bool:
        if self._prefix != len(self._have):
            return False
        return self.meta.sha256 is None or self._sha256.digest() == self.meta.sha256

    def finish(self) -> Path:
        """Make the verified file durable and give it its real name."""
        assert self._fd is not None
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            os.replace(self.path, self.final)
        except OSError as e:
            raise StorageError(f"cannot move {self.path} to {self.final}: {e.strerror}") from None
        return self.final

    def close(self) -> None:
        """Close but keep the part file (the node is stopping mid-download)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        """Close and remove the part file (a failed download leaves nothing that looks complete)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def file_matches(path: Path, meta: Metainfo) -> bool:
    """Is *path* already the complete, correct file?  (Blocking: run it in a thread.)"""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size != meta.length:
            return False
        whole = hashlib.sha256()
        with open(path, "rb") as f:
            for piece in range(meta.num_pieces):
                data = f.read(meta.piece_size(piece))
                if hashlib.sha1(data).digest() != meta.piece_hash(piece):
                    return False
                whole.update(data)
        return meta.sha256 is None or whole.digest() == meta.sha256
    except OSError:
        return False
