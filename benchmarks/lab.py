"""p2ptorrent beside libtorrent and plain TCP on a lab of separate hosts, with loss: real processes, every copy verified.

    python benchmarks/lab.py                       # everything below, one run each (14 minutes here, 2 CPUs)
    python benchmarks/lab.py --reps 3              # the same, medians of three (about three times as long)
    python benchmarks/lab.py --quick               # 64 MiB: 1-1 at 0 and 1%, 3-1 at 1%, one run each (3 minutes)
    python benchmarks/lab.py --scenarios 1-1 --sizes 256 --loss 0,1,5,10 --reps 1
    python benchmarks/lab.py --scenarios 1-1 --loss 1 --rate 500 --impls p2ptorrent,tcp --markdown lab.md --json lab.json
    python benchmarks/netlab.py clean              # namespaces left by a killed run (a normal exit removes its own)

Needs root (network namespaces), iproute2, ethtool and nftables; libtorrent for lt-tcp and lt-utp
(pip install -e '.[bench]').

Scenarios (--scenarios, default 1-1,3-1,1-8): 1-1 one seeder to one node and 3-1 three seeders to
one node at every --sizes (default 256 MiB); 1-8 one seeder to eight nodes started together at
--swarm-size (default 64 MiB).  Loss in percent per IP packet (--loss, default: 1-1 at 0,1,5,10;
3-1 and 1-8 at 0,1).  --rate R puts a tbf bottleneck of R Mbit/s on every seeder's egress.

The lab (benchmarks/netlab.py; its docstring has the details and the GSO/GRO measurements): each run
gets fresh namespaces, one host per process: `tracker`, `seed1`.., `node1`.., all on one bridge,
MTU 1500, 10.77.0.0/24; each IP packet (each fragment) is lost with the scenario's probability on the
wire, both directions, per MTU-sized packet even when a program sends with UDP GSO, and received in
GRO batches as from a NIC.  Implementations (--impls, default all):

* p2ptorrent: `twistd -n p2ptracker` on the tracker's host, `twistd -n p2pnode` on each seeder's and
  node's host (`ip netns exec HOST twistd -n ...`, --interface the host's address), every setting the
  node's default; the `p2ptorrent --node N` commands run outside (a control socket is a file).  The
  rest is benchmarks/swarm.py's run: seeders `send`, every node `download`s at once, timed from
  starting those commands until the last one returned.
* lt-tcp, lt-utp: benchmarks/lt_peer.py on each peer's host (`--bind` its address), libtorrent over
  TCP only or uTP only, told whom to connect to as in swarm.py.
* tcp (1-1 only): benchmarks/tcp_copy.py, one TCP connection from seed1's host to node1's, sendfile on
  one side, recv_into a file on the other: what the link itself carries.

Runs are interleaved (p2ptorrent, lt-tcp, lt-utp, tcp, then rotated), every copy is checked with
SHA-256, and every transfer is bounded: 60 s plus the bytes at --min-rate MB/s; a run past it is
stopped and reported as TIMEOUT.  Figures per run: wall s, goodput MB/s (bytes delivered to all nodes
/ wall s, 1 MB = 1e6 B), CPU s of every process over the transfer (seeders/nodes/tracker/the download
commands) and CPU s per GB delivered (all of them), peak RSS, and the kernel's counters from
/proc/net/snmp of every host over the transfer: UDP receive-buffer drops (Udp RcvbufErrors),
reassembly failures (Ip ReasmFails; a failure is counted when the incomplete datagram times out,
30 s, so a run's failures can show in a later snapshot or not at all), fragments created, the peak
memory of incomplete datagrams on any host ("frag KiB", /proc/net/sockstat, sampled 4 times a second:
at 4 MiB the kernel drops every new fragment), and the frames the wire dropped; for p2ptorrent the seeders its nodes dropped ("dropped node" in
logs/node_N.log).  Then, per scenario, the medians, the ratios p2ptorrent / lt-tcp, / lt-utp and
/ tcp, and the targets: no loss >= 1.0x lt-tcp goodput with CPU s per byte <= 1.5x lt-tcp's;
1% >= 0.7x lt-tcp; 5% >= 0.5x; 10% every run complete and identical and >= 0.3x; every loss level
>= 2x lt-utp.

Exit status: 0 every run completed with every copy identical; 1 otherwise; 2 bad usage, or the
machine cannot build a lab, or libtorrent is missing for lt-*.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import netlab  # noqa: E402
import swarm  # noqa: E402
from swarm import (  # noqa: E402
    MIB, P2P, Group, Job, LtPeer, Placement, Run, RunFailed, Scenario, fail, make_lt_torrent, make_payload,
    med, median_run, num, parse_list, render, run_libtorrent, run_p2ptorrent,
)

from loopback import cpu_seconds, peak_rss_mib  # noqa: E402
from p2ptorrent.metainfo import auto_piece_length  # noqa: E402
from p2ptorrent.procs import sha256  # noqa: E402

TCP = "tcp"
IMPLS = (P2P, "lt-tcp", "lt-utp", TCP)
TCP_COPY = HERE / "tcp_copy.py"
SCENARIOS = {"1-1": (1, 1, False), "3-1": (3, 1, False), "1-8": (1, 8, True)}
DEFAULT_LOSS = {"1-1": [0.0, 1.0, 5.0, 10.0], "3-1": [0.0, 1.0], "1-8": [0.0, 1.0]}
SIZE_MIB = 256
SWARM_MIB = 64
#: The targets, by loss in percent: p2ptorrent's goodput / lt-tcp's at least this (at the largest level <= the loss).
TARGET_VS_LT_TCP = {0.0: 1.0, 1.0: 0.7, 5.0: 0.5, 10.0: 0.3}
TARGET_CPU_VS_LT_TCP = 1.5  # CPU s per byte at no loss, at most this x lt-tcp's
TARGET_VS_LT_UTP = 2.0
#: MB/s below which a transfer is stopped (after 60 s of allowance): 256 MiB gets 127 s.  Far below every goodput
#: target (10% loss asks 0.3x lt-tcp), so a run it stops missed its target anyway; it bounds the whole run's time.
MIN_RATE = 4.0


# ---------------------------------------------------------------------------------------------- the lab as a Placement

class LabPlacement(Placement):
    """Each role on its own host of *lab*; counters: /proc/net/snmp of every host and the wire's, over a transfer."""

    def __init__(self, lab: netlab.Lab) -> None:
        self.lab = lab
        #: The last snapshot, so a run stopped before its own counters were read still gets them.
        self.taken: Any = None
        #: Peak bytes of incomplete datagrams held per host (Frag.memory), sampled 4 times a second
        #: from snapshot() to counters(): the level that stops all reassembly when it reaches 4 MiB.
        self.frag_peak: dict[str, int] = {}
        self._sampling = threading.Event()

    def _sample(self, stop: threading.Event) -> None:
        while not stop.wait(0.25):
            try:
                for role, fields in self.lab.snmp().items():
                    self.frag_peak[role] = max(self.frag_peak.get(role, 0), fields.get("Frag.memory", 0))
            except (netlab.LabError, OSError):
                return

    def prefix(self, role: str) -> list[str]:
        return self.lab.exec_in(role)

    def addr(self, role: str) -> str:
        return self.lab.host(role).addr

    def snapshot(self) -> Any:
        self.taken = self.lab.snmp(), self.lab.wire_counters()
        self._sampling.set()
        self._sampling = threading.Event()
        self.frag_peak = {}
        threading.Thread(target=self._sample, args=(self._sampling,), daemon=True).start()
        return self.taken

    def counters(self, before: Any) -> dict[str, float]:
        snmp_before, wire_before = before
        self._sampling.set()
        delta = netlab.snmp_delta(snmp_before, self.lab.snmp())
        out: dict[str, float] = {}
        for role, fields in delta.items():  # per host, for the run's own line (only what is not zero)
            fields["Frag.memory"] = max(fields.get("Frag.memory", 0), self.frag_peak.get(role, 0))  # the peak
            for name, value in fields.items():
                if value and name != "Frag.inuse":
                    out[f"{role} {name}"] = float(value)
        out["Frag.memory"] = float(max((fields["Frag.memory"] for fields in delta.values()), default=0))
        for name in ("Udp.RcvbufErrors", "Udp.InErrors", "Ip.ReasmFails", "Ip.ReasmOKs", "Ip.FragCreates"):
            out[name] = float(sum(fields[name] for fields in delta.values()))
        wire = self.lab.wire_counters()
        for name in ("dropped", "passed", "over_mtu"):
            out[f"wire {name}"] = float(wire.get(name, 0) - wire_before.get(name, 0))
        return out


