"""The tracker's web page, its read-only JSON API and its Prometheus metrics, in memory (StubTreq, Clock).

The page itself in a real browser is tests/test_tracker_page_browser.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.defer import fail
from twisted.internet.task import Clock

from p2ptorrent.config import Config
from p2ptorrent.tracker import view
from p2ptorrent.tracker.changes import apply
from p2ptorrent.tracker.events import EVENTS_KEPT, EventRing
from p2ptorrent.tracker.http import TrackerHTTP
from p2ptorrent.tracker.metrics import CONTENT_TYPE_LATEST
from p2ptorrent.tracker.sqlite_store import SqliteStore
from p2ptorrent.tracker.state import Exit, Own, Register, SwarmState
from trackerkit import CFG, H1, H2, URL, Harness, result

HOSTILE = "<script>window.__pwned=1</script>&amp;\"'.bin"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"


@pytest.fixture
def tracker(tmp_path: Path) -> Harness:
    return Harness(tmp_path / "db")


def get(tracker: Harness, path: str, accept: str | None = None) -> tuple[int, bytes, Any]:
    headers = {} if accept is None else {"Accept": accept}
    response = result(tracker.stub.get(URL.rstrip("/") + path, headers=headers))
    return response.code, result(response.content()), response


def content_type(response: Any) -> str:
    return response.headers.getRawHeaders(b"content-type")[0].decode()


def swarm(tracker: Harness) -> dict[int, str]:
    """Three nodes; node 1 owns H1 (whole), node 2 a third of it, node 3 the hostile-named H2."""
    tokens = {i: tracker.join(i) for i in (1, 2, 3)}
    tracker.ok({"mode": 1, "node_id": 1, "token": tokens[1], "info_hash": H1, "name": "movie.mkv", "length": 3 << 20})
    tracker.ok({"mode": 1, "node_id": 2, "token": tokens[2], "info_hash": H1, "name": "movie.mkv", "length": 3 << 20,
                "have": 1, "pieces": 3})
    tracker.ok({"mode": 1, "node_id": 3, "token": tokens[3], "info_hash": H2, "name": HOSTILE, "length": 1536})
    return tokens


# ---------------------------------------------------------------- content negotiation


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "text/html, application/json",
                                    "text/html;q=0.5, application/json", "text/html;q=0"])
def test_get_root_stays_todays_json_for_everyone_but_browsers(tracker: Harness, accept: str | None) -> None:
    swarm(tracker)
    code, body, response = get(tracker, "/", accept)
    assert (code, content_type(response)) == (200, "application/json")
    assert json.loads(body) == {"ok": True, "nodes": 3, "files": 2}
    assert body == b'{"ok":true,"nodes":3,"files":2}'


@pytest.mark.parametrize("accept", [BROWSER_ACCEPT, "text/html", "text/*"])
def test_get_root_answers_the_page_to_a_client_that_prefers_html(tracker: Harness, accept: str) -> None:
    swarm(tracker)
    code, body, response = get(tracker, "/", accept)
    assert (code, content_type(response)) == (200, "text/html; charset=utf-8")
    assert response.headers.getRawHeaders(b"vary") == [b"Accept"]
    assert response.length == len(body)
    page = body.decode()
    assert page.startswith("<!doctype html>")
    assert "movie.mkv" in page and "3.0 MiB" in page and "1.5 KiB" in page and H1 in page


def test_wants_html_is_the_accept_headers_preference() -> None:
    assert view.wants_html(BROWSER_ACCEPT)
    assert not view.wants_html(None)
    assert not view.wants_html("")
    assert not view.wants_html("*/*")
    assert not view.wants_html("application/json, text/html")


# ---------------------------------------------------------------- escaping, secrets


def test_a_hostile_file_name_is_text_in_the_page(tracker: Harness) -> None:
    swarm(tracker)
    _, body, _ = get(tracker, "/", BROWSER_ACCEPT)
    page = body.decode()
    assert "<script" not in page  # the page has no script element of its own, and the name makes none
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;&amp;amp;&#34;&#39;.bin" in page


def test_no_token_or_digest_appears_in_any_view(tracker: Harness) -> None:
    tokens = swarm(tracker)
    digests = [json.dumps(d) for d in tracker.state.snapshot()]
    secrets = list(tokens.values()) + [n["token_sha256"] for n in tracker.state.snapshot()[0]["nodes"]]
    assert digests and secrets
    bodies = [get(tracker, path, accept)[1].decode() for path, accept in (
        ("/", BROWSER_ACCEPT), ("/api/nodes", None), ("/api/files", None), (f"/api/files/{H1}", None),
        ("/api/events", None), ("/metrics", None))]
    for body in bodies:
        assert "token" not in body
        for secret in secrets:
            assert secret not in body


# ---------------------------------------------------------------- the JSON API


def test_api_nodes_lists_the_last_heartbeat_first_with_totals(tracker: Harness) -> None:
    tokens = swarm(tracker)
    tracker.clock.advance(30)
    tracker.ok({"mode": 0, "node_id": 2, "port": 9002, "token": tokens[2]})  # a heartbeat: first now
    code, body, response = get(tracker, "/api/nodes")
    assert (code, content_type(response)) == (200, "application/json")
    doc = json.loads(body)
    assert (doc["total"], doc["page"], doc["limit"], doc["pages"]) == (3, 1, view.DEFAULT_LIMIT, 1)
    assert [n["node_id"] for n in doc["nodes"]] == [2, 3, 1]
    assert doc["nodes"][0] == {"node_id": 2, "host": "127.0.0.1", "port": 9002, "files": 1, "frequency": 0,
                               "last_seen": 30.0, "last_seen_ago": "now"}
    assert doc["nodes"][1]["last_seen_ago"] == "30 seconds ago"


def test_api_pages_are_capped_and_numbered(tracker: Harness) -> None:
    for i in range(1, 8):
        tracker.join(i)
    doc = json.loads(get(tracker, "/api/nodes?limit=3&page=3")[1])
    assert (doc["total"], doc["pages"], [n["node_id"] for n in doc["nodes"]]) == (7, 3, [1])
    assert json.loads(get(tracker, "/api/nodes?limit=3&page=9")[1])["nodes"] == []
    for bad in ("limit=0", f"limit={view.MAX_LIMIT + 1}", "page=0", "page=x", "limit=-1"):
        code, body, _ = get(tracker, f"/api/nodes?{bad}")
        assert code == 400 and json.loads(body)["ok"] is False, bad


def test_api_files_newest_first_with_owner_counts(tracker: Harness) -> None:
    swarm(tracker)
    doc = json.loads(get(tracker, "/api/files")[1])
    assert doc["total"] == 2
    assert doc["files"] == [
        {"info_hash": H2, "name": HOSTILE, "length": 1536, "size": "1.5 KiB", "complete": 1, "partial": 0},
        {"info_hash": H1, "name": "movie.mkv", "length": 3 << 20, "size": "3.0 MiB", "complete": 1, "partial": 1},
    ]


def test_api_file_lists_owners_with_progress(tracker: Harness) -> None:
    swarm(tracker)
    code, body, _ = get(tracker, f"/api/files/{H1.upper()}")
    doc = json.loads(body)
    assert code == 200
    assert (doc["name"], doc["complete"], doc["partial"], doc["owners"]["total"]) == ("movie.mkv", 1, 1, 2)
    owners = {o["node_id"]: o for o in doc["owners"]["owners"]}
    assert owners[1] == {"node_id": 1, "host": "127.0.0.1", "port": 9001, "frequency": 0, "partial": False}
    assert owners[2] == {"node_id": 2, "host": "127.0.0.1", "port": 9002, "frequency": 0, "partial": True,
                         "have": 1, "pieces": 3, "percent": 33.3}


def test_api_file_unknown_is_404_and_malformed_is_400(tracker: Harness) -> None:
    swarm(tracker)
    code, body, response = get(tracker, "/api/files/" + "ef" * 20)
    assert (code, content_type(response), json.loads(body)["ok"]) == (404, "application/json", False)
    for bad in ("ab" * 19, "zz" * 20, "ab" * 21, "%3Cscript%3E"):
        code, body, _ = get(tracker, f"/api/files/{bad}")
        assert code == 400 and "40 hexadecimal digits" in json.loads(body)["error"], bad


# ---------------------------------------------------------------- the pure view model


def _state(nodes: int) -> SwarmState:
    state = SwarmState(Config(TRACKER_MAX_NODES_PER_HOST=10**6), random.Random(1))
    for i in range(nodes):
        state.register(i, "10.0.0.1", 9000, None, float(i))
    return state


def test_view_caps_rows_and_counts_the_total_without_sorting_the_swarm() -> None:
    state = _state(1000)
    doc = view.nodes(state, 1000.0, view.Paging(1, 200))
    assert (doc["total"], doc["pages"], len(doc["nodes"])) == (1000, 5, 200)
    assert [n["node_id"] for n in doc["nodes"][:3]] == [999, 998, 997]  # last heartbeat first
    assert [n["node_id"] for n in view.nodes(state, 1000.0, view.Paging(5, 200))["nodes"]][-1] == 0
    for row in doc["nodes"]:
        assert set(row) == {"node_id", "host", "port", "files", "frequency", "last_seen", "last_seen_ago"}


def test_the_page_asks_the_state_for_its_rows_only() -> None:
    """At 100k nodes the page reads 200 of them (and the counts), never the whole swarm."""
    state = _state(100_000)
    asked: list[tuple[str, int, int]] = []
    for name in ("recent_nodes", "recent_files"):
        real = getattr(state, name)
        setattr(state, name, lambda offset, limit, real=real, name=name: asked.append((name, offset, limit))
                or real(offset, limit))
    doc = view.page(state, EventRing(), 0.0, view.Paging(), 5, clients=0)
    assert asked == [("recent_nodes", 0, 200), ("recent_files", 0, 200)]
    assert (doc["nodes"]["total"], len(doc["nodes"]["nodes"]), doc["nodes"]["pages"]) == (100_000, 200, 500)


def test_view_page_holds_nodes_files_events_and_the_refresh() -> None:
    state = _state(3)
    ring = EventRing()
    apply(state, Register(7, 9007, None), "10.0.0.2", 5.0, events=ring)
    doc = view.page(state, ring, 10.0, view.Paging(), 2, clients=4)
    assert (doc["refresh"], doc["clients"], doc["nodes"]["total"], doc["files"]["total"]) == (2, 4, 4, 0)
    assert doc["events"][0]["text"] == "node 7 joined from 10.0.0.2:9007"
    assert view.refresh_seconds({b"refresh": [b"1"]}) == 1
    with pytest.raises(view.BadQuery):
        view.refresh_seconds({b"refresh": [b"0"]})


def test_events_note_joins_files_exits_and_drops_in_a_bounded_ring() -> None:
    state = SwarmState(CFG, random.Random(1))
    ring = EventRing()
    token = apply(state, Register(1, 9001, None), "10.0.0.1", 1.0, events=ring).token  # type: ignore[union-attr]
    apply(state, Register(1, 9001, token), "10.0.0.1", 2.0, events=ring)  # a heartbeat: no event
    apply(state, Own(1, token, H1, "a.bin", 10), None, 3.0, events=ring)
    apply(state, Own(1, token, H1, "a.bin", 10), None, 3.5, events=ring)  # known: no event
    apply(state, Exit(1, token), None, 4.0, events=ring)
    ring.dropped(list(range(30)), 5.0)
    assert [(e.kind, e.at) for e in reversed(ring.newest(10))] == [("join", 1.0), ("file", 3.0), ("exit", 4.0),
                                                                   ("drop", 5.0)]
    assert ring.newest(1)[0].text == "dropped 30 silent nodes: 0 1 2 3 4 5 6 7 8 9 and 20 more"
    assert token not in json.dumps([e.as_json() for e in ring.newest(10)])
    for i in range(EVENTS_KEPT * 2):
        ring.add(float(i), "join", f"node {i}")
    assert len(ring) == EVENTS_KEPT and ring.newest(1)[0].text == f"node {EVENTS_KEPT * 2 - 1}"


def test_liveness_drops_show_as_events(tracker: Harness) -> None:
    tracker.join(1)
    for _ in range(CFG.TRACKER_MISSED_CHECKS + 1):
        tracker.clock.advance(CFG.TRACKER_TIME_INTERVAL)
        tracker.web.check_liveness()
    events = json.loads(get(tracker, "/api/events")[1])["events"]
    assert [e["kind"] for e in events] == ["drop", "join"]


# ---------------------------------------------------------------- /metrics


def metrics(tracker: Harness) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    code, body, response = get(tracker, "/metrics")
    assert (code, content_type(response)) == (200, CONTENT_TYPE_LATEST)
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def requests(m: dict[Any, float], mode: str, outcome: str = "ok") -> float:
    return m.get(("p2ptracker_requests_total", (("mode", mode), ("outcome", outcome))), 0.0)


def test_metrics_move_with_traffic(tracker: Harness) -> None:
    before = metrics(tracker)
    assert before[("p2ptracker_nodes", ())] == 0
    tokens = swarm(tracker)
    tracker.ok({"mode": 0, "node_id": 1, "port": 9001, "token": tokens[1]})
    tracker.ok({"mode": 2, "node_id": 2, "token": tokens[2], "info_hash": H1})
    code, _ = tracker.post({"mode": 2, "node_id": 2, "token": "wrong", "info_hash": H1})
    assert code == 403
    code, _ = tracker.post(b"not json")
    assert code == 400
    announce = result(tracker.stub.get(URL + "announce", params={
        "info_hash": b"\x01" * 20, "peer_id": b"-TR3000-" + b"x" * 12, "port": "6881", "uploaded": "0",
        "downloaded": "0", "left": "0", "compact": "1"}))
    result(announce.content())
    m = metrics(tracker)
    assert requests(m, "REGISTER") == 3
    assert requests(m, "heartbeat") == 1
    assert requests(m, "OWN") == 3
    assert requests(m, "NEED") == 1 and requests(m, "NEED", "refused") == 1
    assert requests(m, "invalid", "refused") == 1
    assert requests(m, "announce") == 1
    assert m[("p2ptracker_request_seconds_count", (("mode", "NEED"),))] == 2
    assert (m[("p2ptracker_nodes", ())], m[("p2ptracker_files", ())]) == (3, 2)
    assert (m[("p2ptracker_owners", ())], m[("p2ptracker_partial_owners", ())]) == (3, 1)
    assert m[("p2ptracker_bittorrent_clients", ())] == 1
    assert m[("p2ptracker_saves_total", (("outcome", "ok"),))] >= 4  # the JSON store: a save per change
    for _ in range(CFG.TRACKER_MISSED_CHECKS + 1):
        tracker.clock.advance(CFG.TRACKER_TIME_INTERVAL)
        tracker.web.check_liveness()
    m = metrics(tracker)
    assert (m[("p2ptracker_dropped_nodes_total", ())], m[("p2ptracker_nodes", ())]) == (3, 0)


def test_udp_datagrams_are_counted_by_kind(tracker: Harness) -> None:
    tracker.web.count_request("UDP CONNECT", False)
    tracker.web.count_request("UDP ANNOUNCE", True)
    m = metrics(tracker)
    assert (requests(m, "udp_connect"), requests(m, "udp_announce", "refused")) == (1, 1)


def test_each_tracker_has_its_own_registry(tmp_path: Path) -> None:
    one, two = Harness(tmp_path / "1"), Harness(tmp_path / "2")
    one.join(1)
    assert requests(metrics(one), "REGISTER") == 1
    assert requests(metrics(two), "REGISTER") == 0


# ---------------------------------------------------------------- the SQLite store (the default): commits


class SqliteTracker:
    """TrackerHTTP on the SQLite store, on a Clock (a reactor without threads: each commit runs in-line)."""

    def __init__(self, folder: Path) -> None:
        self.clock = Clock()
        self.store = SqliteStore(folder, self.clock)
        self.web = TrackerHTTP(SwarmState(CFG, random.Random(3)), self.store, self.clock, CFG)
        self.stub = StubTreq(self.web.resource())

    def call(self, method: str, path: str, doc: Any = None) -> tuple[int, bytes]:
        d = self.stub.request(method, URL.rstrip("/") + path, data=None if doc is None else json.dumps(doc).encode())
        self.clock.advance(0)  # the group commit starts at the next turn of the reactor
        self.stub.flush()
        response = result(d)
        return response.code, result(response.content())


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def test_sqlite_commits_are_counted_and_timed_and_the_page_reads_the_state(tmp_path: Path) -> None:
    t = SqliteTracker(tmp_path)
    code, body = t.call("POST", "/", {"mode": 0, "node_id": 1, "port": 9001})
    assert code == 200
    m = samples(t.call("GET", "/metrics")[1])
    assert m[("p2ptracker_saves_total", (("outcome", "ok"),))] == 1
    assert m[("p2ptracker_save_seconds_count", ())] == 1
    assert requests(m, "REGISTER") == 1
    assert [n["node_id"] for n in json.loads(t.call("GET", "/api/nodes")[1])["nodes"]] == [1]
    # A commit that fails: the request is answered 503 and counted as an error, the save as failed.
    t.store.write = lambda rows: fail(OSError(28, "No space left on device"))  # type: ignore[method-assign]
    code, _ = t.call("POST", "/", {"mode": 0, "node_id": 2, "port": 9002})
    assert code == 503
    m = samples(t.call("GET", "/metrics")[1])
    assert m[("p2ptracker_saves_total", (("outcome", "error"),))] == 1
    assert requests(m, "REGISTER", "error") == 1


# ---------------------------------------------------------------- one file's page


def test_a_files_page_lists_its_owners_with_their_progress(tracker: Harness) -> None:
    swarm(tracker)
    code, body, response = get(tracker, "/", BROWSER_ACCEPT)
    assert f'href="/files/{H1}"'.encode() in body
    code, body, response = get(tracker, f"/files/{H1}")
    page = body.decode()
    assert (code, content_type(response)) == (200, "text/html; charset=utf-8")
    assert "<h1 class=\"name\">movie.mkv</h1>" in page and "3.0 MiB" in page
    assert "the whole file" in page and "1 of 3 pieces" in page and 'value="33.3"' in page
    assert page.count("<tr><td class=\"num\">") == 2  # node 1 and node 2


def test_a_files_page_shows_a_hostile_name_as_text(tracker: Harness) -> None:
    swarm(tracker)
    code, body, _ = get(tracker, f"/files/{H2}")
    assert code == 200 and b"<script>" not in body
    assert b"&lt;script&gt;window.__pwned=1&lt;/script&gt;&amp;amp;" in body


def test_a_files_page_for_an_unknown_file_is_404_and_a_malformed_hash_400(tracker: Harness) -> None:
    swarm(tracker)
    code, body, response = get(tracker, "/files/" + "ef" * 20)
    assert (code, content_type(response)) == (404, "text/html; charset=utf-8") and b"ef" * 20 in body
    code, body, _ = get(tracker, "/files/%3Cscript%3E")
    assert code == 400 and b"<script>" not in body


# ---------------------------------------------------------------- why a node withdrew


def test_a_withdrawal_with_a_reason_is_an_event_that_names_the_file_and_what_the_operator_did(tracker: Harness) -> None:
    tokens = swarm(tracker)
    before = tracker.state.snapshot()
    for bad in ("pausd", 3, None, ["paused"]):
        code, answer = tracker.post({"mode": 1, "node_id": 2, "token": tokens[2], "info_hash": H1, "withdraw": True,
                                     "reason": bad})
        assert (code, answer["ok"]) == (400, False) and "'reason'" in answer["error"], bad
        assert tracker.state.snapshot() == before
    tracker.ok({"mode": 1, "node_id": 2, "token": tokens[2], "info_hash": H1, "withdraw": True, "reason": "paused"})
    tracker.ok({"mode": 1, "node_id": 3, "token": tokens[3], "info_hash": H2, "withdraw": True,
                "reason": "stopped seeding"})
    tracker.ok({"mode": 1, "node_id": 1, "token": tokens[1], "info_hash": H1, "withdraw": True, "reason": ""})
    texts = [e["text"] for e in json.loads(get(tracker, "/api/events")[1])["events"][:3]]
    assert texts == ["node 1 withdrew movie.mkv", f"node 3 stopped seeding {HOSTILE}", "node 2 paused movie.mkv"]
    page = get(tracker, "/", BROWSER_ACCEPT)[1]
    assert b"node 2 paused movie.mkv" in page and b"<script>" not in page
    assert not tracker.state.owners(H1)  # a paused node is sent to nobody


def test_a_withdrawal_reason_survives_the_change_log() -> None:
    from p2ptorrent.tracker.changes import Change, decode, encode
    from p2ptorrent.tracker.state import Withdraw

    change = Change(Withdraw(2, None, H1, "paused"), None, 7.0, None)
    assert decode(encode(change)).request == Withdraw(2, None, H1, "paused")
    old = encode(Change(Withdraw(2, None, H1), None, 7.0, None)).replace(',"reason":""', "")
    assert decode(old).request == Withdraw(2, None, H1)  # one written before reasons existed
