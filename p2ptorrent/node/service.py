"""A running node: its UDP endpoint, its shared files, its downloads, its tracker link.

:class:`Node` is the MultiService that `twistd p2pnode` runs, and it is what
the command grammar drives (it provides ``INodeCommands``): ``send`` hashes a
file into a torrent and shares it, ``download`` fetches a torrent's file,
``status`` describes the node, ``exit`` says goodbye to the tracker and stops.
The files it shares are remembered in ``<node folder>/.seeding.json`` so a
restarted node shares them again.
"""

from __future__ import annotations

import json
import os
import random
import stat
from pathlib import Path
from typing import Any, Callable

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from p2ptorrent import wire
from p2ptorrent.config import Config
from p2ptorrent.logfile import LogFileService
from p2ptorrent.metainfo import Metainfo, MetainfoError, make_torrent, read_torrent, target_path
from p2ptorrent.node.control import INodeCommands
from p2ptorrent.node.download import Download, DownloadError, DownloadResult
from p2ptorrent.node.protocol import NodeProtocol
from p2ptorrent.node.serving import Seeder
from p2ptorrent.node.storage import PartFile, file_matches
from p2ptorrent.node.tracker_client import HeartbeatService, TrackerClient

SEEDING_FILE = ".seeding.json"
#: Seconds a stopping node waits for the tracker to acknowledge its EXIT.
EXIT_TIMEOUT = 3.0


class CommandFailed(Exception):
    """A command could not be carried out; str() is the reason, for people."""


class UDPService(Service):
    """Listen on a UDP port: the one asked for, or a free one in AVAILABLE_PORTS_RANGE."""

    log = Logger()

    def __init__(self, reactor: Any, protocol: NodeProtocol, interface: str, port: int, ports: tuple[int, int], max_packet: int) -> None:
        self.reactor = reactor
        self.protocol = protocol
        self.interface = interface
        self.port = port
        self.ports = ports
        self.max_packet = max_packet
        self.listening: Any = None

    def startService(self) -> None:
        candidates = [self.port] if self.port else random.sample(range(self.ports[0], self.ports[1] + 1), min(64, self.ports[1] - self.ports[0] + 1))
        last: Exception | None = None
        for port in candidates:
            try:
                # One byte more than we accept, so an oversized datagram is seen, not cut.
                self.listening = self.reactor.listenUDP(port, self.protocol, self.interface, self.max_packet + 1)
                break
            except CannotListenError as e:
                last = e
        else:
            raise CannotListenError(self.interface, self.port, last)
        host = self.listening.getHost()
        self.port = host.port
        self.log.info("node listening on UDP {host}:{port}", host=host.host, port=host.port)
        super().startService()

    def stopService(self) -> Any:
        super().stopService()
        if self.listening is not None:
            d = self.listening.stopListening()
            self.listening = None
            return d
        return None


