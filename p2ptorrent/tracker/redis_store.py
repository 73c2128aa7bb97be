"""The Redis store: several tracker processes serving one swarm.

Redis holds the swarm in two forms, and every tracker a copy in memory:

- **the change log**, a stream (``p2ptracker:log``): every change
  (changes.py: REGISTER, OWN, UPDATE, EXIT and each liveness check) is
  appended by the tracker that received it, numbered by one counter in the
  same Lua script, so the log has one order.  Every tracker reads the log and
  applies each change, in that order, to its :class:`SwarmState`: the same
  rules on the same changes give the same state everywhere, so a node
  registered through one tracker is found through any other and tokens,
  credits and ownerships agree.  A request is answered once its tracker has
  applied its own change (the outcome is what the rules gave *there*, in the
  log's order); a NEED first waits until its tracker has applied everything
  logged before it.
- **rows**: hashes of node and file entries (the JSON of nodes.json and
  files.json), each node's liveness epoch, and the log position they hold.
  The tracker that makes the liveness checks writes what changed every few
  seconds, in one script that refuses a position older than the one written,
  and trims the log a while behind it.  A starting tracker reads the rows,
  then the log from their position.

Liveness: one tracker at a time, the holder of a lease key, appends a check
to the log (the script takes or renews the lease and appends only for its
holder), then, while nodes are due, drops of TRACKER_DROP_SLICE work each;
every tracker applies them where they are in the log, so a silent node is
dropped once, in one place of the log, by all of them, and other changes are
applied between the slices of a big drop.  If the holder dies, another takes
the lease when it runs out.

Durability: a change is answered only after Redis took it into the log, so
killing a tracker loses nothing acknowledged; what a crash of Redis itself
may lose is its ``appendfsync`` setting's business (see the README).
"""

from __future__ import annotations

import json
import secrets
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Callable
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, fail, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2ptorrent.config import Config
from p2ptorrent.tracker.changes import (
    CHANGE_FORMAT,
    Changing,
    Check,
    Drop,
    Outcome,
    apply_change,
    decode,
    encode,
    to_change,
)
from p2ptorrent.startup import StartupError
from p2ptorrent.tracker.events import EventRing
from p2ptorrent.tracker.state import TOKEN_BYTES, Register, Registration, SwarmState, TrackerError, proposed_token

#: Every key the store uses starts with this.
PREFIX = "p2ptracker:"
LOG, SEQ, META, NODES, EPOCHS, FILES, CHECKER = (
    PREFIX + k for k in ("log", "seq", "meta", "nodes", "epochs", "files", "checker")
)
#: Seconds between two writes of the rows (by the checker, when something changed).
SAVE_INTERVAL = 5.0
#: Log entries kept behind the rows' position, in milliseconds: a tracker that falls further behind
#: reads the rows again.
RETENTION_MS = 120_000
#: Entries applied per turn of the reactor (the rest waits for the next turn).
APPLY_SLICE = 500
#: Entries one read of the log takes at most, and how long it waits for one (ms).
READ_COUNT, READ_BLOCK_MS = 2000, 1000
#: Seconds a request waits for Redis to take its change and for the tracker to apply it.
CONFIRM_TIMEOUT = 10.0
#: Rows encoded and staged in Redis per turn of the reactor while the rows are written.
STAGE_ROWS = 2000
#: Outcomes of this tracker's changes kept until Redis's answer to their append comes (most).
MAX_EARLY = 4096
#: The settings every tracker of one swarm must share: the rules depend on them.
SHARED_SETTINGS = ("TRACKER_MISSED_CHECKS", "TRACKER_MAX_NODES_PER_HOST", "TRACKER_TIME_INTERVAL")

