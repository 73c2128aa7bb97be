"""A running node: its UDP endpoint, its shared files, its downloads, its tracker link.

:class:`Node` is the MultiService that `twistd p2pnode` runs, and it is what
the command grammar drives (it provides ``INodeCommands``): ``send`` hashes a
file into a torrent and shares it, ``download`` fetches a torrent's file (or,
given a magnet link or an info hash, first the torrent's info dict from its
owners, checked against the info hash and saved as a .torrent),
``status`` describes the node, ``exit`` says goodbye to the tracker and stops.
The files it shares are remembered in ``<node folder>/.seeding.json`` so a
restarted node shares them again.

A node that stopped (or was killed) in the middle of downloads resumes each of
them when it starts: every unfinished download leaves a copy of its torrent,
its part file and a record of verified pieces in ``.incomplete/`` (see
storage.py).  The recorded pieces are re-verified in a thread, so a large file
does not stall the reactor, and only the pieces that are missing or failed
that check are fetched.  A ``download`` command for a file already being
fetched (or resumed) joins it.  Nothing in ``.incomplete/`` is ever shared.

The tracker's token is kept in ``<node folder>/.tracker_token`` (mode 600),
so a node restarted after a crash speaks as itself at once, instead of being
refused as an impostor until the tracker's liveness check drops its old self.

A torrent is announced at its own trackers (``announce``, ``announce-list``;
the rule is in trackers.py), the node's ``--tracker`` when it names none that
answers.  Each tracker other than ``--tracker`` gets its own link (see
tracker_link.py) when a torrent first needs it, and is told only of the
torrents that use it.
"""

from __future__ import annotations

import json
import os
import random
import stat
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from collections.abc import Iterator, Mapping
from typing import Any, Callable, TypeVar

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import (
    Deferred, DeferredList, FirstError, ensureDeferred, gatherResults, maybeDeferred,
)
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorFDSet
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from p2ptorrent.config import Config
from p2ptorrent.logfile import LogFileService
from p2ptorrent.startup import FolderDaemon, FolderLock, ListeningService, StartupError, usable_folder
from p2ptorrent.magnet import is_info_hash, is_magnet, parse_magnet
from p2ptorrent.metainfo import Metainfo, MetainfoError, make_torrent, read_torrent, read_torrent_file, torrent_from_info
from p2ptorrent.node.control import INodeCommands, IOperatorCommands
from p2ptorrent.node.download import Download, DownloadError, DownloadResult, Hooks, kept_text
from p2ptorrent.node.metadata import MetadataError, MetadataFetch, MetadataFetcher
from p2ptorrent.node.session import where
from p2ptorrent.node.protocol import NodeProtocol
from p2ptorrent.node import udpport
from p2ptorrent.node.serving import Seeder
from p2ptorrent.node.files import ContentFiles
from p2ptorrent.node.storage import (
    INCOMPLETE, Interrupted, PartFile, ResumeReport, StorageError, file_count, file_matches, final_path, unfinished,
)
from p2ptorrent.node.outbox import OUTBOX_FILE, Outbox
from p2ptorrent.node.tracker_client import HeartbeatService, Owner, TrackerClientError, TrackerRefused
from p2ptorrent.node.tracker_link import RememberingClient, TrackerLink, link_files
from p2ptorrent.node.trackers import Failover, node_url, tracker_tiers
from p2ptorrent.atomicfile import atomic_write
from p2ptorrent.node.choker import Choker
from p2ptorrent.node.operator import (
    DOWNLOADING, PAST, PAUSED, SEEDING, DeleteData, ForgetPartial, Halt, Held, Hold, NotFound, Nothing, Refused,
    Start, Unshare, UploadMeter, Withdraw, clear_held, delete_data, find, forget_partial, inside, job_state, plan,
    read_held, recorded_bytes, write_held,
)
from p2ptorrent.node.serving import WATCH_SECONDS
from p2ptorrent.node.download import Phase
from p2ptorrent.node.metrics import DownloadTotals, MetricsService
from p2ptorrent.node.ratelimit import TokenBucket
from p2ptorrent.node.writer import PieceWriter, ThreadedWriter

SEEDING_FILE = ".seeding.json"
TOKEN_FILE = ".tracker_token"
#: Seconds a stopping node waits for the tracker to acknowledge its EXIT.
EXIT_TIMEOUT = 3.0

_T = TypeVar("_T")


class CommandFailed(Exception):
    """A command could not be carried out; str() is the reason, for people."""


class UDPService(ListeningService):
    """Listen on a UDP port: the one asked for, or a free one in AVAILABLE_PORTS_RANGE."""

    log = Logger()

    def __init__(self, reactor: Any, protocol: NodeProtocol, interface: str, port: int, ports: tuple[int, int], max_packet: int,
                 batching: bool = True) -> None:
        self.reactor = reactor
        self.batching = batching
        self.protocol = protocol
        self.interface = interface
        self.port = port
        self.ports = ports
        self.max_packet = max_packet
        self.listening: Any = None

    def open(self) -> None:
        """Listen now (twistd calls this before it forks, so a busy port is reported on the terminal)."""
        if self.listening is not None:
            return
        candidates = [self.port] if self.port else random.sample(range(self.ports[0], self.ports[1] + 1), min(64, self.ports[1] - self.ports[0] + 1))
        last: CannotListenError | None = None
        for port in candidates:
            try:
                # One byte more than we accept, so an oversized datagram is seen, not cut.
                if IReactorFDSet.providedBy(self.reactor):
                    self.listening = udpport.listen(self.reactor, port, self.protocol, self.interface, self.max_packet + 1,
                                                    self.batching)
                else:
                    self.listening = self.reactor.listenUDP(port, self.protocol, self.interface, self.max_packet + 1)
                break
            except CannotListenError as e:
                last = e
        else:
            where = self.interface or "all addresses"
            why = getattr(last.socketError, "strerror", None) or last.socketError if last else "?"
            if self.port:
                raise StartupError(f"cannot listen on UDP port {self.port} ({where}): {why}")
            raise StartupError(
                f"no free UDP port in AVAILABLE_PORTS_RANGE {self.ports[0]}-{self.ports[1]} ({where}; tried {len(candidates)}): {why}"
            )
        host = self.listening.getHost()
        self.port = host.port
        self.log.info("node listening on UDP {host}:{port}", host=host.host, port=host.port)

    def batching_status(self) -> dict[str, Any]:
        status = getattr(self.listening, "batching_status", None)
        return status() if status is not None else {"gso": False, "gro": False}


@dataclass(frozen=True)
class _Wanted:
    """A torrent known only by a magnet link or an info hash: enough to choose its trackers (the link's ``tr``)
    before its metadata is fetched; the torrent then made names the same trackers, so keeps the same choice."""

    info_hash: bytes
    name: str
    announce: str
    announce_list: tuple[tuple[str, ...], ...]


@dataclass
class _Job:
    """One download the node runs: from a command, or resumed when the node started."""

    meta: Metainfo
    torrent: bytes
    #: The torrent the user named (None for a download resumed at start: its copy in .incomplete/ is used).
    torrent_path: str | None
    part: PartFile
    #: Resumed by the node as it started (nobody asked for it in this run).
    auto: bool = False
    state: str = "checking pieces on disk"
    download: Download | None = None
    listeners: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)
    waiters: list[Deferred[str]] = field(default_factory=list)
    #: Why the operator stopped it (pause, cancel, remove): what everyone following it is told.
    halted: str | None = None
    #: The steps of the download (see Node._fetch), cancelled to halt it before it fetches.
    fetching: Deferred[str] | None = None
    #: Fired once it ended and left the registry.
    on_end: list[Deferred[None]] = field(default_factory=list)

    def note(self, text: str) -> None:
        """What the download waits for: its state, and said to everyone following it (and to who joins later)."""
        self.state = text
        self.progress({"note": text})

    def progress(self, report: dict[str, Any]) -> None:
        report = {"name": self.meta.name, **report}  # the bar of a client names the file, not the .torrent
        for listener in list(self.listeners):
            try:
                listener(report)
            except Exception:
                Node.log.failure("a progress listener failed")


