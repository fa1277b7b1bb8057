"""UDP over the simulated IPsec stack: datagrams carry the RFC 5660 §2.4 packet tag (the pToken's
source) up to the socket; cleartext on a PROTECT port is dropped."""

from __future__ import annotations

from rpclatch.ipsec.decisions import PacketTag
from rpclatch.ipsec.model import IpProto, PortRange, ProtectionPolicy, RawPublicKeyPeer, Selector
from rpclatch.ipsec.spd import SpdAction, SpdEntry
from rpclatch.ipsec.ulp import PToken
from rpclatch.netsim.testing.lab import Lab
from rpclatch.netsim.testing.wireview import decode_wire


def _spd() -> list[SpdEntry]:
    port = PortRange.single(5353)
    return [
        SpdEntry(
            "udp",
            (Selector(proto=IpProto.UDP, local_ports=port), Selector(proto=IpProto.UDP, remote_ports=port)),
            SpdAction.PROTECT,
            ProtectionPolicy(),
            btns_ok=True,
        ),
        SpdEntry("rest", (Selector(),), SpdAction.BYPASS),
    ]


def test_protected_udp_datagrams_carry_the_tag() -> None:
    lab = Lab.build(spd=_spd())
    sa, sb = lab.a.udp_bind(5353), lab.b.udp_bind(5353)
    sa.sendto(b"query", lab.b.address, 5353)  # queued until the SAs exist, then sent
    lab.net.run_for(0.5)
    assert len(sb.received) == 1
    src, sport, data, tag = sb.received[0]
    assert (src, sport, data) == (lab.a.address, 5353, b"query")
    assert isinstance(tag, PacketTag) and tag.protected
    token = PToken(tag)
    assert token.privacy_protected and isinstance(token.peer, RawPublicKeyPeer)
    assert token.peer.spki_der == lab.stack(lab.a).ike.credentials.spki
    udp = [p for p in decode_wire(lab.net.hub) if p.proto == IpProto.UDP and not p.ike]
    assert udp and all(p.protected for p in udp)
    # a forged cleartext datagram to the protected port never reaches the socket
    c = lab.attacker(ipsec=False)
    c.inject_udp(lab.a.address, 5353, lab.b.address, 5353, b"forged")
    lab.net.run_for(0.2)
    assert len(sb.received) == 1
    assert any(d.reason == "cleartext-on-protect-entry" for d in lab.stack(lab.b).drops)


def test_approach2_connected_udp_socket_is_latched() -> None:
    """Approach 2 latches connected UDP (RFC 5660 §5.1 connect(); docs/design.md): the 5-tuple's
    latch becomes ESTABLISHED with the server's key when the first datagram's SAs exist, only
    the connected peer's datagrams are accepted, and a conflicting SA from an address thief
    breaks the latch: no datagram of the flow leaves in the clear or to the thief."""
    from rpclatch.ipsec.engine import Approach
    from rpclatch.ipsec.latch import LatchState
    from rpclatch.netsim.stack import ConnLatch

    lab = Lab.build(approach=Approach.POLICY, spd=_spd())
    sb = lab.b.udp_bind(5353)
    sa = lab.a.udp_bind(5353)
    sa.connect(lab.b.address, 5353)
    assert sa.flow is not None
    flow = sa.flow
    st = lab.stack(lab.a)
    assert st.udp_latch_state(sa) in (LatchState.LARVAL, None)
    sa.send(b"query")
    lab.net.run_for(0.5)
    assert [d for _s, _p, d, _t in sb.received] == [b"query"]
    assert st.udp_latch_state(sa) is LatchState.ESTABLISHED
    latch = st.engine.latches.latch_for(flow)
    assert latch is not None and latch.state is LatchState.ESTABLISHED
    info = st.engine.latches.inquire_latch(latch.handle)
    assert info.params is not None and isinstance(info.params.peer, RawPublicKeyPeer)
    assert info.params.peer.spki_der == lab.stack(lab.b).ike.credentials.spki
    # the reply comes back under the latch; a datagram from another port is not for this socket
    sb.sendto(b"answer", lab.a.address, 5353)
    lab.net.run_for(0.5)
    assert [d for _s, _p, d, _t in sa.received] == [b"answer"] and sa.received[0][3].protected
    other = lab.b.udp_bind(5354)
    other.sendto(b"stray", lab.a.address, 5353)
    lab.net.run_for(0.5)
    assert sa.not_from_peer == 1 and len(sa.received) == 1
    # an address thief keys the flow: the latch breaks, nothing more of the flow is sent
    c = lab.attacker("c")
    c.claim_address(lab.b.address)
    lab.stack(c).ike.initiate(lab.b.address, lab.a.address, (Selector.for_flow(flow.reversed()),))
    lab.net.run_for(0.5)
    cl = sa.latch_info
    assert isinstance(cl, ConnLatch) and cl.alerts[-1].new_state is LatchState.BROKEN
    assert st.udp_latch_state(sa) is LatchState.BROKEN
    t0 = lab.net.now
    sa.send(b"after the break")
    lab.net.run_for(0.5)
    from_a = [p for p in decode_wire(lab.net.hub) if p.sender == "a" and not p.ike and p.proto != IpProto.TCP]
    assert from_a and [p for p in from_a if p.time >= t0] == []
    assert any(d.flow == flow for d in st.drops)  # dropped by the BROKEN latch
    udp = [p for p in decode_wire(lab.net.hub) if p.proto == IpProto.UDP and not p.ike and p.sender == "a"]
    assert udp and all(p.protected for p in udp)
    sa.close()
    lab.net.run_for(120.0)
    assert st.engine.latches.latch_for(flow) is None


def test_approach1_connected_udp_socket_is_not_latched() -> None:
    from rpclatch.ipsec.engine import Approach
    from rpclatch.netsim.stack import ConnLatch

    lab = Lab.build(approach=Approach.ULP, spd=_spd())
    sb = lab.b.udp_bind(5353)
    sa = lab.a.udp_bind(5353)
    sa.connect(lab.b.address, 5353)
    sa.send(b"query")
    lab.net.run_for(0.5)
    assert [d for _s, _p, d, _t in sb.received] == [b"query"]  # protected by the SPD, not latched
    assert sb.received[0][3].protected
    cl = sa.latch_info
    assert isinstance(cl, ConnLatch) and "pTokens" in (cl.not_latched_reason or "")
    assert lab.stack(lab.a).udp_latch_state(sa) is None
