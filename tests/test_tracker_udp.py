"""The BEP 15 UDP tracker (issue 14): byte layouts, connection ids, hostile datagrams, and a real twistd.

The layouts are written here from BEP 15's tables, not imported from udp.py, so a wrong struct there shows.
:class:`UdpTracker` is driven with plain numbers for ``now``; the protocol through a FakeDatagramTransport.
"""

from __future__ import annotations

import socket
import struct
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import FakeDatagramTransport
from twisted.logger import formatEvent, globalLogPublisher

from p2ptorrent.config import Config
from p2ptorrent.procs import Daemons, free_port, wait_for
from p2ptorrent.tracker.bep import ClientSwarms, packed_address
from p2ptorrent.tracker.udp import UdpTracker, UdpTrackerProtocol
from daemonkit import start_tracker
from test_tracker_bep import swarms
from trackerkit import Harness, MemoryStore, result

# BEP 15's tables, big-endian.
CONNECT = struct.Struct(">QII")  # protocol id, action 0, transaction id
CONNECT_ANSWER = struct.Struct(">IIQ")  # action 0, transaction id, connection id
ANNOUNCE = struct.Struct(">QII20s20sQQQIIIiH")  # 98 bytes
ANNOUNCE_ANSWER = struct.Struct(">IIIII")  # action 1, transaction id, interval, leechers, seeders
SCRAPE = struct.Struct(">QII")  # then 20 bytes per info hash
SCRAPE_ANSWER = struct.Struct(">II")  # action 2, transaction id, then per hash:
SCRAPE_ENTRY = struct.Struct(">III")  # seeders, completed, leechers
ERROR = struct.Struct(">II")  # action 3, transaction id, then the message
MAGIC = 0x41727101980
NONE, COMPLETED, STARTED, STOPPED = 0, 1, 2, 3

IH = bytes(range(20))
IH2 = b"\x00" * 19 + b"\xff"
SECRET = b"s" * 32


def peer_id(i: int) -> bytes:
    return b"-LT2010-" + b"%012d" % i


class Client:
    """One BEP 15 client at host:port, talking to a :class:`UdpTracker` directly."""

    def __init__(self, tracker: UdpTracker, host: str, port: int, now: float = 0.0) -> None:
        self.tracker, self.host, self.port = tracker, host, port
        answer = tracker.handle(CONNECT.pack(MAGIC, 0, 77), host, port, now)
        assert answer is not None and len(answer) == 16
        action, tid, self.cid = CONNECT_ANSWER.unpack(answer)
        assert (action, tid) == (0, 77)

    def announce_raw(self, now: float = 1.0, *, info_hash: bytes = IH, pid: int = 1, left: int = 100,
                     event: int = NONE, numwant: int = -1, port: int = 6881, cid: int | None = None) -> bytes | None:
        data = ANNOUNCE.pack(self.cid if cid is None else cid, 1, 4242, info_hash, peer_id(pid), 0, left, 0, event,
                             0, 99, numwant, port)
        assert len(data) == 98
        return self.tracker.handle(data, self.host, self.port, now)

    def announce(self, now: float = 1.0, **kw: Any) -> tuple[int, int, int, bytes]:
        answer = self.announce_raw(now, **kw)
        assert answer is not None
        action, tid, interval, leechers, seeders = ANNOUNCE_ANSWER.unpack_from(answer)
        assert (action, tid) == (1, 4242), answer
        return interval, leechers, seeders, answer[ANNOUNCE_ANSWER.size:]

    def scrape(self, hashes: list[bytes], now: float = 1.0) -> list[tuple[int, int, int]]:
        answer = self.tracker.handle(SCRAPE.pack(self.cid, 2, 5) + b"".join(hashes), self.host, self.port, now)
        assert answer is not None and SCRAPE_ANSWER.unpack_from(answer) == (2, 5), answer
        body = answer[SCRAPE_ANSWER.size:]
        assert len(body) == 12 * len(hashes)
        return [SCRAPE_ENTRY.unpack_from(body, 12 * i) for i in range(len(hashes))]


def error_of(answer: bytes | None, tid: int) -> bytes:
    assert answer is not None
    action, got = ERROR.unpack_from(answer)
    assert (action, got) == (3, tid), answer
    return answer[ERROR.size:]


# ---------------------------------------------------------------- the protocol


