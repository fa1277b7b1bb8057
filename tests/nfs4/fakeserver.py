"""A scripted NFSv4 server for unit tests of the session and the security negotiation.

:class:`FakeServer` answers decoded COMPOUNDs the way a real server would for the few operations
the client's state machinery sends (EXCHANGE_ID, CREATE_SESSION, SEQUENCE with per-slot
seqids, SETCLIENTID, RENEW, SECINFO, ...), over a tree of exports that each accept some flavors.
Faults are scripted: :meth:`FakeServer.restart` forgets every client and session, ``grace``
answers NFS4ERR_GRACE, ``lose_next`` drops a connection after a request went out.
:class:`FakeTransport` is the connection side the session and the negotiation talk to.
"""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rpclatch.nfs4.compound import COMPOUND4args, COMPOUND4res
from rpclatch.nfs4.const import nfsstat4, state_protect_how4
from rpclatch.nfs4.errors import RequestNotSent
from rpclatch.nfs4.ops import (
    RES_BY_OP,
    ArgOp,
    CREATE_SESSION4args,
    CREATE_SESSION4res,
    CREATE_SESSION4resok,
    DESTROY_CLIENTID4args,
    DESTROY_CLIENTID4res,
    DESTROY_SESSION4args,
    DESTROY_SESSION4res,
    EXCHANGE_ID4args,
    EXCHANGE_ID4res,
    EXCHANGE_ID4resok,
    GETFH4args,
    GETFH4res,
    LOOKUP4args,
    LOOKUP4res,
    PUTROOTFH4args,
    PUTROOTFH4res,
    RECLAIM_COMPLETE4args,
    RECLAIM_COMPLETE4res,
    RENEW4args,
    RENEW4res,
    ResOp,
    SECINFO4args,
    SECINFO4res,
    SECINFO_NO_NAME4args,
    SECINFO_NO_NAME4res,
    SEQUENCE4args,
    SEQUENCE4res,
    SEQUENCE4resok,
    SETCLIENTID4args,
    SETCLIENTID4res,
    SETCLIENTID4resok,
    SETCLIENTID_CONFIRM4args,
    SETCLIENTID_CONFIRM4res,
    state_protect4_r,
)
from rpclatch.nfs4.security import ConnectionSecurity, SecFlavor
from rpclatch.nfs4.types import channel_attrs4
from rpclatch.rpc.auth import ClientAuth
from rpclatch.rpc.auth_sys import AuthSysClient
from rpclatch.rpc.errors import RpcConnectionClosed

ALL = (SecFlavor.SYS, SecFlavor.KRB5, SecFlavor.KRB5I, SecFlavor.KRB5P)


