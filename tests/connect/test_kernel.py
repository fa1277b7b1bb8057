"""The kernel world of the connect policy (:mod:`rpclatch.connect.kernel`) against two real
key-manager daemons running in-process over loopback UDP (127.0.0.1 / 127.0.0.2), with the
in-process datapath standing in for the kernel's XFRM (no root needed; the UML interop test
runs the same flow over kernel ESP), real TCP sockets and a real KDC.

What is checked is what happened at both ends: the client's security record (policy row), the
server's FIND_LATCH result and the channel the RPCSEC_GSS server bound to, channel_prot calls
answered, an ALERT BROKEN resetting the connection and the next call re-latching and re-binding,
and the fallback when the server has no key manager. The key manager's side of optional
protection (RFC 5660 §3.1, §2.3): an accepted connection that FIND_LATCH finds unprotected gets a
BYPASS record for its 5-tuple, and a CHILD_SA proposed later for exactly that 5-tuple is refused
as a conflict (another 5-tuple is not); released latches and BYPASS records are held
TIME_WAIT-like, the initiator's SAs staying installed until the hold ends.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from rpclatch.connect import (
    BindOutcome,
    ConnectionReset,
    ConnectPolicy,
    FallbackService,
    LatchOutcome,
    ProtectedConnection,
)
from rpclatch.connect.gss import RpcsecGssConnector
from rpclatch.connect.kernel import (
    KernelClientWorld,
    KernelLink,
    KernelServerEndpoint,
    KeydChannel,
    KeydControl,
    KeydRefused,
    KeydUnavailable,
)
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.server import GssServerAuth
from rpclatch.gss.wire import Service
from rpclatch.ipsec.backend import InProcessBackend
from rpclatch.ipsec.ike.config import Credentials, IkeConfig
from rpclatch.ipsec.ike.events import ChildSaDeleted
from rpclatch.ipsec.keyd.daemon import KeydDaemon
from rpclatch.ipsec.keyd.protocol import ErrorCode
from rpclatch.ipsec.latch import LatchState
from rpclatch.ipsec.model import AddressRange, AuthMethod, IPAddress, IpProto, Selector
from rpclatch.ipsec.pad import ChildSaAuthorization, PadEntry, PeerAuthorizationDatabase, PublicKeyPattern
from rpclatch.ipsec.spd import SpdAction
from rpclatch.rpc.server import RpcDispatcher
from rpclatch.rpc.testprog import (
    PROC_ECHO,
    RPCLATCH_TEST_PROG,
    RPCLATCH_TEST_VERS,
    add_test_program,
    decode_opaque,
    encode_opaque,
)

A_ADDR = ipaddress.ip_address("127.0.0.1")
B_ADDR = ipaddress.ip_address("127.0.0.2")
PAYLOAD = b"kernel-world-payload:" * 16


def _pad() -> PeerAuthorizationDatabase:
    entry = PadEntry(
        "btns", PublicKeyPattern(), AuthMethod.RAW_PUBLIC_KEY, ChildSaAuthorization(own_address_only=True)
    )
    return PeerAuthorizationDatabase([entry])


def _udp(addr: IPAddress) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((str(addr), 0))
    return sock


class Lab:
    """Two keyds, the server endpoint on 127.0.0.2 and a client world on 127.0.0.1."""

    def __init__(self, realm: ThrowawayRealm, tmp: Path) -> None:
        self.realm = realm
        self.tmp = tmp
        self.a: KeydDaemon | None = None
        self.b: KeydDaemon | None = None
        self.endpoint: KernelServerEndpoint | None = None
        self.world: KernelClientWorld | None = None
        self.port = 0

    async def start(self, *, server_keyd: bool = True) -> None:
        a_sock, b_sock = _udp(A_ADDR), _udp(B_ADDR)
        ports = {A_ADDR: a_sock.getsockname()[1], B_ADDR: b_sock.getsockname()[1]}

        def resolve(addr: IPAddress) -> tuple[IPAddress, int]:
            return (addr, ports[addr])

        def config(policy: tuple[Selector, ...]) -> IkeConfig:
            return IkeConfig(Credentials.raw_key(ed25519.Ed25519PrivateKey.generate()), _pad(), policy)

        b_policy = (Selector(AddressRange.single(B_ADDR), None, IpProto.TCP),)
        self.a = await KeydDaemon.start(
            config(()), a_sock, self.tmp / "a.sock", backend=InProcessBackend(), peer_endpoint=resolve
        )
        self.b = await KeydDaemon.start(
            config(b_policy), b_sock, self.tmp / "b.sock", backend=InProcessBackend(), peer_endpoint=resolve
        )
        dispatcher = RpcDispatcher()
        add_test_program(dispatcher)
        dispatcher.add_flavor(
            GssServerAuth(GssapiProvider(self.realm.service_name, keytab=self.realm.keytab))
        )
        self.endpoint = KernelServerEndpoint(dispatcher, self.tmp / "b.sock")
        self.port = await self.endpoint.start(str(B_ADDR), 0)
        if not server_keyd:
            await self.b.close()  # the server's key manager is gone: IKE goes unanswered
            self.b = None
        self.world = KernelClientWorld(str(B_ADDR), self.tmp / "a.sock", source_addr=str(A_ADDR))

    def connection(self, policy: ConnectPolicy | None = None) -> ProtectedConnection:
        assert self.world is not None
        gss = RpcsecGssConnector(
            GssapiProvider(ccache=self.realm.default_user.ccache),
            self.realm.service_name,
            RPCLATCH_TEST_PROG,
            RPCLATCH_TEST_VERS,
        )
        return ProtectedConnection(self.world, gss, policy or ConnectPolicy(port=self.port, ike_timeout=2.0))

    async def close(self) -> None:
        for closer in (self.world, self.endpoint, self.a, self.b):
            if closer is not None:
                await closer.close()


def run(realm: ThrowawayRealm, tmp: Path, body: Callable[[Lab], Awaitable[None]], **start: bool) -> None:
    async def main() -> None:
        lab = Lab(realm, tmp)
        try:
            await lab.start(**start)
            await body(lab)
        finally:
            await lab.close()

    asyncio.run(main())


async def echo(pc: ProtectedConnection) -> None:
    reply = await pc.acall(RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, PROC_ECHO, encode_opaque(PAYLOAD))
    assert decode_opaque(reply) == PAYLOAD


def test_latched_bound_channel_prot_and_the_server_binds_to_the_found_latch(
    realm: ThrowawayRealm, tmp_path: Path
) -> None:
    async def body(lab: Lab) -> None:
        pc = lab.connection()
        record = await pc.aconnect()
        assert record.latched and record.latch_state is LatchState.ESTABLISHED
        assert record.latch_outcome is LatchOutcome.LATCHED_BINDING_CONF
        assert record.bind_outcome is BindOutcome.BOUND and record.bound
        assert record.gss_service is Service.CHANNEL_PROT and record.gss_version == 2
        assert record.peer is not None and record.peer.startswith("raw key sha256:")
        await echo(pc)
        # the server side: FIND_LATCH found the connection's latch, its channel carries the same
        # binding data as the client's, and the GSS server bound the context on that connection
        assert lab.endpoint is not None
        (accepted,) = lab.endpoint.accepted
        assert accepted.latch is not None and accepted.latch_state is LatchState.ESTABLISHED
        link = pc.link
        assert isinstance(link, KernelLink) and link.latch is not None
        assert isinstance(accepted.channel, KeydChannel) and isinstance(link.latch.channel, KeydChannel)
        assert accepted.channel.binding_data == link.latch.channel.binding_data
        assert accepted.info is not None and accepted.info.channel is accepted.channel
        (gss_server,) = [f for f in lab.endpoint.dispatcher.flavors.values() if isinstance(f, GssServerAuth)]
        assert gss_server.bound_handles(accepted.info.conn_id)
        await pc.aclose()

    run(realm, tmp_path, body)


def test_alert_broken_resets_then_the_next_call_relatches_and_rebinds(
    realm: ThrowawayRealm, tmp_path: Path
) -> None:
    async def body(lab: Lab) -> None:
        pc = lab.connection()
        await pc.aconnect()
        await echo(pc)
        first = pc.link
        assert isinstance(first, KernelLink) and first.latch is not None
        # the server's key manager loses the CHILD_SA: both latches go BROKEN (RFC 5660 §2.3)
        assert lab.a is not None
        (ike,) = lab.a.endpoint.dispatcher.sas
        lab.a.endpoint.delete(ike)
        for _ in range(100):
            if first.latch_state() is LatchState.BROKEN:
                break
            await asyncio.sleep(0.02)
        assert first.latch_state() is LatchState.BROKEN
        assert not first.is_open  # reset (RFC 5660 §5.5 (b))
        assert pc.security.latch_state is LatchState.BROKEN and not pc.security.bound
        assert not first.latch.channel.is_up()
        await echo(pc)  # reconnects: new connection, new latch, new context, new BIND_CHANNEL
        assert pc.link is not first
        assert pc.security.bound and pc.security.gss_service is Service.CHANNEL_PROT
        assert pc.security.generation == 2
        assert lab.endpoint is not None
        assert [a.latch is not None for a in lab.endpoint.accepted] == [True, True]
        assert lab.endpoint.accepted[0].latch_state is LatchState.BROKEN
        await pc.aclose()

    run(realm, tmp_path, body)


def test_no_key_manager_on_the_server_falls_back_to_krb5p(realm: ThrowawayRealm, tmp_path: Path) -> None:
    async def body(lab: Lab) -> None:
        pc = lab.connection(ConnectPolicy(port=lab.port, ike_timeout=0.5, fallback=FallbackService.PRIVACY))
        record = await pc.aconnect()
        assert not record.latched and record.latch_outcome is LatchOutcome.NOT_LATCHED
        assert record.gss_service is Service.PRIVACY and not record.bound
        assert record.protection_error is not None and "IKE_UNREACHABLE" in record.protection_error
        await echo(pc)
        assert lab.endpoint is not None
        (accepted,) = lab.endpoint.accepted
        assert accepted.latch is None and accepted.channel is None
        await pc.aclose()

    run(realm, tmp_path, body, server_keyd=False)


def test_missing_keyd_socket_is_a_typed_error(tmp_path: Path) -> None:
    async def body() -> None:
        with pytest.raises(KeydUnavailable, match="no such socket"):
            await KeydControl.connect(tmp_path / "none.sock")

    asyncio.run(body())


def test_a_reset_link_raises_connection_reset(realm: ThrowawayRealm, tmp_path: Path) -> None:
    async def body(lab: Lab) -> None:
        pc = lab.connection()
        await pc.aconnect()
        link = pc.link
        assert isinstance(link, KernelLink)
        link.reset("test")
        with pytest.raises(ConnectionReset):
            await link.call(None, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, 0, b"")  # type: ignore[arg-type]
        await pc.aclose()

    run(realm, tmp_path, body)


async def _latch(lab: Lab, local_port: int) -> dict[str, object]:
    """CREATE_CONNECTION_LATCH on the client's keyd for 127.0.0.1:local_port -> the server."""
    assert lab.world is not None and lab.world.control is not None
    return await lab.world.control.request(
        "CREATE_CONNECTION_LATCH",
        wait=10,
        timeout=5,
        local_addr=str(A_ADDR),
        local_port=local_port,
        remote_addr=str(B_ADDR),
        remote_port=lab.port,
    )


