"""The daemons' log files: rotation, levels, failures, LogFileService, and twistd's own log taken over.

Most tests feed events through a private Logger into the observer and read
the files back.  The last ones run real twistd in a subprocess, with a
subcommand of the test's own (the taps are others' to wire), and judge only
what it printed and wrote.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from twisted.logger import Logger, LogLevel, LogPublisher, textFileLogObserver
from twisted.python import usage
from twisted.scripts import _twistd_unix

from p2ptorrent import logfile
from p2ptorrent.config import LOG_LEVELS
from p2ptorrent.logfile import LogFileService, TwistdLog, file_observer, observer_for, take_over_twistd_log
from p2ptorrent.procs import wait_for


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def emit_numbered(log: Logger, count: int) -> None:
    for i in range(count):
        log.info("line {i:04d} {pad}", i=i, pad="x" * 40)


# ---- rotation


def test_rotates_before_a_line_would_pass_max_bytes_and_keeps_backups_files(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "node_1.log"  # the folder does not exist yet
    observer = file_observer(path, "info", max_bytes=1000, backups=3)
    emit_numbered(Logger(namespace="test", observer=observer), 200)
    observer.close()

    files = [Path(f"{path}.{n}") for n in (3, 2, 1)] + [path]  # oldest first
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(p.name for p in files)
    for older, newer in zip(files, files[1:]):
        size = older.stat().st_size
        first_of_newer = len(newer.read_text().splitlines(keepends=True)[0].encode())
        # Full up to max_bytes: the next line would not have fit.
        assert size <= 1000 < size + first_of_newer
    assert path.stat().st_size <= 1000
    numbers = [int(line.split("line ")[1][:4]) for p in files for line in lines_of(p)]
    assert numbers == list(range(numbers[0], 200))  # the newest lines, none lost or repeated between files


def test_files_beyond_backups_are_deleted_even_from_an_earlier_run(tmp_path: Path) -> None:
    path = tmp_path / "tracker.log"
    for n in (1, 2, 5, 9):  # left by a run that kept more
        Path(f"{path}.{n}").write_text(f"old {n}\n")
    observer = file_observer(path, "info", max_bytes=500, backups=2)
    emit_numbered(Logger(namespace="test", observer=observer), 20)
    observer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tracker.log", "tracker.log.1", "tracker.log.2"]


def test_no_backups_keeps_only_the_current_file(tmp_path: Path) -> None:
    path = tmp_path / "tracker.log"
    observer = file_observer(path, "info", max_bytes=500, backups=0)
    emit_numbered(Logger(namespace="test", observer=observer), 20)
    observer.close()
    assert [p.name for p in tmp_path.iterdir()] == ["tracker.log"]
    assert "line 0019" in path.read_text()


def test_an_event_longer_than_max_bytes_is_written_whole_in_a_file_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    observer = file_observer(path, "info", max_bytes=300, backups=5)
    log = Logger(namespace="test", observer=observer)
    log.info("before")
    log.info("big {blob}", blob="y" * 1000)
    log.info("after")
    observer.close()
    assert [len(lines_of(Path(f"{path}.{n}"))) for n in (2, 1)] == [1, 1]
    assert "y" * 1000 in Path(f"{path}.1").read_text()
    assert "after" in path.read_text()


def test_appends_to_an_existing_file_and_counts_its_size(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_text("z" * 290 + "\n")
    observer = file_observer(path, "info", max_bytes=300, backups=1)
    Logger(namespace="test", observer=observer).info("next")
    observer.close()
    assert Path(f"{path}.1").read_text() == "z" * 290 + "\n"
    assert "next" in path.read_text()


def test_size_is_counted_in_bytes_not_characters(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    observer = file_observer(path, "info", max_bytes=400, backups=9)
    log = Logger(namespace="test", observer=observer)
    for _ in range(10):
        log.info("{s}", s="é" * 60)  # 120 bytes of text each
    observer.close()
    assert all(p.stat().st_size <= 400 for p in tmp_path.iterdir())


def test_rotate_starts_a_new_file_now(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    observer = file_observer(path, "info", max_bytes=10_000, backups=2)
    log = Logger(namespace="test", observer=observer)
    log.info("first")
    observer.rotate()
    log.info("second")
    observer.close()
    assert "first" in Path(f"{path}.1").read_text() and "second" not in Path(f"{path}.1").read_text()
    assert "second" in path.read_text()


# ---- levels and failures


@pytest.mark.parametrize(
    ("level", "written"),
    [
        ("debug", ["debug", "info", "warn", "error", "critical"]),
        ("info", ["info", "warn", "error", "critical"]),
        ("warn", ["warn", "error", "critical"]),
        ("ERROR", ["error", "critical"]),
        ("critical", ["critical"]),
    ],
)
def test_events_below_the_level_are_not_written(tmp_path: Path, level: str, written: list[str]) -> None:
    path = tmp_path / "a.log"
    observer = file_observer(path, level, max_bytes=10_000, backups=1)
    log = Logger(namespace="test", observer=observer)
    for name in LOG_LEVELS:
        log.emit(LogLevel.levelWithName(name), "event at {name}", name=name)
    observer.close()
    assert [line.split("event at ")[1] for line in lines_of(path)] == written
    assert f"[test#{written[0]}]" in path.read_text()


def test_an_unknown_level_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="use one of debug, info, warn, error, critical"):
        logfile.parse_level("verbose")


def test_events_without_a_namespace_or_level_are_judged_as_info_not_lost(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    observer = file_observer(path, "info", max_bytes=10_000, backups=1)
    observer({"log_format": "no namespace", "log_level": LogLevel.warn, "log_time": 0.0})
    observer({"log_format": "no level", "log_namespace": "raw", "log_time": 0.0})
    observer({"log_format": "no namespace, debug", "log_level": LogLevel.debug, "log_time": 0.0})
    observer.close()
    text = path.read_text()
    assert "no namespace" in text and "no level" in text and "debug" not in text


def test_a_failure_is_written_whole_with_its_traceback_in_one_file(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    observer = file_observer(path, "error", max_bytes=600, backups=3)
    log = Logger(namespace="test", observer=observer)

    def deep(n: int) -> None:
        if n == 0:
            raise ZeroDivisionError("the cause")
        deep(n - 1)

    for i in range(3):
        log.error("filler {i} {pad}", i=i, pad="x" * 150)
    try:
        deep(5)
    except ZeroDivisionError:
        log.failure("while handling a block from {addr}", addr=("10.0.0.1", 9))
    observer.close()
    holding = [p for p in sorted(tmp_path.iterdir()) if "Traceback" in p.read_text()]
    assert len(holding) == 1  # never split by a rotation
    text = holding[0].read_text()
    assert text.count("while handling a block from ('10.0.0.1', 9)") == 1
    assert "[test#critical]" in text
    assert "Traceback (most recent call last):" in text
    assert text.count("in deep") == 6
    assert text.rstrip().endswith("builtins.ZeroDivisionError: the cause")


# ---- LogFileService


def test_log_file_service_observes_its_publisher_only_while_running(tmp_path: Path) -> None:
    publisher = LogPublisher()
    log = Logger(namespace="test", observer=publisher)
    path = tmp_path / "logs" / "tracker.log"
    service = LogFileService(path, publisher=publisher)
    log.info("before start")
    assert not path.exists()

    service.privilegedStartService()  # twistd's first call: the file must exist from then on
    log.info("while running")
    log.debug("not at the default level")
    service.startService()
    log.info("still running")
    service.stopService()
    log.info("after stop")

    assert [line.split("] ")[1] for line in lines_of(path)] == ["while running", "still running"]
    assert service.observer is None


def test_log_file_service_opens_on_start_service_alone_and_rotates(tmp_path: Path) -> None:
    publisher = LogPublisher()
    service = LogFileService(tmp_path / "a.log", level="debug", max_bytes=500, backups=1, publisher=publisher)
    service.startService()
    log = Logger(namespace="test", observer=publisher)
    log.debug("at debug")
    emit_numbered(log, 20)
    service.stopService()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.log", "a.log.1"]
    assert "line 0019" in (tmp_path / "a.log").read_text()


# ---- twistd's own log


class SubOptions(usage.Options):
    """A subcommand calling take_over_twistd_log as a tap's postOptions does."""

    optParameters = [["path", None, "logs/test.log", "log file"], ["level", None, "info", "least level"]]

    def postOptions(self) -> None:
        self["took_over"] = take_over_twistd_log(self.parent, self["path"], self["level"], 4096, 2)


