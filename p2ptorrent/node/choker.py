"""Upload slots: who may download from us now (one Choker per node, across all its files).

Pure: it is told who asks, who sent us how much and the time, and answers
yes or no; the caller sends the blocks or the refusal.  Peers are keys
(addresses, any hashable but None).

- ``allowed(peer, now)`` is asked for every block request.  It records the
  peer as interested (it last asked at *now*) and says whether it holds a
  slot.  A peer that asks while a regular slot is free gets it at once: a
  lone downloader never waits for a rotation.  When all ``slots`` regular
  slots are taken it is refused (it waits for a rotation), unless the
  optimistic slot is free, which it then gets.
- Every ``rotate_every`` seconds (in ``tick``) the regular slots go to the
  ``slots`` interested peers that uploaded the most to us since the last
  rotation (``received_from``: tit-for-tat).  Peers that uploaded nothing
  (we are a seed, or they are new) come after every uploader, and among
  themselves the one that has waited longest without a slot goes first (of
  those served until the same time, the one with the shorter turn), so they
  take turns: 8 such peers and 4 slots are all served within two rotations.
  A refused peer must ask again within ``interest_timeout`` to be counted.
- One optimistic slot besides: every ``optimistic_every`` seconds it goes to
  a random interested peer without a regular slot, a newcomer (first seen
  less than ``optimistic_every`` ago) :data:`NEWCOMER_WEIGHT` times as
  likely, as in BitTorrent: it lets a peer with nothing to offer yet earn
  its first pieces, and lets us find better partners.  When it is empty it
  goes at once to the next choked peer that asks (or, at a tick that freed
  it, to a random waiting one).  Slots freed at a tick are filled in the same
  order as at a rotation.
- A peer that has not asked for ``interest_timeout`` seconds is no longer
  interested and loses its slot (checked in every ``tick``, and in
  ``allowed`` when all regular slots look taken).
- So at most ``slots + 1`` peers are unchoked.  Free riders get the
  optimistic slot and any spare regular ones, but when slots are contested
  the uploaders win.
- Memory is bounded: a peer not seen (asking, or sending us data) for
  ``forget_after`` seconds (10 rotations by default) is forgotten, and the
  table holds at most ``max_peers``; a new peer beyond that evicts the
  least recently seen one that holds no slot.

Cost: ``allowed``, ``received_from``, ``forget`` O(1) (O(slots)
when all slots are taken); ``tick`` O(slots) plus, at a rotation or when it
frees a slot, O(p log p) for the p known peers.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable

#: A newcomer is this many times as likely as others to get the optimistic slot (as in BitTorrent).
NEWCOMER_WEIGHT = 3
#: A peer not seen for this many rotations is forgotten.
FORGET_ROTATIONS = 10
#: The most peers the table holds.
MAX_PEERS = 4096


@dataclass
class _Peer:
    first_seen: float
    #: Last asked us or sent us data: the table is kept in this order.
    last_seen: float
    #: Until when it last held a slot (first_seen if never): who waited longest goes first.
    served: float
    #: When it last got a slot: among peers served until the same time, the shorter turn goes first.
    granted: float = -math.inf
    last_asked: float = -math.inf
    #: Bytes it sent us since the last rotation: its tit-for-tat credit.
    received: int = 0


class Choker:
    """Who may download from us now: a few regular slots by tit-for-tat, rotated; one optimistic slot."""

    def __init__(
        self,
        slots: int,
        rng: random.Random,
        *,
        rotate_every: float = 10.0,
        optimistic_every: float = 30.0,
        interest_timeout: float = 5.0,
        forget_after: float | None = None,
        max_peers: int = MAX_PEERS,
    ) -> None:
        if slots < 0:
            raise ValueError(f"slots must be >= 0, not {slots}")
        # Room for every slot holder and one more: a newcomer can always enter.
        if max_peers < slots + 2:
            raise ValueError(f"max_peers must be >= slots + 2, not {max_peers}")
        self.slots = slots
        self.rng = rng
        self.rotate_every = rotate_every
        self.optimistic_every = optimistic_every
        self.interest_timeout = interest_timeout
        self.forget_after = FORGET_ROTATIONS * rotate_every if forget_after is None else forget_after
        self.max_peers = max_peers
        #: Least recently seen first.
        self._peers: OrderedDict[Hashable, _Peer] = OrderedDict()
        self._regular: set[Hashable] = set()
        self._optimistic: Hashable | None = None
        #: When the regular (optimistic) slots last rotated; None until we are first told the time.
        self._rotated_at: float | None = None
        self._optimistic_at = 0.0
        self._now = -math.inf
        #: A slot holder was forgotten: the next tick fills its slot.
        self._vacated = False

    # ---- what the node tells us
    def allowed(self, peer: Hashable, now: float) -> bool:
        """The peer asks for blocks now (so it is interested): may it have them?"""
        self._clock(now)
        p = self._see(peer, now)
        p.last_asked = now
        if peer in self._regular or peer == self._optimistic:
            return True
        if len(self._regular) >= self.slots and self._drop_uninterested(now):
            self._vacated = True  # holders that stopped asking between ticks: the next tick fills what is left
        if len(self._regular) < self.slots:
            self._regular.add(peer)
            p.granted = now
            return True
        if self._optimistic is None:
            self._set_optimistic(peer, now)
            return True
        return False

    def received_from(self, peer: Hashable, nbytes: int) -> None:
        """We downloaded *nbytes* from the peer: credit for the next rotation."""
        p = self._see(peer, self._now)
        p.received += nbytes

    def forget(self, peer: Hashable) -> None:
        """The peer is gone: its slot (if any) is free for the next asker."""
        self._peers.pop(peer, None)
        if peer in self._regular:
            self._regular.discard(peer)
            self._vacated = True
        if self.is_optimistic(peer):
            self._optimistic = None
            self._vacated = True

    def tick(self, now: float) -> None:
        """Drop the uninterested; rotate the regular and optimistic slots when due; forget the long gone."""
        self._clock(now)
        assert self._rotated_at is not None
        self._forget_stale(now)
        vacated = self._drop_uninterested(now) or self._vacated
        self._vacated = False
        if now - self._rotated_at >= self.rotate_every:
            self._rotate(now)
            vacated = True
        if now - self._optimistic_at >= self.optimistic_every:
            self._rotate_optimistic(now)
        if vacated:
            # Otherwise any free slot went to the first peer that asked (allowed).
            self._fill(now)

    # ---- what we answer
    @property
    def unchoked(self) -> frozenset[Hashable]:
        """The peers that may download from us: the regular slots and the optimistic one."""
        if self._optimistic is None:
            return frozenset(self._regular)
        return frozenset(self._regular | {self._optimistic})

    @property
    def regular(self) -> frozenset[Hashable]:
        return frozenset(self._regular)

    @property
    def optimistic(self) -> Hashable | None:
        return self._optimistic

    def is_optimistic(self, peer: Hashable) -> bool:
        return self._optimistic is not None and peer == self._optimistic

    def interested(self, peer: Hashable, now: float) -> bool:
        """Has the peer asked within interest_timeout?"""
        p = self._peers.get(peer)
        return p is not None and now - p.last_asked <= self.interest_timeout

    def __len__(self) -> int:
        """Peers in the table."""
        return len(self._peers)

    # ---- decisions
    def _rotate(self, now: float) -> None:
        self._rotated_at = now
        for key in self.unchoked:
            self._peers[key].served = now
        before = self.unchoked
        self._regular = set(self._ranked(now, exclude=frozenset())[: self.slots])
        for key in self._regular - before:
            self._peers[key].granted = now
        for p in self._peers.values():
            p.received = 0
        if self._optimistic in self._regular:
            self._optimistic = None  # refilled at once by _fill

    def _rotate_optimistic(self, now: float) -> None:
        self._optimistic_at = now
        old = self._optimistic
        choices = [key for key in self._choked_interested(now) if key != old]
        if choices:
            if old is not None:
                self._peers[old].served = now
            self._set_optimistic(self._weighted(choices, now), now)

    def _fill(self, now: float) -> None:
        """Slots left free by this tick go to waiting peers, in rotation order."""
        free = self.slots - len(self._regular)
        if free > 0:
            for key in self._ranked(now, exclude=self.unchoked)[:free]:
                self._regular.add(key)
                self._peers[key].granted = now
        if self._optimistic is None:
            choices = self._choked_interested(now)
            if choices:
                self._set_optimistic(self._weighted(choices, now), now)

    def _set_optimistic(self, key: Hashable, now: float) -> None:
        self._optimistic = key
        self._optimistic_at = now
        self._peers[key].granted = now

    def _ranked(self, now: float, exclude: frozenset[Hashable]) -> list[Hashable]:
        """Interested peers, best first: most uploaded to us, then longest without a slot (random among equals)."""
        peers, random_ = self._peers, self.rng.random
        keyed = [
            (-p.received, p.served, -p.granted, random_(), i, key)
            for i, (key, p) in enumerate(peers.items())
            if now - p.last_asked <= self.interest_timeout and key not in exclude
        ]
        keyed.sort()
        return [k[-1] for k in keyed]

    def _choked_interested(self, now: float) -> list[Hashable]:
        timeout, regular = self.interest_timeout, self._regular
        return [
            key
            for key, p in self._peers.items()
            if now - p.last_asked <= timeout and key not in regular and key != self._optimistic
        ]

    def _weighted(self, choices: list[Hashable], now: float) -> Hashable:
        """One of *choices* at random, newcomers NEWCOMER_WEIGHT times as likely."""
        weights = [
            NEWCOMER_WEIGHT if now - self._peers[key].first_seen < self.optimistic_every else 1 for key in choices
        ]
        return self.rng.choices(choices, weights)[0]

    # ---- bookkeeping
    def _clock(self, now: float) -> None:
        if now > self._now:
            self._now = now
        if self._rotated_at is None:
            self._rotated_at = self._optimistic_at = now

    def _see(self, peer: Hashable, now: float) -> _Peer:
        p = self._peers.get(peer)
        if p is None:
            if len(self._peers) >= self.max_peers:
                self._evict()
            p = self._peers[peer] = _Peer(first_seen=now, last_seen=now, served=now)
        else:
            p.last_seen = max(p.last_seen, now)
            self._peers.move_to_end(peer)
        return p

    def _evict(self) -> None:
        """Make room: the least recently seen peer without a slot goes."""
        for key in self._peers:
            if key not in self._regular and key != self._optimistic:
                del self._peers[key]
                return

    def _drop_uninterested(self, now: float) -> bool:
        """Slot holders that stopped asking lose their slots; were there any?"""
        timeout, peers = self.interest_timeout, self._peers
        gone = [key for key in self._regular if now - peers[key].last_asked > timeout]
        for key in gone:
            self._regular.discard(key)
            peers[key].served = now
        opt = self._optimistic
        if opt is not None and now - peers[opt].last_asked > timeout:
            peers[opt].served = now
            self._optimistic = None
            gone.append(opt)
        return bool(gone)

    def _forget_stale(self, now: float) -> None:
        peers, horizon = self._peers, now - self.forget_after
        while peers:
            key, p = next(iter(peers.items()))
            if p.last_seen >= horizon:
                return
            self.forget(key)
