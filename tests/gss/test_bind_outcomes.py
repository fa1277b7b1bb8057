"""BIND_CHANNEL outcomes under a relay that edits what no MIC covers (RFC 5403 §2, §3.3, §4, §9).

The client flavor against the real server flavor on a real KDC, over
:class:`rpclatch.gss.loopback.LoopbackTransport` whose ``tamper_call`` / ``tamper_reply`` hooks are
the relay. Each failure is typed (:class:`BindFailureReason`); the policy maps it to MISMATCH or
UNSUPPORTED (tests/connect/test_bind_policy.py). After each attack the same client, untampered,
still binds: the server was left in a usable state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import struct
from collections.abc import Callable

import pytest

from rpclatch.gss.channel import InMemoryChannel
from rpclatch.gss.client import GssClientAuth, VersionPolicy
from rpclatch.gss.errors import BindFailureReason, ChannelBindingFailed
from rpclatch.gss.loopback import LoopbackTransport
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.server import GssServerAuth
from rpclatch.gss.wire import (
    SHA1,
    SHA256,
    BindChanMicInRes,
    BindChanRes,
    BindChanStatus,
    BindChanVerfArgs,
    BindChanVerfRes,
    GssCred,
    GssProc,
    HashAlgorithm,
    Service,
)
from rpclatch.rpc.messages import (
    AcceptedReply,
    AcceptStat,
    AuthFlavor,
    AuthStat,
    CallMessage,
    DeniedReply,
    OpaqueAuth,
    RejectStat,
    decode_message,
)

#: an OID no implementation here knows (2.999.1: the example arc of X.660)
UNKNOWN_OID = bytes.fromhex("883701")


def setup(
    realm: ThrowawayRealm,
    *,
    versions: VersionPolicy = VersionPolicy.PREFER_V2,
    hashes: tuple[HashAlgorithm, ...] = (SHA256,),
) -> tuple[GssServerAuth, GssClientAuth, LoopbackTransport, InMemoryChannel]:
    cli_ch, srv_ch = InMemoryChannel.pair("x-test", b"one channel")
    srv = GssServerAuth(GssapiProvider(realm.service_name, keytab=realm.keytab), hashes=hashes)
    t = LoopbackTransport(srv, channel=srv_ch)
    c = GssClientAuth(
        GssapiProvider(ccache=realm.users["bob"].ccache),
        realm.service_name,
        service=Service.INTEGRITY,
        versions=versions,
    )
    return srv, c, t, cli_ch


def is_bind(data: bytes) -> CallMessage | None:
    msg = decode_message(data)
    if not isinstance(msg, CallMessage) or msg.cred.flavor != AuthFlavor.RPCSEC_GSS:
        return None
    return msg if GssCred.decode(msg.cred.body).gss_proc is GssProc.RPCSEC_GSS_BIND_CHANNEL else None


def bind_fails(
    c: GssClientAuth, t: LoopbackTransport, ch: InMemoryChannel, **kw: object
) -> ChannelBindingFailed:
    with pytest.raises(ChannelBindingFailed) as failed:
        asyncio.run(c.bind_channel(t.call, ch, **kw))  # type: ignore[arg-type]
    return failed.value


def binds_untampered(srv: GssServerAuth, c: GssClientAuth, t: LoopbackTransport, ch: InMemoryChannel) -> None:
    """The legitimate exchange on the same server still binds (a fresh context if the old one was
    marked stale) and carries a channel_prot call."""
    t.tamper_call = t.tamper_reply = None
    if not c.established:
        asyncio.run(c.refresh(t.call))
    asyncio.run(c.bind_channel(t.call, ch))
    assert srv.is_bound(c.handle or b"", t.conn) and c.effective_service() is Service.CHANNEL_PROT
    assert t.call_sync(c, 1, b"bound after the attack") == b"bound after the attack"


def prefix_first_answer(
    srv: GssServerAuth, c: GssClientAuth, t: LoopbackTransport, res: BindChanRes
) -> Callable[[bytes], bytes]:
    """A ``tamper_reply`` standing in for a server that checks the prefix and hash OID before the
    request MIC (the RFC 5403 §3.3 order, and this server before issue #10 item 12): it answers
    the BIND_CHANNEL it received with ``res`` under a genuine rbcvr_mic of the server's context."""
    server_gss = srv.gss_context(c.handle or b"")
    assert server_gss is not None

    def answer(data: bytes) -> bytes:
        call = is_bind(t.sent[-1])
        if call is None:
            return data
        seq = GssCred.decode(call.cred.body).seq_num
        cb_hash = (
            b""
            if res.status is BindChanStatus.RGSS2_BIND_CHAN_PREF_NOTSUPP
            else SHA256.digest(b"x-test:one channel")
        )
        mic = server_gss.get_mic(BindChanMicInRes(seq, cb_hash, res).encode())
        verf = OpaqueAuth(AuthFlavor.RPCSEC_GSS, BindChanVerfRes(res, mic).encode())
        return AcceptedReply(call.xid, verf).encode()

    return answer


def rewrite_bind_request(t: LoopbackTransport, **fields: bytes) -> list[BindChanVerfArgs]:
    """The relay rewrites fields of rgss2_bind_chan_verf_args (covered by no MIC); returns what the
    client sent."""
    seen: list[BindChanVerfArgs] = []

    def rewrite(data: bytes) -> bytes:
        call = is_bind(data)
        if call is None:
            return data
        verf = BindChanVerfArgs.decode(call.verf.body)
        seen.append(verf)
        forged = dataclasses.replace(verf, **fields)
        return dataclasses.replace(call, verf=OpaqueAuth(AuthFlavor.RPCSEC_GSS, forged.encode())).encode()

    t.tamper_call = rewrite
    return seen


def test_rewritten_prefix_is_tampering_not_unsupported(realm: ThrowawayRealm) -> None:
    """Issue #10 item 9: rbcva_chan_bind_prefix is under no MIC. A relay rewrites it; a server
    that checks the prefix first answers PREF_NOTSUPP listing the prefix the client did send, with
    a genuine MIC. Before, the client reported "did not converge" (UNSUPPORTED, quiet)."""
    srv, c, t, ch = setup(realm)
    asyncio.run(c.establish(t.call))
    seen = rewrite_bind_request(t, chan_bind_prefix=b"x-rewritten")
    t.tamper_reply = prefix_first_answer(
        srv, c, t, BindChanRes(BindChanStatus.RGSS2_BIND_CHAN_PREF_NOTSUPP, (b"x-test",))
    )
    failed = bind_fails(c, t, ch)
    assert failed.reason is BindFailureReason.TAMPERED_NEGOTIATION
    assert [v.chan_bind_prefix for v in seen] == [b"x-test"]  # it did not retry its own prefix
    assert c.effective_service() is Service.INTEGRITY and not srv.is_bound(c.handle or b"")
    binds_untampered(srv, c, t, ch)


def test_rewritten_prefix_against_this_server_fails_too(realm: ThrowawayRealm) -> None:
    """The same relay against this tree's server: whatever it answers, the bind fails and never
    as a genuine "cannot bind"."""
    srv, c, t, ch = setup(realm)
    asyncio.run(c.establish(t.call))
    rewrite_bind_request(t, chan_bind_prefix=b"x-rewritten")
    failed = bind_fails(c, t, ch)
    assert failed.reason in (BindFailureReason.TAMPERED_NEGOTIATION, BindFailureReason.MIC_MISMATCH)
    binds_untampered(srv, c, t, ch)


def test_rewritten_hash_oid_is_tampering(realm: ThrowawayRealm) -> None:
    """The same for rbcva_chan_bind_oid_hash: HASH_NOTSUPP listing the OID the client sent."""
    srv, c, t, ch = setup(realm)
    asyncio.run(c.establish(t.call))
    rewrite_bind_request(t, chan_bind_oid_hash=UNKNOWN_OID)
    t.tamper_reply = prefix_first_answer(
        srv, c, t, BindChanRes(BindChanStatus.RGSS2_BIND_CHAN_HASH_NOTSUPP, (), (SHA256.oid,))
    )
    assert bind_fails(c, t, ch).reason is BindFailureReason.TAMPERED_NEGOTIATION
    binds_untampered(srv, c, t, ch)


@pytest.mark.parametrize(
    "oids", [(UNKNOWN_OID,), (UNKNOWN_OID, SHA1.oid), ()], ids=["unknown-only", "unknown-first", "empty"]
)
def test_hash_notsupp_that_cannot_be_verified_is_a_failed_bind(
    realm: ThrowawayRealm, oids: tuple[bytes, ...]
) -> None:
    """Issue #10 item 11: a HASH_NOTSUPP whose rbcr_oid_list[0] the client does not know (or an
    empty list, which RFC 5403 §3.3 forbids) cannot be verified: its all-zero MIC is never
    accepted, the client does not go on negotiating from it, and it is no "cannot bind"."""
    srv, c, t, ch = setup(realm)
    asyncio.run(c.establish(t.call))
    forged = []

    def forge(data: bytes) -> bytes:
        reply = decode_message(data)
        assert isinstance(reply, AcceptedReply)
        if oids:
            body = BindChanVerfRes(
                BindChanRes(BindChanStatus.RGSS2_BIND_CHAN_HASH_NOTSUPP, (), oids), bytes(28)
            ).encode()
        else:  # our encoder refuses an empty list: the bytes by hand (status, count 0, MIC)
            body = struct.pack(">III", BindChanStatus.RGSS2_BIND_CHAN_HASH_NOTSUPP, 0, 28) + bytes(28)
        forged.append(body)
        return dataclasses.replace(reply, verf=OpaqueAuth(AuthFlavor.RPCSEC_GSS, body)).encode()

    t.tamper_reply = forge
    failed = bind_fails(c, t, ch, hashes=[SHA256, SHA1])
    assert failed.reason is BindFailureReason.UNVERIFIABLE_REPLY
    assert len(forged) == 1  # nothing more was sent on the strength of the forged list
    binds_untampered(srv, c, t, ch)


def test_hash_notsupp_with_a_forged_mic_is_a_failed_bind(realm: ThrowawayRealm) -> None:
    """A known first OID with a MIC that does not verify: unverifiable as well."""
    srv, c, t, ch = setup(realm)
    asyncio.run(c.establish(t.call))

    def forge(data: bytes) -> bytes:
        reply = decode_message(data)
        assert isinstance(reply, AcceptedReply)
        res = BindChanVerfRes(
            BindChanRes(BindChanStatus.RGSS2_BIND_CHAN_HASH_NOTSUPP, (), (SHA1.oid,)), bytes(28)
        )
        return dataclasses.replace(reply, verf=OpaqueAuth(AuthFlavor.RPCSEC_GSS, res.encode())).encode()

    t.tamper_reply = forge
    assert bind_fails(c, t, ch).reason is BindFailureReason.UNVERIFIABLE_REPLY
    binds_untampered(srv, c, t, ch)


def forge_badcred_to_v2_init(t: LoopbackTransport) -> list[int]:
    """The relay answers the v2 INIT itself with MSG_DENIED / AUTH_BADCRED (what Linux sends)."""
    forged: list[int] = []
    last: list[bool] = [False]

    def on_call(data: bytes) -> bytes:
        msg = decode_message(data)
        assert isinstance(msg, CallMessage)
        cred = GssCred.decode(msg.cred.body) if msg.cred.flavor == AuthFlavor.RPCSEC_GSS else None
        last[0] = cred is not None and cred.version == 2 and cred.gss_proc is GssProc.RPCSEC_GSS_INIT
        return data

    def on_reply(data: bytes) -> bytes:
        if not last[0]:
            return data
        xid = struct.unpack_from(">I", data)[0]
        forged.append(xid)
        return DeniedReply(xid, RejectStat.AUTH_ERROR, auth_stat=AuthStat.AUTH_BADCRED).encode()

    t.tamper_call, t.tamper_reply = on_call, on_reply
    return forged


def test_v1_after_refused_v2_is_reported_as_such_on_a_bindable_channel(realm: ThrowawayRealm) -> None:
    """Issue #10 item 10: a forged AUTH_BADCRED to the v2 INIT gives a v1 context; binding it is
    not "the server cannot bind" but a fallback nothing authenticated."""
    srv, c, t, ch = setup(realm)
    forged = forge_badcred_to_v2_init(t)
    asyncio.run(c.establish(t.call))
    assert forged and c.version == 1
    failed = bind_fails(c, t, ch)
    assert failed.reason is BindFailureReason.V1_FALLBACK_ON_BINDABLE_CHANNEL
    assert "AUTH_BADCRED" in str(failed)
    # a refresh of that context keeps the knowledge
    asyncio.run(c.refresh(t.call))
    assert c.version == 1 and bind_fails(c, t, ch).reason is BindFailureReason.V1_FALLBACK_ON_BINDABLE_CHANNEL
    # without the relay the same client gets v2 and binds
    t.tamper_call = t.tamper_reply = None
    asyncio.run(c.establish(t.call))
    binds_untampered(srv, c, t, ch)


def test_v1_by_local_policy_is_v1_only(realm: ThrowawayRealm) -> None:
    _srv, c, t, ch = setup(realm, versions=VersionPolicy.V1_ONLY)
    asyncio.run(c.establish(t.call))
    assert bind_fails(c, t, ch).reason is BindFailureReason.V1_ONLY


def test_bind_channel_accepted_error_needs_its_mic(realm: ThrowawayRealm) -> None:
    """An accepted error to BIND_CHANNEL without MIC(seq_num) is no answer of the server."""
    srv, c, t, ch = setup(realm)
    asyncio.run(c.establish(t.call))

    def forge(data: bytes) -> bytes:
        reply = decode_message(data)
        assert isinstance(reply, AcceptedReply)
        return AcceptedReply(reply.xid, stat=AcceptStat.SYSTEM_ERR).encode()

    t.tamper_reply = forge
    assert bind_fails(c, t, ch).reason is BindFailureReason.UNVERIFIABLE_REPLY
    binds_untampered(srv, c, t, ch)


def test_contradictory_negotiation_is_a_loop(realm: ThrowawayRealm) -> None:
    """Two prefixes, each refused pointing at the other (verified MICs): contradictory answers,
    not "no common prefix"."""
    shared = InMemoryChannel.pair("x-a", b"one")[0]._shared
    cli_ch = InMemoryChannel("x-a", b"one", _shared=shared, extra_bindings={"x-b": b"two"})
    srv, c, t, _ = setup(realm)
    asyncio.run(c.establish(t.call))
    pref_notsupp = BindChanStatus.RGSS2_BIND_CHAN_PREF_NOTSUPP
    a_refused = prefix_first_answer(srv, c, t, BindChanRes(pref_notsupp, (b"x-b",)))
    b_refused = prefix_first_answer(srv, c, t, BindChanRes(pref_notsupp, (b"x-a",)))

    def answer(data: bytes) -> bytes:
        call = is_bind(t.sent[-1])
        assert call is not None
        sent = BindChanVerfArgs.decode(call.verf.body).chan_bind_prefix
        return a_refused(data) if sent == b"x-a" else b_refused(data)

    t.tamper_reply = answer
    assert bind_fails(c, t, cli_ch).reason is BindFailureReason.NEGOTIATION_LOOP
