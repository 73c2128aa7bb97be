"""The tracker at scale (issue 13): no work in proportion to every node or file per request or dropped node.

* SwarmState's index of each node's files stays right after any sequence of
  requests, checks and restarts (hypothesis, against a brute-force recount),
  and dropping a node visits only its own files.
* Liveness drops silent nodes a bounded slice at a time, giving the reactor
  back in between (on a Clock: slices are counted, never timed).
* NEED answers at most NUMWANT owners, drawn with the chances of the full
  ranking it used to answer (compared with that ranking, seeded).
* One info line of counts per liveness check instead of a line per request.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import random
from typing import Any, Iterator

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent

from p2ptorrent.config import Config, ConfigError
from p2ptorrent.tracker.http import TrackerHTTP
from p2ptorrent.tracker.state import Need, SwarmState, TrackerError, parse_request
from trackerkit import CFG, H1, Harness, MemoryStore

HASHES = [f"{i:02x}" * 20 for i in range(1, 6)]
#: The token of every owner read back by swarm_of_owners.
OWNER_TOKEN = "5a" * 16


def brute_force_problems(state: SwarmState) -> list[str]:
    """Everything the indexes claim, recounted from the files and nodes themselves."""
    problems = []
    files = state._files  # noqa: SLF001 - the index is what is checked
    nodes = state._nodes  # noqa: SLF001
    expected: dict[int, set[str]] = {}
    for info_hash, file in files.items():
        if file.empty():
            problems.append(f"{info_hash} has no owner and no credit but is kept")
        for n in set(file.owners) | file.credits.keys() | file.credited.keys():
            expected.setdefault(n, set()).add(info_hash)
        transposed: dict[int, set[int]] = {}
        for downloader, uploaders in file.credits.items():
            if not uploaders:
                problems.append(f"{info_hash}: empty credits of {downloader}")
            for uploader in uploaders:
                transposed.setdefault(uploader, set()).add(downloader)
        if transposed != file.credited:
            problems.append(f"{info_hash}: credited {file.credited} is not credits {file.credits} by uploader")
        for n in set(file.owners) | file.credits.keys() | file.credited.keys():
            if n not in nodes:
                problems.append(f"{info_hash} names node {n}, which is gone")
        for n in file.owners:
            if n in nodes and file.owners.weight(n) != 1 + nodes[n]["frequency"]:
                problems.append(f"{info_hash}: owner {n} weighs {file.owners.weight(n)}, frequency {nodes[n]['frequency']}")
        if not file.partial.keys() <= set(file.owners):
            problems.append(f"{info_hash}: partial owners {set(file.partial)} that are not owners")
    if expected != state._files_of:  # noqa: SLF001
        problems.append(f"index {state._files_of} != recount {expected}")  # noqa: SLF001
    epochs = [n["epoch"] for n in nodes.values()]
    if epochs != sorted(epochs):
        problems.append(f"nodes not in the order of their last REGISTER: {epochs}")
    hosts: dict[str, int] = {}
    for node in nodes.values():
        hosts[node["host"]] = hosts.get(node["host"], 0) + 1
    if hosts != state._per_host:  # noqa: SLF001
        problems.append(f"per-host counts {state._per_host} != {hosts}")  # noqa: SLF001
    return problems


class OldLiveness:
    """The liveness rule as it was written before (a seen flag and a missed count per node, every node visited)."""

    def __init__(self, missed_checks: int) -> None:
        self.limit = missed_checks
        self.seen: dict[int, bool] = {}
        self.missed: dict[int, int] = {}

    def heard(self, node_id: int) -> None:
        self.seen[node_id] = True

    def gone(self, node_id: int) -> None:
        self.seen.pop(node_id, None)
        self.missed.pop(node_id, None)

    def check(self) -> set[int]:
        dropped = set()
        for node_id in list(self.seen):
            if self.seen[node_id]:
                self.seen[node_id], self.missed[node_id] = False, 0
                continue
            self.missed[node_id] = self.missed.get(node_id, 0) + 1
            if self.missed[node_id] >= self.limit:
                dropped.add(node_id)
                self.gone(node_id)
        return dropped


NODES = st.integers(1, 6)
FILES = st.integers(0, 2)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("register"), NODES, st.integers(1, 3)),  # the int picks one of three addresses
        st.tuples(st.just("own"), NODES, FILES, st.booleans()),
        st.tuples(st.just("withdraw"), NODES, FILES),
        st.tuples(st.just("update"), NODES, FILES, st.lists(NODES, min_size=1, max_size=4)),
        st.tuples(st.just("exit"), NODES),
        st.tuples(st.just("check"), st.integers(1, 4)),  # the int is the slice budget
        st.tuples(st.just("restart"),),
    ),
    max_size=120,
)


@settings(max_examples=400, deadline=None)
@given(ops=steps, missed_checks=st.integers(1, 3))
# An uploader that withdrew is tied to the file by its credits alone, until its downloader goes.
@example(ops=[("own", 1, 0, False), ("update", 2, 0, [1]), ("withdraw", 1, 0), ("exit", 2)], missed_checks=1)
@example(ops=[("own", 1, 0, False), ("update", 2, 0, [1]), ("withdraw", 1, 0), ("exit", 1)], missed_checks=1)
def test_the_index_matches_a_recount_after_any_requests_checks_and_restarts(
    ops: list[tuple[Any, ...]], missed_checks: int
) -> None:
    cfg = CFG.replace(TRACKER_MISSED_CHECKS=missed_checks)
    state = SwarmState(cfg, random.Random(0))
    old = OldLiveness(missed_checks)
    tokens: dict[int, str] = {}
    now = 0.0
    for op in ops:
        now += 1.0
        kind, *args = op
        if kind == "register":
            node_id, host = args
            reg = state.register(node_id, f"10.0.0.{host}", 9000 + node_id, tokens.get(node_id) if node_id in state else None, now)
            tokens[node_id] = reg.token
            old.heard(node_id)
        elif kind == "check":
            state.start_check(now)
            dropped: list[int] = []
            while state.has_silent():
                dropped += state.drop_silent(args[0])
                assert not brute_force_problems(state)
            assert set(dropped) == old.check()
        elif kind == "restart":
            again = SwarmState(cfg, random.Random(0))
            nodes_doc, files_doc = json.loads(json.dumps(state.snapshot()))
            assert again.restore(nodes_doc, files_doc, now=now) == []
            assert again.snapshot() == state.snapshot()
            state = again
            for node_id in list(old.seen):
                old.gone(node_id)
                old.heard(node_id)  # read back: seen now, missed 0
        else:
            node_id = args[0]
            if node_id not in state:  # a node that is gone joins again first
                tokens[node_id] = state.register(node_id, "10.0.0.1", 9000 + node_id, None, now).token
                old.heard(node_id)
            token = tokens[node_id]
            if kind == "own":
                have = 1 if args[2] else None
                state.own(node_id, token, HASHES[args[1]], "f", 10, have, 2 if have else None)
            elif kind == "withdraw":
                state.withdraw(node_id, token, HASHES[args[1]])
            elif kind == "update":
                try:
                    state.update(node_id, token, HASHES[args[1]], args[2])
                except TrackerError as e:
                    assert e.status == 400 and node_id in args[2]  # crediting oneself
            else:
                state.exit(node_id, token)
                old.gone(node_id)
        assert brute_force_problems(state) == [], op
        assert set(old.seen) == set(state.node_ids())


class CountingDict(dict[str, Any]):
    """A dict that counts the keys looked up or walked over."""

    visits = 0

    def __getitem__(self, key: Any) -> Any:
        self.visits += 1
        return super().__getitem__(key)

    def __iter__(self) -> Iterator[Any]:
        self.visits += len(self)
        return super().__iter__()

    def get(self, key: Any, default: Any = None) -> Any:
        self.visits += 1
        return super().get(key, default)


def test_dropping_a_node_visits_its_own_files_only() -> None:
    state = SwarmState(CFG, random.Random(1))
    tokens = {i: state.register(i, "10.0.0.1", 9000 + i, None, 0.0).token for i in (1, 2, 3)}
    many = [f"{i:040x}" for i in range(20_000)]
    for info_hash in many:
        state.own(2, tokens[2], info_hash, "f", 1)
    for info_hash in many[:3]:
        state.own(1, tokens[1], info_hash, "f", 1)
    state.update(3, tokens[3], many[0], [1, 2])  # node 1 credited, and node 2 beside it
    state._files = CountingDict(state._files)  # noqa: SLF001 - counting the visits
    state.exit(1, tokens[1])
    assert state._files.visits <= 3  # noqa: SLF001 - its three files, not 20 000
    assert state.owners(many[0]) == {2} and state.summary() == {"nodes": 2, "files": 20_000}
    assert brute_force_problems(state) == []


def test_nodes_add_nothing_to_a_full_garbage_collection() -> None:
    """A full collection visits every tracked object: 100k node objects made each one take 100 ms or more, a
    stall of every request in flight.  The node records hold only numbers and strings, so the collector never
    tracks them, whether they joined, heartbeated, moved, were credited or were read back."""
    state = SwarmState(CFG, random.Random(1))
    tokens = {i: state.register(i, "10.0.0.1", 9000 + i, None, 0.0).token for i in (1, 2, 3)}
    state.register(2, "10.0.0.1", 9002, tokens[2], 1.0)
    state.register(3, "10.0.0.2", 7000, tokens[3], 1.0)
    state.own(1, tokens[1], HASHES[0], "f", 1)
    state.update(2, tokens[2], HASHES[0], [1])
    nodes = state._nodes  # noqa: SLF001 - the records themselves are what is checked
    assert len(nodes) == 3 and not any(gc.is_tracked(n) for n in nodes.values())
    again = SwarmState(CFG, random.Random(1))
    again.restore(*state.snapshot(), now=2.0)
    assert len(again._nodes) == 3  # noqa: SLF001
    assert not any(gc.is_tracked(n) for n in again._nodes.values())  # noqa: SLF001


# ---------------------------------------------------------------- liveness in slices


def next_turn(clock: Clock) -> bool:
    """Run one call due now; Clock.advance(0) would run every call it schedules as well, as one turn."""
    due = [c for c in clock.calls if c.getTime() <= clock.seconds()]
    if not due:
        return False
    call = min(due, key=lambda c: c.getTime())
    clock.calls.remove(call)
    call.called = 1
    call.func(*call.args, **call.kw)
    return True


def test_ten_thousand_silent_nodes_are_dropped_a_bounded_slice_per_turn(events: list[dict[str, Any]]) -> None:
    slice_ = 1000
    cfg = CFG.replace(TRACKER_DROP_SLICE=slice_)
    clock = Clock()
    state = SwarmState(cfg, random.Random(1))
    web = TrackerHTTP(state, MemoryStore(), clock, cfg)
    tokens = {}
    for i in range(1, 10_001):
        tokens[i] = state.register(i, f"10.{i >> 8 & 255}.{i & 255}.1", 9000, None, 0.0).token
        if i % 2:
            state.own(i, tokens[i], HASHES[i % 5], "f", 1)  # cost 2 to drop, the others cost 1
    keeper = 9_999  # among the last to be dropped: it joined second to last
    for _ in range(cfg.TRACKER_MISSED_CHECKS):
        clock.advance(cfg.TRACKER_TIME_INTERVAL)
        web.check_liveness()
        assert not clock.getDelayedCalls() and state.summary()["nodes"] == 10_000
    clock.advance(cfg.TRACKER_TIME_INTERVAL)
    left = set(state.node_ids())
    web.check_liveness()  # the first slice runs in the check's own turn
    slices: list[set[int]] = []
    while True:
        slices.append(left - set(state.node_ids()))
        left = set(state.node_ids())
        if len(slices) == 3:
            # Between two slices the keeper heartbeats: the slices to come must not drop it.
            assert keeper in state
            state.register(keeper, "10.39.15.1", 9000, tokens[keeper], clock.seconds())
            # A check that comes while slices still run does not start a second run of them.
            web.check_liveness()
            assert len(clock.getDelayedCalls()) == 1
        if not next_turn(clock):
            break
    # Each slice drops at most TRACKER_DROP_SLICE of work: a node costs 1, plus 1 for its file.
    costs = [sum(1 + i % 2 for i in dropped) for dropped in slices]
    assert max(costs) <= slice_ and min(costs[:-1]) >= slice_ - 1
    assert sum(costs) == 3 * 5_000 - 2 and len(slices) == 16
    assert state.node_ids() == [keeper] and sum(len(d) for d in slices) == 9_999
    assert state.summary()["files"] == 1  # the keeper's
    # One info line for the drops (ids capped); one line of counts; no line per node below the debug level.
    lines = [(e["log_level"], formatEvent(e)) for e in events]
    summary = [t for lv, t in lines if lv == LogLevel.info and "stopped heartbeating" in t]
    assert len(summary) == 1 and summary[0].startswith("dropped 9999 nodes that stopped heartbeating")
    assert summary[0].endswith(" and 9979 more") and len(summary[0]) < 300
    assert sum(1 for lv, t in lines if t.startswith("dropped node ")) == 0
    assert sum(1 for lv, t in lines if lv == LogLevel.info and "9999 dropped" in t) == 1


def test_the_dropped_nodes_add_up_when_every_slice_is_one_node() -> None:
    cfg = CFG.replace(TRACKER_DROP_SLICE=1, TRACKER_MISSED_CHECKS=1)
    clock = Clock()
    state = SwarmState(cfg, random.Random(1))
    web = TrackerHTTP(state, MemoryStore(), clock, cfg)
    for i in range(1, 6):
        token = state.register(i, "10.0.0.1", 9000 + i, None, 0.0).token
        for info_hash in HASHES:
            state.own(i, token, info_hash, "f", 1)  # each node costs 6: more than the budget, still one a turn
    web.check_liveness()
    web.check_liveness()
    turns = 1
    while next_turn(clock):
        turns += 1
    assert turns == 5 and state.summary() == {"nodes": 0, "files": 0}


def test_a_failing_slice_is_logged_and_the_next_check_drops_the_rest(
    monkeypatch: pytest.MonkeyPatch, events: list[dict[str, Any]]
) -> None:
    cfg = CFG.replace(TRACKER_MISSED_CHECKS=1)
    clock = Clock()
    state = SwarmState(cfg, random.Random(1))
    web = TrackerHTTP(state, MemoryStore(), clock, cfg)
    state.register(1, "10.0.0.1", 9001, None, 0.0)
    real = state.drop_silent
    monkeypatch.setattr(state, "drop_silent", lambda budget=None: (_ for _ in ()).throw(RuntimeError("bug")))
    web.check_liveness()
    web.check_liveness()
    assert 1 in state and any(e.get("log_failure") is not None for e in events)
    monkeypatch.setattr(state, "drop_silent", real)
    web.check_liveness()
    assert 1 not in state


# ---------------------------------------------------------------- NEED: a fixed number, the same chances


def test_numwant_is_parsed_and_refused_when_out_of_range() -> None:
    base = {"mode": 2, "node_id": 5, "token": "t", "info_hash": H1}
    assert parse_request(json.dumps(base).encode(), CFG) == Need(5, "t", H1, None)
    assert parse_request(json.dumps({**base, "numwant": 7}).encode(), CFG) == Need(5, "t", H1, 7)
    assert parse_request(json.dumps({**base, "numwant": CFG.NUMWANT}).encode(), CFG) == Need(5, "t", H1, CFG.NUMWANT)
    for bad, why in (
        (0, f"field 'numwant' must be 1..{CFG.NUMWANT}, got 0"),
        (CFG.NUMWANT + 1, f"field 'numwant' must be 1..{CFG.NUMWANT}, got {CFG.NUMWANT + 1}"),
        ("5", "field 'numwant' must be an integer, got a string"),
        (True, "field 'numwant' must be an integer, got a boolean"),
        (None, "field 'numwant' must be an integer, got null"),
        (2.5, "field 'numwant' must be an integer, got a number"),
    ):
        with pytest.raises(TrackerError) as info:
            parse_request(json.dumps({**base, "numwant": bad}).encode(), CFG)
        assert (info.value.status, info.value.message) == (400, why)


def test_numwant_setting_is_validated() -> None:
    assert Config().NUMWANT == 50
    with pytest.raises(ConfigError, match="NUMWANT must be at least 1, got 0"):
        CFG.replace(NUMWANT=0)
    with pytest.raises(ConfigError, match="TRACKER_DROP_SLICE must be at least 1, got 0"):
        CFG.replace(TRACKER_DROP_SLICE=0)


def swarm_of_owners(weights: dict[int, int], partial: set[int], seed: int, **changes: Any) -> tuple[SwarmState, str]:
    """Owners of H1 with upload frequency weight - 1, read back as from a database; node 0 asks."""
    cfg = CFG.replace(**changes) if changes else CFG
    state = SwarmState(cfg, random.Random(seed))
    nodes = [
        {"node_id": n, "host": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", "port": 9000,
         "frequency": w - 1, "token_sha256": hashlib.sha256(OWNER_TOKEN.encode()).hexdigest()}
        for n, w in weights.items()
    ]
    files = [{"info_hash": H1, "name": "f", "length": 1, "owners": sorted(weights),
              "partial": [{"node_id": n, "have": 1, "pieces": 2} for n in sorted(partial)]}]
    assert state.restore({"version": 1, "nodes": nodes}, {"version": 1, "files": files}, now=0.0) == []
    return state, state.register(0, "192.0.2.1", 9000, None, 0.0).token


def old_ranking(weights: dict[int, int], rng: random.Random) -> list[int]:
    """NEED's answer as it was: every owner, ranked by Efraimidis-Spirakis keys log(u) / weight."""
    keyed = [(math.log(1.0 - rng.random()) / w, n) for n, w in sorted(weights.items())]
    keyed.sort(key=lambda kn: kn[0], reverse=True)
    return [n for _, n in keyed]


