"""How commands reach a node: the original grammar, stdin, and a control socket.

The original project took ``torrent -setMode send <file>``,
``torrent -setMode download <torrent file>`` and ``torrent -setMode exit`` on
a node's terminal; we keep that grammar (plus ``status``) for two front ends:

* :class:`StdinControl` for a node in the foreground (``twistd -n p2pnode``):
  one command per line, one ``OK: ...``/``ERROR: ...`` line per result.
* :class:`ControlFactory` for a daemonised node: the ``p2ptorrent`` CLI
  connects to a UNIX socket (mode 600, so only the local user), sends one
  command line and reads JSON lines back: progress, then the result.

Parsing and dispatch are pure; the node supplies :class:`INodeCommands`.

Who may command a node
----------------------
Only the user the node runs as.  Three checks, each enough on its own for
the default endpoint:

1. The default endpoint is a UNIX socket, ``<node folder>/.control.sock``,
   created with mode 600 (Twisted sets the mode before it listens, so there
   is no moment when it is open to others).  No TCP port is opened for
   control unless one is asked for with ``--control``.
2. :func:`check_control_endpoint` refuses, at start, an endpoint others could
   reach: ``tcp:``/``tcp6:`` without ``interface=`` or on a non-loopback
   address, a ``unix:`` socket whose mode gives group or other any access (a
   ``unix:`` endpoint without ``mode=`` gets ``mode=600``, not Twisted's 666),
   an abstract UNIX socket, and any other endpoint type.  The setting
   ``CONTROL_ALLOW_REMOTE=1`` lifts this: then anyone who can reach the
   endpoint can command the node (keep it behind a firewall or an SSH tunnel).
3. Every connection is checked when it is accepted (:func:`peer_refusal`):
   on a UNIX socket the peer's uid comes from the kernel (SO_PEERCRED); on
   loopback TCP from the kernel's socket table (``/proc/net/tcp``, Linux);
   a peer of another uid, a TCP peer on another host, or one whose user
   cannot be told, gets ``{"ok": false, "error": "refused: ..."}`` and is
   disconnected before it can send a command.  ``CONTROL_ALLOW_REMOTE=1``
   turns this check off as well.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import shlex
import socket
import stat
import struct
import sys
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from p2ptorrent.config import Config

VERBS = ("send", "download", "exit", "status")
USAGE = (
    "usage: torrent -setMode send <file> | torrent -setMode download <torrent file>"
    " | torrent -setMode status | torrent -setMode exit"
)

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
#: Name of the control socket inside a node's folder.
CONTROL_SOCKET_NAME = ".control.sock"
#: sockaddr_un.sun_path holds 108 bytes on Linux, including the final NUL
#: (104 on the BSDs and macOS; the bind fails there with a clear OSError).
MAX_UNIX_PATH = 107

Progress = Callable[[dict[str, Any]], None]


class CommandError(ValueError):
    """A command line does not follow the grammar; ``str()`` includes the usage."""


class ControlError(ValueError):
    """The control endpoint cannot be used as configured."""


@dataclass(frozen=True)
class Command:
    """One parsed command: *verb* is one of :data:`VERBS`."""

    verb: str
    argument: str | None = None

    def line(self) -> str:
        """This command in the original grammar, quoting the path if it needs it."""
        if self.argument is None:
            return f"torrent -setMode {self.verb}"
        if "\n" in self.argument or "\r" in self.argument:
            raise CommandError("paths containing line breaks cannot be sent as a command")
        arg = self.argument
        if arg != arg.strip() or arg[:1] in ("'", '"'):
            arg = shlex.quote(arg)
        return f"torrent -setMode {self.verb} {arg}"


_WORDS = re.compile(r"(?P<head>\S+)(?:\s+(?P<flag>\S+))?(?:\s+(?P<mode>\S+))?(?:\s+(?P<rest>.*))?", re.DOTALL)


def parse_command(line: str) -> Command:
    """Parse one line of the grammar; anything else raises :class:`CommandError`.

    The argument is the rest of the line (so paths may contain spaces), or a
    single shell-quoted word if it starts with a quote.
    """
    def bad(why: str) -> CommandError:
        return CommandError(f"{why}; {USAGE}")

    text = line.strip()
    if not text:
        raise bad("empty command")
    m = _WORDS.fullmatch(text)
    assert m is not None  # any non-blank text matches
    if m.group("head").lower() != "torrent":
        raise bad(f'not a command: {_clip(text)!r} (commands start with "torrent -setMode")')
    if m.group("flag") is None or m.group("flag").lower() != "-setmode":
        raise bad('expected "-setMode" after "torrent"')
    mode = m.group("mode")
    if mode is None:
        raise bad("missing mode after -setMode")
    verb = mode.lower()
    if verb not in VERBS:
        raise bad(f"unknown mode {_clip(mode)!r}")
    rest = (m.group("rest") or "").strip()
    if verb in ("exit", "status"):
        if rest:
            raise bad(f"{verb} takes no argument, got {_clip(rest)!r}")
        return Command(verb)
    if not rest:
        what = "file" if verb == "send" else "torrent file"
        raise bad(f"{verb} needs a {what}")
    if rest[0] in ("'", '"'):
        try:
            words = shlex.split(rest)
        except ValueError as e:
            raise bad(f"bad quoting in {_clip(rest)!r}: {e}") from None
        if len(words) != 1:
            raise bad(f"{verb} takes one path, got {len(words)} words: quote the whole path")
        rest = words[0]
        if not rest:
            raise bad(f"{verb} needs a non-empty path")
    return Command(verb, rest)


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


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

    def exit() -> Deferred[None]:
        """Tell the tracker we leave (EXIT), then stop the node.

        Should fire once EXIT is sent and *before* the reactor stops (stop it
        with ``callLater(0, ...)`` after firing), so the control reply that
        says "exiting" can still be flushed to the client.
        """


def dispatch(commands: INodeCommands, command: Command, progress: Progress) -> Deferred[Any]:
    """Run *command*; fires with the result line (a dict for ``status``).

    Exceptions raised synchronously by the node become failures, so callers
    have one error path.
    """
    argument = command.argument
    if command.verb in ("send", "download") and not argument:
        return fail(CommandError(f"{command.verb} needs a path; {USAGE}"))
    if command.verb == "send" and argument:
        return maybeDeferred(commands.send, argument)
    if command.verb == "download" and argument:
        return maybeDeferred(commands.download, argument, progress)
    if command.verb == "status":
        return maybeDeferred(commands.status)
    if command.verb == "exit":
        return maybeDeferred(commands.exit).addCallback(lambda _: "EXIT sent to the tracker; the node is stopping")
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

    return reactor  # type: ignore[return-value]


# ---- stdin

@implementer(IHalfCloseableProtocol)
class StdinControl(LineReceiver):
    """Commands typed on a foreground node's terminal; one result line each.

    Commands run concurrently (``status`` works during a download).  End of
    input only stops reading: a node started with stdin from /dev/null keeps
    running.  It is half-closeable so StandardIO keeps stdout open after EOF.
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
        label = command.verb if command.argument is None else f"{command.verb} {os.path.basename(command.argument)}"
        throttle = Throttle(self._clock, STDIN_PROGRESS_INTERVAL)

        def progress(p: dict[str, Any]) -> None:
            if throttle.ready():
                self._say(f"{label}: {format_progress(p)}")

        d = dispatch(self._commands, command, progress)
        d.addCallbacks(self._done, self._failed, errbackArgs=(command,))

    def _done(self, result: Any) -> None:
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
        lose_write = getattr(self.transport, "loseWriteConnection", None)
        if lose_write is None:
            self.transport.loseConnection()
            return
        lose_write()
        self._timeout = self._clock.callLater(REFUSED_LINGER, self.transport.abortConnection)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._cancel_timeout()
        self.setRawMode()
        self._finish({"ok": False, "error": f"request line too long (over {self.MAX_LENGTH} bytes)"})

    def _progress(self, progress: dict[str, Any]) -> None:
        if self._finished or not self._throttle.ready():
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


