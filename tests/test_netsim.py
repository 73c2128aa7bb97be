"""The in-memory network itself (tests/netsim.py): IPv4 fragmentation and reassembly, with tiny hand-driven protocols.

Issue 11: on an MTU-1500 path a 7216-byte datagram travels as 5 fragments; a
lost fragment strands the others in the receiver's reassembly store for 30 s,
and a full store drops every fragment of every new datagram.  These tests pin
the model down without any p2ptorrent node.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock

from netsim import FRAG_OVERHEAD, Faults, Network, ip_packets

A = ("10.0.0.1", 1)
B = ("10.0.0.2", 2)


class Recorder(DatagramProtocol):
    """Remembers what it received, and when."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.got: list[tuple[float, Any, bytes]] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.got.append((self.clock.seconds(), addr, data))

    def tags(self) -> list[int]:
        return [data[0] for _, _, data in self.got]


def pair(faults: Faults, seed: int = 0) -> tuple[Network, Any, Recorder]:
    """A network with a sender at A (its transport returned) and a Recorder at B."""
    clock = Clock()
    net = Network(clock, seed=seed, faults=faults)
    sender = net.attach(Recorder(clock), A)
    receiver = Recorder(clock)
    net.attach(receiver, B)
    return net, sender, receiver


def datagram(tag: int, size: int) -> bytes:
    """*size* bytes, the first of them *tag* (so a test can tell datagrams apart)."""
    return bytes([tag]) + bytes([tag ^ 0x5A]) * (size - 1)


def settle(net: Network, seconds: float = 1.0) -> None:
    """Deliver what is in flight and let *seconds* of virtual time pass."""
    until = net.clock.seconds() + seconds
    net.run(lambda: net.clock.seconds() >= until)


# ---- how a datagram is cut


def test_ip_packets_cut_as_ipv4_does() -> None:
    # 7216 + 8 (UDP) = 7224 bytes in 1480-byte fragment payloads: 4 full fragments and 1304 bytes left.
    assert ip_packets(7216, 1500) == [1500, 1500, 1500, 1500, 1324]
    assert ip_packets(1472, 1500) == [1500]  # the largest payload that fits: 1472 + 8 + 20
    assert ip_packets(1473, 1500) == [1500, 21]  # one byte more: a second fragment with 1 byte in it
    # 1006 - 20 = 986 rounds down to 984 bytes a fragment (a multiple of 8).
    assert ip_packets(7216, 1006) == [1004] * 7 + [20 + 7224 - 7 * 984]
    assert ip_packets(7216) == ip_packets(7216, 0) == [7244]  # no MTU: one packet


@given(payload=st.integers(0, 65507), mtu=st.integers(68, 9000))
def test_fragments_carry_the_whole_datagram(payload: int, mtu: int) -> None:
    sizes = ip_packets(payload, mtu)
    assert sum(size - 20 for size in sizes) == payload + 8
    assert all(size <= mtu for size in sizes)
    assert all((size - 20) % 8 == 0 for size in sizes[:-1])
    assert (len(sizes) == 1) == (payload + 28 <= mtu)


def test_path_payload_is_what_fits_unfragmented() -> None:
    net, sender, receiver = pair(Faults(mtu=1500))
    assert sender.path_payload(B) == 1472
    net, sender, receiver = pair(Faults())
    assert sender.path_payload(B) is None


# ---- loss per fragment, delivery once complete


def test_a_fragmented_datagram_travels_as_its_fragments_and_arrives_once() -> None:
    net, sender, receiver = pair(Faults(mtu=1500, bandwidth=1e6))
    data = datagram(1, 7216)
    sender.write(data, B)
    settle(net)
    assert [d for _, _, d in receiver.got] == [data]
    # Delivered when the last fragment is in: the link carried all 7324 bytes on the wire first.
    assert receiver.got[0][0] == pytest.approx(7324 / 1e6 + net.faults.delay)
    assert net.counters() == {
        "sent": 1, "delivered": 1, "lost": 0, "wire_bytes": 7324, "fragments_sent": 5, "fragments_lost": 0,
        "fragments_dropped_full": 0, "reassembly_timeouts": 0, "reassembly_peak": 4 * 1500 + 1324 + 5 * FRAG_OVERHEAD,
    }
    assert net.reassembly_memory(B) == 0

    sender.write(datagram(2, 1472), B)  # fits the path: one packet, no fragment
    settle(net)
    assert receiver.tags() == [1, 2]
    assert net.fragments_sent == 5 and net.wire_bytes == 7324 + 1500


