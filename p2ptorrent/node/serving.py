"""The seeding side: answer INFO, HAVE, BLOCK and METADATA requests for the files this node shares.

Requests name a file only by info hash, so a peer can never reach a path the
node did not choose to share.  Each request comes in with the time (``now``)
and goes out as ``(reason, replies)``, where *reason* is None for a request
served, or a short label the protocol counts as a rejection (``"bad
cookie"``, ``"not shared"``, ``"bad block"``, ``"unknown file"``, ``"bad
metadata piece"``); no socket
and no clock here, so tests call :class:`Seeder` directly.

It is not pure, and that is deliberate.  A request updates state as it is
answered: the per-address rate budgets, the peers watching a file, how much
of each piece went out, and the upload slots (the :class:`Choker`'s ``tick``
and ``allowed``).  And the seeder owns the disk side of sharing: each shared file, or a
folder torrent's files, opened on demand (p2ptorrent.node.files), and *replies* is a lazy iterator that reads each
block (``pread``) only when the protocol sends it, so a file found changed
on disk while a reply is read is logged and stops being shared right there.

What a peer can make us send:

* Nothing but small answers until it proves it receives at its address: a
  BLOCK_REQ must carry the cookie handed out in INFO_RESP for that address
  (see wire.py), checked before anything else.  An INFO_RESP is 49 bytes for
  a 28-byte INFO_REQ; an ERROR is cut to the size of the request it refuses.
  Both are also limited per address (``INFO_ANSWERS``/``ERRORS`` a second),
  so a forged source address gets at most a trickle of small datagrams.
* Blocks at most ``MAX_BLOCKS_PER_SECOND_PER_PEER`` a second per address (a
  token bucket) while the node serves more than one address: the budget is
  there so that one peer, however many blocks it asks for, cannot crowd out
  the others.  A peer served alone is not limited (there is nobody to
  protect, and a fast downloader on a fast machine must not be slowed by a
  number fixed in advance); as soon as blocks go to two addresses within
  ``CONTENTION_WINDOW``, every address is held to its budget.  The rest of
  a request is dropped, which a real downloader takes as loss and slows
  down.  Blocks are read and sent one at a time, so a request for 256
  blocks never holds 256 blocks in memory.
* Block bytes at most ``MAX_UPLOAD_RATE`` a second in all, when the node
  is given an upload limit (one token bucket, :mod:`ratelimit`; ``limit``
  changes it live).  A request is answered with its first blocks that the
  bucket allows, and the rest is simply not sent: nothing is queued, so
  memory stays flat whatever is asked.  Silence is what keeps the asker's
  loss detection sane: a peer answers in order, so blocks it asked for
  later that do arrive show the tail as lost at once (it asks again, and a
  run of loss halves its window, as a policed TCP flow would), and a
  request that got nothing back times out and backs off.  The bucket saves
  ``ratelimit.BURST_SECONDS`` of its rate to cover that timeout.  INFO, HAVE
  and ERROR answers are small and never limited by it.
* Pieces of a torrent's info dict (METADATA_REQ, for a peer that has only a
  magnet link) only with the cookie, like blocks, and at most
  ``METADATA_ANSWERS_PER_SECOND`` a second per address: an info dict is a
  few KiB, so this is plenty for a real fetch and caps the rest.
* The rate state of at most ``PEER_TABLE_SIZE`` addresses per table (least
  recently seen forgotten first): many source addresses cannot grow memory.
  Only cookie-checked addresses enter the block table.

Swarming.  A file still downloading is shared too (:meth:`Seeder.add_partial`),
with the download's map of pieces written to disk: INFO answers PARTIAL, a
HAVE_REQ gets the bits of the pieces held, and blocks are served from pieces
held only (a block of a piece not held is skipped and counted: the asker's
map was stale).  Upload slots: when a :class:`Choker` is given, a block
request from a peer without a slot gets one E_CHOKED (and a HAVE answer says
CHOKED), so a node serves a few peers at a time, chosen by tit-for-tat.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Iterable, Iterator, Optional, Protocol, Sequence

from twisted.logger import Logger

from p2ptorrent import wire
from p2ptorrent.config import Config
from p2ptorrent.metainfo import Metainfo
from p2ptorrent.node.files import ContentFiles
from p2ptorrent.node.ratelimit import TokenBucket

#: INFO answers a second to one address, and how many it may save up: a
#: download sends one INFO per owner (three tries at most), so this is
#: plenty, and it caps what a forged source address gets (~1 KB/s).
INFO_ANSWERS_PER_SECOND = 20.0
INFO_ANSWER_BURST = 40.0
#: Blocks served to two addresses within this many seconds: they compete,
#: and each is held to MAX_BLOCKS_PER_SECOND_PER_PEER.
CONTENTION_WINDOW = 1.0
#: Peers that asked HAVE about a file within this many seconds hear of each
#: piece it verifies at once (a HAVE with F_NEWS), and at most this many a file.
WATCH_SECONDS = wire.NEWS_SECONDS
WATCHERS_PER_FILE = 64
#: Peers downloading a complete file from us within WATCH_SECONDS: with this
#: many or more, we offer each only the pieces uploaded least so far (as
#: BitTorrent's super-seeding): the peers trade the rest among themselves.
OFFER_FROM_PEERS = 2
#: METADATA answers (1 KiB each) a second to one address, and how many it may save up: 256 KiB at once,
#: then 128 KiB/s (a 4 MiB info dict, the most anyone fetches, in about half a minute).
METADATA_ANSWERS_PER_SECOND = 128.0
METADATA_ANSWER_BURST = 256.0
#: ERROR replies a second to one address.  A refused request needs one
#: answer; the requester's timeouts cover any that are not sent.
ERRORS_PER_SECOND = 10.0
ERROR_BURST = 20.0

#: (why the request was refused, or None; the datagrams to send back)
Reply = tuple[Optional[str], Iterable[bytes]]


class UploadSlots(Protocol):
    def tick(self, now: float) -> None: ...
    def allowed(self, peer: Hashable, now: float) -> bool: ...
    def received_from(self, peer: Hashable, nbytes: int) -> None: ...


@dataclass
class SharedFile:
    meta: Metainfo
    path: Path
    #: Its bytes on disk: the file, or a folder torrent's files (read by content offset).
    content: ContentFiles
    uploaded: int = 0
    blocks_served: int = 0
    #: One byte per piece, nonzero once the piece is on disk and verified; None: every piece.
    have: bytearray | None = None
    #: Bytes of each piece uploaded, how many times each piece went out whole (its
    #: level), how many pieces are at each level, and the lowest level: while several
    #: peers download a complete file from us, we offer only its least uploaded pieces.
    piece_bytes: list[int] | None = None
    levels: bytearray | None = None
    at_level: Counter[int] = field(default_factory=Counter)
    min_level: int = 0
    #: Bytes sent to each address lately (the WATCHERS_PER_FILE most recent): each peer's rate in `info`.
    sent_to: OrderedDict[Any, int] = field(default_factory=OrderedDict)

    @property
    def complete(self) -> bool:
        return self.have is None


class RateTable:
    """One token bucket per address, for at most *size* addresses.

    Each address may spend *rate* units a second and save up to *burst*.
    When the table is full the address seen least recently is forgotten (it
    starts again with a full bucket if it comes back).  A *rate* of 0 means
    no limit (and no state).
    """

    def __init__(self, rate: float, burst: float, size: int) -> None:
        self.rate = rate
        self.burst = burst
        self.size = size
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, addr: Hashable, want: int, now: float, force: bool = False) -> int:
        """Spend up to *want* units for *addr*; return how many it may have (0 to *want*).

        With *force*, all *want* are granted and spent (the bucket empties, no
        further): the use is recorded even when it is not limited.
        """
        if self.rate <= 0:
            return want
        buckets = self._buckets
        entry = buckets.get(addr)
        if entry is None:
            tokens = self.burst
            if len(buckets) >= self.size:
                buckets.popitem(last=False)
        else:
            saved, last = entry
            # max(): the wall clock may step back; never refill on that.
            tokens = min(self.burst, saved + max(0.0, now - last) * self.rate)
            buckets.move_to_end(addr)
        granted = want if force else min(want, int(tokens))
        buckets[addr] = (max(0.0, tokens - granted), now)
        return granted


class Seeder:
    """The files a node shares and the replies to requests for them."""

    log = Logger()

    def __init__(
        self,
        secret: bytes,
        max_block: int,
        *,
        blocks_per_second: int = Config.MAX_BLOCKS_PER_SECOND_PER_PEER,
        table_size: int = Config.PEER_TABLE_SIZE,
        slots: UploadSlots | None = None,
        upload_rate: int = Config.MAX_UPLOAD_RATE,
    ) -> None:
        self.secret = secret
        #: Upload slots (see choker.py); None serves every peer that asks.
        self.slots = slots
        self.max_block = max_block
        self.files: dict[bytes, SharedFile] = {}
        #: What was limited: the protocol shares this Counter for its own counts.
        self.counts: Counter[str] = Counter()
        burst = max(2 * wire.MAX_BLOCKS_PER_REQUEST, blocks_per_second // 8)
        self.blocks = RateTable(blocks_per_second, burst, table_size)
        self.info_answers = RateTable(INFO_ANSWERS_PER_SECOND, INFO_ANSWER_BURST, table_size)
        self.errors = RateTable(ERRORS_PER_SECOND, ERROR_BURST, table_size)
        self.metadata_answers = RateTable(METADATA_ANSWERS_PER_SECOND, METADATA_ANSWER_BURST, table_size)
        #: The node's upload limit (MAX_UPLOAD_RATE, bytes of blocks a second to everyone; 0: none).
        self.upload = TokenBucket(min_burst=max_block)
        self.upload.set_rate(upload_rate, 0.0)
        #: Per info hash, the addresses that asked HAVE lately (cookie-checked): when, and the nonce of their
        #: latest HAVE_REQ (0: none yet), which the news we push them carries.
        self.watchers: dict[bytes, OrderedDict[Any, tuple[float, int]]] = {}
        self._last_served: Any = None
        self._last_served_at = float("-inf")
        self._contended_until = float("-inf")

    @classmethod
    def from_settings(cls, secret: bytes, settings: Config, slots: UploadSlots | None = None) -> "Seeder":
        return cls(
            secret,
            settings.BUFFER_SIZE - wire.BLOCK_OVERHEAD,
            blocks_per_second=settings.MAX_BLOCKS_PER_SECOND_PER_PEER,
            table_size=settings.PEER_TABLE_SIZE,
            slots=slots,
            upload_rate=settings.MAX_UPLOAD_RATE,
        )

    def add(self, meta: Metainfo, path: Path) -> SharedFile:
        old = self.files.get(meta.info_hash)
        if old is not None and old.path == path and old.complete:
            return old
        # A single file the user shares may be a link to it, as always; no link is followed inside a folder.
        content = _opened(ContentFiles.of(path, meta, writable=False, follow_leaf=True))
        shared = self.files[meta.info_hash] = SharedFile(meta, path, content)
        shared.piece_bytes = [0] * meta.num_pieces
        shared.levels = bytearray(meta.num_pieces)
        shared.at_level[0] = meta.num_pieces
        if old is not None:
            old.content.close()
            if old.path != path or not old.complete:  # the download finished: its uploads count on
                shared.uploaded, shared.blocks_served = old.uploaded, old.blocks_served
        return shared

    def add_partial(self, meta: Metainfo, path: Path, have: bytearray) -> SharedFile:
        """Share a file still downloading: only the pieces *have* marks (it grows as they are written)."""
        content = _opened(ContentFiles.of(path, meta, writable=False))
        old = self.files.get(meta.info_hash)
        if old is not None:
            old.content.close()
        shared = self.files[meta.info_hash] = SharedFile(meta, path, content, have=have)
        return shared

    def news(self, info_hash: bytes, piece: int, now: float) -> list[tuple[bytes, Any]]:
        """A piece of a file still downloading verified: a HAVE for each peer that asked lately."""
        watching = self.watchers.get(info_hash)
        if not watching:
            return []
        return [(wire.encode_have(info_hash, nonce, piece, 1, wire.F_NEWS, b"\x80"), addr)
                for addr, (seen, nonce) in watching.items() if nonce and now - seen <= WATCH_SECONDS]

    def remove(self, info_hash: bytes) -> None:
        self.watchers.pop(info_hash, None)
        shared = self.files.pop(info_hash, None)
        if shared is not None:
            shared.content.close()

    def close(self) -> None:
        for info_hash in list(self.files):
            self.remove(info_hash)

    def cookie(self, addr: Any) -> bytes:
        host, port = addr[0], addr[1]
        return hmac.new(self.secret, f"{host}|{port}".encode(), hashlib.sha256).digest()[: wire.COOKIE_SIZE]

    # ---- requests

    def on_info(self, msg: wire.InfoRequest, addr: Any, now: float = 0.0) -> Reply:
        """Size, piece length and this address's cookie; NOT_FOUND for a file not shared here."""
        shared = self.files.get(msg.info_hash)
        reason = None if shared is not None else "unknown file"
        if not self.info_answers.take(addr, 1, now):
            self.counts["limited:INFO answers"] += 1
            return reason, ()
        if shared is None:
            return reason, (wire.encode_info_response(msg.nonce, msg.info_hash, wire.NOT_FOUND, 0, 0, bytes(8)),)
        meta = shared.meta
        status = wire.OK if shared.complete else wire.PARTIAL
        answer = wire.encode_info_response(msg.nonce, msg.info_hash, status, meta.length, meta.piece_length, self.cookie(addr))
        return None, (answer,)

    def on_have(self, msg: wire.HaveRequest, addr: Any, size: int, now: float = 0.0) -> Reply:
        """The bits of the pieces held among those asked, and whether the asker holds an upload slot."""
        if not hmac.compare_digest(msg.cookie, self.cookie(addr)):
            return "bad cookie", self._error(addr, now, size, msg.info_hash, msg.nonce, wire.E_BAD_COOKIE, "bad cookie: ask INFO")
        shared = self.files.get(msg.info_hash)
        if shared is None:
            return "not shared", self._error(addr, now, size, msg.info_hash, msg.nonce, wire.E_NOT_FOUND, "not shared here")
        num_pieces = shared.meta.num_pieces
        if msg.flags & wire.F_INTERESTED:
            self._watch(msg.info_hash, addr, now, msg.nonce)
        if msg.first >= num_pieces:
            return "bad block", self._error(addr, now, size, msg.info_hash, msg.nonce, wire.E_BAD_REQUEST, "no such pieces")
        count = min(msg.count, num_pieces - msg.first,
                    wire.max_have_count(min(self.max_block + wire.BLOCK_OVERHEAD, wire.SAFE_DATAGRAM)))
        flags = 0
        if shared.have is None and self._offering(shared, msg.info_hash, now):
            bits = self._offer_bits(shared, msg.first, count)
        elif shared.have is None:
            flags |= wire.F_COMPLETE
            bits = _all_bits(count)
        else:
            bits = wire.pack_bits(shared.have, msg.first, count)
        if self.slots is not None:
            self.slots.tick(now)
            if msg.flags & wire.F_INTERESTED:
                if not self.slots.allowed(addr, now):
                    flags |= wire.F_CHOKED
            elif addr not in getattr(self.slots, "unchoked", ()):
                flags |= wire.F_CHOKED
        return None, (wire.encode_have(msg.info_hash, msg.nonce, msg.first, count, flags, bits),)

    def on_blocks(self, msg: wire.BlockRequest, addr: Any, size: int, now: float = 0.0) -> Reply:
        """The blocks asked for (as many as this address's budget allows), or one short ERROR.

        *size* is the request's length in bytes: an ERROR is never longer.
        """
        # The cookie first: an address that has not proven it receives learns
        # nothing, not even whether the file is shared here.
        if not hmac.compare_digest(msg.cookie, self.cookie(addr)):
            return "bad cookie", self._error(addr, now, size, msg.info_hash, msg.nonce, wire.E_BAD_COOKIE, "bad cookie: ask INFO")
        shared = self.files.get(msg.info_hash)
        if shared is None:
            return "not shared", self._error(addr, now, size, msg.info_hash, msg.nonce, wire.E_NOT_FOUND, "not shared here")
        meta = shared.meta
        num_pieces, piece_length, max_block = meta.num_pieces, meta.piece_length, self.max_block
        last_piece = meta.length - (num_pieces - 1) * piece_length if num_pieces else 0
        # Check every block before reading any: a request is served whole or refused.
        for piece, offset, length in msg.blocks:
            if (
                piece >= num_pieces
                or not 0 < length <= max_block
                or offset + length > (piece_length if piece < num_pieces - 1 else last_piece)
            ):
                text = f"no block {piece}:{offset}+{length}"
                return "bad block", self._error(addr, now, size, msg.info_hash, msg.nonce, wire.E_BAD_REQUEST, text)
        if self.slots is not None:
            self.slots.tick(now)
            if not self.slots.allowed(addr, now):
                self.counts["limited:choked"] += 1
                return None, self._error(addr, now, size, msg.info_hash, msg.nonce, wire.E_CHOKED, "no upload slot: ask HAVE later")
        have = shared.have
        blocks = msg.blocks
        self._watch(msg.info_hash, addr, now)
        offer: tuple[bytes, ...] = ()
        if have is None and self._offering(shared, msg.info_hash, now):
            levels, floor = shared.levels, shared.min_level
            assert levels is not None
            offered = tuple(b for b in blocks if levels[b[0]] <= floor)
            if len(offered) < len(blocks):
                self.counts["limited:offered elsewhere"] += len(blocks) - len(offered)
                blocks = offered
                # Say at once what we offer now, so the asker stops asking for the rest.
                first = (msg.blocks[0][0] // MAX_OFFER) * MAX_OFFER
                count = min(MAX_OFFER, meta.num_pieces - first)
                offer = (wire.encode_have(msg.info_hash, msg.nonce, first, count, 0, self._offer_bits(shared, first, count)),)
                if not blocks:
                    return None, offer
        if have is not None:
            held = tuple(b for b in blocks if have[b[0]])
            if len(held) < len(blocks):
                self.counts["limited:not held"] += len(blocks) - len(held)
                blocks = held
                if not blocks:
                    return None, ()
        wanted = len(blocks)
        # Alone, a peer gets all it asks, but its budget is spent all the same:
        # a flood that was alone is held back at once when others come.
        granted = self.blocks.take(addr, wanted, now, force=not self._contended(addr, now))
        if granted < wanted:
            self.counts["limited:blocks"] += wanted - granted
            blocks = blocks[:granted]
        if self.upload.rate > 0:
            # The node's upload limit: the first blocks its bucket allows; the rest is not sent (module docstring).
            allowed = self.upload.take([b[2] for b in blocks], now)
            if allowed < len(blocks):
                self.counts["limited:upload rate"] += len(blocks) - allowed
                blocks = blocks[:allowed]
                if not blocks:
                    return None, offer
        replies = self._read(shared, msg.info_hash, msg.nonce, blocks, addr)
        return None, (itertools.chain(offer, replies) if offer else replies)

    def on_metadata(self, msg: wire.MetadataRequest, addr: Any, size: int, now: float = 0.0) -> Reply:
        """One piece of the file's bencoded info dict, exactly as hashed: for a peer that has only a magnet link.

        The cookie first, as for blocks: an address that has not proven it receives gets one short ERROR.
        """
        if not hmac.compare_digest(msg.cookie, self.cookie(addr)):
            return "bad cookie", self._error(addr, now, size, msg.info_hash, msg.nonce, wire.E_BAD_COOKIE, "bad cookie: ask INFO")
        shared = self.files.get(msg.info_hash)
        info = shared.meta.info_bytes if shared is not None else b""
        if not info or len(info) > wire.MAX_METADATA_SIZE:  # (too big for anyone to fetch: none of ours is)
            return "not shared", self._error(addr, now, size, msg.info_hash, msg.nonce, wire.E_NOT_FOUND, "not shared here")
        total = len(info)
        if msg.piece >= wire.metadata_pieces(total):
            text = f"no metadata piece {msg.piece}"
            return "bad metadata piece", self._error(addr, now, size, msg.info_hash, msg.nonce, wire.E_BAD_REQUEST, text)
        if not self.metadata_answers.take(addr, 1, now):
            self.counts["limited:metadata"] += 1
            return None, ()
        at = msg.piece * wire.METADATA_PIECE
        return None, (wire.encode_metadata(msg.info_hash, msg.nonce, total, msg.piece, info[at : at + wire.METADATA_PIECE]),)

    def _watch(self, info_hash: bytes, addr: Any, now: float, nonce: int | None = None) -> None:
        watching = self.watchers.setdefault(info_hash, OrderedDict())
        if nonce is None:  # a block request: still watching, news still answers its latest HAVE_REQ
            nonce = watching.get(addr, (0.0, 0))[1]
        watching[addr] = (now, nonce)
        watching.move_to_end(addr)
        if len(watching) > WATCHERS_PER_FILE:
            watching.popitem(last=False)

    def _offering(self, shared: SharedFile, info_hash: bytes, now: float) -> bool:
        """Do several peers download this complete file from us at once (and do we swarm)?"""
        if self.slots is None:
            return False
        watching = self.watchers.get(info_hash)
        if not watching or len(watching) < OFFER_FROM_PEERS:
            return False
        recent = 0
        for seen, _ in reversed(watching.values()):  # most recent last
            if now - seen > WATCH_SECONDS:
                break
            recent += 1
            if recent >= OFFER_FROM_PEERS:
                return True
        return False

    def _offer_bits(self, shared: SharedFile, first: int, count: int) -> bytes:
        levels = shared.levels
        assert levels is not None
        return wire.pack_bits(bytes(1 if lvl <= shared.min_level else 0 for lvl in levels[first : first + count]), 0, count)

    def _contended(self, addr: Any, now: float) -> bool:
        """Whether another address was served blocks lately (then budgets apply)."""
        if addr != self._last_served and now - self._last_served_at <= CONTENTION_WINDOW:
            self._contended_until = now + CONTENTION_WINDOW
        self._last_served, self._last_served_at = addr, now
        return now <= self._contended_until

    def _read(
        self, shared: SharedFile, info_hash: bytes, nonce: int, blocks: Sequence[tuple[int, int, int]], addr: Any,
    ) -> Iterator[bytes]:
        """Each block as a datagram, read from disk when the protocol is ready to send it: a run of blocks
        that follow each other in the file with one ``pread`` (at most READ_RUN bytes at a time)."""
        piece_length = shared.meta.piece_length
        levels = shared.levels
        sent_to = shared.sent_to
        if addr in sent_to:
            sent_to.move_to_end(addr)
        else:
            sent_to[addr] = 0
            if len(sent_to) > WATCHERS_PER_FILE:
                sent_to.popitem(last=False)
        i, n = 0, len(blocks)
        while i < n:
            piece, offset, length = blocks[i]
            at = piece * piece_length + offset
            j, end = i + 1, at + length
            while j < n and end - at < READ_RUN:
                p, o, ln = blocks[j]
                if p * piece_length + o != end:
                    break
                end += ln
                j += 1
            try:
                data = shared.content.read(at, end - at)
            except OSError as e:
                data, why = b"", e.strerror or str(e)
            else:
                why = "it is shorter than its torrent says"
            if len(data) != end - at:
                self.log.error("{path} cannot be served ({why}): it changed on disk; no longer sharing it",
                               path=str(shared.path), why=why)
                self.remove(info_hash)
                yield wire.encode_error(info_hash, nonce, wire.E_NOT_FOUND, "file changed on disk")
                return
            view = memoryview(data)
            for piece, offset, length in blocks[i:j]:
                start = piece * piece_length + offset - at
                shared.uploaded += length
                shared.blocks_served += 1
                sent_to[addr] = sent_to.get(addr, 0) + length
                if levels is not None:
                    _count_upload(shared, piece, length)
                yield wire.encode_block(info_hash, nonce, piece, offset, view[start : start + length])
            i = j

    def _error(self, addr: Any, now: float, size: int, info_hash: bytes, nonce: int, code: int, text: str) -> tuple[bytes, ...]:
        if not self.errors.take(addr, 1, now):
            self.counts["limited:errors"] += 1
            return ()
        room = max(0, min(wire.MAX_ERROR_MESSAGE, size - wire.ERROR_OVERHEAD))
        return (wire.encode_error(info_hash, nonce, code, text[:room]),)


def _opened(content: ContentFiles) -> ContentFiles:
    """*content* once its files are checked there (OSError if one is missing, not a file, or of another size)."""
    try:
        content.check()
    except OSError:
        content.close()
        raise
    return content


def _all_bits(count: int) -> bytes:
    """Every one of *count* pieces: full bytes, and the top bits of the last."""
    whole, rest = divmod(count, 8)
    return b"\xff" * whole + (bytes([(0xFF << (8 - rest)) & 0xFF]) if rest else b"")


#: Bytes of blocks that follow each other in the file read with one pread.
READ_RUN = 256 * 1024
#: Pieces described by the HAVE sent with a partly refused request.
MAX_OFFER = 8192


def _count_upload(shared: SharedFile, piece: int, length: int) -> None:
    """*length* bytes of *piece* went out: raise its level each time a whole piece's worth has."""
    assert shared.piece_bytes is not None and shared.levels is not None
    total = shared.piece_bytes[piece] = shared.piece_bytes[piece] + length
    level = shared.levels[piece]
    meta = shared.meta  # (every block sent comes here: arithmetic, not Metainfo's checked accessors)
    size = meta.piece_length if (piece + 1) * meta.piece_length <= meta.length else meta.length - piece * meta.piece_length
    if level < 255 and total >= (level + 1) * size:
        shared.levels[piece] = level + 1
        at = shared.at_level
        at[level] -= 1
        at[level + 1] += 1
        if level == shared.min_level and at[level] == 0:
            del at[level]
            shared.min_level = level + 1
