"""Which piece to fetch next: rarest first, random among the rarest; a few random pieces first.

Pure: it is told what we hold, what is being fetched and what the peers have,
and answers with a piece number.  Rarest first spreads the pieces that few
peers have before their holders leave, and random choice among equals keeps
leechers from all fetching the same piece.  A newcomer with nothing to share
first takes a few pieces at random (``random_first``): any piece is quicker to
get than the rarest one, and it can upload as soon as it has one.

Availability is ``seeds + count[piece]``: a seed (a peer with every piece)
raises every piece by one, which changes no order, so seeds are one counter
and never touch the pieces.

Data structures: each pickable piece (not held, not being fetched) sits in
the bucket of its count, a list with an index of positions, so moving a
piece between buckets is an O(1) swap-removal and insertion; a second such
list holds every pickable piece, for the random-first phase.  The lists are
shuffled once and each insertion swaps into a random place, which keeps every
list in uniformly random order: a walk from its start finds a random piece
of those a peer has, not the one after the longest run of pieces it lacks.

Complexity (n pieces, b buckets = the largest count + 1, at most peers + 1):

- ``have``, ``start``, ``peer_has``, ``peer_lost``, ``add_seed``,
  ``remove_seed``, ``availability``: O(1).
- ``pick(None)`` (a seed): O(1) amortised; empty buckets below the rarest
  are skipped once and remembered.
- ``pick(has)`` (a partial peer): per bucket from the rarest, up to
  :data:`SAMPLES` random draws (exactly uniform among the pieces the peer has
  there); if all miss (the peer has few of them), a walk from a random start
  to the first piece it has, about size / (hits + 1) probes, and uniform too
  as the order is random.
  A bucket in which the peer has nothing costs its full size, so the worst
  case is O(n) calls of ``has``.
"""

from __future__ import annotations

import random
from itertools import chain
from typing import Callable

#: Random draws from a bucket before walking it: a peer holding a fraction f of
#: the bucket is found by sampling with probability 1 - (1 - f) ** SAMPLES.
SAMPLES = 16

_FREE, _STARTED, _HELD = 0, 1, 2


