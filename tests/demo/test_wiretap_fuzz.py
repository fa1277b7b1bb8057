"""The wire observer reads untrusted bytes: any frame, any TCP payload must be decoded or skipped,
never crash the demo (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from rpclatch.demo.wiretap import WireView
from rpclatch.ipsec.model import ip
from rpclatch.netsim.ip import PROTO_ESP, PROTO_TCP, IpPacket
from rpclatch.netsim.link import WireRecord
from rpclatch.netsim.tcp import Flags, TcpSegment

C, S = ip("192.0.2.10"), ip("192.0.2.20")


def tcp_frame(seq: int, flags: Flags, payload: bytes) -> bytes:
    seg = TcpSegment(40000, 2049, seq, 0, flags, payload=payload)
    return IpPacket(C, S, PROTO_TCP, seg.encode(C, S)).encode()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_arbitrary_frames_never_crash(frames: list[bytes]) -> None:
    view = WireView([WireRecord(float(i), f, "x", "y") for i, f in enumerate(frames)], [])
    assert view.calls == [] or all(c.flow for c in view.calls)
    view.data_services()
    view.readable_by("y")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=600), min_size=1, max_size=6), st.integers(0, 2**32 - 1))
def test_arbitrary_rpc_stream_never_crashes(chunks: list[bytes], isn: int) -> None:
    records = [WireRecord(0.0, tcp_frame(isn, Flags.SYN, b""), "client", "server")]
    seq = (isn + 1) & 0xFFFFFFFF
    for i, chunk in enumerate(chunks):
        records.append(WireRecord(1.0 + i, tcp_frame(seq, Flags.ACK | Flags.PSH, chunk), "client", "server"))
        seq = (seq + len(chunk)) & 0xFFFFFFFF
    view = WireView(records, [])
    assert view.cleartext_bytes(2049) == sum(len(c) for c in chunks)
    view.data_services()


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=0, max_size=300))
def test_arbitrary_esp_payload_never_crashes(body: bytes) -> None:
    frame = IpPacket(C, S, PROTO_ESP, body).encode()
    view = WireView([WireRecord(0.0, frame, "client", "server")], [])
    assert view.calls == [] and view.cleartext_bytes() == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.binary(max_size=64), st.sampled_from([0, 1, 6, 7]))
def test_calls_with_arbitrary_credentials_are_decoded_or_skipped(
    cred: bytes, args: bytes, flavor: int
) -> None:
    import struct

    from rpclatch.rpc.messages import CallMessage, OpaqueAuth

    msg = CallMessage(7, 0x20000A11, 1, 1, OpaqueAuth(flavor, cred), OpaqueAuth(0, b""), args).encode()
    stream = struct.pack(">I", 0x80000000 | len(msg)) + msg
    records = [
        WireRecord(0.0, tcp_frame(99, Flags.SYN, b""), "client", "server"),
        WireRecord(1.0, tcp_frame(100, Flags.ACK, stream), "client", "server"),
    ]
    view = WireView(records, [])
    assert len(view.calls) == 1 and view.calls[0].flavor == flavor
    if flavor != 6:
        assert view.calls[0].service is None
