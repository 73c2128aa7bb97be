"""A node's Prometheus metrics, opt-in (METRICS_PORT): ``GET /metrics`` on a local TCP port.

Nothing is counted for the metrics' sake: :class:`NodeCollector` reads the counters the node keeps anyway
(the protocol's datagrams and bytes, its Counter of refusals and limits, each download's scheduler) when
Prometheus scrapes, so the hot path pays nothing, and a node started without METRICS_PORT never imports
prometheus_client.  Each node has its own ``CollectorRegistry`` (several nodes in one process, as tests
run them, must not mix their figures in the global one).

Why not ``prometheus_client.twisted.MetricsResource``: it serves through WSGI on the reactor's thread
pool, so the collector would read the node's dicts on another thread while the reactor changes them.
:class:`MetricsPage` renders on the reactor thread instead: a scrape is a few dozen numbers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from p2ptorrent.node.download import Phase
from p2ptorrent.startup import ListeningService, StartupError

if TYPE_CHECKING:  # (prometheus_client is imported only when a node serves metrics)
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

PREFIX = "p2ptorrent_node_"


@dataclass
class DownloadTotals:
    """What downloads that ended did, so the counters of the metrics never go back when one ends."""

    counts: Counter[str] = field(default_factory=Counter)

    def ended(self, download: Any) -> None:
        self.counts.update(download_counts(download))


def download_counts(download: Any) -> dict[str, int]:
    """One download's counters, from its scheduler and its stats."""
    transfer = download.transfer
    return {
        "retransmissions": transfer.retransmits,
        "pieces_verified": sum(download.stats.pieces_from.values()),
        "pieces_failed": download.pieces_failed,
        "block_bytes_received": sum(p.bytes for p in transfer.peers.values()) + download.stats.dropped_bytes,
    }


class NodeCollector:
    """The node's figures as metric families, read at scrape time (prometheus_client's custom Collector)."""

    def __init__(self, node: Any) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: PLC0415

        node = self.node
        proto = node.protocol

        def counter(name: str, text: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(PREFIX + name, text, value=value)

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, text, value=value)

        yield counter("datagrams_received", "UDP datagrams received", proto.received)
        yield counter("datagrams_sent", "UDP datagrams sent", proto.sent)
        yield counter("bytes_received", "UDP payload bytes received", proto.bytes_received)
        yield counter("bytes_sent", "UDP payload bytes sent", proto.bytes_sent)
        yield counter("send_errors", "datagrams the socket refused to send (full buffer, unreachable)",
                      proto.counts["send_errors"])
        refused = CounterMetricFamily(PREFIX + "refused_datagrams", "datagrams refused, by reason", labels=["reason"])
        limited = CounterMetricFamily(PREFIX + "limited", "requests or blocks held back by a limit, by limit",
                                      labels=["limit"])
        for key, value in sorted(proto.counts.items()):
            if key.startswith("rejected:"):
                refused.add_metric([key[9:]], value)
            elif key.startswith("limited:"):
                limited.add_metric([key[8:]], value)
        yield refused
        yield limited
        # An ended download's figures are in the totals already (it may stay listed while the node tells the
        # tracker it finished): counted once.
        running = [d for d in node.downloads.values() if d.phase is not Phase.ENDED]
        totals = Counter(node.download_totals.counts)
        for d in running:
            totals.update(download_counts(d))
        yield counter("retransmissions", "block requests asked again (lost or timed out)", totals["retransmissions"])
        yield counter("pieces_verified", "pieces downloaded that passed their SHA-1 check", totals["pieces_verified"])
        yield counter("pieces_failed", "pieces downloaded that failed their SHA-1 check", totals["pieces_failed"])
        yield counter("block_bytes_received", "bytes of blocks received for downloads", totals["block_bytes_received"])
        yield counter("block_bytes_uploaded", "bytes of blocks sent for the files shared now",
                      sum(f.uploaded for f in node.seeder.files.values()))
        yield gauge("downloads", "downloads fetching now", len(running))
        yield gauge("download_peers", "peers the downloads fetch from now", sum(len(d.transfer.peers) for d in running))
        yield gauge("upload_slots", "peers holding an upload slot now", len(node.choker.unchoked))
        yield gauge("seeding", "files shared whole", sum(1 for f in node.seeder.files.values() if f.complete))
        yield gauge("writer_queue", "verified pieces waiting for the writer thread",
                    sum(_queued(d.writer) for d in running))
        limits = node.limits()
        yield gauge("upload_limit_bytes_per_second", "MAX_UPLOAD_RATE now (0: none)", limits["upload"])
        yield gauge("download_limit_bytes_per_second", "MAX_DOWNLOAD_RATE now (0: none)", limits["download"])


def _queued(writer: Any) -> int:
    queued = getattr(writer, "queued", None)
    return int(queued()) if queued is not None else 0


def registry_for(node: Any) -> CollectorRegistry:
    """A registry of this node's own (never the process-wide one)."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    return registry


class MetricsPage(Resource):
    """``/metrics`` in the Prometheus text format, rendered on the reactor thread."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest  # noqa: PLC0415

        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.registry)


class MetricsService(ListeningService):
    """Listen for scrapes on METRICS_INTERFACE:METRICS_PORT; a port that cannot open stops the node's start."""

    log = Logger()

    def __init__(self, reactor: Any, node: Any, port: int, interface: str) -> None:
        self.reactor = reactor
        self.node = node
        self.port = port
        self.interface = interface
        self.listening: Any = None

    def open(self) -> None:
        if self.listening is not None:
            return
        root = Resource()
        root.putChild(b"metrics", MetricsPage(registry_for(self.node)))
        site = Site(root)
        site.noisy = False
        site.log = lambda request: None  # type: ignore[method-assign]  # scrapes every few seconds: not logged
        try:
            self.listening = self.reactor.listenTCP(self.port, site, interface=self.interface)
        except CannotListenError as e:
            why = getattr(e.socketError, "strerror", None) or e.socketError
            raise StartupError(f"cannot serve metrics on {self.interface}:{self.port}: {why}") from None
        host = self.listening.getHost()
        self.log.info("metrics at http://{host}:{port}/metrics", host=host.host, port=host.port)