def test_connect_echoes_the_transaction_and_gives_an_8_byte_id() -> None:
    tracker = UdpTracker(swarms(), SECRET)
    answer = tracker.handle(CONNECT.pack(MAGIC, 0, 0xDEADBEEF), "10.0.0.1", 6881, 0.0)
    assert answer is not None and len(answer) == 16
    action, tid, cid = CONNECT_ANSWER.unpack(answer)
    assert (action, tid) == (0, 0xDEADBEEF) and cid != MAGIC
    # The same address in the same window gets the same id: no table, a keyed hash.
    again = tracker.handle(CONNECT.pack(MAGIC, 0, 1), "10.0.0.1", 6881, 59.0)
    assert again is not None and CONNECT_ANSWER.unpack(again)[2] == cid


def test_two_clients_find_each_other_with_counts() -> None:
    tracker = UdpTracker(swarms(), SECRET)
    a = Client(tracker, "10.0.0.1", 40001)
    b = Client(tracker, "10.0.0.2", 40002)
    interval, leechers, seeders, peers = a.announce(pid=1, left=0, event=STARTED, port=6881)
    assert (interval, leechers, seeders, peers) == (1800, 0, 1, b"")
    interval, leechers, seeders, peers = b.announce(pid=2, left=500, event=STARTED, port=7000)
    # The announced port (not the datagram's) at the datagram's address; 6 bytes per IPv4 peer.
    assert (leechers, seeders, peers) == (1, 1, socket.inet_aton("10.0.0.1") + struct.pack(">H", 6881))
    _, _, _, peers = a.announce(pid=1, left=0)
    assert peers == socket.inet_aton("10.0.0.2") + struct.pack(">H", 7000)


def test_the_ip_field_is_never_believed() -> None:
    tracker = UdpTracker(swarms(), SECRET)
    a = Client(tracker, "10.0.0.1", 40001)
    data = bytearray(ANNOUNCE.pack(a.cid, 1, 1, IH, peer_id(1), 0, 5, 0, 0, 0, 0, -1, 6881))
    data[84:88] = socket.inet_aton("6.6.6.6")  # the IP field
    assert tracker.handle(bytes(data), "10.0.0.1", 40001, 1.0) is not None
    _, _, _, peers = Client(tracker, "10.0.0.2", 1).announce(pid=2)
    assert peers == packed_address("10.0.0.1", 6881)


def test_an_ipv6_requester_gets_18_byte_peers_of_its_family_only() -> None:
    tracker = UdpTracker(swarms(), SECRET)
    Client(tracker, "10.0.0.1", 1).announce(pid=1, port=6881)
    Client(tracker, "2001:db8::1", 2).announce(pid=2, port=6882)
    _, leechers, _, peers = Client(tracker, "2001:db8::3", 3).announce(pid=3, port=6883)
    assert leechers == 3  # counts are of every client
    assert peers == socket.inet_pton(socket.AF_INET6, "2001:db8::1") + struct.pack(">H", 6882)
    _, _, _, peers = Client(tracker, "10.0.0.4", 4).announce(pid=4, port=6884)
    assert peers == socket.inet_aton("10.0.0.1") + struct.pack(">H", 6881)


def test_num_want_is_honoured_up_to_what_fits_one_datagram() -> None:
    tracker = UdpTracker(swarms(max_numwant=1000), SECRET)
    for i in range(300):
        Client(tracker, f"10.0.{i // 250}.{i % 250}", 1).announce(pid=i, port=1000 + i)
    me = Client(tracker, "10.9.9.9", 1)
    assert len(me.announce(pid=999, numwant=7)[3]) == 7 * 6
    assert len(me.announce(pid=999, numwant=-1)[3]) == 50 * 6  # the tracker's NUMWANT
    whole = me.announce(pid=999, numwant=2**31 - 1)[3]
    assert len(whole) == 242 * 6 and 20 + len(whole) <= 1472  # one Ethernet frame
    addresses = {whole[i:i + 6] for i in range(0, len(whole), 6)}
    assert len(addresses) == 242 and packed_address("10.9.9.9", 6881) not in addresses


