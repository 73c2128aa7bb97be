"""Across a lossy lab: two seeders to one node, every process on a host of its own, 1% of IP packets lost.

The network is `benchmarks/netlab.py`'s (its docstring says how it is built and why the loss is
applied on the wire): four namespaces on one bridge, MTU 1500,

    tracker 10.77.0.1   seed1 10.77.0.2   seed2 10.77.0.3   node 10.77.0.4

and every IP packet (every fragment) crossing it is lost with probability 1%, both directions, per
MTU-sized packet even when a sender uses UDP GSO.  The daemons run as the README runs them, with
their default settings: `ip netns exec HOST twistd -n p2ptracker|p2pnode ...`; the `p2ptorrent`
command runs outside, since a node's control socket is a file.  Both seeders `send` one file of
random bytes (big enough to take several seconds), the node downloads it: the copy must be
byte-identical and the node's log must show that it dropped no seeder ("dropped node") on the way.

No sleeps for correctness: every wait is for a condition, with a generous deadline; a timeout fails
with the tails of the logs.  The namespaces (and with them every rule and interface) are removed
even when the test fails.  The machine must allow `ip netns` (root, iproute2, ethtool, nftables):
if it does not, the test fails and says why rather than skipping, like tests/test_netns.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Iterator

import pytest

from p2ptorrent.procs import Daemons, sha256, tcp_listening
from p2ptorrent.procs import wait_for as _wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import netlab  # noqa: E402

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
SIZE = 64 * MIB
LOSS = 0.01
TRACKER_PORT = 12345  # the namespaces are new and empty: any port is free there
#: Bounds, in seconds: starting a daemon; `send` (hashing 64 MiB); the download itself (at 1% loss it
#: takes seconds; this only stops a hung one).
START = 60.0
SEND = 120.0
DOWNLOAD = 300.0
wait_for = partial(_wait_for, timeout=START, fail=pytest.fail)


@pytest.fixture
def lab() -> Iterator[netlab.Lab]:
    # Built in the test body's first step (not here), so a machine without namespaces is a test
    # failure with the reason, not a setup error; removed here whatever happened.
    network = netlab.Lab(["tracker", "seed1", "seed2", "node"], loss=LOSS)
    try:
        yield network
    finally:
        problems = network.destroy()
        assert not problems, problems


@pytest.fixture
def daemons(tmp_path: Path, lab: netlab.Lab) -> Iterator[Daemons]:
    d = Daemons(tmp_path, fail=pytest.fail, search_path=False, ctl_timeout=START)
    try:
        yield d
    finally:
        d.stop(grace=5)  # before `lab` removes the namespaces


def start_tracker(tmp_path: Path, lab: netlab.Lab, daemons: Daemons) -> str:
    """`twistd -n p2ptracker` on the lab's tracker host, listening: its address."""
    tracker = lab.host("tracker").addr
    proc = daemons.start("tracker", [
        "p2ptracker", "--host", tracker, "--port", str(TRACKER_PORT),
        "--tracker-db-dir", str(tmp_path / "tracker_db"), "--logs-dir", str(tmp_path / "logs"),
    ], wrapper=lab.exec_in("tracker"))
    wait_for(lambda: tcp_listening(proc.pid, TRACKER_PORT), f"the tracker to listen at {tracker}:{TRACKER_PORT}",
             alive=partial(daemons.check_alive, "tracker"))
    return tracker


def tails(root: Path, lines: int = 25) -> str:
    """The last lines of every log and daemon output under *root*: what explains a failure."""
    out = []
    for path in sorted([*root.glob("*.out"), *(root / "logs").glob("*.log")]):
        text = path.read_text(errors="replace").splitlines()
        out.append(f"--- {path.name} (last {min(lines, len(text))} of {len(text)} lines)\n" + "\n".join(text[-lines:]))
    return "\n".join(out)


def test_two_seeders_to_one_node_across_a_lossy_lab(tmp_path: Path, lab: netlab.Lab, daemons: Daemons) -> None:
    problems = netlab.missing_requirements()
    if problems:
        pytest.fail("tests/test_lab.py builds network namespaces: " + "; ".join(problems)
                    + " (the test needs root, iproute2, ethtool and nftables; .ci/run installs them)")
    try:
        lab.build()
    except netlab.LabError as e:
        pytest.fail(f"{e}\nThis test needs network namespaces: run it as root on a kernel with veth, bridge and nftables.")

    nodes_dir, logs = tmp_path / "node_files", tmp_path / "logs"
    tracker = start_tracker(tmp_path, lab, daemons)

    # Node ids: 1 and 2 seed, 3 downloads.  Only what the placement needs is given: default settings.
    placed = {1: "seed1", 2: "seed2", 3: "node"}
    for node_id, role in placed.items():
        daemons.start(f"node{node_id}", [
            "p2pnode", "--id", str(node_id), "--interface", lab.host(role).addr, "--tracker", f"{tracker}:{TRACKER_PORT}",
            "--node-files-dir", str(nodes_dir), "--logs-dir", str(logs), "--no-stdin",
        ], wrapper=lab.exec_in(role))
    for node_id in placed:
        alive = partial(daemons.check_alive, f"node{node_id}")
        wait_for((nodes_dir / str(node_id) / ".control.sock").exists, f"node {node_id}'s control socket", alive=alive)

        def registered(node_id: int = node_id) -> bool:
            result = daemons.ctl(node_id, "status", "--json")
            return result.returncode == 0 and json.loads(result.stdout)["registered"] is True

        wait_for(registered, f"node {node_id} to register with the tracker across 1% loss", alive=alive)

    data = os.urandom(SIZE)
    for node_id in (1, 2):
        folder = nodes_dir / str(node_id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "lab.bin").write_bytes(data)
        said = daemons.ok(node_id, "send", str(folder / "lab.bin"), timeout=SEND)
        assert "announced to the tracker" in said, said

    began = time.monotonic()
    try:
        done = daemons.ctl(3, "download", str(nodes_dir / "1" / "lab.bin.torrent"), timeout=DOWNLOAD)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the download did not finish within {DOWNLOAD:.0f} s at 1% loss\n{tails(tmp_path)}")
    took = time.monotonic() - began
    node_log = (logs / "node_3.log").read_text(errors="replace")
    assert done.returncode == 0, f"download exited {done.returncode}: {done.stdout}{done.stderr}\n{tails(tmp_path)}"
    assert "the whole file (SHA-256) verified" in done.stdout, done.stdout
    assert sha256(nodes_dir / "3" / "lab.bin") == sha256(nodes_dir / "1" / "lab.bin"), "the copy differs"
    dropped = [line for line in node_log.splitlines() if "dropped node" in line]
    assert not dropped, (f"the node dropped a seeder at 1% loss ({len(dropped)} times; the download took {took:.1f} s):\n"
                         + "\n".join(dropped[:10]) + f"\n{tails(tmp_path)}")
    # Across the lab, from a seeder's own host (which seeders serve, and how much, is the download's choice).
    assert any(f"fetching from node {n} at {lab.host(role).addr}:" in node_log for n, role in ((1, "seed1"), (2, "seed2"))), \
        node_log[-3000:]
    # The lab really lost about 1% of the packets: over 40,000 crossed, so 0.5% to 1.5% is a safe bound.
    wire = lab.wire_counters()
    crossed = wire["dropped"] + wire["passed"]
    assert crossed > 40_000 and 0.005 < wire["dropped"] / crossed < 0.015, wire
    assert wire["over_mtu"] == 0, f"frames longer than the MTU crossed the bridge (GSO/TSO not split): {wire}"
