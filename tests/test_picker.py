"""The piece picker, driven directly: seeded randomness, availability set by hand."""

from __future__ import annotations

import random
from collections import Counter
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptorrent.node.picker import SAMPLES, PiecePicker


def _picker(n: int, seed: int = 0, random_first: int = 0) -> PiecePicker:
    return PiecePicker(n, random.Random(seed), random_first)


def _with_counts(counts: list[int], seed: int = 0, random_first: int = 0) -> PiecePicker:
    picker = _picker(len(counts), seed, random_first)
    for piece, c in enumerate(counts):
        for _ in range(c):
            picker.peer_has(piece)
    return picker


def _candidates(picker: PiecePicker, has: Callable[[int], bool] | None, taken: set[int]) -> list[int]:
    return [p for p in range(picker.num_pieces) if p not in taken and (has is None or has(p))]


# ---- availability
def test_availability_counts_seeds_and_peers() -> None:
    picker = _with_counts([0, 2, 1])
    assert [picker.availability(p) for p in range(3)] == [0, 2, 1]
    picker.add_seed()
    picker.add_seed()
    assert [picker.availability(p) for p in range(3)] == [2, 4, 3]
    picker.remove_seed()
    picker.peer_lost(1)
    assert [picker.availability(p) for p in range(3)] == [1, 2, 2]


def test_unmatched_losses_are_ignored() -> None:
    picker = _picker(2)
    picker.peer_lost(0)
    picker.remove_seed()
    assert picker.availability(0) == 0 and picker.seeds == 0
    picker.peer_has(0)
    assert picker.availability(0) == 1


def test_availability_changes_while_started_or_held() -> None:
    picker = _picker(4)
    picker.start(0)
    picker.have(1)
    for p in (0, 1):
        picker.peer_has(p)
        picker.peer_has(p)
        picker.peer_lost(p)
    assert picker.availability(0) == picker.availability(1) == 1
    picker.peer_has(2)
    picker.peer_has(2)
    picker.peer_has(3)
    # Counts moved on pieces out of the buckets leave the buckets right: the rarest free piece wins.
    assert {picker.pick(None) for _ in range(20)} == {3}
    picker.start(3)
    assert picker.pick(None) == 2


def test_out_of_range_pieces_raise() -> None:
    picker = _picker(3)
    for call in (picker.have, picker.start, picker.peer_has, picker.peer_lost, picker.availability):
        with pytest.raises(IndexError):
            call(3)
        with pytest.raises(IndexError):
            call(-1)
    with pytest.raises(ValueError):
        PiecePicker(-1, random.Random())


# ---- rarest first
COUNTS = [3, 1, 2, 1, 4, 2, 1, 3, 0, 5, 2, 1]


@pytest.mark.parametrize("has_set", [None, {0, 2, 4, 5, 7, 9, 10}, {1, 3, 6, 11}, {4, 9}, {0, 5, 8, 10, 11}])
def test_picks_only_the_rarest_and_every_one_of_them(has_set: set[int] | None) -> None:
    has = None if has_set is None else has_set.__contains__
    candidates = _candidates(_picker(len(COUNTS)), has, set())
    least = min(COUNTS[p] for p in candidates)
    rarest = {p for p in candidates if COUNTS[p] == least}
    seen: Counter[int] = Counter()
    for seed in range(300):
        picker = _with_counts(COUNTS, seed)
        for _ in range(3):
            seen[picker.pick(has)] += 1  # type: ignore[index]
    assert set(seen) == rarest
    # Roughly uniform among the rarest: each within half of its fair share.
    for p in rarest:
        assert seen[p] > 900 / len(rarest) / 2


def test_seeds_do_not_change_the_rarest_order() -> None:
    for seed in range(50):
        plain = _with_counts(COUNTS, seed)
        seeded = _with_counts(COUNTS, seed)
        for _ in range(7):
            seeded.add_seed()
        has = {0, 1, 2, 4, 9}.__contains__
        assert plain.pick(has) == seeded.pick(has)
        assert plain.pick(None) == seeded.pick(None)


def test_never_a_piece_the_peer_lacks() -> None:
    rng = random.Random(5)
    for seed in range(100):
        counts = [rng.randrange(6) for _ in range(60)]
        picker = _with_counts(counts, seed)
        has_set = set(rng.sample(range(60), rng.randrange(0, 10)))
        got = picker.pick(has_set.__contains__)
        if has_set:
            assert got in has_set
            assert counts[got] == min(counts[p] for p in has_set)
        else:
            assert got is None


def test_never_held_or_started_pieces() -> None:
    picker = _with_counts([0, 0, 1, 1])
    picker.have(0)
    picker.start(1)
    for _ in range(30):
        assert picker.pick(None) in (2, 3)
    assert picker.pickable == 2
    picker.start(2)
    picker.start(3)
    assert picker.pick(None) is None and picker.pickable == 0
    picker.have(1)  # a started piece verified
    picker.have(2)
    assert picker.pick(None) is None and picker.held == 3


def test_have_and_start_are_idempotent() -> None:
    picker = _picker(3)
    for _ in range(3):
        picker.have(0)
        picker.start(1)
    assert picker.held == 1 and picker.pickable == 1
    picker.have(1)  # a started piece that verified
    assert picker.held == 2 and picker.pickable == 1
    picker.start(0)  # held: starting it changes nothing
    assert picker.held == 2 and picker.pickable == 1 and picker.pick(None) == 2


def test_none_when_nothing_fits() -> None:
    assert _picker(0).pick(None) is None
    picker = _with_counts([1, 1, 1])
    assert picker.pick(lambda p: False) is None
    assert picker.pick({1}.__contains__) == 1
    picker.start(1)
    assert picker.pick({1}.__contains__) is None


