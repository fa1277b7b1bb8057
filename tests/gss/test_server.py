"""The server flavor: robustness against arbitrary network input and its bounded tables (real KDC)."""

from __future__ import annotations

import asyncio
import dataclasses
import struct

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rpclatch.gss.channel import InMemoryChannel
from rpclatch.gss.client import GssClientAuth, VersionPolicy
from rpclatch.gss.errors import GssMajor
from rpclatch.gss.loopback import LoopbackTransport
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.server import GssServerAuth, _ServerContext
from rpclatch.gss.wire import (
    MAX_HANDLE,
    MAXSEQ,
    GssCred,
    GssProc,
    InitArg,
    InitRes,
    IntegData,
    PrivData,
    Service,
)
from rpclatch.rpc import wire
from rpclatch.rpc.auth import (
    AuthAccept,
    AuthControlReply,
    AuthDeny,
    AuthDrop,
    AuthGarbage,
    ConnectionInfo,
    PreparedCall,
)
from rpclatch.rpc.messages import NULL_AUTH, AcceptedReply, AuthStat, CallMessage, OpaqueAuth, decode_call

RESULTS = (AuthAccept, AuthControlReply, AuthDeny, AuthDrop, AuthGarbage)


@pytest.fixture(scope="module")
def setup(realm: ThrowawayRealm) -> tuple[GssServerAuth, GssClientAuth, LoopbackTransport]:
    cli_ch, srv_ch = InMemoryChannel.pair("x-test", b"fuzz")
    srv = GssServerAuth(GssapiProvider(realm.service_name, keytab=realm.keytab), max_contexts=8)
    t = LoopbackTransport(srv, channel=srv_ch)
    c = GssClientAuth(GssapiProvider(ccache=realm.users["alice"].ccache), realm.service_name)
    asyncio.run(c.establish(t.call))
    asyncio.run(c.bind_channel(t.call, cli_ch))
    return srv, c, t


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cred=st.binary(max_size=64),
    verf_flavor=st.sampled_from([0, 6, 1]),
    verf=st.binary(max_size=64),
    args=st.binary(max_size=128),
    proc=st.integers(0, 3),
)
def test_arbitrary_calls_get_a_verdict_never_an_exception(
    setup: tuple[GssServerAuth, GssClientAuth, LoopbackTransport],
    cred: bytes,
    verf_flavor: int,
    verf: bytes,
    args: bytes,
    proc: int,
) -> None:
    srv, _, t = setup
    call = CallMessage(1, t.prog, t.vers, proc, OpaqueAuth(6, cred), OpaqueAuth(verf_flavor, verf), args)
    assert isinstance(srv.check_call(call, t.conn, 0.0), RESULTS)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    gss_proc=st.sampled_from(list(GssProc)),
    service=st.sampled_from(list(Service)),
    seq=st.integers(0, 2**32 - 1),
    verf=st.binary(max_size=80),
    args=st.binary(max_size=128),
    version=st.sampled_from([1, 2]),
)
def test_wellformed_credentials_with_our_handle_never_crash(
    setup: tuple[GssServerAuth, GssClientAuth, LoopbackTransport],
    gss_proc: GssProc,
    service: Service,
    seq: int,
    verf: bytes,
    args: bytes,
    version: int,
) -> None:
    srv, c, t = setup
    cred = GssCred(version, gss_proc, seq, service, c.handle or b"")
    for verf_auth in (OpaqueAuth(6, verf), NULL_AUTH):
        call = CallMessage(2, t.prog, t.vers, 0, OpaqueAuth(6, cred.encode()), verf_auth, args)
        res = srv.check_call(call, t.conn, 0.0)
        assert isinstance(res, RESULTS)
        if isinstance(res, AuthAccept):  # only channel_prot can pass without a MIC we could forge
            assert service == Service.CHANNEL_PROT and verf_auth == NULL_AUTH and version == 2
        assert srv.context_count() >= 1  # garbage never destroys the context


