"""The p2ptorrent command without Twisted: what it imports, its reply reader, and real sockets.

The server here is a plain thread on a real UNIX or TCP socket, so every odd
reply (garbage, a line too long, a close before the answer) is easy to script.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from p2ptorrent import cli
from p2ptorrent.cli import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NO_NODE,
    EXIT_OK,
    EXIT_USAGE,
    MAX_REPLY_LINE,
    ConnectionClosedEarly,
    ControlReplyError,
    ReplyReader,
    main,
    prepare,
    run,
)
from p2ptorrent.commands import ControlError, ControlTarget, client_endpoint, control_target

REPO = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(REPO))


# ---- what the command imports

def test_cli_does_not_import_twisted() -> None:
    """Twisted costs every command ~0.4 s of imports; the node's control module brings it in too."""
    code = (
        "import sys; from p2ptorrent.cli import main; code = main(['--node', '99', 'status']);"
        " print(sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'zope', 'tqdm')"
        " or m == 'p2ptorrent.node.control'))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=ENV, cwd=tempfile.gettempdir(),
                          capture_output=True, text=True, timeout=60)
    assert done.stdout == "[]\n"
    assert "no node 99 is running" in done.stderr


def test_version_without_twisted_or_a_node() -> None:
    from importlib import metadata

    done = subprocess.run(
        [sys.executable, "-c", "import sys; from p2ptorrent.cli import main; code = main(['--version']);"
         " print(sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'zope'))); sys.exit(code)"],
        env=ENV, cwd=tempfile.gettempdir(), capture_output=True, text=True, timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, f"p2ptorrent {metadata.version('p2ptorrent')}\n[]\n", "")


def test_exit_statuses_are_distinct() -> None:
    """A script must tell "you typed it wrong" (2, as argparse) from "that node is not running"."""
    assert (EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_NODE, EXIT_INTERRUPTED) == (0, 1, 2, 3, 130)


def test_usage_error_and_no_node_exit_differently(short_dir: Path) -> None:
    def status(*argv: str) -> tuple[int, str]:
        done = subprocess.run([sys.executable, "-m", "p2ptorrent.cli", *argv], env=ENV, cwd=short_dir,
                              capture_output=True, text=True, timeout=60)
        return done.returncode, done.stderr.splitlines()[-1]

    assert status("downlaod", "x") == (2, "p2ptorrent: error: unknown command 'downlaod': did you mean 'download'?")
    assert status("download", "x.torrent", "--node", "3") == (
        3, "no node 3 is running: cannot connect to node_files/3/.control.sock (No such file or directory)")


# ---- endpoint descriptions the client connects to

@pytest.mark.parametrize(
    ("description", "target"),
    [
        ("unix:path=/x/c.sock", ControlTarget(path="/x/c.sock")),
        ("unix:path=/x/c.sock:timeout=5", ControlTarget(path="/x/c.sock", timeout=5.0)),
        ("unix:/x/a\\:b.sock", ControlTarget(path="/x/a:b.sock")),
        ("tcp:host=127.0.0.1:port=7000", ControlTarget(host="127.0.0.1", port=7000)),
        ("TCP:host=\\:\\:1:port=7000", ControlTarget(host="::1", port=7000)),
        ("tcp:example.org:7000", ControlTarget(host="example.org", port=7000)),
        ("tcp:7000:host=example.org", ControlTarget(host="example.org", port=7000)),
        (
            "tcp:host=h:port=1:timeout=2:bindAddress=127.0.0.1",
            ControlTarget(host="h", port=1, timeout=2.0, bind="127.0.0.1"),
        ),
    ],
)
def test_control_target(description: str, target: ControlTarget) -> None:
    assert control_target(description) == target


@pytest.mark.parametrize(
    ("description", "why"),
    [
        ("ssl:host=h:port=1", "connects only to unix: sockets and tcp: ports"),
        ("foo:bar", "connects only to unix: sockets and tcp: ports"),
        ("unix:timeout=3", "has no path"),
        ("tcp:host=h", "has no port"),
        ("tcp:port=1", "has no host"),
        ("tcp:host=h:port=x", "port must be a number"),
        ("tcp:host=h:port=70000", "port must be a number"),
        ("tcp:host=h:port=1:foo=1", "unknown option 'foo'"),
        ("unix:path=/x:timeout=soon", "timeout must be a number"),
    ],
)
def test_control_target_refuses(description: str, why: str) -> None:
    with pytest.raises(ControlError, match=why):
        control_target(description)


