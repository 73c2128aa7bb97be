"""The writers that check assembled pieces and put them in the part file (writer.py), and the
background fdatasync of the part file (storage.py).

The threaded writer runs its real thread; its answers come back through a
fake reactor whose callFromThread queues them, and the test runs them on its
own thread, waiting on the queue (not on time), so the tests are deterministic.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import random
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from p2ptorrent.metainfo import Metainfo, make_torrent
from p2ptorrent.node import storage
from p2ptorrent.node.storage import NoSpace, PartFile, StorageError
from p2ptorrent.node.writer import _STOP, InlineWriter, ThreadedWriter, WholeHashMismatch

KIB = 1024
PIECE = 16 * KIB


class ThreadReactor:
    """callFromThread queues the call; run_until() runs them on the test's thread."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.Queue()
        self.threads: set[str] = set()

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.threads.add(threading.current_thread().name)
        self.calls.put((f, args))

    def run_until(self, done: Callable[[], bool]) -> None:
        while not done():
            f, args = self.calls.get(timeout=30)
            f(*args)


def _file(tmp: Path, size: int = 8 * PIECE + 5) -> tuple[Metainfo, bytes]:
    (tmp / "src").mkdir()
    data = random.Random(3).randbytes(size)
    (tmp / "src" / "f.bin").write_bytes(data)
    return make_torrent(tmp / "src" / "f.bin", "http://tracker.invalid:1", PIECE)[0], data


def _piece(meta: Metainfo, data: bytes, p: int) -> bytearray:
    return bytearray(data[p * PIECE : p * PIECE + meta.piece_size(p)])


def _part(tmp: Path) -> tuple[Metainfo, bytes, PartFile]:
    meta, data = _file(tmp)
    part = PartFile(tmp / "node", meta)
    part.open()
    return meta, data, part


