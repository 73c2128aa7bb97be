"""Real `twistd` processes for the black-box tests: the tracker and node command lines, and ending a daemon."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from p2ptorrent.procs import Daemons, connects, wait_for


def start_tracker(d: Daemons, port: int, timeout: float, *extra: str) -> None:
    """`twistd -n p2ptracker` on 127.0.0.1:*port* (database and logs under *d*'s root); returns once it listens."""
    d.start("tracker", [
        "p2ptracker", "--host", "127.0.0.1", "--port", str(port),
        "--tracker-db-dir", str(d.root / "tracker_db"), "--logs-dir", str(d.root / "logs"), *extra,
    ])
    wait_for(lambda: connects(port), "the tracker to listen", timeout=timeout,
             alive=lambda: d.check_alive("tracker"), fail=pytest.fail)


def node_args(d: Daemons, node_id: int, tracker_port: int, *extra: str) -> list[str]:
    """The arguments of a `p2pnode` on loopback, its files and logs under *d*'s root, no stdin."""
    return [
        "p2pnode", "--id", str(node_id), "--node-files-dir", str(d.nodes_dir), "--logs-dir", str(d.root / "logs"),
        "--tracker", f"127.0.0.1:{tracker_port}", "--no-stdin", "--interface", "127.0.0.1", *extra,
    ]


def registered(d: Daemons, node_id: int) -> bool:
    """True once node *node_id* answers `status` and says it is registered with the tracker."""
    result = d.ctl(node_id, "status", "--json")
    return result.returncode == 0 and json.loads(result.stdout)["registered"] is True


def seed_file(d: Daemons, name: str, size: int, seed: int) -> tuple[Path, str]:
    """Node 1's folder holding *name*, *size* bytes from ``random.Random(seed)``: (the folder, their SHA-256 hex)."""
    folder = d.nodes_dir / "1"
    folder.mkdir(parents=True)
    data = random.Random(seed).randbytes(size)
    (folder / name).write_bytes(data)
    return folder, hashlib.sha256(data).hexdigest()


def pid_alive(pid: int) -> bool:
    """True while *pid* runs (a zombie counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def end_process(pid: int, grace: float) -> None:
    """SIGTERM *pid*, give it *grace* seconds, then SIGKILL it."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
