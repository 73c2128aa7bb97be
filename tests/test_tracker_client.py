"""TrackerClient and HeartbeatService against the real TrackerHTTP, in memory (StubTreq)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred, fail, gatherResults, succeed
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.internet.task import Clock, LoopingCall
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseNeverReceived

from p2ptorrent.node.tracker_client import (
    HeartbeatService,
    Owner,
    TrackerClient,
    TrackerProtocolError,
    TrackerRefused,
    TrackerUnavailable,
)
from p2ptorrent.tracker.http import TrackerHTTP
from p2ptorrent.tracker.state import SwarmState
from p2ptorrent.tracker.store import JsonStore
from trackerkit import CFG, H1, result

BASE = "http://tracker.example:12345"


def failure_of(d: Deferred[Any], kind: type[BaseException]) -> BaseException:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out and isinstance(out[0], Failure), out
    assert out[0].check(kind), out[0]
    return out[0].value


class CountingHTTP:
    """Wraps a treq-like object and records every request body."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sent: list[dict[str, Any]] = []

    def post(self, url: str, data: bytes, **kw: Any) -> Deferred[Any]:
        self.sent.append(json.loads(data))
        return self.inner.post(url, data=data, **kw)

    def modes(self) -> list[int]:
        return [body["mode"] for body in self.sent]


class World:
    """One tracker (TrackerHTTP + its state) and clients talking to it in memory."""

    def __init__(self, folder: Path) -> None:
        self.clock = Clock()
        self.state = SwarmState(CFG, random.Random(3))
        self.web = TrackerHTTP(self.state, JsonStore(folder), self.clock, CFG)
        self.http = CountingHTTP(StubTreq(self.web.resource()))

    def client(self, node_id: int, **kw: Any) -> TrackerClient:
        return TrackerClient(self.http, BASE, self.clock, CFG, node_id, 9000 + node_id, **kw)

    def forget(self, node_id: int) -> None:
        """The tracker loses the node, as after missed heartbeats."""
        self.state._drop(node_id)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path / "db")


# ---------------------------------------------------------------- round trips


def test_register_then_heartbeat(world: World) -> None:
    client = world.client(1)
    assert client.token is None
    assert result(client.register()) is True
    token = client.token
    assert token and client.public_host == "127.0.0.1"
    assert result(client.register()) is False
    assert client.token == token
    # The join proposed the token the tracker adopted; the heartbeat carries it.
    assert world.http.sent[0]["token"] == world.http.sent[1]["token"] == token


def test_own_need_update_exit(world: World) -> None:
    a, b, c = world.client(1), world.client(2), world.client(3)
    for client in (a, b, c):
        result(client.register())
    assert result(a.own(H1.upper(), "movie.mkv", 99)) is None  # hex case does not matter
    result(b.own(H1, "movie.mkv", 99))
    owners = result(c.need(H1))
    assert sorted(owners, key=lambda o: o.node_id) == [
        Owner(1, "127.0.0.1", 9001, 0),
        Owner(2, "127.0.0.1", 9002, 0),
    ]
    assert result(c.update(H1, [1, 3, 1, 2, 42])) == [1, 2]
    assert [b["uploaders"] for b in world.http.sent if b["mode"] == 3] == [[1, 2, 42]]  # itself left out
    assert result(c.update(H1, [1])) == []
    assert {o.node_id: o.frequency for o in result(c.need(H1))} == {1: 1, 2: 1}
    result(a.exit())
    assert a.token is None and 1 not in world.state
    assert [o.node_id for o in result(c.need(H1))] == [2]


def test_need_keeps_the_trackers_order(world: World) -> None:
    a, b, c, d = (world.client(i) for i in (1, 2, 3, 4))
    for client in (a, b, c, d):
        result(client.register())
        if client is not d:
            result(client.own(H1, "f", 1))
    rankings: list[list[int]] = []
    observer = lambda event: rankings.append(event["ranking"]) if "ranking" in event else None  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        orders = [[o.node_id for o in result(d.need(H1))] for _ in range(40)]
    finally:
        globalLogPublisher.removeObserver(observer)
    assert orders == rankings  # exactly the order the tracker drew and logged
    assert len({tuple(o) for o in orders}) > 1  # a random draw, not a fixed order


