"""The tracker for BitTorrent clients (issue 14): BEP 3 announce, BEP 23 compact, BEP 7 peers6, BEP 48 scrape.

The decisions (:class:`ClientSwarms`) are driven directly with ``now``; the routes through StubTreq, as real
twisted.web requests with the query strings real clients send (binary info hashes, percent-encoded).
"""

from __future__ import annotations

import random
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from fastbencode import bdecode
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.web.http import parse_qs

from p2ptorrent.config import Config, ConfigError
from p2ptorrent.tracker.bep import (
    MAX_SCRAPE_HASHES,
    Announce,
    BepRefusal,
    ClientSwarms,
    packed_address,
    parse_announce,
    parse_scrape,
)
from trackerkit import Harness, MemoryStore, result

IH = bytes(range(20))
IH2 = b"\xff" * 20


def swarms(**kw: Any) -> ClientSwarms:
    options: dict[str, Any] = dict(interval=1800, min_interval=900, peer_timeout=3660, numwant=50, max_numwant=200,
                                   max_peers=1000)
    options.update(kw)
    return ClientSwarms(random.Random(5), **options)


def peer_id(i: int) -> bytes:
    return b"-LT2000-" + b"%012d" % i


def ann(i: int, *, host: str = "10.0.0.1", left: int = 100, event: str = "", numwant: int | None = None,
        info_hash: bytes = IH, port: int | None = None) -> Announce:
    return Announce(info_hash, peer_id(i), host, port or 6881 + i, left, event, numwant)


# ---------------------------------------------------------------- the decisions


def test_a_client_is_given_the_others_and_counts_seeds_and_leechers() -> None:
    s = swarms()
    first = s.announce(ann(1, left=0, event="started"), now=0.0)
    assert (first.complete, first.incomplete, first.peers) == (1, 0, [])
    second = s.announce(ann(2, event="started"), now=1.0)
    assert (second.complete, second.incomplete) == (1, 1)
    assert [(p.host, p.port, p.peer_id) for p in second.peers] == [("10.0.0.1", 6882, peer_id(1))]
    assert (second.interval, second.min_interval) == (1800, 900)


def test_completed_counts_once_and_a_stopped_client_is_forgotten() -> None:
    s = swarms()
    s.announce(ann(1, event="started"), 0.0)
    s.announce(ann(2, left=0, event="started"), 0.0)
    s.announce(ann(1, left=0, event="completed"), 1.0)
    s.announce(ann(1, left=0, event="completed"), 2.0)  # sent again: still one download
    entry = s.scrape([IH])[IH]
    assert (entry.complete, entry.downloaded, entry.incomplete) == (2, 1, 0)
    gone = s.announce(ann(2, left=0, event="stopped"), 3.0)
    assert (gone.complete, gone.incomplete, gone.peers) == (1, 0, [])
    assert len(s) == 1 and s.scrape([IH2])[IH2].complete == 0


def test_numwant_is_honoured_up_to_the_cap_and_never_includes_the_asker() -> None:
    s = swarms(max_numwant=30)
    for i in range(100):
        s.announce(ann(i), 0.0)
    assert len(s.announce(ann(7, numwant=10), 1.0).peers) == 10
    assert len(s.announce(ann(7), 1.0).peers) == 50  # default: NUMWANT
    big = s.announce(ann(7, numwant=10**6), 1.0).peers
    assert len(big) == 30 and peer_id(7) not in {p.peer_id for p in big}
    assert len({p.peer_id for p in big}) == 30
    assert s.announce(ann(7, numwant=0), 1.0).peers == []


def test_draws_reach_every_peer() -> None:
    s = swarms()
    for i in range(200):
        s.announce(ann(i), 0.0)
    seen: set[bytes] = set()
    for _ in range(100):
        seen |= {p.peer_id for p in s.announce(ann(0), 1.0).peers}
    assert seen == {peer_id(i) for i in range(1, 200)}


