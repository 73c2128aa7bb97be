"""The tracker under load: a real `twistd -n p2ptracker` on 127.0.0.1, populations of 1k to 100k nodes.

    python benchmarks/tracker.py --quick            # 1000 and 10000 nodes, plus the JSON store at 1000
    python benchmarks/tracker.py                    # 1000, 10000 and 100000 nodes
    python benchmarks/tracker.py --nodes 200 --seconds 1 --no-json     # the smoke test

Issue 13, item 7.  For each population N, a fresh tracker (`--store sqlite`, or
`--store json` for the comparison run) is started on core 0 (when there are
two cores; this load generator runs on the other one) with
TRACKER_MAX_NODES_PER_HOST raised (`--set`, every client is 127.0.0.1) and no
liveness check during phases 1 to 3 (`--tracker-interval 86400`: nodes that
only joined would be dropped while 100k join one by one), and:

1. admit: N REGISTERs one by one on one keep-alive connection (each waits for
   its answer, so for the commit holding its join), capped at --seq-seconds:
   when capped, the rate and the extrapolation to N are printed, labelled so,
   and the rest of the population joins over 64 connections (that rate too).
2. latency under heartbeat load: heartbeats of every node at N /
   NODE_TIME_INTERVAL per second (paced, 32 connections) for --seconds, while
   two probe connections run cycles of join, OWN, NEED (a file with 50
   owners), UPDATE, EXIT of fresh nodes (at most --probes cycles): p50/p99 of
   each.
3. throughput at 64 connections, closed loop for --seconds each: heartbeats/s
   and NEED/s against the tracker, and the same POST against a trivial Klein
   app (a route answering a small JSON, `--serve-trivial`, run the same way in
   its own process on the same core, just after): the ratio.
4. the longest stall around a liveness check that drops 10% of the nodes: the
   tracker is stopped cleanly (SIGTERM) and started again on the same folder
   with `--tracker-interval T --set TRACKER_MISSED_CHECKS=1` (T sized so that
   the heartbeats of the other 90% take about half the measured heartbeat
   throughput); the 90% keep heartbeating, the 10% are silent, and `GET /` is
   sent every 5 ms on its own connection.  The worst answer time within a
   second of the drop (seen as the node count falling in those answers) is the
   stall seen from outside; the p99 of the probe away from the drop is beside it.
5. RSS of the tracker (psutil) after the joins and at the end, tracker.db size
   (with its -wal), the restart time (loading N nodes back).

Every load is bounded in count and time, on loopback only.  The processes run
in their own session with PR_SET_PDEATHSIG, so they die with this script even
when it is SIGKILLed; the work folder is removed on every exit but a SIGKILL.
Figures depend on the machine and whatever else runs on it: the load average is
printed with them.

Exit status: 0 every phase ran (targets missed or not), 1 a phase failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from p2ptorrent.procs import find_script, free_port  # noqa: E402

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

    async def call(self, body: bytes | None = None) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        self.writer.write(GET_REQ if body is None else POST_HEAD % len(body) + body)
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


async def conns(port: int, n: int) -> list[Conn]:
    return [await Conn(port).open() for _ in range(n)]


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


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


class Procs:
    """The processes this script started; :meth:`stop` ends them (SIGTERM, then SIGKILL)."""

    def __init__(self, root: Path, cpu: int | None) -> None:
        self.root = root
        self.cpu = cpu
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with open(self.root / f"{name}.out", "ab") as out:
            proc = subprocess.Popen(argv, cwd=self.root, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    preexec_fn=_child_setup(self.cpu))
        self.procs.append(proc)
        return proc

    def wait_listening(self, proc: subprocess.Popen[bytes], port: int, name: str) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < START_TIMEOUT:
            if proc.poll() is not None:
                tail = (self.root / f"{name}.out").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} ended with status {proc.returncode}:\n{tail}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return time.monotonic() - t0
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"{name} did not listen on {port} within {START_TIMEOUT:.0f} s")

    def end(self, proc: subprocess.Popen[bytes], grace: float = 60.0) -> float:
        """SIGTERM (a clean stop: the last commit and the snapshots), SIGKILL after *grace*; seconds taken."""
        t0 = time.monotonic()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
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


def db_mib(folder: Path, store: str) -> float:
    names = ("tracker.db", "tracker.db-wal") if store == "sqlite" else ("nodes.json", "files.json")
    return sum((folder / "db" / n).stat().st_size for n in names if (folder / "db" / n).exists()) / 2**20


def rss_mib(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


# ---- phases (each one asyncio.run)

async def admit(port: int, n: int, seq_seconds: float) -> dict[str, Any]:
    """REGISTER 0..n-1 one by one on one connection (capped in time), the rest over CONNS connections."""
    out: dict[str, Any] = {}
    c = await Conn(port).open()
    t0 = time.perf_counter()
    done = 0
    while done < n and time.perf_counter() - t0 < seq_seconds:
        await c.ok(register(done))
        done += 1
    seq = time.perf_counter() - t0
    c.close()
    out["seq_done"], out["seq_s"] = done, seq
    out["seq_rate"] = done / seq if seq > 0 else float("nan")
    if done < n:
        rest = iter(range(done, n))
        cs = await conns(port, CONNS)

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


async def paced(port: int, ids: Sequence[int], rate: float, stop: asyncio.Event, nconns: int = HB_CONNS) -> dict[str, Any]:
    """Heartbeats of *ids* in turn at *rate* per second over *nconns* connections until *stop* (open loop, paced)."""
    nconns = max(1, min(nconns, len(ids)))
    cs = await conns(port, nconns)
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


async def latency(port: int, n: int, seconds: float, probes: int) -> dict[str, Any]:
    """join, OWN, NEED, UPDATE, EXIT cycles of fresh nodes on PROBE_CONNS connections, under paced heartbeats."""
    stop = asyncio.Event()
    hb = asyncio.ensure_future(paced(port, range(n), n / NODE_TIME_INTERVAL, stop))
    lat: dict[str, list[float]] = {k: [] for k in ("join", "OWN", "NEED", "UPDATE", "EXIT")}
    cs = await conns(port, PROBE_CONNS)
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
    return {"lat": lat, "hb": heartbeats, "hb_target": n / NODE_TIME_INTERVAL}


async def closed_loop(port: int, make: Callable[[int], bytes], seconds: float, nconns: int = CONNS) -> float:
    """Requests per second over *nconns* connections, each sending its next request as soon as answered."""
    cs = await conns(port, nconns)
    count = [0]
    t0 = time.perf_counter()

    async def worker(k: int, c: Conn) -> None:
        i = k
        while time.perf_counter() - t0 < seconds:
            await c.ok(make(i))
            count[0] += 1
            i += nconns

    await asyncio.gather(*(worker(k, c) for k, c in enumerate(cs)))
    elapsed = time.perf_counter() - t0
    for c in cs:
        c.close()
    return count[0] / elapsed


async def setup_owners(port: int, n: int, files: int) -> float:
    """OWNERS owners of H_NEED; then nodes 0..files-1 own one file each (over CONNS connections): seconds taken."""
    c = await Conn(port).open()
    for i in range(min(OWNERS, n)):
        await c.ok(own(i, H_NEED))
    c.close()
    todo = iter(range(files))
    cs = await conns(port, CONNS)

    async def worker(conn: Conn) -> None:
        for i in todo:
            await conn.ok(own(i, f"{i + 1:040x}"))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(x) for x in cs))
    for x in cs:
        x.close()
    return time.perf_counter() - t0


async def stall(port: int, n: int, interval: float) -> dict[str, Any]:
    """Heartbeats of 90% of the nodes, 10% silent, GET / every 5 ms until the 10% are dropped (or 3 intervals)."""
    active = [i for i in range(n) if i % 10 != 9]
    silent = n - len(active)
    stop = asyncio.Event()
    hb = asyncio.ensure_future(paced(port, active, 1.2 * len(active) / interval, stop))
    probe = await Conn(port).open()
    samples: list[tuple[float, float, int]] = []  # (sent at, seconds, nodes)
    t0 = time.perf_counter()
    dropped_at: float | None = None
    try:
        while time.perf_counter() - t0 < 3 * interval + 10:
            s = time.perf_counter()
            nodes = int(json.loads(await probe.ok())["nodes"])
            e = time.perf_counter()
            samples.append((s, e - s, nodes))
            if dropped_at is None and nodes <= n - silent:
                dropped_at = s
            if dropped_at is not None and s - dropped_at > 1.0:
                break
            await asyncio.sleep(max(0.0, 0.005 - (time.perf_counter() - s)))
    finally:
        stop.set()
        heartbeats = await hb
        probe.close()
    out: dict[str, Any] = {"interval": interval, "hb": heartbeats, "silent": silent, "probes": len(samples),
                           "worst_ms": 1000 * max(d for _, d, _ in samples), "final_nodes": samples[-1][2]}
    if dropped_at is not None:
        near = [d for s, d, _ in samples if abs(s - dropped_at) <= 1.0]
        away = [d for s, d, _ in samples if abs(s - dropped_at) > 1.0]
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
    reactor.listenTCP(port, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


# ---- one population

def run_population(n: int, store: str, args: argparse.Namespace, work: Path, procs: Procs) -> dict[str, Any]:
    folder = work / f"{store}-{n}"
    folder.mkdir()
    port = free_port()
    res: dict[str, Any] = {"store": store, "n": n}
    # No liveness check while the population is built and measured: joining 100k nodes one by one takes minutes,
    # and nodes that only joined would be dropped after 44 to 66 s.  Phase 4 restarts it with a short interval.
    tracker = procs.start(f"tracker-{store}-{n}", tracker_argv(port, folder, store, ["--tracker-interval", "86400"]))
    procs.wait_listening(tracker, port, f"tracker-{store}-{n}")
    res["pid"] = tracker.pid
    print(f"[{store} {n}] tracker pid {tracker.pid} on port {port}: admitting", flush=True)
    res["admit"] = asyncio.run(admit(port, n, args.seq_seconds))
    res["rss_joined"] = rss_mib(tracker.pid)
    res["files"] = files = min(n, int(round(args.files_ratio * n)))
    res["files_s"] = asyncio.run(setup_owners(port, n, files))
    print(f"[{store} {n}] latency under heartbeats", flush=True)
    res["latency"] = asyncio.run(latency(port, n, args.seconds, args.probes))
    print(f"[{store} {n}] throughput", flush=True)
    res["hb_rate"] = asyncio.run(closed_loop(port, lambda i: register(i % n), args.seconds))
    res["need_rate"] = asyncio.run(closed_loop(port, lambda i: need(OWNERS + i % max(1, n - OWNERS), H_NEED), args.seconds))
    res["rss_loaded"] = rss_mib(tracker.pid)
    res["stop_s"] = procs.end(tracker)
    res["trivial"] = trivial_rate(procs, args.seconds)  # just after, so the same machine load
    res["db_mib"] = db_mib(folder, store)
    if args.no_stall:
        return res
    # The liveness check: restart on the same folder with a short interval and one missed check.
    interval = max(args.min_interval, min(args.max_interval, 0.9 * n * 1.2 / max(1.0, 0.5 * res["hb_rate"])))
    port = free_port()
    name = f"tracker-{store}-{n}-stall"
    tracker = procs.start(name, tracker_argv(port, folder, store, [
        "--tracker-interval", f"{interval:g}", "--set", "TRACKER_MISSED_CHECKS=1"]))
    res["restart_s"] = procs.wait_listening(tracker, port, name)
    print(f"[{store} {n}] liveness check every {interval:g} s (restart took {res['restart_s']:.1f} s)", flush=True)
    res["stall"] = asyncio.run(stall(port, n, interval))
    res["rss_end"] = rss_mib(tracker.pid)
    procs.end(tracker)
    return res


def trivial_rate(procs: Procs, seconds: float) -> float:
    """Requests/s of the trivial Klein app at CONNS connections (the same POSTs as the heartbeats), started afresh."""
    port = free_port()
    proc = procs.start("trivial", [sys.executable, str(Path(__file__).resolve()), "--serve-trivial", str(port)])
    try:
        procs.wait_listening(proc, port, "trivial")
        return asyncio.run(closed_loop(port, register, seconds))
    finally:
        procs.end(proc)


# ---- the table

def fmt(x: Any, digits: int = 1) -> str:
    if isinstance(x, float):
        return "n/a" if x != x else f"{x:,.{digits}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def rows_for(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    trivial = r["trivial"]
    n = r["n"]
    big = n >= 100000
    a = r["admit"]
    rows: list[tuple[str, str, str]] = []
    target_admit = f"<= {TARGET_ADMIT_100K_S:.0f} s at 100k" if big else f"(100k <= {TARGET_ADMIT_100K_S:.0f} s)"
    if a["seq_done"] == n:
        rows.append(("admit one by one, s", fmt(a["seq_s"]), target_admit))
    else:
        rows.append((f"admit one by one: capped, {a['seq_done']:,} in", fmt(a["seq_s"]) + " s", ""))
        rows.append(("  rate, joins/s", fmt(a["seq_rate"]), ""))
        rows.append(("  EXTRAPOLATED to all N, s", fmt(n / a["seq_rate"] if a["seq_rate"] else float("nan")), target_admit))
        rows.append((f"  rest over {CONNS} conns, joins/s", fmt(a["par_done"] / a["par_s"]), ""))
    if r["files"]:
        rows.append((f"files owned ({r['files']:,}, one owner each), OWN/s", fmt(r["files"] / r["files_s"]), ""))
    lat = r["latency"]
    hb = lat["hb"]
    rows.append(("heartbeats during latency, /s", f"{fmt(hb['rate'])} of {fmt(lat['hb_target'])} asked", "N/20 per s"))
    rows.append(("  heartbeat p50 / p99, ms", f"{fmt(1000 * hb['p50'], 2)} / {fmt(1000 * hb['p99'], 2)}", ""))
    for kind, values in lat["lat"].items():
        target = f"p99 <= {TARGET_P99_MS:.0f} ms at 100k" if kind != "NEED" else ""
        rows.append((f"{kind} p50 / p99, ms ({len(values)})",
                     f"{fmt(1000 * pct(values, 50), 2)} / {fmt(1000 * pct(values, 99), 2)}", target))
    rows.append((f"heartbeats/s at {CONNS} conns", fmt(r["hb_rate"], 0), ""))
    rows.append(("  trivial Klein app just after, req/s", fmt(trivial, 0), ""))
    ratio = r["hb_rate"] / trivial if trivial else float("nan")
    rows.append(("  / trivial Klein app", f"{fmt(ratio, 2)}x", f">= {TARGET_RATIO}x (was 0.44x)"))
    rows.append((f"NEED/s at {CONNS} conns ({OWNERS} owners)", fmt(r["need_rate"], 0), ""))
    rows.append(("  / trivial Klein app", f"{fmt(r['need_rate'] / trivial if trivial else float('nan'), 2)}x", ""))
    s = r.get("stall")
    if s is not None:
        rows.append((f"liveness check every {s['interval']:g} s: heartbeats/s", fmt(s["hb"]["rate"]), ""))
        if "stall_ms" in s:
            rows.append((f"  stall dropping {s['silent']:,} nodes, ms", fmt(s["stall_ms"]), f"<= {TARGET_STALL_MS:.0f} ms"))
            rows.append(("  probe p99 away from the check, ms", fmt(s["away_p99_ms"]), ""))
        else:
            rows.append(("  stall: the drop was NOT seen", f"nodes {s['final_nodes']:,}", f"<= {TARGET_STALL_MS:.0f} ms"))
        rows.append(("  worst probe over the run, ms", fmt(s["worst_ms"]), ""))
        rows.append(("restart (load N back), s", fmt(r["restart_s"], 2), ""))
    rows.append(("clean stop (SIGTERM), s", fmt(r["stop_s"], 2), ""))
    rows.append(("RSS joined / loaded / end, MiB",
                 f"{fmt(r['rss_joined'])} / {fmt(r['rss_loaded'])} / {fmt(r.get('rss_end', float('nan')))}", ""))
    rows.append(("tracker.db (+wal), MiB" if r["store"] == "sqlite" else "nodes.json + files.json, MiB",
                 fmt(r["db_mib"], 2), ""))
    return rows


def print_table(results: list[dict[str, Any]]) -> None:
    table = [("store", "nodes", "figure", "measured", "target")]
    for r in results:
        for figure, value, target in rows_for(r):
            table.append((r["store"], f"{r['n']:,}", figure, value, target))
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for k, row in enumerate(table):
        print("  ".join(cell.ljust(w) if i in (0, 2, 4) else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"populations {','.join(map(str, QUICK_NODES))}")
    parser.add_argument("--nodes", default=None, help=f"comma list of populations (default {','.join(map(str, DEFAULT_NODES))})")
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
    parser.add_argument("--serve-trivial", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_trivial is not None:
        serve_trivial(args.serve_trivial)
        return 0
    try:
        sizes = [int(x) for x in (args.nodes or ",".join(map(str, QUICK_NODES if args.quick else DEFAULT_NODES))).split(",")]
    except ValueError:
        parser.error("--nodes takes a comma list of integers")
    if any(s < 10 for s in sizes) or args.seconds <= 0:
        parser.error("populations of at least 10 nodes, --seconds above 0")

    cpus = sorted(os.sched_getaffinity(0))
    server_cpu = cpus[0] if len(cpus) >= 2 else None
    if server_cpu is not None:
        os.sched_setaffinity(0, {cpus[1]})
    # A SIGTERM or SIGHUP ends the run through the finally below, as Ctrl-C does.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    work = Path(tempfile.mkdtemp(prefix="trkbench-", dir=args.workdir))
    procs = Procs(work, server_cpu)
    results: list[dict[str, Any]] = []
    status = 0
    print(f"tracker benchmark: populations {sizes}, {load_line()}, "
          f"tracker on cpu {server_cpu}, load generator on cpu {cpus[1] if server_cpu is not None else 'any'}", flush=True)
    try:
        plan = [(n, "sqlite") for n in sizes]
        if not args.no_json:
            plan.insert(0, (args.json_nodes, "json"))
        for n, store in plan:
            try:
                results.append(run_population(n, store, args, work, procs))
            except Exception as e:
                status = 1
                print(f"[{store} {n}] FAILED: {type(e).__name__}: {e}", flush=True)
                procs.stop()
        print()
        print(f"Tracker benchmark: {' '.join(sys.argv[1:]) or '(defaults)'}; {load_line()} at the end")
        print_table(results)
    finally:
        procs.stop()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
