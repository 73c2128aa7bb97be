"""The node's UDP endpoint: decode datagrams, hand them on, write the answers.

No decisions live here.  Requests go to the :class:`Seeder`; INFO answers to
the id-keyed table of pending INFO requests; blocks and errors to the download
of that info hash.  A malformed datagram is counted and dropped and never
raises out of ``datagramReceived``.
"""

from __future__ import annotations

import errno
import socket
from collections import Counter
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from p2ptorrent import wire
from p2ptorrent.node.serving import Seeder


class DownloadSink(Protocol):
    def on_block(self, addr: Any, piece: int, offset: int, data: Any) -> None: ...
    def on_message(self, msg: wire.Block | wire.Error, addr: Any) -> None: ...


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
        self.downloads: dict[bytes, DownloadSink] = {}
        self._pending: dict[int, Deferred[wire.InfoResponse]] = {}
        self._next_id = 1
        self.counts: Counter[str] = Counter()
        self.received = 0  # plain ints: counted on the hot path
        self.sent = 0

    def startProtocol(self) -> None:
        if self.socket_buffer:
            _grow_buffers(self.transport, self.socket_buffer)

    # ---- out
    def send(self, datagram: bytes, addr: Any) -> None:
        try:
            self.transport.write(datagram, addr)
            self.sent += 1
        except OSError as e:
            # A full send buffer or an unreachable address loses this datagram,
            # as the network might: the requester's timeouts cover it.
            self.counts["send_errors"] += 1
            if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.ECONNREFUSED):
                self.log.warn("cannot send to {addr}: {error}", addr=addr, error=e)

    def ask_info(self, addr: Any, info_hash: bytes, timeout: float) -> Deferred[wire.InfoResponse]:
        """One INFO_REQ; the Deferred fails with InfoTimeout if no answer comes in *timeout* s."""
        req_id = self._next_id
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF or 1
        d: Deferred[wire.InfoResponse] = Deferred(lambda _: self._pending.pop(req_id, None))
        self._pending[req_id] = d
        call = self.clock.callLater(timeout, self._info_timeout, req_id, addr, timeout)
        d.addBoth(_cancel_call, call)
        self.send(wire.encode_info_request(req_id, info_hash), addr)
        return d

    def _info_timeout(self, req_id: int, addr: Any, timeout: float) -> None:
        d = self._pending.pop(req_id, None)
        if d is not None:
            d.errback(InfoTimeout(f"{addr[0]}:{addr[1]} did not answer in {timeout:.1f} s"))

    # ---- in
    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.received += 1
        head = wire.peek_block(data) if len(data) <= self.max_datagram else None
        if head is not None:
            sink = self.downloads.get(head[0])
            if sink is None:
                self.counts["unsolicited"] += 1
                return
            try:
                sink.on_block(addr, head[1], head[2], memoryview(data)[wire.BLOCK_OVERHEAD :])
            except Exception:
                self.counts["errors"] += 1
                self.log.failure("while handling a block from {addr}", addr=addr)
            return
        try:
            msg = wire.decode(data, self.max_datagram)
        except wire.WireError as e:
            self._reject(addr, str(e))
            return
        try:
            self._dispatch(msg, addr)
        except Exception:
            self.counts["errors"] += 1
            self.log.failure("while handling a datagram from {addr}", addr=addr)

    def _dispatch(self, msg: wire.Message, addr: Any) -> None:
        if isinstance(msg, wire.Block | wire.Error):
            sink = self.downloads.get(msg.info_hash)
            if sink is None:
                self.counts["unsolicited"] += 1
                return
            sink.on_message(msg, addr)
        elif isinstance(msg, wire.BlockRequest):
            for reply in self.seeder.on_blocks(msg, addr):
                self.send(reply, addr)
        elif isinstance(msg, wire.InfoRequest):
            self.send(self.seeder.on_info(msg, addr), addr)
        elif isinstance(msg, wire.InfoResponse):
            d = self._pending.pop(msg.req_id, None)
            if d is None:
                self.counts["unsolicited"] += 1
                return
            d.callback(msg)

    def _reject(self, addr: Any, reason: str) -> None:
        n = self.counts["rejected"] = self.counts["rejected"] + 1
        # Log the first few and then one in a thousand: a flood must not flood the log.
        if n <= 10 or n % 1000 == 0:
            self.log.warn("dropped a bad datagram from {addr}: {reason} ({n} so far)", addr=addr, reason=reason, n=n)

    def stopProtocol(self) -> None:
        for d in list(self._pending.values()):
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
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
            if sock.getsockopt(socket.SOL_SOCKET, opt) < size:
                sock.setsockopt(socket.SOL_SOCKET, force, size)  # needs CAP_NET_ADMIN; fine to fail
        except OSError:
            pass

