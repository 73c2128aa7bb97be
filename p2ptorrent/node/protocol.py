"""The node's UDP endpoint: decode datagrams, decide who may be heard, hand them on, write the answers.

Requests go to the :class:`Seeder`; INFO answers to the id-keyed table of
pending INFO requests (timed out through the injected clock); blocks, errors
and HAVEs to the download of that info hash; METADATA answers (and errors) to
the fetch of that info dict (a magnet link's, see metadata.py), checked the
same way.  Nothing from the network can
raise out of ``datagramReceived``.

A few decisions live here, because they are about where a datagram comes
from and this is the one place that sees every sender before anything is
done with it, blocks included (they are only peeked at, on the hot path): a
block, error or HAVE is taken only from an address its download greeted
(:meth:`NodeProtocol.ask_info`), and only if its nonce answers a request the
download sent that address lately (the download decides, and says why not);
an INFO answer only with the nonce of an INFO_REQ still pending, from the
address asked and about the file asked; one for a download that ended less
than ``LATE_GRACE`` ago is late, not hostile; and each block taken credits
its sender's upload slot (tit-for-tat, :class:`Choker`): a forged one earns
nothing.  A request of another wire version gets one short ERROR naming
both versions (``wire.version_refusal``), logged once per address.

Datagrams come in batches (udpport.py: everything read in one go, GRO runs
cut at their segment size): blocks are handed on one by one, and each
download that got some is told once the batch ends (``batch_done``), so it
decides what to ask for next once per batch.  Answers go out through the
port's ``write_many`` (runs of datagrams in one GSO call where the kernel
allows), each cut to the path's size: a block bigger than the path to its
asker goes as several datagrams (``wire.split_block``), so nothing is left
to IP fragmentation.

Every datagram that is not useful traffic is dropped and counted once, in
``counts["rejected"]`` and ``counts["rejected:<reason>"]``: malformed ones by
the codec's reason (``"bad magic"``, ``"bad BLOCK_REQ size"``...), requests
the seeder refuses by its reason (``"bad cookie"``, ``"not shared"``, ``"bad
block"``, ``"unknown file"``, ``"bad metadata piece"``), and answers nobody asked for: ``"unknown
download"`` (a BLOCK or ERROR for a file we are not downloading),
``"stranger"`` (one from an address this download never greeted),
``"unmatched BLOCK"``, ``"unmatched ERROR"``, ``"unmatched HAVE"``, ``"unmatched METADATA"`` (from a
greeted address, but with no nonce of ours: forged, or later than the
nonce's lifetime), ``"unasked BLOCK"`` (a nonce of ours, but a block nobody
asked for), ``"unsolicited INFO_RESP"`` (a nonce we are not waiting for, or
an answer from another address or about another file than the question) and
``"other version"``.  Nonces are 64 random bits, so an off-path sender
cannot guess one.  The seeder's limits are
counted in the same Counter under ``"limited:..."``.  The first few
rejections are logged, then one summary per ``REJECT_LOG_INTERVAL``.
"""

from __future__ import annotations

import errno
import socket
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from p2ptorrent import wire
from p2ptorrent.node import udpport
from p2ptorrent.node.serving import Seeder


class DownloadSink(Protocol):
    def on_block(self, addr: Any, nonce: int, piece: int, offset: int, data: Any) -> str | None: ...
    def on_message(self, msg: wire.Block | wire.Error | wire.Have, addr: Any) -> str | None: ...
    # (each returns None for an answer taken, or why it was refused: it answers no request of ours)
    def batch_done(self) -> None: ...


class MetadataSink(Protocol):
    def on_message(self, msg: wire.Metadata | wire.Error, addr: Any) -> str | None: ...
    def stop(self, reason: str) -> None: ...