class TwistdOptions(_twistd_unix.ServerOptions):
    """twistd's real options, with only our subcommand (no plugin lookup)."""

    subCommands = [("logtest", None, SubOptions, "log test")]


@pytest.fixture(autouse=True)
def no_twistd_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(logfile, "twistd_log", None)
    yield


def parse_twistd(*argv: str) -> TwistdOptions:
    options = TwistdOptions()
    options.parseOptions(list(argv))
    return options


@pytest.mark.parametrize(
    ("own_log", "logger"),
    [
        (["--logfile", "mine.log"], None),
        (["--logfile=-"], None),
        (["--syslog"], None),
        (["--logger", "twisted.logger.textFileLogObserver"], textFileLogObserver),
    ],
)
def test_take_over_leaves_a_log_the_user_chose_alone(own_log: list[str], logger: Any) -> None:
    options = parse_twistd("-n", *own_log, "logtest")
    assert options.subOptions["took_over"] is False
    assert logfile.twistd_log is None
    assert options["logger"] is logger


def test_take_over_makes_our_factory_twistds_logger(tmp_path: Path) -> None:
    options = parse_twistd("-n", "--rundir", str(tmp_path), "logtest", "--path", "logs/x.log", "--level", "warn")
    assert options.subOptions["took_over"] is True
    # twistd's postOptions ran after ours and imported the dotted name we gave.
    assert options["logger"] is logfile.twistd_observer
    assert options["logfile"] is None
    assert logfile.twistd_log == TwistdLog(tmp_path / "logs" / "x.log", "warn", 4096, 2, echo=True)


