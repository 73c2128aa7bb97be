"""Upload slots, driven directly: seeded randomness, the time passed in."""

from __future__ import annotations

import random
from collections import Counter
from typing import Hashable, Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptorrent.node.choker import NEWCOMER_WEIGHT, Choker


def _choker(slots: int = 4, seed: int = 0, **kw: float) -> Choker:
    return Choker(slots, random.Random(seed), **kw)  # type: ignore[arg-type]


def _ask(choker: Choker, peers: Iterable[Hashable], now: float) -> dict[Hashable, bool]:
    return {peer: choker.allowed(peer, now) for peer in peers}


def test_a_lone_peer_is_allowed_at_once_and_keeps_its_slot() -> None:
    choker = _choker()
    assert choker.allowed("a", 0.0)
    for t in range(1, 100):
        choker.tick(float(t))
        assert choker.allowed("a", float(t))
    assert choker.unchoked == {"a"} and not choker.is_optimistic("a")


def test_free_slots_at_once_then_the_optimistic_one_then_no() -> None:
    choker = _choker(slots=2)
    assert _ask(choker, "abcde", 0.0) == {"a": True, "b": True, "c": True, "d": False, "e": False}
    assert choker.regular == {"a", "b"} and choker.optimistic == "c" and choker.is_optimistic("c")
    assert choker.unchoked == {"a", "b", "c"}


def test_never_more_than_slots_plus_one_unchoked() -> None:
    choker = _choker(slots=3, seed=4)
    rng = random.Random(5)
    peers = [f"p{i}" for i in range(20)]
    t = 0.0
    while t < 300:
        for peer in rng.sample(peers, 6):
            choker.allowed(peer, t)
            choker.received_from(peer, rng.randrange(3) * 1000)
        choker.tick(t)
        assert len(choker.unchoked) <= 4
        assert choker.optimistic not in choker.regular
        t += 0.5


def test_tit_for_tat_top_uploaders_get_the_regular_slots() -> None:
    choker = _choker(slots=4)
    peers = [f"p{i}" for i in range(6)]
    _ask(choker, peers, 0.0)
    uploads = {"p5": 500, "p4": 400, "p0": 300, "p1": 200, "p2": 100, "p3": 0}
    for peer, n in uploads.items():
        choker.received_from(peer, n)
    for t in (1.0, 5.0, 9.0):
        choker.tick(t)
        _ask(choker, peers, t)
    assert choker.regular == {"p0", "p1", "p2", "p3"}  # no rotation yet
    choker.tick(10.0)
    assert choker.regular == {"p5", "p4", "p0", "p1"}
    # The optimistic one (p4) was promoted: the slot went at once to another choked peer.
    assert choker.optimistic in {"p2", "p3"} and len(choker.unchoked) == 5
    # Credit is per period: next period p2 and p3 upload the most and win.
    for peer in peers:
        choker.received_from(peer, {"p2": 900, "p3": 800}.get(peer, 10))
    _ask(choker, peers, 15.0)
    choker.tick(20.0)
    assert {"p2", "p3"} <= choker.regular


def test_uploaders_win_contested_slots_and_free_riders_get_spare_ones() -> None:
    choker = _choker(slots=4)
    riders = ["r1", "r2", "r3", "r4"]
    assert all(_ask(choker, riders, 0.0).values())
    assert _ask(choker, ["u1", "u2"], 1.0) == {"u1": True, "u2": False}  # u1 optimistic
    choker.received_from("u1", 10_000)
    choker.received_from("u2", 5_000)
    _ask(choker, riders + ["u1", "u2"], 8.0)
    choker.tick(10.0)
    assert {"u1", "u2"} <= choker.regular
    assert choker.optimistic in riders and len(choker.unchoked) == 5
    # Uncontested: two uploaders and one free rider all hold regular slots.
    quiet = _choker(slots=4)
    _ask(quiet, ["u1", "u2", "r1"], 0.0)
    quiet.received_from("u1", 1)
    quiet.received_from("u2", 1)
    _ask(quiet, ["u1", "u2", "r1"], 9.0)
    quiet.tick(10.0)
    assert quiet.regular == {"u1", "u2", "r1"} and quiet.optimistic is None


