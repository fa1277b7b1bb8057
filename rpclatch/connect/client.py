"""The client side of BYPASS-OR-PROTECT: run the policy table on a world, then make calls.

Flow per connection (docs/design.md, "The connect policy"; RFC 5660 §3.1, RFC 5403 §3.3)::

    open(port, protect=True, ike_timeout)  --ProtectionFailed-->  open(port, protect=False)  [BYPASS]
      | latched
    classify the latch: binding data? confidentiality?           -> LatchOutcome
    RPCSEC_GSS INIT (v2 when binding is possible)
    BIND_CHANNEL if the latch offers binding data                 -> BindOutcome
    decide(LatchOutcome, BindOutcome)                             -> service, destroy ctx?, warn?
    DATA calls with that service; ALERT BROKEN -> reset -> reconnect and run the flow again
    CREDPROBLEM/CTXPROBLEM -> the flavor refreshes the context and resends (RFC 2203 §5.3.3.3)
      -> a bound connection binds the new context again (BIND_CHANNEL, the same step) -> record

Every connection gets a fresh RPCSEC_GSS context, so a channel-bound handle can never be used on
another connection (RFC 5403 §3.4 requires the channel to still exist).

The flow is written once, as coroutines (:meth:`ProtectedConnection.aconnect` / ``acall`` /
``aclose``) over the world's interfaces; :meth:`~ProtectedConnection.connect` / ``call`` / ``close``
run them to completion for synchronous worlds such as the simulation.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import replace

from rpclatch.connect.policy import (
    BindOutcome,
    BreakDisposition,
    ConnectPolicy,
    Decision,
    LatchOutcome,
    decide,
    should_bind,
)
from rpclatch.connect.record import SecurityRecord, latch_state_name
from rpclatch.connect.world import (
    BindingRequired,
    ClientWorld,
    ConnectError,
    ConnectionReset,
    GssConnector,
    GssContext,
    LatchView,
    PolicyObserver,
    ProtectionFailed,
    RpcLink,
    run_to_completion,
)
from rpclatch.gss.wire import Service
from rpclatch.ipsec.latch import LatchState
from rpclatch.rpc.auth import ClientAuth

log = logging.getLogger(__name__)


def classify_latch(latch: LatchView | None) -> LatchOutcome:
    """Map INQUIRE_LATCH to the policy's latch outcome (RFC 5660 §2.3)."""
    if latch is None:
        return LatchOutcome.NOT_LATCHED
    if latch.binding_unavailable is not None or latch.channel is None:
        return LatchOutcome.LATCHED_NO_BINDING
    if latch.confidentiality:
        return LatchOutcome.LATCHED_BINDING_CONF
    return LatchOutcome.LATCHED_BINDING_INTEG


