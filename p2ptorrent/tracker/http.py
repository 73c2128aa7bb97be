"""The tracker's HTTP face: Klein routes over a :class:`SwarmState`.

This layer only reads bounded bodies, hands decoded requests to the state,
saves the state when it changed, writes JSON answers and logs what happened.
Every refusal is a 4xx JSON answer ``{"ok": false, "error": ...}``; an
unexpected exception is logged and answered 500 JSON, and bad input never
gets that far.  See docs/tracker-http.md.
"""

from __future__ import annotations

import io
import ipaddress
import json
import random
from collections import Counter
from typing import Any, Callable, cast

from jinja2 import Environment, PackageLoader, select_autoescape
from klein import Klein
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web import server
from werkzeug.exceptions import MethodNotAllowed, NotFound

from p2ptorrent.config import Config
from p2ptorrent.tracker.connections import GuardedSite, client_address
from p2ptorrent.tracker.state import (
    Exit,
    Need,
    Own,
    OwnChange,
    Register,
    Registration,
    Request,
    SwarmState,
    TrackerError,
    Update,
    Withdraw,
    parse_request,
)
from p2ptorrent.tracker.bep import (
    BepRefusal,
    ClientSwarms,
    encode_announce,
    encode_compact,
    encode_failure,
    encode_scrape,
    parse_announce,
    parse_scrape,
)
from p2ptorrent.tracker import view
from p2ptorrent.tracker.changes import Outcome, apply, check_address
from p2ptorrent.tracker.events import EventRing
from p2ptorrent.tracker.metrics import CONTENT_TYPE_LATEST, TrackerMetrics
from p2ptorrent.tracker.redis_store import RedisSwarm
from p2ptorrent.tracker.sqlite_store import SNAPSHOT_INTERVAL, GroupCommit, Rows, SqliteStore
from p2ptorrent.tracker.store import JsonStore

#: Refusals logged one by one per address between two liveness checks; the rest are only counted
#: and summed up at the check, so a flood cannot fill the disk with log lines.
REFUSALS_LOGGED_PER_CHECK = 20
#: Addresses whose refusals are counted apart between two checks (beyond: counted together).
REFUSAL_HOSTS_TRACKED = 1024
#: Node ids the info line of a liveness check names (the rest are counted, and logged at debug).
DROPPED_IDS_LOGGED = 20

#: The web page's templates, shipped as package data; autoescape on, so a file named ``<script>`` is text.
TEMPLATES = Environment(loader=PackageLoader("p2ptorrent.tracker", "templates"), autoescape=select_autoescape(
    default=True, default_for_string=True))


