"""RPCSEC_GSS v2 channel binding conformance (RFC 5403 §3.3, §3.4, §7, §9; RFC 5554) on a real KDC.

Each test's marker names the RFC section it checks. CB-07 covers v1 handles (v3 is not served,
so it gets AUTH_REJECTEDCRED); CB-08 and CB-13 the GSS-level bindings through MIT krb5 and the Bnd
libkrb5 derives from our struct (RFC 4121 §4.1.1.2); CB-10 and CB-11 attacks A10 (one-sided
latching) and A11 (mitigation (a)) of docs/design.md; CB-12 the verifier size. Channels are
:class:`rpclatch.gss.channel.InMemoryChannel` pairs; a MITM is a pair whose two ends carry
different binding data (each side sees the channel the attacker terminated).
"""

from __future__ import annotations

import dataclasses

import pytest

from rpclatch.gss.bindings import gss_channel_bindings, krb5_bnd
from rpclatch.gss.channel import InMemoryChannel, Protection
from rpclatch.gss.client import GssClientAuth, VersionPolicy
from rpclatch.gss.errors import BindFailureReason, ChannelBindingFailed, GssError, GssMajor, RpcGssLocalError
from rpclatch.gss.loopback import LoopbackTransport
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.server import GssServerAuth
from rpclatch.gss.wire import (
    MAX_KRB5_MIC,
    MAX_OID,
    MAX_PREFIX,
    SHA1,
    SHA256,
    SHA384,
    SHA512,
    BindChanMicInRes,
    BindChanStatus,
    BindChanVerfArgs,
    BindChanVerfRes,
    GssCred,
    GssProc,
    Service,
    bind_chan_verifier_size,
    channel_bindings_bytes,
)
from rpclatch.rpc.auth import AuthAccept, AuthDeny, ConnectionInfo
from rpclatch.rpc.errors import RpcAuthError
from rpclatch.rpc.messages import (
    MAX_AUTH_BYTES,
    NULL_AUTH,
    AcceptedReply,
    AuthFlavor,
    AuthStat,
    CallMessage,
    DeniedReply,
    OpaqueAuth,
    decode_message,
)

from .support import Clock, run


def make(
    realm: ThrowawayRealm,
    *,
    service: Service = Service.INTEGRITY,
    channel: object = None,
    versions: VersionPolicy = VersionPolicy.PREFER_V2,
    **srv_kw: object,
) -> tuple[GssServerAuth, GssClientAuth, LoopbackTransport, Clock]:
    clock = Clock()
    srv = GssServerAuth(GssapiProvider(realm.service_name, keytab=realm.keytab), **srv_kw)  # type: ignore[arg-type]
    t = LoopbackTransport(srv, channel=channel, now=clock)
    c = GssClientAuth(
        GssapiProvider(ccache=realm.users["bob"].ccache),
        realm.service_name,
        service=service,
        versions=versions,
    )
    run(c.establish(t.call))
    return srv, c, t, clock


def last_call(t: LoopbackTransport) -> CallMessage:
    msg = decode_message(t.sent[-1])
    assert isinstance(msg, CallMessage)
    return msg


@pytest.mark.conformance(id="CB-01", rfc="RFC 5403 §3.3")
def test_cb_01_bind_channel_request_and_reply(realm: ThrowawayRealm) -> None:
    cli_ch, srv_ch = InMemoryChannel.pair("x-test", b"channel-identity")
    srv, c, t, _ = make(realm, channel=srv_ch)
    run(c.bind_channel(t.call, cli_ch))
    call = last_call(t)
    cred = GssCred.decode(call.cred.body)
    assert call.proc == 0 and call.args == b""
    assert (cred.version, cred.gss_proc, cred.service) == (2, GssProc.RPCSEC_GSS_BIND_CHANNEL, Service.NONE)
    assert cred.seq_num >= 1
    verf = BindChanVerfArgs.decode(call.verf.body)
    assert verf.chan_bind_prefix == b"x-test" and verf.chan_bind_oid_hash == SHA256.oid
    cb_hash = SHA256.digest(b"x-test:channel-identity")
    assert cb_hash not in t.sent[-1] and b"channel-identity" not in t.sent[-1]  # never on the wire
    assert len(call.verf.body) <= MAX_AUTH_BYTES
    assert srv.is_bound(c.handle or b"", t.conn)
    assert c.effective_service() == Service.CHANNEL_PROT
    # The reply MIC covers {seq_num, hash, result} and verifies with the client's hash (replay it).
    reply = t.serve(t.sent[-1])
    assert reply is None  # the same seq_num again is a replay: dropped
    assert t.call_sync(c, 1, b"over the channel") == b"over the channel"


