"""Command-line options shared by `twistd p2ptracker` and `twistd p2pnode`.

Settings come from the defaults, then ``--config FILE`` (JSON, the original
layout or flat), then ``--set NAME=VALUE`` (repeatable) and the named options
below.  ``postOptions`` builds one validated :class:`Config` under
``self["settings"]`` or raises ``UsageError`` with the reason.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from p2ptorrent.config import Config, ConfigError, load, parse_assignment

#: option name -> setting it overrides
NAMED_SETTINGS = {
    "logs-dir": "logs_dir",
    "node-files-dir": "node_files_dir",
    "tracker-db-dir": "tracker_db_dir",
    "tracker": "TRACKER_ADDR",
    "chunk-size": "CHUNK_PIECES_SIZE",
    "buffer-size": "BUFFER_SIZE",
    "splittness": "MAX_SPLITTNES_RATE",
    "node-interval": "NODE_TIME_INTERVAL",
    "tracker-interval": "TRACKER_TIME_INTERVAL",
}


class SettingsOptions(usage.Options):
    optParameters: list[list[Any]] = [
        ["config", "c", None, "JSON settings file (the original configs layout, or flat NAME: value)."],
        ["logs-dir", None, None, "Folder for log files (logs_dir, default logs/)."],
        ["node-files-dir", None, None, "Folder holding each node's files (node_files_dir, default node_files/)."],
        ["tracker-db-dir", None, None, "Folder of the tracker database (tracker_db_dir, default tracker_db/)."],
        ["tracker", None, None, "Tracker address HOST:PORT (TRACKER_ADDR, default localhost:12345)."],
        ["chunk-size", None, None, "Bytes of file data per datagram (CHUNK_PIECES_SIZE, default 7216)."],
        ["buffer-size", None, None, "Largest datagram sent or accepted (BUFFER_SIZE, default 9216)."],
        ["splittness", None, None, "Owners to fetch from in parallel (MAX_SPLITTNES_RATE, default 3)."],
        ["node-interval", None, None, "Seconds between a node's heartbeats (NODE_TIME_INTERVAL, default 20)."],
        ["tracker-interval", None, None, "Seconds between liveness checks (TRACKER_TIME_INTERVAL, default 22)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["set"] = []

    def opt_set(self, assignment: str) -> None:
        """Override any setting: --set NAME=VALUE (repeatable), e.g. --set PEER_TIMEOUT=5."""
        try:
            self["set"].append(parse_assignment(assignment))
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    def settings(self) -> Config:
        overrides: dict[str, Any] = {}
        for option, name in NAMED_SETTINGS.items():
            if self.get(option) is not None:
                overrides[name] = self[option]
        for name, value in self["set"]:
            overrides[name] = value
        try:
            return load(self.get("config"), overrides)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    def postOptions(self) -> None:
        self["settings"] = self.settings()
