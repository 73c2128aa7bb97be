"""Controls a test owns over a transfer, so that "still in progress" never depends on the machine's speed.

A download over loopback runs as fast as the machine lets it.  A test that must
see one unfinished (read a status, stop it half way, send hostile traffic while
it runs) holds it back with one of these and lets it go once it has seen what it
came for; none of them waits for time to pass.

* :class:`FinishGate`: piece writers that check and write every piece as usual,
  but hold back the verdict that would complete the file until ``release()``;
  :func:`watch_verdicts` tells the test of each verdict, to act at a point in
  the file rather than at a moment.
* :func:`share_only`: a node serves only the first pieces of a file, as a node
  still downloading it would, until the test lets it share the whole file again.
* :class:`NatGate`: a UDP relay in front of a node process (which advertises the
  gate's port, as a node behind a NAT does): while closed, peers get the blocks
  of the first pieces only.
"""

from __future__ import annotations

import selectors
import socket
import threading
from typing import Any, Callable

from twisted.internet.defer import Deferred

from p2ptorrent import wire
from p2ptorrent.node.serving import Seeder
from p2ptorrent.node.storage import PartFile, StorageError
from p2ptorrent.node.writer import Checked, PieceWriter

WriterFactory = Callable[[PartFile, Callable[[StorageError], None]], PieceWriter]


# ---- in-process downloads: the last verdict waits for the test

class FinishGate:
    """Holds every download whose writers it made one verdict short of complete, until :meth:`release`.

    A verdict given once every piece of the file is on disk would let the
    download finish: it is kept, and handed on at ``release()``.  Until then
    the download has fetched everything and is still running (status shows it,
    its peers see it as a node still downloading).
    """

    def __init__(self) -> None:
        self.released = False
        #: Downloads waiting for release() (every piece on disk).
        self.holding = 0
        self._held: list[Callable[[], None]] = []
        self._watchers: list[tuple[int, Deferred[None]]] = []

    def writers(self, make: WriterFactory) -> WriterFactory:
        """A writer factory for Download (or Node.make_writer) that wraps *make*'s writers."""
        return lambda part, on_error: _HeldWriter(make(part, on_error), part, self)

    def when_holding(self, count: int) -> Deferred[None]:
        """Fires once *count* downloads are held."""
        d: Deferred[None] = Deferred()
        self._watchers.append((count, d))
        self._notify()
        return d

    def release(self) -> None:
        self.released = True
        held, self._held = self._held, []
        for deliver in held:
            deliver()

    def _hold(self, deliver: Callable[[], None], first: bool) -> None:
        self._held.append(deliver)
        if first:
            self.holding += 1
            self._notify()

    def _notify(self) -> None:
        ready = [d for count, d in self._watchers if self.holding >= count]
        self._watchers = [(count, d) for count, d in self._watchers if self.holding < count]
        for d in ready:
            d.callback(None)


class _Passing:
    """A writer that hands everything on to *inner*; the gates below change only what a verdict does."""

    def __init__(self, inner: PieceWriter) -> None:
        self.inner = inner

    def submit(self, piece: int, data: Any, expected: bytes, checked: Checked) -> None:
        self.inner.submit(piece, data, expected, checked)

    def finish(self) -> Deferred[Any]:
        return self.inner.finish()

    def close(self) -> None:
        self.inner.close()


class _HeldWriter(_Passing):
    def __init__(self, inner: PieceWriter, part: PartFile, gate: FinishGate) -> None:
        super().__init__(inner)
        self.part = part
        self.gate = gate
        self.holding = False

    def submit(self, piece: int, data: Any, expected: bytes, checked: Checked) -> None:
        def verdict(p: int, ok: bool) -> None:
            # The piece is written (and recorded) before its verdict: a full map means this one would finish.
            if ok and not self.gate.released and all(self.part.have_map):
                first, self.holding = not self.holding, True
                self.gate._hold(lambda: checked(p, ok), first)
            else:
                checked(p, ok)

        self.inner.submit(piece, data, expected, verdict)