@pytest.mark.conformance(id="CB-02", rfc="RFC 5403 §3.3 (PREF_NOTSUPP, HASH_NOTSUPP)")
def test_cb_02_prefix_and_hash_negotiation(realm: ThrowawayRealm) -> None:
    # The channel is known by two prefixes; the server accepts only the second.
    shared = InMemoryChannel.pair("x-first", b"one")[0]._shared
    cli_ch = InMemoryChannel("x-first", b"one", _shared=shared, extra_bindings={"x-second": b"two"})
    srv_ch = InMemoryChannel("x-first", b"one", _shared=shared, extra_bindings={"x-second": b"two"})
    srv, c, t, _ = make(realm, channel=srv_ch, prefixes=["x-second"], hashes=[SHA256, SHA384])
    run(c.bind_channel(t.call, cli_ch, hashes=[SHA1, SHA256]))
    verfs = [BindChanVerfArgs.decode(decode_message(d).verf.body) for d in t.sent[1:]]  # type: ignore[union-attr]
    assert [(v.chan_bind_prefix, v.chan_bind_oid_hash) for v in verfs] == [
        (b"x-first", SHA1.oid),  # -> PREF_NOTSUPP [x-second]
        (b"x-second", SHA1.oid),  # -> HASH_NOTSUPP [sha256, sha384]
        (b"x-second", SHA256.oid),  # -> OK
    ]
    assert srv.is_bound(c.handle or b"", t.conn)
    # The raw replies: PREF_NOTSUPP lists prefixes; HASH_NOTSUPP lists OIDs and its MIC is over the
    # hash computed with rbcr_oid_list[0].
    srv2, c2, t2, _ = make(realm, channel=srv_ch, hashes=[SHA256])
    with pytest.raises(ChannelBindingFailed) as failed:
        run(c2.bind_channel(t2.call, cli_ch, hashes=[SHA1]))
    assert failed.value.reason is BindFailureReason.NO_COMMON_HASH
    reply = decode_message(t2.serve(_resend_with_new_seq(t2, c2)) or b"")
    assert isinstance(reply, AcceptedReply)
    res = BindChanVerfRes.decode(reply.verf.body)
    assert res.res.status == BindChanStatus.RGSS2_BIND_CHAN_HASH_NOTSUPP
    assert res.res.oid_list == (SHA256.oid,)
    seq = GssCred.decode(last_call(t2).cred.body).seq_num
    c2._current().gss.verify_mic(
        BindChanMicInRes(seq, SHA256.digest(b"x-first:one"), res.res).encode(), res.mic
    )
    assert not srv2.is_bound(c2.handle or b"")
    assert c2.effective_service() == Service.INTEGRITY


def _resend_with_new_seq(t: LoopbackTransport, c: GssClientAuth) -> bytes:
    """Re-sign the last BIND_CHANNEL with a fresh seq_num (as a client retry would)."""
    from rpclatch.gss.client import _BindAuth

    verf = BindChanVerfArgs.decode(last_call(t).verf.body)
    bind = _BindAuth(c, c._current(), verf.chan_bind_prefix.decode(), SHA1, SHA1.digest(b"x-first:one"))
    data = bind.prepare_call(0x5555, t.prog, t.vers, 0, b"").message.encode()
    t.sent.append(data)
    return data


