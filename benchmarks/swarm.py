"""p2ptorrent beside libtorrent on 127.0.0.1: one command, real processes, every copy verified.

    python benchmarks/swarm.py --quick                  # 64 MiB, 1->1 and 3->1, one run each (the CI smoke test)
    python benchmarks/swarm.py                          # everything, 3 runs each, medians (takes a while)
    python benchmarks/swarm.py --scenarios 1-1 --sizes 512 --reps 5 --markdown results.md
    python benchmarks/swarm.py --scenarios mem --impls p2ptorrent,lt-default
    python benchmarks/swarm.py --scenarios 1-8 --swarm-size 32 --reps 1 --impls p2ptorrent,lt-tcp

Scenarios (--scenarios, default all: 1-1,3-1,1-4,1-8,mem): 1-1 one seeder to
one node, 3-1 three seeders to one node, 1-4 one seeder to four nodes, each at
every --sizes (default 64 and 512 MiB); 1-8 one seeder to eight nodes, all
started together, at --swarm-size (default 128 MiB, whatever --sizes says):
swarming, most of the file has to flow between the nodes; mem: 1-1 at every
--mem-sizes, for the memory table.  --quick runs 1-1 and 3-1 only.

What one run does
-----------------
A file of random bytes of each size is made once, in a temporary folder.  Each
run then starts afresh in its own folder:

* p2ptorrent: `twistd -n p2ptracker` and S seeders plus L downloading nodes
  (`twistd -n p2pnode`, all on 127.0.0.1, each its own process, all with
  CHUNK_PIECES_SIZE = chunk and BUFFER_SIZE = chunk + 32); every seeder `send`s
  the file (hard links of the one file); then `p2ptorrent --node N download`
  is started for every downloading node at once, in parallel subprocesses.
  Wall seconds run from starting those commands until the last one returned
  (the commands' own start-up included: about a quarter of a second here;
  "node s" is the slowest node's own figure without it).  The nodes find each
  other through the tracker (a node still downloading is a partial owner there
  and serves the pieces it has), with the default settings (MAX_PARTIAL_PEERS
  8, UPLOAD_SLOTS 4): nothing in this harness differs between scenarios.
* libtorrent (the PyPI package `libtorrent`, `benchmarks/lt_peer.py`, one
  process per peer): S seeders and L leechers start a session each on
  127.0.0.1 (DHT, LSD, UPnP, NAT-PMP off, several connections per IP allowed,
  no rate limits), the torrent added (seeders check their file first, as
  p2ptorrent's `send` hashes it) with the same piece length p2ptorrent picks; then every leecher is told at once to connect to
  every seeder and to the leechers before it (what a tracker would tell it), so
  that every two leechers are connected, in 1-4 as well: libtorrent's leechers
  know each other as p2ptorrent's do through the tracker.  In 1-8 every leecher
  is told of every seeder and of every other leecher (connect_peer to all of
  them, both ways), so libtorrent swarms too.
  Wall seconds run from that order until the last leecher's torrent finished
  (every piece written and checked).  No tracker: nothing to wait for.
  Modes: `lt-default` (libtorrent's defaults, TCP and uTP enabled: on loopback
  libtorrent connects over uTP first, and it stays there), `lt-utp` (TCP off),
  `lt-tcp` (uTP off: the TCP reference).

The SHA-256 of every copy is then checked against the original (not timed).
Runs of the implementations are interleaved run by run (p2ptorrent, libtorrent,
p2ptorrent, ...), so a noisy machine disturbs both alike.

Figures, per run
----------------
wall s; MB/s = bytes delivered to all nodes / wall s (1 MB = 1e6 bytes); CPU
seconds of each process during the transfer (utime + stime, from just before
the downloads started to when the last one ended); peak RSS of each process
(VmHWM, read at the end); bytes each seeder uploaded (p2ptorrent: `status`
JSON seeding[].uploaded; libtorrent: total_payload_upload), also in multiples
of the file size ("seeder upload x file": 1.00 means the seeder sent the file
once, the nodes passed on everything else), and bytes each downloading node
uploaded, to the other nodes (the same figures, read after every download
completed; in 1-8 printed under each run and in an uploads table); datagrams sent
(p2ptorrent: `status` JSON datagrams.sent; libtorrent: its uTP packets out, n/a
over TCP); resent (p2ptorrent: blocks asked again, from each node's completion
line in logs/node_N.log; libtorrent: uTP packets resent, summed over all peers;
n/a over TCP); "cpu s cmd": CPU of the `p2ptorrent download` commands
themselves; "other cpu s": busy CPU seconds of the whole machine during the
transfer beyond all of the above (other programs, this harness, kernel work
charged to no process): well above zero means a disturbed run.  Then the medians of each figure (per process) for every
scenario, each p2ptorrent figure beside libtorrent's and as a ratio
p2ptorrent / libtorrent, and a memory table.  In 1-8, wall s is until all eight
nodes hold the verified file, MB/s is 8 x the size / wall s (aggregate goodput),
and the summary adds the seeder's upload in file sizes, with its ratio
p2ptorrent / libtorrent (below 1: p2ptorrent's seeder sent less).

The same runs on separate hosts with packet loss: benchmarks/lab.py (it reuses these runs and
tables through a Placement: where each process runs and which address it binds).

Exit status: 0 every run completed and every copy was identical; 1 otherwise;
2 bad usage or libtorrent missing (pip install -e '.[bench]').
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import platform
import queue
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # loopback.py's /proc readers

from loopback import BLOCK_OVERHEAD, CLK_TCK, DEFAULT_CHUNK, cpu_seconds, peak_rss_mib  # noqa: E402

from p2ptorrent.metainfo import auto_piece_length, read_torrent  # noqa: E402
from p2ptorrent.config import IPV4_MAX_UDP_PAYLOAD, MIB  # noqa: E402
from p2ptorrent.procs import Daemons, free_port, sha256, tcp_listening, wait_for  # noqa: E402

LT_PEER = HERE / "lt_peer.py"
P2P = "p2ptorrent"
LT_MODES = ("lt-default", "lt-utp", "lt-tcp")
IMPLS = (P2P, *LT_MODES)
BEST_CHUNK = 60000
#: Startup and wind-down limits (seconds); the transfer's own limit depends on the size (see Plan.transfer_timeout).
START_TIMEOUT = 60.0
STOP_GRACE = 10.0


# ---------------------------------------------------------------------------------------------- what to run

@dataclass(frozen=True)
class Scenario:
    seeders: int
    nodes: int
    #: A swarming scenario: its own file size (--swarm-size, not --sizes); libtorrent leechers are told of
    #: every other leecher (both ways); the uploads of every node are printed after each run.
    swarm: bool = False
    #: Probability of losing each IP packet (the lab benchmark's hosts; always 0 on loopback).
    loss: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.seeders}->{self.nodes}" + (f" {self.loss * 100:g}%" if self.loss else "")


SCENARIOS = {"1-1": Scenario(1, 1), "3-1": Scenario(3, 1), "1-4": Scenario(1, 4), "1-8": Scenario(1, 8, swarm=True)}
DEFAULT_SCENARIOS = "1-1,3-1,1-4,1-8,mem"
#: The swarming scenarios' file size in MiB unless --swarm-size says otherwise.
SWARM_SIZE = 128


@dataclass(frozen=True)
class Job:
    """One implementation in one setting: p2ptorrent with a chunk size, or a libtorrent mode."""

    impl: str
    chunk: int | None = None

    @property
    def label(self) -> str:
        return (f"{P2P} {self.chunk}" if self.chunk else P2P) if self.impl == P2P else self.impl


@dataclass(frozen=True)
class Group:
    """A scenario at a size: every job of the plan runs on it, interleaved, `reps` times."""

    scenario: Scenario
    size: int
    reps: int


@dataclass
class Plan:
    groups: list[Group]
    jobs: list[Job]
    mem_sizes: list[int]
    min_rate: float  # MB/s below which a run counts as hung

    def transfer_timeout(self, group: Group) -> float:
        return 60.0 + group.size * group.scenario.nodes / (self.min_rate * 1e6)


# ---------------------------------------------------------------------------------------------- one run's figures

@dataclass
class Run:
    job: Job
    scenario: Scenario
    size: int
    rep: int
    piece_length: int = 0
    seconds: float = math.nan
    #: p2ptorrent: the slowest node's own seconds (without the command's start-up).
    node_seconds: float | None = None
    identical: bool | None = None
    error: str = ""
    #: Per role ("seeders", "nodes", "tracker"), one value per process, in order.
    cpu: dict[str, list[float]] = field(default_factory=dict)
    rss: dict[str, list[float]] = field(default_factory=dict)
    sent: dict[str, list[float | None]] = field(default_factory=dict)
    uploaded: list[float | None] = field(default_factory=list)
    #: Bytes each downloading node uploaded (to the other nodes), read after every download completed.
    node_uploaded: list[float | None] = field(default_factory=list)
    resent: float | None = None
    via: str = ""
    #: Busy CPU seconds of the machine during the transfer beyond the measured processes' own: other
    #: programs, the harness, kernel work not charged to a process.  Large values mean a disturbed run.
    other_cpu: float | None = None
    #: The network's own figures over the transfer (Placement.counters: the lab's kernel counters), and
    #: p2ptorrent's "seeders dropped" (owners its downloading nodes dropped, from their logs).
    net: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.error and self.identical is True

    @property
    def mb_per_s(self) -> float:
        return self.size * self.scenario.nodes / self.seconds / 1e6 if self.seconds > 0 else math.nan


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy since boot, all cores (the first line of /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK  # user nice system idle iowait irq softirq steal


def children_cpu() -> float:
    """CPU seconds of our children that have ended and been waited for (the `p2ptorrent download` commands)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class RunFailed(Exception):
    pass


