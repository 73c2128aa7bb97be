"""BEP 3 ``.torrent`` metainfo, of one file or of a folder: making, parsing and checking it.

A torrent is untrusted input: it arrives from other people and names files
we are about to create.  :func:`parse` therefore checks every field it uses
and turns every problem into a :class:`MetainfoError` with a message a user
can act on; :func:`safe_name`, :func:`target_path` and :func:`target_paths`
make sure a name can only ever point at one plain file inside the download
folder.

A folder is a BEP 3 multi-file torrent: its files are one byte string (their
concatenation, in the order listed), cut into pieces that may run across file
boundaries.  :mod:`p2ptorrent.filemap` maps that byte string back to files.

The codec is ``fastbencode`` (never a hand-written one).  Its decoder is strict
(sorted keys, no leading zeros, no trailing junk), so re-encoding a decoded
torrent gives back exactly the stored bytes; :func:`parse` checks that, which
is what makes ``sha1(bencode(info))`` the info hash "exactly as stored".

All functions here are pure or touch only the paths they are given: no shared
state, so the node may run :func:`make_torrent` in a thread.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
import time
import unicodedata
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, BinaryIO, Sequence

from fastbencode import bdecode, bencode

from p2ptorrent.config import KIB, MAX_PIECE_LENGTH, MIB

#: Largest torrent file we read or write.  Real single-file torrents are a few
#: KiB to a few MiB; the cap bounds memory spent on hostile input.
MAX_TORRENT_SIZE = 16 * MIB
#: Largest file (or folder total) length we accept: beyond 2**53 byte offsets stop being exact
#: in JSON numbers and floats, which progress reports and peers may use.
MAX_LENGTH = 2**53
#: auto_piece_length: smallest and largest choice, and the piece count aimed at.
MIN_AUTO_PIECE_LENGTH = 256 * KIB
MAX_AUTO_PIECE_LENGTH = 16 * MIB
TARGET_PIECES = 2048
#: Longest file name most file systems allow (ext4, APFS, NTFS count bytes or
#: UTF-16 units; 255 UTF-8 bytes is safe for all of them).
MAX_NAME_BYTES = 255
#: Most files a folder torrent may list.  Large real torrents list a few thousand; the cap
#: bounds the work and memory a hostile file list costs (the 16 MiB torrent cap alone allows ~1.5 million).
MAX_FILES = 100_000
#: Most folders a file may sit in below the torrent's folder.
MAX_PATH_DEPTH = 64
#: Longest relative path (the torrent's name, the folders and the file, joined with "/"), in UTF-8
#: bytes: Linux's PATH_MAX, so a path we accept can at least be opened from a short download folder.
MAX_PATH_BYTES = 4096

SHA1_SIZE = 20
SHA256_SIZE = 32
#: Bytes read per system call when hashing; bounds memory whatever the piece length.
_READ_BLOCK = 1 * MIB

CREATED_BY = "p2ptorrent"


class MetainfoError(ValueError):
    """A torrent (or a name in it) cannot be used; ``str()`` says why."""


@dataclass(frozen=True)
class FileEntry:
    """One file of a folder torrent."""

    #: Where it goes below the torrent's folder: folder names, then the file name (each one :func:`safe_name`).
    path: tuple[str, ...]
    length: int
    #: A BEP 47 padding file (``attr`` holds ``p``): zeros that align the next file to a piece
    #: boundary, part of the pieces but never written to disk.  Hybrid torrents are full of them.
    padding: bool = False

    @property
    def display(self) -> str:
        return "/".join(self.path)


@dataclass(frozen=True)
class Metainfo:
    """What a torrent says about its file, or about the files of its folder.

    A single-file torrent has no :attr:`files`; a folder torrent's :attr:`name`
    is the folder's name and :attr:`length` the total of its files, whose
    concatenation the pieces hash.
    """

    announce: str
    name: str
    length: int
    piece_length: int
    #: The concatenated 20-byte SHA-1 digests of the pieces, in order.
    pieces: bytes
    #: SHA-256 of the whole content (our extension inside ``info``), if present: of the file, or
    #: of a folder's files concatenated in order (the same bytes the pieces cut up).
    sha256: bytes | None
    #: SHA-1 of the bencoded ``info`` dict: the swarm's identity.
    info_hash: bytes
    #: BEP 12 ``announce-list``: tiers of tracker URLs, tried in order (empty: only ``announce``).
    announce_list: tuple[tuple[str, ...], ...] = ()
    #: A folder's files, in torrent order (their bytes in this order are the content); empty for one file.
    files: tuple[FileEntry, ...] = ()
    #: The bencoded ``info`` dict exactly as stored (its SHA-1 is :attr:`info_hash`): what a seeder hands a
    #: peer that has only a magnet link (BEP 9's metadata).
    info_bytes: bytes = field(default=b"", repr=False, compare=False)

    @property
    def is_folder(self) -> bool:
        """A multi-file torrent (even one listing a single file), as opposed to a single-file one."""
        return bool(self.files)

    @property
    def num_pieces(self) -> int:
        return len(self.pieces) // SHA1_SIZE

    @property
    def info_hash_hex(self) -> str:
        return self.info_hash.hex()

    def piece_hash(self, index: int) -> bytes:
        """The expected SHA-1 digest of piece *index*."""
        self._check_index(index)
        return self.pieces[index * SHA1_SIZE : (index + 1) * SHA1_SIZE]

    def piece_size(self, index: int) -> int:
        """Bytes in piece *index*: ``piece_length`` except for a shorter last piece."""
        self._check_index(index)
        return min(self.piece_length, self.length - index * self.piece_length)

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.num_pieces:
            raise IndexError(f"piece {index} out of range: {self.name} has {self.num_pieces} pieces")


# ---- making

def auto_piece_length(length: int) -> int:
    """A power of two from 256 KiB to 16 MiB giving at most ~2048 pieces.

    Fewer, larger pieces keep the torrent small and the per-piece overhead low;
    the 16 MiB cap keeps a piece cheap to re-download when its hash fails.
    """
    piece = MIN_AUTO_PIECE_LENGTH
    while piece < MAX_AUTO_PIECE_LENGTH and math.ceil(length / piece) > TARGET_PIECES:
        piece *= 2
    return piece


def make_torrent(
    path: str | os.PathLike[str],
    announce: str,
    piece_length: int = 0,
    *,
    creation_date: int | None = None,
    announce_list: Sequence[Sequence[str]] = (),
) -> tuple[Metainfo, bytes]:
    """Hash the file or folder at *path* and return its metainfo and the ``.torrent`` bytes.

    Files are read in blocks, never whole.  *piece_length* 0 picks one with
    :func:`auto_piece_length`.  *creation_date* (seconds since the epoch) is
    the file's stamp, not a clock we schedule on; it defaults to now.
    *announce_list* (BEP 12 tiers) is written when given.

    A folder becomes a BEP 3 multi-file torrent of every regular file below
    it, empty ones included, sorted by path (component by component, bytes of
    the UTF-8 names: the order of BEP 52's file tree, so the same folder
    always gives the same torrent).  Empty folders cannot be represented in
    BEP 3 and are left out.  Symbolic links inside the folder are refused,
    never followed (a link could pull in files from anywhere), and so are
    FIFOs, sockets and devices; *path* itself may be a link, as it is for a
    single file.  Paths :func:`parse` would refuse (too many files, too deep,
    two names that one case-insensitive file system would merge) are refused
    here too, so whatever we make, we and others can read.
    """
    path = Path(path)
    if isinstance(piece_length, bool) or not isinstance(piece_length, int):
        raise MetainfoError(f"piece length must be an integer, got {piece_length!r}")
    if piece_length < 0 or piece_length > MAX_PIECE_LENGTH:
        raise MetainfoError(f"piece length must be 0 (automatic) or 1 byte to {MAX_PIECE_LENGTH // MIB} MiB, got {piece_length}")
    try:
        is_folder = stat.S_ISDIR(path.stat().st_mode)
    except OSError as e:
        raise MetainfoError(f"cannot read {path}: {e.strerror or e}") from None
    if is_folder:
        name = safe_name(Path(os.path.abspath(path)).name)  # "." or "dir/" still name the folder
        files, length, piece_length, pieces, sha256 = _hash_folder(path, name, piece_length)
        info: dict[bytes, Any] = {
            b"files": [{b"length": f.length, b"path": [part.encode("utf-8") for part in f.path]} for f in files],
        }
    else:
        name = safe_name(path.name)
        files = ()
        length, piece_length, pieces, sha256 = _hash_one_file(path, piece_length)
        info = {b"length": length}
    if length > MAX_LENGTH:
        raise MetainfoError(f"{path} is too large: {length} bytes (at most 2**53)")

    info.update({
        b"name": name.encode("utf-8"),
        b"piece length": piece_length,
        b"pieces": pieces,
        b"sha256": sha256,
    })
    torrent = {
        b"announce": announce.encode("utf-8"),
        b"created by": CREATED_BY.encode("utf-8"),
        b"creation date": int(time.time()) if creation_date is None else int(creation_date),
        b"info": info,
    }
    tiers = tuple(tuple(tier) for tier in announce_list if tier)
    if tiers:
        torrent[b"announce-list"] = [[url.encode("utf-8") for url in tier] for tier in tiers]
    data = bencode(torrent)
    if len(data) > MAX_TORRENT_SIZE:
        raise MetainfoError(
            f"the torrent of {path} would be {len(data)} bytes, over the 16 MiB limit:"
            " use a larger piece length"
        )
    info_bytes = bencode(info)
    meta = Metainfo(
        announce=announce,
        name=name,
        length=length,
        piece_length=piece_length,
        pieces=pieces,
        sha256=sha256,
        info_hash=hashlib.sha1(info_bytes).digest(),
        announce_list=tiers,
        files=files,
        info_bytes=info_bytes,
    )
    return meta, data


def _hash_one_file(path: Path, piece_length: int) -> tuple[int, int, bytes, bytes]:
    """(length, piece length, pieces, SHA-256) of the single file at *path*."""
    try:
        # Checked before opening too: opening a FIFO would block until a writer comes.
        if not stat.S_ISREG(path.stat().st_mode):
            raise MetainfoError(f"cannot make a torrent of {path}: not a regular file or a folder")
        with open(path, "rb") as f:
            if not _is_regular(f):
                raise MetainfoError(f"cannot make a torrent of {path}: not a regular file or a folder")
            if piece_length == 0:
                piece_length = auto_piece_length(os.fstat(f.fileno()).st_size)
            hasher = _PieceHasher(piece_length)
            _hash_file(f, hasher)
    except OSError as e:
        raise MetainfoError(f"cannot read {path}: {e.strerror or e}") from None
    pieces, sha256 = hasher.finish()
    return hasher.length, piece_length, pieces, sha256


def _hash_folder(root: Path, name: str, piece_length: int) -> tuple[tuple[FileEntry, ...], int, int, bytes, bytes]:
    """(files, total length, piece length, pieces, SHA-256) of the folder at *root*, hashed as one byte string.

    Each file's length is what we actually read, so a file that grows or
    shrinks while we hash still yields a self-consistent torrent.
    """
    found = _list_folder(root, name)
    if not found:
        raise MetainfoError(
            f"cannot make a torrent of {root}: it holds no files (empty folders cannot be part of a torrent)"
        )
    if piece_length == 0:
        piece_length = auto_piece_length(sum(size for _, _, size in found))
    hasher = _PieceHasher(piece_length)
    files = []
    for parts, where, _ in found:
        try:
            # O_NOFOLLOW: a link swapped in since we listed the folder is refused, not followed;
            # O_NONBLOCK: a FIFO swapped in does not block the open (the fstat check refuses it).
            fd = os.open(where, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise MetainfoError(f"cannot read {where}: {e.strerror or e}") from None
        with open(fd, "rb") as f:
            if not _is_regular(f):
                raise MetainfoError(f"cannot make a torrent of {root}: {where} is not a regular file")
            try:
                before = hasher.length
                _hash_file(f, hasher)
            except OSError as e:
                raise MetainfoError(f"cannot read {where}: {e.strerror or e}") from None
        files.append(FileEntry(parts, hasher.length - before))
    pieces, sha256 = hasher.finish()
    return tuple(files), hasher.length, piece_length, pieces, sha256


def _list_folder(root: Path, name: str) -> list[tuple[tuple[str, ...], Path, int]]:
    """Every regular file below *root*: (path components, where it is, its size now), in torrent order.

    Refuses links, special files, names :func:`safe_name` refuses and paths
    :func:`parse` would refuse, each with a message naming the path.
    """
    found: list[tuple[tuple[str, ...], Path, int]] = []
    folders: list[tuple[tuple[str, ...], Path]] = [((), root)]
    while folders:
        parts, folder = folders.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
            for entry in entries:
                where = Path(entry.path)
                try:
                    part = safe_name(entry.name)
                except MetainfoError as e:
                    raise MetainfoError(f"cannot make a torrent of {root}: {where}: {e}") from None
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    raise MetainfoError(
                        f"cannot make a torrent of {root}: {where} is a symbolic link (links inside a folder are not followed)"
                    )
                if stat.S_ISDIR(st.st_mode):
                    folders.append(((*parts, part), where))
                elif stat.S_ISREG(st.st_mode):
                    found.append(((*parts, part), where, st.st_size))
                    if len(found) > MAX_FILES:
                        raise MetainfoError(f"cannot make a torrent of {root}: it holds more than {MAX_FILES} files")
                else:
                    raise MetainfoError(
                        f"cannot make a torrent of {root}: {where} is {_special_kind(st.st_mode)}, not a regular file"
                    )
        except OSError as e:
            raise MetainfoError(f"cannot read {folder}: {e.strerror or e}") from None
    found.sort(key=lambda item: tuple(part.encode("utf-8") for part in item[0]))
    try:
        _check_paths(name, [FileEntry(parts, size) for parts, _, size in found])
    except MetainfoError as e:
        raise MetainfoError(f"cannot make a torrent of {root}: {e}") from None
    return found


def _special_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "a special file"


def _is_regular(f: BinaryIO) -> bool:
    return stat.S_ISREG(os.fstat(f.fileno()).st_mode)


class _PieceHasher:
    """SHA-1 of each *piece_length* run of the bytes fed, and SHA-256 of them all.

    Fed file after file, it cuts pieces across file boundaries, as BEP 3's
    multi-file torrents do.
    """

    def __init__(self, piece_length: int) -> None:
        self.piece_length = piece_length
        #: Bytes fed so far.
        self.length = 0
        self._whole = hashlib.sha256()
        self._piece = hashlib.sha1()
        self._in_piece = 0
        self._digests: list[bytes] = []

    def update(self, data: bytes) -> None:
        self._whole.update(data)
        self.length += len(data)
        view = memoryview(data)
        while view:
            take = min(len(view), self.piece_length - self._in_piece)
            self._piece.update(view[:take])
            self._in_piece += take
            view = view[take:]
            if self._in_piece == self.piece_length:
                self._digests.append(self._piece.digest())
                self._piece = hashlib.sha1()
                self._in_piece = 0

    def finish(self) -> tuple[bytes, bytes]:
        """(the concatenated piece SHA-1s, the SHA-256 of everything); a shorter last piece counts."""
        if self._in_piece:
            self._digests.append(self._piece.digest())
            self._piece = hashlib.sha1()
            self._in_piece = 0
        return b"".join(self._digests), self._whole.digest()


def _hash_file(f: BinaryIO, hasher: _PieceHasher) -> None:
    """Feed *f* to *hasher* up to its end, in blocks (memory stays bounded whatever the piece length)."""
    while True:
        block = f.read(_READ_BLOCK)
        if not block:
            return
        hasher.update(block)


# ---- parsing

def _decode_dict(data: bytes, what: str) -> dict[Any, Any]:
    """*data* as a bencoded dictionary, or MetainfoError naming *what* it should have been."""
    try:
        top = bdecode(data)
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        # RecursionError: fastbencode's pure-Python fallback recurses per nesting
        # level; the compiled decoder (the one normally loaded) does not.
        raise MetainfoError(f"{what} is not valid bencode: {e}") from None
    if not isinstance(top, dict):
        raise MetainfoError(f"{what} must be a bencoded dictionary, got {_kind(top)}")
    return top


def parse(data: bytes) -> Metainfo:
    """Decode and check a ``.torrent``; every problem is a :class:`MetainfoError`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MetainfoError(f"torrent data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_TORRENT_SIZE:
        raise MetainfoError(f"torrent is too large: over {MAX_TORRENT_SIZE // MIB} MiB")
    if not data:
        raise MetainfoError("torrent is empty")
    top = _decode_dict(data, "torrent")

    announce = _text(_field(top, b"announce", bytes, "announce"), "announce")
    announce_list = _announce_list(top.get(b"announce-list"))
    info = _field(top, b"info", dict, "info")
    if b"pieces" not in info and (b"meta version" in info or b"file tree" in info):
        raise MetainfoError(
            "this is a v2-only torrent (BEP 52: a file tree and SHA-256 piece layers, no v1 pieces):"
            " p2ptorrent reads v1 torrents and hybrid v1+v2 ones"
        )
    name = safe_name(_text(_field(info, b"name", bytes, "info name"), "info name"))

    piece_length = _field(info, b"piece length", int, "info piece length")
    if not 0 < piece_length <= MAX_PIECE_LENGTH:
        raise MetainfoError(f"piece length must be 1 byte to {MAX_PIECE_LENGTH // MIB} MiB, got {piece_length}")
    files: tuple[FileEntry, ...] = ()
    if b"files" in info:
        if b"length" in info:
            raise MetainfoError("torrent info has both a length (one file) and files (a folder)")
        files = _files(info[b"files"])
        _check_paths(name, files)
        length = sum(f.length for f in files)
        if length > MAX_LENGTH:
            raise MetainfoError(f"the files of {_show(name)} total {length} bytes, too large (at most 2**53 bytes)")
        what = f"{length}-byte folder"
    else:
        length = _field(info, b"length", int, "info length")
        if length < 0:
            raise MetainfoError(f"file length must not be negative, got {length}")
        if length > MAX_LENGTH:
            raise MetainfoError(f"file length {length} is too large (at most 2**53 bytes)")
        what = f"{length}-byte file"

    pieces = _field(info, b"pieces", bytes, "info pieces")
    if len(pieces) % SHA1_SIZE:
        raise MetainfoError(f"pieces must be a multiple of 20 bytes (SHA-1 digests), got {len(pieces)} bytes")
    expected = -(-length // piece_length)
    if len(pieces) // SHA1_SIZE != expected:
        raise MetainfoError(
            f"torrent lists {len(pieces) // SHA1_SIZE} piece hashes, but a {what}"
            f" in {piece_length}-byte pieces has {expected}"
        )
    sha256 = info.get(b"sha256")
    if sha256 is not None and not (isinstance(sha256, bytes) and len(sha256) == SHA256_SIZE):
        raise MetainfoError("sha256 must be a 32-byte SHA-256 digest")

    encoded_info = bencode(info)
    if bencode(top) != data:
        # Unreachable with fastbencode's strict decoder; kept because the info
        # hash is only right if the re-encoded info is the stored one.
        raise MetainfoError("torrent is not in canonical bencode form")
    return Metainfo(
        announce=announce,
        name=name,
        length=length,
        piece_length=piece_length,
        pieces=pieces,
        sha256=sha256,
        info_hash=hashlib.sha1(encoded_info).digest(),
        announce_list=announce_list,
        files=files,
        info_bytes=encoded_info,
    )


def _files(raw: Any) -> tuple[FileEntry, ...]:
    """A multi-file torrent's ``files`` list, each entry's types and names checked (see :func:`_check_paths`)."""
    if not isinstance(raw, list):
        raise MetainfoError(f"torrent info files must be a list, got {_kind(raw)}")
    if not raw:
        raise MetainfoError("torrent info files is empty: a folder torrent lists at least one file")
    if len(raw) > MAX_FILES:
        raise MetainfoError(f"torrent lists {len(raw)} files, more than the {MAX_FILES} p2ptorrent accepts")
    files = []
    for i, entry in enumerate(raw):
        what = f"info files[{i}]"
        if not isinstance(entry, dict):
            raise MetainfoError(f"torrent {what} must be a dictionary, got {_kind(entry)}")
        length = _field(entry, b"length", int, f"{what} length")
        if length < 0:
            raise MetainfoError(f"torrent {what} length must not be negative, got {length}")
        if length > MAX_LENGTH:
            raise MetainfoError(f"torrent {what} length {length} is too large (at most 2**53 bytes)")
        raw_path = _field(entry, b"path", list, f"{what} path")
        if not raw_path:
            raise MetainfoError(f"torrent {what} path is empty")
        if len(raw_path) > MAX_PATH_DEPTH + 1:
            raise MetainfoError(
                f"torrent {what} path is {len(raw_path)} names long: at most {MAX_PATH_DEPTH} folders deep are accepted"
            )
        if not all(isinstance(part, bytes) for part in raw_path):
            raise MetainfoError(f"torrent {what} path must be a list of names (byte strings)")
        attr = entry.get(b"attr", b"")
        if not isinstance(attr, bytes):
            raise MetainfoError(f"torrent {what} attr must be a byte string, got {_kind(attr)}")
        parts = []
        for part in raw_path:
            try:
                parts.append(safe_name(_text(part, f"{what} path")))
            except MetainfoError as e:
                raise MetainfoError(f"{e} (in {what} path {_show(b'/'.join(raw_path))})") from None
        # Other BEP 47 attributes are ignored: "x" and "h" are hints, and a link ("l") is never made:
        # the entry is an ordinary file of its length.
        files.append(FileEntry(tuple(parts), length, padding=b"p" in attr))
    return tuple(files)


def _check_paths(name: str, files: Sequence[FileEntry]) -> None:
    """Refuse a file list that cannot be laid out as one tree of distinct files.

    Two paths that differ only in case or Unicode normalization are refused
    too: macOS and Windows file systems would make them one file, and
    the download would then overwrite one with the other (found only when
    pieces fail their checks).  Refusing them everywhere means a torrent is
    accepted or refused the same way on every system.  Padding files are
    never written, so they may share paths (libtorrent names several alike).
    """
    if len(files) > MAX_FILES:
        raise MetainfoError(f"torrent lists {len(files)} files, more than the {MAX_FILES} p2ptorrent accepts")
    keys = []
    for i, f in enumerate(files):
        if len(f.path) > MAX_PATH_DEPTH + 1:
            raise MetainfoError(f"{_show(f.display)} is more than {MAX_PATH_DEPTH} folders deep")
        size = len(name.encode("utf-8")) + sum(len(part.encode("utf-8")) + 1 for part in f.path)
        if size > MAX_PATH_BYTES:
            raise MetainfoError(f"{_show(f.display)} is too long: {size} bytes of path, at most {MAX_PATH_BYTES}")
        if not f.padding:
            keys.append((tuple(_fold(part) for part in f.path), i))
    # In sorted order a duplicate sits next to its twin, and a file that is also a
    # folder ("a" and "a/b") next to a file below it: one pass over neighbours finds both.
    keys.sort()
    for (key, i), (next_key, j) in pairwise(keys):
        first, second = sorted((files[i].display, files[j].display))
        if key == next_key:
            if first == second:
                raise MetainfoError(f"torrent lists {_show(first)} twice")
            raise MetainfoError(
                f"torrent lists {_show(first)} and {_show(second)}: names that differ only in case or Unicode"
                " normalization are one file on case-insensitive file systems"
            )
        if next_key[: len(key)] == key:
            raise MetainfoError(
                f"torrent lists {_show(files[i].display)} both as a file and as a folder"
                f" (of {_show(files[j].display)})"
            )


def _fold(part: str) -> str:
    """*part* as case- and normalization-insensitive file systems compare names (Unicode caseless matching)."""
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", part).casefold())


#: Most tracker URLs an announce-list may hold in all (real torrents carry a handful, public ones a few dozen).
MAX_ANNOUNCE_URLS = 200


def _announce_list(raw: Any) -> tuple[tuple[str, ...], ...]:
    """BEP 12 tiers, checked: a list of lists of URL strings (empty tiers dropped)."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(tier, list) for tier in raw):
        raise MetainfoError("announce-list must be a list of lists of tracker URLs")
    if sum(len(tier) for tier in raw) > MAX_ANNOUNCE_URLS:
        raise MetainfoError(f"announce-list names more than {MAX_ANNOUNCE_URLS} trackers")
    tiers = []
    for tier in raw:
        if not all(isinstance(url, bytes) for url in tier):
            raise MetainfoError("announce-list must hold tracker URLs as strings")
        if tier:
            tiers.append(tuple(_text(url, "announce-list URL") for url in tier))
    return tuple(tiers)


def read_torrent(path: str | os.PathLike[str]) -> Metainfo:
    """Read and :func:`parse` the torrent at *path* (never more than 16 MiB + 1 bytes)."""
    return read_torrent_file(path)[0]


def read_torrent_file(path: str | os.PathLike[str]) -> tuple[Metainfo, bytes]:
    """The torrent at *path*, parsed, with its bytes (a node keeps a copy to resume from)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TORRENT_SIZE + 1)
    except OSError as e:
        raise MetainfoError(f"cannot read torrent {os.fspath(path)}: {e.strerror or e}") from None
    try:
        return parse(data), data
    except MetainfoError as e:
        raise MetainfoError(f"{os.fspath(path)}: {e}") from None


def torrent_from_info(info_bytes: bytes, announce: str, announce_list: Sequence[Sequence[str]] = ()) -> tuple[Metainfo, bytes]:
    """A ``.torrent`` around an info dict fetched from peers (a magnet link's download), parsed and checked.

    The info dict goes in as it came, so the torrent's info hash is the one it was fetched for (the caller
    checked its SHA-1); :func:`parse` then makes every check a torrent from a file gets (names, paths, sizes).
    """
    info = _decode_dict(info_bytes, "the info dictionary")
    torrent: dict[bytes, Any] = {b"announce": announce.encode("utf-8"), b"info": info}
    tiers = [[url.encode("utf-8") for url in tier] for tier in announce_list if tier]
    if tiers:
        torrent[b"announce-list"] = tiers
    data = bencode(torrent)
    meta = parse(data)
    if meta.info_bytes != info_bytes:
        raise MetainfoError("the info dictionary is not in canonical bencode form")
    return meta, data


_KINDS = {bytes: "a byte string", int: "an integer", list: "a list", dict: "a dictionary"}


def _kind(value: object) -> str:
    """The bencode type of *value*, with its article, for messages."""
    return _KINDS.get(type(value), type(value).__name__)


def _field(d: dict[bytes, Any], key: bytes, kind: type, what: str) -> Any:
    if key not in d:
        raise MetainfoError(f"torrent has no {what}")
    value = d[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MetainfoError(f"torrent {what} must be {_KINDS[kind]}, got {_kind(value)}")
    return value


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MetainfoError(f"torrent {what} is not valid UTF-8: {_show(raw)}") from None


# ---- names and paths

def _show(name: str | bytes) -> str:
    """A name quoted for a message: control characters escaped, long ones cut."""
    if isinstance(name, bytes):
        text = repr(name)[2:-1]
    else:
        text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in name)
    if len(text) > 60:
        text = text[:40] + "..." + text[-10:]
    return '"' + text.replace('"', '\\"') + '"'


def safe_name(name: str) -> str:
    """Return *name* if it can only mean one plain file in a folder; else raise.

    Refuses anything that could climb out of the download folder or that
    some file system would treat specially: separators, ``.``/``..``, drive
    prefixes, control characters, names of only dots and spaces, and names
    too long for common file systems.
    """
    def refuse(why: str) -> MetainfoError:
        return MetainfoError(f"torrent names {_show(name)}: {why}")

    if not isinstance(name, str):
        raise MetainfoError(f"a file name must be text, got {type(name).__name__}")
    if not name:
        raise MetainfoError("torrent has an empty file name")
    if "/" in name:
        raise refuse('a file name must not contain "/"')
    if "\\" in name:
        raise refuse('a file name must not contain "\\"')
    if "\x00" in name:
        raise refuse("a file name must not contain NUL")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise refuse("a file name must not contain control characters")
    if name in (".", ".."):
        raise refuse(f'a file name must not be "{name}"')
    if not name.strip(". "):
        raise refuse("a file name must not consist only of dots and spaces")
    if len(name) >= 2 and name[1] == ":" and name[0].isascii() and name[0].isalpha():
        raise refuse('a file name must not start with a drive prefix like "C:"')
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise refuse("a file name must be valid Unicode") from None
    if size > MAX_NAME_BYTES:
        raise refuse(f"a file name must be at most {MAX_NAME_BYTES} bytes of UTF-8, this one is {size}")
    return name


def target_path(folder: Path, name: str) -> Path:
    """Where to write the file *name* inside *folder*; refuses to leave *folder*.

    A symlink already sitting at the target is refused: writing through it
    would let whoever planted it choose which file we overwrite.
    """
    folder = Path(folder)
    path = folder / safe_name(name)
    if path.is_symlink():
        raise MetainfoError(f"refusing to write {path}: it is a symbolic link")
    try:
        inside = path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop on older Pythons
        raise MetainfoError(f"cannot resolve {path}: {e}") from None
    if not inside:
        raise MetainfoError(f"refusing to write {path}: it resolves outside {folder}")
    return path


def target_paths(folder: Path, meta: Metainfo) -> tuple[Path | None, ...]:
    """Where each file of *meta* goes inside *folder*, in torrent order (None: a padding file, never written).

    A single-file torrent gives one path, :func:`target_path`'s.  A folder
    torrent's files go below ``folder/name``, each checked by
    :func:`target_file`.
    """
    if not meta.is_folder:
        return (target_path(folder, meta.name),)
    return tuple(None if f.padding else target_file(folder, (meta.name, *f.path)) for f in meta.files)


def target_file(folder: Path, parts: Sequence[str]) -> Path:
    """Where to write the file at *parts* (folder names, then the file name) inside *folder*.

    Each name must pass :func:`safe_name`.  Below *folder* nothing on the way
    may be a symbolic link (never followed: whoever planted it would choose
    where we write), a folder on the way may not exist as a file, and the
    file may not exist as a folder.  *folder* itself may be a link, as for
    :func:`target_path`.  This is a check before writing, not a lock: the
    writer should still open with ``O_NOFOLLOW`` and create folders itself.
    """
    folder = Path(folder)
    if not parts:
        raise MetainfoError("torrent has an empty file path")
    path = folder.joinpath(*(safe_name(part) for part in parts))
    on_the_way = folder
    for depth, part in enumerate(parts):
        on_the_way = on_the_way / part
        try:
            mode = on_the_way.lstat().st_mode
        except FileNotFoundError:
            break  # nothing below a missing name exists, so nothing below can be a link
        except OSError as e:
            raise MetainfoError(f"cannot check {on_the_way}: {e.strerror or e}") from None
        if stat.S_ISLNK(mode):
            raise MetainfoError(f"refusing to write {path}: {on_the_way} is a symbolic link")
        if depth < len(parts) - 1 and not stat.S_ISDIR(mode):
            raise MetainfoError(f"cannot write {path}: {on_the_way} is a file, where the torrent has a folder")
        if depth == len(parts) - 1 and stat.S_ISDIR(mode):
            raise MetainfoError(f"cannot write {path}: it is a folder, where the torrent has a file")
    try:
        inside = path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError) as e:
        raise MetainfoError(f"cannot resolve {path}: {e}") from None
    if not inside:
        raise MetainfoError(f"refusing to write {path}: it resolves outside {folder}")
    return path