async def _accepted(lab: Lab, count: int) -> None:
    assert lab.endpoint is not None
    for _ in range(200):
        if len(lab.endpoint.accepted) >= count and all(a.info is not None for a in lab.endpoint.accepted):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the server accepted {len(lab.endpoint.accepted)} connections, not {count}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((str(A_ADDR), 0))
        return int(s.getsockname()[1])


def test_an_unprotected_accept_gets_a_bypass_record_that_refuses_a_later_sa(
    realm: ThrowawayRealm, tmp_path: Path
) -> None:
    async def body(lab: Lab) -> None:
        assert lab.world is not None and lab.endpoint is not None and lab.b is not None
        await lab.world.start()
        link = await lab.world.open(lab.port, protect=False, btns_ok=True, ike_timeout=1)
        await _accepted(lab, 1)
        (accepted,) = lab.endpoint.accepted
        assert accepted.bypass and accepted.latch is not None and accepted.channel is None
        assert accepted.latch_state is None  # not latched: no channel for RPCSEC_GSS
        status = lab.b.service.status()
        assert [row["peer"] for row in status["latches"] if row["state"] == "ESTABLISHED"] == ["BYPASS"]
        sport = int(link.five_tuple.split(":")[1].split(" ")[0])
        # a CHILD_SA for exactly that 5-tuple conflicts with the BYPASS record: refused
        with pytest.raises(KeydRefused) as refused:
            await _latch(lab, sport)
        assert refused.value.code is ErrorCode.POLICY_REFUSED
        assert not lab.b.endpoint.installed
        # another 5-tuple is protected as usual
        other = await _latch(lab, _free_port())
        assert other["ok"] is True
        assert len(lab.b.endpoint.installed) == 1
        # the BYPASS record is held after the connection closes, and forgotten after the hold
        now = [0.0]
        lab.b.service.clock = lambda: now[0]
        link.close()
        for _ in range(200):
            if not [row for row in lab.b.service.status()["latches"] if row["peer"] == "BYPASS"]:
                break
            await asyncio.sleep(0.01)
        assert [h["bypass"] for h in lab.b.service.status()["held"]] == [True]
        with pytest.raises(KeydRefused):
            await _latch(lab, sport)
        now[0] += lab.b.service.hold + 1
        assert lab.b.service.status()["held"] == []
        again = await _latch(lab, sport)
        assert again["ok"] is True

    run(realm, tmp_path, body)


