"""rpclatch.nfs4.session against a scripted server: client ID and session setup, the slot
table, resends after GRACE, lost connections and lost server state, lease renewal, teardown."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from rpclatch.nfs4.compound import COMPOUND4res
from rpclatch.nfs4.const import nfsstat4
from rpclatch.nfs4.errors import Nfs4SecurityError, RequestNotSent
from rpclatch.nfs4.ops import (
    CLOSE4args,
    GETFH4args,
    GETFH4res,
    PUTFH4args,
    PUTROOTFH4args,
    READ4args,
    RENEW4args,
)
from rpclatch.nfs4.options import Nfs4Options
from rpclatch.nfs4.security import SecFlavor
from rpclatch.nfs4.session import MAX_IO, REQUEST_OVERHEAD, Nfs4Session, SlotTable, renews_v40_lease
from rpclatch.nfs4.types import ANONYMOUS_STATEID, READ_BYPASS_STATEID, stateid4
from rpclatch.rpc.errors import RpcConnectionClosed
from tests.nfs4.fakeserver import FakeServer, FakeTransport

T = TypeVar("T")


def run(
    minor: int, body: Callable[[Nfs4Session, FakeServer, FakeTransport], Awaitable[T]], **options: object
) -> T:
    """``body(session, server, transport)`` with the session established on a fresh server."""
    server = FakeServer(minorversion=minor)
    transport = FakeTransport(server)

    async def main() -> T:
        session = Nfs4Session(transport, Nfs4Options(minorversion=minor, **options))  # type: ignore[arg-type]
        await session.establish()
        return await body(session, server, transport)

    return asyncio.run(main())


def root_fh(session: Nfs4Session, **kw: bool) -> Awaitable[COMPOUND4res]:
    return session.compound(lambda: [PUTROOTFH4args(), GETFH4args()], flavor=SecFlavor.SYS, **kw)


def ops_sent(server: FakeServer) -> list[tuple[str, ...]]:
    return [ops for ops, _ in server.log]


# --- the slot table ---------------------------------------------------------------------------------


def test_slot_table_hands_out_each_slot_once_and_honours_target() -> None:
    async def main() -> None:
        table = SlotTable(3)
        a, b = await table.acquire(), await table.acquire()
        assert {a.slotid, b.slotid} == {0, 1}
        table.target = 2  # server lowered sr_target_highest_slotid to 1
        waiter = asyncio.ensure_future(table.acquire())
        await asyncio.sleep(0)
        assert not waiter.done()  # slot 2 is beyond the target
        await table.release(b)
        assert (await waiter).slotid == b.slotid
        a.poisoned = True
        await table.release(a)
        table.target = 3
        c = await table.acquire()
        assert c.slotid == 2  # the poisoned slot is never reused
        assert table.highest_used() == 2

    asyncio.run(main())


def test_slot_table_ignores_a_stale_slot_of_the_old_session() -> None:
    """After reset() (a new session) a request of the old session returns its slot 0 while a new
    request holds the new slot 0: the new slot stays busy (not handed out twice, still counted by
    highest_used) and the stale slot never enters the new table."""

    async def main() -> None:
        table = SlotTable(2)
        old0, old1 = await table.acquire(), await table.acquire()
        table.reset(2)
        new0 = await table.acquire()
        assert new0.slotid == old0.slotid == 0 and new0 is not old0
        await table.release(old0)
        await table.release(old1)
        assert table.highest_used() == 0
        new1 = await table.acquire()
        assert new1.slotid == 1 and new1 is not old1
        assert table.highest_used() == 1
        waiter = asyncio.ensure_future(table.acquire())
        await asyncio.sleep(0)
        assert not waiter.done()  # both new slots are still out
        await table.release(new1)
        assert await waiter is new1
        await table.release(new0)
        assert table.highest_used() == 1  # new1 (re-acquired by the waiter) is the only one out
        assert all(s in (new0, new1) for s in table.slots)

    asyncio.run(main())


def test_slot_table_with_every_slot_poisoned_fails() -> None:
    async def main() -> None:
        table = SlotTable(1)
        s = await table.acquire()
        s.poisoned = True
        await table.release(s)
        with pytest.raises(Exception, match="unusable"):
            await table.acquire()

    asyncio.run(main())


def test_v40_lease_renewal_needs_our_client_id_or_stateid() -> None:
    real = stateid4(1, b"\x01" * 12)
    fh = b"\x00" * 8
    assert renews_v40_lease([RENEW4args(7)])
    assert renews_v40_lease([PUTFH4args(fh), READ4args(real, 0, 10)])
    assert renews_v40_lease([PUTFH4args(fh), CLOSE4args(2, real)])
    # special stateids and stateless operations renew nothing (RFC 7530 §9.5)
    assert not renews_v40_lease([PUTFH4args(fh), READ4args(ANONYMOUS_STATEID, 0, 10)])
    assert not renews_v40_lease([PUTFH4args(fh), READ4args(READ_BYPASS_STATEID, 0, 10)])
    assert not renews_v40_lease([PUTROOTFH4args(), GETFH4args()])


# --- establishing --------------------------------------------------------------------------------------


def test_41_session_setup_and_slot_seqids() -> None:
    """EXCHANGE_ID, CREATE_SESSION, then RECLAIM_COMPLETE on the session (RFC 8881 §18.51); each
    processed SEQUENCE advances its slot's seqid by one."""

    async def body(s: Nfs4Session, server: FakeServer, t: FakeTransport) -> None:
        assert ops_sent(server) == [("EXCHANGE_ID",), ("CREATE_SESSION",), ("SEQUENCE", "RECLAIM_COMPLETE")]
        assert s.clientid == 100 and s.sessionid and s.slots is not None
        assert len(s.slots.slots) == server.slots
        assert s.slots.slots[0].seqid == 2
        res = await root_fh(s)
        assert isinstance(res.resarray[-1], GETFH4res) and len(res.resarray) == 2  # SEQUENCE stripped
        assert s.slots.slots[0].seqid == 3

    run(1, body)


