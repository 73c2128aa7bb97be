"""The node's UDP socket: datagrams in batches, kernel batching (GSO out, GRO in) where the kernel allows it.

A Python node pays per datagram, and at a 1500-byte MTU a file is many datagrams.  Linux can take that cost:
one ``sendmsg`` with a UDP_SEGMENT control message hands the kernel a run of same-size datagrams to cut on
the way out (GSO), and with UDP_GRO on, one ``recvmsg_into`` returns a run of datagrams from one sender
coalesced, the segment size in a control message.  :class:`BatchPort` does both where they work, and plain
``sendto``/``recvmsg_into`` where they do not (an older kernel, another system, or ``UDP_BATCHING`` off):
what was found is logged once at start, and a GSO send the kernel refuses turns GSO off for good and goes out
plainly.

Either way the protocol is handed batches: every datagram read in one go (``datagramsReceived`` with the
segment size, then ``readDone`` once), so a downloader decides what to ask for once per batch, not once per
block.  The port also knows each destination's path: the largest datagram that crosses it whole (from the
kernel's route and path MTU, ``IP_MTU``), with don't-fragment set, so that nothing the node sends is
fragmented: a lost fragment costs the whole datagram and, worse, parks the others in the receiver's
reassembly queue, whose limit then drops every fragmented datagram for seconds.  And it reads the kernel's
count of datagrams dropped because the receive buffer was full (``SO_RXQ_OVFL``), shown by ``status``.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections import OrderedDict
from typing import Any, Iterable, Protocol

from twisted.internet import udp
from twisted.logger import Logger

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SO_RXQ_OVFL = 40
IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_MTU = 10, 2, 14
IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO, IPV6_MTU = 23, 2, 24
#: Datagrams and bytes one GSO send may carry (the kernel's limits: 64 segments, a 64 KiB IP packet).
GSO_SEGMENTS = 64
GSO_BYTES = 65000
#: Bytes one read may return with GRO (64 KiB of coalesced datagrams).
GRO_BUFFER = 65536
#: Bytes read per call to doRead before the reactor gets its turn.
READ_PER_TURN = 1 << 20
#: Destinations whose path size is remembered, and for how long (seconds).
PATHS_KEPT = 4096
PATH_TTL = 60.0
_IP_HEADERS = {socket.AF_INET: 28, socket.AF_INET6: 48}


class BatchReceiver(Protocol):
    def datagramsReceived(self, data: memoryview, segment: int, addr: Any) -> None: ...
    def readDone(self) -> None: ...


class BatchPort(udp.Port):
    """A ``udp.Port`` that reads and writes in batches (see the module docstring)."""

    log = Logger()

    def __init__(self, port: int, proto: Any, interface: str = "", maxPacketSize: int = 8192, reactor: Any = None,
                 batching: bool = True) -> None:
        super().__init__(port, proto, interface, maxPacketSize, reactor)
        self.clock: Any = reactor
        self.batching = batching
        self.maxThroughput = READ_PER_TURN
        self.gso = self.gro = False
        #: Datagrams the kernel dropped because our receive buffer was full (its own count, SO_RXQ_OVFL).
        self.receive_drops = 0
        #: Reads that returned several datagrams coalesced (GRO), and the datagrams they held; GSO sends
        #: and the datagrams they carried.  Shown by ``status``: they say whether batching happens.
        self.batched_reads = self.batched_in = self.gso_sends = self.gso_out = 0
        self._paths: OrderedDict[Any, tuple[float, int]] = OrderedDict()
        self._buf = bytearray(max(maxPacketSize, 1))
        self._view = memoryview(self._buf)
        self._ancillary = socket.CMSG_SPACE(4) * 2

    def _bindSocket(self) -> None:
        super()._bindSocket()
        self._setup(self.socket)

    def _setup(self, sock: socket.socket) -> None:
        v6 = sock.family == socket.AF_INET6
        try:  # never fragment: a datagram too big for the path fails at once (EMSGSIZE) rather than in the network
            if v6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        except OSError:
            pass
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        except OSError:
            pass
        why = "off (UDP_BATCHING = 0)"
        if self.batching:
            try:
                sock.getsockopt(SOL_UDP, UDP_SEGMENT)
                self.gso = True
            except OSError as e:
                why = f"not offered by this system ({e.strerror})"
            try:
                sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro = True
            except OSError as e:
                why = f"not offered by this system ({e.strerror})"
        if self.gro:
            self._buf = bytearray(max(len(self._buf), GRO_BUFFER))
            self._view = memoryview(self._buf)
        self.log.info("kernel batching of datagrams: send {gso}, receive {gro}",
                      gso="GSO" if self.gso else f"plain: {why}", gro="GRO" if self.gro else f"plain: {why}")

    # ---- in
    def doRead(self) -> None:
        sock, proto, buf, view = self.socket, self.protocol, self._buf, self._view
        ancillary = self._ancillary
        v6 = self.addressFamily == socket.AF_INET6
        read = 0
        try:
            while read < self.maxThroughput:
                try:
                    n, anc, _flags, addr = sock.recvmsg_into((buf,), ancillary)
                except OSError as e:
                    if e.errno in udp._sockErrReadIgnore or e.errno in udp._sockErrReadRefuse:
                        return
                    raise
                read += n
                segment = n
                for level, kind, value in anc:
                    if level == SOL_UDP and kind == UDP_GRO:
                        segment = struct.unpack("=i", value[:4])[0] or n
                    elif level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(value) >= 4:
                        self.receive_drops = struct.unpack("=I", value[:4])[0]
                if v6:
                    addr = addr[:2]
                if segment < n:
                    self.batched_reads += 1
                    self.batched_in += -(-n // segment)
                try:
                    proto.datagramsReceived(view[:n], segment, addr)
                except BaseException:
                    self.log.failure("while handling datagrams from {addr}", addr=addr)
        finally:
            try:
                proto.readDone()
            except BaseException:
                self.log.failure("after a batch of datagrams")

    # ---- out
    def batching_status(self) -> dict[str, Any]:
        return {"gso": self.gso, "gro": self.gro, "gso_sends": self.gso_sends, "gso_datagrams": self.gso_out,
                "gro_reads": self.batched_reads, "gro_datagrams": self.batched_in,
                "receive_buffer_drops": self.receive_drops}

    def path_payload(self, addr: Any) -> int:
        """The largest UDP payload that crosses the path to *addr* whole (as the kernel knows the path now)."""
        now = self.clock.seconds()
        known = self._paths.get(addr)
        if known is not None and known[0] > now:
            return known[1]
        family = self.socket.family
        probe = socket.socket(family, socket.SOCK_DGRAM)
        try:
            probe.connect(addr)
            if family == socket.AF_INET6:
                mtu = probe.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU)
            else:
                mtu = probe.getsockopt(socket.IPPROTO_IP, IP_MTU)
            payload = max(576, mtu) - _IP_HEADERS.get(family, 28)
        except OSError:
            payload = 1280 - 48  # the least any IPv6 path carries: safe everywhere
        finally:
            probe.close()
        self._paths[addr] = (now + PATH_TTL, payload)
        self._paths.move_to_end(addr)
        if len(self._paths) > PATHS_KEPT:
            self._paths.popitem(last=False)
        return payload

    def forget_path(self, addr: Any) -> None:
        """A send to *addr* was too big for its path: ask the kernel again next time."""
        self._paths.pop(addr, None)

    def write_many(self, datagrams: Iterable[bytes], addr: Any) -> tuple[int, int]:
        """Send *datagrams* to *addr*: runs of the same size in one GSO call each, the rest one by one.

        Returns (sent, lost): a full send buffer loses datagrams as the network might; the receiver's
        timeouts and loss detection cover them.
        """
        sent = lost = 0
        run: list[bytes] = []
        size = total = 0
        for d in datagrams:
            n = len(d)
            if run and (n > size or len(run) == GSO_SEGMENTS or total + n > GSO_BYTES):
                s, l_ = self._send_run(run, size, addr)
                sent, lost, run, total = sent + s, lost + l_, [], 0
            if not run:
                size = n
            run.append(d)
            total += n
            if n < size:  # a shorter datagram may only end a run
                s, l_ = self._send_run(run, size, addr)
                sent, lost, run, total = sent + s, lost + l_, [], 0
        if run:
            s, l_ = self._send_run(run, size, addr)
            sent, lost = sent + s, lost + l_
        return sent, lost

    def _send_run(self, run: list[bytes], size: int, addr: Any) -> tuple[int, int]:
        if self.gso and len(run) > 1:
            try:
                self.socket.sendmsg((b"".join(run),), ((SOL_UDP, UDP_SEGMENT, struct.pack("=H", size)),), 0, addr)
                self.gso_sends += 1
                self.gso_out += len(run)
                return len(run), 0
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS):
                    return 0, len(run)
                if e.errno == errno.EMSGSIZE:
                    self.forget_path(addr)
                    return 0, len(run)
                if e.errno not in (errno.EINVAL, errno.EIO, errno.EOPNOTSUPP, errno.ENOPROTOOPT):
                    return 0, len(run)
                self.gso = False
                self.log.warn("GSO send refused ({error}): sending datagrams one by one from now on", error=e.strerror)
        sent = lost = 0
        for d in run:
            try:
                self.socket.sendto(d, addr)
                sent += 1
            except OSError as e:
                lost += 1
                if e.errno == errno.EMSGSIZE:
                    self.forget_path(addr)
        return sent, lost


def listen(reactor: Any, port: int, proto: Any, interface: str, max_packet: int, batching: bool) -> BatchPort:
    """Like ``reactor.listenUDP``, with a :class:`BatchPort`."""
    p = BatchPort(port, proto, interface, max_packet, reactor, batching)
    p.startListening()
    return p
