"""Which tracker a node asks about a torrent: the torrent's own, in BEP 12 order, then its own ``--tracker``.

A torrent names its trackers as BitTorrent announce URLs (``http://HOST:PORT/announce``);
a p2ptorrent tracker answers nodes with POST / on the same host and port, so
:func:`node_url` maps one to the other.  Only http(s) URLs can be a p2ptorrent
tracker: ``udp://`` (BEP 15) and other schemes are skipped.

:func:`tracker_tiers` puts them in BEP 12 order: the ``announce-list`` tiers when
the torrent has one (each tier shuffled once), else ``announce``.
:class:`Failover` decides which to try, all pure (no I/O, randomness injected):

- a torrent keeps the tracker that last answered it;
- a tracker that fails (down, no answer in time, refused, or not a p2ptorrent
  tracker) hands over to the next one in order, tiers in order, members in order;
  a tracker that answers moves to the front of its tier (BEP 12);
- the node's own ``--tracker`` comes after every named one (it is the only one when
  the torrent names none usable); a named URL equal to it *is* it, not a second;
- when every one failed since the last success, the attempt fails, and the next
  starts again from the top.

Unlike BEP 12 the order is not walked from the top at every request: a download
asks for owners and reports progress every few seconds, and a dead first tier
would cost a timeout each time.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

#: The path BitTorrent announce URLs end with; the node interface is the same URL without it.
ANNOUNCE = "/announce"


def node_url(url: str) -> str | None:
    """The base URL a node POSTs to for the tracker announcing at *url*; None if it cannot be one of ours.

    ``http://h:p/announce`` -> ``http://h:p``; another path keeps all but a trailing
    ``/announce``; the query (a passkey for BitTorrent clients) and fragment are dropped.
    Scheme and host are lower-cased so that one tracker written two ways is one tracker.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port  # raises ValueError on a port that is not a number in range
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname  # lower-cased, without brackets
    if scheme not in ("http", "https") or not host or parts.username is not None or parts.password is not None:
        return None
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal keeps its brackets
    path = parts.path.rstrip("/")
    if path.endswith(ANNOUNCE):
        path = path[: -len(ANNOUNCE)]
    netloc = host if port is None else f"{host}:{port}"
    return f"{scheme}://{netloc}{path.rstrip('/')}"


def tracker_tiers(
    announce: str, announce_list: Sequence[Sequence[str]], rng: random.Random,
) -> tuple[tuple[str, ...], ...]:
    """The node URLs of a torrent's trackers in BEP 12 order, each once; empty tiers left out.

    With an ``announce-list`` it alone counts (``announce`` is then for clients
    without BEP 12), and each tier is shuffled once with *rng*.
    """
    tiers: list[tuple[str, ...]] = []
    seen: set[str] = set()
    for tier in (announce_list if any(announce_list) else [[announce]]):
        members = list(tier)
        if announce_list:
            rng.shuffle(members)
        urls = []
        for member in members:
            url = node_url(member)
            if url is not None and url not in seen:
                seen.add(url)
                urls.append(url)
        if urls:
            tiers.append(tuple(urls))
    return tuple(tiers)


class Failover:
    """The tracker one torrent talks to now, and the one to try when it fails (see the module docstring)."""

    def __init__(self, tiers: Iterable[Sequence[str]], configured: str) -> None:
        self.tiers = [list(tier) for tier in tiers]
        self.configured = configured
        #: The tracker to ask now.
        self.current = self.order()[0]
        # Failed since the last success: each is tried once per round.
        self._failed: set[str] = set()

    @property
    def named(self) -> bool:
        """Does the torrent name a tracker we can use (other than by falling back)?"""
        return any(self.tiers)

    def order(self) -> list[str]:
        """Every tracker to try, in order: the torrent's tiers, then the configured one."""
        urls = [url for tier in self.tiers for url in tier]
        return urls if self.configured in urls else [*urls, self.configured]

    def succeeded(self, url: str) -> None:
        """*url* answered: it stays the one to ask, first in its tier."""
        for tier in self.tiers:
            if url in tier:
                tier.remove(url)
                tier.insert(0, url)
        self.current = url
        self._failed.clear()

    def failed(self, url: str) -> str | None:
        """*url* failed: the tracker to try next, or None when every one failed this round.

        After None the next attempt starts again from the top.  A failure of a
        tracker that is no longer the current one (two requests in flight) only
        points at the current one.
        """
        self._failed.add(url)
        if url != self.current and self.current not in self._failed:
            return self.current
        for candidate in self.order():
            if candidate not in self._failed:
                self.current = candidate
                return candidate
        self._failed.clear()
        self.current = self.order()[0]
        return None
