"""The tracker benchmark still runs: `benchmarks/tracker.py` at tiny sizes, every store, every phase.

A smoke test, not a performance test: it checks that the script starts the real
tracker processes (one on SQLite, one on JSON, one and two on a redis-server it
starts itself) and the trivial Klein apps, runs every phase against them,
prints one table with the stores side by side and the targets beside the
figures, writes the figures (--save), and leaves no process or folder behind.
The BitTorrent phase (--bep) is run alone the same way, at 2,000 peers.
The figures are only checked to be there and sane (positive, finite, counts
that add up), never against a speed: this machine is shared.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "tracker.py"
#: The run below takes about a minute here; this bounds a hung one.
TIMEOUT = 420

pytestmark = pytest.mark.slow


def _started_below(folder: Path) -> list[int]:
    """Processes whose command line or working folder is under *folder* (the script's trackers, Redis, Klein apps)."""
    found = []
    for p in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if str(folder) in " ".join(p.info["cmdline"] or []) or str(p.info["cwd"] or "").startswith(str(folder)):
                found.append(p.pid)
        except psutil.Error:
            pass
    return found


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_tiny_benchmark_runs_every_phase_for_every_store_and_prints_one_table(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    saved = tmp_path / "figures.json"
    try:
        done = subprocess.run(
            [sys.executable, str(SCRIPT), "--nodes", "200", "--seconds", "1", "--probes", "20",
             "--json-nodes", "100", "--min-interval", "1", "--workdir", str(work), "--save", str(saved)],
            capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"tracker.py took more than {TIMEOUT} s:\n{e.stdout!r}\n{e.stderr!r}")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "FAILED" not in output, output

    # One table: a column per store, the targets in the last one.
    header = next((line for line in done.stdout.splitlines() if line.startswith("nodes")), "")
    assert re.match(r"nodes\s+figure\s+json\s+sqlite\s+redis\s+redis x2\s+target$", header), output
    rows = [line for line in done.stdout.splitlines() if re.match(r"200\s", line)]
    text = "\n".join(rows)
    for figure in ("admit one by one, s", "join p50 / p99, ms", "OWN p50 / p99, ms", "NEED p50 / p99, ms",
                   "UPDATE p50 / p99, ms", "EXIT p50 / p99, ms", "heartbeats/s at 64 conns",
                   "trivial Klein app(s) just after, req/s", "/ trivial Klein app", "NEED/s at 64 conns",
                   "RSS joined, MiB", "redis-server RSS end, MiB", "combined / one Redis tracker", "cores busy",
                   "CPU ms per request: tracker(s) / trivial", "reactor's own delay then (a 404), ms"):
        assert figure in text, f"no {figure!r}\n{output}"
    # The stall figure of sqlite, redis and redis x2 (the last with one per tracker), then the target.
    assert re.search(r"stall dropping 20 nodes, ms\s+[\d.,]+\s+[\d.,]+\s+[\d.,]+ \([\d.,]+ / [\d.,]+\)\s+<= 50 ms",
                     text), output
    assert "p99 <= 20 ms at 100k" in text and ">= 0.6x" in text, output
    assert "tracker.db+wal" in text and " AOF" in text and "nodes+files.json" in done.stdout, output
    assert "redis x2 at 200 nodes, against one tracker" in done.stdout, output

    results = {(r["variant"], r["n"]): r for r in json.loads(saved.read_text())["results"]}
    assert set(results) == {("json", 100), ("sqlite", 200), ("redis", 200), ("redis2", 200)}, results.keys()
    for (variant, n), r in results.items():
        where = f"{variant} {n}: {r}"
        trackers = 2 if variant == "redis2" else 1
        assert len(r["pids"]) == trackers and len(r["rss_joined"]) == trackers, where
        assert r["admit"]["seq_done"] == n and _positive(r["admit"]["seq_s"]), where
        lat = r["latency"]
        assert lat["cycles"] > 0 and all(len(v) >= lat["cycles"] for v in lat["lat"].values()), where
        assert all(_positive(x) for v in lat["lat"].values() for x in v), where
        assert lat["hb"]["sent"] > 0, where
        for figure in ("hb_rate", "need_rate", "trivial", "restart_s", "db_mib"):
            assert _positive(r[figure]), f"{figure}: {where}"
        assert all(_positive(x) for x in r["rss_joined"] + r["rss_loaded"] + r["rss_end"]), where
        stall = r["stall"]
        assert stall["silent"] == n // 10 and stall["final_nodes"] == n - n // 10, where
        assert len(stall["stall_each_ms"]) == trackers and _positive(stall["stall_ms"]), where
        assert len(stall["reactor_each_ms"]) == trackers and all(_positive(x) for x in stall["reactor_each_ms"]), where
        for cpu in (r["cpu_hb"], r["cpu_need"]):
            assert set(cpu) >= {"load generator", "cpu0"}, where
            assert all(math.isfinite(v) and v >= 0 for v in cpu.values()), where
            assert sum(1 for k in cpu if k.startswith("tracker")) == trackers, where
            assert ("redis-server" in cpu) == variant.startswith("redis"), where
        assert sum(1 for k in r["cpu_trivial"] if k.startswith("app")) == trackers, where
        if variant.startswith("redis"):
            assert _positive(r["redis_rss"]), where
    assert _positive(results[("redis2", 200)]["vs_one"]["hb"])

    assert list(work.iterdir()) == [], "the work folder is removed without --keep"
    assert _started_below(work) == [], "processes left behind"


def test_tiny_bittorrent_phase_announces_over_http_beside_the_trivial_app_and_says_what_of_udp(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    saved = tmp_path / "bep.json"
    try:
        done = subprocess.run(
            [sys.executable, str(SCRIPT), "--bep", "--bep-peers", "2000", "--bep-swarms", "20", "--seconds", "1",
             "--workdir", str(work), "--save", str(saved)],
            capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"tracker.py --bep took more than {TIMEOUT} s:\n{e.stdout!r}\n{e.stderr!r}")
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "FAILED" not in output, output
    assert re.search(r"load average [\d.]+ [\d.]+ [\d.]+ on \d+ cores at the end", done.stdout), output
    for figure, target in (("HTTP announces/s at 1 conn", "opentracker 7.0k"),
                           ("HTTP announces/s at 64 conns", "opentracker 12.3k"),
                           ("/ trivial Klein app", ">= 0.8x"),
                           ("CPU ms per request: tracker / trivial", "")):
        assert re.search(re.escape(figure) + r"\s+[\d.,/ x]+\s+.*" + re.escape(target), done.stdout), f"{figure}\n{output}"

    r = json.loads(saved.read_text())["bep"]
    assert (r["peers"], r["swarms"]) == (2000, 20)
    for figure in ("populate_s", "http1", "http64", "trivial1", "trivial64", "rss_loaded", "rss_end"):
        assert _positive(r[figure]), f"{figure}: {r}"
    for cpu in (r["cpu_http1"], r["cpu_http64"]):
        assert set(cpu) >= {"tracker", "load generator", "cpu0"}, r
    if r["udp"]:  # once the tracker offers BEP 15: every announce answered with peers, none refused
        for window in ("udp1", "udp64"):
            u = r[window]
            assert u["answered"] > 0 and u["errors"] == 0 and _positive(u["rate"]), r
            assert 0 < u["peers_per_answer"] <= 50, r
        assert "UDP (BEP 15) announces/s, 64 in flight" in done.stdout, output
    else:
        assert "UDP: not offered by this tracker" in done.stdout, output

    assert list(work.iterdir()) == [], "the work folder is removed without --keep"
    assert _started_below(work) == [], "processes left behind"