def test_need_with_ten_thousand_owners_answers_numwant_of_them_or_fewer_when_asked() -> None:
    weights = {n: 1 + n % 20 for n in range(1, 10_001)}
    state, token = swarm_of_owners(weights, partial={n for n in weights if n % 4 == 0}, seed=5)
    result = state.need(0, token, H1)
    assert len(result.owners) == CFG.NUMWANT == 50 and len(set(result.ranking)) == 50
    assert all(o.frequency == weights[o.node_id] - 1 for o in result.owners)
    assert all(o.partial == (o.node_id % 4 == 0) for o in result.owners)
    assert len(state.need(0, token, H1, numwant=7).owners) == 7
    # Asking for more than NUMWANT (parse_request refuses it; a direct call is capped).
    assert len(state.need(0, token, H1, numwant=10_000).owners) == 50


def test_an_owner_asking_is_never_in_its_own_answer() -> None:
    state, token = swarm_of_owners({1: 1, 2: 50, 3: 1}, partial={2}, seed=3, NUMWANT=2)
    for _ in range(200):
        assert sorted(state.need(2, OWNER_TOKEN, H1).ranking) == [1, 3]
        assert len(state.need(1, OWNER_TOKEN, H1).ranking) == 2


def test_need_through_http_answers_numwant_owners_in_a_small_answer(tmp_path: Any) -> None:
    tracker = Harness(tmp_path / "db", CFG.replace(NUMWANT=5))
    tokens = {i: tracker.join(i) for i in range(1, 21)}
    for i in range(1, 20):
        tracker.ok({"mode": 1, "node_id": i, "token": tokens[i], "info_hash": H1, "name": "f", "length": 5})
    ask = {"mode": 2, "node_id": 20, "token": tokens[20], "info_hash": H1}
    assert len(tracker.ok(ask)["owners"]) == 5
    assert len(tracker.ok({**ask, "numwant": 2})["owners"]) == 2
    code, answer = tracker.post({**ask, "numwant": 6})
    assert (code, answer["error"]) == (400, "field 'numwant' must be 1..5, got 6")


