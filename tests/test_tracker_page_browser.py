"""The tracker's web page in a real headless browser: the distribution's Chromium, driven by Playwright.

A real `twistd -n p2ptracker` runs; nodes join by POSTing REGISTER and OWN as
nodes do (docs/tracker-http.md).  The page must list them, follow a node that
joins later by its own refresh (the test never reloads it), and show a file
name that is an HTML payload as text, with no script run.  A screenshot is
written next to the test's files (and to $TRACKER_PAGE_SCREENSHOT when set:
that is how docs/tracker-page.png is made).
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

import daemonkit
from p2ptorrent.procs import Daemons, free_port

#: The payload: an image whose error handler and a script element would each set the flag.
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>.iso'
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
#: Generous: a loaded machine (a page refreshes every second, so this is many refreshes).
WAIT_MS = 30_000


@pytest.fixture
def tracker(tmp_path: Path) -> Iterator[int]:
    d = Daemons(tmp_path, fail=pytest.fail, search_path=False)
    port = free_port()
    try:
        daemonkit.start_tracker(d, port, 30.0)
        yield port
    finally:
        d.stop(grace=5)


@pytest.fixture
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is not installed: .ci/run installs it (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def post(port: int, doc: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=json.dumps(doc).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
    assert answer["ok"] is True, answer
    return answer


def join(port: int, node_id: int) -> str:
    return str(post(port, {"mode": 0, "node_id": node_id, "port": 9000 + node_id})["token"])


def own(port: int, node_id: int, token: str, info_hash: str, name: str, length: int, **progress: int) -> None:
    post(port, {"mode": 1, "node_id": node_id, "token": token, "info_hash": info_hash, "name": name,
                "length": length, **progress})


def test_the_page_lists_the_swarm_refreshes_itself_and_shows_hostile_names_as_text(
    tracker: int, browser: Any, tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    port = tracker
    t1, t2 = join(port, 1), join(port, 2)
    own(port, 1, t1, "ab" * 20, "ubuntu-24.04-desktop-amd64.iso", 6_114_656_256)
    own(port, 2, t2, "ab" * 20, "ubuntu-24.04-desktop-amd64.iso", 6_114_656_256, have=900, pieces=2916)
    own(port, 2, t2, "cd" * 20, HOSTILE, 3 << 20)

    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(f"http://127.0.0.1:{port}/?refresh=1")
    nodes, files = page.locator("#nodes"), page.locator("#files")
    expect(nodes).to_contain_text("127.0.0.1:9001")
    expect(nodes).to_contain_text("127.0.0.1:9002")
    expect(files).to_contain_text("ubuntu-24.04-desktop-amd64.iso")
    expect(files).to_contain_text("5.7 GiB")
    expect(files).to_contain_text("3.0 MiB")
    # The payload is there as text, visible, and did nothing.
    expect(files.get_by_text(HOSTILE, exact=True)).to_be_visible()
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#files img, #files script, #events img, #events script").count() == 0

    # A node joins and announces a file: the page shows it by its own refresh.
    t3 = join(port, 3)
    own(port, 3, t3, "ef" * 20, "debian-12.iso", 658_505_728)
    expect(nodes).to_contain_text("127.0.0.1:9003", timeout=WAIT_MS)
    expect(files).to_contain_text("debian-12.iso", timeout=WAIT_MS)
    expect(page.locator("#node-total")).to_have_text("3", timeout=WAIT_MS)
    expect(page.locator("#events")).to_contain_text("node 3 joined from 127.0.0.1:9003", timeout=WAIT_MS)
    expect(files.get_by_text(HOSTILE, exact=True)).to_be_visible()
    assert page.evaluate("window.__pwned") is None

    shot = tmp_path / "tracker-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    wanted = os.environ.get("TRACKER_PAGE_SCREENSHOT")
    if wanted:
        shutil.copyfile(shot, wanted)
    print(f"screenshot: {shot}")

    # A file's info hash leads to its owners, the partial one with its progress.
    page.get_by_role("link", name="ab" * 20).click()
    owners = page.locator("#owners")
    expect(owners).to_contain_text("127.0.0.1:9001")
    expect(owners).to_contain_text("900 of 2916 pieces")
    expect(owners).to_contain_text("30.9 %")
    expect(page.locator("h1")).to_have_text("ubuntu-24.04-desktop-amd64.iso")
