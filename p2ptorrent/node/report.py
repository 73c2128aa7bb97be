"""What a download tells people: its result, its status (pieces, peers, rates) and its log of pieces."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from p2ptorrent.node.session import where
from p2ptorrent.node.transfer import Transfer

#: Seconds of rate marks the status averages over.
RATE_MARKS = 6
#: Seconds between two progress reports to whoever follows the download.
PROGRESS_EVERY = 0.2


@dataclass
class ShareReport:
    """What one owner delivered."""

    node_id: int
    addr: Any
    bytes: int
    blocks: int
    pieces: int
    status: str


@dataclass
class DownloadResult:
    path: Any
    length: int
    seconds: float
    shares: list[ShareReport] = field(default_factory=list)
    retransmits: int = 0
    duplicates: int = 0

    @property
    def rate(self) -> float:
        return self.length / self.seconds if self.seconds > 0 else float("inf")

    @property
    def credited(self) -> list[int]:
        """Owners that sent at least one block of a piece that verified."""
        return sorted({s.node_id for s in self.shares if s.pieces > 0})


class Stats:
    """Counters for status and the log; none of them steers the download."""

    def __init__(self, uploaded: Callable[[], int] | None, sent_to: Callable[[], Mapping[Any, int]] | None = None) -> None:
        self.uploaded = uploaded
        self.sent_to = sent_to
        #: Verified pieces each owner sent blocks of (the UPDATE credits).
        self.pieces_from: dict[Any, int] = {}
        #: Bytes from owners since dropped (they still count in the download rate).
        self.dropped_bytes = 0
        #: (time, bytes received, bytes uploaded), once a second: the rates in status.
        self.marks: deque[tuple[float, int, int]] = deque(maxlen=RATE_MARKS)
        #: (time, bytes received from each peer), with the marks above: each peer's rate in `info`.
        self.peer_marks: deque[tuple[float, dict[Any, int]]] = deque(maxlen=RATE_MARKS)
        #: (time, bytes sent to each peer), likewise: each peer's rate from us (they download from us too).
        self.sent_marks: deque[tuple[float, dict[Any, int]]] = deque(maxlen=RATE_MARKS)
        self.next_mark = 0.0
        #: Pieces verified since the last log line, by sending node: logged once a second, not once a piece.
        self.pieces_log: dict[int, list[int]] = {}
        self.logged_at = 0.0
        self.last_progress = -1.0
        self.wall_started = 0.0

    def mark(self, now: float, transfer: Transfer) -> None:
        if now < self.next_mark:
            return
        self.next_mark = now + 1.0
        received = sum(p.bytes for p in transfer.peers.values()) + self.dropped_bytes
        self.marks.append((now, received, self.uploaded() if self.uploaded is not None else 0))
        self.peer_marks.append((now, {addr: p.bytes for addr, p in transfer.peers.items()}))
        if self.sent_to is not None:
            self.sent_marks.append((now, dict(self.sent_to())))

    def verified(self, piece: int, sources: Iterable[Any], node_ids: Iterable[int]) -> None:
        """A piece verified: credit its senders (UPDATE), and note it for the log."""
        for addr in sources:
            self.pieces_from[addr] = self.pieces_from.get(addr, 0) + 1
        for node in node_ids:
            self.pieces_log.setdefault(node, []).append(piece)

    def pieces_text(self, now: float) -> str | None:
        """The pieces verified since the last call, by sender, in one short line (None: none)."""
        self.logged_at = now
        if not self.pieces_log:
            return None
        text = "; ".join(f"node {n}: {ranges(p)}" for n, p in sorted(self.pieces_log.items()))
        self.pieces_log = {}
        return text

    def progress_due(self, now: float, force: bool) -> bool:
        if not force and now - self.last_progress < PROGRESS_EVERY:
            return False
        self.last_progress = now
        return True

    def report(self, addr: Any, peer: Any, status: str) -> ShareReport:
        return ShareReport(
            node_id=peer.node_id if peer else -1, addr=addr, bytes=peer.bytes if peer else 0,
            blocks=peer.blocks if peer else 0, pieces=self.pieces_from.get(addr, 0), status=status,
        )

    def swarm_status(self, transfer: Transfer, num_pieces: int) -> dict[str, Any]:
        """What `status` shows of a download: pieces, peers, rates, who sends what."""
        marks = self.marks
        down = up = 0.0
        if len(marks) >= 2 and marks[-1][0] > marks[0][0]:
            span = marks[-1][0] - marks[0][0]
            down = (marks[-1][1] - marks[0][1]) / span
            up = (marks[-1][2] - marks[0][2]) / span
        return {
            "pieces": num_pieces - transfer.remaining,
            "pieces_total": num_pieces,
            "download_rate": round(down),
            "upload_rate": round(up),
            "uploaded": self.uploaded() if self.uploaded is not None else 0,
            "peer_details": [
                {
                    "node_id": p.node_id,
                    "address": where(p.addr),
                    "complete": p.has is None,
                    "pieces": num_pieces if p.has is None else sum(p.has),
                    "choked_us": p.choked,
                    "bytes_from": p.bytes,
                    "pieces_from": self.pieces_from.get(p.addr, 0),
                    "rate_from": round(self._peer_rate(p.addr)),
                    "bytes_to": self.sent_marks[-1][1].get(p.addr, 0) if self.sent_marks else 0,
                    "rate_to": round(_rate(self.sent_marks, p.addr)),
                }
                for p in sorted(transfer.peers.values(), key=lambda p: p.node_id)
            ],
        }


    def _peer_rate(self, addr: Any) -> float:
        """Bytes a second from one peer over the marks held (0 until two marks)."""
        return _rate(self.peer_marks, addr)


def _rate(marks: deque[tuple[float, dict[Any, int]]], addr: Any) -> float:
    """Bytes a second of one address's count over the marks held (0 until two marks)."""
    if len(marks) < 2:
        return 0.0
    (then, before), (now, after) = marks[0], marks[-1]
    if now <= then or addr not in after:
        return 0.0
    return max(0, after[addr] - before.get(addr, 0)) / (now - then)


