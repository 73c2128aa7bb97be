"""Transmission and aria2, the real programs, through our tracker: a p2ptorrent torrent moves between them.

libtorrent has its own tests (test_bittorrent_clients.py, test_bittorrent_udp.py); these cover the two other
clients people run most, as Debian ships them (`transmission-cli` 3.00, `aria2c` 1.36, installed by
`.ci/run`). A real `twistd -n p2ptracker`; a torrent made by p2ptorrent naming only one of the tracker's
interfaces, so the tracker is the only way the two clients can meet: no DHT peers (aria2's DHT, which it needs
for UDP trackers, has no node to start from), no local discovery, no peer exchange, nothing added by hand.

On loopback, Transmission (which never dials a peer at 127.0.0.0/8) downloads from a seeder that dials it,
and aria2 dials the seeders it is given: each test lets the one that dials learn of the other from the tracker.
Each client is an external process the test stops; the test waits for what it came for (the file identical,
the scrape counts) with deadlines that are limits on a shared machine, not expectations.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from daemonkit import start_tracker
from p2ptorrent.metainfo import make_torrent
from p2ptorrent.procs import Daemons, free_port, wait_for
from test_bittorrent_clients import scrape

FILE_SIZE = 3 * 2**20 + 777
START_TIMEOUT = 60.0
TRANSFER_TIMEOUT = 120.0
#: aria2 with everything but the tracker off; its DHT is on only where a UDP tracker needs it, with no entry point.
ARIA2_QUIET = ["--bt-enable-lpd=false", "--enable-peer-exchange=false", "--enable-dht6=false",
               "--summary-interval=0", "--console-log-level=warn", "--file-allocation=none"]


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} is not installed: .ci/run installs it (apt-get install transmission-cli aria2)")
    return path


@pytest.fixture
def tracker(tmp_path: Path) -> Iterator[int]:
    d = Daemons(tmp_path, fail=pytest.fail, search_path=False)
    port = free_port()
    try:
        start_tracker(d, port, START_TIMEOUT)
        yield port
    finally:
        d.stop()


class Clients:
    """External client processes, each with its own output file; all stopped at the end, whatever happens."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str]) -> None:
        out = open(self.root / f"{name}.out", "wb")
        env = dict(os.environ, HOME=str(self.root / f"{name}-home"))  # Transmission keeps its state under HOME
        self.procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env, start_new_session=True)
        out.close()

    def output(self, name: str) -> str:
        return (self.root / f"{name}.out").read_bytes().decode(errors="replace").replace("\r", "\n")[-3000:]

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def transmission(path: str, torrent: Path, folder: Path, config: Path) -> list[str]:
    """transmission-cli with DHT, local discovery and peer exchange off (its settings.json: the CLI has no flags)."""
    config.mkdir()
    (config / "settings.json").write_text(json.dumps({"dht-enabled": False, "lpd-enabled": False, "pex-enabled": False,
                                                      "utp-enabled": False}))
    return [path, "-g", str(config), "-w", str(folder), "-p", str(free_port()), "--no-portmap", str(torrent)]


def payload(tmp_path: Path, announce: str) -> tuple[Path, bytes, bytes, Path]:
    """(the seeder's file, its bytes, the info hash, the torrent made by p2ptorrent naming *announce* only)."""
    source = tmp_path / "seed" / "payload.bin"
    source.parent.mkdir()
    data = random.Random(14).randbytes(FILE_SIZE)
    source.write_bytes(data)
    meta, torrent_bytes = make_torrent(source, announce)
    torrent = tmp_path / "payload.torrent"
    torrent.write_bytes(torrent_bytes)
    return source, data, meta.info_hash, torrent


def arrived(path: Path, data: bytes) -> bool:
    return path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data


def test_transmission_downloads_from_aria2_through_the_http_tracker(tracker: int, tmp_path: Path) -> None:
    source, data, info_hash, torrent = payload(tmp_path, f"http://127.0.0.1:{tracker}/announce")
    down = tmp_path / "down"
    down.mkdir()
    clients = Clients(tmp_path)
    try:
        # Transmission never dials a peer at 127.0.0.0/8 (a "martian" address to it) but takes connections, so
        # on loopback it announces first and the seeder, given its address by the tracker, connects to it.
        clients.start("transmission", transmission(need("transmission-cli"), torrent, down, tmp_path / "tr-config"))
        wait_for(lambda: scrape(tracker, info_hash)[1] == 1, "Transmission to announce as a downloader",
                 START_TIMEOUT, fail=lambda why: pytest.fail(f"{why}\n{clients.output('transmission')}"))
        clients.start("aria2", [need("aria2c"), "--seed-ratio=0.0", "--check-integrity=true", "--enable-dht=false",
                                f"--listen-port={free_port()}", *ARIA2_QUIET, "-d", str(source.parent), str(torrent)])
        wait_for(lambda: arrived(down / "payload.bin", data), "Transmission to download the file", TRANSFER_TIMEOUT,
                 fail=lambda why: pytest.fail(f"{why}\n{clients.output('transmission')}\n{clients.output('aria2')}"))
        # Transmission seeds once complete and says so at once (event=completed).
        wait_for(lambda: scrape(tracker, info_hash) == (2, 0, 1), "the scrape to count two seeds, one download",
                 TRANSFER_TIMEOUT, fail=lambda why: pytest.fail(f"{why}: {scrape(tracker, info_hash)}"))
    finally:
        clients.stop()


def test_aria2_downloads_from_transmission_through_the_udp_tracker(tracker: int, tmp_path: Path) -> None:
    # The tracker's UDP port is its HTTP port number (TRACKER_UDP_PORT 0); the torrent names only udp://.
    source, data, info_hash, torrent = payload(tmp_path, f"udp://127.0.0.1:{tracker}/announce")
    down = tmp_path / "down"
    down.mkdir()
    clients = Clients(tmp_path)
    try:
        clients.start("transmission", transmission(need("transmission-cli"), torrent, source.parent, tmp_path / "tr-config"))
        wait_for(lambda: scrape(tracker, info_hash)[0] == 1, "Transmission to check its file and announce as a seed",
                 START_TIMEOUT, fail=lambda why: pytest.fail(f"{why}\n{clients.output('transmission')}"))
        # aria2 speaks to UDP trackers through its DHT socket, so its DHT is on: with no entry point and no
        # routing table it knows no DHT node, and the tracker stays the only way to the seeder.
        clients.start("aria2", [
            need("aria2c"), "--seed-time=0", "--enable-dht=true", f"--dht-listen-port={free_port()}",
            f"--dht-file-path={tmp_path / 'dht.dat'}", f"--listen-port={free_port()}", *ARIA2_QUIET,
            "-d", str(down), str(torrent),
        ])
        wait_for(lambda: arrived(down / "payload.bin", data), "aria2 to download the file", TRANSFER_TIMEOUT,
                 fail=lambda why: pytest.fail(f"{why}\n{clients.output('aria2')}\n{clients.output('transmission')}"))
        # aria2 was told to stop seeding at once: it ends by itself and leaves with event=stopped, so the tracker
        # holds the one seed again.
        wait_for(lambda: clients.procs["aria2"].poll() is not None, "aria2 to finish", TRANSFER_TIMEOUT,
                 fail=lambda why: pytest.fail(f"{why}\n{clients.output('aria2')}"))
        assert clients.procs["aria2"].returncode == 0, clients.output("aria2")
        assert scrape(tracker, info_hash)[:2] == (1, 0), clients.output("aria2")
    finally:
        clients.stop()
