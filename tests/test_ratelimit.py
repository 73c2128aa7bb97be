"""Rate limits, pure and in virtual time: the token bucket, the seeder's upload limit, the download's pacing.

The loopback test (real nodes, real sockets) is in test_ratelimit_loopback.py.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2ptorrent import wire
from p2ptorrent.commands import CommandError, limit_values, parse_command
from p2ptorrent.config import ConfigError, load, parse_rate
from p2ptorrent.metainfo import Metainfo, make_torrent
from p2ptorrent.node.download import Download
from p2ptorrent.node.links import Hooks
from p2ptorrent.node.pieces import Geometry
from p2ptorrent.node.ratelimit import BURST_SECONDS, TokenBucket
from p2ptorrent.node.serving import Seeder
from p2ptorrent.node.storage import PartFile
from p2ptorrent.node.transfer import Transfer
from swarm import Swarm

KIB = 1024
A, B = ("10.0.0.1", 7001), ("10.0.0.2", 7002)


# ---- the bucket

def test_an_unlimited_bucket_grants_everything() -> None:
    b = TokenBucket()
    assert not b.limited and b.available(0.0) == float("inf")
    assert b.take([10**9] * 5, 0.0) == 5


def test_a_bucket_starts_full_refills_at_its_rate_and_saves_at_most_its_burst() -> None:
    b = TokenBucket(min_burst=1000)
    b.set_rate(100_000, 0.0)
    assert b.burst == 100_000 * BURST_SECONDS
    assert b.available(0.0) == b.burst
    assert b.take([1000] * 100, 0.0) == 25  # 25 000 bytes saved
    assert b.take([1000], 0.0) == 0
    assert b.take([1000] * 10, 0.05) == 5  # 50 ms at 100 000 bytes/s
    assert b.available(100.0) == b.burst  # a long pause saves no more than the burst


def test_a_block_bigger_than_the_rate_burst_still_goes_with_min_burst() -> None:
    b = TokenBucket(min_burst=9000)
    b.set_rate(1000, 0.0)  # a burst of 250 bytes by rate alone
    assert b.take([9000], 0.0) == 1


def test_spend_never_goes_below_empty_and_a_clock_stepping_back_does_not_refill() -> None:
    b = TokenBucket(min_burst=1)
    b.set_rate(1000, 10.0)
    b.spend(10**6, 10.0)
    assert b.available(10.0) == 0
    assert b.available(5.0) == 0  # back in time: nothing
    assert b.available(10.5) == pytest.approx(250)  # (capped at the burst)


def test_a_new_rate_keeps_what_was_saved_up_to_its_burst_and_zero_lifts_the_limit() -> None:
    b = TokenBucket(min_burst=1)
    b.set_rate(1000, 0.0)
    b.spend(100, 0.0)  # 150 of 250 left
    b.set_rate(400, 0.0)
    assert b.available(0.0) == 100  # the new burst
    b.set_rate(0, 1.0)
    assert not b.limited and b.take([10**9], 1.0) == 1
    b.set_rate(1000, 2.0)
    assert b.available(2.0) == 250  # a new limit starts full


@given(rate=st.integers(1000, 10**8), steps=st.lists(st.tuples(st.floats(0, 0.5), st.integers(1, 20_000)), max_size=60))
def test_over_any_run_a_bucket_grants_at_most_rate_times_time_plus_its_burst(rate: int, steps: list[tuple[float, int]]) -> None:
    b = TokenBucket(min_burst=20_000)
    b.set_rate(rate, 0.0)
    now, granted = 0.0, 0
    for dt, size in steps:
        now += dt
        granted += size * b.take([size] * 4, now)
    assert granted <= rate * now + b.burst + 1e-6


def test_who_asks_lately_shares_the_bucket_evenly_however_often_each_asks() -> None:
    b = TokenBucket(min_burst=1)
    b.set_rate(1000, 0.0)
    assert b.share("a", 0.0) == 250
    assert b.share("b", 0.0) == 125  # two now: half the burst each
    b.spend(125, 0.0, "b")
    taken = {"a": 0.0, "b": 0.0}
    for step in range(1, 81):  # "a" asks every 5 ms and takes all it may; "b" every 40 ms
        now = step * 0.005
        for who in ("a", "b") if step % 8 == 0 else ("a",):
            got = b.share(who, now)
            b.spend(got, now, who)
            taken[who] += got
    assert taken["a"] + taken["b"] <= 1000 * 0.4 + 250
    assert taken["b"] == pytest.approx(1000 * 0.4 / 2)  # its half of the rate
    assert abs(taken["a"] - taken["b"]) <= 125 + 1e-6  # apart from the share of the burst "a" saved
    assert b.share("b", 1.0) == 250  # "a" has not asked for a while: all of it


# ---- sizes and the grammar

def test_sizes_read_with_their_units() -> None:
    assert parse_rate("20MiB") == 20 * 1024 * 1024
    assert parse_rate("512 KiB/s") == 512 * 1024
    assert parse_rate("1.5MB") == 1_500_000
    assert parse_rate("0") == 0
    with pytest.raises(ValueError, match="20MiB"):
        parse_rate("fast")


def test_settings_take_human_sizes_and_refuse_nonsense() -> None:
    c = load(None, {"MAX_UPLOAD_RATE": "20MiB", "max_download_rate": 1000})
    assert (c.MAX_UPLOAD_RATE, c.MAX_DOWNLOAD_RATE) == (20 * 1024 * 1024, 1000)
    assert (c.METRICS_PORT, c.METRICS_INTERFACE) == (0, "127.0.0.1")  # metrics off by default
    with pytest.raises(ConfigError, match="MAX_UPLOAD_RATE"):
        load(None, {"MAX_UPLOAD_RATE": "lots"})
    with pytest.raises(ConfigError, match="MAX_DOWNLOAD_RATE must be 0"):
        load(None, {"MAX_DOWNLOAD_RATE": -1})
    with pytest.raises(ConfigError, match="METRICS_PORT"):
        load(None, {"METRICS_PORT": 70000})


def test_the_limit_command() -> None:
    assert parse_command("torrent -setMode limit up=20MiB down=0").argument == "up=20MiB down=0"
    assert parse_command("torrent -setMode limit").argument is None
    assert limit_values("up=20MiB down=0") == {"up": 20 * 1024 * 1024, "down": 0}
    assert limit_values("down=1k") == {"down": 1000}
    for bad in ("up", "sideways=1", "up=1 up=2", "up=fast"):
        with pytest.raises(CommandError):
            limit_values(bad)
    with pytest.raises(CommandError, match="limit takes up=SIZE"):
        parse_command("torrent -setMode limit fast")


# ---- the seeder's upload limit

def _shared(tmp: Path) -> tuple[Seeder, Metainfo]:
    path = tmp / "f.bin"
    path.write_bytes(random.Random(3).randbytes(64 * 4096))
    meta = make_torrent(path, "http://tracker.invalid:1", 16 * KIB)[0]
    seeder = Seeder(b"s" * 32, 9000, upload_rate=40_000)
    seeder.add(meta, path)
    return seeder, meta


def _ask(seeder: Seeder, meta: Metainfo, first: int, now: float) -> list[wire.Message]:
    blocks = tuple((p, k * 4096, 4096) for p in range(first, first + 2) for k in range(4))
    req = wire.BlockRequest(meta.info_hash, seeder.cookie(A), 7, blocks)
    _, replies = seeder.on_blocks(req, A, 200, now)
    return [wire.decode(d) for d in replies]


def test_the_seeder_sends_the_first_blocks_its_upload_bucket_allows_and_nothing_more(tmp_path: Path) -> None:
    seeder, meta = _shared(tmp_path)
    got = _ask(seeder, meta, 0, 0.0)  # a 10 000-byte burst: two 4096-byte blocks
    assert [(m.piece, m.offset) for m in got if isinstance(m, wire.Block)] == [(0, 0), (0, 4096)]
    assert seeder.counts["limited:upload rate"] == 6
    assert _ask(seeder, meta, 2, 0.0) == []  # nothing left: silence, no ERROR
    assert len(_ask(seeder, meta, 2, 0.25)) == 2  # refilled at 40 000 bytes/s
    # Its bucket empty, the seeder still answers INFO and HAVE: a limited node is met and asked as ever.
    [info] = [wire.decode(d) for d in seeder.on_info(wire.InfoRequest(8, meta.info_hash), A, 0.25)[1]]
    assert isinstance(info, wire.InfoResponse) and info.status == wire.OK
    have = wire.HaveRequest(meta.info_hash, seeder.cookie(A), 9, 0, meta.num_pieces, 0)
    assert isinstance(wire.decode(next(iter(seeder.on_have(have, A, 100, 0.25)[1]))), wire.Have)
    seeder.upload.set_rate(0, 0.25)  # `limit --up 0`
    assert len(_ask(seeder, meta, 4, 0.25)) == 8


# ---- the scheduler under a download limit

def test_requests_under_a_limit_ask_no_more_blocks_and_the_peers_take_turns() -> None:
    data = random.Random(1).randbytes(40 * 4000)
    geo = Geometry(len(data), 4000, 1000)
    hashes = b"".join(hashlib.sha1(data[i : i + 4000]).digest() for i in range(0, len(data), 4000))
    t = Transfer(geo, hashes, max_batch=8)
    t.add_peer(A, 1, b"a" * 8, 0.0)
    t.add_peer(B, 2, b"b" * 8, 0.0)
    first = t.requests(0.0, limit=5)
    assert sum(len(batch) for _, _, batch in first) == 5 and {p.addr for p, _, _ in first} == {B}
    second = t.requests(0.0, limit=5)
    assert sum(len(batch) for _, _, batch in second) == 5 and {p.addr for p, _, _ in second} == {A}
    assert t.requests(0.0, limit=0) == []


# ---- both limits in virtual time: the download's pacing, the seeder's bucket

def _swarm(tmp: Path, size: int) -> Swarm:
    return Swarm(tmp, size, seeders=1, seed=3)


def _download(sw: Swarm, pace: TokenBucket | None) -> tuple[Download, list[object]]:
    dl = Download(sw.meta, PartFile(sw.folder, sw.meta), sw.proto, sw.need, sw.clock, sw.settings, 100,
                  Hooks(pace=pace, wallclock=sw.clock.seconds))
    sw.proto.downloads[sw.meta.info_hash] = dl
    outcome: list[object] = []
    dl.start().addBoth(outcome.append)
    return dl, outcome


def _rate_over(sw: Swarm, dl: Download, seconds: float) -> float:
    """Bytes of blocks received a second over *seconds* of virtual time, from the first second on."""
    sw.net.run(lambda: sw.clock.seconds() >= 1.0, limit=5.0)
    start, t0 = sum(p.bytes for p in dl.transfer.peers.values()) + dl.stats.dropped_bytes, sw.clock.seconds()
    sw.net.run(lambda: sw.clock.seconds() >= t0 + seconds, limit=seconds + 5)
    end = sum(p.bytes for p in dl.transfer.peers.values()) + dl.stats.dropped_bytes
    return (end - start) / (sw.clock.seconds() - t0)


def test_a_download_limit_paces_the_requests_so_blocks_arrive_at_the_rate(tmp_path: Path) -> None:
    rate = 256 * KIB
    sw = _swarm(tmp_path, 8 * 1024 * 1024)
    pace = TokenBucket(min_burst=sw.settings.CHUNK_PIECES_SIZE)
    pace.set_rate(rate, 0.0)
    dl, outcome = _download(sw, pace)
    got = _rate_over(sw, dl, 10.0)
    assert rate * 0.9 <= got <= rate * 1.1, got
    assert not outcome


def test_an_upload_limit_holds_a_downloader_asking_for_everything_to_the_rate(tmp_path: Path) -> None:
    rate = 256 * KIB
    sw = _swarm(tmp_path, 8 * 1024 * 1024)
    sw.seeders[0].seeder.upload.min_burst = sw.settings.BUFFER_SIZE
    sw.seeders[0].seeder.upload.set_rate(rate, 0.0)
    dl, outcome = _download(sw, None)
    got = _rate_over(sw, dl, 10.0)
    assert rate * 0.5 <= got <= rate * 1.1, got
    assert sw.seeders[0].seeder.counts["limited:upload rate"] > 0
    assert not outcome
