"""The tracker against hostile input, impersonation, cheating and floods (issue 3, items 15, 17, 18).

Everything runs in memory (TrackerHTTP behind StubTreq, a Clock, seeded
randomness) with the database on disk, so "the database is unchanged" is
checked on the bytes of nodes.json and files.json, on the state snapshot and
on the number of saves.
"""

from __future__ import annotations

import gc
import io
import json
import random
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Iterator
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent
from twisted.python.failure import Failure

from p2ptorrent.config import Config
from p2ptorrent.node.tracker_client import HeartbeatService, TrackerClient
from p2ptorrent.tracker.http import TrackerHTTP, TrackerSite
from p2ptorrent.tracker.state import SwarmState, TrackerError
from p2ptorrent.tracker.store import JsonStore
from trackerkit import CFG, H1, H2, URL, CountingStore, Harness, result



class World(Harness):
    """A tracker with a database on disk and nodes 1, 2, 3: 1 and 2 own H1, 3 credited 1 for it."""

    def __init__(self, folder: Path, settings: Config = CFG, *, copy_of: World | None = None) -> None:
        if copy_of is not None:
            # The same world read back from a copy of its database: much faster than building it again.
            folder.mkdir(parents=True)
            for name, data in copy_of.db().items():
                (folder / name).write_bytes(data)
        self.counting = CountingStore(folder)
        super().__init__(folder, settings, store=self.counting)
        if copy_of is not None:
            self.web.load()
            self.tokens = dict(copy_of.tokens)
            return
        self.tokens = {i: self.join(i) for i in (1, 2, 3)}
        self.ok({"mode": 1, "node_id": 1, "token": self.tokens[1], "info_hash": H1, "name": "f", "length": 5})
        self.ok({"mode": 1, "node_id": 2, "token": self.tokens[2], "info_hash": H1, "name": "f", "length": 5})
        self.ok({"mode": 3, "node_id": 3, "token": self.tokens[3], "info_hash": H1, "uploaders": [1]})

    def everything(self) -> tuple[Any, ...]:
        """What must not change when a request is refused."""
        return self.db(), self.state.snapshot(), self.state.revision, self.counting.saves

    def refused(self, doc: Any, method: str = "POST", url: str = URL) -> tuple[int, dict[str, Any]]:
        before = self.everything()
        raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        code, answer, _ = self.request(method, raw, url=url)
        assert 400 <= code < 500, (code, answer)
        assert answer["ok"] is False and isinstance(answer["error"], str) and answer["error"]
        assert self.everything() == before
        return code, answer


class RawHTTP:
    """Real HTTP/1.1 bytes into the tracker's real TrackerSite, one connection per request, from any address.

    StubTreq keeps every connection it made, which would hide the tracker's own
    memory in a flood; here a connection is dropped as soon as it is answered.
    """

    def __init__(self, web: TrackerHTTP, clock: Clock) -> None:
        self.site = TrackerSite(web.resource(), CFG.TRACKER_MAX_BODY, reactor=clock)

    def post(self, doc: Any, host: str = "127.0.0.1") -> tuple[int, dict[str, Any]]:
        body = json.dumps(doc).encode()
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        channel = self.site.buildProtocol(transport.getPeer())
        channel.makeConnection(transport)
        channel.dataReceived(
            b"POST / HTTP/1.1\r\nHost: tracker\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        head, _, content = transport.value().partition(b"\r\n\r\n")
        channel.connectionLost(Failure(ConnectionDone()))
        return int(head.split(b" ", 2)[1]), json.loads(content)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path / "db")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("template") / "db")


@pytest.fixture
def no_fsync() -> Iterator[None]:
    # Hundreds of fresh databases: skip the disk flush, which only matters after a power cut.
    with mock.patch("os.fsync", lambda fd: None):  # a plain function: a Mock would record every call
        yield


# ---------------------------------------------------------------- 15: malformed input changes nothing