def test_stopped_forgets_and_completed_is_counted_once() -> None:
    tracker = UdpTracker(swarms(), SECRET)
    a, b = Client(tracker, "10.0.0.1", 1), Client(tracker, "10.0.0.2", 2)
    a.announce(pid=1, left=10, event=STARTED)
    b.announce(pid=2, left=10, event=STARTED)
    a.announce(pid=1, left=0, event=COMPLETED)
    a.announce(pid=1, left=0, event=COMPLETED)
    assert a.scrape([IH, IH2]) == [(1, 1, 1), (0, 0, 0)]
    _, leechers, seeders, peers = b.announce(pid=2, left=10, event=STOPPED)
    assert (leechers, seeders, peers) == (0, 1, b"")
    assert a.announce(pid=1, left=0)[3] == b""  # b is gone
    a.announce(pid=1, left=0, event=STOPPED)
    assert len(tracker.clients) == 0 and a.scrape([IH]) == [(0, 0, 0)]


def test_scrape_answers_in_the_order_asked_with_binary_hashes() -> None:
    tracker = UdpTracker(swarms(), SECRET)
    c = Client(tracker, "10.0.0.1", 1)
    c.announce(info_hash=IH2, pid=1, left=0)
    hashes = [IH, IH2, b"\x00" * 20, IH2]
    assert c.scrape(hashes) == [(0, 0, 0), (1, 0, 0), (0, 0, 0), (1, 0, 0)]
    assert len(c.scrape([bytes([i]) * 20 for i in range(74)])) == 74


def test_connection_ids_live_one_to_two_minutes_and_belong_to_one_address() -> None:
    tracker = UdpTracker(swarms(), SECRET)
    c = Client(tracker, "10.0.0.1", 5000, now=59.0)  # issued at the end of a window: still good a minute on
    assert c.announce_raw(now=119.9) is not None and len(tracker.clients) == 1
    stale = c.announce_raw(now=120.0, pid=2)
    assert error_of(stale, 4242).startswith(b"bad or expired connection id") and len(tracker.clients) == 1
    early = Client(tracker, "10.0.0.1", 5000, now=60.0)  # issued at the start: good for two minutes
    assert ANNOUNCE_ANSWER.unpack_from(early.announce_raw(now=179.9, pid=3, port=6883) or b"")[0] == 1
    for host in ("10.0.0.2", "::ffff:10.0.0.1", "2001:db8::1"):
        thief = Client(tracker, host, 5000, now=60.0)
        thief.cid = early.cid
        assert error_of(thief.announce_raw(now=61.0, pid=4), 4242)
    # Another socket of the same client (libtorrent shares one id per tracker among its sockets): accepted.
    other_socket = Client(tracker, "10.0.0.1", 5001, now=60.0)
    other_socket.cid = early.cid
    assert ANNOUNCE_ANSWER.unpack_from(other_socket.announce_raw(now=61.0, pid=5, port=6885) or b"")[0] == 1
    other_secret = UdpTracker(tracker.clients, b"t" * 32)
    assert other_secret.connection_id("10.0.0.1", 60.0) != tracker.connection_id("10.0.0.1", 60.0)
    assert len(tracker.clients) == 3


def test_a_full_tracker_refuses_new_clients_with_an_error() -> None:
    tracker = UdpTracker(swarms(max_peers=1), SECRET)
    Client(tracker, "10.0.0.1", 1).announce(pid=1)
    assert b"as many peers as it may" in error_of(Client(tracker, "10.0.0.2", 1).announce_raw(pid=2), 4242)


@pytest.mark.parametrize("data, words", [
    (ANNOUNCE.pack(0, 1, 9, IH, peer_id(1), 0, 1, 0, 4, 0, 0, -1, 1), b"unknown event 4"),
    (ANNOUNCE.pack(0, 1, 9, IH, peer_id(1), 0, 1, 0, 0, 0, 0, -1, 0), b"port must be"),
    (ANNOUNCE.pack(0, 1, 9, IH, peer_id(1), 0, 2**63, 0, 0, 0, 0, -1, 1), b"must not be negative"),
    (ANNOUNCE.pack(0, 1, 9, IH, peer_id(1), 0, 1, 0, 0, 0, 0, -2, 1), b"num_want must be"),
    (ANNOUNCE.pack(0, 1, 9, IH, peer_id(1), 0, 1, 0, 0, 0, 0, -1, 1)[:97], b"announce must be 98 bytes"),
    (SCRAPE.pack(0, 2, 9), b"scrape names 1 to 74 info hashes, got 0"),
    (SCRAPE.pack(0, 2, 9) + IH * 75, b"got 75"),
    (SCRAPE.pack(0, 2, 9) + IH + b"x", b"20 bytes each"),
    (SCRAPE.pack(0, 7, 9), b"unknown action 7"),
])
def test_malformed_requests_with_a_good_id_get_an_error_and_change_nothing(data: bytes, words: bytes) -> None:
    tracker = UdpTracker(swarms(), SECRET)
    cid = tracker.connection_id("10.0.0.1", 0.0)
    assert words in error_of(tracker.handle(cid + data[8:], "10.0.0.1", 1, 1.0), 9)
    assert len(tracker.clients) == 0


