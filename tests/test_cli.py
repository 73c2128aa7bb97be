"""Tests for the p2ptorrent command: argument handling, and end to end through a real UNIX socket.

The client blocks (it is plain sockets, no Twisted), so in process it runs in
a thread while the reactor serves the node's side.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from zope.interface import implementer
from zope.interface.verify import verifyObject

from p2ptorrent import cli
from p2ptorrent.cli import (
    bar_name,
    EXIT_FAILED,
    EXIT_NO_NODE,
    EXIT_OK,
    EXIT_USAGE,
    ProgressBar,
    command_from_words,
    main,
    prepare,
    run,
)
from p2ptorrent.commands import Command, CommandError, default_control_endpoint
from p2ptorrent.config import Config
from p2ptorrent.node.control import ControlFactory, INodeCommands

REPO = Path(__file__).resolve().parent.parent


@implementer(INodeCommands)
class ScriptedNode:
    """A fake node on the real reactor: records commands, answers as scripted."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.calls: list[tuple[Any, ...]] = []
        self.download_error: str | None = None
        #: A download that never ends, to interrupt the client.
        self.download_hangs = False

    def send(self, path: str) -> Deferred[str]:
        self.calls.append(("send", path))
        if not os.path.exists(path):
            return fail(ValueError(f"cannot read {path}: No such file or directory"))
        return succeed(f"seeding {os.path.basename(path)} ({os.path.getsize(path)} bytes)")

    def download(self, torrent_path: str, progress: Any) -> Deferred[str]:
        self.calls.append(("download", torrent_path))
        d: Deferred[str] = Deferred()
        total = 4 * 1024 * 1024

        def step(i: int) -> None:
            progress({"done": min(i, 4) * total // 4, "total": total, "rate": 1e6, "peers": 2})
            if i < 4 or self.download_hangs:
                self.reactor.callLater(0.05, step, i + 1)
            elif self.download_error:
                d.errback(RuntimeError(self.download_error))
            else:
                d.callback(f"downloaded {os.path.basename(torrent_path)[:-8]} ({total} bytes)")

        self.reactor.callLater(0, step, 0)
        return d

    def status(self) -> dict[str, Any]:
        self.calls.append(("status",))
        return {"node_id": 1, "seeding": [{"name": "a.bin"}], "downloads": []}

    def exit(self) -> Deferred[None]:
        self.calls.append(("exit",))
        return succeed(None)

    def limit(self, up: int | None, down: int | None) -> str:
        self.calls.append(("limit", up, down))
        return f"upload limit {up}, download limit {down}"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short folder: pytest's tmp_path can be longer than a UNIX socket path allows."""
    path = Path(tempfile.mkdtemp(prefix="p2pcli", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def listening(short_dir: Path) -> Iterator[tuple[ScriptedNode, Path]]:
    """A ControlFactory for node 1 on the real reactor, at its default socket under *short_dir*."""
    from twisted.internet import reactor

    (short_dir / "1").mkdir()
    node = ScriptedNode(reactor)
    verifyObject(INodeCommands, node)
    description = default_control_endpoint(Config(node_files_dir=str(short_dir)), 1)
    port = pytest_twisted.blockon(serverFromString(reactor, description).listen(ControlFactory(node, reactor)))
    yield node, short_dir
    node.download_hangs = False  # let a hanging download's timer loop end
    pytest_twisted.blockon(port.stopListening())


def run_cli(argv: list[str], show_progress: bool | None = None) -> Deferred[tuple[int, str, str]]:
    """Run prepare + run in this process, in a thread, against whatever listens."""
    out, err = io.StringIO(), io.StringIO()
    req = prepare(argv)
    d: Deferred[int] = deferToThread(run, req, out, err, show_progress)
    return d.addCallback(lambda code: (code, out.getvalue(), err.getvalue()))


# ---- argument handling

@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["send", "a.bin"], Command("send", "a.bin")),
        (["download", "a.bin.torrent"], Command("download", "a.bin.torrent")),
        (["status"], Command("status")),
        (["EXIT"], Command("exit")),
        (["torrent", "-setMode", "send", "my", "file.bin"], Command("send", "my file.bin")),
        (["torrent", "-setMode", "send", "my file.bin"], Command("send", "my file.bin")),
        (["torrent", "-setMode", "exit"], Command("exit")),
        (["help"], Command("help")),
        (["torrent", "-setMode", "HELP"], Command("help")),
    ],
)
def test_command_from_words(words: list[str], expected: Command) -> None:
    assert command_from_words(words) == expected


@pytest.mark.parametrize(
    ("words", "why"),
    [
        ([], "missing command"),
        (["fly"], "unknown command 'fly': use send FILE, download TORRENT, status, exit or help"),
        (["downlaod", "x"], "unknown command 'downlaod': did you mean 'download'?"),
        (["Stauts"], "unknown command 'Stauts': did you mean 'status'?"),
        (["hlep"], "unknown command 'hlep': did you mean 'help'?"),
        (["torrnet", "-setMode", "exit"], "unknown command 'torrnet': did you mean 'torrent'?"),
        (["torrent", "-setMode", "sned", "x"], "unknown command 'sned': did you mean 'send'?"),
        (["help", "me"], "help takes no argument"),
        (["send"], "send needs a FILE"),
        (["download", ""], "download needs a TORRENT"),
        (["send", "a", "b"], "quote a path"),
        (["status", "x"], "takes no argument"),
        (["torrent", "send", "x"], '"-setMode"'),
        (["torrent", "-setMode"], "missing mode"),
        (["torrent", "-setMode", "fly"], "unknown command 'fly'"),
    ],
)
def test_command_from_words_refuses(words: list[str], why: str) -> None:
    with pytest.raises(CommandError) as e:
        command_from_words(words)
    assert why in str(e.value)


def test_prepare_makes_paths_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a b.bin").write_bytes(b"x")
    req = prepare(["--node", "3", "send", "sub/a b.bin"])
    assert req.command == Command("send", str(tmp_path / "sub" / "a b.bin"))
    # A name that is not here goes as given: the node looks in its own folder.
    assert prepare(["--node", "3", "send", "only-on-node.bin"]).command == Command("send", "only-on-node.bin")
    assert req.endpoint == "unix:path=node_files/3/.control.sock"
    assert req.where == "node_files/3/.control.sock"
    assert req.node == 3


def test_prepare_options(tmp_path: Path) -> None:
    req = prepare(["--node-files-dir", "/srv/p2p", "-n", "2", "status"])
    assert req.endpoint == "unix:path=/srv/p2p/2/.control.sock"
    req = prepare(["--control", "unix:path=/tmp/x.sock:mode=600:lockfile=0", "exit"])
    assert (req.endpoint, req.where, req.node) == ("unix:path=/tmp/x.sock", "/tmp/x.sock", None)
    config = tmp_path / "p2p.json"
    config.write_text(json.dumps({"directory": {"node_files_dir": "/data/nodes/"}}))
    req = prepare(["--config", str(config), "status"])
    assert req.endpoint == "unix:path=/data/nodes/1/.control.sock"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "missing command"),
        (["send", "a", "b"], "quote a path that contains spaces"),
        (["--node", "x", "status"], "invalid int value"),
        (["--node", "-1", "status"], "--node must be a node id"),
        (["--node-files-dir", "/" + "d" * 120, "status"], "--control"),
        (["--config", "/nonexistent.json", "status"], "cannot read config file"),
        (["send", "a\nb"], "line breaks"),
        (["downlaod", "x"], "p2ptorrent: error: unknown command 'downlaod': did you mean 'download'?\n"),
        (["send", "-x.bin"], 'unrecognized arguments: -x.bin (a FILE that starts with "-" goes after "--"'),
        (["send", "-setMode"], "unrecognized arguments: -setMode"),
        (["status", "--node"], "argument -n/--node: expected one argument"),
        (["status", "--nodes", "2"], "unrecognized arguments: --nodes"),
    ],
)
def test_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EXIT_USAGE == 2
    err = capsys.readouterr().err
    assert "usage: p2ptorrent" in err
    assert message in err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-h"]) == 0
    out = capsys.readouterr().out
    for text in ("--node N", "--control ENDPOINT", "send FILE", "download TORRENT", "torrent -setMode", "Exit status"):
        assert text in out
    assert main(["send", "--help"]) == 0
    assert "--version" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["help"], ["HELP"], ["torrent", "-setMode", "help"], ["--node", "9", "help"]])
