"""The keyd control codec: framing, request parsing and validation, typed errors only."""

from __future__ import annotations

import ipaddress
import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rpclatch.ipsec.keyd.protocol import (
    DEFAULT_TIMEOUT,
    MAX_FRAME,
    Alert,
    AlertKind,
    Answer,
    ControlDecodeError,
    ErrorCode,
    FrameDecoder,
    Op,
    decode_request,
    encode_frame,
)


def _req(**members: object) -> bytes:
    return json.dumps(members).encode()


FLOW = {
    "local_addr": "198.51.100.1",
    "local_port": 40000,
    "remote_addr": "198.51.100.2",
    "remote_port": 2049,
    "proto": "tcp",
}


def test_connection_latch_request_parses_with_default_timeout() -> None:
    request = decode_request(_req(op="CREATE_CONNECTION_LATCH", id=7, **FLOW))
    assert request.op is Op.CREATE_CONNECTION_LATCH
    assert request.request_id == 7
    assert request.timeout == DEFAULT_TIMEOUT
    assert request.flow is not None
    assert request.flow.local_addr == ipaddress.ip_address("198.51.100.1")
    assert (request.flow.local_port, request.flow.remote_port, request.flow.proto) == (40000, 2049, 6)


def test_timeout_and_other_ops() -> None:
    assert decode_request(_req(op="CREATE_CONNECTION_LATCH", id=1, timeout=0.5, **FLOW)).timeout == 0.5
    listener = decode_request(_req(op="CREATE_LISTENER_LATCH", id=2, local_port=2049, proto="tcp")).listener
    assert listener is not None and listener.local_addr is None and listener.local_port == 2049
    assert decode_request(_req(op="FIND_LATCH", id=3, **FLOW)).flow is not None
    assert decode_request(_req(op="INQUIRE_LATCH", id=4, latch=9)).latch == 9
    assert decode_request(_req(op="RELEASE_LATCH", id=5, latch=9)).op is Op.RELEASE_LATCH


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\xff\xfe", ErrorCode.MALFORMED),
        (b"[1, 2]", ErrorCode.MALFORMED),
        (_req(op="INQUIRE_LATCH", latch=1), ErrorCode.MALFORMED),
        (_req(op="INQUIRE_LATCH", id=True, latch=1), ErrorCode.MALFORMED),
        (_req(op="INQUIRE_LATCH", id=-1, latch=1), ErrorCode.MALFORMED),
        (_req(op="DESTROY", id=1), ErrorCode.UNKNOWN_OP),
        (_req(op=3, id=1), ErrorCode.UNKNOWN_OP),
        (_req(op="INQUIRE_LATCH", id=1, latch=0), ErrorCode.MALFORMED),
        (_req(op="INQUIRE_LATCH", id=1, latch="1"), ErrorCode.MALFORMED),
        (_req(op="CREATE_CONNECTION_LATCH", id=1, **{**FLOW, "local_port": 0}), ErrorCode.BAD_ARGUMENT),
        (_req(op="CREATE_CONNECTION_LATCH", id=1, **{**FLOW, "remote_port": 70000}), ErrorCode.BAD_ARGUMENT),
        (_req(op="CREATE_CONNECTION_LATCH", id=1, **{**FLOW, "remote_addr": "nfs"}), ErrorCode.BAD_ARGUMENT),
        (
            _req(op="CREATE_CONNECTION_LATCH", id=1, **{**FLOW, "remote_addr": "2001:db8::1"}),
            ErrorCode.BAD_ARGUMENT,
        ),
        (_req(op="CREATE_CONNECTION_LATCH", id=1, **{**FLOW, "proto": "icmp"}), ErrorCode.BAD_ARGUMENT),
        (_req(op="CREATE_CONNECTION_LATCH", id=1, timeout=0, **FLOW), ErrorCode.BAD_ARGUMENT),
        (_req(op="CREATE_CONNECTION_LATCH", id=1, timeout=1e9, **FLOW), ErrorCode.BAD_ARGUMENT),
        (_req(op="CREATE_CONNECTION_LATCH", id=1, timeout="2", **FLOW), ErrorCode.MALFORMED),
        (b'{"op":"CREATE_CONNECTION_LATCH","id":1,"timeout":NaN}', ErrorCode.MALFORMED),
        (b"x" * (MAX_FRAME + 1), ErrorCode.TOO_LARGE),
    ],
)
def test_bad_requests_get_typed_errors(payload: bytes, code: ErrorCode) -> None:
    with pytest.raises(ControlDecodeError) as info:
        decode_request(payload)
    assert info.value.code is code


def test_error_keeps_the_request_id_when_readable() -> None:
    with pytest.raises(ControlDecodeError) as info:
        decode_request(_req(op="DESTROY", id=42))
    assert info.value.request_id == 42


def test_frames_split_and_join() -> None:
    answer = Answer(3, fields={"latch": 5})
    alert = Alert(AlertKind.BROKEN, 5, "peer changed")
    stream = encode_frame(answer) + encode_frame(alert)
    decoder = FrameDecoder()
    frames = [frame for i in range(len(stream)) for frame in decoder.feed(stream[i : i + 1])]
    assert [json.loads(f) for f in frames] == [
        {"id": 3, "ok": True, "latch": 5},
        {"alert": "BROKEN", "latch": 5, "detail": "peer changed"},
    ]
    error = json.loads(encode_frame(Answer(4, ErrorCode.NO_SUCH_LATCH, "latch 5"))[4:])
    assert error == {"id": 4, "ok": False, "error": "NO_SUCH_LATCH", "detail": "latch 5"}


def test_oversized_frame_header_is_refused_before_buffering() -> None:
    with pytest.raises(ControlDecodeError) as info:
        FrameDecoder().feed(struct.pack(">I", MAX_FRAME + 1))
    assert info.value.code is ErrorCode.TOO_LARGE


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@given(st.binary(max_size=200))
def test_decode_arbitrary_bytes_raises_only_typed_error(payload: bytes) -> None:
    try:
        decode_request(payload)
    except ControlDecodeError as exc:
        assert isinstance(exc.code, ErrorCode)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "op",
                "id",
                "latch",
                "timeout",
                "proto",
                "local_addr",
                "local_port",
                "remote_addr",
                "remote_port",
            ]
        ),
        _json_values | st.sampled_from([op.value for op in Op]) | st.sampled_from(["198.51.100.1", "tcp"]),
    )
)
def test_decode_arbitrary_objects_raises_only_typed_error(obj: dict[str, object]) -> None:
    try:
        decode_request(json.dumps(obj).encode())
    except ControlDecodeError as exc:
        assert isinstance(exc.code, ErrorCode)


@given(st.binary(max_size=300))
def test_frame_decoder_never_raises_untyped(data: bytes) -> None:
    decoder = FrameDecoder(max_frame=64)
    try:
        for frame in decoder.feed(data):
            assert len(frame) <= 64
    except ControlDecodeError as exc:
        assert exc.code is ErrorCode.TOO_LARGE