@pytest.mark.conformance(id="CB-03", rfc="RFC 5403 §2, §9")
def test_cb_03_mitm_fails_on_both_sides_and_halves_lifetime(realm: ThrowawayRealm) -> None:
    cli_ch, srv_ch = InMemoryChannel.pair("x-test", b"client-sees", other_data=b"server-sees")
    srv, c, t, clock = make(realm, channel=srv_ch, max_lifetime=28800.0)
    handle = c.handle or b""
    expiry = srv.context_expiry(handle)
    assert expiry == clock.t + 28800.0
    with pytest.raises(ChannelBindingFailed) as failed:
        run(c.bind_channel(t.call, cli_ch))
    assert failed.value.reason is BindFailureReason.MIC_MISMATCH
    assert not srv.is_bound(handle)  # server side: MIC over its own hash did not verify
    assert c.effective_service() == Service.INTEGRITY  # client side: never channel_prot
    assert srv.context_expiry(handle) == clock.t + 14400.0  # halved (RFC 5403 §9)
    for _ in range(3):
        with pytest.raises(ChannelBindingFailed):
            run(c.bind_channel(t.call, cli_ch))
    assert srv.context_expiry(handle) == clock.t + 28800.0 / 16
    # Integrity keeps working on the context meanwhile (the GSS context is end to end).
    assert t.call_sync(c, 1, b"still fine") == b"still fine"
    # Repeated forgeries drive the lifetime to nothing: the context dies (rollback mitigation).
    for _ in range(20):
        with pytest.raises(ChannelBindingFailed):
            run(c.bind_channel(t.call, cli_ch))
        clock.t += 0.01
    res = srv.check_call(c.prepare_call(1, t.prog, t.vers, 1, b"").message, t.conn, clock.t)
    assert isinstance(res, AuthDeny)  # expired (CTXPROBLEM) or already purged (CREDPROBLEM)
    assert res.stat in (AuthStat.RPCSEC_GSS_CTXPROBLEM, AuthStat.RPCSEC_GSS_CREDPROBLEM)
    assert srv.context_expiry(handle) is None and srv.context_count() == 0


@pytest.mark.conformance(id="CB-04", rfc="RFC 5403 §3.4, §9")
def test_cb_04_channel_prot_verifiers_and_refusals(realm: ThrowawayRealm) -> None:
    cli_ch, srv_ch = InMemoryChannel.pair("x-test", b"ok")
    srv, c, t, clock = make(realm, channel=srv_ch, max_lifetime=600.0)
    msg_unbound = c.prepare_call(1, t.prog, t.vers, 1, b"")
    assert msg_unbound.message.verf.flavor == AuthFlavor.RPCSEC_GSS
    # channel_prot on an unbound handle is refused.
    cred = GssCred.decode(msg_unbound.message.cred.body)
    forged = dataclasses.replace(
        msg_unbound.message,
        verf=NULL_AUTH,
        cred=OpaqueAuth(6, dataclasses.replace(cred, service=Service.CHANNEL_PROT).encode()),
    )
    res = srv.check_call(forged, t.conn, clock.t)
    assert isinstance(res, AuthDeny) and res.stat == AuthStat.RPCSEC_GSS_CTXPROBLEM
    run(c.bind_channel(t.call, cli_ch))
    prepared = c.prepare_call(2, t.prog, t.vers, 1, b"data")
    assert prepared.message.verf == NULL_AUTH and prepared.message.args == b"data"
    ok = srv.check_call(prepared.message, t.conn, clock.t)
    assert isinstance(ok, AuthAccept)
    assert ok.seal(b"res") == (NULL_AUTH, b"res")  # reply verifier AUTH_NONE, results in clear
    # On another connection (same server, no or other channel): refused.
    other = ConnectionInfo(t.conn.conn_id + 1, None, "sim", srv_ch)
    res = srv.check_call(c.prepare_call(3, t.prog, t.vers, 1, b"").message, other, clock.t)
    assert isinstance(res, AuthDeny) and res.stat == AuthStat.RPCSEC_GSS_CTXPROBLEM
    # After expiry: refused.
    late = c.prepare_call(4, t.prog, t.vers, 1, b"").message
    res = srv.check_call(late, t.conn, clock.t + 601)
    assert isinstance(res, AuthDeny) and res.stat == AuthStat.RPCSEC_GSS_CTXPROBLEM


@pytest.mark.conformance(id="CB-05", rfc="RFC 5403 §3.4 (channel gone); RFC 5660 §2.3")
def test_cb_05_channel_prot_after_break_and_close(realm: ThrowawayRealm) -> None:
    cli_ch, srv_ch = InMemoryChannel.pair("x-test", b"ok")
    srv, c, t, clock = make(realm, channel=srv_ch)
    run(c.bind_channel(t.call, cli_ch))
    before_break = c.prepare_call(1, t.prog, t.vers, 1, b"").message
    srv_ch.break_()
    res = srv.check_call(before_break, t.conn, clock.t)
    assert isinstance(res, AuthDeny) and res.stat == AuthStat.RPCSEC_GSS_CTXPROBLEM
    assert not srv.is_bound(c.handle or b"")
    # The client heard the break too and uses integrity again; calls keep working.
    assert c.effective_service() == Service.INTEGRITY
    assert t.call_sync(c, 1, b"after break") == b"after break"
    # connection_closed() forgets bindings made on that connection.
    cli2, srv2 = InMemoryChannel.pair("x-test", b"second")
    t.conn.channel = srv2
    run(c.bind_channel(t.call, cli2))
    assert srv.is_bound(c.handle or b"", t.conn)
    srv.connection_closed(t.conn)
    assert not srv.is_bound(c.handle or b"")
    # A client still mapping to channel_prot is refused, drops the binding and resends once.
    assert c.effective_service() == Service.CHANNEL_PROT
    assert t.call_sync(c, 1, b"fallback") == b"fallback"
    assert c.effective_service() == Service.INTEGRITY


