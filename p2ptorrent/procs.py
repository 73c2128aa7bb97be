"""Run the tracker and nodes as real processes: `twistd -n ...` and the `p2ptorrent` command.

The demo, the black-box tests and the loopback benchmark all start what a
person would start by hand and judge only what the processes say and write;
this module is the one copy of the plumbing they share.  Failures go through
a ``fail`` callable (default: raise :class:`RuntimeError`), so the tests can
pass ``pytest.fail`` and report a clean failure instead of a traceback.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, NoReturn, Sequence, TypeVar

from p2ptorrent.config import MIB

T = TypeVar("T")
Fail = Callable[[str], NoReturn]


def raise_error(message: str) -> NoReturn:
    """The default ``fail``: scripts catch RuntimeError and print the message."""
    raise RuntimeError(message)


def find_script(name: str, search_path: bool = True) -> str | None:
    """A console script (twistd, p2ptorrent) beside this Python, so we run the same installation.

    With *search_path*, fall back to $PATH; the tests do not, so they never run
    some other installation's twistd by accident.
    """
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    return shutil.which(name) if search_path else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now, for a tracker of our own."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def connects(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections at host:port (a started daemon is listening)."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def redis_server_argv(binary: str, port: int, folder: Path, fsync: str = "always") -> list[str]:
    """A redis-server of our own on 127.0.0.1:*port*, its append-only file and log in *folder* (no RDB)."""
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
            "--appendfsync", fsync, "--dir", str(folder), "--logfile", str(folder / "redis.log"), "--daemonize", "no"]


def wait_redis_server(proc: subprocess.Popen[bytes], port: int, folder: Path, timeout: float = 20.0) -> None:
    """Until the redis-server started with :func:`redis_server_argv` answers a PING; RuntimeError (with
    its log) if it ended or did not answer in time."""
    from p2ptorrent.tracker.redis_store import RedisAddress, ping

    deadline = time.monotonic() + timeout
    while True:
        try:
            ping(RedisAddress("127.0.0.1", port, 0), timeout=1.0)
            return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            log = folder / "redis.log"
            raise RuntimeError(f"redis-server did not start: {log.read_text()[-2000:] if log.exists() else ''}")
        time.sleep(0.02)


def tcp_listening(pid: int, port: int) -> bool:
    """Whether a socket listens on TCP *port* in the network namespace of process *pid*.

    Read from /proc/PID/net/tcp, so it answers for a daemon inside a network namespace
    (`ip netns exec`) that this process cannot connect to, without starting anything there.
    """
    try:
        rows = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    suffix = f":{port:04X}"
    return any(f[1].endswith(suffix) and f[3] == "0A" for f in (row.split() for row in rows) if len(f) > 3)  # 0A: LISTEN


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read a MiB at a time so large payloads need no large memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MIB):
            h.update(block)
    return h.hexdigest()


def wait_for(
    check: Callable[[], T], what: str, timeout: float = 30.0,
    alive: Callable[[], None] | None = None, fail: Fail = raise_error,
) -> T:
    """Poll *check* every 50 ms until it returns something true, and return that.

    Processes start asynchronously, so every "is it up yet" is a poll.  *alive*
    runs before each poll (to fail fast when the awaited process died); after
    *timeout* seconds, ``fail("timed out after ... waiting for <what>")``.
    """
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class Daemons:
    """`twistd -n` processes run in one folder, commanded with `p2ptorrent`; :meth:`stop` ends them all.

    Each process writes its output to ``<root>/<name>.out`` (shown when it dies),
    and nodes keep their files in ``<root>/node_files``.
    """

    def __init__(self, root: Path, *, fail: Fail = raise_error, search_path: bool = True, ctl_timeout: float = 60.0) -> None:
        self.root = root
        self.nodes_dir = root / "node_files"
        self.fail = fail
        self.search_path = search_path
        self.ctl_timeout = ctl_timeout
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def script(self, name: str) -> str:
        """The path of console script *name*; fails, saying how to install it, when there is none."""
        found = find_script(name, self.search_path)
        if not found:
            where = "beside " + sys.executable + (" or on PATH" if self.search_path else "")
            self.fail(f"cannot find the {name} command {where}: install p2ptorrent in this Python"
                      " (pip install -e . --config-settings editable_mode=compat)")
        return found

    def start(self, name: str, args: Sequence[str], wrapper: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        """Start `twistd -n --pidfile= ARGS` (after *wrapper*, e.g. `ip netns exec NS`, which must exec it)."""
        with open(self.root / f"{name}.out", "wb") as out:
            proc = subprocess.Popen(
                [*wrapper, self.script("twistd"), "-n", "--pidfile=", *args],
                cwd=self.root, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )
        self.procs[name] = proc
        return proc

    def tail(self, name: str, lines: int = 30) -> str:
        """The last lines a process printed: what explains why it ended."""
        path = self.root / f"{name}.out"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self, *names: str) -> None:
        """Fail, with its last output, if any of *names* (default: every process) has ended."""
        for name in names or tuple(self.procs):
            proc = self.procs[name]
            if proc.poll() is not None:
                self.fail(f"{name} ended with status {proc.returncode}:\n{self.tail(name)}")

    def ctl(self, node: int, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """Run `p2ptorrent --node N ARGS` against a node's control socket; the caller judges the result."""
        return subprocess.run(
            [self.script("p2ptorrent"), "--node", str(node), "--node-files-dir", str(self.nodes_dir), *args],
            cwd=self.root, capture_output=True, text=True, stdin=subprocess.DEVNULL,
            timeout=self.ctl_timeout if timeout is None else timeout,
        )

    def ok(self, node: int, *args: str, timeout: float | None = None) -> str:
        """:meth:`ctl` that must exit 0: its stdout, or ``fail`` with what it printed."""
        result = self.ctl(node, *args, timeout=timeout)
        if result.returncode != 0:
            self.fail(f"p2ptorrent --node {node} {' '.join(args)} exited {result.returncode}:\n"
                      f"stdout: {result.stdout.strip()}\nstderr: {result.stderr.strip()}")
        return result.stdout

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every process still running, give each *grace* seconds, then SIGKILL it."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(grace)
