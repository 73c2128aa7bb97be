"""What the operator's verbs decide, apart from the node: which torrent a name or hash means, which
downloads are held (paused or cancelled), and the upload rates ``list`` shows.

``pause`` and ``cancel`` leave a download's verified pieces in ``.incomplete/`` and a small marker
beside them (``<info hash>.held``, holding ``paused`` or ``cancelled``), so a restarted node lists it
as held instead of resuming it; ``resume`` (or a ``download`` of it) removes the marker and goes on
from the verified pieces.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from p2ptorrent.metainfo import Metainfo
from p2ptorrent.node.storage import INCOMPLETE, read_record, record_path

PAUSED = "paused"
CANCELLED = "cancelled"
HELD_STATES = (PAUSED, CANCELLED)
#: Seconds of marks a seeded file's upload rate is averaged over.
RATE_SPAN = 6
#: How short a hash prefix may be: fewer hex digits match too much by chance.
MIN_PREFIX = 4


class NotFound(LookupError):
    """No torrent, or more than one, answers to the name or hash given; str() says which."""


def find(query: str, known: list[tuple[bytes, str]]) -> bytes:
    """The info hash *query* names among *known* (info hash, name): a name, a full hash or a unique
    hash prefix (MIN_PREFIX hex digits or more).  An exact name wins over a prefix that is also a name."""
    text = query.strip()
    by_name = sorted({ih for ih, name in known if name == text})
    if len(by_name) == 1:
        return by_name[0]
    if len(by_name) > 1:
        raise NotFound(f"{len(by_name)} torrents are named {text!r}: give the hash instead"
                       f" ({', '.join(ih.hex()[:12] for ih in by_name)})")
    low = text.lower()
    if len(low) >= MIN_PREFIX and all(c in "0123456789abcdef" for c in low):
        by_hash = sorted({ih for ih, _ in known if ih.hex().startswith(low)})
        if len(by_hash) == 1:
            return by_hash[0]
        if len(by_hash) > 1:
            raise NotFound(f"{text!r} starts {len(by_hash)} info hashes: give more of it"
                           f" ({', '.join(ih.hex()[:12] for ih in by_hash)})")
    raise NotFound(f"no torrent named {text!r} or with a hash starting so on this node (`list` shows them)")


# ---- what each verb does: a plan of actions, decided from where the torrent is (pure)

#: Where a torrent is on a node, for the verbs: seeded complete, downloading (from its first check of the
#: disk to its end), or held by the operator.
SEEDING, DOWNLOADING = "seeding", "downloading"


class Refused(Exception):
    """The verb does not apply to the torrent where it is; str() says what would."""


@dataclass(frozen=True)
class Halt:
    """Stop the running download (nothing more asked, sent or served); whoever waits on it is told *why*."""

    why: str


@dataclass(frozen=True)
class Withdraw:
    """WITHDRAW at the torrent's tracker (and forget any OWN not sent yet)."""


@dataclass(frozen=True)
class Unshare:
    """Stop serving the complete file, and forget it in .seeding.json (no sharing after a restart)."""


@dataclass(frozen=True)
class Hold:
    """Keep the download's verified pieces, marked *state* in .incomplete/: listed, not resumed at a start."""

    state: str


@dataclass(frozen=True)
class Start:
    """Take the download out of the held ones and start it again from its verified pieces."""


@dataclass(frozen=True)
class ForgetPartial:
    """No longer the node's download: its torrent copy and marker go; its pieces too unless *keep_pieces*."""

    keep_pieces: bool


@dataclass(frozen=True)
class DeleteData:
    """Delete the shared file or folder (only inside the node's folder: checked before anything is done)."""


@dataclass(frozen=True)
class Nothing:
    """Nothing to do: *text* says why."""

    text: str


#: How each verb's answer starts: "paused big.bin: ...".
PAST = {"pause": "paused", "resume": "resumed", "cancel": "cancelled", "stop-seeding": "stopped seeding",
        "remove": "removed"}

Action = Halt | Withdraw | Unshare | Hold | Start | ForgetPartial | DeleteData | Nothing


