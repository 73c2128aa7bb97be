"""The README's "Running it by hand", run as printed, so the README cannot drift from the product.

The commands are read from README.md when the test runs (never copied here):
the section's fenced blocks are found by their heading, so renaming a command
in the README changes what is run.  The section holds three blocks:

1. ```sh: `. .venv/bin/activate` (here: this Python's console-script folder
   goes first on PATH), one-shot shell commands, and foreground daemons
   (`twistd -n ...`), each started as a real process with a piped stdin;
2. ``` : lines typed into the foreground nodes, after markers
   `# in node N's terminal:`; each must be answered `OK: ...` on stdout;
3. ```sh: the daemonised way, every line run with bash; each must exit 0.

Everything runs in one empty folder under pytest's tmp_path, on the README's
default tracker port.  Every wait polls against a deadline; nothing sleeps a
fixed time to order events.  Whatever happens, nothing started here is left
running (see :meth:`Session.kill_leftovers`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator, NoReturn

import pytest

from daemonkit import pid_alive
from p2ptorrent.procs import connects, sha256

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "Running it by hand"
#: What `. .venv/bin/activate` must say; we honour it with this Python's own scripts.
ACTIVATE = ".venv/bin/activate"
#: The README's tracker runs on its default address ("on localhost:12345").
TRACKER_HOST, TRACKER_PORT = "127.0.0.1", 12345
#: Seconds any one step may take.  Generous, because a loaded CI machine is
#: slow; a correct product answers in a fraction of it.
DEADLINE = 60.0
#: Seconds between two looks at something we wait for.
POLL = 0.05
#: Lines of a process's output shown when it fails.
TAIL = 40
#: Lines of each log file shown when a daemonised step fails.
LOG_TAIL = 20
TRACEBACK = "Traceback (most recent call last)"
MARKER = re.compile(r"#\s*in node (\d+)'s terminal:\s*$")


def fail(message: str) -> NoReturn:
    pytest.fail(message, pytrace=False)


# ---- reading the README

@dataclass(frozen=True)
class Line:
    """One line of a README code block, and where it is, for failure messages."""

    number: int  # 1-based, in README.md
    text: str  # as printed

    @property
    def command(self) -> str:
        """The line without its trailing `# comment` (a `#` at the start or after a blank, as in sh)."""
        return re.sub(r"(?:^|\s)#.*$", "", self.text).strip()

    def words(self) -> list[str]:
        try:
            return shlex.split(self.command)
        except ValueError as e:
            fail(f"{self}: cannot split into words: {e}")

    def __str__(self) -> str:
        return f"README.md line {self.number} `{self.command or self.text.strip()}`"


@dataclass(frozen=True)
class Block:
    """A fenced code block: its info string (``sh`` or empty) and its non-blank lines."""

    info: str
    opened_at: int
    lines: tuple[Line, ...]


def section_blocks(markdown: str, heading: str) -> list[Block]:
    """The fenced code blocks between the heading *heading* and the next heading of any level."""
    rows = markdown.splitlines()
    starts = [i for i, row in enumerate(rows) if re.fullmatch(rf"#{{1,6}}\s+{re.escape(heading)}\s*", row)]
    if len(starts) != 1:
        fail(f"README.md must have exactly one heading {heading!r}, found {len(starts)}")
    blocks: list[Block] = []
    fence: tuple[str, int, list[Line]] | None = None
    for i in range(starts[0] + 1, len(rows)):
        row = rows[i]
        if fence is None:
            if re.match(r"#{1,6}\s", row):
                break  # the next heading (a `#` inside a block is a comment, not a heading)
            if row.startswith("```"):
                fence = (row[3:].strip(), i + 1, [])
        elif row.strip() == "```":
            blocks.append(Block(fence[0], fence[1], tuple(fence[2])))
            fence = None
        elif row.strip():
            fence[2].append(Line(i + 1, row))
    if fence is not None:
        fail(f"README.md line {fence[1]}: code block under {heading!r} is never closed")
    return blocks


# ---- processes

def process_cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def processes_in(folder: Path) -> list[int]:
    """Our live processes whose working folder is *folder*: everything the README's commands started."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and process_cwd(int(entry.name)) == folder:
            if pid_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def tail(text: str, lines: int = TAIL) -> str:
    return "\n".join(text.splitlines()[-lines:]) or "(nothing)"