def result_of(results: list[tuple[bool, Any]], path: Any, length: int, seconds: float, transfer: Transfer) -> DownloadResult:
    """The shares' outcomes (a DeferredList's results: reports, or PeerLost carrying one) as the result."""
    shares = [value if ok else value.value.args[0] for ok, value in results]
    return DownloadResult(path, length, seconds, shares, transfer.retransmits, transfer.duplicates)


def complete_text(result: DownloadResult, sync_seconds: float) -> str:
    return (f"complete, {result.length} bytes in {result.seconds:.2f} s ({result.rate / 1e6:.1f} MB/s, the last fsync"
            f" {sync_seconds:.2f} s); bytes per node {({s.node_id: s.bytes for s in result.shares})};"
            f" {result.retransmits} blocks asked again, {result.duplicates} duplicates")


def path_text(peer: Any) -> str:
    """How the path to one owner looked at the end: window, round trips, timeouts."""
    return (f"node {peer.node_id} path: window {peer.window:.0f} blocks, round trip {(peer.srtt or 0) * 1e3:.1f} ms"
            f" (min {min(peer.min_rtt, 1e3) * 1e3:.1f}), {peer.timeouts} timeouts")


def kept_text(done: int, total: int) -> str:
    if done <= 0:
        return f"no piece was verified yet (0 of {total} bytes)"
    return f"{done} of {total} bytes verified are kept; run download again to resume"


def ranges(pieces: list[int]) -> str:
    """[1, 2, 3, 7] -> "1-3, 7": a second's pieces in one short line."""
    runs: list[list[int]] = []
    for p in sorted(pieces):
        if runs and runs[-1][1] == p - 1:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs)