def test_ipv6_clients_come_first_to_ipv6_askers_and_ipv4_ones_fill_the_rest() -> None:
    s = swarms()
    s.announce(ann(1, host="10.0.0.1"), 0.0)
    s.announce(ann(2, host="2001:db8::2"), 0.0)
    peers = s.announce(ann(3, host="2001:db8::3", numwant=1), 1.0).peers
    assert [p.host for p in peers] == ["2001:db8::2"]
    both = s.announce(ann(3, host="2001:db8::3"), 1.0).peers
    assert [p.host for p in both] == ["2001:db8::2", "10.0.0.1"]


def test_compact_answers_fill_from_the_other_family_and_never_name_the_asker() -> None:
    s = swarms()
    for i in range(3):
        s.announce(ann(i, host=f"10.0.0.{i + 1}"), 0.0)
    for i in range(3, 5):
        s.announce(ann(i, host=f"2001:db8::{i}", left=0), 0.0)
    seeds, leechers, v4, v6 = s.announce_packed(ann(0, host="10.0.0.1", numwant=10), 1.0)
    assert (seeds, leechers) == (2, 3)
    assert sorted(v4[k:k + 6] for k in range(0, len(v4), 6)) == sorted(
        packed_address(f"10.0.0.{i + 1}", 6881 + i) for i in (1, 2))
    assert sorted(v6[k:k + 18] for k in range(0, len(v6), 18)) == sorted(
        packed_address(f"2001:db8::{i}", 6881 + i) for i in (3, 4))
    _, _, v4, v6 = s.announce_packed(ann(0, host="10.0.0.1", numwant=3), 2.0)
    assert (len(v4), len(v6)) == (12, 18)
    _, _, v4, v6 = s.announce_packed(ann(3, host="2001:db8::3", left=0, numwant=2), 3.0)
    assert (len(v4), v6) == (6, packed_address("2001:db8::4", 6885))
    assert s.announce_packed(ann(0, host="10.0.0.1", event="stopped"), 4.0)[2:] == (b"", b"")


def test_a_dual_stack_client_is_given_at_both_of_its_addresses() -> None:
    """libtorrent announces once per listen address with one peer id: each address is a peer."""
    s = swarms()
    s.announce(ann(1, host="10.0.0.1"), 0.0)
    s.announce(ann(1, host="2001:db8::1", left=0), 1.0)
    peers = s.announce(ann(2), 2.0).peers
    assert sorted(p.host for p in peers) == ["10.0.0.1", "2001:db8::1"]
    assert (s.scrape([IH])[IH].complete, s.scrape([IH])[IH].incomplete) == (1, 2)


def test_a_client_restarted_on_the_same_address_replaces_its_old_record() -> None:
    """Found with Transmission restarted on its port: a new peer id, the same address; it must not be
    handed out twice (nor counted twice) until the old record expires an hour later."""
    s = swarms()
    s.announce(ann(1, host="10.0.0.1", port=6892), 0.0)
    s.announce(Announce(IH, b"R" * 20, "10.0.0.1", 6892, 0, "started", None), 1.0)
    [p] = s.announce(ann(2), 2.0).peers
    assert (p.host, p.port, p.peer_id) == ("10.0.0.1", 6892, b"R" * 20)
    entry = s.scrape([IH])[IH]
    assert (entry.complete, entry.incomplete, len(s)) == (1, 1, 2)
    _, _, v4, _ = s.announce_packed(ann(2), 3.0)
    assert v4 == packed_address("10.0.0.1", 6892)


def test_silent_clients_expire_oldest_first_within_the_budget() -> None:
    s = swarms(peer_timeout=100)
    for i in range(10):
        s.announce(ann(i, info_hash=bytes([i]) * 20), float(i))
    s.announce(ann(0, info_hash=b"\x00" * 20), 50.0)  # announced again: kept
    assert s.expire(now=105.0, budget=3) == (3, True)  # 1, 2, 3 (silent since 1..3)
    assert s.expire(now=105.0, budget=100) == (1, False)  # 4
    assert len(s) == 6 and s.torrents() == 6
    assert s.expire(now=1000.0, budget=100) == (6, False)
    assert len(s) == 0 and s.torrents() == 0


