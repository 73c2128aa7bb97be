"""The tracker in memory for the tests: TrackerHTTP behind treq's StubTreq, on a Clock, seeded randomness."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from p2ptorrent.config import Config
from p2ptorrent.tracker.http import TrackerHTTP
from p2ptorrent.tracker.state import SwarmState
from p2ptorrent.tracker.store import JsonStore

URL = "http://tracker.example:12345/"
H1 = "ab" * 20
H2 = "cd" * 20
CFG = Config()


def result(d: Deferred[Any]) -> Any:
    """The result of an already-fired Deferred (everything here is in memory)."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


class CountingStore(JsonStore):
    """The real store, counting saves."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.saves = 0

    def save(self, nodes_doc: dict[str, Any], files_doc: dict[str, Any]) -> None:
        self.saves += 1
        super().save(nodes_doc, files_doc)


class MemoryStore(JsonStore):
    """A JsonStore that keeps the documents in memory: fast enough for hundreds of examples."""

    def __init__(self) -> None:
        super().__init__("(memory)")
        self.docs: tuple[dict[str, Any], dict[str, Any]] = ({}, {})

    def save(self, nodes_doc: dict[str, Any], files_doc: dict[str, Any]) -> None:
        self.docs = json.loads(json.dumps((nodes_doc, files_doc)))

    def load(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.docs


class Harness:
    """A tracker (TrackerHTTP + its state) with its database in *folder*, spoken to as JSON over StubTreq."""

    def __init__(self, folder: Path, settings: Config = CFG, store: JsonStore | None = None) -> None:
        self.folder = folder
        self.clock = Clock()
        self.store = store if store is not None else JsonStore(folder)
        self.state = SwarmState(settings, random.Random(7))
        self.web = TrackerHTTP(self.state, self.store, self.clock, settings)
        self.stub = StubTreq(self.web.resource())

    def request(self, method: str, data: Any = None, url: str = URL, **kw: Any) -> tuple[int, Any, Any]:
        response = result(self.stub.request(method, url, data=data, **kw))
        content = result(response.content())
        assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
        assert response.length == len(content)  # Content-Length was set, not chunked
        return response.code, json.loads(content), response

    def post(self, doc: Any) -> tuple[int, dict[str, Any]]:
        raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        code, answer, _ = self.request("POST", raw)
        return code, answer

    def ok(self, doc: Any) -> dict[str, Any]:
        code, answer = self.post(doc)
        assert (code, answer["ok"]) == (200, True), answer
        return answer

    def join(self, node_id: int, port: int | None = None) -> str:
        answer = self.ok({"mode": 0, "node_id": node_id, "port": port or 9000 + node_id})
        assert answer["new"] is True
        return str(answer["token"])

    def db(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.folder.iterdir())} if self.folder.exists() else {}
