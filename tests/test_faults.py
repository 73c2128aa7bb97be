"""Network faults, in the in-memory network and virtual time (issue: reliability, items 1-8).

Every run is deterministic (a seeded network and a Clock).  "Identical" means
equal SHA-256; every piece written to disk is checked against its hash as it
is written, so no unverified byte can reach the output file unnoticed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from twisted.python.failure import Failure

from netsim import Faults
from p2ptorrent import wire
from p2ptorrent.config import Config
from p2ptorrent.node.session import INFO_TRIES
from p2ptorrent.node.download import DownloadError, DownloadResult
from p2ptorrent.node.storage import PartFile
from p2ptorrent.node.transfer import MAX_REQUESTERS, Transfer
from swarm import Owner, Swarm

MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def only_verified_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Fail the test if any piece reaches the disk without matching its hash."""
    written: list[int] = []
    real = PartFile.write_piece

    def checked(self: PartFile, piece: int, data: bytes) -> None:
        assert hashlib.sha1(data).digest() == self.meta.piece_hash(piece), f"unverified piece {piece} written"
        written.append(piece)
        real(self, piece, data)

    monkeypatch.setattr(PartFile, "write_piece", checked)
    return written


def _complete(swarm: Swarm, result: object) -> DownloadResult:
    if isinstance(result, Failure):
        result.raiseException()
    assert isinstance(result, DownloadResult)
    assert hashlib.sha256(result.path.read_bytes()).hexdigest() == swarm.sha256()
    return result


def _messages(events: list[dict[str, Any]]) -> list[str]:
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events]


FAULTS = {
    "loss": Faults(loss=0.05),
    "duplication": Faults(duplicate=0.01),
    "reordering": Faults(reorder=0.10, reorder_delay=0.2),
    "together": Faults(loss=0.05, duplicate=0.01, reorder=0.10, reorder_delay=0.2),
}


@pytest.mark.parametrize("kind", list(FAULTS))
@pytest.mark.parametrize("seed", range(20))
def test_16_mib_through_a_bad_network(tmp_path: Path, kind: str, seed: int) -> None:
    """Item 1: loss, duplication, reordering, alone and together, 20 seeds each: identical every time."""
    swarm = Swarm(tmp_path, 16 * MIB, seeders=3, seed=seed, faults=FAULTS[kind])
    dl, outcome = swarm.start()
    result = _complete(swarm, swarm.run(outcome))
    if kind in ("loss", "together"):
        assert swarm.net.lost > 0 and result.retransmits > 0
    if kind == "duplication":
        assert result.duplicates > 0


def test_seven_percent_loss(tmp_path: Path) -> None:
    """Item 2: what 1% packet loss becomes when each datagram spans seven IP fragments."""
    swarm = Swarm(tmp_path, 8 * MIB, seeders=3, seed=2, faults=Faults(loss=0.07))
    dl, outcome = swarm.start()
    _complete(swarm, swarm.run(outcome))
    assert swarm.net.lost > 0.05 * swarm.net.sent


