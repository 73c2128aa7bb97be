"""WeightedSet: NEED's weighted draw without replacement, checked against a plain model and by statistics."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptorrent.tracker.weighted import WeightedSet


def prefix_sums_hold(bag: WeightedSet, model: dict[int, int]) -> None:
    """The tree agrees with the model: every key's weight, the total, and what each point of the line draws."""
    assert set(bag) == set(model) and len(bag) == len(model)
    assert bag.total == sum(model.values())
    for key, weight in model.items():
        assert bag.weight(key) == weight
    # Walking the points 0..total-1 in slot order meets each key exactly weight times.
    hits: dict[int, int] = {}
    point = 0
    while point < bag.total:
        found = bag._keys[bag._find(point)]  # noqa: SLF001 - the tree's own lookup, checked against the model
        assert found is not None
        hits[found] = hits.get(found, 0) + 1
        point += 1
    assert hits == {k: w for k, w in model.items()}


operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 40), st.integers(1, 9)),
        st.tuples(st.just("discard"), st.integers(0, 40), st.just(0)),
        st.tuples(st.just("draw"), st.integers(0, 45), st.integers(0, 40)),
    ),
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(ops=operations, seed=st.integers(0, 2**32))
def test_the_set_agrees_with_a_dict_after_any_changes(ops: list[tuple[str, int, int]], seed: int) -> None:
    rng = random.Random(seed)
    bag = WeightedSet()
    model: dict[int, int] = {}
    for op, a, b in ops:
        if op == "add":
            bag.add(a, b)
            model[a] = b
        elif op == "discard":
            bag.discard(a)
            model.pop(a, None)
        else:
            drawn = bag.draw(rng, a, exclude=b)
            assert len(set(drawn)) == len(drawn)
            assert set(drawn) <= set(model) - {b}
            assert len(drawn) == min(a, len(set(model) - {b}))
        # Free slots are reused or compacted: never more than twice the keys held (plus the floor).
        assert len(bag._keys) <= max(2 * len(model) + 2, 66)  # noqa: SLF001
    prefix_sums_hold(bag, model)


def test_a_draw_changes_nothing_and_never_returns_the_excluded_key() -> None:
    bag = WeightedSet((k, 1 + k % 7) for k in range(1000))
    before = (bag._tree[:], bag.total)  # noqa: SLF001
    rng = random.Random(3)
    for _ in range(200):
        drawn = bag.draw(rng, 50, exclude=7)
        assert len(drawn) == 50 == len(set(drawn)) and 7 not in drawn
    assert (bag._tree, bag.total) == before  # noqa: SLF001
    assert sorted(bag.draw(rng, 5000)) == list(range(1000))


def test_compaction_keeps_every_key_and_weight() -> None:
    bag = WeightedSet((k, k + 1) for k in range(500))
    for k in range(0, 500, 3):
        bag.add(k, 1000 + k)
    for k in range(450):
        if k % 10:
            bag.discard(k)
    model = {k: (1000 + k if k % 3 == 0 else k + 1) for k in range(500) if k >= 450 or k % 10 == 0}
    assert len(bag._keys) < 200  # noqa: SLF001 - rebuilt: the 405 free slots are gone
    prefix_sums_hold(bag, model)


def test_each_draw_takes_a_key_with_chance_weight_over_weight_left() -> None:
    """First and second places over many draws, against the exact chances (5 standard deviations)."""
    weights = {1: 1, 2: 2, 3: 3, 4: 10, 5: 20}
    bag = WeightedSet(weights.items())
    rng = random.Random(11)
    runs = 40_000
    first: dict[int, int] = dict.fromkeys(weights, 0)
    second_after_5: dict[int, int] = dict.fromkeys(weights, 0)
    for _ in range(runs):
        a, b = bag.draw(rng, 2)
        first[a] += 1
        if a == 5:
            second_after_5[b] += 1
    total = sum(weights.values())
    for key, weight in weights.items():
        p = weight / total
        assert abs(first[key] - runs * p) < 5 * math.sqrt(runs * p * (1 - p)), (key, first)
    given_5 = first[5]
    for key, weight in weights.items():
        if key == 5:
            assert second_after_5[key] == 0
            continue
        p = weight / (total - 20)
        assert abs(second_after_5[key] - given_5 * p) < 5 * math.sqrt(given_5 * p * (1 - p)), (key, second_after_5)
