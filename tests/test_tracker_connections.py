"""Connections to the tracker (issue 13): caps per address and in all, request deadlines, idle keep-alive,
trusted proxies and the open-file limit.

The site is driven in memory with a Clock and StringTransports (real HTTP
bytes into the real TrackerSite and TrackerHTTP), so every deadline is exact on
any machine; one test runs the tap's service on loopback with real sockets and
waits for close events, never for a time.
"""

from __future__ import annotations

import gc
import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogBeginner, Logger, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure

from p2ptorrent.config import Config, ConfigError, load
from p2ptorrent.tracker import tap
from p2ptorrent.tracker.connections import (
    FILES_KEPT_FREE,
    ConnectionEvents,
    ConnectionLimits,
    ConnectionPolicy,
    OpenFileLimit,
    Refused,
    client_address,
    connection_cap,
    raise_open_file_limit,
    trusted_networks,
)
from p2ptorrent.tracker.http import TrackerHTTP, TrackerSite, _client_host
from p2ptorrent.tracker.sqlite_store import SqliteStore, read_docs
from p2ptorrent.tracker.state import SwarmState
from trackerkit import MemoryStore

REPO = Path(__file__).resolve().parent.parent


def register_bytes(node_id: int, port: int, extra_headers: bytes = b"") -> bytes:
    body = json.dumps({"mode": 0, "node_id": node_id, "port": port}).encode()
    return (
        b"POST / HTTP/1.1\r\nHost: tracker\r\nContent-Type: application/json\r\n%s"
        b"Content-Length: %d\r\n\r\n%s" % (extra_headers, len(body), body)
    )


class Conn:
    """One connection into the site: what the reactor would do, by hand (a refused one has no channel)."""

    def __init__(self, site: TrackerSite, host: str, port: int = 40000) -> None:
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        self.channel = site.buildProtocol(self.transport.getPeer())
        self.lost = False
        if self.channel is not None:
            self.channel.makeConnection(self.transport)

    @property
    def refused(self) -> bool:
        return self.channel is None

    @property
    def closing(self) -> bool:
        """The tracker closed (or aborted) it."""
        return self.transport.disconnecting

    def send(self, data: bytes) -> None:
        assert self.channel is not None and not self.closing
        self.channel.dataReceived(data)

    def settle(self) -> None:
        """Deliver connectionLost once the tracker closed it, as the reactor does."""
        if self.channel is not None and self.closing and not self.lost:
            self.lost = True
            self.channel.connectionLost(Failure(ConnectionDone()))

    def answers(self) -> list[tuple[int, dict[str, Any]]]:
        out = []
        for raw in self.transport.value().split(b"HTTP/1.1 ")[1:]:
            head, _, body = raw.partition(b"\r\n\r\n")
            out.append((int(head.split(b" ", 1)[0]), json.loads(body)))
        return out


class World:
    """The real TrackerHTTP behind a real TrackerSite on a Clock."""

    def __init__(self, settings: Config) -> None:
        self.clock = Clock()
        self.settings = settings
        self.state = SwarmState(settings, random.Random(3))
        self.web = TrackerHTTP(self.state, MemoryStore(), self.clock, settings)
        self.site = TrackerSite(
            self.web.resource(), settings.TRACKER_MAX_BODY, policy=ConnectionPolicy.from_settings(settings),
            reactor=self.clock,
        )
        self.conns: list[Conn] = []

    def connect(self, host: str) -> Conn:
        conn = Conn(self.site, host, 40000 + len(self.conns))
        self.conns.append(conn)
        return conn

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        for conn in self.conns:
            conn.settle()

    def register(self, host: str, node_id: int, extra_headers: bytes = b"") -> tuple[int, dict[str, Any]]:
        conn = self.connect(host)
        conn.send(register_bytes(node_id, 9000 + node_id, extra_headers))
        [answer] = conn.answers()
        return answer


CFG = Config().replace(TRACKER_MAX_CONNECTIONS_PER_HOST=4, TRACKER_REQUEST_TIMEOUT=10.0, TRACKER_IDLE_TIMEOUT=60.0)


