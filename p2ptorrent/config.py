"""Settings: the original project's configuration with its defaults, plus ours.

The original kept one JSON-like dict with three sections (``directory``,
``constants``, ``tracker_requests_mode``).  We keep every key and default, read
the same structure (or a flat one) from a JSON file, take overrides as
``NAME=VALUE`` strings from the command line, and refuse values that make no
sense before anything starts.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from p2ptorrent.wire import BLOCK_OVERHEAD

#: The largest UDP payload IPv4 can carry (65535 - 20 IP - 8 UDP header).
IPV4_MAX_UDP_PAYLOAD = 65507

KIB = 1024
MIB = 1024 * KIB

#: Largest node id (ids are signed 32-bit integers in the original).
MAX_NODE_ID = 2**31 - 1

#: Largest piece length a torrent may have, ours or another's (the largest
#: real clients use is 16-64 MiB).
MAX_PIECE_LENGTH = 64 * MIB

#: What TRACKER_ADDR looks like, for messages that refuse it.
TRACKER_ADDR_FORM = "HOST:PORT, e.g. 192.0.2.10:12345"
#: What AVAILABLE_PORTS_RANGE looks like, for messages that refuse it.
PORTS_RANGE_FORM = "LOW-HIGH, e.g. 1024-65535"
#: LOG_LEVEL values, least severe first: the names of twisted.logger's LogLevel.
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")
#: TRACKER_STORE values.
TRACKER_STORES = ("sqlite", "json")


class ConfigError(ValueError):
    """A setting is missing, of the wrong type, or makes no sense."""


def _modes() -> dict[str, int]:
    return {"REGISTER": 0, "OWN": 1, "NEED": 2, "UPDATE": 3, "EXIT": 4}


@dataclass(frozen=True)
class Config:
    """Every setting of a tracker or a node.  Names of the original keep its spelling."""

    # -- the original "directory" section
    logs_dir: str = "logs/"
    node_files_dir: str = "node_files/"
    tracker_db_dir: str = "tracker_db/"

    # -- the original "constants" section
    AVAILABLE_PORTS_RANGE: tuple[int, int] = (1024, 65535)
    TRACKER_ADDR: tuple[str, int] = ("localhost", 12345)
    MAX_UDP_SEGMENT_DATA_SIZE: int = 65527
    BUFFER_SIZE: int = 9216
    CHUNK_PIECES_SIZE: int = 1400
    MAX_SPLITTNES_RATE: int = 3
    NODE_TIME_INTERVAL: float = 20.0
    TRACKER_TIME_INTERVAL: float = 22.0

    # -- the original "tracker_requests_mode" section
    tracker_requests_mode: dict[str, int] = field(default_factory=_modes)

    # -- ours
    #: A node is dropped once it has sent no REGISTER across this many
    #: consecutive liveness checks (1 is the original rule: "since the previous
    #: check").  2 tolerates a heartbeat that arrives late.
    TRACKER_MISSED_CHECKS: int = 2
    #: Torrent piece length in bytes; 0 picks one from the file's size.
    PIECE_LENGTH: int = 0
    #: Largest HTTP body the tracker reads.
    TRACKER_MAX_BODY: int = 64 * KIB
    #: First retransmission timeout of a block request, before any RTT sample.
    REQUEST_TIMEOUT: float = 1.0
    #: A peer that delivered nothing for this long while we waited is dropped.
    PEER_TIMEOUT: float = 10.0
    #: Most block requests outstanding towards one peer.
    MAX_REQUESTS_IN_FLIGHT: int = 2048
    #: SO_RCVBUF / SO_SNDBUF asked for on a node's UDP socket.
    SOCKET_BUFFER: int = 8 * MIB
    #: Most live node records the tracker keeps for one IP address; a REGISTER
    #: beyond it is refused (429), so one host cannot fill the tracker.
    TRACKER_MAX_NODES_PER_HOST: int = 256
    #: Most open HTTP connections from one address; one more is closed unread.
    #: A node keeps one (at most two) between its heartbeats: twice
    #: TRACKER_MAX_NODES_PER_HOST, so the nodes one address may hold (behind
    #: one NAT or proxy address) all keep theirs (see connections.py).
    TRACKER_MAX_CONNECTIONS_PER_HOST: int = 512
    #: Most open HTTP connections in all; 0: the open-file limit less 64.
    TRACKER_MAX_CONNECTIONS: int = 0
    #: Seconds a request's headers and body may take to arrive, from the
    #: connection's start or the first byte of a later request on it.
    TRACKER_REQUEST_TIMEOUT: float = 10.0
    #: Seconds a keep-alive connection may wait for its next request.
    TRACKER_IDLE_TIMEOUT: float = 60.0
    #: Addresses or networks of reverse proxies whose X-Forwarded-For is believed.
    TRACKER_TRUSTED_PROXIES: tuple[str, ...] = ()
    #: Most owners one NEED answers, drawn by upload frequency (a node may ask
    #: for fewer with "numwant"): a file with 10k owners answers 50, not 10k.
    NUMWANT: int = 50
    #: Work a liveness check does per turn of the reactor while it drops silent
    #: nodes: a node counts 1 plus 1 per file it owns or credited.  The rest
    #: waits for the next turn, so requests are answered in between.
    TRACKER_DROP_SLICE: int = 2000
    #: Blocks a second a seeder sends to one address while it serves several
    #: (a token bucket that saves up to 1/8 s of it, at least two full
    #: requests); the rest of a request is dropped, which a real downloader
    #: takes as loss.  One address served alone is not limited.  100000 blocks
    #: (~140 MB/s with 1400-byte chunks) is about half of what a seeder sends
    #: on loopback, so a peer flooding requests leaves room for the others.
    #: 0: no limit.
    MAX_BLOCKS_PER_SECOND_PER_PEER: int = 100000
    #: Addresses a seeder keeps rate state for (least recently seen forgotten
    #: first), so many source addresses cannot grow its memory.
    PEER_TABLE_SIZE: int = 4096
    #: 1 allows a control endpoint that other users or hosts can reach (tcp on a
    #: non-loopback interface, a unix socket with group or other permissions).
    CONTROL_ALLOW_REMOTE: int = 0
    #: Nodes still downloading a file that a download also fetches from, beside
    #: the MAX_SPLITTNES_RATE complete owners (swarming).
    MAX_PARTIAL_PEERS: int = 8
    #: 1: send runs of datagrams with one system call (UDP GSO) and read them coalesced (UDP GRO) where the
    #: kernel offers it; 0: one datagram per call (the port says at start which it uses).
    UDP_BATCHING: int = 1
    #: Regular upload slots: peers served at once, chosen by what they upload to
    #: us (tit-for-tat) and rotated; one optimistic slot comes on top.
    UPLOAD_SLOTS: int = 4
    #: Seconds between a downloading node's NEED requests (to meet new owners)
    #: and between its progress reports (OWN with the pieces held) to the tracker.
    SWARM_INTERVAL: float = 5.0
    #: Least severe log events written to the log files (one of LOG_LEVELS).
    LOG_LEVEL: str = "info"
    #: Size in bytes at which a log file is rotated.
    LOG_MAX_BYTES: int = 10 * MIB
    #: Rotated log files kept beside the current one.
    LOG_BACKUPS: int = 5
    #: Where the tracker keeps its state (one of TRACKER_STORES): "sqlite", tracker.db in tracker_db_dir
    #: written by group commit off the reactor, with nodes.json/files.json as snapshots beside it; "json",
    #: the two JSON files rewritten whole at every change (the original format: for small swarms only);
    #: or redis://HOST:PORT/DB, the state in Redis, shared by every tracker given the same address.
    TRACKER_STORE: str = "sqlite"
    #: UDP port of the BEP 15 tracker for BitTorrent clients: 0, the tracker's HTTP port number; -1, none.
    TRACKER_UDP_PORT: int = 0
    #: Seconds BitTorrent clients are asked to wait between announces (``interval``; ``min interval`` is
    #: half of it).  A client silent for twice this and a minute more is forgotten.
    BT_ANNOUNCE_INTERVAL: int = 1800
    #: Most peers one announce answers (a client may ask for more with ``numwant``, up to this).
    BT_MAX_NUMWANT: int = 200
    #: Most BitTorrent clients the tracker holds in all (each torrent a client announces counts once);
    #: an announce that would add one more is refused.
    BT_MAX_PEERS: int = 1_000_000
    #: Bytes a second a node uploads in all (blocks sent to every peer together; a token bucket); 0: no limit.
    #: Also human sizes in the settings file and on the command line: 20MiB, 512KiB, 1.5MB (see parse_rate).
    MAX_UPLOAD_RATE: int = 0
    #: Bytes a second a node downloads in all (its downloads pace their block requests to it); 0: no limit.
    MAX_DOWNLOAD_RATE: int = 0
    #: TCP port of the node's Prometheus ``/metrics`` page; 0: none (the default: no port is opened).
    METRICS_PORT: int = 0
    #: Address the metrics page listens on: loopback unless asked otherwise.
    METRICS_INTERFACE: str = "127.0.0.1"

    # ---- derived values
    @property
    def tracker_url(self) -> str:
        host, port = self.TRACKER_ADDR
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{port}"

    @property
    def announce_url(self) -> str:
        """What torrents name as their tracker: BitTorrent clients announce there (GET, BEP 3); a node
        speaks to the same tracker at :attr:`tracker_url`."""
        return self.tracker_url + "/announce"

    @property
    def announce_list(self) -> tuple[tuple[str, ...], ...]:
        """BEP 12 tiers for the torrents a node makes: HTTP first, then the UDP tracker (BEP 15) if the
        tracker has one (TRACKER_UDP_PORT; it is in the same settings file for the tracker and its nodes)."""
        if self.TRACKER_UDP_PORT < 0:
            return ((self.announce_url,),)
        host, port = self.TRACKER_ADDR
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return ((self.announce_url,), (f"udp://{host}:{self.TRACKER_UDP_PORT or port}/announce",))

    def mode(self, name: str) -> int:
        return self.tracker_requests_mode[name]

    def mode_name(self, code: int) -> str | None:
        for name, value in self.tracker_requests_mode.items():
            if value == code:
                return name
        return None

    def node_dir(self, node_id: int) -> Path:
        return Path(self.node_files_dir) / str(node_id)

    # ---- building
    def replace(self, **changes: Any) -> "Config":
        """A validated copy with some settings changed (values already typed)."""
        return dataclasses.replace(self, **changes).validated()

    def validated(self) -> "Config":
        errors = _problems(self)
        if errors:
            raise ConfigError("; ".join(errors))
        return self


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_ALIASES = {name.lower(): name for name in _FIELDS}


def _problems(c: Config) -> list[str]:
    errs: list[str] = []
    lo, hi = c.AVAILABLE_PORTS_RANGE
    if not (0 < lo <= hi <= 65535):
        errs.append(
            f"AVAILABLE_PORTS_RANGE must satisfy 0 < low <= high <= 65535, got {lo}-{hi} (expected {PORTS_RANGE_FORM})"
        )
    host, port = c.TRACKER_ADDR
    if not host:
        errs.append(f"TRACKER_ADDR needs a host: expected {TRACKER_ADDR_FORM}")
    if not (0 < port <= 65535):
        errs.append(f"TRACKER_ADDR port must be 1-65535, got {port}: expected {TRACKER_ADDR_FORM}")
    if not (0 < c.MAX_UDP_SEGMENT_DATA_SIZE <= 65527):
        errs.append(f"MAX_UDP_SEGMENT_DATA_SIZE must be 1-65527, got {c.MAX_UDP_SEGMENT_DATA_SIZE}")
    biggest = min(c.MAX_UDP_SEGMENT_DATA_SIZE, IPV4_MAX_UDP_PAYLOAD)
    if not (512 <= c.BUFFER_SIZE <= biggest):
        errs.append(
            f"BUFFER_SIZE must be between 512 and {biggest} (the largest UDP payload allowed),"
            f" got {c.BUFFER_SIZE}"
        )
    room = c.BUFFER_SIZE - BLOCK_OVERHEAD
    if not (1 <= c.CHUNK_PIECES_SIZE <= room):
        errs.append(
            f"CHUNK_PIECES_SIZE must be 1-{room}: a chunk plus its {BLOCK_OVERHEAD}-byte header"
            f" must fit in one BUFFER_SIZE ({c.BUFFER_SIZE}) datagram, got {c.CHUNK_PIECES_SIZE}"
            + _bigger_buffer(c)
        )
    if c.MAX_SPLITTNES_RATE < 1:
        errs.append(f"MAX_SPLITTNES_RATE must be at least 1, got {c.MAX_SPLITTNES_RATE}")
    if not 0 <= c.MAX_PARTIAL_PEERS <= 1024:
        errs.append(f"MAX_PARTIAL_PEERS must be 0-1024, got {c.MAX_PARTIAL_PEERS}")
    if not 1 <= c.UPLOAD_SLOTS <= 1024:
        errs.append(f"UPLOAD_SLOTS must be 1-1024, got {c.UPLOAD_SLOTS}")
    for name in ("NODE_TIME_INTERVAL", "TRACKER_TIME_INTERVAL", "REQUEST_TIMEOUT", "PEER_TIMEOUT", "SWARM_INTERVAL",
                 "TRACKER_REQUEST_TIMEOUT", "TRACKER_IDLE_TIMEOUT"):
        if not getattr(c, name) > 0:
            errs.append(f"{name} must be a positive number of seconds, got {getattr(c, name)}")
    if c.TRACKER_MISSED_CHECKS < 1:
        errs.append(f"TRACKER_MISSED_CHECKS must be at least 1, got {c.TRACKER_MISSED_CHECKS}")
    if c.PIECE_LENGTH and not (16 * KIB <= c.PIECE_LENGTH <= MAX_PIECE_LENGTH and c.PIECE_LENGTH & (c.PIECE_LENGTH - 1) == 0):
        errs.append(f"PIECE_LENGTH must be 0 (automatic) or a power of two from 16 KiB to {MAX_PIECE_LENGTH // MIB} MiB,"
                    f" got {c.PIECE_LENGTH}")
    if c.PIECE_LENGTH < 0:
        errs.append(f"PIECE_LENGTH must not be negative, got {c.PIECE_LENGTH}")
    if c.TRACKER_MAX_BODY < 1024:
        errs.append(f"TRACKER_MAX_BODY must be at least 1024, got {c.TRACKER_MAX_BODY}")
    if not (1 <= c.MAX_REQUESTS_IN_FLIGHT <= 65536):
        errs.append(f"MAX_REQUESTS_IN_FLIGHT must be 1-65536, got {c.MAX_REQUESTS_IN_FLIGHT}")
    if c.SOCKET_BUFFER < 0:
        errs.append(f"SOCKET_BUFFER must not be negative, got {c.SOCKET_BUFFER}")
    if c.TRACKER_MAX_NODES_PER_HOST < 1:
        errs.append(f"TRACKER_MAX_NODES_PER_HOST must be at least 1, got {c.TRACKER_MAX_NODES_PER_HOST}")
    if c.TRACKER_MAX_CONNECTIONS_PER_HOST < 1:
        errs.append(f"TRACKER_MAX_CONNECTIONS_PER_HOST must be at least 1, got {c.TRACKER_MAX_CONNECTIONS_PER_HOST}")
    if c.TRACKER_MAX_CONNECTIONS < 0:
        errs.append(f"TRACKER_MAX_CONNECTIONS must be 0 (from the open-file limit) or more, got {c.TRACKER_MAX_CONNECTIONS}")
    for proxy in c.TRACKER_TRUSTED_PROXIES:
        try:
            ipaddress.ip_network(proxy)
        except ValueError:
            errs.append(f"TRACKER_TRUSTED_PROXIES: {proxy!r} is not an IP address or network (e.g. 10.0.0.5 or 10.0.0.0/24)")
    if c.NUMWANT < 1:
        errs.append(f"NUMWANT must be at least 1, got {c.NUMWANT}")
    if c.TRACKER_DROP_SLICE < 1:
        errs.append(f"TRACKER_DROP_SLICE must be at least 1, got {c.TRACKER_DROP_SLICE}")
    if c.MAX_BLOCKS_PER_SECOND_PER_PEER < 0:
        errs.append(f"MAX_BLOCKS_PER_SECOND_PER_PEER must be 0 (no limit) or more, got {c.MAX_BLOCKS_PER_SECOND_PER_PEER}")
    if not (16 <= c.PEER_TABLE_SIZE <= 1 << 20):
        errs.append(f"PEER_TABLE_SIZE must be 16-1048576, got {c.PEER_TABLE_SIZE}")
    if c.CONTROL_ALLOW_REMOTE not in (0, 1):
        errs.append(f"CONTROL_ALLOW_REMOTE must be 0 or 1, got {c.CONTROL_ALLOW_REMOTE}")
    if c.UDP_BATCHING not in (0, 1):
        errs.append(f"UDP_BATCHING must be 0 or 1, got {c.UDP_BATCHING}")
    if c.LOG_LEVEL not in LOG_LEVELS:
        errs.append(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {c.LOG_LEVEL!r}"
                    + _did_you_mean(str(c.LOG_LEVEL).lower(), LOG_LEVELS))
    if c.LOG_MAX_BYTES < 4 * KIB:
        errs.append(f"LOG_MAX_BYTES must be at least 4096 (bytes a log file reaches before it is rotated),"
                    f" got {c.LOG_MAX_BYTES}")
    if c.LOG_BACKUPS < 1:
        errs.append(f"LOG_BACKUPS must be at least 1 (rotated log files kept), got {c.LOG_BACKUPS}")
    if c.TRACKER_STORE not in TRACKER_STORES and not str(c.TRACKER_STORE).startswith("redis://"):
        errs.append(f"TRACKER_STORE must be one of {', '.join(TRACKER_STORES)} or redis://HOST:PORT/DB,"
                    f" got {c.TRACKER_STORE!r}"
                    + _did_you_mean(str(c.TRACKER_STORE).lower(), TRACKER_STORES))
    if not -1 <= c.TRACKER_UDP_PORT <= 65535:
        errs.append(f"TRACKER_UDP_PORT must be -1 (none), 0 (the HTTP port number) or 1-65535, got {c.TRACKER_UDP_PORT}")
    if not 10 <= c.BT_ANNOUNCE_INTERVAL <= 86400:
        errs.append(f"BT_ANNOUNCE_INTERVAL must be 10-86400 seconds, got {c.BT_ANNOUNCE_INTERVAL}")
    if not 1 <= c.BT_MAX_NUMWANT <= 1000:
        errs.append(f"BT_MAX_NUMWANT must be 1-1000, got {c.BT_MAX_NUMWANT}")
    if c.BT_MAX_PEERS < 1:
        errs.append(f"BT_MAX_PEERS must be at least 1, got {c.BT_MAX_PEERS}")
    for name in ("MAX_UPLOAD_RATE", "MAX_DOWNLOAD_RATE"):
        if getattr(c, name) < 0:
            errs.append(f"{name} must be 0 (no limit) or a number of bytes a second, got {getattr(c, name)}")
    if not 0 <= c.METRICS_PORT <= 65535:
        errs.append(f"METRICS_PORT must be 0 (no metrics page) or 1-65535, got {c.METRICS_PORT}")
    modes = c.tracker_requests_mode
    want = set(_modes())
    if set(modes) != want:
        errs.append(f"tracker_requests_mode must name exactly {sorted(want)}, got {sorted(modes)}")
    elif len(set(modes.values())) != len(modes) or not all(isinstance(v, int) for v in modes.values()):
        errs.append(f"tracker_requests_mode codes must be distinct integers, got {modes}")
    for name in ("logs_dir", "node_files_dir", "tracker_db_dir"):
        if not getattr(c, name):
            errs.append(f"{name} must not be empty")
    return errs


def _bigger_buffer(c: Config) -> str:
    """For a chunk too big for its datagram: which settings to raise, and to what."""
    if c.CHUNK_PIECES_SIZE < 1:
        return ""
    need = c.CHUNK_PIECES_SIZE + BLOCK_OVERHEAD
    if need > IPV4_MAX_UDP_PAYLOAD:
        largest = IPV4_MAX_UDP_PAYLOAD - BLOCK_OVERHEAD
        return (f"; no datagram is that big: a chunk can be at most {largest} bytes"
                f" (the largest UDP payload, {IPV4_MAX_UDP_PAYLOAD}, less the header)")
    if need > c.MAX_UDP_SEGMENT_DATA_SIZE:
        return (f"; raise BUFFER_SIZE and MAX_UDP_SEGMENT_DATA_SIZE to at least {need}"
                f" (--buffer-size {need} --set MAX_UDP_SEGMENT_DATA_SIZE={need})")
    return f"; raise BUFFER_SIZE to at least {need} (--buffer-size {need})"


def _did_you_mean(word: str, choices: tuple[str, ...]) -> str:
    import difflib  # only when a value is refused

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.7)
    return f": did you mean {close[0]!r}?" if close else ""


# ---- typing values from JSON and from strings

def _coerce(name: str, value: Any) -> Any:
    """Turn a JSON value or a command-line string into the setting's type."""
    f = _FIELDS[name]
    kind = f.type if isinstance(f.type, str) else str(f.type)
    form = {"TRACKER_ADDR": TRACKER_ADDR_FORM, "AVAILABLE_PORTS_RANGE": PORTS_RANGE_FORM}.get(name)
    given = value
    try:
        if kind == "tuple[str, ...]":  # a list: JSON array or comma-separated string
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(v).strip() for v in items if str(v).strip())
        if kind.startswith("tuple[str"):
            if isinstance(value, str):
                host, _, port = value.rpartition(":")
                value = (host.strip("[]"), port)
            host, port = value
            return (str(host), _int(port))
        if kind.startswith("tuple[int"):
            if isinstance(value, str):
                value = value.replace(",", "-").split("-")
            lo, hi = value
            return (_int(lo), _int(hi))
        if name in RATE_SETTINGS and isinstance(value, str):
            return parse_rate(value)
        if name == "LOG_LEVEL" and isinstance(value, str):
            return value.strip().lower()  # INFO and info alike
        if kind.startswith("dict"):
            if isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, Mapping):
                raise TypeError("expected an object")
            return {str(k): _int(v) for k, v in value.items()}
        if kind == "int":
            return _int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise TypeError("expected a number")
            return float(value)
        if kind == "str":
            if not isinstance(value, str):
                raise TypeError("expected a string")
            return value
    except (TypeError, ValueError) as e:
        # The exception says what Python tripped on; the form says what to write.
        why = f"expected {form}" if form else str(e)
        raise ConfigError(f"bad value for {name}: {given!r} ({why})") from None
    raise ConfigError(f"cannot set {name}")  # pragma: no cover - every field is covered above


