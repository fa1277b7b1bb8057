"""The world the connect policy runs in, as interfaces: the simulated network
(:mod:`rpclatch.connect.sim`) and real sockets with kernel IPsec through the key-manager daemon
(:mod:`rpclatch.connect.kernel`, docs/mission-kernel.md).

The policy (:mod:`rpclatch.connect.client`) only ever talks to these protocols. A world opens TCP-like
RPC connections to a server, with or without a request for IPsec protection (RFC 5660 §3.1
optional protection under a BYPASS-OR-PROTECT template), and reports the latch it got. The GSS
side opens RPCSEC_GSS contexts over such a connection and binds them to a channel.

Everything that waits for the network is a coroutine, so an asyncio world (real sockets, a kernel
IPsec backend) plugs in unchanged. A synchronous world -- the simulation, which runs its virtual
clock until the answer is there -- completes every coroutine without suspending, and
:func:`run_to_completion` drives it without an event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from rpclatch.connect.policy import BindOutcome
from rpclatch.gss.wire import Service
from rpclatch.ipsec.latch import LatchState
from rpclatch.rpc.auth import ClientAuth


class ConnectError(Exception):
    """Base of the connect layer's errors."""


class ProtectionFailed(ConnectError):
    """Protection was requested but no latch came up: no IKE on the server, IKE timeout, refusal
    (RFC 5660 §2.3: CREATE_CONNECTION_LATCH fails; the ULP is told "not latched")."""


class ConnectionReset(ConnectError):
    """The connection was reset (e.g. RFC 5660 §5.5 (b) after ALERT BROKEN) with calls outstanding."""


class BindingRequired(ConnectError):
    """The policy demands a bound channel and none could be had (``require_binding``)."""


@dataclass(frozen=True, slots=True)
class LatchView:
    """INQUIRE_LATCH (RFC 5660 §2.3) as the policy needs it, taken when the connection opened.

    ``channel`` implements ``rpclatch.gss.channel.Channel``: RPCSEC_GSS v2 binds to it.
    ``binding_unavailable`` says why the channel offers no binding data (NULL auth, PSK), or None.
    """

    state: LatchState
    peer: str
    qop: str
    confidentiality: bool
    channel: Any
    binding_unavailable: str | None


class RpcLink(Protocol):
    """One RPC transport connection in some world."""

    conn_id: int
    five_tuple: str
    latch: LatchView | None

    async def call(self, auth: ClientAuth, prog: int, vers: int, proc: int, args: bytes) -> bytes:
        """One RPC call; raises :class:`ConnectionReset` or an ``rpclatch.rpc.errors.RpcError``."""

    def latch_state(self) -> LatchState | None:
        """The latch state now (RFC 5660 §2.2: ESTABLISHED, BROKEN, CLOSED, ...) or None if the
        connection has no latch."""

    def on_latch_broken(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` when the latch goes BROKEN (RFC 5660 ALERT)."""

    def reset(self, reason: str) -> None:
        """Abort the connection (RST-like); outstanding and later calls raise ConnectionReset."""

    @property
    def is_open(self) -> bool: ...

    def close(self) -> None: ...


class ClientWorld(Protocol):
    """Opens connections for one client host."""

    name: str

    async def open(
        self, port: int, *, protect: bool, btns_ok: bool, ike_timeout: float, wait_on_break: bool = False
    ) -> RpcLink:
        """Connect to the server's ``port``. With ``protect`` ask for an IPsec latch first and raise
        :class:`ProtectionFailed` if it does not come up within ``ike_timeout``; without, connect in
        the clear (a BYPASS clone for exactly this 5-tuple, RFC 5660 §3.1). ``wait_on_break``
        selects the latch's BROKEN disposition "wait" instead of the default "reset" (§5.5)."""


class GssContext(Protocol):
    """An established RPCSEC_GSS context on one connection."""

    @property
    def version(self) -> int: ...

    @property
    def bound(self) -> bool:
        """The context is bound to a channel now (RFC 5403 §3.3): only then may it use channel_prot."""

    @property
    def refreshes(self) -> int:
        """How many times :meth:`call` replaced the context (RFC 2203 §5.3.3.3)."""

    def auth(self, service: Service) -> ClientAuth:
        """The client flavor issuing DATA calls with ``service``."""

    async def call(self, prog: int, vers: int, proc: int, args: bytes) -> bytes:
        """One DATA call on the context's link, through the flavor's refresh path: a context the
        server no longer accepts (CREDPROBLEM / CTXPROBLEM) is replaced and the call resent once."""

    async def bind_channel(self, channel: Any) -> BindOutcome:
        """RPCSEC_GSS_BIND_CHANNEL (RFC 5403 §3.3) to ``channel``: BOUND, UNSUPPORTED only for an
        authenticated "the server cannot bind", MISMATCH for anything else."""

    @property
    def bind_failure(self) -> Exception | None:
        """Why the last :meth:`bind_channel` did not bind (its message names the cause), or None."""

    async def destroy(self) -> None:
        """RPCSEC_GSS_DESTROY (RFC 2203 §5.4), best effort."""


class GssConnector(Protocol):
    """Creates RPCSEC_GSS contexts over a link (INIT / CONTINUE_INIT as NULL calls, RFC 2203 §5.2)."""

    async def establish(self, link: RpcLink, *, want_v2: bool) -> GssContext: ...


PolicyObserver = Callable[[str, str], None]
"""``observer(kind, text)``: ``kind`` is ``policy`` or ``warning`` (used by the demo's trace)."""


T = TypeVar("T")


def run_to_completion(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine whose awaits all complete synchronously (a synchronous world: no event loop).

    Raises :class:`ConnectError` if it suspends (the world needs an event loop: use the ``a*``
    coroutine methods from asyncio instead)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise ConnectError("this world suspends: drive the connection from asyncio (aconnect / acall)")
