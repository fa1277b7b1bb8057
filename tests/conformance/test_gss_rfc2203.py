"""RPCSEC_GSS v1/v2 conformance (RFC 2203, RFC 5403 §4) against a real MIT KDC.

Each test's marker names the RFC section it checks. GSS-08 (fresh seq_num per transmission, one
refresh), GSS-09 (INIT retransmission) and GSS-10 (malformed credentials) extend GSS-01/GSS-05;
GSS-13..16 check the GARBAGE_ARGS verifier, the service floor, the half-open bound and the
BIND_CHANNEL seq_num. The client and server flavors talk through
:class:`rpclatch.gss.loopback.LoopbackTransport` (real encoded messages, no socket); tests that
probe the server build calls by hand and feed them to ``check_call``.
"""

from __future__ import annotations

import dataclasses
import struct

import pytest

from rpclatch.gss.client import GssClientAuth, VersionPolicy
from rpclatch.gss.errors import ChannelBindingFailed, ContextInitFailed, GssMajor, VersionNotSupported
from rpclatch.gss.loopback import LoopbackTransport
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.server import GssServerAuth
from rpclatch.gss.wire import (
    MAXSEQ,
    RPCSEC_GSS_VERS_1,
    RPCSEC_GSS_VERS_2,
    GssCred,
    GssProc,
    InitArg,
    InitRes,
    IntegData,
    PrivData,
    Service,
    be32,
)
from rpclatch.rpc.auth import AuthAccept, AuthControlReply, AuthDeny, AuthDrop, AuthGarbage
from rpclatch.rpc.errors import AuthVerifierError, RpcAuthError, RpcTimeout
from rpclatch.rpc.messages import (
    NULL_AUTH,
    AcceptedReply,
    AcceptStat,
    AuthFlavor,
    AuthStat,
    CallMessage,
    DeniedReply,
    OpaqueAuth,
    decode_message,
)

from .support import Clock, run


def server(realm: ThrowawayRealm, **kw: object) -> GssServerAuth:
    return GssServerAuth(GssapiProvider(realm.service_name, keytab=realm.keytab), **kw)  # type: ignore[arg-type]


def client(realm: ThrowawayRealm, service: Service = Service.INTEGRITY, **kw: object) -> GssClientAuth:
    provider = GssapiProvider(ccache=realm.users["alice"].ccache)
    return GssClientAuth(provider, realm.service_name, service=service, **kw)  # type: ignore[arg-type]


def established(
    realm: ThrowawayRealm, service: Service = Service.INTEGRITY, **srv_kw: object
) -> tuple[GssServerAuth, GssClientAuth, LoopbackTransport, Clock]:
    clock = Clock()
    srv = server(realm, **srv_kw)
    t = LoopbackTransport(srv, now=clock)
    c = client(realm, service)
    run(c.establish(t.call))
    return srv, c, t, clock


def data_call(c: GssClientAuth, proc: int = 1, args: bytes = b"abcd", xid: int = 7) -> CallMessage:
    return c.prepare_call(xid, 0x20000099, 1, proc, args).message


def reprepared(msg: CallMessage, cred: GssCred, c: GssClientAuth) -> CallMessage:
    """``msg`` with another credential and a correct header MIC for it (as the client would)."""
    cred_auth = OpaqueAuth(AuthFlavor.RPCSEC_GSS, cred.encode())
    header = dataclasses.replace(msg, cred=cred_auth)
    mic = c._current().gss.get_mic(header.encode_header_through_cred())
    return dataclasses.replace(header, verf=OpaqueAuth(AuthFlavor.RPCSEC_GSS, mic))


