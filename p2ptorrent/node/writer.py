"""How assembled pieces are checked and reach the part file: in line, or on a writer thread.

Checking a piece (SHA-1), writing it (``pwrite`` into the page cache) and
feeding it to the whole-file SHA-256 cost about as much CPU as everything else
a download does on the reactor thread.  All three let go of the GIL, so a node
hands each assembled piece to one writer thread and keeps receiving while it
is checked and written: the work moves to the machine's other core.  Tests in
virtual time use :class:`InlineWriter`, which does the same at once, so they
stay deterministic.

A piece is written only if its SHA-1 matched; either way the verdict comes
back through the ``checked`` callback, on the reactor thread, after the bytes
are written.  A disk error is reported once, through ``on_error``, and every
later piece is dropped; :meth:`finish` waits until everything queued is on
disk, checks the whole-file hash and gives the file its real name (or fails,
saying why).
"""

from __future__ import annotations

import hashlib
import queue
import threading
from pathlib import Path
from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred, fail, succeed

from p2ptorrent.node.storage import PartFile, StorageError

#: Bytes of assembled pieces that may wait for the writer thread; past this, the
#: reactor waits for it (the disk or the hashing is slower than the network), so
#: memory stays flat.
MAX_QUEUED_BYTES = 4 * 1024 * 1024

Checked = Callable[[int, bool], None]


class WholeHashMismatch(StorageError):
    """Every piece verified, yet the whole file does not match the torrent's SHA-256."""


class PieceWriter(Protocol):
    def submit(self, piece: int, data: Any, expected: bytes, checked: Checked) -> None: ...
    def finish(self) -> Deferred[Path]: ...
    def close(self) -> None: ...


def _finish(part: PartFile) -> Path:
    if not part.whole_hash_ok():
        raise WholeHashMismatch(
            f"{part.meta.name}: every piece verified but the whole-{'folder' if part.meta.is_folder else 'file'}"
            " SHA-256 does not match the torrent"
        )
    return part.finish()


class InlineWriter:
    """Checks and writes each piece at once, on the caller's thread."""

    def __init__(self, part: PartFile, on_error: Callable[[StorageError], None]) -> None:
        self.part = part
        self.on_error = on_error
        self.error: StorageError | None = None

    def submit(self, piece: int, data: Any, expected: bytes, checked: Checked) -> None:
        if self.error is not None:
            return
        ok = hashlib.sha1(data).digest() == expected
        if ok:
            try:
                self.part.write_piece(piece, data)
            except StorageError as e:
                self.error = e
                self.on_error(e)
                return
        checked(piece, ok)

    def finish(self) -> Deferred[Path]:
        if self.error is not None:
            return fail(self.error)
        try:
            return succeed(_finish(self.part))
        except StorageError as e:
            return fail(e)

    def close(self) -> None:
        pass


_STOP = object()


class ThreadedWriter:
    """Checks and writes pieces on its own thread, in the order they came; answers on the reactor thread.

    One thread, not a checking stage and a writing stage: measured, two
    threads cost more CPU (GIL hand-offs) than the overlap saved.
    """

    def __init__(
        self, part: PartFile, on_error: Callable[[StorageError], None], reactor: Any,
        max_queued_bytes: int = MAX_QUEUED_BYTES,
    ) -> None:
        self.part = part
        self.on_error = on_error
        self.reactor = reactor
        self.error: BaseException | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(2, max_queued_bytes // max(1, part.meta.piece_length)))
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"p2ptorrent-writer-{part.meta.info_hash.hex()[:8]}", daemon=True)
        self._thread.start()

    def submit(self, piece: int, data: Any, expected: bytes, checked: Checked) -> None:
        if self.error is None and not self._closed:
            self._queue.put((piece, data, expected, checked))

    def queued(self) -> int:
        """Pieces waiting for the thread (the metrics' writer queue depth)."""
        return self._queue.qsize()

    def finish(self) -> Deferred[Path]:
        d: Deferred[Path] = Deferred()
        self._closed = True
        self._queue.put(d)
        return d

    def close(self) -> None:
        """Stop the thread (dropping what it has not written yet) and wait for it."""
        self._closed = True
        if not self._thread.is_alive():
            return
        # What still waits is dropped: the download is ending, and pieces not
        # written are not recorded either (a resume fetches them again).
        _drain(self._queue)
        self._queue.put(_STOP)
        self._thread.join()

    # ---- on the writer thread
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, Deferred):
                self._answer_finish(item)
                return
            if self.error is not None:
                continue
            piece, data, expected, checked = item
            try:
                ok = hashlib.sha1(data).digest() == expected
                if ok:
                    self.part.write_piece(piece, data)
            except BaseException as e:  # reported on the reactor thread, never lost here
                self.error = e
                self.reactor.callFromThread(self._report, e)
                continue
            self.reactor.callFromThread(checked, piece, ok)

    def _answer_finish(self, d: Deferred[Path]) -> None:
        if self.error is not None:
            self.reactor.callFromThread(d.errback, self.error)
            return
        try:
            path = _finish(self.part)
        except BaseException as e:
            self.reactor.callFromThread(d.errback, e)
            return
        self.reactor.callFromThread(d.callback, path)

    # ---- back on the reactor thread
    def _report(self, e: BaseException) -> None:
        if isinstance(e, StorageError):
            self.on_error(e)
        else:
            self.on_error(StorageError(f"cannot write {self.part.path}: internal error: {e!r}"))


def _drain(q: queue.Queue[Any]) -> None:
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass
