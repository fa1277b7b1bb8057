"""The project's non-standard IPsec channel binding and LatchChannel."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rpclatch.gss.channel import Protection
from rpclatch.ipsec import examples as ex
from rpclatch.ipsec.channel_binding import (
    CB_PREFIX,
    BindingDecodeError,
    LatchChannel,
    RpcRole,
    binding_unavailable_reason,
    channel_bindings_for,
    decode_binding_data,
    encode_binding_data,
)
from rpclatch.ipsec.engine import IPsecEngine
from rpclatch.ipsec.errors import ChannelBindingUnavailable
from rpclatch.ipsec.model import ESP_NULL_SHA256, ProtectionParams

keys = st.binary(min_size=1, max_size=300)


@given(keys, keys)
def test_roundtrip(a: bytes, b: bytes) -> None:
    assert decode_binding_data(encode_binding_data(a, b)) == (a, b)


@given(st.binary(max_size=200))
def test_decoder_total(data: bytes) -> None:
    try:
        a, b = decode_binding_data(data)
    except BindingDecodeError:
        return
    assert encode_binding_data(a, b) == data


def test_prefix_is_rfc5056_charset() -> None:
    assert all(c.isalnum() or c in ".-" for c in CB_PREFIX) and CB_PREFIX.isascii()


def _latched_pair(client_key: int = 2, server_key: int = 1, peer_seen_by_server: int | None = None):  # type: ignore[no-untyped-def]
    f_srv = ex.flow("192.0.2.1", 2049, "192.0.2.2", 40000)
    srv = IPsecEngine(ex.nfs_spd(), ex.btns_pad())
    cli = IPsecEngine(ex.nfs_spd(), ex.btns_pad())
    srv.install_sa(
        ex.narrow_sa(f_srv, ex.btns_peer(peer_seen_by_server or client_key), ex.btns_local(server_key)), 0
    )
    cli.install_sa(ex.narrow_sa(f_srv.reversed(), ex.btns_peer(server_key), ex.btns_local(client_key)), 0)
    hs = srv.connect(f_srv)
    hc = cli.connect(f_srv.reversed())
    return (
        LatchChannel.for_latch(cli.latches, hc, RpcRole.CLIENT),
        LatchChannel.for_latch(srv.latches, hs, RpcRole.SERVER),
        srv,
        hs,
    )


def test_both_ends_compute_the_same_binding() -> None:
    c, s, _, _ = _latched_pair()
    assert c.channel_bindings() == s.channel_bindings()
    assert c.channel_bindings().startswith(CB_PREFIX.encode() + b":")
    assert decode_binding_data(c.binding_data) == (ex.spki(2), ex.spki(1))
    assert c.protection == Protection.INTEGRITY | Protection.CONFIDENTIALITY and c.is_up()


def test_mitm_key_changes_binding() -> None:
    c, s, _, _ = _latched_pair(peer_seen_by_server=9)
    assert c.binding_data != s.binding_data


def test_break_fires_once_and_channel_stays_down() -> None:
    _, s, srv, hs = _latched_pair()
    fired: list[object] = []
    s.on_break(fired.append)
    srv.peer_dead(ex.btns_peer(2), 1.0)
    assert fired == [s] and not s.is_up()
    srv.latches.release_latch(hs)
    assert fired == [s]
    late: list[object] = []
    s.on_break(late.append)
    assert late == [s]


def test_release_by_owner_fires_break() -> None:
    _, s, srv, hs = _latched_pair()
    fired: list[object] = []
    s.on_break(fired.append)
    srv.latches.release_latch(hs)
    assert fired == [s] and not s.is_up()


@pytest.mark.parametrize("peer", [ex.null_peer(77), ex.psk_peer("c.example")])
def test_unavailable_for_null_and_psk(peer: object) -> None:
    from rpclatch.ipsec.latch import params_from_sa

    f = ex.flow("192.0.2.1", 2049, "192.0.2.2", 40000)
    sa = ex.narrow_sa(f, peer, ex.btns_local(1))  # type: ignore[arg-type]
    params = params_from_sa(sa, f, None)
    reason = binding_unavailable_reason(params)
    assert reason is not None and ("NULL" in reason or "pre-shared" in reason)
    with pytest.raises(ChannelBindingUnavailable):
        channel_bindings_for(params, RpcRole.CLIENT)


def test_esp_null_offers_integrity_only() -> None:
    from rpclatch.ipsec.latch import params_from_sa

    f = ex.flow("192.0.2.1", 2049, "192.0.2.2", 40000)
    sa = ex.narrow_sa(f, ex.btns_peer(2), ex.btns_local(1), params=ProtectionParams(suite=ESP_NULL_SHA256))
    ch = LatchChannel.for_params(params_from_sa(sa, f, None), RpcRole.SERVER, lambda: True)
    assert ch.protection == Protection.INTEGRITY and not ch.confidential


def test_channel_of_a_ulp_latch() -> None:
    from rpclatch.ipsec.engine import Approach
    from rpclatch.ipsec.ulp import MismatchPolicy, UlpLatch

    f = ex.flow("192.0.2.1", 2049, "192.0.2.2", 40000)
    e = IPsecEngine(ex.nfs_spd(), ex.btns_pad(), approach=Approach.ULP)
    e.latches.narrow_conflicting_sas = False
    sa = e.install_sa(ex.narrow_sa(f, ex.btns_peer(2), ex.btns_local(1)), 0.0)
    tcb = UlpLatch(e, f, on_mismatch=MismatchPolicy.BREAK)
    with pytest.raises(ChannelBindingUnavailable):
        LatchChannel.for_ulp_latch(tcb, RpcRole.SERVER)  # nothing latched yet
    tcb.inbound(e.inbound(f, sa, 0.0, initiating=True))
    ch = LatchChannel.for_ulp_latch(tcb, RpcRole.SERVER)
    assert ch.is_up() and decode_binding_data(ch.binding_data) == (ex.spki(2), ex.spki(1))
    fired: list[object] = []
    ch.on_break(fired.append)
    rogue = e.install_sa(ex.narrow_sa(f, ex.btns_peer(3), ex.btns_local(1)), 1.0)
    tcb.inbound(e.inbound(f, rogue, 1.0))
    assert fired == [ch] and not ch.is_up()
