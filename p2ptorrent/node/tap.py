"""`twistd p2pnode --id N`: options and the service tree of one node."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, Service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.python import usage

from p2ptorrent.commands import default_control_endpoint
from p2ptorrent.config import MAX_NODE_ID
from p2ptorrent.node.access import check_control_endpoint, clear_stale_socket
from p2ptorrent.node.control import ControlFactory, StdinControl
from p2ptorrent.node.service import Node, log_path, stdin_is_usable
from p2ptorrent.options import SettingsOptions
from p2ptorrent.startup import StartupError, claim_under_twistd, fail_to_start

#: A daemonised node's pid file, in its own folder (none in the foreground).
PID_FILE = "node.pid"


class Options(SettingsOptions):
    synopsis = "--id N [options]"
    longdesc = (
        "Run one p2ptorrent node: it registers with the tracker, shares files over UDP and downloads "
        "them from other nodes. Commands (torrent -setMode send FILE | download TORRENT | exit) are read "
        "from stdin in the foreground, and from the control endpoint (see the p2ptorrent command) always."
    )
    optParameters = SettingsOptions.optParameters + [
        ["id", "i", None, "This node's id, a whole number (required); its files live in node_files/<id>/."],
        ["interface", None, "", "Address to listen on for UDP (default: all)."],
        ["port", "p", "0", "UDP port to listen on (default 0: a free one in AVAILABLE_PORTS_RANGE)."],
        ["advertise-port", None, "0", "UDP port to tell the tracker, if a NAT maps it (default: the one listened on)."],
        ["control", None, None, "Twisted endpoint for commands (default: unix:address=node_files/<id>/.control.sock:mode=600)."],
        ["max-upload-rate", None, None, "Upload limit in all, bytes a second: 20MiB, 512KiB, 0 = none (MAX_UPLOAD_RATE)."],
        ["max-download-rate", None, None, "Download limit in all, bytes a second, as above (MAX_DOWNLOAD_RATE)."],
        ["metrics-port", None, None, "TCP port of the Prometheus /metrics page, 0 = none (METRICS_PORT, default 0)."],
    ]
    optFlags = [["no-stdin", None, "Do not read commands from stdin even in the foreground."]]

    def postOptions(self) -> None:
        super().postOptions()
        if self["id"] is None:
            raise usage.UsageError("--id is required: every node needs its own id, e.g. --id 1")
        for name, low in (("id", 0), ("port", 0), ("advertise-port", 0)):
            try:
                self[name] = int(self[name])
            except ValueError:
                raise usage.UsageError(f"--{name} must be a whole number, got {self[name]!r}") from None
            if not low <= self[name] <= (MAX_NODE_ID if name == "id" else 65535):
                raise usage.UsageError(f"--{name} is out of range: {self[name]}")
        try:
            if self["control"] is None:
                self["control"] = default_control_endpoint(self["settings"], self["id"])
            # Only this user may command the node: refuse endpoints others could reach.
            self["control"] = check_control_endpoint(self["control"], bool(self["settings"].CONTROL_ALLOW_REMOTE))
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        folder = self["settings"].node_dir(self["id"])
        self["log_taken_over"] = claim_under_twistd(
            self, "p2pnode", folder, folder / PID_FILE, log_path(self["settings"], self["id"]),
        )


def makeService(config: Any, reactor: Any = None) -> IService:
    """The node's service tree.  Run by twistd (no *reactor* given), it also claims its folder and opens
    its sockets now, before twistd forks: a node that cannot start says why on the terminal and exits 1."""
    if reactor is None:
        from twisted.internet import reactor as running  # noqa: PLC0415 - only when run by twistd

        node = _build(config, running)
        try:
            node.open()
            node.control.open()
        except StartupError as e:
            raise fail_to_start("p2pnode", e) from None
        return node
    return _build(config, reactor)


def _build(config: Any, reactor: Any) -> Node:
    node = Node(
        config["settings"],
        config["id"],
        reactor,
        _quiet_http(reactor, config["interface"]),
        interface=config["interface"],
        port=config["port"],
        advertise_port=config["advertise-port"],
        stop_process=reactor.stop,
        log_file=not config.get("log_taken_over"),
    )
    control = ControlService(reactor, config["control"], ControlFactory(node, allow_remote=bool(config["settings"].CONTROL_ALLOW_REMOTE)))
    control.setServiceParent(node)
    node.control = control
    if not config["no-stdin"]:
        StdinService(node, reactor).setServiceParent(node)
    return node


def _quiet_http(reactor: Any, interface: str = "") -> Any:
    """A treq client for the tracker, quiet about each connection it opens.

    Bound to the node's --interface: the tracker records the address it sees,
    so the HTTP connection must leave from the address the node listens on.
    """
    from treq.client import HTTPClient  # noqa: PLC0415 - treq imports the reactor
    from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory  # noqa: PLC0415

    class QuietFactory(_HTTP11ClientFactory):
        noisy = False

    pool = HTTPConnectionPool(reactor)
    pool._factory = QuietFactory
    bind = (interface, 0) if interface not in ("", "0.0.0.0", "::") else None
    client = HTTPClient(Agent(reactor, pool=pool, bindAddress=bind))
    client.pool = pool  # type: ignore[attr-defined]  # closed by the node when it stops
    return client


class ControlService(StreamServerEndpointService):
    """The control endpoint, opened before twistd forks (see makeService), or as the node starts."""

    def __init__(self, reactor: Any, description: str, factory: Any) -> None:
        super().__init__(serverFromString(reactor, description), factory)
        self.description = description
        self._raiseSynchronously = True

    def open(self) -> None:
        if self._waitingForPort is not None:
            return
        # A socket file left behind by a node that was killed; the folder lock says it is no live node's.
        clear_stale_socket(self.description)
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            why = getattr(e.socketError, "strerror", None) or e.socketError
            raise StartupError(f"cannot open the control endpoint {self.description}: {why}") from None
        except OSError as e:
            raise StartupError(f"cannot open the control endpoint {self.description}: {e.strerror or e}") from None

    def privilegedStartService(self) -> None:
        self.open()


class StdinService(Service):
    """Commands typed on stdin, when there is a terminal or a pipe to read (not a daemon's /dev/null)."""

    def __init__(self, node: Node, reactor: Any) -> None:
        self.node = node
        self.reactor = reactor
        self.stdio: Any = None

    def startService(self) -> None:
        super().startService()
        if stdin_is_usable():
            from twisted.internet.stdio import StandardIO  # noqa: PLC0415

            self.stdio = StandardIO(StdinControl(self.node), reactor=self.reactor)

    def stopService(self) -> None:
        super().stopService()
        if self.stdio is not None:
            self.stdio.stopReading()
            self.stdio = None