def watch_verdicts(make: WriterFactory, on_verdict: Callable[[int, bool], None]) -> WriterFactory:
    """*make*'s writers, calling ``on_verdict(piece, ok)`` before the download hears each verdict."""

    class Watched(_Passing):
        def submit(self, piece: int, data: Any, expected: bytes, checked: Checked) -> None:
            def verdict(p: int, ok: bool) -> None:
                on_verdict(p, ok)
                checked(p, ok)

            self.inner.submit(piece, data, expected, verdict)

    return lambda part, on_error: Watched(make(part, on_error))


# ---- in-process seeders: only the first pieces, for now

def share_only(seeder: Seeder, info_hash: bytes, pieces: int) -> Callable[[], None]:
    """Make *seeder* serve only pieces 0 to *pieces* - 1 of a file it shares whole; returns the call that undoes it.

    The seeder then answers as a node still downloading the file does (INFO
    says PARTIAL, HAVE lists those pieces), so its peers wait for more rather
    than give up on it: they get those pieces and no others, however fast.
    """
    shared = seeder.files[info_hash]
    assert shared.complete, "share_only() starts from a file shared whole"
    meta, path = shared.meta, shared.path
    have = bytearray(meta.num_pieces)
    have[:pieces] = b"\x01" * pieces
    seeder.add_partial(meta, path, have)
    return lambda: seeder.add(meta, path)


# ---- node processes: a NAT the test owns

class NatGate:
    """A UDP relay in front of a node process, for the peers of that node.

    Start the node with ``--advertise-port <gate.port>``: the tracker then hands
    its peers the gate's address.  Each peer gets a port of its own on the
    node's side, as a NAT maps each inside address, so the node's cookies and
    answers stay per peer.  While the gate is closed, BLOCK datagrams of pieces
    *held_from* and later are dropped: the peers get the blocks of the pieces
    before it and nothing more.  :meth:`open` lets everything through.
    """

    def __init__(self) -> None:
        self.held_from = 0
        self.dropped = 0
        self.outside = _udp_socket()
        self.port: int = self.outside.getsockname()[1]
        self._node: tuple[str, int] | None = None
        self._inside: dict[Any, socket.socket] = {}
        self._peer_of: dict[socket.socket, Any] = {}
        self._open = threading.Event()
        self._stop = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.outside, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="nat-gate", daemon=True)

    def start(self, node_port: int, held_from: int) -> None:
        """Relay to the node listening on 127.0.0.1:*node_port*; until open(), no block of a piece from *held_from* on."""
        self._node = ("127.0.0.1", node_port)
        self.held_from = held_from
        self._thread.start()

    def open(self) -> None:
        self._open.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        for sock in [self.outside, *self._inside.values()]:
            sock.close()
        self._selector.close()

    def _run(self) -> None:
        assert self._node is not None
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.05):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                while True:
                    try:
                        data, src = sock.recvfrom(65536)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break  # an ICMP error from an earlier send (a peer killed): nothing to read
                    if sock is self.outside:
                        self._send(self._inside_for(src), data, self._node)
                        continue
                    if not self._open.is_set():
                        head = wire.peek_block(data)
                        if head is not None and head[2] >= self.held_from:
                            self.dropped += 1
                            continue
                    self._send(self.outside, data, self._peer_of[sock])

    def _inside_for(self, peer: Any) -> socket.socket:
        sock = self._inside.get(peer)
        if sock is None:
            sock = self._inside[peer] = _udp_socket()
            self._peer_of[sock] = peer
            self._selector.register(sock, selectors.EVENT_READ)
        return sock

    @staticmethod
    def _send(sock: socket.socket, data: bytes, addr: Any) -> None:
        try:
            sock.sendto(data, addr)
        except OSError:
            pass  # a full buffer or a peer gone: lost, as on a real network (the requester's timeouts cover it)


def _udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # SO_RCVBUFFORCE, SO_SNDBUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, 8 << 20)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, 8 << 20)
    return sock
