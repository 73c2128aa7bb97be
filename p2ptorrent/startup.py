"""Before a daemon starts: usable folders, one process per folder, twistd's pid file.

The tracker locks its database folder and a node its ``node_files/<id>/``
with ``flock``: the kernel drops the lock when the process ends, however it
ends, so a crash never leaves a stale lock behind.  The lock lives on the
open file description, so a daemon that forks (twistd does) keeps it.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService, Service

LOCK_FILE = ".lock"


class StartupError(Exception):
    """A daemon cannot start; str() is one line for people: what and why."""


class FolderBusy(StartupError):
    """Another process holds the folder."""

    def __init__(self, folder: Path, pid: int | None) -> None:
        who = f"process {pid}" if pid else "another process"
        super().__init__(f"{_shown(folder)} is in use by {who}")
        self.folder = folder
        self.pid = pid


def _shown(folder: Path) -> str:
    text = str(folder)
    return text if text.endswith("/") else text + "/"


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def usable_folder(folder: Path | str, what: str) -> Path:
    """Create *folder* if needed and check that we can write in it, or raise StartupError."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StartupError(f"cannot create the {what} {_shown(folder)}: {_why(e)}") from None
    if not folder.is_dir():
        raise StartupError(f"the {what} {_shown(folder)} is not a folder")
    probe = folder / f".write-test-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise StartupError(f"cannot write in the {what} {_shown(folder)}: {_why(e)}") from None
    return folder


class FolderLock:
    """An exclusive lock on a folder, held until :meth:`release` or the end of the process."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise FolderBusy (held elsewhere) or StartupError (cannot open it)."""
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise StartupError(f"cannot open the lock file {self.path}: {_why(e)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FolderBusy(self.folder, holder(self.folder)) from None
            raise StartupError(f"cannot lock {self.path}: {_why(e)}") from None
        self._fd = fd
        self.mark()

    def mark(self) -> None:
        """Write our pid in the lock file, for the refusal another process prints.

        Called again once the process runs for good: twistd takes the lock
        before it forks into the background, and the daemon's pid differs.
        """
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing drops the flock


def holder(folder: Path | str) -> int | None:
    """The pid written by the process holding *folder*'s lock (None: free, or unknown).  Creates nothing."""
    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            pass  # held: read who holds it
        else:
            return None  # nobody holds it (our shared lock goes with the close below)
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else 0
    finally:
        os.close(fd)


def check_free(folder: Path | str) -> None:
    """Raise FolderBusy if another process holds *folder* (a look only: takes nothing)."""
    pid = holder(folder)
    if pid is not None:
        raise FolderBusy(Path(folder), pid or None)


class FolderDaemon(MultiService):
    """A daemon that claims its folder and sockets in :meth:`open` (twistd calls it before it forks), or as it
    starts, and writes its own pid in the lock once it runs for good (after the fork)."""

    lock: FolderLock

    def open(self) -> None:
        raise NotImplementedError

    def privilegedStartService(self) -> None:
        self.open()
        super().privilegedStartService()

    def startService(self) -> None:
        self.open()
        self.lock.mark()  # our pid now, after twistd's fork
        super().startService()


def twistd_defaults(options: object, pidfile: Path) -> None:
    """Under twistd, give this daemon its own pid file instead of twistd's shared ``twistd.pid``.

    In the foreground (``-n``) no pid file is written at all: the folder lock
    already keeps a second process out, and two foreground daemons side by
    side in one folder must not refuse each other.  *options* is our
    subcommand's Options; its ``parent`` is twistd's (absent in tests).
    """
    parent = getattr(options, "parent", None)
    if parent is None:
        return
    if parent.get("pidfile") == "twistd.pid":  # twistd's default: not chosen by the user
        parent["pidfile"] = "" if parent.get("nodaemon") else str(pidfile)


def fail_to_start(command: str, error: Exception) -> SystemExit:
    """The one line a daemon that cannot start prints (to stderr), and its non-zero exit."""
    return SystemExit(f"twistd {command}: cannot start: {error}")


def claim_under_twistd(options: Any, command: str, folder: Path, pidfile: Path, log_file: Path) -> bool:
    """What a daemon's Options do once parsed, under twistd: its own pid file, twistd's log as *log_file*
    (True if taken over: the daemon then adds no log file of its own), and a refusal naming the folder's
    owner if another process holds *folder* (before twistd looks at pid files).
    """
    from p2ptorrent.logfile import take_over_twistd_log

    settings = options["settings"]
    twistd_defaults(options, pidfile)
    parent = getattr(options, "parent", None)
    taken = take_over_twistd_log(parent, log_file, settings.LOG_LEVEL, settings.LOG_MAX_BYTES, settings.LOG_BACKUPS)
    if parent is not None:
        try:
            check_free(folder)
        except StartupError as e:
            raise fail_to_start(command, e) from None
    return taken


class ListeningService(Service):
    """A service that claims its port in :meth:`open` (before twistd forks, or as it starts) and lets it go
    as it stops; a subclass's ``open`` sets ``listening`` or raises StartupError saying which and why."""

    listening: Any = None

    def open(self) -> None:
        raise NotImplementedError

    def startService(self) -> None:
        self.open()
        super().startService()

    def stopService(self) -> Any:
        super().stopService()
        if self.listening is not None:
            d = self.listening.stopListening()
            self.listening = None
            return d
        return None
