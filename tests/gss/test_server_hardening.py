"""The server flavor under attack (issue #10 items 5-8, 12): half-open quota and mechanism
restriction, the per-connection index of bound handles, MIC(seq_num) on the flavor's own
GARBAGE_ARGS, the service floor (AUTH_TOOWEAK) and BIND_CHANNEL processed like DATA. Real MIT KDC;
calls go through :class:`LoopbackTransport` (real encoded messages) or straight to ``check_call``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from types import TracebackType

import pytest

from rpclatch.channel import Protection
from rpclatch.gss.channel import InMemoryChannel
from rpclatch.gss.client import GssClientAuth
from rpclatch.gss.errors import GssMajor
from rpclatch.gss.loopback import LoopbackTransport
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.server import LOG_INTERVAL, GssServerAuth
from rpclatch.gss.wire import (
    SHA1,
    SHA256,
    BindChanStatus,
    BindChanVerfArgs,
    BindChanVerfRes,
    GssCred,
    GssProc,
    InitArg,
    InitRes,
    IntegData,
    PrivData,
    Service,
    be32,
)
from rpclatch.rpc.auth import AuthAccept, AuthControlReply, AuthDeny, AuthDrop, AuthGarbage, ConnectionInfo
from rpclatch.rpc.errors import RpcAuthError
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
from rpclatch.rpc.server import LogLimiter, RpcDispatcher

PROG, VERS = 0x20000099, 1

#: SPNEGO NegTokenInit listing only krb5 and carrying no mech token (29 bytes): an acceptor that
#: speaks SPNEGO answers it CONTINUE_NEEDED, asking for the mech token (RFC 4178 §3.2).
SPNEGO_NO_MECH_TOKEN = bytes.fromhex("601b06062b0601050502a011300fa00d300b06092a864886f712010202")


def _der(tag: int, body: bytes) -> bytes:
    assert len(body) < 128
    return bytes([tag, len(body)]) + body


def spnego_init(i: int) -> bytes:
    """A distinct NegTokenInit per ``i`` (krb5 plus one made-up mechanism, no mech token), so that
    the INIT retransmission cache (RFC 2203 §5.2.3) does not answer the flood for us."""
    krb5 = _der(0x06, bytes.fromhex("2a864886f712010202"))
    other = _der(0x06, bytes.fromhex("2b06010401823701") + bytes([(i >> 7) | 0x80, i & 0x7F]))
    return _der(
        0x60,
        _der(0x06, bytes.fromhex("2b0601050502"))
        + _der(0xA0, _der(0x30, _der(0xA0, _der(0x30, krb5 + other)))),
    )


def init_call(token: bytes, xid: int = 1) -> CallMessage:
    cred = GssCred(2, GssProc.RPCSEC_GSS_INIT, 0, Service.NONE).encode()
    return CallMessage(xid, PROG, VERS, 0, OpaqueAuth(6, cred), NULL_AUTH, InitArg(token).encode())


def server(
    realm: ThrowawayRealm, *, mechs: tuple[str, ...] | None = ("1.2.840.113554.1.2.2",), **kw: object
) -> GssServerAuth:
    provider = GssapiProvider(realm.service_name, keytab=realm.keytab, acceptor_mechs=mechs)
    return GssServerAuth(provider, **kw)  # type: ignore[arg-type]


def client(realm: ThrowawayRealm, service: Service = Service.INTEGRITY, user: str = "alice") -> GssClientAuth:
    return GssClientAuth(GssapiProvider(ccache=realm.users[user].ccache), realm.service_name, service=service)


def bound_client(
    realm: ThrowawayRealm,
    srv: GssServerAuth,
    *,
    data: bytes = b"chan",
    protection: Protection = Protection.INTEGRITY | Protection.CONFIDENTIALITY,
    service: Service = Service.INTEGRITY,
) -> tuple[GssClientAuth, LoopbackTransport]:
    cli_ch, srv_ch = InMemoryChannel.pair("x-test", data, protection)
    t = LoopbackTransport(srv, channel=srv_ch)
    c = client(realm, service)
    asyncio.run(c.establish(t.call))
    asyncio.run(c.bind_channel(t.call, cli_ch))
    assert srv.is_bound(c.handle or b"", t.conn)
    return c, t


# -- item 5: half-open contexts have their own quota; the acceptor takes krb5 only ------------------


def test_spnego_init_flood_never_evicts_an_established_bound_context(realm: ThrowawayRealm) -> None:
    """An acceptor that takes any mechanism answers each SPNEGO token without a mech token with
    CONTINUE_NEEDED: 300 of them (unauthenticated, from another connection) fill only the
    half-open table, oldest out first; the victim's bound context and its integrity context keep
    working and the established table never sees the flood."""
    srv = server(realm, mechs=None, max_contexts=4, max_half_open=8)
    victim, t = bound_client(realm, srv)
    other = client(realm, Service.INTEGRITY, "bob")
    asyncio.run(other.establish(t.call))
    assert srv.context_count() == 2
    attacker = ConnectionInfo(4242, ("127.0.0.1", 4242), "sim")
    first = srv.check_call(init_call(SPNEGO_NO_MECH_TOKEN), attacker, 0.0)
    assert isinstance(first, AuthControlReply)
    assert InitRes.decode(first.results).gss_major == GssMajor.GSS_S_CONTINUE_NEEDED
    handles = set()
    for i in range(300):
        res = srv.check_call(init_call(spnego_init(i), xid=i), attacker, float(i))
        assert isinstance(res, AuthControlReply)
        init_res = InitRes.decode(res.results)
        assert init_res.gss_major == GssMajor.GSS_S_CONTINUE_NEEDED
        handles.add(init_res.handle)
        assert srv.half_open_count() <= 8 and srv.context_count() == 2
    assert len(handles) == 300 and srv.half_open_count() == 8
    assert len(srv.contexts()) == 10  # 8 half-open + 2 established
    # The victim is untouched: still bound, channel_prot and krb5i calls go through.
    assert srv.is_bound(victim.handle or b"", t.conn)
    assert t.call_sync(victim, 1, b"still here") == b"still here"
    assert t.call_sync(other, 1, b"me too") == b"me too"
    # CONTINUE_INIT for a half-open handle pushed out by the flood: GSS_S_NO_CONTEXT, nothing else.
    evicted = sorted(handles - {i.handle for i in srv.contexts()})[0]
    cont = dataclasses.replace(
        init_call(b"\x60\x00", xid=999),
        cred=OpaqueAuth(6, GssCred(2, GssProc.RPCSEC_GSS_CONTINUE_INIT, 0, Service.NONE, evicted).encode()),
    )
    res = srv.check_call(cont, attacker, 400.0)
    assert isinstance(res, AuthControlReply)
    assert InitRes.decode(res.results).gss_major == GssMajor.GSS_S_NO_CONTEXT
    # A half-open handle is not an established context: DATA on it is CREDPROBLEM.
    data = CallMessage(
        5,
        PROG,
        VERS,
        1,
        OpaqueAuth(6, GssCred(2, GssProc.RPCSEC_GSS_DATA, 1, Service.NONE, next(iter(handles))).encode()),
        OpaqueAuth(6, b"\0" * 28),
    )
    deny = srv.check_call(data, attacker, 400.0)
    assert isinstance(deny, AuthDeny) and deny.stat == AuthStat.RPCSEC_GSS_CREDPROBLEM
    # New clients still get contexts (krb5 completes in one step, no half-open slot needed).
    late = client(realm, Service.PRIVACY, "bob")
    assert asyncio.run(late.call(t.call, 1, b"new")) == b"new"


def test_krb5_only_acceptor_refuses_spnego_outright(realm: ThrowawayRealm) -> None:
    """The default acceptor takes the Kerberos V5 mechanism only: the 29-byte SPNEGO token fails
    at once (GSS_S_NO_CRED: no acceptor credential for SPNEGO), nothing is kept."""
    srv = server(realm, max_half_open=8)  # the default mechanism list: krb5
    victim, t = bound_client(realm, srv)
    attacker = ConnectionInfo(4243, ("127.0.0.1", 4243), "sim")
    for i, token in enumerate([SPNEGO_NO_MECH_TOKEN] + [spnego_init(i) for i in range(50)]):
        res = srv.check_call(init_call(token, xid=i), attacker, 0.0)
        assert isinstance(res, AuthControlReply) and res.verf == NULL_AUTH
        init_res = InitRes.decode(res.results)
        assert init_res.gss_major == GssMajor.GSS_S_NO_CRED and init_res.handle == b""
    assert srv.half_open_count() == 0 and srv.context_count() == 1
    assert GssapiProvider(realm.service_name).__dict__["_acceptor_mechs"] == ("1.2.840.113554.1.2.2",)
    assert t.call_sync(victim, 1, b"fine") == b"fine"


def test_no_half_open_slots_refuses_multi_step_establishment(realm: ThrowawayRealm) -> None:
    srv = server(realm, mechs=None, max_half_open=0)
    res = srv.check_call(init_call(SPNEGO_NO_MECH_TOKEN), ConnectionInfo(1, None, "sim"), 0.0)
    assert isinstance(res, AuthControlReply)
    assert InitRes.decode(res.results).gss_major == GssMajor.GSS_S_FAILURE
    assert srv.half_open_count() == 0


# -- item 6: connection_closed visits only that connection's bound handles ------------------------


class CountingLock:
    """A context lock that counts how often it is taken."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.taken = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        self.taken += 1
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def test_connection_closed_touches_only_its_own_bound_contexts(realm: ThrowawayRealm) -> None:
    srv = server(realm, max_contexts=64)
    bound_client(realm, srv, data=b"elsewhere")  # one context bound on a connection of its own
    a_cli_ch, a_srv_ch = InMemoryChannel.pair("x-test", b"conn-a")
    t_a = LoopbackTransport(srv, channel=a_srv_ch)
    a_clients = []
    for _ in range(3):
        c = client(realm)
        asyncio.run(c.establish(t_a.call))
        asyncio.run(c.bind_channel(t_a.call, a_cli_ch))
        a_clients.append(c)
    b_cli_ch, b_srv_ch = InMemoryChannel.pair("x-test", b"conn-b")
    t_b = LoopbackTransport(srv, channel=b_srv_ch)
    b_clients = []
    for _ in range(2):
        c = client(realm)
        asyncio.run(c.establish(t_b.call))
        asyncio.run(c.bind_channel(t_b.call, b_cli_ch))
        b_clients.append(c)
    for _ in range(40):  # unbound contexts filling the table
        asyncio.run(client(realm, user="bob").establish(LoopbackTransport(srv).call))
    a_handles = {c.handle for c in a_clients}
    b_handles = {c.handle for c in b_clients}
    assert srv.bound_handles(t_a.conn.conn_id) == a_handles
    assert srv.bound_handles(t_b.conn.conn_id) == b_handles
    locks = {}
    for handle, ctx in list(srv._contexts.items()):
        ctx.lock = locks[handle] = CountingLock()  # type: ignore[assignment]
    srv.connection_closed(t_a.conn)
    touched = {h for h, lock in locks.items() if lock.taken}
    assert touched == a_handles  # only connection A's bound contexts were visited
    assert all(not srv.is_bound(h or b"") for h in a_handles)
    assert all(srv.is_bound(h or b"", t_b.conn) for h in b_handles)
    assert srv.bound_handles(t_a.conn.conn_id) == frozenset()
    assert srv.bound_handles(t_b.conn.conn_id) == b_handles
    assert srv.context_count() == 1 + 3 + 2 + 40  # closing unbinds, it forgets nothing
    # B's contexts still carry channel_prot; a closed-connection handle no longer does.
    assert t_b.call_sync(b_clients[0], 1, b"b works") == b"b works"
    # Forgetting a bound context (DESTROY) and evicting one drop it from the index too.
    asyncio.run(b_clients[1].destroy(t_b.call))
    assert srv.bound_handles(t_b.conn.conn_id) == {b_clients[0].handle}


