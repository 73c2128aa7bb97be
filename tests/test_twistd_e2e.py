"""Black-box: the tracker and nodes as real `twistd` processes, driven by the `p2ptorrent` command.

Nothing here imports the services: we start what a person would start
(`twistd -n p2ptracker`, `twistd -n p2pnode --id N`, and one node as a real
daemon without -n), command the nodes over their control sockets with the
`p2ptorrent` console script, and judge only exit codes, printed output, the
files on disk and the log files.  Every process is ended in the fixture's
teardown, whatever happened.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import Callable

import pytest

import daemonkit
from daemonkit import end_process, pid_alive, registered
from p2ptorrent.metainfo import make_torrent
from p2ptorrent.procs import Daemons, free_port, sha256
from p2ptorrent.procs import wait_for as _wait_for

MIB = 1024 * 1024
wait_for = partial(_wait_for, timeout=20.0, fail=pytest.fail)


class Processes(Daemons):
    """Starts the daemons in one folder and ends every one of them at teardown."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, fail=pytest.fail, search_path=False, ctl_timeout=30.0)
        self.logs = root / "logs"
        self.port = free_port()
        #: Daemons started without -n: pid file and a text their command line must contain.
        self.daemons: list[tuple[Path, str]] = []

    # ---- starting
    def start_tracker(self) -> None:
        # At debug: the test counts the NEED requests, which the default level leaves out.
        daemonkit.start_tracker(self, self.port, 20.0, "--log-level", "debug")

    def node_args(self, node_id: int) -> list[str]:
        return daemonkit.node_args(self, node_id, self.port)

    def start_node(self, node_id: int) -> None:
        name = f"node{node_id}"
        self.start(name, self.node_args(node_id))
        self.wait_registered(node_id, alive=lambda: self.check_alive(name))

    def wait_registered(self, node_id: int, alive: Callable[[], None] | None = None) -> None:
        sock = self.nodes_dir / str(node_id) / ".control.sock"
        wait_for(sock.exists, f"node {node_id}'s control socket {sock}", alive=alive)
        wait_for(lambda: registered(self, node_id), f"node {node_id} to register with the tracker", alive=alive)

    # ---- ending
    def stop_all(self) -> None:
        self.stop(grace=5)
        for pidfile, marker in self.daemons:
            try:
                pid = int(pidfile.read_text().strip())
            except (OSError, ValueError):
                continue
            if pid_alive(pid) and marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                end_process(pid, grace=5)


