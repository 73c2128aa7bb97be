"""Seeders and a downloader wired through the in-memory network (tests/netsim.py)."""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from netsim import Faults, Network
from p2ptorrent import wire
from p2ptorrent.config import Config
from p2ptorrent.metainfo import Metainfo, make_torrent
from p2ptorrent.node.download import Download
from p2ptorrent.node.protocol import NodeProtocol
from p2ptorrent.node.serving import Seeder
from p2ptorrent.node.storage import PartFile


@dataclass
class Owner:
    node_id: int
    host: str
    port: int
    frequency: int = 0


def random_file(path: Path, size: int, seed: int = 1) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


class Swarm:
    """N seeders of one file and one downloader, on a fake network."""

    def __init__(
        self,
        tmp: Path,
        size: int,
        seeders: int = 3,
        seed: int = 0,
        faults: Faults | None = None,
        settings: Config | None = None,
        piece_length: int = 0,
    ) -> None:
        self.settings = settings or Config()
        self.clock = Clock()
        self.net = Network(self.clock, seed=seed, faults=faults)
        src = tmp / "src"
        src.mkdir()
        self.data = random_file(src / "file.bin", size, seed + 1)
        self.meta, _ = make_torrent(src / "file.bin", "http://tracker.invalid:1", piece_length)
        max_block = self.settings.BUFFER_SIZE - wire.BLOCK_OVERHEAD
        self.seeders: list[NodeProtocol] = []
        self.owners: list[Owner] = []
        for i in range(seeders):
            seeder = Seeder(os.urandom(16), max_block)
            seeder.add(self.meta, src / "file.bin")
            proto = NodeProtocol(seeder, self.clock, self.settings.BUFFER_SIZE)
            addr = (f"10.0.0.{i + 1}", 6000 + i)
            self.net.attach(proto, addr)
            self.seeders.append(proto)
            self.owners.append(Owner(i + 1, *addr))
        self.folder = tmp / "node"
        self.folder.mkdir()
        self.proto = NodeProtocol(Seeder(os.urandom(16), max_block), self.clock, self.settings.BUFFER_SIZE)
        self.net.attach(self.proto, ("10.0.0.100", 7000))
        self.need_calls = 0

    def need(self) -> Deferred[list[Any]]:
        self.need_calls += 1
        return succeed(list(self.owners))

    def start(self, meta: Metainfo | None = None) -> tuple[Download, list[Any]]:
        meta = meta or self.meta
        dl = Download(meta, PartFile(self.folder, meta), self.proto, self.need, self.clock, self.settings, 100)
        self.proto.downloads[meta.info_hash] = dl
        outcome: list[Any] = []
        dl.start().addBoth(outcome.append)
        return dl, outcome

    def run(self, outcome: list[Any], limit: float = 600.0) -> Any:
        self.net.run(lambda: bool(outcome), limit=limit)
        return outcome[0]

    def stop_seeder(self, index: int) -> None:
        self.net.detach(self.seeders[index].transport.addr)

    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()
