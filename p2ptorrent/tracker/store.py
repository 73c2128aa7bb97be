"""The tracker's database: nodes.json and files.json in tracker_db_dir.

Each file is replaced with :func:`~p2ptorrent.atomicfile.atomic_write` and
``fsync=True`` (temporary file in the same folder, fsync, rename, fsync of the
folder), so a crash or a full disk leaves either the old or the new document,
never half of one; mode 600, as the nodes' token hashes are nobody else's
business.  Reading is forgiving: a missing folder or file is an empty start,
and a corrupt file is moved aside as ``NAME.corrupt-N`` (kept for a person to
look at) and started empty, because a tracker that refuses to start helps
nobody.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from p2ptorrent.atomicfile import atomic_write, stale_temporaries

NODES_FILE = "nodes.json"
FILES_FILE = "files.json"


class JsonStore:
    """Saves and loads the two JSON documents of :meth:`SwarmState.snapshot`."""

    log = Logger()

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        # The bytes last written per file: an unchanged document is not rewritten.
        self._written: dict[str, bytes] = {}

    def save(self, nodes_doc: dict[str, Any], files_doc: dict[str, Any]) -> None:
        """Write both documents atomically; raises OSError if the disk refuses."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, doc in ((NODES_FILE, nodes_doc), (FILES_FILE, files_doc)):
            data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode("utf-8")
            if self._written.get(name) == data:
                continue
            atomic_write(self.folder / name, data, mode=0o600, fsync=True)
            self._written[name] = data

    def load(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Both documents, each ``{}`` when missing or corrupt.  Never raises."""
        self._remove_stale_temporaries()
        return self._load_one(NODES_FILE), self._load_one(FILES_FILE)

    # ---- internals

    def _load_one(self, name: str) -> dict[str, Any]:
        path = self.folder / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as e:
            self.log.error("cannot read {path}: {error}; starting with no {name}", path=str(path), error=e, name=name)
            return {}
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            self._set_aside(path, f"not valid JSON ({e})")
            return {}
        if not isinstance(doc, dict):
            self._set_aside(path, "not a JSON object")
            return {}
        self._written[name] = data
        return doc

    def _set_aside(self, path: Path, why: str) -> None:
        n = 1
        while path.with_name(f"{path.name}.corrupt-{n}").exists():
            n += 1
        aside = path.with_name(f"{path.name}.corrupt-{n}")
        try:
            os.replace(path, aside)
        except OSError as e:
            self.log.error(
                "{path} is corrupt: {why}; could not move it aside ({error}); starting it empty",
                path=str(path), why=why, error=e,
            )
            return
        self.log.error(
            "{path} is corrupt: {why}; kept it as {aside} and started it empty",
            path=str(path), why=why, aside=str(aside),
        )

    def _remove_stale_temporaries(self) -> None:
        # Left behind only by a crash in the middle of a save; never the real data.
        if not self.folder.is_dir():
            return
        for name in (NODES_FILE, FILES_FILE):
            for temp in stale_temporaries(self.folder / name):
                try:
                    temp.unlink()
                except OSError:
                    continue
                self.log.info("removed {temp}, left by an interrupted save", temp=str(temp))