def test_the_tracker_refuses_clients_beyond_its_cap_but_serves_known_ones() -> None:
    s = swarms(max_peers=2)
    s.announce(ann(1), 0.0)
    s.announce(ann(2, info_hash=IH2), 0.0)
    with pytest.raises(BepRefusal, match="as many peers"):
        s.announce(ann(3), 0.0)
    assert s.announce(ann(1), 1.0).incomplete == 1
    s.announce(ann(1, event="stopped"), 2.0)
    assert s.announce(ann(3), 3.0).incomplete == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2), st.sampled_from(["", "started", "completed", "stopped"]),
                          st.booleans(), st.booleans()), max_size=60))
def test_counts_match_a_recount_after_any_announces(ops: list[tuple[int, int, str, bool, bool]]) -> None:
    s = swarms()
    # A client is its address (a dual-stack one is two), holding the peer id it last announced with.
    model: dict[tuple[bytes, str], tuple[bytes, bool]] = {}
    for t, (who, torrent, event, seed, v6) in enumerate(ops):
        info_hash = bytes([torrent]) * 20
        host = f"2001:db8::{who + 1}" if v6 else f"10.0.0.{who + 1}"
        s.announce(Announce(info_hash, peer_id(who + 10 * t), host, 7000, 0 if seed else 5, event, None), float(t))
        if event == "stopped":
            model.pop((info_hash, host), None)
        else:
            model[(info_hash, host)] = (peer_id(who + 10 * t), seed)
    assert len(s) == len(model)
    for torrent in range(3):
        info_hash = bytes([torrent]) * 20
        mine = {host: v for (h, host), v in model.items() if h == info_hash}
        entry = s.scrape([info_hash])[info_hash]
        assert (entry.complete, entry.incomplete) == (sum(v[1] for v in mine.values()), sum(not v[1] for v in mine.values()))
        asker = s.announce(Announce(info_hash, b"x" * 20, "10.9.9.9", 1, 1, "", 1000), 999.0).peers
        assert {(p.peer_id, p.host) for p in asker} == {(v[0], host) for host, v in mine.items()}
        s.announce(Announce(info_hash, b"x" * 20, "10.9.9.9", 1, 1, "stopped", None), 999.0)


# ---------------------------------------------------------------- parsing the query


def args(query: str | bytes) -> dict[bytes, list[bytes]]:
    """The query's arguments as twisted.web decodes them (binary-safe, unlike urllib's parse_qs on bytes)."""
    raw = query.encode() if isinstance(query, str) else query
    return parse_qs(raw, keep_blank_values=True)


def query(**fields: Any) -> bytes:
    base: dict[str, Any] = {"info_hash": IH, "peer_id": peer_id(1), "port": 6881, "uploaded": 0, "downloaded": 0,
                            "left": 10}
    base.update(fields)
    return urllib.parse.urlencode({k: v for k, v in base.items() if v is not None}).encode()


def test_a_query_as_libtorrent_sends_it() -> None:
    req = parse_announce(args(query(event="started", numwant=80, compact=1, no_peer_id=1, key="ab12", ip="6.6.6.6")),
                         "192.0.2.7")
    assert req == Announce(IH, peer_id(1), "192.0.2.7", 6881, 10, "started", 80, True, True)
    assert parse_announce(args(query(numwant=-1)), "192.0.2.7").numwant is None  # BEP 15's "default"
    assert parse_announce(args(query(compact=0)), "192.0.2.7").compact is False


