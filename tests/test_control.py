"""Tests for p2ptorrent.node.control: grammar, dispatch, stdin and the control socket protocol."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from p2ptorrent.commands import (
    HELP_TEXT,
    Command,
    CommandError,
    ControlError,
    client_endpoint,
    control_socket_path,
    default_control_endpoint,
    parse_command,
)
from p2ptorrent.config import Config
from p2ptorrent.node.access import clear_stale_socket
from p2ptorrent.node.control import (
    MAX_LINE,
    ControlFactory,
    ControlProtocol,
    INodeCommands,
    StdinControl,
    dispatch,
    format_progress,
)


@implementer(INodeCommands)
class RecordingNode:
    """A fake node: records calls and hands out Deferreds the test fires."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.pending: list[Deferred[Any]] = []
        self.progress: Any = None
        self.status_value: dict[str, Any] = {"id": 1, "address": "127.0.0.1:5000", "seeding": ["a.bin"], "downloads": []}

    def _pending(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append(d)
        return d

    def send(self, path: str) -> Deferred[str]:
        self.calls.append(("send", path))
        return self._pending()

    def download(self, torrent_path: str, progress: Any) -> Deferred[str]:
        self.calls.append(("download", torrent_path))
        self.progress = progress
        return self._pending()

    def status(self) -> dict[str, Any]:
        self.calls.append(("status",))
        return self.status_value

    def exit(self) -> Deferred[None]:
        self.calls.append(("exit",))
        return self._pending()

    def limit(self, up: int | None, down: int | None) -> str:
        self.calls.append(("limit", up, down))
        return f"up {up}, down {down}"


@pytest.fixture
def node() -> RecordingNode:
    n = RecordingNode()
    verifyObject(INodeCommands, n)
    return n


# ---- grammar

@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("torrent -setMode send big.bin", Command("send", "big.bin")),
        ("torrent -setMode download /x/big.bin.torrent", Command("download", "/x/big.bin.torrent")),
        ("torrent -setMode exit", Command("exit")),
        ("torrent -setMode status", Command("status")),
        ("  torrent   -setMode\tsend   my file.bin  \r\n", Command("send", "my file.bin")),
        ("torrent -setMode send /a b/c d", Command("send", "/a b/c d")),
        ("torrent -setMode send 'a b '", Command("send", "a b ")),
        ('torrent -setMode send "it\'s.bin"', Command("send", "it's.bin")),
        ("torrent -setMode send it's.bin", Command("send", "it's.bin")),
        ("Torrent -SETMODE Download x.torrent", Command("download", "x.torrent")),
        ("help", Command("help")),
        ("  Help \r\n", Command("help")),
        ("torrent -setMode help", Command("help")),
    ],
)
def test_parse_good_lines(line: str, expected: Command) -> None:
    assert parse_command(line) == expected


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("", "empty command"),
        ("   \t ", "empty command"),
        ("hello", "not a command"),
        ("copy big.bin", "not a command"),
        ("torrent -setMode help me", "help takes no argument"),
        ("torrent", 'expected "-setMode"'),
        ("torrent send x", 'expected "-setMode"'),
        ("torrent -setMode", "missing mode"),
        ("torrent -setMode fly", "unknown mode 'fly'"),
        ("torrent -setMode send", "send needs a file"),
        ("torrent -setMode download   ", "download needs a torrent file"),
        ("torrent -setMode exit now", "exit takes no argument"),
        ("torrent -setMode status all", "status takes no argument"),
        ("torrent -setMode send 'a' 'b'", "quote the whole path"),
        ("torrent -setMode send 'unterminated", "bad quoting"),
        ("torrent -setMode send ''", "non-empty path"),
    ],
)
def test_parse_bad_lines(line: str, why: str) -> None:
    with pytest.raises(CommandError) as e:
        parse_command(line)
    assert why in str(e.value)
    assert "usage: torrent -setMode send <file>" in str(e.value)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("torrent -setMode downlaod x.torrent", "unknown mode 'downlaod': did you mean 'download'?"),
        ("torrent -setMode Stauts", "unknown mode 'Stauts': did you mean 'status'?"),
        ("torrent -setMode hlep", "unknown mode 'hlep': did you mean 'help'?"),
        ("downlaod x.torrent", "unknown command 'downlaod': did you mean 'torrent -setMode download x.torrent'?"),
        ("exti", "unknown command 'exti': did you mean 'torrent -setMode exit'?"),
        ("hlep", "unknown command 'hlep': did you mean 'help'?"),
        ("torrnet -setMode send a b", "unknown command 'torrnet': did you mean 'torrent -setMode send a b'?"),
        ("send big.bin", 'commands start with "torrent -setMode": did you mean \'torrent -setMode send big.bin\'?'),
        ("status", 'commands start with "torrent -setMode": did you mean \'torrent -setMode status\'?'),
    ],
)
def test_typos_get_a_suggestion(line: str, message: str) -> None:
    with pytest.raises(CommandError) as e:
        parse_command(line)
    assert str(e.value) == message


