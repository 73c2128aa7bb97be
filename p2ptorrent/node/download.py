"""One download's I/O shell: it carries out what its :class:`Session` decides (whom to greet, when to ask
the tracker, when to give up), and moves the blocks: in -> :class:`Transfer` -> writer thread.  Each owner
fetched from has a share Deferred that fires with what it delivered, or fails when it is dropped; the result
joins them.  Nothing unverified is written; an unfinished download keeps its verified pieces to resume."""

from __future__ import annotations

import enum
from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2ptorrent import wire
from p2ptorrent.config import Config
from p2ptorrent.metainfo import Metainfo
from p2ptorrent.node import session as s
from p2ptorrent.node.links import Hooks, Network
from p2ptorrent.node.report import DownloadResult, ShareReport, Stats, complete_text, kept_text, path_text, result_of
from p2ptorrent.node.storage import PartFile, StorageError
from p2ptorrent.node.transfer import PieceAssembled, PieceFailed, PieceVerified, Transfer
from p2ptorrent.node.writer import PieceWriter

TICK = 0.02  #: how often timeouts are checked (seconds)


class DownloadError(Exception):
    """A download could not finish; str() is the reason, for people."""


class PeerLost(Exception):
    """One owner's share ended early; the others take over its work."""


class Phase(enum.Enum):
    RUNNING, FINISHING, ENDED = "running", "finishing (every piece verified: the writer ends the file)", "ended"


