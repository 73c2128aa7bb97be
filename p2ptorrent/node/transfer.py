"""Block scheduling for one download: what to ask whom, what timed out, who is gone.

Pure: it takes blocks, peers and the time, and returns decisions (requests to
send, pieces that verified, peers to drop).  The I/O around it lives in
download.py.  Work is handed out on demand, a window's worth at a time, so a
fast peer takes more blocks and a slow one fewer.  Which piece a peer works on
next is the picker's choice (picker.py: rarest first among the pieces that
peer has); a piece once started is finished before another is started for the
same peer, where it can be; a lost request times out
and its block goes back to the front of the queue for whoever has room; near
the end, blocks still outstanding at one peer may also be asked of a second
(endgame).

Loss and congestion.  A peer answers a peer's requests in the order they were
sent, so a block still owed when blocks asked after it (by more than
``REORDERING``) have arrived is lost: it is asked again at once
(:meth:`Transfer.lost_in_order`, run once per batch of datagrams read), long
before its timeout.  Random loss is not congestion: a window grows while data
flows (by a block per block delivered while the round trip stays within half
of ``QUEUE_TARGET`` of the path's minimum, so it regains its size within a few
round trips) and shrinks when the round trip grows past the minimum by more
than ``QUEUE_TARGET`` (the queue is filling: the delay-based control LEDBAT
uses), or, at most once per round trip, when more than ``CONGESTED_LOSS`` of a
round's blocks were lost (a run lost back to back, as a lost BLOCK_REQ makes,
counts once) or when nothing at all came back before a timeout; timeouts back
off, so a dead path gets few datagrams.  With 10% of the datagrams lost at
random a window never shrinks for loss alone.

Answers are bound to requests.  Each request (a batch of blocks, a HAVE_REQ) carries a fresh random
64-bit nonce, kept per peer while an answer may still come (``NONCE_LIFETIME``, longer for HAVE_REQs
whose nonce the peer's pushed news carries); a block, HAVE or ERROR whose nonce is not one of that peer's
is refused before it touches anything (:meth:`Transfer.on_block`, :meth:`Transfer.matches`).  So a host
that forges a peer's address but cannot see the traffic can neither put bytes into a piece nor get that
peer blamed, slowed or dropped: only blocks that matched a peer's nonces are ever assembled, so a piece
that fails its check blames only who really sent it.

Blocks and datagrams.  A block is the unit of requests and bookkeeping; a
sender whose path cannot carry a block whole sends it as several BLOCK
datagrams (parts, see ``wire.split_block``), put together here before the
block counts as received.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

from p2ptorrent import wire
from p2ptorrent.config import Config
from p2ptorrent.metainfo import Metainfo
from p2ptorrent.node.picker import PiecePicker
from p2ptorrent.node.pieces import Addr, Geometry, PieceAssembled, PieceFailed, PieceVerified, _Piece


#: Bounds of the retransmission timeout (seconds).
MIN_RTO = 0.2
MAX_RTO = 8.0
#: A silent peer is asked again at least this many times within PEER_TIMEOUT before it is dropped: the
#: timeout's back-off never outlasts the peer timeout, so a live peer behind a lossy path is probed, not lost.
PROBES_BEFORE_DROP = 4
#: A window starts here (blocks) and never falls below MIN_WINDOW.
INITIAL_WINDOW = 32
MIN_WINDOW = 2
#: Queueing delay (seconds of round trip above the path's minimum) that a window
#: may build before it shrinks: the delay-based half of the control (as LEDBAT),
#: which keeps a burst from overflowing the kernel's receive buffer.
QUEUE_TARGET = 0.05
#: Blocks asked of a peer after a block still owed that may arrive before it is taken as lost (reordering).
REORDERING = 3
#: Share of a round trip's losses (a run of blocks lost back to back is one) among its blocks above which
#: the loss is taken as congestion (and the window halves): random loss well above a real link's does not
#: slow a download; an overflowing queue does.
CONGESTED_LOSS = 0.25
#: A block is asked of at most this many peers at once (endgame).
MAX_REQUESTERS = 2
#: A peer whose blocks failed verification this many times is dropped.
MAX_STRIKES = 3
#: Pieces a complete owner is asked for at once (started, not yet verified)
#: while nodes still downloading serve us too: the rest comes from them, so a
#: seeder's upload goes to pieces nobody has yet.
SEED_PIECES_AHEAD = 2
#: Seconds a block request's nonce stays answerable, at least (a block later than that is refused, as a
#: forged one would be: it was asked again long ago).  Twice the longest retransmission timeout is used
#: when that is longer.
NONCE_LIFETIME = 2.0
#: Blocks waiting to be asked again that one request looks through for a
#: piece the peer has, before it moves on (a peer may lack them all).
PENDING_SCAN = 1024


@dataclass
class PeerState:
    """What we know of one peer's path: its window, its round-trip time, its record."""

    addr: Addr
    node_id: int
    cookie: bytes
    since: float
    window: float = INITIAL_WINDOW
    threshold: float = float("inf")
    srtt: float | None = None
    min_rtt: float = float("inf")
    rttvar: float = 0.0
    rto: float = 1.0
    #: Blocks owed: block id -> (sequence number, time asked; negative for a block asked again).
    inflight: dict[int, tuple[int, float]] = field(default_factory=dict)
    #: The same entries in the order asked (answered ones are skipped lazily).
    sent: deque[tuple[tuple[int, float], int]] = field(default_factory=deque)
    #: Sequence number of the last block asked, and of the latest-asked block delivered.
    seq: int = 0
    acked: int = 0
    last_data: float = 0.0
    last_loss: float = -1.0
    #: This round trip's tally, for telling random loss from congestion.
    round_start: float = 0.0
    round_delivered: int = 0
    round_lost: int = 0
    #: Blocks taken as lost because later ones arrived first.
    lost_in_order: int = 0
    #: The piece whose new blocks this peer was given last (-1: none yet).
    current: int = -1
    blocks: int = 0
    bytes: int = 0
    timeouts: int = 0
    strikes: int = 0
    #: One byte per piece, nonzero for pieces the peer has; None: it has every piece.
    has: bytearray | None = None
    #: The peer holds no upload slot for us: ask it nothing until it says otherwise.
    choked: bool = False
    #: Pieces started with this peer and not verified yet.
    in_progress: set[int] = field(default_factory=set)
    #: It had every piece when we met it (even if it now offers only some).
    complete_owner: bool = False
    #: Nonces of our requests it may still answer: nonce -> until when; and the same in the order sent.
    nonces: dict[int, float] = field(default_factory=dict)
    nonce_order: deque[tuple[float, int]] = field(default_factory=deque)

    def free(self) -> int:
        return int(self.window) - len(self.inflight)


