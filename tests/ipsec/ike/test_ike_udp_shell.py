"""rpclatch.ipsec.ike.udp: the asyncio UDP shell around the IKE core, over loopback sockets, with
the in-process datapath standing in for XFRM (the kernel one is exercised against strongSwan and
libreswan in tests/interop/test_ike_peers.py)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from ike_harness import btns_pad, make_config

from rpclatch.ipsec.backend import InProcessBackend
from rpclatch.ipsec.ike import (
    ChildRequest,
    ChildSaDeleted,
    ChildSaEstablished,
    FailureReason,
    IkeDispatcher,
    IkeSaDeleted,
    IkeSaFailed,
    IkeSaRekeyed,
)
from rpclatch.ipsec.ike.sa import IkeState
from rpclatch.ipsec.ike.udp import REQID_BASE, IkeUdpEndpoint, NegotiatedKeys
from rpclatch.ipsec.model import (
    AES_GCM_256,
    CHACHA20_POLY1305,
    AddressRange,
    FiveTuple,
    IpProto,
    PortRange,
    Selector,
)
from rpclatch.ipsec.sad import SecurityAssociation

A_ADDR = ipaddress.ip_address("127.0.0.1")
B_ADDR = ipaddress.ip_address("127.0.0.2")
PORT = 5001
#: B protects TCP to its port 5001
B_POLICY = (Selector(AddressRange.single(B_ADDR), None, IpProto.TCP, PortRange.single(PORT)),)
FLOW = FiveTuple.of(A_ADDR, 40001, B_ADDR, PORT, IpProto.TCP)


@dataclass
class Side:
    endpoint: IkeUdpEndpoint
    backend: InProcessBackend
    keys: NegotiatedKeys

    def key(self, sa: SecurityAssociation, outbound: bool) -> bytes:
        spi, dst = (sa.spi_out, sa.remote_addr) if outbound else (sa.spi_in, sa.local_addr)
        key = self.keys.get(dst, spi)
        assert key is not None
        return key


class FailingBackend(InProcessBackend):
    def install_sa(self, sa: SecurityAssociation) -> None:
        raise OSError("the datapath is gone")


async def _side(
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
    policy: tuple[Selector, ...],
    backend: InProcessBackend,
    **config: object,
) -> Side:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((str(addr), 0))
    port = sock.getsockname()[1]
    sock.setblocking(False)
    keys = NegotiatedKeys()
    ike_config = make_config(ed25519.Ed25519PrivateKey.generate(), btns_pad(), policy, **config)
    endpoint = await IkeUdpEndpoint.open(
        IkeDispatcher(ike_config, (addr, port)), sock, backend=backend, keys=keys
    )
    return Side(endpoint, backend, keys)


def run(
    body: Callable[[Side, Side], Awaitable[None]], b_backend: InProcessBackend | None = None, **config: object
) -> None:
    async def main() -> None:
        a = await _side(A_ADDR, (), InProcessBackend(), **config)
        b = await _side(B_ADDR, B_POLICY, b_backend or InProcessBackend(), **config)
        try:
            await body(a, b)
        finally:
            a.endpoint.close()
            b.endpoint.close()

    asyncio.run(main())


def _remote(b: Side) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    return b.endpoint.dispatcher.local


def test_narrow_child_sa_is_installed_with_the_negotiated_keys_and_removed_on_delete() -> None:
    async def body(a: Side, b: Side) -> None:
        sa = a.endpoint.initiate(_remote(b), ChildRequest(Selector.for_flow(FLOW)))
        await a.endpoint.wait_for(lambda _r, e: isinstance(e, ChildSaEstablished), 5)
        await b.endpoint.wait_for(lambda _r, e: isinstance(e, ChildSaEstablished), 5)
        (sa_a,) = a.backend.sas.values()
        (sa_b,) = b.backend.sas.values()
        # one narrow SA pair per side, pinned by a reqid of its own, mirrored SPIs
        assert sa_a.is_narrow and sa_b.is_narrow
        assert sa_a.reqid >= REQID_BASE and sa_b.reqid >= REQID_BASE
        assert (sa_a.spi_in, sa_a.spi_out) == (sa_b.spi_out, sa_b.spi_in)
        assert (sa_a.local_addr, sa_a.remote_addr) == (A_ADDR, B_ADDR)
        # the key A sends with is the key B receives with, and the other way round
        assert a.key(sa_a, outbound=True) == b.key(sa_b, outbound=False)
        assert b.key(sa_b, outbound=True) == a.key(sa_a, outbound=False)
        assert a.key(sa_a, outbound=True) != a.key(sa_a, outbound=False)
        assert a.backend.spd == () and b.backend.spd == ()
        a.endpoint.delete(sa)
        await b.endpoint.wait_for(lambda _r, e: isinstance(e, IkeSaDeleted), 5)
        await a.endpoint.wait_for(lambda _r, e: isinstance(e, IkeSaDeleted), 5)
        assert a.backend.sas == {} and b.backend.sas == {}
        assert a.endpoint.installed == {} and b.endpoint.installed == {}
        assert len(a.keys) == 0 and len(b.keys) == 0

    run(body)


def test_wider_child_sa_also_gets_a_protect_spd_entry() -> None:
    # A asks for any source port: the SA is not one 5-tuple, so no per-flow policies come with it
    wide = Selector(
        AddressRange.single(A_ADDR),
        AddressRange.single(B_ADDR),
        IpProto.TCP,
        remote_ports=PortRange.single(PORT),
    )

    async def body(a: Side, b: Side) -> None:
        sa = a.endpoint.initiate(_remote(b), ChildRequest(wide))
        await a.endpoint.wait_for(lambda _r, e: isinstance(e, ChildSaEstablished), 5)
        (sa_a,) = a.backend.sas.values()
        assert not sa_a.is_narrow and sa_a.reqid == 0
        (entry,) = a.backend.spd
        assert entry.selectors == sa_a.traffic_selectors
        a.endpoint.delete(sa)
        await a.endpoint.wait_for(lambda _r, e: isinstance(e, IkeSaDeleted), 5)
        assert a.backend.sas == {} and a.backend.spd == ()

    run(body)


def test_child_rekey_replaces_the_installed_pair() -> None:
    async def body(a: Side, b: Side) -> None:
        sa = a.endpoint.initiate(_remote(b), ChildRequest(Selector.for_flow(FLOW)))
        await a.endpoint.wait_for(lambda _r, e: isinstance(e, ChildSaEstablished), 5)
        (old,) = a.endpoint.installed
        a.endpoint.rekey_child(sa, old)
        await a.endpoint.wait_for(lambda _r, e: isinstance(e, ChildSaDeleted) and e.spi_in == old, 5)
        await b.endpoint.wait_for(lambda _r, e: isinstance(e, ChildSaDeleted), 5)
        (new,) = a.endpoint.installed
        assert new != old
        (sa_a,) = a.backend.sas.values()
        (sa_b,) = b.backend.sas.values()
        assert sa_a.spi_in == new and sa_b.spi_out == new
        assert a.key(sa_a, outbound=True) == b.key(sa_b, outbound=False)
        assert len(a.keys) == 2

    run(body)


def test_ike_rekey_keeps_the_child_sas_when_the_old_ike_sa_goes() -> None:
    async def body(a: Side, b: Side) -> None:
        sa = a.endpoint.initiate(_remote(b), ChildRequest(Selector.for_flow(FLOW)))
        await a.endpoint.wait_for(lambda _r, e: isinstance(e, ChildSaEstablished), 5)
        before = dict(a.backend.sas)
        a.endpoint.rekey(sa)
        rekeyed = await a.endpoint.wait_for(lambda _r, e: isinstance(e, IkeSaRekeyed), 5)
        assert isinstance(rekeyed, IkeSaRekeyed)
        await a.endpoint.wait_for(lambda r, e: isinstance(e, IkeSaDeleted) and r == rekeyed.old, 5)
        await b.endpoint.wait_for(lambda r, e: isinstance(e, IkeSaDeleted), 5)
        # the CHILD_SA outlives the old IKE SA on both sides and now belongs to the new one
        assert a.backend.sas == before and len(b.backend.sas) == 1
        (inst,) = a.endpoint.installed.values()
        assert inst.sad_entry.ike_sa == rekeyed.new
        assert sa.successor is not None
        a.endpoint.delete(sa.successor)
        await b.endpoint.wait_for(lambda r, e: isinstance(e, IkeSaDeleted) and r == rekeyed.new, 5)
        assert b.backend.sas == {}

    run(body)


def test_a_failing_datapath_is_counted_not_raised() -> None:
    async def body(a: Side, b: Side) -> None:
        a.endpoint.initiate(_remote(b), ChildRequest(Selector.for_flow(FLOW)))
        await b.endpoint.wait_for(lambda _r, e: isinstance(e, ChildSaEstablished), 5)
        await a.endpoint.wait_for(lambda _r, e: isinstance(e, ChildSaEstablished), 5)
        assert b.endpoint.datapath_errors == 1 and b.endpoint.installed == {}
        assert len(a.backend.sas) == 1

    run(body, FailingBackend())


def test_garbage_datagrams_are_dropped() -> None:
    async def body(a: Side, b: Side) -> None:
        host, port = _remote(b)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for junk in (b"", b"\x00" * 3, b"\xff" * 28, b"\x01" * 2000):
                s.sendto(junk, (str(host), port))
        await asyncio.sleep(0.2)
        assert b.endpoint.events == [] and b.backend.sas == {}
        # and the endpoint still works afterwards
        a.endpoint.initiate(_remote(b), ChildRequest(Selector.for_flow(FLOW)))
        await b.endpoint.wait_for(lambda _r, e: isinstance(e, ChildSaEstablished), 5)

    run(body)


def _closed_port(family: socket.AddressFamily, addr: str) -> int:
    """A UDP port on ``addr`` that was bound and closed again: nothing listens there."""
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((addr, 0))
        return int(s.getsockname()[1])


def test_port_unreachable_fails_the_ike_sa_init_with_a_typed_reason() -> None:
    async def body(a: Side, _b: Side) -> None:
        remote = (B_ADDR, _closed_port(socket.AF_INET, str(B_ADDR)))
        sa = a.endpoint.initiate(remote, ChildRequest(Selector.for_flow(FLOW)))
        # the kernel's ICMP port unreachable is read from the error queue and fails the SA; the
        # bound only stops a broken test (the core alone would retransmit for a minute)
        event = await a.endpoint.wait_for(lambda _r, e: isinstance(e, IkeSaFailed), 10)
        assert isinstance(event, IkeSaFailed) and event.ike_sa == sa.ref
        assert event.reason is FailureReason.UNREACHABLE
        assert a.endpoint.icmp_errors >= 1 and a.endpoint.dispatcher.stats.unreachable_failed == 1
        assert a.endpoint.dispatcher.sas == () and a.endpoint.dispatcher.get_timer() is None
        # the socket is still usable: the error queue was drained
        a.endpoint.initiate(_remote(_b), ChildRequest(Selector.for_flow(FLOW)))
        await a.endpoint.wait_for(lambda _r, e: isinstance(e, ChildSaEstablished), 5)

    run(body)


def test_port_unreachable_over_ipv6_fails_the_ike_sa_init() -> None:
    addr = ipaddress.ip_address("::1")

    async def main() -> None:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            sock.bind((str(addr), 0))
        except OSError:  # pragma: no cover - no IPv6 loopback in this sandbox
            sock.close()
            pytest.skip("no IPv6 loopback")
        sock.setblocking(False)
        config = make_config(ed25519.Ed25519PrivateKey.generate(), btns_pad(), ())
        endpoint = await IkeUdpEndpoint.open(IkeDispatcher(config, (addr, sock.getsockname()[1])), sock)
        try:
            flow = FiveTuple.of(addr, 40001, addr, PORT, IpProto.TCP)
            endpoint.initiate(
                (addr, _closed_port(socket.AF_INET6, "::1")), ChildRequest(Selector.for_flow(flow))
            )
            event = await endpoint.wait_for(lambda _r, e: isinstance(e, IkeSaFailed), 10)
            assert isinstance(event, IkeSaFailed) and event.reason is FailureReason.UNREACHABLE
        finally:
            endpoint.close()

    asyncio.run(main())


def test_port_unreachable_never_ends_an_established_ike_sa() -> None:
    """RFC 7296 §2.4: ICMP is no proof that an established peer is gone. B's socket closes; A's
    liveness check draws a port unreachable, which A reads and ignores (only the unanswered
    liveness check could end the SA, after its retransmissions)."""

    async def body(a: Side, b: Side) -> None:
        sa = a.endpoint.initiate(_remote(b), ChildRequest(Selector.for_flow(FLOW)))
        await a.endpoint.wait_for(lambda _r, e: isinstance(e, ChildSaEstablished), 5)
        b.endpoint.close()
        a.endpoint.check_liveness(sa)
        for _ in range(500):
            if a.endpoint.icmp_errors:
                break
            await asyncio.sleep(0.01)
        assert a.endpoint.icmp_errors >= 1
        assert a.endpoint.dispatcher.stats.unreachable_ignored >= 1
        assert sa.state is IkeState.ESTABLISHED and len(a.backend.sas) == 1
        assert not any(isinstance(e, IkeSaFailed) for _r, e in a.endpoint.events)

    run(body)


def test_a_pending_icmp_error_does_not_cost_another_peer_a_retransmission() -> None:
    """With IP_RECVERR a queued ICMP error makes the kernel refuse the socket's next sendto (the
    datagram is not sent); the shell takes the error and sends that datagram again."""

    async def body(a: Side, b: Side) -> None:
        sock = a.endpoint._sock
        assert sock is not None
        sock.sendto(b"x" * 40, (str(B_ADDR), _closed_port(socket.AF_INET, str(B_ADDR))))
        time.sleep(0.05)  # blocks the loop on purpose: the error stays pending, unread
        sa = a.endpoint.initiate(_remote(b), ChildRequest(Selector.for_flow(FLOW)))
        await a.endpoint.wait_for(lambda _r, e: isinstance(e, ChildSaEstablished), 5)
        assert sa.stats.retransmits == 0  # the refused IKE_SA_INIT went out at the second try
        assert a.endpoint.icmp_errors == 1
        assert a.endpoint.dispatcher.stats.unreachable_ignored == 1  # not one of our IKE SAs

    run(body)


class SendCountingBackend(InProcessBackend):
    """Records how many datagrams its endpoint had sent when each SA pair was installed."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0
        self.sent_at_install: list[int] = []

    def install_sa(self, sa: SecurityAssociation) -> None:
        self.sent_at_install.append(self.sent)
        super().install_sa(sa)


