"""The command grammar and where a node's control socket is: no Twisted here.

Both the node (:mod:`p2ptorrent.node.control`) and the ``p2ptorrent`` CLI
need these.  The CLI runs once per command, so it must not pay for importing
Twisted (about 0.4 s with OpenSSL): everything it shares with the node lives
here, on the standard library alone.

The original grammar is ``torrent -setMode send <file>``, ``torrent -setMode
download <torrent file>`` and ``torrent -setMode exit``, plus our ``status``
(``download`` also takes a magnet link or a bare info hash), ``limit up=SIZE
down=SIZE`` (the node's rate limits, changed live) and ``help`` (also typed alone: ``help``), which lists the commands.  A
mistyped command or mode is answered with the nearest one ("did you mean").
Endpoint descriptions follow Twisted's string syntax (``unix:path=...``,
``tcp:host=...:port=...``); we read the few forms a control client needs.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from p2ptorrent.config import Config

#: What a node can be told to do.
VERBS = ("send", "download", "exit", "status", "limit")
#: The operator's views and verbs: `list` takes nothing, the others a torrent's name or info hash (or a
#: unique prefix of it); `cancel` and `remove` also take --delete-data.
OPERATOR_VERBS = ("list", "info", "pause", "resume", "cancel", "stop-seeding", "remove")
#: Verbs that take no argument.
BARE_VERBS = ("exit", "status", "list")
#: The flag of `cancel` and `remove` that deletes the data too.
DELETE_DATA = "--delete-data"
DELETING_VERBS = ("cancel", "remove")
#: The command that lists the commands: answered without touching the node's work.
HELP = "help"
USAGE = (
    "usage: torrent -setMode send <file> | torrent -setMode download <torrent file | magnet link | info hash>"
    " | torrent -setMode status | torrent -setMode exit | torrent -setMode limit [up=SIZE] [down=SIZE] | help"
    " | torrent -setMode list | torrent -setMode info|pause|resume|stop-seeding NAME"
    " | torrent -setMode cancel|remove NAME [--delete-data]"
)
#: What ``help`` answers on a node's stdin and control socket.
HELP_TEXT = """\
commands, one a line:
  torrent -setMode send FILE|DIR      seed a file or a folder: write its .torrent in the node's folder, announce it
  torrent -setMode download TORRENT   fetch the file TORRENT describes, verify it, then seed it
  torrent -setMode download MAGNET    the same from a magnet link (magnet:?xt=urn:btih:...) or an info hash:
                                      the torrent is fetched from the file's owners and saved in the node's folder
  torrent -setMode status             what the node shares and downloads
  torrent -setMode exit               tell the tracker the node leaves, and stop the node
  torrent -setMode list               a table of transfers: done, sizes, ETA, rates, ratio, peers, state
  torrent -setMode info NAME          one transfer's details and peers
  torrent -setMode pause NAME         stop a download, keep its pieces; stays paused after a restart
  torrent -setMode resume NAME        go on with a paused (or cancelled) download from its verified pieces
  torrent -setMode cancel NAME        stop a download; its verified pieces stay for a later download
                                      (--delete-data after NAME: delete them)
  torrent -setMode stop-seeding NAME  withdraw at the tracker, stop serving; the file stays
  torrent -setMode remove NAME        withdraw, stop, forget the torrent (--delete-data after NAME: delete
                                      the file or folder and partial data, inside the node's folder only)
  torrent -setMode limit up=20MiB down=0
                                      set the node's upload and download limits (bytes a second in all:
                                      KiB, MiB, GiB are 1024-based, KB, MB, GB 1000-based; 0: no limit);
                                      either may be left out; with neither, say what the limits are
  help                                this list
  (a FILE or TORRENT without a folder is looked for in the node's folder first; NAME is a torrent's
   name, its info hash or a unique prefix of it)"""

#: Name of the control socket inside a node's folder.
CONTROL_SOCKET_NAME = ".control.sock"
#: sockaddr_un.sun_path holds 108 bytes on Linux, including the final NUL
#: (104 on the BSDs and macOS; the bind fails there with a clear OSError).
MAX_UNIX_PATH = 107
#: Seconds a client waits for its connection to be accepted (Twisted's
#: client endpoints default to the same).
CONNECT_TIMEOUT = 30.0


class CommandError(ValueError):
    """A command line does not follow the grammar.

    ``str()`` includes the usage, or, for a mistyped word, only the nearest
    right one: ``unknown mode 'downlaod': did you mean 'download'?``.
    """


class ControlError(ValueError):
    """The control endpoint cannot be used as configured."""


@dataclass(frozen=True)
class Command:
    """One parsed command: *verb* is one of :data:`VERBS`, or :data:`HELP`."""

    verb: str
    argument: str | None = None
    #: `cancel` and `remove`: delete the data too.
    delete_data: bool = False

    def line(self) -> str:
        """This command in the original grammar, quoting the path if it needs it."""
        if self.argument is None:
            return f"torrent -setMode {self.verb}"
        if "\n" in self.argument or "\r" in self.argument:
            raise CommandError("paths containing line breaks cannot be sent as a command")
        arg = self.argument
        if arg != arg.strip() or arg[:1] in ("'", '"'):
            arg = shlex.quote(arg)
        elif self.verb in DELETING_VERBS and arg.endswith(DELETE_DATA):
            # A name that ends like the flag: quoted, always (shlex.quote leaves "--delete-data" bare).
            arg = "'" + arg.replace("'", "'\"'\"'") + "'"
        return f"torrent -setMode {self.verb} {arg}" + (f" {DELETE_DATA}" if self.delete_data else "")


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
    if text.lower() == HELP:
        return Command(HELP)
    m = _WORDS.fullmatch(text)
    assert m is not None  # any non-blank text matches
    head = m.group("head")
    if head.lower() != "torrent":
        raise _not_a_command(head, text[len(head) :].strip()) or bad(
            f'not a command: {_clip(text)!r} (commands start with "torrent -setMode")'
        )
    if m.group("flag") is None or m.group("flag").lower() != "-setmode":
        raise bad('expected "-setMode" after "torrent"')
    mode = m.group("mode")
    if mode is None:
        raise bad("missing mode after -setMode")
    verb = mode.lower()
    if verb not in (*VERBS, *OPERATOR_VERBS, HELP):
        meant = suggest(verb, (*VERBS, *OPERATOR_VERBS, HELP))
        if meant is not None:
            raise CommandError(f"unknown mode {_clip(mode)!r}: did you mean {meant!r}?")
        raise bad(f"unknown mode {_clip(mode)!r}")
    rest = (m.group("rest") or "").strip()
    if verb == "limit":
        limit_values(rest)  # refused here, with the reason, if it does not follow the grammar
        return Command(verb, rest or None)
    delete_data = False
    if verb in DELETING_VERBS and (rest == DELETE_DATA or rest.endswith(" " + DELETE_DATA)):
        delete_data, rest = True, rest[: -len(DELETE_DATA)].strip()
    if verb in BARE_VERBS or verb == HELP:
        if rest:
            raise bad(f"{verb} takes no argument, got {_clip(rest)!r}")
        return Command(verb)
    if not rest:
        what = {"send": "file", "download": "torrent file, magnet link or info hash"}.get(
            verb, "torrent's name or info hash")
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
    return Command(verb, rest, delete_data)


#: The words ``limit`` takes: ``up=SIZE`` for the upload limit, ``down=SIZE`` for the download limit.
LIMIT_WORDS = ("up", "down")


def limit_values(text: str | None) -> dict[str, int]:
    """``up=20MiB down=0`` as ``{"up": 20971520, "down": 0}`` (bytes a second; either may be missing)."""
    from p2ptorrent.config import parse_rate  # (humanfriendly is imported only for a limit)

    values: dict[str, int] = {}
    for word in (text or "").split():
        name, sep, size = word.partition("=")
        name = name.lower().lstrip("-")
        if not sep or name not in LIMIT_WORDS:
            raise CommandError(f"limit takes up=SIZE and down=SIZE (e.g. up=20MiB down=0), got {_clip(word)!r}")
        if name in values:
            raise CommandError(f"limit: {name}= given twice")
        try:
            values[name] = parse_rate(size)
        except ValueError as e:
            raise CommandError(f"limit {name}=: {e}") from None
    return values


def suggest(word: str, choices: Iterable[str]) -> str | None:
    """The one of *choices* that *word* most likely misspells, or None if none is close."""
    import difflib  # only for a mistake: every p2ptorrent command imports this module

    close = difflib.get_close_matches(word.lower(), list(choices), n=1, cutoff=0.7)
    return close[0] if close else None


def _not_a_command(head: str, rest: str) -> CommandError | None:
    """For a line that does not start with "torrent": the command that was probably meant, if any."""
    word = head.lower()
    if word in (*VERBS, *OPERATOR_VERBS):
        line = _clip(f"torrent -setMode {word} {rest}".strip())
        return CommandError(f'commands start with "torrent -setMode": did you mean {line!r}?')
    meant = suggest(word, ("torrent", *VERBS, *OPERATOR_VERBS, HELP))
    if meant is None:
        return None
    if meant in (*VERBS, *OPERATOR_VERBS):
        meant = _clip(f"torrent -setMode {meant} {rest}".strip())
    elif meant == "torrent":
        meant = _clip(f"torrent {rest}".strip())
    return CommandError(f"unknown command {_clip(head)!r}: did you mean {meant!r}?")


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- endpoint strings

def escape_endpoint(value: str) -> str:
    """Quote *value* for an endpoint description (``\\``, ``:`` and ``=`` are special)."""
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def split_endpoint(description: str) -> tuple[str, list[str], dict[str, str]]:
    """(type, positional args, keyword args) of an endpoint description.

    Follows twisted.internet.endpoints' rules (``:`` separates, the first
    ``=`` assigns, ``\\`` escapes); we need it to turn a server description
    into the matching client one, and the CLI to connect without Twisted.
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