def fail(message: str) -> Any:
    raise RunFailed(message)


# ---------------------------------------------------------------------------------------------- cleanup

#: Everything started and not yet stopped, so an error or a signal anywhere still ends every process.
_LIVE: set[subprocess.Popen[Any]] = set()
_LIVE_SWARMS: set[Daemons] = set()


def _terminate(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt  # unwinds through every finally: below


def kill_everything() -> None:
    for swarm in list(_LIVE_SWARMS):
        swarm.stop(grace=2)
        _LIVE_SWARMS.discard(swarm)
    for proc in list(_LIVE):
        if proc.poll() is None:
            proc.kill()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        _LIVE.discard(proc)


def _ended(procs: Iterable[subprocess.Popen[Any]], grace: float) -> None:
    """Wait up to *grace* seconds for each of *procs*, then SIGKILL those still running."""
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        _LIVE.discard(proc)


# ---------------------------------------------------------------------------------------------- where processes run

class Placement:
    """Where each process of a run runs, by role ("tracker", "seed1".., "node1"..): here, on 127.0.0.1.

    The lab benchmark (benchmarks/lab.py) puts every role on a host of its own instead: a command
    prefix (`ip netns exec NS`, which execs, so a Popen's pid is the program's own), the host's
    address, and the network's counters over a transfer.
    """

    def prefix(self, role: str) -> list[str]:
        return []

    def addr(self, role: str) -> str:
        return "127.0.0.1"

    def snapshot(self) -> Any:
        """Counters now (taken just before a transfer starts)."""
        return None

    def counters(self, before: Any) -> dict[str, float]:
        """What changed since *before*: figures named for the tables."""
        return {}


LOOPBACK = Placement()


# ---------------------------------------------------------------------------------------------- p2ptorrent

class P2PSwarm(Daemons):
    """Tracker, seeders 1..S, downloading nodes S+1..S+L, as `twistd -n` processes in *root*.

    *chunk* None leaves the node's own defaults (CHUNK_PIECES_SIZE, BUFFER_SIZE) alone.
    """

    def __init__(self, root: Path, scenario: Scenario, chunk: int | None, place: Placement = LOOPBACK) -> None:
        super().__init__(root, fail=fail, ctl_timeout=START_TIMEOUT)
        root.mkdir(parents=True, exist_ok=True)
        self.logs = root / "logs"
        self.port = free_port()
        self.place = place
        self.seeder_ids = list(range(1, scenario.seeders + 1))
        self.node_ids = list(range(scenario.seeders + 1, scenario.seeders + scenario.nodes + 1))
        self.chunk_args = ["--chunk-size", str(chunk), "--buffer-size", str(chunk + BLOCK_OVERHEAD)] if chunk else []

    def role(self, node: int) -> str:
        """The placement role of node *node*: seed1.. for the seeders, node1.. for the downloading nodes."""
        return f"seed{node}" if node in self.seeder_ids else f"node{node - len(self.seeder_ids)}"

    def status(self, node: int) -> dict[str, Any]:
        return json.loads(self.ok(node, "status", "--json"))  # type: ignore[no-any-return]

    def registered(self, node: int) -> bool:
        self.check_alive()
        if not (self.nodes_dir / str(node) / ".control.sock").exists():
            return False
        try:
            return self.status(node)["registered"] is True
        except (RunFailed, ValueError, KeyError):
            return False

    def launch(self) -> None:
        tracker = self.place.addr("tracker")
        proc = self.start("tracker", [
            "p2ptracker", "--host", tracker, "--port", str(self.port),
            "--tracker-db-dir", str(self.root / "tracker_db"), "--logs-dir", str(self.logs), *self.chunk_args,
        ], wrapper=self.place.prefix("tracker"))
        wait_for(lambda: tcp_listening(proc.pid, self.port), "the tracker to listen", START_TIMEOUT, self.check_alive, fail)
        for n in self.seeder_ids + self.node_ids:
            self.start(f"node{n}", [
                "p2pnode", "--id", str(n), "--interface", self.place.addr(self.role(n)), "--tracker", f"{tracker}:{self.port}",
                "--node-files-dir", str(self.nodes_dir), "--logs-dir", str(self.logs), "--no-stdin", *self.chunk_args,
            ], wrapper=self.place.prefix(self.role(n)))
        for n in self.seeder_ids + self.node_ids:
            wait_for(lambda n=n: self.registered(n), f"node {n} to register", START_TIMEOUT, None, fail)

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def resent(self, node: int) -> int | None:
        """Blocks node *node* asked again, from its completion line (None if the log has none)."""
        log = self.logs / f"node_{node}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        found = re.findall(r"complete, .*?(\d+) blocks asked again", text)
        return int(found[-1]) if found else None

    def dropped(self, node: int) -> int:
        """Owners node *node* dropped (its log's "dropped node" warnings)."""
        log = self.logs / f"node_{node}.log"
        return (log.read_text(errors="replace") if log.exists() else "").count("dropped node")


def run_p2ptorrent(run: Run, workdir: Path, source: Path, want: str, timeout: float, place: Placement = LOOPBACK) -> None:
    swarm = P2PSwarm(workdir, run.scenario, run.job.chunk, place)
    _LIVE_SWARMS.add(swarm)
    downloads: dict[int, subprocess.Popen[str]] = {}
    try:
        swarm.launch()
        for n in swarm.seeder_ids:
            folder = swarm.nodes_dir / str(n)
            folder.mkdir(parents=True, exist_ok=True)
            os.link(source, folder / source.name)
            said = swarm.ok(n, "send", str(folder / source.name), timeout=START_TIMEOUT + source.stat().st_size / 50e6)
            if "announced to the tracker" not in said:
                fail(f"seeder {n} did not announce the file: {said.strip()}")
        torrent = swarm.nodes_dir / "1" / (source.name + ".torrent")
        run.piece_length = read_torrent(torrent).piece_length
        names = ["tracker", *(f"node{n}" for n in swarm.seeder_ids + swarm.node_ids)]
        pids = {name: swarm.pid(name) for name in names}
        net_before = place.snapshot()
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        busy_before = machine_busy()

        finished: dict[int, tuple[float, int, str]] = {}

        def wait_one(n: int, proc: subprocess.Popen[str]) -> None:
            out, _ = proc.communicate()
            finished[n] = (time.monotonic(), proc.returncode, out)

        children_before = children_cpu()
        started = time.monotonic()
        for n in swarm.node_ids:
            proc = subprocess.Popen(
                [swarm.script("p2ptorrent"), "--node", str(n), "--node-files-dir", str(swarm.nodes_dir),
                 "download", str(torrent)],
                cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            downloads[n] = proc
            _LIVE.add(proc)
        waiters = [threading.Thread(target=wait_one, args=(n, p), daemon=True) for n, p in downloads.items()]
        for w in waiters:
            w.start()
        deadline = started + timeout
        for w in waiters:
            w.join(max(0.0, deadline - time.monotonic()))
        cpu_after = {name: cpu_seconds(pid) for name, pid in pids.items()}
        busy = machine_busy() - busy_before
        commands = children_cpu() - children_before  # only the download commands ended meanwhile
        run.net = {**place.counters(net_before), "seeders dropped": float(sum(swarm.dropped(n) for n in swarm.node_ids))}
        missing = [n for n in swarm.node_ids if n not in finished]
        if missing:
            fail(f"timed out after {timeout:.0f} s: node(s) {missing} still downloading")
        for n in swarm.node_ids:
            _, code, out = finished[n]
            if code != 0:
                fail(f"p2ptorrent --node {n} download exited {code}: {out.strip()[-500:]}")
        run.seconds = max(finished[n][0] for n in swarm.node_ids) - started
        run.cpu["commands"] = [commands]
        run.other_cpu = busy - sum(cpu_after[k] - cpu_before[k] for k in names) - commands
        own = [re.search(r" in ([0-9.]+) s ", finished[n][2]) for n in swarm.node_ids]
        run.node_seconds = max(float(m.group(1)) for m in own) if all(own) else None

        status = {n: swarm.status(n) for n in swarm.seeder_ids + swarm.node_ids}
        rss = {name: peak_rss_mib(pid) for name, pid in pids.items()}
        seeders = [f"node{n}" for n in swarm.seeder_ids]
        nodes = [f"node{n}" for n in swarm.node_ids]
        for attr, values in (("cpu", {k: cpu_after[k] - cpu_before[k] for k in names}), ("rss", rss)):
            getattr(run, attr).update(seeders=[values[k] for k in seeders], nodes=[values[k] for k in nodes],
                                      tracker=[values["tracker"]])

        def uploaded(st: dict[str, Any]) -> float | None:
            ups = [f.get("uploaded") for f in st.get("seeding", []) if f.get("name") == source.name]
            return float(ups[0]) if ups and ups[0] is not None else None

        def sent(st: dict[str, Any]) -> float | None:
            value = st.get("datagrams", {}).get("sent")
            return float(value) if value is not None else None

        run.uploaded = [uploaded(status[n]) for n in swarm.seeder_ids]
        run.node_uploaded = [uploaded(status[n]) for n in swarm.node_ids]
        run.sent = {"seeders": [sent(status[n]) for n in swarm.seeder_ids],
                    "nodes": [sent(status[n]) for n in swarm.node_ids]}
        resent = [swarm.resent(n) for n in swarm.node_ids]
        run.resent = float(sum(r for r in resent if r is not None)) if all(r is not None for r in resent) else None
        run.via = "UDP"
        run.identical = all(sha256(swarm.nodes_dir / str(n) / source.name) == want for n in swarm.node_ids)
    finally:
        for proc in downloads.values():
            if proc.poll() is None:
                proc.kill()
        _ended(downloads.values(), 5)
        swarm.stop(grace=STOP_GRACE)
        _LIVE_SWARMS.discard(swarm)


# ---------------------------------------------------------------------------------------------- libtorrent

class LtPeer:
    """One `lt_peer.py peer` process (or *program*, another that talks the same JSON lines) on *name*'s place;
    its JSON lines arrive on a queue read by a thread."""

    def __init__(self, name: str, workdir: Path, args: Sequence[str], place: Placement = LOOPBACK,
                 program: Sequence[str] | None = None) -> None:
        self.name = name
        self.err_path = workdir / f"{name}.err"
        command = program or [sys.executable, str(LT_PEER), "peer", "--bind", place.addr(name), *args]
        with open(self.err_path, "wb") as err:
            self.proc: subprocess.Popen[str] = subprocess.Popen(
                [*place.prefix(name), *command], cwd=workdir,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1,
            )
        _LIVE.add(self.proc)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                self.events.put({"event": "error", "message": f"unreadable line {line.strip()[:200]!r}"})
        self.events.put({"event": "ended"})

    def why(self) -> str:
        err = self.err_path.read_text(errors="replace").strip() if self.err_path.exists() else ""
        return f"{self.name} ended (status {self.proc.poll()}): {err[-800:]}"

    def expect(self, event: str, deadline: float) -> dict[str, Any]:
        while True:
            try:
                got = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                fail(f"timed out waiting for {self.name} to say {event!r}")
            if got["event"] == event:
                return got
            if got["event"] == "ended":
                fail(self.why())
            if got["event"] == "error":
                fail(f"{self.name}: {got.get('message')}")

    def tell(self, line: str) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            fail(self.why())


def make_lt_torrent(source: Path, piece_length: int, root: Path) -> Path:
    """A v1 torrent of *source* with *piece_length*, made once per size (hashing is not timed)."""
    torrent = root / f"{source.name}.{piece_length}.lt.torrent"
    if not torrent.exists():
        made = subprocess.run(
            [sys.executable, str(LT_PEER), "make", str(source), str(torrent), "--piece-length", str(piece_length)],
            capture_output=True, text=True, timeout=START_TIMEOUT + source.stat().st_size / 50e6,
        )
        if made.returncode != 0:
            fail(f"could not make the libtorrent torrent: {made.stderr.strip()[-500:]}")
    return torrent


def run_libtorrent(run: Run, workdir: Path, source: Path, want: str, torrent: Path, timeout: float,
                   socket_buffer: int, place: Placement = LOOPBACK) -> None:
    mode = run.job.impl.removeprefix("lt-")
    workdir.mkdir(parents=True, exist_ok=True)
    seeders: list[LtPeer] = []
    nodes: list[LtPeer] = []
    try:
        common = ["--torrent", str(torrent), "--mode", mode, "--socket-buffer", str(socket_buffer),
                  "--ready-timeout", str(START_TIMEOUT + run.size / 50e6)]
        for i in range(1, run.scenario.seeders + 1):
            save = workdir / f"seed{i}"
            save.mkdir()
            os.link(source, save / source.name)
            seeders.append(LtPeer(f"seed{i}", workdir, [*common, "--save", str(save), "--role", "seed"], place))
        for i in range(1, run.scenario.nodes + 1):
            save = workdir / f"node{i}"
            save.mkdir()
            nodes.append(LtPeer(f"node{i}", workdir, [*common, "--save", str(save), "--role", "leech"], place))
        deadline = time.monotonic() + START_TIMEOUT + run.size / 50e6  # seeders check their file first
        ports = {p.name: p.expect("ready", deadline) for p in seeders + nodes}
        run.piece_length = ports[nodes[0].name]["piece_length"]
        every = seeders + nodes
        net_before = place.snapshot()
        cpu_before = [cpu_seconds(p.proc.pid) for p in every]
        busy_before = machine_busy()
        started = time.monotonic()
        for i, node in enumerate(nodes):
            # Every two leechers end up connected: each is told of those before it (1-4), or, swarming
            # (1-8), of every other leecher, so each connects out to all of them (libtorrent keeps one
            # connection per pair: a duplicate peer id is dropped).
            others = [p for p in nodes if p is not node] if run.scenario.swarm else nodes[:i]
            node.tell("connect " + " ".join(f"{place.addr(p.name)}:{ports[p.name]['port']}" for p in seeders + others))
        deadline = started + timeout
        done = [node.expect("done", deadline)["at"] for node in nodes]
        cpu_after = [cpu_seconds(p.proc.pid) for p in every]
        busy = machine_busy() - busy_before
        run.net = place.counters(net_before)
        run.seconds = max(done) - started
        run.other_cpu = busy - sum(a - b for a, b in zip(cpu_after, cpu_before))
        stats = []
        for p in every:
            p.tell("stats")
            stats.append(p.expect("stats", time.monotonic() + 30))
        rss = [peak_rss_mib(p.proc.pid) for p in every]
        s = len(seeders)
        cpu = [a - b for a, b in zip(cpu_after, cpu_before)]
        run.cpu = {"seeders": cpu[:s], "nodes": cpu[s:]}
        run.rss = {"seeders": rss[:s], "nodes": rss[s:]}
        run.uploaded = [float(st["uploaded"]) for st in stats[:s]]
        run.node_uploaded = [float(st["uploaded"]) for st in stats[s:]]
        via = sorted({t for st in stats for t in st.get("transports", [])})
        run.via = "+".join(via) or "?"
        utp = "uTP" in via

        def counter(st: dict[str, Any], name: str) -> float | None:
            value = st.get("counters", {}).get(name)
            return float(value) if value is not None and utp else None

        run.sent = {"seeders": [counter(st, "utp.utp_packets_out") for st in stats[:s]],
                    "nodes": [counter(st, "utp.utp_packets_out") for st in stats[s:]]}
        resends = [counter(st, "utp.utp_packet_resend") for st in stats]
        run.resent = float(sum(r for r in resends if r is not None)) if utp else None
        run.identical = all(sha256(workdir / f"node{i}" / source.name) == want
                            for i in range(1, run.scenario.nodes + 1))
    finally:
        for p in seeders + nodes:
            if p.proc.poll() is None:
                try:
                    p.tell("quit")
                except RunFailed:
                    pass
        _ended([p.proc for p in seeders + nodes], 5)


# ---------------------------------------------------------------------------------------------- numbers and tables

def med(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(vals) if len(vals) == len(values) and vals else None


def median_run(runs: list[Run]) -> Run:
    """Each figure's median over *runs* (per process, element by element); None where a run lacks it."""
    first = runs[0]

    def per(attr: str) -> dict[str, list[float | None]]:
        roles = getattr(first, attr)
        return {role: [med([getattr(r, attr)[role][i] for r in runs]) for i in range(len(values))]
                for role, values in roles.items()}

    m = Run(job=first.job, scenario=first.scenario, size=first.size, rep=0, piece_length=first.piece_length)
    m.seconds = med([r.seconds for r in runs]) or math.nan
    m.node_seconds = med([r.node_seconds for r in runs])
    m.identical = all(r.identical for r in runs)
    m.cpu, m.rss, m.sent = per("cpu"), per("rss"), per("sent")  # type: ignore[assignment]
    m.uploaded = [med([r.uploaded[i] for r in runs]) for i in range(len(first.uploaded))]
    m.node_uploaded = [med([r.node_uploaded[i] for r in runs]) for i in range(len(first.node_uploaded))]
    m.resent = med([r.resent for r in runs])
    m.via = "/".join(sorted({r.via for r in runs}))
    m.other_cpu = med([r.other_cpu for r in runs])
    m.net = {k: v for k in first.net if (v := med([r.net.get(k) for r in runs])) is not None}
    return m


def num(value: float | None, fmt: str = "{:.2f}") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def per_proc(values: Sequence[float | None] | None, fmt: str) -> str:
    if not values:
        return "-"
    return "/".join(num(v, fmt) for v in values)


def total(values: Sequence[float | None] | None, how: Callable[[list[float]], float] = sum) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return how([v for v in values if v is not None])


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def render(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


RUN_HEADERS = ["impl", "scen", "MiB", "piece", "rep", "wall s", "node s", "MB/s", "copies",
               "cpu s seed", "cpu s node", "cpu s trk", "cpu s cmd", "rss MiB seed", "rss MiB node", "rss MiB trk",
               "up MiB/seeder", "dgrams sent seed", "dgrams sent node", "resent", "via", "other cpu s"]
#: Fixed widths so rows printed one by one line up.
RUN_WIDTHS = [17, 4, 5, 6, 4, 7, 7, 7, 9, 14, 19, 9, 9, 14, 19, 11, 14, 17, 23, 7, 7, 11]


def run_cells(r: Run, rep: str) -> list[str]:
    if r.error:
        copies = "FAILED"
    else:
        copies = {True: "identical", False: "DIFFERS", None: "?"}[r.identical]
    return [
        r.job.label, r.scenario.name, f"{r.size / MIB:.0f}", f"{r.piece_length // 1024}K" if r.piece_length else "-",
        rep, num(r.seconds), num(r.node_seconds), num(r.mb_per_s, "{:.1f}"), copies,
        per_proc(r.cpu.get("seeders"), "{:.2f}"), per_proc(r.cpu.get("nodes"), "{:.2f}"),
        per_proc(r.cpu.get("tracker"), "{:.2f}"), per_proc(r.cpu.get("commands"), "{:.2f}"),
        per_proc(r.rss.get("seeders"), "{:.1f}"), per_proc(r.rss.get("nodes"), "{:.1f}"),
        per_proc(r.rss.get("tracker"), "{:.1f}"),
        per_proc([u / MIB if u is not None else None for u in r.uploaded], "{:.1f}"),
        per_proc(r.sent.get("seeders"), "{:.0f}"), per_proc(r.sent.get("nodes"), "{:.0f}"),
        num(r.resent, "{:.0f}"), r.via or "-", num(r.other_cpu),
    ]


def up_x_file(r: Run) -> list[float | None]:
    """Each seeder's upload in multiples of the file size (1.00: the seeder sent the file once)."""
    return [u / r.size if u is not None and r.size else None for u in r.uploaded]


def uploads_line(r: Run) -> str:
    """A swarming run's uploads: the seeder's in file sizes, each node's in MiB (what flowed between nodes)."""
    nodes = r.node_uploaded
    between = total(nodes)
    return (f"   {r.job.label} {r.scenario.name} uploads: seeder {per_proc(up_x_file(r), '{:.2f}')} x file"
            f" ({per_proc([u / MIB if u is not None else None for u in r.uploaded], '{:.1f}')} MiB);"
            f" nodes MiB {per_proc([u / MIB if u is not None else None for u in nodes], '{:.1f}')}"
            f" (sum {num(between / MIB if between is not None else None, '{:.1f}')} MiB ="
            f" {num(between / r.size if between is not None and r.size else None)} x file)")


def run_line(cells: Sequence[str]) -> str:
    return "  ".join(c.ljust(w) if i in (0, 1, 8) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, RUN_WIDTHS)))


#: The figures of the comparison tables: label, how to get a Run's per-process values, format, how to aggregate.
FIGURES: list[tuple[str, Callable[[Run], list[float | None] | None], str, Callable[[list[float]], float]]] = [
    ("wall s", lambda r: [r.seconds], "{:.2f}", sum),
    ("goodput MB/s", lambda r: [r.mb_per_s], "{:.1f}", sum),
    ("node's own s (p2ptorrent)", lambda r: [r.node_seconds], "{:.2f}", sum),
    ("CPU s seeders (sum)", lambda r: r.cpu.get("seeders"), "{:.2f}", sum),
    ("CPU s nodes (sum)", lambda r: r.cpu.get("nodes"), "{:.2f}", sum),
    ("CPU s tracker", lambda r: r.cpu.get("tracker"), "{:.2f}", sum),
    ("CPU s download commands (all)", lambda r: r.cpu.get("commands"), "{:.2f}", sum),
    ("peak RSS MiB seeders (max)", lambda r: r.rss.get("seeders"), "{:.1f}", max),
    ("peak RSS MiB nodes (max)", lambda r: r.rss.get("nodes"), "{:.1f}", max),
    ("peak RSS MiB tracker", lambda r: r.rss.get("tracker"), "{:.1f}", max),
    ("uploaded MiB per seeder (sum)", lambda r: [u / MIB if u is not None else None for u in r.uploaded], "{:.1f}", sum),
    ("seeder upload x file (max)", lambda r: up_x_file(r), "{:.2f}", max),
    ("uploaded MiB per node (sum)", lambda r: [u / MIB if u is not None else None for u in r.node_uploaded], "{:.1f}", sum),
    ("datagrams sent seeders (sum)", lambda r: r.sent.get("seeders"), "{:.0f}", sum),
    ("datagrams sent nodes (sum)", lambda r: r.sent.get("nodes"), "{:.0f}", sum),
    ("resent", lambda r: [r.resent], "{:.0f}", sum),
    ("other CPU s on the machine (noise)", lambda r: [r.other_cpu], "{:.2f}", sum),
]
#: Figures shown side by side without a ratio: they describe the run's conditions, not the implementation.
NO_RATIO = {"other CPU s on the machine (noise)"}


def figure_cell(runs: list[Run], get: Callable[[Run], list[float | None] | None], fmt: str,
                how: Callable[[list[float]], float]) -> tuple[str, float | None]:
    """A figure over *runs*: each process's median, and the median of each run's aggregate (what the ratio uses).

    The aggregate is taken run by run before the median: which seeder sends most changes from run to
    run, so the sum of per-seeder medians would not be what any run uploaded.
    """
    if not runs:
        return "-", None
    values = get(median_run(runs))
    if not values:
        return "-", None
    agg = med([total(get(r), how) for r in runs])
    if len(values) == 1:
        return num(values[0], fmt), agg
    return f"{per_proc(values, fmt)} ({num(agg, fmt)})", agg


class Results:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.runs: list[Run] = []

    def ok_runs(self, group: Group, job: Job) -> list[Run]:
        return [r for r in self.runs if r.ok and r.job == job and r.scenario == group.scenario and r.size == group.size]

    def medians(self, group: Group, job: Job) -> Run | None:
        runs = self.ok_runs(group, job)
        return median_run(runs) if runs else None

    def node_rss(self, group: Group, job: Job) -> float | None:
        """Median over runs of the largest peak RSS among the run's downloading nodes."""
        return med([total(r.rss.get("nodes"), max) for r in self.ok_runs(group, job)] or [None])

    def count(self, group: Group, job: Job) -> tuple[int, int]:
        runs = [r for r in self.runs if r.job == job and r.scenario == group.scenario and r.size == group.size]
        return sum(r.ok for r in runs), len(runs)

    def summary(self, markdown: bool) -> str:
        p2p = [j for j in self.plan.jobs if j.impl == P2P]
        lts = [j for j in self.plan.jobs if j.impl != P2P]
        headers = ["scenario", "MiB", "piece", "runs", "implementation", "wall s", "MB/s"]
        for lt in lts:
            headers += [f"{lt.impl} MB/s", "x"]
        headers += ["node RSS MiB"] + [f"{lt.impl} node RSS" for lt in lts]
        swarming = any(g.scenario.swarm for g in self.plan.groups)
        if swarming:  # the seeder's upload in file sizes, for the swarming rows (1-8)
            headers.append("seeder up x file")
            for lt in lts:
                headers += [f"{lt.impl} seeder up x file", "x"]
        rows = []
        for g in self.plan.groups:
            lt_runs = {lt: self.medians(g, lt) for lt in lts}
            for job in p2p or [None]:
                m = self.medians(g, job) if job else None
                ok, n = self.count(g, job) if job else (0, 0)
                piece = next((r.piece_length for r in [m, *lt_runs.values()] if r and r.piece_length), 0)
                row = [g.scenario.name, f"{g.size / MIB:.0f}", f"{piece // 1024}K" if piece else "-", f"{ok}/{n}",
                       job.label if job else "-", num(m.seconds) if m else "-", num(m.mb_per_s, "{:.1f}") if m else "-"]
                for lt in lts:
                    lm = lt_runs[lt]
                    row += [num(lm.mb_per_s, "{:.1f}") if lm else "-",
                            ratio(m.mb_per_s if m else None, lm.mb_per_s if lm else None)]
                row.append(num(self.node_rss(g, job), "{:.1f}") if m and job else "-")
                row += [num(self.node_rss(g, lt), "{:.1f}") if lm else "-" for lt, lm in lt_runs.items()]
                if swarming:
                    up = self.seeder_up(g, job) if g.scenario.swarm and m and job else None
                    row.append(num(up) if g.scenario.swarm and m else "-")
                    for lt, lm in lt_runs.items():
                        lup = self.seeder_up(g, lt) if g.scenario.swarm and lm else None
                        row += [num(lup) if g.scenario.swarm and lm else "-",
                                ratio(up, lup) if g.scenario.swarm else "-"]
                rows.append(row)
        return render(headers, rows, markdown)

    def seeder_up(self, group: Group, job: Job) -> float | None:
        """Median over runs of the most any seeder uploaded, in multiples of the file size."""
        return med([total(up_x_file(r), max) for r in self.ok_runs(group, job)] or [None])

    def uploads(self, group: Group, markdown: bool) -> str:
        """Every run of a swarming group: the seeder's upload in file sizes, each node's upload in MiB."""
        headers = ["implementation", "run", "seeder up x file", "seeder up MiB", "up MiB per node", "nodes' sum MiB",
                   "nodes' sum x file"]
        rows = []
        for r in self.runs:
            if r.scenario != group.scenario or r.size != group.size or not r.ok:
                continue
            between = total(r.node_uploaded)
            rows.append([r.job.label, str(r.rep), per_proc(up_x_file(r), "{:.2f}"),
                         per_proc([u / MIB if u is not None else None for u in r.uploaded], "{:.1f}"),
                         per_proc([u / MIB if u is not None else None for u in r.node_uploaded], "{:.1f}"),
                         num(between / MIB if between is not None else None, "{:.1f}"),
                         num(between / r.size if between is not None else None)])
        return render(headers, rows, markdown)

    def comparison(self, group: Group, job: Job | None, markdown: bool) -> str:
        lts = [j for j in self.plan.jobs if j.impl != P2P]
        runs = self.ok_runs(group, job) if job else []
        m = median_run(runs) if runs else None
        lt_runs = [(lt, self.ok_runs(group, lt)) for lt in lts]
        headers = ["figure (median)", job.label if job else P2P]
        for lt, _ in lt_runs:
            headers += [lt.impl, "x"]
        rows = []
        for label, get, fmt, how in FIGURES:
            cell, agg = figure_cell(runs, get, fmt, how)
            row = [label, cell]
            for _, lruns in lt_runs:
                lcell, lagg = figure_cell(lruns, get, fmt, how)
                row += [lcell, "" if label in NO_RATIO else ratio(agg, lagg)]
            rows.append(row)
        row = ["transport", m.via if m else "-"]
        for _, lruns in lt_runs:
            row += [median_run(lruns).via if lruns else "-", ""]
        rows.append(row)
        return render(headers, rows, markdown)

    def memory(self, markdown: bool) -> str:
        base_job = next((j for j in self.plan.jobs if j.impl != P2P), None)
        headers = ["MiB (1->1)", "implementation", "runs", "peak RSS MiB seeder", "peak RSS MiB node", "peak RSS MiB tracker",
                   f"node RSS x {base_job.impl if base_job else 'libtorrent'}"]
        rows = []
        one = SCENARIOS["1-1"]
        for size in self.plan.mem_sizes:
            g = Group(one, size, 0)
            base = self.node_rss(g, base_job) if base_job else None
            for job in self.plan.jobs:
                m = self.medians(g, job)
                ok, n = self.count(g, job)
                if n == 0:
                    continue
                node = self.node_rss(g, job)
                rows.append([
                    f"{size / MIB:.0f}", job.label, f"{ok}/{n}",
                    num(total(m.rss.get("seeders"), max), "{:.1f}") if m else "-",
                    num(node, "{:.1f}"),
                    num(total(m.rss.get("tracker"), max), "{:.1f}") if m and m.rss.get("tracker") else "-",
                    ratio(node, base),
                ])
        return render(headers, rows, markdown)

    def report(self, markdown: bool) -> str:
        """Everything after the runs: the summary, one comparison per scenario and chunk, the memory table."""
        hx = "### " if markdown else "== "
        note = ("; seeder up x file: what the seeder uploaded / the file size, its x below 1: p2ptorrent's seeder"
                " sent less" if any(g.scenario.swarm for g in self.plan.groups) else "")
        out = [f"{hx}Medians: goodput (x = p2ptorrent / libtorrent; above 1: p2ptorrent faster{note})", "",
               self.summary(markdown), ""]
        p2p = [j for j in self.plan.jobs if j.impl == P2P] or [None]
        for g in self.plan.groups:
            for job in p2p:
                what = f"{g.scenario.name}, {g.size / MIB:.0f} MiB" + (f", {job.label}" if job else "")
                out += [f"{hx}{what}: medians; x = p2ptorrent / libtorrent (per-process values a/b/c, the aggregate in brackets)",
                        "", self.comparison(g, job, markdown), ""]
            if g.scenario.swarm:
                out += [f"{hx}{g.scenario.name}, {g.size / MIB:.0f} MiB: uploads of every run (after every download"
                        " completed; what the nodes uploaded went to the other nodes)", "", self.uploads(g, markdown), ""]
        if self.plan.mem_sizes:
            out += [f"{hx}Memory: peak RSS (VmHWM) per process, 1 seeder -> 1 node, medians", "",
                    self.memory(markdown), ""]
        return "\n".join(out)

    def to_json(self) -> list[dict[str, Any]]:
        """Every run's raw figures (sizes in bytes, CPU in seconds, RSS in MiB), for other tools."""
        out = []
        for r in self.runs:
            d = dataclasses.asdict(r)
            d["scenario"] = r.scenario.name
            d["job"] = r.job.label
            d["mb_per_s"] = None if math.isnan(r.mb_per_s) else r.mb_per_s
            d["seconds"] = None if math.isnan(r.seconds) else r.seconds
            out.append(d)
        return out

    def runs_table(self) -> str:
        return render(RUN_HEADERS, [run_cells(r, str(r.rep)) for r in self.runs], markdown=True)


# ---------------------------------------------------------------------------------------------- the whole thing

def make_payload(root: Path, size: int) -> tuple[Path, str]:
    path = root / f"payload-{size // MIB}MiB.bin"
    if not path.exists():
        with open(path, "wb") as f:
            left = size
            while left:
                block = os.urandom(min(left, 4 * MIB))
                f.write(block)
                left -= len(block)
    return path, sha256(path)


def git_describe() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=HERE, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def lt_version() -> str:
    try:
        out = subprocess.run([sys.executable, "-c", "import libtorrent; print(libtorrent.__version__)"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def parse_list(parser: argparse.ArgumentParser, text: str, what: str, convert: Callable[[str], Any]) -> list[Any]:
    try:
        return [convert(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        parser.error(f"bad {what} list {text!r}: a comma-separated list expected")


def build_plan(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Plan:
    if args.quick:
        args.sizes, args.reps, args.reps_large, args.mem_sizes = "64", 1, 1, ""
        args.scenarios = args.scenarios or "1-1,3-1"
        args.impls = args.impls or "p2ptorrent,lt-default,lt-utp"
    scen_names = parse_list(parser, args.scenarios or DEFAULT_SCENARIOS, "scenario", str)
    for name in scen_names:
        if name not in (*SCENARIOS, "mem"):
            parser.error(f"unknown scenario {name!r}: choose from {', '.join(SCENARIOS)}, mem")
    impls = parse_list(parser, args.impls or ",".join(IMPLS), "implementation", str)
    for impl in impls:
        if impl not in IMPLS:
            parser.error(f"unknown implementation {impl!r}: choose from {', '.join(IMPLS)}")
    chunks = parse_list(parser, args.chunks or f"{DEFAULT_CHUNK},{args.best_chunk}", "chunk", int)
    for c in chunks:
        if not 1 <= c <= IPV4_MAX_UDP_PAYLOAD - BLOCK_OVERHEAD:  # a chunk plus its header must fit in one datagram
            parser.error(f"chunk {c} out of range: 1 to {IPV4_MAX_UDP_PAYLOAD - BLOCK_OVERHEAD}"
                         f" (BUFFER_SIZE = chunk + {BLOCK_OVERHEAD})")
    sizes = [s * MIB for s in parse_list(parser, args.sizes, "size", int)]
    mem_sizes = [s * MIB for s in parse_list(parser, args.mem_sizes, "size", int)] if "mem" in scen_names else []
    swarm_size = args.swarm_size * MIB
    if any(s <= 0 for s in sizes + mem_sizes + [swarm_size]) or args.reps < 1 or (args.reps_large or 1) < 1:
        parser.error("sizes and repetitions must be 1 or more")

    def reps(size: int) -> int:
        return args.reps_large if args.reps_large and size >= 512 * MIB else args.reps

    groups = [Group(SCENARIOS[n], s, reps(s)) for n in scen_names if n != "mem"
              for s in ([swarm_size] if SCENARIOS[n].swarm else sizes)]
    for s in mem_sizes:
        if not any(g.scenario == SCENARIOS["1-1"] and g.size == s for g in groups):
            groups.append(Group(SCENARIOS["1-1"], s, reps(s)))
    p2p_jobs = [Job(P2P, c) for c in dict.fromkeys(chunks)] if P2P in impls else []
    lt_jobs = [Job(i) for i in LT_MODES if i in impls]
    jobs: list[Job] = []  # interleaved: p2ptorrent, libtorrent, p2ptorrent, libtorrent, ...
    for i in range(max(len(p2p_jobs), len(lt_jobs))):
        jobs += p2p_jobs[i : i + 1] + lt_jobs[i : i + 1]
    return Plan(groups=groups, jobs=jobs, mem_sizes=mem_sizes, min_rate=args.min_rate)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1].split("What one run does")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true",
                        help="64 MiB, one run each, 1->1 and 3->1, both chunk sizes, p2ptorrent, lt-default and lt-utp")
    parser.add_argument("--scenarios", default=None,
                        help=f"comma list of 1-1, 3-1, 1-4, 1-8, mem (default: all, {DEFAULT_SCENARIOS};"
                             " 1-8 = 1 seeder to 8 nodes at --swarm-size; mem = 1->1 at --mem-sizes)")
    parser.add_argument("--sizes", default="64,512", help="file sizes in MiB for 1-1, 3-1, 1-4 (default 64,512)")
    parser.add_argument("--swarm-size", type=int, default=SWARM_SIZE,
                        help=f"file size in MiB of the swarming scenario 1-8, whatever --sizes says (default {SWARM_SIZE})")
    parser.add_argument("--mem-sizes", default="64,512,2048", help="file sizes in MiB of the memory scenario (default 64,512,2048)")
    parser.add_argument("--impls", default=None,
                        help=f"comma list of {', '.join(IMPLS)} (default: all)")
    parser.add_argument("--best-chunk", type=int, default=BEST_CHUNK,
                        help=f"the larger chunk size to compare with {DEFAULT_CHUNK} (default {BEST_CHUNK}; BUFFER_SIZE = chunk + {BLOCK_OVERHEAD})")
    parser.add_argument("--chunks", default=None, help=f"comma list of p2ptorrent chunk sizes (default {DEFAULT_CHUNK},BEST)")
    parser.add_argument("--reps", type=int, default=3, help="runs of each scenario and implementation (default 3)")
    parser.add_argument("--reps-large", type=int, default=None, help="runs for sizes of 512 MiB and more (default: --reps)")
    parser.add_argument("--lt-socket-buffer", type=int, default=0,
                        help="libtorrent SO_RCVBUF/SO_SNDBUF in bytes (default 0: libtorrent's own)")
    parser.add_argument("--min-rate", type=float, default=3.0,
                        help="a transfer slower than this many MB/s (after a 60 s allowance) is stopped as hung (default 3)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the tables to this Markdown file")
    parser.add_argument("--json", type=Path, default=None, help="also write every run's raw figures to this JSON file")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="make the work folder inside this one (default: the system's temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (payloads, every run's logs)")
    args = parser.parse_args(argv)
    plan = build_plan(args, parser)
    if not plan.groups or not plan.jobs:
        parser.error("nothing to run")
    if any(j.impl != P2P for j in plan.jobs) and importlib.util.find_spec("libtorrent") is None:
        print("libtorrent is not importable in this Python: install the bench extra (pip install -e '.[bench]'),"
              " or run p2ptorrent alone with --impls p2ptorrent", file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, _terminate)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    # Always a fresh folder of our own (inside --workdir if given): that folder, and only it, is removed at the end.
    root = Path(tempfile.mkdtemp(prefix="swarm-", dir=args.workdir)).resolve()
    results = Results(plan)
    begun = time.monotonic()
    header = (f"# p2ptorrent {git_describe()}, libtorrent {lt_version()}, python {platform.python_version()},"
              f" {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, {time.strftime('%Y-%m-%d %H:%M')}; work folder {root}")
    print(header, flush=True)
    print(f"# {len(plan.groups)} scenario/size groups x {len(plan.jobs)} implementations"
          f" ({', '.join(j.label for j in plan.jobs)}), interleaved run by run", flush=True)
    print(run_line(RUN_HEADERS), flush=True)
    interrupted = False
    try:
        payloads: dict[int, tuple[Path, str]] = {}
        for g in plan.groups:
            if g.size not in payloads:
                payloads[g.size] = make_payload(root, g.size)
            source, want = payloads[g.size]
            lt_torrent: Path | None = None
            timeout = plan.transfer_timeout(g)
            for rep in range(1, g.reps + 1):
                shift = (rep - 1) % len(plan.jobs)  # rotate who goes first, rep by rep
                for job in plan.jobs[shift:] + plan.jobs[:shift]:
                    run = Run(job=job, scenario=g.scenario, size=g.size, rep=rep)
                    # Short names: a node's control socket lives below, and UNIX socket paths are short (107 bytes).
                    workdir = root / f"r{len(results.runs) + 1}-{job.chunk or job.impl}"
                    try:
                        if job.impl == P2P:
                            run_p2ptorrent(run, workdir, source, want, timeout)
                        else:
                            if lt_torrent is None:
                                lt_torrent = make_lt_torrent(source, auto_piece_length(g.size), root)
                            run_libtorrent(run, workdir, source, want, lt_torrent, timeout, args.lt_socket_buffer)
                    except (RunFailed, OSError, subprocess.SubprocessError) as e:
                        run.error = str(e) or type(e).__name__
                    results.runs.append(run)
                    print(run_line(run_cells(run, f"{rep}/{g.reps}")), flush=True)
                    if run.error:
                        print(f"   {job.label} failed in {workdir}: {run.error}", flush=True)
                    elif g.scenario.swarm:
                        print(uploads_line(run), flush=True)
                    if not args.keep:
                        shutil.rmtree(workdir, ignore_errors=True)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: stopping every process", file=sys.stderr, flush=True)
    finally:
        kill_everything()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    elapsed = time.monotonic() - begun
    if results.runs:
        print()
        print(results.report(markdown=False))
    failed = [r for r in results.runs if not r.ok]
    verdict = (f"{len(results.runs) - len(failed)} of {len(results.runs)} runs completed with every copy identical"
               f" (SHA-256); {elapsed / 60:.1f} minutes")
    print(verdict + ("" if not args.keep else f"; work folder kept: {root}"))
    for r in failed:
        print(f"FAILED: {r.job.label} {r.scenario.name} {r.size // MIB} MiB run {r.rep}: "
              f"{r.error or 'a copy differs from the original'}")
    if args.markdown:
        args.markdown.write_text(
            f"{header.removeprefix('# ').split('; work folder')[0]}\n\nCommand: `python benchmarks/swarm.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
            f"{results.report(markdown=True)}\n### Every run\n\n{results.runs_table()}\n\n{verdict}\n"
        )
        print(f"tables written to {args.markdown}")
    if args.json:
        args.json.write_text(json.dumps({"header": header, "argv": argv if argv is not None else sys.argv[1:],
                                         "runs": results.to_json()}, indent=1))
        print(f"raw figures written to {args.json}")
    return 1 if failed or interrupted or not results.runs else 0


if __name__ == "__main__":
    sys.exit(main())
