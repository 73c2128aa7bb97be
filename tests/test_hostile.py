"""Hostile datagrams and floods against nodes (issue 3, items 14 and 18, node side).

Item 14: random and mutated datagrams are thrown at a seeder while it serves
a download, and at the downloader, in the in-memory network and virtual time
(deterministic: fixed seeds), then a smaller run over real UDP sockets.  Every
datagram is classified by :func:`expected_verdict`, a reference reading of the
README's datagram table written apart from ``wire.decode``, and the node's
``counts["rejected:<reason>"]`` must match it reason by reason.

Item 18: what a forged source address can make a node send, a peer flooding
block requests, and many source addresses, all with an injected Clock.
"""

from __future__ import annotations

import gc
import hashlib
import os
import random
import socket
import struct
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure

from gates import FinishGate
from netsim import Faults
from p2ptorrent import wire
from p2ptorrent.config import Config
from p2ptorrent.metainfo import Metainfo, make_torrent
from p2ptorrent.node import protocol as protocol_module
from p2ptorrent.node.download import Download, DownloadResult, Hooks
from p2ptorrent.node.protocol import NodeProtocol
from p2ptorrent.node.serving import ERROR_BURST, ERRORS_PER_SECOND, INFO_ANSWER_BURST, INFO_ANSWERS_PER_SECOND, Seeder
from p2ptorrent.node.storage import PartFile
from p2ptorrent.node.writer import InlineWriter
from swarm import Owner, Swarm, random_file

MIB = 1024 * 1024
MAX_DATAGRAM = Config().BUFFER_SIZE
MAX_BLOCK = MAX_DATAGRAM - wire.BLOCK_OVERHEAD


# ---- the reference: what a node must make of a datagram

@dataclass
class View:
    """What a node's answer to a datagram depends on (fixed while the test runs)."""

    seeder: Seeder
    shared: dict[bytes, Metainfo]
    downloads: set[bytes]
    partners: set[Any]


def expected_verdict(data: bytes, src: Any, node: View) -> str | None:
    """The rejection reason the node must count for *data* from *src*, or None if it is real traffic.

    Written from the README's datagram table, not from wire.decode, so the
    two check each other.
    """
    n = len(data)
    if n > MAX_DATAGRAM:
        return "too long"
    if n < 4:
        return "too short"
    if data[:2] != b"PT":
        return "bad magic"
    if data[2] != 2:
        return "other version"
    kind, body = data[3], n - 4
    if kind == 4:  # BLOCK: info_hash, nonce, piece, offset, data
        if body < 36:
            return "bad BLOCK size"
        return _for_a_download(data[4:24], src, node, "BLOCK")
    if kind == 3:  # BLOCK_REQ: info_hash, cookie, nonce, count u16, count x 12 bytes
        if body < 38:
            return "bad BLOCK_REQ size"
        count = int.from_bytes(data[40:42], "big")
        if not 1 <= count <= 256:
            return "bad BLOCK_REQ count"
        if body != 38 + 12 * count:
            return "bad BLOCK_REQ size"
        if data[24:32] != node.seeder.cookie(src):
            return "bad cookie"
        meta = node.shared.get(data[4:24])
        if meta is None:
            return "not shared"
        for i in range(count):
            piece, offset, length = struct.unpack_from("!III", data, 42 + 12 * i)
            if piece >= meta.num_pieces or not 0 < length <= MAX_BLOCK or offset + length > meta.piece_size(piece):
                return "bad block"
        return None
    if kind == 1:  # INFO_REQ: nonce, info_hash
        if body != 28:
            return "bad INFO_REQ size"
        return None if data[12:32] in node.shared else "unknown file"
    if kind == 2:  # INFO_RESP: nobody here asked the attacker anything
        return "bad INFO_RESP size" if body != 49 else "unsolicited INFO_RESP"
    if kind == 5:  # ERROR: info_hash, nonce, code, message of 0-200 bytes
        if not 29 <= body <= 229:
            return "bad ERROR size"
        return _for_a_download(data[4:24], src, node, "ERROR")
    if kind == 6:  # HAVE_REQ: info_hash, cookie, nonce, first u32, count u32, flags u8
        if body != 45:
            return "bad HAVE_REQ size"
        first, count = struct.unpack_from("!II", data, 40)
        if not 1 <= count <= 65536:
            return "bad HAVE_REQ count"
        if data[24:32] != node.seeder.cookie(src):
            return "bad cookie"
        meta = node.shared.get(data[4:24])
        if meta is None:
            return "not shared"
        return "bad block" if first >= meta.num_pieces else None
    if kind == 7:  # HAVE: info_hash, nonce, first u32, count u32, flags u8, ceil(count / 8) bytes of bits
        if body < 37:
            return "bad HAVE size"
        count = int.from_bytes(data[36:40], "big")
        if not 1 <= count <= 65536:
            return "bad HAVE count"
        if body != 37 + (count + 7) // 8:
            return "bad HAVE size"
        return _for_a_download(data[4:24], src, node, "HAVE")
    if kind == 8:  # METADATA_REQ: info_hash, cookie, nonce, piece u32 (below 4 MiB / 1 KiB)
        if body != 40:
            return "bad METADATA_REQ size"
        piece = int.from_bytes(data[40:44], "big")
        if piece >= 4096:
            return "bad METADATA_REQ piece"
        if data[24:32] != node.seeder.cookie(src):
            return "bad cookie"
        meta = node.shared.get(data[4:24])
        if meta is None:
            return "not shared"
        return "bad metadata piece" if piece * 1024 >= len(meta.info_bytes) else None
    if kind == 9:  # METADATA: info_hash, nonce, total u32 (1 to 4 MiB), piece u32, the piece's 1 KiB (the last shorter)
        if body < 36:
            return "bad METADATA size"
        total, piece = struct.unpack_from("!II", data, 32)
        if not 1 <= total <= 4 * MIB:
            return "bad METADATA total"
        if piece * 1024 >= total:
            return "bad METADATA piece"
        if body - 36 != min(1024, total - piece * 1024):
            return "bad METADATA size"
        return "unknown download"  # nobody here fetches an info dict
    return "unknown type"


