"""The tracker's Prometheus metrics (``GET /metrics``), through prometheus_client.

One :class:`CollectorRegistry` per tracker, never the process-global one, so
several trackers in one process (tests, tools) each count their own.  The
counters and histograms move as requests are answered; the gauges (nodes,
files, owners, BitTorrent clients, open connections) are read from the state
when Prometheus scrapes, so keeping them costs a request nothing.  Each metric
is described in docs/tracker-http.md.
"""

from __future__ import annotations

from typing import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE_LATEST", "TrackerMetrics"]

#: Request latencies, seconds: a heartbeat answers in well under a millisecond, a commit in milliseconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: What one outcome label may say: answered, refused by the rules (4xx, a BEP failure reason), or failed.
OUTCOMES = ("ok", "refused", "error")

#: The gauges read at scrape time: name -> help.
GAUGES = {
    "p2ptracker_nodes": "Live nodes.",
    "p2ptracker_files": "Files known to the tracker.",
    "p2ptracker_owners": "Ownerships (a node owning a file, whole or in part), summed over files.",
    "p2ptracker_partial_owners": "Ownerships of nodes still downloading (partial owners), summed over files.",
    "p2ptracker_bittorrent_clients": "BitTorrent clients (announce, scrape, BEP 15) seen recently.",
    "p2ptracker_bittorrent_torrents": "Torrents BitTorrent clients announce.",
    "p2ptracker_open_connections": "Open HTTP connections.",
}


class _Gauges(Collector):
    """The gauges, computed from the tracker when scraped."""

    def __init__(self, read: Callable[[], Mapping[str, float]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        values = self._read()
        for name, doc in GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=values.get(name, 0))


class TrackerMetrics:
    """The metrics of one tracker; *gauges* reads the values of :data:`GAUGES` at scrape time."""

    def __init__(self, gauges: Callable[[], Mapping[str, float]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "p2ptracker_requests", "Requests answered, by mode and outcome (ok, refused, error).",
            ["mode", "outcome"], registry=self.registry,
        )
        self.latency = Histogram(
            "p2ptracker_request_seconds", "Time from reading a request to answering it (a change: once saved), by mode.",
            ["mode"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.saves = Counter("p2ptracker_saves", "Saves of the store (SQLite commits, JSON writes, Redis row writes).",
                             ["outcome"], registry=self.registry)
        self.save_seconds = Histogram("p2ptracker_save_seconds", "Time one save of the store took.",
                                      buckets=LATENCY_BUCKETS, registry=self.registry)
        self.dropped = Counter("p2ptracker_dropped_nodes", "Nodes dropped by liveness (no heartbeat in time).",
                               registry=self.registry)
        self.registry.register(_Gauges(gauges))

    def request(self, mode: str, outcome: str, seconds: float | None = None) -> None:
        """One request answered (*seconds*: how long it took, when it was timed)."""
        self.requests.labels(mode, outcome).inc()
        if seconds is not None:
            self.latency.labels(mode).observe(max(0.0, seconds))

    def saved(self, ok: bool, seconds: float) -> None:
        self.saves.labels("ok" if ok else "error").inc()
        self.save_seconds.observe(max(0.0, seconds))

    def exposition(self) -> bytes:
        """The text Prometheus scrapes (content type :data:`CONTENT_TYPE_LATEST`)."""
        return generate_latest(self.registry)
