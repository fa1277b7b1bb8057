"""NFSv4-layer exceptions, split Local/Remote as every rpclatch layer (h11 style).

:class:`Nfs4RemoteError` carries the ``nfsstat4`` the server returned and the operation that failed
(RFC 7530 §15.2: COMPOUND evaluation stops at the first failing operation). :class:`Nfs4LocalError`
covers what went wrong on our side: malformed replies, unsupported security, exhausted retries.
"""

from __future__ import annotations

from rpclatch.nfs4.const import nfs_opnum4, nfsstat4
from rpclatch.rpc.errors import RpcConnectionClosed
from rpclatch.xdr import XdrError


class Nfs4Error(Exception):
    """Base of every NFSv4-layer error."""


class Nfs4LocalError(Nfs4Error):
    """Something failed on the client side (no status from the server)."""


class Nfs4ProtocolError(Nfs4LocalError, XdrError):
    """The server's reply is not a valid COMPOUND4res for our request (also an XdrError)."""


class Nfs4SecurityError(Nfs4LocalError):
    """No security flavor we may use satisfies the server (after WRONGSEC + SECINFO)."""

    def __init__(self, message: str, path: str = "", required: tuple[str, ...] = ()) -> None:
        self.path = path
        self.required = required
        super().__init__(message)


class RequestNotSent(RpcConnectionClosed):
    """The connection was already closed when a request was about to go out: nothing of it was
    sent, so sending it on a new connection is safe whatever the operation (an OPEN or a REMOVE
    as much as a READ). An :class:`~rpclatch.rpc.errors.RpcConnectionClosed`, so code that does not
    care about the difference treats it as any closed connection."""


class Nfs4RemoteError(Nfs4Error):
    """The server answered a COMPOUND with a failing status."""

    def __init__(self, status: nfsstat4, op: nfs_opnum4 | None = None, path: str = "") -> None:
        self.status = status
        self.op = op
        self.path = path
        where = f" in {op.name}" if op is not None else ""
        what = f" ({path})" if path else ""
        super().__init__(f"{status.name}{where}{what}")