# Append one change: the counter and the stream move together.  An entry is one field, "c": its number,
# the tracker that made it and the change (changes.py), separated by spaces (one value to parse, not six).
APPEND = """
local seq = redis.call('INCR', KEYS[1])
local id = redis.call('XADD', KEYS[2], '*', 'c', seq .. ' ' .. ARGV[1] .. ' ' .. ARGV[2])
return {seq, id}
"""
# Append a liveness check or drop, only for the holder of the lease (taken if free, renewed if ours).
APPEND_LEASED = """
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[1] then return false end
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[3])
local seq = redis.call('INCR', KEYS[1])
local id = redis.call('XADD', KEYS[2], '*', 'c', seq .. ' ' .. ARGV[1] .. ' ' .. ARGV[2])
return {seq, id}
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Make the rows those of one log position, unless rows of a later position are there already.  The rows
# were staged in KEYS[6..8] beforehand, a slice at a time; ARGV[8] == '1': the staged rows replace all
# rows, else they are merged in (an empty row deletes).  Then the rows that changed while they were staged
# (ARGV[5] and ARGV[7]: lines "key<TAB>row", ARGV[6]: "node:epoch,...").
SAVE = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if cur >= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[6], KEYS[7], KEYS[8])
  return 0
end
local function put(hash, key, row, also)
  if row == '' then
    redis.call('HDEL', hash, key)
    if also then redis.call('HDEL', also, key) end
  else
    redis.call('HSET', hash, key, row)
  end
end
for k = 2, 4 do
  local stage = KEYS[k + 4]
  if ARGV[8] == '1' then
    if redis.call('EXISTS', stage) == 1 then redis.call('RENAME', stage, KEYS[k]) else redis.call('DEL', KEYS[k]) end
  else
    local kv = redis.call('HGETALL', stage)
    for i = 1, #kv, 2 do put(KEYS[k], kv[i], kv[i + 1], k == 2 and KEYS[3] or nil) end
    redis.call('DEL', stage)
  end
end
for line in string.gmatch(ARGV[5], '[^\\n]+') do
  local id, row = string.match(line, '^([^\\t]*)\\t(.*)$')
  put(KEYS[2], id, row, KEYS[3])
end
for id, e in string.gmatch(ARGV[6], '(%d+):(%d+)') do redis.call('HSET', KEYS[3], id, e) end
for line in string.gmatch(ARGV[7], '[^\\n]+') do
  local h, row = string.match(line, '^([^\\t]*)\\t(.*)$')
  put(KEYS[4], h, row, nil)
end
redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'id', ARGV[2], 'checks', ARGV[3])
local ms = tonumber(string.match(ARGV[2], '^(%d+)'))
redis.call('XTRIM', KEYS[5], 'MINID', string.format('%d', ms - tonumber(ARGV[4])))
return 1
"""
# The stream id of the last change logged (nil: none).
LAST = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last == 0 then return false end
return last[1][1]
"""
# The rows, each hash packed into one text of "key<TAB>value" lines (one reply to parse, not 300k).
LOAD = """
local function packed(key)
  local kv = redis.call('HGETALL', key)
  local out = {}
  for i = 1, #kv, 2 do out[#out + 1] = kv[i] .. '\\t' .. kv[i + 1] end
  return table.concat(out, '\\n')
end
return {redis.call('HGETALL', KEYS[1]), packed(KEYS[2]), packed(KEYS[3]), packed(KEYS[4])}
"""


class RedisConfigError(ValueError):
    """A redis:// address that cannot be used."""


@dataclass(frozen=True)
class RedisAddress:
    host: str
    port: int
    db: int
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        """``redis://[:PASSWORD@]HOST[:PORT][/DB]`` (port 6379 and database 0 by default)."""
        try:
            parts = urlsplit(url)
            port = parts.port or 6379
        except ValueError as e:
            raise RedisConfigError(f"bad Redis address {url!r}: {e}") from None
        if parts.scheme != "redis" or not parts.hostname:
            raise RedisConfigError(f"bad Redis address {url!r}: give redis://HOST:PORT/DB")
        path = parts.path.strip("/") or "0"
        if not path.isdigit():
            raise RedisConfigError(f"bad Redis address {url!r}: the database must be a number, not {path!r}")
        return cls(parts.hostname, port, int(path), parts.password)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/{self.db}"


