"""The tracker under load: real `twistd -n p2ptracker` processes on 127.0.0.1, populations of 1k to 100k nodes.

    python benchmarks/tracker.py --quick            # 1000 and 10000 nodes, plus the JSON store at 1000
    python benchmarks/tracker.py                    # 1000, 10000 and 100000 nodes
    python benchmarks/tracker.py --nodes 100000 --no-json --stores sqlite,redis2
    python benchmarks/tracker.py --nodes 200 --seconds 1 --no-json     # about the smoke test
    python benchmarks/tracker.py --bep              # BitTorrent clients only: BEP 3 over HTTP, BEP 15 over UDP

Issue 13, item 7.  The same measurements run for each store (--stores, default
all three of the first):

- ``sqlite``: one tracker, `--store sqlite` (tracker.db);
- ``redis``: one tracker, `--store redis://...` on a redis-server this script
  starts in its work folder (appendonly yes, appendfsync always, no RDB
  snapshots) and stops, one per population;
- ``redis2``: two trackers on that one Redis, serving one swarm; every load
  below spreads its connections over both trackers' ports (connection k goes
  to tracker k mod 2), rates are the two combined and latencies are measured
  through both;
- ``redis-everysec``, ``redis2-everysec``: the same with appendfsync everysec
  (not run by default);
- ``json`` (at --json-nodes, unless --no-json): the comparison run of today.

For each population N and store, fresh processes are started with
TRACKER_MAX_NODES_PER_HOST raised (`--set`, every client is 127.0.0.1) and no
liveness check during phases 1 to 3 (`--tracker-interval 86400`: nodes that
only joined would be dropped while 100k join one by one), and:

1. admit: N REGISTERs one by one (each waits for its answer, so for the commit
   holding its join; with two trackers, alternately through each), capped at
   --seq-seconds: when capped, the rate and the extrapolation to N are
   printed, labelled so, and the rest of the population joins over 64
   connections (that rate too).
2. latency under heartbeat load: heartbeats of every node at N /
   NODE_TIME_INTERVAL per second (paced, 32 connections) for --seconds, while
   two probe connections (one per tracker with two) run cycles of join, OWN,
   NEED (a file with 50 owners), UPDATE, EXIT of fresh nodes (at most
   --probes cycles): p50/p99 of each.
3. throughput at 64 connections, closed loop for --seconds each: heartbeats/s
   and NEED/s against the tracker(s), and the same POST against a trivial
   Klein app (a route answering a small JSON, `--serve-trivial`; as many apps
   as trackers, pinned the same way, just after): the ratio.  The CPU used by
   each process (psutil, user + system) and how busy each core was are taken
   over both runs; with two trackers, the combined rate is also divided by
   the one-tracker Redis run's.
4. the longest stall around a liveness check that drops 10% of the nodes: the
   tracker(s) are stopped cleanly (SIGTERM) and started again on the same
   folder or Redis with `--tracker-interval T --set TRACKER_MISSED_CHECKS=1`
   (T sized so that the heartbeats of the other 90% take about half the
   measured heartbeat throughput); the 90% keep heartbeating, the 10% are
   silent, and `GET /` is sent every 5 ms on its own connection (one per
   tracker).  The worst answer time within a second of the drop (seen as the
   node count falling in those answers) is the stall seen from outside; the
   p99 of the probe away from the drop is beside it.  With Redis, one tracker
   (the lease holder) appends the check and every tracker drops the nodes as
   it applies it; a GET / is answered once its tracker applied the log up to
   it, drops included, so the probe sees the whole drop.  A second probe,
   `GET /no-such-path` every 5 ms (a 404 from the reactor, touching neither
   state nor store), gives the reactor's own delay near the drop beside it:
   SQLite answers a GET / between two slices of drops, as it does the 404;
   with Redis the two show whether requests waited for the log or for a busy
   reactor.  The swarm in Redis
   refuses trackers whose TRACKER_TIME_INTERVAL or TRACKER_MISSED_CHECKS
   differ from its own (its ``rules``), so between the two starts, with no
   tracker running, this script deletes that field and the lease key.
5. RSS of the tracker(s) (psutil) after the joins and at the end, of
   redis-server at the end, the store's size on disk (tracker.db with its
   -wal, the JSON files, or Redis's append-only files), the restart time
   (loading N nodes back: until `GET /` answers 200).

CPU pinning (when this machine gives us two cores or more; with one, nothing
is pinned).  The load generator (this script) runs on the last core; the
server side on the others, and with two cores that is core 0:

- sqlite, json: the tracker on core 0, the load generator on core 1 (as before);
- redis: the tracker and redis-server on core 0 (the server side and its
  store on one core, as SQLite's commits are in the tracker's process), the
  load generator on core 1;
- redis2: tracker A and redis-server on core 0, tracker B on core 1 beside the
  load generator: four busy processes on two cores, so the combined rate is
  bounded by the machine, which the CPU rows show.  With four cores or more,
  each of the trackers, redis-server and the load generator has its own.
- the trivial Klein app(s): where the tracker(s) were.

Every load is bounded in count and time, on loopback only.  The processes run
in their own session with PR_SET_PDEATHSIG, so they die with this script even
when it is SIGKILLed; the work folder is removed on every exit but a SIGKILL.
They run this checkout's code (its folder first on PYTHONPATH).  Figures
depend on the machine and whatever else runs on it: the load average is
printed with them.  --save FILE writes every figure as JSON.

BitTorrent clients (--bep, run alone; issue 14).  One tracker (SQLite store,
no nodes), pinned as above, and opentracker's common benchmark load: --bep-peers
(100k) peers in --bep-swarms (1,000) swarms, peer i in swarm i mod 1,000, first
loaded (each announces `started` once, over 64 connections), then for --seconds
each, closed loop, every request a random peer of the population (so a random
swarm and peer id) with compact=1, numwant=50 and a random left (half 0):

- BEP 3 announces/s over HTTP at 1 and at 64 connections, then the trivial
  Klein app, just after on the same core, answering the same GETs sent to `/`
  (like for like: the same request bytes, a fixed body): the ratio, and the CPU
  per request of each (psutil) and its ratio, beside the target (>= 0.8x);
- BEP 15 announces/s over UDP, if the tracker answers a connect at its HTTP
  port number (TRACKER_UDP_PORT 0, the default), from an asyncio client in this
  process: a connect, then 1 and 64 announces in flight (a lost datagram is
  replaced after 1 s, an unknown transaction id dropped), beside the target
  (>= 15,000/s on one core).  A tracker that answers nothing there gets
  "UDP: not offered by this tracker", and the run goes on.

The figures opentracker and bittorrent-tracker reached on this kind of machine
(the ANCHORS notes, same load) are printed beside ours as references, not
measured in the run.

Exit status: 0 every phase ran (targets missed or not), 1 a phase failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import quote_from_bytes

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from p2ptorrent.procs import find_script, free_port, redis_server_argv, wait_redis_server  # noqa: E402

DEFAULT_NODES = (1000, 10000, 100000)
QUICK_NODES = (1000, 10000)
JSON_NODES = 1000
OWNERS = 50
CONNS = 64
HB_CONNS = 32
PROBE_CONNS = 2
NODE_TIME_INTERVAL = 20.0
START_TIMEOUT = 300.0
H_NEED = "ab" * 20  # the file with OWNERS owners
H_PROBE = "cd" * 20  # the file the probe nodes own for a moment
TARGET_P99_MS = 20.0
TARGET_ADMIT_100K_S = 120.0
TARGET_RATIO = 0.6
TARGET_STALL_MS = 50.0

POST_HEAD = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
GET_REQ = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
#: A path the tracker does not serve: its 404 touches neither the state nor the store (the reactor's own delay).
MISS_REQ = b"GET /no-such-path HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


# ---- messages (tokens are proposed by the nodes, so every token is known here without keeping answers)

def token(i: int) -> str:
    return f"{i:032x}"


def register(i: int) -> bytes:
    return json.dumps({"mode": 0, "node_id": i, "port": 1024 + i % 60000, "token": token(i)}).encode()


def own(i: int, h: str) -> bytes:
    return json.dumps({"mode": 1, "node_id": i, "token": token(i), "info_hash": h, "name": "f", "length": 1000}).encode()


def need(i: int, h: str) -> bytes:
    return json.dumps({"mode": 2, "node_id": i, "token": token(i), "info_hash": h}).encode()


def update(i: int, h: str, uploaders: list[int]) -> bytes:
    return json.dumps({"mode": 3, "node_id": i, "token": token(i), "info_hash": h, "uploaders": uploaders}).encode()


def exit_(i: int) -> bytes:
    return json.dumps({"mode": 4, "node_id": i, "token": token(i)}).encode()


class HTTPError(RuntimeError):
    pass


class Conn:
    """One keep-alive HTTP/1.1 connection, one request at a time (answers carry Content-Length)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> Conn:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def call(self, body: bytes | None = None, raw: bytes | None = None) -> tuple[int, bytes]:
        """POST *body*, or send *raw* as it is, or GET /."""
        assert self.reader is not None and self.writer is not None
        self.writer.write(raw if raw is not None else GET_REQ if body is None else POST_HEAD % len(body) + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        at = head.lower().find(b"content-length:")
        if at < 0:
            raise HTTPError(f"answer without Content-Length: {head[:200]!r}")
        length = int(head[at + 15:head.index(b"\r\n", at)])
        return status, await self.reader.readexactly(length)

    async def ok(self, body: bytes | None = None) -> bytes:
        status, data = await self.call(body)
        if status != 200:
            raise HTTPError(f"{status} {data[:200]!r} for {(body or b'GET /')[:120]!r}")
        return data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def conns(ports: Sequence[int], n: int) -> list[Conn]:
    """*n* connections, the k-th to ports[k mod len(ports)] (spread over the trackers)."""
    return [await Conn(ports[k % len(ports)]).open() for k in range(n)]


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


# ---- the stores compared

@dataclass(frozen=True)
class Variant:
    """One column of the table: a store, how many tracker processes share it, Redis's appendfsync."""

    name: str
    store: str  # sqlite, json or redis
    trackers: int = 1
    fsync: str = "always"

    @property
    def title(self) -> str:
        if self.store != "redis":
            return self.store
        return ("redis" if self.trackers == 1 else f"redis x{self.trackers}") + ("" if self.fsync == "always" else " es")


VARIANTS = {v.name: v for v in (
    Variant("json", "json"), Variant("sqlite", "sqlite"), Variant("redis", "redis"), Variant("redis2", "redis", 2),
    Variant("redis-everysec", "redis", 1, "everysec"), Variant("redis2-everysec", "redis", 2, "everysec"),
)}
DEFAULT_STORES = ("sqlite", "redis", "redis2")


@dataclass(frozen=True)
class Pinning:
    """Which core each process runs on (None: not pinned)."""

    generator: int | None
    trackers: tuple[int | None, ...]
    redis: int | None

    @classmethod
    def plan(cls, cpus: Sequence[int], trackers: int) -> Pinning:
        """The load generator on the last core, the server side on the others (see the docstring)."""
        if len(cpus) < 2:
            return cls(None, (None,) * trackers, None)
        generator, servers = cpus[-1], list(cpus[:-1])
        if len(servers) >= trackers + 1:  # a core each
            return cls(generator, tuple(servers[:trackers]), servers[trackers])
        if len(servers) >= trackers:  # the trackers a core each, Redis beside the first
            return cls(generator, tuple(servers[:trackers]), servers[0])
        # Two cores, two trackers: tracker A (and Redis) on core 0, tracker B beside the load generator.
        return cls(generator, tuple(cpus[k % len(cpus)] for k in range(trackers)), servers[0])

    def describe(self, variant: Variant) -> str:
        parts = [f"tracker {'AB'[k] if variant.trackers > 1 else ''}".rstrip() + f" cpu {c}"
                 for k, c in enumerate(self.trackers)]
        if variant.store == "redis":
            parts.append(f"redis-server cpu {self.redis}")
        parts.append(f"load generator cpu {self.generator}")
        return ", ".join(parts)


# ---- processes

def _child_setup(cpu: int | None) -> Callable[[], None]:
    def setup() -> None:
        os.setsid()
        try:  # die with this script, even when it is SIGKILLed (PR_SET_PDEATHSIG = 1)
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
        except Exception:
            pass
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
    return setup


def _child_env() -> dict[str, str]:
    """This script's environment with this checkout first on PYTHONPATH: the processes run the code measured here,
    not whatever p2ptorrent the Python's console scripts would import."""
    env = dict(os.environ)
    root = str(HERE.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root)])
    return env