@pytest.fixture
def procs(tmp_path: Path):  # type: ignore[no-untyped-def]
    p = Processes(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


def test_seed_download_logs_exit_status_and_failure(procs: Processes) -> None:
    procs.start_tracker()
    for n in (1, 2):
        procs.nodes_dir.joinpath(str(n)).mkdir(parents=True, exist_ok=True)
    data = os.urandom(4 * MIB + 12345)  # not a whole number of pieces or datagrams
    source = procs.nodes_dir / "1" / "payload.bin"
    source.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    procs.start_node(1)
    procs.start_node(2)

    # Seed through node 1.
    said = procs.ok(1, "send", str(source))
    assert "seeding payload.bin" in said and "announced to the tracker" in said, said
    torrent = procs.nodes_dir / "1" / "payload.bin.torrent"
    assert torrent.is_file()

    # Download through node 2: exit code 0, the same bytes.
    started = time.monotonic()
    said = procs.ok(2, "download", str(torrent))
    assert time.monotonic() - started < 20
    assert "downloaded payload.bin" in said and "the whole file (SHA-256) verified" in said, said
    got = procs.nodes_dir / "2" / "payload.bin"
    assert got.stat().st_size == len(data)
    assert sha256(got) == want

    # Every daemon wrote its own log, naming the protocol's events.
    tracker_log = (procs.logs / "tracker.log").read_text()
    node1_log = (procs.logs / "node_1.log").read_text()
    node2_log = (procs.logs / "node_2.log").read_text()
    for needle in ("node 1 joined from 127.0.0.1:", "node 2 joined from 127.0.0.1:", "node 1 owns ", "(payload.bin, ",
                   "node 2 owns ", "node 2 downloaded ", "credited [1]"):
        assert needle in tracker_log, f"{needle!r} not in tracker.log:\n{tracker_log}"
    # Heartbeats and NEED are logged at debug (shown here by --log-level debug): a busy tracker's log stays small.
    for line in tracker_log.splitlines():
        if "heartbeat from" in line or "node 2 needs " in line:
            assert "#debug]" in line, line
    for log in (tracker_log, node1_log, node2_log):
        assert log.count("Server Shut Down") <= 1  # each line once: twistd's log is this file, not a second copy
    for needle in ("registered with the tracker", "OWN payload.bin", "announced"):
        assert needle in node1_log, f"{needle!r} not in node_1.log:\n{node1_log}"
    for needle in ("registered with the tracker", "download of payload.bin", "tracker ranked owners [1]",
                   "fetching from node 1 at 127.0.0.1:", "payload.bin: complete", "OWN payload.bin",
                   "UPDATE credited nodes [1]"):
        assert needle in node2_log, f"{needle!r} not in node_2.log:\n{node2_log}"

    # `exit` ends node 2's process by itself, cleanly, and the tracker hears it leave.
    procs.ok(2, "exit")
    try:
        code = procs.procs["node2"].wait(10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"node 2 still runs 10 s after `exit`:\n{procs.tail('node2')}")
    assert code == 0, procs.tail("node2")
    wait_for(lambda: "node 2 left" in (procs.logs / "tracker.log").read_text(), "the tracker to log that node 2 left")
    gone = procs.ctl(2, "status", "--json")
    assert gone.returncode == 3 and "no node 2 is running" in gone.stderr, gone

    # status on node 1 is JSON naming the seeded file.
    status = json.loads(procs.ok(1, "status", "--json"))
    assert status["node_id"] == 1 and status["registered"] is True
    assert [f["name"] for f in status["seeding"]] == ["payload.bin"]
    assert status["seeding"][0]["length"] == len(data)
    assert status["seeding"][0]["uploaded"] >= len(data)

    # A torrent of a file nobody seeds: a non-zero exit, a clear reason, no file left.
    orphan = procs.root / "orphan.bin"
    orphan.write_bytes(os.urandom(100_000))
    orphan_meta, torrent_bytes = make_torrent(orphan, f"http://127.0.0.1:{procs.port}")
    orphan_torrent = procs.root / "orphan.bin.torrent"
    orphan_torrent.write_bytes(torrent_bytes)
    failed = procs.ctl(1, "download", str(orphan_torrent))
    # At once: on the tracker's first answer, not after waiting and asking again.
    asked = (procs.logs / "tracker.log").read_text().count(f"node 1 needs {orphan_meta.info_hash_hex}:")
    assert asked == 1, asked
    assert failed.returncode == 1, failed
    assert "error:" in failed.stderr and "orphan.bin" in failed.stderr, failed
    assert "no node is sharing orphan.bin" in failed.stderr, failed.stderr
    assert not (procs.nodes_dir / "1" / "orphan.bin").exists()
    incomplete = procs.nodes_dir / "1" / ".incomplete"
    assert not (incomplete.exists() and any(incomplete.iterdir())), list(incomplete.iterdir())
    # Node 1 lives on after the failure.
    procs.check_alive("node1")
    assert procs.ctl(1, "status", "--json").returncode == 0


def test_daemonised_node(procs: Processes) -> None:
    procs.start_tracker()
    pidfile = procs.root / "n3.pid"
    twistd_log = procs.root / "n3.twistd.log"
    procs.daemons.append((pidfile, str(procs.nodes_dir)))
    # Without -n, twistd forks, detaches and returns once the node has started.
    launched = subprocess.run(
        [procs.script("twistd"), f"--pidfile={pidfile}", f"--logfile={twistd_log}", *procs.node_args(3)],
        cwd=procs.root, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL,
    )
    assert launched.returncode == 0, launched
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), "the pid file"))  # type: ignore[arg-type]
    assert pid_alive(pid)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"p2pnode" in cmdline and b"-n" not in cmdline

    def daemon_alive() -> None:
        if not pid_alive(pid):
            pytest.fail(f"the daemon {pid} ended:\n{twistd_log.read_text(errors='replace')[-3000:]}")

    procs.wait_registered(3, alive=daemon_alive)

    shared = procs.root / "daemon.bin"
    shared.write_bytes(os.urandom(300_000))
    said = procs.ok(3, "send", str(shared))
    assert "seeding daemon.bin" in said and "announced to the tracker" in said, said
    status = json.loads(procs.ok(3, "status", "--json"))
    assert status["node_id"] == 3
    assert [f["name"] for f in status["seeding"]] == ["daemon.bin"]
    assert "node 3 owns " in (procs.logs / "tracker.log").read_text()

    procs.ok(3, "exit")
    wait_for(lambda: not pid_alive(pid), "the daemon to end after `exit`")
    wait_for(lambda: not pidfile.exists(), "twistd to remove the pid file")
    log = twistd_log.read_text()
    assert "exit requested" in log and "node 3 stopped" in log, log[-3000:]
    assert "node 3 left" in (procs.logs / "tracker.log").read_text()


