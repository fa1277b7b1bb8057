"""H1's sans-IO RPC client and server over simulated (latched) streams."""

from __future__ import annotations

import pytest

from rpclatch.ipsec.engine import Approach
from rpclatch.ipsec.latch import BrokenDisposition, LatchRequest, LatchState
from rpclatch.ipsec.model import Selector
from rpclatch.netsim.network import SimNetwork
from rpclatch.netsim.rpc import SimConnectionReset, SimDestinationUnreachable, SimRpcClient, SimRpcServer
from rpclatch.netsim.testing.lab import Lab
from rpclatch.netsim.testing.wireview import flow_packets
from rpclatch.rpc.auth import ConnectionInfo
from rpclatch.rpc.errors import RpcAcceptError, RpcTimeout
from rpclatch.rpc.server import CallContext, RpcDispatcher

PROG, VERS = 400123, 1


def _dispatcher(seen: list[ConnectionInfo]) -> RpcDispatcher:
    d = RpcDispatcher()

    def echo(args: bytes, ctx: CallContext) -> bytes:
        seen.append(ctx.conn)
        return args

    d.add_program(PROG, VERS, {0: lambda args, ctx: b"", 1: echo})
    return d


def test_rpc_over_plain_sim_stream() -> None:
    net = SimNetwork(seed=2)
    a, b = net.add_host("a", "192.0.2.1"), net.add_host("b", "192.0.2.2")
    seen: list[ConnectionInfo] = []
    SimRpcServer(b.listen(2049), _dispatcher(seen))
    client = SimRpcClient(a.connect("192.0.2.2", 2049))
    assert client.call(PROG, VERS, 1, b"\x00\x00\x00\x05") == b"\x00\x00\x00\x05"
    big = bytes(range(256)) * 40
    assert client.call(PROG, VERS, 1, big) == big
    with pytest.raises(RpcAcceptError):
        client.call(PROG, VERS, 9, b"")
    assert seen and seen[0].transport == "sim" and seen[0].channel is None


@pytest.mark.parametrize("approach", [Approach.ULP, Approach.POLICY], ids=["approach1", "approach2"])
def test_rpc_server_sees_the_latched_channel_and_reset_on_break(approach: Approach) -> None:
    lab = Lab.build(approach=approach)
    seen: list[ConnectionInfo] = []
    server = SimRpcServer(lab.listen(), _dispatcher(seen))
    conn = lab.a.connect(lab.b.address, 2049, local_port=50000)
    client = SimRpcClient(conn)
    assert client.call(PROG, VERS, 1, b"ping") == b"ping"
    assert seen[0].channel is not None and seen[0].channel is server.connections[0][0].channel
    assert conn.channel is not None and conn.channel.binding_data == seen[0].channel.binding_data
    assert all(p.protected for p in flow_packets(lab.net.hub, conn.flow))
    if approach is Approach.POLICY:
        c = lab.attacker()
        c.claim_address(lab.b.address)
        lab.stack(c).ike.initiate(lab.b.address, lab.a.address, (Selector.for_flow(conn.flow.reversed()),))
        lab.net.run_for(0.5)
        with pytest.raises(SimConnectionReset):
            client.call(PROG, VERS, 1, b"again")
        assert not client.is_open


def test_outstanding_call_fails_with_reset_when_latch_breaks() -> None:
    lab = Lab.build()
    SimRpcServer(lab.listen(), _dispatcher([]))
    conn = lab.a.connect(lab.b.address, 2049, local_port=50001)
    client = SimRpcClient(conn)
    assert client.call(PROG, VERS, 0, b"") == b""
    c = lab.attacker()
    c.claim_address(lab.b.address)  # the reply to the next call will never come back from B
    handle = client.start_call(PROG, VERS, 1, b"lost")
    lab.stack(c).ike.initiate(lab.b.address, lab.a.address, (Selector.for_flow(conn.flow.reversed()),))
    lab.net.run_for(1.0)
    assert isinstance(client.results.get(handle.xid), Exception)
    assert client.ended is not None


def test_call_during_unreachable_disposition_break_names_the_soft_error_then_recovers() -> None:
    """RFC 5660 §5.5 (c) on the client's latch: the stream is not reset; a call that times out
    meanwhile fails with SimDestinationUnreachable (an RpcTimeout naming the soft error, RFC 1122
    §4.2.3.9), and calls go through again once the latch is ESTABLISHED."""
    lab = Lab.build()
    SimRpcServer(lab.listen(), _dispatcher([]))
    conn = lab.a.connect(
        lab.b.address,
        2049,
        local_port=50002,
        request=LatchRequest(disposition=BrokenDisposition.ICMP_UNREACHABLE),
    )
    client = SimRpcClient(conn)
    assert client.call(PROG, VERS, 1, b"ping") == b"ping"
    c = lab.attacker()
    c.claim_address(lab.b.address)
    lab.stack(c).ike.initiate(lab.b.address, lab.a.address, (Selector.for_flow(conn.flow.reversed()),))
    lab.net.run_for(0.5)
    assert lab.stack(lab.a).latch_state(conn) is LatchState.BROKEN and conn.soft_error is not None
    c.release_address(lab.b.address)
    lab.b.claim_address(lab.b.address)
    with pytest.raises(SimDestinationUnreachable, match="unreachable") as info:
        client.call(PROG, VERS, 1, b"during break", timeout=2.0)
    assert isinstance(info.value, RpcTimeout) and isinstance(info.value.__cause__, RpcTimeout)
    assert client.is_open and client.ended is None  # not reset, unlike disposition (b)
    for sa in list(lab.stack(lab.a).engine.sad):  # the thief's SA goes away: T5
        if conn.channel is not None and sa.peer != conn.channel.params.peer:
            lab.stack(lab.a).ike.remove_child(sa.sa_id)
    lab.net.run_for(3.0)
    assert lab.stack(lab.a).latch_state(conn) is LatchState.ESTABLISHED and conn.soft_error is None
    assert client.call(PROG, VERS, 1, b"after", timeout=10.0) == b"after"


def test_timeout_without_soft_error_stays_a_plain_timeout() -> None:
    net = SimNetwork(seed=3)
    a, b = net.add_host("a", "192.0.2.1"), net.add_host("b", "192.0.2.2")
    server = SimRpcServer(b.listen(2049), _dispatcher([]))
    conn = a.connect("192.0.2.2", 2049)
    client = SimRpcClient(conn)
    assert client.call(PROG, VERS, 1, b"ping") == b"ping"
    server.connections[0][0].on_event = lambda c, ev: None  # the server application hangs
    with pytest.raises(RpcTimeout) as info:
        client.call(PROG, VERS, 1, b"lost", timeout=1.0)
    assert conn.soft_error is None and not isinstance(info.value, SimDestinationUnreachable)