@given(st.sampled_from(["send", "download"]), st.text(min_size=1).filter(lambda s: "\n" not in s and "\r" not in s))
def test_line_round_trips(verb: str, path: str) -> None:
    assert parse_command(Command(verb, path).line()) == Command(verb, path)


def test_line_without_argument_and_with_newline() -> None:
    assert Command("exit").line() == "torrent -setMode exit"
    with pytest.raises(CommandError, match="line breaks"):
        Command("send", "a\nb").line()


@given(st.text(max_size=200))
def test_parse_never_raises_anything_else(line: str) -> None:
    try:
        command = parse_command(line)
    except CommandError:
        return
    assert command.verb in ("send", "download", "exit", "status", "help")


# ---- dispatch

def test_dispatch(node: RecordingNode) -> None:
    seen: list[dict[str, Any]] = []
    d = dispatch(node, Command("send", "/a b"), seen.append)
    node.pending[0].callback("seeding a b")
    assert d.result == "seeding a b"

    d = dispatch(node, Command("download", "/t.torrent"), seen.append)
    node.progress({"done": 1, "total": 2})
    node.pending[1].callback("downloaded")
    assert d.result == "downloaded"
    assert seen == [{"done": 1, "total": 2}]

    d = dispatch(node, Command("status"), seen.append)
    assert d.result == node.status_value

    d = dispatch(node, Command("exit"), seen.append)
    node.pending[2].callback(None)
    assert "stopping" in str(d.result)
    assert node.calls == [("send", "/a b"), ("download", "/t.torrent"), ("status",), ("exit",)]


def test_dispatch_limit_reads_the_sizes_and_refuses_a_bad_one(node: RecordingNode) -> None:
    d = dispatch(node, Command("limit", "up=20MiB down=0"), lambda p: None)
    assert d.result == "up 20971520, down 0"
    assert dispatch(node, Command("limit"), lambda p: None).result == "up None, down None"
    failures: list[Any] = []
    dispatch(node, Command("limit", "up=fast"), lambda p: None).addErrback(failures.append)
    assert "20MiB" in str(failures[0].value)
    assert node.calls == [("limit", 20971520, 0), ("limit", None, None)]


def test_dispatch_help_leaves_the_node_alone(node: RecordingNode) -> None:
    d = dispatch(node, Command("help"), lambda p: None)
    assert d.result == HELP_TEXT
    assert node.calls == []


def test_dispatch_turns_exceptions_into_failures(node: RecordingNode) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("status is broken")

    node.status = broken  # type: ignore[method-assign]
    d = dispatch(node, Command("status"), lambda p: None)
    failure = None

    def keep(f: Any) -> None:
        nonlocal failure
        failure = f

    d.addErrback(keep)
    assert failure is not None and str(failure.value) == "status is broken"


def test_format_progress() -> None:
    p = {"done": 12 * 1024 * 1024, "total": 100 * 1024 * 1024, "rate": 4.5 * 1024 * 1024, "peers": 3}
    assert format_progress(p) == "12.0 MiB of 100.0 MiB (12%) at 4.5 MiB/s, 3 peers"
    assert format_progress({"done": 10, "peers": 1}) == "10 B, 1 peer"
    assert format_progress({"done": "x", "total": 0, "rate": None, "peers": True}) == "working"
    assert format_progress({}) == "working"


# ---- stdin

def stdin_control(node: RecordingNode) -> tuple[StdinControl, StringTransport, Clock]:
    clock = Clock()
    proto = StdinControl(node, clock)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, clock


def lines(transport: StringTransport) -> list[str]:
    out = transport.value().decode().splitlines()
    transport.clear()
    return out


def test_stdin_send(node: RecordingNode) -> None:
    proto, transport, _ = stdin_control(node)
    proto.dataReceived(b"torrent -setMode send /data/big file.bin\n")
    assert node.calls == [("send", "/data/big file.bin")]
    assert lines(transport) == []
    node.pending[0].callback("seeding big file.bin")
    assert lines(transport) == ["OK: seeding big file.bin"]


