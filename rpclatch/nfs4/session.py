"""The client's standing with the server: client ID, (4.1) session and slots, lease, recovery.

Everything a COMPOUND needs before it means anything to the server lives here: the NFSv4.0
client ID (SETCLIENTID, RFC 7530 §16.33-§16.34) or the NFSv4.1 client ID and session
(EXCHANGE_ID, CREATE_SESSION, RFC 8881 §18.35-§18.36) with its slot table (§2.10.6), the lease
kept alive while idle (RFC 7530 §9.5, RFC 8881 §8.3), and what to do when any of it is lost:
a new connection after the old one dropped, a new client ID / session after the server forgot
ours (RFC 7530 §9.6.2, RFC 8881 §8.4.2), a resend after NFS4ERR_GRACE / NFS4ERR_DELAY.

It talks to the server through a :class:`SessionTransport` (an
:class:`~rpclatch.nfs4.connection.Nfs4Connection`, or a fake in tests) and knows nothing of
files: :attr:`Nfs4Session.epoch` tells the file layer that open stateids from before a
recovery are void.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from rpclatch.nfs4 import const as c
from rpclatch.nfs4.compound import COMPOUND4args, COMPOUND4res
from rpclatch.nfs4.const import nfs_opnum4, nfsstat4, state_protect_how4
from rpclatch.nfs4.errors import (
    Nfs4LocalError,
    Nfs4ProtocolError,
    Nfs4RemoteError,
    Nfs4SecurityError,
    RequestNotSent,
)
from rpclatch.nfs4.ops import (
    ArgOp,
    CREATE_SESSION4args,
    CREATE_SESSION4res,
    DESTROY_CLIENTID4args,
    DESTROY_SESSION4args,
    EXCHANGE_ID4args,
    EXCHANGE_ID4res,
    OPEN4args,
    RECLAIM_COMPLETE4args,
    RENEW4args,
    SEQUENCE4args,
    SEQUENCE4res,
    SETCLIENTID4args,
    SETCLIENTID4res,
    SETCLIENTID_CONFIRM4args,
    netaddr4,
    state_protect4_a,
)
from rpclatch.nfs4.options import Nfs4Options, unique_client_name
from rpclatch.nfs4.security import SecFlavor
from rpclatch.nfs4.types import (
    ANONYMOUS_STATEID,
    READ_BYPASS_STATEID,
    bitmap_from_attrs,
    channel_attrs4,
    nfs_impl_id4,
    nfstime4,
    state_protect_ops4,
    stateid4,
)
from rpclatch.rpc.auth import ClientAuth
from rpclatch.rpc.errors import RpcConnectionClosed

log = logging.getLogger(__name__)

#: Statuses that mean "try again later" (RFC 7530 §13.1.1.3 DELAY, §13.1.9.1 GRACE).
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
#: A lone SEQUENCE re-syncing a slot got these: the lost request had reached the server, whose
#: answer tells us its seqid was used (RFC 8881 §2.10.6.1.2, §2.10.6.1.3.1).
_SLOT_WAS_USED = frozenset(
    {
        nfsstat4.NFS4ERR_RETRY_UNCACHED_REP,
        nfsstat4.NFS4ERR_SEQ_FALSE_RETRY,
        nfsstat4.NFS4ERR_SEQ_MISORDERED,
    }
)
#: Our callback program number for SETCLIENTID / CREATE_SESSION (we never run the callback).
CB_PROGRAM = 0x40000000
#: Per-request headroom above rsize/wsize for RPC/RPCSEC_GSS headers and the other operations.
REQUEST_OVERHEAD = 2048
MAX_IO = 1024 * 1024
#: Session slots we ask for and use at most (the server may grant fewer).
MAX_SLOTS = 16
#: Operations SP4_MACH_CRED asks the server to enforce (RFC 8881 §18.35.3, §2.10.8.3).
MACH_CRED_ENFORCE = (
    nfs_opnum4.OP_EXCHANGE_ID,
    nfs_opnum4.OP_CREATE_SESSION,
    nfs_opnum4.OP_DESTROY_SESSION,
    nfs_opnum4.OP_DESTROY_CLIENTID,
    nfs_opnum4.OP_BIND_CONN_TO_SESSION,
)
#: Backoff between resends of a COMPOUND answered GRACE / DELAY: start, cap (seconds).
RETRY_BACKOFF = (0.1, 2.0)
#: Lost connections and lost server state handled per COMPOUND before its error is raised.
MAX_RECONNECTS = 2
MAX_RECOVERIES = 2
#: The lease time assumed until the server's FATTR4_LEASE_TIME is known (RFC 7530 §5.8.1.11).
DEFAULT_LEASE = 90

Build = Callable[[], Sequence[ArgOp]]


class SessionTransport(Protocol):
    """The connection as the session sees it (an :class:`~rpclatch.nfs4.connection.Nfs4Connection`)."""

    @property
    def closed(self) -> bool: ...

    async def auth_for(self, flavor: SecFlavor) -> ClientAuth: ...

    async def compound(self, auth: ClientAuth, args: bytes) -> bytes: ...

    async def reconnect(self) -> bool: ...


# --- the 4.1 slot table ---------------------------------------------------------------------------


@dataclass(eq=False)
class Slot:
    slotid: int
    seqid: int = 1
    poisoned: bool = False  # a request was lost: unknown whether the server saw this seqid


class SlotTable:
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
        self.slots = [Slot(i) for i in range(nslots)]
        self._busy: set[int] = set()
        self.target = nslots

    def _owns(self, slot: Slot) -> bool:
        return slot.slotid < len(self.slots) and self.slots[slot.slotid] is slot

    def highest_used(self) -> int:
        """The highest slot id with a request out (0 when none): SEQUENCE's sa_highest_slotid."""
        return max(self._busy, default=0)

    async def acquire(self) -> Slot:
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

    async def release(self, slot: Slot) -> None:
        async with self.cond:
            if self._owns(slot):
                self._busy.discard(slot.slotid)
            self.cond.notify_all()


