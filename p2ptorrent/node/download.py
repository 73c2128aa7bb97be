"""One download, from the tracker's answer to a verified file in the node's folder.

It asks the tracker who owns the file, greets up to MAX_SPLITTNES_RATE owners
(INFO: size, piece length, cookie), then lets the :class:`Transfer` hand out
blocks.  Each greeted owner's share of the work is a Deferred: it fires with
what that owner delivered when the download completes, or fails when the
owner is dropped (silent, lying, or gone), and a spare owner is greeted in
its place.  The download completes when every piece verified and the whole
file hash matched; it fails, with a message that says why, when no owner is
left.  Nothing unverified is ever written, and a failed download leaves no
file under its real name.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2ptorrent import wire
from p2ptorrent.config import Config
from p2ptorrent.metainfo import Metainfo
from p2ptorrent.node.storage import PartFile, StorageError
from p2ptorrent.node.transfer import Geometry, PieceAssembled, PieceFailed, PieceVerified, Transfer
from p2ptorrent.node.writer import InlineWriter, PieceWriter

#: How often timeouts are checked (seconds).
TICK = 0.02
#: INFO requests per owner before it counts as unreachable.
INFO_TRIES = 3
#: Seconds between HAVE requests to a peer still downloading (or refusing us for now).
HAVE_INTERVAL = 1.0
#: After losing an owner with no spare left, ask the tracker again this soon at most.
NEED_SOON = 1.0


class DownloadError(Exception):
    """A download could not finish; str() is the reason, for people."""


class PeerLost(Exception):
    """One owner's share ended early; the others take over its work."""


class Owner(Protocol):
    node_id: int
    host: str
    port: int


class Network(Protocol):
    def send(self, datagram: bytes, addr: Any) -> None: ...
    def ask_info(self, addr: Any, info_hash: bytes, timeout: float) -> Deferred[wire.InfoResponse]: ...


@dataclass
class ShareReport:
    """What one owner delivered."""

    node_id: int
    addr: Any
    bytes: int
    blocks: int
    pieces: int
    status: str


@dataclass
class DownloadResult:
    path: Any
    length: int
    seconds: float
    shares: list[ShareReport] = field(default_factory=list)
    retransmits: int = 0
    duplicates: int = 0

    @property
    def rate(self) -> float:
        return self.length / self.seconds if self.seconds > 0 else float("inf")

    @property
    def credited(self) -> list[int]:
        """Owners that sent at least one block of a piece that verified."""
        return sorted({s.node_id for s in self.shares if s.pieces > 0})


