"""Real BitTorrent clients find each other through our tracker over UDP only (BEP 15), and share a file.

Two libtorrent sessions on 127.0.0.1 (the bench extra's Python bindings), DHT, LSD, UPnP and NAT-PMP off,
so the tracker is the only way they can learn of each other; the torrent names only the ``udp://`` tracker.
The seeder is added first and waits for the tracker's reply, so the downloader's first announce already
gets it (the next one would be BT_ANNOUNCE_INTERVAL later).  Every wait polls with a generous deadline.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from fastbencode import bdecode

from p2ptorrent.metainfo import make_torrent
from p2ptorrent.procs import Daemons, free_port, wait_for
from daemonkit import start_tracker

lt = pytest.importorskip("libtorrent", reason="the bench extra (pip install -e '.[bench]') brings libtorrent")

DEADLINE = 180.0


def session() -> Any:
    categories = 0
    for name in ("error", "status", "tracker", "storage"):
        categories |= int(getattr(lt.alert_category, name, 0))
    return lt.session({
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
        "allow_multiple_connections_per_ip": True,
        "alert_mask": categories,
    })


def added(info: Any, save_path: Path) -> Any:
    params = lt.add_torrent_params()
    params.ti = info
    params.save_path = str(save_path)
    return params


class Watch:
    """Drains a session's alerts, keeping (type, message) of each (an alert object is only valid until the
    next pop) for the waits, and the errors for a failure's report."""

    def __init__(self, name: str, ses: Any) -> None:
        self.name, self.ses = name, ses
        self.seen: list[tuple[type, str]] = []
        self.errors: list[str] = []

    def pump(self) -> None:
        for a in self.ses.pop_alerts():
            self.seen.append((type(a), a.message()))
            if a.category() & lt.alert_category.error:
                self.errors.append(f"{self.name}: {type(a).__name__}: {a.message()}")

    def any(self, kind: Any) -> bool:
        self.pump()
        return any(issubclass(t, kind) for t, _ in self.seen)


def until(check: Callable[[], Any], what: str, watches: list[Watch], d: Daemons) -> Any:
    def alive() -> None:
        d.check_alive("tracker")
        for w in watches:
            w.pump()

    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        alive()
        got = check()
        if got:
            return got
        time.sleep(0.05)
    errors = "\n".join(e for w in watches for e in w.errors[-10:])
    pytest.fail(f"timed out after {DEADLINE} s waiting for {what}; libtorrent said:\n{errors}\n"
                f"the tracker printed:\n{d.tail('tracker')}")


def test_two_libtorrent_clients_share_a_file_through_the_udp_tracker(tmp_path: Path) -> None:
    d = Daemons(tmp_path, fail=pytest.fail, search_path=False)
    port = free_port()
    seed_dir, leech_dir = tmp_path / "seed", tmp_path / "leech"
    seed_dir.mkdir()
    leech_dir.mkdir()
    data = random.Random(15).randbytes(3 * 1024 * 1024 + 12345)
    (seed_dir / "payload.bin").write_bytes(data)
    _, torrent = make_torrent(seed_dir / "payload.bin", f"udp://127.0.0.1:{port}/announce")
    (tmp_path / "payload.torrent").write_bytes(torrent)
    doc = bdecode(torrent)
    assert doc[b"announce"] == f"udp://127.0.0.1:{port}/announce".encode() and b"announce-list" not in doc
    try:
        start_tracker(d, port, 30.0, "--udp-port", "0")
        log = tmp_path / "logs" / "tracker.log"
        wait_for(lambda: log.exists() and f"BitTorrent UDP tracker on udp 127.0.0.1:{port}" in log.read_text(),
                 "the UDP tracker", timeout=30.0, alive=lambda: d.check_alive("tracker"), fail=pytest.fail)

        seeder, leecher = session(), session()
        watches = [Watch("seeder", seeder), Watch("leecher", leecher)]
        info = lt.torrent_info(str(tmp_path / "payload.torrent"))
        seeding = seeder.add_torrent(added(info, seed_dir))
        until(lambda: seeding.status().is_seeding, "the seeder to check its file", watches, d)
        until(lambda: watches[0].any(lt.tracker_reply_alert), "the tracker's reply to the seeder", watches, d)

        leeching = leecher.add_torrent(added(lt.torrent_info(str(tmp_path / "payload.torrent")), leech_dir))
        until(lambda: leeching.status().is_seeding, "the downloader to finish", watches, d)
        done = leech_dir / "payload.bin"
        # Finished means every piece checked; the bytes reach the file through libtorrent's disk threads.
        until(lambda: done.exists() and done.stat().st_size == len(data) and done.read_bytes() == data,
              "the downloaded file to be whole on disk", watches, d)
        # The downloader learnt of the seeder from our tracker (nothing else could tell it).
        replies = [m for t, m in watches[1].seen if issubclass(t, lt.tracker_reply_alert)]
        assert replies and replies[0].endswith("received peers: 1"), replies
        # Its first announce was answered (a refusal would have meant a retry much later).
        assert not any(issubclass(t, lt.tracker_error_alert) for w in watches for t, _ in w.seen), watches[1].errors
        for handle, ses in ((leeching, leecher), (seeding, seeder)):
            ses.remove_torrent(handle)
    finally:
        d.stop(grace=10)