def test_a_released_latch_keeps_its_sas_for_the_hold(realm: ThrowawayRealm, tmp_path: Path) -> None:
    async def body(lab: Lab) -> None:
        assert lab.a is not None and lab.b is not None
        lab.a.service.hold = 0.5
        pc = lab.connection()
        await pc.aconnect()
        link = pc.link
        assert isinstance(link, KernelLink)
        await pc.aclose()  # closes the socket and releases the latch
        # released, but held: the client's SAs (and the IKE SA) stay for the FIN exchange
        for _ in range(100):
            if lab.a.service.status()["held"]:
                break
            await asyncio.sleep(0.01)
        assert lab.a.service.status()["held"], "the released latch is not held"
        assert lab.a.endpoint.installed and lab.a.endpoint.dispatcher.sas
        # then the IKE SA is deleted with its peer, and the SAs go at both ends
        for _ in range(500):
            if not lab.a.endpoint.installed and not lab.b.endpoint.installed:
                break
            await asyncio.sleep(0.01)
        assert not lab.a.endpoint.installed and not lab.b.endpoint.installed

    run(realm, tmp_path, body)


def test_a_released_flow_is_sealed_for_time_wait_after_its_sas_go(
    realm: ThrowawayRealm, tmp_path: Path
) -> None:
    """When the hold ends, the 5-tuple goes under an exact DISCARD at both ends before its SAs go
    (a late FIN or ACK of the closed connection is dropped, not sent in clear), until TIME_WAIT
    has passed; then nothing of it is left."""

    async def body(lab: Lab) -> None:
        assert lab.a is not None and lab.b is not None
        guards = [lab.a.service.guard, lab.b.service.guard]
        for service in (lab.a.service, lab.b.service):
            service.hold, service.time_wait = 0.2, 1.0
        pc = lab.connection()
        await pc.aconnect()
        await echo(pc)
        await pc.aclose()
        await _until(lambda: all(g is not None and g.sealed for g in guards), "both ends sealed")
        for guard in guards:
            assert guard is not None
            (flow,) = guard.sealed
            assert guard.inner.flow_policies[flow].entry.action is SpdAction.DISCARD
            assert lab.port in (flow.local_port, flow.remote_port)
        await _until(lambda: not lab.a.endpoint.installed and not lab.b.endpoint.installed, "the SAs gone")
        assert lab.a.service.status()["time_wait_sealed"] == 1
        await _until(lambda: all(g is not None and not g.sealed for g in guards), "the seals lifted")
        for guard in guards:
            assert guard is not None and not guard.inner.flow_policies

    run(realm, tmp_path, body)