#: Why a block was refused (counted by the protocol as ``rejected:<reason>``): it carries no nonce of a
#: request of ours to its sender still answerable (forged, or very late), or it is no block we asked for.
UNMATCHED_BLOCK = "unmatched BLOCK"
UNASKED_BLOCK = "unasked BLOCK"
#: An answer to a request made of a peer since dropped, still within the nonce's lifetime: late, not forged
#: (counted apart, and not taken).
LATE = "late"


@dataclass(frozen=True)
class PeerDropped:
    peer: PeerState
    reason: str
    #: Dropped for silence (a live peer behind a lossy path may come back), not for lying.
    silent: bool = True


class Transfer:
    """The scheduling state of one download (see the module docstring)."""

    def __init__(
        self,
        geometry: Geometry,
        piece_hashes: bytes,
        *,
        have: Iterable[int] = (),
        first_timeout: float = 1.0,
        peer_timeout: float = 10.0,
        max_window: int = 512,
        max_batch: int = 64,
        max_inflight_bytes: int = 0,
        rng: random.Random | None = None,
        random_first: int = 4,
        nonce: Callable[[], int] = wire.new_nonce,
    ) -> None:
        self.geo = geometry
        self.hashes = piece_hashes
        self.first_timeout = first_timeout
        self.peer_timeout = peer_timeout
        #: The retransmission timeout's ceiling for this download (see PROBES_BEFORE_DROP).
        self.max_rto = max(MIN_RTO, min(MAX_RTO, peer_timeout / PROBES_BEFORE_DROP))
        self.new_nonce = nonce
        self.nonce_lifetime = max(NONCE_LIFETIME, 2 * self.max_rto)
        self.max_window = max_window
        self.max_batch = max_batch
        #: All peers together never owe us more than this (the receive buffer's share):
        #: more would only overflow the kernel's queue and come back as loss.
        self.budget = max(MIN_WINDOW, max_inflight_bytes // geometry.chunk) if max_inflight_bytes else 1 << 30
        self.peers: dict[Addr, PeerState] = {}
        self.verified = bytearray(geometry.num_pieces)
        for p in have:
            self.verified[p] = 1
        self.remaining = geometry.num_pieces - sum(self.verified)
        self.received = bytearray(geometry.num_pieces * geometry.blocks_per_piece)
        self.asked = bytearray(len(self.received))
        self.requesters: dict[int, list[Addr]] = {}
        #: Blocks to ask for again (timed out, dropped, failed), before any new one.
        self.ask_again: deque[int] = deque()
        #: Which piece to start next (rarest first); a piece is started once.
        self.picker = PiecePicker(geometry.num_pieces, rng or random.Random(), random_first)
        for p, ok in enumerate(self.verified):
            if ok:
                self.picker.have(p)
        #: Pieces started (or held): when every piece is, the endgame may begin.
        self.pieces_started = geometry.num_pieces - self.remaining
        #: Started pieces with blocks never asked yet: piece -> index of the next such block.
        #: Only new blocks come from here; a list of them all would cost ~36 bytes a block.
        self.next_new_block: dict[int, int] = {}
        #: Nodes still downloading this file are known (from the tracker): swarm mode
        #: (see SEED_PIECES_AHEAD) even before they are met.
        self.swarm = False
        #: Pieces started (one byte each), and where in-order picking has got to.
        self.is_started = bytearray(geometry.num_pieces)
        self._cursor = 0
        #: Who each piece in progress was started with (piece -> address).
        self.started_with: dict[int, Addr] = {}
        self.pieces: dict[int, _Piece] = {}
        #: Pieces handed out and not yet checked: no block of theirs is asked for.
        self.judging: dict[int, _Piece] = {}
        #: The last copy of each piece that failed its hash, kept until a good copy
        #: shows which blocks (and so which peers) were wrong.
        self.failed: dict[int, _Piece] = {}
        #: Blocks arriving in several datagrams: block id -> (a byte per byte of the block: here yet?, bytes here).
        self.parts: dict[int, tuple[bytearray, list[int]]] = {}
        #: Peers that sent blocks since the last batch_done().
        self.fed: set[Addr] = set()
        self.duplicates = 0
        self.retransmits = 0
        #: Blocks refused: they matched no request of ours (forged, or later than their nonce's lifetime).
        self.rejected = 0
        #: The nonces of peers dropped (or greeted again) while their answers may still come, and until when.
        self.retired: dict[Addr, tuple[float, dict[int, float]]] = {}
        #: Which peer asks first under a download limit (rotated each time).
        self._turn = 0

    def mark_have(self, pieces: Iterable[int]) -> None:
        """Pieces already verified on disk (a resumed download): never ask for them."""
        for p in pieces:
            if not self.verified[p]:
                self.verified[p] = 1
                self.remaining -= 1
                self.picker.have(p)
                if self.next_new_block.pop(p, None) is None:
                    self.pieces_started += 1
                for bid in self.geo.block_ids(p):
                    self.received[bid] = 1

    # ---- peers
    @property
    def done(self) -> bool:
        return self.remaining == 0

    def add_peer(
        self, addr: Addr, node_id: int, cookie: bytes, now: float, pieces: Iterable[int] | None = None,
    ) -> PeerState:
        """A peer to fetch from: one with every piece (*pieces* None), or with those *pieces* so far."""
        peer = PeerState(addr, node_id, cookie, since=now, rto=min(self.first_timeout, self.max_rto), last_data=now)
        old = self.peers.get(addr)
        if old is not None:  # greeted again: what it still sends for the old requests is late, not forged
            self._retire(old)
        self.peers[addr] = peer
        if pieces is None:
            peer.complete_owner = True
            self.picker.add_seed()
        else:
            peer.has = bytearray(self.geo.num_pieces)
            self.peer_has(addr, pieces)
        return peer

    def peer_has(self, addr: Addr, pieces: Iterable[int]) -> int:
        """A peer has (at least) these pieces now; how many of them are news."""
        peer = self.peers.get(addr)
        if peer is None or peer.has is None:
            return 0
        has, picker, n, new = peer.has, self.picker, self.geo.num_pieces, 0
        for p in pieces:
            if 0 <= p < n and not has[p]:
                has[p] = 1
                picker.peer_has(p)
                new += 1
        return new

    def set_have(self, addr: Addr, first: int, count: int, pieces: Iterable[int]) -> None:
        """Of pieces first..first+count-1, the peer offers exactly *pieces* now (the others are no longer asked of it)."""
        peer = self.peers.get(addr)
        if peer is None:
            return
        n = self.geo.num_pieces
        picker = self.picker
        if peer.has is None:  # a complete owner that now offers only some: track it piece by piece
            picker.remove_seed()
            peer.has = bytearray(b"\x01" * n)
            for p in range(n):
                picker.peer_has(p)
        has = peer.has
        offered = set(pieces)
        withdrawn = False
        for p in range(max(0, first), min(n, first + count)):
            if p in offered:
                if not has[p]:
                    has[p] = 1
                    picker.peer_has(p)
            elif has[p]:
                has[p] = 0
                picker.peer_lost(p)
                # No longer its piece to finish: a complete owner held to SEED_PIECES_AHEAD pieces must be
                # free to start one it offers (else, at loss, a withdrawn half-done piece stalls it for good).
                peer.in_progress.discard(p)
                withdrawn = True
        if withdrawn:
            # What it will not send goes to others at once: no timeout, no loss counted.
            bpp = self.geo.blocks_per_piece
            self._take_back(peer, [b for b in peer.inflight if not has[b // bpp]])

    def peer_complete(self, addr: Addr) -> None:
        """The peer now has every piece."""
        peer = self.peers.get(addr)
        if peer is None or peer.has is None:
            return
        self._forget_pieces(peer)
        peer.has = None
        self.picker.add_seed()

    def _forget_pieces(self, peer: PeerState) -> None:
        if peer.has is None:
            self.picker.remove_seed()
            return
        for p, held in enumerate(peer.has):
            if held:
                self.picker.peer_lost(p)

    def wants_from(self, addr: Addr) -> bool:
        """Does the peer have a piece we still need (or might it, not knowing yet)?"""
        peer = self.peers.get(addr)
        if peer is None or self.done:
            return False
        if peer.has is None:
            return True
        verified = self.verified
        return any(h and not v for h, v in zip(peer.has, verified, strict=True))

    def choke(self, addr: Addr) -> None:
        """The peer refuses us blocks for now: what it owes goes to others; ask it nothing more."""
        peer = self.peers.get(addr)
        if peer is None or peer.choked:
            return
        peer.choked = True
        self._take_back(peer, list(peer.inflight))

    def _take_back(self, peer: PeerState, bids: list[int]) -> None:
        """The peer no longer owes these blocks; those nobody else owes are asked again first."""
        again = []
        for bid in bids:
            del peer.inflight[bid]
            if self._release(bid, peer.addr):
                again.append(bid)
        self._requeue(again)

    @classmethod
    def for_download(cls, meta: Metainfo, settings: Config, rng: random.Random | None = None) -> Transfer:
        """The scheduler of one download, as the settings ask; pieces are checked by the writer thread."""
        return cls(
            Geometry(meta.length, meta.piece_length, settings.CHUNK_PIECES_SIZE), meta.pieces,
            first_timeout=settings.REQUEST_TIMEOUT, peer_timeout=settings.PEER_TIMEOUT,
            max_window=settings.MAX_REQUESTS_IN_FLIGHT,
            max_batch=wire.max_blocks_per_request(min(settings.BUFFER_SIZE, wire.SAFE_DATAGRAM)),
            max_inflight_bytes=settings.SOCKET_BUFFER // 2, rng=rng,
        )

    # ---- nonces
    def nonce_for(self, peer: PeerState, now: float, lifetime: float = 0.0) -> int:
        """A fresh nonce for a request to *peer*, answerable for *lifetime* seconds (the block default if 0)."""
        nonce = self.new_nonce()
        until = now + (lifetime or self.nonce_lifetime)
        peer.nonces[nonce] = until
        peer.nonce_order.append((until, nonce))
        return nonce

    def have_nonce(self, peer: PeerState, now: float) -> int:
        """A nonce for a HAVE_REQ to *peer*: the news it pushes for NEWS_SECONDS after carry it too."""
        return self.nonce_for(peer, now, wire.NEWS_SECONDS + self.max_rto)

    def matches(self, addr: Addr, nonce: int) -> bool:
        """Does *nonce* answer a request of ours to *addr* still answerable?"""
        peer = self.peers.get(addr)
        return peer is not None and nonce in peer.nonces

    def unmatched(self, addr: Addr, nonce: int, kind: str = "BLOCK") -> str:
        """Why an answer that matches no request of ours is refused: LATE if it answers one made of that
        address before it was dropped, else ``unmatched <kind>`` (forged, or later than any lifetime)."""
        old = self.retired.get(addr)
        if old is not None and nonce in old[1]:
            return LATE
        return f"unmatched {kind}"

    def _retire(self, peer: PeerState) -> None:
        if peer.nonces:
            self.retired[peer.addr] = (max(peer.nonces.values()), peer.nonces)

    @staticmethod
    def _expire_nonces(peer: PeerState, now: float) -> None:
        order, nonces = peer.nonce_order, peer.nonces
        while order and order[0][0] <= now:
            until, nonce = order.popleft()
            if nonces.get(nonce) == until:
                del nonces[nonce]

    def on_have(self, addr: Addr, flags: int, first: int, count: int, pieces: Iterable[int], now: float) -> None:
        """A HAVE from a peer: what it has (or offers) in that range, and whether it refuses us for now."""
        if addr not in self.peers:
            return
        self.heard(addr, now)
        if flags & wire.F_COMPLETE:
            self.peer_complete(addr)
        elif flags & wire.F_NEWS:
            self.peer_has(addr, pieces)
        else:
            # What it offers now, in that range: a node still downloading only gains pieces;
            # a complete owner serving several of us offers the pieces it has uploaded least.
            self.set_have(addr, first, count, pieces)
        if not flags & wire.F_NEWS:  # pushed news of a piece: our slot there is as it was
            (self.choke if flags & wire.F_CHOKED else self.unchoke)(addr)

    def heard(self, addr: Addr, now: float) -> None:
        """The peer answered something (a HAVE): it is alive."""
        peer = self.peers.get(addr)
        if peer is not None:
            peer.last_data = max(peer.last_data, now)

    def unchoke(self, addr: Addr) -> None:
        peer = self.peers.get(addr)
        if peer is not None and peer.choked:
            peer.choked = False
            peer.last_data = max(peer.last_data, peer.since)

    def set_cookie(self, addr: Addr, cookie: bytes) -> None:
        if addr in self.peers:
            self.peers[addr].cookie = cookie

    def remove_peer(self, addr: Addr) -> PeerState | None:
        """Forget a peer; its outstanding blocks go back to the queue."""
        peer = self.peers.pop(addr, None)
        if peer is not None:
            self._retire(peer)
            self._forget_pieces(peer)
            self._requeue([bid for bid in peer.inflight if self._release(bid, addr)])
        return peer

    def _release(self, bid: int, addr: Addr) -> bool:
        """*addr* no longer owes *bid*; say whether nobody else does either (so it needs asking again)."""
        holders = self.requesters.get(bid)
        if holders is None:
            return False
        if addr in holders:
            holders.remove(addr)
        if holders:
            return False
        del self.requesters[bid]
        return not self.received[bid]

    def _requeue(self, bids: list[int]) -> None:
        # To the front, in their original order: the oldest pieces finish first.
        self.ask_again.extendleft(reversed(bids))

    # ---- data in
    def on_block(
        self, addr: Addr, nonce: int, piece: int, offset: int, data: bytes | memoryview | None, now: float,
    ) -> PieceAssembled | str | None:
        """Take one block's data; a completed piece comes back as PieceAssembled, for the writer thread to
        check (its verdict comes back through :meth:`checked`).  A block that answers no request of ours
        to *addr* is refused (the reason comes back, and nothing else changes)."""
        # The hot path of a download (every block): plain arithmetic, no calls it can do without.
        peer = self.peers.get(addr)
        if peer is None or nonce not in peer.nonces:
            refused = self.unmatched(addr, nonce)
            if refused is not LATE:
                self.rejected += 1
            return refused
        geo = self.geo
        num_pieces = geo.num_pieces
        if piece >= num_pieces:
            self.rejected += 1
            return UNASKED_BLOCK
        chunk = geo.chunk
        k, inside = divmod(offset, chunk)
        start = offset - inside
        psize = geo.piece_length if piece < num_pieces - 1 else geo.last_size
        bid = piece * geo.blocks_per_piece + k
        if start >= psize or not self.asked[bid]:
            self.rejected += 1
            return UNASKED_BLOCK
        whole = chunk if start + chunk <= psize else psize - start
        size = len(data) if data is not None else 0
        if inside or size != whole:  # a part of a block the sender's path could not carry whole
            if data is None or not size or inside + size > whole:
                self.rejected += 1
                return UNASKED_BLOCK
            peer.last_data = now
            self.fed.add(addr)
            if not self._part(bid, piece, offset, inside, whole, data):
                return None
            offset -= inside
            data = None  # already in the piece's buffer
        peer.last_data = now  # even a duplicate shows the peer is alive
        self.fed.add(addr)
        entry = peer.inflight.pop(bid, None)
        if entry is not None:
            # A block asked again may be the first copy, arriving late: it says nothing of what was asked
            # after the second (as Karn's rule for round trips), so only a first request moves the mark.
            if entry[1] >= 0 and entry[0] > peer.acked:
                peer.acked = entry[0]
            self._on_delivery(peer, entry[1], now)
        if self.received[bid] or self.verified[piece]:  # (a piece being checked has every block received)
            self.duplicates += 1
            return None
        # Whoever else was asked for this block need not answer any more.
        for other in self.requesters.pop(bid, ()):
            if other != addr and other in self.peers:
                self.peers[other].inflight.pop(bid, None)
        self.received[bid] = 1
        peer.blocks += 1
        peer.bytes += whole
        buf = self.pieces.get(piece)
        if buf is None:
            buf = self.pieces[piece] = _Piece(bytearray(psize), -(-psize // chunk))
        if data is not None:
            buf.data[offset : offset + whole] = data
        buf.missing -= 1
        buf.sources[k] = addr
        if buf.missing:
            return None
        del self.pieces[piece]
        self.judging[piece] = buf  # someone else (the writer thread) checks it, then calls checked()
        return PieceAssembled(piece, buf.data, frozenset(buf.sources.values()))

    def _part(self, bid: int, piece: int, offset: int, inside: int, whole: int, data: bytes | memoryview) -> bool:
        """Keep one part of a block, straight in its piece's buffer; True once the whole block is here."""
        if self.received[bid] or self.verified[piece]:
            self.duplicates += 1
            return False
        buf = self.pieces.get(piece)
        if buf is None:
            buf = self.pieces[piece] = _Piece(bytearray(self.geo.piece_size(piece)), self.geo.blocks_in_piece(piece))
        buf.data[offset : offset + len(data)] = data
        held = self.parts.get(bid)
        if held is None:
            held = self.parts[bid] = (bytearray(whole), [0])
        seen, got = held
        new = len(data) - seen.count(1, inside, inside + len(data))
        if not new:
            self.duplicates += 1
            return False
        seen[inside : inside + len(data)] = b"\x01" * len(data)
        got[0] += new
        if got[0] < whole:
            return False
        del self.parts[bid]
        return True

    def piece_hash(self, piece: int) -> bytes:
        return self.hashes[piece * 20 : piece * 20 + 20]

    def checked(self, piece: int, ok: bool) -> PieceVerified | PieceFailed | None:
        """The verdict on an assembled piece: verified, or its blocks go back to the queue."""
        buf = self.judging.pop(piece, None)
        if buf is None:
            return None
        starter = self.peers.get(self.started_with.pop(piece, None))
        if starter is not None:
            starter.in_progress.discard(piece)
        geo = self.geo
        sources = frozenset(buf.sources.values())
        if ok:
            self.verified[piece] = 1
            self.remaining -= 1
            self.picker.have(piece)
            # The buffer itself, not a copy: nothing here touches it again.
            return PieceVerified(piece, buf.data, sources, self._blame(piece, buf))
        self.failed[piece] = buf
        if len(sources) == 1:  # one sender: no doubt who was wrong
            [only] = sources
            if only in self.peers:
                self.peers[only].strikes += 1
        for bid in geo.block_ids(piece):
            self.received[bid] = 0
        self._requeue(list(geo.block_ids(piece)))
        return PieceFailed(piece, sources)

    def _blame(self, piece: int, good: _Piece) -> frozenset[Addr]:
        """Compare a failed copy with the good one, block by block: strike whoever sent a wrong block."""
        bad = self.failed.pop(piece, None)
        if bad is None:
            return frozenset()
        chunk = self.geo.chunk
        liars = set()
        for k, addr in bad.sources.items():
            if bad.data[k * chunk : (k + 1) * chunk] != good.data[k * chunk : (k + 1) * chunk]:
                liars.add(addr)
                if addr in self.peers:
                    self.peers[addr].strikes += 1
        return frozenset(liars)

    def _on_delivery(self, peer: PeerState, sent_at: float, now: float) -> None:
        peer.round_delivered += 1
        if sent_at >= 0:  # negative marks a retransmission: no RTT sample (Karn)
            sample = now - sent_at
            if peer.srtt is None:
                peer.srtt, peer.rttvar = sample, sample / 2
            else:
                peer.rttvar = 0.75 * peer.rttvar + 0.25 * abs(peer.srtt - sample)
                peer.srtt = 0.875 * peer.srtt + 0.125 * sample
            peer.rto = min(self.max_rto, max(MIN_RTO, peer.srtt + 4 * peer.rttvar))
            peer.min_rtt = min(peer.min_rtt, sample)
            queued = sample - peer.min_rtt
            if queued > QUEUE_TARGET:
                peer.window = max(MIN_WINDOW, peer.window - 1)
                return
            if queued < QUEUE_TARGET / 2:  # no queue to speak of: grow fast again, even after a halving
                peer.window = min(peer.window + 1, self.max_window)
                return
        if peer.window < peer.threshold:
            peer.window += 1
        else:
            peer.window += 1 / peer.window
        peer.window = min(peer.window, self.max_window)

    def on_refused(self, addr: Addr) -> None:
        """The peer answered that it no longer serves the file."""
        self.remove_peer(addr)

    # ---- requests out
    def requests(
        self, now: float, only: Addr | None = None, limit: int | None = None,
    ) -> list[tuple[PeerState, int, list[tuple[int, int, int]]]]:
        """Fill the peers' windows; return the batches of (piece, offset, length) to send, each with its nonce.

        *limit*: ask for at most this many blocks now (the node's download limit paces requests: a block
        asked is a block coming, so arrival keeps to the rate while windows and loss detection work as ever).
        """
        out = []
        peers = [self.peers[only]] if only is not None and only in self.peers else list(self.peers.values())
        room = self.budget - self.outstanding()
        if limit is not None:
            room = min(room, limit)
            if len(peers) > 1:  # a turn each at going first, so the limit is shared among the peers
                self._turn = (self._turn + 1) % len(peers)
                peers = peers[self._turn :] + peers[: self._turn]
        for peer in peers:
            if peer.choked:
                continue
            free = min(peer.free(), room)
            if free <= 0 or (peer.inflight and free < min(self.max_batch, max(1, int(peer.window) // 4))):
                continue
            batch: list[tuple[int, int, int]] = []
            while free > 0:
                bid = self._next_block(peer)
                if bid is None:
                    break
                free -= 1
                room -= 1
                retrans = self.asked[bid] > 0
                self.asked[bid] = 1
                self.requesters.setdefault(bid, []).append(peer.addr)
                peer.seq += 1
                entry = (peer.seq, -now if retrans else now)
                peer.inflight[bid] = entry
                peer.sent.append((entry, bid))
                batch.append(self.geo.block(bid))
                if len(batch) == self.max_batch:
                    out.append((peer, self.nonce_for(peer, now), batch))
                    batch = []
            if batch:
                out.append((peer, self.nonce_for(peer, now), batch))
        return out

    def _next_block(self, peer: PeerState) -> int | None:
        has = peer.has
        bpp = self.geo.blocks_per_piece
        ask_again = self.ask_again
        if ask_again:
            skipped = []
            found = None
            for _ in range(min(len(ask_again), PENDING_SCAN)):
                queued = ask_again.popleft()
                if self.received[queued] or queued in self.requesters:
                    continue  # stale entry: already here or already asked
                if has is None or has[queued // bpp]:
                    found = queued
                    break
                skipped.append(queued)  # for a peer that has it
            ask_again.extendleft(reversed(skipped))
            if found is not None:
                return found
        # Go on with a piece already started, so pieces complete (and can be shared) soon;
        # a complete owner, while nodes still downloading serve us, only with its own.
        # The piece this peer was last given comes first (the common case: no search).
        going = peer.current
        if going in self.next_new_block and (has is None or has[going]):
            bid = self._take(going)
            if bid is not None:
                return bid
        seed_held_back = peer.complete_owner and self.partial_peers
        for going in list(peer.in_progress if seed_held_back else self.next_new_block):
            if going in self.next_new_block and (has is None or has[going]):
                bid = self._take(going)
                if bid is not None:
                    peer.current = going
                    return bid
        while True:
            piece: int | None
            if self.partial_peers:
                piece = self.picker.pick(None if has is None else lambda p: bool(has[p]))
            else:
                # Only complete owners, and none expected: nothing to trade, so in file
                # order, which the disk and the whole-file hash like best.
                piece = self._next_in_order(has)
            if piece is None:
                break
            if seed_held_back and (
                len(peer.in_progress) >= SEED_PIECES_AHEAD
                or self.picker.availability(piece) > self.picker.seeds and self._elsewhere(piece)
            ):
                # Even the rarest piece this owner of everything could send is held by a
                # node still downloading that serves us: fetch it there, and leave the
                # complete owner's upload to pieces nobody else has (swarming).
                break
            self.picker.start(piece)
            self.is_started[piece] = 1
            self.pieces_started += 1
            self.next_new_block[piece] = 0
            peer.in_progress.add(piece)
            self.started_with[piece] = peer.addr
            bid = self._take(piece)
            if bid is not None:
                peer.current = piece
                return bid
        if self.pieces_started < self.geo.num_pieces:
            return None  # pieces nobody started are left: no endgame yet
        # Endgame: everything is asked for; help with what others still owe.
        for bid, holders in self.requesters.items():
            if (
                len(holders) < MAX_REQUESTERS and peer.addr not in holders and not self.received[bid]
                and (has is None or has[bid // bpp])
            ):
                self.retransmits += 1
                return bid
        return None

    @property
    def partial_peers(self) -> bool:
        """Is any peer a node still downloading (or does the tracker say some are coming)?"""
        return self.swarm or any(not q.complete_owner for q in self.peers.values())

    def _elsewhere(self, piece: int) -> bool:
        """Does a partial peer that does not refuse us have *piece*?"""
        return any(
            not q.complete_owner and not q.choked and (q.has is None or q.has[piece]) for q in self.peers.values()
        )

    def _next_in_order(self, has: bytearray | None) -> int | None:
        n = self.geo.num_pieces
        is_started, verified = self.is_started, self.verified
        while self._cursor < n and (is_started[self._cursor] or verified[self._cursor]):
            self._cursor += 1
        for piece in range(self._cursor, n):
            if not is_started[piece] and not verified[piece] and (has is None or has[piece]):
                return piece
        return None

    def _take(self, piece: int) -> int | None:
        """The next block of an open piece never asked for (None once there is none)."""
        k = self.next_new_block[piece]
        geo = self.geo
        last = geo.blocks_per_piece if piece < geo.num_pieces - 1 else -(-geo.last_size // geo.chunk)
        first = piece * geo.blocks_per_piece
        received, requesters = self.received, self.requesters
        while k < last:
            bid = first + k
            k += 1
            if not received[bid] and bid not in requesters:  # (a late answer may have brought it)
                if k < last:
                    self.next_new_block[piece] = k
                else:
                    del self.next_new_block[piece]
                return bid
        del self.next_new_block[piece]
        return None

    # ---- time
    def tick(self, now: float) -> list[PeerDropped]:
        """Expire requests past their timeout and drop peers that went silent or lied."""
        dropped = []
        if self.retired:
            self.retired = {a: r for a, r in self.retired.items() if r[0] > now}
        for peer in list(self.peers.values()):
            self._expire_nonces(peer, now)
            lost = 0
            again = []
            sent = peer.sent
            while sent:
                entry, bid = sent[0]
                if peer.inflight.get(bid) is not entry:
                    sent.popleft()  # answered, or superseded
                    continue
                if abs(entry[1]) + peer.rto > now:
                    break
                sent.popleft()
                del peer.inflight[bid]
                if self._release(bid, peer.addr):
                    again.append(bid)
                lost += 1
            self._requeue(again)
            if lost:
                peer.timeouts += lost
                self.retransmits += lost
                # Nothing at all came back for a timeout: the path may be congested or dead, so halve and back
                # off the timer.  While blocks keep coming, a request that timed out was lost at random (often
                # a lost BLOCK_REQ, the last of a flight): asked again, nothing slowed.
                if now - peer.last_data >= peer.rto and self._once_per_round(peer, now):
                    self._halve(peer)
                    peer.rto = min(self.max_rto, peer.rto * 2)
            self._end_round(peer, now)
            reason = None
            if peer.strikes >= MAX_STRIKES:
                reason = f"sent corrupt data for {peer.strikes} pieces"
            elif now - peer.last_data > self.peer_timeout and (
                peer.inflight or lost or peer.choked or peer.has is not None  # (those are asked HAVE every second)
            ):
                rtt = f"{peer.srtt * 1e3:.1f} ms" if peer.srtt is not None else "never measured"
                reason = (f"sent nothing for {now - peer.last_data:.1f} s ({peer.timeouts} requests timed out,"
                          f" {peer.blocks} blocks received, round trip {rtt}, last timeout {peer.rto:.1f} s)")
            if reason is not None:
                self.remove_peer(peer.addr)
                dropped.append(PeerDropped(peer, reason, silent=peer.strikes < MAX_STRIKES))
        return dropped

    def batch_done(self, now: float) -> list[Addr]:
        """A batch of datagrams was read: loss detection for the peers that sent blocks in it, returned."""
        fed = [addr for addr in self.fed if addr in self.peers]
        self.fed.clear()
        for addr in fed:
            self.lost_in_order(addr, now)
        return fed

    def lost_in_order(self, addr: Addr, now: float) -> int:
        """Blocks asked of *addr* before others it has delivered since (past REORDERING) are lost: ask again now."""
        peer = self.peers.get(addr)
        if peer is None:
            return 0
        sent, inflight = peer.sent, peer.inflight
        horizon = peer.acked - REORDERING
        again = []
        lost = events = 0
        previous = -2
        while sent:
            entry, bid = sent[0]
            if inflight.get(bid) is not entry:
                sent.popleft()
                continue
            if entry[0] > horizon:
                break
            sent.popleft()
            del inflight[bid]
            lost += 1
            # Blocks lost back to back count as one loss (one lost BLOCK_REQ takes a whole batch with it).
            events += entry[0] != previous + 1
            previous = entry[0]
            if self._release(bid, addr):
                again.append(bid)
        if lost:
            self._requeue(again)
            peer.lost_in_order += lost
            peer.round_lost += events
            self.retransmits += lost
        self._end_round(peer, now)
        return lost

    def _end_round(self, peer: PeerState, now: float) -> None:
        """Once a round trip: was this round's loss more than random loss (then halve the window)?"""
        if now - peer.round_start < (peer.srtt or peer.rto):
            return
        lost, delivered = peer.round_lost, peer.round_delivered
        if lost > CONGESTED_LOSS * (lost + delivered) and self._once_per_round(peer, now):
            self._halve(peer)
        peer.round_start, peer.round_lost, peer.round_delivered = now, 0, 0

    def _once_per_round(self, peer: PeerState, now: float) -> bool:
        if peer.last_loss >= 0 and now - peer.last_loss < (peer.srtt or peer.rto):
            return False
        peer.last_loss = now
        return True

    @staticmethod
    def _halve(peer: PeerState) -> None:
        peer.threshold = max(MIN_WINDOW, peer.window / 2)
        peer.window = peer.threshold

    def outstanding(self) -> int:
        return sum(len(p.inflight) for p in self.peers.values())