@pytest.mark.conformance(id="GSS-01", rfc="RFC 2203 §5.2.2, §5.2.3.1")
def test_gss_01_init_exchange_and_verifiers(realm: ThrowawayRealm) -> None:
    srv, c, t, _ = established(realm)
    init_call = decode_message(t.sent[0])
    assert isinstance(init_call, CallMessage)
    cred = GssCred.decode(init_call.cred.body)
    assert init_call.proc == 0 and cred.gss_proc == GssProc.RPCSEC_GSS_INIT and cred.handle == b""
    assert init_call.verf == NULL_AUTH
    assert InitArg.decode(init_call.args).gss_token  # the AP-REQ travels in the arguments
    assert c.version == RPCSEC_GSS_VERS_2 and c.seq_window == 128 and c.handle
    # A failing INIT: garbage token -> gss_major set, handle and token empty, AUTH_NONE verifier.
    bad = CallMessage(
        9,
        0x20000099,
        1,
        0,
        OpaqueAuth(6, GssCred(2, GssProc.RPCSEC_GSS_INIT, 0, Service.NONE).encode()),
        NULL_AUTH,
        InitArg(b"\x60\x03not-a-token").encode(),
    )
    res = srv.check_call(bad, t.conn, 0.0)
    assert isinstance(res, AuthControlReply) and res.verf == NULL_AUTH
    init_res = InitRes.decode(res.results)
    assert init_res.gss_major not in (GssMajor.GSS_S_COMPLETE, GssMajor.GSS_S_CONTINUE_NEEDED)
    assert init_res.handle == b"" and init_res.gss_token == b""
    with pytest.raises(ContextInitFailed):
        run(c._create(lambda auth, proc, args: _garbage_init(srv, t, auth, proc), 2))


async def _garbage_init(srv: GssServerAuth, t: LoopbackTransport, auth: object, proc: int) -> bytes:
    call = CallMessage(
        10,
        0x20000099,
        1,
        0,
        OpaqueAuth(6, GssCred(2, GssProc.RPCSEC_GSS_INIT, 0, Service.NONE).encode()),
        NULL_AUTH,
        InitArg(b"junk").encode(),
    )
    res = srv.check_call(call, t.conn, 0.0)
    assert isinstance(res, AuthControlReply)
    return res.results


@pytest.mark.conformance(id="GSS-02", rfc="RFC 2203 §5.3.3.1")
def test_gss_02_replay_window(realm: ThrowawayRealm) -> None:
    srv, c, t, _ = established(realm, seq_window=4)
    first = data_call(c)
    assert isinstance(srv.check_call(first, t.conn, 1000.0), AuthAccept)
    assert isinstance(srv.check_call(first, t.conn, 1000.0), AuthDrop)  # replay: silent drop
    later = [data_call(c, xid=20 + i) for i in range(6)]  # seq 2..7
    assert isinstance(srv.check_call(later[-1], t.conn, 1000.0), AuthAccept)  # advances to 7
    assert isinstance(srv.check_call(later[0], t.conn, 1000.0), AuthDrop)  # seq 2 < 7-4+1
    assert isinstance(srv.check_call(later[3], t.conn, 1000.0), AuthAccept)  # seq 5 in window
    # A far-ahead seq_num with a bad MIC never moves the window.
    ahead = data_call(c, xid=99)
    forged = dataclasses.replace(ahead, verf=OpaqueAuth(6, b"\0" * 28))
    deny = srv.check_call(forged, t.conn, 1000.0)
    assert isinstance(deny, AuthDeny) and deny.stat == AuthStat.RPCSEC_GSS_CREDPROBLEM
    assert isinstance(srv.check_call(later[4], t.conn, 1000.0), AuthAccept)  # seq 6 still in window
    assert isinstance(srv.check_call(ahead, t.conn, 1000.0), AuthAccept)  # the genuine one later
    # Through the client: a replayed record gets no reply at all.
    assert t.call_sync(c, 1, b"ping") == b"ping"
    recorded = t.sent[-1]
    t.tamper_call = lambda data: recorded
    with pytest.raises(RpcTimeout):
        t.call_sync(c, 1, b"ping")


