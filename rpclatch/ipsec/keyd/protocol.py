"""The keyd control protocol codec (sans-IO; docs/keyd.md describes the format).

Framing: each message is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON
holding one object; a frame longer than :data:`MAX_FRAME` is refused. A client sends requests
(``{"op": ..., "id": n, ...}``), the daemon sends answers (``{"id": n, "ok": true, ...}`` or
``{"id": n, "ok": false, "error": CODE, "detail": ...}``) and alerts (``{"alert": KIND,
"latch": handle, ...}``), the asynchronous notifications of RFC 5660 §2.2 (ALERT).

:func:`decode_request` raises nothing but :class:`ControlDecodeError`, which carries the
:class:`ErrorCode` to answer with (and the request id when one could be read).

INQUIRE_LATCH's ``qop`` says what protects the 5-tuple: ``{"protocol": "ESP", "suite", "mode",
"confidentiality"}`` for a latch on a CHILD_SA, ``{"protocol": "BYPASS"}`` for the BYPASS latch
FIND_LATCH gives an unprotected connection accepted under a LISTENER latch (RFC 5660 §3.1).
"""

from __future__ import annotations

import ipaddress
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeGuard

from rpclatch.ipsec.model import FiveTuple

#: Largest frame payload accepted or produced, in bytes.
MAX_FRAME = 16 * 1024
#: CREATE_CONNECTION_LATCH timeout when the request gives none (seconds), and the largest allowed.
DEFAULT_TIMEOUT = 2.0
MAX_TIMEOUT = 60.0
#: Largest request id (a client's choice, echoed in the answer).
MAX_ID = 2**53

_HEADER = struct.Struct(">I")
_PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}
_PROTOCOL_NAMES = {number: name for name, number in _PROTOCOLS.items()}


class Op(Enum):
    """The RFC 5660 §2.2 abstract API operations."""

    CREATE_LISTENER_LATCH = "CREATE_LISTENER_LATCH"
    CREATE_CONNECTION_LATCH = "CREATE_CONNECTION_LATCH"
    FIND_LATCH = "FIND_LATCH"
    INQUIRE_LATCH = "INQUIRE_LATCH"
    RELEASE_LATCH = "RELEASE_LATCH"
    #: not in RFC 5660: the daemon's IKE SAs, CHILD_SAs and latches (``rpclatch ipsec status``)
    STATUS = "STATUS"


class ErrorCode(Enum):
    """Every refusal the daemon answers with (the ``error`` member of an answer)."""

    MALFORMED = "MALFORMED"  # not a frame, not JSON, not an object, a member of the wrong type
    TOO_LARGE = "TOO_LARGE"  # frame longer than MAX_FRAME
    UNKNOWN_OP = "UNKNOWN_OP"
    BAD_ARGUMENT = "BAD_ARGUMENT"  # a member out of range (address, port, protocol, timeout)
    ACCESS_DENIED = "ACCESS_DENIED"  # peer uid neither root nor the socket's owner
    TOO_MANY_CLIENTS = "TOO_MANY_CLIENTS"
    TOO_MANY_LATCHES = "TOO_MANY_LATCHES"  # per-client latch limit reached
    TOO_MANY_PENDING = "TOO_MANY_PENDING"  # per-client outstanding CREATE_CONNECTION_LATCH limit
    DUPLICATE_ID = "DUPLICATE_ID"  # a request id still outstanding on this connection
    NO_SUCH_LATCH = "NO_SUCH_LATCH"
    NOT_HOLDER = "NOT_HOLDER"  # the latch belongs to another client
    LATCH_EXISTS = "LATCH_EXISTS"  # a latch for this 5-tuple or listener already exists
    IKE_TIMEOUT = "IKE_TIMEOUT"  # no ESTABLISHED latch within the request's timeout
    IKE_UNREACHABLE = "IKE_UNREACHABLE"  # ICMP port unreachable answered our IKE_SA_INIT: no key manager
    IKE_FAILED = "IKE_FAILED"  # the IKE exchange failed (detail: the IKE failure reason)
    PEER_REFUSED = "PEER_REFUSED"  # the peer's identity is not acceptable (PAD)
    POLICY_REFUSED = "POLICY_REFUSED"  # local policy refuses the flow
    INTERNAL = "INTERNAL"  # datapath failure; the daemon logs it


class AlertKind(Enum):
    """RFC 5660 §2.2 ALERT: a latch the client holds changed state."""

    BROKEN = "BROKEN"
    RELEASED = "RELEASED"  # released by the daemon (e.g. shutting down)


class ControlDecodeError(Exception):
    """A frame or request that cannot be accepted: answered with :attr:`code`."""

    def __init__(self, code: ErrorCode, detail: str, request_id: int | None = None) -> None:
        super().__init__(f"{code.value}: {detail}")
        self.code = code
        self.detail = detail
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Listener:
    """A CREATE_LISTENER_LATCH argument: local address (None: any) and port, protocol."""

    local_addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    local_port: int
    proto: int


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request. ``flow`` for CREATE_CONNECTION_LATCH / FIND_LATCH, ``listener`` for
    CREATE_LISTENER_LATCH, ``latch`` for INQUIRE_LATCH / RELEASE_LATCH."""

    op: Op
    request_id: int
    flow: FiveTuple | None = None
    listener: Listener | None = None
    latch: int | None = None
    timeout: float = DEFAULT_TIMEOUT


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer to request ``request_id``: ``error`` None means success, with ``fields``."""

    request_id: int
    error: ErrorCode | None = None
    detail: str = ""
    fields: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        if self.error is None:
            return {"id": self.request_id, "ok": True, **self.fields}
        return {"id": self.request_id, "ok": False, "error": self.error.value, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Alert:
    """An ALERT pushed to the holder of ``latch``."""

    kind: AlertKind
    latch: int
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"alert": self.kind.value, "latch": self.latch, "detail": self.detail}


