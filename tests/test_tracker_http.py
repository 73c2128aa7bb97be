"""TrackerHTTP over an in-memory HTTP connection (treq's StubTreq)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import treq
from treq.testing import RequestTraversalAgent
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from twisted.web.resource import Resource
from zope.interface import implementer

from p2ptorrent.tracker.http import TrackerSite, _client_host
from trackerkit import CFG, H1, H2, URL, Harness, MemoryStore, result


@pytest.fixture
def tracker(tmp_path: Path) -> Harness:
    return Harness(tmp_path / "db")


def messages(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events]


# ---------------------------------------------------------------- the happy path


def test_register_answers_the_spec_fields_and_saves(tracker: Harness) -> None:
    answer = tracker.ok({"mode": 0, "node_id": 5, "port": 9005})
    assert set(answer) == {"ok", "node_id", "token", "new", "host", "port", "interval"}
    assert (answer["node_id"], answer["new"], answer["host"], answer["port"]) == (5, True, "127.0.0.1", 9005)
    assert answer["interval"] == CFG.NODE_TIME_INTERVAL
    saved = json.loads(tracker.db()["nodes.json"])
    assert [n["node_id"] for n in saved["nodes"]] == [5]
    assert answer["token"] not in json.dumps(saved)

    again = tracker.ok({"mode": 0, "node_id": 5, "port": 9005, "token": answer["token"]})
    assert (again["new"], again["token"]) == (False, answer["token"])


def test_a_plain_heartbeat_does_not_rewrite_the_database(tracker: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tracker.join(1)
    saves: list[object] = []
    monkeypatch.setattr(tracker.store, "save", lambda *docs: saves.append(docs))
    for _ in range(5):
        tracker.ok({"mode": 0, "node_id": 1, "port": 9001, "token": token})
    assert saves == []
    tracker.ok({"mode": 0, "node_id": 1, "port": 9999, "token": token})  # moved: that is persisted
    assert len(saves) == 1


def test_full_conversation(tracker: Harness) -> None:
    a, b, c = tracker.join(1), tracker.join(2), tracker.join(3)
    assert tracker.ok({"mode": 1, "node_id": 1, "token": a, "info_hash": H1, "name": "movie.mkv", "length": 99}) == {
        "ok": True
    }
    tracker.ok({"mode": 1, "node_id": 2, "token": b, "info_hash": H1, "name": "movie.mkv", "length": 99})
    need = tracker.ok({"mode": 2, "node_id": 3, "token": c, "info_hash": H1})
    assert (need["info_hash"], need["name"]) == (H1, "movie.mkv")
    assert sorted(o["node_id"] for o in need["owners"]) == [1, 2]
    assert all(set(o) == {"node_id", "host", "port", "frequency", "partial"} for o in need["owners"])
    assert not any(o["partial"] for o in need["owners"])

    update = tracker.ok({"mode": 3, "node_id": 3, "token": c, "info_hash": H1, "uploaders": [1, 2, 7]})
    assert update == {"ok": True, "credited": [1, 2]}
    for _ in range(1000):
        assert tracker.ok({"mode": 3, "node_id": 3, "token": c, "info_hash": H1, "uploaders": [1]})["credited"] == []
    owners = tracker.ok({"mode": 2, "node_id": 3, "token": c, "info_hash": H1})["owners"]
    assert {o["node_id"]: o["frequency"] for o in owners} == {1: 1, 2: 1}

    assert tracker.ok({"mode": 4, "node_id": 1, "token": a}) == {"ok": True}
    owners = tracker.ok({"mode": 2, "node_id": 3, "token": c, "info_hash": H1})["owners"]
    assert [o["node_id"] for o in owners] == [2]
    saved = json.loads(tracker.db()["files.json"])
    assert saved["files"][0]["owners"] == [2]

    _, summary, _ = tracker.request("GET")
    assert summary == {"ok": True, "nodes": 2, "files": 1}


def test_need_of_an_unknown_file_answers_null_name(tracker: Harness) -> None:
    a = tracker.join(1)
    assert tracker.ok({"mode": 2, "node_id": 1, "token": a, "info_hash": H2}) == {
        "ok": True, "info_hash": H2, "name": None, "owners": []
    }


# ---------------------------------------------------------------- refusals


def refusal(tracker: Harness, doc: Any, status: int, reason: str) -> None:
    before_db, before_state = tracker.db(), tracker.state.snapshot()
    code, answer = tracker.post(doc)
    assert (code, answer["ok"]) == (status, False), answer
    assert reason in answer["error"]
    assert tracker.db() == before_db
    assert tracker.state.snapshot() == before_state


def test_every_kind_of_bad_request_is_a_4xx_json_with_a_reason(tracker: Harness) -> None:
    a, b = tracker.join(1), tracker.join(2)
    tracker.ok({"mode": 1, "node_id": 1, "token": a, "info_hash": H1, "name": "f", "length": 5})
    refusal(tracker, b"this is not json", 400, "not valid JSON")
    refusal(tracker, b"[1, 2, 3]", 400, "must be a JSON object")
    refusal(tracker, {"mode": 42, "node_id": 1}, 400, "unknown mode 42")
    refusal(tracker, {"mode": 0, "node_id": 3}, 400, "missing field 'port'")
    refusal(tracker, {"mode": 0, "node_id": True, "port": 9001}, 400, "got a boolean")
    refusal(tracker, {"mode": 0, "node_id": 3, "port": -1}, 400, "'port' must be 1..65535")
    refusal(tracker, {"mode": 2, "node_id": 1, "token": a, "info_hash": "xyz"}, 400, "40 lowercase hexadecimal")
    refusal(tracker, {"mode": 2, "node_id": 99, "token": a, "info_hash": H1}, 404, "unknown node 99")
    refusal(tracker, {"mode": 4, "node_id": 1, "token": b}, 403, "wrong token")
    refusal(tracker, {"mode": 4, "node_id": 1}, 403, "token is required")
    refusal(tracker, {"mode": 0, "node_id": 1, "port": 6666}, 403, "token is required")
    refusal(tracker, {"mode": 1, "node_id": 1, "token": b, "info_hash": H2, "name": "g", "length": 1}, 403, "wrong token")
    refusal(tracker, {"mode": 3, "node_id": 2, "token": b, "info_hash": H1, "uploaders": [2]}, 400, "itself")
    refusal(tracker, {"mode": 3, "node_id": 2, "token": a, "info_hash": H1, "uploaders": [1]}, 403, "wrong token")
    refusal(tracker, {"mode": 1, "node_id": 2, "token": b, "info_hash": H1, "name": "f", "length": 6}, 409, "length")


def test_a_body_larger_than_allowed_is_413(tracker: Harness) -> None:
    huge = json.dumps({"mode": 0, "node_id": 1, "port": 1, "pad": "x" * CFG.TRACKER_MAX_BODY}).encode()
    refusal(tracker, huge, 413, "larger than the 65536 bytes allowed")
    # Exactly at the limit is fine (and then refused for what it says, not for its size).
    at_limit = b" " * (CFG.TRACKER_MAX_BODY - 2) + b"{}"
    refusal(tracker, at_limit, 400, "missing field 'mode'")


@implementer(IBodyProducer)
class ChunkedBody:
    """A body of unknown length, so it is sent chunked, with no Content-Length."""

    length = UNKNOWN_LENGTH

    def __init__(self, data: bytes) -> None:
        self.data = data

    def startProducing(self, consumer: Any) -> Deferred[None]:
        for i in range(0, len(self.data), 4096):
            consumer.write(self.data[i : i + 4096])
        return succeed(None)

    def stopProducing(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


def test_a_chunked_body_is_measured_by_what_arrives(tracker: Harness) -> None:
    # StubTreq only sends bytes; its agent underneath takes any body producer.
    agent = RequestTraversalAgent(tracker.web.resource())

    def post(data: bytes) -> tuple[int, dict[str, Any]]:
        response = result(agent.request(b"POST", URL.encode(), Headers(), ChunkedBody(data)))
        assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
        return response.code, json.loads(result(treq.content(response)))

    code, answer = post(b"{" + b" " * (2 * CFG.TRACKER_MAX_BODY) + b"}")
    assert (code, answer["ok"]) == (413, False)
    assert "larger than the 65536 bytes allowed" in answer["error"]
    code, answer = post(json.dumps({"mode": 0, "node_id": 1, "port": 5}).encode())
    assert (code, answer["new"]) == (200, True)


def test_the_site_keeps_at_most_one_byte_more_than_allowed() -> None:
    site = TrackerSite(Resource(), max_body=1024)
    buffer = site.getContentFile(None)
    for _ in range(1000):
        buffer.write(b"x" * 1000)
    buffer.seek(0)
    assert len(buffer.read()) == 1025


def test_wrong_method_and_unknown_path_are_json(tracker: Harness) -> None:
    code, answer, response = tracker.request("PUT", b"{}")
    assert (code, answer["ok"]) == (405, False)
    assert "PUT" in answer["error"]
    assert response.headers.getRawHeaders(b"allow") == [b"GET, HEAD, POST"]
    code, answer, _ = tracker.request("POST", b"{}", url=URL + "announce")
    assert (code, answer["ok"]) == (404, False)
    assert "/announce" in answer["error"]


def test_an_unexpected_error_is_logged_and_answered_500_json(
    tracker: Harness, monkeypatch: pytest.MonkeyPatch, events: list[dict[str, Any]]
) -> None:
    a = tracker.join(1)

    def broken(*args: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(tracker.state, "need", broken)
    code, answer = tracker.post({"mode": 2, "node_id": 1, "token": a, "info_hash": H1})
    assert (code, answer) == (500, {"ok": False, "error": "internal error in the tracker"})
    failures = [e for e in events if e.get("log_failure") is not None]
    assert len(failures) == 1 and failures[0]["log_failure"].check(RuntimeError)


def test_a_failed_save_is_logged_answered_and_retried(
    tracker: Harness, monkeypatch: pytest.MonkeyPatch, events: list[dict[str, Any]]
) -> None:
    real_save = tracker.store.save
    monkeypatch.setattr(tracker.store, "save", lambda *docs: (_ for _ in ()).throw(OSError(28, "disk full")))
    a = tracker.join(1)  # answered: the tracker does know the node now
    assert any(e.get("log_failure") is not None and "could not save" in formatEvent(e) for e in events)
    assert tracker.db() == {}
    monkeypatch.setattr(tracker.store, "save", real_save)
    tracker.ok({"mode": 0, "node_id": 1, "port": 9001, "token": a})  # nothing new: not retried here
    tracker.web.check_liveness()  # the timer retries
    assert [n["node_id"] for n in json.loads(tracker.db()["nodes.json"])["nodes"]] == [1]


# ---------------------------------------------------------------- logging


def test_every_event_is_logged_and_tokens_never_are(tmp_path: Path, events: list[dict[str, Any]]) -> None:
    tracker = Harness(tmp_path / "db", CFG.replace(LOG_LEVEL="debug"))
    a, b = tracker.join(1), tracker.join(2)
    tracker.ok({"mode": 0, "node_id": 1, "port": 9001, "token": a})
    tracker.ok({"mode": 1, "node_id": 1, "token": a, "info_hash": H1, "name": "f", "length": 5})
    tracker.ok({"mode": 2, "node_id": 2, "token": b, "info_hash": H1})
    tracker.ok({"mode": 3, "node_id": 2, "token": b, "info_hash": H1, "uploaders": [1]})
    tracker.post({"mode": 4, "node_id": 1, "token": b})
    tracker.ok({"mode": 4, "node_id": 2, "token": b})
    tracker.clock.advance(1)
    for _ in range(CFG.TRACKER_MISSED_CHECKS + 1):
        tracker.web.check_liveness()

    text = "\n".join(messages(events))
    for expected in (
        "node 1 joined from 127.0.0.1:9001",
        "heartbeat from node 1",
        "node 1 owns " + H1,
        "node 2 needs " + H1 + ": ranking [1]",
        "credited [1]",
        "refused EXIT from 127.0.0.1 node 1: 403 wrong token for node 1",
        "node 2 left",
        "dropped node 1",
    ):
        assert expected in text, expected
    everything = text + repr(events)
    assert a not in everything and b not in everything


def test_heartbeats_are_not_even_logged_at_debug_below_the_debug_level(
    tracker: Harness, events: list[dict[str, Any]],
) -> None:
    a = tracker.join(1)
    tracker.ok({"mode": 0, "node_id": 1, "port": 9001, "token": a})
    text = "\n".join(messages(events))
    assert "node 1 joined from" in text and "heartbeat" not in text


def test_no_access_log_line_per_request() -> None:
    site = TrackerSite(Resource(), max_body=1024)
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        site.log(object())
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert seen == []


# ---------------------------------------------------------------- addresses


class FakeRequest:
    def __init__(self, address: Any) -> None:
        self.address = address

    def getClientAddress(self) -> Any:
        return self.address


def test_client_host_forms() -> None:
    assert _client_host(FakeRequest(IPv4Address("TCP", "10.1.2.3", 5))) == "10.1.2.3"  # type: ignore[arg-type]
    assert _client_host(FakeRequest(IPv6Address("TCP", "::ffff:10.1.2.3", 5))) == "10.1.2.3"  # type: ignore[arg-type]
    assert _client_host(FakeRequest(IPv6Address("TCP", "2001:DB8::1", 5))) == "2001:db8::1"  # type: ignore[arg-type]
    assert _client_host(FakeRequest(UNIXAddress(b"/tmp/sock"))) is None  # type: ignore[arg-type]


# ---------------------------------------------------------------- property


FIELD_NAMES = ["mode", "node_id", "port", "token", "info_hash", "name", "length", "uploaders", "x"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([0, 1, 2, 3, 4, 5, 65535, 65536, 2**31 - 1, 2**31, 2**53, -1]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from([H1, H1.upper(), "", "t" * 300, "\ud800"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=20,
)
requests = st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=8)
GOOD = [
    {"mode": 0, "node_id": 1, "port": 9001},
    {"mode": 1, "node_id": 1, "token": "t", "info_hash": H1, "name": "f", "length": 5},
    {"mode": 2, "node_id": 1, "token": "t", "info_hash": H1},
    {"mode": 3, "node_id": 1, "token": "t", "info_hash": H1, "uploaders": [2, 3]},
    {"mode": 4, "node_id": 1, "token": "t"},
]
# Well-formed requests with one or two fields replaced: these reach the state, not just the parser.
mutated = st.builds(
    lambda base, changes: {**base, **changes},
    st.sampled_from(GOOD),
    st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=2),
)
bodies = st.one_of(
    mutated,
    requests.map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=bodies)
def test_any_body_gets_a_json_answer_below_500(tmp_path: Path, raw: bytes | dict[str, Any]) -> None:
    tracker = Harness(tmp_path / "unused", store=MemoryStore())
    token = tracker.join(1)
    other = tracker.join(2)
    tracker.ok({"mode": 1, "node_id": 2, "token": other, "info_hash": H1, "name": "f", "length": 5})
    if isinstance(raw, dict) and raw.get("token") == "t":
        raw = {**raw, "token": token}  # the placeholder stands for node 1's real token
    code, answer = tracker.post(raw)
    assert code < 500
    assert isinstance(answer, dict) and isinstance(answer["ok"], bool)
    if code >= 400:
        assert answer["ok"] is False and answer["error"]