def test_download_from_a_magnet_link(procs: Processes) -> None:
    """Two seeders; a third node given only a magnet link (through the `p2ptorrent` command) gets the file."""
    procs.start_tracker()
    data = os.urandom(2 * MIB + 321)
    for n in (1, 2):
        procs.nodes_dir.joinpath(str(n)).mkdir(parents=True, exist_ok=True)
        (procs.nodes_dir / str(n) / "payload.bin").write_bytes(data)
    for n in (1, 2, 3):
        procs.start_node(n)
    info_hash = ""
    for n in (1, 2):
        said = procs.ok(n, "send", "payload.bin")
        assert "seeding payload.bin" in said, said
        info_hash = said.split("info hash ")[1][:40]
    link = f"magnet:?xt=urn:btih:{info_hash}&dn=payload.bin&tr=http%3A%2F%2F127.0.0.1%3A{procs.port}%2Fannounce"
    said = procs.ok(3, "download", link)
    assert "downloaded payload.bin" in said, said
    assert sha256(procs.nodes_dir / "3" / "payload.bin") == hashlib.sha256(data).hexdigest()
    saved = procs.nodes_dir / "3" / "payload.bin.torrent"
    assert saved.is_file()
    assert "fetching the torrent's metadata from 2 owners" in (procs.logs / "node_3.log").read_text()
    # A bare info hash nobody shares: exit 1 and the reason.
    failed = procs.ctl(3, "download", "ab" * 20)
    assert failed.returncode == 1 and "no other owner" in failed.stderr, failed


def test_list_info_and_cancel_through_the_cli(procs: Processes) -> None:
    """A download held half way (a NAT gate that passes only the first half of the pieces): `list` shows
    it, `cancel` ends the waiting client with a reason and exit 1, the tracker forgets node 2's pieces,
    and they stay in .incomplete/ for the next `download`, which fetches only the rest."""
    from gates import NatGate
    from p2ptorrent.metainfo import read_torrent

    gate = NatGate()
    try:
        procs.start_tracker()
        size = 8 * MIB
        folder = procs.nodes_dir / "1"
        folder.mkdir(parents=True)
        (folder / "payload.bin").write_bytes(os.urandom(size))
        procs.start("node1", procs.node_args(1) + ["--advertise-port", str(gate.port)])
        procs.wait_registered(1, alive=lambda: procs.check_alive("node1"))
        procs.start("node2", procs.node_args(2) + ["--set", "PEER_TIMEOUT=3600"])
        procs.wait_registered(2, alive=lambda: procs.check_alive("node2"))
        procs.ok(1, "send", "payload.bin")
        torrent = folder / "payload.bin.torrent"
        meta = read_torrent(torrent)
        half = meta.num_pieces // 2
        gate.start(json.loads(procs.ok(1, "status", "--json"))["udp_port"], held_from=half)

        waiting = subprocess.Popen(
            [procs.script("p2ptorrent"), "--node", "2", "--node-files-dir", str(procs.nodes_dir), "download",
             str(torrent)], cwd=procs.root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        try:
            held = half * meta.piece_length

            def row() -> dict[str, object]:
                found = json.loads(procs.ok(2, "list", "--json"))["transfers"]
                return found[0] if found else {}  # (empty until the download command got there)

            wait_for(lambda: row().get("done") == held, "node 2 to hold the first half", alive=lambda: procs.check_alive("node2"))
            table = procs.ok(2, "list")
            header, rule, line, totals = table.splitlines()
            assert header.split()[:3] == ["Name", "Done", "Have"] or header.split()[:3] == ["ID", "Name", "Done"], table
            assert "payload.bin" in line and "50.0%" in line and "4.0 MiB" in line, table
            assert totals.startswith("1 transfer; down "), table
            info = procs.ok(2, "info", meta.info_hash_hex[:10])
            assert f"Info hash  {meta.info_hash_hex}" in info and "Peers" in info, info

            said = procs.ok(2, "cancel", "payload.bin")
            assert said == (f"cancelled payload.bin: withdrawn at the tracker; {held} of {size} bytes verified are"
                            " kept in .incomplete/ (download it again to resume)\n"), said
            out, err = waiting.communicate(timeout=30)
        finally:
            if waiting.poll() is None:
                waiting.kill()
                waiting.communicate()
        assert waiting.returncode == 1 and "payload.bin: cancelled by the operator" in err, (out, err)
        assert json.loads(procs.ok(2, "list", "--json"))["transfers"][0]["state"] == "cancelled"

        gate.open()
        said = procs.ok(2, "download", str(torrent))
        assert f"{size - held} bytes fetched now" in said, said
        assert sha256(procs.nodes_dir / "2" / "payload.bin") == sha256(folder / "payload.bin")
    finally:
        gate.stop()
