"""Record marking for RPC over byte streams (RFC 5531 §11), sans-IO.

A record is one RPC message sent as one or more fragments. Each fragment is a 4-byte big-endian
header followed by its data; bit 31 of the header marks the last fragment of the record and bits
0..30 give the fragment length (0 .. 2**31-1).

API
---
``encode_record(message, max_fragment=MAX_FRAGMENT) -> bytes``
    The record-marked bytes of one message, split into fragments of at most ``max_fragment`` data
    bytes (a zero-length message is one empty last fragment).

``RecordReassembler(max_record=DEFAULT_MAX_RECORD)``
    Incremental reader: ``feed(data) -> list[bytes]`` returns every record completed by ``data``.
    A fragment header whose length would take the record past ``max_record`` raises
    :class:`RecordTooLarge` *before* anything is buffered for it, so a peer announcing 2 GiB costs
    nothing; the stream is then unusable and the caller closes the connection. ``buffered`` is the
    number of bytes held for an incomplete record, ``in_record`` whether a record is partly read.

Errors derive from :class:`RecordError` (an :class:`rpclatch.rpc.errors.RpcProtocolError`).
"""

from __future__ import annotations

import struct

from rpclatch.rpc.errors import RpcProtocolError

#: Bit 31 of a fragment header: this is the last fragment of the record (RFC 5531 §11).
LAST_FRAGMENT = 0x80000000
#: Largest fragment length a header can express (bits 0..30).
MAX_FRAGMENT = 0x7FFFFFFF
#: Default ceiling for one reassembled record: 4 MiB of payload plus room for RPC/GSS headers.
DEFAULT_MAX_RECORD = 4 * 1024 * 1024 + 64 * 1024

_HEADER = struct.Struct(">I")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from


class RecordError(RpcProtocolError):
    """The byte stream does not carry valid record marking; the connection must be closed."""


class RecordTooLarge(RecordError):
    """A fragment header announced a record larger than the receiver's limit."""

    def __init__(self, announced: int, limit: int) -> None:
        self.announced = announced
        self.limit = limit
        super().__init__(f"record of at least {announced} bytes exceeds the limit of {limit} bytes")


def encode_record(message: bytes, max_fragment: int = MAX_FRAGMENT) -> bytes:
    """Record-mark ``message`` (RFC 5531 §11), using fragments of at most ``max_fragment`` bytes."""
    n = len(message)
    if n <= max_fragment:
        return _pack_header(LAST_FRAGMENT | n) + message
    if not 1 <= max_fragment <= MAX_FRAGMENT:
        raise ValueError(f"max_fragment must be in 1..{MAX_FRAGMENT}, got {max_fragment}")
    parts: list[bytes] = []
    view = memoryview(message)
    for start in range(0, n, max_fragment):
        chunk = view[start:start + max_fragment]
        last = LAST_FRAGMENT if start + max_fragment >= n else 0
        parts.append(_pack_header(last | len(chunk)))
        parts.append(bytes(chunk))
    return b"".join(parts)


class RecordReassembler:
    """Incremental record reader with a bound on the record size (RFC 5531 §11).

    Fragments of one record are joined; the result of :meth:`feed` is a list of complete records
    (each the exact RPC message bytes, without record marks).
    """

    __slots__ = ("_buf", "_fragments", "_record_len", "max_record")

    def __init__(self, max_record: int = DEFAULT_MAX_RECORD) -> None:
        if max_record < 0:
            raise ValueError("max_record must be >= 0")
        self.max_record = max_record
        self._buf = bytearray()  # unconsumed input (a header and/or part of a fragment)
        self._fragments: list[bytes] = []  # earlier fragments of the current record
        self._record_len = 0  # bytes in self._fragments

    @property
    def buffered(self) -> int:
        """Bytes held for a record not yet complete."""
        return len(self._buf) + self._record_len

    @property
    def in_record(self) -> bool:
        """True while part of a record (or of a fragment header) has been received."""
        return bool(self._buf) or bool(self._fragments)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Consume ``data``; return the records it completed. Raises :class:`RecordTooLarge`."""
        if self._buf:
            self._buf += data
            buf: bytes | bytearray = self._buf
        else:
            # Fast path: parse straight out of the caller's bytes, keep only the remainder.
            buf = data if isinstance(data, bytes) else bytes(data)
        records: list[bytes] = []
        # Slicing a memoryview of the bytearray copies once (a bytearray slice would copy twice).
        view = memoryview(buf) if buf is self._buf else None
        pos = 0
        end = len(buf)
        max_record = self.max_record
        while end - pos >= 4:
            (header,) = _unpack_header(buf, pos)
            length = header & MAX_FRAGMENT
            total = self._record_len + length
            if total > max_record:
                if view is not None:
                    view.release()
                self._buf = bytearray()
                self._fragments.clear()
                self._record_len = 0
                raise RecordTooLarge(total, max_record)
            stop = pos + 4 + length
            if stop > end:
                break
            fragment = bytes(view[pos + 4:stop] if view is not None else buf[pos + 4:stop])
            pos = stop
            if header & LAST_FRAGMENT:
                if self._fragments:
                    self._fragments.append(fragment)
                    fragment = b"".join(self._fragments)
                    self._fragments.clear()
                    self._record_len = 0
                records.append(fragment)
            else:
                self._fragments.append(fragment)
                self._record_len = total
        if view is not None:
            view.release()
            if pos:
                del self._buf[:pos]
        elif pos < end:
            self._buf = bytearray(buf[pos:]) if pos else bytearray(buf)
        return records