@dataclass
class FakeServer:
    """``exports``: path -> flavors accepted there, in the server's order of preference (the
    longest matching prefix applies). ``wrongsec_after_lookup``: a LOOKUP into an export whose
    flavors exclude ours succeeds and the next operation fails (RFC 8881 §2.6.3.1.1.3 lets the
    server do either); otherwise the LOOKUP fails."""

    minorversion: int = 1
    exports: dict[str, tuple[SecFlavor, ...]] = field(default_factory=lambda: {"/": ALL})
    slots: int = 4
    wrongsec_after_lookup: bool = False
    grace: dict[type[ArgOp], int] = field(default_factory=dict)  # op class -> GRACE answers left
    log: list[tuple[tuple[str, ...], SecFlavor]] = field(default_factory=list)
    boots: int = 0
    _clientids: set[int] = field(default_factory=set)
    _next_clientid: int = 100
    _sessions: dict[bytes, list[int]] = field(default_factory=dict)  # sessionid -> last seqid per slot

    def restart(self) -> None:
        """Forget every client ID and session (a reboot without stable storage)."""
        self._clientids.clear()
        self._sessions.clear()
        self.boots += 1

    def flavors_at(self, path: str) -> tuple[SecFlavor, ...]:
        best = max((p for p in self.exports if path == p or path.startswith(p.rstrip("/") + "/")), key=len)
        return self.exports[best]

    def answer(self, args: COMPOUND4args, flavor: SecFlavor) -> COMPOUND4res:
        """Evaluate ``args`` until the first failing operation (RFC 7530 §15.2)."""
        self.log.append((tuple(type(op).__name__.removesuffix("4args") for op in args.argarray), flavor))
        results: list[ResOp] = []
        cwd: str | None = None
        pending_wrongsec = False
        for i, op in enumerate(args.argarray):
            left = self.grace.get(type(op), 0)
            if left:
                self.grace[type(op)] = left - 1
                res: ResOp = _failed(op, nfsstat4.NFS4ERR_GRACE)
            elif pending_wrongsec and not isinstance(op, SECINFO4args | SECINFO_NO_NAME4args):
                res = _failed(op, nfsstat4.NFS4ERR_WRONGSEC)
            elif isinstance(op, SEQUENCE4args):
                res = self._sequence(op, first=i == 0)
            elif isinstance(op, PUTROOTFH4args):
                cwd, res = "/", PUTROOTFH4res(nfsstat4.NFS4_OK)
            elif isinstance(op, LOOKUP4args):
                assert cwd is not None
                cwd = posixpath.join(cwd, op.objname)
                if flavor in self.flavors_at(cwd):
                    res = LOOKUP4res(nfsstat4.NFS4_OK)
                elif self.wrongsec_after_lookup:
                    res, pending_wrongsec = LOOKUP4res(nfsstat4.NFS4_OK), True
                else:
                    res = LOOKUP4res(nfsstat4.NFS4ERR_WRONGSEC)
            elif isinstance(op, SECINFO4args):
                assert cwd is not None
                offered = tuple(f.secinfo() for f in self.flavors_at(posixpath.join(cwd, op.name)))
                res = SECINFO4res(nfsstat4.NFS4_OK, offered)
            elif isinstance(op, SECINFO_NO_NAME4args):
                assert cwd is not None
                res = SECINFO_NO_NAME4res(nfsstat4.NFS4_OK, tuple(f.secinfo() for f in self.flavors_at(cwd)))
            elif isinstance(op, GETFH4args):
                assert cwd is not None
                ok = flavor in self.flavors_at(cwd)
                res = (
                    GETFH4res(nfsstat4.NFS4_OK, cwd.encode()) if ok else GETFH4res(nfsstat4.NFS4ERR_WRONGSEC)
                )
            else:
                res = self._state_op(op)
            results.append(res)
            if res.status != nfsstat4.NFS4_OK:
                return COMPOUND4res(res.status, tuple(results))
        return COMPOUND4res(nfsstat4.NFS4_OK, tuple(results))

    def _sequence(self, op: SEQUENCE4args, *, first: bool) -> ResOp:
        """RFC 8881 §2.10.6.1: a slot's next seqid is one more than the last one processed; the
        same seqid again is a retry (no reply cached here), anything else is misordered."""
        if not first:
            return SEQUENCE4res(nfsstat4.NFS4ERR_SEQUENCE_POS)
        seqids = self._sessions.get(op.sa_sessionid)
        if seqids is None:
            return SEQUENCE4res(nfsstat4.NFS4ERR_BADSESSION)
        if op.sa_slotid >= len(seqids):
            return SEQUENCE4res(nfsstat4.NFS4ERR_BADSLOT)
        last = seqids[op.sa_slotid]
        if op.sa_sequenceid == last:
            return SEQUENCE4res(nfsstat4.NFS4ERR_RETRY_UNCACHED_REP)
        if op.sa_sequenceid != (last + 1) & 0xFFFFFFFF:
            return SEQUENCE4res(nfsstat4.NFS4ERR_SEQ_MISORDERED)
        seqids[op.sa_slotid] = op.sa_sequenceid
        top = len(seqids) - 1
        return SEQUENCE4res(
            nfsstat4.NFS4_OK, SEQUENCE4resok(op.sa_sessionid, op.sa_sequenceid, op.sa_slotid, top, top, 0)
        )

    def _state_op(self, op: ArgOp) -> ResOp:
        if isinstance(op, EXCHANGE_ID4args | SETCLIENTID4args):
            clientid, self._next_clientid = self._next_clientid, self._next_clientid + 1
            self._clientids.add(clientid)
            if isinstance(op, SETCLIENTID4args):
                return SETCLIENTID4res(nfsstat4.NFS4_OK, SETCLIENTID4resok(clientid, b"confirm!"))
            ok = EXCHANGE_ID4resok(
                clientid, 1, 0, state_protect4_r(state_protect_how4.SP4_NONE), 0, b"fake", b""
            )
            return EXCHANGE_ID4res(nfsstat4.NFS4_OK, ok)
        if isinstance(op, SETCLIENTID_CONFIRM4args):
            known = op.clientid in self._clientids
            return SETCLIENTID_CONFIRM4res(nfsstat4.NFS4_OK if known else nfsstat4.NFS4ERR_STALE_CLIENTID)
        if isinstance(op, CREATE_SESSION4args):
            if op.csa_clientid not in self._clientids:
                return CREATE_SESSION4res(nfsstat4.NFS4ERR_STALE_CLIENTID)
            sid = f"session-{self.boots}-{len(self._sessions)}".encode().ljust(16, b".")[:16]
            self._sessions[sid] = [0] * self.slots
            fore = channel_attrs4(0, 1 << 20, 1 << 20, 4096, 16, self.slots)
            back = channel_attrs4(0, 4096, 4096, 0, 2, 1)
            return CREATE_SESSION4res(nfsstat4.NFS4_OK, CREATE_SESSION4resok(sid, 1, 0, fore, back))
        if isinstance(op, RENEW4args):
            known = op.clientid in self._clientids
            return RENEW4res(nfsstat4.NFS4_OK if known else nfsstat4.NFS4ERR_STALE_CLIENTID)
        if isinstance(op, RECLAIM_COMPLETE4args):
            return RECLAIM_COMPLETE4res(nfsstat4.NFS4_OK)
        if isinstance(op, DESTROY_SESSION4args):
            found = self._sessions.pop(op.dsa_sessionid, None) is not None
            return DESTROY_SESSION4res(nfsstat4.NFS4_OK if found else nfsstat4.NFS4ERR_BADSESSION)
        if isinstance(op, DESTROY_CLIENTID4args):
            self._clientids.discard(op.dca_clientid)
            return DESTROY_CLIENTID4res(nfsstat4.NFS4_OK)
        raise AssertionError(f"the fake server does not do {type(op).__name__}")