def test_help_command_needs_no_node(argv: list[str], monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    def no_node(*args: Any) -> None:
        raise AssertionError("help must not reach a node")

    monkeypatch.setattr(cli, "request", no_node)
    assert main(argv) == EXIT_OK
    out, err = capsys.readouterr()
    assert out.startswith("usage: p2ptorrent") and "help               show this help (no node needed)" in out
    assert err == ""


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib import metadata

    assert main(["--version"]) == EXIT_OK
    assert capsys.readouterr() == (f"p2ptorrent {metadata.version('p2ptorrent')}\n", "")
    assert main(["status", "--version"]) == EXIT_OK  # an option like any other, after the command too


# ---- options after the command

@pytest.mark.parametrize(
    ("argv", "same_as"),
    [
        (["download", "x.torrent", "--node", "3"], ["--node", "3", "download", "x.torrent"]),
        (["download", "--node", "3", "x.torrent"], ["--node", "3", "download", "x.torrent"]),
        (["status", "-n", "2", "--node-files-dir", "/srv/p2p"], ["--node-files-dir", "/srv/p2p", "-n", "2", "status"]),
        (["--node", "2", "status", "--node", "4"], ["--node", "4", "status"]),  # the last one wins, as before
        (["send", "x.bin", "--control", "unix:path=/tmp/c.sock"], ["--control", "unix:path=/tmp/c.sock", "send", "x.bin"]),
        (["torrent", "-setMode", "send", "x.bin", "-n", "5"], ["-n", "5", "torrent", "-setMode", "send", "x.bin"]),
        (["TORRENT", "-SETMODE", "status", "-n", "5"], ["-n", "5", "status"]),
        (["torrent", "-setMode", "send", "my", "file.bin", "--node", "2"], ["--node", "2", "send", "my file.bin"]),
        # After "--" every word is the command's, even one that looks like an option.
        (["send", "--", "-x.bin"], ["--", "send", "-x.bin"]),
        (["--node", "2", "send", "--", "--node"], ["-n", "2", "--", "send", "--node"]),
        (["torrent", "-setMode", "send", "--", "-x.bin"], ["send", "--", "-x.bin"]),
        (["torrent", "-setMode", "send", "--", "-setMode"], ["send", "--", "-setMode"]),
    ],
)
def test_options_anywhere(argv: list[str], same_as: list[str]) -> None:
    assert prepare(argv) == prepare(same_as)


def test_options_anywhere_reach_the_request() -> None:
    req = prepare(["download", "x.torrent", "--node", "3"])
    assert (req.command, req.node, req.where) == (Command("download", "x.torrent"), 3, "node_files/3/.control.sock")
    assert prepare(["send", "--", "-x.bin"]).command == Command("send", "-x.bin")


def test_progress_bar() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream, "big.bin", enabled=True)
    bar.update({"done": 0, "total": 2 * 1024 * 1024, "rate": 0, "peers": 1})
    bar.update({"done": 1024 * 1024, "total": 2 * 1024 * 1024, "rate": 1e6, "peers": 3})
    bar.update({"done": "junk"})
    bar.close(True)
    text = stream.getvalue()
    assert "big.bin" in text and "2.0 MiB / 2.0 MiB" in text and "3 peers" in text and "100%" in text
    assert "MB" not in text and "M/s" not in text  # one unit system: binary