class TrackerHTTP:
    """``POST /`` runs one tracker request; ``GET /`` answers a summary (JSON) or the web page (a browser);
    ``/api/*`` the page's data as JSON (view.py) and ``/metrics`` Prometheus's scrape (metrics.py)."""

    app = Klein()
    log = Logger()

    def __init__(
        self, state: SwarmState, store: JsonStore | SqliteStore | RedisSwarm, reactor: IReactorTime, settings: Config,
    ) -> None:
        self.state = state
        self.store = store
        #: With the Redis store: changes go through the shared log (see redis_store.py).
        self.shared = store if isinstance(store, RedisSwarm) else None
        self.reactor = reactor
        self.settings = settings
        self._saved_revision = state.revision
        #: With the SQLite store: answers wait for the commit that holds their change (see sqlite_store.py).
        self.commit: GroupCommit | None = None
        self._snapshots: LoopingCall | None = None
        #: Heartbeats and dropped nodes come by the thousand: their debug lines are not even built at other levels.
        self._log_every_request = settings.LOG_LEVEL == "debug"
        # Per address since the last liveness check: refusals logged, and refusals only counted.
        self._refusals_logged: dict[str | None, int] = {}
        self._refusals_unlogged: dict[str | None, int] = {}
        # The liveness check under way: the next slice of drops, and the nodes dropped so far.
        self._dropping: IDelayedCall | None = None
        self._dropped: list[int] = []
        # Counted since the previous liveness check, logged at info once per check.
        self._requests: Counter[str] = Counter()
        self._refused = 0
        self._counted_since = reactor.seconds()
        #: BitTorrent clients (announce, scrape, BEP 15): in memory, apart from the nodes.
        self.clients = ClientSwarms(
            random.Random(), interval=settings.BT_ANNOUNCE_INTERVAL, min_interval=settings.BT_ANNOUNCE_INTERVAL // 2,
            peer_timeout=2 * settings.BT_ANNOUNCE_INTERVAL + 60, numwant=settings.NUMWANT,
            max_numwant=settings.BT_MAX_NUMWANT, max_peers=settings.BT_MAX_PEERS,
        )
        self._expiring: IDelayedCall | None = None
        self._clients_expired = 0
        #: Joins, exits, drops, new files: the web page's recent events (with Redis: the store's, filled as
        #: the log is applied, so every tracker of the swarm shows the same).
        self.events = self.shared.events if self.shared is not None else EventRing()
        #: Open HTTP connections (the site's count, set by the tap once the site exists).
        self.open_connections: Callable[[], int] = lambda: 0
        self.metrics = TrackerMetrics(self._gauges)
        if self.shared is not None:
            self.shared.on_saved = self.metrics.saved
        if isinstance(store, SqliteStore):
            self.commit = GroupCommit(state, self._timed_write, lambda f: reactor.callLater(0, f))

    def resource(self) -> IResource:
        return TrackerResource(self, self.app.resource())

    def _gauges(self) -> dict[str, float]:
        """The metrics read when Prometheus scrapes (O(files) for the owners, never O(nodes))."""
        summary = self.state.summary()
        owners, partial = self.state.ownerships()
        return {
            "p2ptracker_nodes": summary["nodes"], "p2ptracker_files": summary["files"],
            "p2ptracker_owners": owners, "p2ptracker_partial_owners": partial,
            "p2ptracker_bittorrent_clients": len(self.clients),
            "p2ptracker_bittorrent_torrents": self.clients.torrents(),
            "p2ptracker_open_connections": self.open_connections(),
        }

    def _timed_write(self, rows: Rows) -> Deferred[None]:
        """The SQLite store's commit, timed for the metrics."""
        assert isinstance(self.store, SqliteStore)
        started = self.reactor.seconds()

        def done(result: Any) -> Any:
            self.metrics.saved(not isinstance(result, Failure), self.reactor.seconds() - started)
            return result

        return self.store.write(rows).addBoth(done)

    # ---- life cycle (called by the service in tap.py)

    def load(self) -> None:
        """Read the database back; its nodes count as seen now.

        The Redis store is read once the reactor runs (this only checks that
        Redis answers, and raises OSError if not)."""
        if self.shared is not None:
            shared = self.shared
            shared.check_reachable()
            shared.on_dropped = self._log_dropped
            shared.ready.addCallback(lambda _: self._log_loaded())
            shared.ready.addErrback(lambda _: None)  # (logged by the store)
            cast(Any, self.reactor).callWhenRunning(shared.start)
            return
        if isinstance(self.store, SqliteStore):
            problems = self.store.load(self.state, self.reactor.seconds())
            self.store.start()
            self._snapshots = LoopingCall(self._snapshot)
            self._snapshots.clock = self.reactor
            self._snapshots.start(SNAPSHOT_INTERVAL, now=False)
        else:
            assert isinstance(self.store, JsonStore)
            nodes_doc, files_doc = self.store.load()
            problems = self.state.restore(nodes_doc, files_doc, self.reactor.seconds())
        for problem in problems:
            self.log.warn("database: {problem}", problem=problem)
        self._saved_revision = self.state.revision
        self._log_loaded()

    def _log_loaded(self) -> None:
        summary = self.state.summary()
        self.log.info(
            "loaded {nodes} nodes and {files} files from {folder}",
            nodes=summary["nodes"], files=summary["files"], folder=str(self.store.folder),
        )

    def durable(self) -> Deferred[None]:
        """Fires once every change so far is saved (the SQLite store: committed; fails if the commit failed)."""
        if self.commit is not None:
            return self.commit.durable()
        self.persist()  # (the Redis store: the change is in Redis before it is applied)
        return succeed(None)

    def close(self) -> Deferred[None]:
        """A clean stop: the last changes committed, the JSON snapshots written, the store closed."""
        if self._dropping is not None and self._dropping.active():
            self._dropping.cancel()  # the rest of a liveness check waits for the next start
            self._dropping = None
        if self._expiring is not None and self._expiring.active():
            self._expiring.cancel()
            self._expiring = None
        if self.shared is not None:
            return self.shared.stop()
        if self.commit is None or not isinstance(self.store, SqliteStore):
            self.persist()
            return succeed(None)
        store = self.store
        if self._snapshots is not None and self._snapshots.running:
            self._snapshots.stop()
        d = self.commit.durable()
        d.addErrback(lambda f: self.log.failure("could not commit the last changes", f))
        d.addCallback(lambda _: store.snapshot())
        d.addErrback(lambda f: self.log.failure("could not write the JSON snapshots", f))
        d.addBoth(lambda _: store.stop())
        d.addErrback(lambda f: self.log.failure("could not close the tracker database", f))
        return d

    def _snapshot(self) -> None:
        """nodes.json and files.json, from the database, when something was committed since the last time."""
        if self.commit is None or not self.commit.unsnapshotted or not isinstance(self.store, SqliteStore):
            return
        self.commit.unsnapshotted = False
        self.store.snapshot().addErrback(lambda f: self.log.failure("could not write the JSON snapshots", f))

    def persist(self) -> None:
        """Save if the state changed since the last save.  Never raises.

        A failed save is logged and retried at the next change or liveness
        check: the state in memory stays right, and answering 500 for a
        request that did take effect would mislead the node.
        """
        if self.commit is not None or not isinstance(self.store, JsonStore):
            if self.commit is not None:
                self.commit.durable().addErrback(lambda _: None)  # (logged by the committer)
            return
        revision = self.state.revision
        if revision == self._saved_revision:
            return
        started = self.reactor.seconds()
        try:
            nodes_doc, files_doc = self.state.snapshot()
            self.store.save(nodes_doc, files_doc)
        except Exception:
            self.metrics.saved(False, self.reactor.seconds() - started)
            self.log.failure("could not save the tracker database in {folder}", folder=str(self.store.folder))
            return
        self.metrics.saved(True, self.reactor.seconds() - started)
        self._saved_revision = revision

    def check_liveness(self) -> None:
        """One liveness check (the TimerService body).  Never raises: a LoopingCall stops on its first error.

        Silent nodes are dropped a TRACKER_DROP_SLICE at a time, one slice per
        turn of the reactor, so that dropping 100k nodes at once does not stop
        the tracker answering for seconds.  A check that comes while the drops
        of the previous one still run adds to them.
        """
        try:
            self._sum_up_refusals()
            if self._expiring is None:
                self._expire_clients()
            if self.shared is not None:
                # One tracker makes the checks of a shared swarm; every tracker applies them (redis_store.py).
                dropped, self.shared.dropped = self.shared.dropped, 0
                self.shared.check().addErrback(lambda f: self.log.warn(
                    "could not append a liveness check to the Redis log: {why}", why=f.getErrorMessage()))
                self._log_counts(dropped)
                return
            self.state.start_check(self.reactor.seconds())
            if self._dropping is None:
                self._drop_slice()
        except Exception:
            self.log.failure("liveness check failed")

    def _drop_slice(self) -> None:
        """Drop one slice of silent nodes, then give the reactor back until the next slice."""
        self._dropping = None
        try:
            dropped = self.state.drop_silent(self.settings.TRACKER_DROP_SLICE)
            self.events.dropped(dropped, self.reactor.seconds())
            for node_id in dropped if self._log_every_request else ():
                self.log.debug(
                    "dropped node {node_id}: no REGISTER across {checks} liveness checks",
                    node_id=node_id, checks=self.settings.TRACKER_MISSED_CHECKS,
                )
            self._dropped.extend(dropped)
            if self.state.has_silent():
                self._dropping = self.reactor.callLater(0, self._drop_slice)
                return
            self._end_check()
        except Exception:
            self.log.failure("liveness check failed")

    def _end_check(self) -> None:
        dropped, self._dropped = sorted(self._dropped), []
        self._log_dropped(dropped)
        self.persist()
        self._log_counts(len(dropped))

    def _log_dropped(self, dropped: list[int]) -> None:
        dropped = sorted(dropped)
        self.metrics.dropped.inc(len(dropped))
        if dropped:
            more = len(dropped) - DROPPED_IDS_LOGGED
            self.log.info(
                "dropped {count} nodes that stopped heartbeating ({checks} liveness checks without a REGISTER):"
                " ids {ids}{more}",
                count=len(dropped), checks=self.settings.TRACKER_MISSED_CHECKS,
                ids=" ".join(map(str, dropped[:DROPPED_IDS_LOGGED])), more=f" and {more} more" if more > 0 else "",
            )

    def _log_counts(self, dropped: int) -> None:
        """The one info line per check that says how busy the tracker is (requests themselves are at debug)."""
        now = self.reactor.seconds()
        summary = self.state.summary()
        modes = ", ".join(f"{mode} {n}" for mode, n in sorted(self._requests.items())) or "none"
        self.log.info(
            "in the last {seconds:.0f} s: {requests} requests ({modes}), {refused} refused;"
            " {nodes} nodes, {files} files, {dropped} dropped; {clients} BitTorrent clients in {torrents} torrents,"
            " {expired} expired",
            seconds=now - self._counted_since, requests=sum(self._requests.values()), modes=modes,
            refused=self._refused, nodes=summary["nodes"], files=summary["files"], dropped=dropped,
            clients=len(self.clients), torrents=self.clients.torrents(), expired=self._clients_expired,
        )
        self._clients_expired = 0
        self._requests = Counter()
        self._refused = 0
        self._counted_since = now

    # ---- routes

    @app.route("/", methods=["POST"])
    def post(self, request: IRequest) -> bytes | Deferred[bytes]:
        host: str | None = None
        parsed: Request | None = None
        started = self.reactor.seconds()
        try:
            host = _client_host(request)
            body = self._read_body(request)
            parsed = parse_request(body, self.settings)
            if self.shared is not None:
                return self._shared(request, parsed, host, started)
            answer = self._dispatch(parsed, host)
        except TrackerError as e:
            self._log_refusal(parsed, host, e)
            self._observe(parsed, None, "refused", started)
            return _json(request, e.status, {"ok": False, "error": e.message})
        except Exception:
            self.log.failure("failed on a request from {host}", host=host)
            self._observe(parsed, None, "error", started)
            return _json(request, 500, {"ok": False, "error": "internal error in the tracker"})
        # Answered once the change is saved: an acknowledged change survives a kill -9.
        done = self.durable()
        if done.called and not self.commit:
            self._observe(parsed, answer, "ok", started)
            return _json(request, 200, {"ok": True, **answer})

        def saved(_: Any) -> bytes:
            self._observe(parsed, answer, "ok", started)
            return _json(request, 200, {"ok": True, **answer})

        def unsaved(_: Any) -> bytes:
            self._observe(parsed, answer, "error", started)
            return _json(request, 503, {"ok": False, "error": "the tracker could not save this change: try again"})

        return done.addCallbacks(saved, unsaved)

    def _observe(self, req: Request | None, answer: dict[str, Any] | None, outcome: str, started: float) -> None:
        """Count and time one node request for the metrics (a REGISTER of a known node is a heartbeat)."""
        if req is None:
            mode = "invalid"
        elif isinstance(req, Register) and answer is not None and answer.get("new") is False:
            mode = "heartbeat"
        else:
            mode = type(req).__name__.upper()
        self.metrics.request(mode, outcome, self.reactor.seconds() - started)

    def _shared(self, request: IRequest, parsed: Request, host: str | None, started: float) -> Deferred[bytes]:
        """A request on the Redis store: a change is answered once this tracker applied it from the shared log;
        a NEED once this tracker applied every change logged before it."""
        assert self.shared is not None
        self._requests[type(parsed).__name__.upper()] += 1
        if isinstance(parsed, Need):
            d = self.shared.caught_up().addCallback(lambda _: self._answer(parsed, None, host))
        else:
            check_address(parsed, host)
            d = self.shared.change(parsed, host).addCallback(lambda outcome: self._answer(parsed, outcome, host))

        def refused(failure: Failure) -> bytes:
            error = failure.value
            if not isinstance(error, TrackerError):
                self.log.warn("could not confirm a {mode} through Redis: {why}",
                              mode=type(parsed).__name__.upper(), why=failure.getErrorMessage())
                error = TrackerError(503, "the tracker could not confirm this change with its store: try again")
            self._log_refusal(parsed, host, error)
            self._observe(parsed, None, "error" if error.status >= 500 else "refused", started)
            return _json(request, error.status, {"ok": False, "error": error.message})

        def answered(answer: dict[str, Any]) -> bytes:
            self._observe(parsed, answer, "ok", started)
            return _json(request, 200, {"ok": True, **answer})

        return d.addCallbacks(answered, refused)

    @app.route("/", methods=["GET"])
    def get(self, request: IRequest) -> bytes | Deferred[bytes]:
        """The summary in JSON, as always; the web page for a client that prefers HTML (a browser)."""
        if view.wants_html(_header(request, b"accept")):
            return self._current(request, self._page)
        return self._current(request, lambda r: _json(r, 200, {"ok": True, **self.state.summary()}))

    def _current(self, request: IRequest, render: Callable[[IRequest], bytes]) -> bytes | Deferred[bytes]:
        """*render* now, or on a shared swarm once this tracker applied every change logged before the request."""
        if self.shared is None:
            return _viewed(request, render)
        return self.shared.caught_up().addCallbacks(
            lambda _: _viewed(request, render),
            lambda f: _json(request, 503, {"ok": False, "error": "the tracker could not reach its store: try again"}),
        )

    def _page(self, request: IRequest) -> bytes:
        args = cast(Any, request).args
        doc = view.page(self.state, self.events, self.reactor.seconds(), view.paging(args),
                        view.refresh_seconds(args), len(self.clients))
        request.setHeader(b"vary", b"Accept")
        return _html(request, 200, TEMPLATES.get_template("tracker.html").render(doc))

    @app.route("/api/nodes", methods=["GET"])
    def api_nodes(self, request: IRequest) -> bytes | Deferred[bytes]:
        """A page of live nodes (``?page=``, ``?limit=``), last heartbeat first."""
        return self._current(request, lambda r: _json(r, 200, {
            "ok": True, **view.nodes(self.state, self.reactor.seconds(), view.paging(cast(Any, r).args))}))

    @app.route("/api/files", methods=["GET"])
    def api_files(self, request: IRequest) -> bytes | Deferred[bytes]:
        """A page of known files, newest first."""
        return self._current(request, lambda r: _json(r, 200, {
            "ok": True, **view.files(self.state, view.paging(cast(Any, r).args))}))

    @app.route("/files/<string:info_hash>", methods=["GET"])
    def file_page(self, request: IRequest, info_hash: str) -> bytes | Deferred[bytes]:
        """One file's page: its owners, partial ones with their progress (HTML; the same as JSON at /api/files/HASH)."""

        def render(r: IRequest) -> bytes:
            wanted = view.info_hash_of(info_hash)
            args = cast(Any, r).args
            doc = view.file(self.state, wanted, view.paging(args))
            if doc is None:
                return _html(r, 404, TEMPLATES.get_template("missing.html").render(info_hash=wanted))
            return _html(r, 200, TEMPLATES.get_template("file.html").render(file=doc, refresh=view.refresh_seconds(args)))

        return self._current(request, render)

    @app.route("/api/files/<string:info_hash>", methods=["GET"])
    def api_file(self, request: IRequest, info_hash: str) -> bytes | Deferred[bytes]:
        """One file and a page of its owners with their progress: 400 for a malformed hash, 404 unknown."""

        def render(r: IRequest) -> bytes:
            wanted = view.info_hash_of(info_hash)
            doc = view.file(self.state, wanted, view.paging(cast(Any, r).args))
            if doc is None:
                return _json(r, 404, {"ok": False, "error": f"no file with info hash {wanted}"})
            return _json(r, 200, {"ok": True, **doc})

        return self._current(request, render)

    @app.route("/api/events", methods=["GET"])
    def api_events(self, request: IRequest) -> bytes | Deferred[bytes]:
        """The recent events, newest first."""
        return self._current(request, lambda r: _json(r, 200, {
            "ok": True, "events": view.events(self.events, self.reactor.seconds())}))

    @app.route("/metrics", methods=["GET"])
    def prometheus(self, request: IRequest) -> bytes:
        """Prometheus's scrape (metrics.py)."""
        body = self.metrics.exposition()
        request.setResponseCode(200)
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"content-length", b"%d" % len(body))
        return body

    @app.handle_errors(MethodNotAllowed)
    def method_not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        request.setHeader(b"allow", b"GET, HEAD, POST")
        method = request.method.decode("ascii", "replace")
        return _json(request, 405, {"ok": False, "error": f"method {method} not allowed: use POST / or GET /"})

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        path = request.path.decode("ascii", "replace")
        return _json(request, 404, {"ok": False, "error": f"no such resource {path}: the tracker answers at /"})

    # ---- BitTorrent clients (bep.py): GET /announce and GET /scrape, routed by TrackerResource

    def announce(self, request: IRequest) -> bytes:
        """BEP 3 announce: always 200 and bencoded, a refusal as ``failure reason``."""
        host = _client_host(request)
        self._requests["ANNOUNCE"] += 1
        started = self.reactor.seconds()
        try:
            req = parse_announce(cast(Any, request).args, host)
            clients = self.clients
            if req.compact:  # what clients ask for: packed, no object per peer
                body = encode_compact(clients.interval, clients.min_interval,
                                      *clients.announce_packed(req, self.reactor.seconds()))
            else:
                body = encode_announce(clients.announce(req, self.reactor.seconds()), req)
        except BepRefusal as e:
            self.metrics.request("announce", "refused", self.reactor.seconds() - started)
            return self._bep_refusal(request, "ANNOUNCE", host, str(e))
        except Exception:
            self.log.failure("failed on an announce from {host}", host=host)
            self.metrics.request("announce", "error", self.reactor.seconds() - started)
            return _bencoded(request, encode_failure("internal error in the tracker"))  # BEP 3: never a 5xx
        self.metrics.request("announce", "ok", self.reactor.seconds() - started)
        if self._log_every_request:
            self.log.debug("announce from {host}:{port} for {info_hash} ({event})", host=host, port=req.port,
                           info_hash=req.info_hash.hex(), event=req.event or "interval")
        return _bencoded(request, body)

    def scrape(self, request: IRequest) -> bytes:
        """BEP 48 scrape of the info hashes named (BitTorrent clients only: nodes are not counted)."""
        self._requests["SCRAPE"] += 1
        started = self.reactor.seconds()
        try:
            hashes = parse_scrape(cast(Any, request).args)
            body = encode_scrape(self.clients.scrape(hashes))
        except BepRefusal as e:
            self.metrics.request("scrape", "refused", self.reactor.seconds() - started)
            return self._bep_refusal(request, "SCRAPE", _client_host(request), str(e))
        except Exception:
            self.log.failure("failed on a scrape")
            self.metrics.request("scrape", "error", self.reactor.seconds() - started)
            return _bencoded(request, encode_failure("internal error in the tracker"))
        self.metrics.request("scrape", "ok", self.reactor.seconds() - started)
        return _bencoded(request, body)

    def _bep_refusal(self, request: IRequest, kind: str, host: str | None, reason: str) -> bytes:
        if self._may_log_refusal(host):
            self.log.warn("refused {kind} from {host}: {reason}", kind=kind, host=host, reason=reason)
        return _bencoded(request, encode_failure(reason))

    def count_request(self, kind: str, refused: bool) -> None:
        """A request answered outside HTTP (BEP 15 datagrams, udp.py), in the next liveness check's counts line."""
        self._requests[kind] += 1
        self._refused += refused
        # "UDP ANNOUNCE" -> udp_announce (not timed: answered as the datagram is read)
        self.metrics.request(kind.lower().replace(" ", "_"), "refused" if refused else "ok")

    def _expire_clients(self) -> None:
        """Forget BitTorrent clients that stopped announcing, a TRACKER_DROP_SLICE at a time per turn."""
        self._expiring = None
        try:
            gone, more = self.clients.expire(self.reactor.seconds(), self.settings.TRACKER_DROP_SLICE)
            self._clients_expired += gone
            if more:
                self._expiring = self.reactor.callLater(0, self._expire_clients)
        except Exception:
            self.log.failure("expiring BitTorrent clients failed")

    # ---- internals

    def _read_body(self, request: IRequest) -> bytes:
        limit = self.settings.TRACKER_MAX_BODY
        declared = request.getHeader(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise TrackerError(400, "bad Content-Length header") from None
            if size > limit:
                raise TrackerError(413, f"body of {size} bytes is larger than the {limit} bytes allowed")
        # Also check what actually arrived: chunked bodies declare no length.
        body = request.content.read(limit + 1) if request.content is not None else b""
        if len(body) > limit:
            raise TrackerError(413, f"body is larger than the {limit} bytes allowed")
        return body

    def _dispatch(self, req: Request, host: str | None) -> dict[str, Any]:
        self._requests[type(req).__name__.upper()] += 1
        outcome = None if isinstance(req, Need) else apply(self.state, req, host, self.reactor.seconds(),
                                                           events=self.events)
        return self._answer(req, outcome, host)

    def _answer(self, req: Request, outcome: Outcome, host: str | None) -> dict[str, Any]:
        """The answer to an applied request (a NEED: drawn now), and its log line.

        Only joins, leaves and changes of ownership are logged at info: the rest come every
        few seconds from every node and are counted in the line of each liveness check.
        """
        state = self.state
        if isinstance(req, Register):
            reg = outcome
            assert isinstance(reg, Registration)
            if reg.new:
                self.log.info("node {node_id} joined from {host}:{port}", node_id=reg.node_id, host=host, port=reg.port)
            elif reg.returned:
                # Read back from the database at start: this says the node found the restarted tracker.
                self.log.info(
                    "node {node_id} checked in again from {host}:{port} after the tracker restarted",
                    node_id=reg.node_id, host=host, port=reg.port,
                )
            elif self._log_every_request:
                self.log.debug("heartbeat from node {node_id} at {host}:{port}", node_id=reg.node_id, host=host, port=reg.port)
            return {
                "node_id": reg.node_id,
                "token": reg.token,
                "new": reg.new,
                "host": reg.host,
                "port": reg.port,
                "interval": self.settings.NODE_TIME_INTERVAL,
            }
        if isinstance(req, Own):
            change = outcome
            if change in (OwnChange.NEW_PARTIAL, OwnChange.NOW_PARTIAL):
                self.log.info(
                    "node {node_id} owns part of {info_hash} ({name}, {length} bytes): {have} of {pieces} pieces",
                    node_id=req.node_id, info_hash=req.info_hash, name=req.name, length=req.length,
                    have=req.have, pieces=req.pieces,
                )
            elif change in (OwnChange.NEW, OwnChange.COMPLETED):
                self.log.info(
                    "node {node_id} owns {info_hash} ({name}, {length} bytes){completed}",
                    node_id=req.node_id, info_hash=req.info_hash, name=req.name, length=req.length,
                    completed=" (download completed)" if change is OwnChange.COMPLETED else "",
                )
            elif change is OwnChange.KNOWN:
                self.log.debug("node {node_id} owns {info_hash} (already known)", node_id=req.node_id, info_hash=req.info_hash)
            else:
                # Partial owners announce their progress every few seconds.
                self.log.debug(
                    "node {node_id} has {have} of {pieces} pieces of {info_hash}",
                    node_id=req.node_id, info_hash=req.info_hash, have=req.have, pieces=req.pieces,
                )
            return {}
        if isinstance(req, Withdraw):
            owned = bool(outcome)
            self.log.emit(
                LogLevel.info if owned else LogLevel.debug,
                "node {node_id} withdrew {info_hash}{already}",
                node_id=req.node_id, info_hash=req.info_hash, already="" if owned else " (did not own it)",
            )
            return {}
        if isinstance(req, Need):
            result = state.need(req.node_id, req.token, req.info_hash, req.numwant)
            # Debug: downloading nodes ask every few seconds.
            self.log.debug(
                "node {node_id} needs {info_hash}: ranking {ranking}",
                node_id=req.node_id, info_hash=req.info_hash, ranking=result.ranking,
            )
            return {
                "info_hash": result.info_hash,
                "name": result.name,
                "owners": [o.as_json() for o in result.owners],
            }
        if isinstance(req, Update):
            credited = outcome if isinstance(outcome, list) else []
            given = set(credited)
            not_credited = [u for u in req.uploaders if u not in given]
            # Info while it credits someone (once per finished download: rare in steady state).
            (self.log.info if credited else self.log.debug)(
                "node {node_id} downloaded {info_hash}: credited {credited}, not credited {not_credited}",
                node_id=req.node_id, info_hash=req.info_hash, credited=credited, not_credited=not_credited,
            )
            return {"credited": credited}
        assert isinstance(req, Exit), req
        self.log.info("node {node_id} left", node_id=req.node_id)
        return {}

    def _may_log_refusal(self, host: str | None) -> bool:
        """Count a refusal; whether it may still be logged one by one (per address, between two checks)."""
        self._refused += 1
        logged = self._refusals_logged
        key = host if host in logged or len(logged) < REFUSAL_HOSTS_TRACKED else "other addresses"
        if logged.get(key, 0) >= REFUSALS_LOGGED_PER_CHECK:
            self._refusals_unlogged[key] = self._refusals_unlogged.get(key, 0) + 1
            return False
        logged[key] = logged.get(key, 0) + 1
        return True

    def _log_refusal(self, req: Request | None, host: str | None, error: TrackerError) -> None:
        if not self._may_log_refusal(host):
            return
        # Never the body itself: it may carry a token.
        mode = type(req).__name__.upper() if req is not None else "request"
        node = f" node {req.node_id}" if req is not None else ""
        self.log.warn(
            "refused {mode} from {host}{node}: {status} {reason}",
            mode=mode, host=host, node=node, status=error.status, reason=error.message,
        )

    def _sum_up_refusals(self) -> None:
        for host, count in sorted(self._refusals_unlogged.items(), key=lambda hc: str(hc[0])):
            self.log.warn(
                "refused {count} more requests from {host} since the previous liveness check"
                " (at most {limit} are logged one by one)",
                count=count, host=host, limit=REFUSALS_LOGGED_PER_CHECK,
            )
        self._refusals_logged = {}
        self._refusals_unlogged = {}


def _client_host(request: IRequest) -> str | None:
    """The node's address: the peer's, or from a trusted proxy the one it forwards (see connections.py)."""
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    # A dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d; peers need the plain form.
    mapped = getattr(ip, "ipv4_mapped", None)
    peer = str(mapped) if mapped is not None else str(ip)
    trusted = getattr(getattr(request, "site", None), "trusted_proxies", ())
    if not trusted:
        return peer
    return client_address(peer, request.requestHeaders.getRawHeaders(b"x-forwarded-for"), trusted)


def _header(request: IRequest, name: bytes) -> str | None:
    value = request.getHeader(name)
    return None if value is None else value.decode("latin-1")


def _viewed(request: IRequest, render: Callable[[IRequest], bytes]) -> bytes:
    """A read-only view, or 400 JSON for a bad query (a page number, a malformed info hash)."""
    try:
        return render(request)
    except view.BadQuery as e:
        return _json(request, 400, {"ok": False, "error": str(e)})


def _html(request: IRequest, status: int, text: str) -> bytes:
    body = text.encode("utf-8")
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"content-length", b"%d" % len(body))
    return body


