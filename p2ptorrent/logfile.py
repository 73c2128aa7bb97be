"""A daemon's log file (logs/tracker.log, logs/node_<N>.log): rotated by size, filtered by level, written once.

Every line goes to the file once, whoever runs the daemon:

* :func:`take_over_twistd_log`, called from a tap's ``Options.postOptions``,
  makes twistd's own log *be* our file when the user did not choose one
  (no ``--logfile``, ``--logger`` or ``--syslog``), and copies the same lines
  to stdout in the foreground (``-n``).  twistd then writes no twistd.log,
  and the daemon adds no :class:`LogFileService`.
* Otherwise the user's choice stands, and :class:`LogFileService` adds our
  file as a second observer while the daemon runs, as before.

Both write through :func:`file_observer`: one classic text line per event
(a failure's traceback included, indented under it), nothing below the
chosen level, and a new file once the next line would take it past
``max_bytes``, keeping ``backups`` old ones (``node_1.log.1`` the newest).
"""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, MutableMapping, cast

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    InvalidLogLevelError,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    LogPublisher,
    PredicateResult,
    formatEventAsClassicLogText,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer

from p2ptorrent.config import LOG_LEVELS, MIB

#: twistd options that mean "the user chose twistd's log": then we leave it alone.
TWISTD_LOG_OPTIONS = ("logfile", "logger", "syslog")


def parse_level(name: str) -> LogLevel:
    """``"warn"`` -> ``LogLevel.warn``; ValueError, naming the choices, for anything else."""
    try:
        return LogLevel.levelWithName(name.strip().lower())
    except InvalidLogLevelError:
        raise ValueError(f"unknown log level {name!r}: use one of {', '.join(LOG_LEVELS)}") from None


@implementer(ILogFilterPredicate)
class _Unlabelled:
    """LogLevelFilterPredicate drops every event without a level or a namespace
    (raw publisher calls); judge those by their level, or as info, rather than
    lose them without a trace."""

    def __init__(self, level: LogLevel) -> None:
        self.level = level

    def __call__(self, event: LogEvent) -> PredicateResult:
        if event.get("log_level") is None or not event.get("log_namespace"):
            return PredicateResult.yes if event.get("log_level", LogLevel.info) >= self.level else PredicateResult.no
        return PredicateResult.maybe


def level_filtered(observer: Callable[[LogEvent], None], level: LogLevel) -> FilteringLogObserver:
    """*observer* (an ILogObserver, or any callable taking events), seeing only the events at *level* or above."""
    by_namespace = LogLevelFilterPredicate(defaultLogLevel=level)
    return FilteringLogObserver(cast(ILogObserver, observer), [_Unlabelled(level), by_namespace])


@implementer(ILogObserver)
class RotatingFileObserver:
    """Writes events at *level* or above to *path* as classic text lines, rotating by size.

    Before a line that would take the file past *max_bytes*, the file becomes
    ``path.1`` (``path.1`` becomes ``path.2``, ...), and files past
    ``path.<backups>`` are deleted (LogFile's ``maxRotatedFiles`` does both).
    An event is one write, so a traceback never straddles two files; one
    event longer than *max_bytes* is written whole, alone in its file.
    *max_bytes* 0 never rotates.
    """

    def __init__(self, path: Path | str, level: str = "info", max_bytes: int = 10 * MIB, backups: int = 5) -> None:
        if max_bytes < 0 or backups < 0:
            raise ValueError(f"max_bytes and backups must be 0 or more, got {max_bytes} and {backups}")
        self.path = Path(path)
        self.level = parse_level(level)
        self.max_bytes = max_bytes
        self.backups = backups
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # LogFile opens the file unbuffered: a line is on disk once written,
        # even if the process then dies.
        self._file = LogFile(
            self.path.name, str(self.path.parent), rotateLength=max_bytes or None, maxRotatedFiles=backups,
        )
        # Events come from threads too (the node's writer): check, rotate
        # and write as one step.
        self._lock = threading.Lock()
        self._filtered = level_filtered(self._write, self.level)

    def __call__(self, event: LogEvent) -> None:
        self._filtered(event)

    def _write(self, event: LogEvent) -> None:
        text = formatEventAsClassicLogText(event)
        if not text:
            return
        # Bytes, so that LogFile counts the size in bytes, not characters.
        data = text.encode("utf-8", "backslashreplace")
        with self._lock:
            if self._file.closed:
                return
            if self.max_bytes and self._file.size and self._file.size + len(data) > self.max_bytes:
                self._rotate()
            self._file.write(data)

    def rotate(self) -> None:
        """Start a new file now (twistd does this on SIGUSR1 for its own log)."""
        with self._lock:
            if not self._file.closed:
                self._rotate()

    def _rotate(self) -> None:
        self._file.rotate()
        if self.backups == 0:
            # maxRotatedFiles=0 still leaves the file just rotated as path.1.
            Path(f"{self.path}.1").unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()


def file_observer(path: Path | str, level: str, max_bytes: int, backups: int) -> RotatingFileObserver:
    """The log observer of a daemon's file; see :class:`RotatingFileObserver`."""
    return RotatingFileObserver(path, level, max_bytes, backups)


