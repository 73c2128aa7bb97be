"""Who may hold a connection to the tracker, for how long, and which address a request comes from.

Without these, 1,500 idle or slowly sent connections took every file
descriptor of a tracker with the common open-file limit of 1024, and no node
could register (issue 13).  So:

- the soft open-file limit is raised to the hard one at start
  (:func:`raise_open_file_limit`);
- :class:`ConnectionLimits` caps open connections per address and in all;
  one over a cap is closed as it is accepted, before anything is read, except
  that at the cap in all a new connection takes the place of the one whose
  request has been arriving longest (slow clients from many addresses cannot
  keep nodes out);
- :class:`TrackerChannel` closes a connection whose request (headers and
  body) has not all arrived :attr:`ConnectionPolicy.request_timeout` seconds
  after the connection opened or after the first byte of a later request on
  it, and a keep-alive connection idle for
  :attr:`ConnectionPolicy.idle_timeout`;
- :func:`client_address` reads ``X-Forwarded-For`` only from trusted proxies.

All of it is counted by :class:`ConnectionEvents` and logged at most once per
:data:`EVENTS_LOGGED_EVERY` seconds, never one line per connection.

Behind a reverse proxy or TLS terminator every connection comes from the
proxy, so the per-address cap (TRACKER_MAX_CONNECTIONS_PER_HOST) applies to
the proxy's connections as a whole: set it at least to the number of
connections the proxy may open to the tracker (nginx: the upstream's
``keepalive`` plus the requests it forwards at once), or leave it at
TRACKER_MAX_CONNECTIONS, and cap connections per client at the proxy itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Site

from p2ptorrent.config import Config

#: File descriptors kept free for the tracker's own use (listening socket, log
#: and database files, the reactor's own) when the connection cap is derived
#: from the open-file limit; also what lets an accept() over a cap succeed, so
#: that the connection can be closed at once instead of waiting in the backlog.
FILES_KEPT_FREE = 64
#: The cap in all when the open-file limit is unknown or unlimited.
CONNECTIONS_WITHOUT_FILE_LIMIT = 65536
#: Seconds between two log lines about refused or timed-out connections.
EVENTS_LOGGED_EVERY = 30.0
#: Addresses counted apart in a summary; beyond, they are counted together.
EVENT_HOSTS_TRACKED = 1024
#: Addresses named in a summary line (those with the most events).
EVENT_HOSTS_NAMED = 3
#: Seconds a connection closed on a timeout may take to flush before it is aborted.
ABORT_AFTER = 15.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# ---------------------------------------------------------------- the open-file limit


@dataclass(frozen=True)
class OpenFileLimit:
    """What :func:`raise_open_file_limit` found and did; ``soft`` is the limit now in force."""

    before: int | None
    soft: int | None
    hard: int | None
    error: str | None = None

    def describe(self) -> str:
        if self.before is None:
            return f"open files: limit unknown ({self.error})"
        if self.error is not None:
            return f"open files: could not raise the soft limit from {self.before} to {_limit(self.hard)}: {self.error}"
        if self.before != self.soft:
            return f"open files: soft limit raised from {self.before} to {_limit(self.soft)}"
        return f"open files: soft limit {_limit(self.soft)} (the hard limit)"


def raise_open_file_limit(resource: Any = None) -> OpenFileLimit:
    """Raise RLIMIT_NOFILE's soft limit to the hard one; never raises.

    Each connection holds a descriptor, and 1024, the common default soft
    limit, is far below what a tracker serving thousands of nodes needs while
    the hard limit often allows it.  *resource* is the module (a fake in tests).
    """
    try:
        if resource is None:
            import resource  # POSIX only
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except Exception as e:  # no resource module (Windows) or no such limit
        return OpenFileLimit(None, None, None, str(e) or type(e).__name__)
    infinity = getattr(resource, "RLIM_INFINITY", -1)
    before = None if soft == infinity else soft
    top = None if hard == infinity else hard
    if soft == hard:
        return OpenFileLimit(before, before, top)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as e:  # e.g. macOS refuses an infinite hard limit
        return OpenFileLimit(before, before, top, str(e))
    return OpenFileLimit(before, top, top)


def _limit(n: int | None) -> str:
    return "unlimited" if n is None else str(n)


def connection_cap(setting: int, open_files: int | None) -> tuple[int, str | None]:
    """The cap on open connections in all, and why it is not *setting* (None when it is).

    0 means "as many as the open-file limit allows, less :data:`FILES_KEPT_FREE`";
    a larger setting than that is lowered, since accept() would fail anyway.
    """
    room = CONNECTIONS_WITHOUT_FILE_LIMIT if open_files is None else max(1, open_files - FILES_KEPT_FREE)
    if setting == 0:
        return room, None
    if setting > room:
        return room, (
            f"TRACKER_MAX_CONNECTIONS {setting} is more than the open-file limit {_limit(open_files)} allows"
            f" (less {FILES_KEPT_FREE} kept for the tracker's files): {room} connections at most"
        )
    return setting, None


# ---------------------------------------------------------------- the policy and the counts


@dataclass(frozen=True)
class ConnectionPolicy:
    """The settings the HTTP site applies to connections."""

    per_host: int
    total: int
    request_timeout: float
    idle_timeout: float
    trusted_proxies: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(cls, settings: Config, open_files: int | None = None) -> ConnectionPolicy:
        total, _ = connection_cap(settings.TRACKER_MAX_CONNECTIONS, open_files)
        return cls(
            per_host=settings.TRACKER_MAX_CONNECTIONS_PER_HOST,
            total=total,
            request_timeout=settings.TRACKER_REQUEST_TIMEOUT,
            idle_timeout=settings.TRACKER_IDLE_TIMEOUT,
            trusted_proxies=trusted_networks(settings.TRACKER_TRUSTED_PROXIES),
        )


class Refused:
    """Why a connection was closed unread or cut short (the kinds :class:`ConnectionEvents` counts)."""

    PER_HOST = "over the cap per address"
    TOTAL = "over the cap in all"
    EVICTED = "closed to make room at the cap in all (the oldest request still arriving)"
    SLOW = "request not received in time"


@dataclass
class ConnectionLimits:
    """Open connections per address and in all; decides which new one to refuse.

    A key is an address as a string, or None for a peer without one (a unix
    socket), which only counts in all.

    At the cap in all, a new connection takes the place of the one that has
    waited longest for its request to arrive, if any: slow clients from many
    addresses then cannot keep a node out, and a request that slow was close
    to its deadline anyway.  Connections are any hashable object (channels).
    """

    per_host: int
    total: int
    open: dict[str | None, int] = field(default_factory=dict)
    count: int = 0
    #: Connections whose request is still arriving, oldest first, with their address.
    waiting: dict[Any, str | None] = field(default_factory=dict)

    def opened(self, host: str | None) -> tuple[str | None, Any]:
        """A connection was accepted from *host*.

        Returns (None, None) if it may stay (it is counted), (None, victim) if
        it may stay once *victim* is closed (no longer counted), or (a
        :class:`Refused` kind, None) if it must be closed.
        """
        held = self.open.get(host, 0)
        if host is not None and held >= self.per_host:
            return Refused.PER_HOST, None
        victim = None
        if self.count >= self.total:
            if not self.waiting:
                return Refused.TOTAL, None
            victim = next(iter(self.waiting))
            self.closed(self.waiting[victim], victim)
            held = self.open.get(host, 0)
        self.open[host] = held + 1
        self.count += 1
        return None, victim

    def waits(self, conn: Any, host: str | None) -> None:
        """*conn* started waiting for a request."""
        self.waiting[conn] = host

    def received(self, conn: Any) -> None:
        """*conn*'s request has arrived (or it stopped waiting)."""
        self.waiting.pop(conn, None)

    def closed(self, host: str | None, conn: Any = None) -> None:
        """A connection that :meth:`opened` let stay has closed (or was chosen to close)."""
        self.waiting.pop(conn, None)
        held = self.open.get(host, 0)
        if held <= 1:
            self.open.pop(host, None)
        else:
            self.open[host] = held - 1
        self.count = max(0, self.count - 1)