def test_an_announce_may_carry_bep_41_options() -> None:
    tracker = UdpTracker(swarms(), SECRET)
    c = Client(tracker, "10.0.0.1", 1)
    data = ANNOUNCE.pack(c.cid, 1, 3, IH, peer_id(1), 0, 1, 0, 0, 0, 0, -1, 6881) + b"\x02\x09/announce\x00"
    answer = tracker.handle(data, "10.0.0.1", 1, 1.0)
    assert answer is not None and ANNOUNCE_ANSWER.unpack_from(answer)[:2] == (1, 3)


@pytest.mark.parametrize("data", [
    b"", b"\x00" * 15, CONNECT.pack(MAGIC, 0, 1)[:15],
    CONNECT.pack(MAGIC + 1, 0, 1),  # a connect without the protocol id
    CONNECT.pack(0, 0, 1),
])
def test_short_datagrams_and_connects_without_the_protocol_id_are_not_answered(data: bytes) -> None:
    assert UdpTracker(swarms(), SECRET).handle(data, "10.0.0.1", 1, 0.0) is None


# ---------------------------------------------------------------- hostile datagrams


def fingerprint(clients: ClientSwarms, hashes: list[bytes]) -> tuple[Any, ...]:
    return len(clients), clients.torrents(), tuple(clients.scrape(hashes).items())


def mutated(draw: Any, tracker: UdpTracker, host: str, port: int) -> tuple[bytes, float]:
    """A datagram as an attacker would make one: random, or a request with one thing wrong (or nothing)."""
    kind = draw(st.sampled_from(["random", "connect", "announce", "scrape"]))
    now = draw(st.sampled_from([0.0, 30.0, 90.0, 119.0, 120.0, 1e6]))
    if kind == "random":
        return draw(st.binary(max_size=300)), now
    cid_kind = draw(st.sampled_from(["good", "good", "magic", "foreign host", "zero", "random"]))
    cid = {
        "good": tracker.connection_id(host, 0.0),
        "magic": MAGIC.to_bytes(8, "big"),
        "foreign host": tracker.connection_id("10.6.6.6", 0.0),
        "zero": bytes(8),
        "random": draw(st.binary(min_size=8, max_size=8)),
    }[cid_kind]
    tid = draw(st.integers(0, 2**32 - 1))
    if kind == "connect":
        data = cid + struct.pack(">II", draw(st.sampled_from([0, 0, 1, 2, 3, 2**32 - 1])), tid)
    elif kind == "announce":
        data = cid + struct.pack(
            ">II20s20sqqqIIIiH", draw(st.sampled_from([1, 1, 0, 2, 3, 9])), tid,
            draw(st.sampled_from([IH, IH2, b"\xff" * 20])), draw(st.binary(min_size=20, max_size=20)),
            draw(st.integers(-2**63, 2**63 - 1)), draw(st.sampled_from([0, 1, -1, 2**63 - 1, -2**63])),
            draw(st.integers(-2**63, 2**63 - 1)), draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1)),
            draw(st.integers(0, 2**32 - 1)), draw(st.integers(-2**31, 2**31 - 1)), draw(st.integers(0, 65535)))
    else:
        count = draw(st.sampled_from([0, 1, 2, 74, 75, 200]))
        pool = [IH, IH2, draw(st.binary(min_size=20, max_size=20))]
        data = cid + struct.pack(">II", 2, tid) + b"".join(pool[i % 3] for i in range(count))
    cut = draw(st.sampled_from([None, None, None, 0, 8, 15, 16, 20, 97, 99]))
    if cut is not None:
        data = data[:cut]
    if draw(st.booleans()):
        data += draw(st.binary(max_size=64))
    return data, now


