"""What an NFSv4 client is asked to do: one frozen value shared by the connection, the session
and the security negotiation, so that a caller passes one object instead of a dozen keywords."""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass

from rpclatch.nfs4 import const as c


@dataclass(frozen=True, slots=True)
class Nfs4Options:
    """Settings of one :class:`~rpclatch.nfs4.client.Nfs4Client` (the ``rpclatch nfs`` flags).

    ``port``: the server's NFS port (RFC 7530 §3.1: 2049).
    ``minorversion``: 0 (RFC 7530) or 1 (RFC 8881).
    ``sec``: ``auto`` (the server's SECINFO preference among what we support) or one of ``sys``,
    ``krb5``, ``krb5i``, ``krb5p`` (only that one), see :func:`rpclatch.nfs4.security.allowed_flavors`.
    ``gss_target``: the server's GSS host-based service name (None: ``nfs@HOST``).
    ``timeout``: seconds one RPC may wait for its reply; ``connect_timeout``: for the TCP connect.
    ``retry_deadline``: how long NFS4ERR_GRACE / NFS4ERR_DELAY answers are retried, and how long a
    lost connection is tried again.
    ``state_protect``: ask for SP4_MACH_CRED (4.1 only, needs krb5i or krb5p; RFC 8881 §18.35).
    ``client_name``: the client owner's id string (RFC 7530 §9.1.1; None: unique per client).
    ``auto_reconnect``: send requests again on a new connection after the old one was lost.
    """

    port: int = c.NFS4_PORT
    minorversion: int = 1
    sec: str = "auto"
    gss_target: str | None = None
    timeout: float = 60.0
    connect_timeout: float = 10.0
    retry_deadline: float = 120.0
    state_protect: bool = False
    client_name: str | None = None
    auto_reconnect: bool = True

    def __post_init__(self) -> None:
        if self.minorversion not in (0, 1):
            raise ValueError("minorversion must be 0 or 1")

    def target_for(self, host: str) -> str:
        """The GSS target to use for ``host``."""
        return self.gss_target or f"nfs@{host}"


def unique_client_name() -> str:
    """A client owner id no other client uses: a reboot or another process must not take over
    this client's state (RFC 7530 §9.1.1, RFC 8881 §2.4)."""
    return f"rpclatch/{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
