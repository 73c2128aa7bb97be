"""The tracker for BitTorrent clients: BEP 3 announce (BEP 23 compact, BEP 7 peers6) and BEP 48 scrape.

Pure decisions, as :mod:`p2ptorrent.tracker.state` is for nodes: :class:`ClientSwarms` takes a decoded
announce and ``now`` and returns what to answer; :func:`parse_announce` / :func:`parse_scrape` turn a
query's arguments into requests or raise :class:`BepRefusal` (answered as ``failure reason``, never a 5xx);
:func:`encode_announce` and friends make the bencoded bodies.  The HTTP routes (http.py) and the BEP 15
datagrams (udp.py) only move bytes around these.

BitTorrent clients are a peer set of their own: p2ptorrent nodes speak the datagram protocol and clients
the peer wire protocol, so a client is only ever given clients and nodes never see them.  Clients are held
in memory only, as trackers for them do (opentracker, bittorrent-tracker): each announces again every
interval, so after a restart the swarm is whole again within one interval.

Records are tuples and dicts of bytes and numbers, which the garbage collector never tracks (see
:class:`p2ptorrent.tracker.state._Node`): 100k clients add nothing to a full collection.
"""

from __future__ import annotations

import random
import socket
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping, Sequence

from fastbencode import bencode

#: BEP 3 ``event`` values (BEP 15 numbers them 0..3 in the same order), and BEP 21's ``paused``.
EVENTS = ("", "completed", "started", "stopped", "paused")
#: Most info hashes one scrape may name (BEP 15 fits about 74 in a datagram; HTTP gets the same bound).
MAX_SCRAPE_HASHES = 74


class BepRefusal(Exception):
    """A refused announce or scrape: the ``failure reason`` a client shows its user."""


@dataclass(frozen=True)
class Announce:
    info_hash: bytes
    peer_id: bytes
    #: The address the request came from (IPv4 or IPv6, as text); the ``ip`` argument is never believed.
    host: str
    port: int
    left: int
    event: str
    #: None: the tracker's NUMWANT.
    numwant: int | None
    compact: bool = True
    no_peer_id: bool = False


@dataclass(frozen=True)
class Peer:
    host: str
    port: int
    peer_id: bytes


@dataclass(frozen=True)
class AnnounceResult:
    interval: int
    min_interval: int
    complete: int
    incomplete: int
    peers: list[Peer]


@dataclass(frozen=True)
class ScrapeEntry:
    complete: int
    downloaded: int
    incomplete: int


def packed_address(host: str, port: int) -> bytes:
    """BEP 23 / BEP 7 compact form: 4 or 16 address bytes, then the port (network order).

    ``inet_pton`` (0.2 µs, against 2.4 µs for ``ipaddress``): every announce packs its sender's address,
    the key of its record.  A scope (``fe80::1%eth0``) is not part of the address; ValueError if *host*
    is not an IP address.
    """
    try:
        if ":" in host:
            return socket.inet_pton(socket.AF_INET6, host.partition("%")[0]) + port.to_bytes(2, "big")
        return socket.inet_pton(socket.AF_INET, host) + port.to_bytes(2, "big")
    except OSError:
        raise ValueError(f"not an IP address: {host!r}") from None


class _Swarm:
    """One torrent's clients, keyed by their compact address (BEP 23 / BEP 7: address bytes, then the port).

    The address is the client's identity, as opentracker keys it: one process holds a port, so a client
    restarted with a new peer id on the same address replaces its old record at once instead of being
    handed out twice until the old one expires.  ``peers`` maps it to (host, port, seed, peer id); per
    address family a list of the same keys gives O(1) draws and removals (a removed one swaps with the
    last), and since a key is the compact form, a BEP 15 or compact answer is slices and a join."""

    __slots__ = ("peers", "lists", "where", "seeds", "downloaded")

    def __init__(self) -> None:
        self.peers: dict[bytes, tuple[str, int, bool, bytes]] = {}
        self.lists: tuple[list[bytes], list[bytes]] = ([], [])  # IPv4, IPv6: compact addresses
        self.where: dict[bytes, int] = {}
        self.seeds = 0
        self.downloaded = 0

    def add(self, compact: bytes, host: str, port: int, seed: bool, peer_id: bytes) -> None:
        family = self.lists[_family(host)]
        self.where[compact] = len(family)
        family.append(compact)
        self.peers[compact] = (host, port, seed, peer_id)
        self.seeds += seed

    def remove(self, compact: bytes) -> None:
        host, _, seed, _ = self.peers.pop(compact)
        family = self.lists[_family(host)]
        at = self.where.pop(compact)
        last = family.pop()
        if last != compact:
            family[at] = last
            self.where[last] = at
        self.seeds -= seed


