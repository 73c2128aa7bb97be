"""Real BitTorrent clients through our tracker over HTTP: two libtorrent sessions find each other only by it.

A real `twistd -n p2ptracker` on a free loopback port; a file of random bytes and its torrent made by
p2ptorrent (:func:`p2ptorrent.metainfo.make_torrent`, announce ``http://127.0.0.1:P/announce``); a libtorrent
seeder and a libtorrent downloader on 127.0.0.1 with DHT, LSD, UPnP and NAT-PMP off and no peer ever added by
hand, so the only way they learn of each other is the tracker's announce answer.  Scrape (BEP 48) is read as
a client reads it, and judged while the download is held and after it.

"Under way" never depends on the machine's speed: the seeder's torrent is upload-limited to one byte a
second (a 16 KiB block would take hours) until the test has seen the scrape it came for, then let go.
libtorrent is the bench extra (pip install -e '.[bench]'), as for benchmarks/swarm.py.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import json
import random
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import pytest
from fastbencode import bdecode

from daemonkit import start_tracker
from p2ptorrent.metainfo import make_torrent
from p2ptorrent.procs import Daemons, free_port, wait_for

#: A file of a few MiB: many pieces (256 KiB each), so a download is a real exchange, fast on loopback.
FILE_SIZE = 4 * 2**20 + 12345
#: Generous: these are deadlines on a shared machine, not expectations.
START_TIMEOUT = 60.0
TRANSFER_TIMEOUT = 120.0
#: One byte a second: no 16 KiB block can be sent while the test holds the seeder back.
HELD_BYTES_PER_S = 1


@pytest.fixture
def lt() -> Any:
    if importlib.util.find_spec("libtorrent") is None:
        pytest.fail("libtorrent is not importable: install the bench extra (pip install -e '.[bench]')")
    import libtorrent

    return libtorrent


@pytest.fixture
def tracker(tmp_path: Path) -> Iterator[int]:
    """A real tracker on a free port, as the README starts it; its port."""
    d = Daemons(tmp_path, fail=pytest.fail, search_path=False)
    port = free_port()
    try:
        start_tracker(d, port, START_TIMEOUT)
        yield port
    finally:
        d.stop()


def session(lt: Any) -> Any:
    """A libtorrent session on 127.0.0.1 as benchmarks/lt_peer.py sets one up: TCP only (uTP adds nothing
    here), no DHT, LSD, UPnP or NAT-PMP, so the tracker is its only source of peers."""
    port = free_port()
    return lt.session({
        "listen_interfaces": f"127.0.0.1:{port}",
        "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
        "allow_multiple_connections_per_ip": True,
        "enable_outgoing_utp": False, "enable_incoming_utp": False,
        # libtorrent's SSRF mitigation refuses trackers on loopback unless their path is /announce:
        # ours is, so the default (on) stays.
        "alert_mask": int(lt.alert_category.status | lt.alert_category.error | lt.alert_category.tracker),
    })


def add(lt: Any, ses: Any, torrent: Path, save: Path) -> Any:
    """The torrent started at once (not auto-managed: no queueing decides when it announces)."""
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(str(torrent))
    params.save_path = str(save)
    params.flags &= ~lt.torrent_flags.auto_managed
    params.flags &= ~lt.torrent_flags.paused
    return ses.add_torrent(params)


def http_get(port: int, target: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", target)
        answer = conn.getresponse()
        assert answer.status == 200, (answer.status, target)
        return answer.read()
    finally:
        conn.close()


def scrape(port: int, info_hash: bytes) -> tuple[int, int, int]:
    """(complete, incomplete, downloaded) as a client reads them from ``GET /scrape``."""
    doc = bdecode(http_get(port, "/scrape?info_hash=" + urllib.parse.quote_from_bytes(info_hash)))
    entry = doc[b"files"][info_hash]
    return entry[b"complete"], entry[b"incomplete"], entry[b"downloaded"]


class Alerts:
    """Every alert of some sessions, kept: the tracker replies a test waits for, the errors a timeout reports."""

    def __init__(self, lt: Any, *sessions: Any) -> None:
        self.lt = lt
        self.sessions = sessions
        self.seen: list[Any] = []

    def poll(self) -> list[Any]:
        for ses in self.sessions:
            self.seen.extend(ses.pop_alerts())
        return self.seen

    def errors(self) -> list[str]:
        return [a.message() for a in self.poll() if a.category() & self.lt.alert_category.error]


def test_a_libtorrent_seeder_and_downloader_find_each_other_only_through_the_tracker(
    lt: Any, tracker: int, tmp_path: Path,
) -> None:
    source = tmp_path / "seed" / "payload.bin"
    source.parent.mkdir()
    data = random.Random(15).randbytes(FILE_SIZE)
    source.write_bytes(data)
    meta, torrent_bytes = make_torrent(source, f"http://127.0.0.1:{tracker}/announce")
    torrent = tmp_path / "payload.torrent"
    torrent.write_bytes(torrent_bytes)
    (tmp_path / "down").mkdir()
    seeder_ses, downloader_ses = session(lt), session(lt)
    alerts = Alerts(lt, seeder_ses, downloader_ses)
    try:
        seeder = add(lt, seeder_ses, torrent, source.parent)
        # Held back: the seeder checks its file and announces, connects, but sends no block until let go.
        seeder.set_upload_limit(HELD_BYTES_PER_S)
        wait_for(lambda: seeder.status().is_seeding, "the seeder to check its file", START_TIMEOUT,
                 fail=lambda why: pytest.fail(f"{why}: {alerts.errors()}"))
        downloader = add(lt, downloader_ses, torrent, tmp_path / "down")

        # Both announced: one seed and one leecher, and (before any block could flow) they are connected.
        wait_for(lambda: scrape(tracker, meta.info_hash)[:2] == (1, 1), "scrape to show 1 complete, 1 incomplete",
                 START_TIMEOUT, fail=lambda why: pytest.fail(f"{why}: {scrape(tracker, meta.info_hash)}, "
                                                             f"{alerts.errors()}"))
        assert scrape(tracker, meta.info_hash) == (1, 1, 0)
        wait_for(lambda: downloader.status().num_peers > 0, "the downloader to connect to the seeder", START_TIMEOUT,
                 fail=lambda why: pytest.fail(f"{why}: {alerts.errors()}"))
        # The seeder announced first (its answer named nobody), so the downloader's answer named the seeder and
        # it connected out to the seeder's listening port: the one way they could meet.
        assert [tuple(p.ip) for p in downloader.get_peer_info()] == [("127.0.0.1", seeder_ses.listen_port())]
        assert downloader.status().total_wanted_done == 0 and not downloader.status().is_finished
        assert scrape(tracker, meta.info_hash) == (1, 1, 0), "still under way"

        seeder.set_upload_limit(0)  # 0: unlimited
        wait_for(lambda: downloader.status().is_seeding, "the download to finish", TRANSFER_TIMEOUT,
                 fail=lambda why: pytest.fail(f"{why}: {downloader.status().progress:.2f} done, "
                                              f"{alerts.errors()}"))

        polls = [0]

        def completed_announced() -> bool:
            if scrape(tracker, meta.info_hash) == (2, 0, 1):
                return True
            polls[0] += 1
            if polls[0] % 40 == 0:  # libtorrent sends `completed` on its own at once; this only retries a lost one
                downloader.force_reannounce(0, -1, lt.reannounce_flags_t.ignore_min_interval)
            return False

        wait_for(completed_announced, "scrape to show 2 complete, 1 downloaded", START_TIMEOUT,
                 fail=lambda why: pytest.fail(f"{why}: {scrape(tracker, meta.info_hash)}"))
        downloader.flush_cache()
        got = tmp_path / "down" / "payload.bin"
        wait_for(lambda: got.exists() and got.stat().st_size == FILE_SIZE, "the file on disk", START_TIMEOUT,
                 fail=pytest.fail)
        assert hashlib.sha256(got.read_bytes()).digest() == hashlib.sha256(data).digest()
    finally:
        for ses in (seeder_ses, downloader_ses):
            ses.pause()
        del seeder_ses, downloader_ses


def test_a_libtorrent_client_is_never_given_p2ptorrent_nodes(lt: Any, tracker: int, tmp_path: Path) -> None:
    info_hash = hashlib.sha1(b"a file both kinds of peer have").digest()
    node_port = 40123

    def post(body: dict[str, Any]) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", tracker, timeout=10)
        try:
            conn.request("POST", "/", json.dumps(body), {"Content-Type": "application/json"})
            answer = conn.getresponse()
            doc: dict[str, Any] = json.loads(answer.read())
            assert answer.status == 200 and doc["ok"], doc
            return doc
        finally:
            conn.close()

    joined = post({"mode": 0, "node_id": 7, "port": node_port})
    post({"mode": 1, "node_id": 7, "token": joined["token"], "info_hash": info_hash.hex(), "name": "f", "length": 1000})
    assert post({"mode": 2, "node_id": 7, "token": joined["token"], "info_hash": info_hash.hex()})

    # A libtorrent client announces that info hash (its own session, through our tracker).
    ses = session(lt)
    try:
        params = lt.add_torrent_params()
        params.info_hashes = lt.info_hash_t(lt.sha1_hash(info_hash))
        params.trackers = [f"http://127.0.0.1:{tracker}/announce"]
        params.save_path = str(tmp_path)
        params.flags &= ~lt.torrent_flags.auto_managed
        params.flags &= ~lt.torrent_flags.paused
        handle = ses.add_torrent(params)
        alerts = Alerts(lt, ses)

        def replies() -> list[Any]:
            return [a for a in alerts.poll() if isinstance(a, lt.tracker_reply_alert)]

        first = wait_for(replies, "the tracker's answer to the client", START_TIMEOUT,
                         fail=lambda why: pytest.fail(f"{why}: {alerts.errors()}"))[0]
        assert scrape(tracker, info_hash) == (0, 1, 0)
        # What the client was told: no peer at all (the node is not a BitTorrent peer), and it knows none.
        assert first.num_peers == 0, first.message()
        assert handle.status().list_peers == 0
    finally:
        ses.pause()

    # And the answer itself, as any client gets it, compact and not: the node is in neither.
    for compact in ("1", "0"):
        query = urllib.parse.urlencode({"info_hash": info_hash, "peer_id": b"-XX0001-" + b"0" * 12, "port": 6881,
                                        "uploaded": 0, "downloaded": 0, "left": 10, "compact": compact,
                                        "event": "started", "numwant": 200})
        answer = bdecode(http_get(tracker, "/announce?" + query))
        assert b"failure reason" not in answer, answer
        peers = answer[b"peers"]
        if compact == "1":
            ports = {int.from_bytes(peers[i + 4:i + 6], "big") for i in range(0, len(peers), 6)}
        else:
            ports = {p[b"port"] for p in peers}
        assert node_port not in ports, answer
        assert ports <= {ses.listen_port()}, answer
