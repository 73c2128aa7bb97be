"""Issue 12, the in-memory network part: a forger that uses the seeders' addresses, during a download.

A download from 2 seeders runs in the in-memory network (tests/netsim.py) in virtual time, with the real node
code on both sides.  A forger, a host of its own with a link of its own, sends the downloader datagrams that
claim to come from the seeders (``Network.forge``: its own bandwidth is charged, never a seeder's):

* BLOCKs: for blocks the downloader is asking for right now, for blocks of started pieces not asked yet, for
  pieces not started yet, for pieces already verified, for pieces past the end of the file, and parts of
  blocks (half blocks, parts at offsets inside a block, empty parts), all garbage of the size asked;
* ERRORs with every code of wire.py (E_NOT_FOUND, E_BAD_COOKIE, E_BAD_REQUEST, E_CHOKED, E_VERSION) and codes
  it does not define;
* HAVEs: choked, offering nothing (every piece withdrawn), complete, and NEWS;
* INFO_RESPs: OK, PARTIAL and NOT_FOUND, with lengths and piece lengths other than the file's.

The forger knows what anyone can learn: the info hash, the file's geometry, the seeders' and the
downloader's addresses.  It never sees traffic, so it guesses nonces: random 64-bit values, 0, 2**64 - 1 and
small values.  Which blocks are outstanding it reads from the downloader's transfer: the best guess a forger
could make (it could guess nearly as well from the file order), and the worst case for the node.

What must hold (:func:`problems`): the file is identical (sha256); neither
seeder is dropped, both delivered data, no piece failed its check; every forged datagram that reached the
downloader while its download ran is counted, under the reason its kind calls for ("unmatched BLOCK",
"unmatched ERROR", "unmatched HAVE", "unsolicited INFO_RESP"), and nothing else is refused; and the download
takes at most 1.2 times as long (virtual time) as the same download, same seed, without the forger.

"Apart from the bandwidth the forger itself takes": netsim models each sender's link only, not a receiving
host's downlink, so the forger's traffic takes nothing from the seeders' links or from the downloader's
(it costs the downloader CPU, which is not virtual time).  The times with and without the forger are
therefore compared directly; what is left for the node to get wrong is how it reacts to what it is sent.
The forger sends at the honest data rate (the sum of the seeders' links) and, in the flood, at 10 times it.
The path carries everything (no loss), so every forged datagram sent before the end arrives; netsim counts
what it delivered by kind, and the comparison is made at the moment the download ends (datagrams still on
the way then arrive at a download that has ended and are not counted as refused: reported, not asserted;
see ``test_forged_datagrams_while_the_file_is_being_finished_are_counted``, expected to fail).

The checks can fail: ``test_a_forger_that_sees_the_nonces_is_caught_by_these_checks`` runs the same forger
on the path (it reads the nonces of the downloader's requests), one kind of datagram at a time, and each
kind is caught by the check it should trip (pieces failing, a seeder dropped, the time, the download
failing) and by the count of refusals.

The unit tests at the end drive a :class:`Transfer` directly: a block with a wrong nonce changes nothing,
a part of a block with a wrong nonce is never put together with the rest, and a failed piece strikes only
the peers whose matched blocks were in it.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.python.failure import Failure

from netsim import Faults, Network
from p2ptorrent import wire
from p2ptorrent.node.download import Download, DownloadResult, Phase
from p2ptorrent.node.links import Hooks
from p2ptorrent.node.storage import PartFile, StorageError
from p2ptorrent.node.transfer import (
    UNMATCHED_BLOCK,
    Geometry,
    PieceAssembled,
    PieceFailed,
    PieceVerified,
    Transfer,
)
from p2ptorrent.node.writer import InlineWriter
from swarm import Swarm

MIB = 1024 * 1024
SIZE = 4 * MIB
SEED = 12
#: Each seeder's link (bytes/s): 4 MiB from 2 seeders takes about half a virtual second.
BANDWIDTH = 4e6
HONEST_RATE = 2 * BANDWIDTH
FORGER = ("10.66.6.6", 6666)
#: The forger sends every FORGE_TICK virtual seconds what its rate allows, on a link of FORGER_LINK bytes/s.
FORGE_TICK = 0.001
FORGER_LINK = 20 * HONEST_RATE
#: The longest a download here may take, and how much slower than without the forger it may be.
LIMIT = 60.0
SLOWDOWN = 1.2

# What the downloader must count each kind of forged datagram as ("rejected:<reason>"): the netsim tags.
R_BLOCK = "unmatched BLOCK"
R_ERROR = "unmatched ERROR"
R_HAVE = "unmatched HAVE"
R_INFO = "unsolicited INFO_RESP"

#: Every ERROR code of wire.py, and codes it does not define.
ERROR_CODES = {
    "E_NOT_FOUND": wire.E_NOT_FOUND, "E_BAD_COOKIE": wire.E_BAD_COOKIE, "E_BAD_REQUEST": wire.E_BAD_REQUEST,
    "E_CHOKED": wire.E_CHOKED, "E_VERSION": wire.E_VERSION, "unknown 0": 0, "unknown 99": 99,
}
BLOCK_FLAVOURS = ("requested", "requested", "requested", "half", "inside", "empty", "unasked", "future",
                  "verified", "past the end")
HAVE_FLAVOURS = ("choked", "withdraw all", "complete", "news")
INFO_FLAVOURS = ("OK, wrong length", "PARTIAL", "NOT_FOUND")
#: One round of the forger's mix: mostly blocks (the data rate), every control message in each round.
ROUND = ([("BLOCK", f) for f in BLOCK_FLAVOURS] + [("ERROR", f) for f in ERROR_CODES]
         + [("HAVE", f) for f in HAVE_FLAVOURS] + [("INFO_RESP", f) for f in INFO_FLAVOURS])


class Forger:
    """An off-path host that sends the downloader datagrams with the seeders' source addresses.

    It sends *rate* bytes per virtual second (its own link carries them: ``Network.forge``) while the
    download runs, cycling through *mix* (all of :data:`ROUND`), as the seeders numbered in *seeders*
    (all).  *nonces*, if given, is where it gets a peer's nonces from (an on-path forger, for the
    control tests); otherwise it guesses.
    """

    def __init__(self, swarm: Swarm, dl: Download, rate: float, seed: int,
                 nonces: Callable[[Any], list[int]] | None = None, mix: list[tuple[str, str]] = ROUND,
                 seeders: list[int] | None = None) -> None:
        self.net, self.clock, self.dl, self.rate = swarm.net, swarm.clock, dl, rate
        self.meta = swarm.meta
        self.geo = dl.transfer.geo
        self.victim = swarm.proto.transport.addr
        self.seeders = [s.transport.addr for i, s in enumerate(swarm.seeders) if seeders is None or i in seeders]
        self.mix = mix
        self.rng = random.Random(seed)
        self.known_nonces = nonces
        # Its own link, faster than its rate (it sends what its rate allows each tick, in a burst).
        self.net.bandwidth[FORGER] = FORGER_LINK
        #: Datagrams and bytes sent, by (kind, flavour) and in all.
        self.sent: Counter[tuple[str, str]] = Counter()
        self.bytes = 0
        #: When it started, and when it last sent (it stops at its first tick after the download ended).
        self.started = self.last = -1.0
        self._budget = 0.0
        self._at = 0
        self._outstanding: list[tuple[Any, int]] = []
        self._garbage = [self.rng.randbytes(self.geo.chunk) for _ in range(16)]

    def start(self) -> None:
        """Forge from now on, beginning with a tick's worth at once."""
        self.started = self.last = self.clock.seconds()
        self._budget = self.rate * FORGE_TICK
        self._tick()

    def _tick(self) -> None:
        if self.dl.phase is not Phase.RUNNING:
            return
        transfer = self.dl.transfer
        # What is outstanding right now, at which seeder (read once a tick).
        self._outstanding = [(p.addr, bid) for p in transfer.peers.values() for bid in p.inflight]
        # What its rate allows since the last tick (the clock may have moved on by more than a tick).
        self._budget += self.rate * (self.clock.seconds() - self.last)
        while self._budget > 0:
            kind, flavour = self.mix[self._at % len(self.mix)]
            self._at += 1
            src, data, reason = self._make(kind, flavour)
            self.net.forge(src, self.victim, data, via=FORGER, tag=reason)
            self.sent[kind, flavour] += 1
            self.bytes += len(data)
            self._budget -= len(data)
        self.last = self.clock.seconds()
        self.clock.callLater(FORGE_TICK, self._tick)

    # ---- what it sends
    def _nonce(self, src: Any) -> int:
        if self.known_nonces is not None:
            known = self.known_nonces(src)
            if known:
                return self.rng.choice(known)
        pick = self.rng.randrange(8)
        if pick == 0:
            return 0
        if pick == 1:
            return self.rng.randrange(1, 17)
        if pick == 2:
            return 2**64 - 1
        return self.rng.getrandbits(64)

    def _garbage_of(self, size: int) -> bytes:
        return self.rng.choice(self._garbage)[:size]

    def _make(self, kind: str, flavour: str) -> tuple[Any, bytes, str]:
        ih, geo, rng = self.meta.info_hash, self.geo, self.rng
        src = rng.choice(self.seeders)
        if kind == "BLOCK":
            src, piece, offset, size = self._block(flavour, src)
            return src, wire.encode_block(ih, self._nonce(src), piece, offset, self._garbage_of(size)), R_BLOCK
        nonce = self._nonce(src)
        n = geo.num_pieces
        if kind == "ERROR":
            message = rng.choice(["", "not here", f"wire version 3 here, not {wire.VERSION}", "x" * 200])
            return src, wire.encode_error(ih, nonce, ERROR_CODES[flavour], message), R_ERROR
        if kind == "HAVE":
            every, none = b"\xff" * ((n + 7) // 8), bytes((n + 7) // 8)
            if n % 8:
                every = every[:-1] + bytes([(0xFF << (8 - n % 8)) & 0xFF])
            if flavour == "choked":
                return src, wire.encode_have(ih, nonce, 0, n, wire.F_CHOKED, every), R_HAVE
            if flavour == "withdraw all":
                return src, wire.encode_have(ih, nonce, 0, n, 0, none), R_HAVE
            if flavour == "complete":
                return src, wire.encode_have(ih, nonce, 0, n, wire.F_COMPLETE, every), R_HAVE
            return src, wire.encode_have(ih, nonce, rng.randrange(n), 1, wire.F_NEWS, b"\x80"), R_HAVE
        status = {"OK, wrong length": wire.OK, "PARTIAL": wire.PARTIAL, "NOT_FOUND": wire.NOT_FOUND}[flavour]
        length = rng.choice([0, 1, self.meta.length - 1, self.meta.length + 1, 2**40])
        piece_length = rng.choice([16 * 1024, geo.piece_length * 2, 2**31])
        return src, wire.encode_info_response(nonce, ih, status, length, piece_length, rng.randbytes(8)), R_INFO

    def _block(self, flavour: str, src: Any) -> tuple[Any, int, int, int]:
        """(source, piece, offset, size) of a forged block or part of one."""
        geo, rng, transfer = self.geo, self.rng, self.dl.transfer
        n = geo.num_pieces
        if flavour in ("requested", "half", "inside", "empty") and self._outstanding:
            src, bid = rng.choice(self._outstanding)
        else:
            bid = rng.randrange(n * geo.blocks_per_piece)
        if flavour == "unasked":
            # A block of the piece being fetched or the next ones, not asked yet.
            for _ in range(8):
                if not transfer.asked[bid]:
                    break
                bid = rng.randrange(len(transfer.asked))
        elif flavour == "future":
            started = [p for p in range(n) if transfer.is_started[p]]
            first = min(n - 1, max(started, default=-1) + 1)
            bid = rng.randrange(first, n) * geo.blocks_per_piece
        elif flavour == "verified":
            done = [p for p in range(n) if transfer.verified[p]]
            if done:
                bid = rng.choice(done) * geo.blocks_per_piece + rng.randrange(geo.blocks_in_piece(0))
        elif flavour == "past the end":
            return src, rng.choice([n, n + 1, 2**32 - 1]), 0, geo.chunk
        piece, k = divmod(bid, geo.blocks_per_piece)
        k = min(k, geo.blocks_in_piece(piece) - 1)
        piece, offset, size = geo.block(piece * geo.blocks_per_piece + k)
        if flavour == "half":
            half = size // 2
            return src, piece, offset + rng.choice([0, half]), half
        if flavour == "inside":
            inside = rng.randrange(1, size)
            return src, piece, offset + inside, rng.randrange(1, size - inside + 1)
        if flavour == "empty":
            return src, piece, offset, 0
        return src, piece, offset, size


@dataclass
class Run:
    """One download, and what it looked like the moment it ended."""

    swarm: Swarm
    dl: Download
    result: Any = None
    #: Virtual seconds from the start to the end (the result).
    seconds: float = -1.0
    #: The downloader's counts, and what netsim had delivered of the forger's, when the download ended.
    counts: Counter[str] = field(default_factory=Counter)
    forged_delivered: Counter[str] = field(default_factory=Counter)
    forger: Forger | None = None
    events: list[dict[str, Any]] = field(default_factory=list)


def download(tmp_path: Path, events: list[dict[str, Any]], rate: float = 0.0, faults: Faults | None = None,
             **forger: Any) -> Run:
    """A download of SIZE bytes from 2 seeders (seeded), with a forger sending *rate* bytes/s if *rate*."""
    folder = tmp_path / ("forged" if rate else "clean")
    folder.mkdir()
    swarm = Swarm(folder, SIZE, seeders=2, seed=SEED, faults=faults or Faults(bandwidth=BANDWIDTH))
    first_event = len(events)
    dl, outcome = swarm.start()
    run = Run(swarm, dl)

    def ended(result: Any) -> Any:
        run.seconds = swarm.clock.seconds()
        run.counts = Counter(swarm.proto.counts)
        run.forged_delivered = Counter(swarm.net.forged_delivered)
        return result

    dl.result.addBoth(ended)
    if rate:
        run.forger = Forger(swarm, dl, rate, SEED, **forger)
        run.forger.start()
    run.result = swarm.run(outcome, limit=LIMIT)
    run.events = events[first_event:]
    return run


def problems(run: Run, clean: Run) -> list[str]:
    """Everything wrong with a download under forgery, against the same download without it ([]: none)."""
    swarm, result, found = run.swarm, run.result, []
    if isinstance(result, Failure):
        found.append(f"the download failed: {result.value}")
    else:
        assert isinstance(result, DownloadResult)
        if hashlib.sha256(result.path.read_bytes()).hexdigest() != swarm.sha256():
            found.append("the file differs from the seeders'")
        statuses = {s.node_id: s.status for s in result.shares}
        if statuses != {1: "finished", 2: "finished"}:
            found.append(f"a seeder's share did not finish: {statuses}")
        delivered = {s.node_id: s.bytes for s in result.shares}
        if sorted(delivered) != [1, 2] or min(delivered.values()) <= 0:
            found.append(f"not both seeders delivered data: {delivered}")
        if run.seconds > SLOWDOWN * clean.seconds:
            found.append(f"{run.seconds:.3f} virtual s, more than {SLOWDOWN} x {clean.seconds:.3f} s without the forger")
    text = [formatEvent(e) for e in run.events]
    dropped = [t for t in text if "dropped node" in t]
    if dropped:
        found.append(f"seeders dropped: {dropped[:3]}")
    failed = [t for t in text if "failed verification" in t or "corrupt" in t]
    if failed:
        found.append(f"pieces failed their check: {len(failed)}, first {failed[0]}")
    rejected = Counter({k[len("rejected:"):]: v for k, v in run.counts.items() if k.startswith("rejected:")})
    expected = Counter({k: v for k, v in run.forged_delivered.items() if v})
    if rejected != expected:
        found.append(f"refused {dict(rejected)}, but the forged datagrams delivered were {dict(expected)}")
    if run.counts["rejected"] != sum(expected.values()):
        found.append(f"refused {run.counts['rejected']} in all, {sum(expected.values())} forged delivered")
    if swarm.net.forged_lost:
        found.append(f"the path lost forged datagrams (the counts cannot be compared): {swarm.net.forged_lost}")
    if run.counts["errors"]:
        found.append(f"{run.counts['errors']} errors handling datagrams")
    return found


def summary(name: str, run: Run, clean: Run) -> str:
    forger = run.forger
    assert forger is not None
    net = run.swarm.net
    span = max(1e-9, forger.last - forger.started)
    by_kind = Counter[str]()
    for (kind, _), n in forger.sent.items():
        by_kind[kind] += n
    late = sum(net.forged_sent.values()) - sum(run.forged_delivered.values()) - sum(net.forged_lost.values())
    return (f"{name}: forged {sum(forger.sent.values())} datagrams, {forger.bytes} bytes in {span:.3f} virtual s"
            f" ({forger.bytes / span / HONEST_RATE:.1f} x the honest {HONEST_RATE / 1e6:.0f} MB/s); sent by kind"
            f" {dict(by_kind)}; delivered while the download ran {dict(run.forged_delivered)}; counted"
            f" {run.counts['rejected']}: { {k: v for k, v in run.counts.items() if k.startswith('rejected:')} };"
            f" arrived after the end {late}; download {run.seconds:.4f} virtual s with the forger,"
            f" {clean.seconds:.4f} without ({run.seconds / clean.seconds:.3f} x)")


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The same download, same seed, without the forger: the time to compare with, and no refusals at all."""
    run = download(tmp_path_factory.mktemp("clean"), [])
    assert not isinstance(run.result, Failure), run.result
    assert run.counts["rejected"] == 0, run.counts
    assert 0 < run.seconds < LIMIT
    return run


@pytest.mark.parametrize("times", [1, 10], ids=["at the honest rate", "flood at 10 x"])
def test_forged_datagrams_from_the_seeders_addresses_change_nothing(
    tmp_path: Path, events: list[dict[str, Any]], clean_run: Run, times: int,
) -> None:
    run = download(tmp_path, events, rate=times * HONEST_RATE)
    print(summary(f"{times} x", run, clean_run))
    forger = run.forger
    assert forger is not None
    # The forger did send what the issue asks for, at the rate asked, all through the download.
    assert set(forger.sent) == set(ROUND)
    assert forger.last >= run.seconds - FORGE_TICK
    assert 0.95 <= forger.bytes / (forger.last - forger.started) / (times * HONEST_RATE) <= 1.05
    assert sum(run.forged_delivered.values()) >= 0.9 * sum(forger.sent.values())
    assert problems(run, clean_run) == []


#: The controls: one kind of forged datagram each, from an on-path forger, and the problem it must cause.
CONTROLS = {
    "BLOCK": ([("BLOCK", "requested")], None, "pieces failed their check"),
    "ERROR E_NOT_FOUND as seeder 1": ([("ERROR", "E_NOT_FOUND")], [0], "seeders dropped"),
    "ERROR E_CHOKED": ([("ERROR", "E_CHOKED")], None, "without the forger"),
    "HAVE withdraw all": ([("HAVE", "withdraw all")], None, "without the forger"),
    "INFO_RESP NOT_FOUND": ([("INFO_RESP", "NOT_FOUND")], None, "the download failed"),
}


@pytest.mark.parametrize("control", list(CONTROLS))
def test_a_forger_that_sees_the_nonces_is_caught_by_these_checks(
    tmp_path: Path, events: list[dict[str, Any]], clean_run: Run, control: str,
) -> None:
    """The controls: the same forger on the path (it reads the nonces of the downloader's requests, as anyone
    who sees the traffic can), sending one kind of datagram, is heard, and :func:`problems` says so: the
    checks can fail.  Slowly (a hundredth of the honest rate): what is heard does the harm, not the rate."""
    seen: dict[Any, list[int]] = {}

    def watch(src: Any, dst: Any, data: bytes) -> bytes:
        if data[3] in (wire.BLOCK_REQ, wire.HAVE_REQ, wire.INFO_REQ):
            msg = wire.decode(data)
            assert isinstance(msg, (wire.BlockRequest, wire.HaveRequest, wire.InfoRequest))
            recent = seen.setdefault(dst, [])
            recent.append(msg.nonce)
            del recent[:-4]
        return data

    mix, seeders, expected = CONTROLS[control]
    run = download(tmp_path, events, rate=HONEST_RATE / 100, faults=Faults(bandwidth=BANDWIDTH, tamper=watch),
                   nonces=lambda src: seen.get(src, []), mix=mix, seeders=seeders)
    found = problems(run, clean_run)
    print(f"an on-path forger, {control}: {found}")
    assert any(expected in p for p in found), found
    # What it got heard with was not refused, so the count of refusals falls short of what it delivered.
    assert any(p.startswith("refused") for p in found), found
    assert not any("the file differs" in p for p in found)  # pieces are still checked against their hashes


class HeldWriter(InlineWriter):
    """Checks and writes pieces at once, but finishes the file (sync, rename) only when the test says so: the
    time a ThreadedWriter takes to finish a real file, during which the download is FINISHING."""

    def __init__(self, part: PartFile, on_error: Callable[[StorageError], None]) -> None:
        super().__init__(part, on_error)
        self.held: Deferred[Path] = Deferred()

    def finish(self) -> Deferred[Path]:
        done = self.held
        done.addCallback(lambda _: super(HeldWriter, self).finish())
        return done


def test_forged_datagrams_while_the_file_is_being_finished_are_counted(tmp_path: Path) -> None:
    """Every piece is verified and the writer is finishing the file (as a ThreadedWriter does, for as long as
    syncing and renaming take): forged datagrams from a seeder's address must still be refused and counted."""
    swarm = Swarm(tmp_path, SIZE // 4, seeders=2, seed=SEED, faults=Faults(bandwidth=BANDWIDTH))
    meta, net, proto = swarm.meta, swarm.net, swarm.proto
    writers: list[HeldWriter] = []

    def writer(part: PartFile, on_error: Callable[[StorageError], None]) -> HeldWriter:
        writers.append(HeldWriter(part, on_error))
        return writers[-1]

    dl = Download(meta, PartFile(swarm.folder, meta), proto, swarm.need, swarm.clock, swarm.settings, 100,
                  Hooks(writer=writer))
    proto.downloads[meta.info_hash] = dl
    outcome: list[Any] = []
    dl.start().addBoth(outcome.append)
    net.run(lambda: dl.phase is Phase.FINISHING, limit=LIMIT)
    net.run(lambda: not net.queue, limit=1)  # the seeders' last answers are in
    before = proto.counts["rejected"]
    seeder = swarm.seeders[0].transport.addr
    ih = meta.info_hash
    for nonce in (0, 1, 2**64 - 1, 0x1234_5678_9ABC_DEF0):
        net.forge(seeder, proto.transport.addr, wire.encode_block(ih, nonce, 0, 0, bytes(dl.transfer.geo.chunk)), FORGER)
        net.forge(seeder, proto.transport.addr, wire.encode_error(ih, nonce, wire.E_NOT_FOUND), FORGER)
        net.forge(seeder, proto.transport.addr, wire.encode_have(ih, nonce, 0, 1, wire.F_CHOKED, b"\x80"), FORGER)
    net.run(lambda: not net.queue, limit=1)
    delivered = net.forged_delivered["forged"]
    counted = proto.counts["rejected"] - before
    writers[0].held.callback(None)
    assert outcome and not isinstance(outcome[0], Failure)
    assert delivered == 12
    assert counted == delivered, f"{delivered} forged datagrams delivered while FINISHING, {counted} refused"


# ---- the pure parts: a Transfer and the nonces

CHUNK = 1000
PIECE = 4 * CHUNK
DATA = random.Random(12).randbytes(3 * PIECE)
GEO = Geometry(len(DATA), PIECE, CHUNK)
HASHES = b"".join(hashlib.sha1(DATA[i : i + PIECE]).digest() for i in range(0, len(DATA), PIECE))
A, B, C = ("10.0.0.1", 1), ("10.0.0.2", 2), ("10.0.0.3", 3)


def _transfer(*peers: Any, window: int = 0) -> Transfer:
    nonces = iter(range(1000, 10**6))
    t = Transfer(GEO, HASHES, first_timeout=1.0, max_batch=8, nonce=lambda: next(nonces))
    for i, addr in enumerate(peers):
        peer = t.add_peer(addr, i + 1, bytes(8), 0.0)
        if window:
            peer.window = window
    return t


def _asked(t: Transfer, now: float) -> dict[Any, list[tuple[int, tuple[int, int, int]]]]:
    """The requests the transfer makes now: address -> [(nonce, (piece, offset, length))]."""
    out: dict[Any, list[tuple[int, tuple[int, int, int]]]] = {}
    for peer, nonce, batch in t.requests(now):
        out.setdefault(peer.addr, []).extend((nonce, b) for b in batch)
    return out


def _data(piece: int, offset: int, length: int) -> bytes:
    return DATA[piece * PIECE + offset : piece * PIECE + offset + length]


def _state(t: Transfer) -> Any:
    """Everything a block could change, as plain values."""
    peers = {a: (p.last_data, p.window, p.acked, p.blocks, p.bytes, p.strikes, dict(p.inflight), dict(p.nonces),
                 p.round_delivered, p.srtt) for a, p in t.peers.items()}
    pieces = {k: (bytes(v.data), v.missing, dict(v.sources)) for k, v in t.pieces.items()}
    parts = {k: (bytes(v[0]), list(v[1])) for k, v in t.parts.items()}
    return (bytes(t.received), bytes(t.verified), pieces, parts, dict(t.requesters), set(t.fed), t.duplicates,
            dict(t.judging), peers)


def test_a_block_with_a_wrong_nonce_changes_nothing() -> None:
    t = _transfer(A, B)
    asked = _asked(t, 0.0)
    (nonce_a, (piece, offset, length)), (nonce_b, _) = asked[A][0], asked[B][0]
    before = _state(t)
    wrong = [0, 1, nonce_a ^ 1 << 40, 2**64 - 1, nonce_b]  # nonce_b: B's, but the block claims to come from A
    for at, nonce in enumerate(wrong):
        # The right data, the right size, a block asked of A right now: only the nonce is wrong.
        assert t.on_block(A, nonce, piece, offset, _data(piece, offset, length), 0.01 * (at + 1)) == UNMATCHED_BLOCK
        assert t.on_block(A, nonce, piece, offset, b"x" * length, 0.05) == UNMATCHED_BLOCK
        assert t.on_block(C, nonce_a, piece, offset, b"x" * length, 0.05) == UNMATCHED_BLOCK  # not a peer
    assert _state(t) == before
    assert t.rejected == 3 * len(wrong)
    # The same block with A's nonce is taken.
    assert t.on_block(A, nonce_a, piece, offset, _data(piece, offset, length), 0.1) is None
    assert _state(t) != before and t.peers[A].blocks == 1


def test_a_part_of_a_block_with_a_wrong_nonce_is_never_put_together() -> None:
    t = _transfer(A)
    requests = _asked(t, 0.0)[A]
    nonce, (piece, offset, length) = requests[0]
    half = length // 2
    # A forged first half, then the real second half: the block is not complete (the forged half was refused).
    assert t.on_block(A, nonce ^ 1 << 40, piece, offset, b"\xee" * half, 0.01) == UNMATCHED_BLOCK
    assert t.on_block(A, nonce, piece, offset + half, _data(piece, offset + half, length - half), 0.02) is None
    assert not t.received[0] and t.peers[A].blocks == 0
    # Forged parts over the whole block, at offsets inside it and of every size: none is taken.
    rng = random.Random(1)
    for _ in range(200):
        inside = rng.randrange(length)
        assert t.on_block(A, rng.getrandbits(64), piece, offset + inside, b"\xee" * rng.randrange(1, length - inside + 1),
                          0.03) == UNMATCHED_BLOCK
    assert not t.received[0]
    # The real first half completes it, with the real bytes only.
    assert t.on_block(A, nonce, piece, offset, _data(piece, offset, half), 0.04) is None
    assert t.received[0] and t.peers[A].blocks == 1
    # The other blocks of the piece, whole, with A's nonces: the piece is assembled from real bytes and verifies.
    out = None
    for n, (p, o, size) in requests[1:]:
        if p == piece:
            out = t.on_block(A, n, p, o, _data(p, o, size), 0.05)
    assert isinstance(out, PieceAssembled) and bytes(out.data) == _data(piece, 0, PIECE)
    assert isinstance(t.checked(piece, hashlib.sha1(out.data).digest() == t.piece_hash(piece)), PieceVerified)


def test_a_failed_piece_strikes_only_the_peers_whose_matched_blocks_were_in_it() -> None:
    t = _transfer(A, B, C, window=2)
    asked = _asked(t, 0.0)
    # Piece 0's four blocks went two to A, two to B; C was asked for piece 1.
    assert [b[:2] for _, b in asked[A]] == [(0, 0), (0, CHUNK)] and [b[:2] for _, b in asked[B]] == [(0, 2 * CHUNK), (0, 3 * CHUNK)]
    assert {b[0] for _, b in asked[C]} == {1}
    garbage = b"\xee" * CHUNK
    # The forger, with C's and A's addresses and guessed nonces, sends garbage for every block of piece 0.
    for src in (A, C):
        for k in range(4):
            assert t.on_block(src, 7 + k, 0, k * CHUNK, garbage, 0.01) == UNMATCHED_BLOCK
    # A sends its blocks right, B sends one wrong: the piece fails, with A and B as sources only.
    (na0, b0), (na1, b1) = asked[A]
    (nb0, b2), (nb1, b3) = asked[B]
    t.on_block(A, na0, *b0[:2], _data(*b0), 0.02)
    t.on_block(A, na1, *b1[:2], _data(*b1), 0.02)
    t.on_block(B, nb0, *b2[:2], garbage, 0.02)
    out = t.on_block(B, nb1, *b3[:2], _data(*b3), 0.02)
    assert isinstance(out, PieceAssembled) and out.sources == {A, B}
    failed = t.checked(0, hashlib.sha1(out.data).digest() == t.piece_hash(0))
    assert isinstance(failed, PieceFailed) and failed.sources == {A, B}
    assert [t.peers[x].strikes for x in (A, B, C)] == [0, 0, 0]  # two sources: nobody is sure yet
    # Piece 0 asked again, answered right by whoever is asked; the forger keeps sending garbage as A and C.
    verdict = None
    for now in (0.1, 0.2, 0.3, 0.4):
        for addr, requests in _asked(t, now).items():
            for nonce, (p, o, size) in requests:
                for src in (A, C):
                    assert t.on_block(src, nonce ^ 0xFFFF, p, o, garbage[:size], now) == UNMATCHED_BLOCK
                out = t.on_block(addr, nonce, p, o, _data(p, o, size), now)
                if isinstance(out, PieceAssembled) and out.piece == 0:
                    verdict = t.checked(0, hashlib.sha1(out.data).digest() == t.piece_hash(0))
        if verdict is not None:
            break
    assert isinstance(verdict, PieceVerified) and verdict.corrupt_from == {B}
    assert [t.peers[x].strikes for x in (A, B, C)] == [0, 1, 0]


def test_a_piece_from_one_peer_that_fails_strikes_that_peer_and_no_one_whose_address_was_forged() -> None:
    t = _transfer(A, B, window=4)
    asked = _asked(t, 0.0)
    assert {b[0] for _, b in asked[A]} == {0} and {b[0] for _, b in asked[B]} == {1}
    for nonce, (p, o, size) in asked[B]:
        # Garbage with guessed nonces, as from A, for B's blocks (and then B's real ones): piece 2 is B's alone.
        assert t.on_block(A, nonce ^ 1 << 40, p, o, b"\xee" * size, 0.01) == UNMATCHED_BLOCK
        out = t.on_block(B, nonce, p, o, b"\xdd" * size, 0.02)  # B itself sends garbage
    assert isinstance(out, PieceAssembled) and out.sources == {B}
    assert isinstance(t.checked(1, hashlib.sha1(out.data).digest() == t.piece_hash(1)), PieceFailed)
    assert (t.peers[A].strikes, t.peers[B].strikes) == (0, 1)


def test_netsim_forge_charges_the_forgers_link_not_the_address_it_uses() -> None:
    """Network.forge: the receiver sees the forged address; the forger's link, not the victim's, carries it."""

    class Host:
        def __init__(self) -> None:
            self.got: list[tuple[float, Any, bytes]] = []

        def makeConnection(self, transport: Any) -> None:
            self.transport = transport

        def datagramReceived(self, data: bytes, addr: Any) -> None:
            self.got.append((clock.seconds(), addr, data))

    clock = Clock()
    net = Network(clock, faults=Faults(bandwidth=1e6, delay=0.0))
    seeder, downloader = Host(), Host()
    net.attach(seeder, A)
    net.attach(downloader, B)
    net.bandwidth[FORGER] = 1e8
    for i in range(100):
        net.forge(A, B, bytes([i]) * 1000, via=FORGER, tag="x")
    seeder.transport.write(b"s" * 1000, B)  # the seeder's own link is free: its datagram goes at once
    net.forge(A, ("10.9.9.9", 9), b"nobody", via=FORGER, tag="y")
    net.run(lambda: not net.queue, limit=1)
    assert {addr for _, addr, _ in downloader.got} == {A}
    own = [at for at, _, data in downloader.got if data[:1] == b"s"]
    assert own == [pytest.approx(1000 / 1e6)]
    assert max(at for at, _, _ in downloader.got) == pytest.approx(100 * 1000 / 1e8)
    assert net.forged_sent == {"x": 100, "y": 1} and net.forged_delivered == {"x": 100}
    assert net.forged_lost == {"y": 1} and net.sent == 1 and net.delivered == 101 and net.lost == 1
