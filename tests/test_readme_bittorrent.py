"""The README's "Using it with other BitTorrent clients" example, run as printed.

The Python block is read from README.md when the test runs (never copied here) and run as a program in a
folder holding ``big.iso.torrent``, made by p2ptorrent for a real `twistd p2ptracker`, while a libtorrent
session seeds the file; the program must finish and leave the identical file in ``downloads/``.  It
listens on port 6881 as printed; everything it talks to is on loopback (the tracker answers 127.0.0.1
peers, and DHT and local discovery are off in the example itself).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

from p2ptorrent.metainfo import make_torrent
from test_bittorrent_clients import Alerts, add, lt, session, tracker  # noqa: F401 - fixtures

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Using it with other BitTorrent clients"
#: A deadline on a shared machine, not an expectation (the download takes about a second).
DEADLINE = 120.0


def example() -> str:
    text = README.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    blocks = re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)
    assert len(blocks) == 1, f"the section should hold one Python example, found {len(blocks)}"
    return blocks[0]


def test_the_readme_example_downloads_a_p2ptorrent_torrent_from_a_seeding_client(
    tmp_path: Path, lt: object, tracker: int,  # noqa: F811
) -> None:
    code = example()
    seed_dir, work = tmp_path / "seed", tmp_path / "work"
    seed_dir.mkdir()
    work.mkdir()
    data = os.urandom(2 * 2**20 + 777)
    (seed_dir / "big.iso").write_bytes(data)
    _, torrent = make_torrent(seed_dir / "big.iso", f"http://127.0.0.1:{tracker}/announce")
    (work / "big.iso.torrent").write_bytes(torrent)

    seeder = session(lt)
    add(lt, seeder, work / "big.iso.torrent", seed_dir)
    try:
        result = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True,
                                timeout=DEADLINE)
    finally:
        errors = Alerts(lt, seeder).errors()
        del seeder
    assert result.returncode == 0, (result.stdout, result.stderr, errors)
    assert result.stdout.strip() == "downloaded big.iso into downloads/", result.stdout
    got = (work / "downloads" / "big.iso").read_bytes()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
