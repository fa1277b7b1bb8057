"""RPC-layer exceptions (RFC 5531 §9), split into local and remote as in h11.

A :class:`RpcRemoteError` means the peer answered with an error status; it carries the wire code.
A :class:`RpcLocalError` means we could not send or complete a call (timeout, closed connection,
malformed reply); it never came from the peer's status fields.
"""

from __future__ import annotations

from rpclatch.rpc.messages import AcceptStat, AuthStat, RejectStat


class RpcError(Exception):
    """Base of every RPC-layer error."""


class RpcLocalError(RpcError):
    """A call failed on our side or in transit (no status from the peer)."""


class RpcTimeout(RpcLocalError):
    """No reply before the call's deadline."""


class RpcConnectionClosed(RpcLocalError):
    """The transport closed with the call outstanding."""


class RpcProtocolError(RpcLocalError):
    """The peer sent something that is not valid RPC (a bad record, an unparsable reply)."""


class RpcRemoteError(RpcError):
    """The server answered with an error status."""


class RpcAcceptError(RpcRemoteError):
    """MSG_ACCEPTED with an ``accept_stat`` other than SUCCESS."""

    def __init__(self, stat: AcceptStat, mismatch: tuple[int, int] | None = None) -> None:
        self.stat = stat
        self.mismatch = mismatch
        text = stat.name
        if mismatch is not None:
            text += f" (server supports versions {mismatch[0]}..{mismatch[1]})"
        super().__init__(text)


class RpcMismatchError(RpcRemoteError):
    """MSG_DENIED / RPC_MISMATCH: the server does not speak RPC version 2."""

    def __init__(self, low: int, high: int) -> None:
        self.stat = RejectStat.RPC_MISMATCH
        self.mismatch = (low, high)
        super().__init__(f"RPC_MISMATCH (server supports RPC versions {low}..{high})")


class RpcAuthError(RpcRemoteError):
    """MSG_DENIED / AUTH_ERROR with its ``auth_stat``."""

    def __init__(self, stat: AuthStat, detail: str = "") -> None:
        self.stat = stat
        super().__init__(stat.name + (f": {detail}" if detail else ""))


class AuthVerifierError(RpcLocalError):
    """A reply's verifier failed to check (e.g. a bad RPCSEC_GSS MIC): the reply is not trusted."""


class GarbageArgs(RpcError):
    """Raised by a server procedure whose arguments do not decode: the dispatcher answers
    GARBAGE_ARGS (RFC 5531 §9 ``accept_stat``)."""


class ResultsTooLarge(RpcError):
    """Raised by a server procedure whose results would not fit in one reply on the call's
    transport (``CallContext.max_results``, e.g. a UDP datagram): the dispatcher answers
    SYSTEM_ERR (RFC 5531 §9: the arguments were fine, the server cannot deliver), and the
    procedure has not built the results."""

    def __init__(self, needed: int, limit: int) -> None:
        self.needed = needed
        self.limit = limit
        super().__init__(
            f"results of {needed} bytes do not fit in one reply (at most {limit} "
            "bytes of results on this transport)"
        )