class Download:
    log = Logger()

    def __init__(
        self,
        meta: Metainfo,
        part: PartFile,
        network: Network,
        need: Callable[[], Deferred[list[Any]]],
        clock: IReactorTime,
        settings: Config,
        node_id: int,
        progress: Callable[[dict[str, Any]], None] | None = None,
        wallclock: Callable[[], float] = time.monotonic,
        writer: Callable[[PartFile, Callable[[StorageError], None]], PieceWriter] = InlineWriter,
        announce: Callable[[int], Any] | None = None,
        rng: random.Random | None = None,
        uploaded: Callable[[], int] | None = None,
    ) -> None:
        self.meta = meta
        self.part = part
        self.network = network
        self.need = need
        self.clock = clock
        self.settings = settings
        self.node_id = node_id
        self.progress = progress
        self.wallclock = wallclock
        self.make_writer = writer
        self.writer: PieceWriter | None = None
        #: Tells the tracker how many pieces we hold (we serve them: swarming).
        self.announce = announce
        self._announced = -1
        self._next_announce = 0.0
        self._next_need = 0.0
        self._next_have = 0.0
        #: Bytes we served of this file so far (for the upload rate in status).
        self.uploaded = uploaded
        self._dropped_bytes = 0
        #: (time, bytes received, bytes uploaded) a second ago and now: the rates in status.
        self._rate_marks: deque[tuple[float, int, int]] = deque(maxlen=6)
        geo = Geometry(meta.length, meta.piece_length, settings.CHUNK_PIECES_SIZE)
        self.transfer = Transfer(
            geo,
            meta.pieces,
            first_timeout=settings.REQUEST_TIMEOUT,
            peer_timeout=settings.PEER_TIMEOUT,
            max_window=settings.MAX_REQUESTS_IN_FLIGHT,
            max_batch=wire.max_blocks_per_request(settings.BUFFER_SIZE),
            max_inflight_bytes=settings.SOCKET_BUFFER // 2,
            check_inline=False,  # the writer checks each piece (see writer.py)
            rng=rng,
        )
        self.shares: dict[Any, Deferred[ShareReport]] = {}
        self.ended: list[Deferred[ShareReport]] = []
        self.pieces_from: dict[Any, int] = {}
        self.candidates: deque[tuple[str, int, int, bool]] = deque()
        self.tried: set[Any] = set()
        self.greeting: set[Any] = set()
        #: Greeted owners the tracker said are still downloading (they count
        #: against MAX_PARTIAL_PEERS, the others against MAX_SPLITTNES_RATE).
        self.partial_owner: dict[Any, bool] = {}
        #: Owners still being greeted after a missed answer: they keep trying,
        #: but no longer hold a slot, so a spare is greeted beside them.
        self.lagging: set[Any] = set()
        #: Pieces verified since the last log line, by sending node: logged once a
        #: second, not once a piece, so logging stays off the hot path.
        self._pieces_log: dict[int, list[int]] = {}
        self._pieces_logged_at = 0.0
        #: What became of each owner we gave up on, by address: the failure message names them.
        self.outcomes: dict[Any, str] = {}
        self.asked_tracker = 0
        self.asking = False
        self.result: Deferred[DownloadResult] = Deferred()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        self._started = 0.0
        self._wall_started = 0.0
        self._last_progress = -1.0
        self._finished = False
        #: Ended by stop() (the node is stopping), not by a failure.
        self._stopped = False
        #: Every piece verified; the writer is finishing the file.
        self._finishing = False

    # ---- public
    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def done_bytes(self) -> int:
        return sum(self.meta.piece_size(p) for p, ok in enumerate(self.transfer.verified) if ok)

    def start(self) -> Deferred[DownloadResult]:
        self._started = self.clock.seconds()
        self._wall_started = self.wallclock()
        try:
            self.part.open()
        except StorageError as e:
            self._fail(str(e))
            return self.result
        self.writer = self.make_writer(self.part, self._write_failed)
        self.transfer.mark_have(self.part.verified())
        if self.transfer.done:  # an empty file, or every piece already here
            self._complete()
            return self.result
        self._loop.start(TICK, now=False).addErrback(self._loop_died)
        self._announce()
        self._ask_tracker()
        return self.result

    def stop(self, reason: str) -> None:
        """End it early (the node is stopping): keep the verified pieces for a later resume."""
        if not self._finishing:  # else the file is being renamed: let that end
            self._stopped = True
            self._fail(reason)

    def on_message(self, msg: wire.Block | wire.Error | wire.Have, addr: Any) -> None:
        if self._finished or self._finishing:
            return
        if isinstance(msg, wire.Error):
            self._on_error(msg, addr)
        elif isinstance(msg, wire.Have):
            self._on_have(msg, addr)
        else:
            self.on_block(addr, msg.piece, msg.offset, msg.data)

    def on_block(self, addr: Any, piece: int, offset: int, data: Any) -> None:
        if self._finished or self._finishing:
            return
        outcome = self.transfer.on_block(addr, piece, offset, data, self.clock.seconds())
        if isinstance(outcome, PieceAssembled):
            assert self.writer is not None
            self.writer.submit(outcome.piece, outcome.data, self.transfer.piece_hash(outcome.piece), self._checked)
            if self._finished or self._finishing:  # an in-line writer finished the piece, or failed
                return
        self._send_requests(only=addr)

    # ---- owners
    def _ask_tracker(self) -> None:
        self.asked_tracker += 1
        self.asking = True
        # Soon at first (nodes that start together meet within a second), then every SWARM_INTERVAL.
        self._next_need = self.clock.seconds() + min(self.settings.SWARM_INTERVAL, 0.25 * 2 ** self.asked_tracker)
        d = self.need()
        d.addCallbacks(self._got_owners, self._tracker_failed)

    def _tracker_failed(self, f: Failure) -> None:
        self.asking = False
        if self.transfer.peers or self.greeting:
            self.log.warn("{name}: the tracker did not answer ({why}); going on with the owners known", name=self.name, why=f.getErrorMessage())
            return
        self._fail(f"cannot ask the tracker for owners of {self.name}: {f.getErrorMessage()}")

    def _got_owners(self, owners: list[Any]) -> None:
        self.asking = False
        if self._finished:
            return
        known = {(c[0], c[1]) for c in self.candidates}
        fresh = [
            (o.host, o.port, o.node_id, bool(getattr(o, "partial", False)))
            for o in owners
            if o.node_id != self.node_id and (o.host, o.port) not in self.tried and (o.host, o.port) not in known
        ]
        if self.asked_tracker == 1 or fresh:
            partial = [o.node_id for o in owners if getattr(o, "partial", False)]
            self.log.info(
                "{name}: tracker ranked owners {ranking}{partial}",
                name=self.name, ranking=[o.node_id for o in owners],
                partial=f"; still downloading: {partial}" if partial else "",
            )
        self.candidates.extend(fresh)
        if any(c[3] for c in fresh):
            self.transfer.swarm = True
        if not fresh and not self.transfer.peers and not self.greeting:
            if self.asked_tracker == 1:
                self._fail(f"no node is sharing {self.name}: the tracker knows no live owner")
            else:
                self._fail(self._gone_text())
            return
        self._recruit()

    def _taken(self) -> tuple[int, int]:
        """(complete owners, partial owners) fetched from or being greeted."""
        seeds = partial = 0
        for peer in self.transfer.peers.values():
            if peer.has is None:
                seeds += 1
            else:
                partial += 1
        for addr in self.greeting - self.lagging:
            if self.partial_owner.get(addr):
                partial += 1
            else:
                seeds += 1
        return seeds, partial

    def _recruit(self) -> None:
        seeds, partial = self._taken()
        room_seeds = self.settings.MAX_SPLITTNES_RATE - seeds
        room_partial = self.settings.MAX_PARTIAL_PEERS - partial
        waiting: deque[tuple[str, int, int, bool]] = deque()
        while self.candidates and (room_seeds > 0 or room_partial > 0):
            host, port, node_id, is_partial = entry = self.candidates.popleft()
            addr = (host, port)
            if addr in self.tried:
                continue
            if is_partial:
                if room_partial <= 0:
                    waiting.append(entry)
                    continue
                room_partial -= 1
            else:
                if room_seeds <= 0:
                    waiting.append(entry)
                    continue
                room_seeds -= 1
            self.tried.add(addr)
            self.greeting.add(addr)
            self.partial_owner[addr] = is_partial
            self._greet(addr, node_id, INFO_TRIES)
        waiting.extend(self.candidates)
        self.candidates = waiting

    def _greet(self, addr: Any, node_id: int, tries: int, rejoin: bool = False) -> None:
        timeout = self.settings.REQUEST_TIMEOUT * 2 ** (INFO_TRIES - tries)
        d = self.network.ask_info(addr, self.meta.info_hash, timeout)

        def answered(resp: wire.InfoResponse) -> None:
            self.greeting.discard(addr)
            late = addr in self.lagging
            self.lagging.discard(addr)
            if self._finished:
                return
            if late and not rejoin and self._taken()[self.partial_owner.get(addr, False)] >= (
                self.settings.MAX_PARTIAL_PEERS if self.partial_owner.get(addr) else self.settings.MAX_SPLITTNES_RATE
            ):
                self.log.info("{name}: node {node} answered late; enough owners already", name=self.name, node=node_id)
                return
            if resp.status not in (wire.OK, wire.PARTIAL):
                self.log.info("{name}: node {node} at {addr} does not have it", name=self.name, node=node_id, addr=addr)
                self.outcomes[addr] = f"node {node_id} ({address_text(addr)}) does not have it"
                self._replace()
            elif resp.length != self.meta.length or resp.piece_length != self.meta.piece_length:
                self.log.warn("{name}: node {node} describes a different file; ignoring it", name=self.name, node=node_id)
                self.outcomes[addr] = f"node {node_id} ({address_text(addr)}) describes a different file"
                self._replace()
            elif rejoin:
                self.transfer.set_cookie(addr, resp.cookie)
            else:
                partial = resp.status == wire.PARTIAL
                self.partial_owner[addr] = partial
                self.transfer.add_peer(addr, node_id, resp.cookie, self.clock.seconds(), () if partial else None)
                share: Deferred[ShareReport] = Deferred()
                self.shares[addr] = share
                self.log.info(
                    "{name}: fetching from node {node} at {host}:{port}{partial}",
                    name=self.name, node=node_id, host=addr[0], port=addr[1],
                    partial=" (still downloading: asking which pieces it has)" if partial else "",
                )
                if partial:
                    self._ask_have(self.transfer.peers[addr])
                else:
                    self._send_requests(only=addr)

        def unanswered(f: Failure) -> None:
            if self._finished:
                self.greeting.discard(addr)
                return
            if tries > 1:
                self.log.info("{name}: no INFO answer from node {node}, retrying", name=self.name, node=node_id)
                self._greet(addr, node_id, tries - 1, rejoin)
                if not rejoin and addr not in self.lagging:
                    self.lagging.add(addr)
                    self._recruit()
                return
            self.greeting.discard(addr)
            self.lagging.discard(addr)
            self.log.warn("{name}: node {node} at {addr} is unreachable: {why}", name=self.name, node=node_id, addr=addr, why=f.getErrorMessage())
            self.outcomes[addr] = f"node {node_id} ({address_text(addr)}) did not answer ({INFO_TRIES} tries)"
            if rejoin:
                self._drop(addr, "stopped answering")
            self._replace()

        d.addCallbacks(answered, unanswered)

    def _replace(self) -> None:
        """An owner left or never answered: greet a spare, or ask the tracker, or give up."""
        if self._finished or self.asking:
            return
        self._recruit()
        if not self.candidates:  # short of peers: meet new ones soon
            self._next_need = min(self._next_need, self.clock.seconds() + NEED_SOON)
        if not self.transfer.peers and not self.greeting:
            if self.asked_tracker < 2:
                self._ask_tracker()
            else:
                self._fail(self._gone_text())

    def _drop(self, addr: Any, reason: str) -> None:
        self._share_ended(addr, self.transfer.remove_peer(addr), reason)

    def _share_ended(self, addr: Any, peer: Any, reason: str) -> None:
        share = self.shares.pop(addr, None)
        node = peer.node_id if peer else "?"
        if peer is not None:
            self._dropped_bytes += peer.bytes
        self.log.warn("{name}: dropped node {node} at {addr}: {reason}", name=self.name, node=node, addr=addr, reason=reason)
        self.outcomes[addr] = f"node {node} ({address_text(addr)}) {reason}"
        if share is not None:
            self.ended.append(share)
            share.errback(PeerLost(self._report(addr, peer, f"dropped: {reason}")))

    def _on_error(self, msg: wire.Error, addr: Any) -> None:
        if addr not in self.transfer.peers:
            return
        if msg.code == wire.E_BAD_COOKIE and addr not in self.greeting:
            self.greeting.add(addr)
            self._greet(addr, self.transfer.peers[addr].node_id, INFO_TRIES, rejoin=True)
        elif msg.code == wire.E_CHOKED:
            # No upload slot for us there now: its blocks go to others; HAVE tells when it has one.
            self.transfer.choke(addr)
        elif msg.code != wire.E_BAD_COOKIE:
            self._drop(addr, f"refused: {msg.message or msg.code}")
            self._replace()

    # ---- what peers have
    def _on_have(self, msg: wire.Have, addr: Any) -> None:
        transfer = self.transfer
        peer = transfer.peers.get(addr)
        if peer is None:
            return
        transfer.heard(addr, self.clock.seconds())
        if msg.flags & wire.F_COMPLETE:
            transfer.peer_complete(addr)
        elif msg.flags & wire.F_NEWS:
            transfer.peer_has(addr, msg.pieces())
        else:
            # What it offers now, in that range: a node still downloading only gains pieces;
            # a complete owner serving several of us offers the pieces it has uploaded least.
            transfer.set_have(addr, msg.first, msg.count, msg.pieces())
        if msg.flags & wire.F_NEWS:
            pass  # pushed news of a piece: our slot there is as it was
        elif msg.flags & wire.F_CHOKED:
            transfer.choke(addr)
        else:
            transfer.unchoke(addr)
        self._send_requests(only=addr)

    def _ask_have(self, peer: Any) -> None:
        """Which pieces has this peer (and may we ask it for blocks)?  In as many requests as it takes."""
        n = self.meta.num_pieces
        step = wire.max_have_count(self.settings.BUFFER_SIZE)
        flags = wire.F_INTERESTED if self.transfer.wants_from(peer.addr) else 0
        for first in range(0, n, step):
            count = min(step, n - first)
            self.network.send(wire.encode_have_request(self.meta.info_hash, peer.cookie, first, count, flags), peer.addr)

    def _announce(self) -> None:
        """Tell the tracker how many pieces we hold: other downloaders may fetch them from us."""
        if self.announce is None:
            return
        have = self.meta.num_pieces - self.transfer.remaining
        self._next_announce = self.clock.seconds() + self.settings.SWARM_INTERVAL
        if have == self._announced:
            return
        self._announced = have
        try:
            d = self.announce(have)
        except Exception as e:  # never let a report stop the download
            self.log.warn("{name}: could not report progress to the tracker: {why}", name=self.name, why=e)
            return
        if isinstance(d, Deferred):
            d.addErrback(lambda f: self.log.warn(
                "{name}: could not report progress to the tracker: {why}", name=self.name, why=f.getErrorMessage()))

    # ---- pieces
    def _checked(self, piece: int, ok: bool) -> None:
        """The writer's verdict on an assembled piece (if good, its bytes are written by now)."""
        if self._finished or self._finishing:
            return
        outcome = self.transfer.checked(piece, ok)
        if isinstance(outcome, PieceVerified):
            self._on_piece(outcome)
        elif isinstance(outcome, PieceFailed):
            self.log.warn(
                "{name}: piece {piece} failed verification (data from {peers}); fetching it again",
                name=self.name, piece=outcome.piece, peers=self._ids(outcome.sources),
            )
            self._send_requests()

    def _on_piece(self, ok: PieceVerified) -> None:
        news = getattr(self.network, "piece_news", None)
        if news is not None:
            news(self.meta.info_hash, ok.piece)
        for addr in ok.sources:
            self.pieces_from[addr] = self.pieces_from.get(addr, 0) + 1
        if ok.corrupt_from:
            self.log.warn(
                "{name}: nodes {nodes} had sent corrupt blocks of piece {piece}",
                name=self.name, nodes=self._ids(ok.corrupt_from), piece=ok.piece,
            )
        for node in self._ids(ok.sources):
            self._pieces_log.setdefault(node, []).append(ok.piece)
        if self.transfer.done:
            self._complete()
        else:
            self._report_progress()

    def _write_failed(self, e: StorageError) -> None:
        self._fail(str(e))

    def _complete(self) -> None:
        """Every piece verified: once the writer has it all on disk and the whole hash matched, done."""
        assert self.writer is not None
        self._log_pieces()
        self._finishing = True
        self._stop_loop()
        self.writer.finish().addCallbacks(self._completed, self._finish_failed)

    def _finish_failed(self, f: Failure) -> None:
        self._finishing = False
        self._fail(f.getErrorMessage() if f.check(StorageError) else f"internal error: {f.getErrorMessage()}")

    def _completed(self, path: Any) -> None:
        self._finishing = False
        if self._finished:
            return
        self._finished = True
        self._stop_loop()
        seconds = self.wallclock() - self._wall_started
        reports = []
        for addr, share in list(self.shares.items()):
            peer = self.transfer.peers.get(addr)
            if peer is not None:
                self.log.info(
                    "{name}: node {node} path: window {window:.0f} blocks, round trip {srtt:.1f} ms (min {min_rtt:.1f}),"
                    " {timeouts} timeouts",
                    name=self.name, node=peer.node_id, window=peer.window, srtt=(peer.srtt or 0) * 1e3,
                    min_rtt=min(peer.min_rtt, 1e3) * 1e3, timeouts=peer.timeouts,
                )
            report = self._report(addr, peer, "finished")
            reports.append(report)
            share.callback(report)
        self.ended.extend(self.shares.values())
        self.shares.clear()
        self._report_progress(force=True)

        def joined(results: list[tuple[bool, Any]]) -> DownloadResult:
            shares = []
            for ok, value in results:
                if ok:
                    shares.append(value)
                else:
                    shares.append(value.value.args[0])
            result = DownloadResult(path, self.meta.length, seconds, shares, self.transfer.retransmits, self.transfer.duplicates)
            self.log.info(
                "{name}: complete, {size} bytes in {seconds:.2f} s ({rate:.1f} MB/s, the last fsync {sync:.2f} s);"
                " bytes per node {shares}; {retransmits} blocks asked again, {duplicates} duplicates",
                name=self.name, size=self.meta.length, seconds=seconds, rate=result.rate / 1e6,
                sync=self.part.sync_seconds,
                shares={s.node_id: s.bytes for s in shares},
                retransmits=result.retransmits, duplicates=result.duplicates,
            )
            return result

        DeferredList(self.ended, consumeErrors=True).addCallback(joined).chainDeferred(self.result)

    def _report(self, addr: Any, peer: Any, status: str) -> ShareReport:
        return ShareReport(
            node_id=peer.node_id if peer else -1,
            addr=addr,
            bytes=peer.bytes if peer else 0,
            blocks=peer.blocks if peer else 0,
            pieces=self.pieces_from.get(addr, 0),
            status=status,
        )

    # ---- time
    def _log_pieces(self) -> None:
        if self._pieces_log:
            self.log.info(
                "{name}: pieces verified, by sender: {pieces}",
                name=self.name, pieces="; ".join(f"node {n}: {_ranges(p)}" for n, p in sorted(self._pieces_log.items())),
            )
            self._pieces_log = {}
        self._pieces_logged_at = self.clock.seconds()

    def announce_again(self) -> None:
        """The tracker forgot us (it restarted): report our pieces at the next tick."""
        self._announced = -1
        self._next_announce = 0.0

    def swarm_status(self) -> dict[str, Any]:
        """What `status` shows of this download: pieces, peers, rates, who sends what."""
        t = self.transfer
        n = self.meta.num_pieces
        marks = self._rate_marks
        down = up = 0.0
        if len(marks) >= 2 and marks[-1][0] > marks[0][0]:
            span = marks[-1][0] - marks[0][0]
            down = (marks[-1][1] - marks[0][1]) / span
            up = (marks[-1][2] - marks[0][2]) / span
        return {
            "pieces": n - t.remaining,
            "pieces_total": n,
            "download_rate": round(down),
            "upload_rate": round(up),
            "uploaded": self.uploaded() if self.uploaded is not None else 0,
            "peer_details": [
                {
                    "node_id": p.node_id,
                    "address": address_text(p.addr),
                    "complete": p.has is None,
                    "pieces": n if p.has is None else sum(p.has),
                    "choked_us": p.choked,
                    "bytes_from": p.bytes,
                    "pieces_from": self.pieces_from.get(p.addr, 0),
                }
                for p in sorted(t.peers.values(), key=lambda p: p.node_id)
            ],
        }

    def _mark_rates(self, now: float) -> None:
        received = sum(p.bytes for p in self.transfer.peers.values()) + self._dropped_bytes
        self._rate_marks.append((now, received, self.uploaded() if self.uploaded is not None else 0))

    def _tick(self) -> None:
        now = self.clock.seconds()
        if now - self._pieces_logged_at >= 1.0:
            self._log_pieces()
        dropped = self.transfer.tick(now)
        for d in dropped:
            self._share_ended(d.peer.addr, d.peer, d.reason)
        if dropped or (not self.transfer.peers and not self.greeting):
            self._replace()
        if self._finished:
            return
        if now >= self._next_have:
            self._next_have = now + HAVE_INTERVAL
            self._mark_rates(now)
            for peer in list(self.transfer.peers.values()):
                if peer.has is not None or peer.choked:
                    self._ask_have(peer)
        if now >= self._next_announce:
            self._announce()
        if now >= self._next_need and not self.asking:
            self._ask_tracker()
        self._send_requests()
        self._report_progress()

    def _send_requests(self, only: Any = None) -> None:
        info_hash = self.meta.info_hash
        for peer, batch in self.transfer.requests(self.clock.seconds(), only):
            self.network.send(wire.encode_block_request(info_hash, peer.cookie, batch), peer.addr)

    def _report_progress(self, force: bool = False) -> None:
        if self.progress is None:
            return
        now = self.clock.seconds()
        if not force and now - self._last_progress < 0.2:
            return
        self._last_progress = now
        done = self.done_bytes
        elapsed = max(1e-9, self.wallclock() - self._wall_started)
        self.progress({"done": done, "total": self.meta.length, "rate": done / elapsed, "peers": len(self.transfer.peers)})

    def _gone_text(self) -> str:
        """Every owner failed us: say how, each in a few words."""
        causes = "; ".join(self.outcomes.values()) or f"{len(self.tried)} tried"
        return f"every owner of {self.name} is gone: {causes}"

    def _ids(self, addrs: Any) -> list[int]:
        return sorted(self.transfer.peers[a].node_id if a in self.transfer.peers else -1 for a in addrs)

    # ---- ending
    def _fail(self, reason: str) -> None:
        """End unfinished.  Verified pieces always stay in .incomplete/: `download` again resumes from them."""
        if self._finished:
            return
        self._log_pieces()
        self._finished = True
        self._stop_loop()
        if self.writer is not None:
            self.writer.close()  # before the part file is closed under it
        if self.done_bytes or self._stopped:
            self.part.close()  # a stopped node resumes it when it starts again
        else:
            self.part.discard()  # nothing verified: nothing worth keeping, nothing to resume
        for addr, share in list(self.shares.items()):
            share.errback(PeerLost(self._report(addr, self.transfer.peers.get(addr), "download failed")))
            self.ended.append(share)
        self.shares.clear()
        for d in self.ended:
            d.addErrback(lambda _: None)
        reason = f"{reason}; {kept_text(self.done_bytes, self.meta.length)}"
        if self._stopped:
            self.log.info("{name}: download stopped: {reason}", name=self.name, reason=reason)
        else:
            self.log.error("{name}: download failed: {reason}", name=self.name, reason=reason)
        self.result.errback(DownloadError(reason))

    def _stop_loop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _loop_died(self, f: Failure) -> None:
        self.log.failure("download timer failed", f)
        self._fail(f"internal error: {f.getErrorMessage()}")


def kept_text(done: int, total: int) -> str:
    if done <= 0:
        return f"no piece was verified yet (0 of {total} bytes)"
    return f"{done} of {total} bytes verified are kept; run download again to resume"


def address_text(addr: Any) -> str:
    """host:port for people, whatever form the address takes."""
    try:
        return f"{addr[0]}:{addr[1]}"
    except (TypeError, IndexError):
        return str(addr)


def _ranges(pieces: list[int]) -> str:
    """[1, 2, 3, 7] -> "1-3, 7": a second's pieces in one short line."""
    runs: list[list[int]] = []
    for p in sorted(pieces):
        if runs and runs[-1][1] == p - 1:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs)
