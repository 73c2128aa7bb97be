"""What `twistd p2pnode` and `twistd p2ptracker` say to a person at a terminal.

A refused setting is one line on stderr (not twistd's 45 lines of usage) and a
non-zero exit; a mistyped option name still gets the usage; `help` typed on a
foreground node's stdin lists the commands.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions

from p2ptorrent.commands import HELP_TEXT
from p2ptorrent.options import SettingRefused
from p2ptorrent.procs import find_script, free_port

CHUNK_TOO_BIG = (
    "CHUNK_PIECES_SIZE must be 1-9176: a chunk plus its 40-byte header must fit in one BUFFER_SIZE (9216) datagram,"
    " got 99999; no datagram is that big: a chunk can be at most 65467 bytes (the largest UDP payload, 65507,"
    " less the header)"
)


def twistd() -> str:
    found = find_script("twistd", search_path=False)
    assert found, "twistd must be installed beside this Python"
    return found


# ---- in process: twistd's own option parser around ours

@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["-n", "p2pnode", "--id", "1", "--set", "CHUNK_PIECES_SIZE=99999"], f"twistd p2pnode: error: {CHUNK_TOO_BIG}"),
        (["p2pnode", "--id", "1", "--chunk-size", "60000"],
         "twistd p2pnode: error: CHUNK_PIECES_SIZE must be 1-9176: a chunk plus its 40-byte header must fit in one"
         " BUFFER_SIZE (9216) datagram, got 60000; raise BUFFER_SIZE to at least 60040 (--buffer-size 60040)"),
        (["p2pnode", "--id", "1", "--tracker", "nohost"],
         "twistd p2pnode: error: bad value for TRACKER_ADDR: 'nohost' (expected HOST:PORT, e.g. 192.0.2.10:12345)"),
        (["p2ptracker", "--set", "TRACKER_MISSED_CHECKS=0"],
         "twistd p2ptracker: error: TRACKER_MISSED_CHECKS must be at least 1, got 0"),
        (["p2ptracker", "--log-level", "loud"],
         "twistd p2ptracker: error: LOG_LEVEL must be one of debug, info, warn, error, critical, got 'loud'"),
        (["p2ptracker", "--set", "oops"], "twistd p2ptracker: error: expected NAME=VALUE, got 'oops'"),
        (["p2pnode", "--id", "1", "--set", "NO_SUCH=1"], "twistd p2pnode: error: unknown setting 'NO_SUCH'; known: "),
        (["p2pnode", "--config", "/nonexistent.json", "--id", "1"],
         "twistd p2pnode: error: cannot read config file /nonexistent.json: No such file or directory"),
        # The taps' own checks of values come after ours, and are refused the same way.
        (["p2pnode"], "twistd p2pnode: error: --id is required: every node needs its own id, e.g. --id 1"),
        (["p2ptracker", "--port", "http"], "twistd p2ptracker: error: --port must be a number, got 'http'"),
    ],
)
def test_a_refused_value_is_one_line(argv: list[str], line: str) -> None:
    with pytest.raises(SettingRefused) as e:
        ServerOptions().parseOptions(argv)
    assert isinstance(e.value, SystemExit)
    assert isinstance(e.value.code, str) and "\n" not in e.value.code
    assert e.value.code.startswith(line)


@pytest.mark.parametrize(
    "argv",
    [["p2pnode", "--id", "1", "--nope"], ["p2pnode", "--id", "1", "--chunk-size"], ["p2ptracker", "--log-levle", "x"]],
)
def test_a_wrong_option_name_keeps_twistds_usage(argv: list[str]) -> None:
    """twistd prints its usage for a UsageError: right when the name of an option is what went wrong."""
    with pytest.raises(usage.UsageError):
        ServerOptions().parseOptions(argv)


def test_twist_names_itself() -> None:
    from twisted.application.twist._options import TwistOptions

    with pytest.raises(SettingRefused) as e:
        TwistOptions().parseOptions(["p2pnode", "--id", "1", "--log-level", "warning"])
    assert e.value.code == (
        "twist p2pnode: error: LOG_LEVEL must be one of debug, info, warn, error, critical, got 'warning':"
        " did you mean 'warn'?"
    )


# ---- real processes

def test_real_twistd_refuses_a_setting_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run([twistd(), "-n", "p2pnode", "--id", "1", "--set", "CHUNK_PIECES_SIZE=99999"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", f"twistd p2pnode: error: {CHUNK_TOO_BIG}\n")
    assert sorted(os.listdir(tmp_path)) == []  # nothing started: no log, no pid file, no node folder

    done = subprocess.run([twistd(), "-n", "p2ptracker", "--tracker", "nohost"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        "twistd p2ptracker: error: bad value for TRACKER_ADDR: 'nohost' (expected HOST:PORT, e.g. 192.0.2.10:12345)\n"
    )


def test_real_twistd_still_shows_usage_for_an_unknown_option(tmp_path: Path) -> None:
    done = subprocess.run([twistd(), "-n", "p2pnode", "--id", "1", "--nope"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "--log-level" in done.stdout and done.stdout.rstrip().endswith("option --nope not recognized")


def _read_until(proc: subprocess.Popen[bytes], needle: str, seen: bytearray, timeout: float = 30.0) -> list[str]:
    """The node's stdout lines, once one holding *needle* has arrived (waiting for it, not for a time)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        got = seen.decode(errors="replace").splitlines()
        if any(needle in line for line in got):
            return got
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(proc.stdout.fileno(), 65536) if ready else b""
        if not chunk:
            pytest.fail(f"no {needle!r} from the node; it said:\n{seen.decode(errors='replace')}")
        seen.extend(chunk)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short folder: pytest's tmp_path can be longer than a UNIX socket path allows."""
    path = Path(tempfile.mkdtemp(prefix="p2ptw", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_help_typed_on_a_foreground_node(short_dir: Path) -> None:
    """No tracker is running: help and a typo are answered by the node itself, at once."""
    node = subprocess.Popen(
        [twistd(), "-n", "--pidfile=", "p2pnode", "--id", "1", "--tracker", f"127.0.0.1:{free_port()}"],
        cwd=short_dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        assert node.stdin is not None
        seen = bytearray()
        node.stdin.write(b"help\n")
        node.stdin.flush()
        out = _read_until(node, "  help                                this list", seen)
        first = out.index("OK: commands, one a line:")
        # The list's own lines come together, in order (log lines may come before or after them).
        assert out[first + 1 : first + len(HELP_TEXT.splitlines())] == HELP_TEXT.splitlines()[1:]
        node.stdin.write(b"downlaod x.torrent\n")
        node.stdin.flush()
        _read_until(node, "ERROR: unknown command 'downlaod': did you mean 'torrent -setMode download x.torrent'?", seen)
        assert node.poll() is None
    finally:
        if node.poll() is None:
            node.send_signal(signal.SIGTERM)
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
