"""Where a download's bytes go: a part file written piece by piece, finished by rename.

Only verified pieces are ever written, at their offsets, with ``os.pwrite``,
into ``<node folder>/.incomplete/<info hash>.part``; nothing holds the whole
file in memory.  The SHA-256 of the whole file is computed as the verified
prefix grows (pieces that arrived early are read back once the prefix reaches
them), so the final check costs no second pass.  Only a file whose every
piece and whole hash checked is renamed to its real name in the node folder.

Folders.  A folder torrent's part is a folder, ``<info hash>.part/``, holding
its files at their paths (p2ptorrent.node.files: content offsets to files,
no link followed, padding files never on disk, empty files created); the
finished folder is renamed whole into the node folder.  Every file's target
is checked before anything is written (:func:`final_path`).

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
import shutil
import struct
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from p2ptorrent.atomicfile import atomic_write, stale_temporaries
from p2ptorrent.metainfo import MAX_TORRENT_SIZE, Metainfo, MetainfoError, parse, target_path, target_paths
from p2ptorrent.node.files import ContentFiles

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


def final_path(folder: Path, meta: Metainfo) -> Path:
    """Where *meta*'s file or folder goes in node folder *folder*; raises MetainfoError for a hostile target.

    For a folder torrent every file's path is checked too (p2ptorrent.metainfo.target_file):
    a symbolic link planted at a folder on the way, a file where the torrent has a folder
    or a folder where it has a file is refused before anything is written.
    """
    final = target_path(folder, meta.name)
    if meta.is_folder:
        target_paths(folder, meta)
    return final


def file_count(meta: Metainfo) -> int:
    """The files a person sees: a folder's files without the padding ones (never on disk), or 1."""
    return sum(not f.padding for f in meta.files) if meta.is_folder else 1


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
        self.meta = meta
        self.final = final_path(folder, meta)
        incomplete = Path(folder) / INCOMPLETE
        #: The part file; for a folder torrent, a folder holding its files (renamed whole at the end).
        self.path = incomplete / f"{meta.info_hash.hex()}.part"
        self._files = ContentFiles.of(self.path, meta, writable=True)
        self.record = record_path(folder, meta.info_hash)
        self.torrent_copy = incomplete / f"{meta.info_hash.hex()}.torrent"
        self.torrent = torrent
        self.resumed = ResumeReport(0, 0, 0, False)
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
                if self.meta.is_folder:
                    _remove_tree(self.path)  # the files of an earlier try, no record to trust: start afresh
                    os.mkdir(self.path, 0o755)
                self._files.create()
            elif not self._files.present():  # (checked by _candidates, but that was before)
                raise OSError(errno.ENOENT, "a file of the download vanished", str(self.path))
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
        if self.meta.is_folder:
            if not stat.S_ISDIR(st.st_mode) or not self._files.present():
                return None
        elif not (stat.S_ISREG(st.st_mode) and st.st_size == self.meta.length):
            return None
        return read_record(self.record, self.meta)

    def _reverify(self, candidates: list[int]) -> int:
        """Trust each candidate piece whose bytes on disk match its SHA-1; feed the verified prefix to SHA-256."""
        rejected = 0
        for piece in candidates:
            if self._aborted:
                raise Interrupted(f"checking {self.path} was interrupted")
            size = self.meta.piece_size(piece)
            data = self._files.read(piece * self.meta.piece_length, size)
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
        assert self._record_fd is not None
        offset = piece * self.meta.piece_length
        try:
            self._files.write(offset, data)
        except OSError as e:
            where = f"{e.filename} (piece {piece})" if e.filename else f"{self.path} at offset {offset}"
            raise self._error(e, f"cannot write {where}") from None
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
                self._flusher = _Flusher(self._files)
            self._flusher.kick()
        if piece == self._prefix:
            self._sha256.update(data)
            self._prefix += 1
            while self._prefix < len(self._have) and self._have[self._prefix]:
                size = self.meta.piece_size(self._prefix)
                self._sha256.update(self._files.read(self._prefix * self.meta.piece_length, size))
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
        """Make the verified file (or folder) durable and give it its real name."""
        try:
            started = time.monotonic()
            self._files.fsync()
            self.sync_seconds = time.monotonic() - started
            self._close_fds()
            if self.meta.is_folder:
                self.final = _move_folder_to_free_name(self.path, self.final)
            else:
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
        if self.meta.is_folder:
            _remove_tree(self.path)
        else:
            _unlink(self.path)
        for path in (self.record, self.torrent_copy):
            _unlink(path)

    def _close_fds(self) -> None:
        if self._flusher is not None:
            self._flusher.stop()  # before the descriptor it syncs is closed
            self._flusher = None
        self._files.close()
        if self._record_fd is not None:
            fd, self._record_fd = self._record_fd, None
            os.close(fd)


class _Flusher:
    """fdatasync on a thread of its own, when kicked: writeback overlaps the download."""

    def __init__(self, files: ContentFiles) -> None:
        self._files = files
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
                fds = self._files.sync_handles()  # copies: the writer may close its own meanwhile
            except OSError:
                continue
            for fd in fds:
                try:
                    os.fdatasync(fd)
                except OSError:
                    pass  # the fsync before the rename meets the same error and reports it
                finally:
                    os.close(fd)


#: How many "name (N).ext" a finished download tries before it gives up.
MAX_NAME_TRIES = 1000


def free_names(wanted: Path, folder: bool = False) -> Iterator[Path]:
    """*wanted*, then ``stem (2).suffix``, ``stem (3).suffix``, ...: where a finished file may go.

    A *folder* has no suffix to keep: ``name (2)``.
    """
    yield wanted
    for n in range(2, MAX_NAME_TRIES + 1):
        yield wanted.with_name(f"{wanted.name} ({n})") if folder else wanted.with_name(f"{wanted.stem} ({n}){wanted.suffix}")


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


def _move_folder_to_free_name(src: Path, wanted: Path) -> Path:
    """Rename folder *src* to *wanted*, or to the first free ``name (N)`` beside it, whole and at once.

    An empty folder made here claims the name (mkdir fails if it exists), and
    the rename replaces only that empty folder: a folder or file already
    there, or a link, is never replaced or written into.
    """
    for candidate in free_names(wanted, folder=True):
        try:
            os.mkdir(candidate, 0o755)
        except FileExistsError:
            continue
        os.rename(src, candidate)
        return candidate
    raise OSError(errno.EEXIST, f"no free name like {wanted.name} left", str(wanted))


def _remove_tree(path: Path) -> None:
    """Remove a download's folder of files (links in it are removed, never followed), or a file in its place."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


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
            meta = parse(data)
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
    """Is *path* already the complete, correct file (or folder of files)?  (Blocking: run it in a thread.)

    A folder: every file there at its length (reached without following
    links), then every piece and the whole SHA-256 over the files in order.
    """
    try:
        if path.is_symlink():
            return False
        if meta.is_folder:
            if not path.is_dir():
                return False
        elif not path.is_file() or path.stat().st_size != meta.length:
            return False
        content = ContentFiles.of(path, meta, writable=False)
        try:
            if not content.present():
                return False
            whole = hashlib.sha256()
            for piece in range(meta.num_pieces):
                data = content.read(piece * meta.piece_length, meta.piece_size(piece))
                if hashlib.sha1(data).digest() != meta.piece_hash(piece):
                    return False
                whole.update(data)
        finally:
            content.close()
        return meta.sha256 is None or whole.digest() == meta.sha256
    except OSError:
        return False
