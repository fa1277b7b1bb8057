"""``--sec auto`` for the NFSv4 client on the kernel world (:class:`rpclatch.connect.nfs.
KernelConnectionSecurity`), against two key-manager daemons in-process on loopback (127.0.0.1 /
127.0.0.2, the in-process datapath standing in for XFRM), a :class:`KernelServerEndpoint` serving
the NFS program's NULL procedure under RPCSEC_GSS, and a real KDC.

The hook runs the connect policy on the connection the NFS client then uses: with a server that
binds, the row is "latched, bound" and the NFS client's krb5p flavor is the policy's context,
bound to the latch (DATA calls go out as channel_prot); with a v1-only server that answers the v2
INIT with AUTH_BADCRED (as Linux nfsd does), the latch is kept and krb5p runs over it, the row
being the table's for an unauthenticated refusal of v2; without the server's key manager the
connection falls back to krb5p in the clear. Closing the NFS connection releases its latch; a
latch break resets it, and the NFS client's reconnect runs the policy again through the hook.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from rpclatch.connect import BindOutcome, ConnectPolicy, FallbackService, LatchOutcome
from rpclatch.connect.kernel import KernelClientWorld, KernelServerEndpoint
from rpclatch.connect.nfs import KernelConnectionSecurity
from rpclatch.connect.record import SecurityRecord
from rpclatch.gss.client import VersionPolicy
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.server import GssServerAuth
from rpclatch.gss.wire import Service, decode_cred_fields
from rpclatch.ipsec.backend import InProcessBackend
from rpclatch.ipsec.ike.config import Credentials, IkeConfig
from rpclatch.ipsec.keyd.daemon import KeydDaemon
from rpclatch.ipsec.latch import LatchState
from rpclatch.ipsec.model import AddressRange, AuthMethod, IPAddress, IpProto, Selector
from rpclatch.ipsec.pad import ChildSaAuthorization, PadEntry, PeerAuthorizationDatabase, PublicKeyPattern
from rpclatch.nfs4 import const as c
from rpclatch.nfs4.connection import Nfs4Connection
from rpclatch.nfs4.options import Nfs4Options
from rpclatch.nfs4.security import SecFlavor
from rpclatch.rpc.messages import AuthFlavor, AuthStat
from rpclatch.rpc.server import CallContext, RpcDispatcher

A_ADDR = ipaddress.ip_address("127.0.0.1")
B_ADDR = ipaddress.ip_address("127.0.0.2")


class NfsLab:
    """Two keyds, an endpoint serving NFS NULL on 127.0.0.2, the client's kernel world."""

    def __init__(self, realm: ThrowawayRealm, tmp: Path) -> None:
        self.realm = realm
        self.tmp = tmp
        self.daemons: list[KeydDaemon] = []
        self.endpoint: KernelServerEndpoint | None = None
        self.port = 0
        #: the RPCSEC_GSS service of every NFS NULL call the server answered
        self.services: list[Service] = []

    def _null(self, args: bytes, ctx: CallContext) -> bytes:
        if ctx.flavor == AuthFlavor.RPCSEC_GSS:
            self.services.append(decode_cred_fields(ctx.call.cred.body)[3])
        return b""

    async def start(self, *, server_keyd: bool = True, server_versions: tuple[int, ...] = (1, 2)) -> None:
        socks = {addr: socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for addr in (A_ADDR, B_ADDR)}
        for addr, sock in socks.items():
            sock.bind((str(addr), 0))
        ports = {addr: sock.getsockname()[1] for addr, sock in socks.items()}

        def resolve(addr: IPAddress) -> tuple[IPAddress, int]:
            return (addr, ports[addr])

        pad = PeerAuthorizationDatabase(
            [
                PadEntry(
                    "btns",
                    PublicKeyPattern(),
                    AuthMethod.RAW_PUBLIC_KEY,
                    ChildSaAuthorization(own_address_only=True),
                )
            ]
        )
        for addr, name, policy in (
            (A_ADDR, "a", ()),
            (B_ADDR, "b", (Selector(AddressRange.single(B_ADDR), None, IpProto.TCP),)),
        ):
            config = IkeConfig(Credentials.raw_key(ed25519.Ed25519PrivateKey.generate()), pad, policy)
            self.daemons.append(
                await KeydDaemon.start(
                    config,
                    socks[addr],
                    self.tmp / f"{name}.sock",
                    backend=InProcessBackend(),
                    peer_endpoint=resolve,
                )
            )
        dispatcher = RpcDispatcher()
        dispatcher.add_program(c.NFS4_PROGRAM, c.NFS_V4, {c.NFSPROC4_NULL: self._null})
        v1_only = server_versions == (1,)
        dispatcher.add_flavor(
            GssServerAuth(
                GssapiProvider(self.realm.service_name, keytab=self.realm.keytab),
                versions=server_versions,
                # a v1-only server answers like Linux nfsd: AUTH_BADCRED
                unsupported_version_stat=AuthStat.AUTH_BADCRED if v1_only else AuthStat.AUTH_REJECTEDCRED,
            )
        )
        self.endpoint = KernelServerEndpoint(dispatcher, self.tmp / "b.sock")
        self.port = await self.endpoint.start(str(B_ADDR), 0)
        if not server_keyd:
            await self.daemons.pop().close()  # IKE to the server goes unanswered

    def hook(
        self,
        fallback: FallbackService = FallbackService.PRIVACY,
        gss_versions: VersionPolicy = VersionPolicy.PREFER_V2,
    ) -> KernelConnectionSecurity:
        world = KernelClientWorld(str(B_ADDR), self.tmp / "a.sock", source_addr=str(A_ADDR))
        return KernelConnectionSecurity(
            world,
            self.realm.service_name,
            GssapiProvider(ccache=self.realm.default_user.ccache),
            ConnectPolicy(fallback=fallback, ike_timeout=1.0),
            gss_versions=gss_versions,
        )

    async def close(self) -> None:
        if self.endpoint is not None:
            await self.endpoint.close()
        for daemon in self.daemons:
            await daemon.close()


