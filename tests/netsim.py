"""An in-memory network for DatagramProtocols, in virtual time.

Each attached protocol gets a fake transport; what it writes is delivered to
the protocol at the destination address after a delay, unless the network
loses it, and it may be duplicated or held back (reordered).  Everything is
driven by one twisted.internet.task.Clock and one seeded random generator, so
a run is deterministic.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.task import Clock


@dataclass
class Faults:
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_delay: float = 0.2
    delay: float = 0.0005
    #: Bytes per second each host can send (0: unlimited); net.bandwidth overrides per host.
    bandwidth: float = 20e6
    #: A callable (src, dst, data) -> bytes | None to tamper with or drop a datagram.
    tamper: Callable[[Any, Any, bytes], bytes | None] | None = None


class FakeUDPTransport:
    def __init__(self, net: "Network", addr: tuple[str, int]) -> None:
        self.net = net
        self.addr = addr
        self.written: list[tuple[bytes, Any]] = []

    def write(self, data: bytes, addr: Any) -> None:
        self.net.sent += 1
        self.net.send(self.addr, addr, data)

    def getHost(self) -> Any:
        return self.addr

    def stopListening(self) -> None:
        self.net.detach(self.addr)


@dataclass(order=True)
class _Event:
    at: float
    seq: int
    src: Any = field(compare=False)
    dst: Any = field(compare=False)
    data: bytes = field(compare=False)


class Network:
    def __init__(self, clock: Clock, seed: int = 0, faults: Faults | None = None) -> None:
        self.clock = clock
        self.rng = random.Random(seed)
        self.faults = faults or Faults()
        self.hosts: dict[Any, Any] = {}
        self.queue: list[_Event] = []
        self.seq = 0
        self.sent = 0
        self.delivered = 0
        self.lost = 0
        self.blackout_until = -1.0
        self.bandwidth: dict[Any, float] = {}
        self._link_free: dict[Any, float] = {}

    def attach(self, proto: Any, addr: tuple[str, int]) -> FakeUDPTransport:
        transport = FakeUDPTransport(self, addr)
        proto.makeConnection(transport)
        self.hosts[addr] = proto
        return transport

    def detach(self, addr: Any) -> None:
        self.hosts.pop(addr, None)

    def send(self, src: Any, dst: Any, data: bytes) -> None:
        f = self.faults
        now = self.clock.seconds()
        if now < self.blackout_until or self.rng.random() < f.loss:
            self.lost += 1
            return
        if f.tamper is not None:
            tampered = f.tamper(src, dst, data)
            if tampered is None:
                self.lost += 1
                return
            data = tampered
        rate = self.bandwidth.get(src, f.bandwidth)
        if rate:
            # The sender's link serialises its datagrams: a burst queues up.
            start = max(now, self._link_free.get(src, now))
            self._link_free[src] = start + len(data) / rate
            now = self._link_free[src]
        copies = 2 if self.rng.random() < f.duplicate else 1
        for _ in range(copies):
            delay = f.delay
            if self.rng.random() < f.reorder:
                delay += self.rng.random() * f.reorder_delay
            self.seq += 1
            heapq.heappush(self.queue, _Event(now + delay, self.seq, src, dst, data))

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
            while self.queue and self.queue[0].at <= self.clock.seconds():
                ev = heapq.heappop(self.queue)
                proto = self.hosts.get(ev.dst)
                if proto is None:
                    self.lost += 1
                    continue
                self.delivered += 1
                proto.datagramReceived(ev.data, ev.src)
