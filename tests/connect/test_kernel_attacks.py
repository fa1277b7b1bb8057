"""Attack and failure scenarios of issue #13 in the kernel world: real key-manager daemons
in-process over loopback UDP (127.0.0.1 client, 127.0.0.2 server, 127.0.0.3 a third BTNS host),
real IKEv2 between them, real TCP sockets, a real KDC, the in-process datapath standing in for
XFRM (the lab of ``tests/connect/test_kernel.py``).

Each test says the outcome the standards expect; what is asserted is observable state (latch
states from the key managers and the links, the policy row, the service the calls used, the SAs
installed), never timing. The scenarios: a key-manager restart under a latched connection
(client side; server side; a crash without DELETE), traffic-selector stealing by a third BTNS
peer (exact and range claims), a peer with another key on the client's own address asking for
the latched 5-tuple, dead-peer detection on a blackholed path, and the SYN/SA-expiry race.
Three of them found gaps, since fixed: the server endpoint did not reconnect to a restarted key
manager, no INITIAL_CONTACT was sent, and a second peer could get an SA for a latched 5-tuple.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from rpclatch.connect import ConnectPolicy, FallbackService, LatchOutcome, ProtectedConnection
from rpclatch.connect.kernel import KernelLink
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.wire import Service
from rpclatch.ipsec.backend import InProcessBackend
from rpclatch.ipsec.ike.config import ChildRequest, Credentials, IkeConfig
from rpclatch.ipsec.ike.dispatcher import IkeDispatcher
from rpclatch.ipsec.ike.errors import NotifyType
from rpclatch.ipsec.ike.events import ChildSaEstablished, ChildSaFailed, IkeEvent, IkeSaDeleted, IkeSaFailed
from rpclatch.ipsec.ike.udp import IkeUdpEndpoint, NegotiatedKeys
from rpclatch.ipsec.keyd.daemon import KeydDaemon
from rpclatch.ipsec.latch import LatchState
from rpclatch.ipsec.model import AddressRange, FiveTuple, IkeSaRef, IPAddress, IpProto, PortRange, Selector
from rpclatch.ipsec.sad import narrow_flow
from rpclatch.ipsec.spd import SpdAction
from rpclatch.rpc.errors import RpcConnectionClosed

from .test_kernel import A_ADDR, B_ADDR, Lab, _pad, _until, echo, run

C_ADDR = ipaddress.ip_address("127.0.0.3")


def _established(daemon: KeydDaemon) -> list[str]:
    """The flows of the daemon's ESTABLISHED (non-BYPASS) latches, from its STATUS."""
    return [
        row["flow"]
        for row in daemon.service.status()["latches"]
        if row["state"] == "ESTABLISHED" and row["peer"] != "BYPASS"
    ]


async def _restart(old: KeydDaemon, path: Path) -> KeydDaemon:
    """Stop ``old`` and start a new key manager on the same address and IKE port, with the same
    configuration (same key) and control socket path: a restarted daemon, all state lost."""
    host, port = old.endpoint.dispatcher.local
    config = old.endpoint.dispatcher.config
    peer_endpoint = old.service.peer_endpoint
    await old.close()
    config = dataclasses.replace(config, child_vetter=None)  # the new service installs its own
    await asyncio.sleep(0)  # the old transport closes its socket on the next loop iteration
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((str(host), port))
    except OSError:
        sock.close()
        raise
    return await KeydDaemon.start(config, sock, path, backend=InProcessBackend(), peer_endpoint=peer_endpoint)


