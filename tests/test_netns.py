"""Cross-host: tracker, seeder and downloader each on its own network namespace.

The test builds its own little network, touching nothing outside it:

    <run>-tr  10.231.0.1/24 --+
    <run>-sd  10.231.0.2/24 --+-- bridge br0 in <run>-br
    <run>-dl  10.231.0.3/24 --+

Each veth end is created directly inside its namespace, so no interface or
address ever appears in the machine's own namespace, and the namespaces have
no route anywhere else: every packet the daemons send goes to 10.231.0.x.
The daemons run with `ip netns exec NS twistd -n ...`; the `p2ptorrent`
command runs outside, because a node's control socket is a file.

The machine must allow `ip netns` (root, iproute2): if it does not, the test
fails and says why rather than skipping, so a cross-host check never passes
silently by not running.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from p2ptorrent.procs import Daemons, sha256
from p2ptorrent.procs import wait_for as _wait_for

MIB = 1024 * 1024
TRACKER_PORT = 12345  # the namespace is new and empty: any port is free there
wait_for = partial(_wait_for, timeout=20.0, fail=pytest.fail)


@dataclass(frozen=True)
class Addresses:
    """The hosts' addresses: the tracker, the seeder (and its second address), the downloader."""

    tracker: str
    seeder: str
    seeder_second: str
    downloader: str
    prefix: int

    def url_host(self, host: str) -> str:
        return f"[{host}]" if ":" in host else host


IPV4 = Addresses("10.231.0.1", "10.231.0.2", "10.231.0.12", "10.231.0.3", 24)
#: A unique local network (RFC 4193): never routed anywhere.
IPV6 = Addresses("fd23:1::1", "fd23:1::2", "fd23:1::12", "fd23:1::3", 64)


