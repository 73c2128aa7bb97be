"""JsonStore: atomic saves and a load that survives missing or corrupt files."""

from __future__ import annotations

import json
import os
import random
import stat
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import LogLevel

from p2ptorrent.config import Config
from p2ptorrent.tracker.state import SwarmState
from p2ptorrent.tracker.store import JsonStore

H1 = "ab" * 20

NODES = {"version": 1, "nodes": [{"node_id": 1, "host": "h", "port": 9, "frequency": 3, "token_sha256": "c" * 64}]}
FILES = {"version": 1, "files": [{"info_hash": H1, "name": "f", "length": 1, "owners": [1], "credits": []}]}


def test_save_then_load_round_trip(tmp_path: Path) -> None:
    store = JsonStore(tmp_path / "db")
    store.save(NODES, FILES)
    assert json.loads((tmp_path / "db" / "nodes.json").read_text()) == NODES
    assert JsonStore(tmp_path / "db").load() == (NODES, FILES)
    assert sorted(p.name for p in (tmp_path / "db").iterdir()) == ["files.json", "nodes.json"]
    # The nodes' token hashes are nobody else's business.
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "db").iterdir()} == {0o600}


def test_missing_folder_or_file_loads_empty(tmp_path: Path) -> None:
    assert JsonStore(tmp_path / "nowhere").load() == ({}, {})
    JsonStore(tmp_path).save(NODES, FILES)
    (tmp_path / "files.json").unlink()
    assert JsonStore(tmp_path).load() == (NODES, {})


@pytest.mark.parametrize("damage", [b'{"version": 1, "nodes": [{"node_', b"\xff\xfe\x00", b"[1, 2]", b""])
def test_a_corrupt_file_is_kept_aside_and_started_empty(
    tmp_path: Path, damage: bytes, events: list[dict[str, Any]]
) -> None:
    JsonStore(tmp_path).save(NODES, FILES)
    (tmp_path / "nodes.json").write_bytes(damage)
    assert JsonStore(tmp_path).load() == ({}, FILES)
    assert (tmp_path / "nodes.json.corrupt-1").read_bytes() == damage
    assert not (tmp_path / "nodes.json").exists()
    assert any(e["log_level"] == LogLevel.error and "corrupt" in e["log_format"] for e in events)

    # A second corruption keeps the first copy and numbers the next.
    (tmp_path / "nodes.json").write_bytes(b"{{")
    assert JsonStore(tmp_path).load() == ({}, FILES)
    assert (tmp_path / "nodes.json.corrupt-1").read_bytes() == damage
    assert (tmp_path / "nodes.json.corrupt-2").read_bytes() == b"{{"


def test_failure_in_the_middle_of_a_save_leaves_the_old_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    JsonStore(tmp_path).save(NODES, FILES)
    before = (tmp_path / "nodes.json").read_bytes()

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    changed = {"version": 1, "nodes": []}
    with pytest.raises(OSError):
        JsonStore(tmp_path).save(changed, FILES)
    monkeypatch.undo()

    assert (tmp_path / "nodes.json").read_bytes() == before
    assert JsonStore(tmp_path).load() == (NODES, FILES)
    # No temporary file is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["files.json", "nodes.json"]


def test_save_writes_through_a_temporary_file_then_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        renames.append((Path(src).name, Path(dst).name))
        assert Path(src).parent == Path(dst).parent == tmp_path  # same folder: a rename, not a copy
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    JsonStore(tmp_path).save(NODES, FILES)
    assert [dst for _, dst in renames] == ["nodes.json", "files.json"]
    assert all(src.startswith(f".{dst}.") and src.endswith(".tmp") for src, dst in renames)


def test_an_unchanged_document_is_not_rewritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = JsonStore(tmp_path)
    store.save(NODES, FILES)
    written: list[str] = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda s, d: (written.append(Path(d).name), real_replace(s, d)))
    store.save(NODES, {"version": 1, "files": []})
    assert written == ["files.json"]


def test_stale_temporaries_of_an_interrupted_save_are_removed(tmp_path: Path) -> None:
    JsonStore(tmp_path).save(NODES, FILES)
    (tmp_path / ".nodes.json.abc123.tmp").write_bytes(b'{"half')
    (tmp_path / "unrelated.tmp").write_bytes(b"keep me")
    assert JsonStore(tmp_path).load() == (NODES, FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["files.json", "nodes.json", "unrelated.tmp"]


def test_state_survives_a_restart_through_the_store(tmp_path: Path) -> None:
    cfg = Config()
    state = SwarmState(cfg, random.Random(1))
    a = state.register(1, "10.0.0.1", 9001, None, 0.0).token
    b = state.register(2, "10.0.0.2", 9002, None, 0.0).token
    state.own(1, a, H1, "f", 10)
    state.update(2, b, H1, [1])
    JsonStore(tmp_path).save(*state.snapshot())

    again = SwarmState(cfg, random.Random(2))
    assert again.restore(*JsonStore(tmp_path).load(), now=100.0) == []
    assert again.owner_info(1).frequency == 1  # type: ignore[union-attr]
    assert [o.node_id for o in again.need(2, b, H1).owners] == [1]
