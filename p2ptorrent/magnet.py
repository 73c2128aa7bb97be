"""Magnet links (BEP 9) and bare info hashes: what a download can start from without a ``.torrent``.

``magnet:?xt=urn:btih:<info hash>&dn=<name>&tr=<tracker URL>`` names a swarm by its v1 info hash (40 hex
digits, or 32 base32 characters), with an optional display name and any number of trackers.  A bare info
hash (40 hex or 32 base32) names the same with nothing else.  Both are untrusted text typed or pasted by
people: every problem is a :class:`MagnetError` (a :class:`MetainfoError`, so callers that refuse a bad
torrent refuse a bad link the same way) saying what is wrong.  Pure: no I/O.

The info dictionary itself comes later, from peers (p2ptorrent.node.metadata), and is used only once its
SHA-1 is this info hash; nothing here is trusted beyond naming the swarm.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from p2ptorrent.metainfo import MetainfoError

SCHEME = "magnet:"
#: Longest magnet link read: real ones are a few hundred bytes, with a few trackers a few KiB.
MAX_MAGNET_LENGTH = 8192
#: Most trackers kept from one link, and the longest URL of one.
MAX_TRACKERS = 32
MAX_URL_LENGTH = 2048
MAX_NAME_LENGTH = 1024

_HEX = re.compile(r"[0-9a-fA-F]{40}")
_BASE32 = re.compile(r"[A-Za-z2-7]{32}")


class MagnetError(MetainfoError):
    """A magnet link or info hash that cannot be used; ``str()`` says why."""


@dataclass(frozen=True)
class Magnet:
    """What a magnet link (or a bare info hash) says: the swarm, and hints for finding it."""

    info_hash: bytes
    #: The display name (``dn``), if given: only a hint until the info dictionary arrives with the real one.
    name: str | None = None
    #: Tracker URLs (``tr``), in the link's order, without repeats.
    trackers: tuple[str, ...] = ()

    @property
    def info_hash_hex(self) -> str:
        return self.info_hash.hex()


def is_magnet(text: str) -> bool:
    """Does *text* look like a magnet link (whether or not it is a good one)?"""
    return text[: len(SCHEME)].lower() == SCHEME


def is_info_hash(text: str) -> bool:
    """Is *text* a bare v1 info hash: 40 hex digits or 32 base32 characters?"""
    return bool(_HEX.fullmatch(text) or _BASE32.fullmatch(text))


def parse_info_hash(text: str) -> bytes:
    """The 20 bytes of a v1 info hash written as 40 hex digits or 32 base32 characters."""
    if _HEX.fullmatch(text):
        return bytes.fromhex(text)
    if _BASE32.fullmatch(text):
        try:
            return base64.b32decode(text.upper())
        except binascii.Error:  # (the pattern admits only valid characters; kept for safety)
            raise MagnetError(f"not a base32 info hash: {_clip(text)!r}") from None
    raise MagnetError(f"not an info hash: {_clip(text)!r} (40 hex digits or 32 base32 characters)")


def parse_magnet(text: str) -> Magnet:
    """A magnet link or a bare info hash, checked; anything else raises :class:`MagnetError`."""
    if not isinstance(text, str):
        raise MagnetError(f"a magnet link is text, not {type(text).__name__}")
    text = text.strip()
    if len(text) > MAX_MAGNET_LENGTH:
        raise MagnetError(f"magnet link too long: {len(text)} characters (at most {MAX_MAGNET_LENGTH})")
    if not is_magnet(text):
        return Magnet(parse_info_hash(text))
    query = text[len(SCHEME) :]
    if not query.startswith("?"):
        raise MagnetError(f"a magnet link reads magnet:?xt=urn:btih:..., not {_clip(text)!r}")
    try:
        pairs = parse_qsl(query[1:], keep_blank_values=True, strict_parsing=False, errors="strict",
                          max_num_fields=MAX_TRACKERS * 4 + 16)
    except (ValueError, UnicodeDecodeError) as e:
        raise MagnetError(f"magnet link cannot be read: {e}") from None
    hashes: list[bytes] = []
    others: list[str] = []
    names: list[str] = []
    trackers: list[str] = []
    for key, value in pairs:
        key = key.lower()
        if key == "xt" or re.fullmatch(r"xt\.\d+", key):
            urn = value.lower()
            if urn.startswith("urn:btih:"):
                hashes.append(parse_info_hash(value[len("urn:btih:") :]))
            else:
                others.append(value.split(":", 2)[1] if value.count(":") >= 2 else value)
        elif key == "dn":
            names.append(_text(value, "dn (display name)", MAX_NAME_LENGTH))
        elif key == "tr" or re.fullmatch(r"tr\.\d+", key):
            url = _text(value, "tr (tracker URL)", MAX_URL_LENGTH)
            if url not in trackers:
                trackers.append(url)
    if not hashes:
        if any(kind.lower() == "btmh" for kind in others):
            raise MagnetError("this magnet link names a v2-only torrent (urn:btmh): p2ptorrent needs a v1 info hash"
                              " (urn:btih)")
        if others:
            raise MagnetError(f"this magnet link names no BitTorrent info hash (urn:btih), only: {_clip(', '.join(others))}")
        raise MagnetError("this magnet link has no xt=urn:btih:<info hash>")
    if len(set(hashes)) > 1:
        raise MagnetError("this magnet link names several info hashes: use a link with one")
    if len(trackers) > MAX_TRACKERS:
        raise MagnetError(f"this magnet link lists {len(trackers)} trackers (at most {MAX_TRACKERS})")
    return Magnet(hashes[0], names[0] if names else None, tuple(trackers))


def _text(value: str, what: str, limit: int) -> str:
    if not value:
        raise MagnetError(f"empty {what} in the magnet link")
    if len(value) > limit:
        raise MagnetError(f"{what} too long: {len(value)} characters (at most {limit})")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise MagnetError(f"{what} holds control characters: {_clip(value)!r}")
    return value


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