@pytest.mark.conformance(id="CB-06", rfc="RFC 5403 §7; RFC 5056 §2.1")
def test_cb_06_privacy_maps_only_to_confidential_channels(realm: ThrowawayRealm) -> None:
    cli_ch, srv_ch = InMemoryChannel.pair("x-test", b"integ-only", Protection.INTEGRITY)
    _, c, t, _ = make(realm, service=Service.PRIVACY, channel=srv_ch)
    run(c.bind_channel(t.call, cli_ch))
    assert c.effective_service() == Service.PRIVACY  # AH / ESP-NULL style channel: keep krb5p
    sent_cred = GssCred.decode(c.prepare_call(1, t.prog, t.vers, 1, b"").message.cred.body)
    assert sent_cred.service == Service.PRIVACY
    cli_c, srv_c = InMemoryChannel.pair("x-test", b"encrypting")
    _, c2, t2, _ = make(realm, service=Service.PRIVACY, channel=srv_c)
    run(c2.bind_channel(t2.call, cli_c))
    assert c2.effective_service() == Service.CHANNEL_PROT
    _, c3, t3, _ = make(realm, service=Service.INTEGRITY, channel=srv_ch)
    run(c3.bind_channel(t3.call, cli_ch))
    assert c3.effective_service() == Service.CHANNEL_PROT  # integrity maps on any channel


@pytest.mark.conformance(id="CB-07", rfc="RFC 5403 §3.3, §4; RFC 7861 §2.5")
def test_cb_07_bind_channel_refused_on_v1_handles(realm: ThrowawayRealm) -> None:
    cli_ch, srv_ch = InMemoryChannel.pair("x-test", b"ok")
    srv, c, t, clock = make(realm, channel=srv_ch, versions=VersionPolicy.V1_ONLY)
    assert c.version == 1
    with pytest.raises(ChannelBindingFailed) as failed:
        run(c.bind_channel(t.call, cli_ch))  # the client knows a v1 handle cannot be bound
    assert failed.value.reason is BindFailureReason.V1_ONLY
    # Forced onto the wire: a v1 credential with BIND_CHANNEL -> AUTH_BADCRED.
    base = c.prepare_call(1, t.prog, t.vers, 0, b"").message
    cred = dataclasses.replace(
        GssCred.decode(base.cred.body), gss_proc=GssProc.RPCSEC_GSS_BIND_CHANNEL, service=Service.NONE
    )
    res = srv.check_call(dataclasses.replace(base, cred=OpaqueAuth(6, cred.encode())), t.conn, clock.t)
    assert isinstance(res, AuthDeny) and res.stat == AuthStat.AUTH_BADCRED
    # ...and a v2 credential naming a v1 handle is refused as well (handles never cross versions).
    v2 = dataclasses.replace(cred, version=2)
    res = srv.check_call(dataclasses.replace(base, cred=OpaqueAuth(6, v2.encode())), t.conn, clock.t)
    assert isinstance(res, AuthDeny) and res.stat == AuthStat.AUTH_BADCRED
    # v3 is not served at all (RFC 5403 §4 / RFC 2203 §5.1 answer).
    v3 = b"\0\0\0\3" + v2.encode()[4:]
    res = srv.check_call(dataclasses.replace(base, cred=OpaqueAuth(6, v3)), t.conn, clock.t)
    assert isinstance(res, AuthDeny) and res.stat == AuthStat.AUTH_REJECTEDCRED