def _client(address: RedisAddress, timeout: float) -> Any:
    import redis

    return redis.Redis(host=address.host, port=address.port, db=address.db, password=address.password,
                       socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True)


def ping(address: RedisAddress, timeout: float = 5.0) -> None:
    """Check that Redis answers; OSError saying why if not."""
    import redis

    client = _client(address, timeout)
    try:
        client.ping()
    except redis.RedisError as e:
        raise OSError(str(e) or type(e).__name__) from None
    finally:
        client.close()


class RulesDiffer(StartupError):
    """The swarm in Redis runs with other shared settings than this tracker's."""


def rules_text(settings: Config) -> str:
    """The shared settings (SHARED_SETTINGS) and the change format, as every tracker of one swarm writes them."""
    return json.dumps(
        {"format": CHANGE_FORMAT, **{name: getattr(settings, name) for name in SHARED_SETTINGS}}, sort_keys=True,
    )


def rules_differ(theirs: str, ours: str) -> str:
    return (f"the swarm in Redis runs with {theirs}, this tracker with {ours}: every tracker of one swarm"
            " needs the same settings (or another Redis database)")


def check_store(address: RedisAddress, settings: Config, timeout: float = 5.0) -> None:
    """Before twistd forks: Redis answers, and the swarm there runs with this tracker's rules (the first
    tracker of a swarm writes them), so a tracker that cannot join says why and exits with status 1.

    Raises OSError if Redis cannot be reached or refuses, RulesDiffer if the rules differ.  redis-py's
    blocking client, here only: the tracker's own traffic is txredisapi's, on the reactor.
    """
    import redis

    client = _client(address, timeout)
    ours = rules_text(settings)
    try:
        client.hsetnx(META, "rules", ours)
        theirs = client.hget(META, "rules")
    except redis.RedisError as e:
        raise OSError(str(e) or type(e).__name__) from None
    finally:
        client.close()
    if theirs != ours:
        raise RulesDiffer(rules_differ(str(theirs), ours))


