"""Does the lab lose single packets when a sender uses UDP GSO and the receiver UDP GRO?  Measured, not assumed.

    python benchmarks/gso_loss.py                     # the lab as built (loss on the wire), 10% loss
    python benchmarks/gso_loss.py --loss-at host      # the per-host iptables rule instead
    python benchmarks/gso_loss.py --offloads default  # veth's own offloads: see the loss come in batches
    python benchmarks/gso_loss.py --loss-at host --host-gro on  # the host rule with GRO: batches again

Two hosts of a `netlab.Lab`.  The receiver binds a UDP socket with UDP_GRO (104) on (unless
--no-gro); the sender makes --sends sendmsg calls of --segments segments of 1472 bytes each with
UDP_SEGMENT (103), 2 ms apart (each segment carries its send and segment number).  Printed: the
segments lost in all, the sends lost whole and the sends arriving intact (with loss p and n segments
lost one by one, about p**n and (1-p)**n of them), the average segments per recvmsg (above 1: the
receiver got GRO batches), and the bridge's frame counters (frames over the MTU should be 0).
Exit status 0 when the loss was per segment (no send lost whole, loss within 3 points of --loss).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import netlab  # noqa: E402

SEGMENT = 1472  # MTU 1500 - 20 (IP) - 8 (UDP)
PORT = 9000

#: The program run inside each host (python -c): "recv GRO" or "send ADDR SENDS SEGMENTS".
PROBE = r"""
import json, socket, struct, sys, time
SOL_UDP, UDP_SEGMENT, UDP_GRO, SEG = 17, 103, 104, %(seg)d
if sys.argv[1] == "recv":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    if sys.argv[2] == "1":
        s.setsockopt(SOL_UDP, UDP_GRO, 1)
    s.bind((sys.argv[3], %(port)d))
    print("ready", flush=True)
    s.settimeout(10)
    buf, seen, calls, segs = bytearray(65536), set(), 0, 0
    try:
        while True:
            n, anc, _, _ = s.recvmsg_into([buf], socket.CMSG_SPACE(4))
            s.settimeout(1.0)  # the sender is done when nothing came for a second
            size = SEG
            for level, kind, data in anc:
                if level == SOL_UDP and kind == UDP_GRO:
                    size = struct.unpack("=H" if len(data) == 2 else "=i", data)[0]
            calls += 1
            for off in range(0, n, size):
                seen.add(struct.unpack_from("!II", buf, off))
                segs += 1
    except socket.timeout:
        pass
    print(json.dumps({"calls": calls, "segments": segs, "seen": sorted(seen)}), flush=True)
else:
    addr, sends, nseg = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(SOL_UDP, UDP_SEGMENT, SEG)
    for b in range(sends):
        s.sendto(b"".join(struct.pack("!II", b, i) + bytes(SEG - 8) for i in range(nseg)), (addr, %(port)d))
        time.sleep(0.002)
""" % {"seg": SEGMENT, "port": PORT}


def measure(lab: netlab.Lab, sends: int, segments: int, gro: bool) -> dict[str, float]:
    rx = lab.host("rx")
    receiver = subprocess.Popen([*lab.exec_in("rx"), sys.executable, "-c", PROBE, "recv", "1" if gro else "0", rx.addr],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        if receiver.stdout.readline().strip() != "ready":
            raise SystemExit("the receiver did not start")
        subprocess.run([*lab.exec_in("tx"), sys.executable, "-c", PROBE, "send", rx.addr, str(sends), str(segments)],
                       check=True, timeout=60)
        out, _ = receiver.communicate(timeout=30)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    got = json.loads(out)
    per_send = Counter(b for b, _ in got["seen"])
    lost = [segments - per_send.get(b, 0) for b in range(sends)]
    total = sends * segments
    return {"loss": 1 - len(got["seen"]) / total, "whole": sum(n == segments for n in lost), "intact": sum(n == 0 for n in lost),
            "per_call": got["segments"] / max(1, got["calls"]), "calls": got["calls"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loss", type=float, default=0.10)
    parser.add_argument("--loss-at", choices=("wire", "host"), default="wire")
    parser.add_argument("--offloads", choices=("lab", "default"), default="lab",
                        help="lab: the lab's ethtool settings; default: put veth's defaults back (TSO/GSO on, GRO off)")
    parser.add_argument("--sends", type=int, default=200)
    parser.add_argument("--segments", type=int, default=40)
    parser.add_argument("--no-gro", action="store_true", help="the receiver does not ask for UDP_GRO")
    parser.add_argument("--host-gro", choices=("on", "off"), default=None,
                        help="set GRO on the hosts' eth0 after the lab is built (default: the lab's choice)")
    args = parser.parse_args(argv)
    if not 1 <= args.segments <= 44 or not 1 <= args.sends <= 10000:
        parser.error("1..44 segments (64 KiB) and 1..10000 sends")
    with netlab.Lab(["tx", "rx"], loss_at=args.loss_at) as lab:
        if args.offloads == "default":
            for role in ("tx", "rx"):
                subprocess.run([*lab.exec_in(role), "ethtool", "-K", "eth0", "tso", "on", "tx-udp-segmentation", "on",
                                "gro", "off"], check=True, timeout=20)
            for port in ("port0", "port1"):
                subprocess.run([*lab.exec_in(lab.bridge), "ethtool", "-K", port, "tso", "on", "tx-udp-segmentation", "on"],
                               check=True, timeout=20)
        if args.host_gro:
            for role in ("tx", "rx"):
                subprocess.run([*lab.exec_in(role), "ethtool", "-K", "eth0", "gro", args.host_gro], check=True, timeout=20)
        print(f"# loss {args.loss:.0%} at the {args.loss_at}, offloads: {args.offloads}"
              f" (hosts' eth0: {' '.join(netlab.HOST_OFFLOADS[args.loss_at]) if args.offloads == 'lab' else 'veth defaults'};"
              f" bridge ports: {' '.join(netlab.PORT_OFFLOADS) if args.offloads == 'lab' else 'veth defaults'})"
              f"{f', then hosts gro {args.host_gro}' if args.host_gro else ''};"
              f" receiver UDP_GRO {'off' if args.no_gro else 'on'}")
        base = measure(lab, min(args.sends, 50), args.segments, not args.no_gro)
        print(f"no loss:   {base['per_call']:.1f} segments per recvmsg, {base['loss']:.1%} lost")
        lab.set_loss(args.loss)
        m = measure(lab, args.sends, args.segments, not args.no_gro)
        wire = lab.wire_counters()
    n = args.segments
    print(f"loss {args.loss:.0%}: {args.sends} sends x {n} segments of {SEGMENT} B: {m['loss']:.1%} of the segments lost;"
          f" sends lost whole {m['whole']} (one by one: ~{args.sends * args.loss ** n:.0f}),"
          f" intact {m['intact']} (one by one: ~{args.sends * (1 - args.loss) ** n:.0f});"
          f" {m['per_call']:.1f} segments per recvmsg ({m['calls']} calls)")
    if wire:
        print(f"bridge frames: {wire['dropped']} dropped, {wire['passed']} passed, {wire['over_mtu']} longer than the MTU")
    per_segment = m["whole"] <= max(1, args.sends * args.loss ** n * 3) and abs(m["loss"] - args.loss) < 0.03
    print("verdict: the loss is per segment" if per_segment else "verdict: the loss is NOT per segment (whole sends lost)")
    return 0 if per_segment else 1


if __name__ == "__main__":
    sys.exit(main())
