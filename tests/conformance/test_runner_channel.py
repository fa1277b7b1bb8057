"""The channel cases of ``rpclatch conformance`` (CB-10..CB-16) on connections latched through a
key manager: two key-manager daemons in-process over loopback UDP (127.0.0.1, 127.0.0.2) with the
in-process datapath, rpclatch's RPCSEC_GSS server behind the kernel-world endpoint (FIND_LATCH per
accepted connection), a real KDC. rpclatch's server passes; one that ignores which connection a
handle was bound on FAILs exactly CB-12.

The expiry cases see a context's lifetime as the client's GSS context reports it (the service
ticket's end). With the realm's ordinary tickets CB-14 and CB-15 shorten it by failed
BIND_CHANNELs (RFC 5403 §9); with a ticket of a few seconds (``kinit -l``, in these tests only)
CB-14 waits for the context's real end. A server that lets channel_prot through after expiry, or
one that never shortens a lifetime, is caught (a WARN: both are SHOULDs of RFC 5403 §9)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from rpclatch.conformance import registry, runner
from rpclatch.conformance.latching import KeydLatcher
from rpclatch.conformance.model import Outcome, Report
from rpclatch.conformance.probe import NoChannel, ProbeConfig
from rpclatch.connect.kernel import KernelServerEndpoint
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.server import GssServerAuth
from rpclatch.gss.wire import SHA256, BindChanRes, BindChanStatus, Service, decode_cred_fields
from rpclatch.ipsec.backend import InProcessBackend
from rpclatch.ipsec.ike.config import Credentials, IkeConfig
from rpclatch.ipsec.keyd.daemon import KeydDaemon
from rpclatch.ipsec.model import AddressRange, AuthMethod, IPAddress, IpProto, Selector
from rpclatch.ipsec.pad import ChildSaAuthorization, PadEntry, PeerAuthorizationDatabase, PublicKeyPattern
from rpclatch.rpc.messages import AuthFlavor
from rpclatch.rpc.server import RpcDispatcher
from rpclatch.rpc.testprog import RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, add_test_program

A_ADDR = ipaddress.ip_address("127.0.0.1")
B_ADDR = ipaddress.ip_address("127.0.0.2")
CHANNEL_CASES = ("CB-10", "CB-11", "CB-12", "CB-13", "CB-14", "CB-15", "CB-16")
#: --expiry-wait of the runs on the realm's ordinary tickets: CB-14 and CB-15 shorten the context.
EXPIRY_WAIT = 4.0


def _pad() -> PeerAuthorizationDatabase:
    entry = PadEntry(
        "btns", PublicKeyPattern(), AuthMethod.RAW_PUBLIC_KEY, ChildSaAuthorization(own_address_only=True)
    )
    return PeerAuthorizationDatabase([entry])


def _udp(addr: IPAddress) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((str(addr), 0))
    return sock


class _AnyConnection(GssServerAuth):
    """Accepts channel_prot on any connection once the handle is bound somewhere."""

    @staticmethod
    def _channel_prot(call: Any, seq: int, ctx: Any, conn: Any) -> Any:
        binding = ctx.binding
        if binding is not None:
            conn = type(conn)(binding.conn_id, conn.peer, conn.transport, binding.channel, conn.attributes)
        return GssServerAuth._channel_prot(call, seq, ctx, conn)


class _HashNotSuppMicOverNothing(GssServerAuth):
    """Signs HASH_NOTSUPP over an empty hash instead of the bindings under rbcr_oid_list[0]."""

    def _bind_reply(self, ctx: Any, seq: int, cb_hash: bytes, res: BindChanRes) -> Any:
        if res.status is BindChanStatus.RGSS2_BIND_CHAN_HASH_NOTSUPP:
            cb_hash = b""
        return super()._bind_reply(ctx, seq, cb_hash, res)


class _ChannelProtIgnoresExpiry(GssServerAuth):
    """Checks a context's lifetime on every call but channel_prot (which needs no GSS token)."""

    def check_call(self, call: Any, conn: Any, now: float) -> Any:
        if call.cred.flavor == AuthFlavor.RPCSEC_GSS:
            try:
                service = decode_cred_fields(call.cred.body)[3]
            except Exception:
                service = None
            if service is Service.CHANNEL_PROT:
                now = 0.0  # before any context's end
        return super().check_call(call, conn, now)


class _NoHalving(GssServerAuth):
    """Never shortens a context's lifetime after a failed BIND_CHANNEL."""

    def _halve_lifetime(self, ctx: Any, now: float) -> None:
        return None