def _for_a_download(info_hash: bytes, src: Any, node: View, kind: str) -> str | None:
    if info_hash not in node.downloads:
        return "unknown download"
    # From a peer it greeted, an answer still needs the nonce of a request to it: one the attacker cannot know.
    return f"unmatched {kind}" if src in node.partners else "stranger"


def rejections(counts: Counter[str]) -> Counter[str]:
    return Counter({k.removeprefix("rejected:"): v for k, v in counts.items() if k.startswith("rejected:") and v})


# ---- hostile datagrams

def random_datagrams(rng: random.Random, count: int) -> Iterator[bytes]:
    """*count* random datagrams of 0-2048 bytes.

    Half are plain random bytes; the other half start with our magic (a
    random version, mostly ours, and a random type) so that the checks past
    the header see random input too.
    """
    for i in range(count):
        size = rng.randint(0, 2048)
        if i % 2 == 0 or size < 4:
            yield rng.randbytes(size)
        else:
            version = wire.VERSION if rng.random() < 0.8 else rng.randrange(256)
            yield b"PT" + bytes([version, rng.randrange(10)]) + rng.randbytes(size - 4)


@dataclass
class Valid:
    """Well-formed datagrams to mutate, built with the encoders from what a node really sends."""

    meta: Metainfo
    data: bytes
    attacker_cookie: bytes
    downloader_cookie: bytes
    pool: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        ih, m = self.meta.info_hash, self.meta
        block = self.data[:MAX_BLOCK]
        self.pool = [
            wire.encode_info_request(1, ih),
            wire.encode_info_response(1, ih, wire.OK, m.length, m.piece_length, self.attacker_cookie),
            wire.encode_block_request(ih, self.attacker_cookie, 2, [(0, 0, 100), (1, MAX_BLOCK, 100)]),
            wire.encode_block_request(ih, self.downloader_cookie, 3, [(p, 0, MAX_BLOCK) for p in range(8)]),
            wire.encode_block(ih, 4, 0, 0, block),
            wire.encode_block(ih, 5, 1, MAX_BLOCK, block[:500]),
            wire.encode_error(ih, 6, wire.E_BAD_COOKIE, "bad cookie: ask INFO"),
            wire.encode_have_request(ih, self.attacker_cookie, 7, 0, m.num_pieces, wire.F_INTERESTED),
            wire.encode_have(ih, 8, 0, 8, wire.F_CHOKED, b"\xff"),
            wire.encode_metadata_request(ih, self.attacker_cookie, 9, 0),
            wire.encode_metadata(ih, 10, len(m.info_bytes), 0, m.info_bytes[: wire.METADATA_PIECE]),
        ]


PROVEN = "proven"  # a source that stands for the attacker holding a real cookie
#: The nonce of requests forged as from a victim: the ERRORs they make a node send the victim carry it.
FORGED = 0xF0F0_F0F0_F0F0_F0F0


def mutated_datagrams(rng: random.Random, count: int, valid: Valid, forged: Any) -> Iterator[tuple[bytes, Any]]:
    """(datagram, forced source or None) pairs: valid datagrams broken in many ways.

    The source is None (any attacker), PROVEN (the attacker that did the INFO
    round trip: its cookie is in the datagram) or *forged* (someone else's
    address).
    """
    ih, meta = valid.meta.info_hash, valid.meta
    cookie = valid.attacker_cookie
    kinds: list[Callable[[], tuple[bytes, Any]]] = []

    def kind(f: Callable[[], tuple[bytes, Any]]) -> Callable[[], tuple[bytes, Any]]:
        kinds.append(f)
        return f

    @kind
    def bit_flips() -> tuple[bytes, Any]:
        d = bytearray(rng.choice(valid.pool))
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(d))
            d[i] ^= 1 << rng.randrange(8)
        return bytes(d), rng.choice([None, PROVEN])

    @kind
    def truncated() -> tuple[bytes, Any]:
        d = rng.choice(valid.pool)
        return d[: rng.randrange(len(d))], None

    @kind
    def extended() -> tuple[bytes, Any]:
        d = rng.choice(valid.pool)
        return d + rng.randbytes(rng.randint(1, 64)), None

    @kind
    def oversized() -> tuple[bytes, Any]:
        return wire.encode_block(ih, rng.randrange(2**64), 0, 0, rng.randbytes(MAX_DATAGRAM - wire.BLOCK_OVERHEAD + rng.randint(1, 800))), None

    @kind
    def wrong_count() -> tuple[bytes, Any]:
        d = bytearray(wire.encode_block_request(ih, cookie, 1, [(0, 0, 100)] * rng.randint(1, 20)))
        d[40:42] = rng.choice([0, rng.randint(1, 300), 65535]).to_bytes(2, "big")
        return bytes(d), PROVEN

    @kind
    def out_of_range() -> tuple[bytes, Any]:
        last = meta.num_pieces - 1
        bad = rng.choice([
            (meta.num_pieces + rng.randrange(1000), 0, 100),
            (2**32 - 1, 0, 1),
            (0, 0, 0),
            (0, 0, MAX_BLOCK + 1),
            (0, meta.piece_length - 10, 11),
            (last, meta.piece_size(last), 1),
            (0, 2**32 - 1, 2**32 - 1),
        ])
        good = [(rng.randrange(meta.num_pieces), 0, 64) for _ in range(rng.randint(0, 3))]
        good.insert(rng.randint(0, len(good)), bad)
        return wire.encode_block_request(ih, cookie, rng.randrange(2**64), good), PROVEN

    @kind
    def in_range_request() -> tuple[bytes, Any]:
        # Real traffic from an address that did the INFO round trip: served, not rejected.
        return wire.encode_block_request(ih, cookie, rng.randrange(2**64), [(rng.randrange(meta.num_pieces), 0, 256)]), PROVEN

    @kind
    def wrong_cookie() -> tuple[bytes, Any]:
        return wire.encode_block_request(ih, rng.randbytes(8), 1, [(0, 0, 100)]), None

    @kind
    def forged_source() -> tuple[bytes, Any]:
        # Claims to come from the downloader, without its cookie.
        return wire.encode_block_request(ih, rng.choice([bytes(8), rng.randbytes(8)]), FORGED, [(0, 0, MAX_BLOCK)] * rng.randint(1, 256)), forged

    @kind
    def info_for_unknown_hash() -> tuple[bytes, Any]:
        return wire.encode_info_request(rng.randrange(2**64), rng.randbytes(20)), None

    @kind
    def block_for_unknown_download() -> tuple[bytes, Any]:
        return wire.encode_block(rng.randbytes(20), rng.randrange(2**64), 0, 0, rng.randbytes(rng.randint(0, 2000))), None

    @kind
    def block_from_a_stranger() -> tuple[bytes, Any]:
        return wire.encode_block(ih, rng.randrange(2**64), rng.randrange(meta.num_pieces), 0, rng.randbytes(MAX_BLOCK)), None

    @kind
    def unsolicited_info_response() -> tuple[bytes, Any]:
        return wire.encode_info_response(rng.randrange(2**64), ih, wire.OK, meta.length, meta.piece_length, rng.randbytes(8)), None

    @kind
    def stray_error() -> tuple[bytes, Any]:
        target = rng.choice([ih, rng.randbytes(20)])
        return wire.encode_error(target, rng.randrange(2**64), rng.choice([1, 2, 3, 4, 5, 99]), "go away" * rng.randint(0, 30)), None

    @kind
    def bad_header() -> tuple[bytes, Any]:
        d = bytearray(rng.choice(valid.pool))
        d[rng.randrange(4)] = rng.randrange(256)
        return bytes(d), None

    for _ in range(count):
        yield rng.choice(kinds)()