def test_the_progress_bar_names_the_file_and_its_first_rate_is_honest_after_attaching() -> None:
    stream, now = io.StringIO(), [100.0]
    bar = ProgressBar(stream, bar_name(Command("download", "/x/big.bin.torrent")), enabled=True,
                      clock=lambda: now[0])
    mib = 1024 * 1024
    bar.update({"name": "big.bin", "done": 512 * mib, "total": 1024 * mib, "peers": 2})  # half done before we came
    first = stream.getvalue()
    assert "big.bin:" in first and ".torrent" not in first
    assert "512.0 MiB / 1.0 GiB, - /s" in first  # no rate from one report: not "512 MiB/s"
    now[0] += 1.0
    bar.update({"name": "big.bin", "done": 514 * mib, "total": 1024 * mib, "peers": 2})
    bar.close(False)  # (tqdm draws at most 10 frames a second: closing draws the last)
    assert "514.0 MiB / 1.0 GiB, 2.0 MiB/s, ETA 4 minutes, 2 peers" in stream.getvalue()
    quiet = io.StringIO()
    bar = ProgressBar(quiet, "x")  # not a terminal: no bar
    bar.update({"done": 1, "total": 2})
    bar.close(False)
    assert quiet.getvalue() == ""


# ---- end to end, in process, through a real UNIX socket

@pytest_twisted.ensureDeferred
async def test_send(listening: tuple[ScriptedNode, Path], tmp_path: Path) -> None:
    node, folder = listening
    data = tmp_path / "my file.bin"
    data.write_bytes(b"x" * 1234)
    code, out, err = await run_cli(["--node-files-dir", str(folder), "send", str(data)])
    assert (code, out, err) == (EXIT_OK, "seeding my file.bin (1234 bytes)\n", "")
    assert node.calls == [("send", str(data))]


