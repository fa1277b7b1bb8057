"""Who may use the control socket: root, or the uid that owns the socket (docs/keyd.md).

The asyncio shell reads the peer's credentials with ``SO_PEERCRED`` (``socket(7)``) when a client
connects and refuses the connection unless :func:`peer_allowed` says yes; the check itself is a
pure function so that it can be tested for any uid.
"""

from __future__ import annotations

import socket
import struct

ROOT_UID = 0


def peer_allowed(peer_uid: int, socket_owner_uid: int) -> bool:
    """True when a peer with ``peer_uid`` may talk to a daemon whose socket ``socket_owner_uid``
    owns: root always, anyone else only as the owner."""
    return peer_uid in (ROOT_UID, socket_owner_uid)


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected AF_UNIX socket (``SO_PEERCRED``)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)