def test_blackout_then_recovery_without_a_request_storm(tmp_path: Path) -> None:
    """Item 3: all traffic lost for twice the request timeout mid-transfer; retries back off."""
    settings = Config()
    swarm = Swarm(tmp_path, 16 * MIB, seeders=3, seed=3, faults=Faults(bandwidth=5e6), settings=settings)
    dl, outcome = swarm.start()
    swarm.net.run(lambda: dl.done_bytes >= swarm.meta.length // 2)
    blackout = 2 * settings.REQUEST_TIMEOUT
    start = swarm.clock.seconds()
    swarm.net.blackout_until = start + blackout
    sent_before = swarm.proto.sent
    windows_before = {a: p.window for a, p in dl.transfer.peers.items()}
    swarm.net.run(lambda: swarm.clock.seconds() >= start + blackout)
    sent_during = swarm.proto.sent - sent_before
    print(f"blackout {blackout} s: downloader sent {sent_during} datagrams")
    # Without backoff every peer's window would be re-sent every few round trips.
    assert sent_during <= 40, sent_during
    for addr, peer in dl.transfer.peers.items():
        assert peer.window < windows_before[addr] and peer.rto > settings.REQUEST_TIMEOUT
    assert len(dl.transfer.peers) == 3  # nobody dropped for a short blackout
    _complete(swarm, swarm.run(outcome))


def test_corrupting_seeder(tmp_path: Path, events: list[dict[str, Any]]) -> None:
    """Item 4: one seeder flips a bit in 1% of its blocks: identical file, liar dropped after 3 bad pieces."""
    import random

    rng = random.Random(9)
    liar = ("10.0.0.2", 6001)

    def flip(src: object, dst: object, data: bytes) -> bytes:
        if src == liar and data[3] == wire.BLOCK and rng.random() < 0.01:
            i = wire.BLOCK_OVERHEAD + rng.randrange(len(data) - wire.BLOCK_OVERHEAD)
            return data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1 :]
        return data

    swarm = Swarm(tmp_path, 16 * MIB, seeders=3, seed=4, faults=Faults(tamper=flip, bandwidth=5e6))
    dl, outcome = swarm.start()
    result = _complete(swarm, swarm.run(outcome))
    status = {s.node_id: s.status for s in result.shares}
    assert status[2].startswith("dropped: sent corrupt data for"), status
    assert status[1] == status[3] == "finished"
    text = "\n".join(_messages(events))
    assert "failed verification" in text
    assert "dropped peer" in text or "dropped node 2" in text
    assert "sent corrupt data for" in text
    assert dl.transfer.peers == {} or ("10.0.0.2", 6001) not in dl.transfer.peers


@pytest.mark.parametrize("fraction", [0.30, 0.60, 0.95])
def test_seeder_stopped_part_way(tmp_path: Path, fraction: float) -> None:
    """Item 5: a seeder stops at 30%, 60%, 95%: the others finish the download."""
    swarm = Swarm(tmp_path, 16 * MIB, seeders=3, seed=5, faults=Faults(bandwidth=5e6))
    dl, outcome = swarm.start()
    swarm.net.run(lambda: dl.done_bytes >= fraction * swarm.meta.length)
    swarm.stop_seeder(1)
    _complete(swarm, swarm.run(outcome))


def test_dead_owners_beside_a_live_one(tmp_path: Path) -> None:
    """Item 6: three unreachable owners ranked first: each is given up once, the live one serves all."""
    swarm = Swarm(tmp_path, 4 * MIB, seeders=1, seed=6)
    dead = [Owner(50 + i, f"10.9.9.{i}", 7000 + i) for i in range(3)]
    swarm.owners[:0] = dead
    info_to: dict[Any, int] = {}
    real_send = swarm.net.send

    def counting(src: Any, dst: Any, data: bytes) -> None:
        if data[3] == wire.INFO_REQ:
            info_to[dst] = info_to.get(dst, 0) + 1
        real_send(src, dst, data)

    swarm.net.send = counting  # type: ignore[method-assign]
    dl, outcome = swarm.start()
    result = _complete(swarm, swarm.run(outcome, limit=60))
    for owner in dead:
        assert info_to[(owner.host, owner.port)] <= INFO_TRIES
    assert [s.node_id for s in result.shares] == [1]
    # The live owner is greeted as soon as the first dead one misses its first answer.
    assert swarm.clock.seconds() < 2 * swarm.settings.REQUEST_TIMEOUT + 1.0