def test_40_client_id_is_confirmed() -> None:
    async def body(s: Nfs4Session, server: FakeServer, t: FakeTransport) -> None:
        assert ops_sent(server) == [("SETCLIENTID",), ("SETCLIENTID_CONFIRM",)]
        assert s.clientid == 100 and s.slots is None

    run(0, body)


def test_state_protection_needs_an_integrity_flavor() -> None:
    async def main() -> None:
        session = Nfs4Session(FakeTransport(FakeServer()), Nfs4Options(state_protect=True))
        with pytest.raises(Nfs4SecurityError, match="SP4_MACH_CRED"):
            await session.establish()

    asyncio.run(main())


# --- lost server state -----------------------------------------------------------------------------------


def test_badsession_makes_a_new_session_and_resends() -> None:
    """The server restarted: SEQUENCE fails BADSESSION, the session makes a new client ID and
    session (a new epoch: older open stateids are void) and sends the COMPOUND again."""

    async def body(s: Nfs4Session, server: FakeServer, t: FakeTransport) -> None:
        old = s.sessionid
        server.restart()
        server.log.clear()
        res = await root_fh(s)
        assert res.status == nfsstat4.NFS4_OK
        assert ops_sent(server) == [
            ("SEQUENCE", "PUTROOTFH", "GETFH"),
            ("EXCHANGE_ID",),
            ("CREATE_SESSION",),
            ("SEQUENCE", "RECLAIM_COMPLETE"),
            ("SEQUENCE", "PUTROOTFH", "GETFH"),
        ]
        assert s.sessionid != old and s.recoveries == 1 and s.epoch == 1

    run(1, body)


