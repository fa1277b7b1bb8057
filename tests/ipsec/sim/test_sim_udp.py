"""UDP over the simulated IPsec stack: datagrams carry the RFC 5660 §2.4 packet tag (the pToken's
source) up to the socket; cleartext on a PROTECT port is dropped."""

from __future__ import annotations

from rpclatch.ipsec.decisions import PacketTag
from rpclatch.ipsec.model import IpProto, PortRange, ProtectionPolicy, RawPublicKeyPeer, Selector
from rpclatch.ipsec.sim.lab import Lab
from rpclatch.ipsec.sim.wireview import decode_wire
from rpclatch.ipsec.spd import SpdAction, SpdEntry
from rpclatch.ipsec.ulp import PToken


def _spd() -> list[SpdEntry]:
    port = PortRange.single(5353)
    return [SpdEntry("udp", (Selector(proto=IpProto.UDP, local_ports=port),
                             Selector(proto=IpProto.UDP, remote_ports=port)),
                     SpdAction.PROTECT, ProtectionPolicy(), btns_ok=True),
            SpdEntry("rest", (Selector(),), SpdAction.BYPASS)]


def test_protected_udp_datagrams_carry_the_tag() -> None:
    lab = Lab.build(spd=_spd())
    sa, sb = lab.a.udp_bind(5353), lab.b.udp_bind(5353)
    sa.sendto(b"query", lab.b.address, 5353)      # queued until the SAs exist, then sent
    lab.world.run_for(0.5)
    assert len(sb.received) == 1
    src, sport, data, tag = sb.received[0]
    assert (src, sport, data) == (lab.a.address, 5353, b"query")
    assert isinstance(tag, PacketTag) and tag.protected
    token = PToken(tag)
    assert token.privacy_protected and isinstance(token.peer, RawPublicKeyPeer)
    assert token.peer.spki_der == lab.stack(lab.a).sike.credentials.spki
    udp = [p for p in decode_wire(lab.world.hub) if p.proto == IpProto.UDP and not p.sike]
    assert udp and all(p.protected for p in udp)
    # a forged cleartext datagram to the protected port never reaches the socket
    c = lab.attacker(ipsec=False)
    c.inject_udp(lab.a.address, 5353, lab.b.address, 5353, b"forged")
    lab.world.run_for(0.2)
    assert len(sb.received) == 1
    assert any(d.reason == "cleartext-on-protect-entry" for d in lab.stack(lab.b).drops)