# ---------------------------------------------------------------------------------------------- plain TCP

def run_tcp(run: Run, workdir: Path, source: Path, want: str, timeout: float, place: Placement) -> None:
    """One TCP connection seed1 -> node1 (tcp_copy.py): the link's own goodput."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / source.name
    program = [sys.executable, str(TCP_COPY)]
    procs: list[LtPeer] = []
    try:
        receiver = LtPeer("node1", workdir, [], place, [*program, "recv", "--bind", place.addr("node1"), "--out", str(out)])
        procs.append(receiver)
        port = receiver.expect("ready", time.monotonic() + swarm.START_TIMEOUT)["port"]
        sender = LtPeer("seed1", workdir, [], place,
                        [*program, "send", "--to", f"{place.addr('node1')}:{port}", "--file", str(source)])
        procs.append(sender)
        sender.expect("ready", time.monotonic() + swarm.START_TIMEOUT)
        every = [sender, receiver]
        net_before = place.snapshot()
        cpu_before = [cpu_seconds(p.proc.pid) for p in every]
        busy_before = swarm.machine_busy()
        started = time.monotonic()
        sender.tell("go")
        done = receiver.expect("done", started + timeout)
        sender.expect("sent", started + timeout)
        cpu_after = [cpu_seconds(p.proc.pid) for p in every]
        run.seconds = done["at"] - started
        run.other_cpu = swarm.machine_busy() - busy_before - sum(a - b for a, b in zip(cpu_after, cpu_before))
        run.net = place.counters(net_before)
        run.cpu = {"seeders": [cpu_after[0] - cpu_before[0]], "nodes": [cpu_after[1] - cpu_before[1]]}
        run.rss = {"seeders": [peak_rss_mib(sender.proc.pid)], "nodes": [peak_rss_mib(receiver.proc.pid)]}
        run.via = "TCP"
        if done["bytes"] != source.stat().st_size:
            fail(f"the receiver got {done['bytes']} bytes of {source.stat().st_size}")
        run.identical = sha256(out) == want
    finally:
        for p in procs:
            if p.proc.poll() is None:
                try:
                    p.tell("quit")
                except RunFailed:
                    pass
        swarm._ended([p.proc for p in procs], 5)


# ---------------------------------------------------------------------------------------------- one run on a fresh lab

def roles(scenario: Scenario) -> list[str]:
    return ["tracker", *(f"seed{i}" for i in range(1, scenario.seeders + 1)),
            *(f"node{i}" for i in range(1, scenario.nodes + 1))]


def run_on_lab(run: Run, workdir: Path, source: Path, want: str, timeout: float, rate: float | None,
               lt_torrent: Path | None) -> None:
    lab = netlab.Lab(roles(run.scenario), loss=run.scenario.loss)
    place = LabPlacement(lab)
    try:
        lab.build()
        if rate:
            for i in range(1, run.scenario.seeders + 1):
                lab.set_rate(f"seed{i}", rate)
        if run.job.impl == P2P:
            run_p2ptorrent(run, workdir, source, want, timeout, place)
        elif run.job.impl == TCP:
            run_tcp(run, workdir, source, want, timeout, place)
        else:
            assert lt_torrent is not None
            run_libtorrent(run, workdir, source, want, lt_torrent, timeout, 0, place)
    finally:
        if place.taken is not None and not any(k.startswith("wire") for k in run.net):  # stopped before reading them
            try:
                run.net = {**place.counters(place.taken), **run.net}
            except netlab.LabError:
                pass
        problems = lab.destroy()
        if problems:
            print("   lab cleanup: " + "; ".join(problems), flush=True)


# ---------------------------------------------------------------------------------------------- figures and tables

def cpu_total(r: Run) -> float | None:
    values = [v for role in ("seeders", "nodes", "tracker", "commands") for v in r.cpu.get(role, [])]
    return sum(values) if values and all(v is not None for v in values) else None


def cpu_per_gb(r: Run) -> float | None:
    total = cpu_total(r)
    return total / (r.size * r.scenario.nodes / 1e9) if total is not None else None


def state(r: Run) -> str:
    if r.error:
        return "TIMEOUT" if r.error.startswith("timed out") else "FAILED"
    return {True: "identical", False: "DIFFERS", None: "?"}[r.identical]


def per(values: list[float | None] | None, fmt: str) -> str:
    return swarm.per_proc(values, fmt) if values else "-"


RUN_HEADERS = ["impl", "scenario", "MiB", "rep", "wall s", "MB/s", "copies", "cpu s seed", "cpu s node", "cpu s trk",
               "cpu s cmd", "cpu s/GB", "rss MiB node", "rcvbuf drops", "reasm fails", "frag KiB", "wire lost",
               "seeders dropped"]
RUN_WIDTHS = [10, 11, 4, 4, 7, 7, 9, 14, 19, 9, 9, 8, 19, 12, 11, 8, 9, 15]


def run_cells(r: Run, rep: str) -> list[str]:
    wire = r.net.get("wire dropped"), r.net.get("wire passed")
    lost = wire[0] / (wire[0] + wire[1]) if wire[0] is not None and wire[1] else None
    return [r.job.label, r.scenario.name, f"{r.size / MIB:.0f}", rep, num(r.seconds), num(r.mb_per_s, "{:.1f}"), state(r),
            per(r.cpu.get("seeders"), "{:.2f}"), per(r.cpu.get("nodes"), "{:.2f}"), per(r.cpu.get("tracker"), "{:.2f}"),
            per(r.cpu.get("commands"), "{:.2f}"), num(cpu_per_gb(r), "{:.1f}"), per(r.rss.get("nodes"), "{:.1f}"),
            num(r.net.get("Udp.RcvbufErrors"), "{:.0f}"), num(r.net.get("Ip.ReasmFails"), "{:.0f}"),
            num(r.net["Frag.memory"] / 1024 if "Frag.memory" in r.net else None, "{:.0f}"),
            num(lost * 100 if lost is not None else None, "{:.2f}%"),
            num(r.net.get("seeders dropped"), "{:.0f}") if r.job.impl == P2P else "-"]


def run_line(cells: list[str]) -> str:
    return "  ".join(c.ljust(w) if i in (0, 1, 6) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, RUN_WIDTHS)))


def host_counters(r: Run) -> str:
    """The per-host kernel counters that moved during the run (from LabPlacement.counters)."""
    moved = [f"{k}={v:.0f}" for k, v in r.net.items() if " " in k and not k.startswith(("wire", "seeders"))]
    if r.net.get("wire over_mtu"):  # the lab's offloads did not hold: a GSO/TSO packet crossed whole
        moved.append(f"FRAMES OVER THE MTU ON THE WIRE={r.net['wire over_mtu']:.0f}")
    return ", ".join(moved)


def target_for(loss_pct: float) -> float:
    return TARGET_VS_LT_TCP[max(k for k in TARGET_VS_LT_TCP if k <= loss_pct)]


def bounded_ratio(a: tuple[float | None, str], b: tuple[float | None, str]) -> tuple[float | None, str]:
    """a / b where either may be a bound ("<": every run timed out, so at most size / timeout): the ratio's bound."""
    (x, xs), (y, ys) = a, b
    if x is None or y is None or not y or (xs and ys):
        return None, ""
    return x / y, ">" if ys else "<" if xs else ""