@pytest.mark.conformance(id="GSS-03", rfc="RFC 2203 §5.3.2.2, §5.3.3.1, §5.3.3.4")
def test_gss_03_integrity(realm: ThrowawayRealm) -> None:
    srv, c, t, _ = established(realm, Service.INTEGRITY)
    assert t.call_sync(c, 1, b"payload!") == b"payload!"
    msg = data_call(c, args=b"12345678")
    cred = GssCred.decode(msg.cred.body)
    integ = IntegData.decode(msg.args)
    gss = c._current().gss
    # The checksum is a MIC over the inner rpc_gss_data_t bytes, not the length-prefixed opaque.
    assert integ.databody_integ == be32(cred.seq_num) + b"12345678"
    gss_srv_ok = srv.check_call(msg, t.conn, 1000.0)
    assert isinstance(gss_srv_ok, AuthAccept) and gss_srv_ok.args == b"12345678"
    # Body seq_num != credential seq_num -> GARBAGE_ARGS.
    m2 = data_call(c, args=b"abcd")
    seq2 = GssCred.decode(m2.cred.body).seq_num
    inner = be32(seq2 + 1000) + b"abcd"
    wrong_seq = dataclasses.replace(m2, args=IntegData(inner, gss.get_mic(inner)).encode())
    assert isinstance(srv.check_call(wrong_seq, t.conn, 1000.0), AuthGarbage)
    # Arguments MIC fails -> GARBAGE_ARGS.
    m3 = data_call(c, args=b"abcd")
    i3 = IntegData.decode(m3.args)
    tampered = dataclasses.replace(m3, args=IntegData(i3.databody_integ[:-1] + b"X", i3.checksum).encode())
    assert isinstance(srv.check_call(tampered, t.conn, 1000.0), AuthGarbage)
    # Header MIC fails -> AUTH_ERROR / CREDPROBLEM (change the procedure number after signing).
    m4 = dataclasses.replace(data_call(c), proc=2)
    deny = srv.check_call(m4, t.conn, 1000.0)
    assert isinstance(deny, AuthDeny) and deny.stat == AuthStat.RPCSEC_GSS_CREDPROBLEM
    # A tampered reply body is caught by the client.
    t.tamper_reply = lambda data: data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(AuthVerifierError):
        t.call_sync(c, 1, b"abcd")


@pytest.mark.conformance(id="GSS-04", rfc="RFC 2203 §5.3.2.3, §5.3.3.2")
def test_gss_04_privacy(realm: ThrowawayRealm) -> None:
    srv, c, t, _ = established(realm, Service.PRIVACY)
    secret = b"top secret bytes"
    assert t.call_sync(c, 1, secret) == secret
    assert all(secret not in sent for sent in t.sent)  # encrypted on the wire
    msg = data_call(c, args=secret)
    priv = PrivData.decode(msg.args)
    srv_gss_ok = srv.check_call(msg, t.conn, 1000.0)
    assert isinstance(srv_gss_ok, AuthAccept) and srv_gss_ok.args == secret
    verf, body = srv_gss_ok.seal(b"result")
    seq = GssCred.decode(msg.cred.body).seq_num
    c._current().gss.verify_mic(be32(seq), verf.body)  # reply verifier = MIC(request seq_num)
    inner, encrypted = c._current().gss.unwrap(PrivData.decode(body).databody_priv)
    assert encrypted and inner == be32(seq) + b"result"
    broken = dataclasses.replace(
        data_call(c, args=secret), args=PrivData(priv.databody_priv[:-2] + b"zz").encode()
    )
    assert isinstance(srv.check_call(broken, t.conn, 1000.0), AuthGarbage)


@pytest.mark.conformance(id="GSS-05", rfc="RFC 2203 §5.2.3.2, §5.3.3.3")
def test_gss_05_credproblem_ctxproblem(realm: ThrowawayRealm) -> None:
    srv, c, t, clock = established(realm, max_lifetime=60.0)
    msg = data_call(c)
    cred = GssCred.decode(msg.cred.body)
    unknown = reprepared(msg, dataclasses.replace(cred, handle=b"\x01" * 16), c)
    res = srv.check_call(unknown, t.conn, clock.t)
    assert isinstance(res, AuthDeny) and res.stat == AuthStat.RPCSEC_GSS_CREDPROBLEM
    maxseq = reprepared(msg, dataclasses.replace(cred, seq_num=MAXSEQ), c)
    res = srv.check_call(maxseq, t.conn, clock.t)
    assert isinstance(res, AuthDeny) and res.stat == AuthStat.RPCSEC_GSS_CTXPROBLEM
    clock.t += 61
    res = srv.check_call(data_call(c), t.conn, clock.t)
    assert isinstance(res, AuthDeny) and res.stat == AuthStat.RPCSEC_GSS_CTXPROBLEM
    # Neither is ever the answer to an INIT: a CONTINUE_INIT for an unknown handle gets init_res.
    cont = CallMessage(
        5,
        0x20000099,
        1,
        0,
        OpaqueAuth(6, GssCred(2, GssProc.RPCSEC_GSS_CONTINUE_INIT, 0, Service.NONE, b"\x02" * 16).encode()),
        NULL_AUTH,
        InitArg(b"tok").encode(),
    )
    res2 = srv.check_call(cont, t.conn, clock.t)
    assert isinstance(res2, AuthControlReply)
    assert InitRes.decode(res2.results).gss_major == GssMajor.GSS_S_NO_CONTEXT
    # The client refreshes transparently after CTXPROBLEM (expired) and the call succeeds.
    assert run(c.call(t.call, 1, b"again")) == b"again"
    assert srv.context_count() == 1