def renews_v40_lease(ops: Sequence[ArgOp]) -> bool:
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


# --- the session --------------------------------------------------------------------------------------


class Nfs4Session:
    """The client ID (4.0) or client ID + session (4.1) on ``transport``, and the COMPOUND
    runner that keeps them valid. For 4.0 there is no session proper; the name covers the
    client's state at the server either way.

    Counters for tests and reports: ``retries`` (GRACE/DELAY resends by status name),
    ``renewals``, ``recoveries``; ``lease_error`` keeps the last failed renewal."""

    def __init__(self, transport: SessionTransport, options: Nfs4Options) -> None:
        self.transport = transport
        self.options = options
        self.minorversion = options.minorversion
        self.client_name = options.client_name or unique_client_name()
        self.machine_flavor: SecFlavor = SecFlavor.SYS  # flavor of the client ID / session
        self.clientid = 0
        self.sessionid = b""
        self.slots: SlotTable | None = None
        self.fore_attrs: channel_attrs4 | None = None
        self.exchange_flags = 0
        self.state_protect_how = state_protect_how4.SP4_NONE
        self.lease_time = DEFAULT_LEASE
        self.epoch = 0  # bumped by each recovery: stateids of an older epoch are void
        self.closing = False  # teardown started: no reconnecting just to tear down
        self.closed = False
        self.recoveries = 0
        self.renewals = 0
        self.retries: dict[str, int] = {}
        self.lease_error: Exception | None = None
        self._last_renewal = 0.0
        self._renew_task: asyncio.Task[None] | None = None
        self._state_lock = asyncio.Lock()
        self._reconnect_lock = asyncio.Lock()

    @staticmethod
    def machine_flavors(allowed: Sequence[SecFlavor], ready: Collection[SecFlavor] = ()) -> list[SecFlavor]:
        """The flavors to try for the client ID / session, best first: krb5i, since the
        state-management operations deserve integrity (RFC 8881 §2.10.8.3), then the others of
        ``allowed``, ``sys`` last. Kerberos flavors in ``ready`` (contexts the connection hook
        already established, e.g. the connect policy's, possibly bound to the latch) come first:
        they give integrity too, and the connection then carries one context, not two."""
        order = (SecFlavor.KRB5I, SecFlavor.KRB5P, SecFlavor.KRB5, SecFlavor.SYS)
        first = [f for f in order if f in allowed and f in ready and f.is_gss]
        return first + [f for f in order if f in allowed and f not in first]

    # ---- establishing -------------------------------------------------------------------------------

    async def establish(self) -> None:
        """A new client ID (4.0) or client ID + session (4.1) with :attr:`machine_flavor`."""
        if self.minorversion == 0:
            await self._setclientid()
        else:
            await self._create_session()

    async def _setclientid(self) -> None:
        """RFC 7530 §16.33-§16.34 with a callback nobody listens on, so we get no delegations."""
        verifier = secrets.token_bytes(8)
        res = await self.compound(
            lambda: [
                SETCLIENTID4args(
                    verifier, self.client_name.encode(), CB_PROGRAM, netaddr4("tcp", "0.0.0.0.0.0"), 1
                )
            ],
            flavor=self.machine_flavor,
            sequence=False,
        )
        res.raise_for_status()
        sc = res.resarray[0]
        assert isinstance(sc, SETCLIENTID4res)
        ok = sc.ok()
        res = await self.compound(
            lambda: [SETCLIENTID_CONFIRM4args(ok.clientid, ok.setclientid_confirm)],
            flavor=self.machine_flavor,
            sequence=False,
        )
        res.raise_for_status()
        self.clientid = ok.clientid

    async def _create_session(self) -> None:
        """EXCHANGE_ID (RFC 8881 §18.35; SP4_MACH_CRED when ``state_protect``), CREATE_SESSION
        without a back channel (§18.36), then a global RECLAIM_COMPLETE (§18.51): we reclaim
        nothing."""
        auth = self.machine_flavor
        protect = state_protect4_a(state_protect_how4.SP4_NONE)
        if self.options.state_protect:
            if auth not in (SecFlavor.KRB5I, SecFlavor.KRB5P):
                raise Nfs4SecurityError("SP4_MACH_CRED needs krb5i or krb5p (RFC 8881 §18.35.3)")
            protect = state_protect4_a(
                state_protect_how4.SP4_MACH_CRED, state_protect_ops4(bitmap_from_attrs(MACH_CRED_ENFORCE), ())
            )
        impl = (nfs_impl_id4("rpclatch.test", "rpclatch", nfstime4(0, 0)),)
        verifier = secrets.token_bytes(8)
        res = await self.compound(
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
        size = MAX_IO + REQUEST_OVERHEAD * 4
        fore = channel_attrs4(0, size, size, 4096, MAX_SLOTS, MAX_SLOTS)
        back = channel_attrs4(0, 4096, 4096, 0, 2, 1)
        res = await self.compound(
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
        nslots = max(1, min(MAX_SLOTS, csr.csr_fore_chan_attrs.ca_maxrequests))
        if self.slots is None:
            self.slots = SlotTable(nslots)
        else:  # a new session after the server lost ours: waiters keep using this table
            self.slots.reset(nslots)
        res = await self.compound(lambda: [RECLAIM_COMPLETE4args(False)], flavor=auth)
        if res.status not in (nfsstat4.NFS4_OK, nfsstat4.NFS4ERR_COMPLETE_ALREADY):
            res.raise_for_status()

    def io_limit(self) -> int:
        """The largest READ / WRITE payload the session's fore channel carries."""
        if self.fore_attrs is None:
            return MAX_IO
        return min(
            MAX_IO,
            self.fore_attrs.ca_maxresponsesize - REQUEST_OVERHEAD,
            self.fore_attrs.ca_maxrequestsize - REQUEST_OVERHEAD,
        )

    # ---- COMPOUNDs --------------------------------------------------------------------------------

    async def compound(
        self,
        build: Build,
        *,
        flavor: SecFlavor,
        sequence: bool = True,
        retry: bool = True,
        idempotent: bool = False,
    ) -> COMPOUND4res:
        """Run the COMPOUND ``build()`` returns with ``flavor``; 4.1 with ``sequence`` puts it on
        a session slot. ``build`` is called again for every resend, so seqids and slots are fresh:

        * NFS4ERR_GRACE / NFS4ERR_DELAY: resent with exponential backoff until ``retry_deadline``
          (unless not ``retry``), then the reply is returned as it is;
        * lost server state (:data:`STATE_LOST`): a new client ID / session (:meth:`recover`),
          then resent, at most twice;
        * a connection found closed before the request went out (:class:`RequestNotSent`), or
          lost under an ``idempotent`` COMPOUND: resent on a new connection (:meth:`reconnect`),
          at most twice.

        The reply's status is not checked; a failing SEQUENCE raises :class:`Nfs4RemoteError`."""
        deadline = time.monotonic() + self.options.retry_deadline
        delay, cap = RETRY_BACKOFF
        reconnects = recoveries = 0
        while True:
            epoch = self.epoch
            res: COMPOUND4res | None
            try:
                auth = await self.transport.auth_for(flavor)
                res = await self._compound_once(build(), auth, sequence)
                status = res.status
            except Nfs4RemoteError as exc:  # a failing SEQUENCE
                if exc.status in STATE_LOST and sequence and recoveries < MAX_RECOVERIES:
                    recoveries += 1
                    await self.recover(epoch, exc.status)
                    continue
                if exc.status not in RETRY_STATUSES:
                    raise
                status, res = exc.status, None
            except RpcConnectionClosed as exc:
                safe = idempotent or isinstance(exc, RequestNotSent)
                if not (safe and self._may_reconnect()) or reconnects >= MAX_RECONNECTS:
                    raise
                reconnects += 1
                await self.reconnect()
                continue
            if (
                status in STATE_LOST
                and sequence
                and recoveries < MAX_RECOVERIES
                and self.minorversion == 0
                and not self.closed
            ):
                recoveries += 1
                await self.recover(epoch, status)
                continue
            if not retry or status not in RETRY_STATUSES or time.monotonic() + delay > deadline:
                if res is None:
                    raise Nfs4RemoteError(status, nfs_opnum4.OP_SEQUENCE)
                return res
            log.info("server answered %s; retrying in %.1f s", status.name, delay)
            self.retries[status.name] = self.retries.get(status.name, 0) + 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, cap)

    def _may_reconnect(self) -> bool:
        return self.options.auto_reconnect and not self.closed and not self.closing

    async def _compound_once(self, ops: Sequence[ArgOp], auth: ClientAuth, sequence: bool) -> COMPOUND4res:
        """One COMPOUND RPC. For 4.1 with ``sequence`` a SEQUENCE on a free slot is prepended and
        its result stripped (RFC 8881 §18.46); a failing SEQUENCE raises :class:`Nfs4RemoteError`.
        A slot's seqid advances only when the server processed the SEQUENCE (§2.10.6.1); a slot
        whose request was lost after it went out is poisoned until :meth:`reconnect` re-syncs it."""
        if self.minorversion == 0 or not sequence:
            comp = COMPOUND4args(tuple(ops), self.minorversion)
            res = COMPOUND4res.decode(await self.transport.compound(auth, comp.encode()), comp.opnums())
            if self.minorversion == 1 or (res.status == nfsstat4.NFS4_OK and renews_v40_lease(ops)):
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
                raw = await self.transport.compound(auth, comp.encode())
            except RequestNotSent:
                raise  # the server never saw this seqid: the slot stays usable as it is
            except BaseException:
                slot.poisoned = True
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

    # ---- losing things ----------------------------------------------------------------------------

    async def reconnect(self) -> None:
        """A new connection after the old one was lost (see
        :meth:`~rpclatch.nfs4.connection.Nfs4Connection.reconnect`). The client ID / session
        live on: 4.1 slots whose request was lost are re-synced first (RFC 8881 §2.10.13.1.2,
        §2.10.6.2). Concurrent callers wait for the one that reconnects."""
        async with self._reconnect_lock:
            if not await self.transport.reconnect():
                return
            if self.minorversion == 1 and self.slots is not None:
                for slot in self.slots.slots:
                    if slot.poisoned:
                        await self._resync_slot(slot)

    async def _resync_slot(self, slot: Slot) -> None:
        """Send a lone SEQUENCE with the slot's current seqid: if the lost request had reached the
        server it answers as a retry (RETRY_UNCACHED_REP / SEQ_FALSE_RETRY), else it processes this
        one; either way we then know the next seqid (RFC 8881 §2.10.6.1.2)."""
        auth = await self.transport.auth_for(self.machine_flavor)
        table = self.slots
        assert table is not None
        for _ in range(3):
            seq = SEQUENCE4args(
                self.sessionid, slot.seqid, slot.slotid, max(table.highest_used(), slot.slotid), False
            )
            comp = COMPOUND4args((seq,), 1)
            res = COMPOUND4res.decode(await self.transport.compound(auth, comp.encode()), comp.opnums())
            status = res.resarray[0].status if res.resarray else res.status
            if status == nfsstat4.NFS4_OK:
                slot.seqid = (slot.seqid + 1) & 0xFFFFFFFF
                slot.poisoned = False
                return
            if status in _SLOT_WAS_USED:
                slot.seqid = (slot.seqid + 1) & 0xFFFFFFFF
                continue
            log.warning("slot %d stays unusable after reconnect: %s", slot.slotid, status.name)
            return

    async def recover(self, epoch: int, status: nfsstat4) -> None:
        """The server lost our state (it restarted, or our lease expired): a new client ID (4.0)
        or client ID + session (4.1) and a new :attr:`epoch`. We reclaim nothing, holding no locks
        or delegations (RFC 7530 §9.6.2, RFC 8881 §8.4.2.1). ``epoch`` is the epoch the failed
        request was sent in: when another task recovered since, nothing more is done."""
        async with self._state_lock:
            if self.epoch != epoch:
                return
            log.warning("server lost our state (%s): establishing a new client ID", status.name)
            await self.establish()
            self.epoch += 1
            self.recoveries += 1

    # ---- the lease ------------------------------------------------------------------------------------

    def start_renewal(self) -> None:
        """Keep the lease alive while idle from now on: a renewal once nothing renewed it for a
        third of the lease (RFC 7530 §9.5, RFC 8881 §8.3)."""
        self._renew_task = asyncio.get_running_loop().create_task(self._renew_loop())

    async def stop_renewal(self) -> None:
        task, self._renew_task = self._renew_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _renew_loop(self) -> None:
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
                if self.transport.closed:  # nothing more to renew on this connection
                    return

    async def renew(self) -> None:
        """One lease renewal now: RENEW (4.0, RFC 7530 §16.28) or a SEQUENCE-only COMPOUND
        (4.1, RFC 8881 §18.46), with the client ID's flavor."""
        if self.minorversion == 0:
            res = await self.compound(
                lambda: [RENEW4args(self.clientid)], flavor=self.machine_flavor, idempotent=True
            )
        else:
            res = await self.compound(lambda: [], flavor=self.machine_flavor, idempotent=True)
        res.raise_for_status()
        self.renewals += 1

    # ---- teardown -------------------------------------------------------------------------------------

    async def destroy(self) -> None:
        """DESTROY_SESSION + DESTROY_CLIENTID (RFC 8881 §18.37, §18.50) for 4.1; a 4.0 client ID
        simply expires with its lease (RFC 7530 §9.1.2)."""
        if self.minorversion != 1 or not self.sessionid:
            return
        sid = self.sessionid
        res = await self.compound(
            lambda: [DESTROY_SESSION4args(sid)], flavor=self.machine_flavor, sequence=False
        )
        res.raise_for_status()
        self.sessionid = b""
        res = await self.compound(
            lambda: [DESTROY_CLIENTID4args(self.clientid)], flavor=self.machine_flavor, sequence=False
        )
        res.raise_for_status()