class Attacker:
    """A host on the fake network that records what it is sent."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.bytes_in = 0
        self.bytes_out = 0  # what it sent (for the amplification check)

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.bytes_in += len(data)
        if len(self.received) < 10:
            self.received.append(data)


def assert_quiet_log(events: list[dict[str, Any]], protocols: int, seconds: float) -> int:
    """No failure and nothing at error level; the only warnings are the rate-limited rejection ones."""
    failures = [formatEvent(e) for e in events if "log_failure" in e]
    assert not failures, failures[:3]
    bad = [formatEvent(e) for e in events if e.get("log_level") in (LogLevel.error, LogLevel.critical)]
    assert not bad, bad[:3]
    warnings = [e for e in events if e.get("log_level") == LogLevel.warn]
    others = [formatEvent(e) for e in warnings if not e.get("log_format", "").startswith("refused ")]
    assert not others, others[:3]
    intervals = 1 + int(seconds / protocol_module.REJECT_LOG_INTERVAL)
    # The first rejections and a summary per interval; and per interval, the first addresses of another version.
    most = protocols * (protocol_module.REJECTS_LOGGED + intervals + protocol_module.REJECTS_LOGGED * intervals)
    assert len(warnings) <= most, (len(warnings), most)
    return len(warnings)


def complete(swarm: Swarm, result: object) -> DownloadResult:
    if isinstance(result, Failure):
        result.raiseException()
    assert isinstance(result, DownloadResult)
    digest = hashlib.sha256()
    with open(result.path, "rb") as f:
        for chunk in iter(lambda: f.read(MIB), b""):
            digest.update(chunk)
    assert digest.hexdigest() == swarm.sha256()
    return result


# ---- item 14, in the in-memory network

RANDOM = 100_000
MUTATED = 10_000


def test_hostile_datagrams_while_serving_a_download(tmp_path: Path, events: list[dict[str, Any]]) -> None:
    """Item 14: 100,000 random and 10,000 mutated datagrams at the seeder, and as many at the downloader.

    No crash, nothing at error level in the log, the download completes
    identical, memory grows under 10% (process RSS, psutil), and the node
    counts exactly the rejections the reference expects, reason by reason.
    """
    rng = random.Random(14)
    reflected = Counter[Any]()

    def watch(src: Any, dst: Any, data: bytes) -> bytes:
        # BLOCK_REQs forged as from seeder 0 make the downloader send it ERRORs: seeder 0 must count those
        # too (it downloads nothing); and forged as from the downloader, they make seeder 0 send it ERRORs,
        # which the downloader refuses (their nonce answers no request of its own) without blaming seeder 0.
        if data[3] == wire.ERROR and data[24:32] == FORGED.to_bytes(8, "big"):
            reflected[src, dst] += 1
        return data

    swarm = Swarm(tmp_path, 8 * MIB, seeders=3, seed=14, faults=Faults(bandwidth=4e6, tamper=watch))
    net, clock, meta = swarm.net, swarm.clock, swarm.meta
    seeder, downloader = swarm.seeders[0], swarm.proto
    seeder_addr, downloader_addr = seeder.transport.addr, downloader.transport.addr
    attackers = {(f"10.66.0.{i}", 4000 + i): Attacker() for i in range(64)}
    for addr, host in attackers.items():
        net.attach(host, addr)
    proven = next(iter(attackers))
    # One attacker does the INFO round trip, so it holds a real cookie (for seeder 0 only).
    net.send(proven, seeder_addr, wire.encode_info_request(7, meta.info_hash))
    net.run(lambda: bool(attackers[proven].received))
    answer = wire.decode(attackers[proven].received[0])
    assert isinstance(answer, wire.InfoResponse) and answer.status == wire.OK
    valid = Valid(meta, swarm.data, answer.cookie, seeder.seeder.cookie(downloader_addr))
    assert sum(seeder.counts.values()) == 0

    dl, outcome = swarm.start()
    views = {
        "seeder": View(seeder.seeder, {meta.info_hash: meta}, set(), set()),
        "downloader": View(downloader.seeder, {}, {meta.info_hash}, {(o.host, o.port) for o in swarm.owners}),
    }
    targets = {"seeder": (seeder, seeder_addr), "downloader": (downloader, downloader_addr)}
    assert downloader._partners[meta.info_hash] == views["downloader"].partners

    def hostile(name: str) -> Iterator[tuple[bytes, Any]]:
        forged = downloader_addr if name == "seeder" else seeder_addr
        mutated = mutated_datagrams(random.Random(f"{name}-mutated"), MUTATED, valid, forged)
        plain = random_datagrams(random.Random(f"{name}-random"), RANDOM)
        # Interleaved: one mutated datagram after every ten random ones.
        for i, data in enumerate(plain):
            yield data, None
            if i % 10 == 9:
                yield next(mutated)

    streams = {name: hostile(name) for name in targets}
    expected = {name: Counter[str]() for name in targets}
    sent = Counter[str]()
    per_tick = 100
    ticks = [0]

    def inject() -> None:
        for name, (proto, _addr) in targets.items():
            for data, source in _take(streams[name], per_tick):
                src = proven if source == PROVEN else source or rng.choice(list(attackers))
                reason = expected_verdict(data, src, views[name])
                if reason is not None:
                    expected[name][reason] += 1
                if src in attackers:
                    attackers[src].bytes_out += len(data)
                sent[name] += 1
                proto.datagramReceived(data, src)
        ticks[0] += 1
        if sent["seeder"] < RANDOM + MUTATED:
            clock.callLater(0.0002, inject)

    # Measure from a download in full flow (windows open, datagrams in flight),
    # so that what grows is what the hostile traffic costs.
    net.run(lambda: dl.done_bytes >= meta.length // 8)
    gc.collect()
    rss_before = psutil.Process().memory_info().rss
    clock.callLater(0.0002, inject)
    net.run(lambda: sent["seeder"] >= RANDOM + MUTATED, limit=60)
    assert not outcome, "the download finished before the hostile traffic ended: make it longer"
    finished = swarm.run(outcome, limit=60)
    gc.collect()
    rss_after = psutil.Process().memory_info().rss
    result = complete(swarm, finished)
    growth = (rss_after - rss_before) / rss_before

    assert sent == {"seeder": RANDOM + MUTATED, "downloader": RANDOM + MUTATED}
    expected["seeder"]["unknown download"] += reflected[downloader_addr, seeder_addr]
    expected["downloader"]["unmatched ERROR"] += reflected[seeder_addr, downloader_addr]
    assert reflected[seeder_addr, downloader_addr] > 0  # (the case is exercised)
    for name, (proto, _) in targets.items():
        counted = rejections(proto.counts)
        print(f"{name}: {sent[name]} hostile datagrams, {proto.counts['rejected']} rejected: {dict(counted.most_common())}")
        assert counted == expected[name], (name, counted - expected[name], expected[name] - counted)
        assert proto.counts["rejected"] == sum(expected[name].values())
        assert proto.counts["errors"] == 0
    # Every seeder and the downloader saw no trouble from the legitimate traffic.
    for other in swarm.seeders[1:]:
        assert other.counts["rejected"] == 0
    assert {s.node_id for s in result.shares} == {1, 2, 3}
    print(f"limits: seeder {dict((k, v) for k, v in seeder.counts.items() if k.startswith('limited'))}")
    # An address that never proved it receives got less than it sent.
    for addr, host in attackers.items():
        if addr != proven:
            assert host.bytes_in <= host.bytes_out, (addr, host.bytes_in, host.bytes_out)
    warnings = assert_quiet_log(events, protocols=2, seconds=clock.seconds())
    print(f"RSS {rss_before / MIB:.1f} MiB -> {rss_after / MIB:.1f} MiB ({100 * growth:+.1f}%); "
          f"{warnings} warnings; {clock.seconds():.2f} virtual s")
    assert growth < 0.10
    for table in (seeder.seeder.blocks, seeder.seeder.info_answers, seeder.seeder.errors):
        assert len(table) <= len(attackers) + 4


def _take(it: Iterator[Any], n: int) -> list[Any]:
    out = []
    for item in it:
        out.append(item)
        if len(out) == n:
            break
    return out


# ---- item 18: amplification and floods (node side), with a Clock

class CountingTransport:
    """Counts what a protocol writes, per address and per message type, without keeping it."""

    def __init__(self) -> None:
        self.datagrams: Counter[Any] = Counter()
        self.bytes: Counter[Any] = Counter()
        self.kinds: Counter[tuple[Any, int]] = Counter()
        self.largest: Counter[Any] = Counter()
        self.last: dict[Any, bytes] = {}

    def write(self, data: bytes, addr: Any) -> None:
        self.datagrams[addr] += 1
        self.bytes[addr] += len(data)
        self.kinds[addr, data[3]] += 1
        self.largest[addr] = max(self.largest[addr], len(data))
        if data[3] != wire.BLOCK:
            self.last[addr] = data

    def blocks(self, addr: Any) -> int:
        return self.kinds[addr, wire.BLOCK]


def serving_node(tmp_path: Path, size: int = 4 * MIB, **limits: Any) -> tuple[NodeProtocol, CountingTransport, Clock, Metainfo]:
    path = tmp_path / "shared.bin"
    random_file(path, size, 18)
    meta, _ = make_torrent(path, "http://tracker.invalid:1")
    seeder = Seeder(os.urandom(16), MAX_BLOCK, **limits)
    seeder.add(meta, path)
    clock = Clock()
    proto = NodeProtocol(seeder, clock, MAX_DATAGRAM)
    transport = CountingTransport()
    proto.makeConnection(transport)  # type: ignore[arg-type]
    return proto, transport, clock, meta


def greet(proto: NodeProtocol, transport: CountingTransport, addr: Any, meta: Metainfo) -> bytes:
    """The INFO round trip a real downloader makes: returns the cookie for *addr*."""
    proto.datagramReceived(wire.encode_info_request(1, meta.info_hash), addr)
    answer = wire.decode(transport.last[addr])
    assert isinstance(answer, wire.InfoResponse) and answer.status == wire.OK
    return answer.cookie


def test_forged_block_requests_get_at_most_one_short_error(tmp_path: Path) -> None:
    """A BLOCK_REQ without the right cookie gets no data, only an ERROR no longer than itself."""
    proto, transport, clock, meta = serving_node(tmp_path)
    rng = random.Random(18)
    victim = ("192.0.2.1", 53)
    other = ("192.0.2.2", 6881)
    other_cookie = greet(proto, transport, other, meta)
    cookies = [bytes(8), rng.randbytes(8), other_cookie]  # none, made up, another address's
    for count in (1, 2, 16, 255, 256):
        for cookie in cookies:
            for info_hash in (meta.info_hash, rng.randbytes(20)):
                request = wire.encode_block_request(info_hash, cookie, 1, [(0, 0, MAX_BLOCK)] * count)
                before = (transport.datagrams[victim], transport.bytes[victim])
                proto.datagramReceived(request, victim)
                clock.advance(1)  # the victim's error budget refills: each request may get its answer
                sent = transport.datagrams[victim] - before[0]
                assert sent == 1 and transport.kinds[victim, wire.BLOCK] == 0
                assert transport.bytes[victim] - before[1] <= len(request)
                error = wire.decode(transport.last[victim])
                assert isinstance(error, wire.Error) and error.code == wire.E_BAD_COOKIE
    assert proto.counts["rejected:bad cookie"] == 5 * 3 * 2


def test_a_forged_flood_reflects_less_than_it_sends(tmp_path: Path) -> None:
    """10,000 forged requests in 10 s naming one victim: it gets a trickle of small datagrams."""
    proto, transport, clock, meta = serving_node(tmp_path)
    victim = ("192.0.2.1", 53)
    bytes_in = 0
    for i in range(10_000):
        if i % 2:
            request = wire.encode_block_request(meta.info_hash, bytes(8), 1, [(0, 0, MAX_BLOCK)])
        else:
            request = wire.encode_info_request(i, meta.info_hash)
        bytes_in += len(request)
        proto.datagramReceived(request, victim)
        clock.advance(0.001)
    seconds = 10
    most_errors = ERROR_BURST + ERRORS_PER_SECOND * seconds
    most_answers = INFO_ANSWER_BURST + INFO_ANSWERS_PER_SECOND * seconds
    assert transport.kinds[victim, wire.ERROR] <= most_errors
    assert transport.kinds[victim, wire.INFO_RESP] <= most_answers
    assert transport.kinds[victim, wire.BLOCK] == 0
    assert transport.largest[victim] <= wire.INFO_RESP_SIZE < 2 * wire.INFO_REQ_SIZE
    assert transport.bytes[victim] <= bytes_in / 20
    print(f"forged flood: {bytes_in} bytes in, {transport.bytes[victim]} bytes out "
          f"({transport.datagrams[victim]} datagrams) to the victim; {dict(proto.counts)}")
    assert proto.counts["rejected:bad cookie"] == 5000
    assert proto.counts["limited:errors"] + transport.kinds[victim, wire.ERROR] == 5000


def test_info_answer_is_less_than_twice_the_question() -> None:
    seeder = Seeder(os.urandom(16), MAX_BLOCK)
    question = wire.encode_info_request(1, bytes(20))
    reason, answers = seeder.on_info(wire.decode(question), ("192.0.2.1", 1))  # type: ignore[arg-type]
    [answer] = list(answers)
    assert reason == "unknown file"
    assert len(question) == wire.INFO_REQ_SIZE == 32
    assert len(answer) == wire.INFO_RESP_SIZE == 53 < 2 * 32


def test_a_flooding_peer_gets_a_bounded_share_and_others_are_served(tmp_path: Path) -> None:
    """1,000 requests a second of 256 blocks each from one peer, for 2 s; another peer asks 6,400 blocks a second.

    The flooder gets at most MAX_BLOCKS_PER_SECOND_PER_PEER a second (plus the
    saved-up burst), the other peer every block it asks for, and the node's
    memory stays flat (tracemalloc: blocks are read one at a time).
    """
    proto, transport, clock, meta = serving_node(tmp_path)
    rate = Config().MAX_BLOCKS_PER_SECOND_PER_PEER
    burst = proto.seeder.blocks.burst
    flooder, other = ("198.51.100.6", 6881), ("198.51.100.7", 6881)
    flood_cookie = greet(proto, transport, flooder, meta)
    other_cookie = greet(proto, transport, other, meta)
    blocks = [(p % meta.num_pieces, 0, MAX_BLOCK) for p in range(256)]
    flood = wire.encode_block_request(meta.info_hash, flood_cookie, 1, blocks)
    asked = 0
    seconds = 2

    def run(first_ms: int, last_ms: int) -> None:
        nonlocal asked
        for ms in range(first_ms, last_ms):
            proto.datagramReceived(flood, flooder)
            if ms % 10 == 0:
                mine = [((ms // 10 + k) % meta.num_pieces, 0, MAX_BLOCK) for k in range(64)]
                proto.datagramReceived(wire.encode_block_request(meta.info_hash, other_cookie, 2, mine), other)
                asked += 64
            clock.advance(0.001)

    run(0, 1800)
    gc.collect()
    tracemalloc.start()  # the last 200 ms, traced: nothing piles up, a request costs a block at a time
    try:
        base = tracemalloc.get_traced_memory()[0]
        run(1800, 2000)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    got = transport.blocks(flooder)
    print(f"flood: asked {seconds * 1000 * 256} blocks in {seconds} s, got {got} "
          f"(limit {rate}/s + {burst}); other peer got {transport.blocks(other)} of {asked}; "
          f"traced memory +{(current - base) / 1024:.0f} KiB, peak +{(peak - base) / 1024:.0f} KiB")
    assert got <= rate * seconds + burst
    assert got >= rate * seconds * 0.95  # the cap is a rate, not a ban
    assert transport.blocks(other) == asked
    assert proto.counts["limited:blocks"] == seconds * 1000 * 256 - got
    assert proto.counts["rejected"] == 0 and proto.counts["errors"] == 0
    assert peak - base < 512 * 1024 and current - base < 256 * 1024


def test_a_peer_served_alone_is_not_limited_but_held_to_its_budget_when_others_come(tmp_path: Path) -> None:
    """The budget protects other peers: alone, a peer gets all it asks; with company, each gets its share."""
    proto, transport, clock, meta = serving_node(tmp_path, blocks_per_second=2000)
    first, second = ("198.51.100.6", 6881), ("198.51.100.7", 6881)
    cookies = {addr: greet(proto, transport, addr, meta) for addr in (first, second)}
    blocks = [(p % meta.num_pieces, 0, 1024) for p in range(100)]

    def ask(addr: Any) -> None:
        proto.datagramReceived(wire.encode_block_request(meta.info_hash, cookies[addr], 3, blocks), addr)

    for _ in range(200):  # 20,000 blocks a second, 10 times the budget, for 1 s: alone, so all served
        ask(first)
        clock.advance(0.005)
    assert transport.blocks(first) == 20_000 and proto.counts["limited:blocks"] == 0
    for _ in range(200):  # now a second peer asks as much: both are held to 2,000 a second (+ the burst)
        ask(first)
        ask(second)
        clock.advance(0.005)
    burst = proto.seeder.blocks.burst
    # The first spent its budget while alone: a second's worth, and the one request it made before the second came.
    assert transport.blocks(first) - 20_000 <= 2000 + 100 + 10
    assert transport.blocks(second) <= 2000 + burst
    assert transport.blocks(second) >= 2000
    clock.advance(2)  # the second peer has gone: after CONTENTION_WINDOW the first is alone again
    before = transport.blocks(first)
    for _ in range(100):
        ask(first)
        clock.advance(0.001)
    assert transport.blocks(first) - before == 10_000


@pytest.mark.parametrize("table_size", [4096, 256])
def test_rate_state_stays_bounded_under_many_addresses(tmp_path: Path, table_size: int) -> None:
    """Thousands of source addresses, proven and forged: every per-address table stops at PEER_TABLE_SIZE.

    With the default size: 10,000 addresses of each kind.  With a small one,
    memory is traced too (tracemalloc): once the tables are full, 4,000 more
    addresses of each kind must not grow it.
    """
    proto, _, clock, meta = serving_node(tmp_path, table_size=table_size)
    seeder = proto.seeder
    request = [(0, 0, 64)]
    sent = Counter[int]()  # by message type only: the test keeps nothing per address

    class Tally:
        def write(self, data: bytes, addr: Any) -> None:
            sent[data[3]] += 1

    proto.transport = Tally()

    def strangers(first: int, last: int) -> None:
        for i in range(first, last):
            addr = (f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 1024 + i % 60000)
            # Proven: the cookie the address would have got from INFO.
            proto.datagramReceived(wire.encode_block_request(meta.info_hash, seeder.cookie(addr), 4, request), addr)
            forged = (f"172.16.{(i >> 8) & 255}.{i & 255}", 9 + i // 65536)
            proto.datagramReceived(wire.encode_info_request(i, meta.info_hash), forged)
            proto.datagramReceived(wire.encode_block_request(meta.info_hash, bytes(8), 5, request), forged)
            if i % 1000 == 0:
                clock.advance(0.01)

    def sizes() -> list[int]:
        return [len(seeder.blocks), len(seeder.info_answers), len(seeder.errors)]

    if table_size == 4096:
        strangers(0, 10_000)
        assert sizes() == [4096] * 3
        assert sent[wire.BLOCK] == 10_000  # every proven address is served its block
        assert sent[wire.INFO_RESP] == sent[wire.ERROR] == 10_000  # and one small answer each
        return
    tracemalloc.start()
    try:
        strangers(0, 1_000)  # the tables fill (with traced entries)
        gc.collect()
        full = tracemalloc.get_traced_memory()[0]
        strangers(1_000, 5_000)
        gc.collect()
        later = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    print(f"tables of {table_size}: {sizes()}; 4,000 more addresses of each kind: {later - full:+d} bytes traced")
    assert sizes() == [table_size] * 3
    assert later - full < 32 * 1024


def test_rate_table() -> None:
    from p2ptorrent.node.serving import RateTable

    t = RateTable(rate=10, burst=20, size=3)
    assert t.take("a", 25, now=0.0) == 20  # a full bucket to start
    assert t.take("a", 5, now=0.0) == 0
    assert t.take("a", 5, now=0.3) == 3  # 10 a second
    assert t.take("a", 100, now=100.0) == 20  # never more than the burst
    assert t.take("a", 1, now=50.0) == 0  # the clock stepped back: no refill
    t.take("b", 1, 100.0)
    t.take("c", 1, 100.0)
    t.take("a", 0, 100.0)  # a is now the most recent
    t.take("d", 1, 100.0)  # forgets b, the least recent
    assert len(t) == 3 and t.take("b", 25, 100.0) == 20
    assert RateTable(rate=0, burst=0, size=1).take("x", 10**6, 0.0) == 10**6  # 0: no limit, no state
    assert t.take("a", 50, 100.0, force=True) == 50 and t.take("a", 5, 100.5) == 5  # spent, never below empty


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({"MAX_BLOCKS_PER_SECOND_PER_PEER": "-1"}, "MAX_BLOCKS_PER_SECOND_PER_PEER"),
        ({"PEER_TABLE_SIZE": "3"}, "PEER_TABLE_SIZE must be 16-1048576"),
        ({"CONTROL_ALLOW_REMOTE": "2"}, "CONTROL_ALLOW_REMOTE must be 0 or 1"),
    ],
)
def test_limit_settings_are_checked(overrides: dict[str, str], reason: str) -> None:
    from p2ptorrent.config import ConfigError, load

    with pytest.raises(ConfigError, match=reason):
        load(None, overrides)
    settings = load(None, {"MAX_BLOCKS_PER_SECOND_PER_PEER": "5000", "PEER_TABLE_SIZE": "64"})
    seeder = Seeder.from_settings(b"k", settings)
    assert (seeder.blocks.rate, seeder.blocks.size, seeder.max_block) == (5000, 64, MAX_BLOCK)


# ---- item 14 again, over real UDP sockets on 127.0.0.1, in one reactor

def _sleep(seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


@pytest_twisted.ensureDeferred
async def test_hostile_datagrams_over_real_udp(tmp_path: Path, events: list[dict[str, Any]]) -> None:
    """Item 14 over the kernel's UDP: 10,000 random, 1,000 mutated and 100 oversized (up to 64 KiB)
    datagrams at a seeder and at a downloader while one downloads from the other.

    Real sockets add what the in-memory network cannot: datagrams larger than
    the node's buffer arrive cut (to BUFFER_SIZE + 1) and are still refused.

    The test, not the machine's speed, decides that the hostile traffic lands
    during the download: each batch waits until the download has verified its
    share of the file (so blocks flow from the first batch to the last), and
    the verdict that would complete the file is held until every hostile
    datagram has been counted.
    """
    settings = Config()
    src = tmp_path / "src"
    src.mkdir()
    data = random_file(src / "file.bin", 48 * MIB, 41)
    meta, _ = make_torrent(src / "file.bin", "http://tracker.invalid:1")
    seeder = NodeProtocol(Seeder(os.urandom(16), MAX_BLOCK), reactor, MAX_DATAGRAM, settings.SOCKET_BUFFER)
    seeder.seeder.add(meta, src / "file.bin")
    downloader = NodeProtocol(Seeder(os.urandom(16), MAX_BLOCK), reactor, MAX_DATAGRAM, settings.SOCKET_BUFFER)
    ports = [reactor.listenUDP(0, p, "127.0.0.1", MAX_DATAGRAM + 1) for p in (seeder, downloader)]
    seeder_addr = ("127.0.0.1", ports[0].getHost().port)
    downloader_addr = ("127.0.0.1", ports[1].getHost().port)
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    proven = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for s in (attacker, proven):
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
        attacker_addr = attacker.getsockname()
        # The INFO round trip, for a real cookie.
        proven.sendto(wire.encode_info_request(9, meta.info_hash), seeder_addr)
        for _ in range(200):
            await _sleep(0.01)
            try:
                answer = wire.decode(proven.recv(65536))
                break
            except BlockingIOError:
                continue
        else:
            raise AssertionError("no INFO answer over loopback")
        assert isinstance(answer, wire.InfoResponse)
        folder = tmp_path / "node"
        folder.mkdir()
        finish = FinishGate()
        dl = Download(meta, PartFile(folder, meta), downloader,
                      lambda: defer.succeed([Owner(1, *seeder_addr)]), reactor, settings, 100,
                      Hooks(writer=finish.writers(InlineWriter)))
        downloader.downloads[meta.info_hash] = dl
        outcome = dl.start()
        views = {
            "seeder": View(seeder.seeder, {meta.info_hash: meta}, set(), set()),
            "downloader": View(downloader.seeder, {}, {meta.info_hash}, {seeder_addr}),
        }
        valid = Valid(meta, data, answer.cookie, seeder.seeder.cookie(downloader_addr))
        expected = {name: Counter[str]() for name in views}
        targets = {"seeder": seeder_addr, "downloader": downloader_addr}
        rng = random.Random(1414)
        def hostile(name: str) -> Iterator[tuple[bytes, socket.socket]]:
            mutated = mutated_datagrams(random.Random(f"udp-{name}"), 1_000, valid, attacker_addr)
            for i, datagram in enumerate(random_datagrams(random.Random(f"udp-{name}"), 10_000)):
                yield datagram, attacker
                if i % 10 == 9:
                    datagram, source = next(mutated)
                    yield datagram, proven if source == PROVEN else attacker
                if i % 100 == 99:
                    size = rng.choice([MAX_DATAGRAM + 1, MAX_DATAGRAM + 2, 20_000, 65_507])
                    yield b"PT\x01\x04" + meta.info_hash + rng.randbytes(size - 24), attacker

        streams = {name: hostile(name) for name in targets}
        total = len(targets) * (10_000 + 1_000 + 100)
        # Everything but the held piece can be verified while the hostile traffic is sent.
        fetchable = meta.length - meta.piece_length
        sent = 0
        done_at: list[int] = []  # the download's verified bytes as each batch went out
        started = reactor.seconds()
        while True:
            batch = [(name, item) for name in targets for item in _take(streams[name], 100)]
            if not batch:
                break
            # Paced by the download, not the clock: the batch goes once its share of the file is verified.
            while dl.done_bytes < fetchable * sent // total and not outcome.called:
                await _sleep(0.003)
            done_at.append(dl.done_bytes)
            for name, (datagram, sock) in batch:
                sock.sendto(datagram, targets[name])
                reason = expected_verdict(datagram, sock.getsockname(), views[name])
                if reason is not None:
                    expected[name][reason] += 1
            sent += len(batch)
            await _sleep(0.003)
        print(f"sent {sent} hostile datagrams in {reactor.seconds() - started:.2f} s; "
              f"download {dl.done_bytes * 100 // meta.length}% done by then")
        hostile_done = not outcome.called
        # The last hostile datagrams may still wait in the sockets' queues: counted before the download may end.
        deadline = reactor.seconds() + 60
        while reactor.seconds() < deadline and not all(
            p.counts["rejected"] >= sum(expected[n].values()) for n, p in (("seeder", seeder), ("downloader", downloader))
        ):
            await _sleep(0.01)
        finish.release()
        result = await outcome
    finally:
        attacker.close()
        proven.close()
        for port in ports:
            await port.stopListening()
    assert hashlib.sha256(result.path.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert hostile_done, "the download ended before the hostile traffic"
    # The hostile traffic spanned the download: from before its first block to its last piece.
    assert sent == total and done_at[0] == 0 and done_at[-1] >= fetchable * (total - 200) // total, done_at
    for name, proto in (("seeder", seeder), ("downloader", downloader)):
        counted = rejections(proto.counts)
        print(f"real UDP, {name}: {proto.counts['rejected']} rejected: {dict(counted.most_common())}")
        assert counted == expected[name], (name, counted - expected[name], expected[name] - counted)
        assert proto.counts["errors"] == 0
    assert expected["seeder"]["too long"] >= 100
    assert seeder.counts["limited:blocks"] == 0  # the real downloader was never held back
    assert_quiet_log(events, protocols=2, seconds=60)


def test_info_answers_must_come_from_the_address_asked(tmp_path: Path) -> None:
    """An INFO_RESP is taken only from the address asked, about the file asked, with the id asked."""
    proto, transport, clock, meta = serving_node(tmp_path)
    seeder = ("203.0.113.1", 6881)
    answers: list[Any] = []
    proto.ask_info(seeder, meta.info_hash, 1.0).addBoth(answers.append)
    question = wire.decode(transport.last[seeder])
    assert isinstance(question, wire.InfoRequest)
    right = wire.encode_info_response(question.nonce, meta.info_hash, wire.OK, meta.length, meta.piece_length, bytes(8))
    proto.datagramReceived(right, ("203.0.113.66", 6881))  # another address
    proto.datagramReceived(right, (seeder[0], seeder[1] + 1))  # another port
    other_file = wire.encode_info_response(question.nonce, bytes(20), wire.OK, 1, 1, bytes(8))
    proto.datagramReceived(other_file, seeder)
    assert answers == [] and proto.counts["rejected:unsolicited INFO_RESP"] == 3
    proto.datagramReceived(right, seeder)
    assert len(answers) == 1 and isinstance(answers[0], wire.InfoResponse)
    proto.datagramReceived(right, seeder)  # a duplicate: nobody waits for it any more
    assert proto.counts["rejected:unsolicited INFO_RESP"] == 4
    # Blocks and errors for that file are now taken from the seeder only.
    block = wire.encode_block(meta.info_hash, 1, 0, 0, b"x" * 100)
    proto.downloads[meta.info_hash] = sink = _Sink()
    proto.datagramReceived(block, ("203.0.113.66", 6881))
    proto.datagramReceived(wire.encode_error(meta.info_hash, 1, wire.E_NOT_FOUND, "gone"), ("203.0.113.66", 6881))
    assert sink.got == [] and proto.counts["rejected:stranger"] == 2
    proto.datagramReceived(block, seeder)
    assert sink.got == [("block", seeder, 0, 0)]


class _Sink:
    def __init__(self) -> None:
        self.got: list[Any] = []

    def on_block(self, addr: Any, nonce: int, piece: int, offset: int, data: Any) -> None:
        self.got.append(("block", addr, piece, offset))

    def on_message(self, msg: Any, addr: Any) -> None:
        self.got.append(("message", addr, msg))


# ---- issue 12: another wire version

def test_another_version_is_told_once_within_bounds_and_many_addresses_do_not_flood_the_log(
    tmp_path: Path, events: list[dict[str, Any]],
) -> None:
    """A request of version 1 (as a node of that version writes it) gets one ERROR laid out as version 1 reads
    it, naming both versions, no bigger than twice the request; an answer of another version gets nothing.
    The address is logged once, however often it sends; 5000 addresses give at most REJECTS_LOGGED lines and
    the summary, per interval (a forged flood of versions must not flood the log)."""
    proto, transport, clock, meta = serving_node(tmp_path, size=MIB)
    old = ("192.0.2.1", 6881)
    v1_info_request = b"PT\x01\x01" + struct.pack("!I", 7) + meta.info_hash
    for _ in range(3):
        proto.datagramReceived(v1_info_request, old)
    assert transport.datagrams[old] == 3 and transport.largest[old] <= 2 * len(v1_info_request)
    answer = transport.last[old]
    assert answer[:4] == b"PT\x01\x05" and answer[4:24] == meta.info_hash and answer[24] == wire.E_VERSION
    assert answer[25:].decode() == "wire version 2 here, not 1"
    proto.datagramReceived(b"PT\x01\x04" + meta.info_hash + bytes(1408), old)  # a version-1 BLOCK: not answered
    assert transport.datagrams[old] == 3 and proto.counts["rejected:other version"] == 4
    told = [e for e in events if "wire version" in e.get("log_format", "")]
    assert len(told) == 1 and "told so" in formatEvent(told[0]), [formatEvent(e) for e in told]

    for i in range(5000):
        proto.datagramReceived(v1_info_request, (f"198.51.{i >> 8}.{i & 255}", 7000))
    assert proto.counts["rejected:other version"] == 5004
    warnings = [e for e in events if e.get("log_level") == LogLevel.warn]
    assert len(warnings) <= protocol_module.REJECTS_LOGGED + 1, len(warnings)
    assert all(transport.largest[a] <= 2 * len(v1_info_request) for a in transport.largest)