@pytest.mark.conformance(id="GSS-06", rfc="RFC 2203 §5.4")
def test_gss_06_destroy(realm: ThrowawayRealm) -> None:
    srv, c, t, _ = established(realm)
    handle = c.handle
    assert handle is not None
    # DESTROY with a bad MIC is refused and the context survives.
    msg = data_call(c)
    cred = GssCred.decode(msg.cred.body)
    destroy = dataclasses.replace(
        reprepared(
            dataclasses.replace(msg, proc=0, args=b""),
            dataclasses.replace(cred, gss_proc=GssProc.RPCSEC_GSS_DESTROY),
            c,
        ),
        verf=OpaqueAuth(6, b"\0" * 28),
    )
    res = srv.check_call(destroy, t.conn, 1000.0)
    assert isinstance(res, AuthDeny) and res.stat == AuthStat.RPCSEC_GSS_CREDPROBLEM
    assert srv.context_count() == 1
    stale = data_call(c)
    run(c.destroy(t.call))
    assert srv.context_count() == 0 and c.handle is None
    res = srv.check_call(stale, t.conn, 1000.0)
    assert isinstance(res, AuthDeny) and res.stat == AuthStat.RPCSEC_GSS_CREDPROBLEM


@pytest.mark.conformance(id="GSS-07", rfc="RFC 5403 §4; RFC 2203 §5.1")
@pytest.mark.parametrize("refusal", [AuthStat.AUTH_REJECTEDCRED, AuthStat.AUTH_BADCRED])
def test_gss_07_v2_to_v1_fallback(realm: ThrowawayRealm, refusal: AuthStat) -> None:
    # A v1-only server: RFC answer AUTH_REJECTEDCRED, Linux answers AUTH_BADCRED.
    v1 = server(realm, versions=(RPCSEC_GSS_VERS_1,), unsupported_version_stat=refusal)
    t = LoopbackTransport(v1)
    c = client(realm)
    run(c.establish(t.call))
    assert c.version == RPCSEC_GSS_VERS_1
    sent = [GssCred.decode(decode_message(d).cred.body) for d in t.sent]
    assert [s.version for s in sent] == [2, 1]  # v2 tried first, then a fresh v1 INIT
    assert t.call_sync(c, 1, b"v1 data") == b"v1 data"
    # Policy requiring channel binding: a clear error, no silent downgrade.
    strict = client(realm, versions=VersionPolicy.REQUIRE_V2)
    with pytest.raises(VersionNotSupported):
        run(strict.establish(t.call))
    # A handle never crosses versions: a v1 handle presented with a v2 credential is refused.
    msg = data_call(c)
    cred = GssCred.decode(msg.cred.body)
    both = server(realm)
    t2 = LoopbackTransport(both)
    c1 = client(realm, versions=VersionPolicy.V1_ONLY)
    run(c1.establish(t2.call))
    m = data_call(c1)
    crossed = reprepared(m, dataclasses.replace(GssCred.decode(m.cred.body), version=RPCSEC_GSS_VERS_2), c1)
    res = both.check_call(crossed, t2.conn, 0.0)
    assert isinstance(res, AuthDeny) and res.stat == AuthStat.AUTH_BADCRED
    assert cred.version == 1


