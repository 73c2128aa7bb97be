"""The seeding side: answer INFO and BLOCK requests for the files this node shares.

Requests name a file only by info hash, so a peer can never reach a path the
node did not choose to share.  Every block asked for is checked against the
file's geometry before a byte is read, and a BLOCK_REQ must carry the cookie
handed out in INFO_RESP for the asker's address (see wire.py).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from p2ptorrent import wire
from p2ptorrent.metainfo import Metainfo


@dataclass
class SharedFile:
    meta: Metainfo
    path: Path
    fd: int
    uploaded: int = 0
    blocks_served: int = 0


class Seeder:
    """The files a node shares and the replies to requests for them."""

    log = Logger()

    def __init__(self, secret: bytes, max_block: int) -> None:
        self.secret = secret
        self.max_block = max_block
        self.files: dict[bytes, SharedFile] = {}
        self.refused = 0

    def add(self, meta: Metainfo, path: Path) -> SharedFile:
        old = self.files.get(meta.info_hash)
        if old is not None and old.path == path:
            return old
        fd = os.open(path, os.O_RDONLY)
        if old is not None:
            os.close(old.fd)
        shared = self.files[meta.info_hash] = SharedFile(meta, path, fd)
        return shared

    def remove(self, info_hash: bytes) -> None:
        shared = self.files.pop(info_hash, None)
        if shared is not None:
            os.close(shared.fd)

    def close(self) -> None:
        for info_hash in list(self.files):
            self.remove(info_hash)

    def cookie(self, addr: Any) -> bytes:
        host, port = addr[0], addr[1]
        return hmac.new(self.secret, f"{host}|{port}".encode(), hashlib.sha256).digest()[: wire.COOKIE_SIZE]

    def on_info(self, msg: wire.InfoRequest, addr: Any) -> bytes:
        shared = self.files.get(msg.info_hash)
        if shared is None:
            return wire.encode_info_response(msg.req_id, msg.info_hash, wire.NOT_FOUND, 0, 0, bytes(8))
        meta = shared.meta
        return wire.encode_info_response(
            msg.req_id, msg.info_hash, wire.OK, meta.length, meta.piece_length, self.cookie(addr)
        )

    def on_blocks(self, msg: wire.BlockRequest, addr: Any) -> list[bytes]:
        shared = self.files.get(msg.info_hash)
        if shared is None:
            self.refused += 1
            return [wire.encode_error(msg.info_hash, wire.E_NOT_FOUND, "file not shared here")]
        if not hmac.compare_digest(msg.cookie, self.cookie(addr)):
            self.refused += 1
            return [wire.encode_error(msg.info_hash, wire.E_BAD_COOKIE, "ask INFO for a cookie first")]
        meta = shared.meta
        out = []
        for piece, offset, length in msg.blocks:
            if (
                piece >= meta.num_pieces
                or length == 0
                or length > self.max_block
                or offset + length > meta.piece_size(piece)
            ):
                self.refused += 1
                return out + [wire.encode_error(msg.info_hash, wire.E_BAD_REQUEST, f"no block {piece}:{offset}+{length}")]
            data = os.pread(shared.fd, length, piece * meta.piece_length + offset)
            if len(data) != length:
                self.log.error("{path} is shorter than its torrent says: it changed on disk", path=shared.path)
                self.remove(msg.info_hash)
                return out + [wire.encode_error(msg.info_hash, wire.E_NOT_FOUND, "file changed on disk")]
            out.append(wire.encode_block(msg.info_hash, piece, offset, data))
            shared.uploaded += length
            shared.blocks_served += 1
        return out