def test_client_endpoint_takes_a_client_host_and_port() -> None:
    assert client_endpoint("tcp:127.0.0.1:7000") == "tcp:host=127.0.0.1:port=7000"
    assert client_endpoint("tcp:localhost:7000:timeout=2") == "tcp:host=localhost:port=7000:timeout=2"
    assert client_endpoint("tcp:7000:interface=127.0.0.1") == "tcp:host=127.0.0.1:port=7000"


@pytest.mark.parametrize(
    ("control", "message"),
    [
        ("foo:bar", "endpoint 'foo:bar': the p2ptorrent command connects only to unix: sockets and tcp: ports"),
        ("tcp:host=127.0.0.1", "endpoint 'tcp:host=127.0.0.1' has no port"),
        ("unix", "endpoint 'unix' has no path"),
    ],
)
def test_bad_endpoint_is_a_usage_error(control: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--control", control, "status"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "usage: p2ptorrent" in err and message in err


# ---- the reply reader, bytes in, answer out

def reader(progress: list[dict[str, Any]], max_line: int = MAX_REPLY_LINE) -> ReplyReader:
    return ReplyReader(progress.append, max_line)


def test_reader_progress_then_answer_byte_by_byte() -> None:
    progress: list[dict[str, Any]] = []
    r = reader(progress)
    data = b'{"progress": {"done": 1, "total": 2}}\n{"progress": "odd"}\r\n{"ok": true, "result": "done"}\n{"x"'
    answers = [r.feed(data[i : i + 1]) for i in range(len(data))]
    assert [a for a in answers if a is not None] == [{"ok": True, "result": "done"}]
    assert progress == [{"done": 1, "total": 2}]


def test_reader_refusal_without_reason() -> None:
    assert reader([]).feed(b'{"ok": false}\n') == {"ok": False, "error": "the node gave no reason"}
    assert reader([]).feed(b'{"ok": false, "error": "no"}\n') == {"ok": False, "error": "no"}


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n", "not JSON: b'HTTP/1.1 400 Bad Request\\r'"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'{"ok": true}\n', "unexpected message"),
        (b'{"hello": 1}\n', "unexpected message"),
    ],
)
def test_reader_malformed(line: bytes, why: str) -> None:
    with pytest.raises(ControlReplyError, match=re.escape(why)):
        reader([]).feed(line)


def test_reader_line_length_limit() -> None:
    ok = b'{"ok": true, "result": "' + b"x" * 10 + b'"}'
    assert reader([], max_line=len(ok)).feed(ok + b"\n") == {"ok": True, "result": "x" * 10}
    with pytest.raises(ControlReplyError, match=f"over {len(ok) - 1} bytes"):
        reader([], max_line=len(ok) - 1).feed(ok + b"\n")
    r = reader([], max_line=100)
    assert r.feed(b"y" * 100) is None  # not over yet: the end may still come
    with pytest.raises(ControlReplyError, match="over 100 bytes"):
        r.feed(b"y")


def test_reader_closed_early() -> None:
    r = reader([])
    assert r.feed(b'{"ok": true, "result": "half') is None
    with pytest.raises(ConnectionClosedEarly, match="closed the connection without answering"):
        r.closed()


def test_reader_survives_a_broken_progress_display(capsys: pytest.CaptureFixture[str]) -> None:
    def broken(progress: dict[str, Any]) -> None:
        raise RuntimeError("terminal gone")

    r = ReplyReader(broken)
    assert r.feed(b'{"progress": {"done": 1}}\n{"ok": true, "result": 1}\n') == {"ok": True, "result": 1}
    err = capsys.readouterr().err
    assert "drawing progress failed" in err and "terminal gone" in err


# ---- against real sockets, served by a thread

