"""`twistd p2pnode`: its options and its service tree."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.python import usage

from p2ptorrent.logfile import LogFileService
from p2ptorrent.node import tap
from p2ptorrent.node.service import Node, UDPService


def _parse(*argv: str) -> tap.Options:
    opts = tap.Options()
    opts.parseOptions(list(argv))
    return opts


def test_options() -> None:
    opts = _parse("--id", "7", "--port", "6881", "--interface", "10.0.0.7", "--tracker", "10.0.0.1:12345", "--no-stdin")
    assert (opts["id"], opts["port"], opts["interface"], opts["advertise-port"]) == (7, 6881, "10.0.0.7", 0)
    assert opts["settings"].TRACKER_ADDR == ("10.0.0.1", 12345)
    assert opts["control"] == "unix:address=node_files/7/.control.sock:mode=600:lockfile=0"
    assert opts["no-stdin"]
    assert "--advertise-port" in str(tap.Options())


@pytest.mark.parametrize(
    "argv, reason",
    [
        ([], "--id is required"),
        (["--id", "x"], "--id must be a whole number"),
        (["--id", "-1"], "out of range"),
        (["--id", "1", "--port", "70000"], "out of range"),
        (["--id", "1", "--chunk-size", "9999"], "must fit in one BUFFER_SIZE"),
        (["--id", "1", "--node-interval", "-5"], "positive"),
        (["--id", "1", "--control", "tcp:7000"], "control"),
    ],
)
def test_bad_options(argv: list[str], reason: str) -> None:
    with pytest.raises(usage.UsageError, match=reason):
        _parse(*argv)


def test_service_tree(tmp_path: Path) -> None:
    opts = _parse("--id", "3", "--node-files-dir", str(tmp_path), "--logs-dir", str(tmp_path / "logs"), "--no-stdin")
    reactor = Clock()
    reactor.stop = lambda: None  # type: ignore[attr-defined]
    node = tap.makeService(opts, reactor)
    assert isinstance(node, Node)
    kinds = [type(s) for s in node]
    assert kinds[:2] == [LogFileService, UDPService]
    assert any(type(s).__name__ == "ControlService" for s in node)
    assert not any(type(s).__name__ == "StdinService" for s in node)
    assert node.folder == tmp_path / "3"
    assert next(iter(node)).path == tmp_path / "logs" / "node_3.log"
