"""The BEP 15 UDP tracker for BitTorrent clients, answering from the same :class:`ClientSwarms` as HTTP.

:class:`UdpTracker` is pure: a datagram, its source address and ``now`` in, the answer (or nothing) out.
:class:`UdpTrackerProtocol` only decodes ``(bytes, addr)``, calls it and writes the answer.

Connection ids are kept in no table: an id is an HMAC-SHA-256 (cut to 8 bytes) of the source address and
a one-minute window, under a secret drawn at start; the current and the previous window's ids are
accepted, so an id lives one to two minutes, as BEP 15 asks.  The source port is left out, as opentracker
and chihaya leave it out: libtorrent keeps one id per tracker for all its sockets (seen with two sessions in
one process: the second announced at once with the first one's id, from another port), and the id is
there to prove the address, which is what an amplification attack forges.  A forged source address never sees the id,
so it can never make the tracker send more bytes than it sent: until a datagram carries a valid id, its
answer is never longer than itself (connect answers are 16 bytes, as the request; errors are cut to the
request's length), and a connect without BEP 15's protocol id, or anything under 16 bytes, is not answered.
"""

from __future__ import annotations

import hmac
import struct
from typing import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from p2ptorrent.tracker.bep import EVENTS, MAX_SCRAPE_HASHES, Announce, BepRefusal, ClientSwarms

#: The magic "connection id" of a connect request (BEP 15).
PROTOCOL_ID = 0x41727101980
CONNECT, ANNOUNCE, SCRAPE, ERROR = 0, 1, 2, 3
#: Seconds in one connection-id window: an id is accepted in its window and the next one.
CONNECTION_ID_WINDOW = 60
#: Answers fit one Ethernet frame (1500 bytes less the IP and UDP headers), so nothing is left to IP
#: fragmentation: at most 242 IPv4 peers (6 bytes each) or 79 IPv6 peers (18 bytes) per announce.
MAX_ANSWER_V4 = 1500 - 20 - 8
MAX_ANSWER_V6 = 1500 - 40 - 8

#: Every request: connection id (8 bytes, kept as bytes), action, transaction id.
HEADER = struct.Struct(">8sII")
#: Connect answer: action, transaction id, connection id.
CONNECT_ANSWER = struct.Struct(">II8s")
#: Announce request, 98 bytes: header, info hash, peer id, downloaded, left, uploaded, event, IP, key,
#: num_want, port.  (BEP 41 options may follow: ignored.)
ANNOUNCE_REQUEST = struct.Struct(">8sII20s20sqqqIIIiH")
#: Announce answer: action, transaction id, interval, leechers, seeders; then 6 or 18 bytes per peer.
ANNOUNCE_ANSWER = struct.Struct(">IIIII")
#: Scrape answer: action, transaction id; then per info hash seeders, completed, leechers.
SCRAPE_HEAD = struct.Struct(">II")
SCRAPE_ENTRY = struct.Struct(">III")
ERROR_HEAD = struct.Struct(">II")

_PROTOCOL_ID_BYTES = PROTOCOL_ID.to_bytes(8, "big")
#: What the protocol counts a datagram as, by its action field (bytes 8-12).
KINDS = {(0).to_bytes(4, "big"): "UDP CONNECT", (1).to_bytes(4, "big"): "UDP ANNOUNCE",
         (2).to_bytes(4, "big"): "UDP SCRAPE"}
ERROR_ACTION = ERROR.to_bytes(4, "big")