def test_stdin_errors_and_blank_lines(node: RecordingNode) -> None:
    proto, transport, _ = stdin_control(node)
    proto.dataReceived(b"\n   \n\r\n")
    assert lines(transport) == []
    proto.dataReceived(b"torrent -setMode fly\n")
    [line] = lines(transport)
    assert line.startswith("ERROR: unknown mode 'fly'; usage:")
    proto.dataReceived(b"torrent -setMode send x\n")
    node.pending[0].errback(FileNotFoundError(2, "No such file or directory", "x"))
    assert lines(transport) == ["ERROR: [Errno 2] No such file or directory: 'x'"]
    proto.dataReceived(b"torrent -setMode send y\n")
    node.pending[1].errback(RuntimeError("tracker unreachable\nsecond line"))
    assert lines(transport) == ["ERROR: tracker unreachable second line"]


def test_stdin_limit(node: RecordingNode) -> None:
    proto, transport, _ = stdin_control(node)
    proto.dataReceived(b"torrent -setMode limit up=20MiB down=0\n")
    assert lines(transport) == ["OK: up 20971520, down 0"]
    proto.dataReceived(b"torrent -setMode limit up=quick\n")
    [line] = lines(transport)
    assert line.startswith("ERROR: limit up=: expected a size such as 20MiB")
    assert node.calls == [("limit", 20971520, 0)]


def test_stdin_help(node: RecordingNode) -> None:
    """The command list on its own lines, answered by the front end: the node (and so the tracker) never hears of it."""
    proto, transport, _ = stdin_control(node)
    proto.dataReceived(b"help\n")
    out = lines(transport)
    assert out == ["OK: commands, one a line:", *HELP_TEXT.splitlines()[1:]]
    assert out[1] == ("  torrent -setMode send FILE|DIR      seed a file or a folder: write its .torrent in the node's"
                      " folder, announce it")
    assert "  help                                this list" in out
    proto.dataReceived(b"torrent -setMode HELP\r\n")
    assert lines(transport) == out
    assert node.calls == []


def test_stdin_typos(node: RecordingNode) -> None:
    proto, transport, _ = stdin_control(node)
    proto.dataReceived(b"downlaod big.bin.torrent\ntorrent -setMode downlaod big.bin.torrent\n")
    assert lines(transport) == [
        "ERROR: unknown command 'downlaod': did you mean 'torrent -setMode download big.bin.torrent'?",
        "ERROR: unknown mode 'downlaod': did you mean 'download'?",
    ]
    assert node.calls == []


def test_stdin_download_progress_once_per_second(node: RecordingNode) -> None:
    proto, transport, clock = stdin_control(node)
    proto.dataReceived(b"torrent -setMode download /t/big.bin.torrent\n")
    for i in range(10):
        node.progress({"done": i * 1024, "total": 10240, "rate": 1024, "peers": 2})
        clock.advance(0.25)
    out = lines(transport)
    assert out == [
        "download big.bin.torrent: 0 B of 10.0 KiB (0%) at 1.0 KiB/s, 2 peers",
        "download big.bin.torrent: 4.0 KiB of 10.0 KiB (40%) at 1.0 KiB/s, 2 peers",
        "download big.bin.torrent: 8.0 KiB of 10.0 KiB (80%) at 1.0 KiB/s, 2 peers",
    ]
    node.pending[0].callback("downloaded big.bin")
    assert lines(transport) == ["OK: downloaded big.bin"]


def test_stdin_status_during_download(node: RecordingNode) -> None:
    proto, transport, _ = stdin_control(node)
    proto.dataReceived(b"torrent -setMode download a.torrent\ntorrent -setMode status\n")
    table = lines(transport)  # the node's summary, as `p2ptorrent status` draws it (its JSON: the control socket)
    assert table[0].startswith("OK: Node ") and any(line.startswith("Tracker ") for line in table), table
    node.pending[0].callback("done")
    assert lines(transport) == ["OK: done"]


def test_stdin_eof_keeps_node_running(node: RecordingNode) -> None:
    proto, transport, _ = stdin_control(node)
    assert IHalfCloseableProtocol.providedBy(proto)
    proto.dataReceived(b"torrent -setMode send a\n")
    proto.dataReceived(b"torrent -setMode status")  # no final newline
    proto.readConnectionLost()
    assert not transport.disconnecting
    assert node.calls == [("send", "a"), ("status",)]
    node.pending[0].callback("seeding a")
    assert lines(transport)[-1] == "OK: seeding a"


