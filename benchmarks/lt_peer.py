"""One libtorrent peer as its own process, driven by benchmarks/swarm.py (a benchmark tool, not part of p2ptorrent).

    python benchmarks/lt_peer.py make FILE TORRENT --piece-length N
    python benchmarks/lt_peer.py peer --torrent T --save DIR --role seed|leech --mode default|utp|tcp [--bind ADDR]

``make`` writes a v1-only torrent of FILE (the same kind of torrent p2ptorrent
makes: SHA-1 pieces, one file) with the given piece length.

``peer`` starts a libtorrent session listening on 127.0.0.1, or on --bind's
address (a lab host's, benchmarks/lab.py), on a port free there for both TCP
and UDP, with DHT, LSD, UPnP and NAT-PMP off, several connections per IP allowed
(every peer is 127.0.0.1) and no rate limits; ``--mode`` picks the transports:
``default`` leaves libtorrent's own choice (TCP and uTP both enabled; libtorrent
tries uTP first and falls back to TCP), ``utp`` turns TCP off both ways, ``tcp``
turns uTP off both ways.  A seeder adds the torrent beside the file and checks it
(before it says ready), a leecher adds it with nothing on disk.
There is no tracker: the harness tells each peer whom to connect to.

Talk, one JSON object per line: the peer prints ``{"event": "ready", "port": P}``
once it listens and its torrent is seeding (seed) or ready to download
(leech).  On stdin it takes:

    connect HOST:PORT [HOST:PORT ...]   connect to these peers now (the "download command")
    stats                               print {"event": "stats", ...}: bytes, uTP packet counters, transports seen
    quit                                (or end of input) stop

A leecher prints ``{"event": "done", "at": <time.monotonic()>}`` when its
torrent finished (every piece written and its SHA-1 checked by libtorrent)
and libtorrent's disk cache is flushed to the file (cache_flushed_alert);
CLOCK_MONOTONIC is system-wide on Linux, so the harness compares it with its own
start time.  Errors print ``{"event": "error", "message": ...}``.
"""

from __future__ import annotations

import argparse
import json
import queue
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

try:
    import libtorrent as lt
except ImportError:  # the harness checks first and says how to install it
    sys.exit("libtorrent is not installed: pip install -e '.[bench]' (the PyPI package `libtorrent`)")

#: peer_info flag of a uTP connection (libtorrent's peer_info::utp_socket, bit 17); not every binding names it.
UTP_SOCKET = int(getattr(lt.peer_info, "utp_socket", 1 << 17))
#: Session counters reported by ``stats`` (uTP is libtorrent's only datagram traffic here; no DHT).
COUNTERS = (
    "net.sent_payload_bytes", "net.recv_payload_bytes", "net.sent_bytes", "net.recv_bytes",
    "utp.utp_packets_out", "utp.utp_packets_in", "utp.utp_payload_pkts_out", "utp.utp_payload_pkts_in",
    "utp.utp_packet_resend", "utp.utp_fast_retransmit", "utp.utp_timeout", "utp.utp_packet_loss",
    "utp.utp_redundant_pkts_in",
)


#: Alerts that end a run: the harness fails it with the message.  Other error alerts (a peer's
#: connection reset, and the like) are normal in a swarm: they go to stderr, kept beside the run.
FATAL = tuple(getattr(lt, name) for name in ("torrent_error_alert", "file_error_alert", "listen_failed_alert")
              if hasattr(lt, name))


def say(**event: Any) -> None:
    print(json.dumps(event), flush=True)


def handle_alert(a: Any, state: dict[str, int]) -> bool:
    """Report alert *a*; True when it is fatal (already said as an error)."""
    if isinstance(a, FATAL):
        say(event="error", message=a.message())
        return True
    if isinstance(a, lt.hash_failed_alert):
        state["hash_failures"] += 1
    if a.category() & lt.alert_category.error:
        print(f"{type(a).__name__}: {a.message()}", file=sys.stderr, flush=True)
    return False


def make(file: Path, torrent: Path, piece_length: int) -> None:
    ct = lt.create_torrent(lt.list_files(str(file)), piece_length, lt.create_torrent.v1_only)
    ct.set_creator("p2ptorrent benchmarks")
    lt.set_piece_hashes(ct, str(file.parent))
    torrent.write_bytes(lt.bencode(ct.generate()))


