"""The server flavor: robustness against arbitrary network input and its bounded tables (real KDC)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpclatch.gss.channel import InMemoryChannel
from rpclatch.gss.client import GssClientAuth
from rpclatch.gss.errors import GssMajor
from rpclatch.gss.loopback import LoopbackTransport
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.server import GssServerAuth
from rpclatch.gss.wire import GssCred, GssProc, InitArg, InitRes, Service
from rpclatch.rpc.auth import AuthAccept, AuthControlReply, AuthDeny, AuthDrop, AuthGarbage
from rpclatch.rpc.messages import NULL_AUTH, CallMessage, OpaqueAuth
from rpclatch.xdr import XdrError

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
@given(cred=st.binary(max_size=64), verf_flavor=st.sampled_from([0, 6, 1]), verf=st.binary(max_size=64),
       args=st.binary(max_size=128), proc=st.integers(0, 3))
def test_arbitrary_calls_get_a_verdict_never_an_exception(
    setup: tuple[GssServerAuth, GssClientAuth, LoopbackTransport],
    cred: bytes, verf_flavor: int, verf: bytes, args: bytes, proc: int,
) -> None:
    srv, _, t = setup
    call = CallMessage(1, t.prog, t.vers, proc, OpaqueAuth(6, cred), OpaqueAuth(verf_flavor, verf), args)
    assert isinstance(srv.check_call(call, t.conn, 0.0), RESULTS)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(gss_proc=st.sampled_from(list(GssProc)), service=st.sampled_from(list(Service)),
       seq=st.integers(0, 2**32 - 1), verf=st.binary(max_size=80), args=st.binary(max_size=128),
       version=st.sampled_from([1, 2]))
def test_wellformed_credentials_with_our_handle_never_crash(
    setup: tuple[GssServerAuth, GssClientAuth, LoopbackTransport],
    gss_proc: GssProc, service: Service, seq: int, verf: bytes, args: bytes, version: int,
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
    assert all(i.principal == realm.users["bob"].principal and i.version == 2 and i.established
               and i.bound_conn_id is None for i in infos)


def test_gss_level_bindings_need_a_channel(realm: ThrowawayRealm) -> None:
    srv = GssServerAuth(GssapiProvider(realm.service_name, keytab=realm.keytab), gss_channel_bindings=True)
    t = LoopbackTransport(srv)  # no channel on this connection
    c = GssClientAuth(GssapiProvider(ccache=realm.users["bob"].ccache), realm.service_name)
    gss = c.provider.initiate(realm.service_name)
    call = CallMessage(3, t.prog, t.vers, 0,
                       OpaqueAuth(6, GssCred(2, GssProc.RPCSEC_GSS_INIT, 0, Service.NONE).encode()),
                       NULL_AUTH, InitArg(gss.step(None) or b"").encode())
    res = srv.check_call(call, t.conn, 0.0)
    assert isinstance(res, AuthControlReply)
    assert InitRes.decode(res.results).gss_major == GssMajor.GSS_S_BAD_BINDINGS
    wrong_proc = dataclasses.replace(call, proc=1)
    assert isinstance(srv.check_call(wrong_proc, t.conn, 0.0), AuthDeny)


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), service=st.sampled_from(list(Service)), version=st.sampled_from([1, 2, 3]))
def test_mutated_credentials_take_the_same_checks(
    setup: tuple[GssServerAuth, GssClientAuth, LoopbackTransport], data: st.DataObject,
    service: Service, version: int,
) -> None:
    """The fixed-layout fast path of check_call and the general decoder judge alike: a valid DATA
    credential with one field, byte or length changed is refused (or dropped) the same way it is
    when it goes through ``decode_cred_fields``; only the intact channel_prot one can pass."""
    from rpclatch.gss.wire import decode_cred_fields

    srv, c, t = setup
    body = bytearray(GssCred(version, GssProc.RPCSEC_GSS_DATA, 10_000_000, service, c.handle or b"").encode())
    how = data.draw(st.sampled_from(["flip", "truncate", "extend", "hlen", "none"]))
    if how == "flip":
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        del body[data.draw(st.integers(0, len(body) - 1)):]
    elif how == "extend":
        body += data.draw(st.binary(min_size=1, max_size=8))
    elif how == "hlen":
        body[16:20] = data.draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big")
    call = CallMessage(3, t.prog, t.vers, 0, OpaqueAuth(6, bytes(body)), NULL_AUTH, b"")
    res = srv.check_call(call, t.conn, 0.0)
    assert isinstance(res, RESULTS)
    if isinstance(res, AuthAccept):  # the handle is bound on this connection: channel_prot passes
        v, proc, _seq, svc, handle = decode_cred_fields(bytes(body))  # (a seq flip is still valid)
        assert (v, proc, svc, handle) == (2, GssProc.RPCSEC_GSS_DATA, Service.CHANNEL_PROT, c.handle)
        return
    try:
        fields = decode_cred_fields(bytes(body))
    except XdrError:
        assert isinstance(res, AuthDeny)  # malformed or unsupported version: refused
        return
    if fields[0] not in srv.versions:
        assert isinstance(res, AuthDeny) and res.stat == srv.unsupported_version_stat