class ProtectedConnection:
    """An RPC client connection that protects itself per :class:`ConnectPolicy`.

    ``security`` is the :class:`SecurityRecord` of the current connection. :meth:`call` issues one
    RPC with the service the policy chose; after a latch break it reconnects (new latch, new
    context, new BIND_CHANNEL) before the next call. ::

        pc = ProtectedConnection(SimClientWorld(net, client_host, "192.0.2.20"),
                                 RpcsecGssConnector(provider, "nfs@server", PROG, VERS),
                                 ConnectPolicy(fallback=FallbackService.PRIVACY, ike_timeout=5))
        record = pc.connect()          # or: await pc.aconnect() from asyncio
        record.latched, record.peer, record.bound, record.gss_service, record.reason
        reply = pc.call(PROG, VERS, proc, args)
    """

    def __init__(
        self,
        world: ClientWorld,
        gss: GssConnector,
        policy: ConnectPolicy | None = None,
        observer: PolicyObserver | None = None,
    ) -> None:
        self.world = world
        self.gss = gss
        self.policy = policy or ConnectPolicy()
        self._observer = observer
        self._link: RpcLink | None = None
        self._ctx: GssContext | None = None
        self._auth: ClientAuth | None = None
        self._auth_conn: int | None = None
        self._security: SecurityRecord | None = None
        self._refreshes_seen = 0
        self._generation = 0
        self._broken: str | None = None
        self.history: list[SecurityRecord] = []

    # -- observation ----------------------------------------------------------------------------

    def _note(self, kind: str, text: str) -> None:
        if kind == "warning":
            log.warning("%s", text)
        else:
            log.info("%s", text)
        if self._observer is not None:
            self._observer(kind, text)

    @property
    def security(self) -> SecurityRecord:
        if self._security is None:
            raise ConnectError("not connected yet: call connect() first")
        return self._security

    @property
    def link(self) -> RpcLink | None:
        return self._link

    # -- the flow -------------------------------------------------------------------------------

    def connect(self) -> SecurityRecord:
        """:meth:`aconnect` for a synchronous world (the simulation)."""
        return run_to_completion(self.aconnect())

    def call(self, prog: int, vers: int, proc: int, args: bytes) -> bytes:
        """:meth:`acall` for a synchronous world (the simulation)."""
        return run_to_completion(self.acall(prog, vers, proc, args))

    def close(self) -> None:
        """:meth:`aclose` for a synchronous world (the simulation)."""
        run_to_completion(self.aclose())

    async def aconnect(self) -> SecurityRecord:
        """Open a connection and run the policy table once. Returns the new security record."""
        pol = self.policy
        self._generation += 1
        self._broken = None
        link: RpcLink | None = None
        protection_error: str | None = None
        if pol.try_ipsec:
            self._note(
                "policy",
                f"request IPsec for port {pol.port} (BTNS {'ok' if pol.btns_ok else 'no'}, "
                f"IKE timeout {pol.ike_timeout:g}s)",
            )
            try:
                link = await self.world.open(
                    pol.port,
                    protect=True,
                    btns_ok=pol.btns_ok,
                    ike_timeout=pol.ike_timeout,
                    wait_on_break=pol.on_break is BreakDisposition.WAIT,
                )
            except ProtectionFailed as exc:
                protection_error = str(exc)
                self._note("policy", f"protection failed ({exc}); reconnecting without IPsec (BYPASS clone)")
        if link is None:
            link = await self.world.open(
                pol.port, protect=False, btns_ok=pol.btns_ok, ike_timeout=pol.ike_timeout
            )
        self._link = link
        latch_outcome = classify_latch(link.latch)
        if link.latch is not None:
            self._note(
                "policy",
                f"latched to {link.latch.peer} ({link.latch.qop})"
                + (
                    f"; no binding data: {link.latch.binding_unavailable}"
                    if link.latch.binding_unavailable
                    else ""
                ),
            )
        try:
            ctx = await self.gss.establish(link, want_v2=should_bind(latch_outcome))
            ctx, bind, bind_detail, decision, warnings = await self._bind(link, ctx, latch_outcome)
            if pol.require_binding and bind is not BindOutcome.BOUND:
                raise BindingRequired(
                    "policy requires a bound channel but: "
                    + (f"{bind_detail}; " if bind_detail else "")
                    + decision.reason
                )
        except BaseException:
            link.close()
            self._link = None
            raise
        service = decision.service_for(pol.fallback)
        self._ctx = ctx
        self._auth = ctx.auth(service)
        self._auth_conn = link.conn_id
        self._refreshes_seen = ctx.refreshes
        record = SecurityRecord(
            conn_id=link.conn_id,
            generation=self._generation,
            five_tuple=link.five_tuple,
            latched=link.latch is not None,
            latch_state=link.latch_state(),
            peer=link.latch.peer if link.latch else None,
            qop=link.latch.qop if link.latch else None,
            latch_outcome=latch_outcome,
            bind_outcome=bind,
            bound=bind is BindOutcome.BOUND,
            gss_service=service,
            gss_version=ctx.version,
            reason=decision.reason,
            warnings=warnings,
            protection_error=protection_error,
            bind_detail=bind_detail,
        )
        self._security = record
        self.history.append(record)
        self._note("policy", f"DATA calls use {service.sec_name}: {decision.reason}")
        if link.latch is not None:
            link.on_latch_broken(functools.partial(self._latch_for, link))
        return record

    async def _bind(
        self, link: RpcLink, ctx: GssContext, latch_outcome: LatchOutcome, *, rebinding: bool = False
    ) -> tuple[GssContext, BindOutcome, str | None, Decision, tuple[str, ...]]:
        """BIND_CHANNEL if the latch offers binding data, then the policy's row: the context to use
        (a new v1 one if the row destroys the bound attempt), the outcome, its detail, the row and
        the warnings noted. The one binding step, for a new connection and for a context the
        flavor refreshed on a bound connection (``rebinding``: losing the binding then is always
        noted as a warning, whatever the row says, since the connection was bound)."""
        bind = BindOutcome.NOT_ATTEMPTED
        bind_detail: str | None = None
        if should_bind(latch_outcome):
            assert link.latch is not None
            bind = await ctx.bind_channel(link.latch.channel)
            if ctx.bind_failure is not None:
                bind_detail = str(ctx.bind_failure)
            state = link.latch_state()
            if state is not LatchState.ESTABLISHED:
                # RFC 5403 §3.4: a binding is worth nothing once the channel is gone
                raise ConnectionReset(f"latch {latch_state_name(state)} while binding on {link.five_tuple}")
        decision = decide(latch_outcome, bind)
        warnings: tuple[str, ...] = ()
        if decision.warn or (rebinding and bind is not BindOutcome.BOUND):
            text = (
                f"SECURITY WARNING: {bind.value} on {link.five_tuple} (latched peer "
                f"{link.latch.peer if link.latch else '-'})"
                + (" re-binding a refreshed RPCSEC_GSS context" if rebinding else "")
                + (f": {bind_detail}" if bind_detail else "")
                + f"; {decision.reason}"
            )
            self._note("warning", text)
            warnings = (text,)
        if decision.destroy_context:
            await ctx.destroy()
            ctx = await self.gss.establish(link, want_v2=False)
        return ctx, bind, bind_detail, decision, warnings

    def _latch_for(self, link: RpcLink, reason: str) -> None:
        self._latch_broken(reason, link)

    def _latch_broken(self, reason: str, link: RpcLink | None = None) -> None:
        """ALERT BROKEN (RFC 5660 §2.3): stop using the connection; default disposition reset (§5.5).

        Alerts about an earlier connection (e.g. its latch closing after TIME_WAIT) are ignored."""
        if link is None:
            link = self._link
        if link is None or link is not self._link or self._security is None:
            return
        self._broken = reason
        reset = self.policy.on_break is BreakDisposition.RESET
        if reset:
            self._security = replace(
                self._security,
                latch_state=LatchState.BROKEN,
                latched=False,
                bound=False,
                reason=f"latch BROKEN ({reason}); connection reset",
            )
        else:
            # (a) wait: the transport holds output and drops input until the latch is ESTABLISHED
            # again; the binding does not survive the break (RFC 5403 §3.4), so GSS protection
            # takes over on this connection.
            self._security = replace(
                self._security,
                latch_state=LatchState.BROKEN,
                bound=False,
                gss_service=self.policy.fallback.service,
                reason=f"latch BROKEN ({reason}); waiting for it, binding dropped",
            )
        self.history.append(self._security)
        self._note(
            "warning",
            f"latch on {link.five_tuple} BROKEN: {reason}; "
            f"{'resetting the connection' if reset else 'waiting (RFC 5660 §5.5 (a))'}",
        )
        if reset:
            self._auth = None  # the bound handle dies with this connection
            link.reset(f"latch broken: {reason}")

    async def acall(self, prog: int, vers: int, proc: int, args: bytes) -> bytes:
        """One call with the chosen service.

        A call in flight when the connection resets fails with :class:`ConnectionReset` (it is not
        silently resent: RPC procedures need not be idempotent). The next call reconnects: a new
        connection, a new latch, a new context and a new BIND_CHANNEL.

        The call goes through the context's flavor (:meth:`GssContext.call`), so a context the
        server stops accepting (CREDPROBLEM / CTXPROBLEM: expired, forgotten, or over the server's
        RFC 5403 §9 (a) cap) is refreshed and the call resent once (RFC 2203 §5.3.3.3); then
        :meth:`_resync` binds the new context again if the connection was bound, and updates the
        record.
        """
        if self._link is None or not self._link.is_open or self._auth is None:
            await self._reconnect()
        link, auth = self._link, self._auth
        assert link is not None and auth is not None
        if self._auth_conn != link.conn_id:  # pragma: no cover - structural guarantee
            raise ConnectError("refusing to use a context on a connection it was not made on")
        state = link.latch_state()
        if (
            self.security.gss_service is Service.CHANNEL_PROT
            and state is not LatchState.ESTABLISHED
            and self.policy.on_break is BreakDisposition.RESET
        ):
            # RFC 5403 §3.4: channel_prot only while the channel exists; never send unprotected
            self._latch_broken(f"latch is {latch_state_name(state)}", link)
            await self._reconnect()
            link, auth = self._link, self._auth
            assert link is not None and auth is not None
        if self.security.latch_state is LatchState.BROKEN and link.latch_state() is LatchState.ESTABLISHED:
            self._security = replace(
                self.security,
                latch_state=LatchState.ESTABLISHED,
                latched=True,
                reason="latch ESTABLISHED again after a break; the binding is gone: "
                f"{self.security.gss_service.sec_name} on this connection",
            )
            self.history.append(self._security)
        ctx = self._ctx
        assert ctx is not None
        if ctx.refreshes != self._refreshes_seen or ctx.bound is not self.security.bound:
            await self._resync(link, ctx)  # before sending: never channel_prot unbound (RFC 5403 §3.4)
            ctx = self._ctx
            assert ctx is not None
        try:
            reply = await ctx.call(prog, vers, proc, args)
        except ConnectionReset:
            self._auth = None
            raise
        if ctx.refreshes != self._refreshes_seen or ctx.bound is not self.security.bound:
            await self._resync(link, ctx)
        return reply

    async def _resync(self, link: RpcLink, ctx: GssContext) -> None:
        """Bring the security record up to date after the flavor refreshed the context (RFC 2203
        §5.3.3.3: the server answered CREDPROBLEM / CTXPROBLEM, e.g. its RFC 5403 §9 (a) cap on
        requests per context) or dropped its binding (a refused channel_prot).

        A new context is not bound (RFC 5403 §3.4). If the connection was bound and its context is
        not any more, it is bound again to this connection's channel by :meth:`_bind`, the step a
        new connection runs: the policy's row decides the service, a failed bind is noted as a
        warning and recorded (``bound`` False, ``bind_outcome``, ``bind_detail``), and the flavor is
        checked to agree with the row (:meth:`GssContext.auth`), so channel_prot is never sent on an
        unbound context. With ``require_binding`` a failed re-bind closes the connection and raises
        :class:`BindingRequired`. Records are appended to :attr:`history` only when they change."""
        rec = self.security
        if ctx.refreshes != self._refreshes_seen:
            self._note(
                "policy",
                f"RPCSEC_GSS context refreshed on {link.five_tuple} (the server no longer "
                "accepted it: CREDPROBLEM / CTXPROBLEM, RFC 2203 §5.3.3.3)",
            )
        self._refreshes_seen = ctx.refreshes
        if rec.bound and not ctx.bound:
            try:
                new_ctx, bind, detail, decision, warnings = await self._bind(
                    link, ctx, rec.latch_outcome, rebinding=True
                )
            except BaseException:
                self._auth = None
                link.close()
                raise
            service = decision.service_for(self.policy.fallback)
            if new_ctx is not ctx:
                self._ctx = ctx = new_ctx
                self._refreshes_seen = ctx.refreshes
            reason = (
                rec.reason
                if bind is BindOutcome.BOUND
                else (f"re-binding the refreshed RPCSEC_GSS context failed ({bind.name}): {decision.reason}")
            )
            rec = replace(
                rec,
                bind_outcome=bind,
                bound=bind is BindOutcome.BOUND,
                gss_service=service,
                reason=reason,
                warnings=rec.warnings + warnings,
                bind_detail=detail,
            )
            if self.policy.require_binding and bind is not BindOutcome.BOUND:
                self._auth = None
                self._record(replace(rec, gss_version=ctx.version))
                link.close()
                raise BindingRequired(
                    "policy requires a bound channel but re-binding the refreshed context "
                    f"failed: {f'{detail}; ' if detail else ''}{decision.reason}"
                )
            self._auth = ctx.auth(service)
        self._record(replace(rec, gss_version=ctx.version))

    def _record(self, record: SecurityRecord) -> None:
        if record != self._security:
            self._security = record
            self.history.append(record)

    async def _reconnect(self) -> None:
        last: Exception | None = None
        for _ in range(max(1, self.policy.max_reconnects)):
            if self._link is not None:
                self._link.close()
                self._link = None
            self._note("policy", "reconnecting: new connection, new latch, new context")
            try:
                await self.aconnect()
                return
            except ConnectError as exc:
                last = exc
        raise ConnectionReset(f"could not reconnect ({self._broken or 'connection closed'}): {last}")

    async def aclose(self) -> None:
        """DESTROY the context (best effort) and close the connection."""
        if self._ctx is not None and self._link is not None and self._link.is_open:
            try:
                await self._ctx.destroy()
            except Exception as exc:  # best effort (RFC 2203 §5.4)
                log.debug("DESTROY failed: %s", exc)
        self._ctx = None
        self._auth = None
        if self._link is not None:
            self._link.close()
            self._link = None