def test_stdin_long_line(node: RecordingNode) -> None:
    proto, transport, clock = stdin_control(node)
    # In pieces, the way a terminal delivers it.
    proto.dataReceived(b"torrent -setMode send " + b"x" * MAX_LINE)
    proto.dataReceived(b"y" * MAX_LINE)
    proto.dataReceived(b"zzz\ntorrent -setMode status\n")
    clock.advance(0)
    out = lines(transport)
    assert out[0].startswith("ERROR: line too long")
    assert out[1].startswith("OK: Node ")  # the status table's first line
    assert node.calls == [("status",)]
    # All at once, with a command after it.
    proto.dataReceived(b"w" * (MAX_LINE + 10) + b"\ntorrent -setMode status\n")
    clock.advance(0)
    out = lines(transport)
    assert [o[:8] for o in out[:2]] == ["ERROR: l", "OK: Node"]
    assert not transport.disconnecting


# ---- the control socket protocol

def control(node: RecordingNode, clock: Clock | None = None) -> tuple[ControlProtocol, StringTransport, Clock]:
    clock = clock or Clock()
    factory = ControlFactory(node, clock, request_timeout=30)
    proto = factory.buildProtocol(None)
    assert isinstance(proto, ControlProtocol)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, clock


def replies(transport: StringTransport) -> list[dict[str, Any]]:
    return [json.loads(line) for line in transport.value().splitlines()]


def test_control_download_streams_progress_then_result(node: RecordingNode) -> None:
    proto, transport, clock = control(node)
    proto.dataReceived(b"torrent -setMode download /t/a.torrent\n")
    assert node.calls == [("download", "/t/a.torrent")]
    for i in range(20):
        node.progress({"done": i, "total": 20, "rate": 5.0, "peers": 1})
        clock.advance(1 / 16)  # exact in binary, unlike 0.05
    node.pending[0].callback("downloaded a.bin")
    got = replies(transport)
    progress = [r["progress"] for r in got[:-1]]
    assert [p["done"] for p in progress] == [0, 4, 8, 12, 16]  # at most 5 a second
    assert got[-1] == {"ok": True, "result": "downloaded a.bin"}
    assert transport.disconnecting


def test_control_failure(node: RecordingNode) -> None:
    proto, transport, _ = control(node)
    proto.dataReceived(b"torrent -setMode send /nope\r\n")
    assert node.calls == [("send", "/nope")]
    node.pending[0].errback(ValueError("cannot read /nope: No such file or directory"))
    assert replies(transport) == [{"ok": False, "error": "cannot read /nope: No such file or directory"}]
    assert transport.disconnecting


def test_control_status(node: RecordingNode) -> None:
    node.status_value = {"id": 1, "path": Path("/x"), "seeding": []}
    proto, transport, _ = control(node)
    proto.dataReceived(b"torrent -setMode status\n")
    assert replies(transport) == [{"ok": True, "result": {"id": 1, "path": "/x", "seeding": []}}]


def test_control_help(node: RecordingNode) -> None:
    proto, transport, _ = control(node)
    proto.dataReceived(b"torrent -setMode help\n")
    assert replies(transport) == [{"ok": True, "result": HELP_TEXT}]
    assert node.calls == []


def test_control_result_that_cannot_be_encoded(node: RecordingNode) -> None:
    node.status_value = {"rate": float("nan")}
    proto, transport, _ = control(node)
    proto.dataReceived(b"torrent -setMode status\n")
    assert replies(transport) == [{"ok": False, "error": "the node's answer could not be encoded"}]


def test_control_exit(node: RecordingNode) -> None:
    proto, transport, _ = control(node)
    proto.dataReceived(b"torrent -setMode exit\n")
    node.pending[0].callback(None)
    [reply] = replies(transport)
    assert reply["ok"] is True and "stopping" in reply["result"]


@pytest.mark.parametrize(
    "junk",
    [b"hello\n", b"\n", b"\xff\xfe\x00garbage\n", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"torrent -setMode send\n"],
)
def test_control_junk(node: RecordingNode, junk: bytes) -> None:
    proto, transport, _ = control(node)
    proto.dataReceived(junk)
    [reply] = replies(transport)
    assert reply["ok"] is False and "usage:" in reply["error"]
    assert transport.disconnecting
    assert node.calls == []


