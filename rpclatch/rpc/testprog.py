"""The rpclatch test program: a tiny ONC RPC service for tests, benchmarks and interop checks.

Program ``RPCLATCH_TEST_PROG = 0x20000A11`` (RFC 5531 §7.3: 0x20000000-0x3fffffff is the
"defined by user" range), version ``RPCLATCH_TEST_VERS = 1``::

    program RPCLATCH_TEST_PROG {
      version RPCLATCH_TEST_VERS {
        void         NULL(void)          = 0;
        opaque<>     ECHO(opaque<>)      = 1;   /* the same bytes back */
        unsigned int SINK(opaque<>)      = 2;   /* how many bytes arrived */
        opaque<>     SOURCE(unsigned int) = 3;  /* that many bytes (at most SOURCE_MAX) */
      } = 1;
    } = 0x20000A11;

Server: :func:`add_test_program`. Client helpers (:func:`null`, :func:`echo`, :func:`sink`,
:func:`source`) take any object with an async ``call(prog, vers, proc, args)``
(``RpcStreamClient``, ``RpcUdpClient``).
"""

from __future__ import annotations

import struct
from typing import Protocol

from rpclatch.rpc.errors import GarbageArgs, ResultsTooLarge
from rpclatch.rpc.messages import PROC_NULL
from rpclatch.rpc.server import CallContext, Procedure, RpcDispatcher
from rpclatch.xdr import Decoder, XdrError

RPCLATCH_TEST_PROG = 0x20000A11
RPCLATCH_TEST_VERS = 1
PROC_ECHO = 1
PROC_SINK = 2
PROC_SOURCE = 3
#: Largest SOURCE request served; larger ones are GARBAGE_ARGS.
SOURCE_MAX = 64 * 1024 * 1024

_U32 = struct.Struct(">I")
_ZEROS = bytes(3)


def encode_opaque(data: bytes) -> bytes:
    """XDR ``opaque<>`` (RFC 4506 §4.10)."""
    n = len(data)
    return b"".join((_U32.pack(n), data, _ZEROS[: -n & 3]))


def decode_opaque(data: bytes) -> bytes:
    """Inverse of :func:`encode_opaque`; the whole buffer must be one opaque. Raises XdrError."""
    dec = Decoder(data)
    value = dec.opaque(len(data))
    dec.done()
    return value


def _opaque_length(args: bytes) -> int:
    """Length of the single ``opaque<>`` filling ``args`` (checked without copying it)."""
    if len(args) < 4:
        raise GarbageArgs("opaque<> argument is truncated")
    n: int = _U32.unpack_from(args)[0]
    if 4 + ((n + 3) & ~3) != len(args):
        raise GarbageArgs(f"opaque<> of {n} bytes does not fill the {len(args)}-byte arguments")
    return n


def proc_null(args: bytes, ctx: CallContext) -> bytes:
    if args:
        raise GarbageArgs("NULL takes no arguments")
    return b""


def proc_echo(args: bytes, ctx: CallContext) -> bytes:
    _opaque_length(args)
    return args  # opaque<> in, the identical opaque<> out


def proc_sink(args: bytes, ctx: CallContext) -> bytes:
    return _U32.pack(_opaque_length(args))


def proc_source(args: bytes, ctx: CallContext) -> bytes:
    """GARBAGE_ARGS above ``SOURCE_MAX``; SYSTEM_ERR (without building the bytes) when the results
    could not fit in one reply on the call's transport (``ctx.max_results``, e.g. a UDP datagram)."""
    if len(args) != 4:
        raise GarbageArgs("SOURCE takes one unsigned int")
    (n,) = _U32.unpack(args)
    if n > SOURCE_MAX:
        raise GarbageArgs(f"SOURCE of {n} bytes exceeds the limit of {SOURCE_MAX}")
    limit = ctx.max_results
    if limit is not None and 4 + ((n + 3) & ~3) > limit:
        raise ResultsTooLarge(4 + ((n + 3) & ~3), limit)  # before building them
    return encode_opaque(bytes(n))


TEST_PROCEDURES: dict[int, Procedure] = {
    PROC_NULL: proc_null,
    PROC_ECHO: proc_echo,
    PROC_SINK: proc_sink,
    PROC_SOURCE: proc_source,
}


def add_test_program(dispatcher: RpcDispatcher) -> None:
    """Serve the test program (version 1) from ``dispatcher``."""
    dispatcher.add_program(RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, TEST_PROCEDURES)


class _Caller(Protocol):
    async def call(self, prog: int, vers: int, proc: int, args: bytes = ...) -> bytes: ...


async def null(client: _Caller) -> None:
    await client.call(RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, PROC_NULL, b"")


async def echo(client: _Caller, data: bytes) -> bytes:
    return decode_opaque(
        await client.call(RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, PROC_ECHO, encode_opaque(data))
    )


async def sink(client: _Caller, data: bytes) -> int:
    res = await client.call(RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, PROC_SINK, encode_opaque(data))
    dec = Decoder(res)
    n = dec.uint32()
    dec.done()
    return n


async def source(client: _Caller, n: int) -> bytes:
    return decode_opaque(await client.call(RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, PROC_SOURCE, _U32.pack(n)))


__all__ = ["RPCLATCH_TEST_PROG", "RPCLATCH_TEST_VERS", "SOURCE_MAX", "XdrError", "add_test_program"]