async def _until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


def test_a_latched_flow_that_loses_its_sas_is_discarded_not_sent_in_clear(
    realm: ThrowawayRealm, tmp_path: Path
) -> None:
    async def body(lab: Lab) -> None:
        assert lab.a is not None and lab.b is not None
        a_guard, b_guard = lab.a.service.guard, lab.b.service.guard
        assert a_guard is not None and b_guard is not None
        lab.a.service.hold = lab.b.service.hold = 0.2
        pc = lab.connection()
        await pc.aconnect()
        await echo(pc)
        first = pc.link
        assert isinstance(first, KernelLink)
        assert not a_guard.blocked and not b_guard.blocked
        # the server's key manager deletes the IKE SA: both ends lose the flow's SAs
        (ike_b,) = lab.b.endpoint.dispatcher.sas
        lab.b.endpoint.delete(ike_b)
        await _until(lambda: first.latch_state() is LatchState.BROKEN, "the client's latch BROKEN")
        # at both ends the flow got an exact DISCARD policy as its SAs went (never clear)
        for guard in (a_guard, b_guard):
            (flow,) = guard.blocked
            assert guard.inner.flow_policies[flow].entry.action is SpdAction.DISCARD
            assert flow.remote_port == lab.port or flow.local_port == lab.port
        # the next call re-latches on a new 5-tuple, which is protected as usual
        await echo(pc)
        assert pc.security.bound and pc.security.gss_service is Service.CHANNEL_PROT
        # the broken latches were released (reset, closed): their DISCARD goes after the hold
        await _until(lambda: not a_guard.blocked and not b_guard.blocked, "the DISCARD policies removed")
        assert not [p for p in a_guard.inner.flow_policies.values() if p.entry.action is SpdAction.DISCARD]
        await pc.aclose()

    run(realm, tmp_path, body)


