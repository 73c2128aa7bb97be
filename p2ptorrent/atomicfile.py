"""Replace a small file whole: readers see the old bytes or the new, never a torn mix.

The tracker and the nodes replace files whole with :func:`atomic_write`, so
there is one set of guarantees to know:

* Always: *data* goes to a temporary file beside *path* (same folder, so the
  final step is a rename, not a copy), which is then renamed over *path*.
  While the machine runs, a reader that opens *path* gets the old file or the
  new one, whole; a process killed half way (SIGKILL, a crash) leaves *path*
  as it was.  The temporary file is created afresh with ``O_EXCL`` and
  ``O_NOFOLLOW``, so a symlink or a stale file at its name is never written
  through, and *mode* (less the umask) is the new file's mode whatever was
  there before.  On any error the temporary file is removed and the error
  raised; *path* is untouched.
* ``fsync=True``: also survives a power cut or a kernel crash.  The data is
  fsynced before the rename, and the folder after it, so once the call
  returns the new file is on disk, and a crash at any moment leaves the old
  file or the new one, never an empty or partial one.  Use it for what
  cannot be rebuilt or checked on reading: the tracker's database, a node's
  token, anything a restart trusts as is.  The folder's fsync is best effort:
  the rename is done by then, so a file system that cannot sync a folder does
  not make a write that happened look failed (there, a crash soon after may
  still bring back the old file, but never a partial one).
* ``fsync=False``: the same while the machine runs, but after a power cut
  *path* may hold the old file, the new one, or an empty or partial file.
  Use it only for files whose reader checks them and can do without them
  (the piece record and torrent copy beside a part file), where an fsync would
  only slow the caller down.

One writer per *path* at a time: the temporary file is named after the
process (``.NAME.PID.tmp``, see :func:`stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import glob
import os
from pathlib import Path

#: Ends the name of every temporary file: ``.NAME.PID.tmp`` beside ``NAME``.
TEMP_SUFFIX = ".tmp"


def atomic_write(path: Path | str, data: bytes, *, mode: int = 0o644, fsync: bool = True) -> None:
    """Write *data* to a temporary file beside *path*, then rename it over *path*.

    See the module's docstring for what *fsync* promises after a crash.
    Raises OSError (and leaves *path* as it was) if the disk refuses.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    # Left by a crash of an earlier process with our pid: O_EXCL below must not
    # fail on it, and reusing it would keep its mode instead of *mode*.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # the error worth raising is the first one
            os.unlink(tmp)
        raise
    if fsync:
        _fsync_folder(path.parent)


def stale_temporaries(path: Path | str) -> list[Path]:
    """Temporary files that an interrupted :func:`atomic_write` of *path* left behind (by any process)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*{TEMP_SUFFIX}"))


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable.  Best effort (see the module's docstring):
    # some file systems and platforms cannot open or sync a folder.
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
