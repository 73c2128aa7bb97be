"""Resuming a download (issue 3, item 9): the record of verified pieces, and downloads started again.

* Unit tests of the record next to the part file: only recorded pieces whose
  bytes still match their SHA-1 are trusted, whatever a crash or a stranger
  left in the record (torn tail, garbage, another file's header, a piece
  recorded before its bytes reached the disk).
* A download stopped at about half and started again with a new Download over
  the same folder (in-memory network, virtual time) asks only for the missing
  blocks and ends byte-identical.
* A node (the real service, over loopback) stopped mid-download and started
  again resumes by itself, and a ``download`` of the same torrent joins it.
* A real `twistd -n p2pnode` killed with SIGKILL at about half resumes after a
  restart with the same arguments and fetches only what was missing.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.python.failure import Failure

from daemonkit import node_args, registered, seed_file, start_tracker
from gates import NatGate, share_only
from netsim import Faults
from p2ptorrent import wire
from p2ptorrent.metainfo import Metainfo, make_torrent, read_torrent
from p2ptorrent.node.download import DownloadResult
from p2ptorrent.node.service import CommandFailed
from p2ptorrent.node.storage import (
    RECORD_ENTRY_SIZE,
    RECORD_HEADER_SIZE,
    Interrupted,
    PartFile,
    read_record,
    record_path,
    unfinished,
)
from p2ptorrent.procs import Daemons, free_port, sha256
from p2ptorrent.procs import wait_for as _wait_for
from swarm import Swarm

KIB = 1024
MIB = 1024 * KIB
PIECE = 16 * KIB


# ---- the record, unit by unit

def _file(tmp: Path, size: int = 10 * PIECE + 123, seed: int = 3) -> tuple[Metainfo, bytes, bytes]:
    src = tmp / "src"
    src.mkdir(parents=True, exist_ok=True)
    data = random.Random(seed).randbytes(size)
    (src / "f.bin").write_bytes(data)
    meta, torrent = make_torrent(src / "f.bin", "http://tracker.invalid:1", PIECE)
    return meta, data, torrent


def _piece(meta: Metainfo, data: bytes, p: int) -> bytes:
    return data[p * meta.piece_length : p * meta.piece_length + meta.piece_size(p)]


def _partial(folder: Path, meta: Metainfo, data: bytes, pieces: list[int], torrent: bytes | None = None) -> PartFile:
    """A part file with *pieces* written (and recorded), closed as a stopping node closes it."""
    part = PartFile(folder, meta, torrent)
    part.open()
    for p in pieces:
        part.write_piece(p, _piece(meta, data, p))
    part.close()
    return part


def _finish(part: PartFile, meta: Metainfo, data: bytes) -> bytes:
    """Write every piece still missing, check the whole hash, finish; the file's bytes."""
    for p in range(meta.num_pieces):
        if p not in part.verified():
            part.write_piece(p, _piece(meta, data, p))
    assert part.whole_hash_ok()
    return part.finish().read_bytes()


def test_recorded_pieces_are_resumed_and_the_whole_hash_still_checks(tmp_path: Path) -> None:
    meta, data, torrent = _file(tmp_path)
    folder = tmp_path / "node"
    first = _partial(folder, meta, data, [0, 1, 2, 5, 7], torrent)
    assert first.path.stat().st_size == meta.length
    assert read_record(first.record, meta) == [0, 1, 2, 5, 7]
    assert first.torrent_copy.read_bytes() == torrent

    again = PartFile(folder, meta, torrent)
    report = again.prepare()
    assert (report.found, report.pieces, report.rejected) == (True, 5, 0)
    assert report.bytes == 5 * PIECE
    assert again.verified() == {0, 1, 2, 5, 7}
    # Pieces 5 and 7 are fed to the whole-file hash when the prefix reaches them.
    assert _finish(again, meta, data) == data
    assert not list((folder / ".incomplete").iterdir())