#: The clock-skew allowance of the short-ticket runs (MIT adds it to an acceptor's context lifetime).
SHORT_SKEW = 1


def _short_ticket(realm: ThrowawayRealm, tmp: Path, seconds: int, monkeypatch: pytest.MonkeyPatch) -> str:
    """A credential cache with a ticket for alice that ends after ``seconds``, and this process's
    Kerberos configuration (read by the in-process server) with a clock-skew allowance of
    :data:`SHORT_SKEW` s instead of 300, so that the server's context ends a second after it."""
    conf = tmp / "krb5-short-skew.conf"
    text = Path(realm.env["KRB5_CONFIG"]).read_text()
    conf.write_text(text.replace("[libdefaults]", f"[libdefaults]\n\tclockskew = {SHORT_SKEW}", 1))
    monkeypatch.setenv("KRB5_CONFIG", str(conf))
    user = realm.users["alice"]
    ccache = str(tmp / f"short-{seconds}s.ccache")
    subprocess.run(
        ["kinit", "-l", f"{seconds}s", "-c", ccache, user.principal],
        input=user.password + "\n",
        text=True,
        env={**os.environ, **realm.env, "KRB5_CONFIG": str(conf)},
        check=True,
        capture_output=True,
    )
    return ccache


async def _run(
    realm: ThrowawayRealm,
    tmp: Path,
    gss_cls: type[GssServerAuth],
    ids: tuple[str, ...],
    *,
    ccache: str | None = None,
    expiry_wait: float = EXPIRY_WAIT,
    clock_skew: float = 300.0,
    **gss_options: Any,
) -> Report:
    a_sock, b_sock = _udp(A_ADDR), _udp(B_ADDR)
    ports = {A_ADDR: a_sock.getsockname()[1], B_ADDR: b_sock.getsockname()[1]}

    def resolve(addr: IPAddress) -> tuple[IPAddress, int]:
        return (addr, ports[addr])

    def config(policy: tuple[Selector, ...]) -> IkeConfig:
        return IkeConfig(Credentials.raw_key(ed25519.Ed25519PrivateKey.generate()), _pad(), policy)

    b_policy = (Selector(AddressRange.single(B_ADDR), None, IpProto.TCP),)
    a = await KeydDaemon.start(
        config(()), a_sock, tmp / "a.sock", backend=InProcessBackend(), peer_endpoint=resolve
    )
    b = await KeydDaemon.start(
        config(b_policy), b_sock, tmp / "b.sock", backend=InProcessBackend(), peer_endpoint=resolve
    )
    dispatcher = RpcDispatcher()
    add_test_program(dispatcher)
    dispatcher.add_flavor(gss_cls(GssapiProvider(realm.service_name, keytab=realm.keytab), **gss_options))
    endpoint = KernelServerEndpoint(dispatcher, tmp / "b.sock")
    latcher = KeydLatcher(tmp / "a.sock", source_addr=str(A_ADDR), ike_timeout=2.0)
    try:
        port = await endpoint.start(str(B_ADDR), 0)
        probe = ProbeConfig(
            str(B_ADDR),
            port,
            RPCLATCH_TEST_PROG,
            RPCLATCH_TEST_VERS,
            target=realm.service_name,
            drop_wait=0.3,
            channels=latcher,
            expiry_wait=expiry_wait,
            clock_skew=clock_skew,
        )
        provider = GssapiProvider(ccache=ccache or realm.users["alice"].ccache)
        return await runner.run(registry.select(ids), probe, provider)
    finally:
        await latcher.close()
        await endpoint.close()
        await a.close()
        await b.close()


def test_channel_cases_pass_on_latched_connections(realm: ThrowawayRealm, tmp_path: Path) -> None:
    report = asyncio.run(_run(realm, tmp_path, GssServerAuth, ()))
    outcomes = {r.spec.id: (r.outcome, r.reason) for r in report.results}
    assert {i: o for i, (o, _) in outcomes.items() if o is not Outcome.PASS} == {}, outcomes
    assert "failed BIND_CHANNELs" in outcomes["CB-14"][1]
    assert "refused with RPCSEC_GSS_CTXPROBLEM" in outcomes["CB-14"][1]
    assert "a context without failures still works" in outcomes["CB-15"][1]
    assert "bound under rpclatch-ipsec-latch-v1" in outcomes["CB-10"][1]
    assert "unlatched connection refused with RPCSEC_GSS_CTXPROBLEM" in outcomes["CB-12"][1]
    assert outcomes["CB-16"][1] == "SHA-512 accepted: bound"
    assert report.exit_code == 0