def test_need_returns_owners_as_listed() -> None:
    owners = [{"node_id": n, "host": f"10.0.0.{n}", "port": 7000 + n, "frequency": 10 - n} for n in (3, 5, 2)]
    answer = {"ok": True, "info_hash": H1, "name": "f", "owners": owners}
    client, _, _ = scripted(lambda: succeed(FakeResponse(200, json.dumps(answer).encode())))
    client.token = "known"
    assert result(client.need(H1)) == [
        Owner(3, "10.0.0.3", 7003, 7),
        Owner(5, "10.0.0.5", 7005, 5),
        Owner(2, "10.0.0.2", 7002, 8),
    ]


def test_own_with_progress_and_withdraw(world: World) -> None:
    a, c = world.client(1), world.client(3)
    result(c.register())
    assert result(a.own(H1, "movie.mkv", 99, have=2, pieces=7)) is None
    assert result(a.own(H1, "movie.mkv", 99, 3, 7)) is None
    owns = [b for b in world.http.sent if b["mode"] == 1]
    assert [(b["have"], b["pieces"]) for b in owns] == [(2, 7), (3, 7)]
    assert result(c.need(H1)) == [Owner(1, "127.0.0.1", 9001, 0, True, 3, 7)]
    # Three arguments, as before: a complete owner, and the fields are not sent.
    result(a.own(H1, "movie.mkv", 99))
    assert "have" not in world.http.sent[-1] and "pieces" not in world.http.sent[-1]
    assert result(c.need(H1)) == [Owner(1, "127.0.0.1", 9001, 0)]
    assert result(c.need(H1))[0].partial is False

    assert result(a.withdraw(H1.upper())) is None
    assert world.http.sent[-1] == {"mode": 1, "node_id": 1, "token": a.token, "info_hash": H1, "withdraw": True}
    assert result(c.need(H1)) == []
    assert result(a.withdraw(H1)) is None  # not an owner any more: still fine


def test_withdraw_before_registering_sends_nothing(world: World) -> None:
    # A client that never registered holds no ownership at the tracker.
    assert result(world.client(1).withdraw(H1)) is None
    assert world.http.sent == []


@pytest.mark.parametrize(
    "have, pieces",
    [(3, None), (None, 3), (4, 3), (-1, 3), (0, 0), (True, 3), (1, 2.0)],
)
def test_own_with_bad_progress_fails_early(world: World, have: Any, pieces: Any) -> None:
    with pytest.raises(ValueError):
        world.client(1).own(H1, "f", 1, have=have, pieces=pieces)
    assert world.http.sent == []


def test_need_parses_partial_owners() -> None:
    owners = [
        {"node_id": 3, "host": "10.0.0.3", "port": 7003, "frequency": 2, "partial": True, "have": 0, "pieces": 9},
        {"node_id": 5, "host": "10.0.0.5", "port": 7005, "frequency": 0, "partial": False},
        {"node_id": 6, "host": "10.0.0.6", "port": 7006, "frequency": 0},  # a tracker older than partial owners
    ]
    answer = {"ok": True, "info_hash": H1, "name": "f", "owners": owners}
    client, _, _ = scripted(lambda: succeed(FakeResponse(200, json.dumps(answer).encode())))
    client.token = "known"
    assert result(client.need(H1)) == [
        Owner(3, "10.0.0.3", 7003, 2, partial=True, have=0, pieces=9),
        Owner(5, "10.0.0.5", 7005, 0),
        Owner(6, "10.0.0.6", 7006, 0),
    ]


@pytest.mark.parametrize(
    "extra",
    [
        {"partial": "yes"},
        {"partial": 1},
        {"partial": None},
        {"partial": True},
        {"partial": True, "have": 1},
        {"partial": True, "pieces": 4},
        {"partial": True, "have": 4, "pieces": 4},
        {"partial": True, "have": 5, "pieces": 4},
        {"partial": True, "have": -1, "pieces": 4},
        {"partial": True, "have": True, "pieces": 4},
        {"partial": True, "have": "1", "pieces": 4},
        {"partial": True, "have": 1, "pieces": 4.0},
    ],
)
def test_a_malformed_partial_owner_is_a_protocol_error(extra: dict[str, Any]) -> None:
    owner = {"node_id": 3, "host": "10.0.0.3", "port": 7003, "frequency": 2, **extra}
    answer = {"ok": True, "info_hash": H1, "name": "f", "owners": [owner]}
    client, _, _ = scripted(lambda: succeed(FakeResponse(200, json.dumps(answer).encode())))
    client.token = "known"
    assert "bad owner" in str(failure_of(client.need(H1), TrackerProtocolError))