@pytest.fixture
def log_events() -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen  # type: ignore[misc]
    globalLogPublisher.removeObserver(seen.append)


def lines(events: list[dict[str, Any]], words: str) -> list[str]:
    return [text for text in map(formatEvent, events) if words in text]


# ---------------------------------------------------------------- slowloris, in memory on a Clock


def test_slowloris_over_the_cap_is_closed_unread_the_slow_are_cut_at_the_deadline_and_a_node_is_served(
    log_events: list[dict[str, Any]],
) -> None:
    world = World(CFG)
    slow = [world.connect("10.9.9.9") for _ in range(10)]
    held = slow[:4]
    assert [c.refused for c in slow] == [False] * 4 + [True] * 6  # closed as accepted: nothing read
    assert world.site.limits.open == {"10.9.9.9": 4}
    assert world.site.events.totals == {Refused.PER_HOST: 6}

    # One header line every 3 s: each line is data, but the deadline runs from the connection's start.
    for c in held:
        c.send(b"POST / HTTP/1.1\r\n")
    for _ in range(3):
        world.advance(3)
        for c in held:
            c.send(b"X-Slow: yes\r\n")
        # A node from elsewhere is served while the slow ones are held.
        code, answer = world.register("10.0.0.1", len(world.conns))
        assert (code, answer["ok"]) == (200, True)
        assert not any(c.closing for c in held)
    assert world.clock.seconds() == 9
    world.advance(1)
    assert all(c.closing and c.transport.disconnected for c in held)  # aborted at 10 s: nothing owed
    assert world.site.events.totals == {Refused.PER_HOST: 6, Refused.SLOW: 4}
    assert "10.9.9.9" not in world.site.limits.open
    # Room again for the address, and a request that arrives in time is served.
    assert world.register("10.9.9.9", 77)[0] == 200

    # Ten refused or cut connections, one warning at once; the rest summed up once, 30 s later.
    assert len(lines(log_events, "closed a connection from 10.9.9.9: over the cap per address")) == 1
    assert lines(log_events, "closed more connections") == []
    world.advance(30)
    [summary] = lines(log_events, "closed more connections")
    assert "5 over the cap per address from 1 addresses (10.9.9.9 5)" in summary
    assert "4 request not received in time from 1 addresses (10.9.9.9 4)" in summary
    assert not lines(log_events, "Timing out client")
    world.advance(300)
    assert len(lines(log_events, "closed more connections")) == 1  # nothing new: quiet


def test_at_the_cap_in_all_the_oldest_waiting_request_makes_room_for_a_node() -> None:
    world = World(CFG)
    world.site.set_total(6)
    slow = [world.connect(f"10.9.0.{i}") for i in range(6)]  # six addresses, nothing sent
    world.advance(1)
    late = world.connect("10.9.0.99")
    assert not late.refused and slow[0].closing and slow[0].transport.disconnected
    assert world.site.events.totals == {Refused.EVICTED: 1}
    code, answer = world.register("10.0.0.1", 1)  # takes slow[1]'s place, and is answered at once
    assert (code, answer["ok"]) == (200, True) and slow[1].closing
    assert world.site.limits.count == 6
    world.advance(10)  # the four left and the late one reach their deadline; the node's keep-alive stays
    assert world.site.limits.open == {"10.0.0.1": 1} and world.site.events.totals[Refused.SLOW] == 5


def test_at_the_cap_in_all_without_a_waiting_request_a_new_connection_is_refused() -> None:
    world = World(CFG)
    world.site.set_total(3)
    busy = [world.connect(f"10.0.0.{i}") for i in range(3)]
    for conn in busy:
        conn.send(b"GET / HTTP/1.1\r\nHost: tracker\r\n\r\n")  # answered; now idle keep-alive
    assert world.connect("10.0.0.9").refused
    assert world.site.events.totals == {Refused.TOTAL: 1}
    assert not any(c.closing for c in busy)


