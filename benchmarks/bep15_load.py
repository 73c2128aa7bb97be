"""BEP 15 announces per second a running tracker answers (a benchmark tool, not part of p2ptorrent).

    python benchmarks/bep15_load.py --host 127.0.0.1 --port P --seconds 5 [--peers 100000] [--swarms 1000]
        [--numwant 50] [--window 64]

Start the tracker first, e.g. ``twistd -n --pidfile= p2ptracker --port P --tracker-db-dir /tmp/db
--logs-dir /tmp/logs`` (its UDP tracker listens on the HTTP port's number).  This client, one process on
one socket, connects (BEP 15), announces every one of ``--peers`` clients once (event started, spread over
``--swarms`` torrents, each a distinct peer id and announced port), then for ``--seconds`` announces them
again round robin (event none, ``--numwant`` peers asked, compact 6-byte answers), keeping ``--window``
requests in flight, and prints the answered announces per second of that timed part.  Every answer is
checked (action, transaction id, length a whole number of peers); a datagram lost is counted, never waited
for longer than half a second.  The connection id is renewed every 50 s (it lives one to two minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import sys
import time

MAGIC = 0x41727101980
CONNECT = struct.Struct(">QII")
CONNECT_ANSWER = struct.Struct(">IIQ")
ANNOUNCE = struct.Struct(">QII20s20sQQQIIIiH")
ANNOUNCE_HEAD = struct.Struct(">IIIII")
RENEW_ID_AFTER = 50.0


class Load:
    def __init__(self, host: str, port: int, peers: int, swarms: int, numwant: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.connect((host, port))
        self.peers, self.swarms, self.numwant = peers, swarms, numwant
        self.packets: list[bytes] = []
        self.cid_at = 0.0
        self.lost = 0

    def connect(self) -> None:
        self.sock.setblocking(True)
        self.sock.settimeout(1.0)
        for attempt in range(30):
            self.sock.send(CONNECT.pack(MAGIC, 0, attempt))
            try:
                while True:
                    answer = self.sock.recv(2048)
                    if len(answer) == 16 and CONNECT_ANSWER.unpack(answer)[:2] == (0, attempt):
                        break
            except TimeoutError:
                continue
            self.cid_at = time.monotonic()
            self.build(CONNECT_ANSWER.unpack(answer)[2])
            self.sock.setblocking(False)
            return
        sys.exit("the tracker does not answer BEP 15 connects")

    def build(self, cid: int) -> None:
        """Every client's announce, prebuilt (the transaction id is the client's number)."""
        self.packets = [
            ANNOUNCE.pack(cid, 1, i, (i % self.swarms).to_bytes(20, "big"), b"-LD0001-%012d" % i, 0, 1000, 0, 0, 0,
                          i, self.numwant, 1024 + i % 64000)
            for i in range(self.peers)
        ]

    def run(self, count: int | None, seconds: float | None, window: int) -> tuple[int, float]:
        """Announce *count* times (or for *seconds*) round robin; (answers, seconds taken)."""
        sent = answered = in_flight = 0
        i = 0
        start = last_answer = time.monotonic()
        deadline = start + seconds if seconds is not None else float("inf")
        sock, packets, n = self.sock, self.packets, self.peers
        while True:
            now = time.monotonic()
            if now >= deadline or (count is not None and answered + self.lost >= count):
                break
            if now - self.cid_at > RENEW_ID_AFTER and in_flight == 0:
                self.connect()
                packets = self.packets
            while in_flight < window and (count is None or sent < count):
                try:
                    sock.send(packets[i])
                except BlockingIOError:
                    break
                i = (i + 1) % n
                sent += 1
                in_flight += 1
            select.select([sock], [], [], 0.05)
            while True:
                try:
                    answer = sock.recv(4096)
                except BlockingIOError:
                    break
                action, tid, _, _, _ = ANNOUNCE_HEAD.unpack_from(answer)
                if action != 1 or tid >= n or (len(answer) - 20) % 6:
                    sys.exit(f"unexpected answer {answer[:64]!r}")
                answered += 1
                in_flight -= 1
                last_answer = time.monotonic()
            if in_flight and time.monotonic() - last_answer > 0.5:
                self.lost += in_flight  # lost on the way (or dropped by a full buffer): not waited for
                in_flight = 0
                last_answer = time.monotonic()
        return answered, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--peers", type=int, default=100_000)
    parser.add_argument("--swarms", type=int, default=1_000)
    parser.add_argument("--numwant", type=int, default=50)
    parser.add_argument("--window", type=int, default=64, help="announces in flight")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = parser.parse_args()

    load = Load(args.host, args.port, args.peers, args.swarms, args.numwant)
    load.connect()
    filled, fill_time = load.run(args.peers, None, args.window)
    load.lost = 0
    cpu0 = os.times()
    answered, elapsed = load.run(None, args.seconds, args.window)
    cpu = os.times()
    result = {
        "announces_per_s": round(answered / elapsed),
        "answered": answered, "lost": load.lost, "seconds": round(elapsed, 2),
        "peers": args.peers, "swarms": args.swarms, "numwant": args.numwant, "window": args.window,
        "fill_announces_per_s": round(filled / fill_time),
        "client_cpu_s": round(cpu.user + cpu.system - cpu0.user - cpu0.system, 2),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"filled {filled} clients in {fill_time:.1f} s; then {answered} announces in {elapsed:.1f} s "
              f"({load.lost} lost), client CPU {result['client_cpu_s']} s")
        print(f"{result['announces_per_s']} announces/s")


if __name__ == "__main__":
    main()