@st.composite
def datagrams(draw: Any) -> tuple[bytes, float, str, int]:
    host = draw(st.sampled_from(["10.0.0.1", "2001:db8::7"]))
    port = draw(st.sampled_from([1, 6881, 65535]))
    data, now = mutated(draw, UdpTracker(swarms(), SECRET), host, port)
    return data, now, host, port


@settings(max_examples=600, deadline=None)
@given(st.lists(datagrams(), min_size=1, max_size=8))
def test_hostile_datagrams_are_never_amplified_and_change_nothing_unless_valid(
    batch: list[tuple[bytes, float, str, int]],
) -> None:
    tracker = UdpTracker(swarms(max_peers=5), SECRET)
    Client(tracker, "10.0.0.9", 9).announce(pid=9, info_hash=IH2)  # someone already there
    for data, now, host, port in batch:
        verified = len(data) >= 16 and tracker.connection_id(host, 0.0) == data[:8] and now < 120.0
        before = fingerprint(tracker.clients, [IH, IH2, b"\xff" * 20])
        answer = tracker.handle(data, host, port, now)  # never raises
        if not verified:
            assert answer is None or len(answer) <= len(data), (data, answer)
        if answer is None or answer[:4] != b"\x00\x00\x00\x01" or not verified:
            assert fingerprint(tracker.clients, [IH, IH2, b"\xff" * 20]) == before, (data, answer)
        if answer is not None and len(data) >= 16:
            assert answer[4:8] == data[12:16]  # the transaction id is echoed
        if answer is not None and answer[:4] == b"\x00\x00\x00\x01":
            peers = answer[20:]
            assert len(peers) % (18 if ":" in host else 6) == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=16, max_size=2000), st.floats(allow_nan=False, allow_infinity=False, min_value=0, max_value=1e12))
def test_random_bytes_without_an_id_get_at_most_their_own_length(data: bytes, now: float) -> None:
    tracker = UdpTracker(swarms(), SECRET)
    answer = tracker.handle(data, "192.0.2.1", 4444, now)
    assert answer is None or len(answer) <= len(data)
    assert len(tracker.clients) == 0


# ---------------------------------------------------------------- the protocol object


def test_the_protocol_answers_counts_and_shows_mapped_ipv4_plainly() -> None:
    clock = Clock()
    clock.advance(1000.0)
    tracker = UdpTracker(swarms(), SECRET)
    counted: Counter[tuple[str, bool]] = Counter()
    proto = UdpTrackerProtocol(tracker, clock, lambda kind, refused: counted.update([(kind, refused)]))
    transport = FakeDatagramTransport()
    proto.makeConnection(transport)
    addr = ("::ffff:10.1.2.3", 5555)
    proto.datagramReceived(CONNECT.pack(MAGIC, 0, 1), addr)
    [(answer, to)] = transport.written
    assert to == addr
    cid = answer[8:16]
    assert cid == tracker.connection_id("10.1.2.3", 1000.0)
    proto.datagramReceived(cid + ANNOUNCE.pack(0, 1, 2, IH, peer_id(1), 0, 0, 0, 2, 0, 0, -1, 6881)[8:], addr)
    proto.datagramReceived(b"\x00" * 8 + ANNOUNCE.pack(0, 1, 3, IH, peer_id(2), 0, 0, 0, 2, 0, 0, -1, 6882)[8:], addr)
    proto.datagramReceived(b"tiny", addr)
    proto.datagramReceived(cid + SCRAPE.pack(0, 2, 4)[8:] + IH, addr)
    assert tracker.clients.scrape([IH])[IH].complete == 1
    _, leechers, seeders, peers = Client(tracker, "10.9.9.9", 1, now=1000.0).announce(now=1000.0, pid=3)
    assert peers == packed_address("10.1.2.3", 6881)  # the plain IPv4 form
    assert (proto.received, proto.answered, proto.refused) == (5, 4, 2)
    assert counted == {("UDP CONNECT", False): 1, ("UDP ANNOUNCE", False): 1, ("UDP ANNOUNCE", True): 1,
                       ("UDP OTHER", True): 1, ("UDP SCRAPE", False): 1}