@implementer(INodeCommands)
class Node(MultiService):
    log = Logger()

    def __init__(
        self,
        settings: Config,
        node_id: int,
        reactor: Any,
        http: Any,
        interface: str = "",
        port: int = 0,
        advertise_port: int = 0,
        stop_process: Callable[[], None] | None = None,
        run_blocking: Callable[..., Deferred[Any]] | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.node_id = node_id
        self.reactor = reactor
        self.http = http
        self.advertise_port = advertise_port
        self.stop_process = stop_process
        self.run_blocking = run_blocking or (lambda f, *a: deferToThreadPool(reactor, reactor.getThreadPool(), f, *a))
        self.folder = settings.node_dir(node_id)
        self.seeder = Seeder(os.urandom(32), settings.BUFFER_SIZE - wire.BLOCK_OVERHEAD)
        self.protocol = NodeProtocol(self.seeder, reactor, settings.BUFFER_SIZE, settings.SOCKET_BUFFER)
        self.downloads: dict[bytes, Download] = {}
        self.torrents: dict[bytes, str] = {}
        self.client: TrackerClient | None = None
        self.heartbeat: HeartbeatService | None = None
        LogFileService(Path(settings.logs_dir) / f"node_{node_id}.log").setServiceParent(self)
        self.udp = UDPService(reactor, self.protocol, interface, port, settings.AVAILABLE_PORTS_RANGE, settings.BUFFER_SIZE)
        self.udp.setServiceParent(self)

    # ---- life
    def privilegedStartService(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)  # the control socket lives in it
        super().privilegedStartService()

    def startService(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        super().startService()  # log file first, then the UDP port
        port = self.advertise_port or self.udp.port
        self.client = TrackerClient(self.http, self.settings.tracker_url, self.reactor, self.settings, self.node_id, port)
        self._load_seeding()
        self.heartbeat = HeartbeatService(self.client, self.settings.NODE_TIME_INTERVAL, self.reactor, self._announce_all)
        self.heartbeat.setServiceParent(self)
        self.log.info(
            "node {node} started: folder {folder}, UDP port {port}, tracker {tracker}",
            node=self.node_id, folder=str(self.folder), port=self.udp.port, tracker=self.settings.tracker_url,
        )

    def stopService(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        for dl in list(self.downloads.values()):
            dl.stop("the node is stopping")
        if self.heartbeat is not None and self.heartbeat.running:
            await self.heartbeat.stopService()
        if self.client is not None:
            try:
                d = self.client.exit()
                d.addTimeout(EXIT_TIMEOUT, self.reactor)
                await d
                self.log.info("node {node} left the tracker (EXIT)", node=self.node_id)
            except Exception as e:
                self.log.warn("EXIT not acknowledged by the tracker: {why}", why=e)
        self.seeder.close()
        pool = getattr(self.http, "pool", None)
        if pool is not None:
            await pool.closeCachedConnections()
        self.log.info("node {node} stopped", node=self.node_id)
        await MultiService.stopService(self)

    # ---- sharing
    def _announce_all(self) -> None:
        """The tracker holds none of our ownerships (first join, or it forgot us): tell it again."""
        for shared in list(self.seeder.files.values()):
            self._own(shared.meta)

    def _own(self, meta: Metainfo) -> Deferred[Any]:
        assert self.client is not None
        d = self.client.own(meta.info_hash_hex, meta.name, meta.length)
        d.addCallbacks(
            lambda _: self.log.info("OWN {name} ({hash}) announced", name=meta.name, hash=meta.info_hash_hex),
            lambda f: self.log.warn("OWN {name} not announced: {why}", name=meta.name, why=f.getErrorMessage()),
        )
        return d

    def _share(self, meta: Metainfo, path: Path, torrent: str) -> None:
        self.seeder.add(meta, path)
        self.torrents[meta.info_hash] = torrent
        self._save_seeding()

    def _save_seeding(self) -> None:
        entries = {
            ih.hex(): {"path": str(f.path.resolve()), "torrent": self.torrents.get(ih, "")}
            for ih, f in self.seeder.files.items()
        }
        tmp = self.folder / (SEEDING_FILE + ".tmp")
        tmp.write_text(json.dumps(entries, indent=1))
        os.replace(tmp, self.folder / SEEDING_FILE)

    def _load_seeding(self) -> None:
        try:
            entries = json.loads((self.folder / SEEDING_FILE).read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            self.log.warn("cannot read {file}: {why}; sharing nothing from before", file=SEEDING_FILE, why=e)
            return
        for ih, entry in entries.items() if isinstance(entries, dict) else ():
            try:
                meta = read_torrent(entry["torrent"])
                path = Path(entry["path"])
                if meta.info_hash.hex() != ih or path.stat().st_size != meta.length:
                    raise MetainfoError("the file or its torrent changed")
                self.seeder.add(meta, path)
                self.torrents[meta.info_hash] = entry["torrent"]
                self.log.info("sharing {name} again ({path})", name=meta.name, path=str(path))
            except (KeyError, TypeError, OSError, MetainfoError) as e:
                self.log.warn("no longer sharing {hash}: {why}", hash=ih, why=e)

    # ---- commands (INodeCommands)
    def send(self, path: str) -> Deferred[str]:
        return ensureDeferred(self._send(path))

    async def _send(self, path_text: str) -> str:
        path = self._resolve(path_text)
        torrent = Path(str(path) + ".torrent")
        try:
            meta, data = await self.run_blocking(make_torrent, path, self.settings.tracker_url, self.settings.PIECE_LENGTH)
            tmp = torrent.with_name(torrent.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, torrent)
        except (OSError, MetainfoError) as e:
            raise CommandFailed(f"cannot share {path}: {getattr(e, 'strerror', None) or e}") from None
        self._share(meta, path, str(torrent))
        announced = "announced to the tracker"
        try:
            await self._own(meta)
            if not self.client or not self.client.token:
                announced = "not yet announced (the tracker will hear of it at the next heartbeat)"
        except Exception:
            announced = "not yet announced (the tracker will hear of it at the next heartbeat)"
        return (
            f"seeding {meta.name} ({meta.length} bytes, {meta.num_pieces} pieces, info hash {meta.info_hash_hex}),"
            f" torrent written to {torrent}; {announced}"
        )

    def _resolve(self, text: str) -> Path:
        raw = Path(text).expanduser()
        for path in ([raw] if raw.is_absolute() else [self.folder / raw, raw]):
            if path.is_file():
                return path
        raise CommandFailed(f"no such file: {text} (looked in {self.folder} and the current folder)")

    def download(self, torrent_path: str, progress: Callable[[dict[str, Any]], None]) -> Deferred[str]:
        return ensureDeferred(self._download(torrent_path, progress))

    async def _download(self, torrent_path: str, progress: Callable[[dict[str, Any]], None]) -> str:
        try:
            meta = read_torrent(torrent_path)
            final = target_path(self.folder, meta.name)
        except MetainfoError as e:
            raise CommandFailed(str(e)) from None
        if meta.info_hash in self.downloads:
            raise CommandFailed(f"{meta.name} is already being downloaded")
        if await self.run_blocking(file_matches, final, meta):
            self._share(meta, final, str(Path(torrent_path).resolve()))
            return f"{meta.name} is already complete in {self.folder} (verified); nothing to download"
        if meta.info_hash in self.seeder.files:
            self.seeder.remove(meta.info_hash)
        assert self.client is not None
        client = self.client
        dl = Download(
            meta, PartFile(self.folder, meta), self.protocol, lambda: client.need(meta.info_hash_hex),
            self.reactor, self.settings, self.node_id, progress,
        )
        self.downloads[meta.info_hash] = dl
        self.protocol.downloads[meta.info_hash] = dl
        self.log.info("download of {name} ({size} bytes, {hash}) started", name=meta.name, size=meta.length, hash=meta.info_hash_hex)
        try:
            result: DownloadResult = await dl.start()
        except DownloadError as e:
            raise CommandFailed(str(e)) from None
        finally:
            self.downloads.pop(meta.info_hash, None)
            self.protocol.downloads.pop(meta.info_hash, None)
        self._share(meta, result.path, str(Path(torrent_path).resolve()))
        try:
            await self._own(meta)
            if result.credited:
                credited = await client.update(meta.info_hash_hex, result.credited)
                self.log.info("UPDATE credited nodes {nodes} for {name}", nodes=credited, name=meta.name)
        except Exception as e:
            self.log.warn("tracker not told of the finished download: {why}", why=e)
        from_nodes = ", ".join(f"node {s.node_id}: {s.bytes} bytes" for s in result.shares)
        return (
            f"downloaded {meta.name} ({meta.length} bytes) in {result.seconds:.2f} s"
            f" ({result.rate / 1e6:.1f} MB/s) to {result.path}; SHA-256 verified; from {from_nodes or 'nobody (empty file)'}"
        )

    def status(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "udp_port": self.udp.port,
            "folder": str(self.folder),
            "tracker": self.settings.tracker_url,
            "registered": bool(self.client and self.client.token),
            "seeding": [
                {"name": f.meta.name, "info_hash": ih.hex(), "length": f.meta.length, "uploaded": f.uploaded}
                for ih, f in self.seeder.files.items()
            ],
            "downloading": [
                {
                    "name": dl.name,
                    "info_hash": ih.hex(),
                    "done": dl.done_bytes,
                    "total": dl.meta.length,
                    "peers": sorted(p.node_id for p in dl.transfer.peers.values()),
                }
                for ih, dl in self.downloads.items()
            ],
            "datagrams": {"received": self.protocol.received, "sent": self.protocol.sent, **self.protocol.counts},
        }

    def exit(self) -> Deferred[None]:
        self.log.info("exit requested")
        if self.stop_process is not None:
            # A moment's grace so the answer to this command reaches its sender.
            self.reactor.callLater(0.2, self.stop_process)
        return succeed(None)


def stdin_is_usable() -> bool:
    """A foreground node reads commands from a terminal or a pipe; a daemon's /dev/null is neither."""
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return False
    return os.isatty(0) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)
