"""Who a download fetches from, and when it asks the tracker: the owner lifecycle, as pure decisions.

Each owner the tracker names gets one :class:`OwnerRecord` with an explicit
state::

    candidate --greet--> greeting --answered--> fetching --dropped--> dropped
                            |  ^                   |
              no answer yet |  | retry             +--refused, bad cookie--> (greeted again, still fetching)
                            v  |
                          lagging --gave up / not the file--> dropped

A *greeting* owner holds one of the download's slots (MAX_SPLITTNES_RATE for
owners of the whole file, MAX_PARTIAL_PEERS for owners still downloading); a
*lagging* one missed an INFO answer and is still asked, but its slot goes to a
spare.  The :class:`Session` takes inputs named in the past tense, each with
``now``, and returns a list of small frozen actions that the download's I/O
shell (download.py) carries out.  No Twisted, no clock, no network, no
logging here; the per-block hot path never comes through.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Sequence, Union

from p2ptorrent import wire

#: INFO requests per owner before it counts as unreachable.
INFO_TRIES = 3
#: After losing an owner with no spare left, ask the tracker again this soon at most.
NEED_SOON = 1.0
#: Seconds between HAVE requests to a peer still downloading (or refusing us for now).
HAVE_INTERVAL = 1.0
#: An owner dropped for silence (loss can do that to a live one) is greeted again when the tracker lists it
#: again, after REGREET_AFTER s, then twice that, ... at most MAX_REGREETS times.
REGREET_AFTER = 2.0
MAX_REGREETS = 3

Addr = Hashable


class OwnerState(enum.Enum):
    CANDIDATE = "candidate"
    GREETING = "greeting"
    LAGGING = "lagging"
    FETCHING = "fetching"
    DROPPED = "dropped"


@dataclass
class OwnerRecord:
    addr: Addr
    node_id: int
    #: The tracker (then its INFO answer) says it is still downloading the file.
    partial: bool
    state: OwnerState = OwnerState.CANDIDATE
    #: What became of it, for the failure message (None: nothing worth saying).
    outcome: str | None = None
    #: Fetching, and greeted again for a fresh cookie (it refused ours).
    regreeting: bool = False
    #: Times it was given up for silence, and when the tracker listing it may bring it back.
    silent_drops: int = 0
    retry_at: float = 0.0


@dataclass(frozen=True)
class OwnerListed:
    """One owner as the tracker's NEED answer lists it."""

    addr: Addr
    node_id: int
    partial: bool


# ---- actions

@dataclass(frozen=True)
class Greet:
    """Send INFO to *addr*; report info_answered or info_timed_out after *timeout* s."""

    addr: Addr
    node_id: int
    timeout: float


@dataclass(frozen=True)
class StartFetching:
    """Add the owner to the transfer with its cookie; ask HAVE first if it is still downloading."""

    addr: Addr
    node_id: int
    cookie: bytes
    partial: bool


@dataclass(frozen=True)
class SetCookie:
    addr: Addr
    cookie: bytes


@dataclass(frozen=True)
class Choke:
    """It has no upload slot for us now: its blocks go to others; HAVE says when it has one."""

    addr: Addr


@dataclass(frozen=True)
class Drop:
    """Take the owner out of the transfer; its share of the work ends with *reason*."""

    addr: Addr
    reason: str


@dataclass(frozen=True)
class AskTracker:
    """NEED: who owns the file now?  Report tracker_answered or tracker_failed."""


@dataclass(frozen=True)
class AskHave:
    addr: Addr


@dataclass(frozen=True)
class ReportProgress:
    """Tell the tracker we hold *have* pieces (other downloaders may fetch them from us)."""

    have: int


@dataclass(frozen=True)
class StartSwarming:
    """Owners still downloading exist: fetch rarest first, not in file order."""


@dataclass(frozen=True)
class Fail:
    reason: str


@dataclass(frozen=True)
class Note:
    """A line for the log, at *level* (info or warn)."""

    level: str
    text: str


Action = Union[Greet, StartFetching, SetCookie, Choke, Drop, AskTracker, AskHave, ReportProgress, StartSwarming, Fail, Note]


def where(addr: Any) -> str:
    """host:port for people, whatever form the address takes."""
    try:
        return f"{addr[0]}:{addr[1]}"
    except (TypeError, IndexError, KeyError):
        return str(addr)


