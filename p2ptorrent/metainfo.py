"""BEP 3 single-file ``.torrent`` metainfo: making, parsing and checking it.

A torrent is untrusted input: it arrives from other people and names a file
we are about to create.  :func:`parse` therefore checks every field it uses
and turns every problem into a :class:`MetainfoError` with a message a user
can act on; :func:`safe_name` and :func:`target_path` make sure the name can
only ever point at one plain file inside the download folder.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Sequence

from fastbencode import bdecode, bencode

from p2ptorrent.config import KIB, MAX_PIECE_LENGTH, MIB

#: Largest torrent file we read or write.  Real single-file torrents are a few
#: KiB to a few MiB; the cap bounds memory spent on hostile input.
MAX_TORRENT_SIZE = 16 * MIB
#: Largest file length we accept: beyond 2**53 byte offsets stop being exact
#: in JSON numbers and floats, which progress reports and peers may use.
MAX_LENGTH = 2**53
#: auto_piece_length: smallest and largest choice, and the piece count aimed at.
MIN_AUTO_PIECE_LENGTH = 256 * KIB
MAX_AUTO_PIECE_LENGTH = 16 * MIB
TARGET_PIECES = 2048
#: Longest file name most file systems allow (ext4, APFS, NTFS count bytes or
#: UTF-16 units; 255 UTF-8 bytes is safe for all of them).
MAX_NAME_BYTES = 255

SHA1_SIZE = 20
SHA256_SIZE = 32
#: Bytes read per system call when hashing; bounds memory whatever the piece length.
_READ_BLOCK = 1 * MIB

CREATED_BY = "p2ptorrent"


class MetainfoError(ValueError):
    """A torrent (or a name in it) cannot be used; ``str()`` says why."""


@dataclass(frozen=True)
class Metainfo:
    """What a single-file torrent says about its file."""

    announce: str
    name: str
    length: int
    piece_length: int
    #: The concatenated 20-byte SHA-1 digests of the pieces, in order.
    pieces: bytes
    #: SHA-256 of the whole file (our extension inside ``info``), if present.
    sha256: bytes | None
    #: SHA-1 of the bencoded ``info`` dict: the swarm's identity.
    info_hash: bytes
    #: BEP 12 ``announce-list``: tiers of tracker URLs, tried in order (empty: only ``announce``).
    announce_list: tuple[tuple[str, ...], ...] = ()

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
    """Hash the file at *path* and return its metainfo and the ``.torrent`` bytes.

    The file is read in blocks, never whole.  *piece_length* 0 picks one with
    :func:`auto_piece_length`.  *creation_date* (seconds since the epoch) is
    the file's stamp, not a clock we schedule on; it defaults to now.
    *announce_list* (BEP 12 tiers) is written when given.
    """
    path = Path(path)
    name = safe_name(path.name)
    if isinstance(piece_length, bool) or not isinstance(piece_length, int):
        raise MetainfoError(f"piece length must be an integer, got {piece_length!r}")
    if piece_length < 0 or piece_length > MAX_PIECE_LENGTH:
        raise MetainfoError(f"piece length must be 0 (automatic) or 1 byte to {MAX_PIECE_LENGTH // MIB} MiB, got {piece_length}")
    try:
        # Checked before opening too: opening a FIFO would block until a writer comes.
        if not stat.S_ISREG(path.stat().st_mode):
            raise MetainfoError(f"cannot make a torrent of {path}: not a regular file")
        with open(path, "rb") as f:
            if not _is_regular(f):
                raise MetainfoError(f"cannot make a torrent of {path}: not a regular file")
            if piece_length == 0:
                piece_length = auto_piece_length(os.fstat(f.fileno()).st_size)
            length, pieces, sha256 = _hash_file(f, piece_length)
    except OSError as e:
        raise MetainfoError(f"cannot read {path}: {e.strerror or e}") from None
    if length > MAX_LENGTH:
        raise MetainfoError(f"{path} is too large: {length} bytes (at most 2**53)")

    info: dict[bytes, Any] = {
        b"length": length,
        b"name": name.encode("utf-8"),
        b"piece length": piece_length,
        b"pieces": pieces,
        b"sha256": sha256,
    }
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
    meta = Metainfo(
        announce=announce,
        name=name,
        length=length,
        piece_length=piece_length,
        pieces=pieces,
        sha256=sha256,
        info_hash=hashlib.sha1(bencode(info)).digest(),
        announce_list=tiers,
    )
    return meta, data


def _is_regular(f: BinaryIO) -> bool:
    return stat.S_ISREG(os.fstat(f.fileno()).st_mode)


def _hash_file(f: BinaryIO, piece_length: int) -> tuple[int, bytes, bytes]:
    """Stream *f*: (bytes read, concatenated piece SHA-1s, whole-file SHA-256).

    The length is what we actually read, so a file that grows or shrinks
    while we hash still yields a self-consistent torrent.
    """
    whole = hashlib.sha256()
    digests: list[bytes] = []
    length = 0
    while True:
        piece = hashlib.sha1()
        got = 0
        while got < piece_length:
            block = f.read(min(_READ_BLOCK, piece_length - got))
            if not block:
                break
            piece.update(block)
            whole.update(block)
            got += len(block)
        if got:
            digests.append(piece.digest())
            length += got
        if got < piece_length:
            break
    return length, b"".join(digests), whole.digest()


# ---- parsing

def parse(data: bytes) -> Metainfo:
    """Decode and check a ``.torrent``; every problem is a :class:`MetainfoError`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MetainfoError(f"torrent data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_TORRENT_SIZE:
        raise MetainfoError(f"torrent is too large: over {MAX_TORRENT_SIZE // MIB} MiB")
    if not data:
        raise MetainfoError("torrent is empty")
    try:
        top = bdecode(data)
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        # RecursionError: fastbencode's pure-Python fallback recurses per nesting
        # level; the compiled decoder (the one normally loaded) does not.
        raise MetainfoError(f"torrent is not valid bencode: {e}") from None
    if not isinstance(top, dict):
        raise MetainfoError(f"torrent must be a bencoded dictionary, got {_kind(top)}")

    announce = _text(_field(top, b"announce", bytes, "announce"), "announce")
    announce_list = _announce_list(top.get(b"announce-list"))
    info = _field(top, b"info", dict, "info")
    if b"files" in info:
        raise MetainfoError("multi-file torrents are not supported")
    name = safe_name(_text(_field(info, b"name", bytes, "info name"), "info name"))

    piece_length = _field(info, b"piece length", int, "info piece length")
    if not 0 < piece_length <= MAX_PIECE_LENGTH:
        raise MetainfoError(f"piece length must be 1 byte to {MAX_PIECE_LENGTH // MIB} MiB, got {piece_length}")
    length = _field(info, b"length", int, "info length")
    if length < 0:
        raise MetainfoError(f"file length must not be negative, got {length}")
    if length > MAX_LENGTH:
        raise MetainfoError(f"file length {length} is too large (at most 2**53 bytes)")

    pieces = _field(info, b"pieces", bytes, "info pieces")
    if len(pieces) % SHA1_SIZE:
        raise MetainfoError(f"pieces must be a multiple of 20 bytes (SHA-1 digests), got {len(pieces)} bytes")
    expected = -(-length // piece_length)
    if len(pieces) // SHA1_SIZE != expected:
        raise MetainfoError(
            f"torrent lists {len(pieces) // SHA1_SIZE} piece hashes, but a {length}-byte file"
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
    )


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