@dataclass
class ConnectionEvents:
    """Refused and timed-out connections, counted, for at most one log line per *interval*.

    The first event after a quiet interval is logged at once (so an operator
    sees when it starts); those after it are only counted and summed up once
    the interval is over, then the next interval starts.
    """

    interval: float = EVENTS_LOGGED_EVERY
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Every event so far, by kind, whether logged one by one or summed up.
    totals: dict[str, int] = field(default_factory=dict)
    quiet_until: float = float("-inf")

    def record(self, kind: str, host: str | None, now: float) -> tuple[str | None, float | None]:
        """Count an event: (a line to log now, or None; when an interval starts, the time :meth:`summary` is due)."""
        self.totals[kind] = self.totals.get(kind, 0) + 1
        if now >= self.quiet_until and not self.counts:
            self.quiet_until = now + self.interval
            return f"closed a connection from {host or 'a local peer'}: {kind}" + _more_later(self.interval), self.quiet_until
        per_host = self.counts.setdefault(kind, {})
        key = host or "local peers"
        if key not in per_host and len(per_host) >= EVENT_HOSTS_TRACKED:
            key = "other addresses"
        per_host[key] = per_host.get(key, 0) + 1
        return None, None

    def summary(self, now: float) -> tuple[str | None, float | None]:
        """The line summing up what was counted, and when to call again (None: nothing counted, quiet now)."""
        if not self.counts:
            return None, None
        parts = []
        for kind, per_host in sorted(self.counts.items()):
            top = sorted(per_host.items(), key=lambda hc: (-hc[1], hc[0]))[:EVENT_HOSTS_NAMED]
            named = ", ".join(f"{host} {n}" for host, n in top)
            parts.append(f"{sum(per_host.values())} {kind} from {len(per_host)} addresses ({named})")
        self.counts = {}
        self.quiet_until = now + self.interval
        return f"closed more connections in the last {self.interval:.0f} s: " + "; ".join(parts), self.quiet_until


