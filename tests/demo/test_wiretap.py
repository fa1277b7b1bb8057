"""The demo's passive wire observer, on a cleartext simulated network with a real KDC: it must see
the RPCSEC_GSS service actually used and what a receiver could read."""

from __future__ import annotations

from typing import Any

import pytest

from rpclatch.connect.gss import RpcsecGssConnector
from rpclatch.connect.policy import FallbackService
from rpclatch.connect.world import run_to_completion
from rpclatch.demo.wiretap import WireView
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.server import GssServerAuth
from rpclatch.gss.wire import GssProc, Service
from rpclatch.netsim.network import SimNetwork
from rpclatch.netsim.rpc import SimRpcClient, SimRpcServer
from rpclatch.rpc.auth import ClientAuth
from rpclatch.rpc.server import RpcDispatcher
from rpclatch.rpc.testprog import (
    PROC_ECHO,
    RPCLATCH_TEST_PROG,
    RPCLATCH_TEST_VERS,
    add_test_program,
    decode_opaque,
    encode_opaque,
)

MARKER = b"WIRETAP-MARKER-" * 8


class _Link:
    """A real SimRpcClient connection in the shape the GSS connector expects."""

    def __init__(self, client: SimRpcClient) -> None:
        self.client = client
        self.conn_id = client.conn_id

    async def call(self, auth: ClientAuth, prog: int, vers: int, proc: int, args: bytes) -> bytes:
        return self.client.call(prog, vers, proc, args, auth)


def _gss_network(realm: ThrowawayRealm) -> tuple[SimNetwork, SimRpcClient]:
    """A cleartext simulated network: an RPC server with the test program under RPCSEC_GSS, a client
    connection to it."""
    net = SimNetwork(seed=7)
    client_host = net.add_host("client", "192.0.2.10")
    server_host = net.add_host("server", "192.0.2.20")
    dispatcher = RpcDispatcher()
    add_test_program(dispatcher)
    dispatcher.add_flavor(GssServerAuth(GssapiProvider(realm.service_name, keytab=realm.keytab)))
    SimRpcServer(server_host.listen(2049), dispatcher)
    return net, SimRpcClient(client_host.connect("192.0.2.20", 2049))


def _gss_context(realm: ThrowawayRealm, client: SimRpcClient, fallback: FallbackService) -> Any:
    gss = RpcsecGssConnector(
        GssapiProvider(ccache=realm.default_user.ccache),
        realm.service_name,
        RPCLATCH_TEST_PROG,
        RPCLATCH_TEST_VERS,
        fallback,
    )
    return run_to_completion(gss.establish(_Link(client), want_v2=False))  # type: ignore[arg-type]


def _echo(client: SimRpcClient, auth: ClientAuth) -> None:
    reply = client.call(RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, PROC_ECHO, encode_opaque(MARKER), auth)
    assert decode_opaque(reply) == MARKER


@pytest.mark.parametrize(
    ("fallback", "readable"), [(FallbackService.INTEGRITY, True), (FallbackService.PRIVACY, False)]
)
def test_wire_shows_service_and_readability(
    realm: ThrowawayRealm, fallback: FallbackService, readable: bool
) -> None:
    net, client = _gss_network(realm)
    ctx = _gss_context(realm, client, fallback)
    _echo(client, ctx.auth(fallback.service))

    view = WireView(net.wire, [])
    assert view.data_services() == [fallback.value]
    assert [c.gss_version for c in view.calls][:1] == [2]
    assert all(not c.protected for c in view.calls)
    assert (MARKER in view.readable_by("server")) is readable
    assert view.cleartext_bytes(port=2049) > len(MARKER)
    with pytest.raises(Exception, match="would use"):
        ctx.auth(Service.CHANNEL_PROT)


def test_data_services_after_a_time(realm: ThrowawayRealm) -> None:
    """``after=`` keeps the DATA calls sent at or after that time (the demo's "services after the
    server change" check)."""
    net, client = _gss_network(realm)
    _echo(client, _gss_context(realm, client, FallbackService.INTEGRITY).auth(Service.INTEGRITY))
    net.run_for(5.0)
    t_change = net.now
    privacy = _gss_context(realm, client, FallbackService.PRIVACY)
    _echo(client, privacy.auth(Service.PRIVACY))
    view = WireView(net.wire, [])
    assert view.data_services() == ["krb5i", "krb5p"]
    assert view.data_services(after=t_change) == ["krb5p"]
    assert view.data_services("client", after=t_change) == ["krb5p"]
    assert view.data_services("server", after=t_change) == []
    first_data = min(c.time for c in view.calls if c.gss_proc is GssProc.RPCSEC_GSS_DATA)
    assert view.data_services(after=first_data) == ["krb5i", "krb5p"]  # at the time counts
