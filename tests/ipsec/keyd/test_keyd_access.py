"""Who may use the control socket."""

from __future__ import annotations

import os
import socket

from rpclatch.ipsec.keyd.access import peer_allowed, peer_uid


def test_root_and_owner_allowed_others_refused() -> None:
    assert peer_allowed(0, 1000)
    assert peer_allowed(1000, 1000)
    assert not peer_allowed(1001, 1000)
    assert not peer_allowed(1000, 0)


def test_peer_uid_reads_so_peercred() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        assert peer_uid(left) == os.getuid()