def control_socket_path(description: str) -> str | None:
    """The file system path of a ``unix:`` endpoint description, else None."""
    kind, args, kwargs = split_endpoint(description)
    if kind.lower() != "unix":
        return None
    return kwargs.get("path") or kwargs.get("address") or (args[0] if args else None)


def client_endpoint(description: str) -> str:
    """The client description that reaches the server *description* listens on.

    ``unix:path=P:mode=600:lockfile=0`` becomes ``unix:path=P`` (clients
    refuse the server-only options) and ``tcp:7000:interface=127.0.0.1``
    becomes ``tcp:host=127.0.0.1:port=7000``.  A client ``tcp:HOST:PORT``
    becomes ``tcp:host=HOST:port=PORT``.  Client descriptions and other
    endpoint types pass through unchanged.
    """
    kind, args, kwargs = split_endpoint(description)
    if kind.lower() == "unix":
        path = control_socket_path(description)
        if not path:
            raise ControlError(f"endpoint {description!r} has no path")
        out = f"unix:path={escape_endpoint(path)}"
        if "timeout" in kwargs:
            out += f":timeout={escape_endpoint(kwargs['timeout'])}"
        return out
    if kind.lower() in ("tcp", "tcp6") and "host" not in kwargs:
        if len(args) >= 2 and not args[0].isdigit() and "port" not in kwargs:
            # A client's tcp:HOST:PORT (a server's first word is its port).
            out = f"tcp:host={escape_endpoint(args[0])}:port={escape_endpoint(args[1])}"
            for key in ("timeout", "bindAddress"):
                if key in kwargs:
                    out += f":{key}={escape_endpoint(kwargs[key])}"
            return out
        port = kwargs.get("port") or (args[0] if args else None)
        if not port:
            raise ControlError(f"endpoint {description!r} has no port")
        interface = kwargs.get("interface", "")
        if interface in ("", "0.0.0.0", "::"):
            interface = "::1" if kind.lower() == "tcp6" or interface == "::" else "127.0.0.1"
        return f"tcp:host={escape_endpoint(interface)}:port={escape_endpoint(port)}"
    return description


