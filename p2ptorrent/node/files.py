"""A torrent's content on disk: its one file, or a folder's files, read and written by content offset.

Pieces and blocks are ranges of the content (see p2ptorrent.filemap); this
turns them into ``pread``/``pwrite`` calls on the files that hold them, so
the part file, the record, resuming and serving need no second code path
for folders.

Safety.  Files are opened below a *base* folder one name at a time, each
folder with ``O_DIRECTORY | O_NOFOLLOW`` relative to its parent's
descriptor, and the file with ``O_NOFOLLOW``: a symbolic link planted
anywhere below *base* (by whoever else writes there) makes the open fail
instead of sending our bytes somewhere it chose.  Folders on the way are
created by us when writing.  *base* itself may be a link, as the node's
folder may be; it is opened once, so the files are found in it even after
it was renamed (a finished download's part folder, still being served).

Padding files (BEP 47) are never on disk: they read as zeros, and a write
skips them (their bytes were verified as part of their piece).

Descriptors are opened when first needed and at most ``MAX_OPEN`` are kept
(least recently used closed first): a folder of many thousand files must
not run the process out of descriptors.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

from p2ptorrent.filemap import FileMap
from p2ptorrent.metainfo import Metainfo

#: Descriptors kept open at once per content (reopened on demand past that).
MAX_OPEN = 64


class ContentFiles:
    """The content of one torrent as files below *base*, addressed by content offset.

    *parts* gives each file's path below *base* (folder names, then the file
    name), or None for a padding file; *lengths* their sizes in torrent order.
    """

    def __init__(self, base: Path, parts: Sequence[tuple[str, ...] | None], lengths: Sequence[int],
                 *, writable: bool, follow_leaf: bool = False) -> None:
        self.base = Path(base)
        self.parts = tuple(parts)
        self.map = FileMap(lengths)
        self.writable = writable
        # Only a single shared file the user named may be a link (as `send` always allowed).
        self._leaf_flags = 0 if follow_leaf else os.O_NOFOLLOW
        self._open: OrderedDict[int, int] = OrderedDict()
        # *base*, opened once: files opened later are found in the same folder even after it was renamed
        # (a finished download's part folder, served until the finished folder is shared).
        self._base: int | None = None
        self._lock = threading.Lock()  # the flusher thread takes copies of the descriptors

    @classmethod
    def of(cls, where: Path, meta: Metainfo, *, writable: bool, follow_leaf: bool = False) -> ContentFiles:
        """*meta*'s content at *where*: the file itself, or the folder holding a folder torrent's files."""
        where = Path(where)
        if not meta.is_folder:
            return cls(where.parent, [(where.name,)], [meta.length], writable=writable, follow_leaf=follow_leaf)
        return cls(where, [None if f.padding else f.path for f in meta.files], [f.length for f in meta.files],
                   writable=writable)

    def path(self, file: int) -> Path:
        parts = self.parts[file]
        return self.base.joinpath(*parts) if parts is not None else self.base

    # ---- opening
    def _fd(self, file: int, create: bool = False) -> int:
        with self._lock:  # (the table's order changes here, while the flusher thread may copy it)
            fd = self._open.get(file)
            if fd is not None:
                self._open.move_to_end(file)
                return fd
        parts = self.parts[file]
        assert parts is not None, "a padding file is never opened"
        flags = (os.O_RDWR if self.writable else os.O_RDONLY) | self._leaf_flags
        with self._lock:
            if self._base is None:
                self._base = os.open(self.base, os.O_RDONLY | os.O_DIRECTORY)
            base = self._base
        fd = _open_below(base, parts, flags | (os.O_CREAT | os.O_TRUNC if create else 0), create)
        with self._lock:
            self._open[file] = fd
            while len(self._open) > MAX_OPEN:
                _, old = self._open.popitem(last=False)
                os.close(old)
        return fd

    def create(self) -> None:
        """Every real file created afresh at its length (sparse), folders made on the way; empty files too."""
        self.close()  # descriptors opened before (by present) may be of files, or a folder, since removed
        for i, parts in enumerate(self.parts):
            if parts is not None:
                os.ftruncate(self._fd(i, create=True), self.map.lengths[i])

    def check(self) -> None:
        """Raise OSError unless every real file is there, a regular file of its length (no link followed)."""
        for i, parts in enumerate(self.parts):
            if parts is None:
                continue
            st = os.fstat(self._fd(i))
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(self.path(i)))
            if st.st_size != self.map.lengths[i]:
                raise OSError(errno.EINVAL, f"{st.st_size} bytes where the torrent says {self.map.lengths[i]}",
                              str(self.path(i)))

    def present(self) -> bool:
        """Is every real file there, a regular file of its length (reached without following links)?"""
        try:
            self.check()
        except OSError:
            return False
        return True

    # ---- bytes
    def read(self, offset: int, length: int) -> bytes:
        """Content bytes ``[offset, offset + length)``; shorter if a file is shorter than it should be."""
        if len(self.parts) == 1 and self.parts[0] is not None:  # one file: one pread, as before folders
            return os.pread(self._fd(0), length, offset)
        chunks = []
        for seg in self.map.segments(offset, length):
            if self.parts[seg.file] is None:
                chunks.append(bytes(seg.length))
                continue
            data = os.pread(self._fd(seg.file), seg.length, seg.offset)
            chunks.append(data)
            if len(data) != seg.length:
                break
        return b"".join(chunks)

    def write(self, offset: int, data: bytes) -> None:
        """Write content bytes at *offset*; an OSError names the file in ``filename``."""
        view = memoryview(data)
        at = 0
        for seg in self.map.segments(offset, len(view)):
            part = view[at : at + seg.length]
            at += seg.length
            if self.parts[seg.file] is None:
                continue
            try:
                fd = self._fd(seg.file)
                done = 0
                while done < len(part):  # a short write near a full disk: the next one says why
                    done += os.pwrite(fd, part[done:], seg.offset + done)
            except OSError as e:
                if len(self.parts) > 1:
                    e.filename = str(self.path(seg.file))
                raise

    # ---- durability and closing
    def sync_handles(self) -> list[int]:
        """Copies of the open descriptors, for a flusher thread to fdatasync and close."""
        with self._lock:
            return [os.dup(fd) for fd in self._open.values()]

    def fsync(self) -> None:
        """Every real file's data on disk (files closed since their writes are reopened to sync them)."""
        for i, parts in enumerate(self.parts):
            if parts is not None:
                os.fsync(self._fd(i))

    def close(self) -> None:
        with self._lock:
            fds = list(self._open.values())
            self._open.clear()
            if self._base is not None:
                fds.append(self._base)
                self._base = None
        for fd in fds:
            os.close(fd)


def _open_below(base: int, parts: Sequence[str], flags: int, create: bool) -> int:
    """Open *parts* below folder descriptor *base* with *flags*, never following a link; make folders if *create*."""
    folder = base
    try:
        for name in parts[:-1]:
            if create:
                try:
                    os.mkdir(name, 0o755, dir_fd=folder)
                except FileExistsError:
                    pass
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder)
            if folder != base:
                os.close(folder)
            folder = inner
        return os.open(parts[-1], flags, 0o644, dir_fd=folder)
    finally:
        if folder != base:
            os.close(folder)