WRONG_VALUES: list[Any] = [
    None, True, False, 1.5, -1, 0, 2**31, 2**53 + 1, 2**64, -(2**63) - 1, 10**300, 1e300,
    "", "x", "1", H1.upper(), [], [1], {}, {"a": 1}, "\ud800", "é" * 200,
]
GOOD_REQUESTS = {
    "REGISTER": {"mode": 0, "node_id": 4, "port": 9004},
    "HEARTBEAT": {"mode": 0, "node_id": 1, "port": 9001, "token": "T1"},
    "OWN": {"mode": 1, "node_id": 1, "token": "T1", "info_hash": H2, "name": "g", "length": 7},
    "OWN_PARTIAL": {"mode": 1, "node_id": 1, "token": "T1", "info_hash": H2, "name": "g", "length": 7, "have": 1, "pieces": 4},
    "WITHDRAW": {"mode": 1, "node_id": 1, "token": "T1", "info_hash": H1, "withdraw": True},
    "NEED": {"mode": 2, "node_id": 3, "token": "T3", "info_hash": H1},
    "UPDATE": {"mode": 3, "node_id": 2, "token": "T2", "info_hash": H1, "uploaders": [1]},
    "EXIT": {"mode": 4, "node_id": 2, "token": "T2"},
}


def with_tokens(world: World, doc: dict[str, Any]) -> dict[str, Any]:
    """Replace the placeholders T1, T2, T3 by the nodes' real tokens."""
    real = {f"T{i}": t for i, t in world.tokens.items()}
    return {k: real.get(v, v) if isinstance(v, str) else v for k, v in doc.items()}