def test_control_long_line(node: RecordingNode) -> None:
    proto, transport, _ = control(node)
    proto.dataReceived(b"torrent -setMode send " + b"x" * (MAX_LINE + 100))
    assert replies(transport) == [{"ok": False, "error": f"request line too long (over {MAX_LINE} bytes)"}]
    assert transport.disconnecting
    proto.dataReceived(b"more\n")
    assert node.calls == []


def test_control_only_one_request(node: RecordingNode) -> None:
    proto, transport, _ = control(node)
    proto.dataReceived(b"torrent -setMode status\ntorrent -setMode exit\n")
    assert node.calls == [("status",)]
    assert len(replies(transport)) == 1


def test_control_times_out(node: RecordingNode) -> None:
    proto, transport, clock = control(node)
    proto.dataReceived(b"torrent -set")
    clock.advance(29)
    assert transport.value() == b""
    clock.advance(2)
    assert replies(transport) == [{"ok": False, "error": "no request within 30 seconds"}]
    assert transport.disconnecting


def test_control_client_leaves_early(node: RecordingNode) -> None:
    proto, transport, clock = control(node)
    proto.dataReceived(b"torrent -setMode download a.torrent\n")
    proto.connectionLost(None)
    node.progress({"done": 1, "total": 2})
    node.pending[0].callback("done")
    assert transport.value() == b""
    assert clock.getDelayedCalls() == []


# ---- endpoints

def test_default_control_endpoint() -> None:
    settings = Config()
    desc = default_control_endpoint(settings, 3)
    assert desc == "unix:address=node_files/3/.control.sock:mode=600:lockfile=0"
    endpoint = serverFromString(MemoryReactor(), desc)
    assert endpoint._address == "node_files/3/.control.sock"  # type: ignore[attr-defined]
    assert endpoint._mode == 0o600  # type: ignore[attr-defined]
    assert client_endpoint(desc) == "unix:path=node_files/3/.control.sock"
    clientFromString(MemoryReactor(), client_endpoint(desc))


def test_default_control_endpoint_escapes() -> None:
    desc = default_control_endpoint(Config(node_files_dir="/tmp/a:b=c\\d"), 1)
    endpoint = serverFromString(MemoryReactor(), desc)
    assert endpoint._address == "/tmp/a:b=c\\d/1/.control.sock"  # type: ignore[attr-defined]
    assert control_socket_path(desc) == "/tmp/a:b=c\\d/1/.control.sock"
    assert control_socket_path(client_endpoint(desc)) == "/tmp/a:b=c\\d/1/.control.sock"


def test_default_control_endpoint_too_long() -> None:
    with pytest.raises(ControlError) as e:
        default_control_endpoint(Config(node_files_dir="/" + "d" * 100), 1)
    assert "--control" in str(e.value) and "longer than UNIX sockets allow" in str(e.value)


@pytest.mark.parametrize(
    ("server", "client"),
    [
        ("unix:/x/c.sock:mode=600", "unix:path=/x/c.sock"),
        ("unix:address=/x/c.sock:lockfile=1:backlog=5", "unix:path=/x/c.sock"),
        ("unix:path=/x/c.sock:timeout=5", "unix:path=/x/c.sock:timeout=5"),
        ("tcp:7000:interface=127.0.0.1", "tcp:host=127.0.0.1:port=7000"),
        ("tcp:port=7000", "tcp:host=127.0.0.1:port=7000"),
        ("tcp6:port=7000:interface=\\:\\:", "tcp:host=\\:\\:1:port=7000"),
        ("tcp:host=example.org:port=7000", "tcp:host=example.org:port=7000"),
    ],
)
def test_client_endpoint(server: str, client: str) -> None:
    assert client_endpoint(server) == client
    clientFromString(MemoryReactorClock(), client)


def test_client_endpoint_refuses_incomplete() -> None:
    with pytest.raises(ControlError, match="no path"):
        client_endpoint("unix:mode=600")
    with pytest.raises(ControlError, match="no port"):
        client_endpoint("tcp:interface=127.0.0.1")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: pytest's tmp_path can exceed AF_UNIX's 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="p2pc", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_clear_stale_socket(short_dir: Path) -> None:
    path = str(short_dir / "c.sock")
    desc = f"unix:path={path}:mode=600:lockfile=0"
    assert clear_stale_socket(desc) is False  # nothing there

    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(path)
    live.listen(1)
    try:
        assert clear_stale_socket(desc) is False  # a live node
        assert os.path.exists(path)
    finally:
        live.close()
    # Closed without unlinking: what a killed node leaves behind.
    assert os.path.exists(path)
    assert clear_stale_socket(desc) is True
    assert not os.path.exists(path)

    Path(path).write_text("not a socket")
    assert clear_stale_socket(desc) is False
    assert os.path.exists(path)
    assert clear_stale_socket("tcp:7000") is False


