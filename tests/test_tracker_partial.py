"""Partial owners (swarming): a node still downloading a file serves the pieces it verified.

The tracker side of it: OWN with ``have``/``pieces``, OWN with ``withdraw``, NEED's
``partial``, and what reaches files.json (docs/tracker-http.md).  The state is
tested without HTTP, then the same rules end to end through StubTreq.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import formatEvent

from p2ptorrent.tracker.state import (
    MAX_PIECES,
    Own,
    OwnChange,
    OwnerInfo,
    SwarmState,
    TrackerError,
    Withdraw,
    parse_request,
)
from trackerkit import CFG, H1, H2, CountingStore, Harness

# ---------------------------------------------------------------- state


def make_state(seed: int = 1) -> SwarmState:
    return SwarmState(CFG, random.Random(seed))


def join(state: SwarmState, node_id: int) -> str:
    return state.register(node_id, f"10.0.0.{node_id}", 9000 + node_id, None, 0.0).token


def owners_of(state: SwarmState, asker: int, token: str, info_hash: str = H1) -> dict[int, OwnerInfo]:
    return {o.node_id: o for o in state.need(asker, token, info_hash).owners}


def test_parse_own_with_progress_and_withdraw() -> None:
    base = {"mode": 1, "node_id": 5, "token": "t", "info_hash": H1, "name": "f", "length": 9}
    assert parse_request(json.dumps({**base, "have": 2, "pieces": 3}).encode(), CFG) == Own(5, "t", H1, "f", 9, 2, 3)
    assert parse_request(json.dumps({**base, "have": 0, "pieces": MAX_PIECES}).encode(), CFG).partial
    assert not parse_request(json.dumps({**base, "have": 3, "pieces": 3}).encode(), CFG).partial
    assert parse_request(json.dumps({**base, "withdraw": False}).encode(), CFG) == Own(5, "t", H1, "f", 9)
    withdraw = {"mode": 1, "node_id": 5, "token": "t", "info_hash": H1, "withdraw": True}
    assert parse_request(json.dumps(withdraw).encode(), CFG) == Withdraw(5, "t", H1)


def test_a_partial_owner_is_listed_with_its_progress() -> None:
    state = make_state()
    a, b, c = join(state, 1), join(state, 2), join(state, 3)
    assert state.own(1, a, H1, "f", 100) is OwnChange.NEW
    assert state.own(2, b, H1, "f", 100, have=3, pieces=10) is OwnChange.NEW_PARTIAL
    owners = owners_of(state, 3, c)
    assert owners[1] == OwnerInfo(1, "10.0.0.1", 9001, 0)
    assert owners[2] == OwnerInfo(2, "10.0.0.2", 9002, 0, True, 3, 10)
    assert owners[1].as_json() == {"node_id": 1, "host": "10.0.0.1", "port": 9001, "frequency": 0, "partial": False}
    assert owners[2].as_json() == {
        "node_id": 2, "host": "10.0.0.2", "port": 9002, "frequency": 0, "partial": True, "have": 3, "pieces": 10
    }
    assert state.owners(H1) == {1, 2} and state.progress(H1, 2) == (3, 10) and state.progress(H1, 1) is None


def test_progress_is_news_in_memory_only() -> None:
    state = make_state()
    a, c = join(state, 1), join(state, 3)
    state.own(1, a, H1, "f", 100, have=0, pieces=10)
    revision = state.revision
    assert state.own(1, a, H1, "f", 100, have=4, pieces=10) is OwnChange.PROGRESS
    assert state.own(1, a, H1, "f", 100, have=4, pieces=10) is OwnChange.PROGRESS
    assert state.revision == revision  # nothing for the I/O layer to save
    assert (owners_of(state, 3, c)[1].have, owners_of(state, 3, c)[1].pieces) == (4, 10)
    # ... but the snapshot carries it, so the next save for any reason writes it.
    assert state.snapshot()[1]["files"][0]["partial"] == [{"node_id": 1, "have": 4, "pieces": 10}]


def test_completing_and_losing_pieces_are_saved_changes() -> None:
    state = make_state()
    a, c = join(state, 1), join(state, 3)
    state.own(1, a, H1, "f", 100, have=9, pieces=10)
    revision = state.revision
    assert state.own(1, a, H1, "f", 100, have=10, pieces=10) is OwnChange.COMPLETED
    assert state.revision == revision + 1
    assert owners_of(state, 3, c)[1].partial is False and state.progress(H1, 1) is None
    assert state.own(1, a, H1, "f", 100) is OwnChange.KNOWN
    # A complete owner that announces part of the file again (it lost pieces) is partial again.
    assert state.own(1, a, H1, "f", 100, have=2, pieces=10) is OwnChange.NOW_PARTIAL
    assert state.revision == revision + 2
    assert state.own(1, a, H1, "f", 100) is OwnChange.COMPLETED  # no fields: complete


def test_withdraw_removes_the_owner_and_keeps_credits_and_frequency() -> None:
    state = make_state()
    a, b, c = join(state, 1), join(state, 2), join(state, 3)
    state.own(1, a, H1, "f", 100, have=5, pieces=10)
    state.own(2, b, H1, "f", 100)
    state.update(3, c, H1, [1])
    frequency, credits = state.owner_info(1).frequency, state.snapshot()[1]["files"][0]["credits"]  # type: ignore[union-attr]
    revision = state.revision
    assert state.withdraw(1, a, H1) is True
    assert state.revision == revision + 1
    assert state.owners(H1) == {2} and state.progress(H1, 1) is None
    assert list(owners_of(state, 3, c)) == [2]
    assert state.owner_info(1).frequency == frequency == 1  # type: ignore[union-attr]
    assert state.snapshot()[1]["files"][0]["credits"] == credits
    # Not an owner (any more), or an unknown file: nothing to do, nothing to save.
    assert state.withdraw(1, a, H1) is False
    assert state.withdraw(1, a, H2) is False
    assert state.revision == revision + 1
    # Still credited? No: UPDATE credits only current owners.
    assert state.update(2, b, H1, [1]) == []


def test_withdrawing_the_last_owner_of_an_uncredited_file_forgets_it() -> None:
    state = make_state()
    a = join(state, 1)
    state.own(1, a, H1, "f", 100, have=1, pieces=10)
    assert state.summary()["files"] == 1
    state.withdraw(1, a, H1)
    assert state.summary()["files"] == 0


def test_withdraw_needs_the_nodes_token() -> None:
    state = make_state()
    a, b = join(state, 1), join(state, 2)
    state.own(1, a, H1, "f", 100, have=1, pieces=10)
    before = state.snapshot(), state.revision
    for token in (b, None, "x"):
        with pytest.raises(TrackerError) as info:
            state.withdraw(1, token, H1)
        assert info.value.status == 403
    assert (state.snapshot(), state.revision) == before


def test_ranking_draws_partial_owners_by_frequency_too() -> None:
    state = make_state(seed=11)
    tokens = {i: join(state, i) for i in range(1, 30)}
    state.own(1, tokens[1], H1, "f", 100, have=1, pieces=10)  # partial, will be credited often
    state.own(2, tokens[2], H1, "f", 100)  # complete, never credited
    for downloader in range(3, 23):
        state.update(downloader, tokens[downloader], H1, [1])
    assert state.owner_info(1).frequency == 20  # type: ignore[union-attr]
    firsts = [state.need(29, tokens[29], H1).ranking[0] for _ in range(2000)]
    # Weight 21 against 1: the partial owner comes first about 21/22 of the time; the other keeps a chance.
    assert 0.9 < firsts.count(1) / len(firsts) < 0.99
    assert firsts.count(2) > 0


def test_restart_keeps_partial_owners_and_their_progress() -> None:
    state = make_state()
    tokens = {i: join(state, i) for i in (1, 2, 3)}
    state.own(1, tokens[1], H1, "f", 100, have=3, pieces=10)
    state.own(2, tokens[2], H1, "f", 100)
    state.own(3, tokens[3], H2, "g", 5, have=0, pieces=1)
    nodes_doc, files_doc = json.loads(json.dumps(state.snapshot()))
    again = make_state(seed=5)
    assert again.restore(nodes_doc, files_doc, 100.0) == []
    assert again.snapshot() == state.snapshot()
    assert again.progress(H1, 1) == (3, 10) and again.progress(H1, 2) is None and again.progress(H2, 3) == (0, 1)
    assert owners_of(again, 3, tokens[3])[1].partial is True
    # A partial owner's next OWN is progress, not news.
    assert again.own(1, tokens[1], H1, "f", 100, have=4, pieces=10) is OwnChange.PROGRESS


def test_an_old_files_json_without_partial_restores_complete_owners() -> None:
    state = make_state()
    node = {"node_id": 1, "host": "h", "port": 1, "frequency": 0, "token_sha256": "a" * 64}
    files_doc = {"version": 1, "files": [{"info_hash": H1, "name": "f", "length": 1, "owners": [1], "credits": []}]}
    assert state.restore({"version": 1, "nodes": [node]}, files_doc, 0.0) == []
    assert state.owners(H1) == {1} and state.progress(H1, 1) is None
    assert state.snapshot()[1]["files"][0]["partial"] == []


def test_restore_drops_partial_records_that_make_no_sense() -> None:
    state = make_state()
    nodes = [
        {"node_id": i, "host": "h", "port": i, "frequency": 0, "token_sha256": "a" * 64} for i in range(1, 8)
    ]
    partial = [
        {"node_id": 1, "have": 2, "pieces": 5},  # fine
        {"node_id": 2, "pieces": 5},  # progress missing: starts from none
        {"node_id": 3, "have": 5, "pieces": 5},  # not partial: dropped
        {"node_id": 4, "have": 1},  # no piece count: dropped
        {"node_id": 5, "have": True, "pieces": 5},  # dropped
        {"node_id": 99, "have": 1, "pieces": 5},  # not an owner: ignored, as in "owners"
        {"node_id": "6"},  # unreadable: skipped, node 6 stays a complete owner
        7,
    ]
    files_doc = {
        "version": 1,
        "files": [
            {"info_hash": H1, "name": "f", "length": 1, "owners": [1, 2, 3, 4, 5, 6, 7], "partial": partial},
            {"info_hash": H2, "name": "g", "length": 1, "owners": [1], "partial": "all of them"},
        ],
    }
    problems = state.restore({"version": 1, "nodes": nodes}, files_doc, 0.0)
    assert len(problems) == 6, problems
    assert state.owners(H1) == {1, 2, 6, 7}
    assert {i: state.progress(H1, i) for i in (1, 2, 6, 7)} == {1: (2, 5), 2: (0, 5), 6: None, 7: None}
    assert state.summary()["files"] == 1  # the H2 entry could not be read


def test_liveness_and_exit_drop_partial_owners() -> None:
    state = make_state()
    tokens = {i: join(state, i) for i in (1, 2, 3)}
    state.own(1, tokens[1], H1, "f", 100, have=1, pieces=10)
    state.own(2, tokens[2], H1, "f", 100, have=2, pieces=10)
    state.exit(1, tokens[1])
    assert state.owners(H1) == {2} and state.progress(H1, 1) is None
    for now in (10.0, 20.0, 30.0):
        state.register(3, "10.0.0.3", 9003, tokens[3], now)
        state.check_liveness(now + 1)
    assert 2 not in state
    assert state.owners(H1) == set() and state.progress(H1, 2) is None
    assert state.summary()["files"] == 0


# ---------------------------------------------------------------- over HTTP



class Tracker(Harness):
    """Nodes 1 (partial owner of H1, 3 of 10), 2 (complete owner of H1) and 3 (a downloader)."""

    def __init__(self, folder: Path) -> None:
        self.counting = CountingStore(folder)
        super().__init__(folder, store=self.counting)
        self.tokens = {i: self.join(i) for i in (1, 2, 3)}
        self.own(1, have=3, pieces=10)
        self.own(2)

    def own(self, node_id: int, info_hash: str = H1, **extra: Any) -> dict[str, Any]:
        doc = {"mode": 1, "node_id": node_id, "token": self.tokens[node_id], "info_hash": info_hash, "name": "f", "length": 50}
        return self.ok({**doc, **extra})

    def withdraw(self, node_id: int, info_hash: str = H1) -> dict[str, Any]:
        return self.ok({"mode": 1, "node_id": node_id, "token": self.tokens[node_id], "info_hash": info_hash, "withdraw": True})

    def need(self, node_id: int = 3, info_hash: str = H1) -> dict[int, dict[str, Any]]:
        answer = self.ok({"mode": 2, "node_id": node_id, "token": self.tokens[node_id], "info_hash": info_hash})
        return {o["node_id"]: o for o in answer["owners"]}

    def saved_files(self) -> list[dict[str, Any]]:
        return list(json.loads(self.db()["files.json"])["files"])

    def everything(self) -> tuple[Any, ...]:
        return self.db(), self.state.snapshot(), self.state.revision, self.counting.saves


@pytest.fixture
def tracker(tmp_path: Path) -> Tracker:
    return Tracker(tmp_path / "db")


def test_need_answers_partial_owners_with_their_progress(tracker: Tracker) -> None:
    owners = tracker.need()
    assert owners[1] == {"node_id": 1, "host": "127.0.0.1", "port": 9001, "frequency": 0, "partial": True, "have": 3, "pieces": 10}
    assert owners[2] == {"node_id": 2, "host": "127.0.0.1", "port": 9002, "frequency": 0, "partial": False}
    assert tracker.saved_files()[0]["partial"] == [{"node_id": 1, "have": 3, "pieces": 10}]


def test_progress_updates_answer_at_once_and_write_nothing(tracker: Tracker) -> None:
    db, saves = tracker.db(), tracker.counting.saves
    mtime = (tracker.folder / "files.json").stat().st_mtime_ns
    for have in (4, 5, 6, 6, 2):
        assert tracker.own(1, have=have, pieces=10) == {"ok": True}
        assert tracker.need()[1]["have"] == have
    assert tracker.db() == db and tracker.counting.saves == saves
    assert (tracker.folder / "files.json").stat().st_mtime_ns == mtime
    # The progress reaches the disk with the next save made for another reason.
    tracker.ok({"mode": 0, "node_id": 3, "port": 9999, "token": tracker.tokens[3]})  # node 3 moved
    assert tracker.counting.saves == saves + 1
    assert tracker.saved_files()[0]["partial"] == [{"node_id": 1, "have": 2, "pieces": 10}]


def test_completing_is_saved_before_the_answer(tracker: Tracker) -> None:
    saves = tracker.counting.saves
    tracker.own(1, have=10, pieces=10)
    assert tracker.counting.saves == saves + 1
    assert tracker.saved_files()[0]["partial"] == []
    assert tracker.need()[1]["partial"] is False and "have" not in tracker.need()[1]


def test_withdraw_is_saved_and_a_second_one_is_a_no_op(tracker: Tracker) -> None:
    saves = tracker.counting.saves
    assert tracker.withdraw(1) == {"ok": True}
    assert tracker.counting.saves == saves + 1
    assert list(tracker.need()) == [2]
    assert tracker.saved_files()[0]["owners"] == [2] and tracker.saved_files()[0]["partial"] == []
    before = tracker.everything()
    assert tracker.withdraw(1) == {"ok": True}
    assert tracker.withdraw(1, H2) == {"ok": True}
    assert tracker.everything() == before


def test_a_new_partial_ownership_is_saved(tracker: Tracker) -> None:
    saves = tracker.counting.saves
    tracker.own(3, H2, have=0, pieces=4)
    assert tracker.counting.saves == saves + 1
    saved = {f["info_hash"]: f for f in tracker.saved_files()}
    assert saved[H2]["owners"] == [3] and saved[H2]["partial"] == [{"node_id": 3, "have": 0, "pieces": 4}]


def test_a_restarted_tracker_still_knows_partial_owners(tracker: Tracker) -> None:
    tracker.own(1, have=7, pieces=10)  # in memory only ...
    tracker.own(3, H2, have=1, pieces=4)  # ... until this new ownership is saved
    again = Harness(tracker.folder)
    again.web.load()
    answer = again.ok({"mode": 2, "node_id": 3, "token": tracker.tokens[3], "info_hash": H1})
    owners = {o["node_id"]: o for o in answer["owners"]}
    assert (owners[1]["partial"], owners[1]["have"], owners[2]["partial"]) == (True, 7, False)


@pytest.mark.parametrize(
    "extra, reason",
    [
        ({"have": 3}, "field 'have' needs 'pieces'"),
        ({"pieces": 10}, "field 'pieces' needs 'have'"),
        ({"have": 11, "pieces": 10}, "'have' (11) cannot exceed 'pieces' (10)"),
        ({"have": -1, "pieces": 10}, "'have' must be 0..2147483648"),
        ({"have": 1, "pieces": -10}, "'pieces' must be 1..2147483648"),
        ({"have": 0, "pieces": 0}, "'pieces' must be 1..2147483648"),
        ({"have": 1, "pieces": 2**31 + 1}, "'pieces' must be 1..2147483648"),
        ({"have": "3", "pieces": 10}, "'have' must be an integer, got a string"),
        ({"have": 3.0, "pieces": 10}, "'have' must be an integer, got a number"),
        ({"have": 3, "pieces": [10]}, "'pieces' must be an integer, got an array"),
        ({"have": True, "pieces": 10}, "'have' must be an integer, got a boolean"),
        ({"have": 0, "pieces": True}, "'pieces' must be an integer, got a boolean"),
        ({"have": None, "pieces": 10}, "'have' must be an integer, got null"),
        ({"withdraw": True, "have": 3}, "'withdraw' cannot come with 'have' or 'pieces'"),
        ({"withdraw": True, "pieces": 10}, "'withdraw' cannot come with 'have' or 'pieces'"),
        ({"withdraw": True, "have": 3, "pieces": 10}, "'withdraw' cannot come with 'have' or 'pieces'"),
        ({"withdraw": "yes"}, "'withdraw' must be a boolean, got a string"),
        ({"withdraw": 1}, "'withdraw' must be a boolean, got a number"),
        ({"withdraw": None}, "'withdraw' must be a boolean, got null"),
        ({"withdraw": False, "have": 3}, "field 'have' needs 'pieces'"),
    ],
)
def test_bad_progress_or_withdraw_is_refused_and_changes_nothing(tracker: Tracker, extra: dict[str, Any], reason: str) -> None:
    before = tracker.everything()
    doc = {"mode": 1, "node_id": 1, "token": tracker.tokens[1], "info_hash": H1, "name": "f", "length": 50, **extra}
    code, answer = tracker.post(doc)
    assert (code, answer["ok"]) == (400, False), answer
    assert reason in answer["error"], answer
    assert tracker.everything() == before
    assert tracker.need()[1]["have"] == 3


def test_withdraw_without_name_or_length_and_refusals_of_others(tracker: Tracker) -> None:
    # A withdrawal needs no name or length; a wrong token or unknown node is refused as for OWN.
    doc = {"mode": 1, "node_id": 1, "token": tracker.tokens[2], "info_hash": H1, "withdraw": True}
    before = tracker.everything()
    assert tracker.post(doc)[0] == 403
    assert tracker.post({**doc, "node_id": 42})[0] == 404
    assert tracker.post({**doc, "token": tracker.tokens[1], "info_hash": "AB" * 20})[0] == 400
    assert tracker.everything() == before
    assert tracker.ok({**doc, "token": tracker.tokens[1]}) == {"ok": True}
    assert 1 not in tracker.need()


def test_partial_owners_are_logged_once_then_on_completion(tracker: Tracker, events: list[dict[str, Any]]) -> None:
    tracker.own(3, H2, have=0, pieces=4)
    for have in (1, 2, 3, 1, 3):
        tracker.own(3, H2, have=have, pieces=4)
    tracker.own(3, H2, have=4, pieces=4)
    tracker.withdraw(3, H2)
    tracker.withdraw(3, H2)
    lines = [formatEvent(e) for e in events if "owns" in formatEvent(e) or "withdrew" in formatEvent(e)]
    assert lines == [
        f"node 3 owns part of {H2} (f, 50 bytes): 0 of 4 pieces",
        f"node 3 owns {H2} (f, 50 bytes) (download completed)",
        f"node 3 withdrew {H2}",
        f"node 3 withdrew {H2} (did not own it)",
    ]
