"""The channel cases of ``rpclatch conformance`` (CB-10..CB-13) on connections latched through a
key manager: two key-manager daemons in-process over loopback UDP (127.0.0.1, 127.0.0.2) with the
in-process datapath, rpclatch's RPCSEC_GSS server behind the kernel-world endpoint (FIND_LATCH per
accepted connection), a real KDC. rpclatch's server passes; one that ignores which connection a
handle was bound on FAILs exactly CB-12."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
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
from rpclatch.gss.wire import SHA256, BindChanRes, BindChanStatus
from rpclatch.ipsec.backend import InProcessBackend
from rpclatch.ipsec.ike.config import Credentials, IkeConfig
from rpclatch.ipsec.keyd.daemon import KeydDaemon
from rpclatch.ipsec.model import AddressRange, AuthMethod, IPAddress, IpProto, Selector
from rpclatch.ipsec.pad import ChildSaAuthorization, PadEntry, PeerAuthorizationDatabase, PublicKeyPattern
from rpclatch.rpc.server import RpcDispatcher
from rpclatch.rpc.testprog import RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, add_test_program

A_ADDR = ipaddress.ip_address("127.0.0.1")
B_ADDR = ipaddress.ip_address("127.0.0.2")
CHANNEL_CASES = ("CB-10", "CB-11", "CB-12", "CB-13", "CB-16")


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


async def _run(
    realm: ThrowawayRealm, tmp: Path, gss_cls: type[GssServerAuth], ids: tuple[str, ...], **gss_options: Any
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
        )
        return await runner.run(
            registry.select(ids), probe, GssapiProvider(ccache=realm.users["alice"].ccache)
        )
    finally:
        await latcher.close()
        await endpoint.close()
        await a.close()
        await b.close()


def test_channel_cases_pass_on_latched_connections(realm: ThrowawayRealm, tmp_path: Path) -> None:
    report = asyncio.run(_run(realm, tmp_path, GssServerAuth, ()))
    outcomes = {r.spec.id: (r.outcome, r.reason) for r in report.results}
    assert {i: o for i, (o, _) in outcomes.items() if o is not Outcome.PASS} == {
        "CB-14": Outcome.OMIT,
        "CB-15": Outcome.OMIT,
    }, outcomes
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


def test_no_key_manager_omits_the_channel_cases(tmp_path: Path) -> None:
    latcher = KeydLatcher(tmp_path / "none.sock")

    async def body() -> None:
        with pytest.raises(NoChannel, match="no key manager"):
            await latcher.open("127.0.0.1", 9, 1.0)
        await latcher.close()

    asyncio.run(body())