class RedisSwarm:
    """The tracker's side of the shared swarm: appends changes, applies the log, writes rows, checks liveness."""

    log = Logger()

    def __init__(self, address: RedisAddress, state: SwarmState, reactor: Any, settings: Config) -> None:
        self.address = address
        self.state = state
        self.reactor = reactor
        self.settings = settings
        self.folder = str(address)  # what the tracker's "loaded from" line names
        state.track_epochs = True
        #: This process in the log (a new one at every start).
        self.origin = secrets.token_hex(8)
        self._pool: Any = None
        self._reader: Any = None
        self.ready: Deferred[None] = Deferred()
        self._ready = False
        self._reloading = False
        # Requests that came before the store was ready.
        self._waiting: list[Deferred[None]] = []
        self._stopping = False
        #: The last change applied, by number and stream id.
        self.applied = 0
        self._applied_id = "0-0"
        # Own changes by number: waiting for their outcome, or applied before Redis's answer came.
        self._pending: dict[int, Deferred[Outcome]] = {}
        self._early: dict[int, tuple[Outcome | Failure]] = {}
        # NEEDs waiting for the tracker to catch up: (the log's last stream id then, Deferred).
        self._barriers: list[tuple[tuple[int, int], Deferred[None]]] = []
        self._queue: deque[Any] = deque()
        #: Stream id of the last change read, and of the last applied.
        self._read_id = "0-0"
        #: A liveness check whose drops are under way (applied before the next change).
        #: Nodes dropped so far by the Drops that follow this tracker's last check (None: no drops under way).
        self._dropping: list[int] | None = None
        #: Holds the liveness lease (makes the checks and writes the rows).
        self.checker = False
        # Rows taken from the state but not written yet (the write failed or was refused).
        self._unsaved: tuple[set[int], set[str], set[int]] = (set(), set(), set())
        self._saving = False
        #: The next write replaces every row (this tracker just took the lease).
        self._full = False
        self._saver: LoopingCall | None = None
        #: Nodes dropped by checks this tracker appended, since the caller last took the count.
        self.dropped = 0
        self.on_dropped: Callable[[list[int]], None] = lambda ids: None
        #: Told of each write of the rows: whether it worked, and how long it took (the tracker's metrics).
        self.on_saved: Callable[[bool, float], None] = lambda ok, seconds: None
        #: The recent events of the swarm, as this tracker applies the log (the web page shows them).
        self.events = EventRing()

    # ---- life cycle

    def check_reachable(self) -> None:
        """Raise OSError if Redis does not answer, RulesDiffer if its swarm has other rules (before the
        reactor runs: see check_store)."""
        check_store(self.address, self.settings)

    def start(self) -> Deferred[None]:
        """Connect, check the shared settings, read the rows and follow the log; fires ``ready``."""
        import txredisapi  # imported late: it imports the reactor

        a = self.address
        common = dict(dbid=a.db, password=a.password, convertNumbers=False, charset="utf-8")
        d: Deferred[Any] = txredisapi.ConnectionPool(a.host, a.port, poolsize=4, **common)

        def pooled(pool: Any) -> Deferred[Any]:
            self._pool = pool
            reader: Deferred[Any] = txredisapi.Connection(a.host, a.port, **common)
            return reader

        def connected(reader: Any) -> Deferred[Any]:
            self._reader = reader
            return self._check_rules()

        d.addCallback(pooled)
        d.addCallback(connected)
        d.addCallback(lambda _: self._load())
        d.addCallback(self._started)
        d.addErrback(self._failed_to_start)
        return d

    def _started(self, _: Any) -> None:
        self._ready = True
        self._read()
        self._saver = LoopingCall(self.save)
        self._saver.clock = self.reactor
        self._saver.start(SAVE_INTERVAL, now=False)
        self.ready.callback(None)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def _failed_to_start(self, failure: Failure) -> None:
        if self._stopping:
            return
        self.log.critical(
            "cannot use the Redis store at {address}: {why}", address=str(self.address), why=failure.getErrorMessage(),
        )
        if not self.ready.called:
            self.ready.errback(failure)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(TrackerError(503, "the tracker cannot use its Redis store"))
        if self.reactor.running:
            self.reactor.stop()

    def _check_rules(self) -> Deferred[None]:
        """The same check as check_store, for a swarm started on a running reactor (in-process use)."""
        rules = rules_text(self.settings)
        d = self._pool.execute_command("HSETNX", META, "rules", rules)
        d.addCallback(lambda _: self._pool.execute_command("HGET", META, "rules"))

        def compare(theirs: str) -> None:
            if theirs != rules:
                raise RuntimeError(rules_differ(theirs, rules))

        return d.addCallback(compare)

    def _load(self) -> Deferred[None]:
        """Replace the state with the rows; the log is read from their position on."""
        d = maybeDeferred(self._pool.eval, LOAD, keys=[META, NODES, EPOCHS, FILES])
        return d.addCallback(self._restore)

    def _restore(self, reply: list[Any]) -> None:
        flat, nodes, epochs, files = reply
        meta = dict(zip(flat[::2], flat[1::2], strict=True))
        node_entries = [json.loads(line.partition("\t")[2]) for line in _lines(nodes)]
        file_entries = [json.loads(line.partition("\t")[2]) for line in _lines(files)]
        checks = int(meta.get("checks", 0))
        liveness = (checks, {int(k): int(v) for k, _, v in (line.partition("\t") for line in _lines(epochs))})
        problems = self.state.restore(
            {"version": 1, "nodes": node_entries}, {"version": 1, "files": file_entries},
            self.reactor.seconds(), liveness,
        )
        for problem in problems:
            self.log.warn("Redis rows: {problem}", problem=problem)
        self.applied = int(meta.get("seq", 0))
        self._applied_id = self._read_id = meta.get("id", "0-0")
        self._unsaved = (set(), set(), set())

    def stop(self) -> Deferred[None]:
        """Write the last rows (the checker), give up the lease and disconnect."""
        self._stopping = True
        if self._saver is not None and self._saver.running:
            self._saver.stop()
        d: Deferred[Any] = succeed(None)
        if self._ready and self.checker:
            d.addCallback(lambda _: self.save())
            d.addCallback(lambda _: self._pool.eval(RELEASE, keys=[CHECKER], args=[self.origin]))
            d.addErrback(lambda f: self.log.failure("could not write the last rows to Redis", f))
        d.addBoth(lambda _: self._disconnect())
        return d

    def _disconnect(self) -> Deferred[None]:
        ds = [c.disconnect() for c in (self._reader, self._pool) if c is not None]
        return DeferredList(ds, consumeErrors=True).addCallback(lambda _: None)

    # ---- requests

    def change(self, request: Changing, host: str | None) -> Deferred[Outcome]:
        """Log the change a request makes and fire with its outcome once applied here (or fail:
        TrackerError if the rules refused it, another error if Redis did not take it or did not say)."""
        if not self._ready:
            return self._when_ready().addCallback(lambda _: self.change(request, host))
        fresh = secrets.token_hex(TOKEN_BYTES) if isinstance(request, Register) else None
        entry = encode(to_change(request, host, self.reactor.seconds(), fresh))
        # (maybeDeferred: with Redis away the client raises at once instead of failing the Deferred)
        d = maybeDeferred(self._pool.eval, APPEND, keys=[SEQ, LOG], args=[self.origin, entry])
        d.addCallback(lambda reply: self._outcome(int(reply[0])))
        d.addCallback(self._plain_token, request, fresh)
        return d.addTimeout(CONFIRM_TIMEOUT, self.reactor)

    def caught_up(self) -> Deferred[None]:
        """Fires once this tracker has applied every change logged before now (for a NEED)."""
        if not self._ready:
            return self._when_ready().addCallback(lambda _: self.caught_up())
        d = maybeDeferred(self._pool.eval, LAST, keys=[LOG])

        def wait(last: str | None) -> Deferred[None]:
            if last is None or _stream_id(last) <= _stream_id(self._applied_id):
                return succeed(None)
            waiter: Deferred[None] = Deferred()
            self._barriers.append((_stream_id(last), waiter))
            return waiter

        d.addCallback(wait)
        return d.addTimeout(CONFIRM_TIMEOUT, self.reactor)

    def _when_ready(self) -> Deferred[None]:
        if self.ready.called or self._reloading:
            return fail(TrackerError(503, "the tracker is reading its Redis store again: try again"))
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d.addTimeout(CONFIRM_TIMEOUT, self.reactor)

    def check(self) -> Deferred[bool]:
        """Append a liveness check if this tracker holds (or can take) the lease; fires with whether it did."""
        if self._stopping:
            return succeed(False)
        if not self._ready:
            # The first check of a tracker comes as it starts: it takes the lease if nobody holds it.
            return self._when_ready().addCallback(lambda _: self.check())
        d = self._append_leased(Check())

        def took(reply: Any) -> bool:
            was, self.checker = self.checker, reply is not None
            if self.checker and not was:
                self._full = True
                self.log.info("this tracker makes the liveness checks of the shared swarm")
            return self.checker

        return d.addCallback(took)

    def _append_leased(self, request: Check | Drop) -> Deferred[Any]:
        entry = encode(to_change(request, None, self.reactor.seconds()))
        lease_ms = int(self.settings.TRACKER_TIME_INTERVAL * 2500)
        return maybeDeferred(self._pool.eval, APPEND_LEASED, keys=[SEQ, LOG, CHECKER], args=[self.origin, entry, lease_ms])

    def _drop_more(self, dropped: list[int] | None) -> None:
        """After this tracker's check or drop was applied here: log the next drop while nodes are due,
        or tell how many the check dropped."""
        if dropped is not None and self._dropping is not None:
            self._dropping.extend(dropped)
        if self.state.has_silent() and not self._stopping:
            if self._dropping is None:
                self._dropping = []
            d = self._append_leased(Drop(self.settings.TRACKER_DROP_SLICE))

            def refused(reply: Any) -> None:
                if reply is None:  # the lease went to another tracker: it drops the rest
                    self._end_drops()

            d.addCallbacks(refused, lambda f: self._end_drops(f))
            return
        self._end_drops()

    def _end_drops(self, failure: Failure | None = None) -> None:
        if failure is not None:
            self.log.warn("could not append a drop to the Redis log: {why}", why=failure.getErrorMessage())
        dropped, self._dropping = self._dropping or [], None
        self.dropped += len(dropped)
        if dropped:
            self.on_dropped(dropped)

    def _outcome(self, seq: int) -> Outcome | Deferred[Outcome]:
        early = self._early.pop(seq, None)
        if early is not None:
            (outcome,) = early
            if isinstance(outcome, Failure):
                outcome.raiseException()
            return outcome
        if seq <= self.applied:
            raise TrackerError(503, "the tracker lost track of this change (it read its store again): try again")
        d: Deferred[Outcome] = Deferred()
        self._pending[seq] = d
        return d

    @staticmethod
    def _plain_token(outcome: Outcome, request: Changing, fresh: str | None) -> Outcome:
        """A Registration replayed from the log names the token's digest: answer with the token itself."""
        if not isinstance(outcome, Registration) or not isinstance(request, Register):
            return outcome
        if not outcome.new:
            assert request.token is not None
            return replace(outcome, token=request.token)
        chosen = request.token if proposed_token(request.token) else fresh
        assert chosen is not None
        return replace(outcome, token=chosen)

    # ---- following the log

    def _read(self) -> None:
        if self._stopping:
            return
        d = maybeDeferred(
            self._reader.execute_command,
            "XREAD", "COUNT", READ_COUNT, "BLOCK", READ_BLOCK_MS, "STREAMS", LOG, self._read_id,
        )
        d.addCallbacks(self._got, self._read_failed)

    def _read_failed(self, failure: Failure) -> None:
        if self._stopping:
            return
        self.log.warn("could not read the change log from Redis ({why}): again in 1 s", why=failure.getErrorMessage())
        self.reactor.callLater(1.0, self._read)

    def _got(self, reply: Any) -> None:
        if reply:
            entries = reply[0][1]
            if entries:
                self._queue.extend(entries)
                self._read_id = entries[-1][0]
        if self._queue:
            self._drain()
        else:
            self._read()

    def _drain(self) -> None:
        """Apply queued entries, a slice per turn of the reactor (a drop ends the turn: it is a slice itself)."""
        try:
            budget = APPLY_SLICE
            while budget > 0 and self._queue:
                entry_id, flat = self._queue.popleft()
                budget -= 1
                if self._apply_entry(entry_id, dict(zip(flat[::2], flat[1::2], strict=True))):
                    break
            self._release_barriers()
        except Exception:
            self.log.failure("could not apply the change log")
        if self._queue:
            self.reactor.callLater(0, self._drain)
        elif not self._reloading:
            self._read()

    def _apply_entry(self, entry_id: str, fields: dict[str, str]) -> bool:
        """Apply one entry of the log; True if it was a drop."""
        try:
            seq, origin, text = parse_entry(fields)
        except ValueError:
            self.log.error("entry {id} of the log is not one this tracker reads", id=entry_id)
            return False
        if seq <= self.applied:
            if _stream_id(entry_id) > _stream_id(self._applied_id):
                # Numbered again from the start, later than what this tracker applied: Redis lost its data.
                self._gap(seq)
            return False
        if seq != self.applied + 1:
            self._gap(seq)
            return False
        self.applied, self._applied_id = seq, entry_id
        mine = origin == self.origin
        try:
            change = decode(text)
        except ValueError as e:
            self.log.error("change {seq} of the log is not one this tracker reads: {why}", seq=seq, why=str(e))
            self._settle(seq, mine, Failure(TrackerError(500, "this change could not be read back")))
            return False
        try:
            outcome: Outcome | Failure = apply_change(self.state, change, self.events)
        except TrackerError as e:
            outcome = Failure(e)
        request = change.request
        if mine and isinstance(request, (Check, Drop)):
            self._drop_more(outcome if isinstance(outcome, list) else None)
        self._settle(seq, mine, outcome)
        return isinstance(request, Drop)

    def _settle(self, seq: int, mine: bool, outcome: Outcome | Failure) -> None:
        if not mine:
            return
        d = self._pending.pop(seq, None)
        if d is None:
            self._early[seq] = (outcome,)  # Redis's answer to the append has not come yet
            if len(self._early) > MAX_EARLY:
                # Appends whose answer never came (a dropped connection): nobody will ask for these.
                del self._early[min(self._early)]
        elif d.called:
            pass  # the request timed out
        elif isinstance(outcome, Failure):
            d.errback(outcome)
        else:
            d.callback(outcome)

    def _release_barriers(self) -> None:
        if not self._barriers:
            return
        waiting = []
        applied = _stream_id(self._applied_id)
        for last, d in self._barriers:
            if d.called:
                continue  # timed out
            if last <= applied:
                d.callback(None)
            else:
                waiting.append((last, d))
        self._barriers = waiting

    def _gap(self, seq: int) -> None:
        """Changes were trimmed before this tracker read them, or the log starts again (Redis lost its data):
        read the rows again (retried every second while Redis cannot be read)."""
        self.log.error(
            "the change log moved on without this tracker, or starts again (next change {seq}, applied {applied}):"
            " reading the rows again", seq=seq, applied=self.applied,
        )
        self._queue.clear()
        lost = TrackerError(503, "the tracker lost track of this change (it read its store again): try again")
        for d in self._pending.values():
            if not d.called:
                d.errback(lost)
        self._pending = {}
        self._early = {}
        self._ready = False
        self._reloading = True
        self._reload()

    def _reload(self) -> None:
        if self._stopping:
            return

        def reloaded(_: Any) -> None:
            self._ready, self._reloading = True, False
            self._release_barriers()
            self._read()

        def failed(failure: Failure) -> None:
            self.log.warn("could not read the rows from Redis ({why}): again in 1 s", why=failure.getErrorMessage())
            self.reactor.callLater(1.0, self._reload)

        self._load().addCallbacks(reloaded, failed)

    # ---- rows

    def save(self) -> Deferred[None]:
        """Write the rows that changed since the last write (the checker only; not during a check's drops).

        Rows are encoded and staged in Redis a slice per turn of the reactor
        (STAGE_ROWS), so that writing 100k rows never holds the reactor; one
        script then makes them the rows of one log position, together with
        the rows that changed meanwhile.  A tracker that just took the lease
        writes every row once: what it noted as changed before is not kept
        (others wrote the rows then), so its memory does not grow with churn.
        """
        if not self._ready or self._saving:
            return succeed(None)
        if not self.checker:
            self.state.take_dirty()
            self.state.take_epochs()
            return succeed(None)
        self._saving = True
        d = ensureDeferred(self._save(self._full))
        d.addErrback(lambda f: self.log.warn("could not write the rows to Redis: {why}", why=f.getErrorMessage()))
        return d

    async def _save(self, full: bool) -> None:
        state = self.state
        if full:
            state.take_dirty()
            state.take_epochs()
            nodes, files = set(state.node_ids()), set(state.info_hashes())
            epochs = set(nodes)
        else:
            nodes, files = state.take_dirty()
            epochs = state.take_epochs()
            old_nodes, old_files, old_epochs = self._unsaved
            nodes |= old_nodes
            files |= old_files
            epochs |= old_epochs | nodes
            self._unsaved = (set(), set(), set())
        stage = [f"{PREFIX}stage:{self.origin}:{k}" for k in ("nodes", "epochs", "files")]
        written = False
        started = self.reactor.seconds()
        try:
            if not (nodes or files or epochs or full):
                return
            await self._pool.execute_command("DEL", *stage)
            await self._stage(stage[0], sorted(nodes), lambda i: _row(state.node_entry(i)), full)
            await self._stage(stage[1], sorted(epochs), lambda i: _epoch(state.epoch(i)), True)
            await self._stage(stage[2], sorted(files), lambda h: _row(state.file_entry(h)), full)
            # What changed while the slices were staged, as of now.
            late_nodes, late_files = state.take_dirty()
            late_epochs = state.take_epochs() | late_nodes
            nodes |= late_nodes
            files |= late_files
            epochs |= late_epochs
            node_lines = "\n".join(f"{i}\t{_row(state.node_entry(i))}" for i in late_nodes)
            marks = ",".join(f"{i}:{e}" for i in late_epochs if (e := state.epoch(i)) is not None)
            file_lines = "\n".join(f"{h}\t{_row(state.file_entry(h))}" for h in late_files)
            args = [self.applied, self._applied_id, state.checks, RETENTION_MS, node_lines, marks, file_lines,
                    "1" if full else "0"]
            try:
                result = await self._pool.eval(SAVE, keys=[META, NODES, EPOCHS, FILES, LOG, *stage], args=args)
            except Exception:
                self.on_saved(False, self.reactor.seconds() - started)
                raise
            written = str(result) == "1"
            self.on_saved(True, self.reactor.seconds() - started)
        finally:
            self._saving = False
            if written:
                if full:
                    self._full = False
            elif not full:
                # Refused (a later position is written) or failed: these rows go with the next write.
                u_nodes, u_files, u_epochs = self._unsaved
                self._unsaved = (u_nodes | nodes, u_files | files, u_epochs | epochs)

    async def _stage(self, key: str, keys: list[Any], row: Callable[[Any], str], skip_empty: bool) -> None:
        """HSET the rows of *keys* into a staging hash, STAGE_ROWS per turn of the reactor."""
        for start in range(0, len(keys), STAGE_ROWS):
            args: list[Any] = []
            for k in keys[start:start + STAGE_ROWS]:
                text = row(k)
                if text or not skip_empty:
                    args += [k, text]
            if args:
                await self._pool.execute_command("HSET", key, *args)


def _lines(packed: str | None) -> list[str]:
    return packed.split("\n") if packed else []


def _epoch(epoch: int | None) -> str:
    return "" if epoch is None else str(epoch)


def parse_entry(fields: dict[str, str]) -> tuple[int, str, str]:
    """(number, tracker that made it, change text) of one entry of the log, or ValueError."""
    try:
        seq, origin, text = fields["c"].split(" ", 2)
        return int(seq), origin, text
    except (KeyError, ValueError):
        raise ValueError(f"not an entry of the change log: {str(fields)[:80]}") from None


def _stream_id(text: str) -> tuple[int, int]:
    ms, _, n = text.partition("-")
    return int(ms), int(n or 0)


def _row(entry: dict[str, Any] | None) -> str:
    return "" if entry is None else json.dumps(entry, separators=(",", ":"), sort_keys=True)
