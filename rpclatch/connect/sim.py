"""The connect policy's world on the deterministic simulated network (:mod:`rpclatch.netsim`).

:class:`SimClientWorld` opens RPC connections from one simulated host: ``protect=True`` asks the
host's IPsec stack for an exact-5-tuple PROTECT clone of the BYPASS-OR-PROTECT template and a
connection latch created atomically with it (RFC 5660 §3.1; the SYN waits while the latch is
LARVAL, RFC 5660 §2); ``protect=False`` installs the 5-tuple BYPASS clone. The latch is read back
with INQUIRE_LATCH and its ``LatchChannel`` is what RPCSEC_GSS binds to.

:class:`SimServerEndpoint` is the server side: a LISTENER latch on its 3-tuple (RFC 5660 §5.1),
every accepted connection looked up with FIND_LATCH, its channel handed to RPCSEC_GSS through
``ConnectionInfo.channel`` (the GSS server accepts channel_prot only on the connection it was bound
on, while that latch is ESTABLISHED).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rpclatch.channel import Protection
from rpclatch.connect.world import ConnectError, ConnectionReset, LatchView, ProtectionFailed
from rpclatch.ipsec.channel_binding import binding_unavailable_reason
from rpclatch.ipsec.engine import Approach
from rpclatch.ipsec.latch import BrokenDisposition, LatchParams, LatchState, params_from_sa
from rpclatch.netsim.host import Host, Listener
from rpclatch.netsim.network import SimNetwork
from rpclatch.netsim.rpc import SimConnectionReset, SimRpcClient, SimRpcServer
from rpclatch.netsim.stack import ConnLatch, IpsecStack
from rpclatch.netsim.stream import StreamConnection, StreamEventKind
from rpclatch.rpc.auth import ClientAuth
from rpclatch.rpc.errors import RpcConnectionClosed
from rpclatch.rpc.server import RpcDispatcher


def describe_qop(params: LatchParams) -> str:
    """Short words for a latch's quality of protection (RFC 5660 §2.1)."""
    suites = ",".join(sorted(str(s) for s in params.qop.suites)) or "?"
    conf = "encrypting" if Protection.CONFIDENTIALITY in params.protection else "integrity only"
    det = "" if params.qop.determinate else ", indeterminate"
    return f"{params.protocol.name} {params.mode.name.lower()} {suites} ({conf}{det})"


def _stack(host: Host) -> IpsecStack | None:
    return host.security if isinstance(host.security, IpsecStack) else None


def latch_params(stack: IpsecStack, conn: StreamConnection) -> LatchParams | None:
    """The parameters ``conn`` is latched with, in either design: INQUIRE_LATCH on the latch
    database (approach 2), or the TCB's latch and the SA its tag names (approach 1, RFC 5660 §2.4).
    None unless the latch is ESTABLISHED."""
    if stack.latch_state(conn) is not LatchState.ESTABLISHED:
        return None
    info = stack.latch_of(conn)
    if info is not None:
        return info.params
    cl = conn.latch_info
    if not isinstance(cl, ConnLatch) or cl.ulp is None:
        return None
    if cl.channel is not None:
        return cl.channel.params
    tag = cl.ulp.tag
    sa = stack.engine.sad.get(tag.sa_id) if tag is not None and tag.sa_id is not None else None
    return params_from_sa(sa, conn.flow, None) if sa is not None else None


def latch_view(host: Host, conn: StreamConnection) -> LatchView | None:
    """INQUIRE_LATCH of ``conn``'s latch as the policy sees it, or None if not ESTABLISHED."""
    stack = _stack(host)
    if stack is None:
        return None
    params = latch_params(stack, conn)
    if params is None:
        return None
    channel = conn.channel
    cl = conn.latch_info
    why_not = binding_unavailable_reason(params)
    if why_not is None and channel is None:
        why_not = (
            cl.binding_unavailable
            if isinstance(cl, ConnLatch) and cl.binding_unavailable
            else "the stack offers no channel object for this latch"
        )
    return LatchView(
        state=LatchState.ESTABLISHED,
        peer=str(params.peer),
        qop=describe_qop(params),
        confidentiality=Protection.CONFIDENTIALITY in params.protection,
        channel=channel if why_not is None else None,
        binding_unavailable=why_not,
    )