def test_a_child_sa_rekey_keeps_the_latch(realm: ThrowawayRealm, tmp_path: Path) -> None:
    async def body(lab: Lab) -> None:
        assert lab.a is not None and lab.a.service.guard is not None
        pc = lab.connection()
        await pc.aconnect()
        link = pc.link
        assert isinstance(link, KernelLink)
        (ike,) = lab.a.endpoint.dispatcher.sas
        (old_spi,) = lab.a.endpoint.installed
        lab.a.endpoint.rekey_child(ike, old_spi)
        await lab.a.endpoint.wait_for(lambda _r, e: isinstance(e, ChildSaDeleted) and e.spi_in == old_spi, 5)
        assert old_spi not in lab.a.endpoint.installed and len(lab.a.endpoint.installed) == 1
        await asyncio.sleep(0.05)  # let an alert, if any, arrive
        assert link.latch_state() is LatchState.ESTABLISHED and link.is_open
        assert not lab.a.service.guard.blocked
        await echo(pc)
        assert pc.link is link and pc.security.gss_service is Service.CHANNEL_PROT
        await pc.aclose()

    run(realm, tmp_path, body)


def test_btns_not_ok_refuses_the_self_asserted_latch_and_falls_back(
    realm: ThrowawayRealm, tmp_path: Path
) -> None:
    async def body(lab: Lab) -> None:
        assert lab.a is not None
        pc = lab.connection(ConnectPolicy(port=lab.port, ike_timeout=2.0, btns_ok=False))
        record = await pc.aconnect()
        assert record.latch_outcome is LatchOutcome.NOT_LATCHED and record.gss_service is Service.PRIVACY
        assert record.protection_error is not None and "btns_ok is off" in record.protection_error
        await echo(pc)
        # the refused latch was released (its 5-tuple is only held, no latch left)
        assert not [row for row in lab.a.service.status()["latches"] if row["state"] == "ESTABLISHED"]
        await pc.aclose()

    run(realm, tmp_path, body)


