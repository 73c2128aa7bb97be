"""``p2ptorrent``: tell a running node what to do, over its control socket.

    p2ptorrent --node 1 send big.bin
    p2ptorrent download big.bin.torrent --node 2   (options may follow the command)
    p2ptorrent --node 1 torrent -setMode exit      (the original grammar)
    p2ptorrent help                                (no node needed; so is --version)

The node (``twistd p2pnode --id N``) listens on ``node_files/N/.control.sock``
by default.  We send one command line, draw a progress bar from the JSON
progress lines, and print the node's answer.  Exit status: 0 done, 1 the node
refused or failed, 2 a usage error (argparse's own status), 3 no such node
running, 130 interrupted.

One blocking socket from the standard library does it: this runs once per
command, so it imports neither Twisted nor the node (the grammar comes from
:mod:`p2ptorrent.commands`), and tqdm only once progress arrives.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TextIO

# No Twisted in here: it would cost every command ~0.4 s of imports, for one
# blocking request and reply.  Keep it that way (tests/test_cli_fast.py checks).
from p2ptorrent.commands import (
    BARE_VERBS,
    DELETE_DATA,
    DELETING_VERBS,
    HELP,
    OPERATOR_VERBS,
    VERBS,
    Command,
    CommandError,
    ControlError,
    ControlTarget,
    client_endpoint,
    control_socket_path,
    control_target,
    default_control_endpoint,
    limit_values,
    parse_command,
    suggest,
)
from p2ptorrent.config import Config, ConfigError, load
from p2ptorrent.magnet import is_magnet

EXIT_OK = 0
EXIT_FAILED = 1
#: A command line we cannot make sense of: the status argparse exits with.
EXIT_USAGE = 2
EXIT_NO_NODE = 3
#: What a shell reports for a process stopped by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130

#: Longest reply line we accept: a status listing many files stays well under.
MAX_REPLY_LINE = 16 * 1024 * 1024
#: Bytes asked of the socket at a time.
RECEIVE_SIZE = 64 * 1024
#: Seconds between two looks at whether Ctrl-C or SIGTERM came, while waiting for the node.
INTERRUPT_POLL = 0.2

#: Set by SIGINT or SIGTERM (see main).  The handler only sets it: a KeyboardInterrupt raised
#: in the middle of an import (tqdm's, when the first progress arrives) can be swallowed by
#: Python, and the client would then wait for ever; the reply loop looks at this instead.
_interrupted = False

COMMANDS_HELP = """\
commands:
  send FILE|DIR      seed a file or a folder: write its .torrent in the node's folder, announce it
  download TORRENT   fetch the file TORRENT describes, with a progress bar
  download MAGNET    the same from a magnet link ('magnet:?xt=urn:btih:...': quote it) or an info hash
  status             the node in a few lines: tracker, how much it seeds and downloads, rates
  list               one row per transfer: hash, name, done, size, ETA, rates, ratio, peers, state
  info NAME          one transfer's details and its peers (NAME: a name, an info hash or a unique prefix)
  pause NAME         stop a download without losing its pieces; it stays paused after a restart
  resume NAME        go on with a paused or cancelled download from its verified pieces
  cancel NAME        stop a download; its verified pieces are kept for a later download
                     (--delete-data: delete them)
  stop-seeding NAME  withdraw it at the tracker, then stop serving it; the file stays
  remove NAME        withdraw, stop and forget it (--delete-data: also delete its file or folder and
                     partial data; only inside the node's folder)
  --json             with status, list or info: the node's answer as JSON, for scripts
  exit               tell the tracker the node leaves, and stop the node
  limit --up SIZE --down SIZE
                     set the node's upload and download limits, bytes a second in all
                     (20MiB, 512KiB; 0: none); either may be left out; alone: show them
  help               show this help (no node needed)
  torrent -setMode send FILE | download TORRENT | status | exit | limit up=SIZE down=SIZE | help
  torrent -setMode list | info NAME | pause NAME | cancel NAME [--delete-data] | ...
                     the same commands in the original grammar

Options may go before or after the command (download x.torrent --node 3);
a FILE that starts with "-" goes after "--" (send -- -x.bin).
Exit status: 0 done, 1 the node refused or failed (the reason is printed),
2 bad usage, 3 no such node is running, 130 interrupted.
"""

#: Stands in for the original grammar's "-setMode" while argparse reads the
#: options: argparse would take it for an unknown option.
_SETMODE = "\0setMode"


class ControlReplyError(Exception):
    """The node answered something that does not follow the control protocol."""


class ConnectionClosedEarly(Exception):
    """The node closed the connection before sending its answer."""


# ---- command line

def version() -> str:
    """This package's version, from its installed metadata."""
    from importlib import metadata  # only --version pays for it

    try:
        return metadata.version("p2ptorrent")
    except metadata.PackageNotFoundError:
        return "(version unknown: the package is not installed)"


class _PrintVersion(argparse.Action):
    """``--version``: like argparse's own, but the metadata is only read when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: str | None = None) -> None:
        print(f"{parser.prog} {version()}")
        parser.exit(EXIT_OK)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2ptorrent",
        usage="%(prog)s [-h] [--version] [--node N] [--node-files-dir DIR] [--config FILE] [--control ENDPOINT]"
        " COMMAND ...",
        description="Command a running p2ptorrent node (started with: twistd p2pnode --id N).",
        epilog=COMMANDS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_PrintVersion, help="print the version and exit")
    parser.add_argument("-n", "--node", type=int, default=1, metavar="N", help="id of the node to command (default: 1)")
    parser.add_argument(
        "--node-files-dir",
        metavar="DIR",
        help="folder holding each node's files, as given to the node (default: node_files/)",
    )
    parser.add_argument(
        "-c", "--config", metavar="FILE", help="the node's JSON settings file, to find its node_files_dir"
    )
    parser.add_argument(
        "--control",
        metavar="ENDPOINT",
        help="the node's control endpoint if it was started with --control,"
        " e.g. unix:path=/tmp/p2pnode-1.sock (default: DIR/N/.control.sock)",
    )
    parser.add_argument("--json", action="store_true", help="print the node's answer as JSON (status, list, info)")
    parser.add_argument("--delete-data", action="store_true", help="cancel, remove: delete the data too")
    parser.add_argument("--up", metavar="SIZE", help="with limit: the upload limit, bytes a second (20MiB; 0: none)")
    parser.add_argument("--down", metavar="SIZE", help="with limit: the download limit, bytes a second (0: none)")
    parser.add_argument("command", nargs="*", metavar="COMMAND ...", help=argparse.SUPPRESS)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Options wherever they are among the command's words; usage errors exit 2 through argparse.

    ``--`` ends the options: every word after it belongs to the command, so
    ``send -- -x.bin`` sends a file named ``-x.bin``.  Everything before it
    goes through argparse's intermixed parsing, with the original grammar's
    ``-setMode`` (after ``torrent``) hidden from it.  We take the ``--`` off
    ourselves: Python 3.11's intermixed parsing mishandles it (``-- send -x``
    is refused).
    """
    words = list(sys.argv[1:] if argv is None else argv)
    after: list[str] = []
    if "--" in words:
        at = words.index("--")
        words, after = words[:at], words[at + 1 :]
    # Only right after "torrent" (or a misspelling of it, to be answered with a
    # suggestion): anywhere else a word starting with "-" must come after "--".
    hidden = [
        _SETMODE if word.lower() == "-setmode" and i and suggest(words[i - 1], ("torrent",)) else word
        for i, word in enumerate(words)
    ]
    args, unknown = parser.parse_known_intermixed_args(hidden)
    if unknown:
        parser.error(
            f"unrecognized arguments: {' '.join(unknown)}"
            ' (a FILE that starts with "-" goes after "--", e.g. send -- -x.bin)'
        )
    args.command = ["-setMode" if word == _SETMODE else word for word in args.command] + after
    return args


def command_from_words(words: Sequence[str]) -> Command:
    """The command named by the words after the options, in either grammar.

    The original grammar takes the rest of the line as the path (words are
    joined with spaces, as the node's terminal would read them); the short
    form wants exactly one FILE, so a forgotten pair of quotes is caught.
    """
    words = list(words)
    original = bool(words) and words[0].lower() == "torrent"
    if original:
        if len(words) < 3 or words[1].lower() != "-setmode":
            parse_command(" ".join(words))  # raises with the precise reason
        words = words[2:]
    if not words:
        raise CommandError("missing command: send FILE, download TORRENT, status, exit or help")
    verb, args = words[0].lower(), words[1:]
    known = (*VERBS, *OPERATOR_VERBS, HELP)
    if verb not in known:
        meant = suggest(verb, known if original else ("torrent", *known))
        if meant is not None:
            raise CommandError(f"unknown command {words[0]!r}: did you mean {meant!r}?")
        raise CommandError(f"unknown command {words[0]!r}: use send FILE, download TORRENT, status, exit or help")
    if verb == "limit":
        limit_values(" ".join(args))  # up=SIZE down=SIZE, refused here with the reason
        return Command(verb, " ".join(args) or None)
    if verb in (*BARE_VERBS, HELP):
        if args:
            raise CommandError(f"{verb} takes no argument, got {' '.join(args)!r}")
        return Command(verb)
    what = {"send": "FILE", "download": "TORRENT"}.get(verb, "NAME (a torrent's name or info hash)")
    if not args or not "".join(args):
        raise CommandError(f"{verb} needs a {what}")
    if len(args) > 1 and not original:
        raise CommandError(f"{verb} takes one {what}, got {len(args)}: quote a path that contains spaces")
    return Command(verb, " ".join(args))


def _limit_options(command: Command, up: str | None, down: str | None) -> Command:
    """``limit --up 20MiB --down 0``: the options as the grammar's words (``up=20MiB down=0``)."""
    if command.verb != "limit":
        raise CommandError("--up and --down go with the limit command: limit --up 20MiB --down 0")
    words = [w for w in (command.argument or "").split()]
    words += [f"{name}={value}" for name, value in (("up", up), ("down", down)) if value is not None]
    text = " ".join(words)
    limit_values(text)
    return Command("limit", text)


@dataclass(frozen=True)
class Request:
    """Everything needed to talk to the node, decided before any I/O."""

    command: Command
    #: Client endpoint description (``unix:path=...``).
    endpoint: str
    #: Where we connect, for messages: the socket path, or the endpoint.
    where: str
    #: The node's id; None when --control chose the endpoint.
    node: int | None
    #: What *endpoint* says to connect to.
    target: ControlTarget
    #: Print the node's answer as JSON (status, list, info), not as a table.
    json: bool = False


def prepare(argv: Sequence[str] | None = None) -> Request:
    """Parse *argv*; usage errors exit through argparse (EXIT_USAGE) with a message.

    ``help`` (and ``-h``, ``--version``) exit 0 here, without a node.
    """
    parser = build_parser()
    args = parse_args(parser, argv)
    if args.node < 0:
        parser.error(f"--node must be a node id (0 or more), got {args.node}")
    try:
        command = command_from_words(args.command)
        if args.up is not None or args.down is not None:
            command = _limit_options(command, args.up, args.down)
    except CommandError as e:
        parser.error(str(e))
    if command.verb == HELP:
        parser.print_help()
        parser.exit(EXIT_OK)
    if args.delete_data:
        if command.verb not in DELETING_VERBS:
            parser.error(f"{DELETE_DATA} goes with cancel or remove, not {command.verb}")
        command = Command(command.verb, command.argument, delete_data=True)
    if (command.verb in ("send", "download") and command.argument is not None and os.path.exists(command.argument)
            and not is_magnet(command.argument)):
        # The node's working folder may differ from ours.  A name that is not
        # here is passed as given: the node looks for it in its own folder.
        command = Command(command.verb, os.path.abspath(command.argument))
    try:
        command.line()
    except CommandError as e:
        parser.error(str(e))

    if args.control:
        try:
            endpoint = client_endpoint(args.control)
            target = control_target(endpoint)
        except ControlError as e:
            parser.error(str(e))
        return Request(command, endpoint, control_socket_path(endpoint) or args.control, None, target, args.json)

    try:
        overrides = {"node_files_dir": args.node_files_dir} if args.node_files_dir else {}
        settings = load(args.config, overrides) if (args.config or overrides) else Config()
        server = default_control_endpoint(settings, args.node)
        endpoint = client_endpoint(server)
        target = control_target(endpoint)
    except (ConfigError, ControlError) as e:
        parser.error(str(e))
    return Request(command, endpoint, control_socket_path(endpoint) or endpoint, args.node, target, args.json)


# ---- the wire

class CannotConnect(Exception):
    """No connection to the control endpoint; *code* is the errno, when there is one."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.code = code


class ReplyReader:
    """Turns the node's bytes into its answer: JSON progress lines, then the answer line.

    No socket here, so every odd reply can be tested with plain bytes.
    Lines end with ``\n``; one longer than *max_line* bytes is an error.
    """

    def __init__(self, progress: Callable[[dict[str, Any]], None], max_line: int = MAX_REPLY_LINE) -> None:
        self._progress = progress
        self._max_line = max_line
        self._buffer = bytearray()
        #: How much of the buffer is known to hold no line end, so a long
        #: line arriving in many pieces is not searched again and again.
        self._searched = 0

    def feed(self, data: bytes) -> dict[str, Any] | None:
        """The answer once its line is complete, else None; ControlReplyError if the node breaks the protocol.

        The answer is {"ok": true, "result": ...} or {"ok": false, "error": ...};
        whatever follows it is ignored.
        """
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n", self._searched)
            if end < 0:
                if len(self._buffer) > self._max_line:
                    raise ControlReplyError(f"the node sent a line over {self._max_line} bytes")
                self._searched = len(self._buffer)
                return None
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._searched = 0
            if len(line) > self._max_line:
                raise ControlReplyError(f"the node sent a line over {self._max_line} bytes")
            answer = self._line(line)
            if answer is not None:
                return answer

    def closed(self) -> NoReturn:
        """The node closed the connection before its answer (a partial last line is dropped)."""
        raise ConnectionClosedEarly("the node closed the connection without answering")

    def _line(self, line: bytes) -> dict[str, Any] | None:
        try:
            message = json.loads(line)
        except ValueError:
            raise ControlReplyError(f"the node sent a line that is not JSON: {line[:80]!r}") from None
        if not isinstance(message, dict):
            raise ControlReplyError(f"the node sent a line that is not a JSON object: {line[:80]!r}")
        if "progress" in message:
            if isinstance(message["progress"], dict):
                try:
                    self._progress(message["progress"])
                except Exception:
                    # The bar is only decoration: say why it broke, keep waiting for the answer.
                    import traceback

                    print("drawing progress failed", file=sys.stderr)
                    traceback.print_exc(file=sys.stderr)
            return None
        if message.get("ok") is True and "result" in message:
            return message
        if message.get("ok") is False:
            return {"ok": False, "error": str(message.get("error") or "the node gave no reason")}
        raise ControlReplyError(f"the node sent an unexpected message: {line[:80]!r}")


def connect(target: ControlTarget) -> socket.socket:
    """A connected, blocking socket to *target*; CannotConnect says why not."""
    try:
        if target.path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(target.timeout)
                sock.connect(target.path)
            except BaseException:
                sock.close()
                raise
        else:
            assert target.host is not None
            bind = (target.bind, 0) if target.bind else None
            sock = socket.create_connection((target.host, target.port), target.timeout, source_address=bind)
    except socket.gaierror:
        raise CannotConnect(f"DNS lookup failed: {target.host}.") from None
    except OSError as e:
        code = e.errno
        if not isinstance(code, int):
            code = errno.ETIMEDOUT if isinstance(e, TimeoutError) else None
        raise CannotConnect(os.strerror(code) if code else str(e) or type(e).__name__, code) from None
    except ValueError as e:  # a path with a NUL byte in it
        raise CannotConnect(str(e)) from None
    sock.settimeout(None)  # a download takes as long as it takes
    return sock


def request(target: ControlTarget, line: str, progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Send *line* to the node at *target*; the node's final reply.

    Raises CannotConnect, ConnectionClosedEarly or ControlReplyError.
    """
    reader = ReplyReader(progress)
    with connect(target) as sock:
        try:
            sock.sendall(line.encode("utf-8", "surrogateescape") + b"\n")
        except OSError:
            pass  # a node that refuses us may close first: its reason can still be read
        sock.settimeout(INTERRUPT_POLL)
        while True:
            if _interrupted:
                raise KeyboardInterrupt
            try:
                data = sock.recv(RECEIVE_SIZE)
            except TimeoutError:
                continue  # nothing yet: a download takes as long as it takes
            except OSError:
                data = b""  # reset by the node: the same as a close
            if not data:
                reader.closed()
            answer = reader.feed(data)
            if answer is not None:
                return answer


# ---- showing progress

class ProgressBar:
    """A tqdm bar on *file*, created on the first report, named after the file being fetched.

    Its words are ours (p2ptorrent.views): binary units like the tables, and a rate that is a moving
    average of the reports seen since this client attached (not the bytes fetched before it came).
    *enabled* None means "only if *file* is a terminal", so scripts and logs get the result line
    without bar debris.  *clock* gives seconds (monotonic); tests pass their own.
    """

    def __init__(self, file: TextIO, description: str, enabled: bool | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        import time

        from p2ptorrent.views import RateAverage

        self._file = file
        self._description = description
        self._enabled = enabled
        self._clock = clock or time.monotonic
        self._rate = RateAverage()
        self._bar: Any = None
        self._note: str | None = None
        self._peers: Any = None

    def update(self, progress: dict[str, Any]) -> None:
        name = progress.get("name")
        if isinstance(name, str) and name and name != self._description:
            self._description = name
            if self._bar is not None:
                self._bar.set_description_str(name, refresh=False)
        note = progress.get("note")
        if isinstance(note, str) and note != self._note:
            # What the node is waiting for, said once, also when no bar is drawn.
            self._note = note
            line = f"{self._description}: {note}"
            if self._bar is not None and not self._bar.disable:
                self._bar.write(line, file=self._file)
            else:
                print(line, file=self._file, flush=True)
        done = progress.get("done")
        total = progress.get("total")
        if not isinstance(done, int) or isinstance(done, bool):
            return
        known = isinstance(total, int) and not isinstance(total, bool) and total > 0
        from p2ptorrent.views import progress_text

        per_second = self._rate.seen(self._clock(), done)
        if isinstance(progress.get("peers"), int):
            self._peers = progress.get("peers")
        words = progress_text(done, total if known else None, per_second, self._peers)
        if self._bar is None:
            from tqdm import tqdm  # only clients that show progress pay the import

            disable = None if self._enabled is None else not self._enabled
            self._bar = tqdm(
                total=total if known else None,
                initial=done,  # what was fetched before we attached is not this bar's progress
                desc=self._description,
                bar_format=self._format(known, words),
                file=self._file,
                disable=disable,
                dynamic_ncols=True,
                leave=True,
            )
        if known and self._bar.total != total:
            self._bar.total = total
        self._bar.bar_format = self._format(known, words)
        self._bar.update(done - self._bar.n)

    @staticmethod
    def _format(known: bool, words: str) -> str:
        """The bar's layout with our words in it (tqdm's own units would mix SI and binary)."""
        words = words.replace("{", "{{").replace("}", "}}")
        return f"{{desc}}: {{percentage:3.0f}}%|{{bar}}| {words}" if known else f"{{desc}}: {words}"

    def close(self, complete: bool) -> None:
        if self._bar is None:
            return
        if complete and self._bar.total:
            from p2ptorrent.views import progress_text

            total = int(self._bar.total)
            self._bar.bar_format = self._format(True, progress_text(total, total, self._rate.value, self._peers))
            self._bar.update(self._bar.total - self._bar.n)
        self._bar.close()
        self._bar = None


def bar_name(command: Command) -> str:
    """What the bar is called before the node names the file: the torrent's file name without .torrent."""
    name = os.path.basename(command.argument or "") or command.verb
    return name[: -len(".torrent")] if name.endswith(".torrent") and len(name) > len(".torrent") else name


def render(command: Command, result: Any, as_json: bool, width: int) -> str:
    """The node's answer as a person (a table) or a script (``--json``) reads it."""
    if as_json or not isinstance(result, dict):
        return json.dumps(result, indent=2, sort_keys=True) if isinstance(result, (dict, list)) or as_json else str(result)
    from p2ptorrent import views

    if command.verb == "list":
        return views.render_list(result, width)
    if command.verb == "info":
        return views.render_info(result, width)
    if command.verb == "status":
        return views.render_status(result, width)
    return json.dumps(result, indent=2, sort_keys=True)


def terminal_width(out: TextIO) -> int:
    """The width to draw tables in: the terminal's (or $COLUMNS), else 100 columns."""
    import shutil

    try:
        if out.isatty():
            return os.get_terminal_size(out.fileno()).columns
    except (OSError, ValueError, AttributeError):
        pass
    return shutil.get_terminal_size((100, 24)).columns


# ---- running

def _cannot_connect(req: Request, error: CannotConnect) -> str:
    """Why we could not reach the node, phrased for what most likely happened."""
    code = error.code
    reason = str(error)
    if code == errno.ECONNREFUSED and req.target.path is not None:
        reason += "; a node that stopped uncleanly left the socket behind"
    if code in (errno.ENOENT, errno.ECONNREFUSED):
        who = "no node is listening" if req.node is None else f"no node {req.node} is running"
    else:
        who = "cannot reach the node" if req.node is None else f"cannot reach node {req.node}"
    return f"{who}: cannot connect to {req.where} ({reason})"


def run(req: Request, out: TextIO, err: TextIO, show_progress: bool | None = None) -> int:
    """Carry out *req* against the node; print the answer; the exit status.

    Blocks until the node answers.  KeyboardInterrupt (Ctrl-C) passes
    through, after the bar is closed: :func:`main` says what it means.
    """
    command = req.command
    bar = ProgressBar(err, bar_name(command), show_progress)
    try:
        reply = request(req.target, command.line(), bar.update)
    except CannotConnect as e:
        bar.close(False)
        print(_cannot_connect(req, e), file=err)
        return EXIT_NO_NODE
    except ConnectionClosedEarly as e:
        bar.close(False)
        if command.verb == "exit":
            # The node stopped before its goodbye got out: that is what we asked.
            print("the node has stopped", file=out)
            return EXIT_OK
        print(f"error: {e}", file=err)
        return EXIT_FAILED
    except ControlReplyError as e:
        bar.close(False)
        print(f"error: {e}", file=err)
        return EXIT_FAILED
    except BaseException:
        bar.close(False)
        raise
    if reply["ok"]:
        bar.close(True)
        print(render(command, reply["result"], req.json, terminal_width(out)), file=out)
        return EXIT_OK
    bar.close(False)
    print(f"error: {reply['error']}", file=err)
    return EXIT_FAILED


def _interrupt(signum: int, frame: Any) -> None:
    global _interrupted
    _interrupted = True


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: ``p2ptorrent [options] COMMAND ...``; returns the exit status."""
    try:
        req = prepare(argv)
    except SystemExit as e:  # argparse: -h, or a usage error
        return e.code if isinstance(e.code, int) else EXIT_OK

    # Ctrl-C and SIGTERM (as Twisted's reactor did) stop us with the same message and status.
    try:
        previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread (an embedding program): leave signals alone
        previous = {}
    try:
        return run(req, sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        keeps = {"download": "downloading", "send": "preparing the file"}.get(req.command.verb)
        print("\ninterrupted" + (f": the node keeps {keeps}" if keeps else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
