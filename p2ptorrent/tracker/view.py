"""What the tracker's web page and its read-only JSON API show: pages of nodes and files, one file, events.

Pure: the state, the events and ``now`` in, plain dicts out (the same dicts
for the JSON API and the HTML template, so the two never disagree).  A page
costs its rows, never the whole swarm: nodes come last REGISTER first and
files newest first, the orders :class:`SwarmState` keeps them in, so nothing
is sorted over 100k nodes; every table says its total.  Nothing here ever
reads a token or its digest (the rows do not carry them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import humanize
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from p2ptorrent.tracker.events import EventRing
from p2ptorrent.tracker.state import FileRow, NodeRow, OwnerInfo, SwarmState, is_info_hash_hex

#: Rows per table when the request names no ``limit``, and the most one may name.
DEFAULT_LIMIT, MAX_LIMIT = 200, 1000
#: Events the page shows.
EVENTS_SHOWN = 50
#: Seconds between two refreshes of the page by default, and the range ``?refresh=`` may choose from.
DEFAULT_REFRESH, MIN_REFRESH, MAX_REFRESH = 5, 1, 3600


class BadQuery(ValueError):
    """A query the API answers 400 (the message says why)."""


@dataclass(frozen=True)
class Paging:
    page: int = 1
    limit: int = DEFAULT_LIMIT

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.limit


def wants_html(accept: str | None) -> bool:
    """Whether a client's Accept header prefers HTML to JSON: browsers do.

    ``*/*`` (curl), no header and a tie stay JSON, today's answer of ``GET /``.
    """
    offers = parse_accept_header(accept or "", MIMEAccept)
    return offers.best_match(["application/json", "text/html"], default="application/json") == "text/html"


def _query_int(args: Mapping[bytes, Sequence[bytes]], name: str, default: int, low: int, high: int) -> int:
    values = args.get(name.encode("ascii"))
    if not values:
        return default
    text = values[-1].decode("ascii", "replace")
    if not text.isdigit() or not low <= int(text) <= high:
        raise BadQuery(f"query {name!r} must be an integer {low}..{high}, got {text[:40]!r}")
    return int(text)


def paging(args: Mapping[bytes, Sequence[bytes]]) -> Paging:
    """``?page=`` (from 1) and ``?limit=`` (1..MAX_LIMIT) of a request, or BadQuery."""
    return Paging(_query_int(args, "page", 1, 1, 10**9), _query_int(args, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT))


def refresh_seconds(args: Mapping[bytes, Sequence[bytes]], default: int = DEFAULT_REFRESH) -> int:
    """``?refresh=`` seconds of the page (its own reload), or BadQuery."""
    return _query_int(args, "refresh", default, MIN_REFRESH, MAX_REFRESH)


def info_hash_of(text: str) -> str:
    """The info hash a URL names (40 hex digits, either case), or BadQuery."""
    lowered = text.lower()
    if not is_info_hash_hex(lowered):
        raise BadQuery("an info hash is 40 hexadecimal digits")
    return lowered


def size(length: int) -> str:
    """Bytes for people, in binary units (1.5 MiB)."""
    return str(humanize.naturalsize(length, binary=True))


def _ago(seconds: float) -> str:
    return "now" if seconds < 1 else f"{humanize.naturaldelta(seconds)} ago"


def _pages(total: int, p: Paging) -> dict[str, int]:
    return {"total": total, "page": p.page, "limit": p.limit, "pages": max(1, -(-total // p.limit))}


def node_json(row: NodeRow, now: float) -> dict[str, Any]:
    return {
        "node_id": row.node_id, "host": row.host, "port": row.port, "files": row.files,
        "frequency": row.frequency, "last_seen": row.last_seen, "last_seen_ago": _ago(max(0.0, now - row.last_seen)),
    }


def file_json(row: FileRow) -> dict[str, Any]:
    return {
        "info_hash": row.info_hash, "name": row.name, "length": row.length, "size": size(row.length),
        "complete": row.complete, "partial": row.partial,
    }


def owner_json(owner: OwnerInfo) -> dict[str, Any]:
    doc = owner.as_json()
    if owner.partial and owner.pieces:
        doc["percent"] = round(100 * (owner.have or 0) / owner.pieces, 1)
    return doc


def nodes(state: SwarmState, now: float, p: Paging) -> dict[str, Any]:
    """A page of live nodes, last heartbeat first."""
    rows = state.recent_nodes(p.offset, p.limit)
    return {**_pages(state.summary()["nodes"], p), "nodes": [node_json(r, now) for r in rows]}


def files(state: SwarmState, p: Paging) -> dict[str, Any]:
    """A page of known files, newest first."""
    rows = state.recent_files(p.offset, p.limit)
    return {**_pages(state.summary()["files"], p), "files": [file_json(r) for r in rows]}


def file(state: SwarmState, info_hash: str, p: Paging) -> dict[str, Any] | None:
    """One file and a page of its owners, partial ones with their progress (None: unknown)."""
    row = state.file_row(info_hash)
    if row is None:
        return None
    owners = state.file_owners(info_hash, p.offset, p.limit)
    return {**file_json(row), "owners": {**_pages(row.complete + row.partial, p),
                                         "owners": [owner_json(o) for o in owners]}}


def events(ring: EventRing, now: float, limit: int = EVENTS_SHOWN) -> list[dict[str, Any]]:
    """The newest events first."""
    return [{**e.as_json(), "ago": _ago(max(0.0, now - e.at))} for e in ring.newest(limit)]


def page(state: SwarmState, ring: EventRing, now: float, p: Paging, refresh: int, clients: int) -> dict[str, Any]:
    """Everything the HTML page shows."""
    return {
        "nodes": nodes(state, now, p), "files": files(state, p), "events": events(ring, now),
        "refresh": refresh, "clients": clients,
    }