def test_bound_handle_index_never_outgrows_the_table(realm: ThrowawayRealm) -> None:
    """Contexts bound on many connections, in a table of 3: evictions leave the index no larger
    than the table, and a closed connection's entry goes away."""
    srv = server(realm, max_contexts=3)
    conns = []
    for i in range(8):
        _, t = bound_client(realm, srv, data=b"%d" % i)
        conns.append(t.conn)
        listed = sum(len(srv.bound_handles(c.conn_id)) for c in conns)
        assert listed <= srv.context_count() <= 3
        assert len(srv._bound_by_conn) <= 3
    for conn in conns:
        srv.connection_closed(conn)
    assert srv._bound_by_conn == {}


# -- item 7: the flavor's own GARBAGE_ARGS carry MIC(seq_num) ---------------------------------------


def _seq(call: CallMessage) -> int:
    return GssCred.decode(call.cred.body).seq_num


def _assert_mic_of_seq(c: GssClientAuth, verf: OpaqueAuth, seq: int) -> None:
    assert verf.flavor == AuthFlavor.RPCSEC_GSS
    c._current().gss.verify_mic(be32(seq), verf.body)  # raises GssError if not MIC(seq_num)


def test_garbage_args_after_a_verified_header_carry_mic_of_seq(realm: ThrowawayRealm) -> None:
    srv = server(realm)
    t = LoopbackTransport(srv)
    ci, cp = client(realm, Service.INTEGRITY), client(realm, Service.PRIVACY)
    for c in (ci, cp):
        asyncio.run(c.establish(t.call))
    cases = []
    # krb5i: body seq_num != credential seq_num (a correct checksum over the wrong inner bytes)
    m = ci.prepare_call(1, PROG, VERS, 1, b"abcd").message
    inner = be32(_seq(m) + 7) + b"abcd"
    checksum = ci._current().gss.get_mic(inner)
    cases.append((ci, dataclasses.replace(m, args=IntegData(inner, checksum).encode())))
    # krb5i: the checksum does not verify
    m = ci.prepare_call(2, PROG, VERS, 1, b"abcd").message
    integ = IntegData.decode(m.args)
    cases.append(
        (
            ci,
            dataclasses.replace(m, args=IntegData(integ.databody_integ[:-1] + b"X", integ.checksum).encode()),
        )
    )
    # krb5p: the wrap token does not unwrap
    m = cp.prepare_call(3, PROG, VERS, 1, b"secret").message
    priv = PrivData.decode(m.args)
    cases.append((cp, dataclasses.replace(m, args=PrivData(priv.databody_priv[:-2] + b"zz").encode())))
    # krb5p: body seq_num != credential seq_num
    m = cp.prepare_call(4, PROG, VERS, 1, b"secret").message
    cases.append(
        (
            cp,
            dataclasses.replace(
                m, args=PrivData(cp._current().gss.wrap(be32(_seq(m) + 1) + b"secret")).encode()
            ),
        )
    )
    dispatcher = RpcDispatcher([srv])
    dispatcher.add_program(PROG, VERS, {1: lambda args, ctx: args})
    for c, call in cases:
        res = srv.check_call(call, t.conn, 0.0)
        assert isinstance(res, AuthGarbage), res
        _assert_mic_of_seq(c, res.verf, _seq(call))
    # On the wire, through the dispatcher and through the loopback transport: the same verifier.
    for c, call in cases:  # each again with a fresh seq_num (the first ones were spent)
        fresh = c.prepare_call(call.xid, PROG, VERS, 1, b"").message
        resent = dataclasses.replace(call, cred=fresh.cred, verf=fresh.verf)
        seq = _seq(resent)
        if c is ci:
            inner = be32(seq + 1) + b"x"
            checksum = c._current().gss.get_mic(inner)
            resent = dataclasses.replace(resent, args=IntegData(inner, checksum).encode())
        raw = dispatcher.dispatch(resent.encode(), t.conn, 0.0)
        reply = decode_message(raw or b"")
        assert isinstance(reply, AcceptedReply) and reply.stat == AcceptStat.GARBAGE_ARGS
        _assert_mic_of_seq(c, reply.verf, seq)
    # A request whose header MIC does not verify gets no MIC at all (CREDPROBLEM, RFC 2203 §5.3.3.4.2).
    m = ci.prepare_call(9, PROG, VERS, 1, b"abcd").message
    deny = srv.check_call(dataclasses.replace(m, verf=OpaqueAuth(6, b"\0" * 28), args=b"junk"), t.conn, 0.0)
    assert isinstance(deny, AuthDeny) and deny.stat == AuthStat.RPCSEC_GSS_CREDPROBLEM


