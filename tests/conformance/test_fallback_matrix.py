"""The end-to-end fallback matrix (the policy table of docs/design.md; RFC 5056 §2.1), on the simulated
network with a real KDC, asserting the RPCSEC_GSS service actually on the wire (ESP decrypted with
the exported keys) for each cell:

    {IPsec ok, CB ok}   -> channel_prot                      FB-01
    {IPsec ok, NULL}    -> krb5i / krb5p over the latch      FB-02
    {IKE blocked}       -> BYPASS clone + krb5i / krb5p      FB-03
    {BTNS MITM}         -> BIND_CHANNEL fails -> krb5i/p     FB-04
    nothing needing protection before the binding is done    FB-05
"""

from __future__ import annotations

import pytest

from rpclatch.connect import BindOutcome, ConnectPolicy, FallbackService, LatchOutcome, ProtectedConnection
from rpclatch.connect.sim import SimLink
from rpclatch.demo.testbed import DemoTestbed, build_testbed
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.ipsec.latch import LatchState
from rpclatch.ipsec.spd import SpdAction
from rpclatch.netsim.ikev2 import IKE_PORT
from rpclatch.netsim.ip import PROTO_UDP, IpPacket
from rpclatch.rpc.testprog import (
    PROC_ECHO,
    RPCLATCH_TEST_PROG,
    RPCLATCH_TEST_VERS,
    decode_opaque,
    encode_opaque,
)

SECRET = b"fallback-matrix-secret:" * 24


def run(bed: DemoTestbed, fallback: FallbackService) -> ProtectedConnection:
    pc = bed.connection(ConnectPolicy(ike_timeout=2.0, fallback=fallback))
    pc.connect()
    for _ in range(3):
        reply = pc.call(RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, PROC_ECHO, encode_opaque(SECRET))
        assert decode_opaque(reply) == SECRET
    return pc


def latch_states(bed: DemoTestbed, pc: ProtectedConnection) -> tuple[LatchState | None, LatchState | None]:
    assert isinstance(pc.link, SimLink)
    conn = pc.link.conn
    server = next(c for c, _ in bed.endpoint.server.connections if c.flow.remote_port == conn.flow.local_port)
    return bed.client_stack.latch_state(conn), bed.server_stack.latch_state(server)


def is_ike(p: IpPacket) -> bool:
    return p.proto == PROTO_UDP and len(p.payload) >= 4 and int.from_bytes(p.payload[2:4], "big") == IKE_PORT


@pytest.mark.conformance(id="FB-01", rfc="RFC 5403 §3.3, §3.4; RFC 5660 §2")
@pytest.mark.parametrize("fallback", list(FallbackService))
def test_fb01_ipsec_and_binding_give_channel_prot(realm: ThrowawayRealm, fallback: FallbackService) -> None:
    bed = build_testbed(realm, seed=11)
    pc = run(bed, fallback)
    assert latch_states(bed, pc) == (LatchState.ESTABLISHED, LatchState.ESTABLISHED)
    view = bed.wire_view()
    assert view.data_services() == ["channel_prot"]
    assert all(c.protected for c in view.calls)
    assert pc.security.bound


@pytest.mark.conformance(id="FB-02", rfc="RFC 7619 §2; RFC 5660 §2; RFC 5403 §2")
@pytest.mark.parametrize("fallback", list(FallbackService))
def test_fb02_null_auth_latch_gives_gss_protection_over_ipsec(
    realm: ThrowawayRealm, fallback: FallbackService
) -> None:
    bed = build_testbed(realm, seed=12, server_auth="null")
    pc = run(bed, fallback)
    assert latch_states(bed, pc) == (LatchState.ESTABLISHED, LatchState.ESTABLISHED)
    assert pc.security.latch_outcome is LatchOutcome.LATCHED_NO_BINDING
    view = bed.wire_view()
    assert view.bind_calls() == []
    assert view.data_services() == [fallback.value]
    assert all(c.protected for c in view.calls)


@pytest.mark.conformance(id="FB-03", rfc="RFC 5660 §3.1")
@pytest.mark.parametrize("fallback", list(FallbackService))
def test_fb03_ike_blocked_gives_bypass_and_gss_protection(
    realm: ThrowawayRealm, fallback: FallbackService
) -> None:
    bed = build_testbed(realm, seed=13, rogue=True)
    bed.attackers[0].drop("block-ike", is_ike, "IKE blocked")  # type: ignore[attr-defined]
    pc = run(bed, fallback)
    assert latch_states(bed, pc) == (None, None)
    assert isinstance(pc.link, SimLink)
    clone = bed.client_stack.engine.spd.overlay_entry(pc.link.conn.flow)
    assert clone is not None and clone.action is SpdAction.BYPASS
    view = bed.wire_view()
    assert any(fv.record.dropped_by and "IKE blocked" in fv.record.dropped_by for fv in view.frames)
    assert view.data_services() == [fallback.value]
    assert view.bind_calls() == [] and not any(c.protected for c in view.calls)
    if fallback is FallbackService.PRIVACY:
        assert not any(SECRET[:40] in r.frame for r in bed.wire())


@pytest.mark.conformance(id="FB-04", rfc="RFC 5403 §2, §9; RFC 5387 §5.3; attack A9")
@pytest.mark.parametrize("fallback", list(FallbackService))
def test_fb04_btns_mitm_fails_binding_and_falls_back(
    realm: ThrowawayRealm, fallback: FallbackService
) -> None:
    bed = build_testbed(realm, seed=14, mitm=True)
    pc = run(bed, fallback)
    # both ends latched, to the attacker
    assert latch_states(bed, pc) == (LatchState.ESTABLISHED, LatchState.ESTABLISHED)
    assert pc.security.bind_outcome is BindOutcome.MISMATCH
    view = bed.wire_view()
    assert view.bind_calls("client")
    assert "channel_prot" not in view.data_services()
    assert view.data_services("client") == [fallback.value] == view.data_services("mitm-b")
    assert bed.relay is not None
    stolen = bytes(bed.relay.plaintext)
    assert len(stolen) > len(SECRET)
    assert (SECRET[:40] in stolen) is (fallback is FallbackService.INTEGRITY)  # krb5i is not secret


@pytest.mark.conformance(id="FB-05", rfc="RFC 5056 §2.1; RFC 5403 §3.4")
def test_fb05_no_data_before_the_binding_completes(realm: ThrowawayRealm) -> None:
    bed = build_testbed(realm, seed=15)
    run(bed, FallbackService.PRIVACY)
    calls = bed.wire_view().calls
    kinds = [c.gss_proc.name if c.gss_proc is not None else "other" for c in calls]
    first_data = kinds.index("RPCSEC_GSS_DATA")
    assert "RPCSEC_GSS_BIND_CHANNEL" in kinds[:first_data]
    assert all(
        c.service is not None and c.service.name == "CHANNEL_PROT"
        for c in calls
        if c.gss_proc is not None and c.gss_proc.name == "RPCSEC_GSS_DATA"
    )