class Foreground:
    """A `twistd -n ...` line run as in its own terminal: stdin a pipe, stdout and stderr read as they come."""

    def __init__(self, line: Line, name: str, cwd: Path, env: dict[str, str]) -> None:
        self.line = line
        self.name = name
        # `exec` so the pid is twistd's own: the signals below reach it, as Ctrl-C would.
        self.proc = subprocess.Popen(
            ["bash", "-c", "exec " + line.command], cwd=cwd, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.readers = [self._read(self.proc.stdout, self.stdout), self._read(self.proc.stderr, self.stderr)]

    @staticmethod
    def _read(pipe: IO[bytes], into: list[str]) -> threading.Thread:
        def run() -> None:
            for raw in iter(pipe.readline, b""):
                into.append(raw.decode("utf-8", "replace").rstrip("\n"))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def drained(self) -> None:
        """After the process ended: wait until everything it printed has been read."""
        for thread in self.readers:
            thread.join(DEADLINE)

    def tail(self) -> str:
        return (f"--- {self.name} stdout (last {TAIL} lines):\n{tail(chr(10).join(self.stdout))}\n"
                f"--- {self.name} stderr (last {TAIL} lines):\n{tail(chr(10).join(self.stderr))}")

    def type(self, command: str, line: Line) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(command.encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            fail(f"{line}: cannot type into {self.name}: its stdin is closed"
                 f" (status {self.proc.poll()})\n{self.tail()}")


# ---- the run

@dataclass(frozen=True)
class Daemon:
    """What a `twistd` line starts: the tracker, or node *node_id*."""

    kind: str
    node_id: int = 0

    @property
    def name(self) -> str:
        return "the tracker" if self.kind == "tracker" else f"node {self.node_id}"


def parse_daemon(words: list[str]) -> Daemon | None:
    """The daemon `twistd ...` *words* start, None if they are not a twistd command; ValueError if unclear."""
    if not words or Path(words[0]).name != "twistd":
        return None
    if "p2ptracker" in words:
        return Daemon("tracker")
    if "p2pnode" in words:
        for i, word in enumerate(words):
            if word == "--id" and i + 1 < len(words) and words[i + 1].isdigit():
                return Daemon("node", int(words[i + 1]))
            if word.startswith("--id=") and word[5:].isdigit():
                return Daemon("node", int(word[5:]))
        raise ValueError("a p2pnode without `--id N`")
    raise ValueError("a twistd line that starts neither p2ptracker nor p2pnode")


def daemon_of(line: Line) -> Daemon | None:
    """The daemon a README line starts, or None if it is not a `twistd` line."""
    try:
        return parse_daemon(line.words())
    except ValueError as e:
        fail(f"{line}: {e}")


def running_daemons(folder: Path) -> set[Daemon]:
    """The daemons running in *folder*, read from their command lines (a daemonised twistd has no Popen here)."""
    found = set()
    for pid in processes_in(folder):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        at = next((i for i, arg in enumerate(argv) if Path(arg).name == "twistd"), None)
        if at is not None:
            try:
                daemon = parse_daemon(["twistd", *argv[at + 1:]])
            except ValueError:
                continue
            if daemon is not None:
                found.add(daemon)
    return found


def node_option(line: Line) -> int:
    """N in `p2ptorrent --node N ...` (the CLI's default is 1)."""
    words = line.words()
    for i, word in enumerate(words):
        if word in ("--node", "-n") and i + 1 < len(words) and words[i + 1].isdigit():
            return int(words[i + 1])
        if word.startswith("--node=") and word[7:].isdigit():
            return int(word[7:])
    return 1


class Session:
    """One folder, the environment the README's reader has, and every process started from them."""

    def __init__(self, root: Path) -> None:
        self.work = root / "work"  # the README's "one folder"
        self.captured = root / "captured"  # what one-shot commands printed, out of the README's folder
        self.work.mkdir()
        self.captured.mkdir()
        self.work = self.work.resolve()
        self.env = dict(os.environ)
        self.activated = False
        self.foreground: dict[Daemon, Foreground] = {}
        self.ended: list[Foreground] = []

    # ---- helpers
    def poll_until(self, check: Callable[[], object], line: Line, what: str,
                   alive: Callable[[], None] = lambda: None, why: Callable[[], str] = lambda: "") -> None:
        """Poll *check* until true; fail naming *line* and *what* after DEADLINE, with *why*'s explanation."""
        deadline = time.monotonic() + DEADLINE
        while True:
            alive()
            if check():
                return
            if time.monotonic() > deadline:
                fail(f"{line}: timed out after {DEADLINE:.0f} s waiting for {what}\n{why()}")
            time.sleep(POLL)

    def no_traceback(self, line: Line, who: str, text: str) -> None:
        if TRACEBACK in text:
            at = text.index(TRACEBACK)
            fail(f"{line}: {who} printed a Python traceback:\n{text[max(0, at - 2000):at + 4000]}")

    def logs(self) -> str:
        """The daemons' log files (a daemonised process prints nowhere else), for failure messages."""
        parts = []
        for path in sorted([*self.work.glob("logs/*"), *self.work.glob("*.log")]):
            if path.is_file():
                parts.append(f"--- {path.relative_to(self.work)} (last {LOG_TAIL} lines):\n"
                             f"{tail(path.read_text(errors='replace'), LOG_TAIL)}")
        return "\n".join(parts) or "(no log files)"

    def run(self, line: Line) -> subprocess.CompletedProcess[str]:
        """Run a one-shot line with bash in the folder; it must exit 0 within the deadline and print no traceback."""
        out = self.captured / f"line{line.number}.out"
        err = self.captured / f"line{line.number}.err"
        with open(out, "wb") as o, open(err, "wb") as e:
            # Files, not pipes: a daemon started by the line may keep inherited pipes open.
            try:
                code = subprocess.run(["bash", "-c", line.command], cwd=self.work, env=self.env,
                                      stdin=subprocess.DEVNULL, stdout=o, stderr=e, timeout=DEADLINE).returncode
            except subprocess.TimeoutExpired:
                code = None
        result = subprocess.CompletedProcess(line.command, code if code is not None else -1,
                                             out.read_text(errors="replace"), err.read_text(errors="replace"))
        said = f"--- stdout:\n{tail(result.stdout)}\n--- stderr:\n{tail(result.stderr)}"
        if code is None:
            fail(f"{line}: still running after {DEADLINE:.0f} s\n{said}\n{self.logs()}")
        if code != 0:
            fail(f"{line}: exited with status {code}, not 0\n{said}\n{self.logs()}")
        self.no_traceback(line, "the command", result.stdout + result.stderr)
        return result

    def needs_activation(self, line: Line) -> None:
        words = line.words()
        if words and words[0] in ("twistd", "p2ptorrent") and not self.activated:
            fail(f"{line}: runs {words[0]} before the virtual environment is activated"
                 f" (no `. {ACTIVATE}` before it)")

    def activate(self, line: Line) -> None:
        """`. .venv/bin/activate`: this Python's console scripts (twistd, p2ptorrent) first on PATH."""
        words = line.words()
        if words[1:] != [ACTIVATE]:
            fail(f"{line}: expected `. {ACTIVATE}`; the README names something else")
        scripts = Path(sys.executable).parent  # not resolved: a venv's python is a symlink
        for name in ("twistd", "p2ptorrent"):
            if not (scripts / name).exists():
                fail(f"{line}: no {name} beside {sys.executable}: install p2ptorrent in this Python")
        self.env["PATH"] = os.pathsep.join([str(scripts), self.env.get("PATH", "")])
        self.env["VIRTUAL_ENV"] = str(scripts.parent)
        self.activated = True

    def status(self, node_id: int) -> dict[str, object] | str:
        """`p2ptorrent --node N status` as the reader types it: the JSON, or what went wrong."""
        try:
            done = subprocess.run(["p2ptorrent", "--node", str(node_id), "status", "--json"], cwd=self.work, env=self.env,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            return f"p2ptorrent --node {node_id} status: no answer in {DEADLINE:.0f} s"
        if TRACEBACK in done.stdout + done.stderr:
            fail(f"`p2ptorrent --node {node_id} status` printed a Python traceback:\n{done.stdout}{done.stderr}")
        if done.returncode != 0:
            return f"p2ptorrent --node {node_id} status exited {done.returncode}: {done.stdout}{done.stderr}"
        try:
            answer = json.loads(done.stdout)
        except ValueError:
            return f"p2ptorrent --node {node_id} status printed no JSON: {done.stdout!r}"
        return answer if isinstance(answer, dict) else f"status is not a JSON object: {done.stdout!r}"

    def wait_ready(self, daemon: Daemon, line: Line, alive: Callable[[], None], why: Callable[[], str]) -> None:
        """Tracker: it accepts TCP on the default port.  Node: its control socket exists and status says registered."""
        if daemon.kind == "tracker":
            self.poll_until(lambda: connects(TRACKER_PORT, TRACKER_HOST), line,
                            f"the tracker to accept connections on {TRACKER_HOST}:{TRACKER_PORT}", alive, why)
            return
        sock = self.work / "node_files" / str(daemon.node_id) / ".control.sock"
        self.poll_until(sock.exists, line, f"node {daemon.node_id}'s control socket {sock.relative_to(self.work)}",
                        alive, why)
        last: list[object] = []

        def registered() -> bool:
            last[:] = [self.status(daemon.node_id)]
            return isinstance(last[0], dict) and last[0].get("registered") is True

        self.poll_until(registered, line, f"`p2ptorrent --node {daemon.node_id} status` to say registered",
                        alive, lambda: f"last status: {last[0] if last else '-'}\n{why()}")

    def same_file(self, line: Line, got: Path, want: Path, why: Callable[[], str]) -> None:
        if not got.is_file():
            fail(f"{line}: answered OK but {got.relative_to(self.work)} does not exist\n{why()}")
        if got.stat().st_size != want.stat().st_size or sha256(got) != sha256(want):
            fail(f"{line}: {got.relative_to(self.work)} ({got.stat().st_size} bytes) differs from"
                 f" {want.relative_to(self.work)} ({want.stat().st_size} bytes)\n{why()}")

    def downloaded_name(self, line: Line) -> str | None:
        """For a `download X.torrent` line, the file it must produce: X's name without `.torrent`."""
        words = line.words()
        if "download" not in [w.lower() for w in words]:
            return None
        torrent = words[-1]
        if not torrent.endswith(".torrent"):
            fail(f"{line}: expected a download of a `.torrent` file")
        return Path(torrent[: -len(".torrent")]).name

    # ---- block 1: activation, one-shot commands, foreground daemons
    def foreground_block(self, block: Block) -> None:
        for line in block.lines:
            words = line.words()
            if not words:
                continue
            if words[0] in (".", "source"):
                self.activate(line)
                continue
            self.needs_activation(line)
            daemon = daemon_of(line)
            if daemon is None:
                self.run(line)
                continue
            if "-n" not in words and "--nodaemon" not in words:
                fail(f"{line}: the foreground block starts a twistd without -n")
            if daemon in self.foreground:
                fail(f"{line}: {daemon.name} is already running in the foreground")
            fg = Foreground(line, daemon.name, self.work, self.env)
            self.foreground[daemon] = fg

            def alive(fg: Foreground = fg) -> None:
                if fg.proc.poll() is not None:
                    fg.drained()
                    fail(f"{fg.line}: {fg.name} exited with status {fg.proc.returncode} before it was ready\n"
                         f"{fg.tail()}")

            self.wait_ready(daemon, line, alive, fg.tail)
        if not self.activated:
            fail(f"README.md lines {block.opened_at}-: the first block never runs `. {ACTIVATE}`")

    # ---- block 2: lines typed into the foreground nodes
    def typed_block(self, block: Block) -> None:
        target: Foreground | None = None
        for line in block.lines:
            if line.text.lstrip().startswith("#"):
                marker = MARKER.match(line.text.strip())
                if marker:
                    daemon = Daemon("node", int(marker.group(1)))
                    if daemon not in self.foreground:
                        fail(f"README.md line {line.number} `{line.text.strip()}`: no {daemon.name} was started"
                             " in the foreground block")
                    target = self.foreground[daemon]
                continue  # any other comment is only a comment
            if target is None:
                fail(f"{line}: typed before any `# in node N's terminal:` line says which node it goes to")
            if target.proc.poll() is not None:
                fail(f"{line}: {target.name} already ended (status {target.proc.returncode})\n{target.tail()}")
            mark = len(target.stdout)
            target.type(line.command, line)
            answer: list[str] = []

            def answered(fg: Foreground = target, mark: int = mark, answer: list[str] = answer) -> bool:
                for said in fg.stdout[mark:]:
                    if said.startswith(("OK:", "ERROR:")):
                        answer.append(said)
                        return True
                return False

            def alive(fg: Foreground = target, line: Line = line) -> None:
                if fg.proc.poll() is not None and not answered():
                    fg.drained()
                    if not answered():
                        fail(f"{line}: {fg.name} exited with status {fg.proc.returncode} without answering\n"
                             f"{fg.tail()}")

            self.poll_until(answered, line, f"an `OK:` or `ERROR:` line from {target.name}", alive, target.tail)
            if not answer[0].startswith("OK:"):
                fail(f"{line}: {target.name} answered `{answer[0]}`, not OK\n{target.tail()}")
            name = self.downloaded_name(line)
            if name is not None:
                folder = self.work / "node_files" / str(self.node_id_of(target))
                self.same_file(line, folder / name, self.work / name, target.tail)
            if line.words()[-1].lower() == "exit":
                self.wait_exit(target, line, "after `exit`")
        # The rest stop as a reader stops them: Ctrl-C in each terminal, the last started first.
        for fg in reversed(list(self.foreground.values())):
            if fg.proc.poll() is None and fg not in self.ended:
                fg.proc.send_signal(signal.SIGINT)
                # twistd ends a clean stop on a signal by that signal (a shell shows 130), as Unix programs do.
                self.wait_exit(fg, fg.line, "after SIGINT (Ctrl-C) at the end of the typed block", -signal.SIGINT)
        for fg in self.foreground.values():
            self.no_traceback(fg.line, fg.name, "\n".join(fg.stdout + fg.stderr))

    def node_id_of(self, fg: Foreground) -> int:
        return next(d.node_id for d, f in self.foreground.items() if f is fg)

    def wait_exit(self, fg: Foreground, line: Line, when: str, clean: int = 0) -> None:
        try:
            code = fg.proc.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            fail(f"{line}: {fg.name} still runs {DEADLINE:.0f} s {when}\n{fg.tail()}")
        fg.drained()
        self.ended.append(fg)
        if code != clean:
            fail(f"{line}: {fg.name} exited with status {code} {when}, not {clean}\n{fg.tail()}")

    # ---- block 3: the daemonised way, every line with bash
    def daemonised_block(self, block: Block) -> None:
        for line in block.lines:
            if not line.command:
                continue
            self.needs_activation(line)
            daemon = daemon_of(line)
            # `kill $(cat PIDFILE)`: read whom it names first, to wait until that process is gone.
            named = [pid for path in re.findall(r"\$\(\s*cat\s+([^)\s]+)\s*\)", line.command)
                     if (pid := read_pid(self.work / path)) is not None]
            self.run(line)
            if daemon is not None:
                def alive(daemon: Daemon = daemon, line: Line = line) -> None:
                    # twistd returned once the daemon started: from now on it must keep running.
                    if daemon not in running_daemons(self.work):
                        fail(f"{line}: exited 0, but no process runs {daemon.name} in the folder\n{self.logs()}")

                self.wait_ready(daemon, line, alive, self.logs)
            name = self.downloaded_name(line)
            if name is not None:
                self.same_file(line, self.work / "node_files" / str(node_option(line)) / name, self.work / name,
                               self.logs)
            if line.words()[0] == "kill":
                for pid in named:
                    self.poll_until(lambda pid=pid: not pid_alive(pid), line, f"process {pid} to end",
                                    why=self.logs)
        # The block stops every daemon it started (exit, kill): nothing may still run in the folder.
        last = block.lines[-1]
        self.poll_until(lambda: not processes_in(self.work), last, "every daemon of the block to end",
                        why=lambda: "still running: " + "; ".join(f"{pid}: {cmdline(pid)}"
                                                                 for pid in processes_in(self.work))
                        + "\n" + self.logs())
        for path in sorted(self.work.glob("logs/*")):
            if path.is_file():
                self.no_traceback(last, f"the log {path.relative_to(self.work)}", path.read_text(errors="replace"))

    # ---- teardown, pass or fail
    def kill_leftovers(self) -> None:
        """End every process started here: the Popen objects, the pid files, anything else in the folder."""
        pids = {fg.proc.pid for fg in self.foreground.values() if fg.proc.poll() is None}
        for path in [*self.work.glob("node_files/*/node.pid"), self.work / "tracker_db" / "tracker.pid",
                     self.work / "twistd.pid"]:
            pid = read_pid(path)
            # Only a process of ours in this folder: a stale pid may have been reused by another.
            if pid is not None and pid_alive(pid) and process_cwd(pid) == self.work:
                pids.add(pid)
        pids.update(processes_in(self.work))
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(POLL)
        for pid in pids:
            if pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for fg in self.foreground.values():
            try:
                fg.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            for pipe in (fg.proc.stdin, fg.proc.stdout, fg.proc.stderr):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT left over is not "busy"
        try:
            s.bind((host, port))
        except OSError:
            return False
    return not connects(port, host)


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    s = Session(tmp_path)
    try:
        yield s
    finally:
        s.kill_leftovers()


def test_running_it_by_hand_as_printed(session: Session) -> None:
    blocks = section_blocks(README.read_text(encoding="utf-8"), SECTION)
    shape = [b.info for b in blocks]
    if shape != ["sh", "", "sh"]:
        fail(f"README.md section {SECTION!r}: expected three code blocks (```sh foreground, ``` typed lines,"
             f" ```sh daemonised), found info strings {shape}; this test needs updating with it")
    if not port_is_free(TRACKER_HOST, TRACKER_PORT):
        fail(f"{TRACKER_HOST}:{TRACKER_PORT} is in use before the test starts: the README's tracker needs that"
             " port (its default); stop whatever listens there and run again")
    foreground, typed, daemonised = blocks
    session.foreground_block(foreground)
    session.typed_block(typed)
    session.daemonised_block(daemonised)
