"""`twistd p2ptracker`: options and the service tree of the tracker daemon.

The tree is, in this order: the log file (logs/tracker.log), the HTTP server
and the liveness timer.  The database is read back just before the server
starts listening, so the first request already sees it; then the open-file
limit is raised and the connections in all capped below it (connections.py).
The HTTP server's service also opens the BEP 15 UDP tracker (udp.py) on the
same interface, once the TCP port is bound (TRACKER_UDP_PORT 0: that port's number).
"""

from __future__ import annotations

import gc
import ipaddress
import random
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage
from twisted.internet.error import CannotListenError

from p2ptorrent.config import Config, ConfigError
from p2ptorrent.logfile import LogFileService
from p2ptorrent.startup import FolderDaemon, FolderLock, StartupError, claim_under_twistd, fail_to_start, usable_folder
from p2ptorrent.options import SettingsOptions
from p2ptorrent.tracker.connections import ConnectionPolicy, GuardedSite, connection_cap, raise_open_file_limit
from p2ptorrent.tracker.reuseport import ReusePortEndpoint, datagram_socket
from p2ptorrent.tracker.redis_store import RedisAddress, RedisConfigError, RedisSwarm
from p2ptorrent.tracker.state import SwarmState
from p2ptorrent.tracker.sqlite_store import SqliteStore
from p2ptorrent.tracker.store import JsonStore
from p2ptorrent.tracker.udp import UdpTracker, UdpTrackerProtocol

if TYPE_CHECKING:
    # Klein imports the global reactor when it is imported, so tracker.http is
    # only imported inside makeService: `twistd -r REACTOR p2ptracker` must be
    # able to install its reactor after parsing our Options.
    from p2ptorrent.tracker.http import TrackerHTTP


#: A daemonised tracker's pid file, in its database folder (none in the foreground).
PID_FILE = "tracker.pid"


