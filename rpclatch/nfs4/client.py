"""NFSv4.0 / NFSv4.1 client subset over rpclatch's asyncio ONC RPC client.

What it does (RFC 7530 / RFC 8881; sections cited per step):

* setup: 4.0 ``SETCLIENTID`` + ``SETCLIENTID_CONFIRM`` (§16.33-§16.34, an unreachable callback so
  no delegations); 4.1 ``EXCHANGE_ID`` (optionally SP4_MACH_CRED, RFC 8881 §18.35),
  ``CREATE_SESSION`` (no back channel), ``SEQUENCE`` + global ``RECLAIM_COMPLETE`` (§18.51);
* a 4.1 slot table: every COMPOUND starts with ``SEQUENCE`` on a free slot; a slot's sequence id
  advances only when the server processed SEQUENCE (§2.10.6.1); the server's target highest slot
  bounds our concurrency;
* lease renewal: ``RENEW`` (4.0) or a SEQUENCE-only COMPOUND (4.1) when idle for a third of the
  lease;
* ``NFS4ERR_GRACE`` / ``NFS4ERR_DELAY``: the COMPOUND is rebuilt (fresh seqids/slots) and resent
  with exponential backoff up to ``retry_deadline`` seconds;
* security: a connection closed by the server while an RPCSEC_GSS context is set up becomes a
  :class:`Nfs4SecurityError` naming the likely cause (GSS target / the server's keytab);
  ``NFS4ERR_WRONGSEC`` -> ``SECINFO`` (or 4.1 ``SECINFO_NO_NAME`` for a PUT*FH) ->
  retry with the first flavor in the server's preference order that ``--sec`` allows and we can
  establish (RFC 7530 §3.3, §16.31; RFC 8881 §2.6.3.1); the connection itself is set up by a
  :data:`~rpclatch.nfs4.security.ConnectionSecurityHook` (where BYPASS-OR-PROTECT plugs in);
* high-level operations on paths: :meth:`Nfs4Client.stat`, :meth:`~Nfs4Client.listdir`,
  :meth:`~Nfs4Client.read_file` (streamed, pipelined READs), :meth:`~Nfs4Client.write_file`
  (pipelined UNSTABLE WRITEs + COMMIT, write verifiers checked, a changed verifier resends the
  uncommitted window FILE_SYNC), :meth:`~Nfs4Client.remove`, :meth:`~Nfs4Client.mkdir`;
* a lost connection (e.g. reset when a latch broke, or nfsd restarted): a request that finds the
  connection already closed before anything of it was sent (:class:`RequestNotSent`, e.g. the
  first operation after nfsd restarted while we were idle) is sent on a new connection whatever
  it is (OPEN, CREATE, REMOVE too); one whose connection was lost after it was sent is sent again
  only when it is idempotent (READ, WRITE, COMMIT, GETATTR/LOOKUP walks, READDIR, lease
  renewal). The new connection is made through the same hook, with fresh RPCSEC_GSS contexts;
  4.1 slots whose request was lost are re-synced;
* lost server state (restart, expired lease: STALE_CLIENTID, STALE_STATEID, BADSESSION,
  DEADSESSION, EXPIRED): a new client ID / session; files opened before are opened again before
  their next READ / WRITE (4.1: OPEN CLAIM_FH, 4.0: OPEN by name + OPEN_CONFIRM; a new open, not
  a reclaim: we hold no locks or delegations, and OPEN waits out the grace period); a request
  already under way when the state was lost goes on with the anonymous stateid;
* clean close: CLOSE of anything open, ``DESTROY_SESSION`` + ``DESTROY_CLIENTID`` (4.1), GSS
  contexts destroyed, connection closed.

Counters for tests and reports: ``retries`` (by status), ``renewals``, ``reconnects``,
``recoveries``, ``reopens``, ``rewrites``; ``lease_error`` and ``teardown_error`` keep the last such failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import secrets
import socket
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from rpclatch.nfs4 import const as c
from rpclatch.nfs4.compound import COMPOUND4args, COMPOUND4res
from rpclatch.nfs4.const import (
    createmode4,
    nfs_ftype4,
    nfs_opnum4,
    nfsstat4,
    open_claim_type4,
    open_delegation_type4,
    opentype4,
    stable_how4,
    state_protect_how4,
)
from rpclatch.nfs4.errors import (
    Nfs4Error,
    Nfs4LocalError,
    Nfs4ProtocolError,
    Nfs4RemoteError,
    Nfs4SecurityError,
    RequestNotSent,
)
from rpclatch.nfs4.ops import (
    ArgOp,
    CLOSE4args,
    CLOSE4res,
    COMMIT4args,
    COMMIT4res,
    CREATE4args,
    CREATE4res,
    CREATE_SESSION4args,
    CREATE_SESSION4res,
    DELEGRETURN4args,
    DESTROY_CLIENTID4args,
    DESTROY_SESSION4args,
    EXCHANGE_ID4args,
    EXCHANGE_ID4res,
    GETATTR4args,
    GETATTR4res,
    GETFH4args,
    GETFH4res,
    LOOKUP4args,
    OPEN4args,
    OPEN4res,
    OPEN_CONFIRM4args,
    OPEN_CONFIRM4res,
    PUTFH4args,
    PUTROOTFH4args,
    READ4args,
    READ4res,
    READDIR4args,
    READDIR4res,
    RECLAIM_COMPLETE4args,
    REMOVE4args,
    REMOVE4res,
    RENEW4args,
    SECINFO4args,
    SECINFO4res,
    SECINFO_NO_NAME4args,
    SECINFO_NO_NAME4res,
    SEQUENCE4args,
    SEQUENCE4res,
    SETCLIENTID4args,
    SETCLIENTID4res,
    SETCLIENTID_CONFIRM4args,
    WRITE4args,
    WRITE4res,
    createhow4,
    netaddr4,
    open_claim4,
    open_owner4,
    openflag4,
    state_protect4_a,
)
from rpclatch.nfs4.security import (
    ConnectionSecurity,
    ConnectionSecurityHook,
    SecFlavor,
    acceptable_flavors,
    choose_from_secinfo,
    default_connection_security,
)
from rpclatch.nfs4.types import (
    ANONYMOUS_STATEID,
    READ_BYPASS_STATEID,
    STAT_ATTRS,
    Fattr4,
    bitmap_from_attrs,
    channel_attrs4,
    nfs_impl_id4,
    nfstime4,
    secinfo4,
    state_protect_ops4,
    stateid4,
)
from rpclatch.rpc.aio import RpcStreamClient
from rpclatch.rpc.auth import ClientAuth
from rpclatch.rpc.auth_sys import AuthSysClient
from rpclatch.rpc.errors import RpcAuthError, RpcConnectionClosed, RpcError
from rpclatch.rpc.messages import AuthFlavor

log = logging.getLogger(__name__)

#: Statuses that mean "try again later" (RFC 7530 §13.1.1.3 DELAY, §9.14 GRACE).
RETRY_STATUSES = frozenset({nfsstat4.NFS4ERR_DELAY, nfsstat4.NFS4ERR_GRACE})
#: The server no longer knows our client ID / session / stateids (it restarted, or our lease
#: expired): RFC 7530 §9.6.2, RFC 8881 §8.4.2.
STATE_LOST = frozenset(
    {
        nfsstat4.NFS4ERR_STALE_CLIENTID,
        nfsstat4.NFS4ERR_STALE_STATEID,
        nfsstat4.NFS4ERR_BADSESSION,
        nfsstat4.NFS4ERR_DEADSESSION,
        nfsstat4.NFS4ERR_EXPIRED,
    }
)
#: RFC 7530 §9.1.7: the open-owner seqid does NOT advance after these errors.
_SEQID_UNCHANGED = frozenset(
    {
        nfsstat4.NFS4ERR_STALE_CLIENTID,
        nfsstat4.NFS4ERR_STALE_STATEID,
        nfsstat4.NFS4ERR_BAD_STATEID,
        nfsstat4.NFS4ERR_BAD_SEQID,
        nfsstat4.NFS4ERR_BADXDR,
        nfsstat4.NFS4ERR_RESOURCE,
        nfsstat4.NFS4ERR_NOFILEHANDLE,
        nfsstat4.NFS4ERR_MOVED,
    }
)
#: Our callback program number for SETCLIENTID / CREATE_SESSION (we never run the callback).
CB_PROGRAM = 0x40000000
#: Per-request headroom above rsize/wsize for RPC/RPCSEC_GSS headers and the other operations.
REQUEST_OVERHEAD = 2048
MAX_IO = 1024 * 1024
#: Operations SP4_MACH_CRED asks the server to enforce (RFC 8881 §18.35.3, §2.10.8.3).
MACH_CRED_ENFORCE = (
    nfs_opnum4.OP_EXCHANGE_ID,
    nfs_opnum4.OP_CREATE_SESSION,
    nfs_opnum4.OP_DESTROY_SESSION,
    nfs_opnum4.OP_DESTROY_CLIENTID,
    nfs_opnum4.OP_BIND_CONN_TO_SESSION,
)

LISTING_ATTRS = (*STAT_ATTRS, c.FATTR4_RDATTR_ERROR)


# --- results for callers --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileInfo:
    """Attributes of one object, in plain Python types."""

    name: str
    type: nfs_ftype4
    size: int
    mode: int
    nlink: int
    owner: str
    group: str
    fileid: int
    fsid: tuple[int, int]
    change: int
    atime: float
    mtime: float
    ctime: float
    space_used: int
    fh: bytes = b""

    @property
    def is_dir(self) -> bool:
        return self.type == nfs_ftype4.NF4DIR

    @classmethod
    def from_fattr(cls, name: str, a: Fattr4, fh: bytes = b"") -> FileInfo:
        def t(x: nfstime4 | None) -> float:
            return x.as_float() if x is not None else 0.0

        return cls(
            name,
            a.type or nfs_ftype4.NF4REG,
            a.size or 0,
            a.mode or 0,
            a.numlinks or 0,
            a.owner or "",
            a.owner_group or "",
            a.fileid or 0,
            (a.fsid.major, a.fsid.minor) if a.fsid else (0, 0),
            a.change or 0,
            t(a.time_access),
            t(a.time_modify),
            t(a.time_metadata),
            a.space_used or 0,
            fh,
        )


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One READDIR entry; ``info`` is None when the server could not give its attributes
    (``error`` then holds the per-entry rdattr_error, e.g. WRONGSEC for another export)."""

    name: str
    cookie: int
    info: FileInfo | None
    error: nfsstat4 | None = None