def test_handles_are_random_and_table_is_bounded(realm: ThrowawayRealm) -> None:
    srv = GssServerAuth(GssapiProvider(realm.service_name, keytab=realm.keytab), max_contexts=3)
    t = LoopbackTransport(srv)
    handles = set()
    for _ in range(6):
        c = GssClientAuth(GssapiProvider(ccache=realm.users["bob"].ccache), realm.service_name)
        asyncio.run(c.establish(t.call))
        assert c.handle is not None and len(c.handle) == 16
        handles.add(c.handle)
    assert len(handles) == 6
    assert srv.context_count() == 3
    infos = srv.contexts()
    assert [i.handle for i in infos][-1] == c.handle  # most recently used last
    assert all(
        i.principal == realm.users["bob"].principal
        and i.version == 2
        and i.established
        and i.bound_conn_id is None
        for i in infos
    )


def test_gss_level_bindings_need_a_channel(realm: ThrowawayRealm) -> None:
    srv = GssServerAuth(GssapiProvider(realm.service_name, keytab=realm.keytab), gss_channel_bindings=True)
    t = LoopbackTransport(srv)  # no channel on this connection
    c = GssClientAuth(GssapiProvider(ccache=realm.users["bob"].ccache), realm.service_name)
    gss = c.provider.initiate(realm.service_name)
    call = CallMessage(
        3,
        t.prog,
        t.vers,
        0,
        OpaqueAuth(6, GssCred(2, GssProc.RPCSEC_GSS_INIT, 0, Service.NONE).encode()),
        NULL_AUTH,
        InitArg(gss.step(None) or b"").encode(),
    )
    res = srv.check_call(call, t.conn, 0.0)
    assert isinstance(res, AuthControlReply)
    assert InitRes.decode(res.results).gss_major == GssMajor.GSS_S_BAD_BINDINGS
    wrong_proc = dataclasses.replace(call, proc=1)
    assert isinstance(srv.check_call(wrong_proc, t.conn, 0.0), AuthDeny)


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), service=st.sampled_from(list(Service)), version=st.sampled_from([1, 2, 3]))
def test_mutated_credentials_take_the_same_checks(
    setup: tuple[GssServerAuth, GssClientAuth, LoopbackTransport],
    data: st.DataObject,
    service: Service,
    version: int,
) -> None:
    """A valid DATA credential with one field, byte or length changed: a malformed one (as read
    by :func:`_parse_cred`, not rpclatch's decoder) is refused, one with a version not served too
    with ``unsupported_version_stat``; only an intact channel_prot one can pass."""
    srv, c, t = setup
    body = bytearray(GssCred(version, GssProc.RPCSEC_GSS_DATA, 10_000_000, service, c.handle or b"").encode())
    how = data.draw(st.sampled_from(["flip", "truncate", "extend", "hlen", "none"]))
    if how == "flip":
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        del body[data.draw(st.integers(0, len(body) - 1)) :]
    elif how == "extend":
        body += data.draw(st.binary(min_size=1, max_size=8))
    elif how == "hlen":
        body[16:20] = data.draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big")
    call = CallMessage(3, t.prog, t.vers, 0, OpaqueAuth(6, bytes(body)), NULL_AUTH, b"")
    res = srv.check_call(call, t.conn, 0.0)
    assert isinstance(res, RESULTS)
    fields = _parse_cred(bytes(body))
    if isinstance(res, AuthAccept):  # the handle is bound on this connection: channel_prot passes
        assert not isinstance(fields, str)
        v, proc, _seq, svc, handle = fields  # (a seq flip is still valid)
        assert (v, proc, svc, handle) == (2, GssProc.RPCSEC_GSS_DATA, Service.CHANNEL_PROT, c.handle)
        return
    if isinstance(fields, str):
        assert isinstance(res, AuthDeny)  # malformed or unsupported version: refused
        return
    if fields[0] not in srv.versions:
        assert isinstance(res, AuthDeny) and res.stat == srv.unsupported_version_stat