# ---- who is at the other end

def is_loopback(host: str) -> bool:
    """Whether *host* (an address, or "localhost") is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)


def peer_refusal(transport: Any) -> str | None:
    """Why the peer of an accepted control connection may not command this node, or None.

    The peer must run as the node's own user: on a UNIX socket the kernel
    says who it is (SO_PEERCRED); on loopback TCP the kernel's socket table
    does (Linux).  A peer that cannot be identified is refused.
    """
    peer, here = transport.getPeer(), transport.getHost()
    me = os.geteuid()
    if isinstance(peer, UNIXAddress):
        uid = _unix_peer_uid(transport)
        if uid is None:
            return None  # no SO_PEERCRED on this system: the socket's mode 600 decides
        return None if uid == me else f"user {uid} is not the node's user ({me})"
    if isinstance(peer, (IPv4Address, IPv6Address)):
        if not is_loopback(peer.host):
            return f"{peer.host} is another host"
        uid = _tcp_peer_uid(peer.host, peer.port, here.host, here.port)
        if uid is None:
            return "cannot tell which user is connecting"
        return None if uid == me else f"user {uid} is not the node's user ({me})"
    return f"unexpected kind of connection {type(peer).__name__}"


def _unix_peer_uid(transport: Any) -> int | None:
    option = getattr(socket, "SO_PEERCRED", None)
    handle = transport.getHandle() if hasattr(transport, "getHandle") else None
    if option is None or not isinstance(handle, socket.socket):
        return None
    _pid, uid, _gid = struct.unpack("3i", handle.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i")))
    return int(uid)


def _proc_address(host: str, port: int, v6: bool) -> str:
    """*host*:*port* as /proc/net/tcp (v6=False) or tcp6 writes it: each 32-bit word in host byte order."""
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if v6 and address.version == 4:
        address = ipaddress.IPv6Address(f"::ffff:{address}")
    raw = address.packed
    words = [raw[i : i + 4] for i in range(0, len(raw), 4)]
    if sys.byteorder == "little":
        words = [w[::-1] for w in words]
    return f"{b''.join(words).hex().upper()}:{port:04X}"


def _tcp_peer_uid(peer_host: str, peer_port: int, our_host: str, our_port: int, proc: str = "/proc/net") -> int | None:
    """The uid owning the TCP socket at peer_host:peer_port connected to our_host:our_port (Linux), or None."""
    for table, v6 in (("tcp", False), ("tcp6", True)):
        try:
            peer = _proc_address(peer_host, peer_port, v6)
            ours = _proc_address(our_host, our_port, v6)
            with open(f"{proc}/{table}") as f:
                lines = f.read().splitlines()[1:]
        except (OSError, ValueError):
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 7 and fields[1] == peer and fields[2] == ours:
                return int(fields[7])
    return None


# ---- endpoint strings

def escape_endpoint(value: str) -> str:
    """Quote *value* for an endpoint description (``\\``, ``:`` and ``=`` are special)."""
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def default_control_endpoint(settings: Config, node_id: int) -> str:
    """The server endpoint a node listens on for commands: its folder's UNIX socket.

    Mode 600 so only the local user can command the node; no TCP by default.
    """
    path = os.fspath(settings.node_dir(node_id) / CONTROL_SOCKET_NAME)
    size = len(os.fsencode(path))
    if size > MAX_UNIX_PATH:
        raise ControlError(
            f"the control socket path {path} is {size} bytes, longer than UNIX sockets allow"
            f" ({MAX_UNIX_PATH}): use a shorter node_files_dir, or pass"
            f" --control unix:path=/tmp/p2pnode-{node_id}.sock:mode=600:lockfile=0"
        )
    # Server unix endpoints spell the path "address="; clients spell it "path=".
    return f"unix:address={escape_endpoint(path)}:mode=600:lockfile=0"


def check_control_endpoint(description: str, allow_remote: bool = False) -> str:
    """The control endpoint to listen on, or :class:`ControlError` saying why it is refused.

    Accepted: a ``unix:`` socket whose mode gives nobody but its owner access
    (``mode=600`` is added when none is given: Twisted's default is 666), and
    ``tcp:``/``tcp6:`` on a loopback ``interface=``.  Anything that other
    users or hosts could reach is refused unless *allow_remote* (the setting
    CONTROL_ALLOW_REMOTE=1) says the operator wants that.
    """
    kind, args, kwargs = _split_endpoint(description)
    kind = kind.lower()
    hint = "(set CONTROL_ALLOW_REMOTE=1 to allow it anyway)"
    if kind == "unix":
        path = control_socket_path(description)
        if not path:
            raise ControlError(f"control endpoint {description!r} has no path")
        if path.startswith("\0"):
            if allow_remote:
                return description
            raise ControlError(f"control endpoint {description!r} is an abstract UNIX socket, which any local user"
                               f" can connect to: give a file path {hint}")
        if "mode" not in kwargs:
            return description + ":mode=600"
        try:
            mode = int(kwargs["mode"], 8)
        except ValueError:
            raise ControlError(f"control endpoint {description!r}: mode must be octal, like 600") from None
        if mode & 0o077 and not allow_remote:
            raise ControlError(f"control endpoint {description!r} would let other users command the node"
                               f" (mode {mode:03o}): use mode=600 {hint}")
        return description
    if kind in ("tcp", "tcp6"):
        interface = kwargs.get("interface", "")
        if allow_remote:
            return description
        if not interface or interface in ("0.0.0.0", "::"):
            raise ControlError(f"control endpoint {description!r} listens on every address, so other hosts could"
                               f" command the node: add interface=127.0.0.1, or use the default UNIX socket {hint}")
        if not is_loopback(interface):
            raise ControlError(f"control endpoint {description!r} listens on {interface}, which other hosts can reach:"
                               f" use interface=127.0.0.1, or the default UNIX socket {hint}")
        return description
    if allow_remote:
        return description
    raise ControlError(f"control endpoint {description!r}: only unix: sockets and tcp: on a loopback interface"
                       f" are accepted {hint}")


def _split_endpoint(description: str) -> tuple[str, list[str], dict[str, str]]:
    """(type, positional args, keyword args) of an endpoint description.

    Follows twisted.internet.endpoints' rules (``:`` separates, the first
    ``=`` assigns, ``\\`` escapes); we need it to turn a server description
    into the matching client one.
    """
    fields: list[tuple[str, str | None]] = []
    key: str | None = None
    current = ""
    chars = iter(description)
    for ch in chars:
        if ch == "\\":
            current += next(chars, "")
        elif ch == ":":
            fields.append((key, current) if key is not None else (current, None))
            key, current = None, ""
        elif ch == "=" and key is None:
            key, current = current, ""
        else:
            current += ch
    fields.append((key, current) if key is not None else (current, None))
    kind = fields[0][0]
    args = [name for name, value in fields[1:] if value is None]
    kwargs = {name: value for name, value in fields[1:] if value is not None}
    return kind, args, kwargs


def control_socket_path(description: str) -> str | None:
    """The file system path of a ``unix:`` endpoint description, else None."""
    kind, args, kwargs = _split_endpoint(description)
    if kind.lower() != "unix":
        return None
    return kwargs.get("path") or kwargs.get("address") or (args[0] if args else None)


def client_endpoint(description: str) -> str:
    """The client description that reaches the server *description* listens on.

    ``unix:path=P:mode=600:lockfile=0`` becomes ``unix:path=P`` (clients
    refuse the server-only options) and ``tcp:7000:interface=127.0.0.1``
    becomes ``tcp:host=127.0.0.1:port=7000``.  Client descriptions and other
    endpoint types pass through unchanged.
    """
    kind, args, kwargs = _split_endpoint(description)
    if kind.lower() == "unix":
        path = control_socket_path(description)
        if not path:
            raise ControlError(f"endpoint {description!r} has no path")
        out = f"unix:path={escape_endpoint(path)}"
        if "timeout" in kwargs:
            out += f":timeout={escape_endpoint(kwargs['timeout'])}"
        return out
    if kind.lower() in ("tcp", "tcp6") and "host" not in kwargs:
        port = kwargs.get("port") or (args[0] if args else None)
        if not port:
            raise ControlError(f"endpoint {description!r} has no port")
        interface = kwargs.get("interface", "")
        if interface in ("", "0.0.0.0", "::"):
            interface = "::1" if kind.lower() == "tcp6" or interface == "::" else "127.0.0.1"
        return f"tcp:host={escape_endpoint(interface)}:port={escape_endpoint(port)}"
    return description


def clear_stale_socket(description: str) -> bool:
    """Remove a ``unix:`` endpoint's socket file left behind by a dead node.

    With ``lockfile=0`` Twisted does not clean up after a crash, and bind
    then fails with "address already in use".  A socket nobody answers on
    (ECONNREFUSED) is stale; anything else is left alone.  Returns whether a
    file was removed.
    """
    path = control_socket_path(description)
    if not path:
        return False
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as e:
        if e.errno != errno.ECONNREFUSED:
            return False
    else:
        return False  # a live node answers there
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