def split_path(path: str) -> list[str]:
    """``/a/b/../c`` -> ``["a", "c"]``; NFSv4 paths are resolved from the pseudo-root."""
    norm = posixpath.normpath("/" + path.strip())
    return [p for p in norm.split("/") if p]


# --- internal state --------------------------------------------------------------------------------


@dataclass(eq=False)
class _Slot:
    slotid: int
    seqid: int = 1
    poisoned: bool = False


class _SlotTable:
    """RFC 8881 §2.10.6: one outstanding request per slot; the seqid advances per processed
    SEQUENCE. ``target`` is the server's sr_target_highest_slotid + 1.

    Busy slots are kept as a set of slot ids of the current session. A slot object belongs to
    the table only while ``slots[slot.slotid] is slot``: after :meth:`reset` a request of the old
    session that comes back with its (stale) slot frees nothing, even when a new-session request
    holds the slot with the same id."""

    def __init__(self, nslots: int) -> None:
        self.cond = asyncio.Condition()
        self.reset(nslots)

    def reset(self, nslots: int) -> None:
        """Fresh slots for a new session; slots still out with requests of the old session are
        dropped when they come back (see :meth:`release`)."""
        self.slots = [_Slot(i) for i in range(nslots)]
        self._busy: set[int] = set()
        self.target = nslots

    def _owns(self, slot: _Slot) -> bool:
        return slot.slotid < len(self.slots) and self.slots[slot.slotid] is slot

    def highest_used(self) -> int:
        """The highest slot id with a request out (0 when none): SEQUENCE's sa_highest_slotid."""
        return max(self._busy, default=0)

    async def acquire(self) -> _Slot:
        """The lowest free, unpoisoned slot below ``target``; waits for one to be released."""
        async with self.cond:
            while True:
                for slot in self.slots[: self.target]:
                    if slot.slotid not in self._busy and not slot.poisoned:
                        self._busy.add(slot.slotid)
                        return slot
                if all(s.poisoned for s in self.slots):
                    raise Nfs4LocalError("every session slot is unusable")
                await self.cond.wait()

    async def release(self, slot: _Slot) -> None:
        async with self.cond:
            if self._owns(slot):
                self._busy.discard(slot.slotid)
            self.cond.notify_all()


@dataclass
class _Open:
    """An open file: its filehandle, current open stateid and (4.0) open-owner seqid."""

    fh: bytes
    stateid: stateid4
    owner: open_owner4
    seqid: int
    delegation: stateid4 | None
    attrs: Fattr4
    epoch: int = 0  # the client's state epoch when opened (see Nfs4Client._recover_state)
    path: str = ""  # as opened (NFSv4.0 opens again by name after the server lost our state)
    write: bool = False
    reopening: asyncio.Lock = field(default_factory=asyncio.Lock)