def test_keep_alive_waits_idle_timeout_then_each_request_has_its_deadline() -> None:
    world = World(CFG)
    conn = world.connect("10.0.0.1")
    conn.send(register_bytes(1, 9001))
    world.advance(59)  # idle between heartbeats: not a slow request
    assert not conn.closing
    conn.send(b"POST / HTTP/1.1\r\n")  # the first byte of the next request starts its deadline
    world.advance(9)
    conn.send(b"X-Slow: yes\r\n")
    assert not conn.closing
    world.advance(1)
    assert conn.closing and world.site.events.totals == {Refused.SLOW: 1}

    idle = world.connect("10.0.0.2")
    idle.send(register_bytes(2, 9002))
    world.advance(59.5)
    assert not idle.closing
    world.advance(0.5)
    assert idle.closing and not idle.transport.disconnected  # closed cleanly after the answer was sent
    assert world.site.idle_closed == 1
    assert [code for code, _ in idle.answers()] == [200]


def test_a_request_in_time_from_a_keep_alive_connection_is_served_again() -> None:
    world = World(CFG)
    conn = world.connect("10.0.0.1")
    for _ in range(5):
        conn.send(b"GET / HTTP/1.1\r\nHost: tracker\r\n\r\n")
        world.advance(20)  # a request every 20 s, as a node's heartbeat
    assert [code for code, _ in conn.answers()] == [200] * 5
    assert not conn.closing and world.site.limits.open == {"10.0.0.1": 1}


def test_a_connection_without_an_address_counts_only_in_all() -> None:
    site = TrackerSite(World(CFG).web.resource(), 1024, policy=ConnectionPolicy.from_settings(CFG), reactor=Clock())
    channels = [site.buildProtocol(UNIXAddress(b"/tmp/s")) for _ in range(10)]
    assert all(c is not None for c in channels)
    assert site.limits.open == {None: 10} and site.limits.count == 10


# ---------------------------------------------------------------- trusted proxies


PROXY = "10.0.0.5"


def proxied(proxies: tuple[str, ...]) -> World:
    return World(CFG.replace(TRACKER_TRUSTED_PROXIES=proxies))


def test_from_a_trusted_proxy_the_forwarded_address_is_recorded() -> None:
    world = proxied((PROXY,))
    code, answer = world.register(PROXY, 1, b"X-Forwarded-For: 198.51.100.7\r\n")
    assert (code, answer["host"]) == (200, "198.51.100.7")
    assert world.state.node_ids() == [1]
    # A chain "client, proxy1" with proxy1 trusted: the client.
    world = proxied((PROXY, "10.1.0.0/16"))
    code, answer = world.register(PROXY, 2, b"X-Forwarded-For: 203.0.113.9, 10.1.2.3\r\n")
    assert (code, answer["host"]) == (200, "203.0.113.9")


def test_from_any_other_address_the_header_is_ignored() -> None:
    world = proxied((PROXY,))
    code, answer = world.register("192.0.2.44", 1, b"X-Forwarded-For: 198.51.100.7\r\n")
    assert (code, answer["host"]) == (200, "192.0.2.44")
    world = World(CFG)  # no trusted proxy at all (the default)
    code, answer = world.register(PROXY, 1, b"X-Forwarded-For: 198.51.100.7\r\n")
    assert (code, answer["host"]) == (200, PROXY)