def _json(request: IRequest, status: int, doc: dict[str, Any]) -> bytes:
    body = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", b"%d" % len(body))
    return body


def _bencoded(request: IRequest, body: bytes) -> bytes:
    """A BitTorrent tracker answer: 200 always (BEP 3 refusals are a ``failure reason`` in the body)."""
    request.setResponseCode(200)
    request.setHeader(b"content-type", b"text/plain")
    request.setHeader(b"content-length", b"%d" % len(body))
    return body


class _CappedBody(io.BytesIO):
    """A request body buffer that keeps at most ``cap`` bytes and drops the rest.

    twisted.web buffers a whole body before the route runs; without a cap a
    client could make the tracker hold gigabytes.  Keeping one byte more than
    allowed lets the route see that the body was too large and answer 413.
    """

    def __init__(self, cap: int) -> None:
        super().__init__()
        self._room = cap

    def write(self, data: Any) -> int:
        n = len(data)
        if self._room > 0:
            kept = bytes(data[: self._room])
            super().write(kept)
            self._room -= len(kept)
        return n


class TrackerResource(Resource):
    """The tracker's root: ``POST /`` goes straight to :meth:`TrackerHTTP.post`, BitTorrent clients'
    ``GET /announce`` and ``GET /scrape`` to :meth:`TrackerHTTP.announce` and :meth:`TrackerHTTP.scrape`;
    every other request through the Klein app (its routes, 404 and 405 answers).

    POST / carries every node's heartbeat, 5k a second at 100k nodes.  Klein's routing bound a werkzeug
    MapAdapter for each one and left closures in reference cycles: a third of a heartbeat's CPU, and 41
    objects of cyclic garbage per request that made the collector run full collections every second or
    two, each a stall of every request in flight.  Routed here, a request leaves no cyclic garbage.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, tracker: TrackerHTTP, app: IResource) -> None:
        super().__init__()
        self.tracker = tracker
        self.app = app

    def render(self, request: IRequest) -> bytes | int:
        method, path = request.method, request.path
        if method == b"GET" and path == b"/announce":
            return self.tracker.announce(request)
        if method == b"GET" and path == b"/scrape":
            return self.tracker.scrape(request)
        if method != b"POST" or path != b"/":
            return cast(Any, self.app).render(request)
        result = self.tracker.post(request)
        if isinstance(result, bytes):
            return result
        # An answer that waits (for a commit, or for Redis) is written unless the client went away meanwhile.
        finished: list[Any] = []
        cast(server.Request, request).notifyFinish().addBoth(finished.append)
        result.addCallback(self._write, request, finished).addErrback(self._failed, request, finished)
        return server.NOT_DONE_YET

    @staticmethod
    def _write(body: bytes, request: IRequest, finished: list[Any]) -> None:
        if not finished:
            request.write(body)
            request.finish()

    def _failed(self, failure: Failure, request: IRequest, finished: list[Any]) -> None:
        self.log.failure("failed to answer a request", failure)
        if not finished:
            body = _json(request, 500, {"ok": False, "error": "internal error in the tracker"})
            request.write(body)
            request.finish()


class JsonBodyRequest(server.Request):
    """A request whose body is never parsed as a form: the tracker's bodies are JSON, and twisted.web's
    reading of a POST's Content-Type (the standard library's email parser) was a quarter of a heartbeat's CPU."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, parsePOSTFormSubmission=False, **kwargs)


class TrackerSite(GuardedSite):
    """A Site with bounded request bodies, connection limits and timeouts (connections.py),
    and no per-request access log (events are logged instead)."""

    noisy = False  # no "Starting factory" lines: the tap logs "tracker listening on ..."

    def __init__(self, resource: IResource, max_body: int, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.max_body = max_body
        self.requestFactory = JsonBodyRequest

    def getContentFile(self, length: int | None) -> io.BytesIO:
        return _CappedBody(self.max_body + 1)

    def log(self, request: Any) -> None:
        pass
