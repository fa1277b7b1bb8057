"""NFSv4.0 / NFSv4.1 file operations on paths (RFC 7530, RFC 8881): :class:`Nfs4Client`.

The client is built on three collaborators, each in its own module:
:class:`~rpclatch.nfs4.connection.Nfs4Connection` (the TCP connection, made through the
connection-security hook, and its RPC credentials), :class:`~rpclatch.nfs4.session.Nfs4Session`
(client ID, session slots, lease, recovery and resends) and
:class:`~rpclatch.nfs4.secneg.SecurityNegotiator` (the data flavor, WRONGSEC -> SECINFO). What is
left here is what a file system user sees: paths, open files, READ and WRITE pipelines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO

from rpclatch.nfs4 import const as c
from rpclatch.nfs4.compound import COMPOUND4res
from rpclatch.nfs4.connection import Nfs4Connection
from rpclatch.nfs4.const import (
    createmode4,
    nfs_ftype4,
    nfs_opnum4,
    nfsstat4,
    open_claim_type4,
    open_delegation_type4,
    opentype4,
    stable_how4,
)
from rpclatch.nfs4.errors import Nfs4Error, Nfs4LocalError, Nfs4ProtocolError, Nfs4RemoteError
from rpclatch.nfs4.ops import (
    ArgOp,
    CLOSE4args,
    CLOSE4res,
    COMMIT4args,
    COMMIT4res,
    CREATE4args,
    CREATE4res,
    DELEGRETURN4args,
    GETATTR4args,
    GETATTR4res,
    GETFH4args,
    GETFH4res,
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
    REMOVE4args,
    REMOVE4res,
    WRITE4args,
    WRITE4res,
    createhow4,
    open_claim4,
    open_owner4,
    openflag4,
)
from rpclatch.nfs4.options import Nfs4Options
from rpclatch.nfs4.secneg import SecurityNegotiator, split_path
from rpclatch.nfs4.security import ConnectionSecurityHook, SecFlavor, default_connection_security
from rpclatch.nfs4.session import RETRY_STATUSES, Nfs4Session
from rpclatch.nfs4.types import ANONYMOUS_STATEID, STAT_ATTRS, Fattr4, bitmap_from_attrs, nfstime4, stateid4
from rpclatch.rpc.aio import RpcStreamClient
from rpclatch.rpc.errors import RpcError

__all__ = ["DirEntry", "FileInfo", "Nfs4Client", "Nfs4Options", "split_path"]

log = logging.getLogger(__name__)

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
#: Transfer sizes assumed until the server's FATTR4_MAXREAD / FATTR4_MAXWRITE are known.
DEFAULT_IO = 65536

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


@dataclass
class _Open:
    """An open file: its filehandle, current open stateid and (4.0) open-owner seqid."""

    fh: bytes
    stateid: stateid4
    owner: open_owner4
    seqid: int
    delegation: stateid4 | None
    attrs: Fattr4
    epoch: int = 0  # the session epoch when opened: older ones mean the server forgot this open
    path: str = ""  # as opened (NFSv4.0 opens again by name after the server lost our state)
    write: bool = False
    reopening: asyncio.Lock = field(default_factory=asyncio.Lock)


# --- the client ------------------------------------------------------------------------------------


class Nfs4Client:
    """An NFSv4.0 or 4.1 client on one TCP connection. Create with :meth:`connect`; use as an
    async context manager or call :meth:`close`.

    Counters for tests and reports: ``reopens`` (files opened again after the server lost our
    state), ``rewrites`` (uncommitted windows written again after a write-verifier change),
    ``teardown_error`` (what went wrong in :meth:`close`); the connection's and the session's
    counters are here too (``reconnects``, ``recoveries``, ``renewals``, ``retries``,
    ``lease_error``)."""

    def __init__(self, conn: Nfs4Connection, options: Nfs4Options) -> None:
        self.conn = conn
        self.options = options
        self.session = Nfs4Session(conn, options)
        self.secneg = SecurityNegotiator(
            conn, self.session.compound, minorversion=options.minorversion, sec=options.sec
        )
        self.minorversion = options.minorversion
        self.rsize = DEFAULT_IO
        self.wsize = DEFAULT_IO
        self.reopens = 0
        self.rewrites = 0
        self.teardown_error: Exception | None = None
        self._open_files: dict[int, _Open] = {}
        self._owner_counter = 0

    @classmethod
    async def connect(
        cls,
        host: str,
        options: Nfs4Options | None = None,
        *,
        security_hook: ConnectionSecurityHook = default_connection_security,
        gss_provider: Any = None,
        **settings: Any,
    ) -> Nfs4Client:
        """Connect to ``host``, establish the client ID (4.0) or session (4.1), settle the root's
        flavor and start renewing the lease.

        ``options`` (default :class:`Nfs4Options`) says what to ask for; ``settings`` override
        its fields by name (``Nfs4Client.connect(host, sec="krb5p", minorversion=0)``).
        ``security_hook`` decides the connection's socket and flavors (see
        :mod:`rpclatch.nfs4.security`; :func:`rpclatch.connect.nfs.connection_security` is the
        BYPASS-OR-PROTECT one). ``gss_provider``: a ``rpclatch.gss.provider.Provider`` (default
        python-gssapi with the default credential cache)."""
        options = replace(options or Nfs4Options(), **settings)
        conn = await Nfs4Connection.open(
            host, options, security_hook=security_hook, gss_provider=gss_provider
        )
        client = cls(conn, options)
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

    # ---- what the collaborators know -----------------------------------------------------------------

    @property
    def rpc(self) -> RpcStreamClient:
        """The current RPC connection (a new one after each reconnect)."""
        return self.conn.rpc

    @property
    def flavor(self) -> SecFlavor | None:
        """The flavor file operations use now (it changes on WRONGSEC)."""
        return self.secneg.flavor

    @property
    def closed(self) -> bool:
        return self.session.closed

    @property
    def reconnects(self) -> int:
        return self.conn.reconnects

    @property
    def recoveries(self) -> int:
        return self.session.recoveries

    @property
    def renewals(self) -> int:
        return self.session.renewals

    @property
    def retries(self) -> dict[str, int]:
        return self.session.retries

    @property
    def lease_error(self) -> Exception | None:
        return self.session.lease_error

    async def null(self) -> None:
        """NFSPROC4_NULL with AUTH_NONE (a reachability check)."""
        await self.conn.null()

    async def renew(self) -> None:
        """One lease renewal now (see :meth:`Nfs4Session.renew`)."""
        await self.session.renew()

    async def reconnect(self) -> None:
        """A new connection after the old one was lost (see :meth:`Nfs4Session.reconnect`)."""
        await self.session.reconnect()

    # ---- setup ----------------------------------------------------------------------------------------

    async def _setup(self) -> None:
        session = self.session
        session.machine_flavor = await self.secneg.switch_to(
            session.machine_flavors(self.conn.allowed, self.conn.security.auths), "/", server_requires=False
        )
        await session.establish()
        await self._settle_root()
        session.start_renewal()

    async def _settle_root(self) -> None:
        """Pick the data flavor for the root and read the lease time (RFC 7530 §5.8.1.11) and
        transfer sizes (§5.8.2.16, §5.8.2.17), bounded by the session's channel."""
        attrs = (c.FATTR4_TYPE, c.FATTR4_LEASE_TIME, c.FATTR4_MAXREAD, c.FATTR4_MAXWRITE)
        res = await self.secneg.settle_root(
            lambda: [PUTROOTFH4args(), GETFH4args(), GETATTR4args(bitmap_from_attrs(attrs))]
        )
        res.raise_for_status("/")
        ga = res.resarray[2]
        assert isinstance(ga, GETATTR4res)
        a = ga.ok()
        if a.lease_time:
            self.session.lease_time = a.lease_time
        limit = self.session.io_limit()
        self.rsize = _io_size(min(a.maxread or DEFAULT_IO, limit))
        self.wsize = _io_size(min(a.maxwrite or DEFAULT_IO, limit))

    # ---- COMPOUNDs on the session ------------------------------------------------------------------

    async def _compound(
        self, build: Callable[[], Sequence[ArgOp]], *, retry: bool = True, idempotent: bool = False
    ) -> COMPOUND4res:
        """Run ``build()`` with the data flavor on the session (see :meth:`Nfs4Session.compound`)."""
        return await self.session.compound(
            build, flavor=self.flavor or SecFlavor.SYS, retry=retry, idempotent=idempotent
        )

    async def _on_path(
        self,
        path: str,
        tail: Callable[[], Sequence[ArgOp]],
        upto: int | None = None,
        idempotent: bool = False,
    ) -> tuple[COMPOUND4res, int]:
        return await self.secneg.on_path(path, tail, upto, idempotent)

    # ---- open state across recoveries ---------------------------------------------------------------

    def _stateid(self, f: _Open) -> stateid4:
        """``f``'s open stateid, or the anonymous one (RFC 7530 §9.1.4.3) when the server lost our
        state since ``f`` was opened."""
        return f.stateid if f.epoch == self.session.epoch else ANONYMOUS_STATEID

    async def _ensure_open(self, f: _Open) -> None:
        """Open ``f`` again when the server lost our state since it was opened (RFC 8881
        §8.4.2.1, RFC 7530 §9.6.2: without reclaiming, a client opens afresh), so that READ and
        WRITE go on under a real open (its share reservation held again) instead of the
        anonymous stateid. 4.1 opens the filehandle (CLAIM_FH), 4.0 the name again (a new open,
        not a reclaim: we hold no locks or delegations, and OPEN waits out the grace period).
        One reopen per file, however many READs / WRITEs wait for it."""
        session = self.session
        if f.epoch == session.epoch or session.closed or session.closing:
            return
        async with f.reopening:
            epoch = session.epoch
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
        return open_owner4(
            self.session.clientid, f"{self.session.client_name}/{self._owner_counter}".encode()
        )

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
        f = _Open(fh, ok.stateid, owner_box[-1], 1, deleg, ga.ok(), self.session.epoch, path, write)
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
        if f.epoch != self.session.epoch:
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
        close the connection. Errors while tearing down are logged and kept in
        ``teardown_error``, not raised."""
        session = self.session
        if session.closed:
            return
        session.closing = True
        await session.stop_renewal()
        for f in list(self._open_files.values()):
            with contextlib.suppress(Nfs4Error, RpcError):
                await self._close(f)
        try:
            await session.destroy()
        except (Nfs4Error, RpcError, OSError) as exc:
            self.teardown_error = exc
            log.warning("NFSv4.1 teardown: %s", exc)
        await self._abort()

    async def _abort(self) -> None:
        self.session.closed = True
        await self.session.stop_renewal()
        await self.conn.close()


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
