"""COMPOUND4args / COMPOUND4res (RFC 7530 §15.2, §16.2; RFC 8881 §16.2).

The request side encodes a list of typed operation arguments; the reply side decodes each
``nfs_resop4`` by its opcode. Evaluation stops at the first failing operation (RFC 7530 §15.2), so
a reply normally has fewer results than the request had operations; :func:`decode_compound_res`
checks that the results answer our operations in order (a result for an operation we did not send,
other than OP_ILLEGAL, is a protocol error).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rpclatch.nfs4 import const as c
from rpclatch.nfs4.const import nfs_opnum4, nfsstat4
from rpclatch.nfs4.errors import Nfs4ProtocolError, Nfs4RemoteError
from rpclatch.nfs4.ops import ARGS_BY_OP, RES_BY_OP, ArgOp, ResOp
from rpclatch.xdr import Decoder, Encoder, XdrError

#: COMPOUND tags are for humans; we bound what we accept.
MAX_TAG = 1024


@dataclass(frozen=True, slots=True)
class COMPOUND4args:
    """``struct COMPOUND4args { utf8str_cs tag; uint32_t minorversion; nfs_argop4 argarray<>; }``."""

    argarray: tuple[ArgOp, ...]
    minorversion: int = 0
    tag: str = ""

    def encode(self) -> bytes:
        enc = Encoder()
        enc.string(self.tag, MAX_TAG).uint32(self.minorversion).uint32(len(self.argarray))
        for op in self.argarray:
            enc.uint32(op.opnum)
            op.encode_into(enc)
        return enc.to_bytes()

    @classmethod
    def decode(cls, data: bytes) -> COMPOUND4args:
        """Decode a request (server side / tests); unknown operations raise XdrError."""
        dec = Decoder(data)
        tag = dec.string(MAX_TAG)
        minor = dec.uint32()

        def one() -> ArgOp:
            op = dec.enum(nfs_opnum4)
            args_cls = ARGS_BY_OP.get(op)
            if args_cls is None:
                raise XdrError(f"operation {op.name} is not supported by this codec")
            return args_cls.decode_from(dec)

        ops = tuple(dec.array(one, c.MAX_COMPOUND_OPS))
        dec.done()
        return cls(ops, minor, tag)

    def opnums(self) -> list[nfs_opnum4]:
        return [op.opnum for op in self.argarray]


@dataclass(frozen=True, slots=True)
class COMPOUND4res:
    """``struct COMPOUND4res { nfsstat4 status; utf8str_cs tag; nfs_resop4 resarray<>; }``."""

    status: nfsstat4
    resarray: tuple[ResOp, ...]
    tag: str = ""

    def encode(self) -> bytes:
        enc = Encoder()
        enc.uint32(self.status).string(self.tag, MAX_TAG).uint32(len(self.resarray))
        for res in self.resarray:
            enc.uint32(res.opnum)
            res.encode_into(enc)
        return enc.to_bytes()

    @classmethod
    def decode(cls, data: bytes, expected: Sequence[nfs_opnum4] | None = None) -> COMPOUND4res:
        """Decode a reply. With ``expected`` (the opcodes we sent), each result must answer the
        operation at its position; raises :class:`Nfs4ProtocolError` (an XdrError) otherwise."""
        dec = Decoder(data)
        try:
            status = dec.enum(nfsstat4)
            tag = dec.string(MAX_TAG)
            n = dec.uint32()
            if n > c.MAX_COMPOUND_OPS or (expected is not None and n > len(expected)):
                raise Nfs4ProtocolError(f"COMPOUND reply has {n} results")
            results: list[ResOp] = []
            for i in range(n):
                op = dec.enum(nfs_opnum4)
                if expected is not None and op != expected[i] and op != nfs_opnum4.OP_ILLEGAL:
                    raise Nfs4ProtocolError(f"result {i} is for {op.name}, we sent {expected[i].name}")
                res_cls = RES_BY_OP.get(op)
                if res_cls is None:
                    raise Nfs4ProtocolError(f"no decoder for results of {op.name}")
                results.append(res_cls.decode_from(dec))
            dec.done()
        except Nfs4ProtocolError:
            raise
        except XdrError as exc:
            raise Nfs4ProtocolError(f"malformed COMPOUND4res: {exc}") from exc
        res = cls(status, tuple(results), tag)
        res._check_status()
        return res

    def _check_status(self) -> None:
        # RFC 7530 §15.2: the COMPOUND status is that of the last evaluated operation.
        if self.resarray and self.resarray[-1].status != self.status:
            raise Nfs4ProtocolError(
                f"COMPOUND status {self.status.name} differs from last result {self.resarray[-1].status.name}"
            )
        for r in self.resarray[:-1]:
            if r.status != nfsstat4.NFS4_OK:
                raise Nfs4ProtocolError(f"evaluation continued after failing {r.opnum.name}")

    def raise_for_status(self, path: str = "") -> None:
        """Raise :class:`Nfs4RemoteError` naming the failing operation, if any."""
        if self.status != nfsstat4.NFS4_OK:
            op = self.resarray[-1].opnum if self.resarray else None
            raise Nfs4RemoteError(self.status, op, path)

    def failed_op(self) -> nfs_opnum4 | None:
        if self.status == nfsstat4.NFS4_OK or not self.resarray:
            return None
        return self.resarray[-1].opnum
