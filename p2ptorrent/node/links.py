"""What a download is connected to: the network it sends on, and the hooks it calls (all optional).

Kept apart from download.py so that the shell's collaborators are named in one place, and a
test can hand a download fakes of each.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

from twisted.internet.defer import Deferred

from p2ptorrent import wire
from p2ptorrent.node.ratelimit import TokenBucket
from p2ptorrent.node.storage import PartFile, StorageError
from p2ptorrent.node.writer import InlineWriter, PieceWriter


class Network(Protocol):
    def send(self, datagram: bytes, addr: Any) -> None: ...
    def ask_info(self, addr: Any, info_hash: bytes, timeout: float) -> Deferred[wire.InfoResponse]: ...


@dataclass
class Hooks:
    """What a download calls outside itself, all optional."""

    #: Who follows it: {"done", "total", "rate", "peers"} a few times a second.
    progress: Callable[[dict[str, Any]], None] | None = None
    #: Tell the tracker how many pieces we hold (we serve them: swarming); never raises.
    announce: Callable[[int], None] | None = None
    #: Bytes of this file we served so far (the upload rate in status).
    uploaded: Callable[[], int] | None = None
    #: Bytes of this file we served to each address lately (each peer's rate to it in `info`).
    sent_to: Callable[[], Mapping[Any, int]] | None = None
    writer: Callable[[PartFile, Callable[[StorageError], None]], PieceWriter] = InlineWriter
    wallclock: Callable[[], float] = time.monotonic
    rng: random.Random | None = None
    #: The node's download limit, shared by its downloads: block requests spend it (None: no limit).
    pace: TokenBucket | None = None