# -- item 8: the service floor --------------------------------------------------------------------


def test_krb5i_server_refuses_krb5_with_auth_tooweak(
    realm: ThrowawayRealm, caplog: pytest.LogCaptureFixture
) -> None:
    srv = server(realm, min_service=Service.INTEGRITY)
    t = LoopbackTransport(srv)
    weak = client(realm, Service.NONE)
    asyncio.run(weak.establish(t.call))
    with caplog.at_level(logging.WARNING, logger="rpclatch.gss.server"), pytest.raises(RpcAuthError) as err:
        t.call_sync(weak, 1, b"plain")
    assert err.value.stat == AuthStat.AUTH_TOOWEAK
    assert "krb5i (rpc_gss_svc_integrity)" in caplog.text and "AUTH_TOOWEAK" in caplog.text
    # the reply on the wire: MSG_DENIED / AUTH_ERROR / AUTH_TOOWEAK
    reply = decode_message(t.serve(weak.prepare_call(5, PROG, VERS, 1, b"x").message.encode()) or b"")
    assert isinstance(reply, DeniedReply) and reply.auth_stat == AuthStat.AUTH_TOOWEAK
    for service in (Service.INTEGRITY, Service.PRIVACY):
        c = client(realm, service)
        asyncio.run(c.establish(t.call))
        assert t.call_sync(c, 1, b"strong enough") == b"strong enough"
    # a flood of weak calls logs one line per interval, not one per call (a fresh limiter, on a
    # clock that does not move: exactly one line)
    srv.log_limiters["too-weak"] = LogLimiter(burst=1, interval=LOG_INTERVAL, clock=lambda: 0.0)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rpclatch.gss.server"):
        for i in range(50):
            res = srv.check_call(weak.prepare_call(100 + i, PROG, VERS, 1, b"").message, t.conn, 1000.0)
            assert isinstance(res, AuthDeny) and res.stat == AuthStat.AUTH_TOOWEAK
    assert len([r for r in caplog.records if "floor" in r.getMessage()]) == 1


