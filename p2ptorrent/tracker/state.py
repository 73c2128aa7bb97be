"""The tracker's decisions: who is in the swarm, who owns what, who is ranked first.

Everything here is pure: no sockets, no files, no clock and no logging.  Time
comes in as ``now`` and randomness from an injected :class:`random.Random`, so
the rules of ``docs/tracker-http.md`` are tested directly, without HTTP.

:func:`parse_request` turns a request body into one of the typed requests
below or raises :class:`TrackerError` (400); :class:`SwarmState` applies a
request or raises :class:`TrackerError` with the status the spec names, and a
refused request changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from itertools import islice
from typing import Any, Iterable, Mapping, TypedDict, TypeGuard, Union

from p2ptorrent.config import MAX_NODE_ID, Config
from p2ptorrent.metainfo import MAX_LENGTH, MAX_NAME_BYTES
from p2ptorrent.tracker.weighted import WeightedSet

#: Most uploaders one UPDATE may list.
MAX_UPLOADERS = 1000
#: Most pieces a file may have (OWN's ``pieces``; ``have`` counts up to it).
MAX_PIECES = 2**31
#: Version of the database documents written by :meth:`SwarmState.snapshot`.
DB_VERSION = 1
#: Random bytes in a token the tracker makes, and in one a node proposes (as hex digits, twice as many).
TOKEN_BYTES = 16
#: Lengths of a token a joining node may propose (lowercase hex; 32 digits are 128 random bits).
PROPOSED_TOKEN_DIGITS = (2 * TOKEN_BYTES, 128)

_HEX = frozenset("0123456789abcdef")


class TrackerError(Exception):
    """A refused request: the HTTP status to answer and a reason a person can read."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"TrackerError({self.status}, {self.message!r})"


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class Register:
    """REGISTER: join (no token or an unknown node) or heartbeat (known node and its token)."""

    node_id: int
    port: int
    token: str | None


@dataclass(frozen=True)
class Own:
    """OWN: the node has the file, or (``have < pieces``) verified part of it and shares that part."""

    node_id: int
    token: str | None
    info_hash: str
    name: str
    length: int
    have: int | None = None
    pieces: int | None = None

    @property
    def partial(self) -> bool:
        return self.have is not None and self.pieces is not None and self.have < self.pieces


#: Why a node withdraws, when it says (OWN's optional ``reason``): what its operator did, for the tracker's events.
WITHDRAW_REASONS = ("paused", "cancelled", "stopped seeding", "removed", "failed")


@dataclass(frozen=True)
class Withdraw:
    """OWN with ``withdraw: true``: the node no longer has any of the file (a download failed or was stopped).

    *reason* (one of :data:`WITHDRAW_REASONS`, or empty) only names the event: a paused node is withdrawn
    like any other, so NEED never sends anyone to a node that serves nothing.
    """

    node_id: int
    token: str | None
    info_hash: str
    reason: str = ""


@dataclass(frozen=True)
class Need:
    """NEED: up to ``numwant`` owners (None: NUMWANT, the most the tracker answers)."""

    node_id: int
    token: str | None
    info_hash: str
    numwant: int | None = None


@dataclass(frozen=True)
class Update:
    node_id: int
    token: str | None
    info_hash: str
    uploaders: tuple[int, ...]


@dataclass(frozen=True)
class Exit:
    node_id: int
    token: str | None


Request = Union[Register, Own, Withdraw, Need, Update, Exit]


def parse_request(body: bytes, settings: Config) -> Request:
    """Decode and validate one request body, or raise ``TrackerError(400, why)``.

    Only types and ranges are checked here; whether the node exists or the
    token is right is :class:`SwarmState`'s business.  A missing token is not a
    400: the spec answers it with 403 once the node is known, so it parses as
    ``None``.  Unknown extra fields are ignored so that newer nodes can talk to
    this tracker.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise TrackerError(400, "body is not UTF-8 text") from None
    try:
        doc = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise TrackerError(400, "body is not valid JSON: nested too deeply") from None
    except ValueError as e:
        raise TrackerError(400, f"body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise TrackerError(400, f"body must be a JSON object, got {_json_kind(doc)}")

    code = _integer(doc, "mode", -(2**63), 2**63)
    mode = settings.mode_name(code)
    if mode is None:
        known = ", ".join(f"{v} {k}" for k, v in sorted(settings.tracker_requests_mode.items(), key=lambda kv: kv[1]))
        raise TrackerError(400, f"unknown mode {code} (known: {known})")

    node_id = _integer(doc, "node_id", 0, MAX_NODE_ID)
    token = _token(doc)
    if mode == "REGISTER":
        return Register(node_id, _integer(doc, "port", 1, 65535), token)
    if mode == "EXIT":
        return Exit(node_id, token)
    info_hash = _info_hash(doc)
    if mode == "OWN":
        if _withdraw(doc):
            return Withdraw(node_id, token, info_hash, _reason(doc))
        name, length = _name(doc), _integer(doc, "length", 0, MAX_LENGTH)
        return Own(node_id, token, info_hash, name, length, *_progress(doc))
    if mode == "NEED":
        return Need(node_id, token, info_hash, _numwant(doc, settings))
    assert mode == "UPDATE", mode
    return Update(node_id, token, info_hash, _uploaders(doc))


def _refuse_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity, which are not JSON.
    raise ValueError(f"{name} is not a JSON value")


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _field(doc: Mapping[str, Any], name: str) -> Any:
    if name not in doc:
        raise TrackerError(400, f"missing field {name!r}")
    return doc[name]


def is_json_int(value: Any) -> bool:
    """Whether a decoded JSON value is an integer (bool is an int in Python, but true and false are not numbers)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_info_hash_hex(value: str) -> bool:
    """Whether *value* is an info hash as the tracker's messages spell it: 40 lowercase hexadecimal digits."""
    return len(value) == 40 and _HEX.issuperset(value)