@pytest.mark.conformance(id="GSS-08", rfc="RFC 2203 §5.3.1, §5.3.3.3")
def test_gss_08_fresh_seq_per_transmission_and_one_refresh(realm: ThrowawayRealm) -> None:
    _srv, c, t, _ = established(realm, max_contexts=1)
    seqs = {GssCred.decode(data_call(c, xid=5).cred.body).seq_num for _ in range(5)}
    assert len(seqs) == 5  # the same xid resent still gets a new seq_num
    # Another client fills the 1-entry table: ours is evicted -> CREDPROBLEM -> one refresh.
    other = client(realm)
    run(other.establish(t.call))
    old_handle = c.handle
    assert run(c.call(t.call, 1, b"after eviction")) == b"after eviction"
    assert c.handle != old_handle
    with pytest.raises(RpcAuthError) as err:  # without the helper the error surfaces as is
        t.call_sync(other, 1, b"x")
    assert err.value.stat == AuthStat.RPCSEC_GSS_CREDPROBLEM


@pytest.mark.conformance(id="GSS-09", rfc="RFC 2203 §5.2.3; RFC 4120 replay cache")
def test_gss_09_init_retransmission_answered_from_cache(realm: ThrowawayRealm) -> None:
    srv = server(realm)
    t = LoopbackTransport(srv)
    c = client(realm)
    run(c.establish(t.call))
    init_bytes = t.sent[0]
    again = t.serve(init_bytes)  # a retransmitted INIT (same AP-REQ) must not hit the rcache
    assert again is not None
    reply = decode_message(again)
    assert isinstance(reply, AcceptedReply)
    assert InitRes.decode(reply.results).handle == c.handle
    assert srv.context_count() == 1


@pytest.mark.conformance(id="GSS-10", rfc="RFC 2203 §5.3.3.3 (bad credential)")
def test_gss_10_malformed_credentials(realm: ThrowawayRealm) -> None:
    srv, c, t, _ = established(realm)
    msg = data_call(c)
    for body in (b"", b"\0\0\0\1", msg.cred.body + b"\0\0\0\0", msg.cred.body[:-4]):
        res = srv.check_call(dataclasses.replace(msg, cred=OpaqueAuth(6, body)), t.conn, 0.0)
        assert isinstance(res, AuthDeny) and res.stat == AuthStat.AUTH_BADCRED
    v3 = struct.pack(">I", 3) + msg.cred.body[4:]
    res = srv.check_call(dataclasses.replace(msg, cred=OpaqueAuth(6, v3)), t.conn, 0.0)
    assert isinstance(res, AuthDeny) and res.stat == AuthStat.AUTH_REJECTEDCRED
    assert RPCSEC_GSS_VERS_2 in srv.versions


@pytest.mark.conformance(id="GSS-11", rfc="RFC 2203 §5.3.3.1 (retransmission: new seq_num, same xid)")
@pytest.mark.parametrize("service", [Service.NONE, Service.INTEGRITY, Service.PRIVACY])
@pytest.mark.parametrize("answered", ["retransmission", "first"])
def test_gss_11_datagram_retransmission_gets_new_seq_and_any_reply_completes(
    realm: ThrowawayRealm, service: Service, answered: str
) -> None:
    """The sans-IO datagram client against the real dispatcher and server flavor: the first reply
    is lost (``retransmission``: only the resend is answered) or arrives late, after the resend
    (``first``). Either way the call completes, and the resend carried the same xid, a higher
    seq_num and its own header MIC (a repeated seq_num is dropped by the server as a replay)."""
    from rpclatch.rpc.client import CallCompleted, RpcDatagramClient
    from rpclatch.rpc.server import RpcDispatcher
    from rpclatch.rpc.testprog import (
        PROC_ECHO,
        RPCLATCH_TEST_PROG,
        add_test_program,
        decode_opaque,
        encode_opaque,
    )

    srv = server(realm)
    dispatcher = RpcDispatcher([srv])
    add_test_program(dispatcher)
    conn = LoopbackTransport(srv).conn
    c = client(realm, service)
    dgram = RpcDatagramClient(c, default_timeout=30.0, retransmit_initial=1.0)

    def serve(data: bytes) -> bytes:
        reply = dispatcher.dispatch(data, conn, 0.0)
        assert isinstance(reply, bytes), "the server dropped a transmission"
        return reply

    # Establish through the same datagram client (INIT replies are not lost here).
    async def rpc_call(auth: object, proc: int, args: bytes) -> bytes:
        h = dgram.send_call(RPCLATCH_TEST_PROG, 1, proc, args, auth, 0.0)  # type: ignore[arg-type]
        [data] = dgram.datagrams_to_send()
        [event] = dgram.receive_datagram(serve(data))
        assert isinstance(event, CallCompleted) and event.handle is h
        return event.result

    run(c.establish(rpc_call))  # type: ignore[arg-type]
    args = encode_opaque(b"lossy network" * 10)
    h = dgram.send_call(RPCLATCH_TEST_PROG, 1, PROC_ECHO, args, None, 0.0)
    [first] = dgram.datagrams_to_send()
    first_reply = serve(first)  # the server executed it; its reply is lost or delayed
    assert dgram.handle_timer(1.0) == []
    [second] = dgram.datagrams_to_send()
    m1, m2 = decode_message(first), decode_message(second)
    assert isinstance(m1, CallMessage) and isinstance(m2, CallMessage)
    assert m1.xid == m2.xid == h.xid
    seq1, seq2 = GssCred.decode(m1.cred.body).seq_num, GssCred.decode(m2.cred.body).seq_num
    assert seq2 > seq1 and m1.verf != m2.verf
    assert srv.check_call(m1, conn, 0.0) == AuthDrop(f"seq_num {seq1}: replay")  # why resending
    second_reply = serve(second)  # fresh seq_num: accepted and executed again
    events = dgram.receive_datagram(second_reply if answered == "retransmission" else first_reply)
    assert len(events) == 1 and isinstance(events[0], CallCompleted) and events[0].handle is h
    assert decode_opaque(events[0].result) == b"lossy network" * 10
    # The call is over: the other reply is a duplicate and is ignored; nothing is resent.
    assert dgram.receive_datagram(first_reply if answered == "retransmission" else second_reply) == []
    assert dgram.next_timer() is None


