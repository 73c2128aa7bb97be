"""Only the node's own user can command it (issue 3, item 19).

A real daemonised node (``twistd`` without ``-n``): its control socket has
mode 600, a client running as another user (``setpriv`` to nobody) is refused
with "permission denied", and the process listens on no TCP port.  Then the
second and third lines of defence on their own: endpoints others could reach
are refused at start, and a connection from another user is refused by the
node even where the socket's permissions would let it in.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.utils import getProcessOutputAndValue
from zope.interface import implementer

from daemonkit import end_process, pid_alive
from p2ptorrent.commands import ControlError, default_control_endpoint
from p2ptorrent.config import Config
from p2ptorrent.node import access
from p2ptorrent.node.access import check_control_endpoint, is_loopback
from p2ptorrent.node.control import ControlFactory, INodeCommands
from p2ptorrent.procs import find_script, free_port, wait_for

NOBODY = 65534
SETPRIV = shutil.which("setpriv")
SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else None
as_another_user = pytest.mark.skipif(
    os.geteuid() != 0 or not SETPRIV or not SYSTEM_PYTHON,
    reason="needs root, setpriv and /usr/bin/python3 to run a client as another user",
)

#: A control client with nothing but the standard library, so that any user can run it:
#: connects to argv[1] (a path, or host:port), sends a status command, prints what happens.
CLIENT = r"""
import json, socket, sys
target = sys.argv[1]
try:
    if target.startswith("/"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(target)
    else:
        host, port = target.rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=10)
    s.settimeout(10)
    s.sendall(b"torrent -setMode status\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    print(json.dumps({"reply": data.decode("utf-8", "replace")}))
except OSError as e:
    print(json.dumps({"errno": e.errno, "error": str(e)}))
"""


def as_nobody(*argv: str) -> list[str]:
    assert SETPRIV is not None
    return [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]


def client_outcome(stdout: bytes | str) -> dict[str, Any]:
    text = stdout.decode() if isinstance(stdout, bytes) else stdout
    return json.loads(text.strip().splitlines()[-1])


# ---- a real daemonised node

@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder with a short path (UNIX socket paths are limited to 107 bytes) that other users may enter."""
    path = Path(tempfile.mkdtemp(prefix="p2pctl-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(short_dir: Path) -> Iterator[tuple[int, Path]]:
    """`twistd --pidfile ... p2pnode --id 1` as a real daemon; (its pid, its node folder).  Stopped at teardown."""
    twistd = find_script("twistd", search_path=False)
    if twistd is None:
        pytest.skip("twistd is not installed beside this Python")
    pidfile = short_dir / "node.pid"
    started = subprocess.run(
        [twistd, "--pidfile", str(pidfile), "--logfile", str(short_dir / "twistd.log"),
         "p2pnode", "--id", "1", "--interface", "127.0.0.1", "--tracker", f"127.0.0.1:{free_port()}",
         "--node-files-dir", str(short_dir / "nf"), "--logs-dir", str(short_dir / "logs")],
        cwd=short_dir, capture_output=True, text=True, timeout=30,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    pid = wait_for(lambda: pidfile.exists() and int(pidfile.read_text().strip() or 0), "the node's pid file", fail=pytest.fail)
    folder = short_dir / "nf" / "1"
    try:
        wait_for(lambda: (folder / ".control.sock").exists(), "the control socket", fail=pytest.fail,
                 alive=lambda: None if pid_alive(pid) else pytest.fail((short_dir / "twistd.log").read_text()))
        yield pid, folder
    finally:
        if pid_alive(pid):
            end_process(pid, grace=15)


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def proc_net(table: str) -> list[list[str]]:
    try:
        with open(f"/proc/net/{table}") as f:
            return [line.split() for line in f.read().splitlines()[1:]]
    except FileNotFoundError:
        return []


def test_daemonised_node_takes_commands_from_its_user_only(daemon: tuple[int, Path]) -> None:
    pid, folder = daemon
    path = folder / ".control.sock"
    info = os.stat(path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600, oct(info.st_mode)
    assert info.st_uid == os.geteuid()

    # Its own user commands it.
    mine = subprocess.run([sys.executable, "-c", CLIENT, str(path)], capture_output=True, text=True, timeout=30)
    reply = json.loads(client_outcome(mine.stdout)["reply"].splitlines()[-1])
    assert reply["ok"] is True and reply["result"]["node_id"] == 1

    # The node listens on no TCP port: its sockets are its UDP port and its control socket.
    inodes = socket_inodes(pid)
    listening = [row for t in ("tcp", "tcp6") for row in proc_net(t) if row[3] == "0A" and int(row[9]) in inodes]
    assert listening == [], listening
    assert any(int(row[9]) in inodes for t in ("udp", "udp6") for row in proc_net(t))  # the check sees its sockets
    assert any(row[-1] == str(path) and int(row[6]) in inodes for row in proc_net("unix"))


@as_another_user
def test_another_user_is_refused_by_the_socket_mode(daemon: tuple[int, Path]) -> None:
    pid, folder = daemon
    path = folder / ".control.sock"
    # Let anyone reach the socket file, so that its own mode is what stops them.
    for part in (folder.parent, folder):
        part.chmod(0o755)
    assert subprocess.run(as_nobody(SYSTEM_PYTHON, "-c", f"import os; os.stat({str(path)!r})")).returncode == 0  # type: ignore[arg-type]
    theirs = subprocess.run(as_nobody(SYSTEM_PYTHON, "-c", CLIENT, str(path)), capture_output=True, text=True, timeout=30)  # type: ignore[arg-type]
    outcome = client_outcome(theirs.stdout)
    assert outcome.get("errno") == 13 and "Permission denied" in outcome["error"], outcome
    assert pid_alive(pid)


# ---- refused at start: endpoints others could reach

@pytest.mark.parametrize(
    "description, expected",
    [
        ("unix:address=/run/n1.sock:mode=600:lockfile=0", "unix:address=/run/n1.sock:mode=600:lockfile=0"),
        ("unix:address=/run/n1.sock", "unix:address=/run/n1.sock:mode=600"),
        ("unix:/run/n1.sock:mode=700", "unix:/run/n1.sock:mode=700"),
        ("tcp:7000:interface=127.0.0.1", "tcp:7000:interface=127.0.0.1"),
        ("tcp:port=7000:interface=127.5.0.1", "tcp:port=7000:interface=127.5.0.1"),
        ("tcp6:7000:interface=\\:\\:1", "tcp6:7000:interface=\\:\\:1"),
        ("tcp:7000:interface=localhost", "tcp:7000:interface=localhost"),
    ],
)
def test_endpoints_only_the_user_can_reach_are_accepted(description: str, expected: str) -> None:
    assert check_control_endpoint(description) == expected


@pytest.mark.parametrize(
    "description, reason",
    [
        ("tcp:7000", "listens on every address"),
        ("tcp:7000:interface=0.0.0.0", "listens on every address"),
        ("tcp6:7000:interface=\\:\\:", "listens on every address"),
        ("tcp:7000:interface=192.0.2.7", "listens on 192.0.2.7, which other hosts can reach"),
        ("tcp6:7000:interface=2001\\:db8\\:\\:1", "which other hosts can reach"),
        ("unix:address=/run/n1.sock:mode=666", "would let other users command the node \\(mode 666\\)"),
        ("unix:address=/run/n1.sock:mode=660", "mode 660"),
        ("unix:address=/run/n1.sock:mode=rw", "mode must be octal"),
        ("unix:address=\0abstract", "abstract UNIX socket"),
        ("ssl:7000", "only unix: sockets and tcp: on a loopback interface"),
        ("systemd:domain=UNIX:index=0", "only unix: sockets"),
    ],
)
def test_endpoints_others_could_reach_are_refused(description: str, reason: str) -> None:
    with pytest.raises(ControlError, match=reason) as caught:
        check_control_endpoint(description)
    assert "CONTROL_ALLOW_REMOTE=1" in str(caught.value) or "octal" in reason
    if "octal" not in reason:
        assert check_control_endpoint(description, allow_remote=True) == description


def test_the_default_endpoint_passes_the_check(tmp_path: Path) -> None:
    settings = Config(node_files_dir=str(tmp_path))
    default = default_control_endpoint(settings, 3)
    assert check_control_endpoint(default) == default and default.endswith(":mode=600:lockfile=0")
    assert Config().CONTROL_ALLOW_REMOTE == 0


def test_loopback_addresses() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.0.2.1", "10.0.0.1", "::ffff:10.0.0.1", "example.com", ""):
        assert not is_loopback(host), host


# ---- refused when connecting: the node checks who is at the other end

@implementer(INodeCommands)
class Node:
    """Records commands; answers status."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def send(self, path: str) -> Deferred[str]:
        self.calls.append("send")
        return succeed("sent")

    def download(self, torrent_path: str, progress: Any) -> Deferred[str]:
        self.calls.append("download")
        return succeed("done")

    def status(self) -> dict[str, Any]:
        self.calls.append("status")
        return {"node_id": 1}

    def exit(self) -> Deferred[None]:
        self.calls.append("exit")
        return succeed(None)


def test_another_host_is_refused_before_any_reply() -> None:
    factory = ControlFactory(Node(), reactor)
    assert factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 40000)) is None
    assert factory.buildProtocol(IPv6Address("TCP", "2001:db8::7", 40000)) is None
    assert factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000)) is not None
    assert factory.buildProtocol(UNIXAddress(None)) is not None
    assert ControlFactory(Node(), reactor, allow_remote=True).buildProtocol(IPv4Address("TCP", "192.0.2.7", 1)) is not None


def test_tcp_peer_uid_from_the_kernel_table(tmp_path: Path) -> None:
    """The /proc/net/tcp reading: the socket whose local end is the peer and remote end is us."""
    me = os.geteuid()
    (tmp_path / "tcp").write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:1F40 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 1 1\n"
        "   1: 0100007F:9C40 0100007F:1F40 01 00000000:00000000 00:00000000 00000000  1234        0 2 1\n"
    )
    (tmp_path / "tcp6").write_text("  sl  local_address remote_address st ...\n")
    if sys.byteorder == "little":
        assert access._tcp_peer_uid("127.0.0.1", 0x9C40, "127.0.0.1", 0x1F40, proc=str(tmp_path)) == 1234
        assert access._tcp_peer_uid("127.0.0.1", 0x1F40, "127.0.0.1", 0x9C40, proc=str(tmp_path)) == 0
        assert access._tcp_peer_uid("127.0.0.1", 1, "127.0.0.1", 0x1F40, proc=str(tmp_path)) is None
    # And on the real table: our own connection to a listening socket.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname())
    try:
        peer = client.getsockname()
        assert access._tcp_peer_uid(peer[0], peer[1], *server.getsockname()) == me
    finally:
        client.close()
        server.close()


async def _listen(description: str, node: Node) -> Any:
    return await serverFromString(reactor, description).listen(ControlFactory(node, reactor))


@as_another_user
@pytest_twisted.ensureDeferred
async def test_another_user_is_refused_even_through_an_open_socket(short_dir: Path) -> None:
    """A socket with mode 666 (CONTROL_ALLOW_REMOTE's doing, or a mistake): the node itself still says no."""
    node = Node()
    path = short_dir / "open.sock"
    port = await _listen(f"unix:address={path}:mode=666:lockfile=0", node)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
        out, err, code = await getProcessOutputAndValue(SETPRIV, as_nobody(SYSTEM_PYTHON, "-c", CLIENT, str(path))[1:], env=os.environ)  # type: ignore[arg-type]
        reply = json.loads(client_outcome(out)["reply"].splitlines()[-1])
        assert reply == {"ok": False, "error": f"refused: user {NOBODY} is not the node's user ({os.geteuid()})"}
        assert node.calls == []
        out, err, code = await getProcessOutputAndValue(SYSTEM_PYTHON, ["-c", CLIENT, str(path)], env=os.environ)  # type: ignore[arg-type]
        assert json.loads(client_outcome(out)["reply"].splitlines()[-1])["ok"] is True
        assert node.calls == ["status"]
    finally:
        await port.stopListening()


@as_another_user
@pytest_twisted.ensureDeferred
async def test_loopback_tcp_takes_commands_from_the_same_user_only() -> None:
    """tcp: on 127.0.0.1 is accepted at start, but any local user can reach it: the node checks the uid."""
    node = Node()
    port = await _listen("tcp:0:interface=127.0.0.1", node)
    target = f"127.0.0.1:{port.getHost().port}"
    try:
        out, err, code = await getProcessOutputAndValue(SETPRIV, as_nobody(SYSTEM_PYTHON, "-c", CLIENT, target)[1:], env=os.environ)  # type: ignore[arg-type]
        reply = json.loads(client_outcome(out)["reply"].splitlines()[-1])
        assert reply == {"ok": False, "error": f"refused: user {NOBODY} is not the node's user ({os.geteuid()})"}
        assert node.calls == []
        out, err, code = await getProcessOutputAndValue(SYSTEM_PYTHON, ["-c", CLIENT, target], env=os.environ)  # type: ignore[arg-type]
        assert json.loads(client_outcome(out)["reply"].splitlines()[-1]) == {"ok": True, "result": {"node_id": 1}}
        assert node.calls == ["status"]
    finally:
        await port.stopListening()
