"""Fixed node answers for the golden tests of p2ptorrent.views (and the CLI's rendering of them)."""

from __future__ import annotations

from typing import Any

MIB = 1024 * 1024

LIST: dict[str, Any] = {"transfers": [
    {"info_hash": "3f2a9c0e11d4b5a6c7d8e9f00112233445566778", "name": "ubuntu-24.04-desktop-amd64.iso",
     "state": "downloading", "done": 300 * MIB, "total": 1200 * MIB, "download_rate": 5 * MIB,
     "upload_rate": 512 * 1024, "uploaded": 60 * MIB, "peers": 3, "files": 1},
    {"info_hash": "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678", "name": "big.bin", "state": "seeding",
     "done": 100 * MIB, "total": 100 * MIB, "download_rate": 0, "upload_rate": 2 * MIB, "uploaded": 250 * MIB,
     "peers": 2, "files": 1},
    {"info_hash": "0011223344556677889900aabbccddeeff001122", "name": "photos", "state": "paused",
     "done": 10 * MIB, "total": 40 * MIB, "download_rate": None, "upload_rate": None, "uploaded": 0,
     "peers": 0, "files": 12},
    {"info_hash": "ffeeddccbbaa00998877665544332211ffeeddcc", "name": "notes.txt",
     "state": "waiting for the tracker", "done": 0, "total": 2048, "download_rate": 0, "upload_rate": 0,
     "uploaded": 0, "peers": 0, "files": 1},
]}

INFO: dict[str, Any] = {"transfer": {
    **LIST["transfers"][0], "detail": "downloading", "pieces": 1200, "pieces_total": 4800,
    "tracker": "http://127.0.0.1:8000", "path": "/srv/node_files/2/.incomplete/3f2a9c0e.part",
    "torrent": "/srv/node_files/2/ubuntu.iso.torrent", "resumed_bytes": 0,
    "peer_details": [
        {"node_id": 1, "address": "127.0.0.1:9001", "complete": True, "pieces": 4800, "choked_us": False,
         "bytes_from": 200 * MIB, "pieces_from": 800, "rate_from": 3 * MIB, "rate_to": 0},
        {"node_id": 3, "address": "[2001:db8::1234:5678]:9003", "complete": False, "pieces": 900,
         "choked_us": True, "bytes_from": 100 * MIB, "pieces_from": 400, "rate_from": 2 * MIB,
         "rate_to": 512 * 1024},
    ],
}}

STATUS: dict[str, Any] = {
    "node_id": 2, "udp_port": 9002, "folder": "/srv/node_files/2", "tracker": "http://127.0.0.1:8000",
    "registered": True, "tracker_problem": None, "pending_announcements": 0, "trackers": [],
    "seeding": [{"name": "big.bin", "info_hash": "a1b2", "length": 100 * MIB, "files": 1, "uploaded": 0,
                 "tracker": "http://127.0.0.1:8000"}],
    "upload_slots": ["127.0.0.1:9003"],
    "downloading": [{"name": "u.iso", "download_rate": 5 * MIB}], "held": [{"name": "photos"}],
    "upload_rate": 2 * MIB,
    "datagrams": {"received": 1000, "sent": 900}, "batching": {"gso": False, "gro": False},
}