def test_concurrent_requests_recover_once() -> None:
    """Several requests out when the server lost our state all fail; one of them recovers and
    the others resend on the new session."""

    async def body(s: Nfs4Session, server: FakeServer, t: FakeTransport) -> None:
        server.restart()
        results = await asyncio.gather(*(root_fh(s) for _ in range(3)))
        assert all(r.status == nfsstat4.NFS4_OK for r in results)
        assert s.recoveries == 1 and s.epoch == 1
        assert ops_sent(server).count(("CREATE_SESSION",)) == 2

    run(1, body)


def test_40_stale_clientid_makes_a_new_client_id() -> None:
    async def body(s: Nfs4Session, server: FakeServer, t: FakeTransport) -> None:
        server.restart()
        await s.renew()
        assert s.clientid == 101 and s.recoveries == 1 and s.renewals == 1
        assert ops_sent(server)[-3:] == [("SETCLIENTID",), ("SETCLIENTID_CONFIRM",), ("RENEW",)]

    run(0, body)


# --- GRACE / DELAY ----------------------------------------------------------------------------------------


def test_grace_is_resent_until_the_server_takes_it() -> None:
    async def body(s: Nfs4Session, server: FakeServer, t: FakeTransport) -> None:
        server.grace[GETFH4args] = 2
        res = await root_fh(s)
        assert res.status == nfsstat4.NFS4_OK
        assert s.retries == {"NFS4ERR_GRACE": 2}

    run(1, body)


def test_grace_is_returned_without_retry_or_past_the_deadline() -> None:
    async def body(s: Nfs4Session, server: FakeServer, t: FakeTransport) -> None:
        server.grace[GETFH4args] = 1
        res = await root_fh(s, retry=False)
        assert res.status == nfsstat4.NFS4ERR_GRACE
        server.grace[GETFH4args] = 1
        res = await root_fh(s)  # retry_deadline 0: no time for a resend
        assert res.status == nfsstat4.NFS4ERR_GRACE
        assert s.retries == {}

    run(1, body, retry_deadline=0.0)


# --- lost connections -------------------------------------------------------------------------------------


@pytest.mark.parametrize("minor", [0, 1])
def test_a_request_not_sent_goes_on_a_new_connection(minor: int) -> None:
    async def body(s: Nfs4Session, server: FakeServer, t: FakeTransport) -> None:
        t.drop()
        res = await root_fh(s)  # not idempotent, but nothing of it went out
        assert res.status == nfsstat4.NFS4_OK
        assert t.reconnects == 1 and s.recoveries == 0

    run(minor, body)


def test_a_lost_request_that_is_not_idempotent_is_not_resent() -> None:
    async def body(s: Nfs4Session, server: FakeServer, t: FakeTransport) -> None:
        t.lose_next = 1
        with pytest.raises(RpcConnectionClosed) as info:
            await root_fh(s)
        assert not isinstance(info.value, RequestNotSent)
        assert s.slots is not None and s.slots.slots[0].poisoned  # its seqid may have been used
        assert t.reconnects == 0

    run(1, body)


def test_a_lost_idempotent_request_is_resent_after_the_slot_is_resynced() -> None:
    """The server processed the request whose reply was lost: the lone SEQUENCE with the same
    seqid is answered as a retry (RFC 8881 §2.10.6.1.2), the next one is processed, and the
    request goes out again on the re-synced slot."""

    async def body(s: Nfs4Session, server: FakeServer, t: FakeTransport) -> None:
        assert s.slots is not None
        slot = s.slots.slots[0]
        before = slot.seqid
        t.lose_next = 1
        server.log.clear()
        res = await root_fh(s, idempotent=True)
        assert res.status == nfsstat4.NFS4_OK
        assert t.reconnects == 1 and not slot.poisoned
        assert ops_sent(server) == [
            ("SEQUENCE", "PUTROOTFH", "GETFH"),
            ("SEQUENCE",),  # seqid `before`: a retry
            ("SEQUENCE",),  # before + 1: processed
            ("SEQUENCE", "PUTROOTFH", "GETFH"),
        ]
        assert slot.seqid == before + 3

    run(1, body)


