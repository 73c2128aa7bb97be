"""twistd plugins for p2ptorrent: `twistd p2ptracker` and `twistd p2pnode`.

Only ServiceMakers with string module paths live here: importing this file
must not import the reactor (twistd imports every plugin to build its cache).
"""

from twisted.application.service import ServiceMaker

p2ptracker = ServiceMaker(
    "p2ptorrent tracker",
    "p2ptorrent.tracker.tap",
    "The p2ptorrent tracker: a Klein web app that ranks file owners.",
    "p2ptracker",
)

p2pnode = ServiceMaker(
    "p2ptorrent node",
    "p2ptorrent.node.tap",
    "A p2ptorrent peer node: seeds and downloads files over UDP.",
    "p2pnode",
)
