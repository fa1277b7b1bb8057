"""XDR helpers over xdrlib3 (RFC 4506) with typed errors and explicit bounds.

Every decoder in rpclatch reads through :class:`Decoder`, so that malformed input from the network
always surfaces as :class:`XdrError` (never ``EOFError``, ``struct.error`` or ``ValueError``) and no
variable-length item can make us allocate more than the caller's stated maximum.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import xdrlib3

T = TypeVar("T")

#: Default ceiling for a variable-length opaque/string when the caller gives none (RFC 4506 §4.10
#: allows 2**32-1; no structure we decode legitimately needs more than a record).
DEFAULT_MAX_OPAQUE = 64 * 1024 * 1024


class XdrError(ValueError):
    """Malformed or out-of-bounds XDR data (RFC 4506)."""


class Decoder:
    """Bounded XDR reader. All methods raise :class:`XdrError` on malformed input."""

    __slots__ = ("_len", "_u")

    def __init__(self, data: bytes | bytearray | memoryview, offset: int = 0) -> None:
        buf = bytes(data)
        self._u = xdrlib3.Unpacker(buf)
        self._len = len(buf)
        if offset:
            self._u.set_position(offset)

    @property
    def position(self) -> int:
        return int(self._u.get_position())

    @property
    def remaining(self) -> int:
        return self._len - self.position

    def buffer(self) -> bytes:
        return bytes(self._u.get_buffer())

    def uint32(self) -> int:
        try:
            return int(self._u.unpack_uint())
        except (EOFError, xdrlib3.Error) as exc:
            raise XdrError(f"truncated unsigned int at offset {self.position}") from exc

    def int32(self) -> int:
        try:
            return int(self._u.unpack_int())
        except (EOFError, xdrlib3.Error) as exc:
            raise XdrError(f"truncated int at offset {self.position}") from exc

    def uint64(self) -> int:
        try:
            return int(self._u.unpack_uhyper())
        except (EOFError, xdrlib3.Error) as exc:
            raise XdrError(f"truncated unsigned hyper at offset {self.position}") from exc

    def int64(self) -> int:
        try:
            return int(self._u.unpack_hyper())
        except (EOFError, xdrlib3.Error) as exc:
            raise XdrError(f"truncated hyper at offset {self.position}") from exc

    def boolean(self) -> bool:
        v = self.uint32()
        if v > 1:
            raise XdrError(f"bool must be 0 or 1, got {v}")
        return v == 1

    def enum(self, cls: Callable[[int], T]) -> T:
        """Decode an enum discriminant into ``cls`` (an IntEnum); unknown values raise XdrError."""
        v = self.int32()
        try:
            return cls(v)
        except ValueError as exc:
            raise XdrError(f"unknown {getattr(cls, '__name__', 'enum')} value {v}") from exc

    def fixed(self, n: int) -> bytes:
        """Fixed-length opaque of ``n`` bytes, padded to 4 (RFC 4506 §4.9)."""
        padded = (n + 3) & ~3
        if padded > self.remaining:
            raise XdrError(f"fixed opaque of {n} bytes overruns buffer ({self.remaining} left)")
        try:
            return bytes(self._u.unpack_fopaque(n))
        except (EOFError, xdrlib3.Error, ValueError) as exc:
            raise XdrError(f"bad fixed opaque of {n} bytes") from exc

    def opaque(self, max_len: int = DEFAULT_MAX_OPAQUE) -> bytes:
        """Variable-length opaque (RFC 4506 §4.10), refusing anything longer than ``max_len``."""
        n = self.uint32()
        if n > max_len:
            raise XdrError(f"opaque length {n} exceeds limit {max_len}")
        return self.fixed(n)

    def string(self, max_len: int = DEFAULT_MAX_OPAQUE) -> str:
        raw = self.opaque(max_len)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise XdrError("string is not valid UTF-8") from exc

    def array(self, item: Callable[[], T], max_items: int) -> list[T]:
        n = self.uint32()
        if n > max_items:
            raise XdrError(f"array of {n} items exceeds limit {max_items}")
        # Each item is at least 4 bytes on the wire: a cheap guard before we loop.
        if n * 4 > self.remaining:
            raise XdrError(f"array of {n} items overruns buffer")
        return [item() for _ in range(n)]

    def optional(self, item: Callable[[], T]) -> T | None:
        return item() if self.boolean() else None

    def rest(self) -> bytes:
        """Everything not yet consumed (e.g. procedure arguments after an RPC call header)."""
        pos = self.position
        data = self.buffer()[pos:]
        self._u.set_position(self._len)
        return data

    def done(self) -> None:
        if self.remaining:
            raise XdrError(f"{self.remaining} unexpected trailing bytes")


class Encoder:
    """XDR writer. Values out of range raise :class:`XdrError` (a local programming error)."""

    __slots__ = ("_p",)

    def __init__(self) -> None:
        self._p = xdrlib3.Packer()

    def uint32(self, v: int) -> Encoder:
        if not 0 <= v <= 0xFFFFFFFF:
            raise XdrError(f"unsigned int out of range: {v}")
        self._p.pack_uint(v)
        return self

    def int32(self, v: int) -> Encoder:
        if not -0x80000000 <= v <= 0x7FFFFFFF:
            raise XdrError(f"int out of range: {v}")
        self._p.pack_int(v)
        return self

    def uint64(self, v: int) -> Encoder:
        if not 0 <= v <= 0xFFFFFFFFFFFFFFFF:
            raise XdrError(f"unsigned hyper out of range: {v}")
        self._p.pack_uhyper(v)
        return self

    def int64(self, v: int) -> Encoder:
        if not -(2**63) <= v < 2**63:
            raise XdrError(f"hyper out of range: {v}")
        self._p.pack_hyper(v)
        return self

    def boolean(self, v: bool) -> Encoder:
        self._p.pack_bool(v)
        return self

    def fixed(self, data: bytes, n: int | None = None) -> Encoder:
        if n is not None and len(data) != n:
            raise XdrError(f"fixed opaque must be {n} bytes, got {len(data)}")
        self._p.pack_fopaque(len(data), data)
        return self

    def opaque(self, data: bytes, max_len: int = DEFAULT_MAX_OPAQUE) -> Encoder:
        if len(data) > max_len:
            raise XdrError(f"opaque of {len(data)} bytes exceeds limit {max_len}")
        self._p.pack_opaque(data)
        return self

    def string(self, s: str, max_len: int = DEFAULT_MAX_OPAQUE) -> Encoder:
        return self.opaque(s.encode("utf-8"), max_len)

    def raw(self, data: bytes) -> Encoder:
        """Append already-encoded XDR (e.g. procedure arguments)."""
        if len(data) % 4:
            raise XdrError(f"pre-encoded XDR must be a multiple of 4 bytes, got {len(data)}")
        self._p.pack_fopaque(len(data), data)
        return self

    def to_bytes(self) -> bytes:
        return bytes(self._p.get_buffer())


def pad4(n: int) -> int:
    """Length ``n`` rounded up to the XDR unit of 4 bytes."""
    return (n + 3) & ~3