def test_received_before_asking_counts() -> None:
    choker = _choker(slots=1)
    choker.tick(0.0)
    choker.received_from("late", 1000)  # we download from it; it has not asked us yet
    _ask(choker, ["a", "b", "late"], 5.0)
    assert choker.regular == {"a"}
    choker.tick(10.0)
    assert choker.regular == {"late"}


def test_non_uploaders_take_turns() -> None:
    choker = _choker(slots=4, seed=1)
    peers = [f"p{i}" for i in range(8)]
    served: set[Hashable] = set()
    regular_union: set[Hashable] = set()
    t = 0.0
    while t <= 20.0:
        choker.tick(t)
        _ask(choker, peers, t)
        served |= choker.unchoked
        regular_union |= choker.regular
        if t == 10.0:
            # The first rotation serves first those that had no slot.
            assert len(regular_union) >= 7
        t += 1.0
    assert served == set(peers)
    # Over many rotations, the 5 slots are shared about evenly (the optimistic one is random).
    seconds: Counter[Hashable] = Counter()
    while t < 420.0:
        choker.tick(t)
        _ask(choker, peers, t)
        seconds.update(choker.unchoked)
        t += 1.0
    fair = 400 * 5 / 8
    assert all(0.75 * fair <= seconds[p] <= 1.25 * fair for p in peers), seconds


def test_eight_of_eight_within_two_rotations_for_any_seed() -> None:
    for seed in range(30):
        choker = _choker(slots=4, seed=seed)
        peers = [f"p{i}" for i in range(8)]
        served: set[Hashable] = set()
        for t in (0.0, 4.0, 8.0, 10.0, 14.0, 18.0, 20.0):
            choker.tick(t)
            _ask(choker, peers, t)
            served |= choker.unchoked
        assert served == set(peers)


def test_optimistic_slot_rotates_every_optimistic_every() -> None:
    choker = _choker(slots=2, seed=7)
    uploaders, riders = ["u1", "u2"], ["r1", "r2", "r3", "r4", "r5"]
    history: list[tuple[float, Hashable]] = []
    t = 0.0
    while t < 125.0:
        choker.tick(t)
        for peer in uploaders:
            choker.received_from(peer, 1000)
        _ask(choker, uploaders + riders, t)
        assert choker.regular == set(uploaders)
        history.append((t, choker.optimistic))
        t += 1.0
    changes = [t for (t, o), (_, prev) in zip(history[1:], history) if o != prev]
    assert changes == [30.0, 60.0, 90.0, 120.0]
    assert all(o in riders for _, o in history)


def test_newcomers_are_three_times_as_likely_to_be_optimistic() -> None:
    old, new = [f"o{i}" for i in range(5)], [f"n{i}" for i in range(5)]
    picks: Counter[str] = Counter()
    trials = 2000
    for seed in range(trials):
        choker = _choker(slots=0, seed=seed)
        _ask(choker, ["x"] + old, 0.0)  # x holds the optimistic slot
        assert choker.optimistic == "x"
        _ask(choker, ["x"] + old, 28.0)
        _ask(choker, new, 29.0)
        choker.tick(30.0)
        picks[choker.optimistic] += 1  # type: ignore[index]
    assert "x" not in picks and set(picks) == set(old + new)
    newcomer_share = sum(picks[p] for p in new) / trials
    expected = NEWCOMER_WEIGHT / (NEWCOMER_WEIGHT + 1)  # 0.75 for 5 and 5
    assert abs(newcomer_share - expected) < 0.04


def test_uninterested_peers_lose_their_slots() -> None:
    choker = _choker(slots=1, interest_timeout=5.0)
    _ask(choker, ["a", "b", "c"], 0.0)
    assert choker.regular == {"a"} and choker.optimistic == "b"
    choker.allowed("c", 3.0)
    choker.tick(5.0)
    assert choker.unchoked == {"a", "b"}
    choker.tick(5.5)
    # a and b stopped asking: c, still interested, gets the regular slot; no one else wants the optimistic one.
    assert choker.regular == {"c"} and choker.optimistic is None
    assert not choker.interested("a", 5.5) and choker.interested("c", 5.5)
    # Asking again: a spare slot at once.
    assert choker.allowed("a", 6.0) and choker.optimistic == "a"


