"""A plain TCP copy of one file between two hosts: the lab's reference for what the link carries.

    python benchmarks/tcp_copy.py recv --bind ADDR --out FILE      # prints {"event": "ready", "port": P}
    python benchmarks/tcp_copy.py send --to ADDR:PORT --file FILE  # prints ready, sends on "go" (stdin)

The receiver accepts one connection and writes everything it reads (recv_into a 1 MiB buffer) to
FILE, then prints ``{"event": "done", "at": <time.monotonic()>, "bytes": N}`` once the sender has
closed and the file is flushed and closed.  The sender starts, prints ready, and on a line "go"
connects and sends the file with socket.sendfile (zero-copy), then closes and prints
``{"event": "sent"}``.  Both then wait for the end of their input (or "quit"), so the harness can
read their CPU and memory before they exit.  The lab benchmark
(benchmarks/lab.py) times from "go" to "done" and checks the copy's SHA-256 itself.
Default socket buffers and congestion control: the kernel's, as any program would get them.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path

MIB = 1024 * 1024


def say(**event: object) -> None:
    print(json.dumps(event), flush=True)


def recv(bind: str, out: Path) -> int:
    with socket.socket() as server:
        server.bind((bind, 0))
        server.listen(1)
        say(event="ready", port=server.getsockname()[1])
        conn, _ = server.accept()
        buf = bytearray(MIB)
        view = memoryview(buf)
        total = 0
        with conn, open(out, "wb") as f:
            while n := conn.recv_into(buf):
                f.write(view[:n])
                total += n
    say(event="done", at=time.monotonic(), bytes=total)
    return linger()


def linger() -> int:
    for line in sys.stdin:
        if line.strip() == "quit":
            break
    return 0


def send(to: str, file: Path) -> int:
    host, port = to.rsplit(":", 1)
    say(event="ready")
    if sys.stdin.readline().strip() != "go":
        return 1
    with socket.create_connection((host, int(port))) as s, open(file, "rb") as f:
        s.sendfile(f)
    say(event="sent")
    return linger()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    r = sub.add_parser("recv")
    r.add_argument("--bind", required=True)
    r.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("send")
    s.add_argument("--to", required=True)
    s.add_argument("--file", type=Path, required=True)
    args = parser.parse_args(argv)
    return recv(args.bind, args.out) if args.what == "recv" else send(args.to, args.file)


if __name__ == "__main__":
    sys.exit(main())
