"""The client flavor: replies it cannot trust become AuthVerifierError, whatever the bytes (real KDC)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpclatch.gss.client import GssClientAuth
from rpclatch.gss.errors import RpcGssLocalError
from rpclatch.gss.loopback import LoopbackTransport
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.server import GssServerAuth
from rpclatch.gss.wire import Service
from rpclatch.rpc.errors import AuthVerifierError
from rpclatch.rpc.messages import AcceptedReply, OpaqueAuth


@pytest.fixture(scope="module", params=[Service.NONE, Service.INTEGRITY, Service.PRIVACY])
def client(request: pytest.FixtureRequest, realm: ThrowawayRealm) -> GssClientAuth:
    srv = GssServerAuth(GssapiProvider(realm.service_name, keytab=realm.keytab))
    t = LoopbackTransport(srv)
    c = GssClientAuth(GssapiProvider(ccache=realm.users["alice"].ccache), realm.service_name,
                      service=request.param)
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
