"""Wire structures of RFC 2203 §5 / RFC 5403 §3: round trips, exact bytes, and fuzzed decoders."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rpclatch.gss.wire import (
    SHA256,
    BindChanMicInArgs,
    BindChanMicInRes,
    BindChanRes,
    BindChanStatus,
    BindChanVerfArgs,
    BindChanVerfRes,
    GssCred,
    GssProc,
    InitArg,
    InitRes,
    IntegData,
    PrivData,
    Service,
    UnsupportedVersion,
    normalize_oid,
)
from rpclatch.xdr import XdrError

DECODERS: list[Callable[[bytes], object]] = [
    GssCred.decode,
    InitArg.decode,
    InitRes.decode,
    IntegData.decode,
    PrivData.decode,
    BindChanMicInArgs.decode,
    BindChanVerfArgs.decode,
    BindChanMicInRes.decode,
    BindChanVerfRes.decode,
]


def test_enum_values_are_the_rfc_ones() -> None:
    assert [p.value for p in GssProc] == [0, 1, 2, 3, 4]
    assert GssProc.RPCSEC_GSS_BIND_CHANNEL == 4
    assert (Service.NONE, Service.INTEGRITY, Service.PRIVACY, Service.CHANNEL_PROT) == (1, 2, 3, 4)


def test_service_names_are_one_table() -> None:
    """Service is the one mapping of rpc_gss_service_t numbers to names: krb5 / krb5i / krb5p as
    NFS names the Kerberos V5 flavors (RFC 7530 §3.2.1), channel_prot (RFC 5403 §3.2)."""
    assert [(int(s), s.sec_name, s.rfc_name) for s in Service] == [
        (1, "krb5", "rpc_gss_svc_none"),
        (2, "krb5i", "rpc_gss_svc_integrity"),
        (3, "krb5p", "rpc_gss_svc_privacy"),
        (4, "channel_prot", "rpc_gss_svc_channel_prot"),
    ]
    for service in Service:
        assert Service.from_sec_name(service.sec_name) is service
        assert service.description
    for name in ("sys", "NONE", "krb5x", "", "1"):
        with pytest.raises(ValueError):
            Service.from_sec_name(name)


def test_cred_exact_bytes() -> None:
    cred = GssCred(2, GssProc.RPCSEC_GSS_DATA, 7, Service.INTEGRITY, b"abcde")
    assert cred.encode().hex() == ("00000002000000000000000700000002000000056162636465000000")
    assert GssCred.decode(cred.encode()) == cred


def test_cred_rejects_trailing_bytes_and_unknown_version() -> None:
    body = GssCred(1, GssProc.RPCSEC_GSS_DATA, 1, Service.NONE, b"h").encode()
    with pytest.raises(XdrError):
        GssCred.decode(body + b"\0\0\0\0")
    with pytest.raises(UnsupportedVersion):
        GssCred.decode(b"\0\0\0\x03" + body[4:])
    with pytest.raises(XdrError):  # service 0 is reserved
        GssCred.decode(body[:12] + b"\0\0\0\0" + body[16:])


def test_bind_channel_verifier_layout_rfc5403_example() -> None:
    """RFC 5403 §3.3 layout: prefix tls-unique, SHA-256 OID, 28-byte MIC -> 64 bytes."""
    mic = bytes(range(28))
    body = BindChanVerfArgs(b"tls-unique", SHA256.oid, mic).encode()
    assert body.hex() == (
        "0000000a746c732d756e697175650000000000096086480165030402010000000000001c" + mic.hex()
    )
    assert len(body) == 64
    assert BindChanVerfArgs.decode(body).chan_mic == mic


def test_bind_chan_results_round_trip() -> None:
    for res in (
        BindChanRes(BindChanStatus.RGSS2_BIND_CHAN_OK),
        BindChanRes(BindChanStatus.RGSS2_BIND_CHAN_PREF_NOTSUPP, (b"a", b"bc")),
        BindChanRes(BindChanStatus.RGSS2_BIND_CHAN_HASH_NOTSUPP, (), (SHA256.oid,)),
    ):
        assert BindChanVerfRes.decode(BindChanVerfRes(res, b"m" * 28).encode()).res == res
        assert BindChanMicInRes.decode(BindChanMicInRes(5, b"h" * 32, res).encode()).res == res
    with pytest.raises(XdrError):  # RFC 5403 §3.3: rbcr_oid_list MUST have one or more elements
        BindChanVerfRes(BindChanRes(BindChanStatus.RGSS2_BIND_CHAN_HASH_NOTSUPP), b"").encode()
    with pytest.raises(XdrError):
        BindChanVerfRes.decode(bytes.fromhex("000000020000000000000000"))


def test_oid_accepts_both_encodings() -> None:
    assert normalize_oid(SHA256.oid) == SHA256.oid
    assert normalize_oid(b"\x06\x09" + SHA256.oid) == SHA256.oid


def test_init_res_round_trip() -> None:
    res = InitRes(b"handle", 0, 0, 128, b"token!")
    assert InitRes.decode(res.encode()) == res


@given(
    version=st.sampled_from([1, 2]),
    proc=st.sampled_from(list(GssProc)),
    seq=st.integers(0, 2**32 - 1),
    service=st.sampled_from(list(Service)),
    handle=st.binary(max_size=128),
)
def test_cred_round_trip(version: int, proc: GssProc, seq: int, service: Service, handle: bytes) -> None:
    cred = GssCred(version, proc, seq, service, handle)
    # RFC 2203 §5 rpc_gss_cred_vers_1_t, packed here independently of the encoder
    assert cred.encode() == struct.pack(">5I", version, proc, seq, service, len(handle)) + handle + bytes(
        -len(handle) % 4
    )
    assert GssCred.decode(cred.encode()) == cred


@pytest.mark.parametrize("decode", DECODERS, ids=lambda d: getattr(d, "__qualname__", "decode"))
@given(data=st.binary(max_size=600))
def test_decoders_never_crash(decode: Callable[[bytes], object], data: bytes) -> None:
    with contextlib.suppress(XdrError):
        decode(data)


@given(
    xid=st.integers(0, 2**32 - 1),
    prog=st.integers(0, 2**32 - 1),
    proc=st.integers(0, 2**32 - 1),
    body=st.binary(max_size=400),
)
def test_fast_call_header_matches_rpc_messages(xid: int, prog: int, proc: int, body: bytes) -> None:
    from rpclatch.gss.wire import encode_call_header
    from rpclatch.rpc.messages import CallMessage, OpaqueAuth

    msg = CallMessage(xid, prog, 3, proc, OpaqueAuth(6, body))
    assert encode_call_header(xid, prog, 3, proc, 6, body) == msg.encode_header_through_cred()


@given(body=st.binary(max_size=64), checksum=st.binary(max_size=64))
def test_integ_priv_round_trip(body: bytes, checksum: bytes) -> None:
    assert IntegData.decode(IntegData(body, checksum).encode()) == IntegData(body, checksum)
    assert PrivData.decode(PrivData(body).encode()) == PrivData(body)


def _reference_decode_integ(data: bytes) -> tuple[bytes, bytes]:
    """rpc_gss_integ_data through the general XDR decoder (what the hot-path decoder must match)."""
    from rpclatch.gss.wire import MAX_GSS_TOKEN
    from rpclatch.xdr import DEFAULT_MAX_OPAQUE, Decoder

    dec = Decoder(data)
    body, checksum = dec.opaque(DEFAULT_MAX_OPAQUE), dec.opaque(MAX_GSS_TOKEN)
    dec.done()
    return body, checksum


@given(
    st.one_of(
        st.binary(max_size=80),
        st.builds(
            lambda b, c, tail: IntegData(b, c).encode()[: len(IntegData(b, c).encode()) - tail],
            st.binary(max_size=40),
            st.binary(max_size=40),
            st.integers(0, 12),
        ),
        st.builds(
            lambda b, c, extra: IntegData(b, c).encode() + extra,
            st.binary(max_size=40),
            st.binary(max_size=40),
            st.binary(min_size=1, max_size=8),
        ),
    )
)
def test_fast_integ_decoder_matches_the_xdr_decoder(data: bytes) -> None:
    from rpclatch.gss.wire import decode_integ

    try:
        expected: tuple[bytes, bytes] | None = _reference_decode_integ(data)
    except XdrError:
        expected = None
    if expected is None:
        with pytest.raises(XdrError):
            decode_integ(data)
    else:
        assert decode_integ(data) == expected


@given(
    cred=st.binary(max_size=148),
    verf_flavor=st.sampled_from([0, 6]),
    verf=st.binary(max_size=40),
    args=st.binary(max_size=40).map(lambda b: b + b"\0" * (-len(b) % 4)),
    xid=st.integers(0, 2**32 - 1),
)
def test_rpc_fast_paths_with_rpcsec_gss_credentials(
    cred: bytes, verf_flavor: int, verf: bytes, args: bytes, xid: int
) -> None:
    """The RPC layer's call fast paths on RPCSEC_GSS-shaped calls (credential body, and an AUTH_NONE
    verifier as channel_prot sends or a GSS one): the record-marked encoding is the record of the
    plain one, decoding gives the call back, and the signed header bytes (RFC 2203 §5.3.1) are kept
    exactly when a verifier could be a MIC over them."""
    from rpclatch.rpc import wire
    from rpclatch.rpc.messages import CallMessage, OpaqueAuth, decode_call

    verf = verf if verf_flavor else b""
    msg = CallMessage(xid, 0x20000099, 1, 1, OpaqueAuth(6, cred), OpaqueAuth(verf_flavor, verf), args)
    encoded = wire.encode_call(msg)
    head, tail = wire.encode_call_marked(msg)
    assert head + tail == (0x80000000 | len(encoded)).to_bytes(4, "big") + encoded
    decoded = decode_call(encoded)
    assert decoded == msg and decoded.cred.body == cred
    assert decoded.header == (msg.encode_header_through_cred() if verf_flavor else b"")