def test_random_first_picks_among_all_candidates() -> None:
    counts = [0, 5, 5, 5, 5, 5]
    seen: Counter[int] = Counter()
    for seed in range(200):
        picker = _with_counts(counts, seed, random_first=2)
        seen[picker.pick(None)] += 1  # type: ignore[index]
    assert set(seen) == set(range(6))  # not only the rarest, piece 0
    # Rarest first once random_first pieces are held.
    for seed in range(50):
        picker = _with_counts(counts, seed, random_first=2)
        picker.have(3)
        picker.have(4)
        assert picker.pick(None) == 0


def test_random_first_with_a_partial_peer() -> None:
    seen: Counter[int] = Counter()
    for seed in range(200):
        picker = _with_counts([0, 1, 1, 3, 3, 3], seed, random_first=4)
        got = picker.pick({1, 3, 5}.__contains__)
        seen[got] += 1  # type: ignore[index]
    assert set(seen) == {1, 3, 5}


def test_large_sparse_buckets_still_find_the_peer_pieces() -> None:
    # 2000 pieces all equally rare; the peer has 3 of them: sampling misses, the walk finds them.
    # The bucket's order is random, so the walk finds each about as often (not the one after the longest gap).
    n = 2000
    seen: Counter[int] = Counter()
    for seed in range(300):
        picker = _picker(n, seed)
        got = picker.pick({7, 8, 1999}.__contains__)
        seen[got] += 1  # type: ignore[index]
        assert picker.probes <= SAMPLES + n
    assert set(seen) == {7, 8, 1999}
    assert min(seen.values()) > 60


def test_dense_bucket_costs_few_probes() -> None:
    # A peer with half of 100,000 equally rare pieces: found by sampling, not by scanning.
    picker = _picker(100_000, 3)
    has = bytearray(100_000)
    has[::2] = b"\x01" * 50_000
    probes = 0
    for _ in range(1000):
        picker.probes = 0
        piece = picker.pick(has.__getitem__)
        assert piece is not None and has[piece]
        picker.start(piece)
        probes += picker.probes
    assert probes < 1000 * 4


# ---- whole downloads
def test_download_from_a_seed_covers_every_piece_once() -> None:
    n = 5000
    picker = PiecePicker(n, random.Random(1))
    picker.add_seed()
    rng = random.Random(2)
    for p in range(n):
        for _ in range(rng.randrange(4)):
            picker.peer_has(p)
    got: list[int] = []
    while (piece := picker.pick(None)) is not None:
        picker.start(piece)
        got.append(piece)
        picker.have(piece)
    assert sorted(got) == list(range(n)) and picker.held == n


def test_download_from_partial_peers_with_failures() -> None:
    n, peers = 400, 6
    rng = random.Random(9)
    holdings = [bytearray(rng.random() < 0.4 for _ in range(n)) for _ in range(peers)]
    for p in range(n):
        if not any(h[p] for h in holdings):
            holdings[rng.randrange(peers)][p] = 1
    picker = PiecePicker(n, random.Random(10))
    for h in holdings:
        for p in range(n):
            if h[p]:
                picker.peer_has(p)
    done: list[int] = []
    fetching: list[int] = []
    while picker.held < n:
        for h in holdings:
            piece = picker.pick(h.__getitem__)
            if piece is not None:
                assert h[piece]
                picker.start(piece)
                fetching.append(piece)
        rng.shuffle(fetching)
        piece = fetching[-1]
        if rng.random() < 0.1:
            continue  # failed its check: fetched again, never picked a second time
        fetching.pop()
        picker.have(piece)
        done.append(piece)
    assert sorted(done) == list(range(n))


# ---- against a model
_ops = st.lists(
    st.tuples(st.sampled_from(["have", "start", "peer_has", "peer_lost", "seed", "unseed", "pick"]),
              st.integers(0, 19), st.frozensets(st.integers(0, 19)), st.booleans()),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(ops=_ops, seed=st.integers(0, 2**32 - 1), random_first=st.integers(0, 3))
def test_matches_a_model(ops: list[tuple[str, int, frozenset[int], bool]], seed: int, random_first: int) -> None:
    n = 20
    picker = PiecePicker(n, random.Random(seed), random_first)
    held: set[int] = set()
    started: set[int] = set()
    counts = [0] * n
    seeds = 0
    for op, piece, has_set, is_seed in ops:
        if op == "have":
            picker.have(piece)
            held.add(piece)
            started.discard(piece)
        elif op == "start":
            picker.start(piece)
            if piece not in held:
                started.add(piece)
        elif op == "peer_has":
            picker.peer_has(piece)
            counts[piece] += 1
        elif op == "peer_lost":
            picker.peer_lost(piece)
            counts[piece] = max(0, counts[piece] - 1)
        elif op == "seed":
            picker.add_seed()
            seeds += 1
        elif op == "unseed":
            picker.remove_seed()
            seeds = max(0, seeds - 1)
        else:
            has = None if is_seed else has_set.__contains__
            candidates = [p for p in range(n) if p not in held and p not in started and (has is None or has(p))]
            got = picker.pick(has)
            if not candidates:
                assert got is None
                continue
            assert got in candidates
            if len(held) >= random_first:
                assert counts[got] == min(counts[p] for p in candidates)
            picker.start(got)
            started.add(got)
        assert picker.held == len(held)
        assert picker.pickable == n - len(held) - len(started)
        assert all(picker.availability(p) == seeds + counts[p] for p in range(n))
