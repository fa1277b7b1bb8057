"""rpclatch.ipsec.ike.wire: encode/decode of every payload, bounds, critical bit, fuzzing."""

from __future__ import annotations

import contextlib
import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpclatch.ipsec.ike import wire as w
from rpclatch.ipsec.ike.errors import (
    IkeDecodeError,
    InvalidMajorVersion,
    NotifyType,
    UnsupportedCriticalPayload,
)

V4 = ipaddress.IPv4Address


def _proposal() -> w.Proposal:
    return w.Proposal(
        1,
        w.ProtocolId.IKE,
        b"",
        (
            w.Transform.with_key_length(w.TransformType.ENCR, w.EncrId.ENCR_AES_GCM_16, 256),
            w.Transform(w.TransformType.PRF, w.PrfId.PRF_HMAC_SHA2_256),
            w.Transform(w.TransformType.DH, w.DhGroup.CURVE25519),
        ),
    )


ALL_PAYLOADS: tuple[w.Payload, ...] = (
    w.SaPayload((_proposal(), w.Proposal(2, w.ProtocolId.ESP, b"\x01\x02\x03\x04", ()))),
    w.KePayload(31, bytes(32)),
    w.IdPayload(13, b""),
    w.IdPayload(2, b"host.example", responder=True),
    w.CertPayload(15, b"\x30\x00"),
    w.CertReqPayload(15, b""),
    w.AuthPayload(14, b"\x07abcdefg"),
    w.NoncePayload(bytes(range(32))),
    w.NotifyPayload(NotifyType.USE_TRANSPORT_MODE),
    w.NotifyPayload(NotifyType.REKEY_SA, b"", 3, b"\0\0\0\1"),
    w.DeletePayload(w.ProtocolId.IKE),
    w.DeletePayload(w.ProtocolId.ESP, (b"\1\2\3\4", b"\5\6\7\x08"), 4),
    w.VendorIdPayload(b"rpclatch"),
    w.TsPayload((w.TrafficSelector(6, 0, 65535, V4("192.0.2.1"), V4("192.0.2.1")),)),
    w.TsPayload(
        (
            w.TrafficSelector(
                0, 2049, 2049, ipaddress.IPv6Address("2001:db8::"), ipaddress.IPv6Address("2001:db8::ff")
            ),
        ),
        responder=True,
    ),
    w.UnknownPayload(200, b"opaque"),
)


def _header(nxt: int = 0) -> w.Header:
    return w.Header(0x1122334455667788, 0, nxt, w.ExchangeType.IKE_SA_INIT, w.Flags.INITIATOR, 0)


def test_every_payload_roundtrips_in_one_message() -> None:
    data = w.encode_message(_header(), ALL_PAYLOADS)
    msg = w.decode_message(data)
    assert msg.payloads == ALL_PAYLOADS
    assert msg.header.length == len(data)
    assert msg.header.next_payload == w.PayloadType.SA
    assert w.encode_message(msg.header, msg.payloads) == data


def test_header_fields() -> None:
    h = w.Header(1, 2, 0, w.ExchangeType.INFORMATIONAL, w.Flags.RESPONSE | w.Flags.INITIATOR, 7)
    m = w.decode_message(w.encode_message(h, ()))
    assert (m.header.spi_i, m.header.spi_r, m.header.message_id) == (1, 2, 7)
    assert m.header.is_response and m.header.from_initiator
    assert m.header.version == 0x20


def test_major_version_other_than_2_is_invalid_major_version() -> None:
    data = bytearray(w.encode_message(_header(), ()))
    data[17] = 0x30
    with pytest.raises(InvalidMajorVersion) as e:
        w.decode_message(bytes(data))
    assert e.value.notify is NotifyType.INVALID_MAJOR_VERSION


def test_length_field_must_match_datagram() -> None:
    data = w.encode_message(_header(), (w.NoncePayload(bytes(16)),))
    with pytest.raises(IkeDecodeError):
        w.decode_message(data + b"\0")
    with pytest.raises(IkeDecodeError):
        w.decode_message(data[:-1])