def free_port(addr: str = "127.0.0.1") -> int:
    """A port free on *addr* for both TCP and UDP right now.

    libtorrent listens for TCP and uTP on one port number; with port 0 it takes
    the ephemeral TCP port and may find that UDP port taken by another program,
    and then uTP connections to it go nowhere (a silent fallback to TCP after
    seconds of timeouts).
    """
    for _ in range(100):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind((addr, 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind((addr, port))
            except OSError:
                continue
            return port
    raise OSError(f"no port free for both TCP and UDP on {addr}")


def settings_for(mode: str, socket_buffer: int, port: int, addr: str = "127.0.0.1") -> dict[str, Any]:
    tcp, utp = mode in ("default", "tcp"), mode in ("default", "utp")
    s: dict[str, Any] = {
        "listen_interfaces": f"{addr}:{port}",
        "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
        "allow_multiple_connections_per_ip": True,
        "enable_outgoing_tcp": tcp, "enable_incoming_tcp": tcp,
        "enable_outgoing_utp": utp, "enable_incoming_utp": utp,
        "upload_rate_limit": 0, "download_rate_limit": 0,
        "alert_mask": int(lt.alert_category.status | lt.alert_category.error | lt.alert_category.storage),
    }
    if socket_buffer:
        s["recv_socket_buffer_size"] = socket_buffer
        s["send_socket_buffer_size"] = socket_buffer
    return s


def read_stdin(commands: "queue.Queue[str]") -> None:
    for line in sys.stdin:
        commands.put(line.strip())
    commands.put("quit")


def counters(ses: Any) -> dict[str, int]:
    """The session's COUNTERS, read through a session_stats_alert (waits up to 5 s for it)."""
    ses.post_session_stats()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        ses.wait_for_alert(100)
        for a in ses.pop_alerts():
            if isinstance(a, lt.session_stats_alert):
                values = a.values
                return {k: int(values.get(k, 0)) for k in COUNTERS}
    return {}


def peer(args: argparse.Namespace) -> int:
    port = free_port(args.bind)
    ses = lt.session(settings_for(args.mode, args.socket_buffer, port, args.bind))
    info = lt.torrent_info(str(args.torrent))
    params = lt.add_torrent_params()
    params.ti = info
    params.save_path = str(args.save)
    # A seeder checks its file when added (before "ready", so before the clock starts), as p2ptorrent's
    # `send` hashes it first.  Not seed_mode: that hashes each piece on its first upload, inside the timing
    # (measured: about 0.6 CPU s and a third of the goodput lost on 512 MiB over TCP).
    handle = ses.add_torrent(params)
    state = {"hash_failures": 0}

    def ready() -> bool:
        st = handle.status()
        if args.role == "seed":
            return bool(st.is_seeding)
        return st.state in (lt.torrent_status.downloading, lt.torrent_status.downloading_metadata)

    deadline = time.monotonic() + args.ready_timeout
    while not (ses.is_listening() and ses.listen_port() == port and ready()):
        if time.monotonic() > deadline:
            say(event="error", message=f"not ready after {args.ready_timeout} s: state {handle.status().state}")
            return 1
        ses.wait_for_alert(50)
        for a in ses.pop_alerts():
            if handle_alert(a, state):
                return 1
    say(event="ready", port=ses.listen_port(), pieces=info.num_pieces(), piece_length=info.piece_length())

    commands: queue.Queue[str] = queue.Queue()
    threading.Thread(target=read_stdin, args=(commands,), daemon=True).start()
    done = args.role == "seed"
    #: Finished, and the disk cache asked to flush: libtorrent 2.1 may still hold
    #: written blocks in its own buffers at torrent_finished; "done" waits for
    #: cache_flushed so the file on disk is whole (as p2ptorrent's is when it says so).
    flushing = False
    transports: set[str] = set()
    next_look = 0.0
    while True:
        ses.wait_for_alert(50)  # wakes at once on an alert: "done" is not delayed
        for a in ses.pop_alerts():
            if isinstance(a, lt.torrent_finished_alert) and not done and not flushing:
                flushing = True
                handle.flush_cache()
            elif isinstance(a, lt.cache_flushed_alert) and flushing and not done:
                done = True
                say(event="done", at=time.monotonic())
            else:
                handle_alert(a, state)
        if time.monotonic() >= next_look:  # a few looks a second: little CPU of ours in the figures
            next_look = time.monotonic() + 0.25
            if not done and not flushing and handle.status().is_finished:  # in case the alert was missed
                flushing = True
                handle.flush_cache()
            for p in handle.get_peer_info():
                transports.add("uTP" if int(p.flags) & UTP_SOCKET else "TCP")
        try:
            command = commands.get_nowait()
        except queue.Empty:
            continue
        verb, *words = command.split()
        if verb == "connect":
            for word in words:
                host, port = word.rsplit(":", 1)
                handle.connect_peer((host, int(port)))
        elif verb == "stats":
            st = handle.status()
            say(event="stats", uploaded=st.total_payload_upload, downloaded=st.total_payload_download,
                finished=bool(st.is_finished), transports=sorted(transports), counters=counters(ses), **state)
        elif verb == "quit":
            return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("make", help="write a v1 torrent of FILE")
    m.add_argument("file", type=Path)
    m.add_argument("torrent", type=Path)
    m.add_argument("--piece-length", type=int, required=True)
    p = sub.add_parser("peer", help="run one peer")
    p.add_argument("--torrent", type=Path, required=True)
    p.add_argument("--save", type=Path, required=True, help="folder holding (seed) or receiving (leech) the file")
    p.add_argument("--role", choices=("seed", "leech"), required=True)
    p.add_argument("--mode", choices=("default", "utp", "tcp"), default="default")
    p.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--ready-timeout", type=float, default=300, help="seconds to get ready (a seeder checks its file)")
    p.add_argument("--socket-buffer", type=int, default=0, help="SO_RCVBUF/SO_SNDBUF in bytes (0: libtorrent's default)")
    args = parser.parse_args(argv)
    if args.what == "make":
        make(args.file, args.torrent, args.piece_length)
        return 0
    return peer(args)


if __name__ == "__main__":
    sys.exit(main())
