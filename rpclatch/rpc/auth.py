"""Auth flavors behind one interface (RFC 5531 §8.2), on both the client and the server side.

Client side: a :class:`ClientAuth` produces the credential, verifier and (possibly wrapped) argument
bytes of each call and checks/unwraps each reply. Server side: a :class:`ServerAuth` checks a call
and returns one of :class:`AuthAccept`, :class:`AuthControlReply`, :class:`AuthDeny` or
:class:`AuthDrop`. RPCSEC_GSS (RFC 2203 / RFC 5403) plugs into these same two interfaces.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rpclatch.rpc.messages import NULL_AUTH, AcceptedReply, AuthStat, CallMessage, OpaqueAuth


@dataclass(frozen=True, slots=True)
class PreparedCall:
    """What a client flavor produced for one call: the message to send and its private state."""

    message: CallMessage
    state: Any = None


class ClientAuth(abc.ABC):
    """Client-side flavor. One instance may serve many calls concurrently on one connection."""

    flavor: int

    @abc.abstractmethod
    def prepare_call(self, xid: int, prog: int, vers: int, proc: int, args: bytes) -> PreparedCall:
        """Build the call message: credential, verifier and (wrapped) arguments."""

    @abc.abstractmethod
    def accept_reply(self, prepared: PreparedCall, reply: AcceptedReply) -> bytes:
        """Check the reply verifier and return the (unwrapped) results of a SUCCESS reply.

        Called for every accepted reply: for one with another ``accept_stat`` only the verifier is
        checked (the client then raises ``RpcAcceptError``). Raises
        :class:`rpclatch.rpc.errors.AuthVerifierError` if the verifier does not check.
        """

    def on_auth_error(self, prepared: PreparedCall, stat: AuthStat) -> bool:
        """An AUTH_ERROR came back for ``prepared``; return True to retry the call once (refresh)."""
        return False

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release flavor state (RPCSEC_GSS sends DESTROY through its own client)."""


@dataclass
class ConnectionInfo:
    """What a server flavor may know about the transport a call arrived on.

    ``channel`` is the secure channel (an object implementing ``rpclatch.gss.channel.Channel``)
    when the connection is latched to one, else None; RPCSEC_GSS v2 binds to it (RFC 5403 §3).
    ``attributes`` is a scratch dict for flavors (e.g. which GSS handles were bound here).
    """

    conn_id: int
    peer: tuple[str, int] | None
    transport: str  # "tcp", "udp", "unix", "sim"
    channel: Any = None
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuthAccept:
    """The call is authentic: dispatch ``args`` to the program; ``seal`` turns its results into the
    reply verifier and (wrapped) result bytes."""

    args: bytes
    principal: str | None
    seal: Callable[[bytes], tuple[OpaqueAuth, bytes]]


@dataclass(frozen=True, slots=True)
class AuthControlReply:
    """The flavor handled the call itself (e.g. RPCSEC_GSS INIT/DESTROY/BIND_CHANNEL)."""

    verf: OpaqueAuth
    results: bytes


@dataclass(frozen=True, slots=True)
class AuthDeny:
    """Reject with MSG_DENIED / AUTH_ERROR and this ``auth_stat``."""

    stat: AuthStat
    reason: str = ""


@dataclass(frozen=True, slots=True)
class AuthGarbage:
    """Answer GARBAGE_ARGS (RFC 2203 §5.3.3.4: e.g. an integrity checksum that does not verify)
    with reply verifier ``verf`` (RPCSEC_GSS: the MIC of the request's seq_num, RFC 2203 §5.3.3.2,
    once the request header was authenticated)."""

    reason: str = ""
    verf: OpaqueAuth = NULL_AUTH


@dataclass(frozen=True, slots=True)
class AuthDrop:
    """Discard silently (RFC 2203 §5.3.3.1: replays and sequence numbers below the window)."""

    reason: str = ""


AuthResult = AuthAccept | AuthControlReply | AuthDeny | AuthGarbage | AuthDrop


class ServerAuth(abc.ABC):
    """Server-side flavor: registered with the dispatcher under its flavor number."""

    flavor: int

    @abc.abstractmethod
    def check_call(self, call: CallMessage, conn: ConnectionInfo, now: float) -> AuthResult:
        """Authenticate ``call`` (and unwrap its arguments)."""

    def connection_closed(self, conn: ConnectionInfo) -> None:  # noqa: B027 - optional hook
        """The transport ``conn`` went away (RPCSEC_GSS forgets channel bindings made on it)."""