def test_unknown_critical_payload_rejects_the_message_with_its_type() -> None:
    data = w.encode_message(_header(), (w.UnknownPayload(201, b"x", critical=True),))
    with pytest.raises(UnsupportedCriticalPayload) as e:
        w.decode_message(data)
    assert e.value.payload_type == 201
    assert e.value.notify is NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD


def test_unknown_non_critical_payload_is_kept_and_skipped() -> None:
    payloads = (w.UnknownPayload(201, b"x"), w.NoncePayload(bytes(16)))
    assert w.decode_message(w.encode_message(_header(), payloads)).payloads == payloads


def test_critical_bit_of_a_known_payload_is_ignored() -> None:
    data = bytearray(w.encode_message(_header(), (w.NoncePayload(bytes(16)),)))
    data[w.HEADER_LEN + 1] = 0x80
    assert w.decode_message(bytes(data)).payloads == (w.NoncePayload(bytes(16)),)


def test_nonce_bounds() -> None:
    for n in (15, 257):
        with pytest.raises(IkeDecodeError):
            w.decode_message(w.encode_message(_header(), (w.NoncePayload(bytes(n)),)))


def test_sk_must_be_last() -> None:
    payloads = (w.EncryptedPayload(w.PayloadType.NONCE, b"x" * 40),)
    data = w.encode_message(_header(), payloads)
    assert w.decode_message(data).payloads == payloads
    # append a payload after SK: the header chain still says SK first, so SK no longer ends the data
    bad = bytearray(data + w.encode_payloads([w.NoncePayload(bytes(16))])[1])
    struct.pack_into(">I", bad, 24, len(bad))
    with pytest.raises(IkeDecodeError):
        w.decode_message(bytes(bad))


def test_payload_count_is_bounded() -> None:
    many = tuple(w.VendorIdPayload(b"") for _ in range(w.MAX_PAYLOADS + 1))
    with pytest.raises(IkeDecodeError):
        w.decode_message(w.encode_message(_header(), many))
    w.decode_message(w.encode_message(_header(), many[:-1]))


def test_message_size_is_bounded() -> None:
    with pytest.raises(ValueError):
        w.encode_message(_header(), (w.VendorIdPayload(bytes(w.MAX_MESSAGE_SIZE)),))
    with pytest.raises(IkeDecodeError):
        w.decode_message(bytes(w.MAX_MESSAGE_SIZE + 1))


def test_proposal_transform_count_mismatch_is_invalid_syntax() -> None:
    body = bytearray(w.encode_payload_body(w.SaPayload((_proposal(),))))
    body[7] = 2  # announces 2 transforms, carries 3
    msg = _header(w.PayloadType.SA).encode()[:-4]
    raw = msg + struct.pack(">I", 28 + 4 + len(body)) + struct.pack(">BBH", 0, 0, 4 + len(body)) + bytes(body)
    with pytest.raises(IkeDecodeError) as e:
        w.decode_message(raw)
    assert e.value.notify is NotifyType.INVALID_SYNTAX


def test_key_length_attribute() -> None:
    t = w.Transform.with_key_length(w.TransformType.ENCR, w.EncrId.ENCR_AES_GCM_16, 128)
    assert t.key_length == 128
    assert w.Transform(w.TransformType.PRF, 5).key_length is None


def test_id_payload_body_is_rest_of_id_payload() -> None:
    assert w.IdPayload(13, b"").body() == b"\x0d\0\0\0"
    assert w.IdPayload(13, b"").ike_id() is not None
    assert w.IdPayload(99, b"").ike_id() is None


def test_delete_shapes_are_checked() -> None:
    # IKE delete with an SPI, ESP delete with a 2-octet SPI
    for body in (struct.pack(">BBH", 1, 4, 1) + b"abcd", struct.pack(">BBH", 3, 2, 1) + b"ab"):
        raw = _header(w.PayloadType.DELETE).encode()[:-4] + struct.pack(">I", 32 + len(body))
        with pytest.raises(IkeDecodeError):
            w.decode_message(raw + struct.pack(">BBH", 0, 0, 4 + len(body)) + body)


