"""Settings: the original defaults, a config file in either layout, overrides, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from twisted.python import usage

from p2ptorrent.config import Config, ConfigError, as_dict, load
from p2ptorrent.options import SettingsOptions

ORIGINAL = {
    "directory": {"logs_dir": "logs/", "node_files_dir": "node_files/", "tracker_db_dir": "tracker_db/"},
    "constants": {
        "AVAILABLE_PORTS_RANGE": [1024, 65535],
        "TRACKER_ADDR": ["localhost", 12345],
        "MAX_UDP_SEGMENT_DATA_SIZE": 65527,
        "BUFFER_SIZE": 9216,
        "CHUNK_PIECES_SIZE": 7216,
        "MAX_SPLITTNES_RATE": 3,
        "NODE_TIME_INTERVAL": 20,
        "TRACKER_TIME_INTERVAL": 22,
    },
    "tracker_requests_mode": {"REGISTER": 0, "OWN": 1, "NEED": 2, "UPDATE": 3, "EXIT": 4},
}


def test_defaults_are_the_original_ones() -> None:
    got = as_dict(Config())
    assert got["directory"] == ORIGINAL["directory"]
    assert got["tracker_requests_mode"] == ORIGINAL["tracker_requests_mode"]
    for key, value in ORIGINAL["constants"].items():
        assert got["constants"][key] == value, key
    assert Config().tracker_url == "http://localhost:12345"


def test_original_config_file_loads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "configs.json"
    path.write_text(json.dumps(ORIGINAL))
    assert load(path) == Config()


def test_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"constants": {"NODE_TIME_INTERVAL": 5, "TRACKER_ADDR": ["10.1.2.3", 80]}, "CHUNK_PIECES_SIZE": 1000}))
    c = load(path, {"node_time_interval": "7.5", "tracker_requests_mode": '{"REGISTER": 10, "OWN": 11, "NEED": 12, "UPDATE": 13, "EXIT": 14}'})
    assert c.NODE_TIME_INTERVAL == 7.5
    assert c.TRACKER_ADDR == ("10.1.2.3", 80)
    assert c.CHUNK_PIECES_SIZE == 1000
    assert c.mode("EXIT") == 14 and c.mode_name(12) == "NEED"


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({"CHUNK_PIECES_SIZE": "9200"}, "must fit in one BUFFER_SIZE"),
        ({"NODE_TIME_INTERVAL": "-1"}, "NODE_TIME_INTERVAL must be a positive"),
        ({"TRACKER_TIME_INTERVAL": "0"}, "TRACKER_TIME_INTERVAL must be a positive"),
        ({"BUFFER_SIZE": "70000"}, "BUFFER_SIZE must be between"),
        ({"BUFFER_SIZE": "x"}, "bad value for BUFFER_SIZE"),
        ({"MAX_SPLITTNES_RATE": "0"}, "MAX_SPLITTNES_RATE must be at least 1"),
        ({"AVAILABLE_PORTS_RANGE": "2000-1000"}, "AVAILABLE_PORTS_RANGE"),
        ({"TRACKER_ADDR": "host:99999"}, "TRACKER_ADDR port"),
        ({"PIECE_LENGTH": "1000"}, "PIECE_LENGTH must be 0"),
        ({"tracker_requests_mode": '{"REGISTER": 0}'}, "tracker_requests_mode must name"),
        ({"no_such_thing": "1"}, "unknown setting"),
    ],
)
def test_nonsense_is_refused(overrides: dict[str, str], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        load(overrides=overrides)


def test_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load(tmp_path / "bad.json")


def test_command_line_options() -> None:
    opts = SettingsOptions()
    opts.parseOptions(["--tracker", "192.0.2.1:8080", "--chunk-size", "1400", "--set", "PEER_TIMEOUT=3", "--splittness", "5"])
    c = opts["settings"]
    assert (c.TRACKER_ADDR, c.CHUNK_PIECES_SIZE, c.PEER_TIMEOUT, c.MAX_SPLITTNES_RATE) == (("192.0.2.1", 8080), 1400, 3.0, 5)
    with pytest.raises(usage.UsageError, match="must fit"):
        SettingsOptions().parseOptions(["--chunk-size", "10000"])
    with pytest.raises(usage.UsageError, match="NAME=VALUE"):
        SettingsOptions().parseOptions(["--set", "oops"])
