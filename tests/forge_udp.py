"""Forge a node's answers over real IPv4: raw datagrams carrying a seeder's source address and port.

Run on a host of its own (tests/test_forged_netns.py runs it in the lab's "forger" namespace, as root):

    python tests/forge_udp.py --torrent F.torrent --to 10.77.0.4:40003 \\
        --as 10.77.0.2:40001 --as 10.77.0.3:40002 --blocks 1200 --seconds 0.4 --errors 3 --haves 2

Everything is built by hand, IP header included (``SOCK_RAW``, ``IPPROTO_RAW``, ``IP_HDRINCL``), so the
kernel sends the packets exactly as written: the source is a seeder's address, the UDP checksum is
computed (pseudo-header and all), and each datagram is a well-formed wire-version-2 BLOCK, ERROR or
HAVE for the torrent's file with a random nonce: what an off-path host that knows the torrent (anyone
can read it) and the peers' addresses can send, but not the nonces of the node's requests.

BLOCKs: the blocks of ``--whole`` pieces in full (a piece ahead of the download, assembled from forged
data alone if they were taken), the rest spread over random blocks of every piece (so whichever pieces
the node is fetching get forged blocks among their missing ones), each with the block's exact size
(the node's chunk size, ``--chunk``, default CHUNK_PIECES_SIZE) and random data; the sources alternate
between the seeders; paced over ``--seconds``.  Then, per seeder, ``--errors`` ERRORs of every code
(1 to 5) and ``--haves`` HAVEs saying "choked" or "I have nothing".  Prints what it sent as one JSON
line: {"blocks": N, "errors": N, "haves": N, "bytes": N, "seconds": S, "per_source": {...}}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2ptorrent import wire  # noqa: E402
from p2ptorrent.config import Config  # noqa: E402
from p2ptorrent.metainfo import read_torrent  # noqa: E402
from p2ptorrent.node.pieces import Geometry  # noqa: E402

#: The ERROR codes a seeder may send (wire.E_*), each forged with a message as a seeder writes one.
ERROR_CODES = {wire.E_NOT_FOUND: "not shared", wire.E_BAD_COOKIE: "bad cookie", wire.E_BAD_REQUEST: "bad request",
               wire.E_CHOKED: "choked", wire.E_VERSION: "wire version 2 here, not 1"}


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of *data*."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def packet(src: tuple[str, int], dst: tuple[str, int], payload: bytes, ident: int) -> bytes:
    """One IPv4 packet (no options, DF set: never fragmented) holding one UDP datagram from *src* to *dst*."""
    s, d = socket.inet_aton(src[0]), socket.inet_aton(dst[0])
    udp_len = 8 + len(payload)
    pseudo = s + d + struct.pack("!BBH", 0, socket.IPPROTO_UDP, udp_len)
    udp = struct.pack("!HHHH", src[1], dst[1], udp_len, 0) + payload
    csum = checksum(pseudo + udp) or 0xFFFF  # 0 would mean "no checksum"
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, ident & 0xFFFF, 0x4000, 64, socket.IPPROTO_UDP, 0, s, d)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + udp


def block_targets(geo: Geometry, count: int, whole: int, rng: random.Random) -> list[tuple[int, int, int]]:
    """(piece, offset, length) of *count* forged blocks: *whole* random pieces in full, then random blocks."""
    out: list[tuple[int, int, int]] = []
    for piece in rng.sample(range(geo.num_pieces), min(whole, geo.num_pieces)):
        out.extend(geo.block(bid) for bid in geo.block_ids(piece))
    total_blocks = geo.num_pieces * geo.blocks_per_piece
    while len(out) < count:
        piece, k = divmod(rng.randrange(total_blocks), geo.blocks_per_piece)
        if k < geo.blocks_in_piece(piece):
            out.append(geo.block(piece * geo.blocks_per_piece + k))
    return out[:count] if len(out) > count else out


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torrent", required=True, help="the torrent of the file being downloaded")
    parser.add_argument("--to", required=True, type=address, help="the downloading node, IP:PORT")
    parser.add_argument("--as", dest="sources", action="append", required=True, type=address,
                        help="a seeder to pass for, IP:PORT (repeatable)")
    parser.add_argument("--chunk", type=int, default=Config().CHUNK_PIECES_SIZE, help="the node's chunk size")
    parser.add_argument("--blocks", type=int, default=1200, help="forged BLOCKs in all")
    parser.add_argument("--whole", type=int, default=2, help="pieces forged in full among them")
    parser.add_argument("--seconds", type=float, default=0.4, help="the BLOCKs are paced over this long")
    parser.add_argument("--errors", type=int, default=3, help="ERRORs of each code per seeder")
    parser.add_argument("--haves", type=int, default=2, help="forged HAVEs per seeder")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)

    meta = read_torrent(args.torrent)
    geo = Geometry(meta.length, meta.piece_length, args.chunk)
    rng = random.Random(args.seed)
    ih = meta.info_hash
    sources = args.sources
    ident = rng.randrange(65536)
    per_source = {f"{h}:{p}": {"blocks": 0, "errors": 0, "haves": 0} for h, p in sources}
    sent = {"blocks": 0, "errors": 0, "haves": 0, "bytes": 0}

    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)

    def send(kind: str, src: tuple[str, int], payload: bytes) -> None:
        nonlocal ident
        ident += 1
        pkt = packet(src, args.to, payload, ident)
        while True:
            try:
                sock.sendto(pkt, (args.to[0], 0))
                break
            except BlockingIOError:  # the send queue is full: wait for room (never drop one silently)
                time.sleep(0.0005)
        sent[kind] += 1
        sent["bytes"] += len(payload)
        per_source[f"{src[0]}:{src[1]}"][kind] += 1

    targets = block_targets(geo, args.blocks, args.whole, rng)
    began = time.monotonic()
    step = args.seconds / max(1, len(targets))
    for i, (piece, offset, length) in enumerate(targets):
        due = began + i * step
        if (wait := due - time.monotonic()) > 0:
            time.sleep(wait)  # pacing only
        send("blocks", sources[i % len(sources)], wire.encode_block(ih, wire.new_nonce(), piece, offset, os.urandom(length)))
    for src in sources:
        for code, text in ERROR_CODES.items():
            for _ in range(args.errors):
                send("errors", src, wire.encode_error(ih, wire.new_nonce(), code, text))
        for n in range(args.haves):
            flags = wire.F_CHOKED if n % 2 == 0 else wire.F_NEWS
            count = min(geo.num_pieces, wire.MAX_HAVE_COUNT)
            send("haves", src, wire.encode_have(ih, wire.new_nonce(), 0, count, flags, bytes((count + 7) // 8)))
    took = time.monotonic() - began
    print(json.dumps({**sent, "seconds": round(took, 3), "per_source": per_source}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