def test_a_torn_record_entry_is_ignored_and_the_record_stays_aligned(tmp_path: Path) -> None:
    meta, data, _ = _file(tmp_path)
    folder = tmp_path / "node"
    part = _partial(folder, meta, data, [3, 4])
    with open(part.record, "ab") as f:
        f.write(b"\x00\x00")  # a crash in the middle of recording piece 6 (or any piece)
    again = PartFile(folder, meta)
    assert again.prepare().pieces == 2
    again.write_piece(6, _piece(meta, data, 6))
    again.close()
    # The record was rewritten without the torn tail, so the new entry is read right.
    assert read_record(part.record, meta) == [3, 4, 6]
    assert PartFile(folder, meta).prepare().pieces == 3


def test_garbage_record_means_a_fresh_start(tmp_path: Path) -> None:
    meta, data, _ = _file(tmp_path)
    folder = tmp_path / "node"
    part = _partial(folder, meta, data, [0, 1, 2])
    part.record.write_bytes(os.urandom(300))
    again = PartFile(folder, meta)
    report = again.prepare()
    assert (report.found, report.pieces) == (False, 0)
    assert again.verified() == set()
    # The old bytes are gone too (truncated), and the record is a valid empty one.
    assert again.path.read_bytes() == bytes(meta.length)
    assert read_record(part.record, meta) == []
    assert _finish(again, meta, data) == data


def test_record_of_another_file_or_length_is_not_trusted(tmp_path: Path) -> None:
    meta, data, _ = _file(tmp_path)
    other, other_data, _ = _file(tmp_path / "o", size=meta.length, seed=9)
    folder = tmp_path / "node"
    part = _partial(folder, meta, data, [0, 1])
    # Another file's record under this file's name: its header names another info hash.
    foreign = _partial(tmp_path / "other", other, other_data, [0, 1])
    part.record.write_bytes(foreign.record.read_bytes())
    assert PartFile(folder, meta).prepare().found is False

    # A part file of the wrong length (say, cut short): nothing is trusted either.
    part = _partial(folder, meta, data, [0, 1])
    os.truncate(part.path, meta.length - 1)
    assert PartFile(folder, meta).prepare().found is False


def test_a_piece_recorded_with_wrong_bytes_is_not_trusted(tmp_path: Path) -> None:
    meta, data, _ = _file(tmp_path)
    folder = tmp_path / "node"
    part = _partial(folder, meta, data, [0, 1, 2, 3])
    with open(part.path, "r+b") as f:
        f.seek(1 * PIECE + 100)
        f.write(b"\xff")  # bit rot, or a write that never reached the disk
    # A torn write: piece 8 is in the record but its bytes never reached the part file.
    with open(part.record, "ab") as f:
        f.write((8).to_bytes(RECORD_ENTRY_SIZE, "big"))
    # Garbage entries: out of range, repeated.
    with open(part.record, "ab") as f:
        f.write((10_000).to_bytes(RECORD_ENTRY_SIZE, "big") + (0).to_bytes(RECORD_ENTRY_SIZE, "big"))
    again = PartFile(folder, meta)
    report = again.prepare()
    assert again.verified() == {0, 2, 3}
    assert (report.pieces, report.rejected) == (3, 2)
    # Only the trusted pieces stay in the rewritten record.
    assert read_record(part.record, meta) == [0, 2, 3]
    assert _finish(again, meta, data) == data