class PiecePicker:
    """Which piece to fetch next: rarest first, random among the rarest; a few random pieces first."""

    def __init__(self, num_pieces: int, rng: random.Random, random_first: int = 4) -> None:
        if num_pieces < 0:
            raise ValueError(f"num_pieces must be >= 0, not {num_pieces}")
        self.num_pieces = num_pieces
        self.rng = rng
        self.random_first = random_first
        #: Peers with every piece, counted once rather than per piece.
        self.seeds = 0
        #: Calls of a peer's ``has`` made by pick: an operation count (tests, stats).
        self.probes = 0
        self._held = 0
        self._state = bytearray(num_pieces)
        #: Partial peers that have each piece (seeds not included).
        self._count = [0] * num_pieces
        #: _buckets[c]: the pickable pieces with count c, in random order; _pos[p]: p's index there.
        order = list(range(num_pieces))
        rng.shuffle(order)
        self._pos = [0] * num_pieces
        for i, p in enumerate(order):
            self._pos[p] = i
        self._buckets: list[list[int]] = [order]
        #: Every pickable piece, in random order; _free_pos[p]: p's index there.
        self._free = list(order)
        self._free_pos = list(self._pos)
        #: No bucket below this one holds a piece.
        self._low = 0

    # ---- our side
    def have(self, piece: int) -> None:
        """The piece verified here: never pick it again."""
        state = self._state[self._check(piece)]
        if state == _HELD:
            return
        if state == _FREE:
            self._unlist(piece)
        self._state[piece] = _HELD
        self._held += 1

    def start(self, piece: int) -> None:
        """The piece is being fetched: leave it out for good (the caller finishes it, and fetches it
        again if it fails its check)."""
        if self._state[self._check(piece)] == _FREE:
            self._unlist(piece)
            self._state[piece] = _STARTED

    @property
    def held(self) -> int:
        """Pieces verified here (have() calls that were news)."""
        return self._held

    @property
    def pickable(self) -> int:
        """Pieces neither held nor being fetched."""
        return len(self._free)

    # ---- peers' side
    def add_seed(self) -> None:
        """A peer with every piece: every availability rises by one, no order changes."""
        self.seeds += 1

    def remove_seed(self) -> None:
        """A seed left.  One not matched by add_seed is ignored (counts never go negative)."""
        if self.seeds > 0:
            self.seeds -= 1

    def peer_has(self, piece: int) -> None:
        """One more partial peer has the piece."""
        self._check(piece)
        if self._state[piece] == _FREE:
            self._bucket_remove(piece)
            self._count[piece] += 1
            self._bucket_add(piece)
        else:
            self._count[piece] += 1

    def peer_lost(self, piece: int) -> None:
        """One partial peer fewer has the piece.  A loss not matched by peer_has is ignored."""
        self._check(piece)
        if self._count[piece] == 0:
            return
        if self._state[piece] == _FREE:
            self._bucket_remove(piece)
            self._count[piece] -= 1
            self._bucket_add(piece)
        else:
            self._count[piece] -= 1

    def availability(self, piece: int) -> int:
        """How many peers have the piece: the seeds plus the partial peers that announced it."""
        return self.seeds + self._count[self._check(piece)]

    # ---- choice
    def pick(self, has: Callable[[int], bool] | None) -> int | None:
        """A piece to start fetching from one peer, which has the pieces for which *has* is true (None: all).

        Only pieces neither held nor started and that the peer has; while
        fewer than ``random_first`` are held, any of them at random, then one
        of the least available at random; None when there is none.
        """
        if not self._free:
            return None
        if self._held < self.random_first:
            return self._choose(self._free, has)
        buckets = self._buckets
        low = self._low
        while not buckets[low]:  # some bucket is non-empty: self._free is
            low += 1
        self._low = low
        for c in range(low, len(buckets)):
            bucket = buckets[c]
            if bucket:
                piece = self._choose(bucket, has)
                if piece is not None:
                    return piece
        return None

    def _choose(self, seq: list[int], has: Callable[[int], bool] | None) -> int | None:
        """A piece of *seq* that the peer has, at random; None if it has none of them."""
        n = len(seq)
        randrange = self.rng.randrange
        if has is None:
            return seq[randrange(n)]
        if n <= SAMPLES:
            # Small: look at every piece and choose exactly uniformly.
            self.probes += n
            hits = [p for p in seq if has(p)]
            return hits[randrange(len(hits))] if hits else None
        for _ in range(SAMPLES):
            piece = seq[randrange(n)]
            self.probes += 1
            if has(piece):
                return piece
        # The peer has few of these: walk to the first it has.  The order is random,
        # so that is a random one of them (not the one after the longest run of misses).
        start = randrange(n)
        for i in chain(range(start, n), range(start)):
            piece = seq[i]
            self.probes += 1
            if has(piece):
                return piece
        return None

    # ---- bookkeeping
    def _check(self, piece: int) -> int:
        # A negative index would silently wrap around in the lists below.
        if not 0 <= piece < self.num_pieces:
            raise IndexError(f"piece {piece} out of range 0..{self.num_pieces - 1}")
        return piece

    def _unlist(self, piece: int) -> None:
        self._bucket_remove(piece)
        free, pos = self._free, self._free_pos
        last = free.pop()
        if last != piece:
            i = pos[piece]
            free[i] = last
            pos[last] = i

    def _bucket_add(self, piece: int) -> None:
        c = self._count[piece]
        buckets = self._buckets
        while len(buckets) <= c:
            buckets.append([])
        self._insert(buckets[c], self._pos, piece)
        if c < self._low:
            self._low = c

    def _bucket_remove(self, piece: int) -> None:
        bucket = self._buckets[self._count[piece]]
        last = bucket.pop()
        if last != piece:
            i = self._pos[piece]
            bucket[i] = last
            self._pos[last] = i

    def _insert(self, seq: list[int], pos: list[int], piece: int) -> None:
        """Put *piece* at a random place of *seq* (its occupant moves to the end): a random order stays random."""
        i = len(seq)
        j = int(self.rng.random() * (i + 1))
        if j == i:
            seq.append(piece)
        else:
            other = seq[j]
            seq.append(other)
            pos[other] = i
            seq[j] = piece
        pos[piece] = j
