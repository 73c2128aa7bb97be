"""SwarmState and parse_request: the tracker's rules without HTTP."""

from __future__ import annotations

import json
import random
from typing import Any, Callable

import pytest
from twisted.internet.task import Clock, LoopingCall

from p2ptorrent.config import MAX_NODE_ID, Config
from p2ptorrent.tracker.state import (
    Exit,
    Need,
    Own,
    OwnChange,
    Register,
    SwarmState,
    TrackerError,
    Update,
    parse_request,
)

H1 = "11" * 20
H2 = "22" * 20
CFG = Config()


def make_state(seed: int = 1, **changes: Any) -> SwarmState:
    return SwarmState(CFG.replace(**changes) if changes else CFG, random.Random(seed))


def join(state: SwarmState, node_id: int, port: int | None = None, host: str = "10.0.0.1", now: float = 0.0) -> str:
    reg = state.register(node_id, host, port or 9000 + node_id, None, now)
    assert reg.new
    return reg.token


def refused(status: int, call: Callable[[], object], state: SwarmState | None = None) -> TrackerError:
    """Assert that *call* raises TrackerError(status) and leaves *state* untouched."""
    before = (state.snapshot(), state.revision) if state is not None else None
    with pytest.raises(TrackerError) as info:
        call()
    assert info.value.status == status, info.value
    assert info.value.message
    if state is not None:
        assert (state.snapshot(), state.revision) == before
    return info.value


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


# ---------------------------------------------------------------- parse_request


def test_parse_each_mode() -> None:
    assert parse_request(body(mode=0, node_id=5, port=9005), CFG) == Register(5, 9005, None)
    assert parse_request(body(mode=0, node_id=5, port=9005, token="t"), CFG) == Register(5, 9005, "t")
    assert parse_request(body(mode=1, node_id=5, token="t", info_hash=H1, name="a.txt", length=3), CFG) == Own(
        5, "t", H1, "a.txt", 3
    )
    assert parse_request(body(mode=2, node_id=5, token="t", info_hash=H1), CFG) == Need(5, "t", H1)
    assert parse_request(body(mode=3, node_id=5, token="t", info_hash=H1, uploaders=[1, 2, 1]), CFG) == Update(
        5, "t", H1, (1, 2)
    )
    assert parse_request(body(mode=4, node_id=5, token="t"), CFG) == Exit(5, "t")


def test_parse_follows_configured_mode_codes() -> None:
    cfg = CFG.replace(tracker_requests_mode={"REGISTER": 10, "OWN": 11, "NEED": 12, "UPDATE": 13, "EXIT": 14})
    assert parse_request(body(mode=14, node_id=1, token="t"), cfg) == Exit(1, "t")
    assert "unknown mode 4" in refused(400, lambda: parse_request(body(mode=4, node_id=1), cfg)).message


