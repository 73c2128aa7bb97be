"""How many slowloris connections a tracker holds while a node still registers (a measurement, not a test).

    python benchmarks/slowloris.py --repo . --sources 1
    python benchmarks/slowloris.py --repo . --sources 50
    python benchmarks/slowloris.py --repo /path/to/a/checkout/of/the/base --sources 1   # before
    python benchmarks/slowloris.py --repo . --sources 50 --hard-limit 1024   # a limit that cannot be raised

Starts `python -m twisted p2ptracker` from the code in --repo (PYTHONPATH) on
127.0.0.1 with its soft open-file limit set to --soft-limit (1024, the common
default; the hard limit is left as it is), then, step by step, keeps --steps
connections open from --sources addresses (127.0.1.1, 127.0.1.2, ...): each
sends a request line and then one header line every --line-every seconds and
never ends its headers; a connection the tracker closes is opened again at the
next round.  After --rounds rounds of each step, a legitimate REGISTER is sent
from 127.0.0.1 on a fresh connection: "ok" means 200 within 1 s.

Per step: connections the attacker has open (as its sockets see them; some
may still wait in the listen backlog), the connections the tracker holds (its
open descriptors in /proc/PID/fd less those it had before the load) and the
REGISTER's outcome.  Every
load is bounded in count (the largest step) and time (--rounds x --line-every
per step); everything runs on loopback and ends with the script.

Measured 2026-12-01 (2 CPUs, hard limit 20000, tracker soft limit 1024 at exec, a header line every 5 s,
steps 250-3000; "held" is what the tracker held, "REGISTER" a 200 within 1 s):

    before (aa91810), 1 address:   250, 500, 1000 held, REGISTER ok; at 1500: 1011 held (every
                                   descriptor), REGISTER reset, and the database save failed (EMFILE)
    before (aa91810), 50 addresses: the same: 1000 ok, 1500 fails with 1011 held
    after, 1 address:              64 held at every step up to 3000 (the rest closed unread), REGISTER ok
    after, 50 addresses:           soft limit raised to 20000; 250-500 held, each cut at 10 s, REGISTER ok
                                   at every step up to 3000 (this attacker refills only every 5 s)
    after, 50 addresses, --hard-limit 1024: cap in all 960; REGISTER ok up to 2000 (about 300 held);
        with --tracker-args "--set TRACKER_REQUEST_TIMEOUT=300" the cap in all fills (960 held) at 1000
        and, without eviction (commit 500df48), a REGISTER from a new address was refused; with the
        oldest waiting request closed to make room (the next commit), 959 held at 1000, 1500 and 2000
        and every REGISTER ok (4-14 ms).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Attacker:
    """Slowloris sockets from several source addresses, each holding a request that never ends."""

    def __init__(self, port: int, sources: list[str]) -> None:
        self.port = port
        self.sources = sources
        self.socks: list[socket.socket] = []
        self.opened = 0

    def top_up(self, count: int, seconds: float) -> None:
        """Open connections until *count* are open (or *seconds* have passed: a full backlog blocks)."""
        self.prune()
        deadline = time.monotonic() + seconds
        while len(self.socks) < count and time.monotonic() < deadline:
            source = self.sources[self.opened % len(self.sources)]
            s = socket.socket()
            s.settimeout(1.0)
            try:
                s.bind((source, 0))
                s.connect(("127.0.0.1", self.port))
                s.sendall(b"POST / HTTP/1.1\r\nHost: tracker\r\nContent-Type: application/json\r\n")
            except OSError:
                s.close()
                continue
            finally:
                self.opened += 1
            s.setblocking(False)
            self.socks.append(s)

    def trickle(self) -> None:
        """One more header line on every open connection."""
        for s in self.socks:
            try:
                s.send(b"X-Slow: %d\r\n" % self.opened)
            except OSError:
                pass
        self.prune()

    def prune(self) -> None:
        """Forget the connections the tracker closed (readable with nothing to read, or reset)."""
        alive = []
        for s in self.socks:
            try:
                closed = s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
            except BlockingIOError:
                closed = False  # nothing to read: still open
            except OSError:
                closed = True  # reset
            if closed:
                s.close()
            else:
                alive.append(s)
        self.socks = alive

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks = []


def register(port: int, node_id: int) -> str:
    """A REGISTER from 127.0.0.1 on a fresh connection: 'ok (N ms)' if 200 within 1 s, else what happened."""
    body = json.dumps({"mode": 0, "node_id": node_id, "port": 9000}).encode()
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.request("POST", "/", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        took = time.monotonic() - start
        if response.status == 200 and took <= 1.0:
            return f"ok ({took * 1000:.0f} ms)"
        return f"{response.status} in {took * 1000:.0f} ms"
    except (OSError, http.client.HTTPException) as e:
        return f"failed: {type(e).__name__}"
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, required=True, help="checkout whose tracker is run")
    parser.add_argument("--sources", type=int, default=1, help="attacking source addresses (127.0.1.x)")
    parser.add_argument("--steps", default="250,500,1000,1500,2000,3000")
    parser.add_argument("--soft-limit", type=int, default=1024)
    parser.add_argument("--hard-limit", type=int, default=0,
                        help="also lower the tracker's hard open-file limit to this (0: leave it)")
    parser.add_argument("--line-every", type=float, default=5.0, help="seconds between two header lines")
    parser.add_argument("--rounds", type=int, default=3, help="header lines sent per step")
    parser.add_argument("--stop-after-failures", type=int, default=2)
    parser.add_argument("--tracker-args", default="", help="more options for p2ptracker, e.g. '--set NAME=VALUE'")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the attacker needs a descriptor per connection
    top = min(args.hard_limit, hard) if args.hard_limit else hard
    limit = min(args.soft_limit, top)

    def lowered() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, top))

    port = free_port()
    steps = [int(s) for s in args.steps.split(",")]
    sources = [f"127.0.1.{i + 1}" for i in range(args.sources)]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(args.repo.resolve())}
        out = open(Path(tmp) / "tracker.out", "wb")
        tracker = subprocess.Popen(
            [sys.executable, "-m", "twisted", "p2ptracker", "--listen", f"tcp:{port}:interface=127.0.0.1",
             "--tracker-db-dir", f"{tmp}/db", "--logs-dir", f"{tmp}/logs", *shlex.split(args.tracker_args)],
            cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=lowered,
        )
        attacker = Attacker(port, sources)
        try:
            deadline = time.monotonic() + 30
            while register(port, 1).startswith("failed") and time.monotonic() < deadline:
                time.sleep(0.1)
            print(f"repo {args.repo} sources {len(sources)} tracker soft limit {limit} (hard {top}) {args.tracker_args}", flush=True)
            base_fds = len(os.listdir(f"/proc/{tracker.pid}/fd"))
            print(f"{'step':>6} {'attacker open':>13} {'tracker holds':>13}  register", flush=True)
            failures = 0
            node_id = 100
            for count in steps:
                for _ in range(args.rounds):
                    attacker.top_up(count, args.line_every)
                    time.sleep(args.line_every)
                    attacker.trickle()
                attacker.top_up(count, args.line_every)
                held = len(os.listdir(f"/proc/{tracker.pid}/fd")) - base_fds
                node_id += 1
                outcome = register(port, node_id)
                attacker.prune()
                print(f"{count:>6} {len(attacker.socks):>13} {held:>13}  {outcome}", flush=True)
                failures = failures + 1 if not outcome.startswith("ok") else 0
                if failures >= args.stop_after_failures or tracker.poll() is not None:
                    break
        finally:
            attacker.close()
            tracker.terminate()
            try:
                tracker.wait(15)
            except subprocess.TimeoutExpired:
                tracker.kill()
                tracker.wait()
            out.close()
            log = Path(tmp) / "logs" / "tracker.log"
            if log.exists():
                for line in log.read_text(errors="replace").splitlines():
                    if "open files" in line or "connections" in line:
                        print("  log:", line.split(" ", 2)[-1][:200])


if __name__ == "__main__":
    main()
