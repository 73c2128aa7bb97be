"""Replace a small file whole: readers see the old bytes or the new, never a torn mix."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: Path | str, data: bytes, *, mode: int = 0o644, fsync: bool = True) -> None:
    """Write *data* to a temporary file beside *path*, then rename it over *path*.

    With *fsync*, the data is on disk before the rename and the rename before
    we return (the folder is synced too), so a crash leaves the old file or
    the new one.  The temporary file is never followed through a symlink.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    if fsync:
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
