"""Magnet links and bare info hashes: what a download can start from without a .torrent."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2ptorrent.magnet import Magnet, MagnetError, is_info_hash, is_magnet, parse_magnet
from p2ptorrent.metainfo import MetainfoError

H = bytes(range(20))
HEX = H.hex()
B32 = base64.b32encode(H).decode()


def test_bare_hex_and_base32_info_hashes() -> None:
    assert parse_magnet(HEX) == Magnet(H)
    assert parse_magnet(HEX.upper()) == Magnet(H)
    assert parse_magnet(B32) == Magnet(H)
    assert parse_magnet(B32.lower()) == Magnet(H)
    assert is_info_hash(HEX) and is_info_hash(B32) and not is_info_hash(HEX[:-1])


def test_a_full_magnet_link() -> None:
    link = (f"magnet:?xt=urn:btih:{HEX}&dn=my%20file.bin&tr=http%3A%2F%2Ft1%3A8080%2Fannounce"
            "&tr=udp://t2:6969&tr=udp://t2:6969&xl=123&ws=http://w")
    assert is_magnet(link)
    assert parse_magnet(link) == Magnet(H, "my file.bin", ("http://t1:8080/announce", "udp://t2:6969"))


def test_base32_and_upper_case_in_a_link() -> None:
    assert parse_magnet(f"MAGNET:?XT=URN:BTIH:{B32}").info_hash == H
    assert parse_magnet(f"magnet:?dn=x&xt=urn:btih:{HEX}").name == "x"


def test_a_hybrid_link_uses_its_v1_hash() -> None:
    link = f"magnet:?xt=urn:btih:{HEX}&xt=urn:btmh:1220{'ab' * 32}"
    assert parse_magnet(link).info_hash == H


@pytest.mark.parametrize(
    ("link", "says"),
    [
        (f"magnet:?xt=urn:btmh:1220{'ab' * 32}", "v2-only"),
        ("magnet:?xt=urn:sha1:ABCDEF", "no BitTorrent info hash"),
        ("magnet:?dn=x", "no xt=urn:btih"),
        ("magnet:xt=urn:btih:" + HEX, "magnet:?xt"),
        (f"magnet:?xt=urn:btih:{HEX[:-1]}", "not an info hash"),
        (f"magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{'00' * 20}", "several info hashes"),
        (f"magnet:?xt=urn:btih:{HEX}&dn=", "empty dn"),
        (f"magnet:?xt=urn:btih:{HEX}&tr=a%0Ab", "control characters"),
        (f"magnet:?xt=urn:btih:{HEX}&dn=%FF", "cannot be read"),
        ("magnet:?xt=urn:btih:" + HEX + "&tr=x" * 5000, "too long"),
        ("not a hash", "not an info hash"),
        ("", "not an info hash"),
    ],
)
def test_refused_with_a_clear_message(link: str, says: str) -> None:
    with pytest.raises(MagnetError, match=says):
        parse_magnet(link)


def test_a_magnet_error_is_a_metainfo_error() -> None:
    with pytest.raises(MetainfoError):
        parse_magnet("magnet:?")


def test_too_many_trackers() -> None:
    link = f"magnet:?xt=urn:btih:{HEX}" + "".join(f"&tr=udp://t{i}" for i in range(40))
    with pytest.raises(MagnetError, match="trackers"):
        parse_magnet(link)


@given(st.text(max_size=300))
def test_any_text_is_parsed_or_refused_cleanly(text: str) -> None:
    try:
        m = parse_magnet(text)
    except MagnetError:
        return
    assert len(m.info_hash) == 20


@given(st.lists(st.sampled_from(["xt=urn:btih:" + HEX, "dn=a", "tr=u", "&", "=", "%", "%zz", "xt=", "tr=",
                                 "xt=urn:btmh:", "+", "\x00", "é"]), max_size=12))
def test_hostile_queries_are_parsed_or_refused_cleanly(parts: list[str]) -> None:
    try:
        m = parse_magnet("magnet:?" + "".join(parts))
    except MagnetError:
        return
    assert m.info_hash == H
    assert all(t and t.isprintable() for t in m.trackers)