#: Settings in bytes a second that also take human sizes.
RATE_SETTINGS = ("MAX_UPLOAD_RATE", "MAX_DOWNLOAD_RATE")


def parse_rate(text: str) -> int:
    """Bytes a second from ``20MiB``, ``512 KiB/s``, ``1.5MB``, ``0`` or ``1048576`` (ValueError if none).

    humanfriendly's ``parse_size`` reads the units: KiB, MiB, GiB are powers of 1024, and KB, MB, GB
    (and K, M, G) powers of 1000, as their names say, so nobody has to guess which one was meant.
    """
    from humanfriendly import InvalidSize, parse_size  # type: ignore[import-untyped]  # only for a size given as text

    words = text.strip()
    if words.lower().endswith("/s"):
        words = words[:-2].strip()
    try:
        size = parse_size(words)
    except InvalidSize:
        raise ValueError(f"expected a size such as 20MiB, 512KiB or 0, got {text!r}") from None
    return int(size)


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("expected an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("expected an integer")
        return int(value)
    return int(value)


def _canonical(name: str) -> str:
    real = _ALIASES.get(name.strip().lower().replace("-", "_"))
    if real is None:
        raise ConfigError(f"unknown setting {name!r}; known: {', '.join(sorted(_FIELDS))}")
    return real


def flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    """Accept the original nested layout or a flat one; return flat {setting: value}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("directory", "constants") and isinstance(value, Mapping):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def load(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Config | None = None,
) -> Config:
    """Defaults, then the JSON file at *path*, then *overrides*; validated."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"config file {path} must hold a JSON object")
        for key, value in flatten(data).items():
            name = _canonical(key)
            values[name] = _coerce(name, value)
    for key, value in (overrides or {}).items():
        name = _canonical(key)
        values[name] = _coerce(name, value)
    return dataclasses.replace(base or Config(), **values).validated()


def parse_assignment(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` from the command line."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"expected NAME=VALUE, got {text!r}")
    return _canonical(name), value