def test_krb5p_server_refuses_krb5i(realm: ThrowawayRealm) -> None:
    srv = server(realm, min_service=Service.PRIVACY)
    t = LoopbackTransport(srv)
    for service in (Service.NONE, Service.INTEGRITY):
        c = client(realm, service)
        asyncio.run(c.establish(t.call))
        with pytest.raises(RpcAuthError) as err:
            t.call_sync(c, 1, b"x")
        assert err.value.stat == AuthStat.AUTH_TOOWEAK
    c = client(realm, Service.PRIVACY)
    asyncio.run(c.establish(t.call))
    assert t.call_sync(c, 1, b"private") == b"private"


def test_channel_prot_counts_as_privacy_only_on_an_encrypting_channel(realm: ThrowawayRealm) -> None:
    srv = server(realm, min_service=Service.PRIVACY)
    # integrity-only channel (ESP with NULL encryption, say): channel_prot is integrity
    c, t = bound_client(realm, srv, protection=Protection.INTEGRITY, service=Service.INTEGRITY)
    assert c.effective_service() is Service.CHANNEL_PROT
    with pytest.raises(RpcAuthError) as err:
        t.call_sync(c, 1, b"x")
    assert err.value.stat == AuthStat.AUTH_TOOWEAK
    # (a krb5p client on that channel keeps wrapping: krb5p, accepted)
    cp, tp = bound_client(realm, srv, protection=Protection.INTEGRITY, service=Service.PRIVACY)
    assert cp.effective_service() is Service.PRIVACY
    assert tp.call_sync(cp, 1, b"wrapped") == b"wrapped"
    # an encrypting channel: channel_prot is privacy
    c2, t2 = bound_client(realm, srv, service=Service.PRIVACY)
    assert t2.call_sync(c2, 1, b"over ESP") == b"over ESP"
    # a krb5i server takes channel_prot on any bound channel
    srv_i = server(realm, min_service=Service.INTEGRITY)
    c3, t3 = bound_client(realm, srv_i, protection=Protection.INTEGRITY)
    assert t3.call_sync(c3, 1, b"integrity channel") == b"integrity channel"


