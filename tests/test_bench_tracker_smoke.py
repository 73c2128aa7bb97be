"""The tracker benchmark still runs: `benchmarks/tracker.py` at tiny sizes, both stores, every phase.

A smoke test, not a performance test: it checks that the script starts the real
tracker (and the trivial Klein app), runs every phase against it, prints its
table with the targets beside the figures, and leaves no process or folder
behind.  The figures themselves are not judged (this machine is shared).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "tracker.py"
#: The run below takes about half a minute here; this bounds a hung one.
TIMEOUT = 300

pytestmark = pytest.mark.slow


def _started_below(folder: Path) -> list[int]:
    """Processes whose command line or working folder is under *folder* (the script's tracker and Klein app)."""
    found = []
    for p in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if str(folder) in " ".join(p.info["cmdline"] or []) or str(p.info["cwd"] or "").startswith(str(folder)):
                found.append(p.pid)
        except psutil.Error:
            pass
    return found


def test_tiny_benchmark_runs_every_phase_and_prints_its_table(tmp_path: Path) -> None:
    try:
        done = subprocess.run(
            [sys.executable, str(SCRIPT), "--nodes", "200", "--seconds", "1", "--probes", "20",
             "--json-nodes", "100", "--min-interval", "1", "--workdir", str(tmp_path)],
            capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"tracker.py took more than {TIMEOUT} s:\n{e.stdout!r}\n{e.stderr!r}")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "FAILED" not in output, output

    for store, n in (("json", "100"), ("sqlite", "200")):
        rows = [line for line in done.stdout.splitlines() if re.match(rf"{store}\s+{n}\s", line)]
        assert rows, output
        text = "\n".join(rows)
        for figure in ("admit one by one, s", "join p50 / p99, ms", "OWN p50 / p99, ms", "NEED p50 / p99, ms",
                       "UPDATE p50 / p99, ms", "EXIT p50 / p99, ms", "heartbeats/s at 64 conns",
                       "trivial Klein app just after, req/s", "/ trivial Klein app", "NEED/s at 64 conns", "RSS joined / loaded / end, MiB"):
            assert figure in text, f"{store}: no {figure!r}\n{output}"
        assert re.search(r"stall dropping \d+ nodes, ms\s+[\d.,]+\s+<= 50 ms", text), f"{store}: no stall figure\n{output}"
        assert "p99 <= 20 ms at 100k" in text and ">= 0.6x" in text, output
    assert "tracker.db (+wal), MiB" in done.stdout and "nodes.json + files.json, MiB" in done.stdout, output

    assert list(tmp_path.iterdir()) == [], "the work folder is removed without --keep"
    assert _started_below(tmp_path) == [], "processes left behind"
