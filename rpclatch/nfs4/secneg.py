"""Which security flavor file operations use, and changing it when the server says WRONGSEC.

A server may require a different flavor per export (RFC 7530 §3.3): a COMPOUND that crosses into
such an export fails with NFS4ERR_WRONGSEC, the client asks SECINFO (or, for the current
filehandle in 4.1, SECINFO_NO_NAME) which flavors it would take, and sends the COMPOUND again with
the first one ``--sec`` allows and we can establish (RFC 7530 §16.31, RFC 8881 §2.6.3.1). The
choice among the server's answer is :mod:`rpclatch.nfs4.security`'s; this module runs the
exchange. It sends nothing by itself: it is given a COMPOUND runner and the connection's
credentials, so that it can be driven by a fake server.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Callable, Sequence
from typing import Protocol

from rpclatch.nfs4.compound import COMPOUND4res
from rpclatch.nfs4.const import nfsstat4
from rpclatch.nfs4.errors import Nfs4Error, Nfs4SecurityError
from rpclatch.nfs4.ops import (
    ArgOp,
    GETFH4args,
    LOOKUP4args,
    PUTROOTFH4args,
    SECINFO4args,
    SECINFO4res,
    SECINFO_NO_NAME4args,
)
from rpclatch.nfs4.security import ConnectionSecurity, SecFlavor, acceptable_flavors, choose_from_secinfo
from rpclatch.nfs4.types import secinfo4
from rpclatch.rpc.auth import ClientAuth
from rpclatch.rpc.errors import RpcAuthError, RpcError

log = logging.getLogger(__name__)

#: WRONGSEC rounds for one path before giving up: each round settles one export boundary.
MAX_NEGOTIATIONS = 4

Build = Callable[[], Sequence[ArgOp]]


class Credentials(Protocol):
    """What the negotiation needs of the connection: the flavors allowed on it and a way to
    make sure a flavor can be used (a Kerberos one may fail: no ticket, KDC unreachable)."""

    @property
    def security(self) -> ConnectionSecurity: ...

    async def auth_for(self, flavor: SecFlavor) -> ClientAuth: ...


class CompoundRunner(Protocol):
    """Runs the COMPOUND ``build()`` returns with ``flavor`` (session, retries and all)."""

    async def __call__(
        self, build: Build, *, flavor: SecFlavor, idempotent: bool = False
    ) -> COMPOUND4res: ...


def split_path(path: str) -> list[str]:
    """``/a/b/../c`` -> ``["a", "c"]``; NFSv4 paths are resolved from the pseudo-root."""
    norm = posixpath.normpath("/" + path.strip())
    return [p for p in norm.split("/") if p]


class SecurityNegotiator:
    """Holds the data flavor (:attr:`flavor`) and changes it on WRONGSEC.

    ``sec`` is the user's ``--sec`` value (``auto`` or one flavor): it shapes the advice in
    errors and whether an already usable flavor is kept (an explicit ``--sec`` is)."""

    def __init__(self, credentials: Credentials, run: CompoundRunner, *, minorversion: int, sec: str) -> None:
        self.credentials = credentials
        self.run = run
        self.minorversion = minorversion
        self.sec = sec
        self.flavor: SecFlavor | None = None

    @property
    def allowed(self) -> tuple[SecFlavor, ...]:
        return self.credentials.security.allowed

    async def compound(self, build: Build, *, idempotent: bool = False) -> COMPOUND4res:
        """Run ``build()`` with the current data flavor (``sys`` before one is chosen)."""
        return await self.run(build, flavor=self.flavor or SecFlavor.SYS, idempotent=idempotent)

    async def switch_to(
        self, candidates: Sequence[SecFlavor], path: str, *, server_requires: bool = True
    ) -> SecFlavor:
        """Make the first of ``candidates`` we can establish the data flavor and return it.
        A Kerberos flavor the server or GSS-API refuses moves on to the next; when none is left,
        :class:`Nfs4SecurityError` says what was required (by the server when
        ``server_requires``, else by ``--sec``) and how to get a ticket."""
        last: Exception | None = None
        for flavor in candidates:
            try:
                await self.credentials.auth_for(flavor)
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

    async def settle_root(self, build: Build) -> COMPOUND4res:
        """Choose the data flavor for the root and run ``build()`` (a COMPOUND from PUTROOTFH)
        with it. 4.1 asks SECINFO_NO_NAME for the root (RFC 8881 §18.45); 4.0 has no SECINFO for
        the root (RFC 7530 §16.31.5), so the connection's order of preference picks and a WRONGSEC
        answer to ``build()`` tries the other allowed flavors."""
        security = self.credentials.security
        if self.minorversion == 1:
            res = await self.compound(lambda: [PUTROOTFH4args(), SECINFO_NO_NAME4args()])
            if res.status == nfsstat4.NFS4_OK:
                sec = res.resarray[-1]
                assert isinstance(sec, SECINFO4res)
                await self.adopt_secinfo(sec.ok(), "/")
        elif security.prefer_allowed_order and self.allowed and self.flavor is not self.allowed[0]:
            await self.switch_to(self.allowed, "/", server_requires=False)
        res = await self.compound(build)
        if res.status == nfsstat4.NFS4ERR_WRONGSEC:
            await self._guess_root_flavor(build)
            res = await self.compound(build)
        return res

    async def on_path(
        self, path: str, tail: Build, upto: int | None = None, idempotent: bool = False
    ) -> tuple[COMPOUND4res, int]:
        """Run {PUTROOTFH, LOOKUP each component (of the first ``upto``), ``tail()``...},
        negotiating the flavor on WRONGSEC (RFC 8881 §2.6.3.1.1.3: the LOOKUP into an export, or
        the operation after it, fails). Returns the reply (status not checked) and the index of
        the first ``tail`` result."""
        comps = split_path(path)[:upto] if upto is not None else split_path(path)
        sent: list[Sequence[ArgOp]] = []

        def build() -> Sequence[ArgOp]:
            ops = [PUTROOTFH4args(), *(LOOKUP4args(x) for x in comps), *tail()]
            sent.append(ops)
            return ops

        for _ in range(MAX_NEGOTIATIONS):
            res = await self.compound(build, idempotent=idempotent)
            if res.status != nfsstat4.NFS4ERR_WRONGSEC:
                return res, len(comps) + 1
            await self._negotiate(sent[-1], len(res.resarray) - 1, comps)
        raise Nfs4SecurityError(f"security negotiation for {path} did not settle", path)

    async def _negotiate(self, ops: Sequence[ArgOp], k: int, comps: list[str]) -> None:
        """WRONGSEC at operation ``k`` of ``ops``: find the component it is about (the one the
        LOOKUP at ``k`` or just before it looked up; None for the root) and ask SECINFO for it
        in its parent (RFC 7530 §16.31.4)."""
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
            res = await self.compound(lambda: [PUTROOTFH4args(), SECINFO_NO_NAME4args()])
        else:
            parent, name = comps[:culprit], comps[culprit]
            path = "/" + "/".join(comps[: culprit + 1])
            res = await self.compound(
                lambda: [PUTROOTFH4args(), *(LOOKUP4args(x) for x in parent), SECINFO4args(name)]
            )
        res.raise_for_status(path)
        sec = res.resarray[-1]
        assert isinstance(sec, SECINFO4res)
        await self.adopt_secinfo(sec.ok(), path)

    async def _guess_root_flavor(self, build: Build) -> None:
        """Without SECINFO for the root (4.0): the first other allowed flavor we can establish
        and the server does not answer WRONGSEC to."""
        for flavor in self.allowed:
            if flavor is self.flavor:
                continue
            try:
                await self.credentials.auth_for(flavor)
            except (RpcError, Nfs4Error):
                raise
            except Exception as exc:
                log.info("cannot use %s: %s", flavor.value, exc)
                continue
            res = await self.run(build, flavor=flavor)
            if res.status != nfsstat4.NFS4ERR_WRONGSEC:
                self.flavor = flavor
                return
        raise Nfs4SecurityError(
            f"server refuses {', '.join(f.value for f in self.allowed)} for / "
            f"(NFS4ERR_WRONGSEC); rerun with another --sec or --sec auto",
            "/",
        )

    async def adopt_secinfo(self, offered: Sequence[secinfo4], path: str) -> None:
        """Switch to the best flavor of a SECINFO answer that we may use (RFC 7530 §16.31.4:
        the server's order, unless the connection prefers its own). An explicit ``--sec`` keeps
        its flavor when the server accepts it."""
        prefer = self.credentials.security.prefer_allowed_order
        choose_from_secinfo(
            offered, self.allowed, path=path, sec=self.sec, prefer_allowed_order=prefer
        )  # raises with advice
        candidates = acceptable_flavors(offered, self.allowed, prefer_allowed_order=prefer)
        if self.flavor in candidates and self.sec != "auto":
            return
        await self.switch_to(candidates, path)