def test_sec_names_set_the_floor(realm: ThrowawayRealm, monkeypatch: pytest.MonkeyPatch) -> None:
    """``rpc serve --sec krb5i`` builds its server through rpclatch.gss.sec: the floor is krb5i."""
    from rpclatch.rpc.sec import server_auths_for_sec

    monkeypatch.setenv("KRB5_KTNAME", realm.keytab)
    floors = {}
    for name in ("krb5", "krb5i", "krb5p"):
        (auth,) = server_auths_for_sec([name], acceptor=realm.service_name, keytab=realm.keytab)
        assert isinstance(auth, GssServerAuth)
        floors[name] = auth.min_service
    assert floors == {"krb5": Service.NONE, "krb5i": Service.INTEGRITY, "krb5p": Service.PRIVACY}
    with pytest.raises(ValueError):
        server(realm, min_service=Service.CHANNEL_PROT)


# -- item 12: BIND_CHANNEL: MIC first, seq_num consumed, replays dropped ---------------------------


def _bind_request(
    c: GssClientAuth,
    t: LoopbackTransport,
    cli_ch: InMemoryChannel,
    prefix: str = "x-test",
    algorithm: object = SHA256,
) -> bytes:
    from rpclatch.gss.client import _BindAuth

    ctx = c._current()
    cb = cli_ch.channel_bindings(prefix) if prefix in cli_ch.bindings() else prefix.encode() + b":"
    bind = _BindAuth(c, ctx, prefix, algorithm, algorithm.digest(cb))  # type: ignore[attr-defined]
    return bind.prepare_call(0x5151, t.prog, t.vers, 0, b"").message.encode()


