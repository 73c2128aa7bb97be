"""A node's Prometheus metrics: off by default, served on 127.0.0.1 when asked, moving with a real transfer."""

from __future__ import annotations

import socket
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor

from p2ptorrent.node import tap as node_tap
from p2ptorrent.node.download import Phase
from p2ptorrent.node.metrics import DownloadTotals, MetricsService, registry_for
from p2ptorrent.node.service import Node
from p2ptorrent.startup import StartupError
from test_loopback import MIB, Cluster, _file, _registered

P = "p2ptorrent_node_"


@pytest.fixture
def cluster(tmp_path: Path):  # type: ignore[no-untyped-def]
    c = Cluster(tmp_path)
    yield c
    pytest_twisted.blockon(defer.ensureDeferred(c.stop()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening_tcp() -> set[int]:
    return {c.laddr.port for c in psutil.Process().net_connections("tcp") if c.status == psutil.CONN_LISTEN}


async def _scrape(port: int) -> dict[str, Any]:
    """Every sample of the page, by name (and by label for the labelled ones)."""
    response = await treq.get(f"http://127.0.0.1:{port}/metrics")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
    text = await treq.text_content(response)
    samples: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels:
                samples.setdefault(s.name, {})[tuple(s.labels.values())[0]] = s.value
            else:
                samples[s.name] = s.value
    return samples


def _fake_download(phase: Phase, pieces: int) -> Any:
    peer = SimpleNamespace(bytes=1000 * pieces)
    return SimpleNamespace(
        phase=phase, pieces_failed=1, writer=SimpleNamespace(queued=lambda: 2),
        transfer=SimpleNamespace(retransmits=5, peers={("10.0.0.1", 1): peer}),
        stats=SimpleNamespace(pieces_from={("10.0.0.1", 1): pieces}, dropped_bytes=0),
    )


def test_an_ended_download_still_listed_is_counted_once() -> None:
    """Between its end and the tracker's answer a download stays listed; its figures are in the totals."""
    ended, running = _fake_download(Phase.ENDED, 3), _fake_download(Phase.RUNNING, 4)
    totals = DownloadTotals()
    totals.ended(ended)
    node = SimpleNamespace(
        protocol=SimpleNamespace(received=10, sent=20, bytes_received=1, bytes_sent=2,
                                 counts=Counter({"rejected": 1, "rejected:stranger": 1, "limited:upload rate": 7})),
        downloads={b"a": ended, b"b": running}, download_totals=totals,
        seeder=SimpleNamespace(files={}), choker=SimpleNamespace(unchoked=set()),
        limits=lambda: {"upload": 5, "download": 0},
    )
    from prometheus_client import generate_latest

    samples = {(s.name, tuple(s.labels.values())): s.value
               for f in text_string_to_metric_families(generate_latest(registry_for(node)).decode())
               for s in f.samples}
    assert samples[(P + "pieces_verified_total", ())] == 7
    assert samples[(P + "pieces_failed_total", ())] == 2
    assert samples[(P + "retransmissions_total", ())] == 10
    assert samples[(P + "downloads", ())] == 1 and samples[(P + "writer_queue", ())] == 2
    assert samples[(P + "refused_datagrams_total", ("stranger",))] == 1
    assert samples[(P + "limited_total", ("upload rate",))] == 7
    assert samples[(P + "upload_limit_bytes_per_second", ())] == 5


def test_options_and_settings() -> None:
    opts = node_tap.Options()
    opts.parseOptions(["--id", "3", "--metrics-port", "9100", "--max-upload-rate", "20MiB",
                       "--max-download-rate", "512KiB", "--no-stdin", "--node-files-dir", "/tmp/nf-unused"])
    s = opts["settings"]
    assert (s.METRICS_PORT, s.METRICS_INTERFACE, s.MAX_UPLOAD_RATE, s.MAX_DOWNLOAD_RATE) == (
        9100, "127.0.0.1", 20 * MIB, 512 * 1024)
    assert "--metrics-port" in str(node_tap.Options()) and "--max-upload-rate" in str(node_tap.Options())


@pytest_twisted.ensureDeferred
async def test_off_by_default_no_port_is_opened(cluster: Cluster) -> None:
    await cluster.start_tracker()
    before = _listening_tcp()
    node = cluster.node(1)
    await _registered(node)
    assert node.metrics is None
    assert not [svc for svc in node if isinstance(svc, MetricsService)]
    assert _listening_tcp() - before == set()


@pytest_twisted.ensureDeferred
async def test_a_busy_metrics_port_stops_the_start_with_the_reason(cluster: Cluster) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        opts = node_tap.Options()
        opts.parseOptions(["--id", "1", "--interface", "127.0.0.1", "--node-files-dir", str(cluster.tmp / "nf"),
                           "--logs-dir", str(cluster.tmp / "logs"), "--no-stdin",
                           "--metrics-port", str(taken.getsockname()[1])])
        node = node_tap.makeService(opts, reactor)
        try:
            with pytest.raises(StartupError, match="cannot serve metrics on 127.0.0.1"):
                node.open()
        finally:  # (twistd would exit here; this process goes on with other tests)
            await defer.maybeDeferred(node.udp.stopService)
            node.lock.release()


@pytest_twisted.ensureDeferred
async def test_metrics_move_with_a_real_transfer(cluster: Cluster) -> None:
    await cluster.start_tracker()
    size = 3 * MIB + 99
    _file(cluster.tmp / "nf" / "1" / "data.bin", size)
    seeder_port, downloader_port = _free_port(), _free_port()
    cluster.extra = ["--metrics-port", str(seeder_port), "--max-upload-rate", "64MiB"]
    seeder: Node = cluster.node(1)
    assert seeder.metrics is not None and seeder.metrics.listening.getHost().host == "127.0.0.1"
    await _registered(seeder)
    await seeder.send("data.bin")
    cluster.extra = ["--metrics-port", str(downloader_port)]
    downloader: Node = cluster.node(2)
    await _registered(downloader)

    idle = await _scrape(downloader_port)
    assert idle[P + "bytes_received_total"] == 0 and idle[P + "pieces_verified_total"] == 0
    assert idle[P + "downloads"] == 0 and idle[P + "download_limit_bytes_per_second"] == 0

    await downloader.download(str(cluster.tmp / "nf" / "1" / "data.bin.torrent"), lambda p: None)
    # A datagram nobody asked for, counted by its reason.
    downloader.protocol.datagramReceived(b"\x00" * 40, ("127.0.0.1", 9))

    got = await _scrape(downloader_port)
    num_pieces = next(iter(seeder.seeder.files.values())).meta.num_pieces
    assert got[P + "pieces_verified_total"] == num_pieces
    assert got[P + "pieces_failed_total"] == 0
    assert got[P + "block_bytes_received_total"] >= size
    assert got[P + "bytes_received_total"] > size
    assert got[P + "datagrams_received_total"] > size // 9216
    assert got[P + "datagrams_sent_total"] > 0
    assert got[P + "downloads"] == 0  # it ended; its counts stay in the totals
    assert got[P + "refused_datagrams_total"]["bad magic"] == 1
    assert P + "writer_queue" in got and P + "retransmissions_total" in got and P + "download_peers" in got

    served = await _scrape(seeder_port)
    assert served[P + "bytes_sent_total"] > size
    assert served[P + "block_bytes_uploaded_total"] >= size
    assert served[P + "upload_limit_bytes_per_second"] == 64 * MIB
    assert served[P + "seeding"] == 1
    seeder.limit(1024, None)
    assert (await _scrape(seeder_port))[P + "upload_limit_bytes_per_second"] == 1024