def test_update_with_nobody_else_sends_nothing(world: World) -> None:
    client = world.client(1)
    result(client.register())
    before = len(world.http.sent)
    assert result(client.update(H1, [1, 1])) == []
    assert len(world.http.sent) == before


def test_a_call_before_registering_registers_first(world: World) -> None:
    client = world.client(1)
    assert result(client.need(H1)) == []
    assert world.http.modes() == [0, 2]
    # The join was new, and the next register() says so: the node must announce its files.
    assert result(client.register()) is True
    assert result(client.register()) is False


class GatedHTTP:
    """Holds every request until the test releases it: calls overlap as on a real network."""

    def __init__(self, inner: CountingHTTP) -> None:
        self.inner = inner
        self.held: list[tuple[str, bytes, dict[str, Any], Deferred[Any]]] = []

    def post(self, url: str, data: bytes, **kw: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.held.append((url, data, kw, d))
        return d

    def modes(self) -> list[int]:
        return [json.loads(data)["mode"] for _, data, _, _ in self.held]

    def release(self) -> None:
        held, self.held = self.held, []
        for url, data, kw, d in held:
            self.inner.post(url, data=data, **kw).chainDeferred(d)


def test_overlapping_calls_share_one_register(world: World) -> None:
    gate = GatedHTTP(world.http)
    client = TrackerClient(gate, BASE, world.clock, CFG, 1, 9001)
    beat = client.register()
    asked = client.need(H1)
    also = client.register()
    assert gate.modes() == [0]  # one REGISTER in flight, not three
    gate.release()
    assert gate.modes() == [2]
    gate.release()
    assert result(asked) == []
    # The join is reported as new exactly once.
    assert sorted([result(beat), result(also)]) == [False, True]
    assert world.http.modes() == [0, 2]


def test_a_restarted_node_that_lost_its_token_gets_back_in(world: World) -> None:
    checks = LoopingCall(world.web.check_liveness)
    checks.clock = world.clock
    checks.start(CFG.TRACKER_TIME_INTERVAL, now=True)
    result(world.client(1).register())  # the node's previous life, then a crash
    reborn = world.client(1)
    announcer = Announcer(reborn, [H1])
    HeartbeatService(reborn, CFG.NODE_TIME_INTERVAL, world.clock, announcer).startService()
    assert announcer.calls == 0  # refused (403) while the old record lives
    for _ in range(10):
        world.clock.advance(CFG.NODE_TIME_INTERVAL)
    assert announcer.calls == 1 and world.state.owners(H1) == {1}


class LosesAnswers:
    """Hands each request to the tracker, but the answers of the first *lose* REGISTERs never arrive."""

    def __init__(self, inner: Any, lose: int) -> None:
        self.inner = inner
        self.lose = lose

    def post(self, url: str, data: bytes, **kw: Any) -> Deferred[Any]:
        d = self.inner.post(url, data=data, **kw)
        if json.loads(data)["mode"] == 0 and self.lose > 0:
            self.lose -= 1
            d.addCallback(lambda _: fail(ResponseNeverReceived([Failure(ConnectionRefusedError())])))
        return d


@pytest.mark.parametrize("lost", [1, 3])
def test_a_join_whose_answer_was_lost_is_simply_sent_again(world: World, lost: int) -> None:
    # The tracker took the join (and saved it) but the node never heard back: a kill between the
    # save and the answer, a timeout, a lost connection.  Its next heartbeat must get it in at once.
    world.client(1)  # (an unrelated client first: proposals differ per client)
    client = world.client(1)
    client.http = LosesAnswers(world.http, lose=lost)
    announcer = Announcer(client, [H1])
    service = HeartbeatService(client, CFG.NODE_TIME_INTERVAL, world.clock, announcer)
    service.startService()
    for _ in range(lost - 1):
        world.clock.advance(CFG.NODE_TIME_INTERVAL)
    assert 1 in world.state and client.token is None and announcer.calls == 0
    world.clock.advance(CFG.NODE_TIME_INTERVAL)
    # Taken as a heartbeat of the node the tracker already had, and reported as new all the same,
    # so the node announces its files.
    assert client.token is not None and announcer.calls == 1
    assert world.state.owners(H1) == {1}
    assert world.http.modes() == [0] * (lost + 1) + [1]
    assert len({body["token"] for body in world.http.sent}) == 1
    world.clock.advance(CFG.NODE_TIME_INTERVAL)
    assert announcer.calls == 1
    result(service.stopService())


def test_forgotten_node_registers_again_once_and_retries(world: World) -> None:
    client = world.client(1)
    result(client.register())
    world.forget(1)
    result(client.own(H1, "f", 1))
    assert world.http.modes() == [0, 1, 0, 1]
    assert world.state.owners(H1) == {1}
    # The tracker had forgotten everything: the next heartbeat reports it once.
    assert result(client.register()) is True
    assert result(client.register()) is False


def test_a_refusal_is_not_retried(world: World) -> None:
    first, impostor = world.client(1), world.client(1)
    result(first.register())
    error = failure_of(impostor.register(), TrackerRefused)
    assert isinstance(error, TrackerRefused)
    # The impostor proposed a token of its own: not the one node 1 has.
    assert error.status == 403 and "wrong token" in error.message
    assert str(error) == "tracker refused REGISTER: 403 wrong token for node 1"
    error = failure_of(first.own("cd" * 20, "", 1), TrackerRefused)
    assert error.status == 400 and "'name'" in str(error)  # type: ignore[attr-defined]
    assert world.http.modes() == [0, 0, 1]


def test_exit_is_done_when_the_tracker_already_forgot_us(world: World) -> None:
    client = world.client(1)
    assert result(client.exit()) is None  # never registered: nothing to say
    assert world.http.sent == []
    result(client.register())
    world.forget(1)
    assert result(client.exit()) is None
    assert client.token is None


def test_bad_arguments_fail_early(world: World) -> None:
    client = world.client(1)
    with pytest.raises(ValueError, match="40 hexadecimal"):
        client.need("abc")
    assert world.http.sent == []


# ---------------------------------------------------------------- failures


class FakeResponse:
    def __init__(self, code: int, content: bytes) -> None:
        self.code = code
        self._content = content

    def content(self) -> Deferred[bytes]:
        return succeed(self._content)


class ScriptedHTTP:
    """A treq-like object whose posts return what a test scripted."""

    def __init__(self, answer: Callable[[], Any]) -> None:
        self.answer = answer
        self.calls = 0

    def post(self, url: str, data: bytes, **kw: Any) -> Any:
        self.calls += 1
        return self.answer()


def scripted(answer: Callable[[], Any]) -> tuple[TrackerClient, Clock, ScriptedHTTP]:
    clock = Clock()
    http = ScriptedHTTP(answer)
    return TrackerClient(http, BASE, clock, CFG, 1, 9001), clock, http


def test_connection_refused_is_a_clear_unavailable() -> None:
    client, _, _ = scripted(lambda: fail(ConnectionRefusedError("Connection refused")))
    error = failure_of(client.register(), TrackerUnavailable)
    assert str(error) == "tracker at http://tracker.example:12345 did not answer REGISTER: connection refused"


@pytest.mark.parametrize(
    "exc, words",
    [
        (DNSLookupError("no such host"), "cannot resolve"),
        (ResponseNeverReceived([Failure(Exception("reset"))]), "connection was lost"),
        (RuntimeError("odd"), "RuntimeError: odd"),
    ],
)
def test_other_transport_errors_are_unavailable(exc: Exception, words: str) -> None:
    client, _, _ = scripted(lambda: fail(exc))
    assert words in str(failure_of(client.register(), TrackerUnavailable))


def test_an_http_object_raising_is_unavailable_too() -> None:
    def boom() -> Any:
        raise ConnectionRefusedError()

    client, _, _ = scripted(boom)
    assert "connection refused" in str(failure_of(client.register(), TrackerUnavailable))


def test_every_call_times_out_on_the_injected_clock() -> None:
    pending: list[Deferred[Any]] = []
    client, clock, _ = scripted(lambda: pending.append(Deferred()) or pending[-1])
    assert client.timeout == CFG.NODE_TIME_INTERVAL / 2
    d = client.register()
    clock.advance(client.timeout - 0.1)
    assert not d.called
    clock.advance(0.1)
    assert "did not answer REGISTER: no answer within 10 s" in str(failure_of(d, TrackerUnavailable))
    assert pending[0].called  # the request itself was cancelled, not left hanging


def test_a_timeout_is_said_as_one_when_the_cancelled_request_reports_a_lost_connection() -> None:
    # What treq's agent does with a request cancelled before its answer.
    def request() -> Deferred[Any]:
        return Deferred(lambda d: d.errback(ResponseNeverReceived([Failure(CancelledError())])))

    client, clock, _ = scripted(request)
    d = client.need("ab" * 20)
    clock.advance(client.timeout)
    assert "did not answer REGISTER: no answer within 10 s" in str(failure_of(d, TrackerUnavailable))


def test_server_errors_and_foreign_answers() -> None:
    client, _, _ = scripted(lambda: succeed(FakeResponse(500, b'{"ok": false, "error": "internal error in the tracker"}')))
    assert "failed on REGISTER: 500 internal error in the tracker" in str(failure_of(client.register(), TrackerUnavailable))
    client, _, _ = scripted(lambda: succeed(FakeResponse(200, b"<html>hello</html>")))
    assert "no JSON result: <html>hello</html>" in str(failure_of(client.register(), TrackerProtocolError))
    client, _, _ = scripted(lambda: succeed(FakeResponse(404, b"Not Found")))
    error = failure_of(client.register(), TrackerRefused)
    assert (error.status, error.message) == (404, "Not Found")  # type: ignore[attr-defined]
    client, _, _ = scripted(lambda: succeed(FakeResponse(200, b'{"ok": true, "new": true}')))
    assert "without token" in str(failure_of(client.register(), TrackerProtocolError))


# ---------------------------------------------------------------- heartbeat service


class Announcer:
    """The node's on_new: announce every seeded file again."""

    def __init__(self, client: TrackerClient, files: list[str]) -> None:
        self.client = client
        self.files = files
        self.calls = 0
        self.fail_next = 0

    def __call__(self) -> Deferred[Any]:
        self.calls += 1
        if self.fail_next:
            self.fail_next -= 1
            return fail(TrackerUnavailable("tracker at x did not answer OWN: connection refused"))
        return gatherResults([self.client.own(h, "f", 1) for h in self.files], consumeErrors=True)


def test_heartbeat_registers_at_once_then_every_interval(world: World) -> None:
    client = world.client(1)
    announcer = Announcer(client, [H1])
    service = HeartbeatService(client, CFG.NODE_TIME_INTERVAL, world.clock, announcer)
    service.startService()
    assert world.http.modes() == [0, 1]  # joined and announced at once
    assert announcer.calls == 1
    for _ in range(10):
        world.clock.advance(CFG.NODE_TIME_INTERVAL)
    assert world.http.modes() == [0, 1] + [0] * 10
    assert announcer.calls == 1
    result(service.stopService())
    world.clock.advance(100)
    assert len(world.http.sent) == 12


def test_heartbeat_calls_on_new_after_the_tracker_forgot_the_node(world: World) -> None:
    seeder, asker = world.client(1), world.client(2)
    announcer = Announcer(seeder, [H1])
    HeartbeatService(seeder, CFG.NODE_TIME_INTERVAL, world.clock, announcer).startService()
    result(asker.register())
    assert [o.node_id for o in result(asker.need(H1))] == [1]

    world.forget(1)
    assert result(asker.need(H1)) == []
    world.clock.advance(CFG.NODE_TIME_INTERVAL)
    assert announcer.calls == 2
    assert [o.node_id for o in result(asker.need(H1))] == [1]


def test_heartbeat_loop_survives_failures_and_retries_the_announcement(world: World) -> None:
    client = world.client(1)
    announcer = Announcer(client, [H1])
    announcer.fail_next = 2
    real_post = world.http.post
    down = [True]

    def post(url: str, data: bytes, **kw: Any) -> Deferred[Any]:
        return fail(ConnectionRefusedError()) if down[0] else real_post(url, data=data, **kw)

    client.http = ScriptedHTTP(lambda: None)
    client.http.post = post  # type: ignore[method-assign]
    service = HeartbeatService(client, CFG.NODE_TIME_INTERVAL, world.clock, announcer)
    service.startService()
    world.clock.advance(CFG.NODE_TIME_INTERVAL)
    assert service._loop is not None and service._loop.running
    assert announcer.calls == 0

    down[0] = False
    world.clock.advance(CFG.NODE_TIME_INTERVAL)  # joins; the announcement fails
    world.clock.advance(CFG.NODE_TIME_INTERVAL)  # heartbeat; the announcement fails again
    assert announcer.calls == 2 and world.state.owners(H1) == frozenset()
    world.clock.advance(CFG.NODE_TIME_INTERVAL)  # heartbeat; the announcement succeeds
    assert announcer.calls == 3 and world.state.owners(H1) == {1}
    world.clock.advance(CFG.NODE_TIME_INTERVAL)
    assert announcer.calls == 3
    assert service._loop.running


def test_heartbeat_body_never_raises_even_on_bugs(world: World) -> None:
    client = world.client(1)
    calls = [0]

    def broken_register() -> Deferred[bool]:
        calls[0] += 1
        raise RuntimeError("bug in register")

    client.register = broken_register  # type: ignore[method-assign]
    service = HeartbeatService(client, CFG.NODE_TIME_INTERVAL, world.clock, lambda: (_ for _ in ()).throw(ValueError()))
    service.startService()
    for _ in range(3):
        world.clock.advance(CFG.NODE_TIME_INTERVAL)
    assert calls[0] == 4
    assert service._loop is not None and service._loop.running


def test_every_missed_heartbeat_is_told_and_a_raising_listener_does_not_stop_the_loop(world: World) -> None:
    client = world.client(1)
    down = [True]
    real_post = world.http.post

    def post(url: str, data: bytes, **kw: Any) -> Deferred[Any]:
        return fail(ConnectionRefusedError()) if down[0] else real_post(url, data=data, **kw)

    client.http = ScriptedHTTP(lambda: None)
    client.http.post = post  # type: ignore[method-assign]
    misses = [0]

    def missed() -> None:
        misses[0] += 1
        raise RuntimeError("bug in the listener")

    service = HeartbeatService(client, CFG.NODE_TIME_INTERVAL, world.clock, lambda: None, on_miss=missed)
    service.startService()
    world.clock.advance(CFG.NODE_TIME_INTERVAL)
    assert misses[0] == 2
    down[0] = False
    world.clock.advance(CFG.NODE_TIME_INTERVAL)  # got through: nothing missed
    assert misses[0] == 2 and service.problem is None
    down[0] = True
    world.clock.advance(CFG.NODE_TIME_INTERVAL)
    assert misses[0] == 3
    assert service._loop is not None and service._loop.running


def test_stopping_cancels_a_heartbeat_in_flight(world: World) -> None:
    pending: list[Deferred[Any]] = []
    client = TrackerClient(ScriptedHTTP(lambda: pending.append(Deferred()) or pending[-1]), BASE, world.clock, CFG, 1, 9001)
    service = HeartbeatService(client, CFG.NODE_TIME_INTERVAL, world.clock, lambda: None)
    service.startService()
    assert len(pending) == 1 and not pending[0].called
    stopped = service.stopService()
    assert result(stopped) is None
    assert pending[0].called  # cancelled, not left to arrive after the node's EXIT


def test_a_heartbeating_node_outlives_many_liveness_checks_and_a_silent_one_does_not(world: World) -> None:
    checks = LoopingCall(world.web.check_liveness)
    checks.clock = world.clock
    checks.start(CFG.TRACKER_TIME_INTERVAL, now=True)
    steady, quiet = world.client(1), world.client(2)
    world.clock.advance(3.0)
    steady_service = HeartbeatService(steady, CFG.NODE_TIME_INTERVAL, world.clock, Announcer(steady, [H1]))
    steady_service.startService()
    quiet_service = HeartbeatService(quiet, CFG.NODE_TIME_INTERVAL, world.clock, Announcer(quiet, [H1]))
    quiet_service.startService()
    for _ in range(100):
        world.clock.advance(CFG.NODE_TIME_INTERVAL / 4)
    assert world.state.owners(H1) == {1, 2}

    result(quiet_service.stopService())  # a crash: no EXIT
    stopped_at = world.clock.seconds()
    while 2 in world.state:
        world.clock.advance(1.0)
        assert world.clock.seconds() - stopped_at < (CFG.TRACKER_MISSED_CHECKS + 1) * CFG.TRACKER_TIME_INTERVAL
    assert world.state.owners(H1) == {1}
    for _ in range(100):
        world.clock.advance(CFG.NODE_TIME_INTERVAL / 4)
    assert 1 in world.state