def test_bind_channel_replays_get_exactly_one_answer(realm: ThrowawayRealm) -> None:
    """100 replays of one BIND_CHANNEL that the server answers PREF_NOTSUPP (a verified request
    for a prefix the channel has but policy refuses): one signed answer, 99 silent drops; the seq_num
    is spent, so a DATA call reusing it is dropped too."""
    shared = InMemoryChannel.pair("x-first", b"one")[0]._shared
    cli_ch = InMemoryChannel("x-first", b"one", _shared=shared, extra_bindings={"x-second": b"two"})
    srv_ch = InMemoryChannel("x-first", b"one", _shared=shared, extra_bindings={"x-second": b"two"})
    srv = server(realm, prefixes=["x-second"])
    t = LoopbackTransport(srv, channel=srv_ch)
    c = client(realm)
    asyncio.run(c.establish(t.call))
    request = _bind_request(c, t, cli_ch, "x-first")
    answers = [t.serve(request) for _ in range(100)]
    assert sum(a is not None for a in answers) == 1 and answers[0] is not None
    reply = decode_message(answers[0])
    assert isinstance(reply, AcceptedReply)
    res = BindChanVerfRes.decode(reply.verf.body)
    assert res.res.status == BindChanStatus.RGSS2_BIND_CHAN_PREF_NOTSUPP
    assert res.res.pref_list == (b"x-second",)
    # The same for a HASH_NOTSUPP answer (SHA-1 is known but not accepted here).
    srv2 = server(realm, hashes=[SHA256])
    t2 = LoopbackTransport(srv2, channel=srv_ch)
    c2 = client(realm)
    asyncio.run(c2.establish(t2.call))
    request2 = _bind_request(c2, t2, cli_ch, "x-first", SHA1)
    answers = [t2.serve(request2) for _ in range(100)]
    assert sum(a is not None for a in answers) == 1
    res2 = BindChanVerfRes.decode(decode_message(answers[0] or b"").verf.body)  # type: ignore[union-attr]
    assert res2.res.status == BindChanStatus.RGSS2_BIND_CHAN_HASH_NOTSUPP
    # The seq_num a BIND_CHANNEL used is spent for DATA as well.
    bind_seq = GssCred.decode(decode_message(request2).cred.body).seq_num  # type: ignore[union-attr]
    data = c2.prepare_call(7, PROG, VERS, 1, b"x").message
    reuse = dataclasses.replace(
        data,
        cred=OpaqueAuth(6, dataclasses.replace(GssCred.decode(data.cred.body), seq_num=bind_seq).encode()),
    )
    header = reuse.encode_header_through_cred()
    reuse = dataclasses.replace(reuse, verf=OpaqueAuth(6, c2._current().gss.get_mic(header)))
    assert isinstance(srv2.check_call(reuse, t2.conn, 0.0), AuthDrop)
    # And a legitimate client still binds afterwards (negotiating to x-second).
    asyncio.run(c.bind_channel(t.call, cli_ch))
    assert srv.is_bound(c.handle or b"", t.conn)
    assert t.call_sync(c, 1, b"bound") == b"bound"


