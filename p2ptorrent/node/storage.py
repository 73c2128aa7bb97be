"""Where a download's bytes go: a part file written piece by piece, finished by rename.

Only verified pieces are ever written, at their offsets, with ``os.pwrite``,
into ``<node folder>/.incomplete/<info hash>.part``; nothing holds the whole
file in memory.  The SHA-256 of the whole file is computed as the verified
prefix grows (pieces that arrived early are read back once the prefix reaches
them), so the final check costs no second pass.  Only a file whose every
piece and whole hash checked is renamed to its real name in the node folder.

Resuming.  Next to the part file live two more files:

* ``<info hash>.have``, the record: a header naming the file (info hash,
  length, piece length), then one 4-byte piece index per verified piece,
  appended *after* that piece's bytes were written.  The record is a list of
  candidates, never trusted as is: when a download starts over a part file
  and record of the same file, every recorded piece is read back and checked
  against its SHA-1, and only those that match count as verified.  A torn
  write (the record reached the disk, the data did not), a torn record entry,
  garbage or a record of another file can therefore never make us believe
  bytes we do not have.  That is also why nothing is fsynced per piece: a
  crash can only lose verified pieces, never invent them.
* ``<info hash>.torrent``, a copy of the torrent, so a restarted node knows
  what it was downloading (see :func:`unfinished`).

Durability.  Every SYNC_EVERY bytes written, a background thread calls
``fdatasync`` on the part file, so the disk takes the data while the download
runs; the ``fsync`` before the rename then finds little left (0.05 s after
512 MiB on this machine, against 0.7 s for 256 MiB before).

Re-verifying reads every recorded piece once (SHA-1, plus SHA-256 over the
verified prefix: about 2 s per GB, measured), so :meth:`PartFile.prepare` is
blocking and the node runs it in a thread before the download starts;
:meth:`PartFile.open` calls it in place if nobody did (tests, small files).

Failures.  A download that fails for any reason (owners gone, a refusal, a
full disk: ENOSPC and EDQUOT say so) only closes its part file: the verified
pieces and their record stay, and the next ``download`` of the same torrent
resumes from them.  Only :meth:`PartFile.discard` deletes them.

Names.  A finished file takes the torrent's name in the node folder, or the
first free ``name (N).ext`` if that name holds another file: a download never
replaces a file it did not write.
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from p2ptorrent.atomicfile import atomic_write, stale_temporaries
from p2ptorrent.metainfo import MAX_TORRENT_SIZE, Metainfo, MetainfoError, parse, target_path

INCOMPLETE = ".incomplete"

#: The record starts with this, then the info hash (20 bytes), length (u64), piece length (u32).
RECORD_MAGIC = b"P2PHAVE1"
_HEADER = struct.Struct(">8s20sQI")
RECORD_HEADER_SIZE = _HEADER.size
_ENTRY = struct.Struct(">I")
RECORD_ENTRY_SIZE = _ENTRY.size

#: Bytes written between background fdatasync calls: the disk takes the data
#: while the download runs, so the fsync before the rename finds little left.
SYNC_EVERY = 32 * 1024 * 1024

#: The record and the torrent copy are replaced whole but not fsynced (see
#: p2ptorrent.atomicfile): neither is trusted when read back (recorded pieces
#: are re-verified, the copy is parsed and must match its name), and the part
#: file they describe is not fsynced per piece either.  After a power cut, a
#: lost or empty record means starting that file afresh, a lost copy that the
#: node resumes it only when asked to download it again; an fsync of each
#: would only slow the start of every download.
SYNC_SIDE_FILES = False

#: errno values that mean "the disk (or the user's quota) is full".
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


class StorageError(Exception):
    """The disk refused: the message says what and where."""


class NoSpace(StorageError):
    """The disk is full (ENOSPC or EDQUOT)."""


class Interrupted(StorageError):
    """:meth:`PartFile.abort` was called while :meth:`PartFile.prepare` ran."""


@dataclass(frozen=True)
class ResumeReport:
    """What :meth:`PartFile.prepare` found from an earlier run."""

    #: Pieces recorded and re-verified from the part file: they will not be fetched again.
    pieces: int
    #: Bytes in those pieces.
    bytes: int
    #: Pieces the record named whose bytes did not match their SHA-1 (fetched again).
    rejected: int
    #: True when a part file and record of this file were found (even if nothing in them was trusted).
    found: bool


def _why(e: OSError) -> str:
    """``No space left on device (ENOSPC)``: the text and the symbol, so people and scripts both see it."""
    symbol = errno.errorcode.get(e.errno or 0)
    text = e.strerror or str(e)
    return f"{text} ({symbol})" if symbol else text


def single_file(meta: Metainfo, doing: str = "downloads") -> Metainfo:
    """*meta*, if this node can store and serve it; a folder torrent raises MetainfoError saying why.

    Folders (multi-file torrents) are parsed (p2ptorrent.metainfo) and mapped to
    their files (p2ptorrent.filemap), but the part file, the record, resuming
    and serving here all assume one file: until they are wired to a file map,
    every place a node takes a torrent in refuses a folder, before it writes anything.
    """
    if meta.is_folder:
        count = sum(not f.padding for f in meta.files)  # padding files are never on disk: not the user's files
        raise MetainfoError(
            f"{meta.name} is a folder (multi-file torrent, {count} files): this version {doing} single files only"
        )
    return meta


def record_path(folder: Path, info_hash: bytes) -> Path:
    """The record of verified pieces for *info_hash* in node folder *folder*."""
    return Path(folder) / INCOMPLETE / f"{info_hash.hex()}.have"


def read_record(path: Path, meta: Metainfo) -> list[int] | None:
    """The piece indexes a record names, in order, or None if it is not a record of *meta*.

    A trailing partial entry (a write torn by a crash) is ignored, and so are
    indexes out of range.  Whatever it returns still has to be re-verified.
    """
    try:
        with open(path, "rb") as f:
            # A record names each piece about once; more than a few times over is garbage.
            raw = f.read(RECORD_HEADER_SIZE + RECORD_ENTRY_SIZE * (4 * meta.num_pieces + 16))
    except OSError:
        return None
    if len(raw) < RECORD_HEADER_SIZE:
        return None
    magic, info_hash, length, piece_length = _HEADER.unpack_from(raw)
    if (magic, info_hash, length, piece_length) != (RECORD_MAGIC, meta.info_hash, meta.length, meta.piece_length):
        return None
    body = raw[RECORD_HEADER_SIZE:]
    whole = len(body) - len(body) % RECORD_ENTRY_SIZE
    pieces = [p for (p,) in _ENTRY.iter_unpack(body[:whole]) if p < meta.num_pieces]
    return pieces


class PartFile:
    def __init__(self, folder: Path, meta: Metainfo, torrent: bytes | None = None) -> None:
        self.meta = single_file(meta)
        self.final = target_path(folder, meta.name)
        incomplete = Path(folder) / INCOMPLETE
        self.path = incomplete / f"{meta.info_hash.hex()}.part"
        self.record = record_path(folder, meta.info_hash)
        self.torrent_copy = incomplete / f"{meta.info_hash.hex()}.torrent"
        self.torrent = torrent
        self.resumed = ResumeReport(0, 0, 0, False)
        self._fd: int | None = None
        self._record_fd: int | None = None
        self._sha256 = hashlib.sha256()
        self._prefix = 0  # pieces fed to the whole-file hash so far
        self._have = bytearray(meta.num_pieces)
        self._prepared = False
        self._aborted = False
        self._keep = False  # discard() keeps the verified pieces (the disk was full)
        self._unchecked = False  # a record from before is found but not yet re-verified
        self._unsynced = 0
        self._flusher: _Flusher | None = None
        #: How long the fsync before the rename took (seconds), for the log.
        self.sync_seconds = 0.0

    # ---- opening
    def prepare(self) -> ResumeReport:
        """Open the part file, resuming from an earlier run when there is one.  Blocking.

        Resumes when a part file of the right length and a record of the same
        info hash and length exist: every recorded piece is read back and
        checked, the whole-file hash advances over the verified prefix, and
        the record is rewritten with only the pieces that matched.  Otherwise
        starts afresh (the part file is truncated).  Idempotent.
        """
        if self._prepared:
            return self.resumed
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._error(e, f"cannot create {self.path.parent}") from None
        for leftover in stale_temporaries(self.record) + stale_temporaries(self.torrent_copy):
            try:
                leftover.unlink()  # of a node that died while rewriting them; harmless if it stays
            except OSError:
                pass
        entries = self._candidates()
        self._unchecked = entries is not None
        self._save_torrent()
        try:
            if entries is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
                os.ftruncate(self._fd, self.meta.length)
            else:
                self._fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError as e:
            self._close_fds()
            raise self._error(e, f"cannot create {self.path}") from None
        rejected = 0
        if entries is not None:
            try:
                rejected = self._reverify(sorted(set(entries)))
            except Interrupted:
                self._close_fds()
                raise
            except OSError as e:
                self._close_fds()
                raise self._error(e, f"cannot read {self.path}") from None
            self._unchecked = False
        try:
            self._write_record()
        except OSError as e:
            self._close_fds()
            raise self._error(e, f"cannot write {self.record}") from None
        pieces = [p for p, ok in enumerate(self._have) if ok]
        self.resumed = ResumeReport(
            len(pieces), sum(self.meta.piece_size(p) for p in pieces), rejected, entries is not None,
        )
        self._prepared = True
        return self.resumed

    def open(self) -> None:
        """Ready for writing: :meth:`prepare` in place unless it already ran."""
        self.prepare()

    def abort(self) -> None:
        """Make a :meth:`prepare` running in another thread stop soon with :class:`Interrupted`."""
        self._aborted = True

    def _candidates(self) -> list[int] | None:
        """The recorded pieces if a part file and record of this very file exist, else None."""
        try:
            st = os.lstat(self.path)
        except OSError:
            return None
        if not (st.st_mode & 0o170000 == 0o100000 and st.st_size == self.meta.length):
            return None
        return read_record(self.record, self.meta)

    def _reverify(self, candidates: list[int]) -> int:
        """Trust each candidate piece whose bytes on disk match its SHA-1; feed the verified prefix to SHA-256."""
        assert self._fd is not None
        rejected = 0
        for piece in candidates:
            if self._aborted:
                raise Interrupted(f"checking {self.path} was interrupted")
            size = self.meta.piece_size(piece)
            data = os.pread(self._fd, size, piece * self.meta.piece_length)
            if len(data) != size or hashlib.sha1(data).digest() != self.meta.piece_hash(piece):
                rejected += 1
                continue
            self._have[piece] = 1
            if piece == self._prefix:
                self._sha256.update(data)
                self._prefix += 1
        return rejected

    def _write_record(self) -> None:
        """A fresh record naming the trusted pieces (so garbage or a torn tail is gone), open for appending."""
        body = _HEADER.pack(RECORD_MAGIC, self.meta.info_hash, self.meta.length, self.meta.piece_length)
        body += b"".join(_ENTRY.pack(p) for p, ok in enumerate(self._have) if ok)
        atomic_write(self.record, body, fsync=SYNC_SIDE_FILES)
        self._record_fd = os.open(self.record, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)

    def _save_torrent(self) -> None:
        if self.torrent is None:
            return
        try:
            if self.torrent_copy.read_bytes() == self.torrent:
                return
        except OSError:
            pass
        try:
            atomic_write(self.torrent_copy, self.torrent, fsync=SYNC_SIDE_FILES)
        except OSError as e:
            raise self._error(e, f"cannot write {self.torrent_copy}") from None

    # ---- writing
    @property
    def have_map(self) -> bytearray:
        """One byte per piece, set once the piece is written and recorded (shared with the seeder)."""
        return self._have

    def verified(self) -> set[int]:
        """Pieces verified on disk: resumed ones (re-checked by prepare) and those written since."""
        return {p for p, ok in enumerate(self._have) if ok}

    def write_piece(self, piece: int, data: bytes) -> None:
        """Write one verified piece, then record it, and advance the whole-file hash."""
        assert self._fd is not None and self._record_fd is not None
        offset = piece * self.meta.piece_length
        try:
            view = memoryview(data)
            done = 0
            while done < len(view):  # a short write near a full disk: the next one says why
                done += os.pwrite(self._fd, view[done:], offset + done)
        except OSError as e:
            raise self._error(e, f"cannot write {self.path} at offset {offset}") from None
        try:
            # Only now: a piece is recorded after its bytes are written, never before.
            if os.write(self._record_fd, _ENTRY.pack(piece)) != RECORD_ENTRY_SIZE:
                raise OSError(errno.EIO, "short write to the record")
        except OSError as e:
            raise self._error(e, f"cannot write {self.record}") from None
        self._have[piece] = 1
        self._unsynced += len(data)
        if self._unsynced >= SYNC_EVERY:
            self._unsynced = 0
            if self._flusher is None:
                self._flusher = _Flusher(self._fd)
            self._flusher.kick()
        if piece == self._prefix:
            self._sha256.update(data)
            self._prefix += 1
            while self._prefix < len(self._have) and self._have[self._prefix]:
                size = self.meta.piece_size(self._prefix)
                self._sha256.update(os.pread(self._fd, size, self._prefix * self.meta.piece_length))
                self._prefix += 1

    def _error(self, e: OSError, what: str) -> StorageError:
        if e.errno in NO_SPACE:
            # Keep what was verified (or not yet re-checked) for a retry; a part file with
            # nothing verified in it only takes space.
            self._keep = self._unchecked or any(self._have)
            done = sum(self.meta.piece_size(p) for p, ok in enumerate(self._have) if ok)
            kept = (
                f"; the {done} bytes verified so far are kept in {self.path.parent} for a retry once space is freed"
                if any(self._have) else
                f"; the earlier part in {self.path.parent} is kept for a retry once space is freed"
                if self._keep else ""
            )
            return NoSpace(f"{what}: {_why(e)}: the disk is full{kept}")
        return StorageError(f"{what}: {_why(e)}")

    # ---- ending
    def whole_hash_ok(self) -> bool:
        if self._prefix != len(self._have):
            return False
        return self.meta.sha256 is None or self._sha256.digest() == self.meta.sha256

    def finish(self) -> Path:
        """Make the verified file durable and give it its real name."""
        assert self._fd is not None
        try:
            started = time.monotonic()
            os.fsync(self._fd)
            self.sync_seconds = time.monotonic() - started
            self._close_fds()
            self.final = _move_to_free_name(self.path, self.final)
        except OSError as e:
            raise self._error(e, f"cannot move {self.path} to {self.final}") from None
        # After the rename: a crash in between leaves a record without a part, which starts afresh.
        _unlink(self.record)
        _unlink(self.torrent_copy)
        return self.final

    def close(self) -> None:
        """Close but keep the part file and its record (the node is stopping mid-download)."""
        self._close_fds()

    def discard(self) -> None:
        """Close and remove the part file, its record and its torrent copy (nothing worth keeping is left).

        A full disk (see :meth:`write_piece`) sets the part file to be kept
        anyway, for a retry once there is space.
        """
        self._close_fds()
        if self._keep:
            return
        for path in (self.path, self.record, self.torrent_copy):
            _unlink(path)

    def _close_fds(self) -> None:
        if self._flusher is not None:
            self._flusher.stop()  # before the descriptor it syncs is closed
            self._flusher = None
        for name in ("_fd", "_record_fd"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                os.close(fd)


class _Flusher:
    """fdatasync on a thread of its own, when kicked: writeback overlaps the download."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="p2ptorrent-flush", daemon=True)
        self._thread.start()

    def kick(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                os.fdatasync(self._fd)
            except OSError:
                pass  # the fsync before the rename meets the same error and reports it


#: How many "name (N).ext" a finished download tries before it gives up.
MAX_NAME_TRIES = 1000


def free_names(wanted: Path) -> Iterator[Path]:
    """*wanted*, then ``stem (2).suffix``, ``stem (3).suffix``, ...: where a finished file may go."""
    yield wanted
    for n in range(2, MAX_NAME_TRIES + 1):
        yield wanted.with_name(f"{wanted.stem} ({n}){wanted.suffix}")


def _move_to_free_name(src: Path, wanted: Path) -> Path:
    """Rename *src* to *wanted*, or to the first free ``name (N).ext`` beside it; never over an existing file.

    Another file with the same name (a different torrent, or the user's own)
    is never replaced.  A hard link claims the name atomically (it fails if
    the name exists); where the file system has no hard links, an exclusive
    create reserves the name instead.
    """
    for candidate in free_names(wanted):
        try:
            os.link(src, candidate, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            try:
                os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
            except FileExistsError:
                continue
            os.replace(src, candidate)
            return candidate
        os.unlink(src)
        return candidate
    raise OSError(errno.EEXIST, f"no free name like {wanted.name} left", str(wanted))


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


@dataclass(frozen=True)
class Unfinished:
    """A download found in ``.incomplete/``: its torrent and where its copy is."""

    meta: Metainfo
    torrent: bytes
    path: Path


def unfinished(folder: Path) -> tuple[list[Unfinished], list[str]]:
    """The downloads a node left unfinished in *folder* (blocking), and why others were skipped.

    Each is named by a ``<info hash>.torrent`` copy in ``.incomplete/``; one
    whose torrent is unreadable, or does not match its name, is skipped (and
    said so) rather than guessed at.
    """
    found: list[Unfinished] = []
    skipped: list[str] = []
    try:
        copies = sorted((Path(folder) / INCOMPLETE).glob("*.torrent"))
    except OSError as e:
        return found, [f"cannot list {Path(folder) / INCOMPLETE}: {_why(e)}"]
    for path in copies:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_TORRENT_SIZE + 1)
            meta = single_file(parse(data), "resumes")
        except OSError as e:
            skipped.append(f"cannot read {path}: {_why(e)}")
            continue
        except MetainfoError as e:
            skipped.append(f"{path}: {e}")
            continue
        if path.name != f"{meta.info_hash.hex()}.torrent":
            skipped.append(f"{path} describes info hash {meta.info_hash.hex()}, not the one in its name")
            continue
        found.append(Unfinished(meta, data, path))
    return found, skipped


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
