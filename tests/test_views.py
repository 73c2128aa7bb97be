"""The operator's screens (p2ptorrent.views) against fixed node answers: golden text, wide and narrow."""

from __future__ import annotations

import json

import pytest

from p2ptorrent.views import RateAverage, eta, percent, progress_text, rate, render_info, render_list, render_status, size
from views_samples import INFO, LIST, MIB, STATUS

LIST_120 = '''\
ID        Name              Done            Have / Size        ETA       Down           Up  Ratio  Peers  State
────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────
3f2a9c0e  ubuntu-24.04-d…  25.0%    300.0 MiB / 1.2 GiB  3 minutes  5.0 MiB/s  512.0 KiB/s   0.05      3  downloading
a1b2c3d4  big.bin           100%  100.0 MiB / 100.0 MiB          -          0    2.0 MiB/s   2.50      2  seeding
00112233  photos           25.0%    10.0 MiB / 40.0 MiB          -          -            -   0.00      0  paused
ffeeddcc  notes.txt         0.0%          0 B / 2.0 KiB          -          0            0   0.00      0  waiting for t…
4 transfers; down 5.0 MiB/s, up 2.5 MiB/s
'''

LIST_60 = '''\
Name        Done       Have        ETA       Down  State
────────────────────────────────────────────────────────────
ubuntu-2…  25.0%  300.0 MiB  3 minutes  5.0 MiB/s  download…
big.bin     100%  100.0 MiB          -          0  seeding
photos     25.0%   10.0 MiB          -          -  paused
notes.txt   0.0%        0 B          -          0  waiting …
4 transfers; down 5.0 MiB/s, up 2.5 MiB/s
'''

INFO_120 = '''\
Name       ubuntu-24.04-desktop-amd64.iso
Info hash  3f2a9c0e11d4b5a6c7d8e9f00112233445566778
State      downloading
Files      1
Done       25.0% (300.0 MiB of 1.2 GiB; pieces 1200 of 4800)
ETA        3 minutes
Rates      down 5.0 MiB/s, up 512.0 KiB/s
Uploaded   60.0 MiB (ratio 0.05)
Tracker    http://127.0.0.1:8000
Path       /srv/node_files/2/.incomplete/3f2a9c0e.part
Torrent    /srv/node_files/2/ubuntu.iso.torrent

Peers
Node  Address                            Has  Choked       From           To      Bytes  Verified
─────────────────────────────────────────────────────────────────────────────────────────────────
   1  127.0.0.1:9001                complete  no      3.0 MiB/s            0  200.0 MiB       800
   3  [2001:db8::1234:5678]:9003  900 pieces  yes     2.0 MiB/s  512.0 KiB/s  100.0 MiB       400
'''

INFO_60 = '''\
Name       ubuntu-24.04-desktop-amd64.iso
Info hash  3f2a9c0e11d4b5a6c7d8e9f00112233445566778
State      downloading
Files      1
Done       25.0% (300.0 MiB of 1.2 GiB; pieces 1200 of 4800)
ETA        3 minutes
Rates      down 5.0 MiB/s, up 512.0 KiB/s
Uploaded   60.0 MiB (ratio 0.05)
Tracker    http://127.0.0.1:8000
Path       /srv/node_files/2/.incomplete/3f2a9c0e.part
Torrent    /srv/node_files/2/ubuntu.iso.torrent

Peers
Node  Address              Has  Choked       From      Bytes
────────────────────────────────────────────────────────────
   1  127.0.0.1:9…    complete  no      3.0 MiB/s  200.0 MiB
   3  [2001:db8::…  900 pieces  yes     2.0 MiB/s  100.0 MiB
'''

STATUS_120 = '''\
Node          2 on UDP port 9002
Folder        /srv/node_files/2
Tracker       http://127.0.0.1:8000 (registered)
Seeding       1 (100.0 MiB)
Downloading   1
Held          1 paused or cancelled
Rates         down 5.0 MiB/s, up 2.0 MiB/s
Upload slots  127.0.0.1:9003
Datagrams     1000 received, 900 sent
'''

STATUS_60 = '''\
Node          2 on UDP port 9002
Folder        /srv/node_files/2
Tracker       http://127.0.0.1:8000 (registered)
Seeding       1 (100.0 MiB)
Downloading   1
Held          1 paused or cancelled
Rates         down 5.0 MiB/s, up 2.0 MiB/s
Upload slots  127.0.0.1:9003
Datagrams     1000 received, 900 sent
'''


@pytest.mark.parametrize(("render", "answer", "width", "expected"), [
    (render_list, LIST, 120, LIST_120), (render_list, LIST, 60, LIST_60),
    (render_info, INFO, 120, INFO_120), (render_info, INFO, 60, INFO_60),
    (render_status, STATUS, 120, STATUS_120), (render_status, STATUS, 60, STATUS_60),
])
def test_screens_match_their_golden_text(render, answer, width, expected) -> None:  # type: ignore[no-untyped-def]
    assert render(answer, width) == expected.rstrip("\n")