def test_parse_ignores_unknown_fields_and_allows_edges() -> None:
    req = parse_request(body(mode=0, node_id=MAX_NODE_ID, port=65535, extra=[1, {"x": None}]), CFG)
    assert req == Register(MAX_NODE_ID, 65535, None)
    assert parse_request(body(mode=1, node_id=0, token="t", info_hash=H1, name="é" * 127 + "a", length=2**53), CFG)


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"\xff\xfe{", "not UTF-8"),
        (b"", "not valid JSON"),
        (b"{mode: 0}", "not valid JSON"),
        (b'{"mode": NaN, "node_id": 1, "port": 1}', "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b"[1, 2]", "must be a JSON object, got an array"),
        (b'"hello"', "must be a JSON object, got a string"),
        (b"null", "must be a JSON object, got null"),
        (body(node_id=1, port=1), "missing field 'mode'"),
        (body(mode=9, node_id=1, port=1), "unknown mode 9"),
        (body(mode="REGISTER", node_id=1, port=1), "'mode' must be an integer"),
        (body(mode=False, node_id=1, port=1), "'mode' must be an integer, got a boolean"),
        (body(mode=0, port=1), "missing field 'node_id'"),
        (body(mode=0, node_id=1), "missing field 'port'"),
        (body(mode=0, node_id=True, port=1), "'node_id' must be an integer, got a boolean"),
        (body(mode=0, node_id=1, port=True), "'port' must be an integer, got a boolean"),
        (body(mode=0, node_id=1.0, port=1), "'node_id' must be an integer, got a number"),
        (body(mode=0, node_id=-1, port=1), "'node_id' must be 0..2147483647"),
        (body(mode=0, node_id=2**31, port=1), "'node_id' must be 0..2147483647"),
        (body(mode=0, node_id=1, port=-5), "'port' must be 1..65535"),
        (body(mode=0, node_id=1, port=0), "'port' must be 1..65535"),
        (body(mode=0, node_id=1, port=65536), "'port' must be 1..65535"),
        (body(mode=0, node_id=1, port=1, token=7), "'token' must be a string"),
        (body(mode=2, node_id=1, token="t"), "missing field 'info_hash'"),
        (body(mode=2, node_id=1, token="t", info_hash="ab" * 19), "40 lowercase hexadecimal"),
        (body(mode=2, node_id=1, token="t", info_hash="AB" * 20), "40 lowercase hexadecimal"),
        (body(mode=2, node_id=1, token="t", info_hash="zz" * 20), "40 lowercase hexadecimal"),
        (body(mode=2, node_id=1, token="t", info_hash=1234), "'info_hash' must be a string"),
        (body(mode=1, node_id=1, token="t", info_hash=H1, length=1), "missing field 'name'"),
        (body(mode=1, node_id=1, token="t", info_hash=H1, name="", length=1), "1..255 UTF-8 bytes, got 0"),
        (body(mode=1, node_id=1, token="t", info_hash=H1, name="é" * 128, length=1), "got 256"),
        (b'{"mode":1,"node_id":1,"token":"t","info_hash":"%s","name":"\\ud800","length":1}' % H1.encode(), "Unicode"),
        (body(mode=1, node_id=1, token="t", info_hash=H1, name=["a"], length=1), "'name' must be a string"),
        (body(mode=1, node_id=1, token="t", info_hash=H1, name="a"), "missing field 'length'"),
        (body(mode=1, node_id=1, token="t", info_hash=H1, name="a", length=-1), "'length' must be 0.."),
        (body(mode=1, node_id=1, token="t", info_hash=H1, name="a", length=2**53 + 1), "'length' must be 0.."),
        (body(mode=1, node_id=1, token="t", info_hash=H1, name="a", length=False), "got a boolean"),
        (body(mode=3, node_id=1, token="t", info_hash=H1), "missing field 'uploaders'"),
        (body(mode=3, node_id=1, token="t", info_hash=H1, uploaders=3), "must be an array"),
        (body(mode=3, node_id=1, token="t", info_hash=H1, uploaders=[2, "3"]), "must hold node ids"),
        (body(mode=3, node_id=1, token="t", info_hash=H1, uploaders=[2, True]), "must hold node ids"),
        (body(mode=3, node_id=1, token="t", info_hash=H1, uploaders=[-2]), "must hold node ids"),
        (body(mode=3, node_id=1, token="t", info_hash=H1, uploaders=list(range(2, 1003))), "at most 1000"),
    ],
)
def test_parse_refuses(raw: bytes, reason: str) -> None:
    error = refused(400, lambda: parse_request(raw, CFG))
    assert reason in error.message


# ---------------------------------------------------------------- tokens and identity


def test_register_gives_a_fresh_secret_token_stored_only_as_a_hash() -> None:
    state = make_state()
    a, b = join(state, 1), join(state, 2)
    assert len(a) == 32 and int(a, 16) >= 0 and a != b
    dumped = json.dumps(state.snapshot())
    assert a not in dumped and b not in dumped
    assert "token_sha256" in dumped