class UdpTracker:
    """BEP 15 connect, announce and scrape over *clients* (the peer set the HTTP routes use too)."""

    log = Logger()

    def __init__(self, clients: ClientSwarms, secret: bytes) -> None:
        self.clients = clients
        self._secret = secret

    def connection_id(self, host: str, now: float) -> bytes:
        """The id a connect from *host* gets at *now* (tests use it to make stale or foreign ids)."""
        return self._id(host, int(now // CONNECTION_ID_WINDOW))

    def _id(self, host: str, window: int) -> bytes:
        message = window.to_bytes(8, "big", signed=True) + host.encode("utf-8", "replace")
        return hmac.digest(self._secret, message, "sha256")[:8]

    def _valid(self, cid: bytes, host: str, now: float) -> bool:
        window = int(now // CONNECTION_ID_WINDOW)
        return hmac.compare_digest(cid, self._id(host, window)) or hmac.compare_digest(cid, self._id(host, window - 1))

    def handle(self, data: bytes, host: str, port: int, now: float) -> bytes | None:
        """The answer to one datagram from host:port, or None for none.  Never raises."""
        try:
            return self._handle(data, host, port, now)
        except Exception:
            # A bug, not bad input (every field is checked): logged, and this datagram gets no answer.
            self.log.failure("failed on a BEP 15 datagram from {host}:{port}", host=host, port=port)
            return None

    def _handle(self, data: bytes, host: str, port: int, now: float) -> bytes | None:
        size = len(data)
        if size < 16:
            return None
        cid, action, tid = HEADER.unpack_from(data)
        if action == CONNECT:
            if cid != _PROTOCOL_ID_BYTES:
                return None
            return CONNECT_ANSWER.pack(CONNECT, tid, self._id(host, int(now // CONNECTION_ID_WINDOW)))
        if not self._valid(cid, host, now):
            # Unverified: an error no longer than the request (an amplifier must answer more than it got).
            return _error(tid, b"bad or expired connection id: connect again")[:size]
        if action == ANNOUNCE:
            return self._announce(data, host, tid, now)
        if action == SCRAPE:
            return self._scrape(data, tid)
        return _error(tid, b"unknown action %d" % action)

    def _announce(self, data: bytes, host: str, tid: int, now: float) -> bytes:
        if len(data) < ANNOUNCE_REQUEST.size:
            return _error(tid, b"announce must be 98 bytes, got %d" % len(data))
        (_, _, _, info_hash, peer_id, downloaded, left, uploaded, event, _ip, _key, numwant, port,
         ) = ANNOUNCE_REQUEST.unpack_from(data)
        if event > 3:
            return _error(tid, b"unknown event %d: use 0..3" % event)
        if port == 0:
            return _error(tid, b"port must be 1..65535")
        if left < 0 or downloaded < 0 or uploaded < 0:
            return _error(tid, b"left, downloaded and uploaded must not be negative")
        if numwant < -1:
            return _error(tid, b"num_want must be -1 (the default) or more")
        v6 = ":" in host
        room = (MAX_ANSWER_V6 - ANNOUNCE_ANSWER.size) // 18 if v6 else (MAX_ANSWER_V4 - ANNOUNCE_ANSWER.size) // 6
        wanted = self.clients.numwant if numwant == -1 else numwant
        req = Announce(info_hash, peer_id, host, port, left, EVENTS[event], min(wanted, room))
        try:
            seeds, leechers, peers = self.clients.announce_compact(req, now)
        except BepRefusal as e:
            return _error(tid, str(e).encode("utf-8"))
        # BEP 15: peers of the requester's address family only (6 bytes each for IPv4, 18 for IPv6).
        return ANNOUNCE_ANSWER.pack(ANNOUNCE, tid, self.clients.interval, leechers, seeds) + peers

    def _scrape(self, data: bytes, tid: int) -> bytes:
        body = len(data) - HEADER.size
        count, rest = divmod(body, 20)
        if rest:
            return _error(tid, b"scrape: info hashes are 20 bytes each")
        if not 1 <= count <= MAX_SCRAPE_HASHES:
            return _error(tid, b"scrape names 1 to %d info hashes, got %d" % (MAX_SCRAPE_HASHES, count))
        hashes = [data[at:at + 20] for at in range(HEADER.size, len(data), 20)]
        entries = self.clients.scrape(hashes)
        # Asked twice, a hash is answered twice: the answer follows the request's order.
        return SCRAPE_HEAD.pack(SCRAPE, tid) + b"".join(
            SCRAPE_ENTRY.pack(e.complete, e.downloaded, e.incomplete) for e in map(entries.__getitem__, hashes))


def _error(tid: int, message: bytes) -> bytes:
    return ERROR_HEAD.pack(ERROR, tid) + message


class UdpTrackerProtocol(DatagramProtocol):
    """Datagrams in, :meth:`UdpTracker.handle`'s answers out; counts what came and what was refused.

    ``count(kind, refused)`` is told of each datagram (kind ``UDP CONNECT``, ``UDP ANNOUNCE``, ``UDP
    SCRAPE`` or ``UDP OTHER``), so the tracker's line per liveness check includes them.
    """

    noisy = False
    log = Logger()

    def __init__(
        self, tracker: UdpTracker, clock: IReactorTime, count: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.tracker = tracker
        self.clock = clock
        self.count = count
        self.received = 0
        self.answered = 0
        self.refused = 0

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            host, port = addr[0], addr[1]
            if host.startswith("::ffff:") and "." in host:
                host = host[7:]  # an IPv4 client on a dual-stack socket: peers need the plain form
            answer = self.tracker.handle(data, host, port, self.clock.seconds())
            self.received += 1
            refused = answer is None or answer[:4] == ERROR_ACTION
            self.refused += refused
            if answer is not None:
                self.transport.write(answer, addr)  # type: ignore[union-attr]
                self.answered += 1
            if self.count is not None:
                self.count(KINDS.get(data[8:12], "UDP OTHER"), refused)
        except Exception:
            self.log.failure("failed on a datagram from {addr}", addr=addr)
