"""Settings: the original defaults, a config file in either layout, overrides, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from twisted.python import usage

from p2ptorrent.config import Config, ConfigError, flatten, load
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


#: Defaults changed from the original, and why: a 7216-byte chunk travels as 5 IP fragments on a 1500-byte-MTU
#: link, and at 1% packet loss the receiver's reassembly queue fills and every download failed (README).
CHANGED = {"CHUNK_PIECES_SIZE": 1400}


def test_defaults_are_the_original_ones() -> None:
    c = Config()
    for key, value in flatten(ORIGINAL).items():
        got = getattr(c, key)
        assert (list(got) if isinstance(got, tuple) else got) == CHANGED.get(key, value), key
    assert Config().tracker_url == "http://localhost:12345"


def test_original_config_file_loads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "configs.json"
    path.write_text(json.dumps(ORIGINAL))
    assert load(path) == Config(CHUNK_PIECES_SIZE=7216)  # it says 7216: it gets 7216


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


# ---- refusals that say what to do

@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"CHUNK_PIECES_SIZE": "60000"},
            "CHUNK_PIECES_SIZE must be 1-9176: a chunk plus its 40-byte header must fit in one BUFFER_SIZE (9216)"
            " datagram, got 60000; raise BUFFER_SIZE to at least 60040 (--buffer-size 60040)",
        ),
        (
            {"CHUNK_PIECES_SIZE": "2000", "BUFFER_SIZE": "1024"},
            "CHUNK_PIECES_SIZE must be 1-984: a chunk plus its 40-byte header must fit in one BUFFER_SIZE (1024)"
            " datagram, got 2000; raise BUFFER_SIZE to at least 2040 (--buffer-size 2040)",
        ),
        (
            {"CHUNK_PIECES_SIZE": "30000", "MAX_UDP_SEGMENT_DATA_SIZE": "20000"},
            "CHUNK_PIECES_SIZE must be 1-9176: a chunk plus its 40-byte header must fit in one BUFFER_SIZE (9216)"
            " datagram, got 30000; raise BUFFER_SIZE and MAX_UDP_SEGMENT_DATA_SIZE to at least 30040"
            " (--buffer-size 30040 --set MAX_UDP_SEGMENT_DATA_SIZE=30040)",
        ),
        (
            {"CHUNK_PIECES_SIZE": "65476"},
            "CHUNK_PIECES_SIZE must be 1-9176: a chunk plus its 40-byte header must fit in one BUFFER_SIZE (9216)"
            " datagram, got 65476; no datagram is that big: a chunk can be at most 65467 bytes"
            " (the largest UDP payload, 65507, less the header)",
        ),
        ({"CHUNK_PIECES_SIZE": "0"}, "CHUNK_PIECES_SIZE must be 1-9176: a chunk plus its 40-byte header must fit"
                                     " in one BUFFER_SIZE (9216) datagram, got 0"),
        ({"TRACKER_ADDR": "nohost"}, "bad value for TRACKER_ADDR: 'nohost' (expected HOST:PORT, e.g. 192.0.2.10:12345)"),
        ({"TRACKER_ADDR": "host:"}, "bad value for TRACKER_ADDR: 'host:' (expected HOST:PORT, e.g. 192.0.2.10:12345)"),
        ({"TRACKER_ADDR": "host:http"}, "bad value for TRACKER_ADDR: 'host:http' (expected HOST:PORT, e.g. 192.0.2.10:12345)"),
        ({"TRACKER_ADDR": ":12345"}, "TRACKER_ADDR needs a host: expected HOST:PORT, e.g. 192.0.2.10:12345"),
        ({"TRACKER_ADDR": "host:0"}, "TRACKER_ADDR port must be 1-65535, got 0: expected HOST:PORT, e.g. 192.0.2.10:12345"),
        ({"AVAILABLE_PORTS_RANGE": "many"}, "bad value for AVAILABLE_PORTS_RANGE: 'many' (expected LOW-HIGH, e.g. 1024-65535)"),
        ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL must be one of debug, info, warn, error, critical, got 'verbose'"),
        ({"LOG_LEVEL": "warning"},
         "LOG_LEVEL must be one of debug, info, warn, error, critical, got 'warning': did you mean 'warn'?"),
        ({"LOG_MAX_BYTES": "4095"},
         "LOG_MAX_BYTES must be at least 4096 (bytes a log file reaches before it is rotated), got 4095"),
        ({"LOG_BACKUPS": "0"}, "LOG_BACKUPS must be at least 1 (rotated log files kept), got 0"),
    ],
)
def test_refusals_say_what_to_do(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(overrides=overrides)
    assert str(e.value) == message


def test_tracker_addr_from_json_of_the_wrong_shape(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"TRACKER_ADDR": ["a", 1, 2]}))
    with pytest.raises(ConfigError, match=r"expected HOST:PORT, e\.g\. 192\.0\.2\.10:12345"):
        load(path)


# ---- the log settings

def test_log_settings() -> None:
    c = Config()
    assert (c.LOG_LEVEL, c.LOG_MAX_BYTES, c.LOG_BACKUPS) == ("info", 10 * 1024 * 1024, 5)
    c = load(overrides={"log_level": " WARN ", "LOG_MAX_BYTES": "4096", "log_backups": "1"})
    assert (c.LOG_LEVEL, c.LOG_MAX_BYTES, c.LOG_BACKUPS) == ("warn", 4096, 1)
    for level in ("debug", "info", "warn", "error", "critical"):
        assert load(overrides={"LOG_LEVEL": level}).LOG_LEVEL == level
    with pytest.raises(ConfigError, match="bad value for LOG_LEVEL: 3 .expected a string"):
        load(overrides={"LOG_LEVEL": 3})


def test_log_levels_are_twisted_level_names() -> None:
    from twisted.logger import LogLevel

    from p2ptorrent.config import LOG_LEVELS

    assert [LogLevel.levelWithName(name) for name in LOG_LEVELS] == sorted(LogLevel.iterconstants())


def test_log_level_option_for_tracker_and_node() -> None:
    from p2ptorrent.node import tap as node_tap
    from p2ptorrent.tracker import tap as tracker_tap

    for options in (SettingsOptions(), node_tap.Options(), tracker_tap.Options()):
        options.parseOptions(["--log-level", "debug", *(["--id", "1"] if isinstance(options, node_tap.Options) else [])])
        assert options["settings"].LOG_LEVEL == "debug"
        assert "--log-level" in str(options)
    with pytest.raises(usage.UsageError, match="LOG_LEVEL must be one of debug, info, warn, error, critical"):
        SettingsOptions().parseOptions(["--log-level", "loud"])


def test_set_checks_names_with_the_other_values() -> None:
    """--set is read like every other value: its refusal comes from postOptions, after all the options."""
    with pytest.raises(usage.UsageError, match="unknown setting 'NO_SUCH'"):
        SettingsOptions().parseOptions(["--set", "NO_SUCH=1"])
    opts = SettingsOptions()
    opts.parseOptions(["--set", "LOG_BACKUPS=9", "--set", "log_backups=10"])
    assert opts["settings"].LOG_BACKUPS == 10  # the last one wins