def test_a_joining_node_may_propose_its_token_and_send_the_join_again() -> None:
    state = make_state()
    proposal = "0123456789abcdef" * 2
    reg = state.register(1, "10.0.0.1", 9001, proposal, 0.0)
    assert (reg.new, reg.token) == (True, proposal)
    again = state.register(1, "10.0.0.1", 9001, proposal, 1.0)  # the first answer was lost
    assert (again.new, again.token) == (False, proposal)
    # A proposal that is not 32-128 lowercase hex digits is replaced by a token of the tracker's.
    for i, weak in enumerate(["t", "0" * 31, "AB" * 16, "g" * 32, "0" * 129, ""], start=2):
        reg = state.register(i, "10.0.0.1", 9000 + i, weak, 0.0)
        assert reg.new and reg.token != weak and len(reg.token) == 32


def test_heartbeat_with_the_token_changes_nothing_persisted() -> None:
    state = make_state()
    token = join(state, 1, port=9001)
    revision = state.revision
    reg = state.register(1, "10.0.0.1", 9001, token, 5.0)
    assert (reg.new, reg.token, reg.port) == (False, token, 9001)
    assert state.revision == revision


def test_heartbeat_from_a_new_address_is_persisted() -> None:
    state = make_state()
    token = join(state, 1, port=9001)
    revision = state.revision
    state.register(1, "10.0.0.9", 9100, token, 5.0)
    assert state.revision > revision
    assert state.owner_info(1) is not None
    assert (state.owner_info(1).host, state.owner_info(1).port) == ("10.0.0.9", 9100)  # type: ignore[union-attr]


def test_known_live_node_without_or_with_wrong_token_is_403() -> None:
    state = make_state()
    join(state, 1)
    refused(403, lambda: state.register(1, "10.6.6.6", 6666, None, 1.0), state)
    refused(403, lambda: state.register(1, "10.6.6.6", 6666, "0" * 32, 1.0), state)


def test_no_node_can_act_as_another() -> None:
    state = make_state()
    a = join(state, 1)
    b = join(state, 2)
    state.own(1, a, H1, "f", 10)
    state.own(2, b, H1, "f", 10)
    for token in (b, None, "", a.upper()):
        refused(403, lambda t=token: state.own(1, t, H2, "g", 1), state)
        refused(403, lambda t=token: state.need(1, t, H1), state)
        refused(403, lambda t=token: state.update(1, t, H1, [2]), state)
        refused(403, lambda t=token: state.exit(1, t), state)
    assert 1 in state


def test_unknown_node_is_404() -> None:
    state = make_state()
    for call in (
        lambda: state.own(7, "t", H1, "f", 1),
        lambda: state.need(7, "t", H1),
        lambda: state.update(7, "t", H1, [1]),
        lambda: state.exit(7, "t"),
    ):
        assert "unknown node 7" in refused(404, call, state).message


# ---------------------------------------------------------------- OWN and NEED


def test_own_is_idempotent() -> None:
    state = make_state()
    a = join(state, 1)
    assert state.own(1, a, H1, "f", 10) is OwnChange.NEW
    revision = state.revision
    assert state.own(1, a, H1, "f", 10) is OwnChange.KNOWN
    assert state.own(1, a, H1, "f", 10, have=7, pieces=7) is OwnChange.KNOWN  # all pieces: complete
    assert state.revision == revision
    assert state.owners(H1) == {1}


def test_own_with_a_different_length_is_a_conflict() -> None:
    state = make_state()
    a, b = join(state, 1), join(state, 2)
    state.own(1, a, H1, "f", 10)
    refused(409, lambda: state.own(2, b, H1, "f", 11), state)
    assert state.own(2, b, H1, "other-name", 10)  # a name is not part of the identity
    assert state.need(1, a, H1).name == "f"


