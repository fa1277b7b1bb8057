"""Every branch of the BYPASS-OR-PROTECT policy on the simulated network with a real KDC.

Each test asserts what happened, not what the code says: the RPCSEC_GSS service on the wire (ESP
decrypted with the exported keys), the latch state at both ends (INQUIRE_LATCH), and the SPD
clone the client installed.
"""

from __future__ import annotations

import logging

import pytest

from rpclatch.connect import (
    BindingRequired,
    BindOutcome,
    ConnectionReset,
    ConnectPolicy,
    FallbackService,
    LatchOutcome,
    ProtectedConnection,
)
from rpclatch.connect.sim import SimLink, describe_qop, latch_params
from rpclatch.connect.world import run_to_completion
from rpclatch.demo.testbed import CLIENT_ADDR, NFS_PORT, SERVER_ADDR, DemoTestbed, build_testbed
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.wire import Service
from rpclatch.ipsec.channel_binding import LatchChannel, RpcRole
from rpclatch.ipsec.latch import LatchState
from rpclatch.ipsec.model import FiveTuple, IpProto, Selector, ip
from rpclatch.ipsec.spd import SpdAction
from rpclatch.netsim.ike import IkeMode
from rpclatch.netsim.stream import StreamConnection
from rpclatch.rpc.testprog import (
    PROC_ECHO,
    RPCLATCH_TEST_PROG,
    RPCLATCH_TEST_VERS,
    decode_opaque,
    encode_opaque,
)

PAYLOAD = b"connect-test-payload:" * 20


def echo(pc: ProtectedConnection) -> None:
    reply = pc.call(RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, PROC_ECHO, encode_opaque(PAYLOAD))
    assert decode_opaque(reply) == PAYLOAD


def link(pc: ProtectedConnection) -> SimLink:
    assert isinstance(pc.link, SimLink)
    return pc.link


def server_side(bed: DemoTestbed, lk: SimLink) -> tuple[StreamConnection, object]:
    for conn, rpc in bed.endpoint.server.connections:
        if conn.flow.remote_port == lk.conn.flow.local_port:
            return conn, rpc.conn.channel
    raise AssertionError("the server never accepted the connection")


def connect(
    realm: ThrowawayRealm, policy: ConnectPolicy | None = None, **setup: object
) -> tuple[DemoTestbed, ProtectedConnection]:
    bed = build_testbed(realm, **setup)  # type: ignore[arg-type]
    pc = bed.connection(policy or ConnectPolicy(ike_timeout=2.0))
    pc.connect()
    echo(pc)
    echo(pc)
    return bed, pc


@pytest.mark.parametrize("fallback", list(FallbackService))
def test_latched_and_bound_uses_channel_prot(realm: ThrowawayRealm, fallback: FallbackService) -> None:
    bed, pc = connect(realm, ConnectPolicy(ike_timeout=2.0, fallback=fallback))
    rec, lk = pc.security, link(pc)
    sconn, schannel = server_side(bed, lk)
    assert rec.latch_outcome is LatchOutcome.LATCHED_BINDING_CONF and rec.bound
    assert rec.gss_service is Service.CHANNEL_PROT and rec.gss_version == 2
    params = latch_params(bed.client_stack, lk.conn)
    assert params is not None and rec.qop == describe_qop(params)
    assert rec.qop.startswith("ESP transport") and "(encrypting)" in rec.qop
    assert rec.to_json()["qop"] == rec.qop and rec.to_json()["gss_service"] == "channel_prot"
    assert ", bound, channel_prot: " in rec.summary()
    assert ("policy", f"DATA calls use channel_prot: {rec.reason}") in [
        (k, t) for _, k, t in bed.policy_events
    ]
    assert bed.client_stack.latch_state(lk.conn) is LatchState.ESTABLISHED
    assert bed.server_stack.latch_state(sconn) is LatchState.ESTABLISHED
    # server side: FIND_LATCH found the latch and RPCSEC_GSS got its channel, as the server end
    assert isinstance(schannel, LatchChannel) and schannel.role is RpcRole.SERVER and schannel.is_up()
    view = bed.wire_view()
    assert view.data_services() == ["channel_prot"]
    assert view.bind_calls("client") and all(c.protected for c in view.calls)
    assert view.cleartext_bytes(NFS_PORT) == 0


