"""An in-memory network for DatagramProtocols, in virtual time.

Each attached protocol gets a fake transport; what it writes is delivered to
the protocol at the destination address after a delay, unless the network
loses it, and it may be duplicated or held back (reordered).  Everything is
driven by one twisted.internet.task.Clock and one seeded random generator, so
a run is deterministic.

By default a datagram is one packet, lost or delivered whole.  With a path
MTU (``Faults.mtu``) the network models IPv4 fragmentation, because that is
where a real link hurts a node that sends datagrams bigger than the path
(issue 11): a datagram of n payload bytes is n + 28 bytes of IPv4 (20 of IP
header, 8 of UDP header); above the MTU it travels as several fragments,
each lost on its own, and the receiving host reassembles them the way Linux
does (``net.ipv4.ipfrag_time``, ``net.ipv4.ipfrag_high_thresh``): the
fragments of an incomplete datagram wait in a per-host store that holds
memory until the datagram completes or its queue times out, and while that
store is at its high threshold every arriving fragment is dropped (Linux
since 4.17 does not evict old queues to make room).  See :class:`Faults`
for what is and is not modelled.

Forged source addresses: :meth:`Network.forge` delivers a datagram that
claims to come from one address but is sent on another host's link (an
off-path host forging a peer's address: it charges its own bandwidth, not the
peer's).  Only senders' links are modelled (no receiving host's downlink), so
a flood of forged datagrams costs the receiver CPU, never virtual time.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.task import Clock

IP_HEADER = 20
UDP_HEADER = 8
#: What the reassembly store charges for a fragment beyond its bytes on the wire.  Linux charges an skb's
#: "truesize": the buffer the driver allocated (often 2 KiB or more for a 1500-byte frame) plus the
#: sk_buff and skb_shared_info structs, so a 1500-byte fragment costs at least ~2.3 KB there.  768 bytes
#: of overhead (2268 for a full fragment) is a modest version of that; a real host may fill sooner.
FRAG_OVERHEAD = 768
MIB = 1024 * 1024


def ip_packets(payload: int, mtu: int = 0) -> list[int]:
    """Sizes of the IPv4 packets, headers included, that carry a UDP datagram of *payload* bytes.

    One packet (payload + 28) if it fits *mtu* or *mtu* is 0; otherwise fragments as IPv4 cuts them: each
    carries (mtu - 20) bytes rounded down to a multiple of 8 of the UDP datagram (the first one holds the
    8-byte UDP header), plus its own 20-byte IP header, and the last one carries what is left.
    """
    body = payload + UDP_HEADER
    if not mtu or body + IP_HEADER <= mtu:
        return [body + IP_HEADER]
    room = (mtu - IP_HEADER) // 8 * 8
    count = -(-body // room)
    return [IP_HEADER + room] * (count - 1) + [IP_HEADER + body - room * (count - 1)]


@dataclass
class Faults:
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_delay: float = 0.2
    delay: float = 0.0005
    #: Bytes per second each host can send (0: unlimited); net.bandwidth overrides per host.
    bandwidth: float = 20e6
    #: A callable (src, dst, data) -> bytes | None to tamper with or drop a datagram.  With an MTU it sees
    #: the whole datagram, before it is split into fragments.
    tamper: Callable[[Any, Any, bytes], bytes | None] | None = None
    #: Path MTU in bytes; 0 (the default) models no IP at all, exactly as before MTUs were modelled.  With
    #: an MTU, ``loss`` applies to each IP packet (each fragment) on its own, the sender's link carries the
    #: bytes on the wire (headers included, and packets lost further along the path too), and datagrams
    #: bigger than the path are reassembled by the receiving host.  ``duplicate`` and ``reorder`` still act
    #: on whole datagrams (kept simple): a duplicated datagram is a second copy of the fragments that got
    #: through, reassembled on its own; a reordered one has all its fragments held back by the same delay.
    mtu: int = 0
    #: Seconds an incomplete datagram's fragments are held before its queue expires (net.ipv4.ipfrag_time).
    frag_timeout: float = 30.0
    #: Bytes of fragments a host holds (see FRAG_OVERHEAD) at which it drops every arriving fragment
    #: until queues expire (net.ipv4.ipfrag_high_thresh).
    frag_high_thresh: int = 4 * MIB
    #: With an MTU: a callable (src, dst, data, index) -> bool deciding instead of ``loss`` whether IP
    #: packet *index* of this datagram is lost (for tests of the model itself).
    lose_packet: Callable[[Any, Any, bytes, int], bool] | None = None


class FakeUDPTransport:
    def __init__(self, net: "Network", addr: tuple[str, int]) -> None:
        self.net = net
        self.addr = addr
        self.written: list[tuple[bytes, Any]] = []

    def write(self, data: bytes, addr: Any) -> None:
        # No size limit here: a datagram bigger than path_payload() is fragmented, as a real socket does.
        self.net.sent += 1
        self.net.send(self.addr, addr, data)

    def path_payload(self, addr: Any) -> int | None:
        """The largest UDP payload that reaches *addr* unfragmented, or None if the network has no MTU."""
        mtu = self.net.faults.mtu
        return mtu - IP_HEADER - UDP_HEADER if mtu else None

    def getHost(self) -> Any:
        return self.addr

    def stopListening(self) -> None:
        self.net.detach(self.addr)


@dataclass(eq=False)
class _Datagram:
    """One copy of a fragmented datagram on its way: what reassembly waits for."""

    data: bytes
    fragments: int


@dataclass(order=True)
class _Event:
    at: float
    seq: int
    src: Any = field(compare=False)
    dst: Any = field(compare=False)
    data: bytes = field(compare=False)
    #: For a fragment: its datagram and what it costs the reassembly store; None for a whole datagram.
    fragment: tuple[_Datagram, int] | None = field(default=None, compare=False)
    #: For a forged datagram (see Network.forge): its tag; None for a datagram sent from its own address.
    forged: str | None = field(default=None, compare=False)


@dataclass(eq=False)
class _Queue:
    deadline: float
    received: int = 0
    memory: int = 0


class _Reassembly:
    """One receiving host's incomplete datagrams, oldest first (every queue lives for the same timeout)."""

    def __init__(self) -> None:
        self.queues: OrderedDict[_Datagram, _Queue] = OrderedDict()
        self.memory = 0