def test_http_and_udp_clients_share_one_peer_set(tmp_path: Path) -> None:
    """The UDP tracker answers from TrackerHTTP.clients: a client announced over HTTP is given over UDP,
    and the liveness check's line counts the datagrams."""
    h = Harness(tmp_path, Config(), MemoryStore())
    q = "&".join(f"{k}={urllib.parse.quote_from_bytes(v) if isinstance(v, bytes) else v}" for k, v in
                 {"info_hash": IH, "peer_id": peer_id(1), "port": 6881, "left": 0}.items())
    response = result(h.stub.request("GET", f"http://tracker.example:12345/announce?{q}"))
    assert response.code == 200
    tracker = UdpTracker(h.web.clients, SECRET)
    proto = UdpTrackerProtocol(tracker, h.clock, h.web.count_request)
    proto.makeConnection(FakeDatagramTransport())
    proto.datagramReceived(CONNECT.pack(MAGIC, 0, 1), ("10.0.0.2", 7))
    _, _, seeders, peers = Client(tracker, "10.0.0.2", 7).announce(pid=2)
    assert (seeders, peers) == (1, packed_address("127.0.0.1", 6881))
    proto.datagramReceived(b"\x00" * 16, ("10.0.0.2", 7))
    lines: list[str] = []

    def observer(event: Any) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    try:
        h.web.check_liveness()
    finally:
        globalLogPublisher.removeObserver(observer)
    [line] = [x for x in lines if "requests (" in x]
    assert "ANNOUNCE 1, UDP CONNECT 2" in line and "1 refused" in line, line


# ---------------------------------------------------------------- a real twistd


def udp_ask(sock: socket.socket, data: bytes, port: int, timeout: float = 0.5) -> bytes | None:
    sock.sendto(data, ("127.0.0.1", port))
    sock.settimeout(timeout)
    try:
        return sock.recv(2048)
    except TimeoutError:
        return None


def test_a_real_tracker_over_udp(tmp_path: Path) -> None:
    d = Daemons(tmp_path, fail=pytest.fail, search_path=False)
    port = free_port()
    try:
        start_tracker(d, port, 30.0, "--tracker-interval", "1")
        log = tmp_path / "logs" / "tracker.log"
        wait_for(lambda: log.exists() and f"BitTorrent UDP tracker on udp 127.0.0.1:{port}" in log.read_text(),
                 "the UDP tracker's line", timeout=30.0, alive=lambda: d.check_alive("tracker"), fail=pytest.fail)
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
        try:
            cids = []
            for s in socks:
                s.bind(("127.0.0.1", 0))
                answer = wait_for(lambda s=s: udp_ask(s, CONNECT.pack(MAGIC, 0, 11), port), "a connect answer",
                                  timeout=30.0, alive=lambda: d.check_alive("tracker"), fail=pytest.fail)
                assert CONNECT_ANSWER.unpack(answer)[:2] == (0, 11)
                cids.append(CONNECT_ANSWER.unpack(answer)[2])
            for i, (s, cid) in enumerate(zip(socks, cids)):
                data = ANNOUNCE.pack(cid, 1, 20 + i, IH, peer_id(i), 0, 0 if i == 0 else 100, 0, STARTED, 0, 0, -1,
                                     6881 + i)
                answer = wait_for(lambda s=s, data=data: udp_ask(s, data, port), "an announce answer", timeout=30.0,
                                  fail=pytest.fail)
                action, tid, interval, leechers, seeders = ANNOUNCE_ANSWER.unpack_from(answer)
                assert (action, tid, interval) == (1, 20 + i, 1800)
                if i == 1:
                    assert (leechers, seeders) == (1, 1)
                    assert answer[20:] == packed_address("127.0.0.1", 6881)
            answer = wait_for(lambda: udp_ask(socks[0], SCRAPE.pack(cids[0], 2, 30) + IH + IH2, port), "a scrape answer",
                              timeout=30.0, fail=pytest.fail)
            assert answer == SCRAPE_ANSWER.pack(2, 30) + SCRAPE_ENTRY.pack(1, 0, 1) + SCRAPE_ENTRY.pack(0, 0, 0)
            # Not a BEP 15 client: not answered.
            assert udp_ask(socks[0], CONNECT.pack(0, 0, 1), port, timeout=0.2) is None
        finally:
            for s in socks:
                s.close()
        wait_for(lambda: "UDP ANNOUNCE 2" in log.read_text(), "the counts line with the datagrams", timeout=30.0,
                 alive=lambda: d.check_alive("tracker"), fail=pytest.fail)
        assert "UDP SCRAPE 1" in log.read_text()
    finally:
        d.stop(grace=10)
