"""RPCSEC_GSS for the connect policy: :class:`GssConnector` over :mod:`rpclatch.gss.client`.

The RPCSEC_GSS client's control exchanges (INIT, BIND_CHANNEL, DESTROY) are coroutines taking an
``rpc_call``, which here is the link's own ``call``. One :class:`RpcsecGssContext` per connection:
a context bound to a channel dies with the connection (RFC 5403 §3.4).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rpclatch.connect.policy import BindOutcome, FallbackService
from rpclatch.connect.world import ConnectError, RpcLink
from rpclatch.gss.channel import Channel
from rpclatch.gss.client import GssClientAuth, RpcCall, VersionPolicy
from rpclatch.gss.errors import BindFailureReason, ChannelBindingFailed
from rpclatch.gss.provider import Provider
from rpclatch.gss.wire import Service
from rpclatch.rpc.auth import ClientAuth


def _rpc_call(link: RpcLink, prog: int, vers: int) -> RpcCall:
    async def rpc_call(auth: ClientAuth, proc: int, args: bytes) -> bytes:
        return await link.call(auth, prog, vers, proc, args)

    return rpc_call


_R = BindFailureReason

#: RFC 5403 §2: binding exists to expose a man in the middle, so only a genuine, authenticated
#: "the server cannot bind" (or a local choice) is UNSUPPORTED; whatever is unauthenticated or
#: contradictory -- something a relay could have forged or rewritten -- is MISMATCH (warning,
#: context destroyed). One entry per reason (a missing one is an internal error, see the tests).
BIND_OUTCOMES: Mapping[BindFailureReason, BindOutcome] = {
    _R.MIC_MISMATCH: BindOutcome.MISMATCH,
    _R.TAMPERED_NEGOTIATION: BindOutcome.MISMATCH,  # prefix/OID rewritten in transit
    _R.NEGOTIATION_LOOP: BindOutcome.MISMATCH,  # contradictory answers
    _R.UNVERIFIABLE_REPLY: BindOutcome.MISMATCH,  # nothing proves the server said it
    _R.SERVER_REFUSED: BindOutcome.MISMATCH,  # a v2 target MUST support BIND_CHANNEL
    _R.V1_FALLBACK_ON_BINDABLE_CHANNEL: BindOutcome.MISMATCH,  # MSG_DENIED to the v2 INIT: forgeable
    _R.CHANNEL_DOWN: BindOutcome.MISMATCH,  # the channel went away under us
    _R.CONTEXT_REPLACED: BindOutcome.MISMATCH,  # do not trust a half-made binding
    _R.SERVER_HAS_NO_CHANNEL: BindOutcome.UNSUPPORTED,  # authenticated PREF_NOTSUPP, empty list
    _R.NO_COMMON_PREFIX: BindOutcome.UNSUPPORTED,  # authenticated PREF_NOTSUPP
    _R.NO_COMMON_HASH: BindOutcome.UNSUPPORTED,  # authenticated HASH_NOTSUPP
    _R.NO_REQUESTED_PREFIX: BindOutcome.UNSUPPORTED,  # local configuration
    _R.V1_ONLY: BindOutcome.UNSUPPORTED,  # local version policy
}


def classify_bind_failure(exc: ChannelBindingFailed) -> BindOutcome:
    """The policy's :class:`BindOutcome` for a failed BIND_CHANNEL: :data:`BIND_OUTCOMES` of its
    typed reason."""
    return BIND_OUTCOMES[exc.reason]


class RpcsecGssContext:
    """One RPCSEC_GSS context on one link (implements :class:`rpclatch.connect.world.GssContext`)."""

    def __init__(self, flavor: GssClientAuth, link: RpcLink, prog: int, vers: int) -> None:
        self.flavor = flavor
        self.link = link
        self._rpc_call = _rpc_call(link, prog, vers)
        #: the link's ``call`` bound to each program/version called so far (local input: the
        #: programs the application calls)
        self._rpc_calls: dict[tuple[int, int], RpcCall] = {(prog, vers): self._rpc_call}
        #: why the last :meth:`bind_channel` did not bind (its ``reason`` is typed), or None
        self.bind_failure: ChannelBindingFailed | None = None
        #: how many times :meth:`call` saw the flavor replace the context (RFC 2203 §5.3.3.3)
        self.refreshes = 0

    @property
    def version(self) -> int:
        return int(self.flavor.version or 0)

    @property
    def bound(self) -> bool:
        """The flavor holds a binding to a channel (RFC 5403 §3.3): without one it never sends
        channel_prot (:meth:`GssClientAuth.effective_service`)."""
        return self.flavor.bound_channel is not None

    async def call(self, prog: int, vers: int, proc: int, args: bytes) -> bytes:
        """One DATA call through :meth:`GssClientAuth.call`, the flavor's one refresh path: on
        RPCSEC_GSS_CREDPROBLEM / CTXPROBLEM (an expired or dropped context, a server's RFC 5403 §9 (a)
        cap) it makes a new context, re-binds it if it still holds a live channel, and resends once
        (RFC 2203 §5.3.3.3). A refresh is counted in :attr:`refreshes`; the connection compares
        that and :attr:`bound` with its security record after the call."""
        rpc_call = self._rpc_calls.get((prog, vers))
        if rpc_call is None:
            rpc_call = self._rpc_calls[(prog, vers)] = _rpc_call(self.link, prog, vers)
        flavor = self.flavor
        before = flavor.gss_context
        try:
            return await flavor.call(rpc_call, proc, args)
        finally:
            if flavor.gss_context is not before:
                self.refreshes += 1

    def auth(self, service: Service) -> ClientAuth:
        """The flavor, after checking it will really use ``service`` (the policy and the flavor must
        agree: channel_prot only with a live binding, RFC 5403 §3.4)."""
        effective = self.flavor.effective_service()
        if effective is not service:
            raise ConnectError(
                f"RPCSEC_GSS would use {effective.sec_name}, the policy chose {service.sec_name}"
            )
        return self.flavor

    async def bind_channel(self, channel: Any) -> BindOutcome:
        if not isinstance(channel, Channel):
            return BindOutcome.UNSUPPORTED
        self.bind_failure = None
        try:
            await self.flavor.bind_channel(self._rpc_call, channel)
        except ChannelBindingFailed as exc:
            self.bind_failure = exc
            return classify_bind_failure(exc)
        return BindOutcome.BOUND

    async def destroy(self) -> None:
        try:
            await self.flavor.destroy(self._rpc_call)
        except Exception:
            self.flavor.close()  # the server may already have dropped it; release locally


class RpcsecGssConnector:
    """Creates contexts for ``target`` (``nfs@server``) with ``provider`` (the user's credentials),
    for calls to ``prog``/``vers``, asking for ``fallback`` when unbound. ``versions`` is the local
    RPCSEC_GSS version policy: PREFER_V2 (v2 and BIND_CHANNEL; a refused v2 INIT on a channel that
    offers binding data is a failed binding, since nothing authenticates the refusal), or V1_ONLY
    for a server known to have no v2 (the Linux nfsd): no BIND_CHANNEL, the table's "no binding by
    local choice" row, GSS protection over the latch (RFC 5403 §2.1)."""

    def __init__(
        self,
        provider: Provider,
        target: str,
        prog: int,
        vers: int,
        fallback: FallbackService = FallbackService.PRIVACY,
        *,
        versions: VersionPolicy = VersionPolicy.PREFER_V2,
    ) -> None:
        self.provider = provider
        self.target = target
        self.prog = prog
        self.vers = vers
        self.fallback = fallback
        self.versions = versions

    async def establish(self, link: RpcLink, *, want_v2: bool) -> RpcsecGssContext:
        flavor = GssClientAuth(
            self.provider, self.target, service=self.fallback.service, versions=self.versions
        )
        ctx = RpcsecGssContext(flavor, link, self.prog, self.vers)
        await flavor.establish(ctx._rpc_call)
        return ctx