def _integer(doc: Mapping[str, Any], name: str, low: int, high: int) -> int:
    value = _field(doc, name)
    if not is_json_int(value):
        raise TrackerError(400, f"field {name!r} must be an integer, got {_json_kind(value)}")
    if not low <= value <= high:
        raise TrackerError(400, f"field {name!r} must be {low}..{high}, got {_short(value)}")
    return int(value)


def _token(doc: Mapping[str, Any]) -> str | None:
    token = doc.get("token")
    if token is None:
        return None
    if not isinstance(token, str):
        raise TrackerError(400, f"field 'token' must be a string, got {_json_kind(token)}")
    return token


def _info_hash(doc: Mapping[str, Any]) -> str:
    value = _field(doc, "info_hash")
    if not isinstance(value, str):
        raise TrackerError(400, f"field 'info_hash' must be a string, got {_json_kind(value)}")
    if not is_info_hash_hex(value):
        raise TrackerError(400, "field 'info_hash' must be 40 lowercase hexadecimal digits")
    return value


def _name(doc: Mapping[str, Any]) -> str:
    value = _field(doc, "name")
    if not isinstance(value, str):
        raise TrackerError(400, f"field 'name' must be a string, got {_json_kind(value)}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        # JSON can spell lone surrogates (\ud800) that no file name can hold.
        raise TrackerError(400, "field 'name' is not valid Unicode text") from None
    if not 1 <= size <= MAX_NAME_BYTES:
        raise TrackerError(400, f"field 'name' must be 1..{MAX_NAME_BYTES} UTF-8 bytes, got {size}")
    return value


def _withdraw(doc: Mapping[str, Any]) -> bool:
    """Whether an OWN withdraws the ownership; a withdrawal needs no name or length."""
    if "withdraw" not in doc:
        return False
    value = doc["withdraw"]
    if not isinstance(value, bool):
        raise TrackerError(400, f"field 'withdraw' must be a boolean, got {_json_kind(value)}")
    if value and ("have" in doc or "pieces" in doc):
        # Contradictory: gone and still downloading.  Guessing which one is meant could keep a
        # node listed as an owner of pieces it has deleted.
        raise TrackerError(400, "field 'withdraw' cannot come with 'have' or 'pieces'")
    return value


def _reason(doc: Mapping[str, Any]) -> str:
    """A withdrawal's optional ``reason``: one of WITHDRAW_REASONS (anything else is refused, not shown)."""
    value = doc.get("reason", "")
    if value not in WITHDRAW_REASONS and value != "":
        raise TrackerError(400, f"field 'reason' must be one of {', '.join(WITHDRAW_REASONS)}")
    return str(value)


def _progress(doc: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """OWN's optional (have, pieces): both or neither, 0 <= have <= pieces, pieces >= 1."""
    present = [name for name in ("have", "pieces") if name in doc]
    if not present:
        return None, None
    if len(present) == 1:
        other = "pieces" if present[0] == "have" else "have"
        raise TrackerError(400, f"field {present[0]!r} needs {other!r}: send both or neither")
    have = _integer(doc, "have", 0, MAX_PIECES)
    pieces = _integer(doc, "pieces", 1, MAX_PIECES)
    if have > pieces:
        raise TrackerError(400, f"field 'have' ({have}) cannot exceed 'pieces' ({pieces})")
    return have, pieces


def _numwant(doc: Mapping[str, Any], settings: Config) -> int | None:
    """NEED's optional ``numwant``: a node may ask for fewer owners than NUMWANT, never more."""
    if "numwant" not in doc:
        return None
    return _integer(doc, "numwant", 1, settings.NUMWANT)


def _uploaders(doc: Mapping[str, Any]) -> tuple[int, ...]:
    value = _field(doc, "uploaders")
    if not isinstance(value, list):
        raise TrackerError(400, f"field 'uploaders' must be an array of node ids, got {_json_kind(value)}")
    if len(value) > MAX_UPLOADERS:
        raise TrackerError(400, f"field 'uploaders' lists {len(value)} nodes, at most {MAX_UPLOADERS} allowed")
    seen: dict[int, None] = {}
    for item in value:
        if not is_json_int(item) or not 0 <= item <= MAX_NODE_ID:
            raise TrackerError(400, f"field 'uploaders' must hold node ids 0..{MAX_NODE_ID}, got {_short(item)}")
        seen[int(item)] = None
    return tuple(seen)  # duplicates removed, order kept


# ---------------------------------------------------------------- answers


@dataclass(frozen=True)
class Registration:
    """What REGISTER answers.  ``token`` is the node's secret: never log it."""

    node_id: int
    token: str
    new: bool
    host: str
    port: int
    #: The first REGISTER of a node read back from the database since the tracker started.
    returned: bool = False


class OwnChange(Enum):
    """What an accepted OWN changed: the HTTP layer logs by it, and only news is persisted."""

    #: A new owner of the whole file.
    NEW = "new"
    #: A new partial owner (still downloading, serving what it verified).
    NEW_PARTIAL = "new partial"
    #: A partial owner that now has the whole file.
    COMPLETED = "completed"
    #: A complete owner announcing only part of the file again (it lost pieces and downloads anew).
    NOW_PARTIAL = "now partial"
    #: A partial owner's progress, kept in memory only: nodes announce it every few seconds.
    PROGRESS = "progress"
    #: A complete owner announcing again: nothing changes.
    KNOWN = "known"

    @property
    def saved(self) -> bool:
        return self not in (OwnChange.PROGRESS, OwnChange.KNOWN)


@dataclass(frozen=True)
class OwnerInfo:
    node_id: int
    host: str
    port: int
    frequency: int
    #: Still downloading: serves only the ``have`` of ``pieces`` pieces it verified so far.
    partial: bool = False
    have: int | None = None
    pieces: int | None = None

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "node_id": self.node_id, "host": self.host, "port": self.port, "frequency": self.frequency,
            "partial": self.partial,
        }
        if self.partial:
            doc["have"], doc["pieces"] = self.have, self.pieces
        return doc


@dataclass(frozen=True)
class NodeRow:
    """A live node as the web page shows it (no token, no digest)."""

    node_id: int
    host: str
    port: int
    frequency: int
    files: int
    last_seen: float


@dataclass(frozen=True)
class FileRow:
    """A known file as the web page shows it: how many owners have it whole, and how many in part."""

    info_hash: str
    name: str
    length: int
    complete: int
    partial: int


@dataclass(frozen=True)
class NeedResult:
    info_hash: str
    name: str | None
    owners: list[OwnerInfo]

    @property
    def ranking(self) -> list[int]:
        return [o.node_id for o in self.owners]


# ---------------------------------------------------------------- the state


class _Node(TypedDict):
    """A node as the tracker holds it: a plain dict, which the garbage collector never tracks (it holds only
    numbers and strings), so 100k of them add nothing to a full collection; as objects they made each one
    take 100 ms or more at 100k nodes, a stall of every request in flight."""

    node_id: int
    host: str
    port: int
    frequency: int
    token_sha256: str
    last_seen: float
    #: Liveness checks the tracker had made when this node last sent a REGISTER (or was read back).
    epoch: int
    #: Sent a REGISTER to this tracker process (False for nodes read back from the database).
    heard: bool


def _new_node(node_id: int, host: str, port: int, frequency: int, token_sha256: str, last_seen: float, epoch: int,
              heard: bool = True) -> _Node:
    return {"node_id": node_id, "host": host, "port": port, "frequency": frequency, "token_sha256": token_sha256,
            "last_seen": last_seen, "epoch": epoch, "heard": heard}


@dataclass
class _File:
    info_hash: str
    name: str
    length: int
    #: Every owner, partial ones included, weighted 1 + upload frequency for NEED's draw.
    owners: WeightedSet = field(default_factory=WeightedSet)
    #: Partial owners (a subset of ``owners``) -> (have, pieces), with have < pieces.
    partial: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: downloader -> uploaders it has credited for this file (each at most once).
    credits: dict[int, set[int]] = field(default_factory=dict)
    #: The same credits by uploader (uploader -> downloaders), so dropping a node visits only its own.
    credited: dict[int, set[int]] = field(default_factory=dict)

    def involves(self, node_id: int) -> bool:
        """Whether the node owns this file or gave or got credits for it (what ``_files_of`` indexes)."""
        return node_id in self.owners or node_id in self.credits or node_id in self.credited

    def empty(self) -> bool:
        return not self.owners and not self.credits


class TokenDigest(str):
    """The SHA-256 (hex) of a token, standing in for the token itself.

    The shared change log of the Redis store carries these, never a token:
    a tracker replaying a change checks it against the node's digest as it
    would check the token.
    """


def token_digest(token: str) -> TokenDigest:
    """The digest the tracker keeps of a token (a :class:`TokenDigest` is its own digest)."""
    if isinstance(token, TokenDigest):
        return token
    # surrogatepass: a token is whatever string the node sent; hashing must not fail on it.
    return TokenDigest(hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest())


def proposed_token(token: str | None) -> TypeGuard[str]:
    """Whether a joining node's token is one the tracker adopts: enough lowercase hex digits."""
    low, high = PROPOSED_TOKEN_DIGITS
    return (
        token is not None and not isinstance(token, TokenDigest)
        and low <= len(token) <= high and _HEX.issuperset(token)
    )


def _digest(token: str) -> str:
    return str(token_digest(token))


class SwarmState:
    """Swarm membership, ownerships and upload frequencies, with the spec's rules.

    ``revision`` grows whenever something that is persisted changes, so the I/O
    layer saves exactly when needed (not on a heartbeat that changes nothing).
    A partial owner's progress is the one exception: it is in the snapshot but
    does not grow the revision, so it reaches the disk with the next save.

    No request and no dropped node costs time in proportion to every node or
    every file (100k nodes is the size aimed at): nodes are kept in the order
    of their last REGISTER, so liveness finds the silent ones at the front;
    ``_files_of`` indexes each node's files, so dropping a node visits only
    those; and each file's owners sit in a :class:`WeightedSet`, so NEED draws
    NUMWANT of them in O(NUMWANT log owners).
    """

    def __init__(self, settings: Config, rng: random.Random) -> None:
        self.settings = settings
        self._rng = rng
        #: Live nodes, oldest REGISTER first (moved to the end on each one).
        self._nodes: OrderedDict[int, _Node] = OrderedDict()
        self._files: dict[str, _File] = {}
        #: node -> info hashes of the files it owns (whole or in part) or gave or got credits for.
        self._files_of: dict[int, set[str]] = {}
        #: Live node records per host, for TRACKER_MAX_NODES_PER_HOST.
        self._per_host: dict[str, int] = {}
        self.revision = 0
        #: Nodes and files whose persisted entry changed since the store last took them (see take_dirty()).
        self._dirty_nodes: set[int] = set()
        self._dirty_files: set[str] = set()
        #: When the last liveness check ran (None before the first).
        self.last_check: float | None = None
        #: Liveness checks so far; a node's ``epoch`` is this count at its last REGISTER.
        self._checks = 0
        #: Keep the nodes whose epoch changed (see take_epochs()): the Redis store saves epochs, so that
        #: every tracker sharing a swarm drops the same nodes at the same check.
        self.track_epochs = False
        self._epochs_changed: set[int] = set()

    # ---- reading

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def node_ids(self) -> list[int]:
        return sorted(self._nodes)

    def info_hashes(self) -> list[str]:
        return list(self._files)

    def owner_info(self, node_id: int) -> OwnerInfo | None:
        node = self._nodes.get(node_id)
        return None if node is None else OwnerInfo(node["node_id"], node["host"], node["port"], node["frequency"])

    def has_file(self, info_hash: str) -> bool:
        return info_hash in self._files

    def owners(self, info_hash: str) -> frozenset[int]:
        file = self._files.get(info_hash)
        return frozenset() if file is None else frozenset(file.owners)

    def progress(self, info_hash: str, node_id: int) -> tuple[int, int] | None:
        """(have, pieces) of a partial owner; None for a complete owner or a non-owner."""
        file = self._files.get(info_hash)
        return None if file is None else file.partial.get(node_id)

    @property
    def checks(self) -> int:
        """Liveness checks made so far (a node's epoch is this count at its last REGISTER)."""
        return self._checks

    def epoch(self, node_id: int) -> int | None:
        node = self._nodes.get(node_id)
        return None if node is None else node["epoch"]

    def take_epochs(self) -> set[int]:
        """Live nodes whose epoch changed since the last call (with ``track_epochs``)."""
        taken, self._epochs_changed = self._epochs_changed, set()
        return taken

    def summary(self) -> dict[str, int]:
        return {"nodes": len(self._nodes), "files": len(self._files)}

    # ---- reading for the web page and the metrics (view.py): a page costs its rows, never the whole swarm

    def recent_nodes(self, offset: int, limit: int) -> list[NodeRow]:
        """Live nodes, last REGISTER first (the order the state keeps them in: no sort over 100k nodes)."""
        rows = []
        for node in islice(reversed(self._nodes.values()), offset, offset + limit):
            node_id = node["node_id"]
            # (the node's index also holds files it only gave or got credits for)
            owned = sum(1 for h in self._files_of.get(node_id, ()) if node_id in self._files[h].owners)
            rows.append(NodeRow(node_id, node["host"], node["port"], node["frequency"], owned, node["last_seen"]))
        return rows

    def recent_files(self, offset: int, limit: int) -> list[FileRow]:
        """Known files, newest first (the order they became known in)."""
        return [_file_row(f) for f in islice(reversed(self._files.values()), offset, offset + limit)]

    def file_row(self, info_hash: str) -> FileRow | None:
        file = self._files.get(info_hash)
        return None if file is None else _file_row(file)

    def file_owners(self, info_hash: str, offset: int, limit: int) -> list[OwnerInfo]:
        """A page of a file's owners, partial ones with their progress (in the owner set's order)."""
        file = self._files.get(info_hash)
        if file is None:
            return []
        owners = []
        for owner in islice(file.owners, offset, offset + limit):
            n = self._nodes[owner]
            progress = file.partial.get(owner)
            if progress is None:
                owners.append(OwnerInfo(owner, n["host"], n["port"], n["frequency"]))
            else:
                owners.append(OwnerInfo(owner, n["host"], n["port"], n["frequency"], True, *progress))
        return owners

    def ownerships(self) -> tuple[int, int]:
        """(owners, partial owners) summed over files: O(files), for a metrics scrape, not for requests."""
        owners = partial = 0
        for file in self._files.values():
            owners += len(file.owners)
            partial += len(file.partial)
        return owners, partial

    def nodes_from(self, host: str) -> int:
        """How many live node records have this address."""
        return self._per_host.get(host, 0)

    # ---- requests

    def register(
        self, node_id: int, host: str, port: int, token: str | None, now: float, fresh_token: str | None = None,
    ) -> Registration:
        """Join afresh (unknown node) or heartbeat (known node, right token).

        A joining node may propose its token (see :func:`proposed_token`); the
        tracker then adopts it, so a join whose answer was lost can be sent
        again as is and is taken as the heartbeat it now is.  Otherwise it gets
        *fresh_token*, or a new random one: a change replayed from the shared
        log names the token (as a digest) so that every tracker agrees.
        """
        node = self._nodes.get(node_id)
        if node is None:
            self._check_room(host)
            fresh = token if proposed_token(token) else fresh_token or secrets.token_hex(TOKEN_BYTES)
            self._nodes[node_id] = _new_node(node_id, host, port, 0, _digest(fresh), last_seen=now, epoch=self._checks)
            self._count(host, +1)
            self.revision += 1
            self._dirty_nodes.add(node_id)
            return Registration(node_id, fresh, True, host, port)
        self._authenticate(node, token)
        if node["host"] != host:
            self._check_room(host)
        returned = not node["heard"]
        node["heard"] = True
        node["last_seen"] = now
        if node["epoch"] != self._checks:
            node["epoch"] = self._checks
            if self.track_epochs:
                self._epochs_changed.add(node_id)
        self._nodes.move_to_end(node_id)
        if (node["host"], node["port"]) != (host, port):
            # The node moved (new UDP port, new address behind a NAT): peers must learn it.
            self._count(node["host"], -1)
            self._count(host, +1)
            node["host"], node["port"] = host, port
            self.revision += 1
            self._dirty_nodes.add(node_id)
        assert token is not None
        return Registration(node_id, token, False, host, port, returned)

    def own(
        self,
        node_id: int,
        token: str | None,
        info_hash: str,
        name: str,
        length: int,
        have: int | None = None,
        pieces: int | None = None,
    ) -> OwnChange:
        """Record that the node seeds a file, whole or (``have < pieces``) in part.

        Only a change of who owns and whether in part grows the revision: a
        partial owner's progress is announced every few seconds, and saving
        each one would rewrite files.json all the time for nothing a restart
        needs (the node announces its progress again).
        """
        node = self._known(node_id, token)
        file = self._files.get(info_hash)
        if file is not None and file.length != length:
            # An info hash pins the content, so a different length is a bug or a lie.
            raise TrackerError(409, f"info_hash {info_hash} is known with length {file.length}, not {length}")
        if file is None:
            file = self._files[info_hash] = _File(info_hash, name, length)
        partial = have is not None and pieces is not None and have < pieces
        owned = node["node_id"] in file.owners
        was_partial = node["node_id"] in file.partial
        if partial:
            assert have is not None and pieces is not None
            file.partial[node["node_id"]] = (have, pieces)
        else:
            file.partial.pop(node["node_id"], None)
        if not owned:
            file.owners.add(node["node_id"], 1 + node["frequency"])
            self._files_of.setdefault(node["node_id"], set()).add(info_hash)
            change = OwnChange.NEW_PARTIAL if partial else OwnChange.NEW
        elif was_partial:
            change = OwnChange.PROGRESS if partial else OwnChange.COMPLETED
        else:
            change = OwnChange.NOW_PARTIAL if partial else OwnChange.KNOWN
        if change.saved:
            self.revision += 1
        if change is not OwnChange.KNOWN:
            self._dirty_files.add(info_hash)  # progress too: it goes with the next commit
        return change

    def withdraw(self, node_id: int, token: str | None, info_hash: str) -> bool:
        """The node no longer has the file; True if it was an owner.

        Its credits and upload frequency stay: they record uploads that did
        happen, and UPDATE only credits current owners anyway.
        """
        self._known(node_id, token)
        file = self._files.get(info_hash)
        if file is None or node_id not in file.owners:
            return False
        file.owners.discard(node_id)
        file.partial.pop(node_id, None)
        self._untie(node_id, file)
        if file.empty():
            del self._files[info_hash]
        self.revision += 1
        self._dirty_files.add(info_hash)
        return True

    def need(self, node_id: int, token: str | None, info_hash: str, numwant: int | None = None) -> NeedResult:
        """Up to NUMWANT (or *numwant*) live owners other than the asker, drawn by weight.

        The draw is the first NUMWANT of the old ranking of every owner, with
        the same chances: each next owner with chance (1 + its upload
        frequency) / (the weight of the owners not drawn yet).
        """
        self._known(node_id, token)
        file = self._files.get(info_hash)
        if file is None:
            return NeedResult(info_hash, None, [])
        wanted = self.settings.NUMWANT if numwant is None else min(numwant, self.settings.NUMWANT)
        # Partial owners are drawn together with complete ones: a downloader that is ahead
        # spreads the load, and frequency alone says who has served well.
        owners: list[OwnerInfo] = []
        for owner in file.owners.draw(self._rng, wanted, exclude=node_id):
            n = self._nodes[owner]
            progress = file.partial.get(owner)
            if progress is None:
                owners.append(OwnerInfo(n["node_id"], n["host"], n["port"], n["frequency"]))
            else:
                owners.append(OwnerInfo(n["node_id"], n["host"], n["port"], n["frequency"], True, *progress))
        return NeedResult(info_hash, file.name, owners)

    def update(self, node_id: int, token: str | None, info_hash: str, uploaders: Iterable[int]) -> list[int]:
        """Credit live owners that uploaded to the node, once per (downloader, file, uploader)."""
        self._known(node_id, token)
        listed = list(dict.fromkeys(uploaders))
        if node_id in listed:
            raise TrackerError(400, "a node cannot credit itself")
        file = self._files.get(info_hash)
        if file is None:
            return []
        given = file.credits.get(node_id, set())
        credited: list[int] = []
        for uploader in listed:
            if uploader in given or uploader not in file.owners or uploader not in self._nodes:
                continue
            given.add(uploader)
            file.credited.setdefault(uploader, set()).add(node_id)
            self._credit(self._nodes[uploader])
            credited.append(uploader)
        if credited:
            file.credits[node_id] = given
            self._files_of.setdefault(node_id, set()).add(info_hash)
            self.revision += 1
            self._dirty_nodes.update(credited)
            self._dirty_files.add(info_hash)
        return credited

    def exit(self, node_id: int, token: str | None) -> None:
        """Forget the node, its ownerships and credits, as liveness would."""
        self._known(node_id, token)
        self._drop(node_id)

    # ---- liveness

    def check_liveness(self, now: float) -> list[int]:
        """One whole liveness check: :meth:`start_check`, then every drop it calls for at once."""
        self.start_check(now)
        return sorted(self.drop_silent())

    def start_check(self, now: float) -> None:
        """Count one liveness check; nodes silent across TRACKER_MISSED_CHECKS checks are now due.

        The rule counts checks, not seconds (as the spec says), so ``now`` only
        dates the check; a node is dropped between MISSED_CHECKS and
        MISSED_CHECKS + 1 check intervals after its last REGISTER.  Nothing is
        dropped here: :meth:`drop_silent` does it, as many at a time as the
        caller likes.
        """
        self.last_check = now
        self._checks += 1

    def has_silent(self) -> bool:
        """Whether a node is due to be dropped (it sent no REGISTER across the last MISSED_CHECKS checks)."""
        return bool(self._nodes) and self._silent(next(iter(self._nodes.values())))

    def drop_silent(self, budget: int | None = None) -> list[int]:
        """Drop due nodes, longest silent first, until *budget* is spent (None: all of them).

        Dropping a node costs 1 plus 1 per file it owns or credited, so a
        budget bounds the time taken whatever the nodes hold; at least one due
        node is dropped.  A node that sent a REGISTER since the check is not
        due any more.
        """
        dropped: list[int] = []
        spent = 0
        while self.has_silent():
            node_id = next(iter(self._nodes))
            cost = 1 + len(self._files_of.get(node_id, ()))
            if budget is not None and dropped and spent + cost > budget:
                break
            spent += cost
            self._drop(node_id)
            dropped.append(node_id)
        return dropped

    # ---- persistence

    def snapshot(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The persisted part of the state as (nodes.json, files.json) documents."""
        nodes = [_node_entry(n) for n in sorted(self._nodes.values(), key=lambda n: n["node_id"])]
        files = [_file_entry(f) for f in sorted(self._files.values(), key=lambda f: f.info_hash)]
        return {"version": DB_VERSION, "nodes": nodes}, {"version": DB_VERSION, "files": files}

    def node_entry(self, node_id: int) -> dict[str, Any] | None:
        """The node's entry in nodes.json (None: it is gone)."""
        node = self._nodes.get(node_id)
        return None if node is None else _node_entry(node)

    def file_entry(self, info_hash: str) -> dict[str, Any] | None:
        """The file's entry in files.json (None: it is gone)."""
        file = self._files.get(info_hash)
        return None if file is None else _file_entry(file)

    def all_rows(self) -> tuple[dict[int, dict[str, Any]], dict[str, dict[str, Any]]]:
        """Every entry, by key (to fill a new database)."""
        self.take_dirty()
        return ({i: _node_entry(n) for i, n in self._nodes.items()}, {h: _file_entry(f) for h, f in self._files.items()})

    @property
    def dirty(self) -> bool:
        """Did a persisted entry change since the store last took the changes?"""
        return bool(self._dirty_nodes or self._dirty_files)

    def take_dirty(self) -> tuple[set[int], set[str]]:
        """The nodes and files whose entries changed since the last call (the store writes those)."""
        taken = self._dirty_nodes, self._dirty_files
        self._dirty_nodes, self._dirty_files = set(), set()
        return taken

    def mark_dirty(self, node_ids: Iterable[int], info_hashes: Iterable[str]) -> None:
        """These entries still need writing (a commit failed)."""
        self._dirty_nodes.update(node_ids)
        self._dirty_files.update(info_hashes)

    def restore(
        self, nodes_doc: Mapping[str, Any], files_doc: Mapping[str, Any], now: float,
        liveness: tuple[int, Mapping[int, int]] | None = None,
    ) -> list[str]:
        """Replace the state with saved documents; every node counts as seen at ``now``.

        Entries that do not make sense (hand edits, a newer format) are skipped
        and described in the returned list so the caller can log them; an
        empty document means an empty part.  *liveness*, the count of checks
        and each node's epoch as saved (the Redis store), takes the place of
        "seen now", so a tracker joining a shared swarm drops the same nodes
        as the others.
        """
        problems: list[str] = []
        nodes: OrderedDict[int, _Node] = OrderedDict()
        if liveness is not None:
            self._checks = liveness[0]
        for entry in _entries(nodes_doc, "nodes", problems):
            try:
                node = _new_node(
                    _checked_int(entry["node_id"], 0, MAX_NODE_ID),
                    _checked_str(entry["host"]),
                    _checked_int(entry["port"], 1, 65535),
                    _checked_int(entry["frequency"], 0, None),
                    _checked_sha256(entry["token_sha256"]),
                    last_seen=now,
                    epoch=self._checks,
                    heard=False,
                )
            except (KeyError, TypeError, ValueError) as e:
                problems.append(f"skipped node entry {_short(entry)}: {_why(e)}")
                continue
            if liveness is not None:
                node["epoch"] = min(liveness[1].get(node["node_id"], self._checks), self._checks)
                node["heard"] = True
            nodes[node["node_id"]] = node
        if liveness is not None:
            # Oldest REGISTER first, as the nodes' order must be (liveness looks at the front).
            nodes = OrderedDict(sorted(nodes.items(), key=lambda kv: kv[1]["epoch"]))
        files: dict[str, _File] = {}
        for entry in _entries(files_doc, "files", problems):
            try:
                info_hash = _checked_str(entry["info_hash"])
                if not is_info_hash_hex(info_hash):
                    raise ValueError("bad info_hash")
                file = _File(info_hash, _checked_str(entry["name"]), _checked_int(entry["length"], 0, MAX_LENGTH))
                for owner in entry["owners"]:
                    if _checked_int(owner, 0, MAX_NODE_ID) in nodes:
                        file.owners.add(owner, 1 + nodes[owner]["frequency"])
                # Absent in databases written before partial owners existed: everyone was complete.
                marks = entry.get("partial", [])
                if not isinstance(marks, list):
                    raise TypeError("'partial' is not a list")
                for mark in marks:
                    _restore_partial(file, mark, problems)
                for credit in entry.get("credits", []):
                    downloader = _checked_int(credit["downloader"], 0, MAX_NODE_ID)
                    given = {_checked_int(u, 0, MAX_NODE_ID) for u in credit["uploaders"]} & nodes.keys()
                    if downloader in nodes and given:
                        file.credits[downloader] = given
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                problems.append(f"skipped file entry {_short(entry)}: {_why(e)}")
                continue
            if not file.empty():
                files[info_hash] = file
        files_of: dict[int, set[str]] = {}
        for file in files.values():
            for downloader, given in file.credits.items():
                for uploader in given:
                    file.credited.setdefault(uploader, set()).add(downloader)
            for node_id in set(file.owners) | file.credits.keys() | file.credited.keys():
                files_of.setdefault(node_id, set()).add(file.info_hash)
        self._nodes = nodes
        self._files = files
        self._files_of = files_of
        self._dirty_nodes, self._dirty_files = set(), set()
        self._epochs_changed = set()
        # Nodes admitted before stay, even beyond a cap lowered since: they only block new ones.
        self._per_host = {}
        for node in nodes.values():
            self._count(node["host"], +1)
        return problems

    # ---- internals

    def _authenticate(self, node: _Node, token: str | None) -> None:
        if token is None:
            raise TrackerError(403, f"node {node['node_id']} is registered: its token is required")
        if not hmac.compare_digest(_digest(token), node["token_sha256"]):
            raise TrackerError(403, f"wrong token for node {node['node_id']}")

    def _check_room(self, host: str) -> None:
        cap = self.settings.TRACKER_MAX_NODES_PER_HOST
        if self._per_host.get(host, 0) >= cap:
            raise TrackerError(
                429,
                f"{host} already has {cap} live nodes, the most allowed from one address:"
                " EXIT one or wait until a silent one is dropped",
            )

    def _count(self, host: str, change: int) -> None:
        left = self._per_host.get(host, 0) + change
        if left > 0:
            self._per_host[host] = left
        else:
            self._per_host.pop(host, None)

    def _known(self, node_id: int, token: str | None) -> _Node:
        node = self._nodes.get(node_id)
        if node is None:
            raise TrackerError(404, f"unknown node {node_id}: REGISTER first")
        self._authenticate(node, token)
        return node

    def _silent(self, node: _Node) -> bool:
        # A REGISTER after check k - 1 (epoch k - 1) is seen by check k and missed by the next
        # MISSED_CHECKS, the last of them check k + MISSED_CHECKS, which drops the node.
        return node["epoch"] < self._checks - self.settings.TRACKER_MISSED_CHECKS

    def _credit(self, node: _Node) -> None:
        """One more upload credited to the node: its weight in every file it owns follows."""
        node["frequency"] += 1
        for info_hash in self._files_of.get(node["node_id"], ()):
            owners = self._files[info_hash].owners
            if node["node_id"] in owners:
                owners.add(node["node_id"], 1 + node["frequency"])

    def _untie(self, node_id: int, file: _File) -> None:
        """Take the file out of the node's index once the node no longer owns it or has credits in it."""
        if file.involves(node_id):
            return
        files = self._files_of.get(node_id)
        if files is not None:
            files.discard(file.info_hash)
            if not files:
                del self._files_of[node_id]

    def _drop(self, node_id: int) -> None:
        """Forget a node: O(its files and its credits), not of every file."""
        node = self._nodes.pop(node_id)
        self._count(node["host"], -1)
        self._dirty_nodes.add(node_id)
        self._epochs_changed.discard(node_id)
        for info_hash in self._files_of.pop(node_id, ()):
            # Every file in the node's index names it: each entry changes.
            self._dirty_files.add(info_hash)
            file = self._files[info_hash]
            file.owners.discard(node_id)
            file.partial.pop(node_id, None)
            for uploader in file.credits.pop(node_id, ()):
                downloaders = file.credited[uploader]
                downloaders.discard(node_id)
                if not downloaders:
                    del file.credited[uploader]
                self._untie(uploader, file)
            for downloader in file.credited.pop(node_id, ()):
                given = file.credits[downloader]
                given.discard(node_id)
                if not given:
                    del file.credits[downloader]
                self._untie(downloader, file)
            if file.empty():
                del self._files[info_hash]
        self.revision += 1


def _file_row(f: _File) -> FileRow:
    return FileRow(f.info_hash, f.name, f.length, len(f.owners) - len(f.partial), len(f.partial))


def _node_entry(n: _Node) -> dict[str, Any]:
    return {"node_id": n["node_id"], "host": n["host"], "port": n["port"], "frequency": n["frequency"],
            "token_sha256": n["token_sha256"]}


def _file_entry(f: _File) -> dict[str, Any]:
    return {
        "info_hash": f.info_hash,
        "name": f.name,
        "length": f.length,
        "owners": sorted(f.owners),
        # Progress goes with whatever save comes next; see own().
        "partial": [{"node_id": i, "have": have, "pieces": pieces} for i, (have, pieces) in sorted(f.partial.items())],
        "credits": [{"downloader": d, "uploaders": sorted(u)} for d, u in sorted(f.credits.items()) if u],
    }


def _restore_partial(file: _File, mark: Any, problems: list[str]) -> None:
    """Read back one ``partial`` record of a file entry.

    A record that makes no sense drops that ownership rather than guess: taken
    as complete, downloaders would ask the node for pieces it lacks.  A partial
    owner announces its progress every few seconds, so it is back soon.
    """
    try:
        node_id = _checked_int(mark["node_id"], 0, MAX_NODE_ID)
    except (KeyError, TypeError, ValueError) as e:
        problems.append(f"skipped partial owner {_short(mark)} of {file.info_hash}: {_why(e)}")
        return
    if node_id not in file.owners:
        return  # an owner that is not restored (a node gone), as for "owners"
    try:
        pieces = _checked_int(mark["pieces"], 1, MAX_PIECES)
        # Progress may be missing (it is not saved on every change): start from none.
        have = _checked_int(mark.get("have", 0), 0, pieces - 1)
    except (KeyError, TypeError, ValueError) as e:
        file.owners.discard(node_id)
        problems.append(f"dropped partial owner {_short(mark)} of {file.info_hash}: {_why(e)}")
        return
    file.partial[node_id] = (have, pieces)


def _entries(doc: Mapping[str, Any], key: str, problems: list[str]) -> list[Any]:
    if not doc:
        return []
    if not isinstance(doc, Mapping) or not isinstance(doc.get(key), list):
        problems.append(f"ignored a {key} document without a {key!r} list")
        return []
    if doc.get("version", DB_VERSION) != DB_VERSION:
        problems.append(f"ignored a {key} document of version {doc.get('version')!r} (this tracker reads {DB_VERSION})")
        return []
    entries = []
    for entry in doc[key]:
        if isinstance(entry, Mapping):
            entries.append(entry)
        else:
            problems.append(f"skipped {key} entry {_short(entry)}: not an object")
    return entries


def _checked_int(value: Any, low: int, high: int | None) -> int:
    if not is_json_int(value):
        raise TypeError(f"{value!r} is not an integer")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{value} is out of range")
    return int(value)


def _checked_str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{value!r} is not a non-empty string")
    return value


def _checked_sha256(value: Any) -> str:
    text = _checked_str(value)
    if len(text) != 64 or not _HEX.issuperset(text):
        raise ValueError("token_sha256 is not 64 lowercase hexadecimal digits")
    return text


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _why(e: Exception) -> str:
    return f"missing {e}" if isinstance(e, KeyError) else str(e)