def test_need_lists_live_owners_but_never_the_asker() -> None:
    state = make_state()
    tokens = {i: join(state, i, host=f"10.0.0.{i}") for i in range(1, 6)}
    for i in (1, 2, 3, 4):
        state.own(i, tokens[i], H1, "f", 10)
    result = state.need(1, tokens[1], H1)
    assert sorted(result.ranking) == [2, 3, 4]
    assert {(o.node_id, o.host, o.port) for o in result.owners} == {(i, f"10.0.0.{i}", 9000 + i) for i in (2, 3, 4)}
    assert result.name == "f"
    state.exit(3, tokens[3])
    for _ in range(50):
        assert 3 not in state.need(5, tokens[5], H1).ranking


def test_need_of_an_unknown_file_is_empty() -> None:
    state = make_state()
    a = join(state, 1)
    result = state.need(1, a, H2)
    assert (result.name, result.owners) == (None, [])


def test_ranking_favours_frequency_but_every_owner_keeps_a_chance() -> None:
    state = make_state(seed=2024)
    tokens = {i: join(state, i) for i in range(1, 40)}
    # Node 1 (uploader, will have frequency 9) and node 2 (frequency 0) own the file.
    state.own(1, tokens[1], H1, "f", 10)
    state.own(2, tokens[2], H1, "f", 10)
    for downloader in range(30, 39):
        assert state.update(downloader, tokens[downloader], H1, [1]) == [1]
    assert state.owner_info(1).frequency == 9  # type: ignore[union-attr]
    first = {1: 0, 2: 0}
    draws = 4000
    for _ in range(draws):
        ranking = state.need(39, tokens[39], H1).ranking
        assert sorted(ranking) == [1, 2]
        first[ranking[0]] += 1
    # Weights 10 and 1: node 2 comes first with probability 1/11 (about 364 of 4000).
    assert first[1] > first[2]
    assert 250 < first[2] < 480


def test_ranking_is_reproducible_from_the_seed() -> None:
    def rankings(seed: int) -> list[list[int]]:
        state = make_state(seed=seed)
        tokens = {i: join(state, i) for i in range(1, 8)}
        for i in range(1, 7):
            state.own(i, tokens[i], H1, "f", 1)
        return [state.need(7, tokens[7], H1).ranking for _ in range(20)]

    assert rankings(5) == rankings(5)
    assert rankings(5) != rankings(6)


# ---------------------------------------------------------------- UPDATE


def test_update_credits_each_uploader_once_per_downloader_and_file() -> None:
    state = make_state()
    tokens = {i: join(state, i) for i in (1, 2, 3)}
    state.own(1, tokens[1], H1, "f", 10)
    state.own(2, tokens[2], H1, "f", 10)
    assert state.update(3, tokens[3], H1, [1, 2]) == [1, 2]
    for _ in range(1000):
        assert state.update(3, tokens[3], H1, [1, 1, 2]) == []
    assert state.owner_info(1).frequency == 1  # type: ignore[union-attr]
    assert state.owner_info(2).frequency == 1  # type: ignore[union-attr]
    # Another downloader is another credit.
    assert state.update(2, tokens[2], H1, [1]) == [1]
    assert state.owner_info(1).frequency == 2  # type: ignore[union-attr]


def test_update_credits_only_live_owners_of_that_file() -> None:
    state = make_state()
    tokens = {i: join(state, i) for i in (1, 2, 3)}
    state.own(1, tokens[1], H1, "f", 10)
    state.own(2, tokens[2], H2, "g", 10)
    assert state.update(3, tokens[3], H1, [2, 1, 99]) == [1]
    assert state.owner_info(2).frequency == 0  # type: ignore[union-attr]
    revision = state.revision
    assert state.update(3, tokens[3], "33" * 20, [1]) == []
    assert state.revision == revision


def test_self_credit_is_refused() -> None:
    state = make_state()
    tokens = {i: join(state, i) for i in (1, 2)}
    state.own(1, tokens[1], H1, "f", 10)
    state.own(2, tokens[2], H1, "f", 10)
    assert "itself" in refused(400, lambda: state.update(1, tokens[1], H1, [2, 1]), state).message
    assert state.owner_info(2).frequency == 0  # type: ignore[union-attr]