def test_client_key_manager_restart_resets_then_relatches_and_rebinds(
    realm: ThrowawayRealm, tmp_path: Path
) -> None:
    """RFC 5660 §2.3 / §5.5 (b): the client's key manager restarts under a latched, bound
    connection. The holder loses its control connection (its latches are gone) and the server
    gets ALERT BROKEN (the old daemon's IKE DELETE); the connection is reset at both ends, never
    continued in the clear; the next call opens a new connection, latches with the new key
    manager and binds again (channel_prot)."""

    async def body(lab: Lab) -> None:
        assert lab.a is not None and lab.b is not None and lab.endpoint is not None
        pc = lab.connection()
        record = await pc.aconnect()
        assert record.bound and record.gss_service is Service.CHANNEL_PROT
        await echo(pc)
        first = pc.link
        assert isinstance(first, KernelLink)
        assert len(_established(lab.a)) == 1
        assert lab.world is not None and lab.world.control is not None
        old_control = lab.world.control
        lab.a = await _restart(lab.a, lab.tmp / "a.sock")
        # the holder's latch is no longer ESTABLISHED, its channel is down, its connection reset
        await _until(lambda: not first.is_open, "the client's connection reset")
        assert first.latch_state() is not LatchState.ESTABLISHED
        assert first.latch is not None and first.latch.channel is not None
        assert not first.latch.channel.is_up()
        # the server side: the old daemon deleted the IKE SA with it (its SAs are gone), the
        # client's reset closed the server's connection, and no latch of it is ESTABLISHED
        await _until(lambda: lab.b is not None and not lab.b.endpoint.installed, "the server's SAs removed")
        old = lab.endpoint.accepted[0]
        await _until(lambda: old.transport is not None and old.transport.is_closing(), "server conn closed")
        await _until(lambda: lab.b is not None and _established(lab.b) == [], "the server's latch gone")
        assert pc.security.latch_state is not LatchState.ESTABLISHED and not pc.security.bound
        # the new key manager knows nothing of the old flow
        assert _established(lab.a) == []
        assert old_control.closed
        # the next call: a new connection latched with the new key manager, bound again
        await echo(pc)
        # the world replaced its closed control connection without closing it (a leaked
        # transport, see the report); close it here so that the test leaves nothing open
        assert lab.world.control is not old_control
        assert pc.link is not first and isinstance(pc.link, KernelLink)
        assert pc.link.latch_state() is LatchState.ESTABLISHED
        assert pc.security.bound and pc.security.gss_service is Service.CHANNEL_PROT
        assert pc.security.latch_state is LatchState.ESTABLISHED
        assert len(_established(lab.a)) == 1
        await _until(lambda: lab.endpoint is not None and len(lab.endpoint.accepted) == 2, "second accept")
        second = lab.endpoint.accepted[1]
        assert second.latch_state is LatchState.ESTABLISHED and second.channel is not None
        await pc.aclose()

    run(realm, tmp_path, body)


def test_server_key_manager_restart_resets_then_relatches_and_rebinds(
    realm: ThrowawayRealm, tmp_path: Path
) -> None:
    """RFC 5660 §2.3 / §5.5 (b): the server's key manager restarts under a latched, bound
    connection. The client gets ALERT BROKEN (the old daemon's IKE DELETE) and resets; the
    server loses its control connection and resets the connection too. The next call latches
    with the new server key manager; the server must find that latch (FIND_LATCH on the new key
    manager, under a LISTENER latch made there) and bind the new context to it (channel_prot)."""

    async def body(lab: Lab) -> None:
        assert lab.a is not None and lab.b is not None and lab.endpoint is not None
        pc = lab.connection()
        await pc.aconnect()
        await echo(pc)
        first = pc.link
        assert isinstance(first, KernelLink)
        lab.b = await _restart(lab.b, lab.tmp / "b.sock")
        await _until(lambda: first.latch_state() is LatchState.BROKEN, "the client's latch BROKEN")
        await _until(lambda: not first.is_open, "the client's connection reset")
        assert lab.endpoint.accepted[0].latch_state is LatchState.BROKEN
        assert _established(lab.a) == []
        await echo(pc)
        assert pc.link is not first and isinstance(pc.link, KernelLink)
        # the client latched with the new server key manager ...
        assert pc.link.latch_state() is LatchState.ESTABLISHED
        assert len(lab.b.endpoint.installed) == 1
        # ... and the server found that latch and bound to it
        await _until(lambda: lab.endpoint is not None and len(lab.endpoint.accepted) == 2, "second accept")
        second = lab.endpoint.accepted[1]
        assert second.latch_state is LatchState.ESTABLISHED and second.channel is not None
        assert pc.security.bound and pc.security.gss_service is Service.CHANNEL_PROT
        await pc.aclose()

    run(realm, tmp_path, body)