# -- the one per-call path against a model written from the RFCs ----------------------------------


@dataclasses.dataclass
class _Twin:
    srv: GssServerAuth
    clients: dict[int, GssClientAuth]  # by RPCSEC_GSS version
    bound: ConnectionInfo  # the connection the v2 client's handle is bound to
    other: ConnectionInfo  # another connection, with a channel of its own
    broken: InMemoryChannel  # a channel that is down


@pytest.fixture(scope="module")
def twin(realm: ThrowawayRealm) -> _Twin:
    cli_ch, srv_ch = InMemoryChannel.pair("x-test", b"twin")
    srv = GssServerAuth(GssapiProvider(realm.service_name, keytab=realm.keytab), seq_window=32)
    t = LoopbackTransport(srv, channel=srv_ch)
    clients = {}
    for version, policy in ((2, VersionPolicy.REQUIRE_V2), (1, VersionPolicy.V1_ONLY)):
        c = GssClientAuth(
            GssapiProvider(ccache=realm.users["alice"].ccache), realm.service_name, versions=policy
        )
        asyncio.run(c.establish(t.call))
        clients[version] = c
    asyncio.run(clients[2].bind_channel(t.call, cli_ch))
    other = ConnectionInfo(
        t.conn.conn_id + 1, ("127.0.0.1", 1), "sim", InMemoryChannel.pair("x-test", b"twin")[1]
    )
    broken = InMemoryChannel.pair("x-test", b"twin")[1]
    broken.break_()
    return _Twin(srv, clients, t.conn, other, broken)


_DATA, _DESTROY, _BIND = GssProc.RPCSEC_GSS_DATA, GssProc.RPCSEC_GSS_DESTROY, GssProc.RPCSEC_GSS_BIND_CHANNEL


def _parse_cred(body: bytes) -> tuple[int, int, int, int, bytes] | str:
    """An ``rpc_gss_cred_vers_1_t`` read here, independently of rpclatch's decoder (RFC 2203 §5):
    its fields, or why it is malformed ("short", "version", "layout", "enum")."""
    if len(body) < 20:
        return "short"
    version, proc, seq, service, hlen = struct.unpack(">5I", body[:20])
    if version not in (1, 2):
        return "version"
    if hlen > MAX_HANDLE or len(body) != 20 + hlen + (-hlen % 4):
        return "layout"
    if proc not in set(GssProc) or service not in set(Service):  # (their numbers: tests/gss/test_wire.py)
        return "enum"
    return version, proc, seq, service, body[20 : 20 + hlen]


def _is_new(highest: int, bits: int, size: int, seq: int) -> bool:
    """RFC 2203 §5.3.3.1 window: above the highest seen, or inside the window and not seen."""
    if seq > highest:
        return True
    return highest - seq < size and not (bits >> (highest - seq)) & 1


