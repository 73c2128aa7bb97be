"""Several tracker processes on one TCP port (SO_REUSEPORT), the kernel spreading connections over them.

With the Redis store every tracker serves the same swarm, so nodes can be
given one address and any tracker behind it answers.  Linux hashes each new
connection to one of the listening sockets; a tracker that stops leaves the
others to take the new connections.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from zope.interface import implementer


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """A TCP server endpoint whose socket is opened with SO_REUSEPORT (and SO_REUSEADDR)."""

    def __init__(self, reactor: Any, host: str, port: int, backlog: int = 511) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.backlog = backlog

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.host, self.port))
            sock.listen(self.backlog)
            sock.setblocking(False)
            port = self.reactor.adoptStreamPort(sock.fileno(), family, factory)
        except OSError as e:
            return fail(CannotListenError(self.host, self.port, e))
        finally:
            sock.close()  # the reactor's port holds its own copy of the descriptor
        return succeed(port)


def datagram_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A non-blocking UDP socket bound to host:port (with *reuse_port*, SO_REUSEPORT: trackers sharing a TCP
    port share its UDP twin too; Linux sends each client address to one of them); OSError if it cannot bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
