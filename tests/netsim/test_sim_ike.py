"""The simulated hosts' IKE daemon (rpclatch.netsim.ike.SimIkeDaemon): real IKEv2 (RFC 7296) on
UDP 500 between simulated hosts, the daemon modes (absent, refusing, slow), fail fast on an
unreachable peer, the initiator deleting a CHILD_SA its engine refuses, dead peer detection,
reproducible runs and the Wireshark decryption rows."""

from __future__ import annotations

from rpclatch.ipsec.ike.wire import ExchangeType, Header
from rpclatch.ipsec.model import AddressRange, AuthMethod
from rpclatch.ipsec.pad import ChildSaAuthorization, PadEntry, PublicKeyPattern
from rpclatch.netsim.ike import IkeMode, host_to_host
from rpclatch.netsim.ikev2 import IKE_PORT
from rpclatch.netsim.ip import PROTO_UDP
from rpclatch.netsim.stream import StreamEventKind, StreamState
from rpclatch.netsim.testing.lab import Lab
from rpclatch.netsim.udp import UdpDatagram


def _ike_headers(lab: Lab) -> list[tuple[str, Header]]:
    out = []
    for rec in lab.net.wire:
        pkt = rec.packet()
        if pkt is None or pkt.proto != PROTO_UDP:
            continue
        dgram = UdpDatagram.decode(pkt.payload, pkt.src, pkt.dst)
        if IKE_PORT in (dgram.src_port, dgram.dst_port):
            assert dgram.src_port == dgram.dst_port == IKE_PORT
            out.append((rec.sender, Header.decode(dgram.payload)))
    return out


def test_a_latched_connection_is_keyed_by_ikev2_on_udp_500() -> None:
    lab = Lab.build()
    client, server = lab.open()
    assert client.state is StreamState.ESTABLISHED and server is not None
    seen = [(sender, h.exchange, h.is_response) for sender, h in _ike_headers(lab)]
    assert seen == [
        ("a", ExchangeType.IKE_SA_INIT, False),
        ("b", ExchangeType.IKE_SA_INIT, True),
        ("a", ExchangeType.IKE_AUTH, False),
        ("b", ExchangeType.IKE_AUTH, True),
    ]
    # the ESP SA pair is the CHILD_SA of that IKE SA, at both ends
    ((ref, ike_a),) = lab.stack(lab.a).ike.ike_sas.items()
    ((ref_b, ike_b),) = lab.stack(lab.b).ike.ike_sas.items()
    assert ref == ref_b and ike_a.initiator and not ike_b.initiator
    (sa,) = lab.stack(lab.a).engine.sad
    assert sa.ike_sa == ref and sa.carries(client.flow) and ike_a.children == {sa.sa_id}
    keys_a = lab.stack(lab.a).ike.children[sa.sa_id]
    keys_b = lab.stack(lab.b).ike.children[next(iter(ike_b.children))]
    assert keys_a.outbound == keys_b.inbound and keys_a.inbound == keys_b.outbound


def test_refusing_daemon_answers_no_proposal_chosen_and_keeps_nothing() -> None:
    lab = Lab.build(server_ike=IkeMode.REFUSE)
    client, server = lab.open(timeout=10.0)
    assert client.kinds() == [StreamEventKind.FAILED] and server is None
    assert any("NO_PROPOSAL_CHOSEN" in text for _, text in lab.stack(lab.a).ike.events)
    (end,) = lab.stack(lab.b).ike.endpoints.values()
    assert end.dispatcher.stats.refused_inits == 1 and not end.dispatcher.sas
    assert [h.exchange for _, h in _ike_headers(lab)] == [ExchangeType.IKE_SA_INIT] * 2


def test_absent_daemon_lets_the_initiator_time_out() -> None:
    lab = Lab.build(server_ike=IkeMode.ABSENT)
    client, _server = lab.open(timeout=10.0)
    assert client.kinds() == [StreamEventKind.FAILED]
    assert [s for s, _ in _ike_headers(lab)] == ["a", "a", "a"]  # the request, two retransmissions
    assert any("timeout" in text for _, text in lab.stack(lab.a).ike.events)


def test_slow_daemon_sees_every_datagram_late_and_still_answers() -> None:
    lab = Lab.build(server_ike=IkeMode.SLOW)
    lab.stack(lab.b).ike.slow_delay = 1.0
    client, server = lab.open(timeout=10.0)
    assert client.state is StreamState.ESTABLISHED and server is not None
    first_answer = next(rec.time for rec in lab.net.wire if rec.sender == "b")
    assert first_answer >= 1.0  # IKE_SA_INIT reached B's daemon a second late
    (sa,) = lab.stack(lab.a).engine.sad
    assert sa.created_at >= 2.0  # and so did IKE_AUTH


def test_unreachable_peer_fails_the_acquire_at_once() -> None:
    lab = Lab.build(server_ike=IkeMode.ABSENT)
    lab.listen()
    client = lab.a.connect(lab.b.address, 2049)
    lab.net.run_for(0.1)
    assert not client.events  # LARVAL, IKE retransmitting
    lab.stack(lab.a).ike.unreachable(lab.b.address)
    assert client.kinds() == [StreamEventKind.FAILED]
    assert any("cancelled" in text for _, text in lab.stack(lab.a).ike.events)
    sent = len(lab.net.wire)
    lab.net.run_for(5.0)
    assert len(lab.net.wire) == sent  # no retransmission after the cancel