def test_no_reconnect_once_closing_or_when_disabled() -> None:
    async def body(s: Nfs4Session, server: FakeServer, t: FakeTransport) -> None:
        s.closing = True
        t.drop()
        with pytest.raises(RequestNotSent):
            await root_fh(s)
        assert t.reconnects == 0

    run(1, body)

    async def body2(s: Nfs4Session, server: FakeServer, t: FakeTransport) -> None:
        t.drop()
        with pytest.raises(RequestNotSent):
            await root_fh(s)

    run(1, body2, auto_reconnect=False)


# --- the lease and teardown ---------------------------------------------------------------------------


def test_41_renewal_is_a_lone_sequence_with_the_client_id_flavor() -> None:
    async def body(s: Nfs4Session, server: FakeServer, t: FakeTransport) -> None:
        s.machine_flavor = SecFlavor.KRB5I
        await s.renew()
        assert server.log[-1] == (("SEQUENCE",), SecFlavor.KRB5I) and s.renewals == 1

    run(1, body)


@pytest.mark.parametrize("minor", [0, 1])
def test_idle_loop_renews_the_lease(minor: int) -> None:
    """Nothing else is sent: the loop renews once a third of the lease passed without renewal."""

    async def body(s: Nfs4Session, server: FakeServer, t: FakeTransport) -> int:
        s.lease_time = 3
        s.start_renewal()
        try:
            async with asyncio.timeout(30):
                while not s.renewals:
                    await asyncio.sleep(0.05)
        finally:
            await s.stop_renewal()
        assert s.lease_error is None
        return s.renewals

    assert run(minor, body) >= 1


def test_idle_loop_keeps_the_last_failure() -> None:
    async def body(s: Nfs4Session, server: FakeServer, t: FakeTransport) -> Exception | None:
        s.lease_time = 3
        t.drop()  # and nothing may reconnect
        s.closing = True
        s.start_renewal()
        try:
            async with asyncio.timeout(30):
                while s.lease_error is None:
                    await asyncio.sleep(0.05)
        finally:
            await s.stop_renewal()
        return s.lease_error

    assert isinstance(run(1, body), RequestNotSent)


def test_destroy_ends_the_41_session_and_client_id() -> None:
    async def body(s: Nfs4Session, server: FakeServer, t: FakeTransport) -> None:
        server.log.clear()
        await s.destroy()
        assert ops_sent(server) == [("DESTROY_SESSION",), ("DESTROY_CLIENTID",)] and s.sessionid == b""
        await s.destroy()  # nothing left to destroy
        assert len(server.log) == 2

    run(1, body)


def test_client_id_flavor_prefers_integrity_then_what_is_allowed() -> None:
    """krb5i first for the state-management operations (RFC 8881 §2.10.8.3), sys last."""
    assert Nfs4Session.machine_flavors((SecFlavor.SYS, SecFlavor.KRB5P, SecFlavor.KRB5I)) == [
        SecFlavor.KRB5I,
        SecFlavor.KRB5P,
        SecFlavor.SYS,
    ]
    assert Nfs4Session.machine_flavors((SecFlavor.SYS,)) == [SecFlavor.SYS]


def test_io_limit_follows_the_fore_channel() -> None:
    """4.1: the fore channel's sizes less the headroom for headers; 4.0: no channel, MAX_IO."""

    async def body(s: Nfs4Session, server: FakeServer, t: FakeTransport) -> int:
        if s.fore_attrs is not None:
            assert s.io_limit() == s.fore_attrs.ca_maxresponsesize - REQUEST_OVERHEAD
        return s.io_limit()

    assert run(1, body) < MAX_IO
    assert run(0, body) == MAX_IO
