"""IPv6 (issue 14): nodes reach a tracker at an IPv6 address, and the tracker answers IPv6 peers.

The real tap service listens on ::1 with the real reactor; nodes speak to it through treq as they do in
`twistd p2pnode --tracker '[::1]:PORT'` (which failed with "InvalidCodepoint ... '::1' not allowed").
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import pytest
import pytest_twisted
from fastbencode import bdecode

from p2ptorrent.config import Config
from p2ptorrent.node.tracker_client import tracker_post_url, treq_url
from p2ptorrent.tracker import tap
from p2ptorrent.tracker.bep import packed_address

H = "ab" * 20


@pytest.mark.parametrize("base, text", [
    ("http://[::1]:12345", "http://[::1]:12345/"),
    ("http://[2001:db8::7]:8080/", "http://[2001:db8::7]:8080/"),
    ("http://127.0.0.1:12345", "http://127.0.0.1:12345/"),
    ("http://tracker.example:12345", "http://tracker.example:12345/"),
])
def test_the_post_url_survives_treqs_conversion_to_a_uri(base: str, text: str) -> None:
    url = tracker_post_url(base)
    as_uri = url if isinstance(url, str) else url.to_uri().to_text()
    assert as_uri == text


@pytest_twisted.ensureDeferred
async def test_nodes_and_clients_use_a_tracker_at_an_ipv6_address(tmp_path: Path) -> None:
    from treq.client import HTTPClient
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool

    from p2ptorrent.node.tracker_client import TrackerClient

    options = tap.Options()
    options.parseOptions(["--tracker-db-dir", str(tmp_path / "db"), "--logs-dir", str(tmp_path / "logs"),
                          "--host", "::1", "--port", "0", "--set", "TRACKER_UDP_PORT=-1"])
    service = tap.makeService(options, reactor=reactor)
    service.startService()
    http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    try:
        port = (await service.getServiceNamed("http").listening()).getHost().port
        base = f"http://[::1]:{port}"
        seeder = TrackerClient(http, base, reactor, Config(), 1, 9001)
        leecher = TrackerClient(http, base, reactor, Config(), 2, 9002)
        assert await seeder.register() is True and await leecher.register() is True
        await seeder.own(H, "f", 5)
        [owner] = await leecher.need(H)
        assert (owner.node_id, owner.host, owner.port) == (1, "::1", 9001)

        # A BitTorrent client over IPv6 is given IPv6 peers in peers6 (BEP 7).
        info_hash = bytes.fromhex(H)

        async def announce(peer: bytes, client_port: int) -> dict[bytes, object]:
            q = urllib.parse.urlencode({"info_hash": info_hash, "peer_id": peer, "port": client_port, "left": 0})
            response = await http.get(treq_url(f"{base}/announce?{q}"))
            return bdecode(await response.content())

        await announce(b"A" * 20, 6881)
        answer = await announce(b"B" * 20, 6882)
        assert answer[b"peers6"] == packed_address("::1", 6881) and answer[b"peers"] == b""
        assert answer[b"complete"] == 2
    finally:
        await service.stopService()
