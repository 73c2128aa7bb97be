"""A node's link to one tracker: its client (and token file), its heartbeat, its outbox.

The node's own tracker (``--tracker``) has one from the start, with the files of
a node folder as they always were (``.tracker_token``, ``.outbox.json``).  Any
other tracker a torrent names gets one when a torrent first needs it, its files
in ``trackers/`` named by a hash of its URL, so a restarted node speaks to each
tracker as itself and still owes each what it owed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from p2ptorrent.atomicfile import atomic_write
from p2ptorrent.node.outbox import Outbox
from p2ptorrent.node.tracker_client import HeartbeatService, TrackerClient

#: Another tracker's token and outbox live here, in the node folder.
TRACKERS_DIR = "trackers"


class RememberingClient(TrackerClient):
    """A TrackerClient that keeps its token in a file (mode 600), and says when a heartbeat got through.

    The tracker refuses a REGISTER without the token of a node id it knows
    (no node may speak as another), so without this a node killed and
    restarted would be locked out until the tracker's liveness check dropped
    its old self (up to a minute with the defaults).  The token is read back
    only for the same tracker URL, and removed when the node EXITs.
    """

    log = Logger()

    def __init__(self, *args: Any, token_file: Path, **kwargs: Any) -> None:
        self.token_file = token_file
        self._token: str | None = None
        self._saving = False
        self.registered_once = False
        self._on_registered: list[Deferred[None]] = []
        super().__init__(*args, **kwargs)
        self._saving = True
        if self._token is None:
            self._token = self._load()

    @property
    def token(self) -> str | None:
        return self._token

    @token.setter
    def token(self, value: str | None) -> None:
        changed = value != self._token
        self._token = value
        if changed and self._saving:
            self._save(value)

    def register(self) -> Deferred[bool]:
        def through(new: bool) -> bool:
            self.registered_once = True
            waiting, self._on_registered = self._on_registered, []
            for d in waiting:
                d.callback(None)
            return new

        return super().register().addCallback(through)

    def when_registered(self) -> Deferred[None]:
        """Fires once a REGISTER (a heartbeat) has been answered, now if one was."""
        if self.registered_once:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._on_registered.append(d)
        return d

    def give_up_waiting(self, why: Exception) -> None:
        waiting, self._on_registered = self._on_registered, []
        for d in waiting:
            d.errback(why)

    def _load(self) -> str | None:
        try:
            doc = json.loads(self.token_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            self.log.warn("cannot read {file}: {why}; registering afresh", file=str(self.token_file), why=e)
            return None
        if isinstance(doc, dict) and doc.get("tracker") == self.base_url and isinstance(doc.get("token"), str):
            return str(doc["token"])
        return None

    def _save(self, token: str | None) -> None:
        try:
            if token is None:
                self.token_file.unlink(missing_ok=True)
                return
            # A restart trusts it as is: on disk before we go on (fsync), readable by this user only.
            atomic_write(self.token_file, json.dumps({"tracker": self.base_url, "token": token}).encode(), mode=0o600)
        except OSError as e:
            # Not fatal: a restarted node then waits for the tracker to forget its old self.
            self.log.warn("cannot keep the tracker token in {file}: {why}", file=str(self.token_file), why=e.strerror or e)


def link_files(folder: Path, url: str) -> tuple[Path, Path]:
    """Where the token and the outbox of a tracker other than the node's own are kept."""
    name = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return folder / TRACKERS_DIR / f"{name}.token", folder / TRACKERS_DIR / f"{name}.outbox.json"


class TrackerLink:
    """What a node keeps for one tracker; ``url`` is its node URL (see trackers.py), the key it is known by."""

    def __init__(self, url: str, client: RememberingClient, outbox: Outbox, configured: bool) -> None:
        self.url = url
        self.client = client
        self.outbox = outbox
        #: The node's own ``--tracker``: never closed while the node runs.
        self.configured = configured
        #: Made by the node (it passes its callbacks); started under the node's MultiService.
        self.heartbeat: HeartbeatService | None = None
        #: Sending the outbox now (one flush at a time).
        self.flushing = False

    @property
    def name(self) -> str:
        """The tracker as people know it: the URL the node speaks to."""
        return self.client.base_url

    @property
    def registered(self) -> bool:
        return bool(self.client.token) and not (self.heartbeat is not None and self.heartbeat.refused)

    @property
    def problem(self) -> str | None:
        """Why the last heartbeat failed (None: it got through, or none was sent yet)."""
        return self.heartbeat.problem if self.heartbeat is not None else None

    def status(self) -> dict[str, Any]:
        return {
            "tracker": self.name,
            "registered": self.registered,
            "tracker_problem": self.problem,
            "pending_announcements": len(self.outbox),
        }

    def stop_heartbeat(self) -> Deferred[None]:
        """No more REGISTER (fires once none is in flight): the node is leaving this tracker."""
        if self.heartbeat is not None and self.heartbeat.running:
            return self.heartbeat.stopService()
        return succeed(None)
