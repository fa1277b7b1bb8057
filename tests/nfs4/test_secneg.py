"""rpclatch.nfs4.secneg against a scripted server with per-export flavors: WRONGSEC -> SECINFO /
SECINFO_NO_NAME -> resend with the chosen flavor (RFC 7530 §3.3, §16.31; RFC 8881 §2.6.3.1)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import pytest

from rpclatch.nfs4.compound import COMPOUND4args, COMPOUND4res
from rpclatch.nfs4.const import nfsstat4
from rpclatch.nfs4.errors import Nfs4SecurityError
from rpclatch.nfs4.ops import (
    ArgOp,
    GETFH4args,
    GETFH4res,
    LOOKUP4res,
    PUTROOTFH4args,
    PUTROOTFH4res,
    SECINFO4args,
    SECINFO4res,
)
from rpclatch.nfs4.secneg import MAX_NEGOTIATIONS, SecurityNegotiator
from rpclatch.nfs4.security import SecFlavor
from tests.nfs4.fakeserver import ALL, FakeServer, FakeTransport

SYS, KRB5, KRB5I, KRB5P = SecFlavor.SYS, SecFlavor.KRB5, SecFlavor.KRB5I, SecFlavor.KRB5P
T = TypeVar("T")


def negotiator(
    server: FakeServer,
    *,
    allowed: Sequence[SecFlavor] = ALL,
    unusable: Sequence[SecFlavor] = (),
    sec: str = "auto",
    prefer_allowed_order: bool = False,
) -> SecurityNegotiator:
    """A negotiator whose COMPOUNDs go straight to ``server`` (no session in between)."""
    transport = FakeTransport(server, allowed, unusable=unusable, prefer_allowed_order=prefer_allowed_order)

    async def run(
        build: Callable[[], Sequence[ArgOp]], *, flavor: SecFlavor, idempotent: bool = False
    ) -> COMPOUND4res:
        return server.answer(COMPOUND4args(tuple(build()), server.minorversion), flavor)

    neg = SecurityNegotiator(transport, run, minorversion=server.minorversion, sec=sec)
    neg.flavor = SYS
    return neg


def getfh(neg: SecurityNegotiator, path: str) -> Awaitable[tuple[COMPOUND4res, int]]:
    return neg.on_path(path, lambda: [GETFH4args()])


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


@pytest.mark.parametrize("after_lookup", [False, True])
def test_wrongsec_on_lookup_asks_secinfo_and_resends(after_lookup: bool) -> None:
    """WRONGSEC on the LOOKUP into a krb5-only export, or on the operation after it: SECINFO
    for that name in its parent, then the whole COMPOUND again with the server's first choice."""
    server = FakeServer(
        exports={"/": ALL, "/secure": (KRB5P, KRB5I)}, minorversion=0, wrongsec_after_lookup=after_lookup
    )
    neg = negotiator(server)
    res, i = run(getfh(neg, "/secure"))
    assert res.status == nfsstat4.NFS4_OK and i == 2
    fh = res.resarray[i]
    assert isinstance(fh, GETFH4res) and fh.object == b"/secure"
    assert neg.flavor is KRB5P
    assert server.log == [
        (("PUTROOTFH", "LOOKUP", "GETFH"), SYS),
        (("PUTROOTFH", "SECINFO"), SYS),
        (("PUTROOTFH", "LOOKUP", "GETFH"), KRB5P),
    ]


def test_secinfo_is_asked_in_the_parent_of_the_export() -> None:
    server = FakeServer(exports={"/": ALL, "/a/secure": (KRB5I,)}, minorversion=0)
    neg = negotiator(server)
    res, _ = run(getfh(neg, "/a/secure/b"))
    assert res.status == nfsstat4.NFS4_OK and neg.flavor is KRB5I
    assert server.log[1] == (("PUTROOTFH", "LOOKUP", "SECINFO"), SYS)


def test_the_connection_may_prefer_its_own_order() -> None:
    server = FakeServer(exports={"/": ALL, "/secure": (KRB5P, KRB5I)})
    neg = negotiator(server, allowed=(KRB5I, KRB5P, SYS), prefer_allowed_order=True)
    run(getfh(neg, "/secure"))
    assert neg.flavor is KRB5I


def test_a_flavor_we_cannot_establish_moves_on_to_the_next() -> None:
    server = FakeServer(exports={"/": ALL, "/secure": (KRB5P, KRB5I)})
    neg = negotiator(server, unusable=(KRB5P,))
    res, _ = run(getfh(neg, "/secure"))
    assert res.status == nfsstat4.NFS4_OK and neg.flavor is KRB5I


