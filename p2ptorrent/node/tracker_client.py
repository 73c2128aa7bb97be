"""A node's side of the tracker protocol (docs/tracker-http.md), over an injected treq.

:class:`TrackerClient` speaks the five messages and keeps the node's token;
:class:`HeartbeatService` sends REGISTER every NODE_TIME_INTERVAL and tells
the node when the tracker has forgotten it, so the node announces its files
again.  Real code passes the ``treq`` module as ``http``; tests pass
``treq.testing.StubTreq(TrackerHTTP(...).resource())`` and a ``Clock``.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from hyperlink import EncodedURL
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, maybeDeferred, succeed
from twisted.internet.error import ConnectError, ConnectionRefusedError, DNSLookupError
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived

from p2ptorrent.config import Config
from p2ptorrent.tracker.state import TOKEN_BYTES, is_info_hash_hex, is_json_int

_JSON_HEADERS = {b"Content-Type": [b"application/json"], b"Accept": [b"application/json"]}


class TrackerClientError(Exception):
    """Talking to the tracker did not work out."""


class TrackerUnavailable(TrackerClientError):
    """The tracker could not be reached, did not answer in time, or failed (5xx)."""


class TrackerRefused(TrackerClientError):
    """The tracker answered with a 4xx refusal."""

    def __init__(self, status: int, message: str, mode: str = "request") -> None:
        super().__init__(f"tracker refused {mode}: {status} {message}")
        self.status = status
        self.message = message
        self.mode = mode


class _AddressHostURL(EncodedURL):
    """A URL whose host is an IP address literal.  hyperlink 21's ``to_uri()`` (which treq calls on every
    URL) runs the host through IDNA, which refuses an IPv6 address ("Codepoint U+003A ... '::1' not
    allowed"); an address needs no IDNA, so such a URL is already its own URI."""

    def to_uri(self) -> EncodedURL:
        return self


def treq_url(text: str) -> str | EncodedURL:
    """*text* in a form treq can send to, an IPv6 address for host included."""
    url = EncodedURL.from_text(text)
    try:
        ipaddress.ip_address(url.host)
    except ValueError:
        return text
    return _AddressHostURL.from_text(text)


def tracker_post_url(base_url: str) -> str | EncodedURL:
    """Where a node POSTs its messages: ``base_url/``."""
    return treq_url(base_url.rstrip("/") + "/")


class TrackerProtocolError(TrackerClientError):
    """The tracker answered something that is not the protocol (wrong URL? different software?)."""


@dataclass(frozen=True)
class Owner:
    """A node that owns a file, as NEED lists it."""

    node_id: int
    host: str
    port: int
    frequency: int
    #: Still downloading: it serves only the ``have`` of ``pieces`` pieces it verified so far.
    partial: bool = False
    have: int | None = None
    pieces: int | None = None


class TrackerClient:
    """One node's conversation with the tracker.

    Every call times out after ``timeout`` seconds on ``clock`` (default: half
    of NODE_TIME_INTERVAL, so a hung heartbeat fails before the next one is
    due).  OWN, NEED and UPDATE answered 404 (the tracker forgot us) are
    retried once after registering again; the forgetting is then reported by
    the next :meth:`register`, so ownerships still get announced again.
    """

    log = Logger()

    def __init__(
        self,
        http: Any,
        base_url: str,
        clock: IReactorTime,
        settings: Config,
        node_id: int,
        port: int,
        *,
        token: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self.settings = settings
        self.node_id = node_id
        self.port = port
        self.token = token
        self.timeout = timeout if timeout is not None else settings.NODE_TIME_INTERVAL / 2
        #: Our address as the tracker sees it (after the first REGISTER).
        self.public_host: str | None = None
        # A registration was new and no register() caller has been told yet.
        self._unreported_new = False
        # Callers waiting for the REGISTER in flight (None: none in flight).
        self._waiting: list[Deferred[bool]] | None = None
        self._registering: Deferred[Any] | None = None
        # The token we propose when joining without one, kept until a join is answered: a join
        # whose answer was lost is sent again with it, and the tracker then knows us by it.
        self._proposal = secrets.token_hex(TOKEN_BYTES)

    # ---- the five messages

    def register(self) -> Deferred[bool]:
        """REGISTER (join or heartbeat).

        True when the tracker holds none of our ownerships: it is new to us,
        or forgot us and we joined again since the last register() (also when
        that re-join was made internally to retry a call answered 404).  The
        caller must then send OWN again for everything it seeds.
        """

        def report(_: bool) -> bool:
            new, self._unreported_new = self._unreported_new, False
            return new

        return self._register().addCallback(report)

    def own(
        self, info_hash_hex: str, name: str, length: int, have: int | None = None, pieces: int | None = None
    ) -> Deferred[None]:
        """Tell the tracker we seed this file: whole, or the ``have`` of ``pieces`` pieces verified so far.

        Announcing progress is cheap for the tracker (it is not saved), so a
        downloading node may send it every few seconds; ``have == pieces``
        makes us a complete owner.
        """
        fields: dict[str, Any] = {"info_hash": _info_hash(info_hash_hex), "name": name, "length": length}
        if (have is None) != (pieces is None):
            raise ValueError("own() takes both have and pieces, or neither")
        if have is not None and pieces is not None:
            if not (is_json_int(have) and is_json_int(pieces)) or not 0 <= have <= pieces or pieces < 1:
                raise ValueError(f"own() needs 0 <= have <= pieces and pieces >= 1, got have={have} pieces={pieces}")
            fields["have"], fields["pieces"] = have, pieces
        return self._registered_call("OWN", fields).addCallback(lambda _: None)

    def withdraw(self, info_hash_hex: str, reason: str = "") -> Deferred[None]:
        """Tell the tracker we no longer have any of this file (a download failed or was stopped); *reason*
        (``paused``, ``cancelled``, ``stopped seeding``, ``removed``, ``failed``) names its event there."""
        info_hash = _info_hash(info_hash_hex)
        if self.token is None:
            # Never registered by this client: the tracker holds no ownership of ours.
            return succeed(None)
        fields: dict[str, Any] = {"info_hash": info_hash, "withdraw": True}
        if reason:
            fields["reason"] = reason
        d = self._registered_call("OWN", fields)
        return d.addCallback(lambda _: None)

    def need(self, info_hash_hex: str) -> Deferred[list[Owner]]:
        """The owners of a file, best first in the tracker's weighted random order."""
        d = self._registered_call("NEED", {"info_hash": _info_hash(info_hash_hex)})
        return d.addCallback(self._owners)

    def update(self, info_hash_hex: str, uploader_ids: Iterable[int]) -> Deferred[list[int]]:
        """Credit the nodes we downloaded the file from; answers those the tracker credited."""
        info_hash = _info_hash(info_hash_hex)
        uploaders = [u for u in dict.fromkeys(uploader_ids) if u != self.node_id]
        if not uploaders:
            return succeed([])
        d = self._registered_call("UPDATE", {"info_hash": info_hash, "uploaders": uploaders})
        return d.addCallback(lambda answer: _int_list(answer.get("credited"), "credited"))

    def exit(self) -> Deferred[None]:
        """Leave the swarm.  Being unknown to the tracker already counts as success."""
        if self.token is None:
            return succeed(None)
        d = self._call("EXIT", {})

        def forgotten(failure: Failure) -> None:
            refused = failure.value
            if not isinstance(refused, TrackerRefused) or refused.status != 404:
                return failure  # type: ignore[return-value]  # an errback passes the failure on
            return None

        def done(_: object) -> None:
            self.token = None

        return d.addErrback(forgotten).addCallback(done)

    # ---- internals

    def _register(self) -> Deferred[bool]:
        """Send REGISTER, or wait for the one already in flight.

        Sharing matters: a heartbeat and a call that must register first often
        overlap when a node starts; two REGISTERs without a token would make
        the tracker refuse the second (403: that node now exists).
        """
        waiter: Deferred[bool] = Deferred(self._cancel_waiter)
        if self._waiting is not None:
            self._waiting.append(waiter)
            return waiter
        self._waiting = [waiter]
        joining = self.token is None
        fields: dict[str, Any] = {"port": self.port, "token": self._proposal if joining else self.token}
        d = self._call("REGISTER", fields)
        self._registering = d

        def adopt(answer: dict[str, Any]) -> bool:
            token, new, host = answer.get("token"), answer.get("new"), answer.get("host")
            if not isinstance(token, str) or not isinstance(new, bool):
                raise TrackerProtocolError(f"tracker at {self.base_url} answered REGISTER without token/new")
            if joining:
                # "new": false here means an earlier join of ours got through unanswered: the
                # tracker holds none of our files all the same.
                new = True
                self._proposal = secrets.token_hex(TOKEN_BYTES)
            self.token = token
            if isinstance(host, str):
                self.public_host = host
            if new:
                self._unreported_new = True
                self.log.info("registered with the tracker at {url} as node {node_id}", url=self.base_url, node_id=self.node_id)
            return new

        def fan_out(result: bool | Failure) -> None:
            waiting, self._waiting, self._registering = self._waiting or [], None, None
            for w in waiting:
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(result)

        d.addCallback(adopt).addBoth(fan_out)
        return waiter

    def _cancel_waiter(self, waiter: Deferred[bool]) -> None:
        # The REGISTER itself is cancelled only when nobody waits for it any more.
        if self._waiting is not None and waiter in self._waiting:
            self._waiting.remove(waiter)
            if not self._waiting and self._registering is not None:
                self._registering.cancel()

    def _registered_call(self, mode: str, fields: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """A call that needs registration: register first if needed, and once more on 404."""
        d: Deferred[Any] = succeed(None) if self.token is not None else self._register()
        d.addCallback(lambda _: self._call(mode, fields))

        def forgotten(failure: Failure) -> Deferred[dict[str, Any]]:
            refused = failure.value
            if not isinstance(refused, TrackerRefused) or refused.status != 404:
                return failure  # type: ignore[return-value]  # an errback passes the failure on
            # Keep the token: a forgotten node registers afresh whatever it sends,
            # and a heartbeat may already have joined again with a new token.
            self.log.info("tracker forgot node {node_id}; registering again", node_id=self.node_id)
            return self._register().addCallback(lambda _: self._call(mode, fields))

        return d.addErrback(forgotten)

    def _call(self, mode: str, fields: dict[str, Any]) -> Deferred[dict[str, Any]]:
        body = {"mode": self.settings.mode(mode), "node_id": self.node_id, **fields}
        if mode != "REGISTER" and self.token is not None:
            body["token"] = self.token
        data = json.dumps(body).encode("utf-8")
        url = tracker_post_url(self.base_url)
        # maybeDeferred: a treq-like object may raise before returning a Deferred.
        d: Deferred[Any] = maybeDeferred(self.http.post, url, data=data, headers=_JSON_HEADERS)
        d.addCallback(lambda response: response.content().addCallback(lambda content: (response.code, content)))
        d.addTimeout(self.timeout, self.clock, onTimeoutCancel=_timed_out)
        d.addCallbacks(lambda result: self._answer(mode, *result), lambda f: self._unavailable(mode, f))
        return d

    def _answer(self, mode: str, status: int, content: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(content.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            doc = None
        error = doc.get("error") if isinstance(doc, dict) else None
        if status >= 500:
            why = error if isinstance(error, str) else "server error"
            raise TrackerUnavailable(f"tracker at {self.base_url} failed on {mode}: {status} {why}")
        if status >= 400:
            raise TrackerRefused(status, error if isinstance(error, str) else _excerpt(content), mode)
        if not isinstance(doc, dict) or doc.get("ok") is not True:
            raise TrackerProtocolError(
                f"tracker at {self.base_url} answered {mode} with {status} and no JSON result: {_excerpt(content)}"
            )
        return doc

    def _unavailable(self, mode: str, failure: Failure) -> Failure:
        if failure.check(TrackerClientError):
            return failure
        reason = _describe(failure, self.timeout)
        raise TrackerUnavailable(f"tracker at {self.base_url} did not answer {mode}: {reason}")

    def _owners(self, answer: dict[str, Any]) -> list[Owner]:
        owners = answer.get("owners")
        if not isinstance(owners, list):
            raise TrackerProtocolError(f"tracker at {self.base_url} answered NEED without an owners list")
        result: list[Owner] = []
        for entry in owners:
            try:
                owner = _owner(entry)
            except (KeyError, TypeError, ValueError):
                raise TrackerProtocolError(f"tracker at {self.base_url} answered NEED with a bad owner {entry!r}") from None
            if owner.node_id != self.node_id:
                result.append(owner)
        return result


def _timed_out(result: Any, timeout: float | None) -> Failure:
    """A call cancelled by its timeout failed for want of an answer, whatever the cancelled request says: treq's
    agent ends it with ResponseNeverReceived (a lost connection, to the reader) rather than CancelledError."""
    return Failure(TimeoutError())


def _owner(entry: Any) -> Owner:
    """One owner of a NEED answer; raises KeyError, TypeError or ValueError if it is malformed."""
    node_id, host, port, frequency = int(entry["node_id"]), str(entry["host"]), int(entry["port"]), int(entry["frequency"])
    # Absent from trackers older than partial owners: every owner was complete.
    partial = entry.get("partial", False)
    if not isinstance(partial, bool):
        raise TypeError(f"'partial' must be a boolean, got {partial!r}")
    if not partial:
        return Owner(node_id, host, port, frequency)
    have, pieces = entry["have"], entry["pieces"]
    if not is_json_int(have) or not is_json_int(pieces):
        raise TypeError("'have' and 'pieces' must be integers")
    if not 0 <= have < pieces:
        # A partial owner lacks at least one piece; anything else would mislead the download.
        raise ValueError(f"a partial owner needs 0 <= have < pieces, got {have} of {pieces}")
    return Owner(node_id, host, port, frequency, True, have, pieces)


def _info_hash(value: str) -> str:
    info_hash = value.lower()
    if not is_info_hash_hex(info_hash):
        raise ValueError(f"an info hash is 40 hexadecimal digits, got {value!r}")
    return info_hash


def _int_list(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not all(is_json_int(v) for v in value):
        raise TrackerProtocolError(f"tracker answer has no list of node ids in {name!r}")
    return list(value)


def _excerpt(content: bytes) -> str:
    text = content[:200].decode("utf-8", "replace").strip()
    return text or "(empty body)"


def _describe(failure: Failure, timeout: float) -> str:
    """Why an HTTP call failed, in words a person running a node understands."""
    if failure.check(TimeoutError, ConnectTimeoutError):
        return f"no answer within {timeout:g} s"
    if failure.check(CancelledError):
        return "the call was cancelled"
    if failure.check(ConnectionRefusedError):
        return "connection refused"
    if failure.check(DNSLookupError):
        return "cannot resolve the tracker's host name"
    if failure.check(ConnectError):
        return f"cannot connect ({failure.getErrorMessage()})"
    if failure.check(ResponseNeverReceived, ResponseFailed, RequestTransmissionFailed):
        return "the connection was lost before an answer arrived"
    return f"{getattr(failure.type, '__name__', 'error')}: {failure.getErrorMessage()}"


class HeartbeatService(Service):
    """REGISTER every ``interval`` seconds; call ``on_new`` when the tracker forgot us.

    The first heartbeat runs as the service starts and registers the node, so
    ``on_new`` also makes the first announcement of the node's files.  If
    ``on_new`` fails it runs again at the next heartbeat until it succeeds.
    The loop body never raises (a LoopingCall stops on its first error); EXIT
    is not sent here: the node calls ``client.exit()`` when it stops.
    """

    log = Logger()

    def __init__(
        self,
        client: TrackerClient,
        interval: float,
        clock: IReactorTime,
        on_new: Callable[[], Any],
        on_contact: Callable[[], Any] | None = None,
        on_miss: Callable[[], Any] | None = None,
    ) -> None:
        self.client = client
        self.interval = interval
        self.clock = clock
        self.on_new = on_new
        #: Called after every heartbeat that got through (the node sends what the tracker missed).
        self.on_contact = on_contact
        #: Called after every heartbeat that failed (the node moves its torrents to their next tracker).
        self.on_miss = on_miss
        #: Why the last heartbeat failed (None: it got through): shown by `status`.
        self.problem: str | None = None
        #: The tracker refuses this node (4xx): it is not registered, and says so loudly.
        self.refused = False
        self._loop: LoopingCall | None = None
        self._stopped: Deferred[None] = succeed(None)
        self._inflight: Deferred[bool] | None = None
        self._announce_due = False
        self._announcing = False

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.beat)
        self._loop.clock = self.clock
        done = self._loop.start(self.interval, now=True)
        done.addErrback(lambda f: self.log.failure("heartbeat loop stopped", f))
        self._stopped = done.addCallback(lambda _: None)

    def stopService(self) -> Deferred[None]:
        """Stop beating; fires once no heartbeat is in flight any more.

        A heartbeat in flight is cancelled rather than waited for (the tracker
        may be down, and the node is stopping), and the node sends its EXIT
        only after this fires, so no REGISTER of ours follows the EXIT.
        """
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._inflight is not None:
            self._inflight.cancel()
        return self._stopped

    def beat(self) -> Deferred[None]:
        """One heartbeat.  The returned Deferred never fails."""
        d = maybeDeferred(self.client.register)
        self._inflight = d
        done: Deferred[None] = d.addBoth(self._landed).addCallbacks(self._registered, self._failed)
        # Last line of defence: a failure here would stop the LoopingCall for good.
        done.addErrback(lambda f: self.log.failure("heartbeat bookkeeping failed", f))
        return done

    def _landed(self, result: Any) -> Any:
        self._inflight = None
        return result

    def _registered(self, new: bool) -> None:
        if self.problem is not None:
            self.log.info("the tracker at {url} answers again", url=self.client.base_url)
        self.problem = None
        self.refused = False
        if new:
            self.log.info("the tracker holds none of our files: announcing what we share")
            self._announce_due = True
        if self._announce_due and not self._announcing:
            self._announce()
        if self.on_contact is not None:
            try:
                self.on_contact()
            except Exception:
                self.log.failure("sending what the tracker missed failed")

    def _announce(self) -> None:
        self._announcing = True

        def ok(_: object) -> None:
            self._announce_due = False

        def failed(failure: Failure) -> None:
            self.log.failure("announcing our files to the tracker failed; retrying at the next heartbeat", failure)

        def finished(_: object) -> None:
            self._announcing = False

        d = maybeDeferred(self.on_new)
        d.addCallbacks(ok, failed).addBoth(finished)

    def _failed(self, failure: Failure) -> None:
        if not self.running:
            self.log.debug("heartbeat cancelled: the node is stopping")
            return
        why = failure.getErrorMessage()
        again = why == self.problem
        self.problem = why
        if failure.check(TrackerRefused):
            # Not a passing outage: this node runs unregistered until the cause is fixed.
            self.refused = True
            if not again:
                self.log.error(
                    "heartbeat failed, NOT REGISTERED: {why}; no other node learns of our files until this is fixed"
                    " (another node with id {node} from another host? a stale token?); trying again every {interval} s",
                    why=why, node=self.client.node_id, interval=self.interval,
                )
        elif failure.check(TrackerClientError):
            self.refused = False
            # Once per outage at warn; every further miss at debug.
            (self.log.debug if again else self.log.warn)("heartbeat failed: {error}", error=why)
        else:
            self.log.failure("heartbeat failed", failure)
        if self.on_miss is not None:
            try:
                self.on_miss()
            except Exception:
                self.log.failure("handling a missed heartbeat failed")
