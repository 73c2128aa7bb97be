"""Changes to the swarm as values: applied to a :class:`SwarmState`, and written to the shared log.

Every request that changes the swarm (REGISTER, OWN, UPDATE, EXIT) and every
liveness check is a *change*.  A tracker on its own applies a change at once;
trackers sharing a swarm through Redis (redis_store.py) append it to one
ordered log and each applies every change in the log's order, so they all hold
the same state and give the same answers.  That needs a change to decide the
same way wherever it is applied, so it names everything the rules would
otherwise take from the tracker that received it: the node's address, the
time, and the token a joining node gets.  Tokens travel only as SHA-256
digests (:class:`~p2ptorrent.tracker.state.TokenDigest`), like in the database.

NEED changes nothing and is never logged.  Pure: no I/O, no clock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from typing import Any, Union

from p2ptorrent.tracker.events import EventRing
from p2ptorrent.tracker.state import (
    Exit,
    Own,
    OwnChange,
    Register,
    Registration,
    SwarmState,
    TokenDigest,
    TrackerError,
    Update,
    Withdraw,
    proposed_token,
    token_digest,
)

#: Version of the entries in the shared log (a tracker refuses a log of another).
CHANGE_FORMAT = 1


@dataclass(frozen=True)
class Check:
    """One liveness check: every tracker counts it; the nodes it makes due are dropped by :class:`Drop`."""


@dataclass(frozen=True)
class Drop:
    """Drop due nodes, longest silent first, until *budget* work is spent (``SwarmState.drop_silent``).

    The tracker that made a check logs these one after another while nodes
    are due, so a big drop is spread over the log and other changes are
    applied between its slices, in the same order everywhere.
    """

    budget: int


#: A request that changes the swarm (NEED is not one).
Changing = Union[Register, Own, Withdraw, Update, Exit]
#: What applying a change gives: REGISTER a Registration, OWN an OwnChange, a withdrawal whether the node
#: owned the file, UPDATE the credited uploaders, a Drop the dropped nodes, EXIT and Check None.
Outcome = Union[Registration, OwnChange, bool, list[int], None]

_KINDS: dict[str, type[Any]] = {
    "register": Register, "own": Own, "withdraw": Withdraw, "update": Update, "exit": Exit, "check": Check,
    "drop": Drop,
}
_KIND_OF = {cls: kind for kind, cls in _KINDS.items()}


@dataclass(frozen=True)
class Change:
    """A change as the log carries it: the request (tokens as digests), where and when it came, and for a
    REGISTER the digest of the token the node gets if it joins now."""

    request: Changing | Check | Drop
    host: str | None
    now: float
    fresh_digest: str | None = None


def apply(state: SwarmState, request: Changing | Check | Drop, host: str | None, now: float,
          fresh_token: str | None = None, events: EventRing | None = None) -> Outcome:
    """Apply one change; raises :class:`TrackerError` (and changes nothing) if the rules refuse it.

    A Check only counts the check: the nodes it made due are dropped by
    later Drop changes (or, on one tracker, by ``state.drop_silent`` in slices).
    What the change did goes into *events* (the web page's recent events).
    """
    new_file = None
    if events is not None and isinstance(request, Own) and not state.has_file(request.info_hash):
        new_file = request.name
    elif events is not None and isinstance(request, Withdraw):
        row = state.file_row(request.info_hash)  # its name, for the event, before it may be forgotten
        new_file = row.name if row is not None else None
    outcome = _apply(state, request, host, now, fresh_token)
    if events is not None:
        if isinstance(request, Drop):
            events.dropped(outcome if isinstance(outcome, list) else [], now)
        else:
            events.note(request, outcome, now, new_file)
    return outcome


def check_address(request: Any, host: str | None) -> None:
    """A REGISTER needs the connection's address (the one the tracker records): refused without it.  Checked
    here, and by a tracker on Redis before it logs the change, so that no such change enters the log."""
    if isinstance(request, Register) and host is None:
        raise TrackerError(400, "cannot tell the address of this connection")


def _apply(state: SwarmState, request: Changing | Check | Drop, host: str | None, now: float,
           fresh_token: str | None) -> Outcome:
    if isinstance(request, Register):
        check_address(request, host)
        assert host is not None
        return state.register(request.node_id, host, request.port, request.token, now, fresh_token)
    if isinstance(request, Own):
        return state.own(request.node_id, request.token, request.info_hash, request.name, request.length,
                         request.have, request.pieces)
    if isinstance(request, Withdraw):
        return state.withdraw(request.node_id, request.token, request.info_hash)
    if isinstance(request, Update):
        return state.update(request.node_id, request.token, request.info_hash, request.uploaders)
    if isinstance(request, Exit):
        state.exit(request.node_id, request.token)
        return None
    if isinstance(request, Drop):
        return state.drop_silent(request.budget)
    assert isinstance(request, Check), request
    state.start_check(now)
    return None


def apply_change(state: SwarmState, change: Change, events: EventRing | None = None) -> Outcome:
    """Apply a change read from the log (see :func:`apply`)."""
    fresh = TokenDigest(change.fresh_digest) if change.fresh_digest is not None else None
    return apply(state, change.request, change.host, change.now, fresh, events)


def to_change(request: Changing | Check | Drop, host: str | None, now: float, fresh_token: str | None = None) -> Change:
    """The change a request makes, for the log: its token replaced by the token's digest.

    *fresh_token* is the token a REGISTER hands out if the node joins now and
    proposed none (the tracker that received the request keeps it to answer).
    """
    if isinstance(request, (Check, Drop)):
        return Change(request, host, now)
    token = request.token
    digest = None if token is None else token_digest(token)
    fresh_digest = None
    if isinstance(request, Register):
        chosen = token if proposed_token(token) else fresh_token
        fresh_digest = None if chosen is None else str(token_digest(chosen))
    return Change(replace(request, token=digest), host, now, fresh_digest)


def encode(change: Change) -> str:
    """The change as one compact JSON text."""
    request = change.request
    doc: dict[str, Any] = {f.name: getattr(request, f.name) for f in fields(request)}
    if "token" in doc and doc["token"] is not None:
        doc["token"] = str(doc["token"])
    if "uploaders" in doc:
        doc["uploaders"] = list(doc["uploaders"])
    entry: dict[str, Any] = {"v": CHANGE_FORMAT, "kind": _KIND_OF[type(request)], "req": doc,
                             "host": change.host, "now": change.now}
    if change.fresh_digest is not None:
        entry["fresh"] = change.fresh_digest
    return json.dumps(entry, separators=(",", ":"))


def decode(text: str | bytes) -> Change:
    """The change :func:`encode` wrote, or ValueError (another version, a damaged entry)."""
    try:
        entry = json.loads(text)
        if entry.get("v") != CHANGE_FORMAT:
            raise ValueError(f"change format {entry.get('v')!r}, this tracker reads {CHANGE_FORMAT}")
        cls = _KINDS[entry["kind"]]
        doc = dict(entry["req"])
        if doc.get("token") is not None:
            doc["token"] = TokenDigest(doc["token"])
        if "uploaders" in doc:
            doc["uploaders"] = tuple(doc["uploaders"])
        host = entry["host"]
        now = float(entry["now"])
        fresh = entry.get("fresh")
        return Change(cls(**doc), host if host is None else str(host), now, fresh if fresh is None else str(fresh))
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"not a change: {e!r}") from None
