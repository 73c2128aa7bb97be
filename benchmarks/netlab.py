"""A lab of separate hosts: network namespaces on one Linux bridge, with optional loss and a bottleneck.

Shared by the lab benchmark (`benchmarks/lab.py`) and the lab test (`tests/test_lab.py`).

    with Lab(["tracker", "seed1", "node1"], loss=0.01) as lab:
        subprocess.run([*lab.exec_in("seed1"), "twistd", "-n", ...])   # a program on host seed1
        lab.host("seed1").addr                                         # 10.77.0.2
        lab.snmp()                                                     # per host: /proc/net/snmp counters

    python benchmarks/netlab.py clean        # remove namespaces left by a killed run (dead owner pid)
    python benchmarks/netlab.py clean --all  # ... and every p2plab namespace, even a live run's

The network
-----------
Every host is a namespace `<prefix><pid>x<n>-<role>` with one veth, `eth0`, MTU 1500, address
10.77.0.<i>/24 (in host order, from .1); the other end, `port<i>`, sits on bridge `br0` in a namespace
of its own, `<prefix><pid>x<n>-br`.  Both veth ends are created directly inside their namespaces, so
nothing ever appears in the root namespace, and no namespace has a route anywhere else: traffic stays
between the lab's hosts.  Removing the namespaces removes every interface, qdisc and rule in them
(`destroy`, run on normal exit, on an exception, from atexit, and on SIGTERM/SIGHUP, which this
module turns into KeyboardInterrupt when nobody else handles them; SIGINT already is one).  Every
process still inside a namespace is killed first (only our processes can be in namespaces we made).

Loss: per IP packet, on the wire, GSO and GRO as a real NIC does them
----------------------------------------------------------------------
The loss is wanted per MTU-sized IP packet (per fragment, before reassembly), as a real link loses
packets.  Two facts of veth make a naive rule wrong, measured here with `benchmarks/gso_loss.py`
(40-segment UDP GSO sends of 1472-byte segments, 10% loss, kernel 6.18):

* veth passes a GSO packet (UDP_SEGMENT, or a TCP TSO packet) across unsegmented: with the default
  offloads `iptables -t raw -A PREROUTING -m statistic ... -j DROP` in the receiving host sees one
  40-segment packet and drops all 40 or none (20 of 200 sends wholly lost, 180 intact: the loss came
  in whole batches).  Fix: `ethtool -K eth0 tso off tx-udp-segmentation off` on every host, so the
  kernel segments in software as the packet leaves the host (generic-segmentation-offload stays on:
  one big skb through the stack, split just before the wire, as a NIC would).
* GRO runs before netfilter PREROUTING.  With GRO on in the receiving host (`ethtool -K eth0 gro on`;
  veth does GRO for a forwarded packet only when the sending veth, the bridge port, has `tso off`),
  the socket's UDP_GRO coalesces the segments again, and a rule in the host's PREROUTING is back to
  dropping whole batches (again 20 of 200 wholly lost).  With GRO off the loss is per segment, but
  every recvmsg gets one datagram (1.0 segments per call): unlike a NIC that coalesces on receive.

So the loss is applied on the wire instead, in the bridge's namespace: an nftables `bridge` table
whose forward hook drops each frame with probability P (`numgen random mod 1000000 < P*1e6 drop`),
every frame between any two hosts, both directions; a frame is one IP packet or one fragment (the
bridge does not reassemble: no conntrack there).  With

    hosts' eth0:       tso off, tx-udp-segmentation off, gro on
    bridge's port<i>:  tso off, tx-udp-segmentation off, gro off   (forward frames as they come)

a 40-segment GSO send at 10% loss loses 10.0% of the segments, individually (0 of 200 sends wholly
lost, about 0.9^40 = 1.5% intact), and a UDP_GRO receiver still gets coalesced batches: 40 segments
per recvmsg without loss, about 8 at 10% (GRO ends a batch at a gap in the IP ids, as on a NIC).
TCP is segmented the same way (tso off), so TCP loses single segments too.  No frame longer than
the MTU crosses the bridge (the demo counts them).  `loss_at="host"` instead puts the literal
per-host rule `iptables -t raw -A PREROUTING ! -i lo -m statistic --mode random --probability P -j DROP`
in every host (raw PREROUTING sees fragments: nothing in a fresh namespace loads defragmentation)
and turns the hosts' GRO off so that it drops single packets: the loss is the same, per packet,
but receivers get no GRO batches.

Bottleneck: `rate_mbit` puts `tc qdisc replace dev eth0 root tbf rate R burst B latency L` on a
host's egress (tbf splits a GSO packet larger than its burst into segments itself).

Counters: `snmp()` reads /proc/net/snmp inside every host (per namespace): Udp RcvbufErrors and
InErrors (datagrams dropped at a full receive buffer), Ip ReasmFails, ReasmOKs, ReasmReqds (fragments
that arrived), FragCreates; the lab benchmark prints the difference over a run.  Also the FRAG line of
/proc/net/sockstat: incomplete datagrams held and their memory.  Read through /proc/<pid>/net/ of a
`sleep` kept in each host, so reading costs no process start.  The kernel's reassembly settings are
left as they are, and they matter: an incomplete datagram (one fragment lost) is held for
net.ipv4.ipfrag_time (30 s), and once those hold ipfrag_high_thresh (4 MiB) every new fragment is
dropped until they expire.  Measured with p2ptorrent's 7216-byte chunks (5 fragments each) at 1% loss:
FRAG memory climbs to 4.2 MB after about 9000 datagrams (a 65 MB download) and stays there; no
fragmented datagram arrives any more, and the node drops its seeders after 10 s of silence.  A
failure is counted (ReasmFails) when a datagram times out or is evicted, so the counts of a run can
be small even then; Frag.memory, sampled during the run, shows it.
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

PREFIX = "p2plab"
SUBNET = "10.77.0"
MTU = 1500
#: What snmp() reports, (section, field) of /proc/net/snmp.
SNMP_FIELDS = (("Udp", "RcvbufErrors"), ("Udp", "InErrors"), ("Ip", "ReasmFails"), ("Ip", "ReasmOKs"),
               ("Ip", "ReasmReqds"), ("Ip", "FragCreates"))
#: Offloads (ethtool -K) of each host's eth0 and of each bridge port, per where the loss is applied.
HOST_OFFLOADS = {"wire": ("tso", "off", "tx-udp-segmentation", "off", "gro", "on"),
                 "host": ("tso", "off", "tx-udp-segmentation", "off", "gro", "off")}
PORT_OFFLOADS = ("tso", "off", "tx-udp-segmentation", "off", "gro", "off")
COMMAND_TIMEOUT = 20.0


class LabError(Exception):
    """A command building or changing the lab failed; the message says which and why."""


def ip_command() -> str:
    return shutil.which("ip") or next((p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip") if os.path.exists(p)), "")


def missing_requirements(loss_at: str = "wire") -> list[str]:
    """Why this machine cannot build a lab (empty: it can)."""
    problems = []
    if os.geteuid() != 0:
        problems.append(f"network namespaces need root (running as uid {os.geteuid()})")
    needs = {"ip": "iproute2", "ethtool": "ethtool", "tc": "iproute2",
             "nft" if loss_at == "wire" else "iptables": "nftables" if loss_at == "wire" else "iptables"}
    for tool, package in needs.items():
        if not (shutil.which(tool) or any(os.path.exists(f"{d}/{tool}") for d in ("/usr/sbin", "/sbin"))):
            problems.append(f"the `{tool}` command is not installed (apt-get install {package})")
    return problems


@dataclass(frozen=True)
class Host:
    role: str
    ns: str
    addr: str
    index: int
    dev: str = "eth0"


def _sh(args: Sequence[str], *, input: str | None = None, check: bool = True) -> str:
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, input=input)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LabError(f"`{' '.join(args)}` could not run: {e}") from e
    if check and done.returncode != 0:
        raise LabError(f"`{' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


_LIVE: set["Lab"] = set()
_counter = 0


class Lab:
    """Hosts named by *roles* on one bridge; :meth:`build` makes them, :meth:`destroy` (or `with`) removes them."""

    def __init__(self, roles: Sequence[str], *, loss: float = 0.0, loss_at: str = "wire", mtu: int = MTU,
                 prefix: str = PREFIX) -> None:
        global _counter
        if len(set(roles)) != len(roles) or not roles or len(roles) > 250:
            raise ValueError(f"1 to 250 distinct roles expected, not {roles!r}")
        if loss_at not in HOST_OFFLOADS:
            raise ValueError(f"loss_at is 'wire' or 'host', not {loss_at!r}")
        _counter += 1
        self.name = f"{prefix}{os.getpid()}x{_counter}"
        self.ip = ip_command()
        self.loss_at = loss_at
        self.mtu = mtu
        self.bridge = f"{self.name}-br"
        self.hosts = {role: Host(role, f"{self.name}-{role}", f"{SUBNET}.{i + 1}", i) for i, role in enumerate(roles)}
        self.created: list[str] = []
        #: A `sleep` in each host: /proc/<its pid>/net/ is the host's, readable without entering it.
        self.watchers: dict[str, subprocess.Popen[bytes]] = {}
        self.loss = 0.0
        self._initial_loss = loss

    # ------------------------------------------------------------------ building and removing

    def build(self) -> "Lab":
        problems = missing_requirements(self.loss_at)
        if problems:
            raise LabError("cannot build the lab: " + "; ".join(problems))
        _LIVE.add(self)
        _install_handlers()
        try:
            for ns in (self.bridge, *(h.ns for h in self.hosts.values())):
                _sh([self.ip, "netns", "add", ns])
                self.created.append(ns)
                _sh([self.ip, "-n", ns, "link", "set", "lo", "up"])
            _sh([self.ip, "-n", self.bridge, "link", "add", "br0", "type", "bridge"])
            _sh([self.ip, "-n", self.bridge, "link", "set", "br0", "up"])
            for h in self.hosts.values():
                port = f"port{h.index}"
                # Both ends are born inside their namespaces: nothing appears in the root namespace.
                _sh([self.ip, "link", "add", h.dev, "netns", h.ns, "mtu", str(self.mtu), "type", "veth",
                     "peer", "name", port, "netns", self.bridge, "mtu", str(self.mtu)])
                _sh([self.ip, "-n", self.bridge, "link", "set", port, "master", "br0"])
                _sh([self.ip, "-n", self.bridge, "link", "set", port, "up"])
                _sh([*self.exec_in(self.bridge), "ethtool", "-K", port, *PORT_OFFLOADS])
                _sh([self.ip, "-n", h.ns, "addr", "add", f"{h.addr}/24", "dev", h.dev])
                _sh([self.ip, "-n", h.ns, "link", "set", h.dev, "up"])
                _sh([*self.exec_in(h.ns), "ethtool", "-K", h.dev, *HOST_OFFLOADS[self.loss_at]])
                self.watchers[h.role] = subprocess.Popen([*self.exec_in(h.ns), "sleep", "infinity"],
                                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            self.set_loss(self._initial_loss)
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> list[str]:
        """Kill what still runs inside, remove every namespace; returns the problems (empty: all gone)."""
        problems = _remove(self.created, self.ip)
        self.created.clear()
        for watcher in self.watchers.values():
            watcher.kill()  # killed with its namespace already; this reaps it
            watcher.wait()
        self.watchers.clear()
        _LIVE.discard(self)
        return problems

    def __enter__(self) -> "Lab":
        return self.build()

    def __exit__(self, *exc: object) -> None:
        problems = self.destroy()
        if problems and exc[0] is None:
            raise LabError("; ".join(problems))

    # ------------------------------------------------------------------ using it

    def host(self, role: str) -> Host:
        return self.hosts[role]

    def exec_in(self, where: str) -> list[str]:
        """The command prefix that runs a program on host *where* (a role or a namespace name); it execs."""
        ns = self.hosts[where].ns if where in self.hosts else where
        return [self.ip, "netns", "exec", ns]

    def set_loss(self, p: float) -> None:
        """Drop each IP packet (each fragment) with probability *p*, every host, both directions (0: none)."""
        if not 0.0 <= p < 1.0:
            raise ValueError(f"loss must be in [0, 1), not {p}")
        if self.loss_at == "wire":
            # Counters: frames dropped, frames passed, and frames longer than the MTU (there should be none).
            rules = [f"meta length > {self.mtu} counter", "counter"]
            if p > 0:
                rules.insert(0, f"numgen random mod 1000000 < {round(p * 1_000_000)} counter drop")
            body = "\n".join(f"    {r}" for r in rules)
            _sh([*self.exec_in(self.bridge), "nft", "-f", "-"], input=(
                "table bridge lab\ndelete table bridge lab\n"
                f"table bridge lab {{\n  chain wire {{\n    type filter hook forward priority 0; policy accept;\n{body}\n  }}\n}}\n"))
        else:
            for h in self.hosts.values():
                _sh([*self.exec_in(h.ns), "iptables", "-t", "raw", "-F", "PREROUTING"])
                if p > 0:
                    _sh([*self.exec_in(h.ns), "iptables", "-t", "raw", "-A", "PREROUTING", "!", "-i", "lo", "-m",
                         "statistic", "--mode", "random", "--probability", f"{p:.6f}", "-j", "DROP"])
        self.loss = p

    def wire_counters(self) -> dict[str, int]:
        """Frames dropped, passed and longer than the MTU on the bridge since the last set_loss ("wire" only)."""
        if self.loss_at != "wire":
            return {}
        text = _sh([*self.exec_in(self.bridge), "nft", "list", "table", "bridge", "lab"])
        found = {"dropped": 0, "passed": 0, "over_mtu": 0}
        for line in text.splitlines():
            m = re.search(r"counter packets (\d+)", line)
            if not m:
                continue
            key = "dropped" if "drop" in line else "over_mtu" if "length" in line else "passed"
            found[key] = int(m.group(1))
        return found

    def set_rate(self, role: str, rate_mbit: float | None, burst_bytes: int = 64 * 1024, latency_ms: float = 50.0) -> None:
        """A tbf bottleneck of *rate_mbit* on host *role*'s egress (None: remove it)."""
        h = self.hosts[role]
        if rate_mbit is None:
            subprocess.run([*self.exec_in(h.ns), "tc", "qdisc", "del", "dev", h.dev, "root"],
                           capture_output=True, timeout=COMMAND_TIMEOUT)
            return
        _sh([*self.exec_in(h.ns), "tc", "qdisc", "replace", "dev", h.dev, "root", "tbf", "rate", f"{rate_mbit}mbit",
             "burst", str(burst_bytes), "latency", f"{latency_ms}ms"])

    def snmp(self, roles: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
        """Per host: the SNMP_FIELDS of /proc/net/snmp inside it, keyed "Udp.RcvbufErrors" and so on, and
        the FRAG line of /proc/net/sockstat: "Frag.inuse" (incomplete datagrams held) and "Frag.memory" (bytes)."""
        out = {}
        for role in roles if roles is not None else self.hosts:
            watcher = self.watchers.get(role)
            try:
                if watcher is None or watcher.poll() is not None:
                    raise OSError("no watcher")
                text = "\n".join(Path(f"/proc/{watcher.pid}/net/{name}").read_text() for name in ("snmp", "sockstat"))
            except OSError:
                text = _sh([*self.exec_in(role), "cat", "/proc/net/snmp", "/proc/net/sockstat"])
            out[role] = parse_snmp(text)
        return out


def parse_snmp(text: str) -> dict[str, int]:
    """The SNMP_FIELDS of /proc/net/snmp (pairs of lines: names, then values) and the FRAG gauges of
    /proc/net/sockstat ("FRAG: inuse N memory M"), from the two files' text one after the other."""
    lines = text.splitlines()
    sockstat = next((i for i, line in enumerate(lines) if line.startswith("sockets:")), len(lines))
    table: dict[str, int] = {}
    for names, values in zip(lines[:sockstat:2], lines[1:sockstat:2]):
        section, *keys = names.split()
        _, *vals = values.split()
        for k, v in zip(keys, vals):
            table[f"{section.rstrip(':')}.{k}"] = int(v)
    out = {f"{s}.{f}": table.get(f"{s}.{f}", 0) for s, f in SNMP_FIELDS}
    for line in lines[sockstat:]:
        if line.startswith("FRAG:"):
            words = line.split()[1:]
            out.update({f"Frag.{k}": int(v) for k, v in zip(words[::2], words[1::2])})
    return out


#: Figures of snmp() that are levels, not counts: a difference keeps the later value.
GAUGES = ("Frag.inuse", "Frag.memory")


def snmp_delta(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {role: {k: after[role][k] - (0 if k in GAUGES else before[role].get(k, 0)) for k in after[role]}
            for role in after if role in before}


def _remove(namespaces: Sequence[str], ip: str) -> list[str]:
    """Kill the processes inside *namespaces*, then delete them (last made, first removed)."""
    problems = []
    for ns in reversed(list(namespaces)):
        pids = subprocess.run([ip, "netns", "pids", ns], capture_output=True, text=True, timeout=COMMAND_TIMEOUT).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        deadline = time.monotonic() + 5
        while pids and time.monotonic() < deadline:
            pids = subprocess.run([ip, "netns", "pids", ns], capture_output=True, text=True,
                                  timeout=COMMAND_TIMEOUT).stdout.split()
            time.sleep(0.05)
        done = subprocess.run([ip, "netns", "del", ns], capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        if done.returncode != 0 and "No such file" not in done.stderr:
            problems.append(f"ip netns del {ns}: {done.stderr.strip()}")
    return problems


def destroy_all() -> None:
    for lab in list(_LIVE):
        lab.destroy()


_handled = False


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through every finally and `with`, then atexit


def _install_handlers() -> None:
    """atexit, and SIGTERM/SIGHUP as KeyboardInterrupt when nobody handles them (SIGINT is one already)."""
    global _handled
    if _handled:
        return
    _handled = True
    atexit.register(destroy_all)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _interrupt)
        except ValueError:  # not the main thread: the caller's own cleanup has to do
            pass


def stale(prefix: str = PREFIX, every: bool = False) -> list[str]:
    """Namespaces of labs whose run has ended (its pid is gone), or with *every*, all of *prefix*'s."""
    ip = ip_command()
    listing = subprocess.run([ip, "netns", "list"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT).stdout
    found = []
    for line in listing.splitlines():
        ns = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{re.escape(prefix)}(\d+)x\d+-.+", ns)
        if m and (every or not os.path.exists(f"/proc/{m.group(1)}")):
            found.append(ns)
    return found


def clean(prefix: str = PREFIX, every: bool = False, say: Callable[[str], None] = print) -> int:
    names = stale(prefix, every)
    problems = _remove(names, ip_command())
    for ns in names:
        say(f"removed {ns}")
    for p in problems:
        say(p)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("clean", help="remove namespaces left behind by a killed run")
    c.add_argument("--all", action="store_true", help="every namespace of the prefix, also a live run's")
    c.add_argument("--prefix", default=PREFIX)
    args = parser.parse_args(argv)
    return clean(args.prefix, args.all)


if __name__ == "__main__":
    sys.exit(main())
