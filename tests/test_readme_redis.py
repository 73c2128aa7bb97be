"""The README's "Several trackers on one swarm (Redis)", run as printed.

The block's commands and the stop commands of the paragraph after it are
read from README.md when the test runs.  Every line runs with bash in an empty
folder, with this Python's console scripts first on PATH (as after
`. .venv/bin/activate`); the trackers then serve one swarm on the README's
port, each answering some of the connections, and the stop commands end them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from daemonkit import pid_alive
from p2ptorrent.procs import wait_for as _wait_for
from tests.test_tracker_processes import TrackerAPI

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "### Several trackers on one swarm (Redis)"
wait_for = partial(_wait_for, timeout=60.0, fail=pytest.fail)


def section() -> tuple[list[str], list[str]]:
    """The commands of the section's sh block, and the `stop` commands (in backticks) of the text after it."""
    text = README.read_text()
    start = text.index(SECTION)
    body = text[start:text.index("\n#", start + len(SECTION))]
    block = re.search(r"```sh\n(.*?)```", body, re.S)
    assert block is not None, f"README section {SECTION!r} has no sh block"
    lines = [line for line in block.group(1).splitlines() if line.strip()]
    after = body[block.end():]
    stops = re.findall(r"`((?:kill|redis-cli) [^`]+)`", after)
    return lines, stops


def run(line: str, cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{line!r} exited {done.returncode}: {done.stdout}{done.stderr}"


def test_the_readme_runs_two_trackers_on_one_redis_and_one_port_as_printed(tmp_path: Path) -> None:
    lines, stops = section()
    assert [line.split()[0] for line in lines] == ["redis-server", "twistd", "twistd"], lines
    assert stops == ["kill $(cat tracker_db/a/tracker.pid)", "redis-cli -p 6380 shutdown"], stops
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    pids = [tmp_path / "tracker_db" / name / "tracker.pid" for name in ("a", "b")]
    try:
        for line in lines:
            run(line, tmp_path, env)
        for name in ("a", "b"):
            log = tmp_path / "logs" / name / "tracker.log"
            wait_for(lambda log=log: log.exists() and "loaded 0 nodes and 0 files from redis://127.0.0.1:6380/0"
                     in log.read_text(), f"tracker {name} on Redis")
        tokens = {}
        for node_id in range(1, 33):
            api = TrackerAPI(12345)  # a new connection each time
            tokens[node_id] = api.ok({"mode": 0, "node_id": node_id, "port": 7000 + node_id})["token"]
            api.close()
        logs = {name: (tmp_path / "logs" / name / "tracker.log").read_text() for name in ("a", "b")}
        served = {name: len(re.findall(r"joined from", text)) for name, text in logs.items()}
        assert served["a"] > 0 and served["b"] > 0 and sum(served.values()) == 32, served
        api = TrackerAPI(12345)
        need = api.ok({"mode": 2, "node_id": 1, "token": tokens[1], "info_hash": "a" * 40})
        assert need["owners"] == []
        # The stop commands, as printed (tracker b the same way as a).
        pid_a = int(pids[0].read_text())
        run(stops[0], tmp_path, env)
        run(stops[0].replace("/a/", "/b/"), tmp_path, env)
        wait_for(lambda: not pids[0].exists() and not pids[1].exists(), "both trackers stopped (pid files gone)")
        wait_for(lambda: not pid_alive(pid_a), "tracker a's process ended")
        run(stops[1], tmp_path, env)
    finally:
        for pid_file in pids:
            if pid_file.exists():
                pid = int(pid_file.read_text())
                if pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
        subprocess.run(["redis-cli", "-p", "6380", "shutdown", "nosave"], capture_output=True, timeout=30)