@pytest.mark.parametrize(
    "peer, header, expected",
    [
        ("10.0.0.5", [b"198.51.100.7"], "198.51.100.7"),
        ("10.0.0.5", [b"203.0.113.9, 10.1.2.3"], "203.0.113.9"),  # client, proxy1 (trusted)
        ("10.0.0.5", [b"6.6.6.6, 203.0.113.9"], "203.0.113.9"),  # what the client wrote itself is never believed
        ("10.0.0.5", [b"6.6.6.6", b"203.0.113.9"], "203.0.113.9"),  # two header lines are one list
        ("10.0.0.5", [b"10.1.0.1, 10.1.0.2"], "10.1.0.1"),  # only proxies: the left-most
        ("10.0.0.5", [b"198.51.100.7, unknown"], "10.0.0.5"),  # garbage from the proxy side: the proxy
        ("10.0.0.5", [b"::ffff:198.51.100.7"], "198.51.100.7"),
        ("10.0.0.5", [b" 2001:db8::7 "], "2001:db8::7"),
        ("10.0.0.5", None, "10.0.0.5"),
        ("10.0.0.5", [b""], "10.0.0.5"),
        ("192.0.2.1", [b"198.51.100.7"], "192.0.2.1"),  # not a proxy
    ],
)
def test_client_address(peer: str, header: list[bytes] | None, expected: str) -> None:
    assert client_address(peer, header, trusted_networks(["10.0.0.5", "10.1.0.0/16"])) == expected


class FakeRequest:
    def __init__(self, address: Any, site: Any, forwarded: bytes | None) -> None:
        from twisted.web.http_headers import Headers

        self.address = address
        self.site = site
        self.requestHeaders = Headers({b"x-forwarded-for": [forwarded]} if forwarded else {})

    def getClientAddress(self) -> Any:
        return self.address


def test_client_host_reads_the_header_only_behind_a_trusted_site() -> None:
    site = proxied(("::ffff:0:0/96", "10.0.0.5")).site
    mapped = IPv6Address("TCP", "::ffff:10.0.0.5", 5)
    assert _client_host(FakeRequest(mapped, site, b"198.51.100.7")) == "198.51.100.7"  # type: ignore[arg-type]
    assert _client_host(FakeRequest(mapped, None, b"198.51.100.7")) == "10.0.0.5"  # type: ignore[arg-type]
    assert _client_host(FakeRequest(UNIXAddress(b"/s"), site, b"198.51.100.7")) is None  # type: ignore[arg-type]


def test_trusted_proxies_are_checked_at_start() -> None:
    assert load(None, {"TRACKER_TRUSTED_PROXIES": "10.0.0.5, 10.1.0.0/16"}).TRACKER_TRUSTED_PROXIES == (
        "10.0.0.5", "10.1.0.0/16",
    )
    assert load(None, {"TRACKER_TRUSTED_PROXIES": ["::1"]}).TRACKER_TRUSTED_PROXIES == ("::1",)
    for bad in ("proxy.example.org", "10.0.0.1/8", "10.0.0.300"):
        with pytest.raises(ConfigError, match="TRACKER_TRUSTED_PROXIES: .* is not an IP address or network"):
            load(None, {"TRACKER_TRUSTED_PROXIES": bad})


def test_trusted_proxy_option() -> None:
    options = tap.Options()
    options.parseOptions(["--trusted-proxy", "10.0.0.5", "--trusted-proxy", "10.1.0.0/16"])
    assert options["settings"].TRACKER_TRUSTED_PROXIES == ("10.0.0.5", "10.1.0.0/16")
    assert tap.Options().parseOptions([]) is None
    with pytest.raises(usage.UsageError, match="--trusted-proxy: 'nginx' is not an IP address or network"):
        tap.Options().parseOptions(["--trusted-proxy", "nginx"])
    assert "--trusted-proxy" in str(tap.Options())


@pytest.mark.parametrize(
    "argv, line",
    [
        (["p2ptracker", "--trusted-proxy", "nginx"],
         "twistd p2ptracker: error: --trusted-proxy: 'nginx' is not an IP address or network (e.g. 10.0.0.5 or 10.0.0.0/24)"),
        (["p2ptracker", "--set", "TRACKER_TRUSTED_PROXIES=10.0.0.1/8"],
         "twistd p2ptracker: error: TRACKER_TRUSTED_PROXIES: '10.0.0.1/8' is not an IP address or network"),
    ],
)
def test_a_refused_proxy_is_one_line_under_twistd(argv: list[str], line: str) -> None:
    from twisted.scripts.twistd import ServerOptions

    from p2ptorrent.options import SettingRefused

    with pytest.raises(SettingRefused) as e:
        ServerOptions().parseOptions(argv)
    assert isinstance(e.value.code, str) and "\n" not in e.value.code
    assert e.value.code.startswith(line)


