"""Time one download over 127.0.0.1 with real `twistd` processes (a measurement, not a test).

    python benchmarks/loopback.py --size-mib 100 --seeders 1 --repeat 3
    python benchmarks/loopback.py --size-mib 100 --seeders 3 --repeat 3 --chunk 30000

One file of random bytes is made in a temporary folder.  Each run then starts
afresh, in its own folder: `twistd -n p2ptracker`, S seeder nodes and one
downloader node (`twistd -n p2pnode`, all on 127.0.0.1), makes every seeder
`send` the file (hard links of the one file), and times `p2ptorrent download`
on the downloader: wall seconds from starting the command until it returns,
the command's own start-up included.  The copy is checked with SHA-256 (not
timed).  Just before the processes are stopped, each one's peak RSS (VmHWM in
/proc/<pid>/status) and CPU seconds (utime + stime in /proc/<pid>/stat, from
its start, so start-up and seeding are included) are read; "dl cpu" is the
CPU each process spent while the download command ran.

One row per run, then the medians.  MB/s counts 1e6 bytes.  `--chunk N` sets
CHUNK_PIECES_SIZE to N and BUFFER_SIZE to N plus a block's header (wire.BLOCK_OVERHEAD)
on every node; without it the nodes run with their defaults (CHUNK_PIECES_SIZE 1400,
BUFFER_SIZE 9216).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from p2ptorrent.config import MIB, Config
from p2ptorrent.procs import Daemons, connects, free_port, sha256, wait_for
from p2ptorrent.wire import BLOCK_OVERHEAD  # the bytes of a data datagram that are not file data

DEFAULT_CHUNK = Config.CHUNK_PIECES_SIZE
CLK_TCK = os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    """VmHWM, the process's peak resident set size, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no VmHWM for process {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process itself (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class Run:
    size: int
    seeders: int
    chunk: int
    seconds: float
    node_seconds: float | None
    #: Per process, in order: tracker, seeder 1..S, downloader.
    rss: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    dl_cpu: list[float] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        return self.size / self.seconds / 1e6


class Swarm(Daemons):
    """The processes of one run; :meth:`stop` ends every one that is still running."""

    def __init__(self, root: Path, seeders: int, chunk: int | None) -> None:
        super().__init__(root, ctl_timeout=900)
        root.mkdir(parents=True, exist_ok=True)
        self.logs = root / "logs"
        self.port = free_port()
        self.seeders = seeders
        self.downloader = seeders + 1
        self.chunk_args = ["--chunk-size", str(chunk), "--buffer-size", str(chunk + BLOCK_OVERHEAD)] if chunk else []

    def registered(self, node: int) -> bool:
        self.check_alive()
        if not (self.nodes_dir / str(node) / ".control.sock").exists():
            return False
        try:
            return json.loads(self.ok(node, "status", "--json"))["registered"] is True
        except RuntimeError:
            return False

    def launch(self) -> None:
        self.start("tracker", [
            "p2ptracker", "--host", "127.0.0.1", "--port", str(self.port),
            "--tracker-db-dir", str(self.root / "tracker_db"), "--logs-dir", str(self.logs), *self.chunk_args,
        ])
        wait_for(lambda: connects(self.port), "the tracker to listen", alive=self.check_alive)
        for n in range(1, self.downloader + 1):
            self.start(f"node{n}", [
                "p2pnode", "--id", str(n), "--interface", "127.0.0.1", "--tracker", f"127.0.0.1:{self.port}",
                "--node-files-dir", str(self.nodes_dir), "--logs-dir", str(self.logs), "--no-stdin", *self.chunk_args,
            ])
        for n in range(1, self.downloader + 1):
            wait_for(lambda n=n: self.registered(n), f"node {n} to register")

    def pids(self) -> list[int]:
        return [self.procs[name].pid for name in ["tracker", *(f"node{n}" for n in range(1, self.downloader + 1))]]