def test_take_over_echoes_to_stdout_only_in_the_foreground() -> None:
    parse_twistd("logtest")
    assert logfile.twistd_log is not None and logfile.twistd_log.echo is False
    assert logfile.twistd_log.path == Path("logs/test.log").absolute()


def test_take_over_needs_twistds_options() -> None:
    assert take_over_twistd_log(None, "a.log", "info", 4096, 2) is False
    twist_like = {"logLevel": "info", "logFile": None}  # `python -m twisted`: no "logger" to set
    assert take_over_twistd_log(twist_like, "a.log", "info", 4096, 2) is False
    assert twist_like == {"logLevel": "info", "logFile": None}
    with pytest.raises(ValueError, match="unknown log level"):
        take_over_twistd_log({"logger": None}, "a.log", "loud", 4096, 2)


@pytest.mark.parametrize("echo", [True, False])
def test_twistds_observer_writes_the_file_and_the_same_lines_to_stdout(tmp_path: Path, echo: bool) -> None:
    stdout = io.StringIO()
    observer = observer_for(TwistdLog(tmp_path / "a.log", "info", 4096, 2, echo=echo), stdout)
    log = Logger(namespace="test", observer=observer)
    log.debug("hidden")
    log.info("shown")
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        log.failure("failed")
    observer.file.close()
    text = (tmp_path / "a.log").read_text()
    assert "shown" in text and "ZeroDivisionError" in text and "hidden" not in text
    assert stdout.getvalue() == (text if echo else "")


def test_twistd_observer_refuses_to_run_unset() -> None:
    with pytest.raises(RuntimeError, match="set up by the daemon itself"):
        logfile.twistd_observer()


