"""p2ptorrent: BitTorrent-style file distribution over UDP, on Twisted."""