class Network:
    """Namespaces named after this run; removed by :meth:`destroy` even when half built."""

    def __init__(self, addresses: Addresses = IPV4) -> None:
        self.addresses = addresses
        self.ip = shutil.which("ip") or next((p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip") if os.path.exists(p)), "")
        run = f"p2pt{os.getpid()}{os.urandom(2).hex()}"
        self.tracker, self.seeder, self.downloader, self.bridge = (f"{run}-{r}" for r in ("tr", "sd", "dl", "br"))
        self.created: list[str] = []

    def sh(self, *args: str) -> None:
        result = subprocess.run([self.ip, *args], capture_output=True, text=True, timeout=20)
        if result.returncode != 0:
            pytest.fail(
                f"`ip {' '.join(args)}` failed ({result.returncode}): {result.stderr.strip()}\n"
                "This test needs network namespaces: run it as root (or with CAP_SYS_ADMIN and CAP_NET_ADMIN)"
                " on a kernel with veth and bridge support."
            )

    def build(self) -> None:
        """Build the network; fails the test (never skips) when the machine does not allow it."""
        if os.geteuid() != 0:
            pytest.fail(f"tests/test_netns.py must run as root to create network namespaces (running as uid {os.geteuid()})")
        if not self.ip:
            pytest.fail("the `ip` command (iproute2) is not installed: install iproute2 (apt-get install iproute2)")
        for ns in (self.bridge, self.tracker, self.seeder, self.downloader):
            self.sh("netns", "add", ns)
            self.created.append(ns)
            self.sh("-n", ns, "link", "set", "lo", "up")
        self.sh("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        self.sh("-n", self.bridge, "link", "set", "br0", "up")
        a = self.addresses
        # nodad: an IPv6 address is usable at once, not after duplicate address detection (nobody else is here).
        nodad = ["nodad"] if ":" in a.tracker else []
        for i, (ns, addr) in enumerate(((self.tracker, a.tracker), (self.seeder, a.seeder), (self.downloader, a.downloader))):
            host_end, bridge_end = f"eth{i}", f"port{i}"
            # Both ends are born inside their namespaces: nothing appears in ours.
            self.sh("link", "add", host_end, "netns", ns, "type", "veth", "peer", "name", bridge_end, "netns", self.bridge)
            self.sh("-n", self.bridge, "link", "set", bridge_end, "master", "br0")
            self.sh("-n", self.bridge, "link", "set", bridge_end, "up")
            self.sh("-n", ns, "addr", "add", f"{addr}/{a.prefix}", "dev", host_end, *nodad)
            self.sh("-n", ns, "link", "set", host_end, "up")
        # A second address on the seeder's host: node 1 listens there, not on the primary one.
        self.sh("-n", self.seeder, "addr", "add", f"{a.seeder_second}/{a.prefix}", "dev", "eth1", *nodad)

    def exec_in(self, ns: str) -> list[str]:
        """The command prefix that runs a program inside namespace *ns*."""
        return [self.ip, "netns", "exec", ns]

    def destroy(self) -> list[str]:
        problems = []
        for ns in reversed(self.created):
            result = subprocess.run([self.ip, "netns", "del", ns], capture_output=True, text=True, timeout=20)
            if result.returncode != 0:
                problems.append(f"ip netns del {ns}: {result.stderr.strip()}")
        self.created.clear()
        return problems


def connects_in(ns: str, ip: str, host: str, port: int) -> bool:
    """Whether a TCP connection to host:port succeeds from inside *ns* (probed with this Python)."""
    probe = f"import socket; socket.create_connection(({host!r}, {port}), timeout=0.5).close()"
    result = subprocess.run([ip, "netns", "exec", ns, sys.executable, "-c", probe], capture_output=True, timeout=10)
    return result.returncode == 0


@pytest.fixture(params=[IPV4, IPV6], ids=["ipv4", "ipv6"])
def net(request):  # type: ignore[no-untyped-def]
    # The test body builds it, so a machine without namespaces is a test failure, not a setup error.
    network = Network(request.param)
    try:
        yield network
    finally:
        problems = network.destroy()
        assert not problems, problems


@pytest.fixture
def daemons(tmp_path: Path, net: Network):  # type: ignore[no-untyped-def]
    d = Daemons(tmp_path, fail=pytest.fail, search_path=False)
    try:
        yield d
    finally:
        d.stop(grace=5)  # before `net` tears the namespaces down


def test_seed_and_download_across_namespaces(tmp_path: Path, net: Network, daemons: Daemons) -> None:
    nodes_dir = tmp_path / "node_files"
    logs = tmp_path / "logs"
    db = tmp_path / "tracker_db"

    ctl, ok = daemons.ctl, daemons.ok  # `p2ptorrent --node N ...`, run outside the namespaces
    a = net.addresses
    TRACKER_ADDR, SEEDER_SECOND_ADDR, DOWNLOADER_ADDR = a.tracker, a.seeder_second, a.downloader  # noqa: N806
    net.build()
    # `ip netns exec` execs the command, so each Popen's pid is twistd's own.
    daemons.start("tracker", [
        "p2ptracker", "--host", TRACKER_ADDR, "--port", str(TRACKER_PORT),
        "--tracker-db-dir", str(db), "--logs-dir", str(logs),
    ], wrapper=net.exec_in(net.tracker))
    wait_for(lambda: connects_in(net.seeder, net.ip, TRACKER_ADDR, TRACKER_PORT),
             f"the tracker to answer at {TRACKER_ADDR}:{TRACKER_PORT} from the seeder's namespace",
             alive=partial(daemons.check_alive, "tracker"))

    common = ["--node-files-dir", str(nodes_dir), "--logs-dir", str(logs),
              "--tracker", f"{a.url_host(TRACKER_ADDR)}:{TRACKER_PORT}", "--no-stdin"]
    # Node 1 listens on its host's second address: the tracker must see that one (the
    # node's HTTP connection leaves from --interface), or nobody could reach it.
    for node_id, ns, addr in ((1, net.seeder, SEEDER_SECOND_ADDR), (2, net.downloader, DOWNLOADER_ADDR)):
        daemons.start(f"node{node_id}", ["p2pnode", "--id", str(node_id), "--interface", addr, *common], wrapper=net.exec_in(ns))
    for node_id in (1, 2):
        alive = partial(daemons.check_alive, f"node{node_id}")
        sock = nodes_dir / str(node_id) / ".control.sock"
        wait_for(sock.exists, f"node {node_id}'s control socket", alive=alive)

        def registered(node_id: int = node_id) -> bool:
            result = ctl(node_id, "status", "--json")
            return result.returncode == 0 and json.loads(result.stdout)["registered"] is True

        wait_for(registered, f"node {node_id} to register with the tracker at {TRACKER_ADDR}", alive=alive)

    # The tracker recorded the address each node's connection came from: its namespace's.
    def recorded() -> dict[int, tuple[str, int]] | None:
        try:
            doc = json.loads((db / "nodes.json").read_text())
        except (OSError, ValueError):
            return None
        found = {n["node_id"]: (n["host"], n["port"]) for n in doc.get("nodes", [])}
        return found if set(found) >= {1, 2} else None

    hosts = wait_for(recorded, "nodes.json to list nodes 1 and 2")
    assert isinstance(hosts, dict)
    assert hosts[1][0] == SEEDER_SECOND_ADDR, hosts
    assert hosts[2][0] == DOWNLOADER_ADDR, hosts
    for node_id in (1, 2):
        status = json.loads(ok(node_id, "status", "--json"))
        assert status["udp_port"] == hosts[node_id][1], (status, hosts)
    tracker_log = (logs / "tracker.log").read_text()
    assert f"tracker listening on {TRACKER_ADDR}:{TRACKER_PORT}" in tracker_log, tracker_log
    assert f"node 1 joined from {SEEDER_SECOND_ADDR}:{hosts[1][1]}" in tracker_log, tracker_log
    assert f"node 2 joined from {DOWNLOADER_ADDR}:{hosts[2][1]}" in tracker_log, tracker_log
    assert "127.0.0.1" not in tracker_log, tracker_log

    # Seed in one namespace, download in the other.
    (nodes_dir / "1").mkdir(parents=True, exist_ok=True)
    data = os.urandom(3 * MIB + 4321)
    source = nodes_dir / "1" / "across.bin"
    source.write_bytes(data)
    said = ok(1, "send", str(source))
    assert "announced to the tracker" in said, said
    said = ok(2, "download", str(nodes_dir / "1" / "across.bin.torrent"))
    assert "downloaded across.bin" in said and "the whole file (SHA-256) verified" in said, said
    assert sha256(nodes_dir / "2" / "across.bin") == hashlib.sha256(data).hexdigest()

    node2_log = (logs / "node_2.log").read_text()
    assert f"node listening on UDP {DOWNLOADER_ADDR}:" in node2_log, node2_log
    assert f"fetching from node 1 at {SEEDER_SECOND_ADDR}:{hosts[1][1]}" in node2_log, node2_log
    assert f"listening on UDP {SEEDER_SECOND_ADDR}:" in (logs / "node_1.log").read_text()
    tracker_log = (logs / "tracker.log").read_text()
    # NEED is logged at debug; the download and its credit at info.
    assert "node 2 downloaded " in tracker_log and "credited [1]" in tracker_log, tracker_log

    for node_id in (2, 1):
        ok(node_id, "exit")
        proc = daemons.procs[f"node{node_id}"]
        try:
            assert proc.wait(10) == 0
        except subprocess.TimeoutExpired:
            pytest.fail(f"node {node_id} still runs 10 s after `exit`")