def test_bind_channel_with_a_bad_mic_gets_no_negotiation_answer(realm: ThrowawayRealm) -> None:
    """A forged BIND_CHANNEL (any MIC, any seq_num) is not answered PREF_NOTSUPP/HASH_NOTSUPP -- a
    signed answer to it would be a MIC oracle (a MIC over seq_num || ... is also a krb5i reply
    checksum). It gets what a failed request MIC gets, MSG_DENIED / AUTH_ERROR /
    RPCSEC_GSS_CREDPROBLEM (RFC 2203 §5.3.3.4.2), never moves the window, and halves the
    context lifetime (RFC 5403 §9)."""
    shared = InMemoryChannel.pair("x-first", b"one")[0]._shared
    cli_ch = InMemoryChannel("x-first", b"one", _shared=shared, extra_bindings={"x-second": b"two"})
    srv_ch = InMemoryChannel("x-first", b"one", _shared=shared, extra_bindings={"x-second": b"two"})
    srv = server(realm, prefixes=["x-second"], hashes=[SHA256], max_lifetime=3600.0)
    t = LoopbackTransport(srv, channel=srv_ch)
    c = client(realm)
    asyncio.run(c.establish(t.call))
    handle = c.handle or b""
    expiry = srv.context_expiry(handle)
    assert expiry is not None
    forged_seq = 5000  # far above the window: a forgery must not move it
    forgeries = []
    for prefix, oid in (
        (b"x-first", SHA256.oid),  # policy says PREF_NOTSUPP -- if it verified
        (b"x-second", SHA1.oid),  # policy says HASH_NOTSUPP -- if it verified
        (b"x-unknown", SHA256.oid),  # a prefix the channel does not have
        (b"x-second", bytes.fromhex("883701")),
    ):  # a hash nobody implements
        cred = GssCred(2, GssProc.RPCSEC_GSS_BIND_CHANNEL, forged_seq, Service.NONE, handle).encode()
        verf = BindChanVerfArgs(prefix, oid, b"\0" * 28).encode()
        forgeries.append(CallMessage(0x777, PROG, VERS, 0, OpaqueAuth(6, cred), OpaqueAuth(6, verf)))
    for forged in forgeries:
        res = srv.check_call(forged, t.conn, 0.0)
        assert isinstance(res, AuthDeny) and res.stat == AuthStat.RPCSEC_GSS_CREDPROBLEM
        raw = t.serve(forged.encode())
        assert isinstance(decode_message(raw or b""), DeniedReply)  # no verifier, no MIC
    assert srv.contexts()[0].highest_seq < forged_seq  # the window did not move
    assert (srv.context_expiry(handle) or 0.0) < expiry  # halved (RFC 5403 §9)
    # A BIND_CHANNEL with a good MIC but arguments: a signed GARBAGE_ARGS after the MIC verified.
    good = decode_message(_bind_request(c, t, cli_ch, "x-second"))
    assert isinstance(good, CallMessage)
    garbage = srv.check_call(dataclasses.replace(good, args=b"\0\0\0\0"), t.conn, 0.0)
    assert isinstance(garbage, AuthGarbage)
    _assert_mic_of_seq(c, garbage.verf, _seq(good))
    # The legitimate client still binds.
    asyncio.run(c.bind_channel(t.call, cli_ch, prefixes=["x-second"]))
    assert srv.is_bound(handle, t.conn)
    assert t.call_sync(c, 1, b"after the forgeries") == b"after the forgeries"


def test_failed_bind_channel_flood_logs_a_bounded_number_of_lines(
    realm: ThrowawayRealm, caplog: pytest.LogCaptureFixture
) -> None:
    """A relay can forge one BIND_CHANNEL per request; each halves the context lifetime (RFC 5403
    §9) and each is logged -- through the server's LogLimiter for that kind: one line per
    interval, then a count of the lines held back, not one line per forgery."""
    shared = InMemoryChannel.pair("x-first", b"one")[0]._shared
    srv_ch = InMemoryChannel("x-first", b"one", _shared=shared)
    srv = server(realm)
    clock = [0.0]
    srv.log_limiters["bind-failure"] = LogLimiter(burst=1, interval=LOG_INTERVAL, clock=lambda: clock[0])
    t = LoopbackTransport(srv, channel=srv_ch)
    c = client(realm)
    asyncio.run(c.establish(t.call))
    cred = GssCred(2, GssProc.RPCSEC_GSS_BIND_CHANNEL, 5000, Service.NONE, c.handle or b"").encode()
    forged = CallMessage(
        0x777,
        PROG,
        VERS,
        0,
        OpaqueAuth(6, cred),
        OpaqueAuth(6, BindChanVerfArgs(b"x-first", SHA256.oid, b"\0" * 28).encode()),
    )

    def bind_lines() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "rpclatch.gss.server" and r.levelno == logging.WARNING
        ]

    with caplog.at_level(logging.WARNING, logger="rpclatch.gss.server"):
        for _ in range(50):
            res = srv.check_call(forged, t.conn, 0.0)
            assert isinstance(res, AuthDeny) and res.stat == AuthStat.RPCSEC_GSS_CREDPROBLEM
        assert bind_lines() == [f"BIND_CHANNEL failure 1 for alice@{realm.realm}: context lifetime halved"]
        clock[0] += LOG_INTERVAL
        srv.check_call(forged, t.conn, 0.0)
    assert bind_lines()[1:] == [
        f"49 similar log lines suppressed in the last {LOG_INTERVAL:g} s",
        f"BIND_CHANNEL failure 51 for alice@{realm.realm}: context lifetime halved",
    ]