def encode_frame(message: Answer | Alert | Mapping[str, Any]) -> bytes:
    """One frame: length prefix + compact JSON."""
    obj = message.to_json() if isinstance(message, Answer | Alert) else dict(message)
    payload = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
    if len(payload) > MAX_FRAME:
        raise ValueError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Splits a byte stream into frame payloads; buffers at most one frame."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[bytes]:
        """The complete payloads in ``data`` (plus what was buffered). Raises
        :class:`ControlDecodeError` (TOO_LARGE) when a header announces an oversized frame; the
        stream is then unusable and the shell closes it."""
        self._buffer += data
        frames: list[bytes] = []
        while len(self._buffer) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self._buffer)
            if length > self._max:
                raise ControlDecodeError(ErrorCode.TOO_LARGE, f"frame of {length} bytes")
            if len(self._buffer) < _HEADER.size + length:
                break
            frames.append(bytes(self._buffer[_HEADER.size : _HEADER.size + length]))
            del self._buffer[: _HEADER.size + length]
        return frames


def decode_request(payload: bytes) -> Request:
    """Parse and validate one request payload (raises only :class:`ControlDecodeError`)."""
    if len(payload) > MAX_FRAME:
        raise ControlDecodeError(ErrorCode.TOO_LARGE, f"frame of {len(payload)} bytes")
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ControlDecodeError(ErrorCode.MALFORMED, f"not JSON: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise ControlDecodeError(ErrorCode.MALFORMED, "not a JSON object")
    request_id = obj.get("id")
    if not _is_int(request_id) or not 0 <= request_id <= MAX_ID:
        raise ControlDecodeError(ErrorCode.MALFORMED, "id must be an integer in 0..2**53")
    op_name = obj.get("op")
    try:
        op = Op(op_name) if isinstance(op_name, str) else None
    except ValueError:
        op = None
    if op is None:
        raise ControlDecodeError(ErrorCode.UNKNOWN_OP, "unknown op", request_id)
    try:
        return _parse(op, request_id, obj)
    except ControlDecodeError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:  # pragma: no cover - defensive
        raise ControlDecodeError(ErrorCode.MALFORMED, type(exc).__name__, request_id) from None


def _parse(op: Op, request_id: int, obj: dict[str, Any]) -> Request:
    if op in (Op.CREATE_CONNECTION_LATCH, Op.FIND_LATCH):
        local = _address(obj, "local_addr", request_id)
        remote = _address(obj, "remote_addr", request_id)
        if local.version != remote.version:
            raise ControlDecodeError(ErrorCode.BAD_ARGUMENT, "address families differ", request_id)
        flow = FiveTuple(
            local_addr=local,
            local_port=_port(obj, "local_port", request_id, allow_zero=False),
            remote_addr=remote,
            remote_port=_port(obj, "remote_port", request_id, allow_zero=False),
            proto=_proto(obj, request_id),
        )
        timeout = DEFAULT_TIMEOUT
        if op is Op.CREATE_CONNECTION_LATCH and "timeout" in obj:
            raw = obj["timeout"]
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise ControlDecodeError(ErrorCode.MALFORMED, "timeout must be a number", request_id)
            timeout = float(raw)
            if not math.isfinite(timeout) or not 0 < timeout <= MAX_TIMEOUT:
                raise ControlDecodeError(
                    ErrorCode.BAD_ARGUMENT, f"timeout must be in (0, {MAX_TIMEOUT}]", request_id
                )
        return Request(op, request_id, flow=flow, timeout=timeout)
    if op is Op.CREATE_LISTENER_LATCH:
        bound = None if obj.get("local_addr") is None else _address(obj, "local_addr", request_id)
        listener = Listener(
            bound, _port(obj, "local_port", request_id, allow_zero=False), _proto(obj, request_id)
        )
        return Request(op, request_id, listener=listener)
    if op is Op.STATUS:
        return Request(op, request_id)
    latch = obj.get("latch")
    if not _is_int(latch) or not 0 < latch <= MAX_ID:
        raise ControlDecodeError(ErrorCode.MALFORMED, "latch must be a positive integer", request_id)
    return Request(op, request_id, latch=latch)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _address(obj: dict[str, Any], key: str, request_id: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = obj.get(key)
    if not isinstance(raw, str) or len(raw) > 64:
        raise ControlDecodeError(ErrorCode.MALFORMED, f"{key} must be an address string", request_id)
    try:
        return ipaddress.ip_address(raw)
    except ValueError:
        raise ControlDecodeError(ErrorCode.BAD_ARGUMENT, f"{key} is not an IP address", request_id) from None


def _port(obj: dict[str, Any], key: str, request_id: int, *, allow_zero: bool) -> int:
    raw = obj.get(key)
    if not _is_int(raw):
        raise ControlDecodeError(ErrorCode.MALFORMED, f"{key} must be an integer", request_id)
    if not (0 if allow_zero else 1) <= raw <= 65535:
        raise ControlDecodeError(ErrorCode.BAD_ARGUMENT, f"{key} out of range", request_id)
    return int(raw)


def _proto(obj: dict[str, Any], request_id: int) -> int:
    raw = obj.get("proto", "tcp")
    if not isinstance(raw, str) or raw not in _PROTOCOLS:
        raise ControlDecodeError(ErrorCode.BAD_ARGUMENT, "proto must be tcp, udp or sctp", request_id)
    return _PROTOCOLS[raw]


def protocol_name(proto: int) -> str:
    """The ``proto`` string for an IP protocol number (the number itself when unnamed)."""
    return _PROTOCOL_NAMES.get(proto, str(proto))