def test_the_sample_has_the_chances_of_the_old_ranking_partial_owners_included() -> None:
    """At 10k owners: how often each class of owner is in the 50 drawn, against the old full ranking's first 50.

    Classes by weight (1 + upload frequency) and by being partial; partial owners are drawn
    with the complete ones, so a partial class must get the share of a complete class of the
    same weight.  Both sides are seeded; the bound is 5 standard deviations of the difference.
    """
    weights = {n: (1, 3, 10, 30)[n % 4] for n in range(1, 10_001)}
    partial = {n for n in weights if n % 8 >= 4}  # half of each weight class
    state, token = swarm_of_owners(weights, partial, seed=2024)

    def klass(n: int) -> tuple[int, bool]:
        return weights[n], n in partial

    runs_new, runs_old = 2000, 300
    new: dict[tuple[int, bool], int] = {}
    for _ in range(runs_new):
        for n in state.need(0, token, H1).ranking:
            new[klass(n)] = new.get(klass(n), 0) + 1
    rng = random.Random(99)
    old: dict[tuple[int, bool], int] = {}
    for _ in range(runs_old):
        for n in old_ranking(weights, rng)[:50]:
            old[klass(n)] = old.get(klass(n), 0) + 1
    for key in sorted(set(new) | set(old)):
        p_new, p_old = new.get(key, 0) / (50 * runs_new), old.get(key, 0) / (50 * runs_old)
        p = (p_new * runs_new + p_old * runs_old) / (runs_new + runs_old)
        sd = math.sqrt(p * (1 - p) / 50 * (1 / runs_new + 1 / runs_old))
        assert abs(p_new - p_old) < 5 * sd + 1e-9, (key, p_new, p_old)
    # The heavier, the likelier; a partial class as likely as the complete class of its weight.
    share = {w: (new.get((w, False), 0), new.get((w, True), 0)) for w in (1, 3, 10, 30)}
    assert share[1][0] < share[3][0] < share[10][0] < share[30][0]
    for complete, part in share.values():
        assert abs(complete - part) < 5 * math.sqrt(complete + part)
    assert share[1][0] > 0  # every owner keeps a chance


