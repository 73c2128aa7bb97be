"""Which tracker a node asks about a torrent (p2ptorrent/node/trackers.py): URL mapping, BEP 12 order, failover;
where it keeps what it has with each (tracker_link.py)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from p2ptorrent.node.tracker_link import TRACKERS_DIR, link_files
from p2ptorrent.node.trackers import Failover, node_url, tracker_tiers

ME = "http://me:12345"


@pytest.mark.parametrize("url, expected", [
    ("http://h:1/announce", "http://h:1"),
    ("http://h:1/announce/", "http://h:1"),
    ("https://h:1/announce", "https://h:1"),
    ("http://h/announce", "http://h"),
    ("http://h:1", "http://h:1"),
    ("http://h:1/", "http://h:1"),
    ("http://h:1/tracker/announce", "http://h:1/tracker"),
    ("http://h:1/tracker", "http://h:1/tracker"),
    ("http://h:1/announce.php", "http://h:1/announce.php"),  # only a trailing /announce is ours to strip
    ("http://h:1/announce?passkey=abc#x", "http://h:1"),
    ("HTTP://Tracker.Example:1/announce", "http://tracker.example:1"),
    ("http://[::1]:12345/announce", "http://[::1]:12345"),
    ("http://[2001:DB8::7]:80/announce", "http://[2001:db8::7]:80"),
    ("udp://h:1/announce", None),
    ("wss://h:1/announce", None),
    ("http://h:99999/announce", None),
    ("http://h:port/announce", None),
    ("http:///announce", None),
    ("http://user:pw@h:1/announce", None),
    ("", None),
    ("not a url", None),
])
def test_node_url_is_the_announce_url_without_announce(url: str, expected: str | None) -> None:
    assert node_url(url) == expected


def test_announce_alone_without_an_announce_list() -> None:
    assert tracker_tiers("http://a:1/announce", (), random.Random(1)) == (("http://a:1",),)
    assert tracker_tiers("udp://a:1/announce", (), random.Random(1)) == ()


def test_the_announce_list_replaces_announce_and_skips_what_a_node_cannot_speak_to() -> None:
    tiers = tracker_tiers(
        "http://ignored:1/announce",
        [["udp://a:1/announce"], ["http://b:2/announce", "udp://b:2/announce"], ["wss://c:3"]],
        random.Random(1),
    )
    assert tiers == (("http://b:2",),)


def test_duplicates_are_kept_once_where_first_seen() -> None:
    tiers = tracker_tiers("", [["http://a:1/announce", "http://A:1/announce/"], ["http://a:1", "http://b:2/announce"]],
                          random.Random(0))
    assert tiers == (("http://a:1",), ("http://b:2",))


def test_each_tier_is_shuffled_once_with_the_random_given() -> None:
    tier = [f"http://t{i}:1/announce" for i in range(8)]
    expected = list(tier)
    random.Random(42).shuffle(expected)
    tiers = tracker_tiers("", [tier, ["http://z:1/announce"]], random.Random(42))
    assert tiers == (tuple(node_url(u) for u in expected), ("http://z:1",))
    assert tiers[0] != tuple(node_url(u) for u in tier)  # (seed 42 does shuffle eight)
    assert tracker_tiers("", [tier], random.Random(42)) == tracker_tiers("", [tier], random.Random(42))


def test_a_torrent_naming_no_usable_tracker_uses_the_configured_one() -> None:
    f = Failover(tracker_tiers("udp://a:1/announce", (), random.Random(0)), ME)
    assert not f.named
    assert f.order() == [ME] and f.current == ME
    assert f.failed(ME) is None  # nothing else to try: this attempt fails ...
    assert f.current == ME  # ... and the next one asks it again


def test_a_torrent_naming_the_configured_tracker_has_one_tracker() -> None:
    f = Failover([[ME], ["http://b:2"]], ME)
    assert f.order() == [ME, "http://b:2"]  # in its place, not appended a second time


def test_failover_walks_tiers_then_members_then_the_configured_one_and_starts_again() -> None:
    f = Failover([["http://a:1", "http://b:2"], ["http://c:3"]], ME)
    assert f.current == "http://a:1"
    assert f.failed("http://a:1") == "http://b:2"
    assert f.failed("http://b:2") == "http://c:3"
    assert f.failed("http://c:3") == ME
    assert f.failed(ME) is None
    assert f.current == "http://a:1"  # the next attempt starts from the top, every one once again
    assert f.failed("http://a:1") == "http://b:2"


def test_an_answering_tracker_moves_to_the_front_of_its_tier_and_stays_the_one_asked() -> None:
    f = Failover([["http://a:1", "http://b:2", "http://c:3"], ["http://d:4"]], ME)
    f.failed("http://a:1")
    f.failed("http://b:2")
    f.succeeded("http://c:3")
    assert f.tiers == [["http://c:3", "http://a:1", "http://b:2"], ["http://d:4"]]  # BEP 12
    assert f.current == "http://c:3"
    # When it fails, every other one is tried once before the round ends.
    assert f.failed("http://c:3") == "http://a:1"
    assert f.failed("http://a:1") == "http://b:2"
    assert f.failed("http://b:2") == "http://d:4"
    assert f.failed("http://d:4") == ME
    assert f.failed(ME) is None


def test_the_configured_tracker_answering_after_the_named_ones_failed_is_kept() -> None:
    f = Failover([["http://a:1"]], ME)
    assert f.failed("http://a:1") == ME
    f.succeeded(ME)
    assert f.current == ME and f.tiers == [["http://a:1"]]
    assert f.failed(ME) == "http://a:1"


def test_a_late_failure_of_a_tracker_already_left_points_at_the_current_one() -> None:
    f = Failover([["http://a:1"], ["http://b:2"]], ME)
    assert f.failed("http://a:1") == "http://b:2"
    f.succeeded("http://b:2")
    assert f.failed("http://a:1") == "http://b:2"  # a second request to a:1 failed late: b:2 still answers
    assert f.current == "http://b:2"


def test_each_other_tracker_keeps_its_token_and_outbox_in_files_of_its_own(tmp_path: Path) -> None:
    token_a, outbox_a = link_files(tmp_path, "http://a:1")
    token_b, outbox_b = link_files(tmp_path, "http://[::1]:1")
    assert token_a.parent == outbox_a.parent == token_b.parent == tmp_path / TRACKERS_DIR
    assert len({token_a, outbox_a, token_b, outbox_b}) == 4
    assert link_files(tmp_path, "http://a:1") == (token_a, outbox_a)  # the same after a restart
