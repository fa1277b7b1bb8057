"""RPCSEC_GSS for the connect policy: :class:`GssConnector` over :mod:`rpclatch.gss.client`.

The RPCSEC_GSS client's control exchanges (INIT, BIND_CHANNEL, DESTROY) are coroutines taking an
``rpc_call``, which here is the link's own ``call``. One :class:`RpcsecGssContext` per connection:
a context bound to a channel dies with the connection (RFC 5403 §3.4; digest §9 step 6).
"""

from __future__ import annotations

from typing import Any

from rpclatch.connect.policy import BindOutcome, GssService, Protection
from rpclatch.connect.world import ConnectError, RpcLink
from rpclatch.gss.channel import Channel
from rpclatch.gss.client import GssClientAuth, RpcCall, VersionPolicy
from rpclatch.gss.errors import ChannelBindingFailed
from rpclatch.gss.provider import Provider
from rpclatch.gss.wire import RPCSEC_GSS_VERS_2, Service
from rpclatch.rpc.auth import ClientAuth

_TO_WIRE = {Protection.INTEGRITY: Service.INTEGRITY, Protection.PRIVACY: Service.PRIVACY}


def _rpc_call(link: RpcLink, prog: int, vers: int) -> RpcCall:
    async def rpc_call(auth: ClientAuth, proc: int, args: bytes) -> bytes:
        return await link.call(auth, prog, vers, proc, args)

    return rpc_call


def classify_bind_failure(exc: ChannelBindingFailed, version: int | None) -> BindOutcome:
    """MISMATCH when either side's MIC over the channel bindings failed (the two ends see different
    channels, RFC 5403 §2); UNSUPPORTED when the server simply cannot bind (v1 handle, no common
    prefix or hash, RFC 5403 §3.3 negotiation)."""
    if version != RPCSEC_GSS_VERS_2:
        return BindOutcome.UNSUPPORTED
    text = str(exc)
    if "no common" in text or "offers none" in text or "did not converge" in text or "v1" in text:
        return BindOutcome.UNSUPPORTED
    return BindOutcome.MISMATCH


class RpcsecGssContext:
    """One RPCSEC_GSS context on one link (implements :class:`rpclatch.connect.world.GssContext`)."""

    def __init__(self, flavor: GssClientAuth, link: RpcLink, prog: int, vers: int) -> None:
        self.flavor = flavor
        self.link = link
        self._rpc_call = _rpc_call(link, prog, vers)

    @property
    def version(self) -> int:
        return int(self.flavor.version or 0)

    def auth(self, service: GssService) -> ClientAuth:
        """The flavor, after checking it will really use ``service`` (the policy and the flavor must
        agree: channel_prot only with a live binding, RFC 5403 §3.4)."""
        effective = GssService.from_wire(int(self.flavor.effective_service()))
        if effective is not service:
            raise ConnectError(f"RPCSEC_GSS would use {effective.value}, the policy chose {service.value}")
        return self.flavor

    async def bind_channel(self, channel: Any) -> BindOutcome:
        if not isinstance(channel, Channel):
            return BindOutcome.UNSUPPORTED
        try:
            await self.flavor.bind_channel(self._rpc_call, channel)
        except ChannelBindingFailed as exc:
            self.bind_error = str(exc)
            return classify_bind_failure(exc, self.flavor.version)
        return BindOutcome.BOUND

    async def destroy(self) -> None:
        try:
            await self.flavor.destroy(self._rpc_call)
        except Exception:
            self.flavor.close()  # the server may already have dropped it; release locally


class RpcsecGssConnector:
    """Creates contexts for ``target`` (``nfs@server``) with ``provider`` (the user's credentials),
    for calls to ``prog``/``vers``, asking for ``protection`` when unbound."""

    def __init__(self, provider: Provider, target: str, prog: int, vers: int,
                 protection: Protection = Protection.PRIVACY) -> None:
        self.provider = provider
        self.target = target
        self.prog = prog
        self.vers = vers
        self.protection = protection

    async def establish(self, link: RpcLink, *, want_v2: bool) -> RpcsecGssContext:
        flavor = GssClientAuth(self.provider, self.target, service=_TO_WIRE[self.protection],
                               versions=VersionPolicy.PREFER_V2)
        ctx = RpcsecGssContext(flavor, link, self.prog, self.vers)
        await flavor.establish(ctx._rpc_call)
        return ctx