@pytest.mark.parametrize("width", [60, 72, 80, 100, 120, 200])
@pytest.mark.parametrize("render,answer", [(render_list, LIST), (render_info, INFO), (render_status, STATUS)])
def test_no_line_is_wider_than_the_terminal(render, answer, width) -> None:  # type: ignore[no-untyped-def]
    text = render(answer, width)
    assert max(len(line) for line in text.splitlines()) <= width, text


def test_the_screens_come_from_json_the_way_it_travels() -> None:
    for render, answer in ((render_list, LIST), (render_info, INFO), (render_status, STATUS)):
        assert render(json.loads(json.dumps(answer)), 100) == render(answer, 100)


def test_an_empty_list_says_how_to_start() -> None:
    assert render_list({"transfers": []}, 80).startswith("no transfers")


def test_one_unit_system_binary() -> None:
    assert [size(0), size(1023), size(1536), size(5 * MIB), size(3 * 1024 * MIB), size(None)] == \
        ["0 B", "1023 B", "1.5 KiB", "5.0 MiB", "3.0 GiB", "-"]
    assert [rate(0), rate(512 * 1024), rate(None)] == ["0", "512.0 KiB/s", "-"]
    assert [percent(0, 10), percent(9999, 10000), percent(10, 10), percent(0, 0)] == ["0.0%", "99.9%", "100%", "100%"]
    assert [eta(60 * MIB, MIB), eta(MIB, 0), eta(0, MIB)] == ["a minute", "-", "done"]


def test_the_rate_starts_honest_after_attaching_to_a_download_half_done() -> None:
    average = RateAverage()
    assert average.seen(100.0, 512 * MIB) is None  # 512 MiB fetched before we came: not a rate
    assert average.seen(101.0, 512 * MIB + MIB) == MIB
    steady = average.seen(102.0, 512 * MIB + 2 * MIB)
    assert steady == pytest.approx(MIB)
    faster = average.seen(103.0, 512 * MIB + 5 * MIB)
    assert faster is not None and MIB < faster < 3 * MIB  # moves towards 3 MiB/s, smoothly
    assert average.seen(103.0, 512 * MIB + 6 * MIB) == faster  # no time passed: no new rate


def test_the_progress_words_use_the_same_units() -> None:
    assert progress_text(12 * MIB, 100 * MIB, 2 * MIB, 3) == "12.0 MiB / 100.0 MiB, 2.0 MiB/s, ETA 44 seconds, 3 peers"
    assert progress_text(0, None, None, 1) == "0 B, - /s, 1 peer"


def test_status_says_the_rate_limits() -> None:
    from p2ptorrent.views import render_status

    text = render_status({"node_id": 2, "udp_port": 6881, "limits": {"upload": 20 * 2**20, "download": 0}}, 80)
    assert "Limits        up 20.0 MiB/s, down none" in text
    assert "Limits" not in render_status({"node_id": 2, "udp_port": 6881}, 80)


def test_info_shows_each_peers_rate_from_us_as_well_as_to_us() -> None:
    """Swarming: a peer we download from may download from us too; `info` gives both rates."""
    from types import SimpleNamespace

    from p2ptorrent.node.report import Stats
    from p2ptorrent.views import render_info

    a, b = ("10.0.0.1", 6881), ("10.0.0.2", 6881)
    sent: dict[object, int] = {a: 0}
    peers = {a: SimpleNamespace(node_id=1, addr=a, has=None, choked=False, bytes=0),
             b: SimpleNamespace(node_id=2, addr=b, has=[1, 0], choked=True, bytes=0)}
    transfer = SimpleNamespace(peers=peers, remaining=2)
    stats = Stats(lambda: sum(sent.values()), lambda: sent)
    for second in range(4):
        stats.mark(float(second), transfer)  # type: ignore[arg-type]
        peers[a].bytes += 3 * 2**20
        sent[a] += 2**20
    status = stats.swarm_status(transfer, 2)  # type: ignore[arg-type]
    one, two = status["peer_details"]
    assert (one["rate_from"], one["rate_to"], one["bytes_to"]) == (3 * 2**20, 2**20, 3 * 2**20)
    assert (two["rate_from"], two["rate_to"], two["bytes_to"]) == (0, 0, 0)
    text = render_info({"transfer": {"name": "x", "info_hash": "ab" * 20, "state": "downloading", "done": 1,
                                     "total": 2, **status}}, 120)
    assert "3.0 MiB/s" in text and "1.0 MiB/s" in text