def one_run(workdir: Path, source: Path, want: str, seeders: int, chunk: int | None) -> Run:
    swarm = Swarm(workdir, seeders, chunk)
    try:
        swarm.launch()
        for n in range(1, seeders + 1):
            folder = swarm.nodes_dir / str(n)
            folder.mkdir(parents=True, exist_ok=True)
            os.link(source, folder / source.name)
            said = swarm.ok(n, "send", str(folder / source.name))
            if "announced to the tracker" not in said:
                raise RuntimeError(f"seeder {n} did not announce the file: {said.strip()}")
        torrent = swarm.nodes_dir / "1" / (source.name + ".torrent")
        pids = swarm.pids()
        cpu_before = [cpu_seconds(p) for p in pids]
        started = time.perf_counter()
        said = swarm.ok(swarm.downloader, "download", str(torrent))
        seconds = time.perf_counter() - started
        cpu_after = [cpu_seconds(p) for p in pids]
        rss = [peak_rss_mib(p) for p in pids]  # just before stopping
        copy = swarm.nodes_dir / str(swarm.downloader) / source.name
        if sha256(copy) != want:
            raise RuntimeError(f"the downloaded copy {copy} differs from the original")
        node_time = re.search(r" in ([0-9.]+) s ", said)
        return Run(
            size=source.stat().st_size, seeders=seeders, chunk=chunk or DEFAULT_CHUNK, seconds=seconds,
            node_seconds=float(node_time.group(1)) if node_time else None,
            rss=rss, cpu=cpu_after, dl_cpu=[a - b for a, b in zip(cpu_after, cpu_before)],
        )
    finally:
        swarm.stop()


def _per_process(values: list[float], seeders: int, fmt: str) -> list[str]:
    """tracker, the seeders joined with '/', downloader."""
    return [fmt.format(values[0]), "/".join(fmt.format(v) for v in values[1 : 1 + seeders]), fmt.format(values[-1])]


HEADER = (
    f"{'run':>6} {'MiB':>5} {'seeders':>7} {'chunk':>6} {'seconds':>8} {'node s':>7} {'MB/s':>7}"
    f" | {'rss MiB: tracker':>16} {'seeders':>17} {'downloader':>10}"
    f" | {'cpu s: tracker':>14} {'seeders':>17} {'downloader':>10}"
    f" | {'dl cpu s: tracker':>17} {'seeders':>17} {'downloader':>10}"
)


def row(label: str, r: Run) -> str:
    node_s = f"{r.node_seconds:.2f}" if r.node_seconds is not None else "-"
    rss = _per_process(r.rss, r.seeders, "{:.1f}")
    cpu = _per_process(r.cpu, r.seeders, "{:.2f}")
    dl = _per_process(r.dl_cpu, r.seeders, "{:.2f}")
    return (
        f"{label:>6} {r.size / MIB:>5.0f} {r.seeders:>7} {r.chunk:>6} {r.seconds:>8.2f} {node_s:>7} {r.mb_per_s:>7.1f}"
        f" | {rss[0]:>16} {rss[1]:>17} {rss[2]:>10}"
        f" | {cpu[0]:>14} {cpu[1]:>17} {cpu[2]:>10}"
        f" | {dl[0]:>17} {dl[1]:>17} {dl[2]:>10}"
    )


def median_run(runs: list[Run]) -> Run:
    med = statistics.median
    first = runs[0]
    node = [r.node_seconds for r in runs if r.node_seconds is not None]
    per = lambda attr: [med(getattr(r, attr)[i] for r in runs) for i in range(len(first.rss))]  # noqa: E731
    return Run(
        size=first.size, seeders=first.seeders, chunk=first.chunk,
        seconds=med(r.seconds for r in runs), node_seconds=med(node) if node else None,
        rss=per("rss"), cpu=per("cpu"), dl_cpu=per("dl_cpu"),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=100, help="file size in MiB (default 100)")
    parser.add_argument("--seeders", type=int, default=1, help="seeder nodes (default 1)")
    parser.add_argument("--repeat", type=int, default=3, help="runs (default 3)")
    parser.add_argument("--chunk", type=int, default=None,
                        help=f"CHUNK_PIECES_SIZE (BUFFER_SIZE becomes N + {BLOCK_OVERHEAD}; default {DEFAULT_CHUNK})")
    parser.add_argument("--workdir", type=Path, default=None, help="keep every run's folder (logs included) here")
    args = parser.parse_args(argv)
    if args.seeders < 1 or args.repeat < 1 or args.size_mib < 1:
        parser.error("--size-mib, --seeders and --repeat must be 1 or more")

    keep = args.workdir is not None
    root = (args.workdir or Path(tempfile.mkdtemp(prefix="p2ptorrent-bench-"))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    try:
        source = root / "payload.bin"
        with open(source, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MIB))
        want = sha256(source)
        print(f"# {args.size_mib} MiB random file, {args.seeders} seeder(s), {args.repeat} run(s), "
              f"chunk {args.chunk or DEFAULT_CHUNK}; python {sys.version.split()[0]}, {os.cpu_count()} CPUs", flush=True)
        print(HEADER, flush=True)
        runs = []
        for i in range(1, args.repeat + 1):
            run = one_run(root / f"run{i}", source, want, args.seeders, args.chunk)
            runs.append(run)
            print(row(str(i), run), flush=True)
        print(row("median", median_run(runs)), flush=True)
        return 0
    except (RuntimeError, OSError) as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 1
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
