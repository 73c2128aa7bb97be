"""Weighted draws without replacement in O(log n) each, for NEED's owners.

NEED used to rank every owner (Efraimidis-Spirakis keys, a sort): O(n log n)
per request and an answer of every owner.  Drawing the first k of that ranking
one at a time, each next key with chance ``weight / weight left``, gives them
with the same distribution (Efraimidis and Spirakis 2006, the theorem their
method rests on), and a Fenwick tree of the weights makes each draw O(log n).
"""

from __future__ import annotations

import random
from typing import Iterable, Iterator

#: Slots below which a tree is never compacted (rebuilding a tiny tree saves nothing).
_MIN_COMPACT = 64


class WeightedSet:
    """Integer keys with positive integer weights; :meth:`draw` picks distinct keys by weight.

    Keys live in slots of a Fenwick tree (1-based).  A removed key leaves a
    free slot with weight 0, reused by the next key; when more than half the
    slots are free the tree is rebuilt, so memory follows the keys held and
    every change stays amortised O(log n).
    """

    def __init__(self, items: Iterable[tuple[int, int]] = ()) -> None:
        self._slot: dict[int, int] = {}
        self._keys: list[int | None] = [None]
        self._weights: list[int] = [0]
        self._tree: list[int] = [0]
        self._free: list[int] = []
        self.total = 0
        for key, weight in items:
            self.add(key, weight)

    def __contains__(self, key: object) -> bool:
        return key in self._slot

    def __len__(self) -> int:
        return len(self._slot)

    def __iter__(self) -> Iterator[int]:
        return iter(self._slot)

    def weight(self, key: int) -> int:
        return self._weights[self._slot[key]]

    def add(self, key: int, weight: int) -> None:
        """Add a key, or change its weight if it is there."""
        if weight < 1:
            raise ValueError(f"weight must be at least 1, got {weight}")
        slot = self._slot.get(key)
        if slot is not None:
            self._change(slot, weight - self._weights[slot])
            self.total += weight - self._weights[slot]
            self._weights[slot] = weight
            return
        if self._free:
            slot = self._free.pop()
            self._keys[slot], self._weights[slot] = key, weight
            self._change(slot, weight)
        else:
            slot = self._append(key, weight)
        self._slot[key] = slot
        self.total += weight

    def discard(self, key: int) -> None:
        slot = self._slot.pop(key, None)
        if slot is None:
            return
        weight = self._weights[slot]
        self._change(slot, -weight)
        self.total -= weight
        self._keys[slot], self._weights[slot] = None, 0
        self._free.append(slot)
        if len(self._keys) > _MIN_COMPACT and 2 * len(self._free) > len(self._keys):
            self._rebuild()

    def draw(self, rng: random.Random, k: int, exclude: int | None = None) -> list[int]:
        """Up to *k* distinct keys (never *exclude*): each next one with chance weight / weight left.

        Drawn keys are taken out of the tree while drawing and put back at the
        end, so a draw costs O(k log n) and changes nothing.
        """
        taken: list[tuple[int, int]] = []
        left = self.total
        if exclude is not None and exclude in self._slot:
            slot = self._slot[exclude]
            taken.append((slot, self._weights[slot]))
            self._change(slot, -self._weights[slot])
            left -= self._weights[slot]
        drawn: list[int] = []
        try:
            while len(drawn) < k and left > 0:
                slot = self._find(rng.randrange(left))
                weight = self._weights[slot]
                self._change(slot, -weight)
                taken.append((slot, weight))
                left -= weight
                key = self._keys[slot]
                assert key is not None
                drawn.append(key)
        finally:
            for slot, weight in taken:
                self._change(slot, weight)
        return drawn

    # ---- the tree

    def _change(self, slot: int, delta: int) -> None:
        tree, size = self._tree, len(self._tree)
        while slot < size:
            tree[slot] += delta
            slot += slot & -slot

    def _append(self, key: int, weight: int) -> int:
        # tree[i] holds the weights of slots (i - lowbit(i), i]: the new slot's own weight plus
        # the nodes that cover the slots below it in that range.
        slot = len(self._tree)
        total, below, low = weight, slot - 1, slot - (slot & -slot)
        while below > low:
            total += self._tree[below]
            below -= below & -below
        self._tree.append(total)
        self._keys.append(key)
        self._weights.append(weight)
        return slot

    def _find(self, point: int) -> int:
        """The slot whose weight covers *point* (0 <= point < the weight in the tree)."""
        tree, size = self._tree, len(self._tree)
        slot, step = 0, 1 << (size - 1).bit_length()
        while step:
            nxt = slot + step
            if nxt < size and tree[nxt] <= point:
                slot = nxt
                point -= tree[nxt]
            step >>= 1
        return slot + 1

    def _rebuild(self) -> None:
        items = [(key, self._weights[slot]) for key, slot in self._slot.items()]
        self._slot, self._keys, self._weights, self._free = {}, [None], [0], []
        self._tree = [0] * (len(items) + 1)
        for slot, (key, weight) in enumerate(items, start=1):
            self._slot[key] = slot
            self._keys.append(key)
            self._weights.append(weight)
            self._tree[slot] += weight
            parent = slot + (slot & -slot)
            if parent <= len(items):
                self._tree[parent] += self._tree[slot]