class RunningDownloads(Mapping[bytes, Download]):
    """The downloads fetching now, derived from the node's jobs: what the protocol routes blocks to."""

    def __init__(self, jobs: dict[bytes, _Job]) -> None:
        self._jobs = jobs

    def get(self, info_hash: bytes, default: Any = None) -> Any:
        # Once per block received: one dict look-up.
        job = self._jobs.get(info_hash)
        return default if job is None or job.download is None else job.download

    def __getitem__(self, info_hash: bytes) -> Download:
        download = self.get(info_hash)
        if download is None:
            raise KeyError(info_hash)
        return download

    def __iter__(self) -> Iterator[bytes]:
        return (ih for ih, job in list(self._jobs.items()) if job.download is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


@implementer(INodeCommands, IOperatorCommands)
class Node(FolderDaemon):
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
        writer: Callable[[PartFile, Callable[[StorageError], None]], PieceWriter] | None = None,
        log_file: bool = True,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.node_id = node_id
        self.reactor = reactor
        self.http = http
        self.advertise_port = advertise_port
        self.stop_process = stop_process
        self.run_blocking = run_blocking or (lambda f, *a: deferToThreadPool(reactor, reactor.getThreadPool(), f, *a))
        #: Verified pieces are written on a thread of their own (see writer.py).
        self.make_writer = writer or (lambda part, on_error: ThreadedWriter(part, on_error, reactor))
        self.folder = settings.node_dir(node_id)
        #: One process per node folder (see startup.py).
        self.lock = FolderLock(self.folder)
        #: Upload slots, across every file this node serves (see choker.py).
        self.choker = Choker(settings.UPLOAD_SLOTS, random.Random())
        self.seeder = Seeder.from_settings(os.urandom(32), settings, slots=self.choker)
        self.protocol = NodeProtocol(self.seeder, reactor, settings.BUFFER_SIZE, settings.SOCKET_BUFFER)
        #: The download limit (MAX_DOWNLOAD_RATE), one for all downloads: their block requests spend it.
        self.download_pace = TokenBucket(min_burst=settings.CHUNK_PIECES_SIZE)
        self.download_pace.set_rate(settings.MAX_DOWNLOAD_RATE, reactor.seconds())
        #: Every download under way, from its first check of the disk to its end: the one registry.
        self.jobs: dict[bytes, _Job] = {}
        #: Downloads the operator paused or cancelled: not running, their verified pieces kept (see operator.py).
        self.held: dict[bytes, Held] = {}
        #: Magnet links whose torrent is being fetched (asking the tracker, then the owners): name, owners.
        self.wanted: dict[bytes, tuple[str, int]] = {}
        #: Upload rates of what the node seeds, for `list`.
        self.uploads = UploadMeter()
        #: Those fetching, as the protocol routes blocks to them: a view of the jobs, never a copy.
        self.downloads = RunningDownloads(self.jobs)
        self.protocol.downloads = self.downloads
        self._stopping = False
        self.torrents: dict[bytes, str] = {}
        #: The node's own tracker (--tracker), as trackers.py writes a tracker's URL.
        self.configured = node_url(settings.tracker_url) or settings.tracker_url
        #: Every tracker the node speaks to, by URL: its own from the start, others as torrents need them.
        self.links: dict[str, TrackerLink] = {}
        #: Which of its trackers each torrent (shared or downloading) uses, and the next when it fails.
        self.choices: dict[bytes, Failover] = {}
        #: Shuffles the tiers of an announce-list (BEP 12).
        self.rng = random.Random()
        #: The link to the node's own tracker, as three names (made as the node starts).
        self.client: RememberingClient | None = None
        #: OWN and UPDATE the tracker has not acknowledged yet (see outbox.py); made as the node starts.
        self.outbox: Outbox | None = None
        #: Set once the node said goodbye to the tracker (or found it could not).
        self._left: str | None = None
        self.heartbeat: HeartbeatService | None = None
        #: The control endpoint's service, set by tap.py.
        self.control: Any = None
        if log_file:  # else twistd's own log is logs/node_<id>.log already (see tap.py)
            LogFileService(
                log_path(settings, node_id), settings.LOG_LEVEL, settings.LOG_MAX_BYTES, settings.LOG_BACKUPS,
            ).setServiceParent(self)
        self.udp = UDPService(reactor, self.protocol, interface, port, settings.AVAILABLE_PORTS_RANGE, settings.BUFFER_SIZE,
                              bool(settings.UDP_BATCHING))
        self.udp.setServiceParent(self)
        meter = TimerService(1.0, self._mark_uploads)
        meter.clock = reactor
        meter.setServiceParent(self)
        #: What ended downloads did (the metrics' counters include them); the /metrics page if asked for.
        self.download_totals = DownloadTotals()
        self.metrics: MetricsService | None = None
        if settings.METRICS_PORT:
            self.metrics = MetricsService(reactor, self, settings.METRICS_PORT, settings.METRICS_INTERFACE)
            self.metrics.setServiceParent(self)

    # ---- life
    def open(self) -> None:
        """Claim the node's folder and its UDP port, or raise StartupError saying which and why.

        twistd calls this before it forks (see tap.py); a node started any
        other way does it as it starts.
        """
        usable_folder(self.folder, "node folder")  # the control socket lives in it
        usable_folder(self.settings.logs_dir, "log folder")
        self.lock.acquire()
        self.udp.open()
        if self.metrics is not None:
            self.metrics.open()

    def startService(self) -> None:
        super().startService()  # the folder and port claimed (FolderDaemon), then the log file, the UDP port
        own = self._new_link(self.configured)
        self.client, self.outbox = own.client, own.outbox
        self._load_seeding()
        self.run_blocking(unfinished, self.folder).addCallbacks(
            self._resume_unfinished, lambda f: self.log.failure("cannot look for unfinished downloads", f),
        )
        self._start_heartbeat(own)
        self.heartbeat = own.heartbeat
        for shared in list(self.seeder.files.values()):
            self._link_of(shared.meta)  # the other trackers of what we share: each announced at its first heartbeat
        self.log.info(
            "node {node} started: folder {folder}, UDP port {port}, tracker {tracker}",
            node=self.node_id, folder=str(self.folder), port=self.udp.port, tracker=self.settings.tracker_url,
        )

    def stopService(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        for job in list(self.jobs.values()):
            job.part.abort()  # a check of the disk in a thread stops early
        for link in list(self.links.values()):
            link.client.give_up_waiting(CommandFailed("the node is stopping"))
        for dl in list(self.downloads.values()):
            dl.stop("the node is stopping")
        for fetch in list(self.protocol.fetches.values()):
            fetch.stop("the node is stopping")  # (a magnet link's metadata)
        if self._left is None:
            await self._leave()
        self.seeder.close()
        pool = getattr(self.http, "pool", None)
        if pool is not None:
            await pool.closeCachedConnections()
        self.log.info("node {node} stopped", node=self.node_id)
        await MultiService.stopService(self)
        self.lock.release()

    # ---- trackers
    def _new_link(self, url: str) -> TrackerLink:
        """The link to tracker *url*: the node's own keeps the files a node folder always had."""
        port = self.advertise_port or self.udp.port
        if url == self.configured:
            base, token_file, outbox_file = self.settings.tracker_url, self.folder / TOKEN_FILE, self.folder / OUTBOX_FILE
        else:
            base = url
            token_file, outbox_file = link_files(self.folder, url)
            try:
                token_file.parent.mkdir(exist_ok=True)
            except OSError as e:  # the token and the outbox are then kept in memory only (both say so)
                self.log.warn("cannot make {folder}: {why}", folder=str(token_file.parent), why=e.strerror or e)
        client = RememberingClient(self.http, base, self.reactor, self.settings, self.node_id, port, token_file=token_file)
        link = TrackerLink(url, client, Outbox(outbox_file), configured=url == self.configured)
        self.links[url] = link
        return link

    def _start_heartbeat(self, link: TrackerLink) -> None:
        link.heartbeat = HeartbeatService(
            link.client, self.settings.NODE_TIME_INTERVAL, self.reactor, partial(self._announce_all, link),
            on_contact=partial(self._on_contact, link), on_miss=partial(self._on_miss, link),
        )
        link.heartbeat.setServiceParent(self)

    def _on_miss(self, link: TrackerLink) -> None:
        """A heartbeat to *link* failed: the torrents that use it and name another tracker move on (trackers.py).

        What they share is announced there at once (and again at each miss while
        none answers); a download asks its next NEED there.
        """
        for ih, meta in self._using(link):
            choice = self._choice(meta)
            if len(choice.order()) < 2:
                continue
            following = choice.failed(link.url)
            self.log.info("{name}: the tracker at {url} did not answer; now {next}", name=meta.name, url=link.name,
                          next=self._link(choice.current).name if following is not None else "from the first again")
            shared = self.seeder.files.get(ih)
            if shared is not None and shared.complete:
                self._own(meta)
            elif (dl := self.downloads.get(ih)) is not None:
                dl.announce_again()

    def _using(self, link: TrackerLink) -> list[tuple[bytes, Metainfo]]:
        """The torrents (shared complete, or downloading) that use *link* now."""
        return [(meta.info_hash, meta) for meta in self._our_torrents() if self._uses(meta.info_hash, link)]

    def _link(self, url: str) -> TrackerLink:
        """The link to tracker *url*, made (and registering) when a torrent first needs it."""
        link = self.links.get(url)
        if link is None:
            link = self._new_link(url)
            self.log.info("a torrent names the tracker at {url}: registering there too", url=url)
            if self.running and not self._stopping:
                self._start_heartbeat(link)
        return link

    def _choice(self, meta: Metainfo | _Wanted) -> Failover:
        """Which of its trackers *meta* uses (see trackers.py): decided once per torrent, kept while the node runs."""
        choice = self.choices.get(meta.info_hash)
        if choice is None:
            tiers = tracker_tiers(meta.announce, meta.announce_list, self.rng)
            choice = self.choices[meta.info_hash] = Failover(tiers, self.configured)
        return choice

    def _link_of(self, meta: Metainfo) -> TrackerLink:
        """The link to the tracker *meta* uses now."""
        return self._link(self._choice(meta).current)

    def _uses(self, info_hash: bytes, link: TrackerLink) -> bool:
        choice = self.choices.get(info_hash)
        return (choice.current if choice is not None else self.configured) == link.url

    async def _at_tracker(
        self, meta: Metainfo | _Wanted, call: Callable[[RememberingClient], Deferred[_T]], note: Callable[[str], None] | None = None,
    ) -> _T:
        """*call* at the tracker *meta* uses; if it fails, at the next one (trackers.py), each once.

        Fails with the last tracker's error when every one failed; the next
        call starts again from the first.
        """
        choice = self._choice(meta)
        for _ in range(len(choice.order()) + 1):
            url = choice.current
            link = self._link(url)
            try:
                result = await call(link.client)
            except TrackerClientError as e:
                following = choice.failed(url)
                if following is None:
                    raise
                text = f"tracker {link.name} did not answer ({e}); trying {self._link(following).name}"
                self.log.warn("{name}: {text}", name=meta.name, text=text)
                if note is not None:
                    note(text)
                continue
            choice.succeeded(url)
            return result
        raise CommandFailed(f"{meta.name}: no tracker answered")  # (unreachable: each is tried once a round)

    def _release_unused(self) -> None:
        """Leave the trackers (other than ours) that no torrent of ours uses any more, and owe nothing."""
        if self._stopping:
            return  # the node leaves every one of them
        used = {self._choice(meta).current for meta in self._our_torrents()}
        for url, link in list(self.links.items()):
            if link.configured or url in used or len(link.outbox):
                continue
            del self.links[url]
            ensureDeferred(self._close_link(link)).addErrback(lambda f: self.log.failure("leaving a tracker", f))

    def _our_torrents(self) -> list[Metainfo]:
        """What the node shares (complete) and downloads: the torrents it speaks to trackers about."""
        shared = [f.meta for f in self.seeder.files.values() if f.complete]
        return shared + [job.meta for job in self.jobs.values()]

    async def _close_link(self, link: TrackerLink) -> None:
        await link.stop_heartbeat()
        if link.heartbeat is not None and link.heartbeat.parent is not None:
            await maybeDeferred(link.heartbeat.disownServiceParent)
        sent, why = await self._exit_link(link)
        if sent:
            self.log.info("no torrent of ours uses the tracker at {url} any more: {what}", url=link.name,
                          what="left it (EXIT)" if why is None else f"EXIT not acknowledged ({why})")

    async def _exit_link(self, link: TrackerLink) -> tuple[bool, str | None]:
        """EXIT at one tracker: (sent, why it was not acknowledged).  Never fails."""
        if link.client.token is None:
            return False, None
        try:
            d = link.client.exit()
            d.addTimeout(EXIT_TIMEOUT, self.reactor)
            await d
        except Exception as e:
            self.log.warn("EXIT not acknowledged by the tracker at {url}: {why}", url=link.name, why=e)
            return True, str(e)
        self.log.info("node {node} left the tracker at {url} (EXIT)", node=self.node_id, url=link.name)
        return True, None

    # ---- sharing
    def _announce_all(self, link: TrackerLink) -> None:
        """A tracker holds none of our ownerships (first join, or it forgot us): tell it again of those it has."""
        for ih, shared in list(self.seeder.files.items()):
            if shared.complete and self._uses(ih, link):
                self._own(shared.meta)
        for ih, dl in list(self.downloads.items()):
            if self._uses(ih, link):
                dl.announce_again()  # the pieces of what we are still downloading

    def _own(self, meta: Metainfo) -> Deferred[bool]:
        """OWN a complete file; fires True once a tracker acknowledged it, False if it is left pending.

        It goes into the outbox first and leaves it only when acknowledged, so
        a tracker that is down hears of it at the next heartbeat that gets
        through, even after a restart of this node.  A torrent's tracker that
        fails hands over to the next (trackers.py).  Never fails.
        """
        ih = meta.info_hash_hex
        self._link_of(meta).outbox.add_own(ih, meta.name, meta.length)
        d = ensureDeferred(self._at_tracker(meta, lambda client: client.own(ih, meta.name, meta.length)))

        def done(_: object) -> bool:
            for link in list(self.links.values()):
                link.outbox.own_done(ih)
            self.log.info("OWN {name} ({hash}) announced to {url}", name=meta.name, hash=ih, url=self._link_of(meta).name)
            return True

        def pending(f: Failure) -> bool:
            self.log.warn("OWN {name} not announced yet ({why}); it will be when the tracker answers",
                          name=meta.name, why=f.getErrorMessage())
            return False

        return d.addCallbacks(done, pending)

    def _update(self, meta: Metainfo, uploaders: list[int]) -> Deferred[bool]:
        """UPDATE the uploaders' credit for a finished download, through the outbox like OWN.  Never fails.

        Sent to the tracker the torrent uses now, the one that named those uploaders.
        """
        link, ih = self._link_of(meta), meta.info_hash_hex
        link.outbox.add_update(ih, uploaders)
        d = link.client.update(ih, uploaders)

        def settled() -> None:
            for each in list(self.links.values()):
                each.outbox.update_done(ih)

        def done(credited: list[int]) -> bool:
            settled()
            self.log.info("UPDATE credited nodes {nodes} for {name}", nodes=credited, name=meta.name)
            return True

        def pending(f: Failure) -> bool:
            if f.check(TrackerRefused):  # a credit the tracker will never take (an owner left): drop it
                settled()
                self.log.warn("UPDATE for {name} refused: {why}", name=meta.name, why=f.getErrorMessage())
                return True
            self.log.warn("UPDATE for {name} not sent yet ({why}); it will be when the tracker answers",
                          name=meta.name, why=f.getErrorMessage())
            return False

        return d.addCallbacks(done, pending)

    def _on_contact(self, link: TrackerLink) -> None:
        """A heartbeat got through: send what the tracker missed while it was away, and our progress."""
        for ih, dl in list(self.downloads.items()):
            if self._uses(ih, link):
                dl.announce_again()
        if link.flushing or not len(link.outbox):
            return
        ensureDeferred(self._flush(link)).addErrback(lambda f: self.log.failure("sending what the tracker missed", f))

    async def _flush(self, link: TrackerLink) -> None:
        outbox = link.outbox
        link.flushing = True
        try:
            self.log.info("telling the tracker at {url} what it missed: {owns} OWN, {updates} UPDATE, {withdraws}"
                          " WITHDRAW", url=link.name, owns=len(outbox.owns), updates=len(outbox.updates),
                          withdraws=len(outbox.withdraws))
            for own in list(outbox.owns.values()):
                shared = self.seeder.files.get(bytes.fromhex(own.info_hash_hex))
                if shared is None or not shared.complete:
                    outbox.forget(own.info_hash_hex)  # no longer shared: nothing to announce
                    continue
                if not await self._own(shared.meta):
                    return  # the tracker is away again: the next heartbeat retries
            for ih, reason in sorted(outbox.withdraws.items()):
                if bytes.fromhex(ih) in self.seeder.files or bytes.fromhex(ih) in self.jobs:
                    outbox.withdraw_done(ih)  # ours again since (shared, or downloading): nothing to withdraw
                    continue
                try:
                    await link.client.withdraw(ih, reason)
                except TrackerRefused as e:  # one it will never take: dropped, not retried for ever
                    self.log.warn("WITHDRAW {hash} refused: {why}", hash=ih, why=e)
                except TrackerClientError:
                    return  # the tracker is away again: the next heartbeat retries
                outbox.withdraw_done(ih)
            for update in list(outbox.updates.values()):
                shared = self.seeder.files.get(bytes.fromhex(update.info_hash_hex))
                meta = shared.meta if shared is not None else None
                if meta is None:
                    outbox.update_done(update.info_hash_hex)
                    continue
                if not await self._update(meta, list(update.uploaders)):
                    return
        finally:
            link.flushing = False
            self._release_unused()  # a tracker kept only for what it was owed

    def _not_announced(self, meta: Metainfo | None = None) -> str:
        name = self._link_of(meta).name if meta is not None else self.settings.tracker_url
        return f"not announced yet: the tracker at {name} did not answer; it will be announced when it answers"

    def _share(self, meta: Metainfo, path: Path, torrent: str) -> None:
        if self._unfinished_area(path):
            raise CommandFailed(f"refusing to share {path}: it is an unfinished download")
        self.seeder.add(meta, path)
        self.torrents[meta.info_hash] = torrent
        self._save_seeding()

    def _save_seeding(self) -> None:
        entries = {
            ih.hex(): {"path": str(f.path.resolve()), "torrent": self.torrents.get(ih, "")}
            for ih, f in self.seeder.files.items()
            if f.complete  # a file still downloading is shared again by resuming it
        }
        atomic_write(self.folder / SEEDING_FILE, json.dumps(entries, indent=1).encode())

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
                if meta.info_hash.hex() != ih or not _sized_as(path, meta):
                    raise MetainfoError("the file or its torrent changed")
                if self._unfinished_area(path):
                    raise MetainfoError("it is an unfinished download")
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
        if self._unfinished_area(path):
            raise CommandFailed(f"refusing to share {path}: it is an unfinished download, in {self.folder / INCOMPLETE}")
        if path.is_dir() and _holds(path, self.folder):
            # Its torrent would list the node's own state (.incomplete/, torrents, the seeding list), changing as it runs.
            raise CommandFailed(f"refusing to share {path}: it holds this node's own folder {self.folder}")
        # Always into the node's folder, whatever folder the file is in: one place to find torrents.
        torrent = self.folder / (path.name + ".torrent")
        try:
            meta, data = await self.run_blocking(
                partial(make_torrent, announce_list=self.settings.announce_list),
                path, self.settings.announce_url, self.settings.PIECE_LENGTH,
            )
            atomic_write(torrent, data, fsync=False)
        except (OSError, MetainfoError) as e:
            raise CommandFailed(f"cannot share {path}: {getattr(e, 'strerror', None) or e}") from None
        try:
            self._share(meta, path, str(torrent))
        except OSError as e:  # changed while it was hashed (a folder's file grew, or one was removed)
            raise CommandFailed(f"cannot share {path}: {e}") from None
        announced = "announced to the tracker" if await self._own(meta) else self._not_announced(meta)
        files = f"folder of {file_count(meta)} files, " if meta.is_folder else ""
        return (
            f"seeding {meta.name} ({files}{meta.length} bytes, {meta.num_pieces} pieces, info hash {meta.info_hash_hex}),"
            f" torrent written to {torrent}; {announced}"
        )

    def _resolve(self, text: str) -> Path:
        raw = Path(text).expanduser()
        for path in ([raw] if raw.is_absolute() else [self.folder / raw, raw]):
            if path.is_file() or path.is_dir():  # a folder is shared as a multi-file torrent
                return path
        raise CommandFailed(f"no such file or folder: {text} (looked in {self.folder} and the current folder)")

    def _unfinished_area(self, path: Path) -> bool:
        """Is *path* inside this node's .incomplete/ (where nothing is complete, so nothing is shared)?"""
        try:
            return path.resolve().is_relative_to((self.folder / INCOMPLETE).resolve())
        except (OSError, RuntimeError):
            return True

    def download(self, torrent_path: str, progress: Callable[[dict[str, Any]], None]) -> Deferred[str]:
        return ensureDeferred(self._download(torrent_path, progress))

    async def _download(self, torrent_path: str, progress: Callable[[dict[str, Any]], None]) -> str:
        if is_magnet(torrent_path) or (is_info_hash(torrent_path) and not Path(torrent_path).exists()):
            return await self._from_magnet(torrent_path, progress)
        try:
            meta, torrent = read_torrent_file(torrent_path)
            final = final_path(self.folder, meta)
        except MetainfoError as e:
            raise CommandFailed(str(e)) from None
        where = str(Path(torrent_path).resolve())
        self._unhold(meta.info_hash)  # a download of a paused or cancelled one goes on from its verified pieces
        job = self.jobs.get(meta.info_hash)
        if job is None:
            seeding = self._seeding(meta)
            if seeding is not None:
                return await self._already_seeding(meta, seeding)
            if await self.run_blocking(file_matches, final, meta):
                self._share(meta, final, where)
                told = "announced to the tracker" if await self._own(meta) else self._not_announced(meta)
                return f"already complete: {final} is {meta.name}, verified; seeding it, {told}"
            job = self.jobs.get(meta.info_hash)  # one may have started while we looked
        if job is None:
            job = self._start_job(meta, torrent, where)
        elif job.torrent_path is None:
            job.torrent_path = where  # a resumed download: share it with the torrent named here
        return await self._join(job, progress)

    async def _from_magnet(self, text: str, progress: Callable[[dict[str, Any]], None]) -> str:
        """A download from a magnet link or a bare info hash: the owners from the tracker, the info dict from
        them (its SHA-1 checked against the info hash), saved as a .torrent in the node's folder; then a
        download of that torrent like any other."""
        try:
            link = parse_magnet(text)
        except MetainfoError as e:
            raise CommandFailed(str(e)) from None
        ih = link.info_hash
        job = self.jobs.get(ih)
        if job is not None:
            return await self._join(job, progress)
        shared = self.seeder.files.get(ih)
        if shared is not None and shared.complete:
            seeding = self._seeding(shared.meta)
            if seeding is not None:
                return await self._already_seeding(shared.meta, seeding)
        # The link's trackers, as the torrent made from it will name them; none: the node's own (--tracker).
        announce = link.trackers[0] if link.trackers else self.settings.announce_url
        announce_list = (link.trackers,) if len(link.trackers) > 1 else ()
        wanted = _Wanted(ih, link.name or ih.hex(), announce, announce_list)
        try:
            info = await self._fetch_metadata(wanted, progress)
        except MetadataError as e:
            raise CommandFailed(str(e)) from None
        try:
            meta, torrent = torrent_from_info(info, announce, announce_list)
        except MetainfoError as e:
            raise CommandFailed(f"the torrent's metadata fetched for {ih.hex()} cannot be used: {e}") from None
        return await self._download(str(self._save_torrent(meta, torrent)), progress)

    async def _fetch_metadata(self, wanted: _Wanted, progress: Callable[[dict[str, Any]], None]) -> bytes:
        """The info dict of *wanted*, its SHA-1 checked: fetched from the owners its trackers name (failing over
        as a download does), or awaited from the fetch already under way for it."""
        ih = wanted.info_hash
        running = self.protocol.fetches.get(ih)
        if isinstance(running, MetadataFetcher):
            progress({"note": "waiting for the torrent's metadata, already being fetched"})
            return await running.wait()
        progress({"note": f"asking the tracker for the owners of {wanted.name}"})
        self.wanted[ih] = (wanted.name, 0)  # listed by `list` until its download starts (or it fails)
        try:
            try:
                owners = await self._at_tracker(wanted, lambda client: client.need(ih.hex()),
                                                lambda text: progress({"note": text}))
            except TrackerClientError as e:
                raise CommandFailed(f"cannot ask a tracker for the owners of {ih.hex()}: {e}") from None
            running = self.protocol.fetches.get(ih)  # one may have started while we asked
            if isinstance(running, MetadataFetcher):
                return await running.wait()
            self.wanted[ih] = (wanted.name, len(owners))
            fetch = MetadataFetch(ih, [((o.host, o.port), o.node_id) for o in owners],
                                  request_timeout=self.settings.REQUEST_TIMEOUT)
            return await MetadataFetcher(fetch, self.protocol, self.reactor, lambda text: progress({"note": text})).start()
        finally:
            self.wanted.pop(ih, None)

    def _save_torrent(self, meta: Metainfo, torrent: bytes) -> Path:
        """Write a torrent made from a magnet link into the node's folder, never over another torrent."""
        for path in (self.folder / f"{meta.name}.torrent", self.folder / f"{meta.name}.{meta.info_hash_hex}.torrent"):
            try:
                if not path.exists() and not path.is_symlink():
                    atomic_write(path, torrent, fsync=False)
                    return path
                if read_torrent(path).info_hash == meta.info_hash:
                    return path  # this very torrent (perhaps with other trackers): use it
            except MetainfoError:
                continue  # something else under that name: left alone
            except OSError as e:
                raise CommandFailed(f"cannot write {path}: {e.strerror or e}") from None
        raise CommandFailed(f"cannot save the torrent of {meta.name}: {meta.name}.torrent and {path.name}"
                            f" in {self.folder} hold other torrents")

    def _seeding(self, meta: Metainfo) -> Path | None:
        """Where we seed this very file (same info hash) complete, if we do and it is still there."""
        shared = self.seeder.files.get(meta.info_hash)
        if shared is None or not shared.complete:
            return None
        if _sized_as(shared.path, meta):
            return shared.path
        self.log.warn("{name}: {path} is gone or changed; no longer seeding it", name=meta.name, path=str(shared.path))
        self.seeder.remove(meta.info_hash)
        self._save_seeding()
        return None

    async def _already_seeding(self, meta: Metainfo, path: Path) -> str:
        told = "announced to the tracker" if await self._own(meta) else self._not_announced(meta)
        return f"already complete: seeding {meta.name} ({path}), {told}"

    async def _join(self, job: _Job, progress: Callable[[dict[str, Any]], None]) -> str:
        done: Deferred[str] = Deferred()
        job.waiters.append(done)
        job.listeners.append(progress)
        if job.state.startswith("waiting"):
            progress({"note": job.state})  # joining a download that waits: say why at once
        try:
            return await done
        finally:
            job.listeners.remove(progress)

    def _start_job(self, meta: Metainfo, torrent: bytes, torrent_path: str | None) -> _Job:
        job = _Job(meta, torrent, torrent_path, PartFile(self.folder, meta, torrent), auto=torrent_path is None)
        self.jobs[meta.info_hash] = job

        def ended(outcome: str | Failure) -> None:
            self.jobs.pop(meta.info_hash, None)
            self.protocol.ended(meta.info_hash)  # what peers still send it is late, not hostile
            if isinstance(outcome, Failure):
                self._stop_serving_partial(meta)
            self._release_unused()
            if isinstance(outcome, Failure) and not outcome.check(CommandFailed):
                self.log.failure("download of {name} failed unexpectedly", outcome, name=meta.name)
                outcome = Failure(CommandFailed(f"internal error: {outcome.getErrorMessage()}"))
            if isinstance(outcome, Failure) and not job.waiters:
                self.log.warn("download of {name} ended: {why}", name=meta.name, why=outcome.getErrorMessage())
            for waiter in job.waiters:
                if isinstance(outcome, Failure):
                    waiter.errback(outcome)
                else:
                    waiter.callback(outcome)
            for each in job.on_end:
                each.callback(None)

        def halted(outcome: str | Failure) -> str | Failure:
            """The operator stopped it: whatever the steps ended with, that is the reason given."""
            if job.halted is not None and isinstance(outcome, Failure):
                return Failure(CommandFailed(job.halted))
            return outcome

        job.fetching = ensureDeferred(self._fetch(job))
        job.fetching.addBoth(halted).addBoth(ended)
        return job

    def _resume_unfinished(self, found: tuple[list[Any], list[str]]) -> None:
        """Start again every download the node left in .incomplete/ (crash, kill or stop)."""
        downloads, skipped = found
        for why in skipped:
            self.log.warn("not resuming: {why}", why=why)
        if self._stopping or not self.running:
            return
        for u in downloads:
            if u.meta.info_hash in self.jobs:
                continue
            held = read_held(self.folder, u.meta.info_hash)
            if held is not None:  # paused or cancelled by the operator: listed, not resumed
                self.held[u.meta.info_hash] = Held(u.meta, u.torrent, None, held, recorded_bytes(self.folder, u.meta))
                continue
            try:
                final_path(self.folder, u.meta)
            except MetainfoError as e:
                self.log.warn("not resuming {name}: {why}", name=u.meta.name, why=e)
                continue
            self._start_job(u.meta, u.torrent, None)

    async def _fetch(self, job: _Job) -> str:
        """One download, step by step: already here? -> the disk checked -> served while it runs -> the
        tracker answers -> fetched -> shared and announced."""
        done = await self._already_here(job)
        if done is not None:
            return done
        resumed = await self._check_disk(job)
        self._serve_partial(job)
        await self._wait_for_tracker(job, resumed)
        result = await self._run_download(job)
        return await self._finish(job, result, resumed)

    async def _already_here(self, job: _Job) -> str | None:
        """The answer if the file needs no download: left complete by a node that died as it finished."""
        meta = job.meta
        if job.auto and await self.run_blocking(file_matches, job.part.final, meta):
            # Finished and renamed, but the node died before it cleared .incomplete/.
            job.part.discard()
            self._share(meta, job.part.final, self._keep_torrent(meta, job.torrent, job.part.final))
            self.log.info("{name} was already complete in {folder}; sharing it", name=meta.name, folder=str(self.folder))
            await self._own(meta)  # logs, never fails
            return f"{meta.name} is already complete in {self.folder} (verified); nothing to download"
        seeding = self._seeding(meta)
        if seeding is not None:
            # Left in .incomplete/ by a download that finished as the node died: the file is here, complete.
            job.part.discard()
            return await self._already_seeding(meta, seeding)
        return None

    async def _check_disk(self, job: _Job) -> ResumeReport:
        """Open the part file; what an earlier run verified is re-verified in a thread, off the reactor."""
        meta = job.meta
        try:
            resumed: ResumeReport = await self.run_blocking(job.part.prepare)
        except Interrupted:
            raise CommandFailed("the node is stopping") from None
        except StorageError as e:
            job.part.close()  # the verified pieces stay, for the next try
            self.log.error("{name}: download failed: {reason}", name=meta.name, reason=str(e))
            raise CommandFailed(f"{e}; {kept_text(job.part.resumed.bytes, meta.length)}") from None
        if resumed.found:
            rejected = f" ({resumed.rejected} recorded pieces failed their check and will be fetched again)" if resumed.rejected else ""
            self.log.info(
                "resuming {name}: {pieces} of {total} pieces already verified ({bytes} of {length} bytes){rejected}",
                name=meta.name, pieces=resumed.pieces, total=meta.num_pieces, bytes=resumed.bytes,
                length=meta.length, rejected=rejected,
            )
        return resumed

    def _serve_partial(self, job: _Job) -> None:
        """Swarming: what we verified is served from the part file from now on, while we wait and download."""
        try:
            self.seeder.add_partial(job.meta, job.part.path, job.part.have_map)
        except OSError as e:
            self.log.warn("{name}: cannot serve the pieces we have: {why}", name=job.meta.name, why=e)

    async def _wait_for_tracker(self, job: _Job, resumed: ResumeReport) -> None:
        if (job.auto or resumed.pieces) and resumed.pieces < job.meta.num_pieces:
            # The first heartbeat is not through yet (the node just started, or the tracker is
            # down): asking for owners now would fail the download and lose what is on disk.
            try:
                await self._tracker_answering(job)
            except CommandFailed:
                job.part.close()
                raise
        if self._stopping:
            job.part.close()
            raise CommandFailed("the node is stopping")

    async def _tracker_answering(self, job: _Job) -> None:
        """Wait until one of the torrent's trackers answers: each tried once (trackers.py), then at the pace of
        their heartbeats; raises CommandFailed if the node stops."""
        choice = self._choice(job.meta)
        interval = f"{self.settings.NODE_TIME_INTERVAL:g} s"
        while True:
            link = self._link(choice.current)
            if link.client.registered_once:
                return
            if len(choice.order()) == 1:  # one tracker: its heartbeat retries
                job.note(f"waiting for the tracker at {link.name}: retrying every {interval}"
                         f" ({link.problem or 'no answer yet'})")
                await link.client.when_registered()
                return
            try:
                # NEED, not REGISTER: it registers first as needed, and leaves the heartbeat to learn (and
                # announce what we share) if the tracker was new to us.  Its owners are asked again at once.
                await self._need(job)
                return
            except TrackerClientError as e:
                links = [self._link(url) for url in choice.order()]
                job.note(f"waiting for a tracker: none of {', '.join(each.name for each in links)} answered"
                         f" ({e}); retrying every {interval}")
            try:  # the first heartbeat that gets through, at any of them
                await DeferredList([each.client.when_registered() for each in links], fireOnOneCallback=True,
                                   fireOnOneErrback=True, consumeErrors=True)
            except FirstError as e:
                e.subFailure.raiseException()
            answering = [url for url in choice.order() if url in self.links and self.links[url].client.registered_once]
            if answering:
                choice.succeeded(answering[0])

    async def _run_download(self, job: _Job) -> DownloadResult:
        meta = job.meta
        job.state = "downloading"

        def announce(have: int) -> None:
            """Our progress, for the tracker (other downloaders may fetch what we have); never fails the download."""
            client = self._link_of(meta).client  # the one that answered NEED last
            d = maybeDeferred(client.own, meta.info_hash_hex, meta.name, meta.length, have=have, pieces=meta.num_pieces)
            d.addErrback(lambda f: self.log.warn("{name}: could not report progress to the tracker: {why}",
                                                 name=meta.name, why=f.getErrorMessage()))

        shared = self.seeder.files.get(meta.info_hash)
        # Registered in the job, the one registry: the protocol routes blocks to it through self.downloads.
        job.download = Download(
            meta, job.part, self.protocol, partial(self._need, job), self.reactor, self.settings,
            self.node_id, Hooks(progress=job.progress, announce=announce, writer=self.make_writer,
                                uploaded=(lambda: shared.uploaded) if shared is not None else None,
                                sent_to=(lambda: shared.sent_to) if shared is not None else None,
                                pace=self.download_pace),
        )
        self.log.info("download of {name} ({size} bytes, {hash}) started", name=meta.name, size=meta.length, hash=meta.info_hash_hex)
        try:
            return await job.download.start()
        except DownloadError as e:
            raise CommandFailed(str(e)) from None
        finally:
            self.download_totals.ended(job.download)

    def _need(self, job: _Job) -> Deferred[list[Owner]]:
        """NEED at the torrent's tracker, the next one if it fails (each once); the job says when it moves on."""
        meta = job.meta
        return ensureDeferred(self._at_tracker(meta, lambda client: client.need(meta.info_hash_hex),
                                               lambda text: job.progress({"note": text})))

    async def _finish(self, job: _Job, result: DownloadResult, resumed: ResumeReport) -> str:
        """Share the file, tell the tracker (OWN, UPDATE), and say what happened."""
        meta = job.meta
        torrent_path = job.torrent_path or self._keep_torrent(meta, job.torrent, result.path)
        self._share(meta, result.path, torrent_path)
        owned = await self._own(meta)
        credited = await self._update(meta, result.credited) if result.credited else True
        told = "announced to the tracker" if owned and credited else self._not_announced(meta)
        from_nodes = ", ".join(f"node {s.node_id}: {s.bytes} bytes" for s in result.shares)
        fetched = sum(s.bytes for s in result.shares)
        resumed_text = (
            f"; resumed: {resumed.pieces} of {meta.num_pieces} pieces ({resumed.bytes} bytes) were already verified"
            f" on disk, {fetched} bytes fetched now"
            if resumed.found else ""
        )
        files = f"folder of {file_count(meta)} files, " if meta.is_folder else ""
        renamed = (
            f" (not {result.path.with_name(meta.name)}: that name holds another {'folder' if meta.is_folder else 'file'})"
            if result.path.name != meta.name else ""
        )
        return (
            f"downloaded {meta.name} ({files}{meta.length} bytes) in {result.seconds:.2f} s"
            f" ({result.rate / 1e6:.1f} MB/s) to {result.path}{renamed}; {verified_text(meta)};"
            f" from {from_nodes or 'nobody (empty file or all on disk)'}{resumed_text}; {told}"
        )

    def _stop_serving_partial(self, meta: Metainfo) -> None:
        """A download ended unfinished: stop serving its pieces, and tell the tracker (unless stopping)."""
        shared = self.seeder.files.get(meta.info_hash)
        if shared is None or shared.complete:
            return
        self.seeder.remove(meta.info_hash)
        if self._stopping or not self.links:
            return  # EXIT tells the tracker we are gone
        d = self._link_of(meta).client.withdraw(meta.info_hash_hex, "failed")
        d.addErrback(lambda f: self.log.warn("tracker not told we no longer have {name}: {why}",
                                             name=meta.name, why=f.getErrorMessage()))

    def _keep_torrent(self, meta: Metainfo, torrent: bytes, path: Path) -> str:
        """A download resumed at start finished: keep its torrent beside the file, to share it again after a restart."""
        for candidate in (path.with_name(path.name + ".torrent"), path.with_name(f"{path.name}.{meta.info_hash_hex}.torrent")):
            try:
                if candidate.exists() and not candidate.is_symlink() and candidate.read_bytes() == torrent:
                    return str(candidate)
                if candidate.exists() or candidate.is_symlink():
                    continue
                atomic_write(candidate, torrent, fsync=False)  # a copy: .incomplete/ keeps the torrent until then
                return str(candidate)
            except OSError as e:
                self.log.warn("cannot write {path}: {why}", path=str(candidate), why=e.strerror or e)
                break
        return ""

    def status(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "udp_port": self.udp.port,
            "folder": str(self.folder),
            "tracker": self.settings.tracker_url,
            "registered": bool(self.client and self.client.token) and not (self.heartbeat and self.heartbeat.refused),
            # Why the last heartbeat failed (null when the tracker answers).
            "tracker_problem": self.heartbeat.problem if self.heartbeat is not None else None,
            # OWN and UPDATE the tracker has not acknowledged yet: sent when it answers again.
            "pending_announcements": len(self.outbox) if self.outbox is not None else 0,
            # The other trackers the torrents name (see trackers.py), each as the first four keys above.
            "trackers": [link.status() for link in self.links.values() if not link.configured],
            "seeding": [
                {"name": f.meta.name, "info_hash": ih.hex(), "length": f.meta.length, "files": file_count(f.meta),
                 "uploaded": f.uploaded, "tracker": self._tracker_name(ih)}
                for ih, f in self.seeder.files.items()
                if f.complete
            ],
            "upload_slots": sorted(where(a) for a in self.choker.unchoked),
            "downloading": [self._job_status(job) for job in self.jobs.values()],
            "datagrams": {"received": self.protocol.received, "sent": self.protocol.sent, **self.protocol.counts},
            # Kernel batching (GSO, GRO) in use and how much it batched; datagrams the kernel dropped because
            # our receive buffer was full.
            "batching": self.udp.batching_status(),
            # What the operator paused or cancelled (see `list`), and the node's upload rate, bytes a second.
            "held": [{"name": h.meta.name, "info_hash": ih.hex(), "state": h.state, "done": h.done,
                      "total": h.meta.length} for ih, h in self.held.items()],
            "upload_rate": round(sum(self.uploads.rate(ih) for ih in self.seeder.files)),
            # Rate limits now, bytes a second (0: none): MAX_UPLOAD_RATE, MAX_DOWNLOAD_RATE, or `limit`.
            "limits": self.limits(),
        }

    def _tracker_name(self, info_hash: bytes) -> str:
        choice = self.choices.get(info_hash)
        link = self.links.get(choice.current if choice is not None else self.configured)
        return link.name if link is not None else self.settings.tracker_url

    def _job_status(self, job: _Job) -> dict[str, Any]:
        dl = job.download
        resumed = job.part.resumed
        return {
            "name": job.meta.name,
            # 1 for a single file; a folder torrent's files (its name is the folder's).
            "files": file_count(job.meta),
            "info_hash": job.meta.info_hash_hex,
            "state": job.state,
            # The tracker it asks for owners now.
            "tracker": self._tracker_name(job.meta.info_hash),
            "done": dl.done_bytes if dl is not None else resumed.bytes,
            "total": job.meta.length,
            "peers": sorted(p.node_id for p in dl.transfer.peers.values()) if dl is not None else [],
            **(dl.swarm_status() if dl is not None else {"pieces": resumed.pieces, "pieces_total": job.meta.num_pieces}),
            # Verified on disk by an earlier run (re-checked when this one started): not fetched again.
            "resumed_bytes": resumed.bytes,
            "resumed_pieces": resumed.pieces,
        }

    # ---- the operator's views and verbs (IOperatorCommands)
    def _mark_uploads(self) -> None:
        try:
            self.uploads.mark(self.reactor.seconds(), {ih: f.uploaded for ih, f in self.seeder.files.items()})
        except Exception:
            self.log.failure("marking upload rates")  # a TimerService stops for ever on its first exception

    def _known(self) -> list[tuple[bytes, str]]:
        """Every torrent the verbs may name: seeded, downloading, held."""
        return ([(ih, f.meta.name) for ih, f in self.seeder.files.items() if f.complete]
                + [(ih, job.meta.name) for ih, job in self.jobs.items()]
                + [(ih, h.meta.name) for ih, h in self.held.items()])

    def _find(self, query: str) -> bytes:
        try:
            return find(query, self._known())
        except NotFound as e:
            raise CommandFailed(str(e)) from None

    def transfers(self) -> dict[str, Any]:
        """`list`: one row per transfer, as data (the CLI draws the table)."""
        rows = [self._job_row(job) for job in self.jobs.values()]
        rows += [self._held_row(ih, h) for ih, h in self.held.items() if ih not in self.jobs]
        rows += [self._seed_row(ih) for ih, f in self.seeder.files.items() if f.complete and ih not in self.jobs]
        rows += [self._wanted_row(ih, name, owners) for ih, (name, owners) in self.wanted.items() if ih not in self.jobs]
        return {"transfers": rows}

    def _wanted_row(self, ih: bytes, name: str, owners: int) -> dict[str, Any]:
        return {
            "info_hash": ih.hex(), "name": name, "files": None, "state": "fetching metadata",
            "detail": f"fetching the torrent of a magnet link from {owners} owners" if owners else
            "asking the tracker for the owners of a magnet link",
            "done": 0, "total": None, "download_rate": None, "upload_rate": None, "uploaded": 0, "peers": owners,
        }

    def info(self, query: str) -> dict[str, Any]:
        """`info NAME|HASH`: one transfer's row, its details and its peers."""
        ih = self._find(query)
        job = self.jobs.get(ih)
        if job is not None:
            row = self._job_row(job)
            dl = job.download
            details = dl.swarm_status() if dl is not None else {"peer_details": []}
            details.update(tracker=self._tracker_name(ih), path=str(job.part.path), torrent=job.torrent_path,
                           resumed_bytes=job.part.resumed.bytes)
            if dl is None:
                details.update(pieces=job.part.resumed.pieces, pieces_total=job.meta.num_pieces)
            return {"transfer": {**details, **row}}
        held = self.held.get(ih)
        if held is not None:
            return {"transfer": {**self._held_row(ih, held), "peer_details": [], "torrent": held.torrent_path,
                                 "path": str(self.folder / INCOMPLETE / f"{ih.hex()}.part")}}
        shared = self.seeder.files[ih]
        peers = [{"address": where(addr), "complete": False} for addr in self._watching(ih)]
        return {"transfer": {**self._seed_row(ih), "peer_details": peers, "tracker": self._tracker_name(ih),
                             "path": str(shared.path), "torrent": self.torrents.get(ih) or None,
                             "pieces": shared.meta.num_pieces, "pieces_total": shared.meta.num_pieces}}

    def _watching(self, ih: bytes) -> list[Any]:
        """The peers that asked for this file lately (within WATCH_SECONDS)."""
        now = self.reactor.seconds()
        return [addr for addr, (seen, _) in self.seeder.watchers.get(ih, {}).items() if now - seen <= WATCH_SECONDS]

    def _job_row(self, job: _Job) -> dict[str, Any]:
        dl, meta = job.download, job.meta
        swarm = dl.swarm_status() if dl is not None else {}
        peers = list(dl.transfer.peers.values()) if dl is not None else []
        down = swarm.get("download_rate", 0)
        return {
            "info_hash": meta.info_hash_hex, "name": meta.name, "files": file_count(meta),
            "state": job_state(job.state, len(peers), sum(1 for p in peers if p.choked), down), "detail": job.state,
            "done": dl.done_bytes if dl is not None else job.part.resumed.bytes, "total": meta.length,
            "download_rate": down, "upload_rate": swarm.get("upload_rate", 0), "uploaded": swarm.get("uploaded", 0),
            "peers": len(peers),
        }

    def _held_row(self, ih: bytes, held: Held) -> dict[str, Any]:
        how = "resume" if held.state == PAUSED else "download again"
        return {
            "info_hash": ih.hex(), "name": held.meta.name, "files": file_count(held.meta), "state": held.state,
            "detail": f"{held.state} by the operator; its verified pieces are kept in {INCOMPLETE}/ ({how} to go on)",
            "done": held.done, "total": held.meta.length, "download_rate": None, "upload_rate": None, "uploaded": 0,
            "peers": 0,
        }

    def _seed_row(self, ih: bytes) -> dict[str, Any]:
        shared = self.seeder.files[ih]
        return {
            "info_hash": ih.hex(), "name": shared.meta.name, "files": file_count(shared.meta), "state": "seeding",
            "detail": f"seeding {shared.path}", "done": shared.meta.length, "total": shared.meta.length,
            "download_rate": 0, "upload_rate": round(self.uploads.rate(ih)), "uploaded": shared.uploaded,
            "peers": len(self._watching(ih)),
        }

    async def _withdraw(self, info_hash: bytes, meta: Metainfo, reason: str = "") -> str:
        """WITHDRAW at the torrent's tracker, through the outbox (kept until acknowledged, sent again when the
        tracker answers after a miss), in place of any OWN not sent yet: what the tracker said, for people.
        *reason* names the tracker's event ("node 2 paused big.iso")."""
        ih = meta.info_hash_hex
        for link in list(self.links.values()):
            link.outbox.forget(ih)
        if not self.links:
            return "not withdrawn yet: the node has no tracker link"
        link = self._link_of(meta)
        link.outbox.add_withdraw(ih, reason)
        try:
            d = link.client.withdraw(ih, reason)
            d.addTimeout(EXIT_TIMEOUT, self.reactor)
            await d
        except Exception as e:
            self.log.warn("{name}: WITHDRAW not acknowledged: {why}; sent again when the tracker answers",
                          name=meta.name, why=e)
            return f"not withdrawn yet: {e or type(e).__name__}; it will be when the tracker answers"
        link.outbox.withdraw_done(ih)
        return "withdrawn at the tracker"

    async def _halt(self, job: _Job, why: str) -> None:
        """Stop a running download for the operator: nothing more is asked, sent or served; its verified
        pieces stay in .incomplete/.  Whoever waits on it is told *why*."""
        if job.download is not None and job.download.phase is not Phase.RUNNING:
            raise CommandFailed(f"{job.meta.name} has every piece and is being finished: too late to stop it")
        ended: Deferred[None] = Deferred()
        job.on_end.append(ended)
        job.halted = why
        shared = self.seeder.files.get(job.meta.info_hash)
        if shared is not None and not shared.complete:
            self.seeder.remove(job.meta.info_hash)  # its partial pieces are no longer served
        if job.download is not None:
            job.download.stop(why)
        else:  # still checking the disk or waiting for a tracker
            job.part.abort()
            if job.fetching is not None:
                job.fetching.cancel()
        await ended

    def _hold(self, info_hash: bytes, meta: Metainfo, torrent: bytes, torrent_path: str | None, state: str) -> None:
        try:
            write_held(self.folder, info_hash, state)
        except OSError as e:
            self.log.warn("{name}: cannot write that it is {state}: {why}; a restart resumes it",
                          name=meta.name, state=state, why=e.strerror or e)
        self.held[info_hash] = Held(meta, torrent, torrent_path, state, recorded_bytes(self.folder, meta))

    def _unhold(self, info_hash: bytes) -> Held | None:
        held = self.held.pop(info_hash, None)
        if held is not None:
            clear_held(self.folder, info_hash)
        return held

    def _unshare(self, ih: bytes) -> None:
        self.seeder.remove(ih)
        self.torrents.pop(ih, None)
        self._save_seeding()  # not shared again after a restart
        self._release_unused()

    def pause(self, query: str) -> Deferred[str]:
        return ensureDeferred(self._operate("pause", query))

    def resume(self, query: str) -> Deferred[str]:
        return ensureDeferred(self._operate("resume", query))

    def cancel(self, query: str, delete: bool = False) -> Deferred[str]:
        return ensureDeferred(self._operate("cancel", query, delete))

    def stop_seeding(self, query: str) -> Deferred[str]:
        return ensureDeferred(self._operate("stop-seeding", query))

    def remove(self, query: str, delete: bool = False) -> Deferred[str]:
        return ensureDeferred(self._operate("remove", query, delete))

    async def _operate(self, verb: str, query: str, delete: bool = False) -> str:
        """Carry out what operator.plan decides for *verb* on the torrent *query* names; what happened, for people."""
        ih = self._find(query)
        job, held, shared = self.jobs.get(ih), self.held.get(ih), self.seeder.files.get(ih)
        where = DOWNLOADING if job is not None else held.state if held is not None else SEEDING
        source = job or held
        meta = source.meta if source is not None else self.seeder.files[ih].meta
        path = shared.path if shared is not None and where == SEEDING else None
        try:
            actions = plan(verb, where, meta.name, delete)
        except Refused as e:
            raise CommandFailed(str(e)) from None
        if path is not None and any(isinstance(a, DeleteData) for a in actions) and not inside(self.folder, path):
            raise CommandFailed(f"refusing to delete {path}: it is outside this node's folder {self.folder}"
                                " (remove it without --delete-data, then delete it yourself)")
        said: list[str] = []
        for action in actions:
            if isinstance(action, Nothing):
                return action.text
            if isinstance(action, Halt) and job is not None:
                await self._halt(job, action.why)
            elif isinstance(action, Withdraw):
                said.append(await self._withdraw(ih, meta, PAST[verb]))
            elif isinstance(action, Hold) and source is not None:
                self._hold(ih, meta, source.torrent, source.torrent_path, action.state)
                kept = self.held[ih].done
                said.append(f"{kept} of {meta.length} bytes verified are kept in {INCOMPLETE}/; nothing is sent or"
                            " served" if action.state == PAUSED else
                            f"{kept} of {meta.length} bytes verified are kept in {INCOMPLETE}/ (download it again"
                            " to resume)")
            elif isinstance(action, Start) and (again := self._unhold(ih)) is not None:
                self._start_job(again.meta, again.torrent, again.torrent_path)
                said.append(f"it goes on from the {again.done} of {meta.length} bytes verified before (checked"
                            " again first); `list` shows it")
            elif isinstance(action, ForgetPartial):
                self.held.pop(ih, None)
                await self.run_blocking(forget_partial, self.folder, ih, action.keep_pieces)
                said.append(f"forgotten; its verified pieces stay in {INCOMPLETE}/ for a later download of it"
                            if action.keep_pieces else "its partial data is deleted")
            elif isinstance(action, Unshare):
                self._unshare(ih)
                said.append("no longer seeded")
            elif isinstance(action, DeleteData) and path is not None:
                try:
                    await self.run_blocking(delete_data, path)
                except OSError as e:
                    raise CommandFailed(f"{meta.name}: {'; '.join(said)}; but cannot delete {path}:"
                                        f" {e.strerror or e}") from None
                said.append(f"deleted {path}")
        if path is not None and not delete and verb in ("stop-seeding", "remove"):
            said.append(f"the file stays at {path}")
        self._release_unused()
        return f"{PAST[verb]} {meta.name}: {'; '.join(said)}"
    def limits(self) -> dict[str, int]:
        """The upload and download limits now, bytes a second (0: none)."""
        return {"upload": int(self.seeder.upload.rate), "download": int(self.download_pace.rate)}

    def limit(self, up: int | None, down: int | None) -> str:
        """Change the node's rate limits live (None leaves one as it is); what they are now, for people."""
        now = self.reactor.seconds()
        if up is not None:
            self.seeder.upload.set_rate(up, now)
        if down is not None:
            self.download_pace.set_rate(down, now)
        limits = self.limits()
        if up is not None or down is not None:
            self.log.info("rate limits now: upload {up}, download {down}", up=rate_text(limits["upload"]),
                          down=rate_text(limits["download"]))
        return f"upload limit {rate_text(limits['upload'])}, download limit {rate_text(limits['download'])}"

    def exit(self) -> Deferred[str]:
        """Leave the tracker (EXIT), then stop; the answer says whether the tracker acknowledged it."""
        self.log.info("exit requested")
        return ensureDeferred(self._exit())

    async def _exit(self) -> str:
        said = await self._leave()
        if self.stop_process is not None:
            # A moment's grace so the answer to this command reaches its sender.
            self.reactor.callLater(0.2, self.stop_process)
        return f"{said}; the node is stopping"

    async def _leave(self) -> str:
        """No more heartbeats, then EXIT at every tracker: what happened, for people (a tracker may be down)."""
        self._left = "leaving"
        links = list(self.links.values())
        for link in links:
            await link.stop_heartbeat()
        # At once, not one after the other: a tracker that is down costs EXIT_TIMEOUT once.
        answers = await gatherResults([ensureDeferred(self._exit_link(link)) for link in links])
        said = ["not registered with the tracker: no EXIT to send"]
        for link, (sent, why) in zip(links, answers, strict=True):
            if link.configured and sent:
                said[0] = ("left the tracker (EXIT acknowledged)" if why is None else
                           f"the tracker did not acknowledge EXIT ({why}); it forgets this node once its"
                           " heartbeats stop being seen")
            elif sent:
                said.append(f"left the tracker at {link.name} (EXIT acknowledged)" if why is None else
                            f"the tracker at {link.name} did not acknowledge EXIT ({why})")
        self._left = "; ".join(said)
        return self._left


def _holds(folder: Path, inner: Path) -> bool:
    """Is *inner* *folder* itself or somewhere below it (links resolved)?"""
    try:
        return inner.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):
        return True


def _sized_as(path: Path, meta: Metainfo) -> bool:
    """Is *path* still *meta*'s file of its length, or its folder with every file at its length?"""
    if meta.is_folder:
        content = ContentFiles.of(path, meta, writable=False)
        try:
            return content.present()
        finally:
            content.close()
    try:
        return path.stat().st_size == meta.length
    except OSError:
        return False


def verified_text(meta: Metainfo) -> str:
    """What a finished download checked, said truthfully: a foreign torrent may carry no whole-file hash."""
    whole = "folder" if meta.is_folder else "file"  # a folder's hash is of its files' bytes in torrent order
    if meta.sha256 is not None:
        return f"all {meta.num_pieces} pieces (SHA-1) and the whole {whole} (SHA-256) verified"
    return f"all {meta.num_pieces} pieces verified (SHA-1; the torrent has no whole-{whole} SHA-256)"


def rate_text(rate: int) -> str:
    """A limit for people: ``20 MiB/s (20971520 bytes/s)``, or ``none``."""
    if not rate:
        return "none"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if rate >= size:
            return f"{rate / size:g} {unit}/s ({rate} bytes/s)"
    return f"{rate} bytes/s"


def log_path(settings: Config, node_id: int) -> Path:
    return Path(settings.logs_dir) / f"node_{node_id}.log"


def stdin_is_usable() -> bool:
    """A foreground node reads commands from a terminal or a pipe; a daemon's /dev/null is neither."""
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return False
    return os.isatty(0) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)