def test_the_server_accepts_channel_prot_only_on_the_bound_connection_while_its_latch_is_up(
    realm: ThrowawayRealm, tmp_path: Path
) -> None:
    async def body(lab: Lab) -> None:
        assert lab.world is not None and lab.endpoint is not None
        await lab.world.start()
        gss = RpcsecGssConnector(
            GssapiProvider(ccache=realm.default_user.ccache),
            realm.service_name,
            RPCLATCH_TEST_PROG,
            RPCLATCH_TEST_VERS,
        )
        one = await lab.world.open(lab.port, protect=True, btns_ok=True, ike_timeout=2)
        two = await lab.world.open(lab.port, protect=True, btns_ok=True, ike_timeout=2)
        assert one.latch is not None and two.latch is not None
        ctx = await gss.establish(one, want_v2=True)
        assert await ctx.bind_channel(one.latch.channel) is BindOutcome.BOUND
        auth = ctx.auth(Service.CHANNEL_PROT)
        args = encode_opaque(PAYLOAD)
        ping = (RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, PROC_ECHO, args)
        assert decode_opaque(await one.call(auth, *ping)) == PAYLOAD
        # the handle bound on connection one, sent with channel_prot on connection two: the
        # server refuses it (RPCSEC_GSS_CTXPROBLEM) and the client flavor drops its binding,
        # resending with krb5p (gss.client)
        assert ctx.bound
        assert decode_opaque(await two.call(auth, *ping)) == PAYLOAD
        assert not ctx.bound
        # a context bound on connection one whose latch goes down at the server: refused too
        ctx2 = await gss.establish(one, want_v2=True)
        assert await ctx2.bind_channel(one.latch.channel) is BindOutcome.BOUND
        auth2 = ctx2.auth(Service.CHANNEL_PROT)
        await _accepted(lab, 2)
        sport = one.five_tuple.split(" -> ")[0].rsplit(":", 1)[1]
        (first,) = [a for a in lab.endpoint.accepted if a.five_tuple.endswith(f":{sport}")]
        assert first.channel is not None
        first.channel.mark_broken("test")
        assert decode_opaque(await one.call(auth2, *ping)) == PAYLOAD
        assert not ctx2.bound
        one.close()
        two.close()

    run(realm, tmp_path, body)


def test_closing_the_server_while_it_admits_a_connection_closes_that_socket(
    realm: ThrowawayRealm, tmp_path: Path
) -> None:
    """An endpoint closed while a connection waits for its FIND_LATCH answer closes that accepted
    socket (the peer sees the end at once): before, the cancelled admission kept it open, held by
    the task's exception, until the garbage collector found it (a ResourceWarning in a later
    test)."""

    async def body(lab: Lab) -> None:
        assert lab.endpoint is not None
        admitting = asyncio.Event()

        async def stuck(conn: socket.socket) -> None:
            admitting.set()
            await asyncio.Event().wait()  # FIND_LATCH that never answers

        lab.endpoint._admit = stuck  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setblocking(False)
        try:
            await loop.sock_connect(client, (str(B_ADDR), lab.port))
            await asyncio.wait_for(admitting.wait(), 5)
            await lab.endpoint.close()
            assert await asyncio.wait_for(loop.sock_recv(client, 1), 5) == b""
        finally:
            client.close()

    run(realm, tmp_path, body)