def _family(host: str) -> int:
    return 1 if ":" in host else 0


class ClientSwarms:
    """Every torrent's BitTorrent clients, their expiry, and the counts scrape reports.

    A client that has not announced for ``peer_timeout`` seconds is gone (:meth:`expire`, a bounded
    amount of work per call, oldest first).  At most ``max_peers`` clients are held in all; an announce
    that would add one more is refused, so no one can grow the tracker's memory without bound.
    """

    def __init__(
        self, rng: random.Random, *, interval: int, min_interval: int, peer_timeout: float, numwant: int,
        max_numwant: int, max_peers: int,
    ) -> None:
        self._rng = rng
        self.interval = interval
        self.min_interval = min_interval
        self.peer_timeout = peer_timeout
        self.numwant = numwant
        self.max_numwant = max_numwant
        self.max_peers = max_peers
        self._swarms: dict[bytes, _Swarm] = {}
        #: (info hash + compact address) -> last announce, oldest first.
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def torrents(self) -> int:
        return len(self._swarms)

    def announce(self, req: Announce, now: float) -> AnnounceResult:
        swarm = self._record(req, now)
        if req.event == "stopped" or swarm is None:
            seeds = swarm.seeds if swarm else 0
            return AnnounceResult(self.interval, self.min_interval, seeds, len(swarm.peers) - seeds if swarm else 0, [])
        wanted = self.numwant if req.numwant is None else min(req.numwant, self.max_numwant)
        return AnnounceResult(
            self.interval, self.min_interval, swarm.seeds, len(swarm.peers) - swarm.seeds,
            self._draw(swarm, req, wanted),
        )

    def announce_compact(self, req: Announce, now: float) -> tuple[int, int, bytes]:
        """:meth:`announce` for BEP 15: (seeds, leechers, up to *numwant* other clients of the requester's
        address family, compact), with no object made per peer: the hot path of the UDP tracker."""
        swarm = self._record(req, now)
        if swarm is None:
            return 0, 0, b""
        if req.event == "stopped":
            return swarm.seeds, len(swarm.peers) - swarm.seeds, b""
        wanted = self.numwant if req.numwant is None else min(req.numwant, self.max_numwant)
        f = _family(req.host)
        packed = swarm.lists[f]
        n = len(packed)
        take = min(wanted + 1, n)  # one more, in case the window holds the requester
        start = self._rng.randrange(n)
        end = start + take
        window = packed[start:end] + packed[:end - n] if end > n else packed[start:end]
        mine = (swarm.where[packed_address(req.host, req.port)] - start) % n
        if mine < take:
            del window[mine]
        return swarm.seeds, len(swarm.peers) - swarm.seeds, b"".join(window[:wanted])

    def announce_packed(self, req: Announce, now: float) -> tuple[int, int, bytes, bytes]:
        """:meth:`announce` for HTTP's compact answers: (seeds, leechers, IPv4 peers, IPv6 peers), packed.  The
        requester's address family first, the other one filling up to *numwant* (``peers`` and ``peers6``,
        BEP 23 and BEP 7); no object made per peer."""
        seeds, leechers, mine = self.announce_compact(req, now)
        f = _family(req.host)
        other = b""
        wanted = self.numwant if req.numwant is None else min(req.numwant, self.max_numwant)
        missing = wanted - len(mine) // (18 if f else 6)
        swarm = self._swarms.get(req.info_hash)
        if missing > 0 and req.event != "stopped" and swarm is not None:
            packed = swarm.lists[1 - f]  # the requester is not among them
            n = len(packed)
            if n:
                start = self._rng.randrange(n)
                end = start + min(missing, n)
                other = b"".join(packed[start:end] + packed[:end - n] if end > n else packed[start:end])
        return (seeds, leechers, mine, other) if f == 0 else (seeds, leechers, other, mine)

    def _record(self, req: Announce, now: float) -> _Swarm | None:
        """Apply an announce; its torrent's swarm afterwards (None: gone, its last client stopped)."""
        swarm = self._swarms.get(req.info_hash)
        compact = packed_address(req.host, req.port)  # first: an address it cannot pack changes nothing
        if req.event == "stopped":
            if swarm is not None and compact in swarm.peers:
                self._forget(req.info_hash, swarm, compact)
                swarm = self._swarms.get(req.info_hash)
            return swarm
        seed = req.left == 0
        known = swarm.peers.get(compact) if swarm is not None else None
        if known is None and len(self._seen) >= self.max_peers:
            raise BepRefusal("the tracker holds as many peers as it may: try again later")
        if swarm is None:
            swarm = self._swarms[req.info_hash] = _Swarm()
        if known is None:
            swarm.add(compact, req.host, req.port, seed, req.peer_id)
        elif known[2] != seed or known[3] != req.peer_id:
            # Became a seed, or restarted with a new peer id on the same address: the same place, a new record.
            swarm.seeds += seed - known[2]
            swarm.peers[compact] = (req.host, req.port, seed, req.peer_id)
        if req.event == "completed" and not (known is not None and known[2]):
            swarm.downloaded += 1
        key = req.info_hash + compact
        self._seen[key] = now
        self._seen.move_to_end(key)
        return swarm

    def _draw(self, swarm: _Swarm, req: Announce, wanted: int) -> list[Peer]:
        """Up to *wanted* other clients, the requester's address family first: a random window of each
        family's list (a removal swaps the last one in, so the order keeps changing)."""
        out: list[Peer] = []
        mine = _family(req.host)
        me = packed_address(req.host, req.port)
        for family in (swarm.lists[mine], swarm.lists[1 - mine]):
            n = len(family)
            take = min(wanted - len(out), n)
            if take <= 0:
                continue
            start = self._rng.randrange(n)
            for i in range(min(take + 1, n)):
                compact = family[(start + i) % n]
                if compact == me:
                    continue
                if len(out) < wanted:
                    host, port, _, peer_id = swarm.peers[compact]
                    out.append(Peer(host, port, peer_id))
        return out

    def scrape(self, info_hashes: Sequence[bytes]) -> dict[bytes, ScrapeEntry]:
        out = {}
        for info_hash in info_hashes:
            swarm = self._swarms.get(info_hash)
            if swarm is None:
                out[info_hash] = ScrapeEntry(0, 0, 0)
            else:
                out[info_hash] = ScrapeEntry(swarm.seeds, swarm.downloaded, len(swarm.peers) - swarm.seeds)
        return out

    def expire(self, now: float, budget: int) -> tuple[int, bool]:
        """Forget up to *budget* clients silent for longer than the timeout; (forgotten, more are due)."""
        horizon = now - self.peer_timeout
        gone = 0
        seen = self._seen
        while seen and gone < budget:
            key, last = next(iter(seen.items()))
            if last >= horizon:
                return gone, False
            info_hash, compact = key[:20], key[20:]
            swarm = self._swarms[info_hash]
            self._forget(info_hash, swarm, compact)
            gone += 1
        due = bool(seen) and next(iter(seen.values())) < horizon
        return gone, due

    def _forget(self, info_hash: bytes, swarm: _Swarm, compact: bytes) -> None:
        swarm.remove(compact)
        del self._seen[info_hash + compact]
        if not swarm.peers:
            # The completed count goes with the last client: a torrent nobody announces is forgotten whole.
            del self._swarms[info_hash]