def test_allowed_frees_the_slot_of_a_holder_that_stopped_asking() -> None:
    # No tick in between: the asker still gets the stale holder's slot.
    choker = _choker(slots=2)
    _ask(choker, ["a", "b", "c"], 0.0)
    assert choker.allowed("a", 5.0)
    assert choker.allowed("d", 6.0)
    assert choker.regular == {"a", "d"} and choker.optimistic is None


def test_forget_frees_the_slot() -> None:
    choker = _choker(slots=1)
    _ask(choker, ["a", "b", "c"], 0.0)
    choker.received_from("a", 10)
    choker.forget("a")
    choker.forget("b")
    choker.forget("nobody")
    assert choker.unchoked == frozenset() and len(choker) == 1
    assert choker.allowed("c", 1.0) and choker.regular == {"c"}


def test_long_gone_peers_are_forgotten() -> None:
    choker = _choker(slots=1, rotate_every=10.0)  # forget after 100 s
    _ask(choker, ["a", "b", "c"], 0.0)
    for t in range(0, 101, 5):
        choker.tick(float(t))
        choker.allowed("c", float(t))
    assert len(choker) == 3
    choker.tick(100.5)
    assert len(choker) == 1 and choker.unchoked == {"c"}


def test_the_table_is_bounded() -> None:
    choker = _choker(slots=2, max_peers=10)
    _ask(choker, ["a", "b", "c"], 0.0)
    for i in range(1000):
        choker.allowed(i, 1.0 + i / 1000)
        choker.received_from(("x", i), 1)
        assert len(choker) <= 10
    # The slot holders were never evicted; the newest peers are kept.
    assert choker.unchoked == {"a", "b", "c"}
    assert choker.interested(999, 2.0) and not choker.interested(0, 2.0)
    with pytest.raises(ValueError):
        Choker(4, random.Random(), max_peers=5)
    with pytest.raises(ValueError):
        Choker(-1, random.Random())


_events = st.lists(
    st.tuples(st.sampled_from(["ask", "ask", "ask", "recv", "forget", "tick"]), st.integers(0, 11),
              st.floats(0.0, 4.0), st.integers(0, 5000)),
    max_size=150,
)


@settings(max_examples=150, deadline=None)
@given(events=_events, slots=st.integers(0, 4), seed=st.integers(0, 2**32 - 1))
def test_invariants(events: list[tuple[str, int, float, int]], slots: int, seed: int) -> None:
    choker = Choker(slots, random.Random(seed), rotate_every=5.0, optimistic_every=12.0,
                    interest_timeout=3.0, max_peers=max(slots + 2, 8))
    now = 0.0
    for op, peer, dt, nbytes in events:
        now += dt
        if op == "ask":
            before = choker.regular
            had_room = len(before) < slots
            got = choker.allowed(peer, now)
            assert got == (peer in choker.unchoked)
            if had_room or peer in before:
                assert got  # a free regular slot is given at once, and kept
        elif op == "recv":
            choker.received_from(peer, nbytes)
        elif op == "forget":
            choker.forget(peer)
            assert peer not in choker.unchoked
        else:
            choker.tick(now)
            assert all(choker.interested(p, now) for p in choker.unchoked)
            # No slot stays free while an interested peer waits.
            if any(choker.interested(p, now) and p not in choker.unchoked for p in range(12)):
                assert len(choker.regular) == slots and choker.optimistic is not None
        assert len(choker.regular) <= slots
        assert len(choker.unchoked) <= slots + 1
        assert choker.optimistic is None or choker.optimistic not in choker.regular
        assert len(choker) <= choker.max_peers


def test_slots_freed_in_a_tick_go_to_the_waiting_uploaders_first() -> None:
    choker = _choker(slots=3)
    _ask(choker, "abcdefg", 0.0)
    assert choker.regular == {"a", "b", "c"} and choker.optimistic == "d"
    choker.received_from("g", 100)
    _ask(choker, "cdefg", 4.0)
    choker.tick(6.0)  # a and b stopped asking: g (an uploader) and one of e, f take their slots
    assert "g" in choker.regular and "c" in choker.regular and len(choker.regular) == 3
    assert choker.optimistic == "d"