@pytest.mark.conformance(id="CB-08", rfc="RFC 5554 §4; RFC 4121 §4.1.1.2; RFC 5056 §3.1")
def test_cb_08_gss_level_channel_bindings(realm: ThrowawayRealm) -> None:
    acceptor = GssapiProvider(realm.service_name, keytab=realm.keytab)
    initiator = GssapiProvider(ccache=realm.users["alice"].ccache)

    def handshake(icb: bytes | None, acb: bytes | None, require: bool) -> None:
        i = initiator.initiate(realm.service_name, channel_bindings=icb)
        a = acceptor.accept(channel_bindings=acb, require_channel_bindings=require)
        reply = a.step(i.step(None))
        i.step(reply)

    handshake(b"x-test:same", b"x-test:same", True)
    with pytest.raises(GssError) as err:
        handshake(b"x-test:client", b"x-test:server", True)
    assert err.value.major == GssMajor.GSS_S_BAD_BINDINGS
    with pytest.raises(GssError) as err:  # MIT alone would accept an initiator that sent none
        handshake(None, b"x-test:same", True)
    assert err.value.major == GssMajor.GSS_S_BAD_BINDINGS
    # Through RPCSEC_GSS: a server requiring GSS-level bindings of the connection's channel.
    cli_ch, srv_ch = InMemoryChannel.pair("x-test", b"gss-level")
    srv = GssServerAuth(acceptor, gss_channel_bindings=True)
    t = LoopbackTransport(srv, channel=srv_ch)
    good = GssClientAuth(initiator, realm.service_name, gss_channel_bindings=cli_ch.channel_bindings())
    run(good.establish(t.call))
    bad = GssClientAuth(initiator, realm.service_name, gss_channel_bindings=b"x-test:mitm")
    from rpclatch.gss.errors import ContextInitFailed

    with pytest.raises(ContextInitFailed) as failed:
        run(bad.establish(t.call))
    assert failed.value.major == GssMajor.GSS_S_BAD_BINDINGS


@pytest.mark.conformance(id="CB-09", rfc="RFC 5403 §2, §3.3 (initiator verifies rbcvr_mic)")
def test_cb_09_client_rejects_forged_bind_reply(realm: ThrowawayRealm) -> None:
    cli_ch, srv_ch = InMemoryChannel.pair("x-test", b"ok")
    srv, c, t, _ = make(realm, channel=srv_ch)

    def forge(data: bytes) -> bytes:
        reply = decode_message(data)
        assert isinstance(reply, AcceptedReply)
        res = BindChanVerfRes.decode(reply.verf.body)
        fake = BindChanVerfRes(res.res, bytes(len(res.mic)))
        return dataclasses.replace(reply, verf=OpaqueAuth(6, fake.encode())).encode()

    t.tamper_reply = forge
    with pytest.raises(ChannelBindingFailed) as failed:
        run(c.bind_channel(t.call, cli_ch))
    assert failed.value.reason is BindFailureReason.MIC_MISMATCH
    t.tamper_reply = None
    assert c.bound_channel is None and c.effective_service() == Service.INTEGRITY
    # The context is marked for refresh: the next call through the helper makes a new one.
    old = c.handle or b""
    assert srv.is_bound(old)  # the server did bind: only the reply was forged
    assert run(c.call(t.call, 1, b"x")) == b"x"
    assert c.handle != old
    assert not srv.is_bound(old) and srv.context_expiry(old) is None  # the old one was destroyed


@pytest.mark.conformance(id="CB-10", rfc="RFC 5403 §2, §3.3; RFC 2203 §5.3.3.4.2 (no server channel)")
def test_cb_10_bind_without_server_side_channel(realm: ThrowawayRealm) -> None:
    cli_ch, _ = InMemoryChannel.pair("x-test", b"one-sided")
    srv, c, t, _ = make(realm, channel=None)  # one-sided latching: the server has no channel
    with pytest.raises(ChannelBindingFailed) as failed:
        run(c.bind_channel(t.call, cli_ch))
    # The server cannot check the request MIC (it has no bindings to hash), so it signs no
    # PREF_NOTSUPP -- that would be a MIC oracle (RFC 5403 §9) -- and answers like a failed
    # request MIC (RFC 2203 §5.3.3.4.2): one-sided latching looks like a MITM that stripped the
    # server's side (RFC 5403 §2), a failed binding.
    assert failed.value.reason is BindFailureReason.MIC_MISMATCH
    reply = decode_message(t.serve(t.sent[-1]) or b"")
    assert isinstance(reply, DeniedReply) and reply.auth_stat == AuthStat.RPCSEC_GSS_CREDPROBLEM
    assert not srv.is_bound(c.handle or b"")
    assert c.effective_service() == Service.INTEGRITY


