"""Who may command a node: which control endpoint it may listen on, and who is at the other end.

Only the user the node runs as.  Three checks, each enough on its own for
the default endpoint (the command front ends themselves, and what a command
does, are in :mod:`p2ptorrent.node.control`):

1. The default endpoint is a UNIX socket, ``<node folder>/.control.sock``,
   created with mode 600 (Twisted sets the mode before it listens, so there
   is no moment when it is open to others).  No TCP port is opened for
   control unless one is asked for with ``--control``.
2. :func:`check_control_endpoint` refuses, at start, an endpoint others could
   reach: ``tcp:``/``tcp6:`` without ``interface=`` or on a non-loopback
   address, a ``unix:`` socket whose mode gives group or other any access (a
   ``unix:`` endpoint without ``mode=`` gets ``mode=600``, not Twisted's 666),
   an abstract UNIX socket, and any other endpoint type.  The setting
   ``CONTROL_ALLOW_REMOTE=1`` lifts this: then anyone who can reach the
   endpoint can command the node (keep it behind a firewall or an SSH tunnel).
3. Every connection is checked when it is accepted (:func:`peer_refusal`,
   called by :class:`~p2ptorrent.node.control.ControlProtocol`):
   on a UNIX socket the peer's uid comes from the kernel (SO_PEERCRED); on
   loopback TCP from the kernel's socket table (``/proc/net/tcp``, Linux);
   a peer of another uid, a TCP peer on another host, or one whose user
   cannot be told, gets ``{"ok": false, "error": "refused: ..."}`` and is
   disconnected before it can send a command.  ``CONTROL_ALLOW_REMOTE=1``
   turns this check off as well.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import stat
import struct
import sys
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from p2ptorrent.commands import ControlError, control_socket_path, split_endpoint

# ---- who is at the other end

def is_loopback(host: str) -> bool:
    """Whether *host* (an address, or "localhost") is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)


def peer_refusal(transport: Any) -> str | None:
    """Why the peer of an accepted control connection may not command this node, or None.

    The peer must run as the node's own user: on a UNIX socket the kernel
    says who it is (SO_PEERCRED); on loopback TCP the kernel's socket table
    does (Linux).  A peer that cannot be identified is refused.
    """
    peer, here = transport.getPeer(), transport.getHost()
    me = os.geteuid()
    if isinstance(peer, UNIXAddress):
        uid = _unix_peer_uid(transport)
        if uid is None:
            return None  # no SO_PEERCRED on this system: the socket's mode 600 decides
        return None if uid == me else f"user {uid} is not the node's user ({me})"
    if isinstance(peer, (IPv4Address, IPv6Address)):
        if not is_loopback(peer.host):
            return f"{peer.host} is another host"
        uid = _tcp_peer_uid(peer.host, peer.port, here.host, here.port)
        if uid is None:
            return "cannot tell which user is connecting"
        return None if uid == me else f"user {uid} is not the node's user ({me})"
    return f"unexpected kind of connection {type(peer).__name__}"


def _unix_peer_uid(transport: Any) -> int | None:
    option = getattr(socket, "SO_PEERCRED", None)
    handle = transport.getHandle() if hasattr(transport, "getHandle") else None
    if option is None or not isinstance(handle, socket.socket):
        return None
    _pid, uid, _gid = struct.unpack("3i", handle.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i")))
    return int(uid)


def _proc_address(host: str, port: int, v6: bool) -> str:
    """*host*:*port* as /proc/net/tcp (v6=False) or tcp6 writes it: each 32-bit word in host byte order."""
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if v6 and address.version == 4:
        address = ipaddress.IPv6Address(f"::ffff:{address}")
    raw = address.packed
    words = [raw[i : i + 4] for i in range(0, len(raw), 4)]
    if sys.byteorder == "little":
        words = [w[::-1] for w in words]
    return f"{b''.join(words).hex().upper()}:{port:04X}"


def _tcp_peer_uid(peer_host: str, peer_port: int, our_host: str, our_port: int, proc: str = "/proc/net") -> int | None:
    """The uid owning the TCP socket at peer_host:peer_port connected to our_host:our_port (Linux), or None."""
    for table, v6 in (("tcp", False), ("tcp6", True)):
        try:
            peer = _proc_address(peer_host, peer_port, v6)
            ours = _proc_address(our_host, our_port, v6)
            with open(f"{proc}/{table}") as f:
                lines = f.read().splitlines()[1:]
        except (OSError, ValueError):
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 7 and fields[1] == peer and fields[2] == ours:
                return int(fields[7])
    return None


# ---- endpoint strings

def check_control_endpoint(description: str, allow_remote: bool = False) -> str:
    """The control endpoint to listen on, or :class:`ControlError` saying why it is refused.

    Accepted: a ``unix:`` socket whose mode gives nobody but its owner access
    (``mode=600`` is added when none is given: Twisted's default is 666), and
    ``tcp:``/``tcp6:`` on a loopback ``interface=``.  Anything that other
    users or hosts could reach is refused unless *allow_remote* (the setting
    CONTROL_ALLOW_REMOTE=1) says the operator wants that.
    """
    kind, args, kwargs = split_endpoint(description)
    kind = kind.lower()
    hint = "(set CONTROL_ALLOW_REMOTE=1 to allow it anyway)"
    if kind == "unix":
        path = control_socket_path(description)
        if not path:
            raise ControlError(f"control endpoint {description!r} has no path")
        if path.startswith("\0"):
            if allow_remote:
                return description
            raise ControlError(f"control endpoint {description!r} is an abstract UNIX socket, which any local user"
                               f" can connect to: give a file path {hint}")
        if "mode" not in kwargs:
            return description + ":mode=600"
        try:
            mode = int(kwargs["mode"], 8)
        except ValueError:
            raise ControlError(f"control endpoint {description!r}: mode must be octal, like 600") from None
        if mode & 0o077 and not allow_remote:
            raise ControlError(f"control endpoint {description!r} would let other users command the node"
                               f" (mode {mode:03o}): use mode=600 {hint}")
        return description
    if kind in ("tcp", "tcp6"):
        interface = kwargs.get("interface", "")
        if allow_remote:
            return description
        if not interface or interface in ("0.0.0.0", "::"):
            raise ControlError(f"control endpoint {description!r} listens on every address, so other hosts could"
                               f" command the node: add interface=127.0.0.1, or use the default UNIX socket {hint}")
        if not is_loopback(interface):
            raise ControlError(f"control endpoint {description!r} listens on {interface}, which other hosts can reach:"
                               f" use interface=127.0.0.1, or the default UNIX socket {hint}")
        return description
    if allow_remote:
        return description
    raise ControlError(f"control endpoint {description!r}: only unix: sockets and tcp: on a loopback interface"
                       f" are accepted {hint}")


def clear_stale_socket(description: str) -> bool:
    """Remove a ``unix:`` endpoint's socket file left behind by a dead node.

    With ``lockfile=0`` Twisted does not clean up after a crash, and bind
    then fails with "address already in use".  A socket nobody answers on
    (ECONNREFUSED) is stale; anything else is left alone.  Returns whether a
    file was removed.
    """
    path = control_socket_path(description)
    if not path:
        return False
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as e:
        if e.errno != errno.ECONNREFUSED:
            return False
    else:
        return False  # a live node answers there
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