# ---------------------------------------------------------------- HTTP arguments


def parse_announce(args: Mapping[bytes, Sequence[bytes]], host: str | None) -> Announce:
    """A ``GET /announce`` query (as twisted.web decodes it: binary-safe) into an :class:`Announce`."""
    if host is None:
        raise BepRefusal("cannot tell the address of this connection")
    info_hash = _twenty(args, b"info_hash")
    peer_id = _twenty(args, b"peer_id")
    port = _number(args, b"port", 1, 65535)
    left = _number(args, b"left", 0, 2**63 - 1)
    for name in (b"uploaded", b"downloaded"):
        if name in args:
            _number(args, name, 0, 2**63 - 1)
    event = _one(args, b"event", b"").decode("ascii", "replace")
    if event == "empty":
        event = ""
    if event not in EVENTS:
        raise BepRefusal(f"unknown event {event[:32]!r}: use started, completed or stopped")
    numwant = _number(args, b"numwant", -1, 2**31 - 1) if b"numwant" in args else None
    return Announce(
        info_hash, peer_id, host, port, left, "" if event == "paused" else event,
        None if numwant is None or numwant < 0 else numwant,
        compact=_one(args, b"compact", b"1") != b"0",
        no_peer_id=_one(args, b"no_peer_id", b"0") == b"1",
    )