def plan(verb: str, where: str, name: str, delete: bool = False) -> list[Action]:
    """The actions *verb* takes on torrent *name*, which is *where* (SEEDING, DOWNLOADING, PAUSED, CANCELLED),
    in order; Refused when the verb does not apply there.

    A download is stopped before it is withdrawn (else its next progress report would announce it
    again); a seeded file is withdrawn before it stops being served (so no peer is sent to us for it in
    between).
    """
    held = where in HELD_STATES
    if verb == "pause":
        if where == DOWNLOADING:
            return [Halt(f"{name}: paused by the operator"), Hold(PAUSED), Withdraw()]
        if where == PAUSED:
            return [Nothing(f"{name} is paused already")]
        if where == CANCELLED:
            return [Hold(PAUSED)]
        raise Refused(f"{name} is complete: nothing to pause (stop-seeding stops serving it)")
    if verb == "resume":
        if held:
            return [Start()]
        if where == DOWNLOADING:
            return [Nothing(f"{name} is not paused: it is downloading")]
        return [Nothing(f"{name} is complete and seeded: nothing to resume")]
    if verb == "cancel":
        if where == SEEDING:
            raise Refused(f"{name} is complete: nothing to cancel (stop-seeding or remove)")
        halt: list[Action] = [Halt(f"{name}: cancelled by the operator")] if where == DOWNLOADING else []
        return [*halt, Withdraw(), ForgetPartial(keep_pieces=False) if delete else Hold(CANCELLED)]
    if verb == "stop-seeding":
        if where != SEEDING:
            raise Refused(f"{name} is not seeded: it is {where} (pause, cancel or remove it)")
        return [Withdraw(), Unshare()]
    if verb == "remove":
        if where == SEEDING:
            return [Withdraw(), Unshare(), *([DeleteData()] if delete else [])]
        halt = [Halt(f"{name}: removed by the operator")] if where == DOWNLOADING else []
        return [*halt, Withdraw(), ForgetPartial(keep_pieces=not delete)]
    raise Refused(f"unknown verb {verb!r}")


class UploadMeter:
    """Upload rates per torrent from its running byte count, marked once a second (pure: *now* is given)."""

    def __init__(self, span: int = RATE_SPAN) -> None:
        self._marks: deque[tuple[float, dict[bytes, int]]] = deque(maxlen=span)

    def mark(self, now: float, uploaded: dict[bytes, int]) -> None:
        self._marks.append((now, dict(uploaded)))

    def rate(self, info_hash: bytes) -> float:
        """Bytes a second over the marks held (0 until two marks)."""
        if len(self._marks) < 2:
            return 0.0
        (then, before), (now, after) = self._marks[0], self._marks[-1]
        if now <= then or info_hash not in after:
            return 0.0
        return max(0, after[info_hash] - before.get(info_hash, after[info_hash])) / (now - then)


@dataclass
class Held:
    """A download that is not running because the operator paused or cancelled it."""

    meta: Metainfo
    torrent: bytes
    #: The torrent the user named (None when found in .incomplete/ as the node started).
    torrent_path: str | None
    state: str
    #: Bytes of the pieces verified, as recorded (re-verified when it resumes).
    done: int


# ---- files in .incomplete/

def recorded_bytes(folder: Path, meta: Metainfo) -> int:
    """Bytes of the pieces a download's record names (not re-verified: for display only)."""
    pieces = read_record(record_path(folder, meta.info_hash), meta) or []
    return sum(meta.piece_size(p) for p in set(pieces))


def held_path(folder: Path, info_hash: bytes) -> Path:
    return Path(folder) / INCOMPLETE / f"{info_hash.hex()}.held"


def read_held(folder: Path, info_hash: bytes) -> str | None:
    """``paused`` or ``cancelled`` if the download is held, else None (an unreadable marker holds it paused)."""
    try:
        text = held_path(folder, info_hash).read_text().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return PAUSED
    return text if text in HELD_STATES else PAUSED


def write_held(folder: Path, info_hash: bytes, state: str) -> None:
    path = held_path(folder, info_hash)
    path.parent.mkdir(exist_ok=True)
    path.write_text(state + "\n")


def clear_held(folder: Path, info_hash: bytes) -> None:
    try:
        held_path(folder, info_hash).unlink()
    except FileNotFoundError:
        pass


def forget_partial(folder: Path, info_hash: bytes, keep_pieces: bool) -> None:
    """The download is no longer the node's: its torrent copy and marker go (so no restart resumes it);
    its part file and record too unless *keep_pieces* (a later ``download`` of it then resumes from them)."""
    incomplete = Path(folder) / INCOMPLETE
    names = [".torrent", ".held"] + ([] if keep_pieces else [".have", ".part"])
    for suffix in names:
        path = incomplete / f"{info_hash.hex()}{suffix}"
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                shutil.rmtree(path)  # a folder torrent's part folder (links in it removed, never followed)
            else:
                path.unlink()
        except FileNotFoundError:
            pass


def inside(folder: Path, path: Path) -> bool:
    """Is *path* strictly below *folder* (links resolved)?  Only there may ``--delete-data`` delete."""
    try:
        resolved, root = path.resolve(), folder.resolve()
    except (OSError, RuntimeError):
        return False
    return resolved != root and resolved.is_relative_to(root)


def delete_data(path: Path) -> None:
    """Delete a shared file or folder (blocking: a large tree takes time)."""
    if stat.S_ISDIR(os.lstat(path).st_mode):
        shutil.rmtree(path)
    else:
        path.unlink()


def job_state(text: str, peers: int, choked: int, down_rate: float) -> str:
    """The one word (or few) ``list`` shows for a running download, from its state text and its swarm."""
    if text.startswith("checking"):
        return "checking"
    if text.startswith("waiting"):
        return "waiting for the tracker"
    if text == "downloading":
        if peers == 0:
            return "stalled: no peers"
        if down_rate <= 0 and choked == peers:
            return "stalled: choked by every peer"
    return text