@pytest.mark.parametrize("fields, words", [
    (dict(info_hash=b"short"), "info_hash must be 20 bytes"),
    (dict(info_hash=None), "missing info_hash"),
    (dict(peer_id=b"x" * 21), "peer_id must be 20 bytes"),
    (dict(port=0), "port must be 1..65535"),
    (dict(port="80x"), "port must be a whole number"),
    (dict(left=-1), "left must be"),
    (dict(left=None), "missing left"),
    (dict(left="1" * 40), "left must be a whole number"),
    (dict(event="exploded"), "unknown event"),
    (dict(numwant="-5"), "numwant must be"),
    (dict(uploaded="--1"), "uploaded must be a whole number"),
])
def test_bad_queries_are_refused_with_a_reason(fields: dict[str, Any], words: str) -> None:
    with pytest.raises(BepRefusal, match=words):
        parse_announce(args(query(**fields)), "192.0.2.7")


def test_a_field_given_twice_is_refused() -> None:
    with pytest.raises(BepRefusal, match="port given 2 times"):
        parse_announce(args(query() + b"&port=7000"), "192.0.2.7")


def test_scrape_takes_one_to_74_binary_hashes() -> None:
    assert parse_scrape(args(b"info_hash=" + urllib.parse.quote_from_bytes(IH2).encode())) == [IH2]
    with pytest.raises(BepRefusal, match="at least one info_hash"):
        parse_scrape(args(b""))
    with pytest.raises(BepRefusal, match="20 bytes"):
        parse_scrape(args(b"info_hash=%ff%fe"))
    many = b"&".join(b"info_hash=" + urllib.parse.quote_from_bytes(bytes([i]) * 20).encode()
                     for i in range(MAX_SCRAPE_HASHES + 1))
    with pytest.raises(BepRefusal, match=f"at most {MAX_SCRAPE_HASHES}"):
        parse_scrape(args(many))


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from([b"info_hash", b"peer_id", b"port", b"left", b"event", b"numwant", b"compact",
                                        b"uploaded", b"\xff"]),
                       st.lists(st.binary(max_size=40), min_size=0, max_size=3)))
def test_any_query_parses_or_is_refused_with_a_reason(fields: dict[bytes, list[bytes]]) -> None:
    try:
        req = parse_announce(fields, "192.0.2.7")
    except BepRefusal as e:
        assert str(e)
    else:
        assert len(req.info_hash) == len(req.peer_id) == 20 and 1 <= req.port <= 65535 and req.left >= 0


# ---------------------------------------------------------------- over HTTP


class Bt(Harness):
    def get(self, path: str, q: bytes) -> tuple[int, dict[bytes, Any], Any]:
        response = result(self.stub.request("GET", f"http://tracker.example:12345/{path}?{q.decode()}"))
        body = result(response.content())
        return response.code, bdecode(body), response


def harness(tmp_path: Path, **settings_: Any) -> Bt:
    return Bt(tmp_path, Config().replace(**settings_), MemoryStore())


def test_announce_answers_bencoded_compact_peers_and_counts(tmp_path: Path) -> None:
    bt = harness(tmp_path)
    code, first, response = bt.get("announce", query(peer_id=peer_id(1), port=6881, left=0, event="started"))
    assert code == 200 and response.headers.getRawHeaders(b"content-type") == [b"text/plain"]
    assert first == {b"interval": 1800, b"min interval": 900, b"complete": 1, b"incomplete": 0, b"peers": b""}
    _, second, _ = bt.get("announce", query(peer_id=peer_id(2), port=7000, event="started"))
    # StubTreq's requests come from 127.0.0.1.
    assert second[b"peers"] == packed_address("127.0.0.1", 6881) and (second[b"complete"], second[b"incomplete"]) == (1, 1)
    _, listed, _ = bt.get("announce", query(peer_id=peer_id(2), port=7000, compact=0))
    assert listed[b"peers"] == [{b"ip": b"127.0.0.1", b"port": 6881, b"peer id": peer_id(1)}]
    _, bare, _ = bt.get("announce", query(peer_id=peer_id(2), port=7000, compact=0, no_peer_id=1))
    assert bare[b"peers"] == [{b"ip": b"127.0.0.1", b"port": 6881}]