def run_lab(
    realm: ThrowawayRealm, tmp: Path, body: Callable[[NfsLab], Awaitable[None]], **start: object
) -> NfsLab:
    async def main() -> NfsLab:
        lab = NfsLab(realm, tmp)
        try:
            await lab.start(**start)  # type: ignore[arg-type]
            await body(lab)
        finally:
            await lab.close()
        return lab

    return asyncio.run(main())


async def _open(lab: NfsLab, hook: KernelConnectionSecurity) -> Nfs4Connection:
    options = Nfs4Options(port=lab.port, sec="auto", gss_target=lab.realm.service_name, timeout=10)
    return await Nfs4Connection.open(str(B_ADDR), options, security_hook=hook)


def test_latched_and_bound_the_nfs_client_uses_the_bound_context(
    realm: ThrowawayRealm, tmp_path: Path
) -> None:
    seen: dict[str, object] = {}

    async def body(lab: NfsLab) -> None:
        hook = lab.hook()
        try:
            conn = await _open(lab, hook)
            record = hook.records[-1]
            seen["record"] = record
            seen["allowed"] = conn.allowed
            link = hook.connections[-1].link
            assert link is not None
            seen["client_is_link_client"] = conn.rpc is getattr(link, "client", None)
            auth = await conn.auth_for(SecFlavor.KRB5P)
            seen["bound"] = getattr(auth, "bound_channel", None) is not None
            await conn.rpc_call(auth, c.NFSPROC4_NULL, b"")
            assert lab.endpoint is not None
            seen["server_latched"] = [e.latch_state for e in lab.endpoint.accepted]
            seen["latch_before_close"] = link.latch_state()
            await conn.close()
            seen["open_after_close"] = link.is_open
            seen["handle_after_close"] = getattr(link, "_handle", "?")
        finally:
            await hook.close()

    lab = run_lab(realm, tmp_path, body)
    record = seen["record"]
    assert isinstance(record, SecurityRecord)
    assert (record.latch_outcome, record.bind_outcome) == (
        LatchOutcome.LATCHED_BINDING_CONF,
        BindOutcome.BOUND,
    )
    assert record.latched and record.bound and record.gss_service is Service.CHANNEL_PROT
    assert seen["allowed"] == (SecFlavor.KRB5P, SecFlavor.KRB5I)
    assert seen["client_is_link_client"] is True and seen["bound"] is True
    assert seen["server_latched"] == [LatchState.ESTABLISHED]
    assert seen["latch_before_close"] is LatchState.ESTABLISHED
    # the NFS NULL went out on the policy's context: channel_prot on the latched connection
    assert lab.services[-1] is Service.CHANNEL_PROT
    assert seen["open_after_close"] is False and seen["handle_after_close"] is None  # latch released