def test_record_is_written_after_the_piece(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A piece whose write fails is never recorded (so it is never believed after a restart)."""
    meta, data, _ = _file(tmp_path)
    folder = tmp_path / "node"
    part = PartFile(folder, meta)
    part.open()
    part.write_piece(0, _piece(meta, data, 0))

    def broken(fd: int, chunk: Any, offset: int) -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "pwrite", broken)
    with pytest.raises(Exception, match="Input/output error"):
        part.write_piece(1, _piece(meta, data, 1))
    monkeypatch.undo()
    assert read_record(part.record, meta) == [0]
    assert part.verified() == {0}


def test_everything_already_verified_completes_without_the_network(tmp_path: Path) -> None:
    swarm = Swarm(tmp_path, 1 * MIB + 99, seeders=0)
    _partial(swarm.folder, swarm.meta, swarm.data, list(range(swarm.meta.num_pieces)))
    dl, outcome = swarm.start()
    result = swarm.run(outcome, limit=5)
    assert isinstance(result, DownloadResult), result
    assert hashlib.sha256(result.path.read_bytes()).hexdigest() == swarm.sha256()
    assert swarm.need_calls == 0
    assert not list((swarm.folder / ".incomplete").iterdir())


def test_prepare_can_be_interrupted(tmp_path: Path) -> None:
    meta, data, _ = _file(tmp_path)
    folder = tmp_path / "node"
    _partial(folder, meta, data, [0, 1, 2])
    part = PartFile(folder, meta)
    part.abort()
    with pytest.raises(Interrupted):
        part.prepare()
    # Nothing was lost: the record is as it was.
    assert PartFile(folder, meta).prepare().pieces == 3


def test_unfinished_lists_torrent_copies_and_skips_strangers(tmp_path: Path) -> None:
    meta, data, torrent = _file(tmp_path)
    folder = tmp_path / "node"
    _partial(folder, meta, data, [1], torrent)
    incomplete = folder / ".incomplete"
    (incomplete / ("ab" * 20 + ".torrent")).write_bytes(torrent)  # a name that is not its info hash
    (incomplete / ("cd" * 20 + ".torrent")).write_bytes(b"not bencode")
    found, skipped = unfinished(folder)
    assert [u.meta.info_hash for u in found] == [meta.info_hash]
    assert found[0].torrent == torrent
    assert len(skipped) == 2, skipped
    assert unfinished(tmp_path / "nowhere") == ([], [])


def test_discard_and_finish_leave_nothing_behind(tmp_path: Path) -> None:
    meta, data, torrent = _file(tmp_path)
    folder = tmp_path / "node"
    part = _partial(folder, meta, data, [0], torrent)
    part.discard()
    assert not list((folder / ".incomplete").iterdir())
    assert not (folder / meta.name).exists()


def test_leftovers_of_an_interrupted_rewrite_are_removed(tmp_path: Path) -> None:
    meta, data, torrent = _file(tmp_path)
    folder = tmp_path / "node"
    part = _partial(folder, meta, data, [0, 1], torrent)
    # What a node killed while rewriting the record or the torrent copy leaves behind.
    left = [path.with_name(f".{path.name}.99999.tmp") for path in (part.record, part.torrent_copy)]
    for path in left:
        path.write_bytes(b"half")
    again = PartFile(folder, meta, torrent)
    assert again.prepare().pieces == 2
    again.close()
    assert sorted(p.name for p in (folder / ".incomplete").iterdir()) == sorted(
        p.name for p in (part.path, part.record, part.torrent_copy)
    )


# ---- a download stopped and started again (in memory, virtual time)

class Wiretap:
    """A netsim tamper hook that notes every piece asked for and every block payload byte sent."""

    def __init__(self) -> None:
        self.pieces_asked: set[int] = set()
        self.blocks_asked = 0
        self.block_bytes = 0

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def __call__(self, src: Any, dst: Any, data: bytes) -> bytes:
        if data[:2] == b"PT" and data[3] == wire.BLOCK_REQ:
            at = wire.BLOCK_REQ_OVERHEAD  # then count x (piece u32, offset u32, length u32)
            count = int.from_bytes(data[at - 2 : at], "big")
            self.blocks_asked += count
            for i in range(count):
                self.pieces_asked.add(int.from_bytes(data[at + i * wire.TRIPLE_SIZE : at + i * wire.TRIPLE_SIZE + 4], "big"))
        elif data[:2] == b"PT" and data[3] == wire.BLOCK:
            self.block_bytes += len(data) - wire.BLOCK_OVERHEAD
        return data


def test_a_stopped_download_started_again_fetches_only_the_missing_pieces(tmp_path: Path) -> None:
    tap = Wiretap()
    size = 8 * MIB + 4321
    swarm = Swarm(tmp_path, size, seeders=3, faults=Faults(tamper=tap), piece_length=64 * KIB)
    dl, outcome = swarm.start()
    swarm.net.run(lambda: dl.done_bytes >= size // 2)
    dl.stop("the node is stopping")
    swarm.run(outcome)
    assert isinstance(outcome[0], Failure)
    assert not (swarm.folder / "file.bin").exists()
    record = read_record(record_path(swarm.folder, swarm.meta.info_hash), swarm.meta)
    assert record is not None
    before = set(record)
    assert 0.45 <= len(before) / swarm.meta.num_pieces <= 0.6
    quiet = swarm.clock.seconds() + 2
    swarm.net.run(lambda: swarm.clock.seconds() >= quiet)  # the last datagrams of the first run land

    tap.reset()
    dl2, outcome2 = swarm.start()
    result = swarm.run(outcome2)
    assert isinstance(result, DownloadResult), result
    assert hashlib.sha256(result.path.read_bytes()).hexdigest() == swarm.sha256()
    assert not list((swarm.folder / ".incomplete").iterdir())
    # Not one block of a piece verified before the stop was asked for again ...
    missing = set(range(swarm.meta.num_pieces)) - before
    assert tap.pieces_asked == missing
    # ... and the bytes that came are the missing part, plus a small margin (endgame duplicates).
    missing_bytes = sum(swarm.meta.piece_size(p) for p in missing)
    received = sum(s.bytes for s in result.shares)
    assert missing_bytes <= received <= missing_bytes * 1.05, (received, missing_bytes)
    # On the wire, blocks sent again after timeouts count too: compare with a whole download
    # over the same simulated links (which sends about 1.5 times the file).
    whole = Wiretap()
    (tmp_path / "fresh").mkdir()
    fresh = Swarm(tmp_path / "fresh", size, seeders=3, faults=Faults(tamper=whole), piece_length=64 * KIB)
    assert isinstance(fresh.run(fresh.start()[1]), DownloadResult)
    share = missing_bytes / size
    assert tap.block_bytes <= whole.block_bytes * share * 1.2, (tap.block_bytes, whole.block_bytes, share)


# ---- the node service: stopped mid-download, started again (one reactor, loopback)

@pytest_twisted.ensureDeferred
async def test_node_started_again_resumes_by_itself_and_download_joins_it(tmp_path: Path) -> None:
    from test_loopback import Cluster, _registered, _seeders, _until

    cluster = Cluster(tmp_path)
    try:
        [seeder], want, torrent = await _seeders(cluster, 1, 12 * MIB)
        meta = read_torrent(torrent)
        size = 12 * MIB
        # The seeder serves the first half of the pieces only, until the test lets it share the
        # rest: the download stops at exactly half however fast the machine, and stays unfinished
        # (a restarted node stays resuming) for as long as the test looks at it.
        half_pieces = -(-(size // 2) // meta.piece_length)
        assert 0 < half_pieces < meta.num_pieces
        share_everything = share_only(seeder.seeder, meta.info_hash, half_pieces)
        node = cluster.node(4)
        await _registered(node)
        half: defer.Deferred[None] = defer.Deferred()

        def watch(p: dict[str, Any]) -> None:
            if p["done"] >= size // 2 and not half.called:
                half.callback(None)

        ended: list[Any] = []
        node.download(str(torrent), watch).addBoth(ended.append)  # it fails as the node stops
        await half
        token = tmp_path / "nf" / "4" / ".tracker_token"
        assert token.stat().st_mode & 0o777 == 0o600  # kept for a restart after a crash; removed by EXIT
        status = node.status()
        [entry] = status["downloading"]
        assert entry["state"] == "downloading" and entry["done"] < size and status["seeding"] == []
        # Nothing in .incomplete/ is ever shared, even when asked to.
        [part] = (tmp_path / "nf" / "4" / ".incomplete").glob("*.part")
        with pytest.raises(CommandFailed, match="unfinished download"):
            await node.send(str(part))
        await defer.maybeDeferred(node.stopService)
        [failed] = ended
        assert isinstance(failed, Failure) and "stopping" in failed.getErrorMessage()
        folder = tmp_path / "nf" / "4"
        assert not (folder / "data.bin").exists()

        again = cluster.node(4)
        # It resumes by itself; a download of the same torrent joins the resumed one.
        await _until(lambda: bool(again.jobs), "node 4 resuming data.bin by itself")
        [job] = again.jobs.values()
        await _until(lambda: job.state == "downloading", "the resumed download under way")
        [entry] = again.status()["downloading"]
        assert entry["resumed_bytes"] >= size // 2 and entry["done"] >= entry["resumed_bytes"], entry
        assert again.status()["seeding"] == []
        joined = again.download(str(torrent), lambda p: None)
        assert not joined.called and len(again.jobs) == 1  # it joined the resumed download, still under way
        share_everything()
        message = await joined
        assert "resumed:" in message and "already verified on disk" in message, message
        out = folder / "data.bin"
        assert hashlib.sha256(out.read_bytes()).hexdigest() == want
        assert job.part.resumed.bytes >= size // 2
        log = (tmp_path / "logs" / "node_4.log").read_text()
        assert "resuming data.bin: " in log and " pieces already verified" in log
        assert [f["name"] for f in again.status()["seeding"]] == ["data.bin"]
        assert not any((folder / ".incomplete").iterdir())
    finally:
        await cluster.stop()


@pytest_twisted.ensureDeferred
async def test_leftovers_of_a_finished_download_are_cleared_and_the_file_shared(tmp_path: Path) -> None:
    """Killed after the rename but before .incomplete/ was cleared: nothing is fetched again."""
    from test_loopback import Cluster, _registered, _until

    cluster = Cluster(tmp_path)
    try:
        await cluster.start_tracker()
        folder = tmp_path / "nf" / "5"
        meta, data, torrent = _file(tmp_path)
        part = _partial(folder, meta, data, list(range(meta.num_pieces)), torrent)
        os.replace(part.path, folder / meta.name)
        node = cluster.node(5)
        await _registered(node)
        await _until(lambda: not node.jobs and bool(node.status()["seeding"]), "node 5 sharing the finished file")
        assert [f["name"] for f in node.status()["seeding"]] == [meta.name]
        assert not any((folder / ".incomplete").iterdir())
        assert (folder / meta.name).read_bytes() == data
        assert (folder / (meta.name + ".torrent")).read_bytes() == torrent
    finally:
        await cluster.stop()


# ---- a real node killed with SIGKILL half way, and started again

wait_for = partial(_wait_for, timeout=30.0, fail=pytest.fail)


def test_sigkill_half_way_then_restart_resumes(tmp_path: Path) -> None:
    d = Daemons(tmp_path, fail=pytest.fail, search_path=False, ctl_timeout=60.0)
    port = free_port()
    size = 48 * MIB
    # Node 1 is reached through a NAT the test owns (it advertises the gate's port).  Until the
    # gate opens, node 2 gets the blocks of the first half of the pieces and no others: it is
    # killed with exactly half verified, and after the restart it is still resuming when the test
    # looks, however fast the machine.  A long PEER_TIMEOUT: node 2 never gives up on node 1
    # while the gate holds the rest back, however slowly the test gets round to it.
    gate = NatGate()
    patient = ("--set", "PEER_TIMEOUT=3600")
    try:
        start_tracker(d, port, timeout=30.0)
        seed_dir, want = seed_file(d, "payload.bin", size, seed=9)
        d.start("node1", node_args(d, 1, port, "--advertise-port", str(gate.port)))
        d.start("node2", node_args(d, 2, port, *patient))
        for n in (1, 2):
            wait_for(lambda n=n: (d.nodes_dir / str(n) / ".control.sock").exists() and registered(d, n),
                     f"node {n} to register", alive=lambda n=n: d.check_alive(f"node{n}"))
        d.ok(1, "send", "payload.bin")
        torrent = seed_dir / "payload.bin.torrent"
        meta = read_torrent(torrent)
        half = meta.num_pieces // 2
        gate.start(json.loads(d.ok(1, "status", "--json"))["udp_port"], held_from=half)
        record = record_path(d.nodes_dir / "2", meta.info_hash)

        def recorded() -> int:
            try:
                return max(0, (record.stat().st_size - RECORD_HEADER_SIZE) // RECORD_ENTRY_SIZE)
            except FileNotFoundError:
                return 0

        def download_command() -> subprocess.Popen[str]:
            return subprocess.Popen(
                [d.script("p2ptorrent"), "--node", "2", "--node-files-dir", str(d.nodes_dir), "download", str(torrent)],
                cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )

        # The download runs in the background (its p2ptorrent command dies with the node).
        started = time.monotonic()
        command = download_command()
        try:
            wait_for(lambda: recorded() >= half, f"node 2 to verify the first {half} of {meta.num_pieces} pieces",
                     timeout=300, alive=lambda: d.check_alive("node2"))
            d.procs["node2"].send_signal(signal.SIGKILL)
            d.procs["node2"].wait(10)
            first_run = time.monotonic() - started
            command.communicate(timeout=30)
        finally:
            if command.poll() is None:
                command.kill()
                command.wait()
        at_kill = recorded()
        node2 = d.nodes_dir / "2"
        # A partial file is never reported as complete: no file under its real name.
        assert not (node2 / "payload.bin").exists()
        assert at_kill == half, (at_kill, half)

        # Restart with the same arguments: it resumes by itself.
        restarted = time.monotonic()
        log = tmp_path / "logs" / "node_2.log"
        mark = len(log.read_text())
        d.start("node2", node_args(d, 2, port, *patient))
        wait_for(lambda: "resuming payload.bin: " in log.read_text()[mark:], "node 2 to resume payload.bin",
                 alive=lambda: d.check_alive("node2"))
        wait_for(lambda: (node2 / ".control.sock").exists() and d.ctl(2, "status", "--json").returncode == 0,
                 "node 2's control socket")
        # Still at half (the gate is closed): shown as downloading and resumed, never as shared.
        status = json.loads(d.ok(2, "status", "--json"))
        [entry] = status["downloading"]
        assert entry["resumed_pieces"] == at_kill and entry["done"] < size, entry
        assert status["seeding"] == [], status
        # The same download command joins the resumed download; then the gate opens.
        commands = len(log.read_text())
        joining = download_command()
        try:
            wait_for(lambda: "control command download" in log.read_text()[commands:], "node 2 to take the download command",
                     alive=lambda: d.check_alive("node2"))
            gate.open()
            said, err = joining.communicate(timeout=180)
        finally:
            if joining.poll() is None:
                joining.kill()
                joining.wait()
        assert joining.returncode == 0, err
        resumed_for = time.monotonic() - restarted
        assert "resumed:" in said, said
        # It spoke to the tracker as itself at once (its token was kept), rather than waiting for the
        # tracker to drop its killed self (about a minute): its first heartbeat was taken, none refused.
        after = log.read_text()[mark:]
        assert "tracker ranked owners [1]" in after and "heartbeat failed" not in after, after
        tracker_log = (tmp_path / "logs" / "tracker.log").read_text()
        assert not re.search(r"refused \w+ from \S+ node 2:", tracker_log), tracker_log
        got = node2 / "payload.bin"
        assert sha256(got) == want
        text = log.read_text()
        resume_line = next(line for line in text.splitlines() if "resuming payload.bin: " in line)
        complete_line = [line for line in text.splitlines() if "payload.bin: complete" in line][-1]
        shares = ast.literal_eval(complete_line.split("bytes per node ", 1)[1].split(";", 1)[0])  # {node: bytes}
        fetched = sum(shares.values())
        assert fetched < 0.6 * size, (fetched, size, complete_line)
        print(f"\nkilled at {at_kill}/{meta.num_pieces} pieces after {first_run:.1f} s; {resume_line.split('] ', 1)[1]};"
              f" after the restart fetched {fetched} bytes = {100 * fetched / size:.1f}% of the file"
              f" in {resumed_for:.1f} s; the gate dropped {gate.dropped} blocks")
        assert not any((node2 / ".incomplete").iterdir())
    finally:
        d.stop(grace=5)
        gate.stop()