def test_scrape_counts_clients_only(tmp_path: Path) -> None:
    bt = harness(tmp_path)
    bt.join(1)  # a node: not a BitTorrent client
    bt.get("announce", query(peer_id=peer_id(1), left=0))
    bt.get("announce", query(peer_id=peer_id(2), port=6882, left=5))
    bt.get("announce", query(peer_id=peer_id(2), port=6882, left=0, event="completed"))
    q = b"info_hash=" + urllib.parse.quote_from_bytes(IH).encode() + b"&info_hash=" + urllib.parse.quote_from_bytes(IH2).encode()
    code, doc, _ = bt.get("scrape", q)
    assert code == 200 and doc == {b"files": {
        IH: {b"complete": 2, b"downloaded": 1, b"incomplete": 0},
        IH2: {b"complete": 0, b"downloaded": 0, b"incomplete": 0},
    }}


@pytest.mark.parametrize("path, q, words", [
    ("announce", b"", b"missing info_hash"),
    ("announce", b"info_hash=%00&peer_id=x&port=1&left=0", b"info_hash must be 20 bytes"),
    ("scrape", b"", b"at least one info_hash"),
])
def test_refusals_are_200_with_a_failure_reason_and_change_nothing(tmp_path: Path, path: str, q: bytes, words: bytes) -> None:
    bt = harness(tmp_path)
    code, doc, _ = bt.get(path, q)
    assert code == 200 and list(doc) == [b"failure reason"] and words in doc[b"failure reason"]
    assert len(bt.web.clients) == 0


def test_clients_are_never_given_to_nodes_nor_nodes_to_clients(tmp_path: Path) -> None:
    bt = harness(tmp_path)
    token = bt.join(1)
    bt.ok({"mode": 1, "node_id": 1, "token": token, "info_hash": IH.hex(), "name": "f", "length": 5})
    _, doc, _ = bt.get("announce", query(peer_id=peer_id(2)))
    assert (doc[b"peers"], doc[b"complete"]) == (b"", 0)
    t3 = bt.join(3)
    answer = bt.ok({"mode": 2, "node_id": 3, "token": t3, "info_hash": IH.hex()})
    assert [o["node_id"] for o in answer["owners"]] == [1]


def test_the_liveness_check_expires_silent_clients(tmp_path: Path) -> None:
    bt = harness(tmp_path, BT_ANNOUNCE_INTERVAL=10)
    bt.get("announce", query(peer_id=peer_id(1)))
    bt.clock.advance(50)
    bt.get("announce", query(peer_id=peer_id(2), port=6882))
    bt.clock.advance(40)  # client 1 silent 90 s > 2 x 10 + 60; client 2 for 40 s
    bt.web.check_liveness()
    assert len(bt.web.clients) == 1
    _, doc, _ = bt.get("announce", query(peer_id=peer_id(3), port=6883))
    assert doc[b"incomplete"] == 2


def test_bt_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="TRACKER_UDP_PORT"):
        Config().replace(TRACKER_UDP_PORT=70000)
    with pytest.raises(ConfigError, match="BT_ANNOUNCE_INTERVAL"):
        Config().replace(BT_ANNOUNCE_INTERVAL=1)
    with pytest.raises(ConfigError, match="BT_MAX_NUMWANT"):
        Config().replace(BT_MAX_NUMWANT=0)


def test_a_bug_in_announce_is_a_failure_reason_and_logged_never_a_5xx(tmp_path: Path, monkeypatch: Any) -> None:
    bt = harness(tmp_path)
    events: list[dict[str, Any]] = []
    from twisted.logger import globalLogPublisher

    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(bt.web.clients, "announce_packed", broken)
    monkeypatch.setattr(bt.web.clients, "scrape", broken)
    globalLogPublisher.addObserver(events.append)
    try:
        code, doc, _ = bt.get("announce", query())
        code2, doc2, _ = bt.get("scrape", b"info_hash=" + urllib.parse.quote_from_bytes(IH).encode())
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert (code, doc) == (code2, doc2) == (200, {b"failure reason": b"internal error in the tracker"})
    assert sum(1 for e in events if e.get("log_failure") is not None) == 2
