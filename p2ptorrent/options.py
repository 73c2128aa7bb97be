"""Command-line options shared by `twistd p2ptracker` and `twistd p2pnode`.

Settings come from the defaults, then ``--config FILE`` (JSON, the original
layout or flat), then ``--set NAME=VALUE`` (repeatable) and the named options
below.  ``postOptions`` builds one validated :class:`Config` under
``self["settings"]`` or raises ``UsageError`` with the reason.

A refused value is one line, not a page: twistd answers every ``UsageError``
by printing its whole usage text (45 lines for a node) before the reason, so
when twistd (or ``twist``) is the one parsing, a value refused once all the
options are read ends the process with ``twistd p2pnode: error: <reason>`` on
stderr instead (:class:`SettingRefused`).  Parsed on their own, as tests do,
these options still raise ``UsageError``.  Mistakes in option *names* and
missing option values are found before that and keep twistd's usage text:
there it is the help that was needed.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    "log-level": "LOG_LEVEL",
    "store": "TRACKER_STORE",
    # (a node's only)
    "max-upload-rate": "MAX_UPLOAD_RATE",
    "max-download-rate": "MAX_DOWNLOAD_RATE",
    "metrics-port": "METRICS_PORT",
}


class SettingRefused(SystemExit):
    """A value refused while twistd parses: exit status 1, and ``str()`` is the one line printed."""


class SettingsOptions(usage.Options):
    optParameters: list[list[Any]] = [
        ["config", "c", None, "JSON settings file (the original configs layout, or flat NAME: value)."],
        ["logs-dir", None, None, "Folder for log files (logs_dir, default logs/)."],
        ["node-files-dir", None, None, "Folder holding each node's files (node_files_dir, default node_files/)."],
        ["tracker-db-dir", None, None, "Folder of the tracker database (tracker_db_dir, default tracker_db/)."],
        ["tracker", None, None, "Tracker address HOST:PORT (TRACKER_ADDR, default localhost:12345)."],
        ["chunk-size", None, None, "Bytes of file data per datagram (CHUNK_PIECES_SIZE, default 1400)."],
        ["buffer-size", None, None, "Largest datagram sent or accepted (BUFFER_SIZE, default 9216)."],
        ["splittness", None, None, "Owners to fetch from in parallel (MAX_SPLITTNES_RATE, default 3)."],
        ["node-interval", None, None, "Seconds between a node's heartbeats (NODE_TIME_INTERVAL, default 20)."],
        ["tracker-interval", None, None, "Seconds between liveness checks (TRACKER_TIME_INTERVAL, default 22)."],
        ["log-level", None, None,
         "Least severe events logged: debug, info, warn, error or critical (LOG_LEVEL, default info)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["set"] = []
        #: Whether every option has been read, so a UsageError now refuses a value.
        self._options_read = False

    def opt_set(self, assignment: str) -> None:
        """Override any setting: --set NAME=VALUE (repeatable), e.g. --set PEER_TIMEOUT=5."""
        # Checked in settings(), with the other values, so a bad one is refused in one line.
        self["set"].append(assignment)

    def settings(self) -> Config:
        overrides: dict[str, Any] = {}
        try:
            for option, name in NAMED_SETTINGS.items():
                if self.get(option) is not None:
                    overrides[name] = self[option]
            for assignment in self["set"]:
                name, value = parse_assignment(assignment)
                overrides[name] = value
            return load(self.get("config"), overrides)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    def parseArgs(self, *args: str) -> None:
        # usage.Options calls this after every option was dispatched and just
        # before postOptions: what fails from here on is a value, not a name.
        super().parseArgs(*args)
        self._options_read = True

    def postOptions(self) -> None:
        self["settings"] = self.settings()

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            parent = getattr(self, "parent", None)
            if parent is None or not self._options_read:
                raise
            # usage.Options sets parent and subCommand before it parses a subcommand's options.
            runner = "twist" if type(parent).__name__ == "TwistOptions" else "twistd"
            raise SettingRefused(f"{runner} {parent.subCommand}: error: {e}") from None