# ---------------------------------------------------------------- EXIT and liveness


def test_exit_forgets_node_ownerships_and_credits() -> None:
    state = make_state()
    tokens = {i: join(state, i) for i in (1, 2, 3)}
    state.own(1, tokens[1], H1, "f", 10)
    state.own(2, tokens[2], H1, "f", 10)
    state.update(3, tokens[3], H1, [1])
    state.exit(3, tokens[3])
    assert 3 not in state
    nodes_doc, files_doc = state.snapshot()
    assert [f["credits"] for f in files_doc["files"]] == [[]]
    state.exit(1, tokens[1])
    assert state.owners(H1) == {2}
    assert state.owner_info(1) is None
    # The frequency it had earned left with it; its id is free again.
    assert state.register(1, "10.0.0.1", 9001, tokens[1], 1.0).new is True
    assert state.owner_info(1).frequency == 0  # type: ignore[union-attr]


def test_last_owner_leaving_forgets_the_file() -> None:
    state = make_state()
    a = join(state, 1)
    b = join(state, 2)
    state.own(1, a, H1, "f", 10)
    state.exit(1, a)
    assert state.summary() == {"nodes": 1, "files": 0}
    assert state.need(2, b, H1).name is None


class Swarm:
    """Drives a SwarmState on a Clock: the tracker's checks plus nodes' heartbeats."""

    def __init__(self, state: SwarmState, interval: float) -> None:
        self.state = state
        self.clock = Clock()
        self.dropped: dict[int, float] = {}
        self.tokens: dict[int, str] = {}
        self.last_beat: dict[int, float] = {}
        loop = LoopingCall(self.check)
        loop.clock = self.clock
        loop.start(interval, now=True)

    def check(self) -> None:
        for node_id in self.state.check_liveness(self.clock.seconds()):
            self.dropped[node_id] = self.clock.seconds()

    def beat(self, node_id: int) -> None:
        reg = self.state.register(node_id, "10.0.0.1", 9000 + node_id, self.tokens.get(node_id), self.clock.seconds())
        self.tokens[node_id] = reg.token
        self.last_beat[node_id] = self.clock.seconds()

    def beat_at(self, node_id: int, *times: float) -> None:
        for t in times:
            self.clock.callLater(t - self.clock.seconds(), self.beat, node_id)

    def run_until(self, end: float, step: float = 0.1) -> None:
        # Small steps: Clock.advance runs every due call with seconds() already at the end.
        while self.clock.seconds() < end - 1e-9:
            self.clock.advance(step)


def test_a_node_heartbeating_on_time_survives_many_checks() -> None:
    swarm = Swarm(make_state(), CFG.TRACKER_TIME_INTERVAL)
    swarm.clock.advance(0.5)
    swarm.beat(1)
    beats = LoopingCall(swarm.beat, 1)
    beats.clock = swarm.clock
    beats.start(CFG.NODE_TIME_INTERVAL, now=False)
    swarm.run_until(2000)
    assert swarm.dropped == {} and 1 in swarm.state


def test_a_heartbeat_3_s_late_is_tolerated_with_two_missed_checks() -> None:
    # Checks at 0, 22, 44, 66...; heartbeats due at 1.9 and 21.9, then 41.9 arrives 3 s late
    # at 44.9: the window (22, 44] has no REGISTER at all.
    swarm = Swarm(make_state(), CFG.TRACKER_TIME_INTERVAL)
    swarm.beat_at(1, 1.9, 21.9, 44.9, 61.9, 81.9, 101.9, 121.9)
    swarm.run_until(140)
    assert swarm.dropped == {}


def test_with_one_allowed_check_the_same_late_heartbeat_drops_the_node() -> None:
    swarm = Swarm(make_state(TRACKER_MISSED_CHECKS=1), CFG.TRACKER_TIME_INTERVAL)
    swarm.beat_at(1, 1.9, 21.9, 44.9)
    swarm.run_until(50)
    assert swarm.dropped == {1: pytest.approx(44.0)}