def test_null_auth_peer_keeps_latch_and_uses_gss_protection(realm: ThrowawayRealm) -> None:
    bed, pc = connect(realm, server_auth="null")
    rec, lk = pc.security, link(pc)
    sconn, _ = server_side(bed, lk)
    assert rec.latch_outcome is LatchOutcome.LATCHED_NO_BINDING and not rec.bound
    assert rec.latched and rec.peer is not None and rec.peer.startswith("null-auth:")
    params = latch_params(bed.client_stack, lk.conn)
    assert params is not None and rec.qop == describe_qop(params)
    assert lk.latch is not None and "NULL" in (lk.latch.binding_unavailable or "")
    assert bed.client_stack.latch_state(lk.conn) is LatchState.ESTABLISHED
    assert bed.server_stack.latch_state(sconn) is LatchState.ESTABLISHED
    view = bed.wire_view()
    assert view.bind_calls() == []
    assert view.data_services() == ["krb5p"]
    assert all(c.protected for c in view.calls)  # krb5p inside ESP: the latch is kept


@pytest.mark.parametrize("mode", [IkeMode.ABSENT, IkeMode.REFUSE, IkeMode.SLOW])
def test_protection_failure_falls_back_to_bypass_clone(realm: ThrowawayRealm, mode: IkeMode) -> None:
    bed, pc = connect(
        realm, ConnectPolicy(ike_timeout=2.0, fallback=FallbackService.INTEGRITY), server_ike=mode
    )
    rec, lk = pc.security, link(pc)
    sconn, schannel = server_side(bed, lk)
    assert rec.latch_outcome is LatchOutcome.NOT_LATCHED and rec.protection_error
    assert rec.gss_service is Service.INTEGRITY and not rec.latched
    assert rec.to_json()["gss_service"] == "krb5i" and ", unbound, krb5i: " in rec.summary()
    assert ("policy", f"DATA calls use krb5i: {rec.reason}") in [(k, t) for _, k, t in bed.policy_events]
    assert rec.qop is None  # no latch, no quality of protection to report
    overlay = bed.client_stack.engine.spd.overlay_entry(lk.conn.flow)
    assert overlay is not None and overlay.action is SpdAction.BYPASS
    assert bed.server_stack.latch_state(sconn) is None and schannel is None
    view = bed.wire_view()
    assert view.data_services() == ["krb5i"]
    assert view.bind_calls() == []
    assert not any(c.protected for c in view.calls)


