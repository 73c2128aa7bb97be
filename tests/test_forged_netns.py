"""Forged answers over real UDP: a fifth host passes for the seeders while a node downloads (issue 12).

The lab is tests/test_lab.py's (`benchmarks/netlab.py`: namespaces on one bridge, MTU 1500, no loss
here) with a fifth host that forges:

    tracker 10.77.0.1   seed1 10.77.0.2   seed2 10.77.0.3   node 10.77.0.4   forger 10.77.0.5

Real `twistd` daemons with their default settings, except fixed UDP ports (`--port`: the forger must
know them, as anyone who reads the tracker's lists does) and a tbf bottleneck on each seeder's egress,
so that the download lasts several seconds and the burst lands in the middle of it.  Once the node's
`status` shows the download under way, the forger (tests/forge_udp.py, inside its namespace) sends raw
IPv4 packets whose source is a seeder's address and port: a burst of wire-version-2 BLOCKs with random
nonces and random data (whole pieces ahead of the download, and blocks spread over every piece, so
the pieces being fetched get some), then ERRORs of every code and HAVEs saying "choked", several per
seeder.  Before version 2 such a burst (about 800 BLOCKs in 0.4 s) failed the download ("sent corrupt
data for 3 pieces") and six ERRORs dropped both seeders.

The copy must be byte-identical, the node must drop no seeder and see no piece fail verification, and
its counters must show the forged datagrams refused as answering no request of its own ("unmatched").
The test checks that the download was still running when the forger ended: a burst that missed it
proves nothing, and fails the test rather than passing it.

Also: a node of another wire version gets the version refusal (a real node on loopback, no namespaces).

No sleeps for correctness: every wait is for a condition, with a deadline.  The namespaces are removed
even when the test fails; without namespaces (root, iproute2, ethtool, nftables) the lab test fails and
says why rather than skipping, like tests/test_lab.py.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import pytest

import daemonkit
from p2ptorrent import wire
from p2ptorrent.procs import Daemons, free_port, sha256
from p2ptorrent.procs import wait_for as _wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import netlab  # noqa: E402
import test_lab  # noqa: E402

#: The lab test's: Daemons (of this module's lab, stopped before it is removed), and the log tails of a failure.
daemons, tails = test_lab.daemons, test_lab.tails

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
SIZE = 64 * MIB
TRACKER_PORT = test_lab.TRACKER_PORT  # (the tracker is started as the lab test starts it)
#: Fixed UDP ports (the namespaces are new and empty: any port is free there).
PORTS = {1: 40001, 2: 40002, 3: 40003}
#: Each seeder's egress, Mbit/s: the download takes about SIZE * 8 / (2 * RATE) seconds (5.4 s).
RATE_MBIT = 50
#: The burst: forged BLOCKs (2 whole pieces among them), paced over this long; ERRORs of each code
#: (1 to 5) and HAVEs, per seeder.
FORGED_BLOCKS = 1200
FORGED_WHOLE_PIECES = 2
BURST_SECONDS = 0.4
ERRORS_PER_CODE = 3
FORGED_HAVES = 2
#: Bounds, in seconds: starting a daemon; `send` (hashing 64 MiB); the download itself; the forger.
START = 60.0
SEND = 60.0
DOWNLOAD = 90.0
FORGE = 30.0
wait_for = partial(_wait_for, timeout=START, fail=pytest.fail)
FORGER = Path(__file__).resolve().parent / "forge_udp.py"


@pytest.fixture
def lab() -> Iterator[netlab.Lab]:
    # Built in the test body (not here), so a machine without namespaces is a failure with the reason.
    network = netlab.Lab(["tracker", "seed1", "seed2", "node", "forger"], loss=0.0)
    try:
        yield network
    finally:
        problems = network.destroy()
        assert not problems, problems


def status(daemons: Daemons, node_id: int) -> dict[str, Any]:
    result = daemons.ctl(node_id, "status", "--json")
    if result.returncode != 0:
        pytest.fail(f"status of node {node_id} exited {result.returncode}: {result.stdout}{result.stderr}")
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def counts(st: dict[str, Any]) -> dict[str, int]:
    """The protocol's counters (received, rejected:...), and the kernel's receive-buffer drops."""
    return {**st["datagrams"], "receive_buffer_drops": st["batching"].get("receive_buffer_drops", 0)}


def test_forged_blocks_and_errors_across_the_lab(tmp_path: Path, lab: netlab.Lab, daemons: Daemons) -> None:
    problems = netlab.missing_requirements()
    if problems:
        pytest.fail("tests/test_forged_netns.py builds network namespaces: " + "; ".join(problems)
                    + " (the test needs root, iproute2, ethtool and nftables; .ci/run installs them)")
    try:
        lab.build()
    except netlab.LabError as e:
        pytest.fail(f"{e}\nThis test needs network namespaces: run it as root on a kernel with veth, bridge and nftables.")
    wall = time.monotonic()
    for role in ("seed1", "seed2"):
        lab.set_rate(role, RATE_MBIT)

    nodes_dir, logs = tmp_path / "node_files", tmp_path / "logs"
    tracker = test_lab.start_tracker(tmp_path, lab, daemons)

    placed = {1: "seed1", 2: "seed2", 3: "node"}
    for node_id, role in placed.items():
        daemons.start(f"node{node_id}", [
            "p2pnode", "--id", str(node_id), "--interface", lab.host(role).addr, "--port", str(PORTS[node_id]),
            "--tracker", f"{tracker}:{TRACKER_PORT}", "--node-files-dir", str(nodes_dir), "--logs-dir", str(logs),
            "--no-stdin",
        ], wrapper=lab.exec_in(role))
    for node_id in placed:
        alive = partial(daemons.check_alive, f"node{node_id}")
        wait_for((nodes_dir / str(node_id) / ".control.sock").exists, f"node {node_id}'s control socket", alive=alive)

        def registered(node_id: int = node_id) -> bool:
            result = daemons.ctl(node_id, "status", "--json")
            return result.returncode == 0 and json.loads(result.stdout)["registered"] is True

        wait_for(registered, f"node {node_id} to register with the tracker", alive=alive)
        assert status(daemons, node_id)["udp_port"] == PORTS[node_id]

    data = os.urandom(SIZE)
    for node_id in (1, 2):
        folder = nodes_dir / str(node_id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "lab.bin").write_bytes(data)
        said = daemons.ok(node_id, "send", str(folder / "lab.bin"), timeout=SEND)
        assert "announced to the tracker" in said, said
    del data
    torrent = nodes_dir / "1" / "lab.bin.torrent"

    # The download runs in the background; the forger starts once the node has received some of the file.
    began = time.monotonic()
    with open(tmp_path / "download.out", "w") as out:
        download = subprocess.Popen(
            [daemons.script("p2ptorrent"), "--node", "3", "--node-files-dir", str(nodes_dir), "download", str(torrent)],
            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        def download_alive() -> None:
            daemons.check_alive("node3")
            if download.poll() is not None:
                pytest.fail(f"the download ended (status {download.returncode}) before the forger could start: "
                            f"the burst would prove nothing\n{(tmp_path / 'download.out').read_text()}\n{tails(tmp_path)}")

        def under_way() -> dict[str, Any] | None:
            st = status(daemons, 3)
            jobs = [j for j in st["downloading"] if j["name"] == "lab.bin" and j["done"] > 0]
            return st if jobs and jobs[0]["done"] < jobs[0]["total"] else None

        before_st = wait_for(under_way, "the node's download to get its first bytes", alive=download_alive)
        assert before_st is not None
        before = counts(before_st)
        snmp_before = lab.snmp(["node"])
        started = time.monotonic() - began
        # The forger passes for both seeders, each at its own address and port.
        forged = subprocess.run(
            [*lab.exec_in("forger"), sys.executable, str(FORGER), "--torrent", str(torrent),
             "--to", f"{lab.host('node').addr}:{PORTS[3]}",
             "--as", f"{lab.host('seed1').addr}:{PORTS[1]}", "--as", f"{lab.host('seed2').addr}:{PORTS[2]}",
             "--blocks", str(FORGED_BLOCKS), "--whole", str(FORGED_WHOLE_PIECES), "--seconds", str(BURST_SECONDS),
             "--errors", str(ERRORS_PER_CODE), "--haves", str(FORGED_HAVES)],
            capture_output=True, text=True, timeout=FORGE, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        assert forged.returncode == 0, f"the forger failed ({forged.returncode}):\n{forged.stdout}{forged.stderr}"
        sent = json.loads(forged.stdout.strip().splitlines()[-1])
        ended_at = time.monotonic() - began
        # The whole burst must have landed while the download ran (else nothing here was tested).
        after_st = status(daemons, 3)
        jobs = [j for j in after_st["downloading"] if j["name"] == "lab.bin"]
        if download.poll() is not None or not jobs or jobs[0]["done"] >= jobs[0]["total"]:
            # No longer running: it either finished before the burst ended, or the burst failed it.
            try:
                download.wait(DOWNLOAD)
            except subprocess.TimeoutExpired:
                pass
            said = (tmp_path / "download.out").read_text(errors="replace")
            if download.returncode == 0:
                pytest.fail(f"the download finished before the forger did ({ended_at:.1f} s after it began): the "
                            f"burst proves nothing; slow the seeders' bottleneck (RATE_MBIT={RATE_MBIT})\n{sent}")
            pytest.fail(f"the download failed under the forged burst (status {download.returncode}):\n{said}\n"
                        f"forger: {sent}\n{tails(tmp_path)}")
        progress_at_end = jobs[0]["done"] / jobs[0]["total"]

        # Every forged datagram the kernel delivered is counted once it has been read: wait until the
        # counters show them all (or a few seconds, then judge what they show).
        def delta(now: dict[str, int], key: str) -> int:
            return now.get(key, 0) - before.get(key, 0)

        def all_counted() -> dict[str, int] | None:
            now = counts(status(daemons, 3))
            return now if (delta(now, "rejected:unmatched BLOCK") >= sent["blocks"]
                           and delta(now, "rejected:unmatched ERROR") >= sent["errors"]
                           and delta(now, "rejected:unmatched HAVE") >= sent["haves"]) else None

        deadline = time.monotonic() + 5.0
        while (after := all_counted()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if after is None:
            after = counts(status(daemons, 3))
        snmp_after = lab.snmp(["node"])

        try:
            download.wait(DOWNLOAD)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the download did not finish within {DOWNLOAD:.0f} s\n{tails(tmp_path)}")
    finally:
        if download.poll() is None:
            download.kill()
            download.wait()
    took = time.monotonic() - began
    said = (tmp_path / "download.out").read_text(errors="replace")
    node_log = (logs / "node_3.log").read_text(errors="replace")
    kernel = netlab.snmp_delta(snmp_before, snmp_after)["node"]
    figures = {"sent": sent, "forger_started_s": round(started, 2), "forger_ended_s": round(ended_at, 2),
               "progress_when_forger_ended": round(progress_at_end, 3), "download_s": round(took, 2),
               "counted": {k: delta(after, k) for k in sorted(after) if delta(after, k)}, "node_kernel": kernel}
    print("forged burst:", json.dumps(figures))

    assert download.returncode == 0, f"download exited {download.returncode}: {said}\n{figures}\n{tails(tmp_path)}"
    assert "the whole file (SHA-256) verified" in said, said
    assert sha256(nodes_dir / "3" / "lab.bin") == sha256(nodes_dir / "1" / "lab.bin"), "the copy differs"
    dropped = [line for line in node_log.splitlines() if "dropped node" in line]
    assert not dropped, (f"the node dropped a seeder under forged datagrams ({len(dropped)} times):\n"
                         + "\n".join(dropped[:10]) + f"\n{figures}\n{tails(tmp_path)}")
    failed = [line for line in node_log.splitlines() if "failed verification" in line or "corrupt" in line]
    assert not failed, "a forged block was taken:\n" + "\n".join(failed[:10]) + f"\n{figures}"
    # Both seeders served (neither was silenced by a forged ERROR or HAVE).
    for n, role in ((1, "seed1"), (2, "seed2")):
        assert f"fetching from node {n} at {lab.host(role).addr}:{PORTS[n]}" in node_log, node_log[-3000:]

    # The forged datagrams were refused as answering no request of the node's: the BLOCKs (at least 90% of
    # those sent: a full receive buffer may lose some, which the kernel counts), every ERROR and HAVE.
    assert sent["blocks"] >= FORGED_BLOCKS and sent["errors"] == 2 * 5 * ERRORS_PER_CODE, sent
    blocks = delta(after, "rejected:unmatched BLOCK")
    lost = delta(after, "receive_buffer_drops") + kernel["Udp.RcvbufErrors"]
    assert blocks >= 0.9 * sent["blocks"], f"only {blocks} of {sent['blocks']} forged BLOCKs counted as unmatched: {figures}"
    assert blocks + lost >= sent["blocks"], f"forged BLOCKs neither refused nor lost by the kernel: {figures}"
    assert delta(after, "rejected:unmatched ERROR") >= sent["errors"] - lost, figures
    assert delta(after, "rejected:unmatched HAVE") >= sent["haves"] - lost, figures
    # Nothing of the burst was taken for anything else (a malformed one, a stranger's, a piece's block).
    for reason in ("stranger", "unknown download", "unasked BLOCK"):
        assert not delta(after, f"rejected:{reason}"), figures
    assert kernel["Udp.InErrors"] == 0, f"the node's kernel refused datagrams (bad UDP checksums?): {figures}"
    assert time.monotonic() - wall < 120, f"the test took {time.monotonic() - wall:.0f} s: {figures}"


# ---------------------------------------------------------------- another wire version, on loopback

def v1_info_request(req_id: int, info_hash: bytes) -> bytes:
    """A version-1 INFO_REQ: b"PT", version 1, type 1, then req_id u32 and the info hash."""
    return struct.pack("!2sBBI20s", b"PT", 1, wire.INFO_REQ, req_id, info_hash)


def test_a_version_1_node_is_told_the_versions_once(tmp_path: Path) -> None:
    d = Daemons(tmp_path, fail=pytest.fail, search_path=False, ctl_timeout=30.0)
    port = free_port()
    try:
        daemonkit.start_tracker(d, port, 30.0)
        d.start("node1", daemonkit.node_args(d, 1, port))
        alive = partial(d.check_alive, "node1")
        wait_for((d.nodes_dir / "1" / ".control.sock").exists, "node 1's control socket", alive=alive)
        wait_for(lambda: daemonkit.registered(d, 1), "node 1 to register", alive=alive)
        udp_port = status(d, 1)["udp_port"]
        info_hash = os.urandom(20)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(10.0)
            answers = []
            for req_id in (7, 8, 9):
                request = v1_info_request(req_id, info_hash)
                s.sendto(request, ("127.0.0.1", udp_port))
                answer, source = s.recvfrom(65536)
                assert source == ("127.0.0.1", udp_port)
                answers.append((request, answer))
            s.settimeout(0.5)
            with pytest.raises(socket.timeout):
                extra = s.recvfrom(65536)
                pytest.fail(f"more than one answer per request: {extra!r}")
        for request, answer in answers:
            # Version 1's ERROR: b"PT", 1, 5; the info hash of the request; code 5; a message naming both.
            assert answer[:4] == b"PT\x01\x05", answer
            assert answer[4:24] == info_hash, answer
            assert answer[24] == wire.E_VERSION, answer
            message = answer[25:].decode()
            assert "2" in message and "1" in message and "version" in message, message
            assert len(answer) <= 2 * len(request), (len(answer), len(request))
        st = status(d, 1)
        assert st["datagrams"].get("rejected:other version") == 3, st["datagrams"]

        def logged() -> list[str]:
            text = (tmp_path / "logs" / "node_1.log").read_text(errors="replace")
            return [line for line in text.splitlines() if "speaks wire version" in line]

        lines = wait_for(logged, "the node to log the other version", alive=alive)
        assert len(lines) == 1 and "wire version 1" in lines[0], lines
    finally:
        d.stop(grace=5)