def show(value: tuple[float | None, str], fmt: str = "{:.2f}x") -> str:
    return value[1] + num(value[0], fmt) if value[0] is not None else "n/a"


class LabResults:
    def __init__(self, groups: list[Group], jobs: list[Job], timeouts: dict[Group, float]) -> None:
        self.groups, self.jobs, self.timeouts = groups, jobs, timeouts
        self.runs: list[Run] = []

    def rate(self, g: Group, impl: str) -> tuple[float | None, str]:
        """Median goodput of *impl*'s completed runs, or ("<", size / timeout) when every run of it timed out."""
        job = next((j for j in self.jobs if j.impl == impl), None)
        if job is None:
            return None, ""
        m = self.median(g, job)
        if m:
            return m.mb_per_s, ""
        everyone = self.of(g, job, ok_only=False)
        if everyone and all(state(r) == "TIMEOUT" for r in everyone):
            return g.size * g.scenario.nodes / self.timeouts[g] / 1e6, "<"
        return None, ""

    def of(self, g: Group, job: Job, ok_only: bool = True) -> list[Run]:
        return [r for r in self.runs if r.job == job and r.scenario == g.scenario and r.size == g.size
                and (r.ok or not ok_only)]

    def median(self, g: Group, job: Job) -> Run | None:
        runs = self.of(g, job)
        return median_run(runs) if runs else None

    def by_impl(self, g: Group, impl: str) -> Run | None:
        job = next((j for j in self.jobs if j.impl == impl), None)
        return self.median(g, job) if job else None

    def scenario_table(self, g: Group, markdown: bool) -> str:
        headers = ["implementation", "runs", "wall s", "MB/s", "CPU s seeders", "CPU s nodes", "CPU s tracker",
                   "CPU s cmds", "CPU s/GB", "peak RSS MiB node", "rcvbuf drops", "reasm fails", "frags created",
                   "peak frag KiB", "wire lost", "seeders dropped", "x lt-tcp", "x lt-utp", "x tcp"]
        refs = {impl: self.rate(g, impl) for impl in ("lt-tcp", "lt-utp", TCP)}
        rows = []
        for job in self.jobs:
            everyone = self.of(g, job, ok_only=False)
            if not everyone:
                continue
            runs = self.of(g, job)
            m = median_run(runs) if runs else None
            bad = sorted({state(r) for r in everyone if not r.ok})
            row = [job.label, f"{len(runs)}/{len(everyone)}" + (f" ({', '.join(bad)})" if bad else "")]
            mine = (m.mb_per_s, "") if m else self.rate(g, job.impl)
            if m:
                row += [num(m.seconds), num(m.mb_per_s, "{:.1f}"), per(m.cpu.get("seeders"), "{:.2f}"),
                        per(m.cpu.get("nodes"), "{:.2f}"), per(m.cpu.get("tracker"), "{:.2f}"),
                        per(m.cpu.get("commands"), "{:.2f}"), num(med([cpu_per_gb(r) for r in runs]), "{:.1f}"),
                        num(med([swarm.total(r.rss.get("nodes"), max) for r in runs]), "{:.1f}")]
            else:
                row += ["-", show(mine, "{:.1f}"), "-", "-", "-", "-", "-", "-"]
            # The network's figures over every run, failed ones too: a failure is when they matter most.
            counted = [r for r in everyone if r.net]

            def net(name: str, scale: float = 1.0, counted: list[Run] = counted) -> str:
                value = med([r.net.get(name) for r in counted]) if counted else None
                return num(value / scale if value is not None else None, "{:.0f}")

            wire_lost = med([r.net.get("wire dropped", 0) / max(1.0, r.net.get("wire dropped", 0) + r.net.get("wire passed", 0))
                             for r in counted]) if counted else None
            row += [net("Udp.RcvbufErrors"), net("Ip.ReasmFails"), net("Ip.FragCreates"), net("Frag.memory", 1024),
                    num(wire_lost * 100 if wire_lost is not None else None, "{:.2f}%"),
                    net("seeders dropped") if job.impl == P2P else "-"]
            row += [show(bounded_ratio(mine, refs[i])) if job.impl != i else "-" for i in ("lt-tcp", "lt-utp", TCP)]
            rows.append(row)
        return render(headers, rows, markdown)

    def targets(self, markdown: bool) -> str:
        headers = ["scenario", "MiB", "p2ptorrent runs", "MB/s", "x lt-tcp", "target", "CPU/byte x lt-tcp", "target",
                   "x lt-utp", "target", "x tcp", "verdict"]
        p2p = next((j for j in self.jobs if j.impl == P2P), None)
        rows = []
        for g in self.groups:
            if p2p is None:
                break
            loss_pct = g.scenario.loss * 100
            everyone = self.of(g, p2p, ok_only=False)
            runs = self.of(g, p2p)
            m = median_run(runs) if runs else None
            lt_tcp = self.by_impl(g, "lt-tcp")
            mine = self.rate(g, P2P)
            x_tcp = bounded_ratio(mine, self.rate(g, "lt-tcp"))
            x_utp = bounded_ratio(mine, self.rate(g, "lt-utp"))
            x_plain = bounded_ratio(mine, self.rate(g, TCP))
            cpu_x = None
            if m and lt_tcp:
                my_cpu = med([cpu_per_gb(r) for r in runs])
                their_cpu = med([cpu_per_gb(r) for r in self.of(g, next(j for j in self.jobs if j.impl == "lt-tcp"))])
                cpu_x = my_cpu / their_cpu if my_cpu is not None and their_cpu else None
            want = target_for(loss_pct)
            misses, unknown = [], []
            if len(runs) < len(everyone):
                misses.append(f"{len(everyone) - len(runs)} run(s) failed")
            ran = {j.impl for j in self.jobs}
            if "lt-tcp" not in ran:
                unknown.append("lt-tcp")
            elif x_tcp[0] is None or x_tcp[0] < want or x_tcp[1] == "<":
                misses.append(f"goodput {show(x_tcp)} lt-tcp, not >= {want}x")
            if "lt-tcp" in ran and loss_pct == 0 and (cpu_x is None or cpu_x > TARGET_CPU_VS_LT_TCP):
                misses.append(f"CPU/byte {num(cpu_x)}x lt-tcp > {TARGET_CPU_VS_LT_TCP}x")
            if "lt-utp" not in ran:
                unknown.append("lt-utp")
            elif x_utp[0] is None or x_utp[0] < TARGET_VS_LT_UTP or x_utp[1] == "<":
                misses.append(f"goodput {show(x_utp)} lt-utp, not >= {TARGET_VS_LT_UTP}x")
            verdict = "MISSED: " + "; ".join(misses) if misses else "met" if not unknown else "met so far"
            if unknown:
                verdict += f" (not run: {', '.join(unknown)})"
            if not everyone:
                rows.append([g.scenario.name, f"{g.size / MIB:.0f}", "0/0"] + ["-"] * (len(headers) - 4) + ["not run"])
                continue
            rows.append([g.scenario.name, f"{g.size / MIB:.0f}", f"{len(runs)}/{len(everyone)}",
                         show(mine, "{:.1f}"), show(x_tcp), f">= {want}x",
                         f"{num(cpu_x)}x" if loss_pct == 0 else "-", f"<= {TARGET_CPU_VS_LT_TCP}x" if loss_pct == 0 else "-",
                         show(x_utp), f">= {TARGET_VS_LT_UTP}x", show(x_plain),
                         verdict])
        return render(headers, rows, markdown)

    def report(self, markdown: bool) -> str:
        hx = "### " if markdown else "== "
        out = []
        for g in self.groups:
            out += [f"{hx}{g.scenario.name.replace(' ', ' at ')} loss, {g.size / MIB:.0f} MiB: medians of the completed runs"
                    if g.scenario.loss else f"{hx}{g.scenario.name} no loss, {g.size / MIB:.0f} MiB: medians of the completed runs",
                    "", self.scenario_table(g, markdown), ""]
        out += [f"{hx}Targets: p2ptorrent / lt-tcp, / lt-utp, / tcp (goodput; CPU s per byte at no loss)", "",
                 self.targets(markdown), ""]
        return "\n".join(out)

    def to_json(self) -> list[dict[str, Any]]:
        import dataclasses

        out = []
        for r in self.runs:
            d = dataclasses.asdict(r)
            d.update(scenario=r.scenario.name, loss=r.scenario.loss, job=r.job.label, state=state(r),
                     mb_per_s=None if math.isnan(r.mb_per_s) else r.mb_per_s,
                     seconds=None if math.isnan(r.seconds) else r.seconds, cpu_s_per_gb=cpu_per_gb(r))
            out.append(d)
        return out