def test_the_first_place_has_the_chances_of_the_old_ranking() -> None:
    weights = {1: 1, 2: 2, 3: 5, 4: 12}
    state, token = swarm_of_owners(weights, partial={2}, seed=7, NUMWANT=2)
    runs = 20_000
    firsts: dict[int, int] = dict.fromkeys(weights, 0)
    pairs: dict[tuple[int, int], int] = {}
    for _ in range(runs):
        a, b = state.need(0, token, H1).ranking
        firsts[a] += 1
        pairs[(a, b)] = pairs.get((a, b), 0) + 1
    total = sum(weights.values())
    for n, w in weights.items():
        p = w / total
        assert abs(firsts[n] - runs * p) < 5 * math.sqrt(runs * p * (1 - p))
    # Second place given the first, as the old ranking's: w_b / (total - w_a).
    for (a, b), count in pairs.items():
        p = weights[a] / total * weights[b] / (total - weights[a])
        assert abs(count - runs * p) < 5 * math.sqrt(runs * p * (1 - p)) + 1, (a, b)


# ---------------------------------------------------------------- counts, not a line per request


def test_one_line_of_counts_per_check_and_no_info_line_for_frequent_requests(
    tmp_path: Any, events: list[dict[str, Any]]
) -> None:
    tracker = Harness(tmp_path / "db")
    a, b = tracker.join(1), tracker.join(2)  # joins: info
    tracker.ok({"mode": 1, "node_id": 1, "token": a, "info_hash": H1, "name": "f", "length": 5})  # new owner: info
    del events[:]
    for _ in range(3):
        tracker.ok({"mode": 0, "node_id": 1, "port": 9001, "token": a})
        tracker.ok({"mode": 2, "node_id": 2, "token": b, "info_hash": H1})
        tracker.ok({"mode": 1, "node_id": 2, "token": b, "info_hash": H1, "name": "f", "length": 5, "have": 1, "pieces": 3})
        tracker.ok({"mode": 1, "node_id": 1, "token": a, "info_hash": H1, "name": "f", "length": 5})  # known
    tracker.ok({"mode": 3, "node_id": 2, "token": b, "info_hash": H1, "uploaders": [1]})
    tracker.ok({"mode": 1, "node_id": 2, "token": b, "info_hash": "ee" * 20, "withdraw": True})  # did not own it
    tracker.post({"mode": 0, "node_id": 1, "port": 9001, "token": b})  # refused (403, a warning)
    info = [formatEvent(e) for e in events if e["log_level"] == LogLevel.info]
    # Becoming a partial owner is a change of ownership, and an UPDATE that credits someone ends a download
    # (once per download: rare in steady state); the progress after it, and the rest, are not.
    assert info == ["node 2 owns part of " + H1 + " (f, 5 bytes): 1 of 3 pieces",
                    "node 2 downloaded " + H1 + ": credited [1], not credited []"]
    tracker.clock.advance(22)
    tracker.web.check_liveness()
    info = [formatEvent(e) for e in events if e["log_level"] == LogLevel.info][2:]
    # Counted since the tracker started (the two joins and the first OWN too).
    assert info == [
        "in the last 22 s: 18 requests (NEED 3, OWN 7, REGISTER 6, UPDATE 1, WITHDRAW 1), 1 refused;"
        " 2 nodes, 1 files, 0 dropped; 0 BitTorrent clients in 0 torrents, 0 expired"
    ]
    tracker.clock.advance(22)
    tracker.web.check_liveness()
    assert formatEvent(events[-1]) == ("in the last 22 s: 0 requests (none), 0 refused; 2 nodes, 1 files, 0 dropped;"
                                       " 0 BitTorrent clients in 0 torrents, 0 expired")
