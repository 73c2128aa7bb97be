"""Whole downloads through the in-memory network, in virtual time (deterministic)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from twisted.python.failure import Failure

from netsim import Faults
from p2ptorrent.config import Config
from p2ptorrent.node.download import DownloadError, DownloadResult
from swarm import Swarm

MIB = 1024 * 1024


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_complete(swarm: Swarm, result: object) -> DownloadResult:
    if isinstance(result, Failure):
        result.raiseException()
    assert isinstance(result, DownloadResult)
    assert _sha(result.path) == swarm.sha256()
    assert result.path == swarm.folder / "file.bin"
    assert not list((swarm.folder / ".incomplete").iterdir())
    return result


def test_three_seeders_share_the_work(tmp_path: Path) -> None:
    swarm = Swarm(tmp_path, 3 * MIB + 12345, seeders=3)
    dl, outcome = swarm.start()
    result = _assert_complete(swarm, swarm.run(outcome))
    served = {s.node_id: s.bytes for s in result.shares}
    assert set(served) == {1, 2, 3}
    assert all(b > 0 for b in served.values()), served
    assert sum(served.values()) >= swarm.meta.length
    assert result.credited == [1, 2, 3]


def test_lossy_duplicating_reordering_network(tmp_path: Path) -> None:
    faults = Faults(loss=0.05, duplicate=0.02, reorder=0.1, reorder_delay=0.2)
    swarm = Swarm(tmp_path, 2 * MIB + 777, seeders=3, seed=7, faults=faults)
    dl, outcome = swarm.start()
    result = _assert_complete(swarm, swarm.run(outcome))
    assert swarm.net.lost > 0
    assert result.retransmits > 0


def test_seeder_stops_mid_download(tmp_path: Path) -> None:
    slow = Faults(bandwidth=1e6)  # so the download outlasts PEER_TIMEOUT after the stop
    swarm = Swarm(tmp_path, 4 * MIB, seeders=3, faults=slow, settings=Config().replace(PEER_TIMEOUT=0.5))
    dl, outcome = swarm.start()
    swarm.net.run(lambda: dl.done_bytes >= swarm.meta.length // 3)
    swarm.stop_seeder(0)
    result = _assert_complete(swarm, swarm.run(outcome))
    status = {s.node_id: s.status for s in result.shares}
    assert status[1].startswith("dropped")
    assert status[2] == status[3] == "finished"


def test_every_owner_gone_fails_cleanly(tmp_path: Path) -> None:
    swarm = Swarm(tmp_path, 4 * MIB, seeders=2)
    dl, outcome = swarm.start()
    swarm.net.run(lambda: dl.done_bytes > 0)
    swarm.stop_seeder(0)
    swarm.stop_seeder(1)
    started = swarm.clock.seconds()
    result = swarm.run(outcome, limit=120)
    assert isinstance(result, Failure)
    assert result.check(DownloadError)
    assert "gone" in str(result.value)
    assert swarm.clock.seconds() - started < 60
    assert not (swarm.folder / "file.bin").exists()
    # The verified pieces stay for a later resume, and the message says so and names each owner's fate.
    assert f"{dl.done_bytes} of {4 * MIB} bytes verified are kept; run download again to resume" in str(result.value)
    assert "node 1 (" in str(result.value) and "node 2 (" in str(result.value)
    assert {".have", ".part"} <= {p.suffix for p in (swarm.folder / ".incomplete").iterdir()}
    assert not swarm.clock.getDelayedCalls()


def test_no_owner_known(tmp_path: Path) -> None:
    swarm = Swarm(tmp_path, 100_000, seeders=0)
    dl, outcome = swarm.start()
    result = swarm.run(outcome, limit=5)
    assert isinstance(result, Failure)
    assert "no node is sharing file.bin" in str(result.value)


@pytest.mark.parametrize("size", [0, 1, 7216, 262144, 262145])
def test_edge_sizes(tmp_path: Path, size: int) -> None:
    swarm = Swarm(tmp_path, size, seeders=2)
    dl, outcome = swarm.start()
    _assert_complete(swarm, swarm.run(outcome, limit=30))


def test_corrupting_seeder_is_found_out_and_dropped(tmp_path: Path) -> None:
    import random

    rng = random.Random(4)
    liar = ("10.0.0.1", 6000)
    flipped = []

    def flip(src: object, dst: object, data: bytes) -> bytes:
        # Seeder 1 flips one bit in 3% of the blocks it sends.
        if src == liar and data[3] == 4 and rng.random() < 0.03:
            flipped.append(1)
            i = 40 + rng.randrange(len(data) - 40)
            return data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :]
        return data

    swarm = Swarm(tmp_path, 8 * MIB, seeders=3, faults=Faults(tamper=flip, bandwidth=5e6))
    dl, outcome = swarm.start()
    result = _assert_complete(swarm, swarm.run(outcome))
    status = {s.node_id: s.status for s in result.shares}
    assert flipped
    assert status[1].startswith("dropped: sent corrupt data for"), status
    assert status[2] == status[3] == "finished"