@dataclass(frozen=True)
class ControlTarget:
    """Where a control client connects: a UNIX socket *path*, or *host* and *port* over TCP."""

    path: str | None = None
    host: str | None = None
    port: int = 0
    #: Seconds to wait for the connection to be accepted.
    timeout: float = CONNECT_TIMEOUT
    #: Local address to connect from (TCP ``bindAddress=``), or None.
    bind: str | None = None


def control_target(description: str) -> ControlTarget:
    """What a client description from :func:`client_endpoint` asks to connect to.

    Only ``unix:`` and ``tcp:``/``tcp6:`` clients, with the options Twisted's
    client parsers take for them (``timeout=``; ``bindAddress=`` for TCP);
    anything else raises :class:`ControlError`.
    """
    kind, args, kwargs = split_endpoint(description)
    kind = kind.lower()
    timeout = _timeout(description, kwargs.get("timeout"))
    if kind == "unix":
        path = control_socket_path(description)
        if not path:
            raise ControlError(f"endpoint {description!r} has no path")
        _no_other_options(description, kwargs, {"path", "address", "timeout", "checkPID"})
        return ControlTarget(path=path, timeout=timeout)
    if kind in ("tcp", "tcp6"):
        _no_other_options(description, kwargs, {"host", "port", "timeout", "bindAddress"})
        # Twisted's order: tcp:HOST:PORT, or tcp:PORT:host=HOST.
        positional = args if "host" not in kwargs else [kwargs["host"], *args]
        host = positional[0] if positional else None
        port = kwargs.get("port") or (positional[1] if len(positional) > 1 else None)
        if not host:
            raise ControlError(f"endpoint {description!r} has no host")
        if not port:
            raise ControlError(f"endpoint {description!r} has no port")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ControlError(f"endpoint {description!r}: port must be a number from 1 to 65535, got {port!r}")
        return ControlTarget(host=host, port=int(port), timeout=timeout, bind=kwargs.get("bindAddress") or None)
    raise ControlError(
        f"endpoint {description!r}: the p2ptorrent command connects only to unix: sockets and tcp: ports"
    )


def _timeout(description: str, value: str | None) -> float:
    if value is None:
        return CONNECT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ControlError(f"endpoint {description!r}: timeout must be a number of seconds, got {value!r}")
    return seconds


def _no_other_options(description: str, kwargs: dict[str, str], known: set[str]) -> None:
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ControlError(f"endpoint {description!r}: unknown option {unknown[0]!r} for a control client")
