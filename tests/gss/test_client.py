"""The client flavor: replies it cannot trust become AuthVerifierError, whatever the bytes (real KDC)."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpclatch.gss.channel import InMemoryChannel
from rpclatch.gss.client import GssClientAuth
from rpclatch.gss.errors import RpcGssLocalError
from rpclatch.gss.loopback import LoopbackTransport
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.server import GssServerAuth
from rpclatch.gss.wire import IntegData, PrivData, Service, be32
from rpclatch.rpc import wire
from rpclatch.rpc.auth import AuthAccept
from rpclatch.rpc.errors import AuthVerifierError
from rpclatch.rpc.messages import NULL_AUTH, AcceptedReply, OpaqueAuth, decode_call


@pytest.fixture(scope="module", params=[Service.NONE, Service.INTEGRITY, Service.PRIVACY])
def client(request: pytest.FixtureRequest, realm: ThrowawayRealm) -> GssClientAuth:
    srv = GssServerAuth(GssapiProvider(realm.service_name, keytab=realm.keytab))
    t = LoopbackTransport(srv)
    c = GssClientAuth(
        GssapiProvider(ccache=realm.users["alice"].ccache), realm.service_name, service=request.param
    )
    asyncio.run(c.establish(t.call))
    return c


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flavor=st.sampled_from([0, 6]), verf=st.binary(max_size=64), results=st.binary(max_size=200))
def test_forged_replies_are_rejected(client: GssClientAuth, flavor: int, verf: bytes, results: bytes) -> None:
    prepared = client.prepare_call(1, 5, 1, 1, b"args")
    with pytest.raises(AuthVerifierError):
        client.accept_reply(prepared, AcceptedReply(1, OpaqueAuth(flavor, verf), results=results))


def test_unestablished_client_refuses_to_send(realm: ThrowawayRealm) -> None:
    c = GssClientAuth(GssapiProvider(ccache=realm.users["alice"].ccache), realm.service_name)
    with pytest.raises(RpcGssLocalError):
        c.prepare_call(1, 5, 1, 1, b"")
    with pytest.raises(ValueError):
        GssClientAuth(c.provider, realm.service_name, service=Service.CHANNEL_PROT)


@pytest.fixture(scope="module", params=["none", "integrity", "privacy", "channel_prot"])
def pair(
    request: pytest.FixtureRequest, realm: ThrowawayRealm
) -> tuple[GssClientAuth, GssServerAuth, LoopbackTransport]:
    cli_ch, srv_ch = InMemoryChannel.pair("x-test", b"client-fast-path")
    srv = GssServerAuth(GssapiProvider(realm.service_name, keytab=realm.keytab))
    t = LoopbackTransport(srv, channel=srv_ch)
    service = {"none": Service.NONE, "privacy": Service.PRIVACY}.get(request.param, Service.INTEGRITY)
    c = GssClientAuth(GssapiProvider(ccache=realm.users["alice"].ccache), realm.service_name, service=service)
    asyncio.run(c.establish(t.call))
    if request.param == "channel_prot":
        asyncio.run(c.bind_channel(t.call, cli_ch))
    return c, srv, t


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    xid=st.integers(0, 2**32 - 1),
    prog=st.integers(0, 2**32 - 1),
    vers=st.integers(0, 2**32 - 1),
    proc=st.integers(0, 2**32 - 1),
    args=st.binary(max_size=64).map(lambda b: b + b"\0" * (-len(b) % 4)),
)
def test_prepared_calls_match_independent_encoders(
    pair: tuple[GssClientAuth, GssServerAuth, LoopbackTransport],
    xid: int,
    prog: int,
    vers: int,
    proc: int,
    args: bytes,
) -> None:
    """prepare_call builds what RFC 2203 §5.3.1-§5.3.2 says, checked with encoders that are not the
    ones it uses: the credential is packed here with struct, the verifier is a MIC over
    CallMessage.encode_header_through_cred() (rpclatch.rpc's encoder), the body IntegData/PrivData
    of seq_num + args; channel_prot: AUTH_NONE verifier, args as they are (RFC 5403 §3.4). The
    server accepts it, and the client accepts the server's reply."""
    c, srv, t = pair
    prepared = c.prepare_call(xid, prog, vers, proc, args)
    msg = prepared.message
    ctx, seq, service = prepared.state
    assert service is c.effective_service()
    handle = ctx.handle
    cred = struct.pack(">5I", ctx.version, 0, seq, service, len(handle)) + handle + b"\0" * (-len(handle) % 4)
    assert msg.cred == OpaqueAuth(6, cred)
    assert (msg.xid, msg.prog, msg.vers, msg.proc, msg.rpcvers) == (xid, prog, vers, proc, 2)
    server_gss = srv.gss_context(ctx.handle)
    assert server_gss is not None
    if service is Service.CHANNEL_PROT:
        assert msg.verf == NULL_AUTH and msg.args == args
    else:
        assert msg.verf.flavor == 6
        server_gss.verify_mic(msg.encode_header_through_cred(), msg.verf.body)
        inner = be32(seq) + args
        if service is Service.NONE:
            assert msg.args == args
        elif service is Service.INTEGRITY:
            integ = IntegData.decode(msg.args)
            assert integ.databody_integ == inner
            server_gss.verify_mic(inner, integ.checksum)
        else:
            assert server_gss.unwrap(PrivData.decode(msg.args).databody_priv) == (inner, True)
    # and the server, on the bytes a socket would carry, accepts it with these arguments
    verdict = srv.check_call(decode_call(wire.encode_call(msg)), t.conn, 0.0)
    assert isinstance(verdict, AuthAccept) and verdict.args == args
    verf, body = verdict.seal(args)
    assert c.accept_reply(prepared, AcceptedReply(xid, verf, results=body)) == args
