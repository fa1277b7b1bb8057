"""Wire formats of the simulated network: round trips, golden checks and hypothesis fuzzing.

Every decoder either decodes arbitrary bytes or raises :class:`SimWireError` (house rule)."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpclatch.netsim.errors import EspAuthError, SimWireError
from rpclatch.netsim.esp import EspHeader, EspKeys, ReplayWindow, esp_open, esp_seal
from rpclatch.netsim.ip import PROTO_ESP, PROTO_TCP, IpPacket, internet_checksum
from rpclatch.netsim.tcp import Flags, TcpSegment
from rpclatch.netsim.udp import UdpDatagram

A4 = ipaddress.IPv4Address("192.0.2.1")
B4 = ipaddress.IPv4Address("192.0.2.2")
A6 = ipaddress.IPv6Address("2001:db8::1")
B6 = ipaddress.IPv6Address("2001:db8::2")
KEYS = EspKeys(0x1234, bytes(range(32)), b"\x01\x02\x03\x04")


def test_ipv4_header_round_trip_and_checksum() -> None:
    pkt = IpPacket(A4, B4, PROTO_TCP, b"hello", ttl=17, ident=99)
    raw = pkt.encode()
    assert raw[0] == 0x45 and len(raw) == 25
    assert internet_checksum(raw[:20]) == 0
    assert IpPacket.decode(raw) == pkt


def test_ipv4_bad_checksum_rejected() -> None:
    raw = bytearray(IpPacket(A4, B4, PROTO_TCP, b"x").encode())
    raw[8] ^= 1  # TTL changes, checksum no longer matches
    with pytest.raises(SimWireError, match="checksum"):
        IpPacket.decode(bytes(raw))


def test_ipv6_round_trip() -> None:
    pkt = IpPacket(A6, B6, PROTO_ESP, b"\x00" * 40)
    raw = pkt.encode()
    assert raw[0] >> 4 == 6 and len(raw) == 80
    assert IpPacket.decode(raw) == pkt


def test_tcp_segment_round_trip_checksum_covers_pseudo_header() -> None:
    seg = TcpSegment(32800, 2049, 1, 2, Flags.ACK | Flags.PSH, 1000, b"data")
    raw = seg.encode(A4, B4)
    assert TcpSegment.decode(raw, A4, B4) == seg
    assert seg.seg_len == 4
    with pytest.raises(SimWireError, match="checksum"):
        TcpSegment.decode(raw, A4, ipaddress.IPv4Address("192.0.2.3"))


def test_udp_round_trip_v6() -> None:
    d = UdpDatagram(5500, 5500, b"ike")
    assert UdpDatagram.decode(d.encode(A6, B6), A6, B6) == d


def test_esp_round_trip_and_layout() -> None:
    payload = b"0123456789"
    raw = esp_seal(KEYS, 7, PROTO_TCP, payload)
    # SPI, seq, 8-byte IV, ciphertext of payload+pad(0)+padlen+nexthdr -> 12 bytes, ICV 16
    assert raw[:8] == bytes.fromhex("0000123400000007")
    assert len(raw) == 8 + 8 + 12 + 16
    assert EspHeader.decode(raw) == EspHeader(0x1234, 7)
    opened = esp_open(KEYS, raw)
    assert (opened.seq, opened.next_header, opened.payload) == (7, PROTO_TCP, payload)


def test_esp_tamper_and_wrong_key_fail_icv() -> None:
    raw = bytearray(esp_seal(KEYS, 1, PROTO_TCP, b"secret"))
    raw[20] ^= 0x80
    with pytest.raises(EspAuthError):
        esp_open(KEYS, bytes(raw))
    other = EspKeys(0x1234, bytes(32), b"\x01\x02\x03\x04")
    with pytest.raises(EspAuthError):
        esp_open(other, esp_seal(KEYS, 1, PROTO_TCP, b"secret"))


def test_esp_ciphertext_hides_payload() -> None:
    raw = esp_seal(KEYS, 1, PROTO_TCP, b"very secret payload")
    assert b"secret" not in raw


def test_replay_window() -> None:
    w = ReplayWindow(size=4)
    for seq in (1, 2, 3):
        assert w.check(seq)
        w.update(seq)
    assert not w.check(2)  # replay
    assert w.check(10)
    w.update(10)
    assert not w.check(6)  # below the window
    assert w.check(8)
    assert not w.check(0)


# -- fuzz: any bytes decode or raise SimWireError ---------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None)


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_ip_decode(data: bytes) -> None:
    with contextlib.suppress(SimWireError):
        IpPacket.decode(data)


@FUZZ
@given(st.binary(max_size=120), st.booleans())
def test_fuzz_tcp_decode(data: bytes, v6: bool) -> None:
    src, dst = (A6, B6) if v6 else (A4, B4)
    with contextlib.suppress(SimWireError):
        TcpSegment.decode(data, src, dst)


@FUZZ
@given(st.binary(max_size=80))
def test_fuzz_udp_decode(data: bytes) -> None:
    with contextlib.suppress(SimWireError):
        UdpDatagram.decode(data, A4, B4)


@FUZZ
@given(st.binary(max_size=120))
def test_fuzz_esp_decode(data: bytes) -> None:
    with contextlib.suppress(SimWireError):
        esp_open(KEYS, data)


@FUZZ
@given(st.binary(max_size=60), st.integers(0, 40), st.integers(0, 255))
def test_fuzz_esp_inside_valid_icv(payload: bytes, cut: int, flip: int) -> None:
    """Authenticated but malformed trailers (wrong pad) still raise only SimWireError."""
    raw = bytearray(esp_seal(KEYS, 5, PROTO_TCP, payload))
    if cut < len(raw):
        raw[cut] ^= flip
    with contextlib.suppress(SimWireError):
        esp_open(KEYS, bytes(raw))
