"""`twistd p2ptracker`: options, the service tree, start-up, liveness and one real-TCP run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import IServiceMaker
from twisted.internet.defer import Deferred
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.web.client import Agent, HTTPConnectionPool

import treq
from treq.client import HTTPClient
from treq.testing import StubTreq

from p2ptorrent.config import Config
from p2ptorrent.logfile import LogFileService
from p2ptorrent.node.tracker_client import TrackerClient, TrackerUnavailable
from p2ptorrent.tracker import tap
from p2ptorrent.tracker.http import TrackerSite
from p2ptorrent.tracker.state import SwarmState
from p2ptorrent.tracker.store import JsonStore

H1 = "ab" * 20
REPO = Path(__file__).resolve().parent.parent


def parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


def result(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


# ---------------------------------------------------------------- options


def test_default_options() -> None:
    options = parse()
    assert {k: options[k] for k in ("host", "port", "listen", "endpoint", "settings")} == {
        "host": None,
        "port": None,
        "listen": None,
        "endpoint": "tcp:12345:interface=127.0.0.1",
        "settings": Config(),
    }


@pytest.mark.parametrize(
    "args, endpoint",
    [
        (["--host", "0.0.0.0", "--port", "8080"], "tcp:8080:interface=0.0.0.0"),
        (["--host", "::"], r"tcp:12345:interface=\:\:"),
        (["--port", "0"], "tcp:0:interface=127.0.0.1"),
        (["--tracker", "10.1.2.3:7000"], "tcp:7000:interface=10.1.2.3"),
        (["--listen", "tcp:0:interface=127.0.0.1"], "tcp:0:interface=127.0.0.1"),
        (["--listen", "unix:/tmp/tracker.sock"], "unix:/tmp/tracker.sock"),
    ],
)
def test_listen_options(args: list[str], endpoint: str) -> None:
    assert parse(*args)["endpoint"] == endpoint


def test_settings_options_reach_the_tracker() -> None:
    options = parse("--tracker-db-dir", "/srv/db", "--logs-dir", "/var/log/p2p", "--tracker-interval", "5",
                    "--set", "TRACKER_MISSED_CHECKS=3")
    settings = options["settings"]
    assert (settings.tracker_db_dir, settings.logs_dir) == ("/srv/db", "/var/log/p2p")
    assert (settings.TRACKER_TIME_INTERVAL, settings.TRACKER_MISSED_CHECKS) == (5.0, 3)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--host", "tracker.example.org"], "give --host an IP address"),
        (["--tracker", "tracker.example.org:1"], "give --host an IP address"),
        (["--port", "http"], "--port must be a number"),
        (["--port", "70000"], "--port must be 0..65535"),
        (["--listen", "carrier-pigeon:1"], "bad --listen endpoint"),
        (["--listen", "tcp:notaport"], "bad --listen endpoint"),
        (["--listen", "tcp:0", "--port", "1"], "--listen replaces --host and --port"),
        (["--set", "TRACKER_MISSED_CHECKS=0"], "TRACKER_MISSED_CHECKS must be at least 1"),
        (["--listen", "tcp:0", "--reuse-port"], "--reuse-port goes with --host and --port, not --listen"),
        (["--store", "redis://db.example/x"], "the database must be a number, not 'x'"),
        (["--store", "mysql://db.example"], "TRACKER_STORE must be one of sqlite, json or redis://HOST:PORT/DB"),
    ],
)
def test_bad_options_are_usage_errors(args: list[str], words: str) -> None:
    with pytest.raises(usage.UsageError, match=words.replace("(", r"\(").replace(".", r"\.")):
        parse(*args)


def test_help_mentions_the_listen_options() -> None:
    text = str(tap.Options())
    for words in ("--host", "--port", "--listen", "Twisted server endpoint string", "--tracker-db-dir"):
        assert words in text


def test_the_plugin_is_found() -> None:
    makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
    assert "p2ptracker" in makers
    assert makers["p2ptracker"].options is tap.Options  # type: ignore[attr-defined]


def test_importing_the_tap_does_not_install_a_reactor() -> None:
    code = "import sys, p2ptorrent.tracker.tap; print('twisted.internet.reactor' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- the service tree


def options_in(tmp_path: Path, *extra: str) -> tap.Options:
    return parse("--tracker-db-dir", str(tmp_path / "db"), "--logs-dir", str(tmp_path / "logs"),
                 "--listen", "tcp:0:interface=127.0.0.1", *extra)


def test_make_service_children_in_order(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    service = tap.makeService(options_in(tmp_path), reactor=reactor)
    log, http, timer = list(service)
    assert isinstance(log, LogFileService) and log.path == tmp_path / "logs" / "tracker.log"
    assert isinstance(http, StreamServerEndpointService) and isinstance(http.factory, TrackerSite)
    assert isinstance(timer, TimerService)
    assert (timer.step, timer.clock) == (22.0, reactor)
    assert [s.name for s in service] == ["log", "http", "liveness"]
    assert service.tracker.store.folder == tmp_path / "db"


@pytest.fixture
def saved_swarm(tmp_path: Path) -> dict[int, str]:
    """A database left by an earlier run: nodes 1 and 2, node 1 owns H1 with frequency 1."""
    import random

    state = SwarmState(Config(), random.Random(0))
    tokens = {i: state.register(i, "10.0.0.%d" % i, 9000 + i, None, 0.0).token for i in (1, 2)}
    state.own(1, tokens[1], H1, "f", 5)
    state.update(2, tokens[2], H1, [1])
    JsonStore(tmp_path / "db").save(*state.snapshot())
    return tokens


def test_start_loads_the_database_listens_and_logs(tmp_path: Path, saved_swarm: dict[int, str]) -> None:
    reactor = MemoryReactorClock()
    service = tap.makeService(options_in(tmp_path), reactor=reactor)
    service.startService()
    try:
        assert service.tracker.state.node_ids() == [1, 2]
        assert service.tracker.state.owner_info(1).frequency == 1  # type: ignore[union-attr]
        [(port, factory, _, interface)] = reactor.tcpServers
        assert (port, interface) == (0, "127.0.0.1") and isinstance(factory, TrackerSite)
        assert result(service.getServiceNamed("http").listening()) is not None
    finally:
        result(service.stopService())
    log = (tmp_path / "logs" / "tracker.log").read_text()
    assert "loaded 2 nodes and 1 files" in log
    assert "tracker listening on" in log


def test_a_corrupt_database_is_survived(tmp_path: Path, saved_swarm: dict[int, str]) -> None:
    nodes = tmp_path / "db" / "nodes.json"
    nodes.write_bytes(nodes.read_bytes()[:40])  # torn in the middle of a write
    service = tap.makeService(options_in(tmp_path), reactor=MemoryReactorClock())
    service.startService()
    result(service.stopService())
    assert service.tracker.state.summary() == {"nodes": 0, "files": 0}
    assert (tmp_path / "db" / "nodes.json.corrupt-1").exists()


def test_liveness_keeps_heartbeating_nodes_and_drops_silent_ones(tmp_path: Path, saved_swarm: dict[int, str]) -> None:
    reactor = MemoryReactorClock()
    service = tap.makeService(options_in(tmp_path), reactor=reactor)
    service.startService()
    stub = StubTreq(service.tracker.resource())
    settings = Config()

    def heartbeat() -> None:
        body = {"mode": 0, "node_id": 2, "port": 9002, "token": saved_swarm[2]}
        posted = stub.post("http://t/", data=json.dumps(body).encode())
        reactor.advance(0)  # the commit of a change starts at the reactor's next turn; then the answer
        stub.flush()
        assert result(posted).code == 200

    t = 0.0
    next_beat = 1.0
    while t < 1000.0:
        t = round(t + 0.5, 1)
        reactor.advance(0.5)
        if t >= next_beat:
            heartbeat()
            next_beat += settings.NODE_TIME_INTERVAL
        if t == 66.0:
            # Node 1 was loaded (seen at start) but never heartbeats: gone by now, and its file too.
            assert service.tracker.state.node_ids() == [2]
            assert service.tracker.state.owners(H1) == frozenset()
    assert service.tracker.state.node_ids() == [2]
    saved = json.loads((tmp_path / "db" / "nodes.json").read_text())
    assert [n["node_id"] for n in saved["nodes"]] == [2]
    result(service.stopService())


def test_the_liveness_loop_survives_an_exception(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reactor = MemoryReactorClock()
    service = tap.makeService(options_in(tmp_path), reactor=reactor)
    service.startService()
    calls: list[float] = []

    def flaky(now: float) -> None:
        calls.append(now)
        if len(calls) == 1:
            raise RuntimeError("bug in a liveness check")

    monkeypatch.setattr(service.tracker.state, "start_check", flaky)
    timer = service.getServiceNamed("liveness")
    for _ in range(3):
        reactor.advance(22.0)
    assert calls == [22.0, 44.0, 66.0]
    assert timer._loop.running  # type: ignore[attr-defined]
    result(service.stopService())


# ---------------------------------------------------------------- the real thing, over TCP


@pytest_twisted.ensureDeferred
async def test_over_real_tcp(tmp_path: Path) -> None:
    from twisted.internet import reactor

    service = tap.makeService(options_in(tmp_path), reactor=reactor)
    service.startService()
    pool = HTTPConnectionPool(reactor, persistent=False)
    http = HTTPClient(Agent(reactor, pool=pool))
    try:
        port = await service.getServiceNamed("http").listening()
        url = f"http://127.0.0.1:{port.getHost().port}"

        client = TrackerClient(http, url, reactor, Config(), 7, 9007)
        assert await client.register() is True
        assert client.public_host == "127.0.0.1"
        await client.own(H1, "f", 5)

        # The site keeps only TRACKER_MAX_BODY + 1 bytes of a huge body and answers 413.
        response = await http.post(url + "/", data=b"{" + b" " * (1 << 20) + b"}")
        assert response.code == 413
        assert json.loads(await response.content())["ok"] is False

        response = await http.get(url + "/")
        assert json.loads(await response.content()) == {"ok": True, "nodes": 1, "files": 1}
        # /metrics counts the open connections through the site (at least the one asking).
        response = await http.get(url + "/metrics")
        gauges = {s.name: s.value for f in text_string_to_metric_families((await response.content()).decode())
                  for s in f.samples}
        assert gauges["p2ptracker_open_connections"] >= 1 and gauges["p2ptracker_nodes"] == 1
        await client.exit()
    finally:
        await service.stopService()

    error: TrackerUnavailable | None = None
    try:
        await TrackerClient(http, url, reactor, Config(), 8, 9008).register()
    except TrackerUnavailable as e:
        error = e
    assert str(error) == f"tracker at {url} did not answer REGISTER: connection refused"
    assert treq  # the module the node passes in real life has the same post/get surface


# ---------------------------------------------------------------- the BEP 15 UDP tracker beside the HTTP port


def test_udp_port_option() -> None:
    assert parse()["settings"].TRACKER_UDP_PORT == 0
    assert parse("--udp-port", "6969")["settings"].TRACKER_UDP_PORT == 6969
    assert parse("--udp-port", "-1")["settings"].TRACKER_UDP_PORT == -1
    with pytest.raises(usage.UsageError, match="--udp-port must be a number"):
        parse("--udp-port", "x")
    with pytest.raises(usage.UsageError, match="--udp-port must be -1"):
        parse("--udp-port", "70000")
    assert "--udp-port" in str(tap.Options())


def test_start_opens_the_udp_tracker_over_the_same_clients(tmp_path: Path) -> None:
    import socket

    from p2ptorrent.tracker.udp import UdpTrackerProtocol

    reactor = MemoryReactorClock()
    service = tap.makeService(options_in(tmp_path), reactor=reactor)
    service.startService()
    try:
        [(_, family, protocol, _)] = reactor.adoptedPorts
        assert family == socket.AF_INET and isinstance(protocol, UdpTrackerProtocol)
        assert protocol.tracker.clients is service.tracker.clients  # one peer set for HTTP and UDP
    finally:
        result(service.stopService())
    assert "BitTorrent UDP tracker on udp " in (tmp_path / "logs" / "tracker.log").read_text()
    none = tap.makeService(options_in(tmp_path, "--udp-port", "-1"), reactor=(bare := MemoryReactorClock()))
    none.startService()
    assert bare.adoptedPorts == []
    result(none.stopService())


def test_a_busy_udp_port_stops_twistd_with_one_line(tmp_path: Path) -> None:
    import socket

    from p2ptorrent.procs import connects, find_script, free_port

    twistd = find_script("twistd", search_path=False)
    assert twistd is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        taken = busy.getsockname()[1]
        http = free_port()
        out = subprocess.run(
            [twistd, "-n", "--pidfile=", "p2ptracker", "--port", str(http), "--udp-port", str(taken),
             "--tracker-db-dir", str(tmp_path / "db"), "--logs-dir", str(tmp_path / "logs")],
            cwd=tmp_path, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )
    assert out.returncode == 1, out
    assert out.stderr.strip().splitlines()[-1] == (
        f"twistd p2ptracker: cannot start: cannot listen for BitTorrent clients (BEP 15) on udp 127.0.0.1 port {taken}:"
        " Address already in use"), out.stderr
    assert not connects(http)