def _expected(
    srv: GssServerAuth,
    ctx: _ServerContext,
    conn: ConnectionInfo,
    call: CallMessage,
    signed_cred: bytes,
    verf_kind: str,
    body_kind: str,
) -> tuple[object, ...]:
    """What RFC 2203 §5.3.3 (order of checks in the GssServerAuth docstring) and RFC 5403 §3.4
    say the server does with ``call``: (verdict kind, auth_stat or None). The request MIC is good
    iff the verifier is a MIC of ``signed_cred``'s header and the credential was sent as signed."""
    fields = _parse_cred(call.cred.body)
    if fields == "version":
        return ("AuthDeny", srv.unsupported_version_stat)
    if isinstance(fields, str):
        return ("AuthDeny", AuthStat.AUTH_BADCRED)
    version, proc, seq, service, handle = fields
    if version not in srv.versions:
        return ("AuthDeny", srv.unsupported_version_stat)
    if proc in (GssProc.RPCSEC_GSS_INIT, GssProc.RPCSEC_GSS_CONTINUE_INIT):
        return ("INIT", None)  # context creation: not this test's subject
    if (
        (proc == _BIND and (version != 2 or service != Service.NONE))
        or (proc == _DESTROY and service == Service.CHANNEL_PROT)
        or (service == Service.CHANNEL_PROT and version != 2)
        or (proc != _DATA and call.proc != 0)
    ):
        return ("AuthDeny", AuthStat.AUTH_BADCRED)
    if handle != ctx.handle:
        return ("AuthDeny", AuthStat.RPCSEC_GSS_CREDPROBLEM)
    if version != ctx.version:
        return ("AuthDeny", AuthStat.AUTH_BADCRED)  # RFC 5403 §4: a handle never crosses versions
    cap = srv.max_requests_per_context
    if seq >= MAXSEQ or (cap is not None and ctx.data_requests >= cap and proc != _DESTROY):
        return ("AuthDeny", AuthStat.RPCSEC_GSS_CTXPROBLEM)
    new = _is_new(ctx.window.highest, ctx.window._bits, ctx.window.size, seq)
    if service == Service.CHANNEL_PROT:  # RFC 5403 §3.4
        if call.verf != NULL_AUTH:
            return ("AuthDeny", AuthStat.AUTH_BADVERF)
        binding = ctx.binding
        if (
            binding is None
            or binding.conn_id != conn.conn_id
            or conn.channel is not binding.channel
            or not binding.channel.is_up()
        ):
            return ("AuthDeny", AuthStat.RPCSEC_GSS_CTXPROBLEM)
        return ("accept", None) if new else ("AuthDrop", None)
    if call.verf.flavor != 6:
        return ("AuthDeny", AuthStat.RPCSEC_GSS_CREDPROBLEM)
    if proc == _BIND:
        return ("BIND", None)  # channel binding: tests/gss/test_bind_outcomes.py
    if not new:
        return ("AuthDrop", None)
    if verf_kind != "mic" or call.cred.body != signed_cred:
        return ("AuthDeny", AuthStat.RPCSEC_GSS_CREDPROBLEM)
    if service in (Service.INTEGRITY, Service.PRIVACY) and body_kind != "good":
        return ("AuthGarbage", None)
    return ("accept", None)