def test_hash_negotiation_with_a_server_offering_only_sha256(realm: ThrowawayRealm, tmp_path: Path) -> None:
    report = asyncio.run(_run(realm, tmp_path, GssServerAuth, ("CB-16",), hashes=(SHA256,)))
    (result,) = report.results
    assert result.outcome is Outcome.PASS
    assert result.reason == "HASH_NOTSUPP with a verified MIC, then bound with sha256"


def test_a_hash_notsupp_signed_over_the_wrong_hash_fails_cb_16(realm: ThrowawayRealm, tmp_path: Path) -> None:
    report = asyncio.run(_run(realm, tmp_path, _HashNotSuppMicOverNothing, CHANNEL_CASES, hashes=(SHA256,)))
    failed = {r.spec.id: r.reason for r in report.results if r.outcome is Outcome.FAIL}
    assert set(failed) == {"CB-16"} and "does not verify" in failed["CB-16"]


def test_a_server_ignoring_the_bound_connection_fails_cb_12(realm: ThrowawayRealm, tmp_path: Path) -> None:
    report = asyncio.run(_run(realm, tmp_path, _AnyConnection, CHANNEL_CASES))
    failed = {r.spec.id: r.reason for r in report.results if r.outcome is Outcome.FAIL}
    assert set(failed) == {"CB-12"} and "was executed" in failed["CB-12"]
    assert report.exit_code == 1


def _short_run(
    realm: ThrowawayRealm,
    tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    gss_cls: type[GssServerAuth],
    case_id: str,
    seconds: int,
) -> Report:
    ccache = _short_ticket(realm, tmp, seconds, monkeypatch)
    return asyncio.run(
        _run(realm, tmp, gss_cls, (case_id,), ccache=ccache, expiry_wait=15, clock_skew=SHORT_SKEW)
    )


def test_channel_prot_after_the_real_expiry_of_a_short_ticket(
    realm: ThrowawayRealm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = _short_run(realm, tmp_path, monkeypatch, GssServerAuth, "CB-14", 8)
    (result,) = report.results
    assert result.outcome is Outcome.PASS, result
    assert "after the ticket's end" in result.reason and "RPCSEC_GSS_CTXPROBLEM" in result.reason


def test_lifetime_shortening_with_a_short_ticket(
    realm: ThrowawayRealm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = _short_run(realm, tmp_path, monkeypatch, GssServerAuth, "CB-15", 10)
    (result,) = report.results
    assert result.outcome is Outcome.PASS, result
    assert "after 1 failed" in result.reason or "after 2 failed" in result.reason


@pytest.mark.parametrize("short", [False, True])
def test_channel_prot_after_expiry_warns_cb_14(
    realm: ThrowawayRealm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, short: bool
) -> None:
    if short:
        report = _short_run(realm, tmp_path, monkeypatch, _ChannelProtIgnoresExpiry, "CB-14", 8)
    else:
        report = asyncio.run(_run(realm, tmp_path, _ChannelProtIgnoresExpiry, CHANNEL_CASES))
    bad = {r.spec.id: (r.outcome, r.reason) for r in report.results if r.outcome is not Outcome.PASS}
    assert set(bad) == {"CB-14"} and bad["CB-14"][0] is Outcome.WARN, bad
    assert "channel_prot executed" in bad["CB-14"][1]
    assert report.exit_code == 0  # RFC 5403 §9: a SHOULD


def test_a_server_that_never_shortens_a_lifetime_warns_cb_15(realm: ThrowawayRealm, tmp_path: Path) -> None:
    report = asyncio.run(_run(realm, tmp_path, _NoHalving, CHANNEL_CASES))
    bad = {r.spec.id: (r.outcome, r.reason) for r in report.results if r.outcome is not Outcome.PASS}
    assert {i: o for i, (o, _) in bad.items()} == {"CB-14": Outcome.OMIT, "CB-15": Outcome.WARN}, bad
    assert "did not shorten its lifetime" in bad["CB-14"][1]
    assert "cut by less than half" in bad["CB-15"][1]
    assert report.exit_code == 0


def test_no_key_manager_omits_the_channel_cases(tmp_path: Path) -> None:
    latcher = KeydLatcher(tmp_path / "none.sock")

    async def body() -> None:
        with pytest.raises(NoChannel, match="no key manager"):
            await latcher.open("127.0.0.1", 9, 1.0)
        await latcher.close()

    asyncio.run(body())
