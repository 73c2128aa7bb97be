"""How commands reach a node: the original grammar, stdin, and a control socket.

The original project took ``torrent -setMode send <file>``,
``torrent -setMode download <torrent file>`` and ``torrent -setMode exit`` on
a node's terminal; we keep that grammar (plus ``status``, and ``help``, which
the front end answers itself) for two front ends:

* :class:`StdinControl` for a node in the foreground (``twistd -n p2pnode``):
  one command per line, one ``OK: ...``/``ERROR: ...`` line per result.
* :class:`ControlFactory` for a daemonised node: the ``p2ptorrent`` CLI
  connects to a UNIX socket (mode 600, so only the local user), sends one
  command line and reads JSON lines back: progress, then the result.

Parsing and dispatch are pure; the node supplies :class:`INodeCommands`.
The grammar and the control socket's name are in :mod:`p2ptorrent.commands`
(import them from there), so the CLI can use them without importing Twisted.

Who may command a node (the endpoint's mode, the peer's user) is decided
in :mod:`p2ptorrent.node.access`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from p2ptorrent.commands import HELP, HELP_TEXT, USAGE, Command, CommandError, limit_values, parse_command
from p2ptorrent.node.access import is_loopback, peer_refusal

#: Longest request line the control socket and stdin accept (paths are < 4 KiB).
MAX_LINE = 64 * 1024
#: A control connection that sends no request line within this is closed.
REQUEST_TIMEOUT = 60.0
#: A refused control connection is cut after this many seconds.
REFUSED_LINGER = 5.0
#: Seconds between progress reports: the terminal is read by a person, the
#: socket by a progress bar that wants a smooth rate.
STDIN_PROGRESS_INTERVAL = 1.0
SOCKET_PROGRESS_INTERVAL = 0.2

Progress = Callable[[dict[str, Any]], None]


class INodeCommands(Interface):
    """What a node offers to its operator; implemented by the node service."""

    def send(path: str) -> Deferred[str]:
        """Seed the file at *path*: write its torrent, announce it.

        Fires with a one-line result, e.g. ``"seeding big.bin (104857600
        bytes, info hash ab12...), torrent written to /x/big.bin.torrent"``,
        or fails with an exception whose ``str()`` is the reason.
        """

    def download(torrent_path: str, progress: Progress) -> Deferred[str]:
        """Download the file described by the torrent at *torrent_path*.

        *progress* may be called any number of times with a dict like
        ``{"done": bytes_verified, "total": bytes, "rate": bytes_per_s,
        "peers": n}``.  Fires with a one-line result or fails with the reason.
        """

    def status() -> dict[str, Any]:
        """A JSON-able snapshot: node id, address, files seeded, downloads in progress."""

    def limit(up: int | None, down: int | None) -> str:
        """Set the upload and/or download limit (bytes a second, 0: none; None: unchanged); say what they are now."""

    def exit() -> Deferred[str]:
        """Tell the tracker we leave (EXIT), then stop the node; fires with what the tracker said, for people.

        Should fire once EXIT is answered and *before* the reactor stops (stop it
        with ``callLater(0, ...)`` after firing), so the control reply that
        says "exiting" can still be flushed to the client.
        """


class IOperatorCommands(Interface):
    """The operator's views and verbs (`list`, `info`, `pause`, ...); each NAME is a torrent's name, its info
    hash or a unique prefix of it.  Implemented by the node service; a front end without them says so."""

    def transfers() -> dict[str, Any]:
        """``{"transfers": [row, ...]}``: one row per seeded, downloading or held torrent (see the README)."""

    def info(query: str) -> dict[str, Any]:
        """``{"transfer": row + details + "peer_details"}`` of the torrent *query* names."""

    def pause(query: str) -> Deferred[str]:
        """Stop the download without losing its verified pieces, kept paused across restarts."""

    def resume(query: str) -> Deferred[str]:
        """Go on with a paused or cancelled download from its verified pieces."""

    def cancel(query: str, delete: bool) -> Deferred[str]:
        """Stop the download; keep its verified pieces for a later download, unless *delete*."""

    def stop_seeding(query: str) -> Deferred[str]:
        """Withdraw at the tracker, then stop serving; the file stays."""

    def remove(query: str, delete: bool) -> Deferred[str]:
        """Withdraw, stop, forget; with *delete* also delete the data (only inside the node's folder)."""


#: The operator's verbs that name a torrent, and the IOperatorCommands method each calls.
METHODS = {"info": "info", "pause": "pause", "resume": "resume", "cancel": "cancel",
                  "stop-seeding": "stop_seeding", "remove": "remove"}


def _operator(commands: INodeCommands, command: Command) -> Deferred[Any]:
    if not IOperatorCommands.providedBy(commands):
        return fail(CommandError(f"this node does not know {command.verb!r}"))
    if command.verb == "list":
        return maybeDeferred(commands.transfers)
    if not command.argument:
        return fail(CommandError(f"{command.verb} needs a torrent's name or info hash; {USAGE}"))
    method = getattr(commands, METHODS[command.verb])
    if command.verb in ("cancel", "remove"):
        return maybeDeferred(method, command.argument, command.delete_data)
    return maybeDeferred(method, command.argument)


def dispatch(commands: INodeCommands, command: Command, progress: Progress) -> Deferred[Any]:
    """Run *command*; fires with the result line (a dict for ``status``).

    Exceptions raised synchronously by the node become failures, so callers
    have one error path.  ``help`` is answered here: the node is not asked.
    """
    argument = command.argument
    if command.verb == HELP:
        return succeed(HELP_TEXT)
    if command.verb in ("send", "download") and not argument:
        return fail(CommandError(f"{command.verb} needs a path; {USAGE}"))
    if command.verb == "send" and argument:
        return maybeDeferred(commands.send, argument)
    if command.verb == "download" and argument:
        return maybeDeferred(commands.download, argument, progress)
    if command.verb == "status":
        return maybeDeferred(commands.status)
    if command.verb == "limit":
        try:
            values = limit_values(argument)
        except CommandError as e:
            return fail(e)
        return maybeDeferred(commands.limit, values.get("up"), values.get("down"))
    if command.verb == "list" or command.verb in METHODS:
        return _operator(commands, command)
    if command.verb == "exit":
        return maybeDeferred(commands.exit).addCallback(lambda said: said if isinstance(said, str) else "the node is stopping")
    return fail(CommandError(f"unknown mode {command.verb!r}; {USAGE}"))


def reason(failure: Failure) -> str:
    """The human reason carried by *failure*: its exception's text, or its type."""
    text = str(failure.value).strip()
    return text or type(failure.value).__name__


# ---- progress

class Throttle:
    """Lets an event through at most once per *interval* seconds of *clock*."""

    def __init__(self, clock: IReactorTime, interval: float) -> None:
        self._clock = clock
        self._interval = interval
        self._last: float | None = None

    def ready(self) -> bool:
        now = self._clock.seconds()
        if self._last is not None and now - self._last < self._interval:
            return False
        self._last = now
        return True


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def format_progress(progress: dict[str, Any]) -> str:
    """One line for a person: ``12.0 MiB of 100.0 MiB (12%) at 4.5 MiB/s, 3 peers``.

    Missing or odd fields are left out rather than trusted.
    """
    done = _number(progress.get("done"))
    total = _number(progress.get("total"))
    rate = _number(progress.get("rate"))
    peers = progress.get("peers")
    parts = []
    if done is not None and total:
        parts.append(f"{_size(done)} of {_size(total)} ({100 * done / total:.0f}%)")
    elif done is not None:
        parts.append(_size(done))
    if rate is not None:
        parts.append(f"at {_size(rate)}/s")
    text = " ".join(parts) or "working"
    if isinstance(peers, int) and not isinstance(peers, bool):
        text += f", {peers} peer" + ("" if peers == 1 else "s")
    return text


def _default_clock() -> IReactorTime:
    from twisted.internet import reactor

    return reactor


# ---- stdin

@implementer(IHalfCloseableProtocol)
class StdinControl(LineReceiver):
    """Commands typed on a foreground node's terminal; one result line each.

    ``help`` is the exception: ``OK: commands, one a line:``, then the list
    on the lines after it, indented.  Commands run concurrently (``status``
    works during a download).  End of input only stops reading: a node
    started with stdin from /dev/null keeps running.  It is half-closeable so
    StandardIO keeps stdout open after EOF.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE
    log = Logger()

    def __init__(self, commands: INodeCommands, clock: IReactorTime | None = None) -> None:
        self._commands = commands
        self._clock = clock if clock is not None else _default_clock()
        self._skipping = False

    def lineReceived(self, line: bytes) -> None:
        if self._skipping:  # the tail of a line that was too long
            self._skipping = False
            return
        text = line.decode("utf-8", "surrogateescape").strip()
        if not text:
            return
        try:
            command = parse_command(text)
        except CommandError as e:
            self._say(f"ERROR: {e}")
            return
        if command.verb == HELP:
            # The list on its own lines (one result line would be unreadable), the first one marked as usual.
            for i, help_line in enumerate(HELP_TEXT.splitlines()):
                self._say(("OK: " if i == 0 else "") + help_line)
            return
        label = command.verb if command.argument is None else f"{command.verb} {os.path.basename(command.argument)}"
        throttle = Throttle(self._clock, STDIN_PROGRESS_INTERVAL)

        def progress(p: dict[str, Any]) -> None:
            if isinstance(p.get("note"), str):
                self._say(f"{label}: {p['note']}")
            elif throttle.ready():
                self._say(f"{label}: {format_progress(p)}")

        d = dispatch(self._commands, command, progress)
        if command.verb in ("list", "info", "status"):
            d.addCallback(self._table, command.verb)
        d.addCallbacks(self._done, self._failed, errbackArgs=(command,))

    def _table(self, result: Any, verb: str) -> None:
        """`list`, `info` and `status` print the CLI's tables, one line each, the first marked as usual (as
        ``help``); scripts read the JSON through the control socket (``p2ptorrent status --json``)."""
        from p2ptorrent import views

        try:
            width = int(os.environ.get("COLUMNS", "")) or views.NODE_COLUMNS
        except ValueError:
            width = views.NODE_COLUMNS
        render = {"list": views.render_list, "info": views.render_info, "status": views.render_status}[verb]
        text = render(result, width)
        for i, line in enumerate(text.splitlines()):
            self._say(("OK: " if i == 0 else "") + line)

    def _done(self, result: Any) -> None:
        if result is None:  # already said (a table)
            return
        if isinstance(result, dict):
            result = json.dumps(result, sort_keys=True, default=str)
        self._say(f"OK: {result}")

    def _failed(self, failure: Failure, command: Command) -> None:
        self.log.info("{verb} failed: {reason}", verb=command.verb, reason=reason(failure))
        self._say(f"ERROR: {reason(failure)}")

    def _say(self, text: str) -> None:
        if self.transport is not None:
            self.sendLine(" ".join(text.splitlines()).encode("utf-8", "surrogateescape"))

    def lineLengthExceeded(self, line: bytes) -> None:
        if not self._skipping:
            self._say(f"ERROR: line too long (over {self.MAX_LENGTH} bytes); {USAGE}")
        head, sep, rest = line.partition(self.delimiter)
        if not sep:
            self._skipping = True  # drop the rest of this line when it ends
            return
        self._skipping = False
        # We are inside dataReceived, which returns after this call: handle
        # any complete lines after the long one on the next turn.
        self._buffer = rest
        if rest:
            self._clock.callLater(0, self.dataReceived, b"")

    def readConnectionLost(self) -> None:
        # A last command without a final newline (printf, a file) still counts.
        rest = self.clearLineBuffer()
        if rest and not self._skipping:
            self.lineReceived(rest)
        self.log.info("stdin closed; the node keeps running")

    def writeConnectionLost(self) -> None:
        self.log.info("stdout closed; command results are no longer printed")


# ---- control socket

class ControlProtocol(LineReceiver):
    """One request line in the original grammar, then JSON lines back.

    Replies: ``{"progress": {...}}`` (throttled), then ``{"ok": true,
    "result": ...}`` or ``{"ok": false, "error": "..."}``, then close.
    Closing early does not cancel a download: the node keeps going.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE
    log = Logger()

    def __init__(
        self,
        commands: INodeCommands,
        clock: IReactorTime,
        request_timeout: float = REQUEST_TIMEOUT,
        check_peer: bool = False,
    ) -> None:
        self._commands = commands
        self._clock = clock
        self._request_timeout = request_timeout
        self._check_peer = check_peer
        self._timeout: IDelayedCall | None = None
        self._throttle = Throttle(clock, SOCKET_PROGRESS_INTERVAL)
        self._finished = False

    def connectionMade(self) -> None:
        if self._check_peer:
            why = peer_refusal(self.transport)
            if why is not None:
                assert self.transport is not None
                self.log.warn("control connection from {peer} refused: {why}", peer=self.transport.getPeer(), why=why)
                self._refuse(why)
                return
        self._timeout = self._clock.callLater(self._request_timeout, self._timedOut)

    def lineReceived(self, line: bytes) -> None:
        if self._finished:
            return
        self._cancel_timeout()
        # Only one request per connection: ignore anything after it, but keep
        # reading so we notice when the client goes away.
        self.setRawMode()
        if line.endswith(b"\r"):
            line = line[:-1]
        try:
            text = line.decode("utf-8", "surrogateescape")
            command = parse_command(text)
        except CommandError as e:
            self._finish({"ok": False, "error": str(e)})
            return
        self.log.info("control command {verb} {argument!r}", verb=command.verb, argument=command.argument)
        d = dispatch(self._commands, command, self._progress)
        d.addCallbacks(self._succeeded, self._failed, errbackArgs=(command,))

    def rawDataReceived(self, data: bytes) -> None:
        pass

    def _refuse(self, why: str) -> None:
        """Say no, without reading a command.

        Only the sending side is closed at once: a client that writes its
        command before reading would otherwise get "broken pipe" instead of
        the reason.  Whatever it sends is dropped; the connection ends when it
        closes, or after REFUSED_LINGER seconds.
        """
        self.setRawMode()
        self._send({"ok": False, "error": f"refused: {why}"})
        self._finished = True
        transport = self.transport
        assert transport is not None
        lose_write = getattr(transport, "loseWriteConnection", None)
        if lose_write is None:
            transport.loseConnection()
            return
        lose_write()
        self._timeout = self._clock.callLater(REFUSED_LINGER, getattr(transport, "abortConnection", transport.loseConnection))

    def lineLengthExceeded(self, line: bytes) -> None:
        self._cancel_timeout()
        self.setRawMode()
        self._finish({"ok": False, "error": f"request line too long (over {self.MAX_LENGTH} bytes)"})

    def _progress(self, progress: dict[str, Any]) -> None:
        # A note (what the node waits for) is rare and must not be lost to the throttle.
        if self._finished or ("note" not in progress and not self._throttle.ready()):
            return
        try:
            self._send({"progress": progress})
        except (TypeError, ValueError):
            self.log.failure("progress report is not JSON-able: {progress!r}", progress=progress)

    def _succeeded(self, result: Any) -> None:
        try:
            self._finish({"ok": True, "result": result})
        except (TypeError, ValueError):
            self.log.failure("result is not JSON-able: {result!r}", result=result)
            self._finish({"ok": False, "error": "the node's answer could not be encoded"})

    def _failed(self, failure: Failure, command: Command) -> None:
        self.log.info("control command {verb} failed: {reason}", verb=command.verb, reason=reason(failure))
        self._finish({"ok": False, "error": reason(failure)})

    def _finish(self, reply: dict[str, Any]) -> None:
        if self._finished:
            return
        self._send(reply)
        self._finished = True
        if self.transport is not None:
            self.transport.loseConnection()

    def _send(self, obj: dict[str, Any]) -> None:
        if self.transport is None or self._finished:
            return
        # default=str: paths, sets and the like in a status dict still travel.
        self.sendLine(json.dumps(obj, default=str, allow_nan=False).encode("ascii"))

    def _timedOut(self) -> None:
        self._timeout = None
        self.setRawMode()
        self._finish({"ok": False, "error": f"no request within {self._request_timeout:g} seconds"})

    def _cancel_timeout(self) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._cancel_timeout()
        self._finished = True


class ControlFactory(ServerFactory):
    """Serves :class:`ControlProtocol` for a node's :class:`INodeCommands`."""

    noisy = False

    log = Logger()

    def __init__(
        self,
        commands: INodeCommands,
        clock: IReactorTime | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
        allow_remote: bool = False,
    ) -> None:
        self.commands = commands
        self.clock = clock if clock is not None else _default_clock()
        self.request_timeout = request_timeout
        self.allow_remote = allow_remote

    def buildProtocol(self, addr: Any) -> Protocol | None:
        if not self.allow_remote and isinstance(addr, (IPv4Address, IPv6Address)) and not is_loopback(addr.host):
            # Another host: not even a reply (returning None closes the connection).
            self.log.warn("control connection from {host}:{port} refused: another host", host=addr.host, port=addr.port)
            return None
        # *addr* is None only for in-memory transports in tests: nothing to check there.
        p = ControlProtocol(self.commands, self.clock, self.request_timeout, check_peer=not self.allow_remote and addr is not None)
        p.factory = self
        return p
