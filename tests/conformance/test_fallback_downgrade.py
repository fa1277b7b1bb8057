"""Attack A11 of docs/design.md (RFC 5403 §9): an RPCSEC_GSS version rollback by a MITM that
relays the RPC stream, against a v2 server and our client.

Where the attacker sits. The simulated network's attackers (rpclatch.netsim.attacker) steal
addresses, key flows and relay *bytes* (A9's concatenated-SA MITM); they have no hook that parses
and rewrites ONC RPC records inside a relayed stream, and on a latched flow no third party can
rewrite anything (ESP). So the rewriting relay is modelled at the RPC message layer: the
:class:`rpclatch.gss.loopback.LoopbackTransport` ``tamper_call`` / ``tamper_reply`` hooks change
each encoded call/reply between our client (:class:`GssClientAuth`, the code the sim and real
connections use) and the real server flavor (:class:`GssServerAuth`) on a real MIT KDC. The
channel is an :class:`InMemoryChannel` pair whose ends differ, as for a MITM that terminated
the secure channel (A9).

Two rollbacks:

* A11-badcred: the MITM answers the v2 INIT with a forged AUTH_BADCRED (what Linux sends when it
  has no v2). PREFER_V2 (default) falls back to v1 on a fresh context: documented outcome, the
  context can never be channel-bound, so ``channel_prot`` is never used and the connection runs
  krb5i/krb5p (GSS end to end: the MITM still cannot read or change DATA). REQUIRE_V2 (what
  ``require_binding`` asks for) refuses with VersionNotSupported.
* A11-rewrite: the MITM rewrites the v2 INIT's credential version to 1 (the INIT header carries
  no MIC, RFC 2203 §5.2.2). The server makes a v1 context; our client believes v2. Its
  BIND_CHANNEL (v2 credential on a v1 handle) fails, so again no ``channel_prot``; each forged
  BIND_CHANNEL on a v2 context halves its lifetime (RFC 5403 §9 mitigation (a), see CB-03/CB-11).
"""

from __future__ import annotations

import struct

import pytest

from rpclatch.gss.channel import InMemoryChannel
from rpclatch.gss.client import GssClientAuth, VersionPolicy
from rpclatch.gss.errors import ChannelBindingFailed, GssError, VersionNotSupported
from rpclatch.gss.loopback import LoopbackTransport
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.server import GssServerAuth
from rpclatch.gss.wire import GssCred, GssProc, Service
from rpclatch.rpc.errors import RpcError
from rpclatch.rpc.messages import (
    AuthFlavor,
    AuthStat,
    CallMessage,
    DeniedReply,
    OpaqueAuth,
    RejectStat,
    decode_message,
)

from .support import Clock, run


def _gss_cred(call: CallMessage) -> GssCred | None:
    if call.cred.flavor != AuthFlavor.RPCSEC_GSS:
        return None
    return GssCred.decode(call.cred.body)


class RollbackMitm:
    """Relays calls/replies, rewriting the RPCSEC_GSS version negotiation."""

    def __init__(self, t: LoopbackTransport, mode: str) -> None:
        self.mode = mode
        self.rewritten = 0
        self.forged = 0
        self._last_was_v2_init = False
        t.tamper_call = self.on_call
        t.tamper_reply = self.on_reply

    def on_call(self, data: bytes) -> bytes:
        call = decode_message(data)
        assert isinstance(call, CallMessage)
        cred = _gss_cred(call)
        self._last_was_v2_init = (
            cred is not None and cred.version == 2 and cred.gss_proc is GssProc.RPCSEC_GSS_INIT
        )
        if self._last_was_v2_init and self.mode == "rewrite":
            body = struct.pack(">I", 1) + call.cred.body[4:]
            self.rewritten += 1
            return CallMessage(
                call.xid,
                call.prog,
                call.vers,
                call.proc,
                OpaqueAuth(AuthFlavor.RPCSEC_GSS, body),
                call.verf,
                call.args,
            ).encode()
        return data

    def on_reply(self, data: bytes) -> bytes:
        if self._last_was_v2_init and self.mode == "badcred":
            self.forged += 1
            xid = struct.unpack(">I", data[:4])[0]
            return DeniedReply(xid, RejectStat.AUTH_ERROR, auth_stat=AuthStat.AUTH_BADCRED).encode()
        return data