def test_no_usable_kerberos_flavor_says_what_was_required() -> None:
    server = FakeServer(exports={"/": ALL, "/secure": (KRB5P, KRB5I)})
    neg = negotiator(server, unusable=(KRB5P, KRB5I))
    with pytest.raises(Nfs4SecurityError) as info:
        run(getfh(neg, "/secure"))
    assert info.value.required == ("krb5p", "krb5i") and info.value.path == "/secure"
    assert "kinit" in str(info.value) and "--sec sys" in str(info.value)
    assert neg.flavor is SYS


def test_an_explicit_sec_the_export_refuses_gives_advice() -> None:
    server = FakeServer(exports={"/": ALL, "/secure": (KRB5P,)})
    neg = negotiator(server, allowed=(SYS,), sec="sys")
    with pytest.raises(Nfs4SecurityError, match="rerun with --sec krb5p"):
        run(getfh(neg, "/secure"))


def test_an_explicit_sec_the_export_accepts_is_kept() -> None:
    """``--sec krb5i`` on an export that prefers krb5p but takes krb5i stays krb5i."""
    server = FakeServer(exports={"/": (KRB5I,), "/secure": (KRB5P, KRB5I)})
    neg = negotiator(server, allowed=(KRB5I,), sec="krb5i")
    neg.flavor = KRB5I
    res, _ = run(getfh(neg, "/secure"))
    assert res.status == nfsstat4.NFS4_OK and neg.flavor is KRB5I
    assert len(server.log) == 1


def test_41_root_flavor_comes_from_secinfo_no_name() -> None:
    server = FakeServer(exports={"/": (KRB5I, SYS)})
    neg = negotiator(server)
    res = run(neg.settle_root(lambda: [PUTROOTFH4args(), GETFH4args()]))
    assert res.status == nfsstat4.NFS4_OK and neg.flavor is KRB5I
    assert server.log == [(("PUTROOTFH", "SECINFO_NO_NAME"), SYS), (("PUTROOTFH", "GETFH"), KRB5I)]


def test_40_root_flavor_is_found_by_trying_the_allowed_ones() -> None:
    """No SECINFO for the root in 4.0 (RFC 7530 §16.31.5): the other allowed flavors are tried
    until the server stops answering WRONGSEC."""
    server = FakeServer(exports={"/": (KRB5I,)}, minorversion=0)
    neg = negotiator(server, allowed=(SYS, KRB5, KRB5I, KRB5P))
    res = run(neg.settle_root(lambda: [PUTROOTFH4args(), GETFH4args()]))
    assert res.status == nfsstat4.NFS4_OK and neg.flavor is KRB5I
    assert [f for _, f in server.log] == [SYS, KRB5, KRB5I, KRB5I]


def test_40_wrongsec_at_the_root_of_a_path_guesses_the_root_flavor() -> None:
    server = FakeServer(exports={"/": (KRB5,)}, minorversion=0)
    neg = negotiator(server)
    res, _ = run(getfh(neg, "/"))
    assert res.status == nfsstat4.NFS4_OK and neg.flavor is KRB5


def test_40_root_refusing_every_allowed_flavor() -> None:
    server = FakeServer(exports={"/": (KRB5P,)}, minorversion=0)
    neg = negotiator(server, allowed=(SYS, KRB5I))
    with pytest.raises(Nfs4SecurityError, match="server refuses sys, krb5i for /"):
        run(neg.settle_root(lambda: [PUTROOTFH4args(), GETFH4args()]))


def test_a_server_that_never_settles_is_given_up_on() -> None:
    """A server whose SECINFO offers a flavor it then refuses again: the negotiation stops after
    a bounded number of rounds instead of looping."""
    calls: list[tuple[str, ...]] = []

    async def lying(
        build: Callable[[], Sequence[ArgOp]], *, flavor: SecFlavor, idempotent: bool = False
    ) -> COMPOUND4res:
        ops = tuple(build())
        calls.append(tuple(type(op).__name__ for op in ops))
        if isinstance(ops[-1], SECINFO4args):
            return COMPOUND4res(
                nfsstat4.NFS4_OK,
                (PUTROOTFH4res(nfsstat4.NFS4_OK), SECINFO4res(nfsstat4.NFS4_OK, (KRB5.secinfo(),))),
            )
        return COMPOUND4res(
            nfsstat4.NFS4ERR_WRONGSEC,
            (PUTROOTFH4res(nfsstat4.NFS4_OK), LOOKUP4res(nfsstat4.NFS4ERR_WRONGSEC)),
        )

    neg = SecurityNegotiator(FakeTransport(FakeServer()), lying, minorversion=1, sec="auto")
    with pytest.raises(Nfs4SecurityError, match="did not settle"):
        run(getfh(neg, "/x"))
    assert len(calls) == 2 * MAX_NEGOTIATIONS