@pytest.fixture(params=["inline", "threaded"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _writer(kind: str, part: PartFile, errors: list[StorageError]) -> tuple[Any, ThreadReactor]:
    reactor = ThreadReactor()
    if kind == "inline":
        return InlineWriter(part, errors.append), reactor
    return ThreadedWriter(part, errors.append, reactor), reactor


def _result(d: Any) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def test_good_pieces_written_bad_ones_refused_then_finished(tmp_path: Path, kind: str) -> None:
    meta, data, part = _part(tmp_path)
    errors: list[StorageError] = []
    writer, reactor = _writer(kind, part, errors)
    verdicts: list[tuple[int, bool]] = []

    def checked(p: int, ok: bool) -> None:
        verdicts.append((p, ok))

    order = list(range(meta.num_pieces))
    random.Random(1).shuffle(order)
    for p in order:
        writer.submit(p, _piece(meta, data, p), meta.piece_hash(p), checked)
    bad = _piece(meta, data, 0)
    bad[5] ^= 1
    writer.submit(0, bad, meta.piece_hash(0), checked)  # a corrupt second copy: refused, not written
    reactor.run_until(lambda: len(verdicts) == meta.num_pieces + 1)
    assert verdicts == [(p, True) for p in order] + [(0, False)]
    outcome = _result(writer.finish())
    reactor.run_until(lambda: bool(outcome))
    assert outcome == [part.final]
    assert part.final.read_bytes() == data
    assert errors == []
    if kind == "threaded":
        # Every answer was sent from the writer thread, never from the caller's.
        assert reactor.threads and all(t.startswith("p2ptorrent-writer-") for t in reactor.threads)


def test_a_corrupt_piece_is_answered_false_and_never_written(tmp_path: Path, kind: str) -> None:
    meta, data, part = _part(tmp_path)
    writer, reactor = _writer(kind, part, [])
    verdicts: list[tuple[int, bool]] = []
    bad = _piece(meta, data, 2)
    bad[0] ^= 0xFF
    writer.submit(2, bad, meta.piece_hash(2), lambda p, ok: verdicts.append((p, ok)))
    reactor.run_until(lambda: bool(verdicts))
    assert verdicts == [(2, False)]
    assert part.verified() == set()
    assert os.pread(os.open(part.path, os.O_RDONLY), PIECE, 2 * PIECE) == bytes(PIECE)
    writer.close()


def test_whole_hash_mismatch_fails_finish(tmp_path: Path, kind: str) -> None:
    meta, data, part = _part(tmp_path)
    writer, reactor = _writer(kind, part, [])
    seen: list[int] = []
    for p in range(meta.num_pieces - 1):  # one piece missing: the whole hash cannot match
        writer.submit(p, _piece(meta, data, p), meta.piece_hash(p), lambda p, ok: seen.append(p))
    reactor.run_until(lambda: len(seen) == meta.num_pieces - 1)
    outcome = _result(writer.finish())
    reactor.run_until(lambda: bool(outcome))
    assert outcome[0].check(WholeHashMismatch)
    assert "whole-file SHA-256 does not match" in outcome[0].getErrorMessage()
    assert not part.final.exists()


def test_disk_full_is_reported_once_and_later_pieces_dropped(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    meta, data, part = _part(tmp_path)
    errors: list[StorageError] = []
    writer, reactor = _writer(kind, part, errors)
    real = os.pwrite
    calls = [0]

    def pwrite(fd: int, buf: Any, offset: int) -> int:
        calls[0] += 1
        if calls[0] > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, buf, offset)

    monkeypatch.setattr(storage.os, "pwrite", pwrite)
    verdicts: list[int] = []
    for p in range(5):
        writer.submit(p, _piece(meta, data, p), meta.piece_hash(p), lambda p, ok: verdicts.append(p))
    reactor.run_until(lambda: bool(errors))
    outcome = _result(writer.finish())
    reactor.run_until(lambda: bool(outcome))
    assert len(errors) == 1 and isinstance(errors[0], NoSpace)
    assert "No space left on device (ENOSPC)" in str(errors[0])
    assert verdicts == [0, 1]  # the two written; nothing after the failure
    assert calls[0] == 3
    assert outcome[0].check(NoSpace)
    assert part.verified() == {0, 1}


def test_close_drops_what_waits_and_stops_the_thread(tmp_path: Path) -> None:
    meta, data, part = _part(tmp_path)
    reactor = ThreadReactor()
    gate = threading.Event()
    entered = threading.Event()
    real = part.write_piece
    written: list[int] = []

    def slow_write(p: int, d: Any) -> None:
        entered.set()
        gate.wait(30)  # the first write waits until the test has queued more and closed
        real(p, d)
        written.append(p)

    part.write_piece = slow_write  # type: ignore[method-assign]
    writer = ThreadedWriter(part, lambda e: None, reactor, max_queued_bytes=64 * PIECE)
    for p in range(4):
        writer.submit(p, _piece(meta, data, p), meta.piece_hash(p), lambda p, ok: None)
    assert entered.wait(30)  # the thread is writing piece 0; 1-3 wait in the queue
    closer = threading.Thread(target=writer.close)
    closer.start()
    while list(writer._queue.queue) != [_STOP]:  # close() empties the queue and asks the thread to stop...
        threading.Event().wait(0.001)
    gate.set()  # ...then waits for the piece being written
    closer.join(30)
    assert not closer.is_alive()
    assert not writer._thread.is_alive()
    assert written == [0]
    writer.submit(5, _piece(meta, data, 5), meta.piece_hash(5), lambda p, ok: None)  # ignored after close
    assert writer._queue.qsize() == 0
    assert part.verified() == {0}


def test_the_queue_is_bounded_by_bytes(tmp_path: Path) -> None:
    meta, _, part = _part(tmp_path)
    writer = ThreadedWriter(part, lambda e: None, ThreadReactor(), max_queued_bytes=3 * PIECE)
    assert writer._queue.maxsize == 3
    writer.close()


def test_part_file_syncs_in_the_background_every_sync_every_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(storage, "SYNC_EVERY", 3 * PIECE)
    synced = threading.Event()
    synced_files: list[os.stat_result] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced_files.append(os.fstat(fd))  # (a copy of the writer's descriptor, closed after the sync)
        real(fd)
        synced.set()

    monkeypatch.setattr(storage.os, "fdatasync", fdatasync)
    meta, data, part = _part(tmp_path)
    for p in range(2):
        part.write_piece(p, _piece(meta, data, p))
    assert part._flusher is None  # 2 pieces: under SYNC_EVERY
    part.write_piece(2, _piece(meta, data, 2))
    assert synced.wait(30)
    assert len(synced_files) == 1 and os.path.samestat(synced_files[0], os.stat(part.path))
    flusher = part._flusher
    assert flusher is not None
    for p in range(3, meta.num_pieces):
        part.write_piece(p, _piece(meta, data, p))
    assert part.whole_hash_ok()
    assert part.finish().read_bytes() == data
    assert not flusher._thread.is_alive()  # stopped before the descriptor closed
    assert hashlib.sha256(data).digest() == meta.sha256