#: Rejections logged one by one; after that, one summary per interval (seconds).
REJECTS_LOGGED = 10
#: Seconds after a download ends during which blocks still arriving for it are late, not strangers'.
LATE_GRACE = 30.0
#: Ended downloads remembered for that at most (a bound on memory, whatever a peer sends).
MAX_ENDED = 1024
REJECT_LOG_INTERVAL = 60.0
#: Addresses remembered as told once that they speak another wire version (logged once each).
MAX_FOREIGN_LOGGED = 1024
#: Answers handed to the port at a time: what one GSO send carries at most.
SEND_RUN, SEND_RUN_BYTES = udpport.GSO_SEGMENTS, udpport.GSO_BYTES


class InfoTimeout(Exception):
    """A peer did not answer an INFO request in time."""


class NodeProtocol(DatagramProtocol):
    noisy = False
    log = Logger()

    def __init__(self, seeder: Seeder, clock: IReactorTime, max_datagram: int, socket_buffer: int = 0) -> None:
        self.seeder = seeder
        self.clock = clock
        self.max_datagram = max_datagram
        self.socket_buffer = socket_buffer
        #: The downloads to route blocks to, by info hash (the node gives a view of its registry).
        self.downloads: Mapping[bytes, DownloadSink] = {}
        #: Fetches of an info dict (magnet links), by info hash: METADATA answers and their ERRORs go there.
        self.fetches: dict[bytes, MetadataSink] = {}
        self._pending: dict[int, tuple[Deferred[wire.InfoResponse], Any, bytes]] = {}
        #: info hash -> the addresses its download greeted: only they may send it blocks and errors.
        self._partners: dict[bytes, set[Any]] = {}
        #: One Counter for the seeder's limits and our rejections (shown by ``status``).
        self.counts: Counter[str] = seeder.counts
        self.received = 0  # plain ints: counted on the hot path
        self.sent = 0
        self.bytes_received = 0  # (payload bytes, for the metrics)
        self.bytes_sent = 0
        self._next_summary = 0.0
        #: info hash -> until when blocks for that ended download count as late (see ended()).
        self._ended: dict[bytes, float] = {}
        #: Downloads that got blocks in the batch being read.
        self._fed: set[DownloadSink] = set()
        #: Block bytes received from each address in the batch being read.
        self._credit: dict[Any, int] = {}
        #: Addresses already logged as speaking another wire version (oldest forgotten first).
        self._foreign: dict[Any, int] = {}
        self._foreign_window, self._foreign_logged = 0.0, 0

    def startProtocol(self) -> None:
        if self.socket_buffer:
            _grow_buffers(self.transport, self.socket_buffer)

    # ---- out
    def send(self, datagram: bytes, addr: Any) -> None:
        assert self.transport is not None, "send() before the port is open"
        try:
            self.transport.write(datagram, addr)
            self.sent += 1
            self.bytes_sent += len(datagram)
        except OSError as e:
            # A full send buffer or an unreachable address loses this datagram,
            # as the network might: the requester's timeouts cover it.
            self.counts["send_errors"] += 1
            if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.ECONNREFUSED):
                self.log.warn("cannot send to {addr}: {error}", addr=addr, error=e)

    def send_all(self, datagrams: Iterable[bytes], addr: Any) -> None:
        """Answers to one address, each cut to its path, in runs (GSO) where the port can."""
        transport = self.transport
        assert transport is not None, "send_all() before the port is open"
        write_many = getattr(transport, "write_many", None)
        limit = 0  # the path is looked up only for a datagram that might not fit it (never for small answers)
        run: list[bytes] = []
        size = 0
        for d in datagrams:
            if len(d) > wire.SAFE_DATAGRAM and len(d) > (limit or (limit := self.path_limit(addr))):
                run.extend(wire.split_block(d, limit))
            else:
                run.append(d)
            size += len(d)
            if len(run) >= SEND_RUN or size >= SEND_RUN_BYTES:
                self._write_run(write_many, run, addr)
                run, size = [], 0
        if run:
            self._write_run(write_many, run, addr)

    def _write_run(self, write_many: Any, run: list[bytes], addr: Any) -> None:
        if write_many is None:
            for d in run:
                self.send(d, addr)
            return
        sent, lost = write_many(run, addr)
        self.sent += sent
        # Which ones were lost is not said: a run is sent in order, so count the first *sent*.
        self.bytes_sent += sum(len(d) for d in (run if not lost else run[:sent]))
        if lost:
            self.counts["send_errors"] += lost

    def path_limit(self, addr: Any) -> int:
        """The largest datagram we send *addr*: BUFFER_SIZE, or less where the path carries less whole."""
        path = getattr(self.transport, "path_payload", None)
        payload = path(addr) if path is not None else None
        return min(self.max_datagram, payload) if payload else self.max_datagram

    @property
    def receive_drops(self) -> int:
        """Datagrams the kernel dropped for us because the receive buffer was full (0 where it cannot tell)."""
        return int(getattr(self.transport, "receive_drops", 0))

    def piece_news(self, info_hash: bytes, piece: int) -> None:
        """Tell the peers that asked us lately what we have that *piece* is here now (swarming)."""
        for datagram, addr in self.seeder.news(info_hash, piece, self.clock.seconds()):
            self.send(datagram, addr)

    def ask_info(self, addr: Any, info_hash: bytes, timeout: float) -> Deferred[wire.InfoResponse]:
        """One INFO_REQ; the Deferred fails with InfoTimeout if no answer comes in *timeout* s.

        From now on *addr* may send blocks and errors for *info_hash*.
        """
        nonce = wire.new_nonce()
        def cancel(_: Deferred[wire.InfoResponse]) -> None:
            self._pending.pop(nonce, None)

        d: Deferred[wire.InfoResponse] = Deferred(cancel)
        self._pending[nonce] = (d, addr, info_hash)
        self._partner(info_hash, addr)
        call = self.clock.callLater(timeout, self._info_timeout, nonce, addr, timeout)
        d.addBoth(_cancel_call, call)
        self.send(wire.encode_info_request(nonce, info_hash), addr)
        return d

    def _partner(self, info_hash: bytes, addr: Any) -> None:
        partners = self._partners.get(info_hash)
        if partners is None:
            # A new download: forget those that ended (the node removes them from self.downloads).
            for gone in [h for h in self._partners if h not in self.downloads and h not in self.fetches]:
                del self._partners[gone]
            partners = self._partners[info_hash] = set()
        partners.add(addr)

    def _info_timeout(self, nonce: int, addr: Any, timeout: float) -> None:
        entry = self._pending.pop(nonce, None)
        if entry is not None:
            entry[0].errback(InfoTimeout(f"{addr[0]}:{addr[1]} did not answer in {timeout:.1f} s"))

    # ---- in
    def datagramReceived(self, data: bytes, addr: Any) -> None:
        """One datagram on its own (a port that does not batch): a batch of one."""
        self._receive(memoryview(data), addr)
        self.readDone()

    def datagramsReceived(self, data: memoryview, segment: int, addr: Any) -> None:
        """Datagrams from *addr* read in one go: *segment* bytes each (the last may be shorter).

        *data* is the port's buffer, valid only during this call: nothing here keeps it.
        """
        if segment >= len(data):
            self._receive(data, addr)
            return
        for at in range(0, len(data), segment):
            self._receive(data[at : at + segment], addr)

    def readDone(self) -> None:
        """The batch has been read: each download that got blocks decides what to ask next."""
        credit, slots = self._credit, self.seeder.slots
        if credit:
            self._credit = {}
            if slots is not None:
                for addr, nbytes in credit.items():
                    slots.received_from(addr, nbytes)
        fed = self._fed
        if fed:
            self._fed = set()
            for sink in fed:
                try:
                    sink.batch_done()
                except Exception:
                    self.counts["errors"] += 1
                    self.log.failure("after a batch of blocks")

    def _receive(self, view: memoryview, addr: Any) -> None:
        self.received += 1
        self.bytes_received += len(view)
        head = wire.peek_block(view) if len(view) <= self.max_datagram else None
        if head is not None:
            sink = self.downloads.get(head[0])
            if sink is None:
                self._unknown(head[0], addr)
                return
            if addr not in self._partners.get(head[0], ()):
                self._reject(addr, "stranger")
                return
            try:
                refused = sink.on_block(addr, head[1], head[2], head[3], view[wire.BLOCK_OVERHEAD :])
            except Exception:
                self.counts["errors"] += 1
                self.log.failure("while handling a block from {addr}", addr=addr)
                return
            if refused is not None:
                self._refused(addr, refused)
                return
            # Tit-for-tat: what each peer gives us earns it an upload slot (credited once per batch).
            credit = self._credit
            credit[addr] = credit.get(addr, 0) + len(view) - wire.BLOCK_OVERHEAD
            self._fed.add(sink)
            return
        if len(view) <= self.max_datagram and wire.foreign_version(view) is not None:
            self._other_version(view, addr)
            return
        data = bytes(view)
        try:
            msg = wire.decode(data, self.max_datagram)
        except wire.WireError as e:
            self._reject(addr, e.reason, str(e))
            return
        try:
            self._dispatch(msg, addr, len(data))
        except Exception:
            self.counts["errors"] += 1
            self.log.failure("while handling a datagram from {addr}", addr=addr)

    def _dispatch(self, msg: wire.Message, addr: Any, size: int) -> None:
        if isinstance(msg, wire.BlockRequest):
            reason, replies = self.seeder.on_blocks(msg, addr, size, self.clock.seconds())
        elif isinstance(msg, wire.InfoRequest):
            reason, replies = self.seeder.on_info(msg, addr, self.clock.seconds())
        elif isinstance(msg, wire.HaveRequest):
            reason, replies = self.seeder.on_have(msg, addr, size, self.clock.seconds())
        elif isinstance(msg, wire.MetadataRequest):
            reason, replies = self.seeder.on_metadata(msg, addr, size, self.clock.seconds())
        elif isinstance(msg, wire.InfoResponse):
            entry = self._pending.get(msg.nonce)
            if entry is None or entry[1] != addr or entry[2] != msg.info_hash:
                self._reject(addr, "unsolicited INFO_RESP")
                return
            del self._pending[msg.nonce]
            entry[0].callback(msg)
            return
        elif isinstance(msg, wire.Metadata) or (isinstance(msg, wire.Error) and msg.info_hash in self.fetches):
            fetch = self.fetches.get(msg.info_hash)  # an info dict fetched for a magnet link
            if fetch is None:
                self._unknown(msg.info_hash, addr)
            elif addr not in self._partners.get(msg.info_hash, ()):
                self._reject(addr, "stranger")
            else:
                refused = fetch.on_message(msg, addr)
                sink = self.downloads.get(msg.info_hash)
                if refused is not None and isinstance(msg, wire.Error) and sink is not None:
                    refused = sink.on_message(msg, addr)  # a download of that file from its .torrent asked
                if refused is not None:
                    self._refused(addr, refused)
            return
        else:  # Block (when too short to peek), Error or Have: for one of our downloads
            sink = self.downloads.get(msg.info_hash)
            if sink is None:
                self._unknown(msg.info_hash, addr)
            elif addr not in self._partners.get(msg.info_hash, ()):
                self._reject(addr, "stranger")
            else:
                refused = sink.on_message(msg, addr)
                if refused is not None:
                    self._refused(addr, refused)
            return
        if reason is not None:
            self._reject(addr, reason)
        if replies:
            self.send_all(replies, addr)

    def _refused(self, addr: Any, reason: str) -> None:
        """A download refused an answer: rejected, or late (an answer to a peer it dropped: no warning)."""
        if reason == "late":
            self.counts["late"] += 1
        else:
            self._reject(addr, reason)

    def _other_version(self, view: memoryview, addr: Any) -> None:
        """A datagram of another wire version: counted; a request is answered with one short ERROR that names
        both versions (rate-limited per address as every ERROR); logged once per address, at most
        REJECTS_LOGGED addresses per REJECT_LOG_INTERVAL (the rest in the rejection summary: a flood from many
        addresses must not flood the log)."""
        version = view[2]
        counts = self.counts
        counts["rejected"] += 1
        counts["rejected:other version"] += 1
        now = self.clock.seconds()
        answer = wire.version_refusal(view)
        told = False
        if answer is not None and self.seeder.errors.take(addr, 1, now):
            self.send(answer, addr)
            told = True
        if addr in self._foreign:
            return
        if len(self._foreign) >= MAX_FOREIGN_LOGGED:
            del self._foreign[next(iter(self._foreign))]
        self._foreign[addr] = version
        if now >= self._foreign_window:
            self._foreign_window, self._foreign_logged = now + REJECT_LOG_INTERVAL, 0
        if self._foreign_logged < REJECTS_LOGGED:
            self._foreign_logged += 1
            self.log.warn("refused a datagram from {addr}: it speaks wire version {version}, this node {ours}{told}",
                          addr=addr, version=version, ours=wire.VERSION,
                          told=" (told so: one of the two needs upgrading)" if told else "")
        elif now >= self._next_summary:
            self._reject_summary(now)

    def ended(self, info_hash: bytes) -> None:
        """A download ended (the node no longer lists it): what peers still had on the way is late, not hostile."""
        now = self.clock.seconds()
        self._ended = {ih: t for ih, t in self._ended.items() if t > now}
        if len(self._ended) < MAX_ENDED:
            self._ended[info_hash] = now + LATE_GRACE

    def _unknown(self, info_hash: bytes, addr: Any) -> None:
        if self._ended.get(info_hash, 0.0) > self.clock.seconds():
            self.counts["late"] += 1  # sent before the peer heard we stopped: not worth a warning
            return
        self._reject(addr, "unknown download")

    def _reject(self, addr: Any, reason: str, detail: str | None = None) -> None:
        counts = self.counts
        counts["rejected"] += 1
        counts["rejected:" + reason] += 1
        n = counts["rejected"]
        # The first few one by one, then a summary now and then: a flood must not flood the log.
        if n <= REJECTS_LOGGED:
            self.log.warn("refused a datagram from {addr}: {reason} ({n} so far)", addr=addr, reason=detail or reason, n=n)
            return
        now = self.clock.seconds()
        if now >= self._next_summary:
            self._reject_summary(now)

    def _reject_summary(self, now: float) -> None:
        self._next_summary = now + REJECT_LOG_INTERVAL
        counts = self.counts
        by_reason = {k[9:]: v for k, v in counts.items() if k.startswith("rejected:")}
        self.log.warn("refused {n} datagrams so far: {reasons}", n=counts["rejected"], reasons=by_reason)

    def stopProtocol(self) -> None:
        for d, _, _ in list(self._pending.values()):
            d.cancel()


def _cancel_call(result: Any, call: Any) -> Any:
    if call.active():
        call.cancel()
    return result


def _grow_buffers(transport: Any, size: int) -> None:
    """Ask for big kernel buffers: a burst of blocks must not overflow the receive queue."""
    sock = transport.getHandle() if hasattr(transport, "getHandle") else None
    if not isinstance(sock, socket.socket):
        return
    for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):  # SO_RCVBUFFORCE, SO_SNDBUFFORCE
        try:
            # Past net.core.rmem_max only with CAP_NET_ADMIN; without it, as much as allowed.
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, size)
            except OSError:
                pass