def test_v1_only_server_keeps_the_latch_and_uses_krb5p_over_it(
    realm: ThrowawayRealm, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Linux nfsd's answer to the v2 INIT (AUTH_BADCRED): the table's row for a refused v2 on a
    latch that offers binding data, the latch kept, krb5p (RPCSEC_GSS v1) over it."""
    seen: dict[str, object] = {}

    async def body(lab: NfsLab) -> None:
        hook = lab.hook()
        try:
            conn = await _open(lab, hook)
            seen["record"] = hook.records[-1]
            auth = await conn.auth_for(SecFlavor.KRB5P)
            seen["version"] = getattr(auth, "version", None)
            await conn.rpc_call(auth, c.NFSPROC4_NULL, b"")
            link = hook.connections[-1].link
            assert link is not None
            seen["latch"] = link.latch_state()
            await conn.close()
        finally:
            await hook.close()

    with caplog.at_level(logging.WARNING, logger="rpclatch.connect"):
        lab = run_lab(realm, tmp_path, body, server_versions=(1,))
    record = seen["record"]
    assert isinstance(record, SecurityRecord)
    assert record.latch_outcome is LatchOutcome.LATCHED_BINDING_CONF and record.latched
    assert record.bind_outcome is BindOutcome.MISMATCH and not record.bound
    assert record.gss_service is Service.PRIVACY and record.gss_version == 1 == seen["version"]
    assert record.bind_detail is not None and "AUTH_BADCRED" in record.bind_detail
    assert "v1-only server" in record.bind_detail
    assert seen["latch"] is LatchState.ESTABLISHED
    assert lab.services[-1] is Service.PRIVACY
    assert any("AUTH_BADCRED" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_v1_by_local_choice_keeps_the_latch_without_a_warning(
    realm: ThrowawayRealm, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``--gss-version 1`` against the same v1-only server: no v2 INIT, no BIND_CHANNEL, the
    table's "no binding by local choice" row (UNSUPPORTED), no security warning; the latch is
    kept and krb5p (RPCSEC_GSS v1) runs over it (RFC 5403 §2.1: v1 stays usable)."""
    seen: dict[str, object] = {}

    async def body(lab: NfsLab) -> None:
        hook = lab.hook(gss_versions=VersionPolicy.V1_ONLY)
        try:
            conn = await _open(lab, hook)
            seen["record"] = hook.records[-1]
            auth = await conn.auth_for(SecFlavor.KRB5P)
            await conn.rpc_call(auth, c.NFSPROC4_NULL, b"")
            link = hook.connections[-1].link
            assert link is not None
            seen["latch"] = link.latch_state()
            await conn.close()
        finally:
            await hook.close()

    with caplog.at_level(logging.WARNING, logger="rpclatch"):
        lab = run_lab(realm, tmp_path, body, server_versions=(1,))
    record = seen["record"]
    assert isinstance(record, SecurityRecord)
    assert record.latch_outcome is LatchOutcome.LATCHED_BINDING_CONF and record.latched
    assert record.bind_outcome is BindOutcome.UNSUPPORTED and not record.bound
    assert record.gss_service is Service.PRIVACY and record.gss_version == 1
    assert not record.warnings
    assert seen["latch"] is LatchState.ESTABLISHED
    assert lab.services[-1] is Service.PRIVACY
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_no_server_key_manager_falls_back_to_krb5i_in_the_clear(
    realm: ThrowawayRealm, tmp_path: Path
) -> None:
    seen: dict[str, object] = {}

    async def body(lab: NfsLab) -> None:
        hook = lab.hook(FallbackService.INTEGRITY)
        try:
            conn = await _open(lab, hook)
            seen["record"] = hook.records[-1]
            seen["allowed"] = conn.allowed
            auth = await conn.auth_for(SecFlavor.KRB5I)
            await conn.rpc_call(auth, c.NFSPROC4_NULL, b"")
            await conn.close()
        finally:
            await hook.close()

    lab = run_lab(realm, tmp_path, body, server_keyd=False)
    record = seen["record"]
    assert isinstance(record, SecurityRecord)
    assert (record.latch_outcome, record.bind_outcome) == (
        LatchOutcome.NOT_LATCHED,
        BindOutcome.NOT_ATTEMPTED,
    )
    assert (record.protection_error or "").startswith("key manager: IKE_")  # timed out, or ICMP unreachable
    assert record.gss_service is Service.INTEGRITY and not record.latched
    assert seen["allowed"] == (SecFlavor.KRB5I, SecFlavor.KRB5P)
    assert lab.services[-1] is Service.INTEGRITY


def test_explicit_sec_bypasses_the_kernel_world(realm: ThrowawayRealm, tmp_path: Path) -> None:
    hook = KernelConnectionSecurity(
        KernelClientWorld(str(B_ADDR), tmp_path / "none.sock"), "nfs@x", GssapiProvider()
    )
    sec = asyncio.run(hook(str(B_ADDR), 2049, "krb5i"))
    assert sec.allowed == (SecFlavor.KRB5I,) and sec.rpc is None and not hook.records


@contextmanager
def lab_in_thread(realm: ThrowawayRealm, tmp: Path, **start: object) -> Iterator[NfsLab]:
    """The lab on an event loop of its own thread, for the command run as a subprocess."""
    loop = asyncio.new_event_loop()
    lab = NfsLab(realm, tmp)
    ready = threading.Event()
    stop = asyncio.Event()
    errors: list[BaseException] = []

    async def main() -> None:
        try:
            await lab.start(**start)  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)
            ready.set()
            await lab.close()
            raise
        ready.set()
        await stop.wait()
        await lab.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    ready.wait(30)
    assert not errors, errors
    try:
        yield lab
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def _nfs_cli(realm: ThrowawayRealm, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("RPCLATCH_DEBUG", None)
    env.update(realm.env)
    env["KRB5CCNAME"] = realm.default_user.ccache
    return subprocess.run(
        [sys.executable, "-m", "rpclatch.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_cli_verbose_prints_the_row_and_fails_in_one_line(realm: ThrowawayRealm, tmp_path: Path) -> None:
    """``rpclatch -v nfs ls --sec auto --keyd``: the row line as ``rpc ping`` prints it, then (the
    lab serves no COMPOUND) one error line; a missing key manager socket is one line naming --keyd."""
    with lab_in_thread(realm, tmp_path) as lab:
        result = _nfs_cli(
            realm,
            "-v",
            "nfs",
            "ls",
            f"{B_ADDR}:/",
            "--port",
            str(lab.port),
            "--sec",
            "auto",
            "--keyd",
            str(tmp_path / "a.sock"),
            "--target",
            realm.service_name,
            "--ike-timeout",
            "3",
        )
    rows = [line for line in result.stderr.splitlines() if line.startswith("rpclatch: security: row")]
    assert len(rows) == 1, result.stderr
    assert "(LATCHED_BINDING_CONF, BOUND)" in rows[0] and "latched and bound" in rows[0], rows
    assert re.search(r"\) in [0-9.]+s: conn 1: latched to raw key", rows[0]), rows
    errors = [line for line in result.stderr.splitlines() if line.startswith("rpclatch: error:")]
    assert result.returncode != 0 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    missing = _nfs_cli(
        realm, "nfs", "ls", f"{B_ADDR}:/", "--sec", "auto", "--keyd", str(tmp_path / "no.sock")
    )
    assert missing.returncode == 2 and missing.stdout == "", missing
    line = missing.stderr.strip()
    assert "\n" not in line and "--keyd" in line and "no.sock" in line, missing.stderr


def test_latch_break_resets_and_the_nfs_reconnect_runs_the_policy_again(
    realm: ThrowawayRealm, tmp_path: Path
) -> None:
    """The server's key manager goes away (it deletes its IKE SA with the client's): ALERT BROKEN
    resets the NFS connection, its latch is released; the NFS client's reconnect asks the hook
    again, which finds no key manager at the server (IKE fails) and falls back to krb5p."""
    seen: dict[str, object] = {}

    async def body(lab: NfsLab) -> None:
        hook = lab.hook()
        try:
            conn = await _open(lab, hook)
            first = hook.connections[-1].link
            assert first is not None
            await conn.rpc_call(await conn.auth_for(SecFlavor.KRB5P), c.NFSPROC4_NULL, b"")
            await lab.daemons.pop().close()  # the server's keyd
            for _ in range(100):
                if conn.closed:
                    break
                await asyncio.sleep(0.05)
            seen["closed_after_break"] = conn.closed
            seen["first_state"] = first.latch_state()
            seen["reconnected"] = await conn.reconnect()
            seen["first_handle"] = getattr(first, "_handle", "?")
            seen["records"] = list(hook.records)
            await conn.rpc_call(await conn.auth_for(SecFlavor.KRB5P), c.NFSPROC4_NULL, b"")
            await conn.close()
        finally:
            await hook.close()

    lab = run_lab(realm, tmp_path, body)
    assert seen["closed_after_break"] is True and seen["first_state"] is LatchState.BROKEN
    assert seen["reconnected"] is True and seen["first_handle"] is None
    records = seen["records"]
    assert isinstance(records, list) and len(records) == 2
    assert records[0].bound and records[0].gss_service is Service.CHANNEL_PROT
    assert records[1].latch_outcome is LatchOutcome.NOT_LATCHED and records[1].conn_id == 2
    assert (records[1].protection_error or "").startswith("key manager: IKE_")  # unreachable or timed out
    assert lab.services == [Service.CHANNEL_PROT, Service.PRIVACY]