def test_v1_only_server_on_a_bindable_latch_is_a_failed_binding(
    realm: ThrowawayRealm, caplog: pytest.LogCaptureFixture
) -> None:
    """A v1-only server refuses the v2 INIT with a MSG_DENIED (AUTH_BADCRED, like Linux), which
    nothing authenticates: a relay can send the same. On a latch that offers
    binding data the v1 context is therefore a failed binding, reported loudly with its cause."""
    with caplog.at_level(logging.WARNING, logger="rpclatch.connect"):
        bed, pc = connect(realm, server_gss_versions=(1,))
    rec = pc.security
    assert rec.latch_outcome is LatchOutcome.LATCHED_BINDING_CONF
    assert rec.bind_outcome is BindOutcome.MISMATCH and rec.gss_version == 1 and rec.warnings
    assert rec.bind_detail is not None and "refused with AUTH_BADCRED" in rec.bind_detail
    assert rec.gss_service is Service.PRIVACY and rec.latched
    assert any("AUTH_BADCRED" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    view = bed.wire_view()
    # v2 refused, v1; that context destroyed (policy: MISMATCH) and a fresh one made the same way
    assert [
        c.gss_version for c in view.calls if c.gss_proc is not None and c.gss_proc.name == "RPCSEC_GSS_INIT"
    ] == [2, 1, 2, 1]
    assert view.data_services() == ["krb5p"] and all(c.protected for c in view.calls)


def test_mitm_binding_failure_falls_back_loudly(
    realm: ThrowawayRealm, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="rpclatch.connect"):
        bed, pc = connect(realm, mitm=True)
    rec = pc.security
    assert rec.latched and rec.bind_outcome is BindOutcome.MISMATCH and not rec.bound
    assert rec.qop is not None and "(encrypting)" in rec.qop
    assert rec.gss_service is Service.PRIVACY and rec.warnings
    assert any("SECURITY WARNING" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    view = bed.wire_view()
    assert view.bind_calls("client")
    assert "channel_prot" not in view.data_services()
    assert view.data_services("client") == ["krb5p"] == view.data_services("mitm-b")
    assert bed.relay is not None and PAYLOAD[:40] not in bytes(bed.relay.plaintext)


def test_require_binding_refuses_to_fall_back(realm: ThrowawayRealm) -> None:
    bed = build_testbed(realm, server_ike=IkeMode.ABSENT)
    pc = bed.connection(ConnectPolicy(ike_timeout=1.0, require_binding=True))
    with pytest.raises(BindingRequired):
        pc.connect()
    assert pc.link is None
    assert bed.wire_view().data_services() == []


def test_btns_peer_refused_when_btns_not_ok(realm: ThrowawayRealm) -> None:
    bed, pc = connect(realm, ConnectPolicy(ike_timeout=2.0, btns_ok=False))
    rec = pc.security
    assert rec.latch_outcome is LatchOutcome.NOT_LATCHED and "BTNS" in (rec.protection_error or "")
    assert bed.wire_view().data_services() == ["krb5p"]


@pytest.mark.parametrize("approach", [1, 2], ids=["approach1", "approach2"])
def test_latch_break_resets_then_reconnects_relatches_and_rebinds(
    realm: ThrowawayRealm, approach: int
) -> None:
    from rpclatch.ipsec.engine import Approach

    bed, pc = connect(realm, rogue=True, approach=Approach(approach))
    first, old = pc.security, link(pc)
    old_handle = old.latch.channel if old.latch else None
    flow = old.conn.flow
    rogue = bed.attackers[0]

    # the rogue claims the server's address and starts IKE for exactly the latched 5-tuple; once
    # its IKE_AUTH request (with that CHILD_SA) is on the wire the server announces its address
    # again, and the call goes out: the client vets the CHILD_SA while the call is in flight
    rogue.claim_address(SERVER_ADDR)
    sel = Selector.for_flow(
        FiveTuple(ip(SERVER_ADDR), NFS_PORT, ip(CLIENT_ADDR), flow.local_port, IpProto.TCP)
    )
    assert rogue.ipsec is not None
    rogue.ipsec.ike.initiate(ip(SERVER_ADDR), ip(CLIENT_ADDR), (sel,))
    bed.net.run_for(0.0025)  # IKE_SA_INIT answered (2 ms), IKE_AUTH sent, arrives at 3 ms
    assert bed.client_stack.latch_state(old.conn) is LatchState.ESTABLISHED
    bed.server.claim_address(SERVER_ADDR)
    with pytest.raises(ConnectionReset):
        echo(pc)  # in flight when the latch broke: fails, is not silently resent
    assert bed.client_stack.latch_state(old.conn) in (LatchState.BROKEN, LatchState.CLOSED)
    assert any(r.latch_state is LatchState.BROKEN for r in pc.history)
    # the warning names the cause, whether the LD (approach 2) or the TCB latch (approach 1) broke
    warnings = [text for _, kind, text in bed.policy_events if kind == "warning"]
    assert any("conflicting-child-sa" in w for w in warnings), warnings
    bed.server.claim_address(SERVER_ADDR)
    echo(pc)
    second, new = pc.security, link(pc)
    assert second.conn_id != first.conn_id and new.conn.flow != flow
    assert second.bound and second.gss_service is Service.CHANNEL_PROT
    assert new.latch is not None and new.latch.channel is not old_handle
    view = bed.wire_view()
    old_port, new_port = f":{flow.local_port} ->", f":{new.conn.flow.local_port} ->"
    assert len([c for c in view.bind_calls("client") if new_port in c.flow]) == 1
    assert len([c for c in view.bind_calls("client") if old_port in c.flow]) == 1
    assert all(c.protected for c in view.calls)


def test_bound_handle_is_not_accepted_on_another_connection(realm: ThrowawayRealm) -> None:
    bed, pc = connect(realm)
    assert pc.security.bound
    flavor = pc._auth  # the bound RPCSEC_GSS flavor of connection A
    assert flavor is not None
    other = run_to_completion(bed.client_world.open(NFS_PORT, protect=True, btns_ok=True, ike_timeout=2.0))
    assert other.latch is not None  # connection B is latched too, to the same server key
    reply = run_to_completion(
        other.call(flavor, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, PROC_ECHO, encode_opaque(PAYLOAD))
    )
    assert decode_opaque(reply) == PAYLOAD
    port = f":{other.conn.flow.local_port} ->"
    on_b = [c.label for c in bed.wire_view().calls if port in c.flow]
    # the server refused channel_prot on B (bound on A), so the client resent with krb5p
    assert on_b == [f"CALL proc {PROC_ECHO} [channel_prot]", f"CALL proc {PROC_ECHO} [krb5p]"]


def test_security_record_is_frozen(realm: ThrowawayRealm) -> None:
    _dw, pc = connect(realm)
    with pytest.raises(AttributeError):
        pc.security.bound = False  # type: ignore[misc]


def test_old_connection_closing_does_not_reset_the_new_one(realm: ThrowawayRealm) -> None:
    bed, pc = connect(realm)
    old = link(pc)
    pc.close()  # orderly close: the old latch lives on through TIME_WAIT, then CLOSES
    echo(pc)  # reconnects
    new = link(pc)
    assert new is not old and pc.security.bound
    bed.net.run_for(4 * bed.client.msl)
    assert bed.client_stack.latch_state(old.conn) is LatchState.CLOSED
    assert new.is_open and bed.client_stack.latch_state(new.conn) is LatchState.ESTABLISHED
    echo(pc)
    assert link(pc) is new


@pytest.mark.parametrize(
    ("setup", "outcome", "service"),
    [
        ({}, LatchOutcome.LATCHED_BINDING_CONF, "channel_prot"),
        ({"server_auth": "null"}, LatchOutcome.LATCHED_NO_BINDING, "krb5p"),
        ({"server_ike": IkeMode.ABSENT}, LatchOutcome.NOT_LATCHED, "krb5p"),
        ({"mitm": True}, LatchOutcome.LATCHED_BINDING_CONF, "krb5p"),
    ],
    ids=["bound", "null-auth", "no-ike", "mitm"],
)
def test_policy_runs_on_approach_1_latches_too(
    realm: ThrowawayRealm, setup: dict[str, object], outcome: LatchOutcome, service: str
) -> None:
    """Approach 1 of docs/design.md (latch in the TCB, packets tagged by IPsec, RFC 5660 §2.4): the same
    policy, the same outcomes, the same services on the wire."""
    from rpclatch.ipsec.engine import Approach

    bed, pc = connect(realm, approach=Approach.ULP, **setup)
    assert pc.security.latch_outcome is outcome
    assert bed.wire_view().data_services() == [service]
    if outcome is not LatchOutcome.NOT_LATCHED:
        sconn, _ = server_side(bed, link(pc))
        assert bed.client_stack.latch_state(link(pc).conn) is LatchState.ESTABLISHED
        assert bed.server_stack.latch_state(sconn) is LatchState.ESTABLISHED


def test_wait_disposition_holds_the_connection_and_drops_the_binding(realm: ThrowawayRealm) -> None:
    """RFC 5660 §5.5 (a): with "wait" the connection survives a break; when the conflicting SA goes
    away the latch is ESTABLISHED again (§2.3 T5), but channel_prot is not resumed: the binding
    was to the channel as it was (RFC 5403 §3.4), so the calls go on with krb5p."""
    from rpclatch.connect import BreakDisposition

    bed, pc = connect(realm, ConnectPolicy(ike_timeout=2.0, on_break=BreakDisposition.WAIT), rogue=True)
    first, lk = pc.security, link(pc)
    assert first.bound
    flow = lk.conn.flow
    rogue = bed.attackers[0]
    assert rogue.ipsec is not None
    rogue.claim_address(SERVER_ADDR)
    sel = Selector.for_flow(
        FiveTuple(ip(SERVER_ADDR), NFS_PORT, ip(CLIENT_ADDR), flow.local_port, IpProto.TCP)
    )
    rogue.ipsec.ike.initiate(ip(SERVER_ADDR), ip(CLIENT_ADDR), (sel,))
    bed.net.run_for(0.05)
    assert bed.client_stack.latch_state(lk.conn) is LatchState.BROKEN
    assert pc.security.latch_state is LatchState.BROKEN and not pc.security.bound
    assert lk.is_open  # held, not reset
    t_break = bed.net.now
    for sa_id in list(rogue.ipsec.ike.children):
        rogue.ipsec.ike.remove_child(sa_id)  # DELETE: the conflict goes away
    bed.server.claim_address(SERVER_ADDR)
    bed.net.run_for(0.05)
    assert bed.client_stack.latch_state(lk.conn) is LatchState.ESTABLISHED
    echo(pc)
    assert link(pc) is lk and pc.security.conn_id == first.conn_id
    assert pc.security.latch_state is LatchState.ESTABLISHED and pc.security.gss_service is Service.PRIVACY
    view = bed.wire_view()
    after = [c for c in view.calls if c.time > t_break and c.gss_proc is not None]
    assert after and all(c.service is not None and c.service.name == "PRIVACY" for c in after)
    assert all(c.protected for c in after)


def test_the_flow_is_coroutines_usable_from_asyncio(realm: ThrowawayRealm) -> None:
    import asyncio

    bed = build_testbed(realm)
    pc = bed.connection(ConnectPolicy(ike_timeout=2.0))

    async def main() -> bytes:
        await pc.aconnect()
        reply = await pc.acall(RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, PROC_ECHO, encode_opaque(PAYLOAD))
        await pc.aclose()
        return reply

    assert decode_opaque(asyncio.run(main())) == PAYLOAD
    assert pc.history[0].bound and pc.link is None


def test_run_to_completion_refuses_a_suspending_world() -> None:
    import asyncio

    from rpclatch.connect import ConnectError

    async def needs_a_loop() -> None:
        await asyncio.sleep(0)

    with pytest.raises(ConnectError, match="aconnect / acall"):
        run_to_completion(needs_a_loop())