class Download:
    log = Logger()

    def __init__(
        self, meta: Metainfo, part: PartFile, network: Network, need: Callable[[], Deferred[list[Any]]],
        clock: IReactorTime, settings: Config, node_id: int, hooks: Hooks | None = None,
    ) -> None:
        self.meta, self.part, self.network, self.need, self.clock, self.settings = meta, part, network, need, clock, settings
        self.hooks = hooks or Hooks()
        self.session = s.Session.for_download(meta, node_id, settings)
        self.transfer = Transfer.for_download(meta, settings, self.hooks.rng)
        self.writer: PieceWriter | None = None
        #: Each owner fetched from: its share of the work, fired when the download ends.
        self.shares: dict[Any, Deferred[ShareReport]] = {}
        self.stats = Stats(self.hooks.uploaded, self.hooks.sent_to)
        self.result: Deferred[DownloadResult] = Deferred()
        self.phase = Phase.RUNNING
        #: Assembled pieces that failed their hash (the metrics count them).
        self.pieces_failed = 0
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock

    @property
    def done_bytes(self) -> int:
        return sum(self.meta.piece_size(p) for p, ok in enumerate(self.transfer.verified) if ok)

    # ---- life
    def start(self) -> Deferred[DownloadResult]:
        self.stats.wall_started = self.hooks.wallclock()
        try:
            self.part.open()
        except StorageError as e:
            self._fail(str(e))
            return self.result
        self.writer = self.hooks.writer(self.part, lambda e: self._fail(str(e)))
        self.transfer.mark_have(self.part.verified())
        if self.transfer.done:  # an empty file, or every piece already here
            self._complete()
            return self.result
        self._loop.start(TICK, now=False).addErrback(self._loop_died)
        self._run(self.session.started(self.clock.seconds(), self.meta.num_pieces - self.transfer.remaining))
        return self.result

    def stop(self, reason: str) -> None:
        """End it early (the node is stopping): keep the verified pieces for a later resume."""
        if self.phase is Phase.RUNNING:  # else the file is being renamed: let that end
            self._fail(reason, stopped=True)

    def announce_again(self) -> None:
        """The tracker forgot us (it restarted): report our pieces at the next tick."""
        self.session.tracker_forgot_us()

    def swarm_status(self) -> dict[str, Any]:
        return self.stats.swarm_status(self.transfer, self.meta.num_pieces)

    # ---- carrying out the session's decisions
    def _run(self, actions: list[s.Action]) -> None:
        for a in actions:
            if self.phase is not Phase.RUNNING:
                return
            if isinstance(a, s.Greet):
                self._greet(a)
            elif isinstance(a, s.StartFetching):
                self._start_fetching(a)
            elif isinstance(a, s.SetCookie):
                self.transfer.set_cookie(a.addr, a.cookie)
            elif isinstance(a, s.Choke):
                self.transfer.choke(a.addr)
            elif isinstance(a, s.Drop):
                self._share_ended(a.addr, self.transfer.remove_peer(a.addr), f"dropped: {a.reason}")
            elif isinstance(a, s.AskTracker):
                self.need().addCallbacks(lambda owners: self._feed(self.session.tracker_answered, s.listed(owners)),
                                         lambda f: self._feed(self.session.tracker_failed, f.getErrorMessage()))
            elif isinstance(a, s.AskHave):
                self._ask_have(a.addr)
            elif isinstance(a, s.ReportProgress) and self.hooks.announce is not None:
                self.hooks.announce(a.have)
            elif isinstance(a, s.StartSwarming):
                self.transfer.swarm = True
            elif isinstance(a, s.Fail):
                self._fail(a.reason)
            elif isinstance(a, s.Note):
                (self.log.warn if a.level == "warn" else self.log.info)("{text}", text=a.text)

    def _greet(self, a: s.Greet) -> None:
        self.network.ask_info(a.addr, self.meta.info_hash, a.timeout).addCallbacks(
            lambda resp: self._feed(self.session.info_answered, a.addr, resp),
            lambda f: self._feed(self.session.info_timed_out, a.addr, f.getErrorMessage()))

    def _feed(self, event: Callable[..., list[s.Action]], *args: Any) -> None:
        """An answer came back: the session's verdict on it, carried out (unless the download ended meanwhile)."""
        if self.phase is Phase.RUNNING:
            self._run(event(*args, self.clock.seconds()))

    def _start_fetching(self, a: s.StartFetching) -> None:
        self.transfer.add_peer(a.addr, a.node_id, a.cookie, self.clock.seconds(), () if a.partial else None)
        self.shares.pop(a.addr, Deferred()).addErrback(lambda _: None)  # greeted again: its old share ended
        self.shares[a.addr] = Deferred()
        self.log.info("{name}: fetching from node {node} at {addr}{partial}", name=self.meta.name, node=a.node_id,
                      addr=s.where(a.addr), partial=" (still downloading: asking which pieces it has)" if a.partial else "")
        (self._ask_have if a.partial else self._send_requests)(a.addr)

    def _share_ended(self, addr: Any, peer: Any, reason: str) -> None:
        if peer is not None:
            self.stats.dropped_bytes += peer.bytes
        share = self.shares.get(addr)
        if share is not None and not share.called:
            share.errback(PeerLost(self.stats.report(addr, peer, reason)))

    def _ask_have(self, addr: Any) -> None:
        """Which pieces has this peer (and may we ask it for blocks)?"""
        peer, meta, now = self.transfer.peers.get(addr), self.meta, self.clock.seconds()
        if peer is None:
            return
        flags = wire.F_INTERESTED if self.transfer.wants_from(addr) else 0
        size = min(self.settings.BUFFER_SIZE, wire.SAFE_DATAGRAM)  # never a fragmented datagram
        for first, count in wire.have_request_ranges(meta.num_pieces, size):
            nonce = self.transfer.have_nonce(peer, now)
            self.network.send(wire.encode_have_request(meta.info_hash, peer.cookie, nonce, first, count, flags), addr)

    # ---- datagrams in
    def on_message(self, msg: wire.Block | wire.Error | wire.Have, addr: Any) -> str | None:
        """An answer from a peer: taken (None) or refused (why) when it answers no request of ours to it."""
        if isinstance(msg, wire.Block):
            return self.on_block(addr, msg.nonce, msg.piece, msg.offset, msg.data)
        if not self.transfer.matches(addr, msg.nonce):  # forged, or late: nobody is blamed
            return self.transfer.unmatched(addr, msg.nonce, type(msg).__name__.upper())
        if self.phase is not Phase.RUNNING:
            pass
        elif isinstance(msg, wire.Error):
            self.transfer.heard(addr, self.clock.seconds())  # a peer that answers anything is alive
            self._feed(self.session.refused, addr, msg.code, msg.message)
        elif isinstance(msg, wire.Have):
            self.transfer.on_have(addr, msg.flags, msg.first, msg.count, msg.pieces(), self.clock.seconds())
            if msg.flags & wire.F_COMPLETE:
                self.session.owner_completed(addr)
            self._send_requests(only=addr)
        return None

    def on_block(self, addr: Any, nonce: int, piece: int, offset: int, data: Any) -> str | None:
        if self.phase is not Phase.RUNNING:  # (finishing: nothing more is needed, forged ones are still told apart)
            return None if self.transfer.matches(addr, nonce) else self.transfer.unmatched(addr, nonce)
        outcome = self.transfer.on_block(addr, nonce, piece, offset, data, self.clock.seconds())
        if isinstance(outcome, PieceAssembled) and self.writer is not None:
            self.writer.submit(outcome.piece, outcome.data, self.transfer.piece_hash(outcome.piece), self._checked)
        return outcome if isinstance(outcome, str) else None

    def batch_done(self) -> None:
        """A batch of datagrams was read: what the peers that sent blocks lost on the way, and what to ask next."""
        if self.phase is Phase.RUNNING:
            for addr in self.transfer.batch_done(self.clock.seconds()):
                self._send_requests(only=addr)

    # ---- pieces
    def _checked(self, piece: int, ok: bool) -> None:
        """The writer's verdict on an assembled piece (if good, its bytes are written by now)."""
        if self.phase is not Phase.RUNNING:
            return
        outcome = self.transfer.checked(piece, ok)
        if isinstance(outcome, PieceVerified):
            self._on_piece(outcome)
        elif isinstance(outcome, PieceFailed):
            self.pieces_failed += 1
            self.log.warn("{name}: piece {piece} failed verification (data from {peers}); fetching it again",
                          name=self.meta.name, piece=outcome.piece, peers=self._ids(outcome.sources))
            self._send_requests()

    def _on_piece(self, ok: PieceVerified) -> None:
        news = getattr(self.network, "piece_news", None)
        if news is not None:
            news(self.meta.info_hash, ok.piece)
        self.stats.verified(ok.piece, ok.sources, self._ids(ok.sources))
        if ok.corrupt_from:
            self.log.warn("{name}: nodes {nodes} had sent corrupt blocks of piece {piece}",
                          name=self.meta.name, nodes=self._ids(ok.corrupt_from), piece=ok.piece)
        if self.transfer.done:
            self._complete()
        else:
            self._report_progress()

    # ---- time
    def _tick(self) -> None:
        now = self.clock.seconds()
        if now - self.stats.logged_at >= 1.0:
            self._log_pieces()
        dropped = self.transfer.tick(now)
        for d in dropped:
            self._share_ended(d.peer.addr, d.peer, f"dropped: {d.reason}")
            self._run(self.session.went_silent(d.peer.addr, d.reason, now, d.silent))
        self.stats.mark(now, self.transfer)
        unsure = [p.addr for p in self.transfer.peers.values() if p.has is not None or p.choked]
        self._run(self.session.ticked(now, self.meta.num_pieces - self.transfer.remaining, unsure, lost=bool(dropped)))
        if self.phase is Phase.RUNNING:
            self._send_requests()
            self._report_progress()

    def _send_requests(self, only: Any = None) -> None:
        info_hash, now, pace = self.meta.info_hash, self.clock.seconds(), self.hooks.pace
        limit = None
        if pace is not None and pace.limited:  # the node's download limit: ask for no more than it allows now
            limit = int(pace.share(self, now) // self.transfer.geo.chunk)
            if limit <= 0:
                return
        for peer, nonce, batch in self.transfer.requests(now, only, limit):
            if pace is not None:
                pace.spend(sum(length for _, _, length in batch), now, self)
            self.network.send(wire.encode_block_request(info_hash, peer.cookie, nonce, batch), peer.addr)

    def _report_progress(self, force: bool = False) -> None:
        if self.hooks.progress is not None and self.stats.progress_due(self.clock.seconds(), force):
            done, elapsed = self.done_bytes, max(1e-9, self.hooks.wallclock() - self.stats.wall_started)
            self.hooks.progress({"done": done, "total": self.meta.length, "rate": done / elapsed,
                                 "peers": len(self.transfer.peers)})

    def _log_pieces(self) -> None:
        text = self.stats.pieces_text(self.clock.seconds())
        if text is not None:
            self.log.info("{name}: pieces verified, by sender: {pieces}", name=self.meta.name, pieces=text)

    def _ids(self, addrs: Any) -> list[int]:
        return sorted(self.transfer.peers[a].node_id if a in self.transfer.peers else -1 for a in addrs)

    # ---- ending
    def _complete(self) -> None:
        """Every piece verified: once the writer has it all on disk and the whole hash matched, done."""
        assert self.writer is not None
        self._log_pieces()
        self.phase = Phase.FINISHING
        self._stop_loop()
        self.writer.finish().addCallbacks(self._completed, lambda f: self._fail(
            f.getErrorMessage() if f.check(StorageError) else f"internal error: {f.getErrorMessage()}"))

    def _completed(self, path: Any) -> None:
        if self.phase is Phase.ENDED:
            return
        self.phase = Phase.ENDED
        seconds = self.hooks.wallclock() - self.stats.wall_started
        for addr, share in self.shares.items():
            peer = self.transfer.peers.get(addr)
            if peer is not None:
                self.log.info("{name}: {path}", name=self.meta.name, path=path_text(peer))
            if not share.called:
                share.callback(self.stats.report(addr, peer, "finished"))
        self._report_progress(force=True)

        def joined(results: list[tuple[bool, Any]]) -> DownloadResult:
            result = result_of(results, path, self.meta.length, seconds, self.transfer)
            self.log.info("{name}: {done}", name=self.meta.name, done=complete_text(result, self.part.sync_seconds))
            return result

        DeferredList(list(self.shares.values()), consumeErrors=True).addCallback(joined).chainDeferred(self.result)

    def _fail(self, reason: str, stopped: bool = False) -> None:
        """End unfinished.  Verified pieces stay in .incomplete/: `download` again resumes from them."""
        if self.phase is Phase.ENDED:
            return
        self._log_pieces()
        self.phase = Phase.ENDED
        self._stop_loop()
        if self.writer is not None:
            self.writer.close()  # before the part file is closed under it
        # Kept for a resume (also by a node that stopped, when it starts again); nothing verified: nothing kept.
        (self.part.close if self.done_bytes or stopped else self.part.discard)()
        for addr, share in self.shares.items():
            if not share.called:
                share.errback(PeerLost(self.stats.report(addr, self.transfer.peers.get(addr), "download failed")))
            share.addErrback(lambda _: None)
        reason = f"{reason}; {kept_text(self.done_bytes, self.meta.length)}"
        (self.log.info if stopped else self.log.error)("{name}: download {how}: {reason}", name=self.meta.name,
                                                        how="stopped" if stopped else "failed", reason=reason)
        self.result.errback(DownloadError(reason))

    def _stop_loop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _loop_died(self, f: Failure) -> None:
        self.log.failure("download timer failed", f)
        self._fail(f"internal error: {f.getErrorMessage()}")