def test_initiator_deletes_a_child_sa_its_pad_refuses() -> None:
    """The responder's answer is authenticated but its address is not one the initiator's PAD lets
    that peer have (RFC 4301 §4.4.3.4): the CHILD_SA is deleted at once, at both ends."""
    low = AddressRange.network("192.0.2.0/25")
    pad = [PadEntry("btns-low", PublicKeyPattern(), AuthMethod.RAW_PUBLIC_KEY, ChildSaAuthorization((low,)))]
    lab = Lab.build(pad=pad)
    net = AddressRange.network("192.0.2.0/24")
    far_pad = [PadEntry("any", PublicKeyPattern(), AuthMethod.RAW_PUBLIC_KEY, ChildSaAuthorization((net,)))]
    far = lab.attacker("far", "192.0.2.200", pad=far_pad)
    done: list[tuple[object, str]] = []
    a = lab.stack(lab.a).ike
    a.initiate(
        lab.a.address,
        far.address,
        (host_to_host(lab.a.address, far.address),),
        on_done=lambda sa, why: done.append((sa, why)),
    )
    lab.net.run_for(1.0)
    assert done == [(None, "refused locally")]
    assert len(lab.stack(lab.a).engine.sad) == 0 and not a.children
    assert len(lab.stack(far).engine.sad) == 0  # the responder got the Delete
    assert any("peer deleted" in text for _, text in lab.stack(far).ike.events)
    informational = [h for s, h in _ike_headers(lab) if h.exchange == ExchangeType.INFORMATIONAL]
    assert [h.is_response for h in informational][:2] == [False, True]


def test_dpd_declares_a_blackholed_peer_dead_after_max_misses() -> None:
    lab = Lab.build()
    client, _server = lab.open()
    lab.stack(lab.a).ike.start_dpd(interval=1.0, max_misses=2)
    m = lab.attacker("m", ipsec=False)
    m.blackhole(lab.a.address, lab.b.address)
    t0 = lab.net.now
    lab.net.run_for(10.0)
    dead = [(t, text) for t, text in lab.stack(lab.a).ike.events if "is dead" in text]
    assert len(dead) == 1 and "DPD: 2 checks unanswered" in dead[0][1]
    assert dead[0][0] - t0 < 3.5  # before the check's own retransmissions would run out
    assert StreamEventKind.RESET in client.kinds()
    assert not lab.stack(lab.a).ike.ike_sas and len(lab.stack(lab.a).engine.sad) == 0


def test_liveness_retransmissions_running_out_also_mean_dead() -> None:
    lab = Lab.build()
    client, _server = lab.open()
    lab.stack(lab.a).ike.start_dpd(interval=1.0, max_misses=100)
    m = lab.attacker("m", ipsec=False)
    m.blackhole(lab.a.address, lab.b.address)
    lab.net.run_for(10.0)
    dead = [text for _, text in lab.stack(lab.a).ike.events if "is dead" in text]
    assert len(dead) == 1 and "no answer from the peer" in dead[0]
    assert StreamEventKind.RESET in client.kinds()


def test_same_seed_same_wire_bytes() -> None:
    def run(seed: int) -> list[bytes]:
        lab = Lab.build(seed=seed)
        client, _server = lab.open()
        lab.send(client, b"data")
        return [rec.frame for rec in lab.net.wire]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_decryption_rows_name_every_ike_sa_even_after_a_restart() -> None:
    lab = Lab.build()
    lab.open(local_port=40001)
    lab.open(local_port=40002)
    rows_a, rows_b = lab.stack(lab.a).ike.decryption_rows(), lab.stack(lab.b).ike.decryption_rows()
    assert len(rows_a) == 2 and sorted(rows_a) == sorted(rows_b)
    for ref in lab.stack(lab.a).ike.ike_sas:
        assert any(f"{ref.initiator_spi:016x}" in row for row in rows_a)
    lab.stack(lab.a).engine.restart_key_manager(lab.net.now, restore_latches=False)
    assert not lab.stack(lab.a).ike.ike_sas
    assert lab.stack(lab.a).ike.decryption_rows() == rows_a


def test_only_the_first_ike_sa_after_a_start_carries_initial_contact() -> None:
    """RFC 7296 §2.4: two connections opened at once make two IKE SAs; only the first says
    INITIAL_CONTACT, or B would drop the first IKE SA (same key) when the second arrives."""
    lab = Lab.build()
    lst = lab.listen()
    c1 = lab.a.connect(lab.b.address, 2049, local_port=41001)
    c2 = lab.a.connect(lab.b.address, 2049, local_port=41002)
    lab.net.run_for(1.0)
    assert c1.state is StreamState.ESTABLISHED and c2.state is StreamState.ESTABLISHED
    contacts = [text for _, text in lab.stack(lab.b).ike.events if "INITIAL_CONTACT" in text]
    assert len(contacts) == 1 and len(lab.stack(lab.b).ike.ike_sas) == 2
    for conn, server in zip((c1, c2), lst.accepted, strict=True):
        lab.send(conn, b"x")
        assert bytes(server.received) == b"x"