@pytest_twisted.ensureDeferred
async def test_send_refused(listening: tuple[ScriptedNode, Path], tmp_path: Path) -> None:
    _, folder = listening
    missing = tmp_path / "missing.bin"
    code, out, err = await run_cli(["--node-files-dir", str(folder), "torrent", "-setMode", "send", str(missing)])
    assert code == EXIT_FAILED
    assert out == ""
    assert err == f"error: cannot read {missing}: No such file or directory\n"


@pytest_twisted.ensureDeferred
async def test_download_with_progress(listening: tuple[ScriptedNode, Path]) -> None:
    node, folder = listening
    code, out, bar = await run_cli(["--node-files-dir", str(folder), "download", "/t/big.bin.torrent"], show_progress=True)
    assert code == EXIT_OK
    assert out == "downloaded big.bin (4194304 bytes)\n"
    assert "big.bin:" in bar and "4.0 MiB / 4.0 MiB" in bar and "100%" in bar and "2 peers" in bar, bar
    assert node.calls == [("download", "/t/big.bin.torrent")]


@pytest_twisted.ensureDeferred
async def test_download_fails(listening: tuple[ScriptedNode, Path]) -> None:
    node, folder = listening
    node.download_error = "no peer has big.bin"
    code, out, err = await run_cli(["--node-files-dir", str(folder), "download", "/t/big.bin.torrent"])
    assert (code, out, err) == (EXIT_FAILED, "", "error: no peer has big.bin\n")


@pytest_twisted.ensureDeferred
async def test_status_and_exit(listening: tuple[ScriptedNode, Path]) -> None:
    node, folder = listening
    code, out, _ = await run_cli(["--node-files-dir", str(folder), "--json", "status"])
    assert code == EXIT_OK
    assert json.loads(out) == {"node_id": 1, "seeding": [{"name": "a.bin"}], "downloads": []}
    code, out, _ = await run_cli(["--node-files-dir", str(folder), "status"])
    assert code == EXIT_OK and out.startswith("Node ") and "Seeding       1 (0 B)" in out, out
    code, out, _ = await run_cli(["--node-files-dir", str(folder), "torrent", "-setMode", "exit"])
    assert code == EXIT_OK and "stopping" in out
    assert node.calls == [("status",), ("status",), ("exit",)]


def test_limit_takes_options_or_the_grammar_words() -> None:
    assert prepare(["--node", "2", "limit", "--up", "20MiB", "--down", "0"]).command == Command("limit", "up=20MiB down=0")
    assert prepare(["limit", "down=1MB"]).command == Command("limit", "down=1MB")
    assert prepare(["torrent", "-setMode", "limit", "up=1k"]).command == Command("limit", "up=1k")
    assert prepare(["limit"]).command == Command("limit")
    assert Command("limit", "up=20MiB down=0").line() == "torrent -setMode limit up=20MiB down=0"


@pytest.mark.parametrize(
    ("argv", "why"),
    [(["status", "--up", "1MiB"], "--up and --down go with the limit command"),
     (["limit", "--up", "fast"], "expected a size"),
     (["limit", "sideways=1"], "limit takes up=SIZE")],
)
def test_limit_refuses(argv: list[str], why: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        prepare(argv)
    assert e.value.code == 2 and why in capsys.readouterr().err


@pytest_twisted.ensureDeferred
async def test_limit_reaches_the_node(listening: tuple[ScriptedNode, Path]) -> None:
    node, folder = listening
    code, out, _ = await run_cli(["--node-files-dir", str(folder), "limit", "--up", "20MiB", "--down", "0"])
    assert code == EXIT_OK and out == "upload limit 20971520, download limit 0\n"
    assert node.calls == [("limit", 20971520, 0)]


@pytest_twisted.ensureDeferred
async def test_no_node_running(short_dir: Path) -> None:
    code, out, err = await run_cli(["--node-files-dir", str(short_dir), "--node", "7", "status"])
    assert code == EXIT_NO_NODE
    assert out == ""
    assert err == f"no node 7 is running: cannot connect to {short_dir}/7/.control.sock (No such file or directory)\n"


@pytest_twisted.ensureDeferred
async def test_stale_socket(short_dir: Path) -> None:
    (short_dir / "1").mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(short_dir / "1" / ".control.sock"))
    stale.close()
    code, _, err = await run_cli(["--node-files-dir", str(short_dir), "status"])
    assert code == EXIT_NO_NODE
    assert err.startswith("no node 1 is running:") and "Connection refused" in err and "left the socket behind" in err