@pytest.mark.conformance(id="GSS-12", rfc="RFC 2203 §5.3.3.4.1, §5.3.3.4.4")
@pytest.mark.parametrize("service", [Service.NONE, Service.INTEGRITY, Service.PRIVACY])
def test_gss_12_results_that_cannot_be_sealed_get_no_reply(
    realm: ThrowawayRealm, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """The context is revoked while the procedure runs, so GSS_GetMIC (integrity) or GSS_Wrap
    (privacy) of the results fails: the server sends no reply at all (the reply verifier was
    computed before the procedure ran, so krb5 -- nothing to seal -- is still answered)."""
    import logging

    from rpclatch.rpc.server import CallContext, RpcDispatcher

    srv = server(realm)
    c = client(realm, service)
    t = LoopbackTransport(srv)
    run(c.establish(t.call))

    def revoking_echo(args: bytes, ctx: CallContext) -> bytes:
        assert srv.drop_all_contexts() == 1  # an administrative revoke, mid-call
        return args

    dispatcher = RpcDispatcher([srv])
    dispatcher.add_program(0x20000099, 1, {1: revoking_echo})
    msg = c.prepare_call(40, 0x20000099, 1, 1, b"abcd")
    with caplog.at_level(logging.ERROR, "rpclatch.rpc.server"):
        out = dispatcher.dispatch(msg.message.encode(), t.conn, 0.0)
    if service is Service.NONE:
        assert isinstance(out, bytes)
        reply = decode_message(out)
        assert isinstance(reply, AcceptedReply)
        assert c.accept_reply(msg, reply) == b"abcd"
    else:
        assert out is None
        assert "xid 0x28" in caplog.text and "sending no reply" in caplog.text


@pytest.mark.conformance(id="GSS-13", rfc="RFC 2203 §5.3.3.2, §5.3.3.4.2, §5.3.3.4.3")
@pytest.mark.parametrize("service", [Service.INTEGRITY, Service.PRIVACY])
def test_gss_13_garbage_args_verifier_is_mic_of_seq(realm: ThrowawayRealm, service: Service) -> None:
    """A request whose header MIC verified but whose body does not (checksum, unwrap, or body
    seq_num != credential seq_num) is answered GARBAGE_ARGS with the verifier a SUCCESS reply
    would have, MIC(seq_num), so the client can check every accepted reply."""
    _srv, c, t, _ = established(realm, service)
    gss = c._current().gss
    msg = data_call(c)
    seq = GssCred.decode(msg.cred.body).seq_num
    inner = be32(seq + 1) + b"abcd"
    body = (
        IntegData(inner, gss.get_mic(inner)).encode()
        if service == Service.INTEGRITY
        else PrivData(gss.wrap(inner)).encode()
    )
    reply = decode_message(t.serve(dataclasses.replace(msg, args=body).encode()) or b"")
    assert isinstance(reply, AcceptedReply) and reply.stat == AcceptStat.GARBAGE_ARGS
    assert reply.verf.flavor == AuthFlavor.RPCSEC_GSS
    gss.verify_mic(be32(seq), reply.verf.body)


@pytest.mark.conformance(id="GSS-14", rfc="RFC 5531 §9 (AUTH_TOOWEAK); RFC 5403 §3.4")
def test_gss_14_service_floor(realm: ThrowawayRealm) -> None:
    """A server configured for integrity takes integrity and privacy, and refuses rpc_gss_svc_none
    with MSG_DENIED / AUTH_ERROR / AUTH_TOOWEAK."""
    _srv, weak, t, _ = established(realm, Service.NONE, min_service=Service.INTEGRITY)
    reply = decode_message(t.serve(data_call(weak).encode()) or b"")
    assert isinstance(reply, DeniedReply) and reply.auth_stat == AuthStat.AUTH_TOOWEAK
    for service in (Service.INTEGRITY, Service.PRIVACY):
        c = client(realm, service)
        run(c.establish(t.call))
        assert t.call_sync(c, 1, b"ok") == b"ok"


@pytest.mark.conformance(id="GSS-15", rfc="RFC 2203 §5.2.2 (contexts being established)")
def test_gss_15_half_open_contexts_have_their_own_bound(realm: ThrowawayRealm) -> None:
    """Contexts in CONTINUE_NEEDED are kept in a bounded table of their own: filling it never
    pushes an established context out."""
    provider = GssapiProvider(realm.service_name, keytab=realm.keytab, acceptor_mechs=None)
    srv = GssServerAuth(provider, max_contexts=1, max_half_open=2)
    t = LoopbackTransport(srv)
    c = client(realm)
    run(c.establish(t.call))
    krb5 = bytes.fromhex("06092a864886f712010202")
    for i in range(5):  # SPNEGO NegTokenInit: mechTypes {krb5, 1.3.6.1.4.1.311.i}, no mech token
        other = bytes([0x06, 0x08]) + bytes.fromhex("2b0601040182370a")[:-1] + bytes([i])
        mechs = bytes([0x30, len(krb5 + other)]) + krb5 + other
        neg = bytes([0xA0, len(mechs) + 4, 0x30, len(mechs) + 2, 0xA0, len(mechs)]) + mechs
        spnego = bytes.fromhex("06062b0601050502") + neg
        call = CallMessage(
            50 + i,
            0x20000099,
            1,
            0,
            OpaqueAuth(6, GssCred(2, GssProc.RPCSEC_GSS_INIT, 0, Service.NONE).encode()),
            NULL_AUTH,
            InitArg(bytes([0x60, len(spnego)]) + spnego).encode(),
        )
        res = srv.check_call(call, t.conn, 0.0)
        assert isinstance(res, AuthControlReply)
        assert InitRes.decode(res.results).gss_major == GssMajor.GSS_S_CONTINUE_NEEDED
    assert srv.half_open_count() == 2 and srv.context_count() == 1
    assert t.call_sync(c, 1, b"still established") == b"still established"


@pytest.mark.conformance(id="GSS-16", rfc="RFC 5403 §3.3 (seq_num as for DATA); RFC 2203 §5.3.3.1")
def test_gss_16_bind_channel_spends_its_seq_num(realm: ThrowawayRealm) -> None:
    """BIND_CHANNEL takes a window slot like DATA: a replayed BIND_CHANNEL is dropped silently,
    whatever it was answered (here PREF_NOTSUPP: this server accepts no prefix of the channel)."""
    from rpclatch.gss.channel import InMemoryChannel

    cli_ch, srv_ch = InMemoryChannel.pair("x-test", b"gss-16")
    srv = server(realm, prefixes=["x-other"])
    t = LoopbackTransport(srv, channel=srv_ch)
    c = client(realm)
    run(c.establish(t.call))
    with pytest.raises(ChannelBindingFailed):
        run(c.bind_channel(t.call, cli_ch))
    request = t.sent[-1]
    assert all(t.serve(request) is None for _ in range(10))