class Procs:
    """The processes this script started; :meth:`stop` ends them (SIGTERM, then SIGKILL)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], cpu: int | None) -> subprocess.Popen[bytes]:
        with open(self.root / f"{name}.out", "ab") as out:
            proc = subprocess.Popen(argv, cwd=self.root, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=_child_env(), preexec_fn=_child_setup(cpu))
        self.procs.append(proc)
        return proc

    def wait_listening(self, proc: subprocess.Popen[bytes], port: int, name: str) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < START_TIMEOUT:
            self.check_alive(proc, name)
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return time.monotonic() - t0
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"{name} did not listen on {port} within {START_TIMEOUT:.0f} s")

    def check_alive(self, proc: subprocess.Popen[bytes], name: str) -> None:
        if proc.poll() is not None:
            tail = (self.root / f"{name}.out").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} ended with status {proc.returncode}:\n{tail}")

    def end(self, *procs: subprocess.Popen[bytes], grace: float = 60.0) -> float:
        """SIGTERM (a clean stop: the last commit and the snapshots), SIGKILL after *grace*; seconds taken by all."""
        t0 = time.monotonic()
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(max(0.1, grace - (time.monotonic() - t0)))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return time.monotonic() - t0

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def tracker_argv(port: int, folder: Path, store: str, extra: Sequence[str] = ()) -> list[str]:
    twistd = find_script("twistd")
    if twistd is None:
        raise RuntimeError(f"no twistd beside {sys.executable}: install p2ptorrent in this Python")
    return [twistd, "-n", "--pidfile=", "p2ptracker", "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--tracker-db-dir", str(folder / "db"), "--logs-dir", str(folder / "logs"), "--store", store,
            "--set", "TRACKER_MAX_NODES_PER_HOST=10000000", *extra]


class Redis:
    """A redis-server of this run, in *folder*, on a free loopback port (stopped with the other processes)."""

    def __init__(self, procs: Procs, folder: Path, name: str, fsync: str, cpu: int | None) -> None:
        import redis

        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.procs = procs
        self.proc = procs.start(name, redis_server_argv(binary, self.port, folder, fsync), cpu)
        wait_redis_server(self.proc, self.port, folder)
        self.client = redis.Redis(port=self.port, socket_timeout=30)

    def forget_rules(self) -> None:
        """With no tracker running: let the next trackers set the swarm's settings (interval, missed checks)
        and take the liveness lease at once."""
        self.client.hdel("p2ptracker:meta", "rules")
        self.client.delete("p2ptracker:checker")

    def mib_on_disk(self) -> float:
        return sum(f.stat().st_size for f in self.folder.rglob("*") if f.is_file() and f.name != "redis.log") / 2**20

    def stop(self) -> float:
        self.client.close()
        return self.procs.end(self.proc, grace=30.0)


def db_mib(folder: Path, store: str) -> float:
    names = ("tracker.db", "tracker.db-wal") if store == "sqlite" else ("nodes.json", "files.json")
    return sum((folder / "db" / n).stat().st_size for n in names if (folder / "db" / n).exists()) / 2**20


def rss_mib(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


class CpuMeter:
    """CPU seconds (user + system) of some processes and how busy each core was, between start and stop, in %."""

    def __init__(self, procs: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in procs.items()}
        self.t0 = 0.0
        self.before: dict[str, float] = {}
        self.cores: list[Any] = []

    @staticmethod
    def _used(p: psutil.Process) -> float:
        t = p.cpu_times()
        return float(t.user + t.system)

    def start(self) -> CpuMeter:
        self.before = {name: self._used(p) for name, p in self.procs.items()}
        self.cores = psutil.cpu_times(percpu=True)
        self.t0 = time.perf_counter()
        return self

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        out = {name: 100 * (self._used(p) - self.before[name]) / wall for name, p in self.procs.items()}
        for k, (a, b) in enumerate(zip(self.cores, psutil.cpu_times(percpu=True))):
            busy = sum(b) - sum(a) - (b.idle - a.idle) - (getattr(b, "iowait", 0) - getattr(a, "iowait", 0))
            total = sum(b) - sum(a)
            out[f"cpu{k}"] = 100 * busy / total if total > 0 else float("nan")
        return out


# ---- phases (each one asyncio.run)

async def admit(ports: Sequence[int], n: int, seq_seconds: float) -> dict[str, Any]:
    """REGISTER 0..n-1 one by one (alternately through each tracker; capped in time), the rest over CONNS connections."""
    out: dict[str, Any] = {}
    one = await conns(ports, len(ports))
    t0 = time.perf_counter()
    done = 0
    while done < n and time.perf_counter() - t0 < seq_seconds:
        await one[done % len(one)].ok(register(done))
        done += 1
    seq = time.perf_counter() - t0
    for c in one:
        c.close()
    out["seq_done"], out["seq_s"] = done, seq
    out["seq_rate"] = done / seq if seq > 0 else float("nan")
    if done < n:
        rest = iter(range(done, n))
        cs = await conns(ports, CONNS)

        async def worker(conn: Conn) -> None:
            for i in rest:
                await conn.ok(register(i))

        t1 = time.perf_counter()
        await asyncio.gather(*(worker(x) for x in cs))
        par = time.perf_counter() - t1
        for x in cs:
            x.close()
        out["par_done"], out["par_s"] = n - done, par
    return out


async def paced(ports: Sequence[int], ids: Sequence[int], rate: float, stop: asyncio.Event,
                nconns: int = HB_CONNS) -> dict[str, Any]:
    """Heartbeats of *ids* in turn at *rate* per second over *nconns* connections until *stop* (open loop, paced)."""
    nconns = max(len(ports), min(nconns, len(ids)))
    cs = await conns(ports, nconns)
    sent = [0] * nconns
    lat: list[float] = []
    per = rate / nconns
    t0 = time.perf_counter()

    async def worker(k: int) -> None:
        mine = ids[k::nconns]
        j = 0
        due = t0 + k / rate
        while not stop.is_set():
            now = time.perf_counter()
            if due > now:
                try:
                    await asyncio.wait_for(stop.wait(), due - now)
                    return
                except asyncio.TimeoutError:
                    pass
            s = time.perf_counter()
            await cs[k].ok(register(mine[j]))
            lat.append(time.perf_counter() - s)
            j = (j + 1) % len(mine)
            sent[k] += 1
            due += 1 / per

    await asyncio.gather(*(worker(k) for k in range(nconns)))
    elapsed = time.perf_counter() - t0
    for c in cs:
        c.close()
    return {"sent": sum(sent), "rate": sum(sent) / elapsed, "p50": pct(lat, 50), "p99": pct(lat, 99)}


async def latency(ports: Sequence[int], n: int, seconds: float, probes: int) -> dict[str, Any]:
    """join, OWN, NEED, UPDATE, EXIT cycles of fresh nodes on PROBE_CONNS connections, under paced heartbeats."""
    stop = asyncio.Event()
    hb = asyncio.ensure_future(paced(ports, range(n), n / NODE_TIME_INTERVAL, stop))
    lat: dict[str, list[float]] = {k: [] for k in ("join", "OWN", "NEED", "UPDATE", "EXIT")}
    cs = await conns(ports, max(PROBE_CONNS, len(ports)))
    cycles = iter(range(probes))
    t0 = time.perf_counter()

    async def timed(kind: str, c: Conn, body: bytes) -> None:
        s = time.perf_counter()
        await c.ok(body)
        lat[kind].append(time.perf_counter() - s)

    async def worker(c: Conn) -> None:
        await asyncio.sleep(0.5)  # the heartbeats under way first
        for k in cycles:
            if time.perf_counter() - t0 > seconds:
                return
            x = n + 1 + k
            await timed("join", c, register(x))
            await timed("OWN", c, own(x, H_PROBE))
            await timed("NEED", c, need(x, H_NEED))
            await timed("UPDATE", c, update(x, H_NEED, [k % OWNERS]))
            await timed("EXIT", c, exit_(x))

    try:
        await asyncio.gather(*(worker(c) for c in cs))
        rest = seconds - (time.perf_counter() - t0)
        if rest > 0:
            await asyncio.sleep(rest)
    finally:
        stop.set()
        heartbeats = await hb
        for c in cs:
            c.close()
    return {"lat": lat, "cycles": len(lat["EXIT"]), "hb": heartbeats, "hb_target": n / NODE_TIME_INTERVAL}


async def closed_loop(ports: Sequence[int], make: Callable[[int], bytes], seconds: float, nconns: int = CONNS) -> float:
    """Requests per second over *nconns* connections, each sending its next request as soon as answered."""

    async def send(c: Conn, i: int) -> None:
        await c.ok(make(i))

    return await _closed_loop(ports, send, seconds, nconns)


async def _closed_loop(ports: Sequence[int], send: Callable[[Conn, int], Any], seconds: float, nconns: int) -> float:
    """Requests per second over *nconns* connections: ``send(conn, i)`` for i = k, k + nconns, ... on the k-th,
    each the next as soon as the last was answered, for *seconds*."""
    cs = await conns(ports, nconns)
    count = [0]
    t0 = time.perf_counter()

    async def worker(k: int, c: Conn) -> None:
        i = k
        while time.perf_counter() - t0 < seconds:
            await send(c, i)
            count[0] += 1
            i += nconns

    await asyncio.gather(*(worker(k, c) for k, c in enumerate(cs)))
    elapsed = time.perf_counter() - t0
    for c in cs:
        c.close()
    return count[0] / elapsed


async def setup_owners(ports: Sequence[int], n: int, files: int) -> float:
    """OWNERS owners of H_NEED; then nodes 0..files-1 own one file each (over CONNS connections): seconds taken."""
    c = await Conn(ports[0]).open()
    for i in range(min(OWNERS, n)):
        await c.ok(own(i, H_NEED))
    c.close()
    todo = iter(range(files))
    cs = await conns(ports, CONNS)

    async def worker(conn: Conn) -> None:
        for i in todo:
            await conn.ok(own(i, f"{i + 1:040x}"))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(x) for x in cs))
    for x in cs:
        x.close()
    return time.perf_counter() - t0


async def wait_ready(ports: Sequence[int], timeout: float = START_TIMEOUT) -> None:
    """Until `GET /` answers 200 on every port (the Redis store reads its rows once the reactor runs)."""
    t0 = time.monotonic()
    for port in ports:
        while True:
            try:
                c = await Conn(port).open()
                try:
                    status, _ = await asyncio.wait_for(c.call(), 30)
                finally:
                    c.close()
                if status == 200:
                    break
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                pass
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"the tracker on {port} did not answer GET / within {timeout:.0f} s")
            await asyncio.sleep(0.05)


async def stall(ports: Sequence[int], n: int, interval: float) -> dict[str, Any]:
    """Heartbeats of 90% of the nodes, 10% silent, GET / every 5 ms (on each tracker) until the 10% are dropped
    (or 3 intervals)."""
    active = [i for i in range(n) if i % 10 != 9]
    silent = n - len(active)
    stop = asyncio.Event()
    hb = asyncio.ensure_future(paced(ports, active, 1.2 * len(active) / interval, stop))
    t0 = time.perf_counter()

    async def probe(port: int) -> tuple[list[tuple[float, float, int]], float | None]:
        c = await Conn(port).open()
        samples: list[tuple[float, float, int]] = []  # (sent at, seconds, nodes)
        dropped_at: float | None = None
        try:
            while time.perf_counter() - t0 < 3 * interval + 10:
                s = time.perf_counter()
                nodes = int(json.loads(await c.ok())["nodes"])
                e = time.perf_counter()
                samples.append((s, e - s, nodes))
                if dropped_at is None and nodes <= n - silent:
                    dropped_at = s
                if dropped_at is not None and s - dropped_at > 1.0:
                    break
                await asyncio.sleep(max(0.0, 0.005 - (time.perf_counter() - s)))
        finally:
            c.close()
        return samples, dropped_at

    done = asyncio.Event()

    async def reactor_probe(port: int) -> list[tuple[float, float]]:
        """A 404 every 5 ms: answered by the reactor at once, whatever the store waits for."""
        c = await Conn(port).open()
        samples: list[tuple[float, float]] = []
        try:
            while not done.is_set():
                s = time.perf_counter()
                status, _ = await c.call(raw=MISS_REQ)
                samples.append((s, time.perf_counter() - s))
                if status != 404:
                    raise HTTPError(f"{status} for GET /no-such-path")
                await asyncio.sleep(max(0.0, 0.005 - (time.perf_counter() - s)))
        finally:
            c.close()
        return samples

    misses = [asyncio.ensure_future(reactor_probe(port)) for port in ports]
    try:
        seen = await asyncio.gather(*(probe(port) for port in ports))
    finally:
        done.set()
        missed = await asyncio.gather(*misses)
        stop.set()
        heartbeats = await hb
    every = [x for samples, _ in seen for x in samples]
    out: dict[str, Any] = {"interval": interval, "hb": heartbeats, "silent": silent, "probes": len(every),
                           "worst_ms": 1000 * max(d for _, d, _ in every),
                           "final_nodes": min(samples[-1][2] for samples, _ in seen)}
    if all(at is not None for _, at in seen):
        near: list[float] = []
        away: list[float] = []
        out["stall_each_ms"] = []
        out["reactor_each_ms"] = []
        for (samples, at), misses_here in zip(seen, missed):
            assert at is not None
            mine = [d for s, d, _ in samples if abs(s - at) <= 1.0]
            out["stall_each_ms"].append(1000 * max(mine))
            out["reactor_each_ms"].append(1000 * max([d for s, d in misses_here if abs(s - at) <= 1.0], default=float("nan")))
            near += mine
            away += [d for s, d, _ in samples if abs(s - at) > 1.0]
        out["stall_ms"] = 1000 * max(near)
        out["away_p99_ms"] = 1000 * pct(away, 99)
    return out


# ---- the trivial Klein app (--serve-trivial PORT runs it; started as a process like the tracker)

def serve_trivial(port: int) -> None:
    from klein import Klein
    from twisted.internet import reactor
    from twisted.web.server import Site

    app = Klein()

    @app.route("/", methods=["POST", "GET"])
    def root(request: Any) -> bytes:
        request.content.read()
        body = b'{"ok":true}'
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"%d" % len(body))
        return body

    site = Site(app.resource())
    site.log = lambda request: None  # type: ignore[method-assign]  # as TrackerSite: no access log
    reactor.listenTCP(port, site, interface="127.0.0.1")  # type: ignore[arg-type]
    reactor.run()




# ---- one population, one store

def run_variant(n: int, variant: Variant, args: argparse.Namespace, work: Path, procs: Procs,
                cpus: Sequence[int], one_tracker: dict[str, Any] | None = None) -> dict[str, Any]:
    tag = f"[{variant.title} {n}]"
    top = work / f"{variant.name}-{n}"
    top.mkdir()
    pin = Pinning.plan(cpus, variant.trackers)
    if pin.generator is not None:
        os.sched_setaffinity(0, {pin.generator})
    res: dict[str, Any] = {"variant": variant.name, "title": variant.title, "store": variant.store, "n": n,
                           "trackers": variant.trackers, "pinning": pin.describe(variant)}
    redis_server: Redis | None = None
    names = [f"tracker-{variant.name}-{n}" + ("" if variant.trackers == 1 else f"-{'AB'[k]}") for k in range(variant.trackers)]
    folders = [top / ("t" if variant.trackers == 1 else f"t{'AB'[k]}") for k in range(variant.trackers)]
    try:
        store = variant.store
        if variant.store == "redis":
            redis_server = Redis(procs, top / "redis", f"redis-{variant.name}-{n}", variant.fsync, pin.redis)
            store = redis_server.url
            res["redis_pid"] = redis_server.proc.pid

        def start(extra: Sequence[str], suffix: str = "") -> tuple[list[subprocess.Popen[bytes]], list[int], float]:
            ports = [free_port() for _ in names]
            t0 = time.monotonic()
            started = [procs.start(name + suffix, tracker_argv(port, folder, store, extra), cpu)
                       for name, port, folder, cpu in zip(names, ports, folders, pin.trackers)]
            for proc, port, name in zip(started, ports, names):
                procs.wait_listening(proc, port, name + suffix)
            asyncio.run(wait_ready(ports))
            return started, ports, time.monotonic() - t0

        # No liveness check while the population is built and measured: joining 100k nodes one by one takes
        # minutes, and nodes that only joined would be dropped after 44 to 66 s.  Phase 4 restarts with a short one.
        trackers, ports, _ = start(["--tracker-interval", "86400"])
        res["pids"] = [t.pid for t in trackers]
        print(f"{tag} trackers {res['pids']} on ports {ports} ({res['pinning']}): admitting", flush=True)
        res["admit"] = asyncio.run(admit(ports, n, args.seq_seconds))
        res["rss_joined"] = [rss_mib(t.pid) for t in trackers]
        res["files"] = files = min(n, int(round(args.files_ratio * n)))
        res["files_s"] = asyncio.run(setup_owners(ports, n, files))
        print(f"{tag} latency under heartbeats", flush=True)
        res["latency"] = asyncio.run(latency(ports, n, args.seconds, args.probes))
        print(f"{tag} throughput", flush=True)
        watched = {f"tracker {'AB'[k]}" if variant.trackers > 1 else "tracker": t.pid for k, t in enumerate(trackers)}
        if redis_server is not None:
            watched["redis-server"] = redis_server.proc.pid
        watched["load generator"] = os.getpid()
        res["pins"] = {"tracker A" if variant.trackers > 1 else "tracker": pin.trackers[0],
                       "tracker B": pin.trackers[-1], "redis-server": pin.redis, "load generator": pin.generator}
        meter = CpuMeter(watched).start()
        res["hb_rate"] = asyncio.run(closed_loop(ports, lambda i: register(i % n), args.seconds))
        res["cpu_hb"] = meter.stop()
        meter.start()
        res["need_rate"] = asyncio.run(closed_loop(
            ports, lambda i: need(OWNERS + i % max(1, n - OWNERS), H_NEED), args.seconds))
        res["cpu_need"] = meter.stop()
        if one_tracker is not None and one_tracker.get("hb_rate"):
            res["vs_one"] = {"hb": res["hb_rate"] / one_tracker["hb_rate"], "need": res["need_rate"] / one_tracker["need_rate"]}
        res["rss_loaded"] = [rss_mib(t.pid) for t in trackers]
        for t, name in zip(trackers, names):
            procs.check_alive(t, name)
        res["stop_s"] = procs.end(*trackers)
        # Just after, so about the same machine load.
        res["trivial"], res["cpu_trivial"] = trivial_rate(procs, args.seconds, pin.trackers)
        res["db_mib"] = redis_server.mib_on_disk() if redis_server is not None else db_mib(folders[0], variant.store)
        if not args.no_stall:
            # The liveness check: restart on the same folder (or Redis) with a short interval and one missed check.
            interval = max(args.min_interval, min(args.max_interval, 0.9 * n * 1.2 / max(1.0, 0.5 * res["hb_rate"])))
            if redis_server is not None:
                redis_server.forget_rules()
            trackers, ports, res["restart_s"] = start(
                ["--tracker-interval", f"{interval:g}", "--set", "TRACKER_MISSED_CHECKS=1"], "-stall")
            print(f"{tag} liveness check every {interval:g} s (restart took {res['restart_s']:.1f} s)", flush=True)
            res["stall"] = asyncio.run(stall(ports, n, interval))
            res["rss_end"] = [rss_mib(t.pid) for t in trackers]
            for t, name in zip(trackers, names):
                procs.check_alive(t, name + "-stall")
            procs.end(*trackers)
        if redis_server is not None:
            res["redis_rss"] = rss_mib(redis_server.proc.pid)
            res["db_mib"] = redis_server.mib_on_disk()
    finally:
        if redis_server is not None:
            res["redis_stop_s"] = redis_server.stop()
    return res


def trivial_rate(procs: Procs, seconds: float, cpus: Sequence[int | None]) -> tuple[float, dict[str, float]]:
    """Requests/s of trivial Klein apps (one per tracker, pinned alike) at CONNS connections (the same POSTs as the
    heartbeats), started afresh."""
    ports = [free_port() for _ in cpus]
    started = [procs.start("trivial", [sys.executable, str(Path(__file__).resolve()), "--serve-trivial", str(port)], cpu)
               for port, cpu in zip(ports, cpus)]
    try:
        for proc, port in zip(started, ports):
            procs.wait_listening(proc, port, "trivial")
        meter = CpuMeter({f"app {k}": p.pid for k, p in enumerate(started)}).start()
        rate = asyncio.run(closed_loop(ports, register, seconds))
        return rate, meter.stop()
    finally:
        procs.end(*started)


# ---- BitTorrent clients (--bep): BEP 3 announces over HTTP, BEP 15 announces over UDP

#: opentracker's common benchmark load: 100k peers in 1,000 swarms, compact answers of 50 peers.
BEP_PEERS = 100_000
BEP_SWARMS = 1000
BEP_NUMWANT = 50
#: Distinct announces prepared before the clock starts (drawn at random from the population), sent in turn.
BEP_POOL = 20_000
TARGET_BEP_RATIO = 0.8
TARGET_UDP_RATE = 15_000.0
#: BEP 15: the connect request's magic, and the actions.
UDP_PROTOCOL_ID = 0x41727101980
UDP_CONNECT, UDP_ANNOUNCE, UDP_ERROR = 0, 1, 3
#: Seconds before an unanswered datagram counts as lost and the next is sent (loopback: lost = a full buffer).
UDP_TIMEOUT = 1.0
#: A connection id may be used for a minute (BEP 15): a UDP run is at most this long, with a fresh id each.
UDP_MAX_SECONDS = 50.0
#: What the ANCHORS measured on this kind of machine (same load model, one core serving), printed beside ours.
BEP_REFERENCE = {
    "http1": "opentracker 7.0k, bittorrent-tracker 2.6k",
    "http64": "opentracker 12.3k, bittorrent-tracker 3.9k",
    "udp1": "opentracker 18.9k, bittorrent-tracker 2.6k",
    "udp64": "opentracker 59k, bittorrent-tracker 4.2k",
}


def bep_info_hash(swarm: int) -> bytes:
    return hashlib.sha1(b"benchmark swarm %d" % swarm).digest()


def bep_peer_id(i: int) -> bytes:
    return b"-BN0001-" + b"%012d" % i


def bep_port(i: int) -> int:
    return 1024 + i % 60000


def bep_get(path: str, i: int, swarms: int, left: int, event: str = "") -> bytes:
    """``GET path?<a BEP 3 announce of peer i>``, as a client sends it (binary fields percent-encoded)."""
    query = (f"info_hash={quote_from_bytes(bep_info_hash(i % swarms), safe='')}"
             f"&peer_id={quote_from_bytes(bep_peer_id(i), safe='')}&port={bep_port(i)}&uploaded=0&downloaded=0"
             f"&left={left}&compact=1&numwant={BEP_NUMWANT}" + (f"&event={event}" if event else ""))
    return f"GET {path}?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def bep_draws(peers: int, count: int, seed: int = 15) -> list[tuple[int, int]]:
    """(peer, left) of *count* announces: each a random peer of the population (so a random swarm and peer
    id), *left* random (half of them 0: seeds)."""
    rng = random.Random(seed)
    return [(rng.randrange(peers), rng.choice((0, rng.randrange(1, 2**32)))) for _ in range(count)]


def check_announce(status: int, body: bytes) -> None:
    if status != 200 or body.startswith(b"d14:failure reason"):
        raise HTTPError(f"announce answered {status} {body[:200]!r}")


async def bep_populate(port: int, peers: int, swarms: int) -> float:
    """Every peer announces `started` once (over CONNS connections, in the order 0..peers-1): seconds taken."""
    todo = iter(range(peers))
    cs = await conns([port], CONNS)

    async def worker(c: Conn) -> None:
        for i in todo:
            check_announce(*await c.call(raw=bep_get("/announce", i, swarms, (i % 2) * 2**20, "started")))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in cs))
    for c in cs:
        c.close()
    return time.perf_counter() - t0


async def closed_loop_raw(port: int, requests: Sequence[bytes], seconds: float, nconns: int,
                          check: Callable[[int, bytes], None]) -> float:
    """Requests per second over *nconns* connections sending *requests* in turn, each the next as soon as
    answered; *check* judges each answer."""

    async def send(c: Conn, i: int) -> None:
        check(*await c.call(raw=requests[i % len(requests)]))

    return await _closed_loop([port], send, seconds, nconns)


def check_trivial(status: int, body: bytes) -> None:
    if status != 200:
        raise HTTPError(f"the trivial app answered {status} {body[:200]!r}")


def udp_connect(port: int, tries: int = 3) -> bytes | None:
    """A BEP 15 connection id from the UDP tracker at 127.0.0.1:*port* (good for this socket only), or None
    when nothing answers there (no UDP tracker: an ICMP port unreachable, or silence for *tries* seconds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        sock.settimeout(1.0)
        for tid in range(1, tries + 1):
            try:
                sock.send(struct.pack(">QII", UDP_PROTOCOL_ID, UDP_CONNECT, tid))
                data = sock.recv(2048)
            except ConnectionRefusedError:
                return None
            except socket.timeout:
                continue
            if len(data) >= 16 and struct.unpack(">II", data[:8]) == (UDP_CONNECT, tid):
                return data[8:16]
            if len(data) >= 8 and struct.unpack(">I", data[:4])[0] == UDP_ERROR:
                raise RuntimeError(f"UDP connect refused: {data[8:200]!r}")
    return None


def udp_tail(i: int, swarms: int, left: int) -> bytes:
    """The part of a BEP 15 announce after connection id, action and transaction id."""
    return struct.pack(">20s20sQQQIIIiH", bep_info_hash(i % swarms), bep_peer_id(i), 0, left, 0,
                       0, 0, i & 0xFFFFFFFF, BEP_NUMWANT, bep_port(i))  # event none, IP 0 (the source's), key


class UdpAnnouncer(asyncio.DatagramProtocol):
    """A BEP 15 client on one socket: a connect, then *window* announces in flight for *seconds*, each answer
    followed by the next.  Answers are matched by transaction id, unknown ids (a late answer to one counted
    lost) dropped; a datagram unanswered after UDP_TIMEOUT counts as lost and is replaced.  The connection id
    is asked for on the socket that announces: a tracker may tie it to the client's address and port."""

    def __init__(self, tails: Sequence[bytes], window: int, seconds: float) -> None:
        self.tails = tails
        self.window = window
        self.seconds = seconds
        self.head = b""  # connection id + action, once connected
        self.pending: dict[int, float] = {}
        self.seq = 0
        self.connects = 0
        self.answered = self.lost = self.errors = self.peers = 0
        self.error: bytes = b""
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.DatagramTransport | None = None
        self.t0 = self.last = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._connect()
        asyncio.get_running_loop().call_later(UDP_TIMEOUT / 4, self._expire)

    def _tid(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        self.pending[self.seq] = time.perf_counter()
        return self.seq

    def _connect(self) -> None:
        assert self.transport is not None
        self.connects += 1
        if self.connects > 3:
            self._finish(RuntimeError("no answer to 3 UDP connect requests"))
            return
        self.transport.sendto(struct.pack(">QII", UDP_PROTOCOL_ID, UDP_CONNECT, self._tid()))

    def _send(self) -> None:
        assert self.transport is not None
        tid = self._tid()
        self.transport.sendto(self.head + tid.to_bytes(4, "big") + self.tails[tid % len(self.tails)])

    def _next(self) -> None:
        if time.perf_counter() - self.t0 < self.seconds:
            self._send()
        elif not self.pending:
            self._finish(None)

    def _finish(self, error: Exception | None) -> None:
        if not self.done.done():
            if error is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(error)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) < 8:
            return
        action, tid = struct.unpack(">II", data[:8])
        if self.pending.pop(tid, None) is None:
            return
        if not self.head:
            if action != UDP_CONNECT or len(data) < 16:
                self._finish(RuntimeError(f"UDP connect answered {data[:200]!r}"))
                return
            self.head = data[8:16] + UDP_ANNOUNCE.to_bytes(4, "big")
            self.t0 = self.last = time.perf_counter()
            for _ in range(self.window):
                self._send()
            return
        self.last = time.perf_counter()
        if action == UDP_ANNOUNCE and len(data) >= 20:
            self.answered += 1
            self.peers += (len(data) - 20) // 6
        else:
            self.errors += 1
            self.error = data[8:200]
        self._next()

    def error_received(self, exc: Exception) -> None:
        self.error = str(exc).encode()

    def _expire(self) -> None:
        now = time.perf_counter()
        for tid in [t for t, sent in self.pending.items() if now - sent > UDP_TIMEOUT]:
            del self.pending[tid]
            if not self.head:
                self._connect()
                continue
            self.lost += 1
            self._next()
        if not self.done.done():
            asyncio.get_running_loop().call_later(UDP_TIMEOUT / 4, self._expire)


async def udp_load(port: int, tails: Sequence[bytes], window: int, seconds: float) -> dict[str, Any]:
    """Announces of *window* in flight from one socket (see :class:`UdpAnnouncer`) for *seconds*."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: UdpAnnouncer(tails, window, seconds), remote_addr=("127.0.0.1", port))
    try:
        await asyncio.wait_for(proto.done, seconds + 10 * UDP_TIMEOUT)
    finally:
        transport.close()
    elapsed = proto.last - proto.t0
    return {"rate": proto.answered / elapsed if elapsed > 0 else float("nan"), "answered": proto.answered,
            "lost": proto.lost, "errors": proto.errors, "error": proto.error.decode("utf-8", "replace"),
            "peers_per_answer": proto.peers / proto.answered if proto.answered else float("nan")}


def run_bep(args: argparse.Namespace, work: Path, procs: Procs, cpus: Sequence[int]) -> dict[str, Any]:
    """The BitTorrent phase: one tracker (SQLite store, no nodes), the population loaded, then announces at
    1 and CONNS connections (HTTP) and windows of 1 and CONNS datagrams (UDP, when offered); the trivial
    Klein app just after, pinned alike, answering the same GETs at ``/``."""
    peers, swarms, seconds = args.bep_peers, args.bep_swarms, args.seconds
    tag = f"[bep {peers}]"
    top = work / f"bep-{peers}"
    top.mkdir()
    pin = Pinning.plan(cpus, 1)
    if pin.generator is not None:
        os.sched_setaffinity(0, {pin.generator})
    res: dict[str, Any] = {"peers": peers, "swarms": swarms, "seconds": seconds,
                           "pinning": f"tracker cpu {pin.trackers[0]}, load generator cpu {pin.generator}",
                           "pins": {"tracker": pin.trackers[0], "load generator": pin.generator}}
    port = free_port()
    tracker = procs.start("tracker-bep", tracker_argv(port, top, "sqlite", ["--tracker-interval", "86400"]),
                          pin.trackers[0])
    procs.wait_listening(tracker, port, "tracker-bep")
    asyncio.run(wait_ready([port]))
    print(f"{tag} tracker {tracker.pid} on port {port} ({res['pinning']}): {peers:,} peers announce", flush=True)
    res["populate_s"] = asyncio.run(bep_populate(port, peers, swarms))
    res["rss_loaded"] = rss_mib(tracker.pid)
    draws = bep_draws(peers, min(BEP_POOL, max(1000, peers)))
    announces = [bep_get("/announce", i, swarms, left) for i, left in draws]
    watched = {"tracker": tracker.pid, "load generator": os.getpid()}
    for nconns in (1, CONNS):
        print(f"{tag} HTTP announces at {nconns} connection(s)", flush=True)
        meter = CpuMeter(watched).start()
        res[f"http{nconns}"] = asyncio.run(closed_loop_raw(port, announces, seconds, nconns, check_announce))
        res[f"cpu_http{nconns}"] = meter.stop()
    # The UDP tracker, if any, is at the HTTP port number (TRACKER_UDP_PORT's default, 0).
    res["udp"] = udp_connect(port) is not None
    if res["udp"]:
        tails = [udp_tail(i, swarms, left) for i, left in draws]
        for window in (1, CONNS):
            print(f"{tag} UDP announces, {window} in flight", flush=True)
            meter = CpuMeter(watched).start()
            # A connection id is good for a minute: each run connects afresh, and runs at most UDP_MAX_SECONDS.
            res[f"udp{window}"] = asyncio.run(udp_load(port, tails, window, min(seconds, UDP_MAX_SECONDS)))
            res[f"cpu_udp{window}"] = meter.stop()
    else:
        print("UDP: not offered by this tracker", flush=True)
    res["rss_end"] = rss_mib(tracker.pid)
    procs.check_alive(tracker, "tracker-bep")
    procs.end(tracker)
    # Just after, on the tracker's core: the same GETs at "/" (Klein routes them, the query is parsed and unused).
    trivial_gets = [bep_get("/", i, swarms, left) for i, left in draws]
    app_port = free_port()
    app = procs.start("trivial-bep", [sys.executable, str(Path(__file__).resolve()), "--serve-trivial", str(app_port)],
                      pin.trackers[0])
    try:
        procs.wait_listening(app, app_port, "trivial-bep")
        for nconns in (1, CONNS):
            print(f"{tag} trivial Klein app at {nconns} connection(s)", flush=True)
            meter = CpuMeter({"app": app.pid, "load generator": os.getpid()}).start()
            res[f"trivial{nconns}"] = asyncio.run(closed_loop_raw(app_port, trivial_gets, seconds, nconns, check_trivial))
            res[f"cpu_trivial{nconns}"] = meter.stop()
    finally:
        procs.end(app)
    return res


def bep_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = [(f"{r['peers']:,} peers in {r['swarms']:,} swarms announced (started), s", fmt(r["populate_s"], 2), ""),
            ("  announces/s meanwhile, 64 conns", fmt(r["peers"] / r["populate_s"], 0), ""),
            ("tracker RSS loaded / end, MiB", f"{fmt(r['rss_loaded'])} / {fmt(r['rss_end'])}", "")]
    for nconns in (1, CONNS):
        rate, trivial = r[f"http{nconns}"], r[f"trivial{nconns}"]
        cpu, cpu_trivial = r[f"cpu_http{nconns}"], r[f"cpu_trivial{nconns}"]
        per, per_trivial = cpu_ms(cpu, "tracker", rate), cpu_ms(cpu_trivial, "app", trivial)
        rows += [
            (f"HTTP announces/s at {nconns} conn{'s' if nconns > 1 else ''}", fmt(rate, 0),
             f"({BEP_REFERENCE[f'http{nconns}']}, ANCHORS)"),
            ("  trivial Klein app just after, same GETs at /, req/s", fmt(trivial, 0), ""),
            ("  / trivial Klein app", f"{fmt(rate / trivial if trivial else float('nan'), 2)}x",
             f">= {TARGET_BEP_RATIO}x"),
            ("  CPU ms per request: tracker / trivial", f"{fmt(per, 3)} / {fmt(per_trivial, 3)}", ""),
            ("  / trivial Klein app by CPU per request", f"{fmt(per_trivial / per if per else float('nan'), 2)}x",
             f">= {TARGET_BEP_RATIO}x"),
            ("  CPU % tracker / load generator / cores",
             f"{fmt(cpu['tracker'], 0)} / {fmt(cpu['load generator'], 0)} / "
             + " / ".join(fmt(v, 0) for k, v in sorted(cpu.items()) if k.startswith("cpu")), ""),
            ("  bound", bound(cpu, r["pins"]), ""),
        ]
    if not r["udp"]:
        rows.append(("UDP (BEP 15) announces/s", "not offered by this tracker", f">= {TARGET_UDP_RATE:,.0f}/s on one core"))
        return rows
    for window in (1, CONNS):
        u, cpu = r[f"udp{window}"], r[f"cpu_udp{window}"]
        rows += [
            (f"UDP (BEP 15) announces/s, {window} in flight", fmt(u["rate"], 0),
             f">= {TARGET_UDP_RATE:,.0f}/s on one core ({BEP_REFERENCE[f'udp{window}']}, ANCHORS)"),
            ("  answered / lost / errors", f"{u['answered']:,} / {u['lost']:,} / {u['errors']:,}"
             + (f" ({u['error']})" if u["errors"] else ""), ""),
            ("  peers per answer", fmt(u["peers_per_answer"]), f"numwant {BEP_NUMWANT}"),
            ("  CPU ms per announce: tracker", fmt(cpu_ms(cpu, "tracker", u["rate"]), 3), ""),
            ("  CPU % tracker / load generator / cores",
             f"{fmt(cpu['tracker'], 0)} / {fmt(cpu['load generator'], 0)} / "
             + " / ".join(fmt(v, 0) for k, v in sorted(cpu.items()) if k.startswith("cpu")), ""),
            ("  bound", bound(cpu, r["pins"]), ""),
        ]
    return rows


def print_rows(rows: Sequence[tuple[str, str, str]]) -> None:
    table = [("figure", "value", "target / reference"), *rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for k, row in enumerate(table):
        print(f"{row[0].ljust(widths[0])}  {row[1].rjust(widths[1])}  {row[2]}".rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))


# ---- the table

def fmt(x: Any, digits: int = 1) -> str:
    if isinstance(x, float):
        return "n/a" if x != x else f"{x:,.{digits}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def each(values: Sequence[float], digits: int = 1) -> str:
    """One figure per tracker: 'A' or 'A + B'."""
    return " + ".join(fmt(v, digits) for v in values)


def rows_for(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, value, target) of one run; the figure names depend only on the population, so runs of the same
    population share them and stand side by side."""
    trivial = r["trivial"]
    n = r["n"]
    big = n >= 100000
    a = r["admit"]
    rows: list[tuple[str, str, str]] = []
    target_admit = f"<= {TARGET_ADMIT_100K_S:.0f} s at 100k" if big else f"(100k <= {TARGET_ADMIT_100K_S:.0f} s)"
    if a["seq_done"] == n:
        rows.append(("admit one by one, s", fmt(a["seq_s"]), target_admit))
    else:
        extrapolated = n / a["seq_rate"] if a["seq_rate"] else float("nan")
        rows.append(("admit one by one, s", f"{fmt(extrapolated)} EXTRAPOLATED", target_admit))
        rows.append(("  capped: joined one by one in s", f"{a['seq_done']:,} in {fmt(a['seq_s'])}", ""))
        rows.append((f"  rest over {CONNS} conns, joins/s", fmt(a["par_done"] / a["par_s"]), ""))
    rows.append(("  one by one, joins/s", fmt(a["seq_rate"]), ""))
    if r["files"]:
        rows.append((f"files owned ({r['files']:,}, one owner each), OWN/s", fmt(r["files"] / r["files_s"]), ""))
    lat = r["latency"]
    hb = lat["hb"]
    rows.append((f"heartbeats during latency, /s ({fmt(lat['hb_target'])} asked)", fmt(hb["rate"]), "N/20 per s"))
    rows.append(("  heartbeat p50 / p99, ms", f"{fmt(1000 * hb['p50'], 2)} / {fmt(1000 * hb['p99'], 2)}", ""))
    for kind, values in lat["lat"].items():
        target = f"p99 <= {TARGET_P99_MS:.0f} ms at 100k" if kind != "NEED" else ""
        rows.append((f"{kind} p50 / p99, ms", f"{fmt(1000 * pct(values, 50), 2)} / {fmt(1000 * pct(values, 99), 2)}", target))
    rows.append(("  probe cycles (join..EXIT)", fmt(lat.get("cycles", len(lat["lat"]["EXIT"]))), ""))
    rows.append((f"heartbeats/s at {CONNS} conns", fmt(r["hb_rate"], 0), ""))
    rows.append(("  trivial Klein app(s) just after, req/s", fmt(trivial, 0), "as many apps as trackers"))
    ratio = r["hb_rate"] / trivial if trivial else float("nan")
    rows.append(("  / trivial Klein app", f"{fmt(ratio, 2)}x", f">= {TARGET_RATIO}x (was 0.44x)"))
    # CPU time per request: what the rates would be on cores of their own, whatever else ran on the machine.
    per_hb = cpu_ms(r["cpu_hb"], "tracker", r["hb_rate"])
    per_trivial = cpu_ms(r["cpu_trivial"], "app", trivial)
    rows.append(("  CPU ms per request: tracker(s) / trivial", f"{fmt(per_hb, 3)} / {fmt(per_trivial, 3)}", ""))
    rows.append(("  / trivial Klein app by CPU per request", f"{fmt(per_trivial / per_hb if per_hb else float('nan'), 2)}x",
                 f">= {TARGET_RATIO}x"))
    if "vs_one" in r:
        rows.append(("  combined / one Redis tracker", f"{fmt(r['vs_one']['hb'], 2)}x", ""))
    rows.extend(cpu_rows("  CPU % during them:", r["cpu_hb"], r["pins"]))
    rows.append((f"NEED/s at {CONNS} conns ({OWNERS} owners)", fmt(r["need_rate"], 0), ""))
    rows.append(("  / trivial Klein app", f"{fmt(r['need_rate'] / trivial if trivial else float('nan'), 2)}x", ""))
    if "vs_one" in r:
        rows.append(("  combined / one Redis tracker", f"{fmt(r['vs_one']['need'], 2)}x", ""))
    rows.append(("  CPU ms per NEED: tracker(s)", fmt(cpu_ms(r["cpu_need"], "tracker", r["need_rate"]), 3), ""))
    rows.extend(cpu_rows("  CPU % during them:", r["cpu_need"], r["pins"]))
    s = r.get("stall")
    if s is not None:
        rows.append(("liveness check every, s", fmt(s["interval"], 2), ""))
        rows.append(("  heartbeats/s meanwhile", fmt(s["hb"]["rate"]), ""))
        if "stall_ms" in s:
            detail = "" if len(s["stall_each_ms"]) == 1 else f" ({' / '.join(fmt(x) for x in s['stall_each_ms'])})"
            rows.append((f"  stall dropping {s['silent']:,} nodes, ms", fmt(s["stall_ms"]) + detail,
                         f"<= {TARGET_STALL_MS:.0f} ms"))
            rows.append(("  probe p99 away from the check, ms", fmt(s["away_p99_ms"]), ""))
            if "reactor_each_ms" in s:
                rows.append(("  reactor's own delay then (a 404), ms", " / ".join(fmt(x) for x in s["reactor_each_ms"]),
                             ""))
        else:
            rows.append((f"  stall dropping {s['silent']:,} nodes, ms", f"NOT SEEN (nodes {s['final_nodes']:,})",
                         f"<= {TARGET_STALL_MS:.0f} ms"))
        rows.append(("  worst probe over the run, ms", fmt(s["worst_ms"]), ""))
        rows.append(("restart (load N back), s", fmt(r["restart_s"], 2), ""))
    rows.append(("clean stop (SIGTERM), s", fmt(r["stop_s"], 2), ""))
    rows.append(("RSS joined, MiB", each(r["rss_joined"]), ""))
    rows.append(("RSS loaded, MiB", each(r["rss_loaded"]), ""))
    rows.append(("RSS end, MiB", each(r.get("rss_end", [float("nan")])), ""))
    if "redis_rss" in r:
        rows.append(("redis-server RSS end, MiB", fmt(r["redis_rss"]), ""))
    disk = {"sqlite": "tracker.db+wal", "json": "nodes+files.json", "redis": "AOF"}[r["store"]]
    rows.append(("store on disk, MiB", f"{fmt(r['db_mib'], 2)} {disk}", ""))
    return rows


def cpu_ms(cpu: dict[str, float], prefix: str, rate: float) -> float:
    """CPU milliseconds per request of the processes named *prefix*... (their CPU % summed, over *rate*)."""
    used = sum(v for k, v in cpu.items() if k.startswith(prefix))
    return 10 * used / rate if rate else float("nan")


def cpu_rows(title: str, cpu: dict[str, float], pins: dict[str, int | None]) -> list[tuple[str, str, str]]:
    """The CPU of each process, and of each core, as rows; the server side first."""
    trackers = [v for k, v in cpu.items() if k.startswith("tracker")]
    cores = [v for k, v in sorted(cpu.items()) if k.startswith("cpu")]
    rows = [(title + " tracker(s)", each(trackers, 0), "")]
    if "redis-server" in cpu:
        rows.append(("    redis-server", fmt(cpu["redis-server"], 0), ""))
    rows.append(("    load generator", fmt(cpu["load generator"], 0), ""))
    rows.append(("    cores busy", " / ".join(fmt(v, 0) for v in cores), ""))
    rows.append(("    anything else (cores - these)", fmt(others(cpu), 0), "other work on the machine"))
    rows.append(("    bound", bound(cpu, pins), ""))
    return rows


def others(cpu: dict[str, float]) -> float:
    """CPU % the cores spent on anything but the processes watched (other work on a shared machine)."""
    return sum(v for k, v in cpu.items() if k.startswith("cpu")) - sum(v for k, v in cpu.items() if not k.startswith("cpu"))


def bound(cpu: dict[str, float], pins: dict[str, int | None]) -> str:
    """A reading of the CPU figures: what limited the rate (a process near 100% of its core, a tracker's or the
    load generator's core busy with other work too, or every core busy)."""
    cores = [v for k, v in cpu.items() if k.startswith("cpu")]
    procs = {k: v for k, v in cpu.items() if not k.startswith("cpu")}
    busiest, most = max(procs.items(), key=lambda kv: kv[1])
    starved = [f"{k.split()[-1] if k.startswith('tracker ') else k} {v:.0f}% of cpu{pins.get(k)} {cpu.get(f'cpu{pins.get(k)}', 0):.0f}%"
               for k, v in procs.items() if (k.startswith("tracker") or k == "load generator") and v < 85
               and pins.get(k) is not None
               and cpu.get(f"cpu{pins.get(k)}", 0) >= 90]
    if starved and most < 85:
        return "shared: " + ", ".join(starved)
    if cores and min(cores) >= 90:
        if others(cpu) >= 30:
            return f"all cores, {others(cpu):.0f}% on other work"
        return f"all cores ({busiest} {most:.0f}%)"
    if most >= 85:
        return busiest
    return f"latency ({busiest} {most:.0f}%)"


def keyed(rows: list[tuple[str, str, str]]) -> list[tuple[tuple[str, str], str, str, str]]:
    """((section, figure), figure, value, target): an indented figure belongs to the last one that is not, so that
    'bound' under heartbeats/s and under NEED/s are two rows."""
    out = []
    section = ""
    for figure, value, target in rows:
        if not figure.startswith(" "):
            section = figure
        out.append(((section, figure), figure, value, target))
    return out


def print_table(results: list[dict[str, Any]], columns: Sequence[str]) -> None:
    """One table: the stores side by side (a column each), population after population, the targets beside."""
    titles = [VARIANTS[c].title for c in columns]
    table: list[tuple[str, ...]] = [("nodes", "figure", *titles, "target")]
    sizes = list(dict.fromkeys(r["n"] for r in results))
    breaks = []
    for n in sizes:
        runs = [r for r in results if r["n"] == n]
        here = {r["variant"]: {k: v for k, _, v, _ in keyed(rows_for(r))} for r in runs}
        # Every run's figures in one order: a figure only some runs have goes after the one before it in theirs.
        order: list[tuple[str, str]] = []
        label: dict[tuple[str, str], tuple[str, str]] = {}
        for r in runs:
            previous: tuple[str, str] | None = None
            for key, figure, _, target in keyed(rows_for(r)):
                if key not in label:
                    order.insert(order.index(previous) + 1 if previous is not None else len(order), key)
                    label[key] = (figure, target)
                elif target and not label[key][1]:
                    label[key] = (figure, target)
                previous = key
        breaks.append(len(table))
        for key in order:
            figure, target = label[key]
            table.append((f"{n:,}", figure, *(here[c].get(key, "-") if c in here else "" for c in columns), target))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    last = len(widths) - 1
    for k, row in enumerate(table):
        if k in breaks[1:]:
            print()
        print("  ".join(cell.ljust(w) if i in (0, 1, last) else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))


def two_trackers(results: list[dict[str, Any]]) -> list[str]:
    """For each two-tracker run: its combined rates against the one-tracker run, and where the CPU went."""
    lines = []
    for r in results:
        if "vs_one" not in r:
            continue
        lines.append("")
        lines.append(f"{r['title']} at {r['n']:,} nodes, against one tracker on the same Redis setup: "
                     f"heartbeats/s x{r['vs_one']['hb']:.2f}, NEED/s x{r['vs_one']['need']:.2f}")
        for phase, cpu in (("heartbeats", r["cpu_hb"]), ("NEEDs", r["cpu_need"])):
            procs = ", ".join(f"{k} {v:.0f}%" for k, v in cpu.items() if not k.startswith("cpu"))
            cores = ", ".join(f"{k} {v:.0f}%" for k, v in cpu.items() if k.startswith("cpu"))
            lines.append(f"  CPU during the {phase}: {procs}; busy {cores}; other work {others(cpu):.0f}%;"
                         f" bound: {bound(cpu, r['pins'])}")
        lines.append(f"  pinning: {r['pinning']}")
    return lines


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"populations {','.join(map(str, QUICK_NODES))}")
    parser.add_argument("--nodes", default=None, help=f"comma list of populations (default {','.join(map(str, DEFAULT_NODES))})")
    parser.add_argument("--stores", default=",".join(DEFAULT_STORES),
                        help=f"comma list of {', '.join(v for v in VARIANTS if v != 'json')} (default {','.join(DEFAULT_STORES)})")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of each load phase (default 10)")
    parser.add_argument("--probes", type=int, default=300, help="join/OWN/NEED/UPDATE/EXIT cycles at most (default 300)")
    parser.add_argument("--seq-seconds", type=float, default=120.0, help="cap on admitting one by one (default 120)")
    parser.add_argument("--min-interval", type=float, default=2.0, help="shortest liveness interval (default 2 s)")
    parser.add_argument("--max-interval", type=float, default=120.0, help="longest liveness interval (default 120 s)")
    parser.add_argument("--files-ratio", type=float, default=0.1,
                        help="files in the catalogue per node (default 0.1: nodes 0..N/10-1 own one file each)")
    parser.add_argument("--no-json", action="store_true", help="skip the --store json comparison")
    parser.add_argument("--json-nodes", type=int, default=JSON_NODES, help=f"population of the json run (default {JSON_NODES})")
    parser.add_argument("--no-stall", action="store_true", help="skip the liveness-check phase")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (databases, logs)")
    parser.add_argument("--workdir", type=Path, default=None, help="make the work folder inside this one (default: /tmp)")
    parser.add_argument("--save", type=Path, default=None, help="also write every figure to this JSON file")
    parser.add_argument("--bep", action="store_true",
                        help="only the BitTorrent phase: BEP 3 announces over HTTP, BEP 15 over UDP (when offered)")
    parser.add_argument("--bep-peers", type=int, default=BEP_PEERS, help=f"BitTorrent peers loaded (default {BEP_PEERS})")
    parser.add_argument("--bep-swarms", type=int, default=BEP_SWARMS, help=f"swarms they are in (default {BEP_SWARMS})")
    parser.add_argument("--serve-trivial", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_trivial is not None:
        serve_trivial(args.serve_trivial)
        return 0
    if args.bep:
        if args.bep_swarms < 1 or args.bep_peers < args.bep_swarms or args.seconds <= 0:
            parser.error("--bep-swarms at least 1, --bep-peers at least as many, --seconds above 0")
        return main_bep(args, argv)
    try:
        sizes = [int(x) for x in (args.nodes or ",".join(map(str, QUICK_NODES if args.quick else DEFAULT_NODES))).split(",")]
    except ValueError:
        parser.error("--nodes takes a comma list of integers")
    if any(s < 10 for s in sizes) or args.seconds <= 0:
        parser.error("populations of at least 10 nodes, --seconds above 0")
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    unknown = [s for s in stores if s not in VARIANTS]
    if unknown or not stores:
        parser.error(f"--stores: unknown {', '.join(unknown) or '(none given)'}; choose among {', '.join(VARIANTS)}")
    if any(VARIANTS[s].store == "redis" for s in stores) and not (shutil.which("redis-server") or Path("/usr/bin/redis-server").exists()):
        parser.error("the Redis stores need redis-server (Debian: apt-get install redis-server)")

    cpus = sorted(os.sched_getaffinity(0))
    # A SIGTERM or SIGHUP ends the run through the finally below, as Ctrl-C does.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    work = Path(tempfile.mkdtemp(prefix="trkbench-", dir=args.workdir))
    procs = Procs(work)
    results: list[dict[str, Any]] = []
    status = 0
    print(f"tracker benchmark: populations {sizes}, stores {stores}, {load_line()}", flush=True)
    try:
        plan = [(n, s) for n in sizes for s in stores]
        if not args.no_json and "json" not in stores:
            plan.insert(0, (args.json_nodes, "json"))
        for n, name in plan:
            variant = VARIANTS[name]
            # The two-tracker run is compared with the one-tracker Redis run of the same population and fsync.
            one = next((r for r in results if r["n"] == n and r["store"] == "redis" and r["trackers"] == 1
                        and VARIANTS[r["variant"]].fsync == variant.fsync), None) if variant.trackers > 1 else None
            try:
                results.append(run_variant(n, variant, args, work, procs, cpus, one))
            except Exception as e:
                status = 1
                print(f"[{variant.title} {n}] FAILED: {type(e).__name__}: {e}", flush=True)
                procs.stop()
        print()
        print(f"Tracker benchmark: {' '.join(sys.argv[1:] if argv is None else argv) or '(defaults)'}; "
              f"{load_line()} at the end")
        for name in dict.fromkeys(r["variant"] for r in results):
            r = next(x for x in results if x["variant"] == name)
            print(f"  {r['title']}: {r['pinning']}")
        columns = [v for v in VARIANTS if any(r["variant"] == v for r in results)]
        print_table(results, columns)
        for line in two_trackers(results):
            print(line)
        if args.save is not None:
            args.save.write_text(json.dumps({"argv": list(sys.argv[1:] if argv is None else argv), "results": results},
                                            indent=1, default=str))
    finally:
        end_run(procs, work, args.keep)
    return status


def end_run(procs: Procs, work: Path, keep: bool) -> None:
    """Every process this run started stopped; its work folder removed unless --keep."""
    procs.stop()
    if keep:
        print(f"work folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def main_bep(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    """--bep: the BitTorrent phase alone, its table, --save."""
    cpus = sorted(os.sched_getaffinity(0))
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    work = Path(tempfile.mkdtemp(prefix="trkbench-", dir=args.workdir))
    procs = Procs(work)
    status = 0
    command = " ".join(sys.argv[1:] if argv is None else argv)
    print(f"tracker benchmark, BitTorrent clients: {args.bep_peers:,} peers in {args.bep_swarms:,} swarms, "
          f"{load_line()}", flush=True)
    try:
        try:
            r = run_bep(args, work, procs, cpus)
        except Exception as e:
            print(f"[bep {args.bep_peers}] FAILED: {type(e).__name__}: {e}", flush=True)
            return 1
        print()
        print(f"Tracker benchmark: {command}; {load_line()} at the end")
        print(f"  {r['pinning']}; announces each a random peer of the population (so a random swarm and peer id), "
              f"compact=1, numwant={BEP_NUMWANT}, left random; {r['seconds']:g} s each")
        print_rows(bep_rows(r))
        if args.save is not None:
            args.save.write_text(json.dumps({"argv": command.split(), "bep": r}, indent=1, default=str))
    finally:
        end_run(procs, work, args.keep)
    return status


if __name__ == "__main__":
    sys.exit(main())