@pytest_twisted.ensureDeferred
async def test_node_speaking_nonsense(short_dir: Path) -> None:
    """A server that is not a p2ptorrent node: a clear error, not a traceback."""
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    class Nonsense(Protocol):
        def dataReceived(self, data: bytes) -> None:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            self.transport.loseConnection()

    class Silent(Protocol):
        def dataReceived(self, data: bytes) -> None:
            assert self.transport is not None
            self.transport.loseConnection()

    path = short_dir / "n.sock"
    for proto, message in ((Nonsense, "not JSON"), (Silent, "closed the connection without answering")):
        port = await serverFromString(reactor, f"unix:address={path}").listen(Factory.forProtocol(proto))
        try:
            code, _, err = await run_cli(["--control", f"unix:path={path}", "status"])
        finally:
            await port.stopListening()
        assert code == EXIT_FAILED
        assert err.startswith("error: ") and message in err


# ---- end to end, the real console script in a subprocess

def cli_process(argv: list[str], cwd: Path) -> Deferred[tuple[bytes, bytes, int]]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return getProcessOutputAndValue(sys.executable, ["-m", "p2ptorrent.cli", *argv], env=env, path=str(cwd))


@pytest_twisted.ensureDeferred
async def test_subprocess_send_relative_path(listening: tuple[ScriptedNode, Path], tmp_path: Path) -> None:
    node, folder = listening
    (tmp_path / "a b.bin").write_bytes(b"12345")
    out, err, code = await cli_process(["--node-files-dir", str(folder), "--node", "1", "send", "a b.bin"], tmp_path)
    assert (code, out, err) == (0, b"seeding a b.bin (5 bytes)\n", b"")
    assert node.calls == [("send", str(tmp_path / "a b.bin"))]


@pytest_twisted.ensureDeferred
async def test_subprocess_failing_download(listening: tuple[ScriptedNode, Path], tmp_path: Path) -> None:
    node, folder = listening
    node.download_error = "piece 3 failed its hash check 5 times"
    (tmp_path / "x.bin.torrent").write_bytes(b"d")  # exists here, so the CLI sends its absolute path
    argv = ["--node-files-dir", str(folder), "torrent", "-setMode", "download", "x.bin.torrent"]
    out, err, code = await cli_process(argv, tmp_path)
    assert (code, out, err) == (1, b"", b"error: piece 3 failed its hash check 5 times\n")
    assert node.calls == [("download", str(tmp_path / "x.bin.torrent"))]


@pytest_twisted.ensureDeferred
async def test_subprocess_no_node(short_dir: Path) -> None:
    out, err, code = await cli_process(["--node", "1", "status"], short_dir)
    assert code == EXIT_NO_NODE == 3
    assert out == b""
    assert err == b"no node 1 is running: cannot connect to node_files/1/.control.sock (No such file or directory)\n"


@pytest_twisted.ensureDeferred
async def test_subprocess_interrupted_download(listening: tuple[ScriptedNode, Path], tmp_path: Path) -> None:
    """Ctrl-C stops the client, says the node keeps going, and exits 130."""
    from twisted.internet import reactor
    from twisted.internet.protocol import ProcessProtocol
    from twisted.internet.task import deferLater

    node, folder = listening
    node.download_hangs = True

    class Collect(ProcessProtocol):
        def __init__(self) -> None:
            self.out = b""
            self.err = b""
            self.ended: Deferred[int] = Deferred()

        def outReceived(self, data: bytes) -> None:
            self.out += data

        def errReceived(self, data: bytes) -> None:
            self.err += data

        def processEnded(self, reason: Any) -> None:
            self.ended.callback(reason.value.exitCode)

    proc = Collect()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    (tmp_path / "big.bin.torrent").write_bytes(b"d")  # exists here, so the CLI sends its absolute path
    argv = [sys.executable, "-m", "p2ptorrent.cli", "--node-files-dir", str(folder), "download", "big.bin.torrent"]
    transport = reactor.spawnProcess(proc, sys.executable, argv, env=env, path=str(tmp_path))
    for _ in range(200):  # wait until the node is serving the download
        if node.calls:
            break
        await deferLater(reactor, 0.05)
    assert node.calls == [("download", str(tmp_path / "big.bin.torrent"))]
    transport.signalProcess("INT")
    code = await proc.ended
    assert code == 130
    assert proc.out == b""
    assert proc.err.decode().strip() == "interrupted: the node keeps downloading"


def test_prepare_passes_magnet_links_and_info_hashes_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    link = "magnet:?xt=urn:btih:" + "ab" * 20 + "&dn=a%20b&tr=http://t/announce"
    assert prepare(["--node", "3", "download", link]).command == Command("download", link)
    assert prepare(["--node", "3", "torrent", "-setMode", "download", link]).command == Command("download", link)
    assert prepare(["download", "ab" * 20]).command == Command("download", "ab" * 20)
    assert Command("download", link).line() == f"torrent -setMode download {link}"