def test_a_datagram_is_delivered_iff_all_its_fragments_arrive() -> None:
    lose = {1: {0}, 2: {4}, 3: {1, 2}, 4: {0, 1, 2, 3, 4}}  # datagram tag -> fragments lost on the path

    def lose_packet(src: Any, dst: Any, data: bytes, index: int) -> bool:
        return index in lose.get(data[0], set())

    net, sender, receiver = pair(Faults(mtu=1500, lose_packet=lose_packet))
    for tag in range(6):
        sender.write(datagram(tag, 7216), B)
    settle(net)
    assert receiver.tags() == [0, 5]
    assert (net.lost, net.fragments_lost, net.fragments_sent) == (4, 9, 30)
    # Datagrams 1-3 left fragments behind (4 lost them all): they wait out the timeout, then are freed.
    assert net.reassembly_memory(B) == 9 * 1500 + 2 * 1324 + 11 * FRAG_OVERHEAD
    settle(net, 28.5)
    assert net.reassembly_timeouts == 0
    settle(net, 1.5)
    assert net.reassembly_timeouts == 3 and net.reassembly_memory(B) == 0


def test_loss_applies_to_each_fragment() -> None:
    """5% loss: a datagram of one packet gets through 95% of the time, one of five fragments 0.95**5 = 77%."""
    net, sender, receiver = pair(Faults(mtu=1500, loss=0.05), seed=3)
    n = 2000
    for i in range(n):
        sender.write(datagram(i % 2, 7216 if i % 2 else 1000), B)
        if i % 100 == 99:
            settle(net, 0.05)
    settle(net, 31.0)
    got = receiver.tags()
    small, big = got.count(0) / (n / 2), got.count(1) / (n / 2)
    print(f"delivered: {small:.3f} of 1-packet datagrams, {big:.3f} of 5-fragment ones; {net.counters()}")
    assert small == pytest.approx(0.95, abs=0.03)
    assert big == pytest.approx(0.95**5, abs=0.04)
    assert net.fragments_sent == 5 * n // 2
    assert net.fragments_lost / net.fragments_sent == pytest.approx(0.05, abs=0.01)
    assert net.delivered + net.lost == net.sent == n
    # Every one delivered is whole and untouched.
    assert all(data == datagram(data[0], 7216 if data[0] else 1000) for _, _, data in receiver.got)
    # Each fragmented datagram that lost some but not all of its fragments timed out, and nothing is held.
    assert 0 < net.reassembly_timeouts <= net.lost - (n // 2 - got.count(0))
    assert net.reassembly_memory(B) == 0


def test_duplicates_and_reordering_act_on_whole_datagrams() -> None:
    net, sender, receiver = pair(Faults(mtu=1500, duplicate=1.0, reorder=1.0, reorder_delay=0.2))
    data = datagram(7, 7216)
    sender.write(data, B)
    settle(net)
    assert [d for _, _, d in receiver.got] == [data, data]  # each copy reassembled on its own
    assert net.fragments_sent == 5 and net.delivered == 2 and net.reassembly_memory(B) == 0


def test_with_an_mtu_a_run_is_deterministic() -> None:
    def run() -> tuple[list[tuple[float, Any, bytes]], dict[str, int]]:
        net, sender, receiver = pair(Faults(mtu=1500, loss=0.05, duplicate=0.05, reorder=0.1), seed=11)
        for i in range(300):
            sender.write(datagram(i % 256, 500 + 37 * i), B)
        settle(net, 31.0)
        return receiver.got, net.counters()

    assert run() == run()


# ---- the reassembly store's memory limit


def test_a_full_store_drops_every_fragmented_datagram_until_its_queues_expire() -> None:
    stranded = 4 * (1500 + FRAG_OVERHEAD)  # a 7216-byte datagram that lost its last fragment leaves 4 behind
    strand = set(range(10, 15))

    def lose_packet(src: Any, dst: Any, data: bytes, index: int) -> bool:
        return data[0] in strand and index == 4

    net, sender, receiver = pair(Faults(mtu=1500, frag_high_thresh=5 * stranded, lose_packet=lose_packet))
    for tag in (10, 11, 12, 13):
        sender.write(datagram(tag, 7216), B)
    settle(net, 0.01)
    assert net.reassembly_memory(B) == 4 * stranded  # under the threshold: still accepting
    sender.write(datagram(1, 2000), B)  # 2 fragments: its first one held, its second one completes it
    settle(net, 0.01)
    assert receiver.tags() == [1]

    sender.write(datagram(14, 7216), B)  # the fifth stranded datagram: the store is at its threshold
    settle(net, 0.01)
    assert net.reassembly_memory(B) == 5 * stranded
    for tag in (2, 3, 4):
        sender.write(datagram(tag, 7216), B)  # complete on the path, dropped at the host
    for tag in (5, 6):
        sender.write(datagram(tag, 1472), B)  # unfragmented datagrams never touch the store
    settle(net, 28.0)
    sender.write(datagram(8, 7216), B)  # still full 28.5 s after the first stranded fragment
    settle(net, 0.5)
    assert receiver.tags() == [1, 5, 6]
    assert net.fragments_dropped_full == 4 * 5 and net.reassembly_timeouts == 0
    assert net.lost == 5  # the 5 that lost a fragment on the path; those dropped at the host are counted apart

    settle(net, 2.0)  # 30 s after they arrived, the stranded queues expire and free the store
    assert net.reassembly_timeouts == 5 and net.reassembly_memory(B) == 0
    sender.write(datagram(9, 7216), B)
    settle(net)
    assert receiver.tags() == [1, 5, 6, 9]
    assert net.counters()["fragments_dropped_full"] == 20


def test_the_store_is_per_receiving_host() -> None:
    def lose_packet(src: Any, dst: Any, data: bytes, index: int) -> bool:
        return data[0] == 0 and index == 4

    clock = Clock()
    # Room for one datagram's first 4 fragments and then some: two stranded datagrams fill it.
    net = Network(clock, faults=Faults(mtu=1500, frag_high_thresh=5 * (1500 + FRAG_OVERHEAD), lose_packet=lose_packet))
    sender = net.attach(Recorder(clock), A)
    b, c = Recorder(clock), Recorder(clock)
    net.attach(b, B)
    net.attach(c, ("10.0.0.3", 3))
    sender.write(datagram(0, 7216), B)
    sender.write(datagram(0, 7216), B)  # B's store is full
    settle(net)
    sender.write(datagram(1, 7216), B)
    sender.write(datagram(1, 7216), ("10.0.0.3", 3))
    settle(net)
    assert (b.tags(), c.tags()) == ([], [1])


# ---- no MTU: exactly the network as it was


def _fingerprint_without_mtu(faults: Faults) -> str:
    """What two hosts receive, and when, under *faults* (no MTU): a digest of it."""
    clock = Clock()
    net = Network(clock, seed=5, faults=faults)
    a, b = Recorder(clock), Recorder(clock)
    ta, tb = net.attach(a, A), net.attach(b, B)
    for i in range(300):
        src, dst = (ta, tb) if i % 3 else (tb, ta)
        src.write(i.to_bytes(2, "big") * ((i * 397) % 4500 + 1), dst.addr)
        if i == 150:
            net.blackout_until = clock.seconds() + 0.02
        if i % 20 == 19:
            settle(net, 0.01)
    net.run(lambda: not net.queue, limit=30)
    h = hashlib.sha256()
    for who in (a, b):
        for t, addr, data in who.got:
            h.update(repr((t, addr, hashlib.sha256(data).hexdigest())).encode())
    h.update(repr((net.sent, net.delivered, net.lost, clock.seconds())).encode())
    return h.hexdigest()


def _drop_or_trim(src: Any, dst: Any, data: bytes) -> bytes | None:
    return None if data[1] % 7 == 0 else data[:-1]


def test_without_an_mtu_the_network_is_exactly_what_it_was() -> None:
    """Same random draws, same deliveries at the same times: these digests were taken with the network as it was
    before MTUs were modelled (commit c5d280c), so every existing test keeps its outcome."""
    faults = Faults(loss=0.1, duplicate=0.1, reorder=0.3, bandwidth=1e6, tamper=_drop_or_trim)
    assert _fingerprint_without_mtu(faults) == "f6926c63a3cde4d33cc87078da245fd845a79cc01fcc3d966c8799b32fd080ca"
    faults = Faults(loss=0.1, duplicate=0.1, reorder=0.3, bandwidth=0)
    assert _fingerprint_without_mtu(faults) == "c432013eec3cd7affa038d615a83e21ffc42b53018ad4a9692db148c950966a1"


def test_without_an_mtu_a_big_datagram_is_one_packet() -> None:
    net, sender, receiver = pair(Faults(frag_high_thresh=1))
    for tag in range(3):
        sender.write(datagram(tag, 9216), B)
    settle(net, 31.0)
    assert receiver.tags() == [0, 1, 2]
    counters = net.counters()
    assert counters["sent"] == counters["delivered"] == 3
    assert all(counters[name] == 0 for name in counters if name not in ("sent", "delivered"))
