"""How the tracker copes with many nodes: dropping silent nodes, and NEED for a file with many owners.

    python benchmarks/tracker_scale.py                        # 10k silent nodes, NEED at 10k owners
    python benchmarks/tracker_scale.py --nodes 100000 --files 50000 --owners 10000

Everything runs in this process on a twisted Clock, with a store that writes nothing (saving is the
store's cost, measured elsewhere), through TrackerHTTP itself:

* drop: --nodes nodes join, each owning --per-node of --files files, then fall silent (--alive more
  keep heartbeating); the liveness check that drops the silent ones is timed per reactor turn (the
  check itself and every call it schedules with callLater(0)).  Printed: the time per dropped node
  and the longest turn, the time the reactor could not serve anything else.  The last turn saves the
  state, which the store does: here that is only SwarmState.snapshot(), O(every node).
* need: --owners nodes own one file (upload frequencies drawn 0..20), one more node asks NEED for it
  --asks times through the POST route; printed: the answer's size, owners listed, time per NEED.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2ptorrent.config import Config  # noqa: E402
from p2ptorrent.tracker.http import TrackerHTTP  # noqa: E402
from p2ptorrent.tracker.state import SwarmState  # noqa: E402


class NullStore:
    """Saves nothing: the figures are the tracker's decisions, not the disk's."""

    folder = Path("(nowhere)")

    def save(self, *docs: Any) -> None:
        pass

    def load(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return {}, {}


class Request:
    """Just enough of an IRequest for TrackerHTTP.post."""

    def __init__(self, doc: Any, host: str) -> None:
        self.content = io.BytesIO(json.dumps(doc).encode())
        self.code = 0
        self._address = IPv4Address("TCP", host, 40000)

    def getHeader(self, name: bytes) -> bytes | None:
        return None

    def getClientAddress(self) -> IPv4Address:
        return self._address

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def setHeader(self, name: bytes, value: bytes) -> None:
        pass


def tracker(settings: Config, seed: int) -> tuple[TrackerHTTP, Clock]:
    clock = Clock()
    state = SwarmState(settings, random.Random(seed))
    return TrackerHTTP(state, NullStore(), clock, settings), clock  # type: ignore[arg-type]


def join_host(node_id: int) -> str:
    # Many addresses: the per-address cap is not what is measured.
    return f"10.{node_id >> 16 & 255}.{node_id >> 8 & 255}.{node_id & 255}"


def join(web: TrackerHTTP, node_id: int, now: float) -> str:
    return web.state.register(node_id, join_host(node_id), 9000, None, now).token


def run_turns(clock: Clock) -> list[float]:
    """Run the calls due now one at a time (Clock.advance would run them all as one); their durations."""
    turns: list[float] = []
    while True:
        due = [c for c in clock.calls if c.getTime() <= clock.seconds()]
        if not due:
            return turns
        call = min(due, key=lambda c: c.getTime())
        clock.calls.remove(call)
        start = time.perf_counter()
        call.func(*call.args, **call.kw)
        turns.append(time.perf_counter() - start)


def drop(nodes: int, files: int, per_node: int, seed: int, alive: int = 0) -> dict[str, Any]:
    settings = Config()
    web, clock = tracker(settings, seed)
    rng = random.Random(seed)
    hashes = [f"{i:040x}" for i in range(files)]
    tokens = {}
    for node_id in range(1, nodes + alive + 1):
        token = tokens[node_id] = join(web, node_id, 0.0)
        for info_hash in rng.sample(hashes, per_node):
            web.state.own(node_id, token, info_hash, "f", 1)
    for _ in range(settings.TRACKER_MISSED_CHECKS):
        clock.advance(settings.TRACKER_TIME_INTERVAL)
        web.check_liveness()
        run_turns(clock)
        for node_id in range(nodes + 1, nodes + alive + 1):
            web.state.register(node_id, join_host(node_id), 9000, tokens[node_id], clock.seconds())
    assert web.state.summary()["nodes"] == nodes + alive
    clock.advance(settings.TRACKER_TIME_INTERVAL)
    start = time.perf_counter()
    web.check_liveness()
    first = time.perf_counter() - start
    turns = [first] + run_turns(clock)
    assert web.state.summary()["nodes"] == alive, web.state.summary()
    return {
        "nodes": nodes, "alive": alive, "files": files, "files per node": per_node,
        "ms per dropped node": 1000 * sum(turns) / nodes,
        "turns": len(turns), "longest turn ms": 1000 * max(turns),
        # The last turn also saves the state (persist): the store's cost, apart from the drops.
        "longest turn but the last ms": 1000 * max(turns[:-1], default=0.0), "last turn ms": 1000 * turns[-1],
        "total ms": 1000 * sum(turns),
    }


def need(owners: int, asks: int, seed: int) -> dict[str, Any]:
    settings = Config()
    web, clock = tracker(settings, seed)
    rng = random.Random(seed)
    info_hash = "ab" * 20
    for node_id in range(1, owners + 1):
        web.state.own(node_id, join(web, node_id, 0.0), info_hash, "f", 1)
    # Upload frequencies 0..20, given as UPDATEs: downloader j credits every owner drawn above j.
    wanted = {node_id: rng.randrange(21) for node_id in range(1, owners + 1)}
    for j in range(20):
        downloader = owners + 2 + j
        credit = [node_id for node_id, f in wanted.items() if f > j]
        web.state.update(downloader, join(web, downloader, 0.0), info_hash, credit)
    asker = owners + 1
    token = join(web, asker, 0.0)
    doc = {"mode": 2, "node_id": asker, "token": token, "info_hash": info_hash}
    sizes, listed = [], []
    elapsed = 0.0
    for _ in range(asks):
        request = Request(doc, "192.0.2.1")
        start = time.perf_counter()
        body = web.post(request)  # type: ignore[arg-type]
        elapsed += time.perf_counter() - start
        assert request.code == 200, body
        sizes.append(len(body))
        listed.append(len(json.loads(body)["owners"]))
    return {
        "owners": owners, "asks": asks, "answer bytes": max(sizes), "owners listed": max(listed),
        "ms per NEED": 1000 * elapsed / asks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--files", type=int, default=1_000)
    parser.add_argument("--per-node", type=int, default=2)
    parser.add_argument("--alive", type=int, default=0, help="nodes that keep heartbeating beside the silent ones")
    parser.add_argument("--owners", type=int, default=10_000)
    parser.add_argument("--asks", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for name, figures in (
        ("drop", drop(args.nodes, args.files, args.per_node, args.seed, args.alive)),
        ("need", need(args.owners, args.asks, args.seed)),
    ):
        print(name + ": " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