class Network:
    def __init__(self, clock: Clock, seed: int = 0, faults: Faults | None = None) -> None:
        self.clock = clock
        self.rng = random.Random(seed)
        self.faults = faults or Faults()
        self.hosts: dict[Any, Any] = {}
        self.queue: list[_Event] = []
        self.seq = 0
        #: Datagrams written, delivered to a protocol, and lost (on the path, to tampering, to a missing host;
        #: with an MTU, a datagram that lost any of its fragments on the path counts here once).
        self.sent = 0
        self.delivered = 0
        self.lost = 0
        self.blackout_until = -1.0
        self.bandwidth: dict[Any, float] = {}
        self._link_free: dict[Any, float] = {}
        # ---- with an MTU only
        #: IP packets' bytes put on the wire, headers included.
        self.wire_bytes = 0
        #: Fragments of fragmented datagrams sent, and lost on the path.
        self.fragments_sent = 0
        self.fragments_lost = 0
        #: Fragments a receiving host dropped because its reassembly store was at frag_high_thresh.
        self.fragments_dropped_full = 0
        #: Incomplete datagrams whose reassembly queue expired (their fragments' memory freed).
        self.reassembly_timeouts = 0
        #: The most memory any host's reassembly store held.
        self.reassembly_peak = 0
        self._reassembly: dict[Any, _Reassembly] = {}
        # ---- forged datagrams (see forge()), by tag; delivered and lost above count them too, sent does not
        self.forged_sent: Counter[str] = Counter()
        self.forged_delivered: Counter[str] = Counter()
        self.forged_lost: Counter[str] = Counter()

    def attach(self, proto: Any, addr: tuple[str, int]) -> FakeUDPTransport:
        transport = FakeUDPTransport(self, addr)
        proto.makeConnection(transport)
        self.hosts[addr] = proto
        return transport

    def detach(self, addr: Any) -> None:
        self.hosts.pop(addr, None)

    def counters(self) -> dict[str, int]:
        """Every counter, for assertions and their messages."""
        self.expire_fragments()
        names = ("sent", "delivered", "lost", "wire_bytes", "fragments_sent", "fragments_lost",
                 "fragments_dropped_full", "reassembly_timeouts", "reassembly_peak")
        return {name: getattr(self, name) for name in names}

    def reassembly_memory(self, host: Any) -> int:
        """Bytes *host*'s reassembly store holds now."""
        self.expire_fragments()
        store = self._reassembly.get(host)
        return store.memory if store else 0

    def forge(self, src: Any, dst: Any, data: bytes, via: Any, tag: str = "forged") -> None:
        """Send *data* to *dst* as if from *src*, on the link of host *via* (which need not be attached).

        An off-path host forging a peer's source address: *dst* sees *src* as the sender, while *via*'s
        bandwidth (``bandwidth[via]``, else ``Faults.bandwidth``) carries it, so the peer's own link is not
        slowed.  Loss, tampering, duplication, reordering and the MTU apply as to any datagram.  Counted by
        *tag* in ``forged_sent``, ``forged_delivered`` (handed to *dst*'s protocol; a duplicate counts twice)
        and ``forged_lost`` (on the path, to tampering, or to a missing host), and in ``delivered`` and
        ``lost`` like any datagram, never in ``sent`` (the datagrams written by attached hosts).
        """
        self.forged_sent[tag] += 1
        lost = self.lost
        self.send(src, dst, data, link=via, forged=tag)
        if self.lost > lost:
            self.forged_lost[tag] += 1

    def send(self, src: Any, dst: Any, data: bytes, *, link: Any = None, forged: str | None = None) -> None:
        """One datagram from *src* to *dst*, on *src*'s link (or *link*'s: see forge())."""
        f = self.faults
        link = src if link is None else link
        if f.mtu:
            self._send_packets(src, dst, data, link, forged)
            return
        now = self.clock.seconds()
        if now < self.blackout_until or self.rng.random() < f.loss:
            self.lost += 1
            return
        data = self._tampered(src, dst, data)
        if data is None:
            return
        rate = self.bandwidth.get(link, f.bandwidth)
        if rate:
            # The sender's link serialises its datagrams: a burst queues up.
            start = max(now, self._link_free.get(link, now))
            self._link_free[link] = start + len(data) / rate
            now = self._link_free[link]
        copies = 2 if self.rng.random() < f.duplicate else 1
        for _ in range(copies):
            delay = f.delay
            if self.rng.random() < f.reorder:
                delay += self.rng.random() * f.reorder_delay
            self.seq += 1
            heapq.heappush(self.queue, _Event(now + delay, self.seq, src, dst, data, forged=forged))

    def _tampered(self, src: Any, dst: Any, data: bytes) -> bytes | None:
        """The datagram as Faults.tamper leaves it (None: dropped, and counted lost)."""
        tamper = self.faults.tamper
        if tamper is None:
            return data
        out = tamper(src, dst, data)
        if out is None:
            self.lost += 1
        return out

    def _send_packets(self, src: Any, dst: Any, data: bytes, link: Any, forged: str | None) -> None:
        """send() with a path MTU: the datagram as the IP packets that carry it (on *link*'s link)."""
        f = self.faults
        now = self.clock.seconds()
        data = self._tampered(src, dst, data)
        if data is None:
            return
        sizes = ip_packets(len(data), f.mtu)
        self.wire_bytes += sum(sizes)
        # The sender's link serialises every packet, including those lost further along the path.
        sent_at = []
        rate = self.bandwidth.get(link, f.bandwidth)
        if rate:
            t = max(now, self._link_free.get(link, now))
            for size in sizes:
                t += size / rate
                sent_at.append(t)
            self._link_free[link] = t
        else:
            sent_at = [now] * len(sizes)
        fragmented = len(sizes) > 1
        if fragmented:
            self.fragments_sent += len(sizes)
        if now < self.blackout_until:
            arrived = []
        elif f.lose_packet is not None:
            arrived = [i for i in range(len(sizes)) if not f.lose_packet(src, dst, data, i)]
        else:
            arrived = [i for i in range(len(sizes)) if self.rng.random() >= f.loss]
        if len(arrived) < len(sizes):
            self.lost += 1
            if fragmented:
                self.fragments_lost += len(sizes) - len(arrived)
        if not arrived:
            return
        copies = 2 if self.rng.random() < f.duplicate else 1
        for _ in range(copies):
            delay = f.delay
            if self.rng.random() < f.reorder:
                delay += self.rng.random() * f.reorder_delay
            if not fragmented:
                self.seq += 1
                heapq.heappush(self.queue, _Event(sent_at[0] + delay, self.seq, src, dst, data, forged=forged))
                continue
            datagram = _Datagram(data, len(sizes))
            for i in arrived:
                self.seq += 1
                piece = (datagram, sizes[i] + FRAG_OVERHEAD)
                heapq.heappush(self.queue, _Event(sent_at[i] + delay, self.seq, src, dst, b"", piece, forged))

    def _reassemble(self, host: Any, datagram: _Datagram, cost: int) -> bytes | None:
        """A fragment of *datagram* reached *host*: the whole datagram once its last fragment is here."""
        store = self._reassembly.get(host)
        if store is None:
            store = self._reassembly[host] = _Reassembly()
        now = self.clock.seconds()
        self._expire(store, now)
        if store.memory >= self.faults.frag_high_thresh:
            self.fragments_dropped_full += 1
            return None
        queue = store.queues.get(datagram)
        if queue is None:
            # Linux starts the timer when a datagram's first fragment arrives and never extends it.
            queue = store.queues[datagram] = _Queue(now + self.faults.frag_timeout)
        queue.received += 1
        queue.memory += cost
        store.memory += cost
        self.reassembly_peak = max(self.reassembly_peak, store.memory)
        if queue.received < datagram.fragments:
            return None
        del store.queues[datagram]
        store.memory -= queue.memory
        return datagram.data

    def _expire(self, store: _Reassembly, now: float) -> None:
        queues = store.queues
        while queues:
            datagram, queue = next(iter(queues.items()))
            if queue.deadline > now:
                return
            del queues[datagram]
            store.memory -= queue.memory
            self.reassembly_timeouts += 1

    def expire_fragments(self) -> None:
        """Free the reassembly queues that timed out by now (run() does it as time passes)."""
        now = self.clock.seconds()
        for store in self._reassembly.values():
            self._expire(store, now)

    def run(self, until: Callable[[], bool], limit: float = 600.0, step: float = 0.01) -> None:
        """Deliver datagrams and advance time until *until*() or *limit* virtual seconds."""
        end = self.clock.seconds() + limit
        while not until():
            now = self.clock.seconds()
            if now >= end:
                raise AssertionError(f"still running after {limit} virtual seconds")
            nxt = self.queue[0].at if self.queue else now + step
            target = min(max(nxt, now), now + step, end)
            self.clock.advance(target - now)
            if self._reassembly:
                self.expire_fragments()
            while self.queue and self.queue[0].at <= self.clock.seconds():
                ev = heapq.heappop(self.queue)
                data = ev.data
                if ev.fragment is not None:
                    reassembled = self._reassemble(ev.dst, *ev.fragment)
                    if reassembled is None:
                        continue
                    data = reassembled
                proto = self.hosts.get(ev.dst)
                if proto is None:
                    self.lost += 1
                    if ev.forged is not None:
                        self.forged_lost[ev.forged] += 1
                    continue
                self.delivered += 1
                if ev.forged is not None:
                    self.forged_delivered[ev.forged] += 1
                proto.datagramReceived(data, ev.src)