# -- fuzzing ----------------------------------------------------------------------------------

_addr4 = st.builds(V4, st.integers(0, 2**32 - 1))
_ts = st.builds(
    w.TrafficSelector, st.integers(0, 255), st.integers(0, 65535), st.integers(0, 65535), _addr4, _addr4
)
_attr = st.one_of(
    st.builds(w.Attribute, st.integers(0, 0x7FFF), st.binary(min_size=2, max_size=2), st.just(True)),
    st.builds(w.Attribute, st.integers(0, 0x7FFF), st.binary(max_size=8), st.just(False)),
)
_transform = st.builds(
    w.Transform, st.integers(0, 255), st.integers(0, 65535), st.lists(_attr, max_size=3).map(tuple)
)
_proposal_st = st.builds(
    w.Proposal,
    st.integers(0, 255),
    st.integers(0, 255),
    st.binary(max_size=8),
    st.lists(_transform, max_size=4).map(tuple),
)
_payload = st.one_of(
    st.builds(w.SaPayload, st.lists(_proposal_st, min_size=1, max_size=3).map(tuple)),
    st.builds(w.KePayload, st.integers(0, 65535), st.binary(max_size=64)),
    st.builds(w.IdPayload, st.integers(0, 255), st.binary(max_size=32), st.booleans()),
    st.builds(w.CertPayload, st.integers(0, 255), st.binary(max_size=32)),
    st.builds(w.CertReqPayload, st.integers(0, 255), st.binary(max_size=32)),
    st.builds(w.AuthPayload, st.integers(0, 255), st.binary(max_size=32)),
    st.builds(w.NoncePayload, st.binary(min_size=16, max_size=64)),
    st.builds(
        w.NotifyPayload,
        st.integers(0, 65535),
        st.binary(max_size=16),
        st.integers(0, 255),
        st.binary(max_size=8),
    ),
    st.builds(
        w.DeletePayload,
        st.just(3),
        st.lists(st.binary(min_size=4, max_size=4), max_size=3).map(tuple),
        st.just(4),
    ),
    st.builds(w.DeletePayload, st.just(1), st.just(()), st.just(0)),
    st.builds(w.VendorIdPayload, st.binary(max_size=16)),
    st.builds(w.TsPayload, st.lists(_ts, min_size=1, max_size=3).map(tuple), st.booleans()),
    st.builds(w.UnknownPayload, st.integers(49, 255), st.binary(max_size=16)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_payload, max_size=8))
def test_fuzz_roundtrip(payloads: list[w.Payload]) -> None:
    data = w.encode_message(_header(), payloads)
    assert w.decode_message(data).payloads == tuple(payloads)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_raise_only_decode_errors(data: bytes) -> None:
    with contextlib.suppress(IkeDecodeError):
        w.decode_message(data)


@settings(max_examples=500, deadline=None)
@given(st.lists(_payload, min_size=1, max_size=6), st.data())
def test_fuzz_mutated_messages_raise_only_decode_errors(
    payloads: list[w.Payload], data: st.DataObject
) -> None:
    raw = bytearray(w.encode_message(_header(), payloads))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    for candidate in (bytes(raw), bytes(raw[:cut])):
        with contextlib.suppress(IkeDecodeError):
            w.decode_message(candidate)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=300))
def test_fuzz_payload_chains_raise_only_decode_errors(first: int, data: bytes) -> None:
    with contextlib.suppress(IkeDecodeError):
        w.decode_payloads(first, data)


def test_large_and_repeated_sa_payloads_decode_alike() -> None:
    """SA bodies up to 1 KiB go through a bounded cache, larger ones do not: same results."""
    small = w.SaPayload((_proposal(),))
    large = w.SaPayload(tuple(w.Proposal(n, 1, b"", _proposal().transforms) for n in range(1, 41)))
    assert len(w.encode_payload_body(large)) > 1024
    for payload in (small, small, large, large):
        assert w.decode_message(w.encode_message(_header(), (payload,))).payloads == (payload,)
