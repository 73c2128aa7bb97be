"""`p2ptorrent-demo`: a local tracker and four nodes share a file, end to end.

It runs what a person would run by hand, as real processes: `twistd -n
p2ptracker`, four `twistd -n p2pnode --id N`, and the `p2ptorrent` control
command to make nodes 1 and 2 seed a file of random bytes, node 3 download it
from both, and node 4 download it from all three.  It prints each step and the
nodes' answers, checks every copy's SHA-256, shows the tracker's log lines,
and stops everything.  Exit status 0 means every copy was verified.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from p2ptorrent.procs import Daemons, connects, free_port, sha256, wait_for


class Demo(Daemons):
    def __init__(self, workdir: Path, size_mib: int, chunk: int | None) -> None:
        super().__init__(workdir, ctl_timeout=600)
        self.size = size_mib * 1024 * 1024
        self.port = free_port()
        self.common = [
            "--logs-dir", str(workdir / "logs"),
            "--tracker", f"127.0.0.1:{self.port}",
        ]
        if chunk:
            self.common += ["--chunk-size", str(chunk), "--buffer-size", str(chunk + 32)]

    def say(self, text: str) -> None:
        print(text, flush=True)

    def run(self) -> int:
        d = self.root
        self.say(f"p2ptorrent demo in {d}")
        data = os.urandom(self.size)
        for n in (1, 2):
            (self.nodes_dir / str(n)).mkdir(parents=True, exist_ok=True)
            (self.nodes_dir / str(n) / "big.bin").write_bytes(data)
        want = hashlib.sha256(data).hexdigest()
        del data
        self.say(f"[1] made big.bin: {self.size} random bytes, SHA-256 {want[:16]}..., copied into node_files/1 and node_files/2")

        self.start("tracker", ["p2ptracker", "--host", "127.0.0.1", "--port", str(self.port),
                               "--tracker-db-dir", str(d / "tracker_db"), *self.common[:2]])
        wait_for(lambda: connects(self.port), "the tracker to listen")
        self.say(f"[2] tracker running: twistd -n p2ptracker --port {self.port}")

        for n in (1, 2, 3, 4):
            self.start(f"node{n}", ["p2pnode", "--id", str(n), "--node-files-dir", str(self.nodes_dir), "--no-stdin", *self.common])
        for n in (1, 2, 3, 4):
            sock = self.nodes_dir / str(n) / ".control.sock"
            wait_for(sock.exists, f"node {n} to start")
        self.say("[3] nodes 1-4 running: twistd -n p2pnode --id N")

        for n in (1, 2):
            self.say(f"[4] node {n}: torrent -setMode send big.bin")
            self.say("      " + self.ok(n, "send", f"node_files/{n}/big.bin").strip())
        torrent = self.nodes_dir / "1" / "big.bin.torrent"

        self.say("[5] node 3: torrent -setMode download big.bin.torrent  (from nodes 1 and 2)")
        self.say("      " + self.ok(3, "download", str(torrent)).strip())
        self.say("[6] node 4: torrent -setMode download big.bin.torrent  (from nodes 1, 2 and 3)")
        self.say("      " + self.ok(4, "download", str(torrent)).strip())

        ok = True
        for n in (3, 4):
            got = sha256(self.nodes_dir / str(n) / "big.bin")
            same = got == want
            ok &= same
            self.say(f"[7] node_files/{n}/big.bin SHA-256 {got[:16]}... {'identical' if same else 'DIFFERENT'}")

        for n in (4, 3, 2, 1):
            self.ok(n, "exit")
        wait_for(lambda: all(p.poll() is not None for name, p in self.procs.items() if name.startswith("node")), "the nodes to exit")
        self.say("[8] nodes exited (torrent -setMode exit); the tracker's log says:")
        for line in (d / "logs" / "tracker.log").read_text().splitlines():
            if any(k in line for k in (" joined ", " owns ", " needs ", " credited ", " left")):
                self.say("      " + line.split("] ", 1)[-1][:150])
        self.stop()
        self.say("[9] " + ("every copy verified: demo passed" if ok else "a copy differs: demo FAILED"))
        return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="p2ptorrent-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="file size in MiB (default 32)")
    parser.add_argument("--chunk", type=int, default=None, help="CHUNK_PIECES_SIZE for all nodes (default 1400)")
    parser.add_argument("--workdir", type=Path, default=None, help="folder to run in (default: a new temporary one, removed after)")
    args = parser.parse_args(argv)
    keep = args.workdir is not None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="p2ptorrent-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    demo = Demo(workdir.resolve(), args.size, args.chunk)
    try:
        return demo.run()
    except Exception as e:
        print(f"demo failed: {e}", file=sys.stderr)
        for name in demo.procs:
            out = workdir / f"{name}.out"
            if out.exists():
                print(f"--- last lines of {name}'s output:", file=sys.stderr)
                print("\n".join(out.read_text(errors="replace").splitlines()[-15:]), file=sys.stderr)
        return 1
    finally:
        demo.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
