"""Recent swarm events for the tracker's web page: joins, exits, drops, new files, completed downloads.

A bounded ring, filled from the outcome of each applied change (changes.py
calls :meth:`EventRing.note`), so every tracker of a shared swarm (Redis)
shows the same events as it applies the log.  Recording one costs O(1) (a
drop slice: one event for the slice, not one per node), so the ring adds
nothing that grows with the swarm to a heartbeat.  Pure: ``now`` comes with
each change; no token or digest ever goes in.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from p2ptorrent.tracker.state import Exit, Own, OwnChange, Register, Registration, Withdraw

#: Events kept (the oldest go first).
EVENTS_KEPT = 200
#: Node ids one drop event names (the rest are counted).
DROPPED_IDS_NAMED = 10
#: A withdrawal's event, by the reason the node gave (state.WITHDRAW_REASONS).
_WITHDRAWN = {
    "paused": "paused {what}", "cancelled": "cancelled {what}", "stopped seeding": "stopped seeding {what}",
    "removed": "removed {what}", "failed": "withdrew {what}: its download failed",
}


@dataclass(frozen=True)
class Event:
    """One thing that happened: when (the change's ``now``), what (``kind``) and a sentence for people."""

    seq: int
    at: float
    kind: str
    text: str
    node_id: int | None = None
    info_hash: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": self.at, "kind": self.kind, "text": self.text, "node_id": self.node_id,
                "info_hash": self.info_hash}


class EventRing:
    """The last :data:`EVENTS_KEPT` events, newest last; ``seq`` counts every event ever noted."""

    def __init__(self, kept: int = EVENTS_KEPT) -> None:
        self._events: deque[Event] = deque(maxlen=kept)
        self.seq = 0

    def __len__(self) -> int:
        return len(self._events)

    def newest(self, limit: int) -> list[Event]:
        """Up to *limit* events, newest first."""
        out: list[Event] = []
        for event in reversed(self._events):
            if len(out) >= limit:
                break
            out.append(event)
        return out

    def add(self, at: float, kind: str, text: str, node_id: int | None = None, info_hash: str | None = None) -> None:
        self.seq += 1
        self._events.append(Event(self.seq, at, kind, text, node_id, info_hash))

    def note(self, request: Any, outcome: Any, now: float, new_file: str | None = None) -> None:
        """The event an applied change makes, if any (*new_file*: the name of a file this OWN made known, or
        of the file a withdrawal names).

        Heartbeats, progress and known ownerships make none: they come by the
        thousand and say nothing new.
        """
        if isinstance(request, Register) and isinstance(outcome, Registration):
            if outcome.new:
                self.add(now, "join", f"node {outcome.node_id} joined from {outcome.host}:{outcome.port}",
                         node_id=outcome.node_id)
            elif outcome.returned:
                self.add(now, "back", f"node {outcome.node_id} checked in after the tracker restarted",
                         node_id=outcome.node_id)
        elif isinstance(request, Own) and isinstance(outcome, OwnChange):
            if new_file is not None:
                self.add(now, "file", f"node {request.node_id} announced a new file {new_file}",
                         node_id=request.node_id, info_hash=request.info_hash)
            elif outcome is OwnChange.COMPLETED:
                self.add(now, "complete", f"node {request.node_id} completed {request.name}",
                         node_id=request.node_id, info_hash=request.info_hash)
            elif outcome in (OwnChange.NEW, OwnChange.NEW_PARTIAL):
                self.add(now, "own", f"node {request.node_id} now shares {request.name}",
                         node_id=request.node_id, info_hash=request.info_hash)
        elif isinstance(request, Withdraw) and outcome is True:
            what = new_file if new_file is not None else "a file"
            text = _WITHDRAWN.get(request.reason, "withdrew {what}").format(what=what)
            self.add(now, "withdraw", f"node {request.node_id} {text}", node_id=request.node_id,
                     info_hash=request.info_hash)
        elif isinstance(request, Exit):
            self.add(now, "exit", f"node {request.node_id} left", node_id=request.node_id)

    def dropped(self, node_ids: list[int], now: float) -> None:
        """One event for a slice of nodes dropped by liveness."""
        if not node_ids:
            return
        named = " ".join(map(str, sorted(node_ids)[:DROPPED_IDS_NAMED]))
        more = len(node_ids) - DROPPED_IDS_NAMED
        text = f"dropped {len(node_ids)} silent node{'s' if len(node_ids) != 1 else ''}: {named}"
        self.add(now, "drop", text + (f" and {more} more" if more > 0 else ""),
                 node_id=node_ids[0] if len(node_ids) == 1 else None)
