"""Every event of a daemon also goes to its own file under logs_dir.

twistd already logs to stdout (-n) or twistd.log; the brief asks for
``logs/tracker.log`` and ``logs/node_<N>.log`` as well, so each daemon adds an
observer to the global publisher for as long as its service runs.
"""

from __future__ import annotations

import io
from pathlib import Path

from twisted.application.service import Service
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogPublisher,
    formatEventAsClassicLogText,
    globalLogPublisher,
)


class LogFileService(Service):
    """Adds a text-file observer to *publisher* while running."""

    def __init__(self, path: Path | str, publisher: LogPublisher = globalLogPublisher) -> None:
        self.path = Path(path)
        self.publisher = publisher
        self._file: io.TextIOWrapper | None = None
        self._observer: ILogObserver | None = None

    def privilegedStartService(self) -> None:
        # Before any sibling's startService, so their first events are in the file too.
        self._open()
        super().privilegedStartService()

    def startService(self) -> None:
        self._open()
        super().startService()

    def _open(self) -> None:
        if self._file is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)
        self._observer = FileLogObserver(self._file, formatEventAsClassicLogText)
        self.publisher.addObserver(self._observer)

    def stopService(self) -> None:
        super().stopService()
        if self._observer is not None:
            self.publisher.removeObserver(self._observer)
            self._observer = None
        if self._file is not None:
            self._file.close()
            self._file = None