class Session:
    """The owners of one download and the schedules around them (NEED, HAVE, progress reports)."""

    def __init__(
        self, name: str, node_id: int, *, complete_slots: int, partial_slots: int,
        request_timeout: float, swarm_interval: float, length: int, piece_length: int,
    ) -> None:
        self.name = name
        self.node_id = node_id
        self.complete_slots = complete_slots
        self.partial_slots = partial_slots
        self.request_timeout = request_timeout
        self.swarm_interval = swarm_interval
        #: The file as the torrent describes it: an owner whose INFO says otherwise has another file.
        self.length, self.piece_length = length, piece_length
        self.owners: dict[Addr, OwnerRecord] = {}
        #: Candidates in the order they are to be greeted.
        self._queue: list[Addr] = []
        #: INFO tries left, per owner being greeted.
        self._tries: dict[Addr, int] = {}
        self.asked_tracker = 0
        self.asking = False
        self.failed = False
        self._next_need = 0.0
        self._next_have = 0.0
        self._next_report = 0.0
        self._reported = -1

    @classmethod
    def for_download(cls, meta: Any, node_id: int, settings: Any) -> Session:
        return cls(
            meta.name, node_id, complete_slots=settings.MAX_SPLITTNES_RATE, partial_slots=settings.MAX_PARTIAL_PEERS,
            request_timeout=settings.REQUEST_TIMEOUT, swarm_interval=settings.SWARM_INTERVAL,
            length=meta.length, piece_length=meta.piece_length,
        )

    # ---- views
    def fetching(self) -> list[OwnerRecord]:
        return [o for o in self.owners.values() if o.state is OwnerState.FETCHING]

    def _in(self, *states: OwnerState) -> list[OwnerRecord]:
        return [o for o in self.owners.values() if o.state in states]

    def _held(self) -> tuple[int, int]:
        """Slots taken: (owners of the whole file, owners still downloading), fetching or being greeted."""
        held = [0, 0]
        for o in self._in(OwnerState.FETCHING, OwnerState.GREETING):
            held[o.partial] += 1
        return held[0], held[1]

    def _quota(self, partial: bool) -> int:
        return self.partial_slots if partial else self.complete_slots

    def _alive(self) -> bool:
        """Anyone to fetch from, now or once greeted?"""
        return bool(self._in(OwnerState.FETCHING, OwnerState.GREETING, OwnerState.LAGGING))

    # ---- inputs
    def started(self, now: float, have: int) -> list[Action]:
        """The download began: say what we hold, and meet the owners."""
        return self.report(now, have) + self._ask_tracker(now)

    def tracker_answered(self, owners: Iterable[OwnerListed], now: float) -> list[Action]:
        self.asking = False
        if self.failed:
            return []
        listed = list(owners)
        fresh = [o for o in listed if o.node_id != self.node_id and o.addr not in self.owners]
        actions: list[Action] = self._revive(listed, now)
        if self.asked_tracker == 1 or fresh:
            partial = [o.node_id for o in listed if o.partial]
            still = f"; still downloading: {partial}" if partial else ""
            actions.append(Note("info", f"{self.name}: tracker ranked owners {[o.node_id for o in listed]}{still}"))
        for o in fresh:
            self.owners[o.addr] = OwnerRecord(o.addr, o.node_id, o.partial)
            self._queue.append(o.addr)
        if any(o.partial for o in fresh):
            actions.append(StartSwarming())
        if not fresh and not self._alive() and not self._queue:
            if self.asked_tracker == 1:
                return actions + self._fail(f"no node is sharing {self.name}: the tracker knows no live owner")
            return actions + self._fail(self.gone_text())
        return actions + self._recruit()

    def _revive(self, listed: list[OwnerListed], now: float) -> list[Action]:
        """Owners dropped for silence that the tracker still lists: greet them again, with back-off."""
        actions: list[Action] = []
        for entry in listed:
            o = self.owners.get(entry.addr)
            if (o is None or o.state is not OwnerState.DROPPED or not 0 < o.silent_drops <= MAX_REGREETS
                    or now < o.retry_at):
                continue
            o.state, o.partial = OwnerState.CANDIDATE, entry.partial
            self._queue.append(o.addr)
            actions.append(Note("info", f"{self.name}: node {o.node_id} is listed again; greeting it again"
                                        f" (given up {o.silent_drops} time(s) for silence)"))
        return actions

    def _silent(self, o: OwnerRecord, now: float) -> None:
        o.silent_drops += 1
        o.retry_at = now + REGREET_AFTER * 2 ** (o.silent_drops - 1)

    def tracker_failed(self, why: str, now: float) -> list[Action]:
        self.asking = False
        if self.failed:
            return []
        if self._alive():
            return [Note("warn", f"{self.name}: the tracker did not answer ({why}); going on with the owners known")]
        return self._fail(f"cannot ask the tracker for owners of {self.name}: {why}")

    def info_answered(self, addr: Addr, resp: wire.InfoResponse, now: float) -> list[Action]:
        status = {wire.OK: "complete", wire.PARTIAL: "partial"}.get(resp.status, "absent")
        same_file = (resp.length, resp.piece_length) == (self.length, self.piece_length)
        cookie = resp.cookie
        o = self.owners.get(addr)
        if o is None or self.failed or o.state not in (OwnerState.GREETING, OwnerState.LAGGING, OwnerState.FETCHING):
            return []
        self._tries.pop(addr, None)
        if o.regreeting:
            o.regreeting = False
            if status == "absent" or not same_file:
                return self._drop(o, "no longer has the file", now)
            return [SetCookie(addr, cookie)]
        late = o.state is OwnerState.LAGGING
        if late and self._held()[o.partial] >= self._quota(o.partial):
            o.state = OwnerState.DROPPED
            return [Note("info", f"{self.name}: node {o.node_id} answered late; enough owners already")]
        if status == "absent":
            return [Note("info", f"{self.name}: node {o.node_id} at {where(addr)} does not have it"),
                    *self._give_up(o, "does not have it", now)]
        if not same_file:
            return [Note("warn", f"{self.name}: node {o.node_id} describes a different file; ignoring it"),
                    *self._give_up(o, "describes a different file", now)]
        o.partial = status == "partial"
        o.state = OwnerState.FETCHING
        return [StartFetching(addr, o.node_id, cookie, o.partial)]

    def info_timed_out(self, addr: Addr, why: str, now: float) -> list[Action]:
        o = self.owners.get(addr)
        if o is None or self.failed or addr not in self._tries:
            return []
        tries = self._tries[addr]
        if tries > 1:
            actions: list[Action] = [Note("info", f"{self.name}: no INFO answer from node {o.node_id}, retrying")]
            actions.append(self._greet(o, tries - 1))
            if not o.regreeting and o.state is OwnerState.GREETING:
                o.state = OwnerState.LAGGING  # keeps trying, but a spare takes its slot
                actions += self._recruit()
            return actions
        del self._tries[addr]
        self._silent(o, now)
        actions = [Note("warn", f"{self.name}: node {o.node_id} at {where(addr)} is unreachable: {why}")]
        if o.regreeting:
            o.regreeting = False
            return actions + self._drop(o, "stopped answering", now)
        return actions + self._give_up(o, f"did not answer ({INFO_TRIES} tries)", now)

    def refused(self, addr: Addr, code: int, message: str, now: float) -> list[Action]:
        """An ERROR from an owner we fetch from: *code* is wire.E_*."""
        o = self.owners.get(addr)
        if o is None or o.state is not OwnerState.FETCHING or self.failed:
            return []
        if code == wire.E_BAD_COOKIE:
            if o.regreeting:
                return []
            o.regreeting = True  # our cookie went stale (it restarted): greet it again, keep fetching
            return [self._greet(o, INFO_TRIES)]
        if code == wire.E_CHOKED:
            return [Choke(addr)]  # no upload slot for us now: not a reason to drop it
        return self._drop(o, f"refused: {message or code}", now)

    def went_silent(self, addr: Addr, reason: str, now: float, silent: bool = True) -> list[Action]:
        """The transfer dropped an owner: silent too long (*silent*), or it sent bad pieces; it is out already."""
        o = self.owners.get(addr)
        if o is None or o.state is not OwnerState.FETCHING:
            return []
        o.state = OwnerState.DROPPED
        o.outcome = reason
        if silent:
            self._silent(o, now)
        return [Note("warn", f"{self.name}: dropped node {o.node_id} at {where(addr)}: {reason}")]

    def owner_completed(self, addr: Addr) -> None:
        """HAVE said the owner now has every piece: it counts against the complete owners' slots."""
        o = self.owners.get(addr)
        if o is not None:
            o.partial = False

    def tracker_forgot_us(self) -> None:
        """Report our progress again at the next tick (the tracker restarted)."""
        self._reported = -1
        self._next_report = 0.0

    def ticked(self, now: float, have: int, unsure: Iterable[Addr] = (), lost: bool = False) -> list[Action]:
        """The download's timer: replacements (*lost*: owners went silent since the last tick), HAVE
        requests to the *unsure* owners (still downloading, offering only some pieces, or refusing us for
        now: the transfer knows which), progress reports, NEED."""
        if self.failed:
            return []
        actions: list[Action] = []
        if lost or not self._alive():
            actions += self._replace(now)
            if self.failed:
                return actions
        if now >= self._next_have:
            self._next_have = now + HAVE_INTERVAL
            asking = set(unsure)
            actions += [AskHave(o.addr) for o in self.fetching() if o.addr in asking]
        actions += self.report(now, have)
        if now >= self._next_need and not self.asking:
            actions += self._ask_tracker(now)
        return actions

    def report(self, now: float, have: int) -> list[Action]:
        """A progress report if one is due and *have* changed since the last."""
        if now < self._next_report:
            return []
        self._next_report = now + self.swarm_interval
        if have == self._reported:
            return []
        self._reported = have
        return [ReportProgress(have)]

    # ---- the rules
    def _ask_tracker(self, now: float) -> list[Action]:
        self.asked_tracker += 1
        self.asking = True
        # Soon at first (nodes that start together meet within a second), then every swarm_interval.
        self._next_need = now + min(self.swarm_interval, 0.25 * 2**self.asked_tracker)
        return [AskTracker()]

    def _greet(self, o: OwnerRecord, tries: int) -> Greet:
        self._tries[o.addr] = tries
        return Greet(o.addr, o.node_id, self.request_timeout * 2 ** (INFO_TRIES - tries))

    def _recruit(self) -> list[Action]:
        complete, partial = self._held()
        room = [self.complete_slots - complete, self.partial_slots - partial]
        actions: list[Action] = []
        waiting: list[Addr] = []
        for addr in self._queue:
            o = self.owners[addr]
            if o.state is not OwnerState.CANDIDATE:
                continue
            if room[o.partial] <= 0:
                waiting.append(addr)
                continue
            room[o.partial] -= 1
            o.state = OwnerState.GREETING
            actions.append(self._greet(o, INFO_TRIES))
        self._queue = waiting
        return actions

    def _give_up(self, o: OwnerRecord, outcome: str, now: float) -> list[Action]:
        """Never fetched from: no share to end; a spare takes its place."""
        o.state = OwnerState.DROPPED
        o.outcome = outcome
        return self._replace(now)

    def _drop(self, o: OwnerRecord, reason: str, now: float) -> list[Action]:
        o.state = OwnerState.DROPPED
        o.outcome = reason
        return [Note("warn", f"{self.name}: dropped node {o.node_id} at {where(o.addr)}: {reason}"),
                Drop(o.addr, reason), *self._replace(now)]

    def _replace(self, now: float) -> list[Action]:
        """An owner left or never answered: greet a spare, or ask the tracker, or give up."""
        if self.failed or self.asking:
            return []
        actions = self._recruit()
        if not self._queue:  # short of peers: meet new ones soon
            self._next_need = min(self._next_need, now + NEED_SOON)
        if not self._alive():
            if self.asked_tracker < 2:
                return actions + self._ask_tracker(now)
            return actions + self._fail(self.gone_text())
        return actions

    def _fail(self, reason: str) -> list[Action]:
        self.failed = True
        return [Fail(reason)]

    def gone_text(self) -> str:
        """Every owner failed us: say how, each in a few words."""
        causes = "; ".join(
            f"node {o.node_id} ({where(o.addr)}) {o.outcome}" for o in self.owners.values() if o.outcome is not None
        )
        tried = sum(o.state is not OwnerState.CANDIDATE for o in self.owners.values())
        return f"every owner of {self.name} is gone: {causes or f'{tried} tried'}"


def listed(owners: Sequence[Any]) -> list[OwnerListed]:
    """The tracker client's owners, as the session takes them."""
    return [OwnerListed((o.host, o.port), o.node_id, bool(getattr(o, "partial", False))) for o in owners]