def test_slow_owner_does_not_hold_the_download_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 7: an owner at 1% of the others' speed costs at most 30% more time; endgame stays bounded."""
    size = 16 * MIB
    (tmp_path / "a").mkdir()
    fast = Swarm(tmp_path / "a", size, seeders=2, seed=7, faults=Faults(bandwidth=10e6))
    dl, outcome = fast.start()
    _complete(fast, fast.run(outcome))
    alone = fast.clock.seconds()

    most = [0]
    real_requests = Transfer.requests

    def watched(self: Transfer, now: float, only: Any = None, limit: int | None = None) -> Any:
        out = real_requests(self, now, only, limit)
        most[0] = max([most[0], *(len(h) for h in self.requesters.values())])
        return out

    monkeypatch.setattr(Transfer, "requests", watched)
    (tmp_path / "b").mkdir()
    slow = Swarm(tmp_path / "b", size, seeders=3, seed=7, faults=Faults(bandwidth=10e6))
    slow.net.bandwidth[("10.0.0.3", 6002)] = 10e6 / 100
    dl, outcome = slow.start()
    result = _complete(slow, slow.run(outcome))
    with_slow = slow.clock.seconds()
    print(f"2 fast owners: {alone:.2f} s; with a 1% owner too: {with_slow:.2f} s ({with_slow / alone:.2f}x)")
    assert with_slow <= 1.3 * alone, (with_slow, alone)
    assert most[0] <= MAX_REQUESTERS
    assert result.retransmits > 0  # the slow owner's blocks were asked of others


def test_every_owner_gone_fails_in_bounded_time_without_busy_looping(tmp_path: Path) -> None:
    """Item 8: a clear failure, bounded in time and in datagrams, with nothing that looks complete."""
    swarm = Swarm(tmp_path, 16 * MIB, seeders=3, seed=8, faults=Faults(bandwidth=5e6))
    dl, outcome = swarm.start()
    swarm.net.run(lambda: dl.done_bytes >= swarm.meta.length // 4)
    for i in range(3):
        swarm.stop_seeder(i)
    start, sent = swarm.clock.seconds(), swarm.proto.sent
    result = swarm.run(outcome, limit=120)
    assert isinstance(result, Failure) and result.check(DownloadError)
    assert "every owner of file.bin is gone" in str(result.value)
    elapsed = swarm.clock.seconds() - start
    print(f"every owner gone: failed after {elapsed:.1f} virtual s, {swarm.proto.sent - sent} datagrams")
    assert elapsed <= swarm.settings.PEER_TIMEOUT + 10, elapsed
    assert swarm.proto.sent - sent < 300  # backing off, not spinning
    assert not (swarm.folder / "file.bin").exists()
    # What was verified stays for a resume, under the info hash only (never the real name).
    assert f"{dl.done_bytes} of {swarm.meta.length} bytes verified are kept" in str(result.value)
    assert len(list((swarm.folder / ".incomplete").glob("*.part"))) == 1
    assert not swarm.clock.getDelayedCalls()


def test_a_seeder_silent_for_a_while_is_greeted_again_and_serves_again(tmp_path: Path) -> None:
    """A seeder unreachable for longer than PEER_TIMEOUT (a lossy path can do that) is dropped; the tracker
    still lists it, so once it answers again it is greeted again and sends blocks again."""
    swarm = Swarm(tmp_path, 16 * MIB, seeders=2, seed=9, faults=Faults(bandwidth=4e5))
    dl, outcome = swarm.start()
    swarm.net.run(lambda: dl.done_bytes >= 0.1 * swarm.meta.length)
    cut = swarm.seeders[1]
    addr = cut.transport.addr
    swarm.net.detach(addr)
    dropped_at = swarm.clock.seconds()
    swarm.net.run(lambda: addr not in dl.transfer.peers)
    assert swarm.clock.seconds() - dropped_at > swarm.settings.PEER_TIMEOUT
    swarm.net.hosts[addr] = cut  # it answers again
    back = swarm.clock.seconds()
    swarm.net.run(lambda: addr in dl.transfer.peers or bool(outcome))
    assert not outcome, "finished before the seeder came back: make the link slower"
    greeted_again = swarm.clock.seconds() - back
    result = _complete(swarm, swarm.run(outcome))
    share = next(s for s in result.shares if s.addr == addr)
    assert share.status == "finished" and share.bytes > 0, share  # it served again after coming back
    print(f"seeder greeted again {greeted_again:.1f} s after it answered again")