def may_be_accepted(name: str, field_name: str, value: Any) -> bool:
    """The substitutions that still make a valid request (everything else must be refused)."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if name in ("REGISTER", "HEARTBEAT") and field_name in ("mode", "node_id") and value == 0 and is_int:
        return True  # the request itself, or a join of node 0
    if name == "REGISTER" and field_name == "token":
        return value is None or isinstance(value, str)  # an unknown node joins whatever it sends
    if name.startswith("OWN") and field_name == "length":
        return is_int and 0 <= value <= 2**53
    if name.startswith("OWN") and field_name == "name" and isinstance(value, str):
        return value != "\ud800" and 1 <= len(value.encode()) <= 255
    if name == "OWN_PARTIAL" and field_name == "have":
        return is_int and 0 <= value <= 4
    if name == "OWN_PARTIAL" and field_name == "pieces":
        return is_int and 1 <= value <= 2**31
    if name == "WITHDRAW" and field_name == "withdraw":
        return value is True  # the request itself
    if name == "UPDATE" and field_name == "uploaders":
        return value in ([], [1])
    return False


def test_every_field_of_every_mode_with_every_wrong_value_is_refused_and_changes_nothing(
    tmp_path: Path, no_fsync: None
) -> None:
    world = World(tmp_path / "db")
    refused = accepted = 0
    for name, good in GOOD_REQUESTS.items():
        for field_name in good:
            for doc, allowed in [
                *((with_tokens(world, {**good, field_name: v}), may_be_accepted(name, field_name, v)) for v in WRONG_VALUES),
                (
                    with_tokens(world, {k: v for k, v in good.items() if k != field_name}),
                    name == "REGISTER" and field_name == "token",
                ),
            ]:
                before = world.everything()
                code, answer, _ = world.request("POST", json.dumps(doc).encode())
                if code == 200 and allowed:
                    accepted += 1
                    continue
                assert 400 <= code < 500, (name, field_name, doc, code, answer)
                assert answer["ok"] is False and answer["error"]
                assert world.everything() == before, (name, field_name, doc)
                refused += 1
    assert refused > 500, refused
    # The good requests themselves pass, so each refusal was about the one field changed.
    fresh = World(tmp_path / "fresh")
    for name in ("HEARTBEAT", "OWN", "OWN_PARTIAL", "WITHDRAW", "NEED", "UPDATE", "REGISTER", "EXIT"):
        fresh.ok(with_tokens(fresh, GOOD_REQUESTS[name]))


@pytest.mark.parametrize(
    "raw, status, reason",
    [
        (b'{"mode": 0, "node_id": 1' + b"0" * 5000 + b', "port": 1}', 400, "not valid JSON"),  # int digit limit
        (b'{"mode": 0, "node_id": 1e400, "port": 1}', 400, "must be an integer"),
        (b'{"mode": 0, "node_id": -0.0, "port": 1}', 400, "must be an integer"),
        (b'{"mode": 0, "node_id": Infinity, "port": 1}', 400, "not valid JSON"),
        (b'{"mode": 0, "node_id": 1, "port": 1, "node_id": 2' + b"9" * 4000 + b"}", 400, "must be 0..2147483647"),
        (b"[" * 50_000, 400, "not valid JSON"),
        (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, 400, "not valid JSON"),
        (b"\xef\xbb\xbf{}", 400, "not valid JSON"),  # a UTF-8 byte order mark is not JSON
        (b"\x00" * 100, 400, "not valid JSON"),
        (b'{"mode": 0}\x00', 400, "not valid JSON"),
        (b'{"mode": 0, "node_id": 1, "port": 1} {"mode": 4}', 400, "not valid JSON"),
        (b" " * CFG.TRACKER_MAX_BODY + b"{}", 413, "larger than"),
    ],
)
def test_edge_bodies(world: World, raw: bytes, status: int, reason: str) -> None:
    code, answer = world.refused(raw)
    assert code == status and reason in answer["error"], answer
    assert len(answer["error"]) < 400  # never echoes a huge value back


def test_other_methods_and_paths_change_nothing(world: World) -> None:
    body = json.dumps(with_tokens(world, GOOD_REQUESTS["EXIT"])).encode()
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
        assert world.refused(body, method=method)[0] == 405
    for path in ("announce", "..%2fx", "%00", "a/b/c"):
        assert world.refused(body, url=URL + path)[0] == 404
    # A query string does not change what POST / means: the body decides.
    code, answer, _ = world.request("POST", body, url=URL + "?mode=0")
    assert (code, answer) == (200, {"ok": True})


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n{}",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: -5\r\n\r\n{}",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    ],
)
def test_requests_that_are_not_http_are_400_and_change_nothing(world: World, raw: bytes) -> None:
    # twisted.web answers these itself, before any route: a plain 400 without a JSON body.
    before = world.everything()
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    channel = TrackerSite(world.web.resource(), CFG.TRACKER_MAX_BODY, reactor=world.clock).buildProtocol(None)
    channel.makeConnection(transport)
    channel.dataReceived(raw)
    assert transport.value().startswith(b"HTTP/1.1 400 ")
    assert world.everything() == before


def test_a_huge_declared_length_is_never_buffered(world: World) -> None:
    # The body is kept only up to the limit while it arrives; the answer is 413 when it ends.
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    site = TrackerSite(world.web.resource(), CFG.TRACKER_MAX_BODY, reactor=world.clock)
    buffers: list[io.BytesIO] = []
    real = site.getContentFile
    site.getContentFile = lambda length: buffers.append(real(length)) or buffers[-1]  # type: ignore[method-assign]
    channel = site.buildProtocol(None)
    channel.makeConnection(transport)
    size = 64 * 1024 * 1024
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
    chunk = b" " * (1024 * 1024)
    for _ in range(size // len(chunk)):
        channel.dataReceived(chunk)
        assert buffers[0].closed or buffers[0].tell() <= CFG.TRACKER_MAX_BODY + 1
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ") and json.loads(body)["ok"] is False


FIELD_NAMES = [
    "mode", "node_id", "port", "token", "info_hash", "name", "length", "uploaders", "have", "pieces", "withdraw", "host", "x",
]
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 4, 5, 65535, 65536, 2**31 - 1, 2**31, 2**53, 2**53 + 1, 2**63, -1, -(2**63)]),
    st.floats(allow_nan=False, allow_infinity=False),
)
scalars = st.one_of(
    st.none(), st.booleans(), numbers,
    st.text(max_size=40),
    st.sampled_from([H1, H2, H1.upper(), "", "T1", "T2", "T3", "t" * 300, "\ud800", "6.6.6.6"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=8), inner, max_size=6)),
    max_leaves=25,
)
mutated = st.builds(
    lambda base, changes, drop: {k: v for k, v in {**base, **changes}.items() if k not in drop},
    st.sampled_from(list(GOOD_REQUESTS.values())),
    st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=3),
    st.sets(st.sampled_from(FIELD_NAMES), max_size=2),
)


def _text(doc: Any) -> bytes:
    return json.dumps(doc).encode()


bodies = st.one_of(
    mutated,
    st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=8),
    json_values.map(_text),
    st.binary(max_size=300),
    # Valid JSON spoilt by one byte changed, cut short or doubled.
    st.tuples(mutated.map(_text), st.integers(min_value=0, max_value=200), st.integers(0, 255)).map(
        lambda t: t[0][: t[1] % (len(t[0]) + 1)] + bytes([t[2]]) + t[0][t[1] % (len(t[0]) + 1) + 1 :]
    ),
    # Bodies around the size limit.
    st.integers(min_value=-3, max_value=3).map(lambda d: b" " * (CFG.TRACKER_MAX_BODY - 2 + d) + b"{}"),
)
TRIED: dict[str, int] = {"examples": 0, "refused": 0, "accepted": 0}


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=bodies)
def test_any_body_is_a_json_4xx_that_changes_nothing_or_a_valid_request(
    tmp_path: Path, template: World, raw: Any
) -> None:
    world = World(Path(tempfile.mkdtemp(dir=tmp_path)) / "db", copy_of=template)
    assert world.state.snapshot() == template.state.snapshot()
    if isinstance(raw, dict):
        raw = with_tokens(world, raw)
    data = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    before = world.everything()
    code, answer, _ = world.request("POST", data)
    TRIED["examples"] += 1
    assert code < 500, answer
    assert isinstance(answer, dict) and isinstance(answer.get("ok"), bool)
    if code >= 400:
        TRIED["refused"] += 1
        assert answer["ok"] is False and isinstance(answer["error"], str) and answer["error"]
        assert world.everything() == before
    else:
        TRIED["accepted"] += 1
        assert answer["ok"] is True
        # Whatever was accepted is on disk before the answer, and the disk matches the state.
        nodes_doc, files_doc = world.state.snapshot()
        assert json.loads(world.db()["nodes.json"]) == nodes_doc
        assert json.loads(world.db()["files.json"]) == files_doc


# ---------------------------------------------------------------- 10: the save comes before the answer


def test_a_change_is_saved_before_its_answer_is_written(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    real_save = world.counting.save
    monkeypatch.setattr(world.counting, "save", lambda *docs: (order.append("save"), real_save(*docs)))
    from twisted.web.http import Request

    real_write = Request.write
    monkeypatch.setattr(Request, "write", lambda self, data: (order.append("answer"), real_write(self, data))[1])
    world.ok({"mode": 3, "node_id": 2, "token": world.tokens[2], "info_hash": H1, "uploaders": [1]})
    assert order[:2] == ["save", "answer"]
    assert json.loads(world.db()["nodes.json"])["nodes"][0]["frequency"] == 2


# ---------------------------------------------------------------- 17: impersonation and cheating


def test_no_node_can_exit_own_update_need_or_heartbeat_as_another(world: World) -> None:
    a, b = world.tokens[1], world.tokens[2]
    stored_hash = json.loads(world.db()["nodes.json"])["nodes"][0]["token_sha256"]
    for token in (b, None, "", a.upper(), a[:-1], a + "0", stored_hash, " " + a):
        for doc in (
            {"mode": 4, "node_id": 1},
            {"mode": 1, "node_id": 1, "info_hash": H2, "name": "evil", "length": 1},
            {"mode": 3, "node_id": 1, "info_hash": H1, "uploaders": [2]},
            {"mode": 2, "node_id": 1, "info_hash": H1},
            {"mode": 0, "node_id": 1, "port": 6666},
        ):
            sent = doc if token is None else {**doc, "token": token}
            code, answer = world.refused(sent)
            assert code == 403 and "node 1" in answer["error"], answer
    # Node 1 is untouched: still there, still an owner, its real token still works.
    assert 1 in world.state and world.state.owners(H1) == {1, 2}
    world.ok({"mode": 0, "node_id": 1, "port": 9001, "token": a})


def test_a_million_self_updates_do_not_move_a_node_in_the_ranking() -> None:
    state = SwarmState(CFG, random.Random(11))
    tokens = {i: state.register(i, "10.0.0.1", 9000 + i, None, 0.0).token for i in (1, 2, 3, 4)}
    for i in (1, 2):
        state.own(i, tokens[i], H1, "f", 5)
    state.update(3, tokens[3], H1, [2])  # node 2 earned one honest credit
    twin = SwarmState(CFG, random.Random(11))
    twin.restore(*json.loads(json.dumps(state.snapshot())), now=0.0)
    before = (state.snapshot(), state.revision)

    cheater, token = 1, tokens[1]
    start = time.perf_counter()
    refusals = 0
    for n in range(1_000_000):
        try:
            state.update(cheater, token, H1, [cheater] if n % 2 else [cheater, 2, 3])
        except TrackerError as e:
            refusals += e.status == 400
    seconds = time.perf_counter() - start
    assert refusals == 1_000_000
    assert (state.snapshot(), state.revision) == before
    assert state.owner_info(cheater).frequency == 0  # type: ignore[union-attr]
    # The ranking is the one the honest history gives, draw for draw (refusals draw no random numbers).
    assert [state.need(3, tokens[3], H1).ranking for _ in range(2000)] == [
        twin.need(3, tokens[3], H1).ranking for _ in range(2000)
    ]
    # A friend crediting the cheater over and over counts once.
    for _ in range(100_000):
        state.update(4, tokens[4], H1, [cheater])
    twin.update(4, tokens[4], H1, [cheater])
    assert state.owner_info(cheater).frequency == 1  # type: ignore[union-attr]
    assert state.snapshot() == twin.snapshot()
    print(f"1,000,000 self-UPDATEs refused in {seconds:.1f} s")


def test_the_address_comes_from_the_socket_never_from_the_body(world: World) -> None:
    http = RawHTTP(world.web, world.clock)
    liar = {"mode": 0, "node_id": 7, "port": 9007, "host": "6.6.6.6", "ip": "6.6.6.6", "address": "6.6.6.6:1"}
    code, answer = http.post(liar, host="192.0.2.7")
    assert (code, answer["host"]) == (200, "192.0.2.7")
    token = answer["token"]
    own = {**liar, "mode": 1, "token": token, "info_hash": H1, "name": "f", "length": 5}
    assert http.post(own, host="192.0.2.7")[0] == 200
    # A heartbeat from another address moves the node there, whatever the body says.
    code, answer = http.post({**liar, "token": token}, host="198.51.100.9")
    assert (code, answer["host"]) == (200, "198.51.100.9")
    owners = world.ok({"mode": 2, "node_id": 3, "token": world.tokens[3], "info_hash": H1})["owners"]
    assert {o["node_id"]: (o["host"], o["port"]) for o in owners}[7] == ("198.51.100.9", 9007)
    assert b"6.6.6.6" not in b"".join(world.db().values())


def test_tokens_never_appear_in_logs_or_the_database(tmp_path: Path, events: list[dict[str, Any]]) -> None:
    world = World(tmp_path / "db")
    tokens = dict(world.tokens)
    t1, t2, t3 = tokens[1], tokens[2], tokens[3]
    world.ok({"mode": 0, "node_id": 1, "port": 9001, "token": t1})  # heartbeat
    world.ok({"mode": 0, "node_id": 1, "port": 9011, "token": t1})  # moved
    world.ok({"mode": 1, "node_id": 2, "token": t2, "info_hash": H2, "name": "g", "length": 1})
    world.ok({"mode": 2, "node_id": 3, "token": t3, "info_hash": H1})
    world.ok({"mode": 3, "node_id": 3, "token": t3, "info_hash": H1, "uploaders": [2]})
    for doc in (  # refusals quoting other nodes' tokens, and tokens as other fields
        {"mode": 4, "node_id": 1, "token": t2},
        {"mode": 0, "node_id": 1, "port": 1, "token": t3},
        {"mode": 3, "node_id": 2, "token": t2, "info_hash": t1, "uploaders": [1]},
        {"mode": 1, "node_id": 2, "token": t2, "info_hash": H2, "name": t1 * 9, "length": 1},
        {"mode": 2, "node_id": 2, "token": t2 + "x", "info_hash": H1},
    ):
        world.refused(doc)
    world.post(b'{"mode": 0, "node_id": 1, "token": "' + t1.encode() + b'", "port": ')  # broken JSON
    # A restart: the tracker reads the database back, the node checks in again.
    again = TrackerHTTP(SwarmState(CFG, random.Random(1)), JsonStore(world.folder), world.clock, CFG)
    again.load()
    world.web, world.state = again, again.state
    from treq.testing import StubTreq

    world.stub = StubTreq(again.resource())
    world.ok({"mode": 0, "node_id": 2, "port": 9002, "token": t2})
    world.ok({"mode": 4, "node_id": 3, "token": t3})
    world.clock.advance(100)
    for _ in range(CFG.TRACKER_MISSED_CHECKS + 1):
        again.check_liveness()  # node 1 dropped
    # The node's side too: a client registering, heartbeating, refused, and leaving.
    client = TrackerClient(world.stub, URL, world.clock, CFG, 5, 9005)
    beat = HeartbeatService(client, CFG.NODE_TIME_INTERVAL, world.clock, lambda: client.own(H1, "f", 5))
    beat.startService()
    world.clock.advance(CFG.NODE_TIME_INTERVAL)
    t5 = client.token
    assert t5
    client.token = t2  # a bug or an attacker: the heartbeat is refused and logged
    world.clock.advance(CFG.NODE_TIME_INTERVAL)
    client.token = t5
    result(beat.stopService())
    result(client.exit())

    messages = [formatEvent(e) for e in events]
    assert any("checked in again" in m for m in messages)
    assert any("refused EXIT" in m for m in messages)
    assert any("heartbeat failed" in m for m in messages)
    everything = "\n".join(messages) + repr(events) + repr(world.db())
    for token in (t1, t2, t3, t5):
        assert token not in everything


# ---------------------------------------------------------------- 18: one address cannot fill the tracker


def test_the_per_address_cap_refuses_new_records_with_429_and_changes_nothing(tmp_path: Path) -> None:
    world = World(tmp_path / "db", CFG.replace(TRACKER_MAX_NODES_PER_HOST=5))
    http = RawHTTP(world.web, world.clock)
    joined = {i: world.join(i) for i in (4, 5)}  # 5 nodes from 127.0.0.1 now
    before = world.everything()
    code, answer = http.post({"mode": 0, "node_id": 6, "port": 9006})
    assert code == 429 and answer["ok"] is False
    assert "127.0.0.1 already has 5 live nodes, the most allowed from one address" in answer["error"]
    assert world.everything() == before
    code, answer = http.post({"mode": 0, "node_id": 6, "port": 9006}, host="192.0.2.1")
    assert code == 200  # another address is not affected
    # A node cannot move into a full address either.
    before = world.everything()
    assert http.post({"mode": 0, "node_id": 6, "port": 9006, "token": answer["token"]})[0] == 429
    assert world.everything() == before
    # EXIT frees a slot.
    world.ok({"mode": 4, "node_id": 4, "token": joined[4]})
    world.join(7)
    assert world.state.nodes_from("127.0.0.1") == 5 and world.state.nodes_from("192.0.2.1") == 1


def test_moving_into_a_full_address_is_refused_and_the_cap_survives_a_restart(tmp_path: Path) -> None:
    cfg = CFG.replace(TRACKER_MAX_NODES_PER_HOST=2)
    state = SwarmState(cfg, random.Random(1))
    a = state.register(1, "10.0.0.1", 9001, None, 0.0).token
    state.register(2, "10.0.0.1", 9002, None, 0.0)
    c = state.register(3, "10.0.0.2", 9003, None, 0.0).token
    before = (state.snapshot(), state.revision)
    with pytest.raises(TrackerError) as info:
        state.register(3, "10.0.0.1", 9003, c, 1.0)
    assert info.value.status == 429 and (state.snapshot(), state.revision) == before
    state.register(1, "10.0.0.1", 9555, a, 1.0)  # moving within its own address is fine
    state.register(1, "10.0.0.3", 9001, a, 1.0)  # and leaving frees the slot
    state.register(3, "10.0.0.1", 9003, c, 1.0)
    assert (state.nodes_from("10.0.0.1"), state.nodes_from("10.0.0.2"), state.nodes_from("10.0.0.3")) == (2, 0, 1)

    again = SwarmState(cfg, random.Random(1))
    again.restore(*state.snapshot(), now=2.0)
    with pytest.raises(TrackerError) as info:
        again.register(9, "10.0.0.1", 9009, None, 2.0)
    assert info.value.status == 429
    # Liveness frees slots too.
    again.register(1, "10.0.0.3", 9001, a, 3.0)
    for t in (4.0, 5.0, 6.0):
        again.check_liveness(t)
    assert again.nodes_from("10.0.0.1") == 0
    assert again.register(9, "10.0.0.1", 9009, None, 7.0).new


class DirectRequest:
    """Just enough of an IRequest to call the POST route itself: the tracker's own work, nothing of twisted.web."""

    def __init__(self, body: bytes, host: str) -> None:
        self.content = io.BytesIO(body)
        self.address = IPv4Address("TCP", host, 40000)
        self.code = 0

    def getHeader(self, name: bytes) -> bytes | None:
        return b"%d" % len(self.content.getvalue()) if name == b"content-length" else None

    def getClientAddress(self) -> IPv4Address:
        return self.address

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def setHeader(self, name: bytes, value: bytes) -> None:
        pass