# ---- real twistd

#: Runs twistd's own main with one subcommand: it takes over the log as a tap
#: would (or adds a LogFileService when the user chose a log), logs at every
#: level, a failure and a print, then stops the reactor.
TWISTD_SCRIPT = '''
import sys
from twisted.application import app
from twisted.application.service import MultiService, Service
from twisted.logger import Logger
from twisted.python import usage
from twisted.scripts import _twistd_unix
from twisted.scripts.twistd import runApp
from p2ptorrent.logfile import LogFileService, take_over_twistd_log

class Options(usage.Options):
    optParameters = [["path", None, "logs/test.log", ""], ["level", None, "info", ""]]

    def postOptions(self):
        self["took_over"] = take_over_twistd_log(self.parent, self["path"], self["level"], 1024 * 1024, 3)

class Talker(Service):
    log = Logger()

    def startService(self):
        super().startService()
        self.log.debug("marker-debug")
        self.log.info("marker-info")
        self.log.warn("marker-warn")
        try:
            1 / 0
        except ZeroDivisionError:
            self.log.failure("marker-failure")
        print("marker-print")
        from twisted.internet import reactor
        reactor.callLater(0, reactor.stop)

class Maker:
    tapname = "logtest"
    description = "log at every level, then stop"

    def options(self):
        return Options()

    def makeService(self, options):
        top = MultiService()
        if not options["took_over"]:
            LogFileService(options["path"], options["level"]).setServiceParent(top)
        Talker().setServiceParent(top)
        return top

class ServerOptions(_twistd_unix.ServerOptions):
    @property
    def subCommands(self):
        self.loadedPlugins = {Maker.tapname: Maker()}
        yield (Maker.tapname, None, Options, Maker.description)

sys.argv[0] = "twistd"
app.run(runApp, ServerOptions)
'''

MARKERS = ("marker-info", "marker-warn", "marker-failure", "marker-print")


def run_twistd(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "run_twistd.py"
    script.write_text(TWISTD_SCRIPT)
    return subprocess.run(
        [sys.executable, str(script), *argv], cwd=tmp_path, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=60,
    )


def assert_markers_once(text: str) -> None:
    for marker in MARKERS:
        assert text.count(marker) == 1, (marker, text)
    assert "marker-debug" not in text
    assert "ZeroDivisionError: division by zero" in text


def test_twistd_in_the_foreground_writes_each_line_once_to_our_file_and_stdout(tmp_path: Path) -> None:
    result = run_twistd(tmp_path, "-n", "--pidfile=", "logtest")
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "logs" / "test.log").read_text()
    assert_markers_once(text)
    assert "starting up" in text and "Server Shut Down." in text  # twistd's own lines too
    assert result.stdout == text
    assert not (tmp_path / "twistd.log").exists()


def test_twistd_as_a_daemon_writes_only_our_file(tmp_path: Path) -> None:
    result = run_twistd(tmp_path, "--pidfile=twistd.pid", "logtest")
    assert result.returncode == 0, result.stderr
    log = tmp_path / "logs" / "test.log"
    # The daemon runs on after its parent returned: wait until it has removed its pidfile.
    wait_for(lambda: log.exists() and "Server Shut Down." in log.read_text()
             and not (tmp_path / "twistd.pid").exists(), "the daemon to stop", timeout=30, fail=pytest.fail)
    assert_markers_once(log.read_text())
    assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "run_twistd.py"]  # no twistd.log


def test_twistd_with_a_logfile_of_the_users_keeps_it_and_adds_our_file(tmp_path: Path) -> None:
    result = run_twistd(tmp_path, "-n", "--pidfile=", "--logfile=mine.log", "logtest")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    mine = (tmp_path / "mine.log").read_text()
    for marker in (*MARKERS, "marker-debug"):  # twistd's log has no level filter
        assert mine.count(marker) == 1
    assert_markers_once((tmp_path / "logs" / "test.log").read_text())