async def _third_host(addr: IPAddress = C_ADDR) -> IkeUdpEndpoint:
    """A third BTNS host (127.0.0.3 unless told): a bare IKE endpoint with its own raw key,
    driven directly."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((str(addr), 0))
    sock.setblocking(False)
    config = IkeConfig(Credentials.raw_key(ed25519.Ed25519PrivateKey.generate()), _pad(), ())
    local = (addr, sock.getsockname()[1])
    return await IkeUdpEndpoint.open(
        IkeDispatcher(config, local), sock, backend=InProcessBackend(), keys=NegotiatedKeys()
    )


def _client_sport(link: KernelLink) -> int:
    local = link.five_tuple.split(" ", 1)[1].split(" -> ")[0]
    return int(local.rsplit(":", 1)[1])


async def _steal(
    lab: Lab, claim: Callable[[FiveTuple], Selector], addr: IPAddress = C_ADDR
) -> tuple[ProtectedConnection, IkeEvent]:
    """Latch and bind the client, then let a third BTNS host (127.0.0.3) ask the server's key
    manager for a CHILD_SA with TSi/TSr ``claim(client's 5-tuple)``; return the client's
    connection and the attacker's outcome, after checking that no SA of the attacker at the
    server covers the client's 5-tuple and that the client's latch is untouched."""
    assert lab.b is not None and lab.endpoint is not None
    pc = lab.connection()
    await pc.aconnect()
    await echo(pc)
    link = pc.link
    assert isinstance(link, KernelLink)
    sport = _client_sport(link)
    # the client's 5-tuple, oriented as the attacker claims it (it says it is 127.0.0.1:sport)
    stolen = FiveTuple(A_ADDR, sport, B_ADDR, lab.port, IpProto.TCP)
    before = set(lab.b.endpoint.installed)
    attacker = await _third_host(addr)
    try:
        sa = attacker.initiate(lab.b.endpoint.dispatcher.local, ChildRequest(claim(stolen)))
        spi_i = sa.spi_i

        def done(ref: IkeSaRef, event: IkeEvent) -> bool:
            return ref.initiator_spi == spi_i and isinstance(
                event, ChildSaEstablished | ChildSaFailed | IkeSaFailed
            )

        event = await attacker.wait_for(done, 10)
        # at the server: no SA of the attacker's covers the client's 5-tuple (server-oriented)
        mirrored = FiveTuple(B_ADDR, lab.port, A_ADDR, sport, IpProto.TCP)
        for spi in set(lab.b.endpoint.installed) - before:
            item = lab.b.endpoint.installed[spi]
            assert not item.child.selector.matches(mirrored)
            assert narrow_flow(item.sad_entry) != mirrored
    finally:
        attacker.close()
    # the client's latch, and the server's, are untouched; calls stay channel_prot, same link
    assert link.latch_state() is LatchState.ESTABLISHED and link.is_open
    assert lab.endpoint.accepted[0].latch_state is LatchState.ESTABLISHED
    await echo(pc)
    assert pc.link is link and pc.security.gss_service is Service.CHANNEL_PROT and pc.security.bound
    return pc, event


def test_a_third_btns_peer_cannot_steal_the_clients_traffic_selector(
    realm: ThrowawayRealm, tmp_path: Path
) -> None:
    """RFC 7619 §2.5 / RFC 4301 §4.4.3 (and RFC 5386 §3.1): a third unauthenticated (BTNS) peer
    on 127.0.0.3 negotiates a CHILD_SA with the server's key manager whose TSi claims the
    client's address 127.0.0.1 and the client's exact 5-tuple. The PAD binds a BTNS peer's
    selectors to its own address; nothing of the claim is left after that narrowing, so the
    CHILD_SA is refused with TS_UNACCEPTABLE (the IKE SA itself may stay, RFC 7296 §1.2).
    Nothing is installed for the client's 5-tuple with that peer; the client's latch stays
    ESTABLISHED and its calls still go channel_prot on the same connection."""

    async def body(lab: Lab) -> None:
        pc, event = await _steal(lab, Selector.for_flow)
        assert isinstance(event, ChildSaFailed)
        assert event.by_peer and event.notify == NotifyType.TS_UNACCEPTABLE
        await pc.aclose()

    run(realm, tmp_path, body)


def test_a_third_btns_peer_claiming_a_range_is_narrowed_to_its_own_address(
    realm: ThrowawayRealm, tmp_path: Path
) -> None:
    """RFC 7619 §2.5 / RFC 4301 §4.4.3: the same third BTNS peer claims TSi 127.0.0.0-127.0.0.7
    (its own address and the client's) for the client's ports. The server's key manager narrows
    TSi to the attacker's own address (RFC 7296 §2.9): the CHILD_SA is made for 127.0.0.3 only,
    never covering the client's 5-tuple; the client's latch stays ESTABLISHED."""

    def claim(flow: FiveTuple) -> Selector:
        exact = Selector.for_flow(flow)
        wide = AddressRange(ipaddress.ip_address("127.0.0.0"), ipaddress.ip_address("127.0.0.7"))
        return dataclasses.replace(exact, local=wide)

    async def body(lab: Lab) -> None:
        pc, event = await _steal(lab, claim)
        assert isinstance(event, ChildSaEstablished) and event.child.narrowed
        local = event.child.selector.local
        assert local is not None and local.first == local.last == C_ADDR
        assert lab.b is not None and len(lab.b.endpoint.installed) == 2  # the client's and this one
        await pc.aclose()

    run(realm, tmp_path, body)


def test_a_peer_on_the_clients_address_claiming_a_port_range_is_narrowed_around_the_latch(
    realm: ThrowawayRealm, tmp_path: Path
) -> None:
    """RFC 5660 §2.3 (SHOULD narrow), RFC 7296 §2.9: another BTNS peer on the client's own
    address (the PAD's own-address rule lets it through) asks the server's key manager for a
    CHILD_SA covering the client's source ports 1024-65535 towards the server's port. That range
    holds the latched 5-tuple of another peer but is wider than it, so it is narrowed around it
    instead of breaking the latch: the CHILD_SA is made for a subset that does not match the
    latched 5-tuple, and the client's latch and calls are untouched."""

    def claim(flow: FiveTuple) -> Selector:
        return dataclasses.replace(Selector.for_flow(flow), local_ports=PortRange(1024, 65535))

    async def body(lab: Lab) -> None:
        pc, event = await _steal(lab, claim, A_ADDR)
        assert isinstance(event, ChildSaEstablished) and event.child.narrowed
        ports = event.child.selector.local_ports
        assert (ports.low, ports.high) != (1024, 65535)
        await pc.aclose()

    run(realm, tmp_path, body)


def test_dead_peer_detection_on_a_blackholed_path_breaks_the_latch_never_clear(
    realm: ThrowawayRealm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 5660 §6.5 (and §2.3, RFC 7296 §2.4): the path to the server's key manager becomes a
    black hole (its IKE datagrams are dropped, no ICMP) under a latched, bound connection. The
    client's key manager's liveness check gets no answer, the IKE SA fails, the latch goes
    BROKEN (ALERT BROKEN) and the connection is reset, its 5-tuple under an exact DISCARD policy
    (never continued in the clear). The next call cannot latch (IKE times out) and, under
    BYPASS-OR-PROTECT, reconnects unlatched with the fallback service (krb5p)."""

    async def body(lab: Lab) -> None:
        assert lab.a is not None and lab.b is not None and lab.endpoint is not None
        guard = lab.a.service.guard
        assert guard is not None
        # the client's key manager checks liveness soon and gives up fast (RFC 7296 §2.1, §2.4)
        dispatcher = lab.a.endpoint.dispatcher
        dispatcher.config = dataclasses.replace(
            dispatcher.config, liveness_interval=0.2, retransmit_timeout=0.05, retransmit_tries=2
        )
        pc = lab.connection(ConnectPolicy(port=lab.port, ike_timeout=0.5, fallback=FallbackService.PRIVACY))
        record = await pc.aconnect()
        assert record.bound and record.gss_service is Service.CHANNEL_PROT
        await echo(pc)
        first = pc.link
        assert isinstance(first, KernelLink)
        (ike,) = dispatcher.sas
        # the black hole: the server's key manager hears nothing from now on
        monkeypatch.setattr(lab.b.endpoint, "datagram_received", lambda data, addr: None)
        await lab.a.endpoint.wait_for(
            lambda ref, event: ref.initiator_spi == ike.spi_i and isinstance(event, IkeSaFailed), 30
        )
        await _until(lambda: first.latch_state() is LatchState.BROKEN, "the client's latch BROKEN")
        await _until(lambda: not first.is_open, "the client's connection reset")
        assert first.latch is not None and first.latch.channel is not None
        assert not first.latch.channel.is_up()
        # the flow lost its SAs while latched: an exact DISCARD policy, never the clear
        (flow,) = guard.blocked
        assert guard.inner.flow_policies[flow].entry.action is SpdAction.DISCARD
        assert flow.local_port == _client_sport(first) and flow.remote_port == lab.port
        assert not lab.a.endpoint.installed
        # the next call: IKE to the black hole times out; unlatched, krb5p, a new 5-tuple
        await echo(pc)
        assert pc.link is not first
        assert pc.security.latch_outcome is LatchOutcome.NOT_LATCHED and not pc.security.bound
        assert pc.security.gss_service is Service.PRIVACY
        assert isinstance(pc.link, KernelLink) and _client_sport(pc.link) != flow.local_port
        await pc.aclose()

    run(realm, tmp_path, body)


async def _crash_and_restart(old: KeydDaemon, path: Path) -> KeydDaemon:
    """The key manager dies without a word to its peers (no IKE DELETE): its control socket
    closes (as the kernel closes a dead process's sockets) and its endpoint goes; then a new one
    starts on the same address and IKE port with the same key (``rpclatch ipsec keyd --key``)."""
    host, port = old.endpoint.dispatcher.local
    config = old.endpoint.dispatcher.config
    peer_endpoint = old.service.peer_endpoint
    await old.server.close()
    old.service.close()
    old.endpoint.close()
    await asyncio.sleep(0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((str(host), port))
    except OSError:
        sock.close()
        raise
    return await KeydDaemon.start(
        dataclasses.replace(config, child_vetter=None),
        sock,
        path,
        backend=InProcessBackend(),
        peer_endpoint=peer_endpoint,
    )


def test_client_key_manager_crash_then_restart_clears_the_lost_sas_at_the_server(
    realm: ThrowawayRealm, tmp_path: Path
) -> None:
    """RFC 5660 §2.3 (never ESTABLISHED with lost state), RFC 7296 §2.4: the client's key
    manager crashes (no DELETE) under a latched, bound connection and is restarted with the same
    key. The holder loses its control connection and resets; the next call latches with the new
    key manager and binds again. Its first IKE_AUTH carries INITIAL_CONTACT, so the server's key
    manager forgets the IKE SA (and CHILD_SA) the crashed one left behind: afterwards it holds
    exactly one IKE SA and one CHILD_SA with the client, the new ones."""

    async def body(lab: Lab) -> None:
        assert lab.a is not None and lab.b is not None and lab.endpoint is not None
        pc = lab.connection()
        await pc.aconnect()
        await echo(pc)
        first = pc.link
        assert isinstance(first, KernelLink)
        assert lab.world is not None and lab.world.control is not None
        (old_ike,) = lab.b.endpoint.dispatcher.sas
        lab.a = await _crash_and_restart(lab.a, lab.tmp / "a.sock")
        await _until(lambda: not first.is_open, "the client's connection reset")
        assert first.latch_state() is not LatchState.ESTABLISHED
        await echo(pc)
        assert pc.link is not first and pc.security.bound
        assert pc.security.gss_service is Service.CHANNEL_PROT
        new = lab.a.endpoint.dispatcher.sas
        assert len(new) == 1
        # INITIAL_CONTACT is acted on when the server gets the IKE_AUTH, before it answers
        assert old_ike not in lab.b.endpoint.dispatcher.sas
        assert len(lab.b.endpoint.dispatcher.sas) == 1
        assert len(lab.b.endpoint.installed) == 1
        await pc.aclose()

    run(realm, tmp_path, body)


def test_the_sa_of_a_syn_expiring_before_find_latch_gives_no_channel(
    realm: ThrowawayRealm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 5660 §2.3.1: the SYN arrived protected, but its SAs are gone (here the client's key
    manager deleted the IKE SA) before the server asks FIND_LATCH for the accepted 5-tuple. The
    server must not latch that connection to a peer it can no longer name: FIND_LATCH finds no
    CHILD_SA, so the connection gets no channel (a BYPASS record at most) and channel_prot is
    never possible on it; the client's latch is BROKEN and its connection reset (its 5-tuple
    under DISCARD, not in the clear). A new connection latches and binds as usual."""

    async def body(lab: Lab) -> None:
        assert lab.a is not None and lab.b is not None and lab.endpoint is not None
        assert lab.world is not None and lab.endpoint.control is not None
        a_ep, control = lab.a.endpoint, lab.endpoint.control
        request = control.request
        raced: list[str] = []

        async def late_find_latch(op: str, **members: Any) -> dict[str, Any]:
            if op == "FIND_LATCH" and not raced:
                # the race: the SYN's SAs expire between the accept and FIND_LATCH
                raced.append(f"{members['remote_addr']}:{members['remote_port']}")
                (ike,) = a_ep.dispatcher.sas
                a_ep.delete(ike)
                await a_ep.wait_for(
                    lambda ref, event: ref.initiator_spi == ike.spi_i and isinstance(event, IkeSaDeleted), 5
                )
            return await request(op, **members)

        monkeypatch.setattr(control, "request", late_find_latch)
        await lab.world.start()
        link = await lab.world.open(lab.port, protect=True, btns_ok=True, ike_timeout=2)
        assert link.latch is not None
        await _until(lambda: bool(lab.endpoint and lab.endpoint.accepted), "the accept")
        (accepted,) = lab.endpoint.accepted
        assert raced == [f"{A_ADDR}:{_client_sport(link)}"]
        # the server: no channel, not latched to anyone; its key manager has no peer latch
        assert accepted.channel is None and accepted.latch_state is not LatchState.ESTABLISHED
        assert _established(lab.b) == []
        assert not lab.b.endpoint.installed
        # the client: BROKEN, reset, its 5-tuple discarded
        await _until(lambda: link.latch_state() is LatchState.BROKEN, "the client's latch BROKEN")
        assert lab.a.service.guard is not None
        assert [f.local_port for f in lab.a.service.guard.blocked] == [_client_sport(link)]
        link.close()
        # a new connection latches and binds as usual
        pc = lab.connection()
        record = await pc.aconnect()
        assert record.bound and record.gss_service is Service.CHANNEL_PROT
        await echo(pc)
        second = lab.endpoint.accepted[-1]
        assert second.latch_state is LatchState.ESTABLISHED and second.channel is not None
        await pc.aclose()

    run(realm, tmp_path, body)


def test_an_unauthenticated_peer_claiming_the_clients_address_for_its_5_tuple_breaks_the_latch(
    realm: ThrowawayRealm, tmp_path: Path
) -> None:
    """RFC 5386 §3.1, RFC 5660 §2.3 and §5.5: another BTNS peer with its own key, on the
    client's own address 127.0.0.1 (another IKE port: a second host behind the same address, or
    a local process), asks the server's key manager for a CHILD_SA for exactly the client's
    5-tuple while the client's connection is latched to the client's key. The own-address rule
    of the PAD lets 127.0.0.1 through and an exact 5-tuple cannot be narrowed, so the server's
    latch goes BROKEN -- its flow under an exact DISCARD and the server told -- before the SA is
    accepted; the SA is then installed under that DISCARD (nothing of the flow travels under the
    newcomer's keys). The server resets the connection (the default disposition), so the
    client's next call reconnects on a new 5-tuple, re-latches to the server's key and re-binds;
    the server latches the new connection to the client's key, not the newcomer's."""

    async def body(lab: Lab) -> None:
        assert lab.b is not None and lab.endpoint is not None and lab.b.service.guard is not None
        pc = lab.connection()
        await pc.aconnect()
        await echo(pc)
        link = pc.link
        assert isinstance(link, KernelLink)
        first = pc.security
        sport = _client_sport(link)
        stolen = FiveTuple(A_ADDR, sport, B_ADDR, lab.port, IpProto.TCP)  # as the newcomer says it
        mirrored = FiveTuple(B_ADDR, lab.port, A_ADDR, sport, IpProto.TCP)  # the server's view
        accepted = lab.endpoint.accepted[0]
        attacker = await _third_host(A_ADDR)
        try:
            sa = attacker.initiate(lab.b.endpoint.dispatcher.local, ChildRequest(Selector.for_flow(stolen)))
            spi_i = sa.spi_i

            def done(ref: IkeSaRef, event: IkeEvent) -> bool:
                return ref.initiator_spi == spi_i and isinstance(
                    event, ChildSaEstablished | ChildSaFailed | IkeSaFailed
                )

            event = await attacker.wait_for(done, 10)
            assert isinstance(event, ChildSaEstablished), event
            # the newcomer's SA is in the server's SAD for exactly that 5-tuple, under DISCARD
            theirs = [i for i in lab.b.endpoint.installed.values() if i.child.spi_out == event.child.spi_in]
            assert len(theirs) == 1 and narrow_flow(theirs[0].sad_entry) == mirrored
            assert mirrored in lab.b.service.guard.blocked
            policy = lab.b.service.guard.flow_policies[mirrored]
            assert policy.entry.action is SpdAction.DISCARD
            await _until(lambda: accepted.latch_state is LatchState.BROKEN, "the server latch BROKEN")
        finally:
            attacker.close()
        # the server reset the connection: the call that finds the reset may fail (RFC 5660
        # §5.5 (b)); the next one reconnects on a new 5-tuple, latched and bound again
        with contextlib.suppress(RpcConnectionClosed):
            await echo(pc)
        await echo(pc)
        second = pc.security
        new_link = pc.link
        assert isinstance(new_link, KernelLink) and new_link is not link
        assert second.conn_id != first.conn_id and _client_sport(new_link) != sport
        assert second.bound and second.gss_service is Service.CHANNEL_PROT
        assert second.peer == first.peer  # the server's key again
        server_side = lab.endpoint.accepted[-1]
        assert server_side is not accepted and server_side.latch_state is LatchState.ESTABLISHED
        assert server_side.channel is not None
        await pc.aclose()

    run(realm, tmp_path, body)


def test_a_second_peer_gets_no_sa_for_a_5_tuple_negotiated_but_not_yet_found(
    realm: ThrowawayRealm, tmp_path: Path
) -> None:
    """RFC 5660 §2.3 (the window before FIND_LATCH): the client's key manager has negotiated the
    CHILD_SA for a 5-tuple (CREATE_CONNECTION_LATCH, ESTABLISHED) but the server application has
    not accepted the connection yet, so the server's key manager holds the installed CHILD_SA
    and no latch. A peer with another key on the client's own address asking for that 5-tuple
    conflicts with the installed SA all the same: TS_UNACCEPTABLE, nothing of its installed."""

    async def body(lab: Lab) -> None:
        assert lab.b is not None and lab.world is not None
        await lab.world.start()
        assert lab.world.control is not None
        sport = 40999
        answer = await lab.world.control.request(
            "CREATE_CONNECTION_LATCH",
            local_addr=str(A_ADDR),
            local_port=sport,
            remote_addr=str(B_ADDR),
            remote_port=lab.port,
            proto="tcp",
            timeout=10,
        )
        assert answer.get("ok"), answer
        mirrored = FiveTuple(B_ADDR, lab.port, A_ADDR, sport, IpProto.TCP)  # the server's view
        ours = [i for i in lab.b.endpoint.installed.values() if narrow_flow(i.sad_entry) == mirrored]
        assert len(ours) == 1
        before = set(lab.b.endpoint.installed)
        attacker = await _third_host(A_ADDR)
        try:
            stolen = FiveTuple(A_ADDR, sport, B_ADDR, lab.port, IpProto.TCP)
            sa = attacker.initiate(lab.b.endpoint.dispatcher.local, ChildRequest(Selector.for_flow(stolen)))
            spi_i = sa.spi_i

            def done(ref: IkeSaRef, event: IkeEvent) -> bool:
                return ref.initiator_spi == spi_i and isinstance(
                    event, ChildSaEstablished | ChildSaFailed | IkeSaFailed
                )

            event = await attacker.wait_for(done, 10)
        finally:
            attacker.close()
        assert isinstance(event, ChildSaFailed), event
        assert event.by_peer and event.notify == NotifyType.TS_UNACCEPTABLE
        assert set(lab.b.endpoint.installed) == before

    run(realm, tmp_path, body)