def _setup(
    realm: ThrowawayRealm, mode: str, versions: VersionPolicy, srv_ch: InMemoryChannel | None = None
) -> tuple[GssServerAuth, GssClientAuth, LoopbackTransport, RollbackMitm, Clock]:
    clock = Clock()
    if srv_ch is None:
        _cli_ch, srv_ch = InMemoryChannel.pair("x-test", b"client-sees", other_data=b"server-sees")
    srv = GssServerAuth(GssapiProvider(realm.service_name, keytab=realm.keytab), max_lifetime=28800.0)
    t = LoopbackTransport(srv, channel=srv_ch, now=clock)
    mitm = RollbackMitm(t, mode)
    c = GssClientAuth(
        GssapiProvider(ccache=realm.users["bob"].ccache),
        realm.service_name,
        service=Service.INTEGRITY,
        versions=versions,
    )
    return srv, c, t, mitm, clock


def _channel() -> InMemoryChannel:
    return InMemoryChannel.pair("x-test", b"client-sees", other_data=b"server-sees")[0]


@pytest.mark.conformance(id="A11-badcred-default", rfc="RFC 5403 §4, §9")
def test_a11_forged_badcred_default_policy_falls_back_to_v1_without_channel_prot(
    realm: ThrowawayRealm,
) -> None:
    srv, c, t, mitm, _ = _setup(realm, "badcred", VersionPolicy.PREFER_V2)
    run(c.establish(t.call))
    assert mitm.forged == 1 and c.version == 1  # the documented PREFER_V2 outcome
    with pytest.raises(ChannelBindingFailed):
        run(c.bind_channel(t.call, _channel()))
    assert c.effective_service() == Service.INTEGRITY  # never channel_prot
    assert not srv.is_bound(c.handle or b"")
    # GSS is end to end: DATA still works, and the MITM cannot change it undetected
    assert t.call_sync(c, 1, b"krb5i through the relay") == b"krb5i through the relay"
    t.tamper_call = lambda d: d[:-1] + bytes([d[-1] ^ 1])
    with pytest.raises((RpcError, GssError)):
        t.call_sync(c, 1, b"tampered")


@pytest.mark.conformance(id="A11-badcred-require-v2", rfc="RFC 5403 §4, §9")
def test_a11_forged_badcred_require_v2_refuses(realm: ThrowawayRealm) -> None:
    _srv, c, t, mitm, _ = _setup(realm, "badcred", VersionPolicy.REQUIRE_V2)
    with pytest.raises(VersionNotSupported, match="not falling back"):
        run(c.establish(t.call))
    assert mitm.forged == 1 and not c.established


@pytest.mark.conformance(id="A11-rewrite-v1", rfc="RFC 5403 §9; RFC 2203 §5.2.2")
@pytest.mark.parametrize("mode", ["rewrite", "none"], ids=["rewritten", "control"])
@pytest.mark.parametrize(
    "versions", [VersionPolicy.PREFER_V2, VersionPolicy.REQUIRE_V2], ids=["default", "require-v2"]
)
def test_a11_init_rewritten_to_v1_never_yields_channel_prot(
    realm: ThrowawayRealm, versions: VersionPolicy, mode: str
) -> None:
    """The channel itself is not attacked here (both ends see the same binding): only the version
    is rolled back. The client believes it has v2 (the INIT reply carries no version), the server
    holds a v1 context, so the v2 BIND_CHANNEL is refused (AUTH_BADCRED) under either policy and
    ``channel_prot`` is never used; the control without the rewrite binds."""
    cli_ch, srv_ch = InMemoryChannel.pair("x-test", b"same channel")
    srv, c, t, mitm, _ = _setup(realm, mode, versions, srv_ch)
    run(c.establish(t.call))
    assert c.version == 2
    if mode == "none":
        run(c.bind_channel(t.call, cli_ch))
        assert srv.is_bound(c.handle or b"") and c.effective_service() == Service.CHANNEL_PROT
        return
    assert mitm.rewritten == 1
    with pytest.raises(ChannelBindingFailed, match="AUTH_BADCRED"):
        run(c.bind_channel(t.call, cli_ch))
    assert c.effective_service() == Service.INTEGRITY
    assert not srv.is_bound(c.handle or b"")


@pytest.mark.conformance(id="A11-forged-bind", rfc="RFC 5403 §9 (a)")
def test_a11_repeated_forged_bind_channel_halves_lifetime_until_the_context_dies(
    realm: ThrowawayRealm,
) -> None:
    """The §9 mitigation on a genuine v2 context that a MITM (different channel ends) tries to
    bind: every failed BIND_CHANNEL halves the context lifetime."""
    srv, c, t, _mitm, clock = _setup(realm, "none", VersionPolicy.PREFER_V2)
    run(c.establish(t.call))
    assert c.version == 2
    handle = c.handle or b""
    lifetimes = []
    for _ in range(4):
        with pytest.raises(ChannelBindingFailed):
            run(c.bind_channel(t.call, _channel()))
        expiry = srv.context_expiry(handle)
        assert expiry is not None
        lifetimes.append(expiry - clock.t)
    assert lifetimes == [14400.0, 7200.0, 3600.0, 1800.0]