def test_bind_channel_without_a_server_channel_is_not_signed(realm: ThrowawayRealm) -> None:
    """No channel on the server's connection: the request MIC cannot be checked, so no signed
    PREF_NOTSUPP (it would be an oracle anyone without a channel can query): CREDPROBLEM."""
    cli_ch, _ = InMemoryChannel.pair("x-test", b"one-sided")
    srv = server(realm)
    t = LoopbackTransport(srv, channel=None)
    c = client(realm)
    asyncio.run(c.establish(t.call))
    request = _bind_request(c, t, cli_ch)
    for _ in range(3):
        reply = decode_message(t.serve(request) or b"")
        assert isinstance(reply, DeniedReply) and reply.auth_stat == AuthStat.RPCSEC_GSS_CREDPROBLEM
    assert not srv.is_bound(c.handle or b"")
    assert t.call_sync(c, 1, b"integrity still works") == b"integrity still works"


def test_accepted_bind_is_answered_once_and_data_flows(realm: ThrowawayRealm) -> None:
    """The OK answer too: a replayed successful BIND_CHANNEL is dropped, the binding stands."""
    cli_ch, srv_ch = InMemoryChannel.pair("x-test", b"ok")
    srv = server(realm)
    t = LoopbackTransport(srv, channel=srv_ch)
    c = client(realm)
    asyncio.run(c.establish(t.call))
    request = _bind_request(c, t, cli_ch)
    answers = [t.serve(request) for _ in range(100)]
    assert sum(a is not None for a in answers) == 1
    res = BindChanVerfRes.decode(decode_message(answers[0] or b"").verf.body)  # type: ignore[union-attr]
    assert res.res.status == BindChanStatus.RGSS2_BIND_CHAN_OK
    assert srv.is_bound(c.handle or b"", t.conn)
    check = srv.check_call(c.prepare_call(3, PROG, VERS, 1, b"x").message, t.conn, 0.0)
    assert isinstance(check, AuthAccept)


# -- per-principal quota: one user cannot push other users' contexts out of the table -----------------


def _established(
    realm: ThrowawayRealm, srv: GssServerAuth, user: str
) -> tuple[GssClientAuth, LoopbackTransport]:
    c, t = client(realm, user=user), LoopbackTransport(srv)
    asyncio.run(c.establish(t.call))
    assert c.handle is not None and srv.gss_context(c.handle) is not None
    return c, t


def test_a_principal_over_its_quota_churns_only_its_own_contexts(realm: ThrowawayRealm) -> None:
    """A table of 4 with 2 per principal: bob's context survives alice opening six in a row
    (without the quota the LRU would have evicted it), alice keeps her two newest, and her
    evicted contexts are gone from the server (CREDPROBLEM, then a refresh, on their next call)."""
    srv = server(realm, max_contexts=4, max_contexts_per_principal=2)
    bob, t_bob = _established(realm, srv, "bob")
    alices = [_established(realm, srv, "alice")[0] for _ in range(6)]
    assert srv.context_count() == 3
    assert srv.gss_context(bob.handle or b"") is not None
    assert [srv.gss_context(a.handle or b"") is not None for a in alices] == [False] * 4 + [True] * 2
    assert t_bob.call_sync(bob, 1, b"bob still works") == b"bob still works"
    held = {}
    for info in srv.contexts():
        held[info.principal] = held.get(info.principal, 0) + 1
    assert sorted(held.values()) == [1, 2] and len(held) == 2
    assert {p: len(h) for p, h in srv._by_principal.items()} == held


def test_the_per_principal_lists_follow_the_table(realm: ThrowawayRealm) -> None:
    """DESTROY, LRU eviction and drop_all_contexts take contexts off the per-principal lists, so
    those never count more than the table holds."""
    srv = server(realm, max_contexts=2, max_contexts_per_principal=2)
    a1, t = _established(realm, srv, "alice")
    asyncio.run(a1.destroy(t.call))
    assert srv._by_principal == {}
    for user in ("alice", "bob", "alice", "bob"):
        _established(realm, srv, user)
        assert sum(len(h) for h in srv._by_principal.values()) == srv.context_count() <= 2
    srv.drop_all_contexts()
    assert srv._by_principal == {}


def test_a_quota_of_zero_is_refused(realm: ThrowawayRealm) -> None:
    with pytest.raises(ValueError, match="max_contexts_per_principal"):
        server(realm, max_contexts_per_principal=0)