def direct_post(web: TrackerHTTP, doc: Any, host: str = "127.0.0.1") -> tuple[int, dict[str, Any]]:
    request = DirectRequest(json.dumps(doc).encode(), host)
    answer = web.post(request)  # type: ignore[arg-type]
    return request.code, json.loads(answer)


FLOOD = 10_000


def test_ten_thousand_registers_from_one_address_leave_memory_bounded_and_others_served(
    tmp_path: Path, no_fsync: None, events: list[dict[str, Any]]
) -> None:
    cap = CFG.TRACKER_MAX_NODES_PER_HOST
    world = World(tmp_path / "db")
    saved_after_cap: bytes | None = None
    saves_after_cap = 0
    codes: dict[int, int] = {}
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        at_1000 = 0
        for n in range(FLOOD):
            # Mostly fresh ids; every tenth a known id without its token (impersonation attempts).
            node_id = 1000 + n if n % 10 else 1 + n % 3
            code, _ = direct_post(world.web, {"mode": 0, "node_id": node_id, "port": 1 + n % 65535})
            codes[code] = codes.get(code, 0) + 1
            if saved_after_cap is None and world.state.nodes_from("127.0.0.1") == cap:
                saved_after_cap, saves_after_cap = world.db()["nodes.json"], world.counting.saves
            if n == 999:
                gc.collect()
                at_1000 = tracemalloc.get_traced_memory()[0]
        gc.collect()
        at_end = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    growth_total = at_end - baseline
    growth_after_1000 = at_end - at_1000
    print(f"flood: {codes}; memory +{growth_total} B in all, +{growth_after_1000} B over the last 9000 requests")

    assert world.state.nodes_from("127.0.0.1") == cap
    assert world.state.summary()["nodes"] == cap
    assert codes == {200: cap - 3, 403: FLOOD // 10, 429: FLOOD - FLOOD // 10 - (cap - 3)}
    # Refused requests saved nothing: nodes.json is the one written when the cap was reached.
    assert world.counting.saves == saves_after_cap and world.db()["nodes.json"] == saved_after_cap
    # Bounded: the records of the cap (a few KiB each with the saved copy of nodes.json),
    # and nothing that grows with the flood once the cap is reached.
    assert growth_total < cap * 8 * 1024
    assert growth_after_1000 < 32 * 1024

    # The log says what happened without a line per refusal: 20, then a sum at the liveness check.
    refusals = [formatEvent(e) for e in events if "refused" in e.get("log_format", "")]
    assert len(refusals) == 20 and all("from 127.0.0.1" in r for r in refusals)
    world.web.check_liveness()
    summary = [formatEvent(e) for e in events if "more requests" in e.get("log_format", "")]
    assert summary == [
        f"refused {FLOOD - (cap - 3) - 20} more requests from 127.0.0.1 since the previous liveness check"
        " (at most 20 are logged one by one)"
    ]

    # Someone else is served as before.
    code, answer = direct_post(world.web, {"mode": 0, "node_id": 50, "port": 9050}, host="192.0.2.50")
    assert (code, answer["new"]) == (200, True)
    need = {"mode": 2, "node_id": 50, "token": answer["token"], "info_hash": H1}
    code, answer = direct_post(world.web, need, host="192.0.2.50")
    assert code == 200 and sorted(o["node_id"] for o in answer["owners"]) == [1, 2]


def test_a_flood_over_the_whole_http_stack_is_refused_with_json_429(tmp_path: Path) -> None:
    cap = 20
    world = World(tmp_path / "db", CFG.replace(TRACKER_MAX_NODES_PER_HOST=cap))
    http = RawHTTP(world.web, world.clock)
    codes: dict[int, int] = {}
    for n in range(1000):
        code, answer = http.post({"mode": 0, "node_id": 1000 + n, "port": 9000})
        codes[code] = codes.get(code, 0) + 1
        if code == 429:
            assert answer["ok"] is False and "20 live nodes" in answer["error"]
    assert codes == {200: cap - 3, 429: 1000 - (cap - 3)}
    code, answer = http.post({"mode": 0, "node_id": 50, "port": 9050}, host="192.0.2.50")
    assert (code, answer["new"]) == (200, True)