def _mostly(usual: object, *others: object) -> st.SearchStrategy[object]:
    return st.sampled_from([usual] * 6 + list(others))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    version=st.sampled_from([1, 2]),
    cred_version=_mostly("same", 1, 2, 3),
    service=st.sampled_from([int(s) for s in Service] * 3 + [0, 5]),
    proc=_mostly(0, 5, 2**32 - 1),
    verf_kind=_mostly("right", "mic", "bad-mic", "none", "sys"),
    body_kind=_mostly("good", "wrong-seq", "bad", "short"),
    args=st.binary(max_size=40).map(lambda b: b + b"\0" * (-len(b) % 4)),
    conn_kind=st.sampled_from(["bound", "other", "channel-down"]),
    keep_header=st.booleans(),
    cap=_mostly(None, 0, 1),
    flip=_mostly(False, True),
)
def test_check_call_judges_as_the_rfcs_say(
    twin: _Twin,
    data: st.DataObject,
    version: int,
    cred_version: int | str,
    service: int,
    proc: int,
    verf_kind: str,
    body_kind: str,
    args: bytes,
    conn_kind: str,
    keep_header: bool,
    cap: int | None,
    flip: bool,
) -> None:
    """The one per-call path of the server, check_call, against :func:`_expected`: calls built
    here with struct and the wire dataclasses (not the client flavor), signed and forged, of every
    service, seq_nums around the window and MAXSEQ, on the bound connection, another one and a
    channel that went down, with and without the request cap, credentials changed after signing.
    Same verdict kind and auth_stat; an accepted call has the arguments sent, a seal the client
    accepts, and used up its seq_num; a refused or dropped one left the window as it was."""
    srv, client = twin.srv, twin.clients[version]
    ctx = srv._contexts[client.handle or b""]
    gss = client._current().gss
    # a random window: nothing seen yet, or a highest seq_num with some of the 32 below it seen
    high = data.draw(st.integers(-1, 1000))
    ctx.window._highest = high
    ctx.window._bits = 0 if high < 0 else (data.draw(st.integers(0, 2**32 - 1)) | 1)
    seq = data.draw(
        st.one_of(
            st.integers(max(0, high - 40), high + 40),
            st.integers(high + 1, high + 40),
            st.integers(0, 2**32 - 1),
            st.sampled_from([MAXSEQ - 1, MAXSEQ, 0]),
        )
    )
    cred_vers = version if cred_version == "same" else cred_version
    cred = struct.pack(">IIIII", cred_vers, proc, seq, service, len(ctx.handle)) + ctx.handle
    cred += b"\0" * (-len(cred) % 4)
    if flip:  # a byte changed after signing
        flipped = bytearray(cred)
        flipped[data.draw(st.integers(0, len(cred) - 1))] ^= data.draw(st.integers(1, 255))
        sent = bytes(flipped)
    else:
        sent = cred
    head = CallMessage(0x77, 0x20000099, 1, data.draw(st.integers(0, 3)), OpaqueAuth(6, cred))
    header = head.encode_header_through_cred()
    if verf_kind == "right":
        verf_kind = "none" if service == Service.CHANNEL_PROT else "mic"
    verf = {
        "mic": OpaqueAuth(6, gss.get_mic(header)),
        "bad-mic": OpaqueAuth(6, gss.get_mic(header + b"x")),
        "none": NULL_AUTH,
        "sys": OpaqueAuth(1, b"\0" * 8),
    }[verf_kind]
    inner = struct.pack(">I", seq if body_kind != "wrong-seq" else seq ^ 1) + args
    if body_kind == "short":
        inner = inner[:3]
    if service == Service.INTEGRITY:
        body = IntegData(inner, gss.get_mic(inner) if body_kind != "bad" else b"bad").encode()
    elif service == Service.PRIVACY:
        body = PrivData(gss.wrap(inner) if body_kind != "bad" else b"bad").encode()
    else:
        body = args
    call = dataclasses.replace(head, cred=OpaqueAuth(6, sent), verf=verf, args=body)
    if keep_header:  # decoded from the wire: the header bytes as received are kept
        call = decode_call(wire.encode_call(call))
    conn = twin.other if conn_kind == "other" else twin.bound
    binding = ctx.binding
    if conn_kind == "channel-down" and binding is not None:
        ctx.binding = dataclasses.replace(binding, channel=twin.broken)
        conn = dataclasses.replace(twin.bound, channel=twin.broken)
    saved_cap = srv.max_requests_per_context
    srv.max_requests_per_context = None if cap is None else ctx.data_requests + cap
    try:
        expected = _expected(srv, ctx, conn, call, cred, verf_kind, body_kind)
        window_before = (ctx.window.highest, ctx.window._bits)
        res = srv.check_call(call, conn, 0.0)
        window_after = (ctx.window.highest, ctx.window._bits)
    finally:
        srv.max_requests_per_context = saved_cap
        srv._contexts[ctx.handle] = ctx  # the request cap forgets it: keep it for the next example
        ctx.binding = binding
    event(f"{expected[0]} {expected[1].name if isinstance(expected[1], AuthStat) else ''}")
    assert isinstance(res, RESULTS)
    if expected[0] in ("INIT", "BIND"):
        assert not isinstance(res, AuthAccept)
        return
    got = ("accept" if isinstance(res, AuthAccept) else type(res).__name__, getattr(res, "stat", None))
    assert got == expected
    if isinstance(res, AuthAccept):
        assert res.args == args and res.principal == ctx.principal
        parsed = _parse_cred(sent)
        assert not isinstance(parsed, str)
        verf_out, sealed = res.seal(b"\0\0\0\x05res")
        prepared = PreparedCall(call, (client._current(), parsed[2], Service(parsed[3])))
        results = client.accept_reply(prepared, AcceptedReply(call.xid, verf_out, results=sealed))
        assert results == b"\0\0\0\x05res"
        assert not _is_new(*window_after, ctx.window.size, parsed[2])  # its seq_num is spent
    elif not isinstance(res, AuthGarbage):  # GARBAGE_ARGS comes after the MIC: the seq_num is spent
        assert window_after == window_before