@pytest.mark.parametrize(
    "setting, value, words",
    [
        ("TRACKER_MAX_CONNECTIONS_PER_HOST", "0", "must be at least 1"),
        ("TRACKER_MAX_CONNECTIONS", "-1", "must be 0 (from the open-file limit) or more"),
        ("TRACKER_REQUEST_TIMEOUT", "0", "must be a positive number of seconds"),
        ("TRACKER_IDLE_TIMEOUT", "-1", "must be a positive number of seconds"),
    ],
)
def test_bad_connection_settings_are_refused(setting: str, value: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(None, {setting: value})
    assert f"{setting} {words}" in str(caught.value)


# ---------------------------------------------------------------- the pure parts


def test_limits_count_per_address_and_in_all() -> None:
    limits = ConnectionLimits(per_host=2, total=3)
    assert [limits.opened("a"), limits.opened("a"), limits.opened("a")] == [(None, None)] * 2 + [(Refused.PER_HOST, None)]
    assert [limits.opened("b"), limits.opened("c")] == [(None, None), (Refused.TOTAL, None)]
    limits.closed("a")
    assert limits.opened("c") == (None, None)
    for host in ("a", "b", "c"):
        limits.closed(host)
    assert (limits.open, limits.count) == ({}, 0)


def test_at_the_cap_in_all_the_oldest_waiting_connection_is_the_victim() -> None:
    limits = ConnectionLimits(per_host=5, total=3)
    for conn, host in (("c1", "a"), ("c2", "b"), ("c3", "a")):
        assert limits.opened(host) == (None, None)
        limits.waits(conn, host)
    limits.received("c1")  # c1's request arrived: it is not a victim
    assert limits.opened("d") == (None, "c2")
    assert (limits.open, limits.count, list(limits.waiting)) == ({"a": 2, "d": 1}, 3, ["c3"])
    assert limits.opened("d") == (None, "c3")
    assert limits.opened("d") == (Refused.TOTAL, None)  # nothing left waiting


def test_events_are_logged_once_then_summed_up_per_interval() -> None:
    events = ConnectionEvents(interval=30.0)
    line, due = events.record(Refused.PER_HOST, "10.0.0.1", 0.0)
    assert line == "closed a connection from 10.0.0.1: over the cap per address (more are summed up every 30 s)"
    assert due == 30.0
    for i in range(2000):
        assert events.record(Refused.PER_HOST, f"10.1.{i // 256}.{i % 256}", 1.0) == (None, None)
    line, due = events.summary(30.0)
    assert line is not None and due == 60.0
    assert "2000 over the cap per address from 1025 addresses" in line  # 1024 apart, the rest together
    assert "other addresses 976" in line
    assert events.summary(60.0) == (None, None)
    assert events.record(Refused.SLOW, None, 61.0)[0] == (
        "closed a connection from a local peer: request not received in time (more are summed up every 30 s)"
    )
    assert events.totals == {Refused.PER_HOST: 2001, Refused.SLOW: 1}


def test_the_cap_in_all_leaves_room_under_the_open_file_limit() -> None:
    assert connection_cap(0, 1024) == (1024 - FILES_KEPT_FREE, None)
    assert connection_cap(500, 1024) == (500, None)
    total, why = connection_cap(5000, 1024)
    assert total == 1024 - FILES_KEPT_FREE and why is not None and "open-file limit 1024" in why
    assert connection_cap(0, None)[0] > 0


class FakeResource:
    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft: int, hard: int, refuse: bool = False) -> None:
        self.limits = (soft, hard)
        self.refuse = refuse

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == self.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        if self.refuse:
            raise ValueError("not allowed")
        self.limits = limits


