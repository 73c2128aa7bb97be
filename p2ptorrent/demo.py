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
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _script(name: str) -> str:
    """A console script installed beside this Python (twistd, p2ptorrent)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        sys.exit(f"cannot find the {name} command: is p2ptorrent installed in this Python?")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(check, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Demo:
    def __init__(self, workdir: Path, size_mib: int, chunk: int | None) -> None:
        self.dir = workdir
        self.size = size_mib * 1024 * 1024
        self.port = _free_port()
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.common = [
            "--logs-dir", str(workdir / "logs"),
            "--tracker", f"127.0.0.1:{self.port}",
        ]
        if chunk:
            self.common += ["--chunk-size", str(chunk), "--buffer-size", str(chunk + 32)]
        self.nodes_dir = workdir / "node_files"

    def say(self, text: str) -> None:
        print(text, flush=True)

    def start(self, name: str, args: list[str]) -> None:
        log = open(self.dir / f"{name}.out", "wb")
        proc = subprocess.Popen(
            [_script("twistd"), "-n", "--pidfile=", *args],
            cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        self.procs.append((name, proc))

    def ctl(self, node: int, *args: str) -> str:
        out = subprocess.run(
            [_script("p2ptorrent"), "--node", str(node), "--node-files-dir", str(self.nodes_dir), *args],
            cwd=self.dir, capture_output=True, text=True, timeout=600,
        )
        text = out.stdout.strip()
        if out.returncode != 0:
            raise RuntimeError(f"node {node} {' '.join(args)} failed ({out.returncode}): {out.stderr.strip() or text}")
        return text

    def run(self) -> int:
        d = self.dir
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
        _wait_for(lambda: _connects(self.port), "the tracker to listen")
        self.say(f"[2] tracker running: twistd -n p2ptracker --port {self.port}")

        for n in (1, 2, 3, 4):
            self.start(f"node{n}", ["p2pnode", "--id", str(n), "--node-files-dir", str(self.nodes_dir), "--no-stdin", *self.common])
        for n in (1, 2, 3, 4):
            sock = self.nodes_dir / str(n) / ".control.sock"
            _wait_for(sock.exists, f"node {n} to start")
        self.say("[3] nodes 1-4 running: twistd -n p2pnode --id N")

        for n in (1, 2):
            self.say(f"[4] node {n}: torrent -setMode send big.bin")
            self.say("      " + self.ctl(n, "send", f"node_files/{n}/big.bin"))
        torrent = self.nodes_dir / "1" / "big.bin.torrent"

        self.say("[5] node 3: torrent -setMode download big.bin.torrent  (from nodes 1 and 2)")
        self.say("      " + self.ctl(3, "download", str(torrent)))
        self.say("[6] node 4: torrent -setMode download big.bin.torrent  (from nodes 1, 2 and 3)")
        self.say("      " + self.ctl(4, "download", str(torrent)))

        ok = True
        for n in (3, 4):
            got = _sha256(self.nodes_dir / str(n) / "big.bin")
            same = got == want
            ok &= same
            self.say(f"[7] node_files/{n}/big.bin SHA-256 {got[:16]}... {'identical' if same else 'DIFFERENT'}")

        for n in (4, 3, 2, 1):
            self.ctl(n, "exit")
        _wait_for(lambda: all(p.poll() is not None for name, p in self.procs if name.startswith("node")), "the nodes to exit")
        self.say("[8] nodes exited (torrent -setMode exit); the tracker's log says:")
        for line in (d / "logs" / "tracker.log").read_text().splitlines():
            if any(k in line for k in (" joined ", " owns ", " needs ", " credited ", " left")):
                self.say("      " + line.split("] ", 1)[-1][:150])
        self.stop()
        self.say("[9] " + ("every copy verified: demo passed" if ok else "a copy differs: demo FAILED"))
        return 0 if ok else 1

    def stop(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="p2ptorrent-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="file size in MiB (default 32)")
    parser.add_argument("--chunk", type=int, default=None, help="CHUNK_PIECES_SIZE for all nodes (default 7216)")
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
        for name, _ in demo.procs:
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
