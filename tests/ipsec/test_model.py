"""Flow keys and selectors (RFC 4301 §4.4.1.1), with property tests for matching and narrowing."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rpclatch.channel import Protection
from rpclatch.ipsec.model import (
    AES_GCM_256,
    AH_SHA256,
    ESP_NULL_SHA256,
    AddressRange,
    CipherSuite,
    FiveTuple,
    PortRange,
    ProtectionParams,
    SecurityProtocol,
    Selector,
    ThreeTuple,
)

addrs = st.integers(0xC0000200, 0xC00002FF).map(ipaddress.IPv4Address)  # 192.0.2.0/24
ports = st.integers(0, 65535)
protos = st.sampled_from([6, 17, 132])
flows = st.builds(FiveTuple, addrs, ports, addrs, ports, protos)


@st.composite
def port_ranges(draw: st.DrawFn) -> PortRange:
    a, b = sorted((draw(ports), draw(ports)))
    return PortRange(a, b)


@st.composite
def addr_ranges(draw: st.DrawFn) -> AddressRange | None:
    if draw(st.booleans()):
        return None
    a, b = sorted((draw(addrs), draw(addrs)), key=int)
    return AddressRange(a, b)


selectors = st.builds(
    Selector, addr_ranges(), addr_ranges(), st.one_of(st.none(), protos), port_ranges(), port_ranges()
)


def test_five_tuple_hash_and_equality() -> None:
    a = FiveTuple.of("192.0.2.1", 2049, "192.0.2.2", 900, 6)
    b = FiveTuple.of("192.0.2.1", 2049, "192.0.2.2", 900, 6)
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    assert a != a.reversed() and a.reversed().reversed() == a
    assert a.listener_key == ThreeTuple.of("192.0.2.1", 2049, 6)
    assert str(FiveTuple.of("2001:db8::1", 1, "2001:db8::2", 2, 6)).startswith("[2001:db8::1]:1")


def test_five_tuple_validation() -> None:
    with pytest.raises(ValueError):
        FiveTuple.of("192.0.2.1", 1, "2001:db8::1", 2, 6)
    with pytest.raises(ValueError):
        FiveTuple.of("192.0.2.1", 70000, "192.0.2.2", 2, 6)


def test_from_packet_orients_to_local() -> None:
    src, dst = ipaddress.ip_address("192.0.2.2"), ipaddress.ip_address("192.0.2.1")
    inbound = FiveTuple.from_packet(src, 900, dst, 2049, 6, inbound=True)
    outbound = FiveTuple.from_packet(dst, 2049, src, 900, 6, inbound=False)
    assert inbound == outbound == FiveTuple.of("192.0.2.1", 2049, "192.0.2.2", 900, 6)


@given(flows)
def test_for_flow_matches_exactly_its_flow(f: FiveTuple) -> None:
    sel = Selector.for_flow(f)
    assert sel.matches(f) and sel.is_single_flow
    other = FiveTuple(f.local_addr, f.local_port, f.remote_addr, (f.remote_port + 1) % 65536, f.proto)
    assert not sel.matches(other)


@given(selectors, flows)
def test_selector_match_is_conjunction_of_fields(sel: Selector, f: FiveTuple) -> None:
    expected = (
        (sel.proto is None or sel.proto == f.proto)
        and sel.local_ports.contains(f.local_port)
        and sel.remote_ports.contains(f.remote_port)
        and (sel.local is None or sel.local.contains(f.local_addr))
        and (sel.remote is None or sel.remote.contains(f.remote_addr))
    )
    assert sel.matches(f) == expected


@given(selectors, flows, flows)
def test_exclude_removes_exactly_the_flow(sel: Selector, f: FiveTuple, probe: FiveTuple) -> None:
    pieces = sel.exclude(f)
    assert not any(p.matches(f) for p in pieces)
    # narrowing never widens: anything a piece matches, the original matched
    if any(p.matches(probe) for p in pieces):
        assert sel.matches(probe)
    # and it keeps everything else when it succeeds
    if probe != f and sel.matches(probe) and probe.proto == f.proto:
        assert any(p.matches(probe) for p in pieces)


def test_exclude_single_flow_cannot_narrow() -> None:
    f = FiveTuple.of("192.0.2.1", 2049, "192.0.2.2", 900, 6)
    assert Selector.for_flow(f).exclude(f) == ()


def test_address_and_port_ranges() -> None:
    r = AddressRange.network("192.0.2.0/30")
    assert r.contains(ipaddress.ip_address("192.0.2.3")) and not r.contains(ipaddress.ip_address("192.0.2.4"))
    assert r.contains_range(AddressRange.single("192.0.2.1"))
    assert not r.overlaps(AddressRange.network("2001:db8::/64"))
    assert r.without(ipaddress.ip_address("192.0.2.0")) == (
        AddressRange.network("192.0.2.1/32").__class__(
            ipaddress.IPv4Address("192.0.2.1"), ipaddress.IPv4Address("192.0.2.3")
        ),
    )
    with pytest.raises(ValueError):
        AddressRange(ipaddress.IPv4Address("192.0.2.9"), ipaddress.IPv4Address("192.0.2.1"))
    with pytest.raises(ValueError):
        PortRange(5, 4)
    assert PortRange().is_any and PortRange.single(7).without(7) == ()


def test_protection_types() -> None:
    assert AES_GCM_256.protection == Protection.INTEGRITY | Protection.CONFIDENTIALITY
    assert ESP_NULL_SHA256.protection == Protection.INTEGRITY
    assert AH_SHA256.protection == Protection.INTEGRITY
    with pytest.raises(ValueError):
        CipherSuite("aes-cbc", 128)  # not AEAD, no integrity
    with pytest.raises(ValueError):
        ProtectionParams(SecurityProtocol.AH, suite=AES_GCM_256)  # AH cannot encrypt