def test_table_read_without_its_lock_under_concurrent_churn(realm: ThrowawayRealm) -> None:
    """check_call reads the context table without the table lock (atomic get/move_to_end under the
    GIL); writers hold the lock and loop over snapshots. Two threads make channel_prot calls on four
    bound contexts while a third creates contexts (each evicting one from a full table of 40 after
    a scan for expired ones), lists them and closes connections, with a 1 us switch interval so
    the threads interleave everywhere: every call gets a verdict (an accept, or CREDPROBLEM once its
    context is evicted) and no thread raises. (With the scan looping over the table itself
    instead of a snapshot, most runs fail: OrderedDict mutated during iteration.)"""
    import sys
    import threading

    cli_ch, srv_ch = InMemoryChannel.pair("x-test", b"churn")
    srv = GssServerAuth(
        GssapiProvider(realm.service_name, keytab=realm.keytab), max_contexts=40, seq_window=65536
    )  # no seq_num this test sends falls below it
    t = LoopbackTransport(srv, channel=srv_ch)
    bob = GssapiProvider(ccache=realm.users["bob"].ccache)
    for _ in range(40):  # a full table: every new context evicts one, after a scan for expired ones
        asyncio.run(GssClientAuth(bob, realm.service_name).establish(t.call))
    handles = []
    for _ in range(4):  # calls rotate over four bound contexts: each moves its handle in the table
        c = GssClientAuth(GssapiProvider(ccache=realm.users["alice"].ccache), realm.service_name)
        asyncio.run(c.establish(t.call))
        asyncio.run(c.bind_channel(t.call, cli_ch))
        handles.append(c.handle or b"")
    seqs = iter(range(100, 10**9))  # above BIND_CHANNEL's
    lock = threading.Lock()
    errors: list[BaseException] = []
    verdicts: list[object] = []
    stop = threading.Event()

    def calls() -> None:
        try:
            while not stop.is_set():
                with lock:
                    seq = next(seqs)
                if seq >= 60_000:  # all within one window: none can be dropped as too old
                    return
                handle = handles[seq % len(handles)]
                cred = GssCred(2, GssProc.RPCSEC_GSS_DATA, seq, Service.CHANNEL_PROT, handle).encode()
                res = srv.check_call(
                    CallMessage(seq, t.prog, t.vers, 1, OpaqueAuth(6, cred), NULL_AUTH, b"\0\0\0\0"),
                    t.conn,
                    0.0,
                )
                verdicts.append(res)
        except BaseException as exc:  # reported below
            errors.append(exc)

    def churn() -> None:
        try:
            for _ in range(80):
                other = GssClientAuth(bob, realm.service_name)
                asyncio.run(other.establish(LoopbackTransport(srv).call))
                srv.contexts()
                srv.connection_closed(ConnectionInfo(-1, None, "sim"))
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        workers = [threading.Thread(target=calls) for _ in range(2)]
        churner = threading.Thread(target=churn)
        for w in [*workers, churner]:
            w.start()
        churner.join(120)
        stop.set()
        for w in workers:
            w.join(60)
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors
    assert any(isinstance(v, AuthAccept) for v in verdicts)
    assert all(isinstance(v, AuthAccept) or (isinstance(v, AuthDeny) and v.stat == 13) for v in verdicts)
