"""What the tracker has not acknowledged yet: OWN of complete files, UPDATE credits, and withdrawals.

A node that finishes a download, or shares a file, while the tracker is down
must not lose the announcement or the credit it owes its uploaders.  Each is
put here first, kept in ``<node folder>/.outbox.json`` (so a restart keeps
it), sent, and removed only once the tracker answered.  The node sends what
is left whenever a heartbeat gets through again.  A withdrawal (the operator paused, cancelled,
stopped seeding or removed a file) waits here the same way, so a tracker that was down when it was
made does not go on sending peers to a node that no longer serves the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from p2ptorrent.atomicfile import atomic_write

OUTBOX_FILE = ".outbox.json"


@dataclass(frozen=True)
class PendingOwn:
    info_hash_hex: str
    name: str
    length: int


@dataclass(frozen=True)
class PendingUpdate:
    info_hash_hex: str
    uploaders: tuple[int, ...]


class Outbox:
    log = Logger()

    def __init__(self, path: Path) -> None:
        self.path = path
        self.owns: dict[str, PendingOwn] = {}
        self.updates: dict[str, PendingUpdate] = {}
        #: Info hashes to WITHDRAW (in hex), each with the reason the tracker is told ("" for none).
        self.withdraws: dict[str, str] = {}
        self._load()

    def __len__(self) -> int:
        return len(self.owns) + len(self.updates) + len(self.withdraws)

    def add_own(self, info_hash_hex: str, name: str, length: int) -> None:
        self.owns[info_hash_hex] = PendingOwn(info_hash_hex, name, length)
        self.withdraws.pop(info_hash_hex, None)  # shared again: the newer word wins
        self._save()

    def add_withdraw(self, info_hash_hex: str, reason: str = "") -> None:
        self.owns.pop(info_hash_hex, None)
        self.withdraws[info_hash_hex] = reason
        self._save()

    def withdraw_done(self, info_hash_hex: str) -> None:
        if self.withdraws.pop(info_hash_hex, None) is not None:
            self._save()

    def add_update(self, info_hash_hex: str, uploaders: list[int]) -> None:
        if uploaders:
            self.updates[info_hash_hex] = PendingUpdate(info_hash_hex, tuple(sorted(set(uploaders))))
            self._save()

    def own_done(self, info_hash_hex: str) -> None:
        if self.owns.pop(info_hash_hex, None) is not None:
            self._save()

    def update_done(self, info_hash_hex: str) -> None:
        if self.updates.pop(info_hash_hex, None) is not None:
            self._save()

    def forget(self, info_hash_hex: str) -> None:
        """The file is no longer ours to announce (no longer shared)."""
        if self.owns.pop(info_hash_hex, None) is not None:
            self._save()

    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            self.log.warn("cannot read {file}: {why}; nothing pending for the tracker", file=str(self.path), why=e)
            return
        for entry in doc.get("own", []) if isinstance(doc, dict) else []:
            try:
                own = PendingOwn(str(entry["info_hash"]), str(entry["name"]), int(entry["length"]))
            except (KeyError, TypeError, ValueError):
                continue
            self.owns[own.info_hash_hex] = own
        for entry in doc.get("update", []) if isinstance(doc, dict) else []:
            try:
                update = PendingUpdate(str(entry["info_hash"]), tuple(int(n) for n in entry["uploaders"]))
            except (KeyError, TypeError, ValueError):
                continue
            self.updates[update.info_hash_hex] = update
        for entry in doc.get("withdraw", []) if isinstance(doc, dict) else []:
            if isinstance(entry, str):  # written before withdrawals had reasons
                self.withdraws[entry] = ""
            elif isinstance(entry, dict) and isinstance(entry.get("info_hash"), str):
                self.withdraws[entry["info_hash"]] = str(entry.get("reason") or "")

    def _save(self) -> None:
        doc: dict[str, Any] = {
            "own": [{"info_hash": o.info_hash_hex, "name": o.name, "length": o.length} for o in self.owns.values()],
            "update": [{"info_hash": u.info_hash_hex, "uploaders": list(u.uploaders)} for u in self.updates.values()],
            "withdraw": [{"info_hash": ih, "reason": why} for ih, why in sorted(self.withdraws.items())],
        }
        try:
            if not len(self):
                self.path.unlink(missing_ok=True)
            else:
                atomic_write(self.path, json.dumps(doc).encode())
        except OSError as e:
            # Kept in memory all the same: only a restart before the tracker answers would lose it.
            self.log.warn("cannot keep {file}: {why}", file=str(self.path), why=e.strerror or e)