class Nfs4Client:
    """An NFSv4.0 or 4.1 client on one TCP connection. Create with :meth:`connect`; use as an
    async context manager or call :meth:`close`."""

    def __init__(
        self,
        rpc: RpcStreamClient,
        host: str,
        *,
        minorversion: int,
        sec: str,
        security: ConnectionSecurity,
        gss_target: str | None = None,
        retry_deadline: float = 120.0,
        state_protect: bool = False,
        client_name: str | None = None,
        gss_provider: Any = None,
        port: int = c.NFS4_PORT,
        security_hook: ConnectionSecurityHook = default_connection_security,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        auto_reconnect: bool = True,
    ) -> None:
        if minorversion not in (0, 1):
            raise ValueError("minorversion must be 0 or 1")
        self.rpc = rpc
        self.host = host
        self.port = port
        self.security_hook = security_hook
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.auto_reconnect = auto_reconnect
        self.reconnects = 0  # connections re-made after the transport was lost
        self.recoveries = 0  # client IDs / sessions re-made after the server lost our state
        self.reopens = 0  # open files opened again after the server lost our state
        self._epoch = 0  # bumped by each recovery: older open stateids are void
        self._closing = False  # close() started: no reconnecting just to tear down
        self._state_lock = asyncio.Lock()
        self._reconnect_lock = asyncio.Lock()
        self.minorversion = minorversion
        self.sec = sec
        self.security = security
        self.allowed: tuple[SecFlavor, ...] = security.allowed
        self.gss_target = gss_target or f"nfs@{host}"
        self.retry_deadline = retry_deadline
        self.state_protect = state_protect
        self.client_name = client_name or (
            f"rpclatch/{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
        )
        self._gss_provider = gss_provider
        self._auths: dict[SecFlavor, ClientAuth] = {}
        self.flavor: SecFlavor | None = None  # data flavor (file operations)
        self.machine_flavor: SecFlavor | None = None  # flavor of the client ID / session
        self.clientid = 0
        self.sessionid = b""
        self.slots: _SlotTable | None = None
        self.lease_time = 90
        self.rsize = 65536
        self.wsize = 65536
        self.fore_attrs: channel_attrs4 | None = None
        self.exchange_flags = 0
        self.state_protect_how = state_protect_how4.SP4_NONE
        self._last_renewal = 0.0
        self._renew_task: asyncio.Task[None] | None = None
        self._opens: set[int] = set()
        self._open_files: dict[int, _Open] = {}
        self._owner_counter = 0
        self.lease_error: Exception | None = None
        self.renewals = 0  # lease renewals sent by the idle loop or renew()
        self.retries: dict[str, int] = {}  # GRACE/DELAY retries by status name
        self.rewrites = 0  # uncommitted windows written again after a write-verifier change
        self.teardown_error: Exception | None = None  # what went wrong in close(), if anything
        self.closed = False

    # ---- construction ------------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        host: str,
        *,
        port: int = c.NFS4_PORT,
        minorversion: int = 1,
        sec: str = "auto",
        gss_target: str | None = None,
        security_hook: ConnectionSecurityHook = default_connection_security,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        retry_deadline: float = 120.0,
        state_protect: bool = False,
        client_name: str | None = None,
        gss_provider: Any = None,
    ) -> Nfs4Client:
        """Connect, establish the client ID (4.0) or session (4.1) and settle the root's flavor.

        ``sec``: ``auto`` (the server's SECINFO preference among what we support) or one of
        ``sys``, ``krb5``, ``krb5i``, ``krb5p`` (only that one). ``gss_target``: the server's GSS
        host-based service name (default ``nfs@HOST``). ``security_hook`` decides the connection's
        socket and flavors (see :mod:`rpclatch.nfs4.security`). ``state_protect``: ask for
        SP4_MACH_CRED (4.1, needs krb5i/krb5p). ``gss_provider``: a ``rpclatch.gss.provider.Provider``
        (default python-gssapi with the default credential cache).
        """
        security = await security_hook(host, port, sec)
        rpc = await RpcStreamClient.connect_tcp(
            host, port, timeout=timeout, connect_timeout=connect_timeout, sock=security.sock
        )
        client = cls(
            rpc,
            host,
            minorversion=minorversion,
            sec=sec,
            security=security,
            gss_target=gss_target,
            retry_deadline=retry_deadline,
            state_protect=state_protect,
            client_name=client_name,
            gss_provider=gss_provider,
            port=port,
            security_hook=security_hook,
            timeout=timeout,
            connect_timeout=connect_timeout,
        )
        try:
            await client._setup()
        except BaseException:
            await client._abort()
            raise
        return client

    async def __aenter__(self) -> Nfs4Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- RPC and security --------------------------------------------------------------------------

    async def _rpc_call(self, auth: ClientAuth, proc: int, args: bytes) -> bytes:
        rpc = self.rpc
        if rpc.closed:  # checked and sent in one step of the event loop: nothing went out
            raise RequestNotSent("the connection was closed before the request was sent")
        return await rpc.call(c.NFS4_PROGRAM, c.NFS_V4, proc, args, auth=auth)

    async def null(self) -> None:
        """NFSPROC4_NULL with AUTH_NONE (a reachability check)."""
        await self.rpc.call(c.NFS4_PROGRAM, c.NFS_V4, c.NFSPROC4_NULL, b"")

    async def _auth_for(self, flavor: SecFlavor) -> ClientAuth:
        """The (cached) ClientAuth of ``flavor``; GSS contexts are established here (v2 first,
        v1 fallback inside the flavor), and bound to the connection's channel when there is one."""
        auth = self._auths.get(flavor)
        if auth is not None:
            return auth
        if flavor is SecFlavor.SYS:
            auth = AuthSysClient.for_current_process()
        else:
            from rpclatch.gss.client import GssClientAuth
            from rpclatch.gss.provider import GssapiProvider

            if self._gss_provider is None:
                self._gss_provider = GssapiProvider()
            service = flavor.service
            assert service is not None  # every flavor but SYS is a Kerberos V5 one
            gss = GssClientAuth(self._gss_provider, self.gss_target, service=service)
            try:
                await gss.establish(self._rpc_call)
            except RequestNotSent:
                raise  # an ordinary lost connection, found before the INIT went out
            except RpcConnectionClosed as exc:
                # Linux nfsd (gssproxy) closes the connection without a reply when it cannot
                # accept the INIT token, typically a principal that is not in its keytab
                raise Nfs4SecurityError(
                    "server closed the connection during RPCSEC_GSS context setup: check the GSS "
                    f"target (--gss-target nfs@HOST, now {self.gss_target}) and the server's "
                    "keytab",
                    "",
                    (flavor.value,),
                ) from exc
            if self.security.channel is not None:
                try:
                    await gss.bind_channel(self._rpc_call, self.security.channel)
                except Exception as exc:  # binding is an upgrade; the flavor still protects
                    log.warning("RPCSEC_GSS channel binding failed (%s); using %s", exc, flavor.value)
            auth = gss
        self._auths[flavor] = auth
        return auth

    async def _call_with(self, auth: ClientAuth, args: bytes) -> bytes:
        call = getattr(auth, "call", None)
        if call is not None and getattr(auth, "flavor", None) == AuthFlavor.RPCSEC_GSS:
            # RPCSEC_GSS: the flavor's own call() refreshes an expired context once.
            result: bytes = await call(self._rpc_call, c.NFSPROC4_COMPOUND, args)
            return result
        return await self._rpc_call(auth, c.NFSPROC4_COMPOUND, args)

    async def _switch_to(
        self, candidates: Sequence[SecFlavor], path: str, *, server_requires: bool = True
    ) -> SecFlavor:
        """Use the first candidate we can establish; Kerberos failures move on to the next."""
        last: Exception | None = None
        for flavor in candidates:
            try:
                await self._auth_for(flavor)
            except RpcAuthError as exc:  # the server refused the GSS context
                log.info("cannot use %s: %s", flavor.value, exc)
                last = exc
                continue
            except (RpcError, Nfs4Error, OSError):
                raise
            except Exception as exc:  # GssError and friends: no ticket, no KDC, wrong principal
                log.info("cannot use %s: %s", flavor.value, exc)
                last = exc
                continue
            if flavor is not self.flavor:
                log.info("using %s for %s", flavor.value, path or "/")
            self.flavor = flavor
            return flavor
        names = " or ".join(f.value for f in candidates)
        if server_requires:
            what = f"server requires {names} for {path or '/'}"
        elif self.sec == "auto":
            what = f"--sec auto allows only {names} on this connection"
        else:
            what = f"--sec {names}"
        hint = " or use --sec sys" if self.sec == "auto" and SecFlavor.SYS not in candidates else ""
        raise Nfs4SecurityError(
            f"{what} but Kerberos failed ({last}); get a ticket with kinit "
            f"(or set KRB5CCNAME / KRB5_CLIENT_KTNAME){hint}",
            path,
            tuple(f.value for f in candidates),
        ) from last

    # ---- COMPOUND with SEQUENCE, retries ----------------------------------------------------------

    async def _compound_once(self, ops: Sequence[ArgOp], auth: ClientAuth, sequence: bool) -> COMPOUND4res:
        """One COMPOUND RPC. For 4.1 with ``sequence`` a SEQUENCE on a free slot is prepended and
        its result stripped (a failing SEQUENCE raises :class:`Nfs4RemoteError`)."""
        if self.minorversion == 0 or not sequence:
            comp = COMPOUND4args(tuple(ops), self.minorversion)
            res = COMPOUND4res.decode(await self._call_with(auth, comp.encode()), comp.opnums())
            if self.minorversion == 1 or (res.status == nfsstat4.NFS4_OK and _renews_v40_lease(ops)):
                self._last_renewal = time.monotonic()
            return res
        table = self.slots
        if table is None:
            raise Nfs4LocalError("no NFSv4.1 session")
        slot = await table.acquire()
        try:
            seq = SEQUENCE4args(
                self.sessionid, slot.seqid, slot.slotid, max(table.highest_used(), slot.slotid), False
            )
            comp = COMPOUND4args((seq, *ops), 1)
            try:
                raw = await self._call_with(auth, comp.encode())
            except RequestNotSent:
                raise  # the server never saw this seqid: the slot stays usable as it is
            except BaseException:
                slot.poisoned = True  # unknown whether the server saw this seqid
                raise
            try:
                res = COMPOUND4res.decode(raw, comp.opnums())
            except Nfs4ProtocolError:
                slot.poisoned = True
                raise
            if not res.resarray or not isinstance(res.resarray[0], SEQUENCE4res):
                raise Nfs4ProtocolError("COMPOUND reply without SEQUENCE result")
            seq_res = res.resarray[0]
            if seq_res.status != nfsstat4.NFS4_OK:
                raise Nfs4RemoteError(seq_res.status, nfs_opnum4.OP_SEQUENCE)
            ok = seq_res.ok()
            slot.seqid = (slot.seqid + 1) & 0xFFFFFFFF
            table.target = max(1, min(len(table.slots), ok.sr_target_highest_slotid + 1))
            self._last_renewal = time.monotonic()
            if ok.sr_status_flags & (
                c.SEQ4_STATUS_EXPIRED_ALL_STATE_REVOKED | c.SEQ4_STATUS_ADMIN_STATE_REVOKED
            ):
                log.warning("server reports revoked state (sr_status_flags %#x)", ok.sr_status_flags)
            return COMPOUND4res(res.status, res.resarray[1:], res.tag)
        finally:
            await table.release(slot)

    async def _compound(
        self,
        build: Callable[[], Sequence[ArgOp]],
        *,
        flavor: SecFlavor | None = None,
        sequence: bool = True,
        retry: bool = True,
        idempotent: bool = False,
    ) -> COMPOUND4res:
        """Run the COMPOUND ``build()`` returns (with ``flavor``, default the data flavor),
        rebuilding and resending it on GRACE/DELAY with exponential backoff (0.1 s doubling to
        2 s) until ``retry_deadline``. A COMPOUND that found the connection closed before it was
        sent (:class:`RequestNotSent`), or an ``idempotent`` one whose connection was lost, is
        sent on a new connection (:meth:`reconnect`), at most twice; the state recovery that
        follows (the server restarted: new client ID / session) happens on the way."""
        deadline = time.monotonic() + self.retry_deadline
        delay = 0.1
        reconnects = recoveries = 0
        while True:
            epoch = self._epoch
            try:
                auth = await self._auth_for(flavor or self.flavor or SecFlavor.SYS)
                res = await self._compound_once(build(), auth, sequence)
                status = res.status
            except Nfs4RemoteError as exc:  # a failing SEQUENCE
                if exc.status in STATE_LOST and sequence and recoveries < 2:
                    recoveries += 1
                    await self._recover_state(epoch, exc.status)
                    continue
                if exc.status not in RETRY_STATUSES:
                    raise
                status, res = exc.status, None
            except RpcConnectionClosed as exc:
                safe = idempotent or isinstance(exc, RequestNotSent)
                if (
                    not (safe and self.auto_reconnect and not self.closed and not self._closing)
                    or reconnects >= 2
                ):
                    raise
                reconnects += 1
                await self.reconnect()
                continue
            if (
                status in STATE_LOST
                and sequence
                and recoveries < 2
                and self.minorversion == 0
                and not self.closed
            ):
                recoveries += 1
                await self._recover_state(epoch, status)
                continue
            if not retry or status not in RETRY_STATUSES or time.monotonic() + delay > deadline:
                if res is None:
                    raise Nfs4RemoteError(status, nfs_opnum4.OP_SEQUENCE)
                return res
            log.info("server answered %s; retrying in %.1f s", status.name, delay)
            self.retries[status.name] = self.retries.get(status.name, 0) + 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def reconnect(self) -> None:
        """Make a new connection through the security hook after the old one was lost (e.g. a
        latch went BROKEN and the connection was reset), with fresh RPCSEC_GSS contexts (a handle
        bound to the old channel must not follow us). The client ID / session live on: 4.1 slots
        whose last request was lost are re-synchronised first (RFC 8881 §2.10.6.2)."""
        async with self._reconnect_lock:
            if not self.rpc.closed:
                return  # another task already reconnected
            log.warning("connection to %s:%d lost; reconnecting", self.host, self.port)
            old = self._auths
            self._auths = {}
            for auth in old.values():
                with contextlib.suppress(Exception):
                    auth.close()
            with contextlib.suppress(Exception):
                await self.rpc.close()
            deadline = time.monotonic() + self.retry_deadline
            delay = 0.2
            while True:  # the server may be restarting: retry refused connections for a while
                self.security = await self.security_hook(self.host, self.port, self.sec)
                self.allowed = self.security.allowed
                try:
                    self.rpc = await RpcStreamClient.connect_tcp(
                        self.host,
                        self.port,
                        timeout=self.timeout,
                        connect_timeout=self.connect_timeout,
                        sock=self.security.sock,
                    )
                    break
                except OSError as exc:
                    if time.monotonic() + delay > deadline:
                        raise
                    log.info(
                        "reconnect to %s:%d failed (%s); again in %.1f s", self.host, self.port, exc, delay
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
            self.reconnects += 1
            if self.minorversion == 1 and self.slots is not None:
                for slot in self.slots.slots:
                    if slot.poisoned:
                        await self._resync_slot(slot)

    async def _recover_state(self, epoch: int, status: nfsstat4) -> None:
        """The server lost our state (e.g. it restarted): make a new client ID (4.0) or client ID
        + session (4.1). We reclaim nothing (no locks, no delegations); files opened before go on
        with the anonymous stateid (RFC 7530 §9.1.4.3) and are not CLOSEd."""
        async with self._state_lock:
            if self._epoch != epoch:
                return  # another task recovered already
            log.warning("server lost our state (%s): establishing a new client ID", status.name)
            if self.minorversion == 0:
                await self._setclientid()
            else:
                await self._create_session()
            self._epoch += 1
            self.recoveries += 1

    def _stateid(self, f: _Open) -> stateid4:
        return f.stateid if f.epoch == self._epoch else ANONYMOUS_STATEID

    async def _ensure_open(self, f: _Open) -> None:
        """Open ``f`` again when the server lost our state since it was opened (RFC 8881
        §8.4.2.1, RFC 7530 §9.6.2: without reclaiming, a client opens afresh), so that READ and
        WRITE go on under a real open (its share reservation held again) instead of the
        anonymous stateid. One reopen per file, however many READs / WRITEs wait for it."""
        if f.epoch == self._epoch or self.closed or self._closing:
            return
        async with f.reopening:
            epoch = self._epoch
            if f.epoch == epoch:
                return
            if self.minorversion == 1:
                access = (
                    c.OPEN4_SHARE_ACCESS_WRITE if f.write else c.OPEN4_SHARE_ACCESS_READ
                ) | c.OPEN4_SHARE_ACCESS_WANT_NO_DELEG
                owner = self._new_owner()
                res = await self._compound(
                    lambda: [
                        PUTFH4args(f.fh),
                        OPEN4args(
                            0,
                            access,
                            c.OPEN4_SHARE_DENY_NONE,
                            owner,
                            openflag4(opentype4.OPEN4_NOCREATE),
                            open_claim4(open_claim_type4.CLAIM_FH),
                        ),
                    ]
                )
                res.raise_for_status(f.path)
                op = res.resarray[-1]
                assert isinstance(op, OPEN4res)
                ok = op.ok()
                stateid, seqid = ok.stateid, 1
            else:
                fresh = await self._open(f.path, write=f.write, create=False)
                self._open_files.pop(id(fresh), None)
                if fresh.fh != f.fh:  # another file by that name now: do not mix them up
                    with contextlib.suppress(Nfs4Error, RpcError):
                        await self._close(fresh)
                    raise Nfs4RemoteError(nfsstat4.NFS4ERR_STALE, nfs_opnum4.OP_OPEN, f.path)
                owner, stateid, seqid, epoch = fresh.owner, fresh.stateid, fresh.seqid, fresh.epoch
            f.owner, f.stateid, f.seqid, f.delegation = owner, stateid, seqid, None
            f.epoch = epoch  # a recovery while we reopened leaves it stale: reopened next time
            self.reopens += 1
            log.info("reopened %s after the server lost our state", f.path or "a file")

    async def _resync_slot(self, slot: _Slot) -> None:
        """Send a lone SEQUENCE with the slot's current seqid: if the lost request had reached the
        server it answers as a retry (RETRY_UNCACHED_REP / SEQ_FALSE_RETRY), else it processes this
        one; either way we then know the next seqid."""
        auth = await self._auth_for(self.machine_flavor or SecFlavor.SYS)
        table = self.slots
        assert table is not None
        for _ in range(3):
            comp = COMPOUND4args(
                (
                    SEQUENCE4args(
                        self.sessionid, slot.seqid, slot.slotid, max(table.highest_used(), slot.slotid), False
                    ),
                ),
                1,
            )
            res = COMPOUND4res.decode(await self._call_with(auth, comp.encode()), comp.opnums())
            status = res.resarray[0].status if res.resarray else res.status
            if status == nfsstat4.NFS4_OK:
                slot.seqid = (slot.seqid + 1) & 0xFFFFFFFF
                slot.poisoned = False
                return
            if status in (
                nfsstat4.NFS4ERR_RETRY_UNCACHED_REP,
                nfsstat4.NFS4ERR_SEQ_FALSE_RETRY,
                nfsstat4.NFS4ERR_SEQ_MISORDERED,
            ):
                slot.seqid = (slot.seqid + 1) & 0xFFFFFFFF
                continue
            log.warning("slot %d stays unusable after reconnect: %s", slot.slotid, status.name)
            return

    # ---- setup ----------------------------------------------------------------------------------------

    async def _setup(self) -> None:
        # The client ID / session use the strongest flavor we can establish among those allowed
        # (krb5i preferred: state-management ops deserve integrity, RFC 8881 §2.10.8.3), else sys.
        order = [
            f for f in (SecFlavor.KRB5I, SecFlavor.KRB5P, SecFlavor.KRB5, SecFlavor.SYS) if f in self.allowed
        ]
        self.machine_flavor = await self._switch_to(order, "/", server_requires=False)
        if self.minorversion == 0:
            await self._setclientid()
        else:
            await self._create_session()
        await self._settle_root()
        self._renew_task = asyncio.get_running_loop().create_task(self._renew_loop())

    async def _setclientid(self) -> None:
        """RFC 7530 §16.33-§16.34 with a callback nobody listens on (no delegations)."""
        auth = self.machine_flavor
        verifier = secrets.token_bytes(8)
        res = await self._compound(
            lambda: [
                SETCLIENTID4args(
                    verifier, self.client_name.encode(), CB_PROGRAM, netaddr4("tcp", "0.0.0.0.0.0"), 1
                )
            ],
            flavor=auth,
            sequence=False,
        )
        res.raise_for_status()
        sc = res.resarray[0]
        assert isinstance(sc, SETCLIENTID4res)
        ok = sc.ok()
        res = await self._compound(
            lambda: [SETCLIENTID_CONFIRM4args(ok.clientid, ok.setclientid_confirm)],
            flavor=auth,
            sequence=False,
        )
        res.raise_for_status()
        self.clientid = ok.clientid

    async def _create_session(self) -> None:
        """RFC 8881 §18.35, §18.36, §18.51."""
        auth = self.machine_flavor
        protect = state_protect4_a(state_protect_how4.SP4_NONE)
        if self.state_protect:
            if self.machine_flavor not in (SecFlavor.KRB5I, SecFlavor.KRB5P):
                raise Nfs4SecurityError("SP4_MACH_CRED needs krb5i or krb5p (RFC 8881 §18.35.3)")
            protect = state_protect4_a(
                state_protect_how4.SP4_MACH_CRED, state_protect_ops4(bitmap_from_attrs(MACH_CRED_ENFORCE), ())
            )
        impl = (nfs_impl_id4("rpclatch.test", "rpclatch", nfstime4(0, 0)),)
        verifier = secrets.token_bytes(8)
        res = await self._compound(
            lambda: [EXCHANGE_ID4args(verifier, self.client_name.encode(), 0, protect, impl)],
            flavor=auth,
            sequence=False,
        )
        res.raise_for_status()
        ex = res.resarray[0]
        assert isinstance(ex, EXCHANGE_ID4res)
        eir = ex.ok()
        self.clientid = eir.eir_clientid
        self.exchange_flags = eir.eir_flags
        self.state_protect_how = eir.eir_state_protect.spr_how
        fore = channel_attrs4(0, MAX_IO + REQUEST_OVERHEAD * 4, MAX_IO + REQUEST_OVERHEAD * 4, 4096, 16, 16)
        back = channel_attrs4(0, 4096, 4096, 0, 2, 1)
        res = await self._compound(
            lambda: [CREATE_SESSION4args(eir.eir_clientid, eir.eir_sequenceid, 0, fore, back, CB_PROGRAM)],
            flavor=auth,
            sequence=False,
        )
        res.raise_for_status()
        cs = res.resarray[0]
        assert isinstance(cs, CREATE_SESSION4res)
        csr = cs.ok()
        self.sessionid = csr.csr_sessionid
        self.fore_attrs = csr.csr_fore_chan_attrs
        nslots = max(1, min(16, csr.csr_fore_chan_attrs.ca_maxrequests))
        if self.slots is None:
            self.slots = _SlotTable(nslots)
        else:  # a new session after the server lost ours: waiters keep using this table
            self.slots.reset(nslots)
        res = await self._compound(lambda: [RECLAIM_COMPLETE4args(False)], flavor=auth)
        if res.status not in (nfsstat4.NFS4_OK, nfsstat4.NFS4ERR_COMPLETE_ALREADY):
            res.raise_for_status()

    async def _settle_root(self) -> None:
        """Pick the data flavor for the root (4.1: SECINFO_NO_NAME, RFC 8881 §18.45; 4.0: try the
        allowed flavors, RFC 7530 §16.31.5 gives no SECINFO for the root) and read the lease time
        and transfer sizes."""
        if self.minorversion == 1:
            res = await self._compound(lambda: [PUTROOTFH4args(), SECINFO_NO_NAME4args()])
            if res.status == nfsstat4.NFS4_OK:
                sec = res.resarray[-1]
                assert isinstance(sec, SECINFO_NO_NAME4res)
                await self._adopt_secinfo(sec.ok(), "/")
        elif self.security.prefer_allowed_order and self.allowed and self.flavor is not self.allowed[0]:
            # 4.0 has no SECINFO for the root: the hook's order picks the data flavor (the
            # GETATTR below falls back on WRONGSEC)
            await self._switch_to(self.allowed, "/", server_requires=False)
        attrs = (c.FATTR4_TYPE, c.FATTR4_LEASE_TIME, c.FATTR4_MAXREAD, c.FATTR4_MAXWRITE)

        def build() -> list[ArgOp]:
            return [PUTROOTFH4args(), GETFH4args(), GETATTR4args(bitmap_from_attrs(attrs))]

        res = await self._compound(build)
        if res.status == nfsstat4.NFS4ERR_WRONGSEC:
            await self._guess_root_flavor(build)
            res = await self._compound(build)
        res.raise_for_status("/")
        ga = res.resarray[2]
        assert isinstance(ga, GETATTR4res)
        a = ga.ok()
        self.lease_time = a.lease_time or 90
        limit = MAX_IO
        if self.fore_attrs is not None:
            limit = min(
                limit,
                self.fore_attrs.ca_maxresponsesize - REQUEST_OVERHEAD,
                self.fore_attrs.ca_maxrequestsize - REQUEST_OVERHEAD,
            )
        self.rsize = _io_size(min(a.maxread or 65536, limit))
        self.wsize = _io_size(min(a.maxwrite or 65536, limit))

    async def _guess_root_flavor(self, build: Callable[[], Sequence[ArgOp]]) -> None:
        for flavor in self.allowed:
            if flavor is self.flavor:
                continue
            try:
                await self._auth_for(flavor)
            except (RpcError, Nfs4Error):
                raise
            except Exception as exc:
                log.info("cannot use %s: %s", flavor.value, exc)
                continue
            res = await self._compound(build, flavor=flavor)
            if res.status != nfsstat4.NFS4ERR_WRONGSEC:
                self.flavor = flavor
                return
        raise Nfs4SecurityError(
            f"server refuses {', '.join(f.value for f in self.allowed)} for / "
            f"(NFS4ERR_WRONGSEC); rerun with another --sec or --sec auto",
            "/",
        )

    async def _adopt_secinfo(self, offered: Sequence[secinfo4], path: str) -> None:
        prefer = self.security.prefer_allowed_order
        choose_from_secinfo(
            offered, self.allowed, path=path, sec=self.sec, prefer_allowed_order=prefer
        )  # raises with advice
        candidates = acceptable_flavors(offered, self.allowed, prefer_allowed_order=prefer)
        if self.flavor in candidates and self.sec != "auto":
            return
        await self._switch_to(candidates, path)

    # ---- lease -----------------------------------------------------------------------------------

    async def _renew_loop(self) -> None:
        """Keep the lease alive while idle (RFC 7530 §9.5 RENEW; RFC 8881 §8.3 SEQUENCE)."""
        period = max(1.0, self.lease_time / 3)
        while not self.closed:
            await asyncio.sleep(period / 2)
            if time.monotonic() - self._last_renewal < period:
                continue
            try:
                await self.renew()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.lease_error = exc
                log.warning("lease renewal failed: %s", exc)
                if self.rpc.closed:  # nothing more to renew on this connection
                    return

    async def renew(self) -> None:
        """One lease renewal now: RENEW (4.0) or a SEQUENCE-only COMPOUND (4.1)."""
        if self.minorversion == 0:
            res = await self._compound(
                lambda: [RENEW4args(self.clientid)], flavor=self.machine_flavor, idempotent=True
            )
        else:
            res = await self._compound(lambda: [], idempotent=True)
        res.raise_for_status()
        self.renewals += 1

    # ---- paths and WRONGSEC --------------------------------------------------------------------------

    async def _on_path(
        self,
        path: str,
        tail: Callable[[], Sequence[ArgOp]],
        upto: int | None = None,
        idempotent: bool = False,
    ) -> tuple[COMPOUND4res, int]:
        """Run {PUTROOTFH, LOOKUP each component (of the first ``upto``), tail...}, negotiating the
        flavor on WRONGSEC (at most 4 times). Returns the reply (status not checked) and the index
        of the first tail result."""
        comps = split_path(path)[:upto] if upto is not None else split_path(path)

        def build() -> list[ArgOp]:
            return [PUTROOTFH4args(), *(LOOKUP4args(x) for x in comps), *tail()]

        for _ in range(4):
            ops = build()
            res = await self._compound(build, idempotent=idempotent)
            if res.status != nfsstat4.NFS4ERR_WRONGSEC:
                return res, len(comps) + 1
            k = len(res.resarray) - 1
            await self._negotiate(ops, k, comps)
        raise Nfs4SecurityError(f"security negotiation for {path} did not settle", path)

    async def _negotiate(self, ops: Sequence[ArgOp], k: int, comps: list[str]) -> None:
        """WRONGSEC at operation ``k``: find the component it is about and ask SECINFO for it."""
        culprit: int | None = None  # index into comps; None = the root filehandle
        if isinstance(ops[k], LOOKUP4args):
            culprit = k - 1
        elif k > 0 and isinstance(ops[k - 1], LOOKUP4args):
            culprit = k - 2
        elif not isinstance(ops[k], PUTROOTFH4args) and not isinstance(
            ops[k - 1] if k else None, PUTROOTFH4args
        ):
            raise Nfs4SecurityError(f"NFS4ERR_WRONGSEC at {ops[k].opnum.name}", "/" + "/".join(comps))
        if culprit is None:
            path = "/"
            if self.minorversion == 0:
                await self._guess_root_flavor(lambda: [PUTROOTFH4args(), GETFH4args()])
                return
            res = await self._compound(lambda: [PUTROOTFH4args(), SECINFO_NO_NAME4args()])
        else:
            parent, name = comps[:culprit], comps[culprit]
            path = "/" + "/".join(comps[: culprit + 1])

            def build() -> list[ArgOp]:
                return [PUTROOTFH4args(), *(LOOKUP4args(x) for x in parent), SECINFO4args(name)]

            res = await self._compound(build)
        res.raise_for_status(path)
        sec = res.resarray[-1]
        assert isinstance(sec, SECINFO4res)
        await self._adopt_secinfo(sec.ok(), path)

    # ---- high-level operations ---------------------------------------------------------------------

    async def lookup(self, path: str) -> bytes:
        """The filehandle of ``path``."""
        res, i = await self._on_path(path, lambda: [GETFH4args()], idempotent=True)
        res.raise_for_status(path)
        fh = res.resarray[i]
        assert isinstance(fh, GETFH4res)
        return fh.ok()

    async def stat(self, path: str) -> FileInfo:
        """Attributes of ``path`` (type, size, mode, owner, owner_group, times, fsid, fileid)."""
        res, i = await self._on_path(
            path, lambda: [GETFH4args(), GETATTR4args(bitmap_from_attrs(STAT_ATTRS))], idempotent=True
        )
        res.raise_for_status(path)
        fh, ga = res.resarray[i], res.resarray[i + 1]
        assert isinstance(fh, GETFH4res) and isinstance(ga, GETATTR4res)
        comps = split_path(path)
        return FileInfo.from_fattr(comps[-1] if comps else "/", ga.ok(), fh.ok())

    async def listdir(self, path: str) -> list[DirEntry]:
        """Every entry of the directory ``path`` with its attributes (READDIR until eof)."""
        fh = await self.lookup(path)
        entries: list[DirEntry] = []
        cookie, verf = 0, bytes(8)
        while True:
            args = READDIR4args(cookie, verf, 8192, 32768, bitmap_from_attrs(LISTING_ATTRS))
            res = await self._compound(
                lambda a=args: [PUTFH4args(fh), a],  # type: ignore[misc]
                idempotent=True,
            )
            res.raise_for_status(path)
            rd = res.resarray[-1]
            assert isinstance(rd, READDIR4res)
            ok = rd.ok()
            for e in ok.entries:
                err = e.attrs.rdattr_error
                if err not in (None, nfsstat4.NFS4_OK):
                    entries.append(DirEntry(e.name, e.cookie, None, err))
                else:
                    entries.append(DirEntry(e.name, e.cookie, FileInfo.from_fattr(e.name, e.attrs)))
            if ok.eof or not ok.entries:
                return entries
            cookie, verf = ok.entries[-1].cookie, ok.cookieverf

    def _new_owner(self) -> open_owner4:
        self._owner_counter += 1
        return open_owner4(self.clientid, f"{self.client_name}/{self._owner_counter}".encode())

    async def _open(self, path: str, *, write: bool, mode: int = 0o644, create: bool = True) -> _Open:
        """OPEN by name in the parent directory (CLAIM_NULL); NFSv4.0 confirms a new owner.
        ``write`` opens for writing, creating or truncating the file unless ``create`` is False."""
        comps = split_path(path)
        if not comps:
            raise Nfs4RemoteError(nfsstat4.NFS4ERR_ISDIR, nfs_opnum4.OP_OPEN, path)
        name = comps[-1]
        access = c.OPEN4_SHARE_ACCESS_WRITE if write else c.OPEN4_SHARE_ACCESS_READ
        if self.minorversion == 1:
            access |= c.OPEN4_SHARE_ACCESS_WANT_NO_DELEG  # we have no back channel
        how = (
            openflag4(opentype4.OPEN4_CREATE, createhow4(createmode4.UNCHECKED4, Fattr4(size=0, mode=mode)))
            if write and create
            else openflag4(opentype4.OPEN4_NOCREATE)
        )
        owner_box: list[open_owner4] = []

        def tail() -> list[ArgOp]:
            owner = self._new_owner()  # a fresh owner each attempt: its seqid starts at 0
            owner_box.append(owner)
            return [
                OPEN4args(
                    0,
                    access,
                    c.OPEN4_SHARE_DENY_NONE,
                    owner,
                    how,
                    open_claim4(open_claim_type4.CLAIM_NULL, name),
                ),
                GETFH4args(),
                GETATTR4args(bitmap_from_attrs((c.FATTR4_TYPE, c.FATTR4_SIZE, c.FATTR4_CHANGE))),
            ]

        res, i = await self._on_path(path, tail, upto=len(comps) - 1)
        res.raise_for_status(path)
        op, fh_res, ga = res.resarray[i], res.resarray[i + 1], res.resarray[i + 2]
        assert isinstance(op, OPEN4res) and isinstance(fh_res, GETFH4res) and isinstance(ga, GETATTR4res)
        ok = op.ok()
        fh = fh_res.ok()
        deleg = None
        if ok.delegation.delegation_type in (
            open_delegation_type4.OPEN_DELEGATE_READ,
            open_delegation_type4.OPEN_DELEGATE_WRITE,
        ):
            deleg = ok.delegation.stateid
        f = _Open(fh, ok.stateid, owner_box[-1], 1, deleg, ga.ok(), self._epoch, path, write)
        if self.minorversion == 0 and ok.rflags & c.OPEN4_RESULT_CONFIRM:
            res = await self._compound(lambda: [PUTFH4args(fh), OPEN_CONFIRM4args(f.stateid, f.seqid)])
            self._advance_seqid(f, res.status)
            res.raise_for_status(path)
            oc = res.resarray[-1]
            assert isinstance(oc, OPEN_CONFIRM4res)
            f.stateid = oc.ok()
        self._open_files[id(f)] = f
        return f

    def _advance_seqid(self, f: _Open, status: nfsstat4) -> None:
        if status not in _SEQID_UNCHANGED:
            f.seqid = (f.seqid + 1) & 0xFFFFFFFF

    async def _close(self, f: _Open) -> None:
        self._open_files.pop(id(f), None)
        if f.epoch != self._epoch:
            return  # the server forgot this open when it lost our state
        if f.delegation is not None:
            deleg = f.delegation
            with contextlib.suppress(Nfs4Error, RpcError):
                await self._compound(lambda: [PUTFH4args(f.fh), DELEGRETURN4args(deleg)])

        def build() -> list[ArgOp]:
            seqid = f.seqid if self.minorversion == 0 else 0
            return [PUTFH4args(f.fh), CLOSE4args(seqid, f.stateid)]

        res = await self._compound(build, retry=False)
        if self.minorversion == 0:
            self._advance_seqid(f, res.status)
        if res.status in RETRY_STATUSES:
            res = await self._compound(build)
        res.raise_for_status()
        cl = res.resarray[-1]
        assert isinstance(cl, CLOSE4res)

    async def _read_at(self, f: _Open, offset: int, count: int) -> tuple[bytes, bool]:
        await self._ensure_open(f)
        res = await self._compound(
            lambda: [PUTFH4args(f.fh), READ4args(self._stateid(f), offset, count)], idempotent=True
        )
        res.raise_for_status()
        rd = res.resarray[-1]
        assert isinstance(rd, READ4res)
        ok = rd.ok()
        if len(ok.data) > count:
            raise Nfs4ProtocolError(f"READ returned {len(ok.data)} bytes for {count} asked")
        return ok.data, ok.eof

    async def read_file(
        self, path: str, *, window: int = 8, progress: Callable[[int, int], None] | None = None
    ) -> AsyncIterator[bytes]:
        """Stream the file's bytes in order: up to ``window`` READs of ``rsize`` in flight.
        ``progress(done, total)`` is called after each chunk (total from the OPEN's GETATTR)."""
        f = await self._open(path, write=False)
        if f.attrs.type == nfs_ftype4.NF4DIR:
            await self._close(f)
            raise Nfs4RemoteError(nfsstat4.NFS4ERR_ISDIR, nfs_opnum4.OP_OPEN, path)
        size = f.attrs.size or 0
        pending: deque[tuple[int, int, asyncio.Task[tuple[bytes, bool]]]] = deque()
        next_off = 0
        done = 0
        eof = False
        try:
            while True:
                while not eof and len(pending) < window and (next_off <= size or not pending):
                    task = asyncio.ensure_future(self._read_at(f, next_off, self.rsize))
                    pending.append((next_off, self.rsize, task))
                    next_off += self.rsize
                if not pending:
                    break
                off, count, task = pending.popleft()
                data, eof_here = await task
                if eof and off >= done:
                    continue
                got = len(data)
                # A short read without eof leaves a gap: fill it before going on (RFC 7530 §16.23.4).
                if got < count and not eof_here:
                    parts = [data]
                    while got < count and not eof_here:
                        more, eof_here = await self._read_at(f, off + got, count - got)
                        if not more and not eof_here:
                            raise Nfs4ProtocolError("READ returned no data and no eof")
                        parts.append(more)
                        got += len(more)
                    data = b"".join(parts)
                if data:
                    done += len(data)
                    if progress is not None:
                        progress(done, max(size, done))
                    yield data
                if eof_here:
                    eof = True
                    size = min(size, off + got)
                    next_off = max(next_off, off + got)
        finally:
            for _, _, task in pending:  # let in-flight READs finish: their slots must advance
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await task
            await self._close(f)

    async def read_bytes(self, path: str) -> bytes:
        """The whole file (convenience for small files)."""
        return b"".join([chunk async for chunk in self.read_file(path)])

    async def write_file(
        self,
        path: str,
        source: bytes | BinaryIO | AsyncIterable[bytes] | Iterable[bytes],
        *,
        mode: int = 0o644,
        window: int = 8,
        commit_every: int = 16 * 1024 * 1024,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Create or truncate ``path`` and write ``source``: pipelined UNSTABLE WRITEs of ``wsize``,
        COMMIT every ``commit_every`` bytes and at the end. The verifier of every WRITE must equal
        the COMMIT's (RFC 7530 §16.36.4); on a mismatch (server restart) the uncommitted window is
        written again FILE_SYNC. Returns the number of bytes written."""
        f = await self._open(path, write=True, mode=mode)
        total = 0
        try:
            uncommitted: list[tuple[int, bytes, bytes]] = []  # offset, data, verifier
            window_start = 0
            pending: deque[tuple[int, bytes, asyncio.Task[tuple[int, stable_how4, bytes]]]] = deque()

            async def reap_one() -> None:
                nonlocal total
                off, data, task = pending.popleft()
                count, _committed, verf = await task

                def check_rest(more: int, _committed: stable_how4, verf2: bytes) -> None:
                    nonlocal verf
                    if more == 0:
                        raise Nfs4ProtocolError("WRITE wrote nothing")
                    if verf2 != verf:
                        verf = b""  # forces the window to be resent stable

                # short write: the rest, synchronously
                await self._write_rest(f, off, data, count, stable_how4.UNSTABLE4, check_rest)
                uncommitted.append((off, data, verf))
                total += len(data)
                if progress is not None:
                    progress(total)

            offset = 0
            async for chunk in _chunks(source, self.wsize):
                pending.append(
                    (
                        offset,
                        chunk,
                        asyncio.ensure_future(self._write_at(f, offset, chunk, stable_how4.UNSTABLE4)),
                    )
                )
                offset += len(chunk)
                while len(pending) >= window:
                    await reap_one()
                if offset - window_start >= commit_every:
                    while pending:
                        await reap_one()
                    await self._commit_window(f, window_start, uncommitted)
                    window_start = offset
                    uncommitted.clear()
            while pending:
                await reap_one()
            await self._commit_window(f, window_start, uncommitted)
        finally:
            for _, _, task in pending:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await task
            await self._close(f)
        return total

    async def _write_at(
        self, f: _Open, offset: int, data: bytes, stable: stable_how4
    ) -> tuple[int, stable_how4, bytes]:
        await self._ensure_open(f)
        res = await self._compound(
            lambda: [PUTFH4args(f.fh), WRITE4args(self._stateid(f), offset, stable, data)], idempotent=True
        )
        res.raise_for_status()
        wr = res.resarray[-1]
        assert isinstance(wr, WRITE4res)
        ok = wr.ok()
        if ok.count > len(data):
            raise Nfs4ProtocolError(f"WRITE claims {ok.count} bytes of {len(data)}")
        return ok.count, ok.committed, ok.writeverf

    async def _commit_window(self, f: _Open, start: int, chunks: list[tuple[int, bytes, bytes]]) -> None:
        if not chunks:
            return
        verf = await self._commit(f.fh, start)
        if all(v == verf for _, _, v in chunks):
            return
        log.warning(
            "write verifier changed (server restarted?): rewriting %d bytes FILE_SYNC",
            sum(len(d) for _, d, _ in chunks),
        )
        self.rewrites += 1

        def check_sync(n: int, committed: stable_how4, _verf: bytes) -> None:
            if n == 0 or committed != stable_how4.FILE_SYNC4:
                raise Nfs4LocalError("server did not accept a FILE_SYNC rewrite")

        for off, data, _ in chunks:
            await self._write_rest(f, off, data, 0, stable_how4.FILE_SYNC4, check_sync)

    async def _write_rest(
        self,
        f: _Open,
        offset: int,
        data: bytes,
        done: int,
        stable: stable_how4,
        check: Callable[[int, stable_how4, bytes], None],
    ) -> None:
        """WRITE ``data[done:]`` at ``offset + done`` until all of ``data`` is written (a server
        may write less than asked, RFC 7530 §16.36.4), one WRITE at a time. ``check(count,
        committed, verifier)`` sees each reply before it counts and raises to stop (it must
        refuse count 0). ``data[done:]`` stays a bytes slice (no copy when ``done`` is 0): WRITE4args
        carries bytes and the XDR encoder packs only bytes, so a memoryview would be copied anyway."""
        while done < len(data):
            n, committed, verf = await self._write_at(f, offset + done, data[done:], stable)
            check(n, committed, verf)
            done += n

    async def _commit(self, fh: bytes, offset: int = 0, count: int = 0) -> bytes:
        """COMMIT (RFC 7530 §16.3; count 0 = to the end of the file); returns the write verifier."""
        res = await self._compound(lambda: [PUTFH4args(fh), COMMIT4args(offset, count)], idempotent=True)
        res.raise_for_status()
        cm = res.resarray[-1]
        assert isinstance(cm, COMMIT4res)
        return cm.ok()

    async def remove(self, path: str) -> None:
        """REMOVE the file or empty directory ``path``."""
        comps = split_path(path)
        if not comps:
            raise Nfs4RemoteError(nfsstat4.NFS4ERR_INVAL, nfs_opnum4.OP_REMOVE, path)
        res, _ = await self._on_path(path, lambda: [REMOVE4args(comps[-1])], upto=len(comps) - 1)
        res.raise_for_status(path)
        rm = res.resarray[-1]
        assert isinstance(rm, REMOVE4res)

    async def mkdir(self, path: str, mode: int = 0o755) -> None:
        """CREATE a directory (RFC 7530 §16.4)."""
        comps = split_path(path)
        if not comps:
            raise Nfs4RemoteError(nfsstat4.NFS4ERR_EXIST, nfs_opnum4.OP_CREATE, path)
        create = CREATE4args(nfs_ftype4.NF4DIR, comps[-1], Fattr4(mode=mode))
        res, _ = await self._on_path(path, lambda: [create], upto=len(comps) - 1)
        res.raise_for_status(path)
        cr = res.resarray[-1]
        assert isinstance(cr, CREATE4res)

    # ---- teardown --------------------------------------------------------------------------------

    async def close(self) -> None:
        """CLOSE open files, DESTROY_SESSION + DESTROY_CLIENTID (4.1), destroy GSS contexts and
        close the connection. Errors while tearing down are logged, not raised."""
        if self.closed:
            return
        self._closing = True
        if self._renew_task is not None:
            self._renew_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._renew_task
        for f in list(self._open_files.values()):
            with contextlib.suppress(Nfs4Error, RpcError):
                await self._close(f)
        try:
            if self.minorversion == 1 and self.sessionid:
                auth = self.machine_flavor
                sid = self.sessionid
                res = await self._compound(lambda: [DESTROY_SESSION4args(sid)], flavor=auth, sequence=False)
                res.raise_for_status()
                self.sessionid = b""
                res = await self._compound(
                    lambda: [DESTROY_CLIENTID4args(self.clientid)], flavor=auth, sequence=False
                )
                res.raise_for_status()
        except (Nfs4Error, RpcError, OSError) as exc:
            self.teardown_error = exc
            log.warning("NFSv4.1 teardown: %s", exc)
        self.closed = True
        await self._abort()

    async def _abort(self) -> None:
        self.closed = True
        if self._renew_task is not None:
            self._renew_task.cancel()
        for auth in self._auths.values():
            destroy = getattr(auth, "destroy", None)
            if destroy is not None and not self.rpc.closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(destroy(self._rpc_call), 5)
            with contextlib.suppress(Exception):
                auth.close()
        self._auths.clear()
        await self.rpc.close()


def _renews_v40_lease(ops: Sequence[ArgOp]) -> bool:
    """Whether a successful NFSv4.0 COMPOUND of ``ops`` renewed our lease: only operations that
    use our client ID or one of our stateids do, not those with a special stateid nor the
    stateless ones (LOOKUP, GETATTR, COMMIT...) (RFC 7530 §9.5). Reads with the anonymous
    stateid while waiting out a grace period must not keep the idle loop from sending RENEW."""
    for op in ops:
        if isinstance(op, RENEW4args | SETCLIENTID_CONFIRM4args | OPEN4args):
            return True
        sid = getattr(op, "stateid", None) or getattr(op, "open_stateid", None)
        if isinstance(sid, stateid4) and sid.other not in (
            ANONYMOUS_STATEID.other,
            READ_BYPASS_STATEID.other,
        ):
            return True
    return False


def _io_size(n: int) -> int:
    """Round an I/O size down to a multiple of 4 KiB (at least 4 KiB)."""
    return max(4096, n - n % 4096)


async def _blocks(
    source: bytes | BinaryIO | AsyncIterable[bytes] | Iterable[bytes], read_size: int
) -> AsyncIterator[bytes]:
    """The blocks of any byte source as they come (a file-like object is read ``read_size`` at a
    time in a worker thread). Blocks that are not ``bytes`` are copied: the caller may reuse or
    resize its buffer once it has handed it over."""
    if isinstance(source, bytes | bytearray | memoryview):
        yield bytes(source)
    elif hasattr(source, "read"):
        reader: Any = source
        while block := await asyncio.to_thread(reader.read, read_size):
            yield block if isinstance(block, bytes) else bytes(block)
    elif isinstance(source, AsyncIterable):
        async for block in source:
            yield block if isinstance(block, bytes) else bytes(block)
    else:
        for block in source:
            yield block if isinstance(block, bytes) else bytes(block)


async def _chunks(
    source: bytes | BinaryIO | AsyncIterable[bytes] | Iterable[bytes], size: int
) -> AsyncIterator[bytes]:
    """Re-cut any byte source into chunks of exactly ``size`` (the last may be shorter). Pieces
    of blocks are held as memoryviews and joined once per chunk (each byte is copied once)."""
    parts: list[memoryview] = []
    have = 0
    async for block in _blocks(source, size):
        view = memoryview(block)
        while have + len(view) >= size:
            take = size - have
            if not parts and take == len(block):
                yield block  # a block that is exactly one chunk: no copy
            else:
                parts.append(view[:take])
                yield b"".join(parts)
            parts.clear()
            have = 0
            view = view[take:]
        if view:
            parts.append(view)
            have += len(view)
    if parts:
        yield b"".join(parts)