class Options(SettingsOptions):
    synopsis = "[options]"
    longdesc = (
        "Run the p2ptorrent tracker: an HTTP service that registers nodes, records who owns which file "
        "and ranks owners by upload frequency (see docs/tracker-http.md)."
    )
    optParameters: list[list[Any]] = [
        ["host", None, None,
         "Interface to listen on (default: the host of TRACKER_ADDR, localhost meaning 127.0.0.1; "
         "0.0.0.0 or :: listens on all)."],
        ["port", None, None, "TCP port to listen on (default: the port of TRACKER_ADDR)."],
        ["listen", None, None,
         "Twisted server endpoint string, overriding --host and --port (e.g. tcp:0:interface=127.0.0.1)."],
        ["udp-port", None, None,
         "UDP port of the BEP 15 tracker for BitTorrent clients, on the HTTP port's interface "
         "(TRACKER_UDP_PORT, default 0: the HTTP port's number; -1: no UDP tracker)."],
        ["store", None, None,
         "Where the state is kept: sqlite (tracker.db, the default), json (nodes.json and files.json rewritten "
         "at every change: small swarms only) or redis://HOST:PORT/DB (in Redis, shared by every tracker given "
         "the same address: several tracker processes serve one swarm) (TRACKER_STORE)."],
    ]

    optFlags: list[list[Any]] = [
        ["reuse-port", None,
         "Listen with SO_REUSEPORT, so that several trackers on the Redis store share --host and --port "
         "(the kernel spreads the connections over them)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["trusted-proxy"] = []

    def opt_trusted_proxy(self, address: str) -> None:
        """Address or network of a reverse proxy whose X-Forwarded-For is believed (repeatable;
        replaces TRACKER_TRUSTED_PROXIES)."""
        self["trusted-proxy"].append(address)

    def settings(self) -> Config:
        settings = super().settings()
        if self["udp-port"] is not None:
            try:
                udp_port = int(self["udp-port"])
            except ValueError:
                raise usage.UsageError(f"--udp-port must be a number, got {self['udp-port']!r}") from None
            try:
                settings = settings.replace(TRACKER_UDP_PORT=udp_port)
            except ConfigError as e:
                raise usage.UsageError(str(e).replace("TRACKER_UDP_PORT", "--udp-port")) from None
        if not self["trusted-proxy"]:
            return settings
        try:
            return settings.replace(TRACKER_TRUSTED_PROXIES=tuple(a.strip() for a in self["trusted-proxy"]))
        except ConfigError as e:
            raise usage.UsageError(str(e).replace("TRACKER_TRUSTED_PROXIES", "--trusted-proxy")) from None

    def postOptions(self) -> None:
        super().postOptions()
        self["endpoint"] = self._endpoint()
        settings = self["settings"]
        self["redis"] = None
        if settings.TRACKER_STORE.startswith("redis://"):
            try:
                self["redis"] = RedisAddress.parse(settings.TRACKER_STORE)
            except RedisConfigError as e:
                raise usage.UsageError(str(e)) from None
        self["log_taken_over"] = claim_under_twistd(
            self, "p2ptracker", Path(settings.tracker_db_dir), Path(settings.tracker_db_dir) / PID_FILE,
            Path(settings.logs_dir) / "tracker.log",
        )

    def _endpoint(self) -> str:
        if self["listen"] is not None:
            if self["host"] is not None or self["port"] is not None:
                raise usage.UsageError("--listen replaces --host and --port: give one or the other")
            try:
                # Parsing needs no reactor; this only catches typos before twistd starts.
                serverFromString(None, self["listen"])
            except (ValueError, TypeError, KeyError) as e:
                raise usage.UsageError(f"bad --listen endpoint {self['listen']!r}: {e}") from None
            if self["reuse-port"]:
                raise usage.UsageError("--reuse-port goes with --host and --port, not --listen")
            return str(self["listen"])
        default_host, default_port = self["settings"].TRACKER_ADDR
        host = self["host"] if self["host"] is not None else default_host
        if host == "localhost":
            host = "127.0.0.1"
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise usage.UsageError(
                f"cannot listen on {host!r}: give --host an IP address (0.0.0.0 or :: for all interfaces)"
            ) from None
        port: Any = self["port"] if self["port"] is not None else default_port
        try:
            port = int(port)
        except ValueError:
            raise usage.UsageError(f"--port must be a number, got {port!r}") from None
        if not 0 <= port <= 65535:
            raise usage.UsageError(f"--port must be 0..65535 (0: any free port), got {port}")
        self["bind"] = (host, port)
        return f"tcp:{port}:interface={quoteStringArgument(host)}"


class TrackerServerService(StreamServerEndpointService):
    """The HTTP server and its UDP twin (BEP 15); loads the database once its ports are bound (before the
    reactor runs) and saves once more on stop."""

    log = Logger()

    def __init__(
        self, tracker: TrackerHTTP, endpoint: IStreamServerEndpoint, site: GuardedSite, udp_port: int = -1,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(endpoint, site)
        self.tracker = tracker
        self.site = site
        #: TRACKER_UDP_PORT: -1 none, 0 the number of the TCP port once bound.
        self.udp_port = udp_port
        self.reuse_port = reuse_port
        #: The BEP 15 tracker's port and protocol, once listening.
        self.udp: IListeningPort | None = None
        self.udp_protocol: UdpTrackerProtocol | None = None
        self._loaded = False
        self._files_checked = False

    def open(self) -> None:
        """Load the database and listen, or raise StartupError (twistd calls this before it forks)."""
        if self._waitingForPort is not None:
            return
        if not self._files_checked:
            self._make_room_for_connections()
            self._files_checked = True
        self._raiseSynchronously = True
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            why = getattr(e.socketError, "strerror", None) or e.socketError
            where = f"{e.interface or 'all addresses'} port {e.port}"
            raise StartupError(f"cannot listen for HTTP on {where}: {why}") from None
        assert self._waitingForPort is not None
        bound: list[IListeningPort] = []
        self._waitingForPort.addCallback(lambda port: bound.append(port) or port)
        if bound:
            self._open_udp(bound[0])
        else:  # (an endpoint that binds later: none of ours; a failure can then only be logged)
            self._waitingForPort.addCallback(self._open_udp_later)
        # The state must be ready before the first request: loaded now, before the reactor runs and accepts
        # anything, and only once the port is ours (a refused start leaves the database folder as it was).
        if not self._loaded:
            try:
                self.tracker.load()
            except OSError as e:
                raise StartupError(f"cannot reach the store at {self.tracker.store.folder}: {e}") from None
            self._loaded = True
        self._waitingForPort.addCallback(self._listening)

    def privilegedStartService(self) -> None:
        self.open()

    def _open_udp(self, listening: IListeningPort) -> None:
        """Listen for BEP 15 datagrams on the TCP port's interface, or raise StartupError (the TCP port closed)."""
        if self.udp_port < 0 or self.udp is not None:
            return
        address = listening.getHost()
        host, tcp_port = getattr(address, "host", None), getattr(address, "port", None)
        if not isinstance(host, str) or not isinstance(tcp_port, int):
            self.log.warn("no BitTorrent UDP tracker: HTTP listens on {address}, not on an IP port", address=address)
            return
        port = self.udp_port or tcp_port
        try:
            sock = datagram_socket(host, port, self.reuse_port)
        except OSError as e:
            listening.stopListening()
            which = " (the HTTP port's number: give another with --udp-port, or -1 for none)" if not self.udp_port else ""
            raise StartupError(
                f"cannot listen for BitTorrent clients (BEP 15) on udp {host} port {port}{which}: {e.strerror or e}"
            ) from None
        try:
            bound_host, bound_port = sock.getsockname()[:2]
            tracker = UdpTracker(self.tracker.clients, secrets.token_bytes(32))
            self.udp_protocol = UdpTrackerProtocol(tracker, self.tracker.reactor, self.tracker.count_request)
            reactor: Any = self.tracker.reactor
            self.udp = reactor.adoptDatagramPort(sock.fileno(), sock.family, self.udp_protocol)
        finally:
            sock.close()  # the reactor's port holds its own copy of the descriptor
        self.log.info("BitTorrent UDP tracker on udp {host}:{port}", host=bound_host, port=bound_port)

    def _open_udp_later(self, listening: IListeningPort | None) -> IListeningPort | None:
        if listening is not None:
            try:
                self._open_udp(listening)
            except StartupError as e:
                self.log.error("{why}", why=str(e))
        return listening

    def _make_room_for_connections(self) -> None:
        """Raise the open-file limit and cap connections in all below it (each holds a descriptor)."""
        limit = raise_open_file_limit()
        if limit.error is None:
            self.log.info("{line}", line=limit.describe())
        else:
            self.log.warn("{line}", line=limit.describe())
        total, lowered = connection_cap(self.tracker.settings.TRACKER_MAX_CONNECTIONS, limit.soft)
        if lowered is not None:
            self.log.warn("{line}", line=lowered)
        self.site.set_total(total)
        self.log.info(
            "connections: at most {total} in all and {per_host} per address",
            total=total, per_host=self.site.policy.per_host,
        )

    def _listening(self, port: IListeningPort | None) -> IListeningPort | None:
        if port is not None:
            address = port.getHost()
            self.log.info(
                "tracker listening on {host}:{port}",
                host=getattr(address, "host", address), port=getattr(address, "port", ""),
            )
        return port

    def listening(self) -> Deferred[IListeningPort | None]:
        """Fires with the listening port once bound (None if listening failed)."""
        assert self._waitingForPort is not None, "the service has not started"
        d: Deferred[IListeningPort | None] = Deferred()

        def relay(port: IListeningPort | None) -> IListeningPort | None:
            d.callback(port)
            return port

        self._waitingForPort.addCallback(relay)
        return d

    def stopService(self) -> Deferred[None] | None:
        udp, self.udp = self.udp, None
        d = super().stopService()
        closed = self.tracker.close()
        if udp is not None:
            udp_closed: Deferred[Any] = maybeDeferred(udp.stopListening)
            closed = closed.addBoth(lambda result: udp_closed.addCallback(lambda _: result))
        if d is None:
            return closed
        return d.addBoth(lambda result: closed.addCallback(lambda _: result))


class TrackerService(FolderDaemon):
    """The tracker's service tree; keeps its parts at hand for tests and tools.

    It holds the lock on the database folder (one tracker per database) from
    :meth:`open` until it stops.
    """

    def __init__(self, tracker: TrackerHTTP, db_dir: Path, logs_dir: Path) -> None:
        super().__init__()
        self.tracker = tracker
        self.db_dir = db_dir
        self.logs_dir = logs_dir
        self.lock = FolderLock(db_dir)

    def open(self) -> None:
        """Claim the database folder and the HTTP port, or raise StartupError saying which and why."""
        usable_folder(self.db_dir, "database folder")
        usable_folder(self.logs_dir, "log folder")
        for child in self:
            if isinstance(child, LogFileService):
                child.privilegedStartService()  # first, so loading the database is in the file too
        self.lock.acquire()
        server = self.getServiceNamed("http")
        assert isinstance(server, TrackerServerService)
        server.open()

    def stopService(self) -> Deferred[None] | None:
        d = super().stopService()
        if d is None:
            self.lock.release()
            return None
        return d.addBoth(self._released)

    def _released(self, result: Any) -> Any:
        self.lock.release()
        return result


def makeService(config: Options | dict[str, Any], reactor: Any = None) -> TrackerService:
    """The tracker's service tree.  Run by twistd (no *reactor* given), it also claims its database folder,
    loads it and listens now, before twistd forks: a tracker that cannot start says why and exits 1."""
    if reactor is None:
        from twisted.internet import reactor as running

        top = _build(config, running)
        try:
            top.open()
        except StartupError as e:
            raise fail_to_start("p2ptracker", e) from None
        # What is loaded by now (modules, the files read back; node records are never tracked) lives long and
        # holds no garbage: keep it out of the collector's full passes, each a stall of every request.
        store = top.tracker.store
        if isinstance(store, RedisSwarm):
            store.ready.addCallback(lambda _: gc.freeze())
        else:
            gc.freeze()
        return top
    return _build(config, reactor)


def _build(config: Options | dict[str, Any], reactor: Any) -> TrackerService:
    from p2ptorrent.tracker.http import TrackerHTTP, TrackerSite

    settings = config["settings"]
    state = SwarmState(settings, random.Random())
    store: JsonStore | SqliteStore | RedisSwarm
    if settings.TRACKER_STORE == "json":
        store = JsonStore(settings.tracker_db_dir)
    elif settings.TRACKER_STORE == "sqlite":
        store = SqliteStore(settings.tracker_db_dir, reactor)
    else:
        address = config.get("redis") or RedisAddress.parse(settings.TRACKER_STORE)
        store = RedisSwarm(address, state, reactor, settings)
    tracker = TrackerHTTP(state, store, reactor, settings)

    top = TrackerService(tracker, Path(settings.tracker_db_dir), Path(settings.logs_dir))
    if not config.get("log_taken_over"):  # else twistd's own log is logs/tracker.log already
        logfile = LogFileService(
            Path(settings.logs_dir) / "tracker.log", settings.LOG_LEVEL, settings.LOG_MAX_BYTES, settings.LOG_BACKUPS,
        )
        logfile.setName("log")
        logfile.setServiceParent(top)

    # The cap in all is set again at start, once the open-file limit is raised.
    policy = ConnectionPolicy.from_settings(settings)
    site = TrackerSite(tracker.resource(), settings.TRACKER_MAX_BODY, policy=policy, reactor=reactor)
    tracker.open_connections = lambda: site.limits.count
    endpoint: IStreamServerEndpoint
    if config.get("reuse-port"):
        endpoint = ReusePortEndpoint(reactor, *config["bind"])
    else:
        endpoint = serverFromString(reactor, config["endpoint"])
    server = TrackerServerService(
        tracker, endpoint, site, udp_port=settings.TRACKER_UDP_PORT, reuse_port=bool(config.get("reuse-port")),
    )
    server.setName("http")
    server.setServiceParent(top)

    timer = TimerService(settings.TRACKER_TIME_INTERVAL, tracker.check_liveness)
    timer.clock = reactor
    timer.setName("liveness")
    timer.setServiceParent(top)
    return top
