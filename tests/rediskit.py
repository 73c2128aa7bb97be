"""A real redis-server for one test, and what the Redis store holds, read independently of any tracker."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import redis

from p2ptorrent.config import Config
from p2ptorrent.procs import free_port, redis_server_argv, wait_redis_server
from p2ptorrent.tracker.changes import Check, Drop, apply_change, decode
from p2ptorrent.tracker.redis_store import EPOCHS, FILES, LOG, META, NODES, SEQ, parse_entry
from p2ptorrent.tracker.state import SwarmState, TrackerError


class RedisServer:
    """``redis-server`` from the distribution's package, on a free loopback port, its files in *folder*.

    appendonly with appendfsync always: what the README advises for a tracker that loses nothing.
    """

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server; .ci/run does)")
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.binary = binary
        self.start()
        self.client = redis.Redis(port=self.port, decode_responses=True)

    def start(self) -> None:
        """Start (or start again, on the same port and append-only file) and wait until it answers."""
        self.proc = subprocess.Popen(redis_server_argv(self.binary, self.port, self.folder),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_redis_server(self.proc, self.port, self.folder)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def shared_state(client: redis.Redis, settings: Config, rows: bool = True) -> tuple[SwarmState, dict[str, int]]:
    """The swarm the store holds: its rows, then every change logged after them, replayed here.

    Also counts what the replay saw: changes, checks, and the nodes those checks dropped.  ``rows=False``
    replays the whole log from an empty swarm instead (the log must not have been trimmed yet).
    """
    with client.pipeline(transaction=True) as p:
        p.hgetall(META).hgetall(NODES).hgetall(EPOCHS).hgetall(FILES).get(SEQ)
        meta, nodes, epochs, files, seq = p.execute()
    if not rows:
        meta, nodes, epochs, files = {}, {}, {}, {}
    state = SwarmState(settings, random.Random(0))
    state.restore(
        {"nodes": [json.loads(v) for v in nodes.values()]}, {"files": [json.loads(v) for v in files.values()]}, 0.0,
        (int(meta.get("checks", 0)), {int(k): int(v) for k, v in epochs.items()}),
    )
    counts = {"changes": 0, "checks": 0, "dropped": 0}
    applied = int(meta.get("seq", 0))
    for _, fields in client.xrange(LOG, min=f"({meta.get('id', '0-0')}"):
        seq, _, text = parse_entry(fields)
        if seq <= applied:
            continue
        assert seq == applied + 1, f"a gap in the log after change {applied}"
        applied += 1
        change = decode(text)
        counts["changes"] += 1
        try:
            outcome = apply_change(state, change)
        except TrackerError:
            continue
        if isinstance(change.request, Check):
            counts["checks"] += 1
        if isinstance(change.request, Drop):
            assert isinstance(outcome, list)
            counts["dropped"] += len(outcome)
    assert seq is None or applied == int(seq), (applied, seq)
    return state, counts