# ---------------------------------------------------------------------------------------------- the whole thing

def interrupted_by(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)  # unwinds through every finally: processes, then the lab

def build_plan(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[list[Group], list[Job], float]:
    if args.quick:
        args.sizes, args.swarm_size, args.reps = args.sizes or "64", args.swarm_size or 64, args.reps or 1
    scen_names = parse_list(parser, args.scenarios or ("1-1,3-1" if args.quick else ",".join(SCENARIOS)), "scenario", str)
    for name in scen_names:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}: choose from {', '.join(SCENARIOS)}")
    impls = parse_list(parser, args.impls or ",".join(IMPLS), "implementation", str)
    for impl in impls:
        if impl not in IMPLS:
            parser.error(f"unknown implementation {impl!r}: choose from {', '.join(IMPLS)}")
    sizes = [s * MIB for s in parse_list(parser, args.sizes or str(SIZE_MIB), "size", int)]
    swarm_size = (args.swarm_size or SWARM_MIB) * MIB
    reps = args.reps or 1
    given_loss = parse_list(parser, args.loss, "loss", float) if args.loss else None
    if any(s <= 0 for s in [*sizes, swarm_size]) or reps < 1:
        parser.error("sizes and repetitions must be 1 or more")
    if given_loss and any(not 0 <= x < 100 for x in given_loss):
        parser.error("loss is in percent, 0 to below 100")
    groups = []
    for name in scen_names:
        seeders, nodes, swarming = SCENARIOS[name]
        if given_loss is not None:
            losses = given_loss
        elif args.quick:
            losses = [0.0, 1.0] if name == "1-1" else [1.0]
        else:
            losses = DEFAULT_LOSS[name]
        for loss in losses:
            for size in [swarm_size] if swarming else sizes:
                groups.append(Group(Scenario(seeders, nodes, swarm=swarming, loss=loss / 100), size, reps))
    jobs = [Job(P2P, args.chunk) if i == P2P else Job(i) for i in IMPLS if i in impls]
    return groups, jobs, args.min_rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1].split("The lab (benchmarks")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="64 MiB, one run each: 1-1 at 0 and 1%%, 3-1 at 1%%")
    parser.add_argument("--scenarios", default=None, help=f"comma list of {', '.join(SCENARIOS)} (default all)")
    parser.add_argument("--loss", default=None,
                        help="comma list of loss in percent per IP packet for every scenario (default: 1-1 at 0,1,5,10;"
                             " 3-1 and 1-8 at 0,1)")
    parser.add_argument("--sizes", default=None, help=f"file sizes in MiB for 1-1 and 3-1 (default {SIZE_MIB})")
    parser.add_argument("--swarm-size", type=int, default=None, help=f"file size in MiB for 1-8 (default {SWARM_MIB})")
    parser.add_argument("--reps", type=int, default=None, help="runs of each scenario and implementation (default 1)")
    parser.add_argument("--impls", default=None, help=f"comma list of {', '.join(IMPLS)} (default all; tcp runs in 1-1 only)")
    parser.add_argument("--rate", type=float, default=None, help="tbf bottleneck in Mbit/s on every seeder's egress (default none)")
    parser.add_argument("--chunk", type=int, default=None,
                        help="p2ptorrent --chunk-size (BUFFER_SIZE = chunk + 32) on every node (default: the node's own)")
    parser.add_argument("--min-rate", type=float, default=MIN_RATE,
                        help="a transfer slower than this many MB/s (after a 60 s allowance) is stopped as TIMEOUT"
                             f" (default {MIN_RATE:g})")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the tables to this Markdown file")
    parser.add_argument("--json", type=Path, default=None, help="also write every run's raw figures to this JSON file")
    parser.add_argument("--workdir", type=Path, default=None, help="make the work folder inside this one (default: /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (payloads, every run's logs)")
    args = parser.parse_args(argv)
    groups, jobs, min_rate = build_plan(args, parser)
    if not groups or not jobs:
        parser.error("nothing to run")
    problems = netlab.missing_requirements()
    if problems:
        print("cannot build the lab: " + "; ".join(problems), file=sys.stderr)
        return 2
    if any(j.impl.startswith("lt-") for j in jobs) and importlib.util.find_spec("libtorrent") is None:
        print("libtorrent is not importable in this Python: install the bench extra (pip install -e '.[bench]'),"
              " or leave lt-* out with --impls p2ptorrent,tcp", file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, interrupted_by)
    if signal.getsignal(signal.SIGHUP) == signal.SIG_DFL:  # under nohup it stays ignored
        signal.signal(signal.SIGHUP, interrupted_by)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="lab-", dir=args.workdir)).resolve()
    timeouts = {g: 60.0 + g.size * g.scenario.nodes / (min_rate * 1e6) for g in groups}
    results = LabResults(groups, jobs, timeouts)
    begun = time.monotonic()
    command = "python benchmarks/lab.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (f"# p2ptorrent {swarm.git_describe()}, libtorrent {swarm.lt_version()}, python {platform.python_version()},"
              f" {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, {time.strftime('%Y-%m-%d %H:%M')}; lab: MTU"
              f" {netlab.MTU}, loss on the wire{f', tbf {args.rate} Mbit/s per seeder' if args.rate else ''}; work folder {root}")
    print(header, flush=True)
    print(f"# {command}", flush=True)
    print(f"# {len(groups)} scenario groups x {len(jobs)} implementations ({', '.join(j.label for j in jobs)}),"
          " interleaved run by run; tcp in 1->1 only", flush=True)
    print(run_line(RUN_HEADERS), flush=True)
    interrupted = False
    try:
        payloads: dict[int, tuple[Path, str]] = {}
        for g in groups:
            if g.size not in payloads:
                payloads[g.size] = make_payload(root, g.size)
            source, want = payloads[g.size]
            lt_torrent = None
            timeout = timeouts[g]
            group_jobs = [j for j in jobs if j.impl != TCP or (g.scenario.seeders, g.scenario.nodes) == (1, 1)]
            for rep in range(1, g.reps + 1):
                shift = (rep - 1) % len(group_jobs)
                for job in group_jobs[shift:] + group_jobs[:shift]:
                    run = Run(job=job, scenario=g.scenario, size=g.size, rep=rep)
                    workdir = root / f"r{len(results.runs) + 1}-{job.impl[:5]}"  # short: control socket paths
                    try:
                        if job.impl.startswith("lt-") and lt_torrent is None:
                            lt_torrent = make_lt_torrent(source, auto_piece_length(g.size), root)
                        run_on_lab(run, workdir, source, want, timeout, args.rate, lt_torrent)
                    except (RunFailed, netlab.LabError, OSError, subprocess.SubprocessError) as e:
                        run.error = str(e) or type(e).__name__
                    results.runs.append(run)
                    print(run_line(run_cells(run, f"{rep}/{g.reps}")), flush=True)
                    if run.error:
                        print(f"   {job.label} {state(run)} in {workdir}: {run.error.splitlines()[0][:300]}", flush=True)
                    if host_counters(run):
                        print(f"   counters moved: {host_counters(run)}", flush=True)
                    if not args.keep:
                        shutil.rmtree(workdir, ignore_errors=True)
    except KeyboardInterrupt as e:
        interrupted = True
        print(f"interrupted ({e or 'SIGINT'}): stopping every process and removing the lab", file=sys.stderr, flush=True)
    finally:
        swarm.kill_everything()
        netlab.destroy_all()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    elapsed = time.monotonic() - begun
    if args.json:  # first: the raw figures survive whatever happens below
        args.json.write_text(json.dumps({"header": header, "command": command, "runs": results.to_json()}, indent=1))
    if results.runs:
        print()
        print(results.report(markdown=False))
    failed = [r for r in results.runs if not r.ok]
    verdict = (f"{len(results.runs) - len(failed)} of {len(results.runs)} runs completed with every copy identical"
               f" (SHA-256); {elapsed / 60:.1f} minutes")
    print(verdict + ("" if not args.keep else f"; work folder kept: {root}"))
    for r in failed:
        print(f"{state(r)}: {r.job.label} {r.scenario.name} {r.size // MIB} MiB run {r.rep}: "
              f"{(r.error or 'a copy differs from the original').splitlines()[0][:300]}")
    if args.markdown:
        args.markdown.write_text(f"{header.removeprefix('# ').split('; work folder')[0]}\n\nCommand: `{command}`\n\n"
                                 f"{results.report(markdown=True)}\n### Every run\n\n"
                                 f"{render(RUN_HEADERS, [run_cells(r, str(r.rep)) for r in results.runs], True)}\n\n{verdict}\n")
        print(f"tables written to {args.markdown}")
    if args.json:
        print(f"raw figures written to {args.json}")
    return 1 if failed or interrupted or not results.runs else 0


if __name__ == "__main__":
    sys.exit(main())