def test_the_open_file_limit_is_raised_to_the_hard_one() -> None:
    fake = FakeResource(1024, 20000)
    limit = raise_open_file_limit(fake)
    assert fake.limits == (20000, 20000) and limit == OpenFileLimit(1024, 20000, 20000)
    assert limit.describe() == "open files: soft limit raised from 1024 to 20000"
    assert raise_open_file_limit(fake).describe() == "open files: soft limit 20000 (the hard limit)"
    refused = raise_open_file_limit(FakeResource(1024, -1, refuse=True))
    assert refused.soft == 1024
    assert refused.describe() == "open files: could not raise the soft limit from 1024 to unlimited: not allowed"

    class Broken:
        def getrlimit(self, which: int) -> None:
            raise OSError("no such limit")

        RLIMIT_NOFILE = 7

    assert raise_open_file_limit(Broken()).describe() == "open files: limit unknown (no such limit)"


def test_the_real_limit_is_raised_in_a_process_that_lowered_it() -> None:
    code = textwrap.dedent("""
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        low = 256 if hard == resource.RLIM_INFINITY else min(256, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
        from p2ptorrent.tracker.connections import raise_open_file_limit
        print(raise_open_file_limit().describe())
        print(resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard) or resource.getrlimit(resource.RLIMIT_NOFILE))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    said, raised = out.stdout.splitlines()
    assert said.startswith("open files: soft limit raised from 256 to ") or said.startswith(
        "open files: could not raise"), said  # an unlimited hard limit may be refused (macOS)
    if said.startswith("open files: soft limit raised"):
        assert raised == "True"


def test_the_tap_raises_the_limit_and_caps_connections_below_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeResource(1024, 4096)
    monkeypatch.setattr(tap, "raise_open_file_limit", lambda: raise_open_file_limit(fake))
    options = tap.Options()
    options.parseOptions(["--tracker-db-dir", str(tmp_path / "db"), "--logs-dir", str(tmp_path / "logs"),
                          "--listen", "tcp:0:interface=127.0.0.1", "--set", "TRACKER_MAX_CONNECTIONS_PER_HOST=9"])
    service = tap.makeService(options, reactor=MemoryReactorClock())
    service.startService()
    service.stopService()
    site = service.getServiceNamed("http").site
    assert (site.limits.total, site.limits.per_host) == (4096 - FILES_KEPT_FREE, 9)
    assert (site.policy.request_timeout, site.timeOut) == (10.0, 60.0)
    log = (tmp_path / "logs" / "tracker.log").read_text()
    assert "open files: soft limit raised from 1024 to 4096" in log
    assert f"connections: at most {4096 - FILES_KEPT_FREE} in all and 9 per address" in log


# ---------------------------------------------------------------- the real thing, on loopback


class Closes:
    """How many slowloris connections the tracker has closed; :meth:`reach` fires when there are *n*."""

    def __init__(self) -> None:
        self.count = 0
        self.waiting: list[tuple[int, Deferred[None]]] = []

    def one(self) -> None:
        self.count += 1
        for n, d in [w for w in self.waiting if w[0] <= self.count]:
            self.waiting.remove((n, d))
            d.callback(None)

    def reach(self, n: int) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.waiting.append((n, d))
        if self.count >= n:
            self.waiting.remove((n, d))
            d.callback(None)
        return d


class Slow(Protocol):
    """A slowloris client: sends the start of a request and then nothing."""

    def __init__(self, closes: Closes) -> None:
        self.closes = closes

    def connectionMade(self) -> None:
        self.transport.write(b"POST / HTTP/1.1\r\nHost: tracker\r\n")  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.closes.one()


@pytest_twisted.ensureDeferred
async def test_slowloris_on_loopback(tmp_path: Path) -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.web.client import Agent, HTTPConnectionPool
    from treq.client import HTTPClient

    from p2ptorrent.node.tracker_client import TrackerClient

    options = tap.Options()
    options.parseOptions(["--tracker-db-dir", str(tmp_path / "db"), "--logs-dir", str(tmp_path / "logs"),
                          "--listen", "tcp:0:interface=127.0.0.1",
                          "--set", "TRACKER_MAX_CONNECTIONS_PER_HOST=4", "--set", "TRACKER_REQUEST_TIMEOUT=2"])
    service = tap.makeService(options, reactor=reactor)
    service.startService()
    http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    try:
        server = service.getServiceNamed("http")
        port = (await server.listening()).getHost().port
        site = server.site
        closes = Closes()
        for _ in range(10):
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=("127.0.0.2", 0))
            await connectProtocol(endpoint, Slow(closes))
        # Six are over the cap: closed unread, long before the others' deadline.
        await closes.reach(6)
        assert site.events.totals[Refused.PER_HOST] == 6
        # A node on another address registers, whatever the slow ones do.
        client = TrackerClient(http, f"http://127.0.0.1:{port}", reactor, Config(), 7, 9007)
        assert await client.register() is True
        # Every slow connection ends: six at once, four at their deadline.
        await closes.reach(10)
        assert site.events.totals == {Refused.PER_HOST: 6, Refused.SLOW: 4}
        assert site.limits.open.get("127.0.0.2") is None
    finally:
        await service.stopService()
    log = (tmp_path / "logs" / "tracker.log").read_text()
    assert "closed a connection from 127.0.0.2: over the cap per address" in log
    assert "open files:" in log



@pytest_twisted.ensureDeferred
async def test_a_form_body_is_not_parsed_as_a_form_but_refused_as_json(tmp_path: Path) -> None:
    """Bodies are JSON: twisted.web's form parsing is off (it cost a quarter of a heartbeat's CPU), so a
    multipart body with a broken boundary gets the tracker's own JSON refusal, not twisted.web's bare 400."""
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool
    from treq.client import HTTPClient

    options = tap.Options()
    options.parseOptions(["--tracker-db-dir", str(tmp_path / "db"), "--logs-dir", str(tmp_path / "logs"),
                          "--listen", "tcp:0:interface=127.0.0.1"])
    service = tap.makeService(options, reactor=reactor)
    service.startService()
    http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    try:
        port = (await service.getServiceNamed("http").listening()).getHost().port
        for ctype, body in [(b"multipart/form-data; boundary=x", b"--y\r\nnot a part\r\n"),
                            (b"application/x-www-form-urlencoded", b"mode=0&node_id=1&port=2")]:
            response = await http.post(f"http://127.0.0.1:{port}/", body, headers={b"content-type": [ctype]})
            assert response.code == 400
            assert (await response.json())["error"].startswith("body is not valid JSON"), ctype
        answer = await http.post(f"http://127.0.0.1:{port}/", json.dumps({"mode": 0, "node_id": 1, "port": 2}).encode(),
                                 headers={b"content-type": [b"application/json"]})
        assert answer.code == 200 and (await answer.json())["new"] is True
    finally:
        await service.stopService()


# ---------------------------------------------------------------- POST / and the garbage collector


def post_bytes(doc: dict[str, Any]) -> bytes:
    body = json.dumps(doc).encode()
    return (
        b"POST / HTTP/1.1\r\nHost: tracker\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
    )


class Poster:
    """One keep-alive connection that posts tracker requests and reads each answer."""

    def __init__(self, conn: Conn, settle: Any = lambda: None) -> None:
        self.conn = conn
        self.settle = settle

    def __call__(self, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        before = len(self.conn.answers())
        self.conn.send(post_bytes(doc))
        self.settle()
        answers = self.conn.answers()
        assert len(answers) == before + 1, answers
        return answers[-1]


_quiet = Logger(namespace="test.cyclic_garbage")


def cyclic_garbage(run: Any) -> tuple[Any, list[str]]:
    """What *run* returns, and the types of the objects it left in reference cycles (which only a collection
    frees: the more of them, the more often the collector runs over the whole heap)."""
    # Until logging begins (under pytest it never does), twisted.logger keeps the last 200 events, and an
    # event holds its log_source: events of earlier tests pushed out while *run* logs would free their
    # objects here and count as its garbage.  Fill the history with events that hold nothing first.
    for _ in range(LogBeginner._DEFAULT_BUFFER_SIZE):
        _quiet.debug("")
    gc.collect()
    flags = gc.get_debug()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        result = run()
        gc.collect()
        return result, sorted(type(o).__qualname__ for o in gc.garbage)
    finally:
        gc.set_debug(flags)
        gc.garbage.clear()


H = "ab" * 20


def test_requests_to_post_root_leave_no_cyclic_garbage() -> None:
    """Through Klein's routing every POST / left 41 objects in reference cycles (its closures, werkzeug's
    matcher, the request with them): at 5k heartbeats a second the collector ran a full collection every
    second or two, stalling every request.  The root routes POST / itself, and leaves none."""
    world = World(CFG)
    post = Poster(world.connect("10.0.0.1"))
    _, one = post({"mode": 0, "node_id": 1, "port": 9001})
    assert post({"mode": 1, "node_id": 1, "token": one["token"], "info_hash": H, "name": "f", "length": 5})[0] == 200

    def requests() -> list[int]:
        codes, two = [], post({"mode": 0, "node_id": 2, "port": 9002})
        token = two[1]["token"]
        for doc in (
            {"mode": 0, "node_id": 2, "port": 9002},
            {"mode": 2, "info_hash": H},
            {"mode": 3, "info_hash": H, "uploaders": [1]},
            {"mode": 1, "info_hash": H, "name": "f", "length": 5},
            {"mode": 1, "info_hash": H, "withdraw": True},
            {"mode": 4},
        ):
            codes.append(post({"node_id": 2, "token": token, **doc})[0])
        return [two[0], *codes]

    codes, garbage = cyclic_garbage(requests)
    assert codes == [200] * 7
    assert world.state.summary() == {"nodes": 1, "files": 1}
    assert garbage == []


def sqlite_site(folder: Path) -> tuple[Clock, TrackerHTTP, TrackerSite]:
    """The tracker on its SQLite store, on a Clock: a commit starts at the next turn (clock.advance(0)) and,
    without a threaded reactor, runs in that turn."""
    clock = Clock()
    web = TrackerHTTP(SwarmState(CFG, random.Random(3)), SqliteStore(folder, clock), clock, CFG)
    web.load()
    site = TrackerSite(web.resource(), CFG.TRACKER_MAX_BODY, policy=ConnectionPolicy.from_settings(CFG), reactor=clock)
    return clock, web, site


def test_answers_that_wait_for_a_commit_are_written_after_it_and_leave_no_cyclic_garbage(tmp_path: Path) -> None:
    clock, web, site = sqlite_site(tmp_path)
    conn = Conn(site, "10.0.0.1")
    conn.send(post_bytes({"mode": 0, "node_id": 1, "port": 9001}))
    assert conn.answers() == []  # not before its commit
    clock.advance(0)
    [(code, one)] = conn.answers()
    assert code == 200 and one["new"]
    post = Poster(conn, lambda: clock.advance(0))

    def requests() -> list[int]:
        return [post({"mode": 0, "node_id": 1, "port": 9001, "token": one["token"]})[0],
                post({"mode": 1, "node_id": 1, "token": one["token"], "info_hash": H, "name": "f", "length": 5})[0],
                post({"mode": 0, "node_id": 2, "port": 9002})[0]]

    codes, garbage = cyclic_garbage(requests)
    assert codes == [200] * 3 and garbage == []
    assert read_docs(tmp_path)[1]["files"][0]["owners"] == [1]
    web.close()


def test_a_client_gone_before_the_commit_gets_nothing_written_and_its_change_still_counts(tmp_path: Path) -> None:
    clock, web, site = sqlite_site(tmp_path)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        conn = Conn(site, "10.0.0.1")
        conn.send(post_bytes({"mode": 0, "node_id": 1, "port": 9001}))
        conn.channel.connectionLost(Failure(ConnectionDone()))
        written = conn.transport.value()
        clock.advance(0)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert conn.transport.value() == written and b"HTTP/1.1" not in written
    assert [n["node_id"] for n in read_docs(tmp_path)[0]["nodes"]] == [1]
    assert [e for e in events if e.get("log_failure") is not None or e.get("isError")] == []
    web.close()
