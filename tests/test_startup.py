"""Black-box: what `twistd p2ptracker` and `twistd p2pnode` do when they cannot, or must not, start.

Every test launches the venv's real `twistd` in a working folder under
``tmp_path`` with the default folder names (``tracker_db/``, ``node_files/``,
``logs/``), on free ports, and judges only what a person would see: the exit
status, stderr, the files on disk, the logs and ``p2ptorrent --node N status``.

A refusal must be one line on stderr (``twistd p2p...: cannot start: ...``),
a non-zero exit, no traceback and no twistd usage text, and must leave the
daemon already running (if any) exactly as it was.

Nothing waits a fixed time: each step polls for what it needs with a deadline.
Each test also has an overall budget (SIGALRM), and the ``lab`` fixture ends
every process whose working folder is under ``tmp_path`` (the daemonised ones
included) and unmounts its tmpfs mounts, whatever happened.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest

from p2ptorrent.tracker.sqlite_store import read_docs
from p2ptorrent.procs import connects, free_port
from p2ptorrent.procs import wait_for as _wait_for

TWISTD = str(Path(sys.executable).parent / "twistd")
P2PTORRENT = str(Path(sys.executable).parent / "p2ptorrent")
#: The longest any one test may take, start to end (it fails, and its processes are ended, beyond).
TEST_BUDGET = 150
#: The longest a refused start may take before we call it hung (it should be the time to import Twisted).
REFUSAL_TIMEOUT = 30
wait_for = partial(_wait_for, timeout=30.0, fail=pytest.fail)
IN_USE = os.strerror(errno.EADDRINUSE)


# ---- the harness


class Lab:
    """Everything one test started under *root*: processes (also daemonised ones) and tmpfs mounts."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []
        self.mounts: list[Path] = []

    def folder(self, name: str) -> Folder:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return Folder(self, path)

    def running(self) -> list[psutil.Process]:
        """Every live process (not a zombie, not this one) whose working folder is under root."""
        found = []
        root = self.root.resolve()
        for proc in psutil.process_iter(["pid", "cwd", "status"]):
            if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cwd = proc.info["cwd"]
            if cwd and Path(cwd).is_relative_to(root):
                found.append(proc)
        return found

    def mount_read_only(self, where: Path) -> Path:
        """A small empty read-only tmpfs at *where* (needs root); unmounted at teardown."""
        where.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)],
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            pytest.fail(f"this test needs root to mount a tmpfs: `mount` exited {done.returncode}: {done.stderr.strip()}")
        self.mounts.append(where)
        return where

    def clean_up(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        leftovers = self.running()
        for p in leftovers:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(leftovers, timeout=5)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for where in reversed(self.mounts):
            if subprocess.run(["umount", str(where)], capture_output=True, timeout=30).returncode != 0:
                subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


class Folder:
    """One working folder: daemons started in it, refusals run in it, and `p2ptorrent` commands."""

    def __init__(self, lab: Lab, path: Path) -> None:
        self.lab = lab
        self.path = path

    # ---- daemons that must start
    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """`twistd -n ARGS` in the background, its output in ``name.out``."""
        with open(self.path / f"{name}.out", "wb") as out:
            proc = subprocess.Popen([TWISTD, "-n", *args], cwd=self.path,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self.lab.procs.append(proc)
        return proc

    def daemonise(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`twistd ARGS` (no -n): twistd forks a daemon and returns; it must say it started."""
        done = subprocess.run([TWISTD, *args], cwd=self.path, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=REFUSAL_TIMEOUT)
        assert done.returncode == 0, done
        return done

    def alive(self, proc: subprocess.Popen[bytes], name: str) -> Callable[[], None]:
        def check() -> None:
            if proc.poll() is not None:
                pytest.fail(f"{name} ended with status {proc.returncode}:\n{self.output(name)}")
        return check

    def output(self, name: str) -> str:
        path = self.path / f"{name}.out"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def start_tracker(self, port: int, *extra: str) -> subprocess.Popen[bytes]:
        proc = self.start("tracker", "p2ptracker", "--port", str(port), *extra)
        wait_for(lambda: connects(port), "the tracker to listen", alive=self.alive(proc, "tracker"))
        return proc

    def start_node(self, node_id: int, tracker_port: int, *extra: str, name: str | None = None) -> subprocess.Popen[bytes]:
        """A foreground node; returns once `status` says it is registered with the tracker."""
        name = name or f"node{node_id}"
        proc = self.start(name, *node_args(node_id, tracker_port, *extra))
        wait_for(lambda: (self.status(node_id) or {}).get("registered") is True,
                 f"node {node_id} to register", alive=self.alive(proc, name))
        return proc

    # ---- starts that must be refused
    def refused(self, *args: str) -> str:
        """Run `twistd ARGS`, which must refuse at once: the one line it printed."""
        started = time.monotonic()
        try:
            done = subprocess.run([TWISTD, *args], cwd=self.path, capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, timeout=REFUSAL_TIMEOUT)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"`twistd {' '.join(args)}` still ran after {REFUSAL_TIMEOUT} s instead of refusing: {e}")
        said = f"`twistd {' '.join(args)}` exited {done.returncode} after {time.monotonic() - started:.1f} s\n" \
               f"stdout: {done.stdout!r}\nstderr: {done.stderr!r}"
        assert done.returncode != 0, said
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, said
        assert lines[0].startswith("twistd p2p"), said
        for text in (done.stderr, done.stdout):
            assert "Traceback" not in text, said
            assert "Usage:" not in text, said  # no twistd usage text either
        return lines[0]

    # ---- p2ptorrent
    def ctl(self, node_id: int, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([P2PTORRENT, "--node", str(node_id), *args], cwd=self.path, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=30)

    def status(self, node_id: int) -> dict[str, Any] | None:
        """Node *node_id*'s `status`, or None when the command fails (no such node yet)."""
        done = self.ctl(node_id, "status", "--json")
        return json.loads(done.stdout) if done.returncode == 0 else None

    # ---- files
    def read(self, relative: str) -> bytes | None:
        path = self.path / relative
        return path.read_bytes() if path.exists() else None

    def tracker_record(self, node_id: int) -> dict[str, Any] | None:
        """Node *node_id*'s record in what the tracker saved (tracker_db/tracker.db; None: not there)."""
        nodes = read_docs(self.path / "tracker_db")[0]["nodes"] if (self.path / "tracker_db" / "tracker.db").exists() else []
        for record in nodes:
            if record["node_id"] == node_id:
                return dict(record)
        return None

    def log(self, name: str) -> str:
        return (self.read(f"logs/{name}") or b"").decode(errors="replace")


def node_args(node_id: int, tracker_port: int, *extra: str) -> list[str]:
    return ["p2pnode", "--id", str(node_id), "--tracker", f"127.0.0.1:{tracker_port}", "--no-stdin", *extra]


#: What a tracker saves in its database folder (tracker.db and its write-ahead log; the JSON snapshots).
SAVED = ("tracker.db", "tracker.db-wal", "nodes.json", "files.json")


def snapshot(folder: Path, *names: str) -> dict[str, tuple[bytes, int, int] | None]:
    """Bytes, inode and mtime of each file (None if missing): a rewrite changes the inode (atomic replace)."""
    seen: dict[str, tuple[bytes, int, int] | None] = {}
    for name in names:
        path = folder / name
        if path.exists():
            st = path.stat()
            seen[name] = (path.read_bytes(), st.st_ino, st.st_mtime_ns)
        else:
            seen[name] = None
    return seen


def unused_port() -> int:
    """A port nothing listens on (for a node whose tracker does not matter)."""
    return free_port()


def named_alive(line: str) -> bool:
    """Whether the pid a refusal ends with is a running process."""
    named = line.rsplit(" ", 1)[-1]
    return named.isdigit() and psutil.pid_exists(int(named))


def tracker_call(port: int, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/", json.dumps(doc).encode(), {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    def over_budget(signum: int, frame: Any) -> None:
        pytest.fail(f"the test took more than its {TEST_BUDGET} s budget")

    previous = signal.signal(signal.SIGALRM, over_budget)
    signal.alarm(TEST_BUDGET)
    the_lab = Lab(tmp_path)
    try:
        yield the_lab
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        the_lab.clean_up()


# ---- 1. one tracker per database folder


def test_a_second_tracker_on_the_same_database_is_refused_and_the_first_is_untouched(lab: Lab) -> None:
    home = lab.folder("w")
    port = free_port()
    # No liveness check during the test: nothing but our requests may change the database.
    first = home.start_tracker(port, "--tracker-interval", "3600")
    # Something in both files, so "unchanged" means something.
    status, joined = tracker_call(port, {"mode": 0, "node_id": 7, "port": 4007})
    assert status == 200, joined
    status, owned = tracker_call(port, {"mode": 1, "node_id": 7, "token": joined["token"],
                                        "info_hash": "ab" * 20, "name": "a.bin", "length": 1234})
    assert status == 200, owned
    db = home.path / "tracker_db"
    nodes_doc, files_doc = read_docs(db)  # what the tracker saved (answered after its commit)
    assert [n["node_id"] for n in nodes_doc["nodes"]] == [7] and len(files_doc["files"]) == 1
    before = snapshot(db, *SAVED, ".lock")

    for form in (["-n"], []):  # in the foreground, then as the daemon form would start
        line = home.refused(*form, "p2ptracker", "--port", str(port), "--tracker-interval", "3600")
        assert line == f"twistd p2ptracker: cannot start: tracker_db/ is in use by process {first.pid}", (form, line)
        assert snapshot(db, *SAVED, ".lock") == before, form
        assert first.poll() is None, home.output("tracker")
        assert not (db / "tracker.pid").exists()
    assert [p.pid for p in lab.running()] == [first.pid]

    # The first still answers: the node it knows, and a new node that registers.
    status, beat = tracker_call(port, {"mode": 0, "node_id": 7, "port": 4007, "token": joined["token"]})
    assert status == 200 and beat["new"] is False, beat
    home.start_node(1, port)
    assert home.tracker_record(1) is not None


def test_the_refusal_names_a_daemonised_trackers_real_pid(lab: Lab) -> None:
    """The first tracker daemonised (it forks after claiming its folder): the refusal must name the daemon."""
    home = lab.folder("w")
    port = free_port()
    home.daemonise("p2ptracker", "--port", str(port))
    pid = int(wait_for(lambda: home.read("tracker_db/tracker.pid"), "tracker_db/tracker.pid"))  # type: ignore[arg-type]
    wait_for(lambda: connects(port), "the daemonised tracker to listen")
    assert psutil.pid_exists(pid)
    for form in (["-n"], []):
        line = home.refused(*form, "p2ptracker", "--port", str(port))
        assert line == f"twistd p2ptracker: cannot start: tracker_db/ is in use by process {pid}", \
            (form, line, f"the daemon is {pid}; the pid named is {'alive' if named_alive(line) else 'not running'}")
    assert connects(port)


# ---- 2. one node per node folder


def test_a_second_node_with_the_same_id_and_folder_is_refused_and_the_first_is_untouched(lab: Lab) -> None:
    home = lab.folder("w")
    port = free_port()
    tracker = home.start_tracker(port)
    node = home.start_node(1, port)
    mine = home.status(1)
    assert mine is not None
    wait_for(lambda: (home.tracker_record(1) or {}).get("port") == mine["udp_port"], "nodes.json to list node 1")
    folder = home.path / "node_files" / "1"
    before = snapshot(folder, ".tracker_token", ".lock")
    record = home.tracker_record(1)
    assert before[".tracker_token"] is not None and (folder / ".control.sock").exists()

    for form in (["-n"], []):
        line = home.refused(*form, *node_args(1, port))
        assert line == f"twistd p2pnode: cannot start: node_files/1/ is in use by process {node.pid}", (form, line)
        assert snapshot(folder, ".tracker_token", ".lock") == before, form
        assert (folder / ".control.sock").exists()
        assert not (folder / "node.pid").exists()
        now = home.status(1)
        assert now is not None and now["registered"] is True and now["udp_port"] == mine["udp_port"], now
        assert home.tracker_record(1) == record, form
        assert record is not None and record["port"] == mine["udp_port"]
    assert sorted(p.pid for p in lab.running()) == sorted([tracker.pid, node.pid])
    assert "refused REGISTER" not in home.log("tracker.log")


def test_the_refusal_names_a_daemonised_nodes_real_pid(lab: Lab) -> None:
    home = lab.folder("w")
    port = free_port()
    home.start_tracker(port)
    home.daemonise(*node_args(1, port))
    pid = int(wait_for(lambda: home.read("node_files/1/node.pid"), "node_files/1/node.pid"))  # type: ignore[arg-type]
    wait_for(lambda: (home.status(1) or {}).get("registered") is True, "the daemonised node 1 to register")
    assert psutil.pid_exists(pid)
    for form in (["-n"], []):
        line = home.refused(*form, *node_args(1, port))
        assert line == f"twistd p2pnode: cannot start: node_files/1/ is in use by process {pid}", \
            (form, line, f"the daemon is {pid}; the pid named is {'alive' if named_alive(line) else 'not running'}")
    assert (home.status(1) or {}).get("registered") is True


# ---- 3. a killed daemon leaves nothing that blocks its restart


def test_after_sigkill_a_node_and_the_tracker_start_again_in_the_same_folder(lab: Lab) -> None:
    home = lab.folder("w")
    port = free_port()
    tracker = home.start_tracker(port)
    node = home.start_node(1, port)
    folder = home.path / "node_files" / "1"

    node.kill()
    node.wait(10)
    # What a killed node leaves behind: its lock file (naming a dead pid) and its control socket file.
    assert (folder / ".lock").exists() and (folder / ".control.sock").exists()
    assert home.status(1) is None
    again = home.start_node(1, port, name="node1-again")
    status = home.status(1)
    assert status is not None and status["registered"] is True
    wait_for(lambda: (home.tracker_record(1) or {}).get("port") == status["udp_port"],
             "the tracker to list the restarted node 1 at its new UDP port")
    assert (folder / ".lock").read_text().strip() == str(again.pid)

    tracker.kill()
    tracker.wait(10)
    assert (home.path / "tracker_db" / ".lock").exists()
    home.start("tracker-again", "p2ptracker", "--port", str(port))
    wait_for(lambda: connects(port), "the tracker to listen again")
    assert again.poll() is None
    # The restarted tracker read its database back: node 1's token is still node 1's.
    token = json.loads(home.read("node_files/1/.tracker_token") or b"{}")["token"]
    answer = tracker_call(port, {"mode": 0, "node_id": 1, "port": status["udp_port"], "token": token})
    assert answer[0] == 200 and answer[1]["new"] is False, answer
    assert (home.status(1) or {}).get("registered") is True


# ---- 4. busy ports


def test_a_busy_udp_port_is_refused_in_one_line(lab: Lab) -> None:
    home = lab.folder("w")
    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        held.bind(("", 0))
        busy = held.getsockname()[1]
        line = home.refused("-n", *node_args(2, unused_port(), "--port", str(busy)))
        assert f"UDP port {busy}" in line and IN_USE in line, line
        assert lab.running() == []
    finally:
        held.close()
    # Nothing left behind blocks the same start once the port is free.
    proc = home.start("node2", *node_args(2, unused_port(), "--port", str(busy)))
    wait_for(lambda: (home.status(2) or {}).get("udp_port") == busy, "node 2 to run on the freed port",
             alive=home.alive(proc, "node2"))


@pytest.mark.parametrize("database", ["absent", "present"])
def test_a_busy_tracker_port_is_refused_in_one_line_and_the_database_is_not_written(lab: Lab, database: str) -> None:
    home = lab.folder("w")
    db = home.path / "db2"
    if database == "present":
        db.mkdir()
        nodes = {"version": 1, "nodes": [{"node_id": 5, "host": "127.0.0.1", "port": 4005, "frequency": 2,
                                          "token_sha256": "cd" * 32}]}
        files = {"version": 1, "files": [{"info_hash": "ef" * 20, "name": "x.bin", "length": 10, "owners": [5],
                                          "partial": [], "credits": []}]}
        for name, doc in (("nodes.json", nodes), ("files.json", files)):
            (db / name).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    listing = sorted(p.name for p in db.iterdir()) if db.exists() else []
    before = snapshot(db, "nodes.json", "files.json")
    held = socket.socket()
    try:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        line = home.refused("-n", "p2ptracker", "--port", str(busy), "--tracker-db-dir", "db2")
        assert f"port {busy}" in line and IN_USE in line, line
    finally:
        held.close()
    assert snapshot(db, "nodes.json", "files.json") == before
    # Nothing set aside or half written either (the lock file may stay).
    assert sorted(p.name for p in db.iterdir() if p.name != ".lock") == listing
    assert lab.running() == []


# ---- 5. unusable folders


FOLDER_CASES = {
    # name: (command, extra options, tmpfs to mount read-only or None, what the line must contain)
    "node-files-dir-under-a-file": ("p2pnode", ["--node-files-dir", "somefile/x"], None, "node folder somefile/x/1/"),
    "read-only-node-folder": ("p2pnode", [], "node_files/1", "cannot write in the node folder node_files/1/"),
    "read-only-node-logs-dir": ("p2pnode", ["--logs-dir", "rologs"], "rologs", "cannot write in the log folder rologs/"),
    "node-logs-dir-under-a-file": ("p2pnode", ["--logs-dir", "somefile/x"], None, "log folder somefile/x/"),
    "tracker-db-dir-under-a-file": ("p2ptracker", ["--tracker-db-dir", "somefile/x"], None, "database folder somefile/x/"),
    "read-only-tracker-db-dir": ("p2ptracker", ["--tracker-db-dir", "rodb"], "rodb",
                                 "cannot write in the database folder rodb/"),
    "read-only-tracker-logs-dir": ("p2ptracker", ["--logs-dir", "rologs"], "rologs",
                                   "cannot write in the log folder rologs/"),
}


@pytest.mark.parametrize("form", ["foreground", "daemon"])
@pytest.mark.parametrize("case", sorted(FOLDER_CASES))
def test_an_unusable_folder_is_refused_in_one_line(lab: Lab, case: str, form: str) -> None:
    command, extra, read_only, expected = FOLDER_CASES[case]
    home = lab.folder("w")
    (home.path / "somefile").write_text("a file, not a folder\n")
    if read_only is not None:
        lab.mount_read_only(home.path / read_only)
    if command == "p2pnode":
        args = node_args(1, unused_port(), *extra)
    else:
        args = ["p2ptracker", "--port", str(unused_port()), *extra]
    line = home.refused(*(["-n"] if form == "foreground" else []), *args)
    assert line.startswith(f"twistd {command}: cannot start: ") and expected in line, line
    assert lab.running() == []


# ---- 6. a node the tracker refuses says so


def test_a_node_the_tracker_refuses_says_not_registered_and_why(lab: Lab) -> None:
    a, b = lab.folder("A"), lab.folder("B")
    port = free_port()
    a.start_tracker(port)
    real = a.start_node(1, port, "--node-interval", "1")
    shared = a.path / "shared.bin"
    shared.write_bytes(os.urandom(50_000))
    said = a.ctl(1, "send", str(shared))
    assert said.returncode == 0 and "announced to the tracker" in said.stdout, said
    mine = a.status(1)
    assert mine is not None
    db = a.path / "tracker_db"
    before = read_docs(db)
    token = a.read("node_files/1/.tracker_token")
    assert [f["owners"] for f in before[1]["files"]] == [[1]], before

    # Node id 1 again, from another folder (no lock clash): the tracker refuses it (someone else's id).
    impostor = b.start("node1", *node_args(1, port, "--node-interval", "1"))

    def refused_at_error_level() -> bool:
        return any("#error]" in line and "NOT REGISTERED" in line for line in b.log("node_1.log").splitlines())

    wait_for(refused_at_error_level, "folder B's node 1 to log NOT REGISTERED at error level",
             alive=b.alive(impostor, "node1"))
    wait_for(lambda: a.log("tracker.log").count("refused REGISTER from 127.0.0.1 node 1") >= 2,
             "the tracker to refuse folder B's node 1 twice", alive=b.alive(impostor, "node1"))

    status = b.status(1)
    assert status is not None and status["registered"] is False, status
    problem = status.get("tracker_problem")
    assert isinstance(problem, str) and problem.strip(), f"status has no tracker_problem saying why: {status}"
    assert "refused" in problem and "403" in problem, problem

    # The real node 1 is untouched: still registered, same port, same records and token.
    now = a.status(1)
    assert now is not None and now["registered"] is True and now["udp_port"] == mine["udp_port"], now
    assert read_docs(db) == before
    assert a.read("node_files/1/.tracker_token") == token
    assert real.poll() is None