@pytest.mark.parametrize("missed_checks", [1, 2, 3])
def test_a_silent_node_is_dropped_with_its_ownerships_within_the_bound(missed_checks: int) -> None:
    interval = CFG.TRACKER_TIME_INTERVAL
    state = make_state(TRACKER_MISSED_CHECKS=missed_checks)
    swarm = Swarm(state, interval)
    swarm.beat_at(1, 3.3, 23.3, 43.3)  # then silence
    swarm.beat_at(2, 5.0)
    swarm.clock.callLater(5.5, lambda: state.own(1, swarm.tokens[1], H1, "f", 1))
    keep_alive = LoopingCall(swarm.beat, 2)
    keep_alive.clock = swarm.clock
    swarm.clock.callLater(6.0, keep_alive.start, CFG.NODE_TIME_INTERVAL)
    swarm.run_until(400)
    assert list(swarm.dropped) == [1]
    silent = swarm.dropped[1] - swarm.last_beat[1]
    # Never before missed_checks whole intervals of silence, always within one more.
    assert missed_checks * interval <= silent < (missed_checks + 1) * interval
    assert state.owners(H1) == frozenset()
    assert state.summary() == {"nodes": 1, "files": 0}


# ---------------------------------------------------------------- snapshot and restore


def test_snapshot_restore_round_trip_keeps_frequencies_and_tokens() -> None:
    state = make_state()
    tokens = {i: join(state, i) for i in (1, 2, 3)}
    state.own(1, tokens[1], H1, "f", 10)
    state.own(2, tokens[2], H1, "f", 10)
    state.update(3, tokens[3], H1, [1, 2])
    nodes_doc, files_doc = json.loads(json.dumps(state.snapshot()))

    again = make_state(seed=9)
    assert again.restore(nodes_doc, files_doc, now=500.0) == []
    assert again.snapshot() == state.snapshot()
    assert again.owner_info(1).frequency == 1  # type: ignore[union-attr]
    # The tokens still work, and the old credits still count.
    assert again.register(3, "10.0.0.1", 9003, tokens[3], 501.0).new is False
    assert again.update(3, tokens[3], H1, [1, 2]) == []
    # Restored nodes count as seen at load time: one check later they are all still here.
    assert again.check_liveness(510.0) == []
    assert again.check_liveness(532.0) == []
    again.register(3, "10.0.0.1", 9003, tokens[3], 540.0)
    assert again.check_liveness(554.0) == [1, 2]


def test_restore_skips_entries_that_make_no_sense() -> None:
    state = make_state()
    good = {"node_id": 1, "host": "h", "port": 1, "frequency": 2, "token_sha256": "a" * 64}
    nodes_doc = {
        "version": 1,
        "nodes": [good, {"node_id": "2"}, {**good, "node_id": 3, "port": 0}, {**good, "node_id": 4, "token_sha256": "x"}, 5],
    }
    files_doc = {
        "version": 1,
        "files": [
            {"info_hash": H1, "name": "f", "length": 1, "owners": [1, 3], "credits": [{"downloader": 1, "uploaders": [3]}]},
            {"info_hash": "nope", "name": "f", "length": 1, "owners": [1]},
            {"info_hash": H2, "name": "g", "length": 1, "owners": [3]},
        ],
    }
    problems = state.restore(nodes_doc, files_doc, 0.0)
    assert len(problems) == 5
    assert state.node_ids() == [1]
    assert state.owners(H1) == {1}
    assert state.summary() == {"nodes": 1, "files": 1}


def test_restore_of_empty_or_foreign_documents() -> None:
    state = make_state()
    assert state.restore({}, {}, 0.0) == []
    assert state.summary() == {"nodes": 0, "files": 0}
    problems = state.restore({"version": 99, "nodes": []}, {"files": "x"}, 0.0)
    assert len(problems) == 2
