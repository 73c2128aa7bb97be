"""A foreground node driven by commands typed on its stdin, as `twistd -n p2pnode` is used by hand."""

from __future__ import annotations

import hashlib
import os
import select
import subprocess
import time
from pathlib import Path

import pytest

from p2ptorrent.procs import connects, find_script, free_port


def _read_until(proc: subprocess.Popen[bytes], needle: bytes, seen: bytearray, timeout: float = 30.0) -> str:
    """Read the node's stdout until a line holding *needle* appears; return that line."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in seen.split(b"\n"):
            if needle in line:
                return line.decode()
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            seen.extend(chunk)
    pytest.fail(f"no {needle!r} from the node; it said:\n{seen.decode(errors='replace')}")


def test_commands_on_stdin(tmp_path: Path) -> None:
    twistd = find_script("twistd", search_path=False)
    assert twistd, "twistd must be installed beside this Python"
    port = free_port()
    common = ["--logs-dir", str(tmp_path / "logs"), "--node-files-dir", str(tmp_path / "nf")]
    tracker = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "p2ptracker", "--port", str(port), "--tracker-db-dir", str(tmp_path / "db"), *common],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    procs = [tracker]
    try:
        deadline = time.monotonic() + 20
        while not connects(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        node_args = ["p2pnode", "--tracker", f"127.0.0.1:{port}", *common]
        seeder = subprocess.Popen(
            [twistd, "-n", "--pidfile=", *node_args, "--id", "1"],
            cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        leecher = subprocess.Popen(
            [twistd, "-n", "--pidfile=", *node_args, "--id", "2"],
            cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        procs += [seeder, leecher]
        (tmp_path / "nf" / "1").mkdir(parents=True, exist_ok=True)
        data = os.urandom(2 * 1024 * 1024 + 99)
        (tmp_path / "nf" / "1" / "typed.bin").write_bytes(data)
        out1, out2 = bytearray(), bytearray()
        _read_until(seeder, b"registered with the tracker", out1)
        _read_until(leecher, b"registered with the tracker", out2)

        assert seeder.stdin and leecher.stdin
        seeder.stdin.write(b"torrent -setMode send typed.bin\n")
        seeder.stdin.flush()
        line = _read_until(seeder, b"OK: seeding typed.bin", out1)
        assert "announced to the tracker" in line

        torrent = tmp_path / "nf" / "1" / "typed.bin.torrent"
        leecher.stdin.write(f"torrent -setMode download {torrent}\n".encode())
        leecher.stdin.flush()
        line = _read_until(leecher, b"OK: downloaded typed.bin", out2)
        assert "and the whole file (SHA-256) verified" in line
        got = (tmp_path / "nf" / "2" / "typed.bin").read_bytes()
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()

        leecher.stdin.write(b"torrent -setMode fly\n")
        leecher.stdin.flush()
        assert "ERROR" in _read_until(leecher, b"unknown mode 'fly'", out2)

        for proc, _out in ((leecher, out2), (seeder, out1)):
            assert proc.stdin is not None
            proc.stdin.write(b"torrent -setMode exit\n")
            proc.stdin.flush()
            assert proc.wait(20) == 0
        log = (tmp_path / "logs" / "tracker.log").read_text()
        assert "node 1 left" in log and "node 2 left" in log
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