@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short folder: pytest's tmp_path can be longer than a UNIX socket path allows."""
    path = Path(tempfile.mkdtemp(prefix="p2pfast", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Served:
    """What the scripted node saw: the request line, once it arrived."""

    def __init__(self) -> None:
        self.request = b""
        self.got_request = threading.Event()
        self.release = threading.Event()


@contextmanager
def serving(listener: socket.socket, chunks: list[bytes], read_request: bool = True,
            hold: bool = False) -> Iterator[Served]:
    """Accept one connection: read the request line, send *chunks*, close (after the test, if *hold*)."""
    served = Served()

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            try:
                while read_request and not served.request.endswith(b"\n"):
                    data = conn.recv(4096)
                    if not data:
                        break
                    served.request += data
                served.got_request.set()
                for chunk in chunks:
                    conn.sendall(chunk)
            except OSError:
                pass  # the client gave up first: that is what some tests want
            if hold:
                served.release.wait(30)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        served.release.set()
        listener.close()
        thread.join(30)


@pytest.fixture(params=["unix", "tcp", "tcp positional"])
def endpoint(request: pytest.FixtureRequest, short_dir: Path) -> Iterator[tuple[socket.socket, str]]:
    """A listening socket and the --control description that reaches it."""
    if request.param == "unix":
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(short_dir / "c.sock"))
        description = f"unix:path={short_dir / 'c.sock'}"
    else:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        description = f"tcp:127.0.0.1:{port}" if request.param == "tcp positional" else f"tcp:host=127.0.0.1:port={port}"
    listener.listen(1)
    with listener:
        yield listener, description


def call(argv: list[str], show_progress: bool | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(prepare(argv), out, err, show_progress)
    return code, out.getvalue(), err.getvalue()


def test_status(endpoint: tuple[socket.socket, str]) -> None:
    listener, control = endpoint
    answer = {"ok": True, "result": {"node_id": 1, "seeding": []}}
    with serving(listener, [json.dumps(answer).encode() + b"\n"]) as served:
        code, out, err = call(["--control", control, "status", "--json"], show_progress=True)
    assert served.request == b"torrent -setMode status\n"
    assert (code, err) == (EXIT_OK, "")  # no progress line: no bar
    assert json.loads(out) == answer["result"]  # --json: the node's answer as it came


def test_download_with_progress(endpoint: tuple[socket.socket, str]) -> None:
    listener, control = endpoint
    total = 4 * 1024 * 1024
    lines = [json.dumps({"progress": {"done": i * total // 4, "total": total, "peers": 2}}).encode() + b"\n"
             for i in range(5)]
    reply = b'{"ok": true, "result": "downloaded big.bin (4194304 bytes)"}\n'
    with serving(listener, [*lines, reply[:10], reply[10:]]) as served:
        code, out, bar = call(["--control", control, "download", "/t/big.bin.torrent"], show_progress=True)
    assert served.request == b"torrent -setMode download /t/big.bin.torrent\n"
    assert (code, out) == (EXIT_OK, "downloaded big.bin (4194304 bytes)\n")
    # Named after the file, in binary units like the tables.
    assert "big.bin:" in bar and "4.0 MiB / 4.0 MiB" in bar and "100%" in bar and "2 peers" in bar, bar


def test_refused_by_the_node(endpoint: tuple[socket.socket, str]) -> None:
    listener, control = endpoint
    with serving(listener, [b'{"ok": false, "error": "cannot read /x: No such file or directory"}\n']):
        code, out, err = call(["--control", control, "send", "/x"])
    assert (code, out, err) == (EXIT_FAILED, "", "error: cannot read /x: No such file or directory\n")


def test_refused_before_reading_the_command(short_dir: Path) -> None:
    """A node that refuses us answers and closes without reading: the reason still gets through."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(short_dir / "c.sock"))
    listener.listen(1)
    with serving(listener, [b'{"ok": false, "error": "refused: user 1 is not the node\'s user (0)"}\n'],
                 read_request=False):
        code, _, err = call(["--control", f"unix:path={short_dir / 'c.sock'}", "status"])
    assert (code, err) == (EXIT_FAILED, "error: refused: user 1 is not the node's user (0)\n")


@pytest.mark.parametrize(
    ("chunks", "why"),
    [
        ([b"HTTP/1.1 400 Bad Request\r\n\r\n"], "error: the node sent a line that is not JSON: b'HTTP/1.1 400 Bad Request\\r'"),
        ([b"[]\n"], "error: the node sent a line that is not a JSON object: b'[]'"),
        ([b'{"ok": "maybe"}\n'], "error: the node sent an unexpected message:"),
        ([], "error: the node closed the connection without answering"),
        ([b'{"progress": {"done": 1}}\n{"ok": tr'], "error: the node closed the connection without answering"),
    ],
)
def test_malformed_or_missing_answer(endpoint: tuple[socket.socket, str], chunks: list[bytes], why: str) -> None:
    listener, control = endpoint
    with serving(listener, chunks):
        code, out, err = call(["--control", control, "status"])
    assert (code, out) == (EXIT_FAILED, "")
    assert err.startswith(why)


def test_line_too_long(endpoint: tuple[socket.socket, str]) -> None:
    listener, control = endpoint
    with serving(listener, [b'{"ok": true, "result": "', b"x" * MAX_REPLY_LINE]):
        code, _, err = call(["--control", control, "status"])
    assert (code, err) == (EXIT_FAILED, f"error: the node sent a line over {MAX_REPLY_LINE} bytes\n")


def test_exit_when_the_node_stops_before_answering(endpoint: tuple[socket.socket, str]) -> None:
    listener, control = endpoint
    with serving(listener, []) as served:
        code, out, err = call(["--control", control, "exit"])
    assert served.request == b"torrent -setMode exit\n"
    assert (code, out, err) == (EXIT_OK, "the node has stopped\n", "")


# ---- no node there

def test_no_unix_socket(short_dir: Path) -> None:
    code, out, err = call(["--node-files-dir", str(short_dir), "--node", "7", "status"])
    assert (code, out) == (EXIT_NO_NODE, "")
    assert err == f"no node 7 is running: cannot connect to {short_dir}/7/.control.sock (No such file or directory)\n"


def test_stale_unix_socket(short_dir: Path) -> None:
    (short_dir / "1").mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(short_dir / "1" / ".control.sock"))
    code, _, err = call(["--node-files-dir", str(short_dir), "status"])
    assert code == EXIT_NO_NODE
    assert err == (f"no node 1 is running: cannot connect to {short_dir}/1/.control.sock"
                   " (Connection refused; a node that stopped uncleanly left the socket behind)\n")


def test_no_tcp_listener() -> None:
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    control = f"tcp:host=127.0.0.1:port={port}"
    code, _, err = call(["--control", control, "status"])
    assert (code, err) == (EXIT_NO_NODE, f"no node is listening: cannot connect to {control} (Connection refused)\n")


def test_unknown_host() -> None:
    code, _, err = call(["--control", "tcp:host=nonexistent.invalid:port=1", "status"])
    assert code == EXIT_NO_NODE
    assert err == ("cannot reach the node: cannot connect to tcp:host=nonexistent.invalid:port=1"
                   " (DNS lookup failed: nonexistent.invalid.)\n")


# ---- interrupted

def test_ctrl_c_while_waiting(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(*args: Any) -> dict[str, Any]:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "request", interrupted)
    assert main(["--control", "unix:path=/nonexistent.sock", "download", "/t/x.torrent"]) == EXIT_INTERRUPTED
    assert capsys.readouterr() == ("", "\ninterrupted: the node keeps downloading\n")
    assert main(["--control", "unix:path=/nonexistent.sock", "status"]) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "\ninterrupted\n"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_in_a_subprocess(short_dir: Path, sig: signal.Signals) -> None:
    """SIGTERM stops the client like Ctrl-C does: the node keeps going, we exit 130."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(short_dir / "c.sock"))
    listener.listen(1)
    with serving(listener, [b'{"progress": {"done": 1, "total": 10}}\n'], hold=True) as served:
        proc = subprocess.Popen(
            [sys.executable, "-m", "p2ptorrent.cli", "--control", f"unix:path={short_dir / 'c.sock'}", "send", "/x"],
            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            assert served.got_request.wait(30)
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == EXIT_INTERRUPTED
    assert (out, err) == (b"", b"\ninterrupted: the node keeps preparing the file\n")


def test_the_progress_bar_says_each_note_once_even_without_a_bar() -> None:
    import io

    from p2ptorrent.cli import ProgressBar

    out = io.StringIO()
    bar = ProgressBar(out, "big.iso", enabled=False)
    note = {"note": "waiting for the tracker at http://192.0.2.1:12345: retrying every 20 s (connection refused)"}
    bar.update(note)
    bar.update(note)
    bar.update({"done": 5, "total": 10})
    assert out.getvalue() == f"big.iso: {note['note']}\n"


def test_an_interruption_is_never_lost_while_waiting(endpoint: tuple[socket.socket, str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C only marks the client interrupted (an exception raised inside an import can be swallowed by
    Python); the reply loop sees the mark within INTERRUPT_POLL and stops, even if the node never answers."""
    listener, control = endpoint
    monkeypatch.setattr(cli, "_interrupted", False)
    progress = json.dumps({"progress": {"done": 1, "total": 10}}).encode() + b"\n"
    with serving(listener, [progress], hold=True) as served:  # a node that keeps the download going
        def interrupted_once_served() -> None:
            served.got_request.wait(30)
            cli._interrupt(signal.SIGINT, None)

        threading.Thread(target=interrupted_once_served, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            cli.request(prepare(["--control", control, "download", "/t/x.torrent"]).target, "download /t/x.torrent",
                        lambda p: None)