class LogFileService(Service):
    """Adds a :func:`file_observer` to *publisher* while running, from privilegedStartService on.

    For when twistd keeps a log of its own (the user gave --logfile, --logger
    or --syslog); otherwise :func:`take_over_twistd_log` is the better way.
    """

    def __init__(
        self,
        path: Path | str,
        level: str = "info",
        max_bytes: int = 10 * MIB,
        backups: int = 5,
        publisher: LogPublisher = globalLogPublisher,
    ) -> None:
        self.path = Path(path)
        self.level = level
        self.max_bytes = max_bytes
        self.backups = backups
        self.publisher = publisher
        self.observer: RotatingFileObserver | None = None

    def privilegedStartService(self) -> None:
        # Before any sibling's startService, so their first events are in the file too.
        self._open()
        super().privilegedStartService()

    def startService(self) -> None:
        self._open()  # when run without privilegedStartService (tests, other runners)
        super().startService()

    def _open(self) -> None:
        if self.observer is None:
            self.observer = file_observer(self.path, self.level, self.max_bytes, self.backups)
            self.publisher.addObserver(self.observer)

    def stopService(self) -> None:
        super().stopService()
        if self.observer is not None:
            self.publisher.removeObserver(self.observer)
            self.observer.close()
            self.observer = None


# ---- twistd's own log


@dataclass(frozen=True)
class TwistdLog:
    """What :func:`twistd_observer` opens: set by :func:`take_over_twistd_log`."""

    path: Path
    level: str
    max_bytes: int
    backups: int
    #: Also write the lines to stdout (twistd runs in the foreground).
    echo: bool


#: twistd can only name a factory that takes no argument (``--logger``), so
#: the factory finds its settings here, set while the options are parsed.
twistd_log: TwistdLog | None = None


def take_over_twistd_log(
    parent_options: MutableMapping[str, Any] | None, path: Path | str, level: str, max_bytes: int, backups: int,
) -> bool:
    """Make twistd's own log our rotating, level-filtered file at *path*; True if done.

    Call it from the subcommand's ``postOptions`` with ``self.parent``: that
    runs before twistd's ``ServerOptions.postOptions`` turns ``"logger"``
    into the factory it calls when logging begins.  It does nothing and
    returns False when the user chose twistd's log (``--logfile``,
    ``--logger``, ``--syslog``), or when not run by twistd (no parent, or
    ``python -m twisted``, whose options have no ``"logger"``): then the
    daemon adds a :class:`LogFileService` instead.

    A relative *path* is taken from twistd's ``--rundir``, as the daemon's
    other folders are: twistd opens its log before it changes directory.
    Raises ValueError for a *level* not in :data:`~p2ptorrent.config.LOG_LEVELS`.
    """
    global twistd_log
    parse_level(level)  # a typo must fail now, not once twistd starts logging
    if parent_options is None or "logger" not in parent_options:
        return False
    if any(parent_options.get(name) for name in TWISTD_LOG_OPTIONS):
        return False
    rundir = Path(parent_options.get("rundir") or ".")
    twistd_log = TwistdLog(
        path=(rundir / path).absolute(),
        level=level,
        max_bytes=max_bytes,
        backups=backups,
        # -b (debug) implies -n: twistd sets nodaemon from it only later.
        echo=bool(parent_options.get("nodaemon") or parent_options.get("debug")),
    )
    parent_options["logger"] = f"{__name__}.{twistd_observer.__name__}"
    return True


@implementer(ILogObserver)
class TwistdObserver:
    """The file, plus the same lines on *stdout* when there is one to write to."""

    def __init__(self, file: RotatingFileObserver, stdout: ILogObserver | None) -> None:
        self.file = file
        self.stdout = stdout

    def __call__(self, event: LogEvent) -> None:
        try:
            self.file(event)
        finally:  # a full disk must not hide the line from the terminal too
            if self.stdout is not None:
                self.stdout(event)


def observer_for(spec: TwistdLog, stdout: Any) -> TwistdObserver:
    """The observer :func:`twistd_observer` gives twistd, writing to *stdout* (the real one) if ``spec.echo``."""
    file = file_observer(spec.path, spec.level, spec.max_bytes, spec.backups)
    # Taken now: once logging begins, twistd replaces sys.stdout by a file that logs what is written to it.
    echo = level_filtered(textFileLogObserver(stdout), file.level) if spec.echo else None
    return TwistdObserver(file, echo)


def twistd_observer() -> ILogObserver:
    """twistd's ``--logger`` factory, as set by :func:`take_over_twistd_log`.

    Like twistd's own log file, ours starts a new file on SIGUSR1.
    """
    if twistd_log is None:
        raise RuntimeError(
            f"{__name__}.twistd_observer is set up by the daemon itself: give --logger only a factory of your own"
        )
    observer = observer_for(twistd_log, sys.stdout)
    if not signal.getsignal(signal.SIGUSR1):  # unless someone else handles it (as twistd checks)

        def rotate(signum: int, frame: Any) -> None:
            from twisted.internet import reactor  # noqa: PLC0415 - installed by twistd long before a signal

            cast(IReactorFromThreads, reactor).callFromThread(observer.file.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    return observer
