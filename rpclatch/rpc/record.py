"""Record marking for RPC over byte streams (RFC 5531 §11), sans-IO.

A record is one RPC message sent as one or more fragments. Each fragment is a 4-byte big-endian
header followed by its data; bit 31 of the header marks the last fragment of the record and bits
0..30 give the fragment length (0 .. 2**31-1). :func:`encode_record` writes records,
:class:`RecordReassembler` reads them back under a memory bound. The stream client and server
cores (:mod:`rpclatch.rpc.client`, :mod:`rpclatch.rpc.server`) use both. Errors derive from
:class:`RecordError` (an :class:`rpclatch.rpc.errors.RpcProtocolError`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TypeVar

from rpclatch.rpc.errors import RpcProtocolError

#: Bit 31 of a fragment header: this is the last fragment of the record (RFC 5531 §11).
LAST_FRAGMENT = 0x80000000
#: Largest fragment length a header can express (bits 0..30).
MAX_FRAGMENT = 0x7FFFFFFF
#: Default ceiling for one reassembled record: 4 MiB of payload plus room for RPC/GSS headers.
DEFAULT_MAX_RECORD = 4 * 1024 * 1024 + 64 * 1024
#: Zero-length non-last fragments tolerated in one record before the stream is given up.
DEFAULT_MAX_EMPTY_FRAGMENTS = 8

T = TypeVar("T")

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


class TooManyEmptyFragments(RecordError):
    """More zero-length non-last fragments in one record than the receiver tolerates: they
    carry nothing, so a peer sending them only keeps the connection busy (RFC 5531 §11)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"more than {limit} zero-length fragments in one record")


def encode_record(message: bytes, max_fragment: int = MAX_FRAGMENT) -> bytes:
    """Record-mark ``message`` (RFC 5531 §11), using fragments of at most ``max_fragment`` bytes
    (a zero-length message is one empty last fragment)."""
    n = len(message)
    if n <= max_fragment:
        return _pack_header(LAST_FRAGMENT | n) + message
    if not 1 <= max_fragment <= MAX_FRAGMENT:
        raise ValueError(f"max_fragment must be in 1..{MAX_FRAGMENT}, got {max_fragment}")
    parts: list[bytes] = []
    view = memoryview(message)
    for start in range(0, n, max_fragment):
        chunk = view[start : start + max_fragment]
        last = LAST_FRAGMENT if start + max_fragment >= n else 0
        parts.append(_pack_header(last | len(chunk)))
        parts.append(bytes(chunk))
    return b"".join(parts)


#: Buffers at least this large are written as they are rather than joined with their neighbours.
BIG_PART = 16 * 1024


def coalesce(parts: list[bytes]) -> list[bytes]:
    """Join runs of small buffers, keep big ones as they are (saves copying large payloads)."""
    if len(parts) <= 1:
        return parts
    out: list[bytes] = []
    run: list[bytes] = []
    for part in parts:
        if len(part) >= BIG_PART:
            if run:
                out.append(b"".join(run))
                run = []
            out.append(part)
        else:
            run.append(part)
    if run:
        out.append(b"".join(run))
    return out