class SimLink:
    """One RPC connection in the sim (implements :class:`rpclatch.connect.world.RpcLink`)."""

    def __init__(
        self, host: Host, conn: StreamConnection, client: SimRpcClient, latch: LatchView | None
    ) -> None:
        self.host = host
        self.conn = conn
        self.client = client
        self.conn_id = client.conn_id
        self.five_tuple = str(conn.flow)
        self.latch = latch

    async def call(self, auth: ClientAuth, prog: int, vers: int, proc: int, args: bytes) -> bytes:
        """Runs the simulation until the reply: completes without suspending."""
        try:
            return self.client.call(prog, vers, proc, args, auth)
        except SimConnectionReset as exc:
            raise ConnectionReset(str(exc)) from exc
        except RpcConnectionClosed as exc:
            if self.client.ended is not None:
                ended = f"{self.client.ended.value}: {self.client.end_reason}"
                raise ConnectionReset(f"connection {ended}") from exc
            raise

    def latch_state(self) -> LatchState | None:
        stack = _stack(self.host)
        return None if stack is None else stack.latch_state(self.conn)

    def last_alert_reason(self) -> str:
        cl = self.conn.latch_info
        if isinstance(cl, ConnLatch) and cl.alerts:
            a = cl.alerts[-1]
            return f"{a.reason.value}" + (f": {a.detail}" if a.detail else "")
        if isinstance(cl, ConnLatch) and cl.ulp_breaks:  # approach 1: the TCB latch broke
            b = cl.ulp_breaks[-1]
            return f"{b.reason.value}" + (f": {b.detail}" if b.detail else "")
        return "latch left ESTABLISHED"

    def on_latch_broken(self, callback: Callable[[str], None]) -> None:
        channel = self.latch.channel if self.latch is not None else None
        if channel is not None:
            channel.on_break(lambda _ch: callback(self.last_alert_reason()))
        else:  # no channel object (NULL-auth latch): the stream's reset is the signal

            def ended(kind: StreamEventKind, reason: str) -> None:
                if self.latch_state() in (LatchState.BROKEN, LatchState.CLOSED):
                    callback(self.last_alert_reason())

            self.client.on_end(ended)

    def reset(self, reason: str) -> None:
        if self.client.ended is None:
            self.client.reset(reason)

    @property
    def is_open(self) -> bool:
        return self.client.is_open

    def close(self) -> None:
        if self.client.is_open:
            self.client.close()


class SimClientWorld:
    """Opens connections from ``host`` to ``server_addr`` (implements ``ClientWorld``)."""

    name = "sim"

    def __init__(
        self,
        net: SimNetwork,
        host: Host,
        server_addr: str,
        *,
        rpc_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        on_open: Callable[[SimLink], None] | None = None,
    ) -> None:
        self.net = net
        self.host = host
        self.server_addr = server_addr
        self.rpc_timeout = rpc_timeout
        self.connect_timeout = connect_timeout
        self.on_open = on_open
        self.links: list[SimLink] = []

    async def open(
        self, port: int, *, protect: bool, btns_ok: bool, ike_timeout: float, wait_on_break: bool = False
    ) -> SimLink:
        options: dict[str, Any] = {"protect": protect}
        if wait_on_break:
            options["disposition"] = BrokenDisposition.WAIT
        conn = self.host.connect(self.server_addr, port, **options)
        client = SimRpcClient(conn, default_timeout=self.rpc_timeout)
        limit = ike_timeout if protect else self.connect_timeout
        self.net.run_until(
            lambda: conn.is_open or client.ended is not None or StreamEventKind.FAILED in conn.kinds(), limit
        )
        if not conn.is_open:
            cl = conn.latch_info
            reason = (
                cl.not_latched_reason
                if isinstance(cl, ConnLatch) and cl.not_latched_reason
                else client.end_reason or f"no connection within {limit:g}s"
            )
            if client.ended is None and StreamEventKind.FAILED not in conn.kinds():
                reason = f"IKE did not finish within {ike_timeout:g}s" if protect else reason
                conn.abort(send_rst=False)
            if protect:
                raise ProtectionFailed(reason)
            raise ConnectError(f"cannot connect to {self.server_addr}:{port}: {reason}")
        latch = latch_view(self.host, conn) if protect else None
        link = SimLink(self.host, conn, client, latch)
        if protect and latch is None:
            link.reset("protection requested but the connection is not latched")
            raise ProtectionFailed("the connection opened without an ESTABLISHED latch")
        if protect and latch is not None and not btns_ok:
            stack = _stack(self.host)
            info = stack.latch_of(conn) if stack is not None else None
            if info is not None and info.params is not None and info.params.btns:
                link.reset("BTNS peer not acceptable")
                raise ProtectionFailed(f"latched peer {latch.peer} is unauthenticated (BTNS), btns_ok is off")
        self.links.append(link)
        if self.on_open is not None:
            self.on_open(link)
        return link


class SimServerEndpoint:
    """An RPC server on a simulated host under BYPASS-OR-PROTECT (LISTENER latch on its 3-tuple)."""

    def __init__(self, host: Host, port: int, dispatcher: RpcDispatcher, **listen_options: Any) -> None:
        self.host = host
        self.dispatcher = dispatcher
        self.listener: Listener = host.listen(port, **listen_options)
        self.server = SimRpcServer(self.listener, dispatcher, channel_of=self._find_latch_channel)

    def _find_latch_channel(self, conn: StreamConnection) -> Any:
        """FIND_LATCH for the accepted 5-tuple (RFC 5660 §2.3) -> its channel, or None. In approach 1
        the latch lives in the connection's TCB (RFC 5660 §2.4), which the stack asks instead."""
        stack = _stack(self.host)
        if stack is None:
            return None
        if stack.approach is Approach.ULP:
            return conn.channel
        if stack.engine.latches.latch_for(conn.flow) is None:
            return None  # no latch: an unlatched (BYPASS) connection, allowed but recorded
        return conn.channel

    def latch_states(self) -> list[tuple[str, LatchState | None]]:
        """(5-tuple, latch state or None if unlatched) of every connection accepted so far."""
        stack = _stack(self.host)
        return [(str(c.flow), stack.latch_state(c) if stack else None) for c, _ in self.server.connections]