def test_the_responder_installs_its_child_sa_before_its_response_leaves() -> None:
    """RFC 7296 §2.8: the initiator may send on the new SA as soon as it has the response, so the
    responder's pair must be in the datapath first (else the first packet meets a
    half-installed pair and, in the kernel, a reply could leave before its policy exists)."""
    counting = SendCountingBackend()

    async def body(a: Side, b: Side) -> None:
        transport = b.endpoint._transport
        assert transport is not None
        sendto = transport.sendto

        def counted(data: bytes, addr: object = None) -> None:
            counting.sent += 1
            sendto(data, addr)

        transport.sendto = counted  # type: ignore[method-assign]
        a.endpoint.initiate(_remote(b), ChildRequest(Selector.for_flow(FLOW)))
        await a.endpoint.wait_for(lambda _r, e: isinstance(e, ChildSaEstablished), 5)
        # B sent the IKE_SA_INIT response, then installed, then sent the IKE_AUTH response
        assert counting.sent_at_install == [1] and counting.sent == 2

    run(body, counting)


def test_a_chacha20_poly1305_child_sa_gets_36_octets_of_key_each_way() -> None:
    """Both ends prefer ESP ChaCha20-Poly1305 (RFC 7634): the installed pair carries that suite
    and 32-octet keys with a 4-octet salt, the same for both ends of each direction."""

    async def body(a: Side, b: Side) -> None:
        a.endpoint.initiate(_remote(b), ChildRequest(Selector.for_flow(FLOW)))
        await a.endpoint.wait_for(lambda _r, e: isinstance(e, ChildSaEstablished), 5)
        await b.endpoint.wait_for(lambda _r, e: isinstance(e, ChildSaEstablished), 5)
        (sa_a,) = a.backend.sas.values()
        (sa_b,) = b.backend.sas.values()
        assert sa_a.params.suite == sa_b.params.suite == CHACHA20_POLY1305
        assert len(a.key(sa_a, outbound=True)) == 36
        assert a.key(sa_a, outbound=True) == b.key(sa_b, outbound=False)
        assert b.key(sa_b, outbound=True) == a.key(sa_a, outbound=False)

    run(body, esp_suites=(CHACHA20_POLY1305, AES_GCM_256))