class RecordReassembler:
    """Incremental record reader with a bound on what it holds (RFC 5531 §11).

    Fragments of one record are joined; the result of :meth:`feed` is a list of complete records
    (each the exact RPC message bytes, without record marks). ``in_record`` tells whether a record
    is partly read.

    A fragment header whose length would take the record past ``max_record`` raises
    :class:`RecordTooLarge` *before* anything is buffered for it, so a peer announcing 2 GiB costs
    nothing; the stream is then unusable and the caller closes the connection.

    Memory: between calls the reassembler holds at most ``max_record + 4`` bytes, counted by
    :attr:`buffered`. The payload of the earlier fragments of the record in progress is appended
    to one ``bytearray`` and nothing is kept per fragment, so a record sent as 2-byte fragments
    costs what its payload costs (plus, while :meth:`feed` runs, the input it was given and the
    copy of a completed record). A zero-length fragment that is not the last of its record
    carries nothing and is legal, but no sender needs one: more than ``max_empty_fragments`` in
    one record raise :class:`TooManyEmptyFragments`.
    """

    __slots__ = ("_buf", "_consumed", "_empty", "_record", "max_empty_fragments", "max_record")

    def __init__(
        self, max_record: int = DEFAULT_MAX_RECORD, max_empty_fragments: int = DEFAULT_MAX_EMPTY_FRAGMENTS
    ) -> None:
        if max_record < 0:
            raise ValueError("max_record must be >= 0")
        if max_empty_fragments < 0:
            raise ValueError("max_empty_fragments must be >= 0")
        self.max_record = max_record
        self.max_empty_fragments = max_empty_fragments
        self._buf = bytearray()  # unconsumed input (a header and/or part of a fragment)
        self._record = bytearray()  # payload of the earlier fragments of the current record
        self._empty = 0  # zero-length non-last fragments of the current record
        self._consumed = 0

    @property
    def buffered(self) -> int:
        """Bytes held between calls to :meth:`feed`: unconsumed input (a partial fragment header,
        or a header and part of its fragment) plus the payload of the earlier fragments of the
        record in progress. At most ``max_record + 4``: nothing else is kept per fragment."""
        return len(self._buf) + len(self._record)

    @property
    def in_record(self) -> bool:
        """True while part of a record (or of a fragment header) has been received."""
        return bool(self._buf) or bool(self._record) or bool(self._empty)

    def _reset(self) -> None:
        """Drop the record in progress (the stream is unusable after an error)."""
        self._record = bytearray()
        self._empty = 0

    def feed(
        self,
        data: bytes | bytearray | memoryview,
        decode: Callable[[bytes | memoryview, int, int], T | None] | None = None,
    ) -> list[bytes | T]:
        """Consume ``data``; return the records it completed. Raises :class:`RecordTooLarge` or
        :class:`TooManyEmptyFragments` (after which nothing is held any more).

        ``data`` may be a view of a buffer the caller reuses: whatever is kept is copied out.
        With ``decode``, a record whose payload is one fragment lying whole in the input is first
        offered to ``decode(buffer, start, stop)``; if that returns non-None the result stands for
        the record, decoded without the record being copied out first (the RPC cores use this
        for calls and replies).
        """
        src: bytes | memoryview
        if self._buf:
            self._buf += data
            src = memoryview(self._buf)  # slicing a view copies once (a bytearray slice twice)
        elif type(data) is bytes:
            src = data  # fast path: slice records straight out of the caller's bytes
        else:
            src = memoryview(data)
        try:
            return self._parse(src, decode)
        finally:
            if type(src) is memoryview:
                src.release()
            if self._consumed and self._buf:
                del self._buf[: self._consumed]

    def _parse(
        self, src: bytes | memoryview, decode: Callable[[bytes | memoryview, int, int], T | None] | None
    ) -> list[bytes | T]:
        records: list[bytes | T] = []
        pos = 0
        end = len(src)
        max_record = self.max_record
        record = self._record
        have = len(record)  # payload of the record in progress so far
        empty = self._empty
        self._consumed = 0
        try:
            while end - pos >= 4:
                (header,) = _unpack_header(src, pos)
                length = header & MAX_FRAGMENT
                total = have + length
                if total > max_record:
                    self._reset()
                    empty = 0
                    pos = end  # drop everything buffered
                    raise RecordTooLarge(total, max_record)
                stop = pos + 4 + length
                if stop > end:
                    break
                if header & LAST_FRAGMENT:
                    if empty:
                        empty = 0
                    if not have:  # the payload is this one fragment (after any empty ones)
                        if decode is not None:
                            decoded = decode(src, pos + 4, stop)
                            if decoded is not None:
                                pos = stop
                                records.append(decoded)
                                continue
                        records.append(bytes(src[pos + 4 : stop]))
                    else:
                        record += src[pos + 4 : stop]
                        records.append(bytes(record))
                        self._record = record = bytearray()
                        have = 0
                elif length:
                    record += src[pos + 4 : stop]
                    have = total
                else:
                    empty += 1
                    if empty > self.max_empty_fragments:
                        self._reset()
                        empty = 0
                        pos = end
                        raise TooManyEmptyFragments(self.max_empty_fragments)
                pos = stop
        finally:
            self._empty = empty
            if self._buf:
                self._consumed = pos  # trimmed by feed() once the view is released
            elif pos < end:
                self._buf = bytearray(src[pos:])
        return records