def _failed(op: ArgOp, status: nfsstat4) -> ResOp:
    return RES_BY_OP[op.opnum](status)


class FakeGssError(Exception):
    """Stands for a GSS-API failure (no ticket, KDC unreachable)."""


class FakeTransport:
    """The connection side of :class:`FakeServer`: encodes and decodes every COMPOUND as the
    real connection does, one distinct ClientAuth per flavor. ``unusable`` flavors fail to
    establish; ``lose_next`` makes the next COMPOUND go out and its connection drop;
    :meth:`drop` closes the connection while idle."""

    def __init__(
        self,
        server: FakeServer,
        allowed: Sequence[SecFlavor] = ALL,
        *,
        unusable: Sequence[SecFlavor] = (),
        prefer_allowed_order: bool = False,
    ) -> None:
        self.server = server
        self.security = ConnectionSecurity(tuple(allowed), prefer_allowed_order=prefer_allowed_order)
        self.unusable = set(unusable)
        self.closed = False
        self.lose_next = 0
        self.reconnects = 0
        self.on_call: Callable[[COMPOUND4args], None] | None = None
        self._auths: dict[SecFlavor, ClientAuth] = {}

    async def auth_for(self, flavor: SecFlavor) -> ClientAuth:
        if flavor in self.unusable:
            raise FakeGssError(f"no credentials for {flavor.value}")
        return self._auths.setdefault(flavor, AuthSysClient.for_current_process())

    def _flavor_of(self, auth: ClientAuth) -> SecFlavor:
        return next(f for f, a in self._auths.items() if a is auth)

    async def compound(self, auth: ClientAuth, args: bytes) -> bytes:
        if self.closed:
            raise RequestNotSent("closed")
        request = COMPOUND4args.decode(args)
        await asyncio.sleep(0)  # let other requests go out before this one is answered
        if self.on_call is not None:
            self.on_call(request)
        reply = self.server.answer(request, self._flavor_of(auth)).encode()
        if self.lose_next:
            self.lose_next -= 1
            self.closed = True
            raise RpcConnectionClosed("connection reset")  # the server did process it
        return reply

    def drop(self) -> None:
        self.closed = True

    async def reconnect(self) -> bool:
        if not self.closed:
            return False
        self.closed = False
        self._auths.clear()
        self.reconnects += 1
        return True