def test_factory_defaults_to_the_reactor(node: RecordingNode) -> None:
    from twisted.internet import reactor

    factory = ControlFactory(node)
    assert factory.clock is reactor
    assert factory.noisy is False


def test_dispatch_results_from_plain_values(node: RecordingNode) -> None:
    node.send = lambda path: succeed(f"seeding {path}")  # type: ignore[method-assign]
    node.download = lambda path, progress: fail(ValueError("bad torrent"))  # type: ignore[method-assign, assignment]
    assert dispatch(node, Command("send", "a"), lambda p: None).result == "seeding a"
    d = dispatch(node, Command("download", "t"), lambda p: None)
    errors: list[str] = []
    d.addErrback(lambda f: errors.append(str(f.value)))
    assert errors == ["bad torrent"]


def test_dispatch_refuses_malformed_commands(node: RecordingNode) -> None:
    errors: list[str] = []
    dispatch(node, Command("send"), lambda p: None).addErrback(lambda f: errors.append(str(f.value)))
    dispatch(node, Command("fly", "x"), lambda p: None).addErrback(lambda f: errors.append(str(f.value)))
    assert [e.split(";")[0] for e in errors] == ["send needs a path", "unknown mode 'fly'"]
    assert node.calls == []


STDIO_NODE = '''
from twisted.internet import reactor, stdio
from twisted.internet.defer import succeed
from zope.interface import implementer
from p2ptorrent.node.control import INodeCommands, StdinControl

@implementer(INodeCommands)
class Node:
    def send(self, path): return succeed("seeding " + path)
    def download(self, path, progress): return succeed("downloaded " + path)
    def status(self): return {"node_id": 1}
    def exit(self): return succeed(None)

proto = StdinControl(Node(), reactor)
stdio.StandardIO(proto)

def later():
    proto.sendLine(b"still running")  # stdout still works after stdin ended
    reactor.callLater(0.1, reactor.stop)

reactor.callLater(0.4, later)
reactor.run()
'''


@pytest.mark.parametrize(
    ("stdin", "expected"),
    [
        (None, ["still running"]),
        (b"torrent -setMode send a b\n\nbogus\ntorrent -setMode status", ["OK: seeding a b", "ERROR: not a command", "OK: Node ", "still running"]),
    ],
)
def test_real_stdin_end_keeps_running(tmp_path: Path, stdin: bytes | None, expected: list[str]) -> None:
    """With real StandardIO: end of input (or /dev/null) does not stop the node."""
    import subprocess
    import sys

    script = tmp_path / "node.py"
    script.write_text(STDIO_NODE)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    result = subprocess.run(
        [sys.executable, str(script)],
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        env=env,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    # Each answer's first line: status is a table, its rows on the lines after its "OK:" line.
    out = [line for line in result.stdout.decode().splitlines() if line.startswith(("OK:", "ERROR:", "still"))]
    assert len(out) == len(expected)
    for line, start in zip(out, expected, strict=True):
        assert line.startswith(start)


def test_what_a_download_waits_for_is_said_at_once(node: RecordingNode) -> None:
    """A note (e.g. waiting for the tracker) reaches the terminal even between two throttled progress lines."""
    proto, transport, _ = stdin_control(node)
    proto.dataReceived(b"torrent -setMode download /t/x.torrent\n")
    node.progress({"done": 1, "total": 10})
    node.progress({"note": "waiting for the tracker at http://192.0.2.1:12345: retrying every 20 s (refused)"})
    assert lines(transport) == [
        "download x.torrent: 1 B of 10 B (10%)",
        "download x.torrent: waiting for the tracker at http://192.0.2.1:12345: retrying every 20 s (refused)",
    ]


def test_download_takes_a_magnet_link_or_an_info_hash() -> None:
    link = "magnet:?xt=urn:btih:" + "ab" * 20 + "&dn=a+b&tr=http%3A%2F%2Ft%2Fannounce&tr=udp://u:1"
    assert parse_command(f"torrent -setMode download {link}") == Command("download", link)
    assert parse_command(f"torrent -setMode download '{link}'") == Command("download", link)
    assert parse_command("torrent -setMode download " + "ab" * 20) == Command("download", "ab" * 20)
    assert "magnet link" in HELP_TEXT
