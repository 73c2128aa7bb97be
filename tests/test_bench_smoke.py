"""The benchmark harness still runs: `benchmarks/swarm.py --quick` beside libtorrent, every copy identical.

A smoke test, not a performance test: it checks that the harness starts the
real processes of both implementations, that every copy came out identical,
and that each row has a positive goodput; the figures themselves are not
judged (this machine is shared and noisy).  libtorrent is the bench extra
(`pip install -e '.[bench]'`); without it this test fails and says so.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

SWARM = Path(__file__).resolve().parent.parent / "benchmarks" / "swarm.py"
#: --quick runs in well under two minutes here; this bounds a hung run.
TIMEOUT = 300

pytestmark = pytest.mark.slow


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder with a short path: nodes put their UNIX control sockets below it (107 bytes at most)."""
    path = Path(tempfile.mkdtemp(prefix="swq-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_quick_benchmark_runs_both_implementations_and_every_copy_is_identical(tmp_path: Path, short_dir: Path) -> None:
    if importlib.util.find_spec("libtorrent") is None:
        pytest.fail("libtorrent is not importable: install the bench extra (pip install -e '.[bench]') to run"
                    " the benchmark smoke test")
    markdown = tmp_path / "quick.md"
    try:
        done = subprocess.run(
            [sys.executable, str(SWARM), "--quick", "--markdown", str(markdown), "--workdir", str(short_dir)],
            capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"swarm.py --quick took more than {TIMEOUT} s:\n{e.stdout}\n{e.stderr}")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output

    # One row per run: implementation, scenario, size, ..., wall s, node s, MB/s, copies, ...
    rows = re.findall(r"^(p2ptorrent \d+|lt-\w+)\s+(\d->\d)\s+64\s+\S+\s+1/1\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)",
                      done.stdout, re.MULTILINE)
    seen = {(impl.split()[0], scenario) for impl, scenario, *_ in rows}
    for scenario in ("1->1", "3->1"):
        assert ("p2ptorrent", scenario) in seen, output
        assert any(impl.startswith("lt-") and s == scenario for impl, s in seen), output
    assert len(rows) == 8, output  # 2 scenarios x (2 chunk sizes + lt-default + lt-utp)
    for impl, scenario, wall, _node, mb_per_s, copies in rows:
        assert copies == "identical", f"{impl} {scenario}: {copies}\n{output}"
        assert float(wall) > 0 and float(mb_per_s) > 0, f"{impl} {scenario}: {wall} s, {mb_per_s} MB/s\n{output}"
    assert "8 of 8 runs completed with every copy identical" in done.stdout, output
    assert "FAILED" not in done.stdout, output
    assert "| p2ptorrent 60000 | 3->1 | 64 |" in markdown.read_text(), markdown.read_text()
    assert list(short_dir.iterdir()) == [], "the work folder is removed without --keep"
