"""Node-wide rate limits (MAX_UPLOAD_RATE, MAX_DOWNLOAD_RATE): token buckets, pure.

A bucket holds bytes: it fills at *rate* a second up to *burst* and is spent as blocks are sent (upload) or
asked for (download).  Every call takes ``now``; nothing here reads a clock, so tests drive it with any
numbers.  A rate of 0 means no limit: the bucket then grants everything and keeps no state worth a look.

Why a burst at all: a downloader that finds the seeder's bucket empty waits for a retransmission timeout
(at least ``transfer.MIN_RTO``, 0.2 s) before it asks again; a bucket that saved less than that would
waste the rest of the wait.  So a bucket saves ``BURST_SECONDS`` of its rate (and always at least the
largest block, ``min_burst``, so that any block can go): over any window of T seconds at most ``rate * T + burst`` bytes
pass, 2.5% above the rate over 10 s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable

#: Seconds of its rate a bucket may save (see the module docstring).
BURST_SECONDS = 0.25
#: Who took from a bucket within this many seconds shares it evenly (see TokenBucket.share).
SHARE_SECONDS = 0.1


@dataclass
class TokenBucket:
    """*rate* bytes a second (0: no limit), saving up to ``burst_for(rate)`` bytes."""

    rate: float = 0.0
    #: Bytes saved at least, whatever the rate: the largest block (set by the owner).
    min_burst: float = 0.0
    tokens: float = 0.0
    last: float | None = None
    #: Who asked for a share lately: its own share saved, and when it last asked.
    users: dict[Hashable, list[float]] = field(default_factory=dict, repr=False)

    @property
    def limited(self) -> bool:
        return self.rate > 0

    @property
    def burst(self) -> float:
        return max(self.rate * BURST_SECONDS, self.min_burst)

    def available(self, now: float) -> float:
        """Bytes that may go now (infinite without a limit)."""
        if self.rate <= 0:
            return float("inf")
        self._refill(now)
        return self.tokens

    def share(self, who: Hashable, now: float) -> float:
        """Bytes *who* may take now: with n users (those that asked within SHARE_SECONDS), each has a bucket
        of its own filling at rate/n up to burst/n, and never more than the whole bucket holds.

        Without it the one that asks most often (a download whose blocks keep arriving) would take
        everything as soon as it is there, and another would starve.  Spend with ``spend(amount, now, who)``.
        """
        if self.rate <= 0:
            return float("inf")
        users = self.users
        entry = users.get(who)
        if len(users) > 1 or entry is None:
            for gone in [u for u, (_, seen) in users.items() if now - seen > SHARE_SECONDS and u != who]:
                del users[gone]
        n = len(users) + (entry is None)
        each_rate, each_burst = self.rate / n, self.burst / n
        if entry is None:
            entry = users[who] = [each_burst, now]
        else:
            entry[0] = min(each_burst, entry[0] + max(0.0, now - entry[1]) * each_rate)
            entry[1] = max(entry[1], now)
        return min(entry[0], self.available(now))

    def spend(self, amount: float, now: float, who: Hashable = None) -> None:
        """*amount* bytes went (or were asked for), by *who* if it took a share: never below empty."""
        if self.rate <= 0:
            return
        self._refill(now)
        self.tokens = max(0.0, self.tokens - amount)
        entry = self.users.get(who) if who is not None else None
        if entry is not None:
            entry[0] = max(0.0, entry[0] - amount)

    def take(self, sizes: list[int], now: float) -> int:
        """How many of *sizes* (bytes each, in order) may go now; those are spent."""
        if self.rate <= 0:
            return len(sizes)
        self._refill(now)
        tokens, n = self.tokens, 0
        for size in sizes:
            if size > tokens:
                break
            tokens -= size
            n += 1
        self.tokens = tokens
        return n

    def set_rate(self, rate: float, now: float) -> None:
        """A new limit from now on; what was saved is kept up to the new burst (a full bucket for a new limit)."""
        was_limited = self.rate > 0
        if was_limited:
            self._refill(now)
        self.rate = max(0.0, float(rate))
        self.tokens = min(self.tokens, self.burst) if was_limited else self.burst
        self.last = now

    def _refill(self, now: float) -> None:
        last = self.last
        if last is None:
            self.tokens, self.last = self.burst, now
            return
        # max(): a clock that steps back never refills.
        self.tokens = min(self.burst, self.tokens + max(0.0, now - last) * self.rate)
        self.last = max(last, now)