def parse_scrape(args: Mapping[bytes, Sequence[bytes]]) -> list[bytes]:
    hashes = list(args.get(b"info_hash", ()))
    if not hashes:
        raise BepRefusal("scrape needs at least one info_hash (a scrape of every torrent is not offered)")
    if len(hashes) > MAX_SCRAPE_HASHES:
        raise BepRefusal(f"at most {MAX_SCRAPE_HASHES} info_hash values per scrape, got {len(hashes)}")
    for value in hashes:
        if len(value) != 20:
            raise BepRefusal(f"info_hash must be 20 bytes, got {len(value)}")
    return hashes


def _one(args: Mapping[bytes, Sequence[bytes]], name: bytes, default: bytes | None = None) -> bytes:
    values = args.get(name)
    if not values:
        if default is None:
            raise BepRefusal(f"missing {name.decode()}")
        return default
    if len(values) > 1:
        raise BepRefusal(f"{name.decode()} given {len(values)} times")
    return values[0]


def _twenty(args: Mapping[bytes, Sequence[bytes]], name: bytes) -> bytes:
    value = _one(args, name)
    if len(value) != 20:
        raise BepRefusal(f"{name.decode()} must be 20 bytes, got {len(value)}")
    return value


def _number(args: Mapping[bytes, Sequence[bytes]], name: bytes, low: int, high: int) -> int:
    raw = _one(args, name)
    if not raw or len(raw) > 20 or not raw.lstrip(b"-").isdigit() or raw.count(b"-") > 1:
        raise BepRefusal(f"{name.decode()} must be a whole number")
    value = int(raw)
    if not low <= value <= high:
        raise BepRefusal(f"{name.decode()} must be {low}..{high}, got {value}")
    return value


# ---------------------------------------------------------------- bencoded answers


def encode_announce(result: AnnounceResult, req: Announce) -> bytes:
    doc: dict[bytes, object] = {
        b"interval": result.interval,
        b"min interval": result.min_interval,
        b"complete": result.complete,
        b"incomplete": result.incomplete,
    }
    if req.compact:
        v4 = b"".join(packed_address(p.host, p.port) for p in result.peers if ":" not in p.host)
        v6 = b"".join(packed_address(p.host, p.port) for p in result.peers if ":" in p.host)
        doc[b"peers"] = v4
        if v6:
            doc[b"peers6"] = v6
    else:
        peers = []
        for p in result.peers:
            entry: dict[bytes, object] = {b"ip": p.host.encode("ascii"), b"port": p.port}
            if not req.no_peer_id:
                entry[b"peer id"] = p.peer_id
            peers.append(entry)
        doc[b"peers"] = peers
    return bencode(doc)


def encode_compact(interval: int, min_interval: int, seeds: int, leechers: int, v4: bytes, v6: bytes) -> bytes:
    """A compact announce answer (BEP 23, with ``peers6`` of BEP 7 when there are IPv6 peers)."""
    doc: dict[bytes, object] = {
        b"interval": interval, b"min interval": min_interval, b"complete": seeds, b"incomplete": leechers,
        b"peers": v4,
    }
    if v6:
        doc[b"peers6"] = v6
    return bencode(doc)


def encode_scrape(entries: Mapping[bytes, ScrapeEntry]) -> bytes:
    return bencode({b"files": {
        h: {b"complete": e.complete, b"downloaded": e.downloaded, b"incomplete": e.incomplete}
        for h, e in entries.items()
    }})


def encode_failure(reason: str) -> bytes:
    return bencode({b"failure reason": reason.encode("utf-8")})
