"""Fetching a torrent's info dict from its owners, for a download that has only a magnet link or info hash.

:class:`MetadataFetch` decides (pure: inputs named in the past tense, each with ``now``, return small
frozen actions): it asks one owner at a time, in the tracker's order::

    greeting --INFO answered--> fetching --all pieces in, SHA-1 is the info hash--> done
       |  (no answer: once more)    |
       +----------------------------+--silent, refused, lying, or the wrong dict--> next owner (or failed)

While fetching it keeps a few METADATA_REQs in flight (WINDOW), asks again those unanswered after the
request timeout (each with a fresh nonce; MAX_TRIES times, then the owner counts as silent), learns the
dict's size from the first answer and holds every owner to it.  A size claim of more than *max_size*, a
changed claim, or a piece of the wrong length drops that owner; so does a whole dict whose SHA-1 is not
the info hash (a peer lying, or serving another torrent): its pieces are thrown away and the next owner
starts afresh, since pieces from several peers could not say who lied.  Nothing is used before its
hash matches.  The whole fetch is bounded in time (*seconds*) and in bytes (*max_size*); a failure names
every owner tried and what became of it.

:class:`MetadataFetcher` is the I/O shell: it greets through the node's protocol (``ask_info``), sends,
takes the METADATA and ERROR answers the protocol routes to it (by info hash, from greeted addresses),
ticks on the injected clock, and fires a Deferred with the verified bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Protocol, Sequence, Union

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2ptorrent import wire

#: METADATA_REQs in flight to one owner: a few KiB, enough to fill a round trip for a typical dict.
WINDOW = 8
#: Sends of one METADATA_REQ (the first and the retries) before the owner counts as silent.
MAX_TRIES = 4
#: INFO requests to one owner before it counts as unreachable.
GREET_TRIES = 2
#: Times an owner may refuse our cookie (it restarted): it is greeted again, then dropped.
MAX_REGREETS = 1
#: Seconds a whole metadata fetch may take, all owners together.
METADATA_SECONDS = 60.0
#: How often the shell checks timeouts (seconds).
TICK = 0.1

Addr = Hashable


class MetadataError(Exception):
    """The info dict could not be fetched; str() says why, naming the owners tried."""


@dataclass(frozen=True)
class Greet:
    addr: Addr
    timeout: float


@dataclass(frozen=True)
class Send:
    datagram: bytes
    addr: Addr


@dataclass(frozen=True)
class Note:
    """Progress, for the person waiting."""

    text: str


@dataclass(frozen=True)
class Dropped:
    """An owner gave up on (logged; a lying one as a warning)."""

    addr: Addr
    node_id: int
    reason: str


@dataclass(frozen=True)
class Done:
    info: bytes


@dataclass(frozen=True)
class Failed:
    reason: str


Action = Union[Greet, Send, Note, Dropped, Done, Failed]


@dataclass
class _Request:
    piece: int
    sent_at: float
    tries: int = 1


@dataclass
class _Owner:
    addr: Addr
    node_id: int
    greets: int = 0
    #: An INFO request to it is out (answered or timed out once).
    greeting: bool = False
    regreets: int = 0
    cookie: bytes | None = None
    total: int | None = None
    pieces: dict[int, bytes] = field(default_factory=dict)
    #: Requests in flight, by nonce (a retry gets a fresh nonce; the old one is still taken if it answers).
    asked: dict[int, _Request] = field(default_factory=dict)
    #: Nonces asked again (a fresh one went out) or answered already, and their pieces: a late answer to one
    #: is taken, or counted late once its piece is in.
    retired: dict[int, int] = field(default_factory=dict)


class MetadataFetch:
    """The fetch of one info dict (see the module docstring): decisions only."""

    def __init__(
        self, info_hash: bytes, owners: Sequence[tuple[Addr, int]], *, request_timeout: float,
        seconds: float = METADATA_SECONDS, max_size: int = wire.MAX_METADATA_SIZE,
        nonce: Callable[[], int] = wire.new_nonce,
    ) -> None:
        self.info_hash = info_hash
        self.waiting = list(dict.fromkeys(owners))
        self.count = len(self.waiting)
        self.request_timeout = request_timeout
        self.seconds = seconds
        self.max_size = min(max_size, wire.MAX_METADATA_SIZE)
        self.nonce = nonce
        self.current: _Owner | None = None
        #: Each owner given up on, and why (for the failure message).
        self.tried: list[str] = []
        #: Owners given up on: what they still send is late, not hostile.
        self.gone: set[Addr] = set()
        self.deadline = 0.0
        self.ended = False

    # ---- inputs
    def started(self, now: float) -> list[Action]:
        self.deadline = now + self.seconds
        if not self.waiting:
            return self._fail("the tracker lists no other owner of it")
        return [Note(f"fetching the torrent's metadata from {self.count} owner{'s' if self.count != 1 else ''}"),
                *self._next()]

    def info_answered(self, addr: Addr, resp: wire.InfoResponse, now: float) -> list[Action]:
        o = self.current
        if self.ended or o is None or o.addr != addr or not o.greeting:
            return []
        o.greeting = False
        if resp.status == wire.NOT_FOUND:
            return self._drop("does not share it")
        o.cookie = resp.cookie
        return self._fill(now)

    def info_timed_out(self, addr: Addr, why: str, now: float) -> list[Action]:
        o = self.current
        if self.ended or o is None or o.addr != addr or not o.greeting:
            return []
        o.greeting = False
        if o.greets < GREET_TRIES:
            return self._greet(o)
        return self._drop(f"did not answer INFO ({why})")

    def metadata_received(self, msg: wire.Metadata, addr: Addr, now: float) -> tuple[str | None, list[Action]]:
        """A METADATA answer: taken (None) or refused (why) when it answers no request of ours."""
        o = self.current
        if o is None or o.addr != addr or self.ended:
            return ("late" if addr in self.gone or self.ended else "unmatched METADATA"), []
        request = o.asked.get(msg.nonce)
        piece = request.piece if request is not None else o.retired.get(msg.nonce)
        if piece != msg.piece:
            return "unmatched METADATA", []
        if piece in o.pieces:
            return "late", []  # asked twice (lost, or slow) and answered twice
        if msg.total > self.max_size:
            return None, self._drop(f"claimed an info dict of {msg.total} bytes, more than the {self.max_size} allowed",
                                    lying=True)
        if o.total is None:
            o.total = msg.total
        elif msg.total != o.total:
            return None, self._drop(f"changed its info dict's size from {o.total} to {msg.total} bytes", lying=True)
        if len(msg.data) != wire.metadata_piece_size(o.total, msg.piece):
            return None, self._drop(f"sent {len(msg.data)} bytes for metadata piece {msg.piece}", lying=True)
        for nonce in [n for n, r in o.asked.items() if r.piece == msg.piece]:
            del o.asked[nonce]
            o.retired[nonce] = msg.piece
        o.pieces[msg.piece] = bytes(msg.data)
        if len(o.pieces) < wire.metadata_pieces(o.total):
            return None, self._fill(now)
        info = b"".join(o.pieces[i] for i in range(len(o.pieces)))
        if hashlib.sha1(info).digest() != self.info_hash:
            return None, self._drop("sent an info dict whose SHA-1 is not the info hash", lying=True)
        self.ended = True
        return None, [Done(info)]

    def error_received(self, msg: wire.Error, addr: Addr, now: float) -> tuple[str | None, list[Action]]:
        o = self.current
        if o is None or o.addr != addr or self.ended:
            return ("late" if addr in self.gone or self.ended else "unmatched ERROR"), []
        if msg.nonce not in o.asked:
            # (refusals of the requests still out when we greeted again for a fresh cookie are late)
            return ("late" if o.regreets and msg.code == wire.E_BAD_COOKIE else "unmatched ERROR"), []
        if msg.code == wire.E_BAD_COOKIE and o.regreets < MAX_REGREETS:
            o.regreets += 1
            o.greets = 0
            o.cookie = None
            o.asked.clear()  # asked again with the new cookie
            return None, self._greet(o)
        return None, self._drop(f"refused: {msg.message or f'error {msg.code}'}")

    def tick(self, now: float) -> list[Action]:
        if self.ended:
            return []
        o = self.current
        if now >= self.deadline:
            asking = f" (still asking node {o.node_id} at {_where(o.addr)})" if o is not None else ""
            return self._fail(f"no owner gave it within {self.seconds:g} s{asking}")
        if o is None or o.cookie is None:
            return []
        late = [(n, r) for n, r in o.asked.items() if now - r.sent_at >= self.request_timeout]
        if any(r.tries >= MAX_TRIES for _, r in late):
            return self._drop(f"stopped answering (no answer to {MAX_TRIES} requests for a piece)")
        actions: list[Action] = []
        for old, r in late:
            del o.asked[old]
            o.retired[old] = r.piece
            actions.append(self._ask(o, r.piece, now, r.tries + 1))
        return actions

    # ---- decisions
    def _next(self) -> list[Action]:
        if not self.waiting:
            return self._fail("")
        addr, node_id = self.waiting.pop(0)
        self.current = _Owner(addr, node_id)
        return self._greet(self.current)

    def _greet(self, o: _Owner) -> list[Action]:
        o.greets += 1
        o.greeting = True
        return [Greet(o.addr, self.request_timeout * o.greets)]

    def _fill(self, now: float) -> list[Action]:
        """Keep WINDOW requests in flight: piece 0 alone until the size is known."""
        o = self.current
        assert o is not None and o.cookie is not None
        if o.total is None:
            return [] if o.asked else [self._ask(o, 0, now)]
        actions: list[Action] = []
        out = {r.piece for r in o.asked.values()}
        for piece in range(wire.metadata_pieces(o.total)):
            if len(out) >= WINDOW:
                break
            if piece not in o.pieces and piece not in out:
                actions.append(self._ask(o, piece, now))
                out.add(piece)
        return actions

    def _ask(self, o: _Owner, piece: int, now: float, tries: int = 1) -> Send:
        assert o.cookie is not None
        nonce = self.nonce()
        o.asked[nonce] = _Request(piece, now, tries)
        return Send(wire.encode_metadata_request(self.info_hash, o.cookie, nonce, piece), o.addr)

    def _drop(self, reason: str, lying: bool = False) -> list[Action]:
        o = self.current
        assert o is not None
        self.current = None
        self.gone.add(o.addr)
        self.tried.append(f"node {o.node_id} at {_where(o.addr)} {reason}")
        return [Dropped(o.addr, o.node_id, reason + (" (dropped; asking another owner)" if lying else "")), *self._next()]

    def _fail(self, why: str) -> list[Action]:
        self.ended = True
        tried = "; ".join(self.tried)
        parts = [p for p in (why, f"tried {tried}" if tried else "") if p]
        return [Failed(f"cannot fetch the torrent's metadata (info dict) of {self.info_hash.hex()}: {'; '.join(parts)}")]


def _where(addr: Any) -> str:
    try:
        host, port = addr[0], addr[1]
    except (TypeError, IndexError):
        return str(addr)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class FetchNetwork(Protocol):
    fetches: dict[bytes, Any]

    def send(self, datagram: bytes, addr: Any) -> None: ...
    def ask_info(self, addr: Any, info_hash: bytes, timeout: float) -> Deferred[wire.InfoResponse]: ...
    def ended(self, info_hash: bytes) -> None: ...


class MetadataFetcher:
    """The I/O shell of one :class:`MetadataFetch`: fires with the info dict's verified bytes."""

    log = Logger()

    def __init__(self, fetch: MetadataFetch, network: FetchNetwork, clock: IReactorTime,
                 note: Callable[[str], None] | None = None) -> None:
        self.fetch, self.network, self.clock, self.note = fetch, network, clock, note
        self.result: Deferred[bytes] = Deferred()
        #: Others waiting for the same info dict (a second download of the same magnet link meanwhile).
        self._waiters: list[Deferred[bytes]] = []
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock

    def start(self) -> Deferred[bytes]:
        ih = self.fetch.info_hash
        if ih in self.network.fetches:
            raise MetadataError(f"the metadata of {ih.hex()} is already being fetched")
        self.network.fetches[ih] = self
        self._loop.start(TICK, now=False).addErrback(lambda f: self._end(Failure(MetadataError(f.getErrorMessage()))))
        self._run(self.fetch.started(self.clock.seconds()))
        return self.result

    def wait(self) -> Deferred[bytes]:
        """A Deferred of its own that fires as :attr:`result` does: one more who wants this info dict."""
        d: Deferred[bytes] = Deferred()
        self._waiters.append(d)
        return d

    def stop(self, reason: str) -> None:
        if not self.result.called:
            self._end(Failure(MetadataError(reason)))

    # ---- datagrams in (routed by the protocol: this info hash, from a greeted address)
    def on_message(self, msg: wire.Metadata | wire.Error, addr: Any) -> str | None:
        now = self.clock.seconds()
        if isinstance(msg, wire.Metadata):
            refused, actions = self.fetch.metadata_received(msg, addr, now)
        else:
            refused, actions = self.fetch.error_received(msg, addr, now)
        self._run(actions)
        return refused

    # ---- carrying out the decisions
    def _tick(self) -> None:
        try:
            self._run(self.fetch.tick(self.clock.seconds()))
        except Exception:  # a LoopingCall stops for good on its first exception
            self.log.failure("metadata fetch tick")

    def _run(self, actions: list[Action]) -> None:
        for a in actions:
            if self.result.called:
                return
            if isinstance(a, Send):
                self.network.send(a.datagram, a.addr)
            elif isinstance(a, Greet):
                self._greet(a)
            elif isinstance(a, Note):
                self.log.info("{hash}: {text}", hash=self.fetch.info_hash.hex(), text=a.text)
                if self.note is not None:
                    self.note(a.text)
            elif isinstance(a, Dropped):
                self.log.warn("{hash}: node {node} at {addr} {reason}", hash=self.fetch.info_hash.hex(),
                              node=a.node_id, addr=_where(a.addr), reason=a.reason)
            elif isinstance(a, Done):
                self._end(a.info)
            elif isinstance(a, Failed):
                self._end(Failure(MetadataError(a.reason)))

    def _greet(self, a: Greet) -> None:
        def answered(resp: wire.InfoResponse) -> None:
            if not self.result.called:
                self._run(self.fetch.info_answered(a.addr, resp, self.clock.seconds()))

        def silent(f: Failure) -> None:
            if not self.result.called:
                self._run(self.fetch.info_timed_out(a.addr, f.getErrorMessage(), self.clock.seconds()))

        self.network.ask_info(a.addr, self.fetch.info_hash, a.timeout).addCallbacks(answered, silent)

    def _end(self, outcome: bytes | Failure) -> None:
        if self._loop.running:
            self._loop.stop()
        ih = self.fetch.info_hash
        if self.network.fetches.get(ih) is self:
            del self.network.fetches[ih]
            self.network.ended(ih)  # answers still on the way are late, not hostile
        if self.result.called:
            return
        waiters, self._waiters = self._waiters, []
        for d in (self.result, *waiters):
            if isinstance(outcome, bytes):
                d.callback(outcome)
            else:
                d.errback(outcome)