@pytest.mark.conformance(id="CB-11", rfc="RFC 5403 §9 (mitigation a: cap DATA requests per context)")
def test_cb_11_request_cap_forces_refresh(realm: ThrowawayRealm) -> None:
    srv, c, t, _ = make(realm, max_requests_per_context=5)
    first = c.handle
    for i in range(5):
        assert t.call_sync(c, 1, b"%d" % i) == b"%d" % i
    with pytest.raises(RpcAuthError) as err:
        t.call_sync(c, 1, b"sixth")
    assert err.value.stat == AuthStat.RPCSEC_GSS_CTXPROBLEM
    assert srv.context_count() == 0
    assert run(c.call(t.call, 1, b"after refresh")) == b"after refresh"  # transparent refresh
    assert c.handle != first


@pytest.mark.conformance(id="CB-12", rfc="RFC 5531 §8.2; RFC 5403 §3.3")
@pytest.mark.parametrize("algorithm", [SHA1, SHA256, SHA384, SHA512], ids=lambda a: a.name)
def test_cb_12_bind_verifier_fits_400_bytes(realm: ThrowawayRealm, algorithm: object) -> None:
    """RFC 5531 §8.2: with every supported hash OID and the longest prefix we accept (64 bytes)
    a real BIND_CHANNEL binds and its verifier fits opaque_auth's 400 bytes; the worst case with
    the longest krb5 MIC does too. A prefix one byte longer is refused locally, nothing sent."""
    assert isinstance(algorithm, type(SHA256))
    longest = "x-" + "p" * (MAX_PREFIX - 2)
    cli_ch, srv_ch = InMemoryChannel.pair(longest, b"identity")
    srv, c, t, _ = make(realm, channel=srv_ch, hashes=[SHA256, algorithm])
    run(c.bind_channel(t.call, cli_ch, hashes=[algorithm]))
    assert srv.is_bound(c.handle or b"", t.conn)
    verf_body = last_call(t).verf.body
    verf = BindChanVerfArgs.decode(verf_body)
    assert (verf.chan_bind_prefix, verf.chan_bind_oid_hash) == (longest.encode(), algorithm.oid)
    assert len(verf.chan_mic) <= MAX_KRB5_MIC
    assert len(verf_body) == bind_chan_verifier_size(longest.encode(), algorithm.oid, len(verf.chan_mic))
    assert len(verf_body) <= MAX_AUTH_BYTES
    assert bind_chan_verifier_size(b"p" * MAX_PREFIX, b"o" * MAX_OID, MAX_KRB5_MIC) <= MAX_AUTH_BYTES

    too_long = longest + "p"
    cli2, srv2 = InMemoryChannel.pair(too_long, b"identity")
    srv_b, c2, t2, _ = make(realm, channel=srv2, hashes=[SHA256, algorithm])
    sent = len(t2.sent)
    with pytest.raises(
        RpcGssLocalError, match=f"is {MAX_PREFIX + 1} bytes; BIND_CHANNEL allows at most {MAX_PREFIX}"
    ):
        run(c2.bind_channel(t2.call, cli2, hashes=[algorithm]))
    assert len(t2.sent) == sent  # refused before anything went out
    assert not srv_b.is_bound(c2.handle or b"")
    assert t2.call_sync(c2, 1, b"still usable") == b"still usable"


@pytest.mark.conformance(id="CB-13", rfc="RFC 4121 §4.1.1.2")
def test_cb_13_krb5_bnd_vectors() -> None:
    """RFC 4121 §4.1.1.2 (vectors recomputed from that layout): Bnd for the
    struct we give libkrb5 (address types 0, empty addresses, application data) and for NO_BINDINGS."""
    assert krb5_bnd(b"abc").hex() == "420b92da63953711d03790fc6a20013d"
    assert krb5_bnd(None) == bytes(16)
    inet = 2  # GSS_C_AF_INET
    assert (
        krb5_bnd(b"", initiator=(inet, bytes([192, 0, 2, 1])), acceptor=(inet, bytes([192, 0, 2, 2]))).hex()
        == "aa144876d08163cf1cbdf21552ca17ee"
    )
    # What the provider passes for prefix:data is exactly that struct (so libkrb5 hashes the same).
    cb = channel_bindings_bytes("x-test", b"data")
    struct_ = gss_channel_bindings(cb)
    assert (struct_.initiator_address_type, struct_.acceptor_address_type) == (0, 0)
    assert (struct_.initiator_address or b"", struct_.acceptor_address or b"") == (b"", b"")
    assert struct_.application_data == b"x-test:data"
    assert krb5_bnd(cb) != krb5_bnd(channel_bindings_bytes("x-test", b"other"))
