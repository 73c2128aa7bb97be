"""The operator's verbs in the grammar (stdin and control socket), in the CLI's words, and on a node's
stdin: parsing, dispatch to IOperatorCommands, the tables printed, and --json round trips."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer
from zope.interface.verify import verifyObject

from p2ptorrent.cli import EXIT_USAGE, command_from_words, prepare, render
from p2ptorrent.commands import HELP_TEXT, Command, CommandError, parse_command
from p2ptorrent.node.control import INodeCommands, IOperatorCommands, StdinControl, dispatch
from p2ptorrent.views import render_info, render_list, render_status
from views_samples import INFO, LIST, STATUS


@implementer(INodeCommands, IOperatorCommands)
class Operated:
    """A fake node: records the operator's calls, answers the samples."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def send(self, path: str) -> Deferred[str]:
        raise NotImplementedError

    def download(self, torrent_path: str, progress: Any) -> Deferred[str]:
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        return STATUS

    def exit(self) -> Deferred[str]:
        raise NotImplementedError

    def transfers(self) -> dict[str, Any]:
        self.calls.append(("list",))
        return LIST

    def info(self, query: str) -> dict[str, Any]:
        self.calls.append(("info", query))
        return INFO

    def pause(self, query: str) -> Deferred[str]:
        self.calls.append(("pause", query))
        return succeed(f"paused {query}")

    def resume(self, query: str) -> Deferred[str]:
        self.calls.append(("resume", query))
        return succeed(f"resumed {query}")

    def cancel(self, query: str, delete: bool) -> Deferred[str]:
        self.calls.append(("cancel", query, delete))
        return succeed(f"cancelled {query}")

    def stop_seeding(self, query: str) -> Deferred[str]:
        self.calls.append(("stop_seeding", query))
        return succeed(f"stopped seeding {query}")

    def remove(self, query: str, delete: bool) -> Deferred[str]:
        self.calls.append(("remove", query, delete))
        return succeed(f"removed {query}")


@pytest.mark.parametrize(("line", "expected"), [
    ("torrent -setMode list", Command("list")),
    ("torrent -setMode info big file.bin", Command("info", "big file.bin")),
    ("torrent -setMode pause 3f2a9c0e", Command("pause", "3f2a9c0e")),
    ("torrent -setMode resume big.bin", Command("resume", "big.bin")),
    ("torrent -setMode cancel big.bin", Command("cancel", "big.bin")),
    ("torrent -setMode cancel big.bin --delete-data", Command("cancel", "big.bin", delete_data=True)),
    ("torrent -setMode stop-seeding big.bin", Command("stop-seeding", "big.bin")),
    ("torrent -setMode remove my file --delete-data", Command("remove", "my file", delete_data=True)),
    ("torrent -setMode remove '--delete-data'", Command("remove", "--delete-data")),
])
def test_the_operator_verbs_parse_and_round_trip(line: str, expected: Command) -> None:
    assert parse_command(line) == expected
    assert parse_command(expected.line()) == expected


@pytest.mark.parametrize(("line", "why"), [
    ("torrent -setMode list x", "list takes no argument"),
    ("torrent -setMode pause", "pause needs a torrent's name or info hash"),
    ("torrent -setMode remove --delete-data", "remove needs a torrent's name"),
    ("torrent -setMode pasue x", "did you mean 'pause'"),
    ("list", "did you mean 'torrent -setMode list'"),
])
def test_bad_operator_lines_say_why(line: str, why: str) -> None:
    with pytest.raises(CommandError, match=why):
        parse_command(line)


def test_every_verb_is_in_the_help() -> None:
    for verb in ("list", "info NAME", "pause NAME", "resume NAME", "cancel NAME", "stop-seeding NAME", "remove NAME"):
        assert f"torrent -setMode {verb}" in HELP_TEXT


def test_dispatch_reaches_the_operator_methods() -> None:
    node = Operated()
    verifyObject(IOperatorCommands, node)
    said = [dispatch(node, parse_command(line), lambda p: None).result for line in (
        "torrent -setMode list", "torrent -setMode info x", "torrent -setMode pause x", "torrent -setMode resume x",
        "torrent -setMode cancel x --delete-data", "torrent -setMode stop-seeding x", "torrent -setMode remove x")]
    assert node.calls == [("list",), ("info", "x"), ("pause", "x"), ("resume", "x"), ("cancel", "x", True),
                          ("stop_seeding", "x"), ("remove", "x", False)]
    assert said[2:] == ["paused x", "resumed x", "cancelled x", "stopped seeding x", "removed x"]


def test_a_node_without_the_operator_verbs_says_so() -> None:
    class Old:
        pass

    d = dispatch(Old(), Command("list"), lambda p: None)  # type: ignore[arg-type]
    assert "does not know 'list'" in str(d.result.value)
    d.addErrback(lambda f: None)


def test_stdin_prints_the_tables_at_100_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    proto = StdinControl(Operated(), Clock())
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(b"torrent -setMode list\ntorrent -setMode info ubuntu\n")
    out = transport.value().decode()
    expected = ["OK: " + render_list(LIST, 100), "OK: " + render_info(INFO, 100)]
    assert out == "".join(text + "\n" for text in expected)
    monkeypatch.setenv("COLUMNS", "60")
    transport.clear()
    proto.dataReceived(b"torrent -setMode list\n")
    assert transport.value().decode() == "OK: " + render_list(LIST, 60) + "\n"


def test_the_cli_words() -> None:
    assert command_from_words(["list"]) == Command("list")
    assert command_from_words(["stop-seeding", "big.bin"]) == Command("stop-seeding", "big.bin")
    assert prepare(["--node", "2", "cancel", "big.bin", "--delete-data"]).command == \
        Command("cancel", "big.bin", delete_data=True)
    assert prepare(["remove", "big.bin"]).command == Command("remove", "big.bin")
    req = prepare(["list", "--json"])
    assert req.json and req.command == Command("list")
    # A NAME is the node's: never made into a path of ours, even when such a file is here.
    assert prepare(["info", "README.md"]).command == Command("info", "README.md")


def test_delete_data_goes_only_with_cancel_and_remove(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        prepare(["pause", "x", "--delete-data"])
    assert e.value.code == EXIT_USAGE
    assert "--delete-data goes with cancel or remove, not pause" in capsys.readouterr().err


@pytest.mark.parametrize(("verb", "answer", "draw"), [
    ("list", LIST, render_list), ("info", INFO, render_info), ("status", STATUS, render_status)])
def test_the_cli_draws_tables_and_json_round_trips(verb: str, answer: dict[str, Any], draw: Any) -> None:
    travelled = json.loads(json.dumps(answer))
    assert render(Command(verb), travelled, False, 72) == draw(answer, 72)
    assert json.loads(render(Command(verb), travelled, True, 72)) == answer
    assert render(Command("pause", "x"), "paused x", False, 72) == "paused x"
    assert io.StringIO().getvalue() == ""