def _more_later(interval: float) -> str:
    return f" (more are summed up every {interval:.0f} s)"


# ---------------------------------------------------------------- addresses


def trusted_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Networks from addresses or CIDR blocks; raises ValueError naming a bad one (config.py checks first)."""
    return tuple(ipaddress.ip_network(v.strip()) for v in values)


def plain_address(text: str) -> IPAddress | None:
    """An address as the tracker records it (IPv4-mapped IPv6 as plain IPv4), or None if *text* is not one."""
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped if mapped is not None else ip


def client_address(peer: str, forwarded_for: Sequence[bytes] | None, trusted: Sequence[IPNetwork]) -> str:
    """The client a request is from: *peer* unless *peer* is a trusted proxy.

    From a trusted proxy the ``X-Forwarded-For`` chain is read from the right
    (each proxy appends the address it saw), skipping trusted proxies; the
    first other address is the client.  Anything left of it may have been
    written by the client and is never believed.  An entry that is not an
    address stops the walk at the last trusted proxy seen, whose address is
    then used, as is the left-most one if the chain holds only trusted proxies.
    """
    current = plain_address(peer)
    if current is None or not trusted or not _trusted(current, trusted) or not forwarded_for:
        return peer
    chain = [entry for value in forwarded_for for entry in value.decode("latin-1").split(",")]
    for entry in reversed(chain):
        ip = plain_address(entry)
        if ip is None:
            break
        current = ip
        if not _trusted(ip, trusted):
            break
    return str(current)


def _trusted(ip: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    return any(ip in net for net in trusted if net.version == ip.version)


def address_key(addr: IAddress | None) -> str | None:
    """The key a peer address is counted under: its IP as the tracker records it, None without one."""
    host = getattr(addr, "host", None)
    if not isinstance(host, str):
        return None
    ip = plain_address(host)
    return str(ip) if ip is not None else host


# ---------------------------------------------------------------- the protocol and the site


class TrackerChannel(HTTPChannel):
    """An HTTPChannel with a deadline per request, whose timeouts are counted rather than logged one by one.

    HTTPChannel is already a TimeoutMixin, for its idle timeout (``timeOut``),
    which every byte received resets: a client sending one header line every
    few seconds would never reach it.  The deadline is a second delayed call on
    the same ``callLater`` (the site's reactor), which data does not move.
    """

    site: GuardedSite
    #: The address this connection is counted under in the site's limits.
    host_key: str | None = None
    #: Closed to make room at the cap in all (and no longer counted).
    evicted = False
    _deadline: IDelayedCall | None = None
    _abort: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._start_deadline()

    def dataReceived(self, data: bytes) -> None:
        # The first byte of a later request on a keep-alive connection starts its deadline.
        if self._deadline is None and not self._handlingRequest:
            self._start_deadline()
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self._cancel_deadline()
        super().allContentReceived()

    def timeoutConnection(self) -> None:
        """The keep-alive idle timeout: as HTTPChannel does, but counted, not logged per connection."""
        self.site.idle_closed += 1  # the normal end of a keep-alive connection: counted, not logged
        self.loseConnection()
        if self._abort is None:
            self._abort = self.callLater(ABORT_AFTER, self._abort_now)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_deadline()
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        self._abort = None
        super().connectionLost(reason)
        if not self.evicted:
            self.site.connection_closed(self.host_key)

    def _start_deadline(self) -> None:
        timeout = self.site.policy.request_timeout
        self._deadline = self.callLater(timeout, self._too_slow)
        self.site.limits.waits(self, self.host_key)

    def _cancel_deadline(self) -> None:
        self.site.limits.received(self)
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        self.site.limits.received(self)  # closing already: not one to close for a newer connection
        self.site.connection_event(Refused.SLOW, self.host_key)
        # Nothing is owed to a client that has not sent its request: no answer, no waiting.
        self._abort_now()

    def evict(self) -> None:
        """Close at once for a newer connection (the site's limits no longer count this one)."""
        self.evicted = True
        self._cancel_deadline()
        self._abort_now()

    def _abort_now(self) -> None:
        self._abort = None
        if self.transport is not None:
            # ITCPTransport's, which TLS and unix-socket transports have too.
            self.transport.abortConnection()  # type: ignore[attr-defined]


class GuardedSite(Site):
    """A Site that applies a :class:`ConnectionPolicy` to every connection it is offered."""

    #: Not ``log``: that is Site's access-log hook, called with each request.
    connection_log = Logger()
    protocol = TrackerChannel  # type: ignore[assignment]  # HTTP/1.1 only: no ALPN is offered, so no h2

    def __init__(self, resource: IResource, policy: ConnectionPolicy | None = None, **kwargs: Any) -> None:
        if policy is None:
            policy = ConnectionPolicy.from_settings(Config())
        kwargs.setdefault("timeout", policy.idle_timeout)
        super().__init__(resource, **kwargs)
        self.policy = policy
        self.limits = ConnectionLimits(policy.per_host, policy.total)
        self.events = ConnectionEvents()
        #: Keep-alive connections closed after idle_timeout seconds without a request.
        self.idle_closed = 0
        self._summary_call: IDelayedCall | None = None

    @property
    def trusted_proxies(self) -> tuple[IPNetwork, ...]:
        return self.policy.trusted_proxies

    def set_total(self, total: int) -> None:
        """The cap in all, once the open-file limit is known (at start)."""
        self.limits.total = total

    def buildProtocol(self, addr: IAddress | None) -> Any:
        host = address_key(addr)
        refused, victim = self.limits.opened(host)
        if refused is not None:
            self.connection_event(refused, host)
            return None  # the port closes the socket unread
        if victim is not None:
            self.connection_event(Refused.EVICTED, victim.host_key)
            victim.evict()
        channel = super().buildProtocol(addr)
        channel.host_key = host
        return channel

    def connection_closed(self, host: str | None) -> None:
        self.limits.closed(host)

    def connection_event(self, kind: str, host: str | None) -> None:
        """Count a refused or timed-out connection; log it if none was logged lately."""
        now = self.reactor.seconds()
        line, due = self.events.record(kind, host, now)
        if line is not None:
            self.connection_log.warn("{line}", line=line)
        if due is not None and self._summary_call is None:
            self._summary_call = self.reactor.callLater(due - now, self._sum_up)

    def _sum_up(self) -> None:
        self._summary_call = None
        now = self.reactor.seconds()
        line, due = self.events.summary(now)
        if line is not None:
            self.connection_log.warn("{line}", line=line)
        if due is not None:
            self._summary_call = self.reactor.callLater(due - now, self._sum_up)

    def stopFactory(self) -> None:
        if self._summary_call is not None and self._summary_call.active():
            self._summary_call.cancel()
        self._summary_call = None
        super().stopFactory()
