"""XfrmBackend against this machine's kernel XFRM (policies, ACQUIRE, socket policies, inbound
policy checks), each test in its own namespace pair. The host kernel has no ESP transform, so SAs
are tested in the UML guest (tests/interop/test_xfrm_guest.py); here only their refusal path."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from rpclatch.ipsec.backend import FlowPolicy, SocketPolicy
from rpclatch.ipsec.engine import EngineConfig, IPsecEngine
from rpclatch.ipsec.model import (
    AES_GCM_128,
    AES_GCM_256,
    CHACHA20_POLY1305,
    AddressRange,
    AuthMethod,
    CipherSuite,
    FiveTuple,
    IdType,
    IkeId,
    IkeSaRef,
    LocalIdentity,
    PortRange,
    ProtectionParams,
    ProtectionPolicy,
    PskPeer,
    Selector,
    ip,
)
from rpclatch.ipsec.pad import ChildSaAuthorization, IdPattern, PadEntry
from rpclatch.ipsec.pad_latching import TimeWaitPolicy
from rpclatch.ipsec.sad import SecurityAssociation
from rpclatch.ipsec.spd import EntryOrigin, SpdAction, SpdEntry
from rpclatch.ipsec.xfrm.backend import DerivedKeys, XfrmBackend, XfrmEventReader, XfrmUnsupported
from rpclatch.ipsec.xfrm.netlink import Dir, SaId, SaInfo, XfrmId, XfrmKernelError, XfrmSocket
from rpclatch.ipsec.xfrm.netlink import Selector as XfrmSelector
from rpclatch.ipsec.xfrm.netns import open_socket

pytestmark = pytest.mark.root

A_ADDR = "192.0.2.1"
B_ADDR = "192.0.2.2"
_ids = itertools.count(1)


@dataclass(frozen=True)
class NsPair:
    a: str
    b: str

    def run(self, ns: str, *argv: str) -> str:
        proc = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=True)
        return proc.stdout

    def ip(self, ns: str, *argv: str) -> str:
        proc = subprocess.run(["ip", "-n", ns, *argv], capture_output=True, text=True, check=True)
        return proc.stdout

    def xfrm_stat(self, ns: str) -> dict[str, int]:
        out = self.run(ns, "cat", "/proc/net/xfrm_stat")
        return {k: int(v) for k, v in (line.split() for line in out.splitlines() if line.strip())}


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], capture_output=True, text=True, check=True)


@pytest.fixture
def ns_pair() -> Iterator[NsPair]:
    if os.geteuid() != 0:
        pytest.skip("XFRM tests need root (network namespaces, xfrm_user)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 'ip' is not installed")
    n = next(_ids)
    pair = NsPair(f"rlxfrm-{os.getpid()}-{n}a", f"rlxfrm-{os.getpid()}-{n}b")
    made: list[str] = []
    try:
        for ns in (pair.a, pair.b):
            _ip("netns", "add", ns)
            made.append(ns)
        _ip("-n", pair.a, "link", "add", "xa", "type", "veth", "peer", "name", "xb", "netns", pair.b)
        for ns, ifname, addr in ((pair.a, "xa", A_ADDR), (pair.b, "xb", B_ADDR)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", ifname)
            _ip("-n", ns, "link", "set", ifname, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield pair
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


KEYS = DerivedKeys(b"test secret")
PROTECT = ProtectionPolicy()


def protect_entry(flow: FiveTuple) -> SpdEntry:
    return SpdEntry.flow_entry(flow, SpdAction.PROTECT, PROTECT, EntryOrigin.PINNED_LATCH)


def nfs_spd() -> SpdEntry:
    """Configured PROTECT for all TCP to B:2049 (local-oriented from A)."""
    sel = Selector(
        AddressRange.single(A_ADDR), AddressRange.single(B_ADDR), 6, remote_ports=PortRange.single(2049)
    )
    return SpdEntry("nfs", (sel,), SpdAction.PROTECT, PROTECT)


@contextlib.contextmanager
def listener(ns: str, port: int) -> Iterator[list[tuple[str, int]]]:
    """A TCP listener in ``ns`` on B:port accepting in a thread; yields the peers it accepted."""
    srv = open_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((B_ADDR, port))
    srv.listen(8)
    srv.settimeout(0.2)
    peers: list[tuple[str, int]] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, peer = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            peers.append(peer)
            conn.close()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield peers
    finally:
        stop.set()
        t.join(5)
        srv.close()


def client(ns: str, sport: int) -> socket.socket:
    s = open_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
    s.bind((A_ADDR, sport))
    s.settimeout(0.5)
    return s


def connect_errno(s: socket.socket, port: int = 2049) -> int:
    """0 if connected, else the errno (ETIMEDOUT when the SYNs went nowhere: with
    net.core.xfrm_larval_drop=1 the kernel blackholes a flow whose SA is missing). The sockets of
    :func:`client` give up after 0.5 s, which is enough to see a blackhole."""
    try:
        s.connect((B_ADDR, port))
    except TimeoutError:
        return errno.ETIMEDOUT
    except OSError as exc:
        return exc.errno or -1
    return 0


def connects(s: socket.socket, port: int = 2049) -> bool:
    """Whether ``s`` connects, waiting long enough for a loaded machine (a connect expected to
    succeed must not fail on the short timeout meant for blackholed ones)."""
    s.settimeout(10)
    return connect_errno(s, port) == 0


@pytest.fixture
def backend(ns_pair: NsPair) -> Iterator[XfrmBackend]:
    b = XfrmBackend(ns_pair.a, KEYS)
    try:
        yield b
    finally:
        b.close()


def ip_policies(pair: NsPair, ns: str) -> str:
    return pair.ip(ns, "xfrm", "policy", "list")


def policy_blocks(text: str) -> dict[str, str]:
    """``ip xfrm policy`` output by "<selector line> | <dir line>" (without the leading 'src ')."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("src "):
            blocks.append([])
        if blocks and line.strip():
            blocks[-1].append(line.strip())
    return {f"{b[0].removeprefix('src ')} | {b[1]}": "\n".join(b) for b in blocks}


def test_flow_policy_round_trip_matches_ip_xfrm(ns_pair: NsPair, backend: XfrmBackend) -> None:
    prot = FiveTuple.of(A_ADDR, 40000, B_ADDR, 2049, 6)
    byp = FiveTuple.of(A_ADDR, 40001, B_ADDR, 2049, 6)
    dis = FiveTuple.of(A_ADDR, 40002, B_ADDR, 2049, 6)
    backend.install_flow_policy(FlowPolicy(prot, protect_entry(prot), 7))
    backend.install_flow_policy(
        FlowPolicy(byp, SpdEntry.flow_entry(byp, SpdAction.BYPASS, None, EntryOrigin.TEMPLATE_CLONE), None)
    )
    backend.install_flow_policy(
        FlowPolicy(dis, SpdEntry.flow_entry(dis, SpdAction.DISCARD, None, EntryOrigin.BROKEN_LATCH), None)
    )
    text = ip_policies(ns_pair, ns_pair.a)
    blocks = policy_blocks(text)
    out_prot = f"{A_ADDR}/32 dst {B_ADDR}/32 proto tcp sport 40000 dport 2049 | dir out priority 0 ptype main"
    in_prot = f"{B_ADDR}/32 dst {A_ADDR}/32 proto tcp sport 2049 dport 40000 | dir in priority 0 ptype main"
    assert out_prot in blocks and in_prot in blocks, text
    assert (
        f"tmpl src {A_ADDR} dst {B_ADDR}" in blocks[out_prot]
        and "proto esp reqid 7 mode transport" in blocks[out_prot]
    )
    assert f"tmpl src {B_ADDR} dst {A_ADDR}" in blocks[in_prot] and "reqid 7" in blocks[in_prot]
    out_byp = f"{A_ADDR}/32 dst {B_ADDR}/32 proto tcp sport 40001 dport 2049 | dir out priority 0 ptype main"
    assert "tmpl" not in blocks[out_byp] and "action block" not in blocks[out_byp]
    out_dis = (
        f"{A_ADDR}/32 dst {B_ADDR}/32 proto tcp sport 40002 dport 2049 | dir out action block priority 0 "
        "ptype main"
    )
    assert out_dis in blocks, text
    # the netlink dump says the same
    dumped = {(p.info.sel.sport, p.info.sel.dport, p.info.dir): p for p in backend.nl.policies()}
    assert len(dumped) == 6
    assert dumped[(40000, 2049, Dir.OUT)].templates[0].reqid == 7
    assert dumped[(40002, 2049, Dir.OUT)].info.action == 1 and not dumped[(40001, 2049, Dir.OUT)].templates
    # replacing keeps one policy per direction; removing deletes both, twice is harmless
    backend.install_flow_policy(FlowPolicy(prot, protect_entry(prot), 9))
    dumped = {(p.info.sel.sport, p.info.sel.dport, p.info.dir): p for p in backend.nl.policies()}
    assert len(dumped) == 6 and dumped[(2049, 40000, Dir.IN)].templates[0].reqid == 9
    assert backend.flow_policies[prot].reqid == 9 and set(backend.flow_policies) == {prot, byp, dis}
    for flow in (prot, byp, dis):
        backend.remove_flow_policy(flow)
        backend.remove_flow_policy(flow)
    assert ip_policies(ns_pair, ns_pair.a).strip() == ""
    assert backend.installed_flows == frozenset()


def wait_delivered(reader: XfrmEventReader, count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while reader.delivered < count and time.monotonic() < deadline:
        select.select([reader.fileno()], [], [], 0.2)
        reader.pump()


def test_protect_flow_policy_connect_triggers_acquire_to_engine(
    ns_pair: NsPair, backend: XfrmBackend
) -> None:
    flow = FiveTuple.of(A_ADDR, 40010, B_ADDR, 2049, 6)
    engine = IPsecEngine([nfs_spd()], backend=backend)
    reader = XfrmEventReader(backend, engine, time.monotonic)
    try:
        backend.install_flow_policy(FlowPolicy(flow, protect_entry(flow), 3))
        with listener(ns_pair.b, 2049) as peers:
            s = client(ns_pair.a, 40010)
            with s:
                before = ns_pair.xfrm_stat(ns_pair.a)["XfrmOutNoStates"]
                assert connect_errno(s) == errno.ETIMEDOUT  # no SA: the kernel ACQUIREs, sends nothing
                assert ns_pair.xfrm_stat(ns_pair.a)["XfrmOutNoStates"] > before
            wait_delivered(reader, 1)
            assert peers == []
        assert reader.delivered == 1
        # the engine got backend_acquire(flow): its key manager now negotiates for exactly this flow
        assert list(engine.key_manager.pending) == [flow]
        assert engine.key_manager.pending[flow].policy == PROTECT
    finally:
        reader.close()


def test_socket_bypass_overrides_global_protect(ns_pair: NsPair, backend: XfrmBackend) -> None:
    backend.install_spd([nfs_spd()])
    assert "tmpl" in ip_policies(ns_pair, ns_pair.a)
    with listener(ns_pair.b, 2049) as peers:
        plain = client(ns_pair.a, 40020)
        with plain:
            assert connect_errno(plain) == errno.ETIMEDOUT  # the global SPD wants ESP: nothing sent
        byp = client(ns_pair.a, 40021)
        with byp:
            flow = FiveTuple.of(A_ADDR, 40021, B_ADDR, 2049, 6)
            bypass = SpdEntry.flow_entry(flow, SpdAction.BYPASS, None, EntryOrigin.APPLICATION_REQUEST)
            backend.install_socket_policy(SocketPolicy(byp.fileno(), flow, bypass, None))
            assert connects(byp)
            deadline = time.monotonic() + 5
            while not peers and time.monotonic() < deadline:
                time.sleep(0.05)
            assert peers == [(A_ADDR, 40021)]
            backend.remove_socket_policy(byp.fileno())
            assert backend.installed_sockets == frozenset()


def test_socket_protect_policy_then_removed(ns_pair: NsPair, backend: XfrmBackend) -> None:
    """An ESP socket policy blocks the socket where the global SPD has nothing; removing it lets the
    same socket connect in clear."""
    with listener(ns_pair.b, 2049) as peers:
        s = client(ns_pair.a, 40030)
        with s:
            flow = FiveTuple.of(A_ADDR, 40030, B_ADDR, 2049, 6)
            backend.install_socket_policy(SocketPolicy(s.fileno(), flow, protect_entry(flow), 11))
            assert connect_errno(s) == errno.EAGAIN  # socket policy without SA: refused at once
            assert peers == []
            backend.remove_socket_policy(s.fileno())
            assert connects(s)
        deadline = time.monotonic() + 5
        while not peers and time.monotonic() < deadline:
            time.sleep(0.05)
        assert peers == [(A_ADDR, 40030)]


def test_inbound_plaintext_on_protect_flow_dropped(ns_pair: NsPair) -> None:
    """B pins flow A:40040 -> B:2049 to ESP: A's clear SYNs die in B's inbound policy check."""
    server = XfrmBackend(ns_pair.b, KEYS)
    try:
        flow = FiveTuple.of(B_ADDR, 2049, A_ADDR, 40040, 6)  # local-oriented at B
        server.install_flow_policy(FlowPolicy(flow, protect_entry(flow), 5))
        before = ns_pair.xfrm_stat(ns_pair.b)["XfrmInTmplMismatch"]
        with listener(ns_pair.b, 2049) as peers:
            s = client(ns_pair.a, 40040)
            with s:
                assert connect_errno(s) == errno.ETIMEDOUT
            other = client(ns_pair.a, 40041)  # control: a flow B did not pin connects in clear
            with other:
                assert connects(other)
            deadline = time.monotonic() + 5
            while not peers and time.monotonic() < deadline:
                time.sleep(0.05)
        assert peers == [(A_ADDR, 40041)]
        assert ns_pair.xfrm_stat(ns_pair.b)["XfrmInTmplMismatch"] > before
    finally:
        server.close()


def pinned_sa(
    flow: FiveTuple, sa_id: int, spi_in: int, *, reqid: int, suite: CipherSuite = AES_GCM_256
) -> SecurityAssociation:
    """A narrow SA pair A -> B for ``flow`` (outbound SPI ``spi_in + 1``) with its own reqid."""
    return SecurityAssociation(
        sa_id=sa_id,
        spi_in=spi_in,
        spi_out=spi_in + 1,
        local_addr=ip(A_ADDR),
        remote_addr=ip(B_ADDR),
        traffic_selectors=(Selector.for_flow(flow),),
        peer=PskPeer(IkeId.fqdn("b.test")),
        local=LocalIdentity(IkeId.fqdn("a.test"), AuthMethod.PSK),
        params=ProtectionParams(suite=suite),
        ike_sa=IkeSaRef(1, 2),
        reqid=reqid,
    )


def test_install_sa_refused_by_host_kernel_leaves_nothing(ns_pair: NsPair, backend: XfrmBackend) -> None:
    """No esp4 on this host: NEWSA fails with the kernel's errno and nothing is tracked."""
    flow = FiveTuple.of(A_ADDR, 40050, B_ADDR, 2049, 6)
    sa = pinned_sa(flow, 1, 0x3000, reqid=4)
    try:
        backend.install_sa(sa)
    except XfrmKernelError as exc:
        assert exc.errno in (errno.ENOSYS, errno.EPROTONOSUPPORT, errno.ENOPROTOOPT)
        assert backend.installed_sas == frozenset()
        assert ns_pair.ip(ns_pair.a, "xfrm", "state", "list").strip() == ""
    else:
        pytest.skip("this kernel has ESP: SA paths are covered by the UML guest test anyway")


def test_reset_removes_exactly_what_was_installed(ns_pair: NsPair, backend: XfrmBackend) -> None:
    # someone else's policy in the same namespace
    ns_pair.ip(
        ns_pair.a,
        "xfrm",
        "policy",
        "add",
        "src",
        A_ADDR,
        "dst",
        B_ADDR,
        "proto",
        "udp",
        "dir",
        "out",
        "priority",
        "5",
        "action",
        "block",
    )
    foreign = ip_policies(ns_pair, ns_pair.a)
    flows = [FiveTuple.of(A_ADDR, p, B_ADDR, 2049, 6) for p in (40060, 40061)]
    for f in flows:
        backend.install_flow_policy(FlowPolicy(f, protect_entry(f), 2))
    backend.install_spd([nfs_spd()])
    s = client(ns_pair.a, 40062)
    with s:
        f = FiveTuple.of(A_ADDR, 40062, B_ADDR, 2049, 6)
        backend.install_socket_policy(SocketPolicy(s.fileno(), f, protect_entry(f), 2))
        # GETPOLICY dumps socket policies too (index & 7 = 3 + dir)
        dumped = backend.nl.policies()
        assert len(dumped) == 1 + 4 + 2 + 2
        assert sorted(p.info.index & 7 for p in dumped if p.info.index & 7 >= 3) == [3, 4]
        backend.reset()
        assert backend.installed_flows == frozenset() and backend.installed_sockets == frozenset()
        # the configured mirror stays; the per-flow ones are gone; the foreign one is untouched
        left = [p for p in backend.nl.policies() if p.info.index & 7 < 3]
        assert len(backend.nl.policies()) == len(left)
        assert sorted((p.info.priority, p.info.dir) for p in left) == [
            (5, Dir.OUT),
            (1000, Dir.IN),
            (1000, Dir.OUT),
        ]
        backend.clear_spd()
        assert ip_policies(ns_pair, ns_pair.a) == foreign
        # the socket's ESP policy is gone too: with no global policy it now connects in clear
        with listener(ns_pair.b, 2049):
            assert connects(s)


def test_flow_policy_on_a_configured_selector_replaces_then_restores_it(
    ns_pair: NsPair, backend: XfrmBackend
) -> None:
    """The kernel keys policies by selector and direction (not priority): a flow policy on the
    selector of a mirrored exact-5-tuple SPD entry replaces it; removing the flow policy puts the
    configured one back instead of leaving the flow with no policy (= clear text)."""
    flow = FiveTuple.of(A_ADDR, 40070, B_ADDR, 2049, 6)
    configured = SpdEntry("one-flow", (Selector.for_flow(flow),), SpdAction.PROTECT, PROTECT)
    backend.install_spd([configured])

    def kernel() -> list[tuple[int, int, int, list[int]]]:
        return sorted(
            (p.info.dir, p.info.priority, p.info.action, [t.reqid for t in p.templates])
            for p in backend.nl.policies()
        )

    assert kernel() == [(Dir.IN, 1000, 0, [0]), (Dir.OUT, 1000, 0, [0])]
    bypass = SpdEntry.flow_entry(flow, SpdAction.BYPASS, None, EntryOrigin.APPLICATION_REQUEST)
    backend.install_flow_policy(FlowPolicy(flow, bypass, None))
    assert kernel() == [(Dir.IN, 0, 0, []), (Dir.OUT, 0, 0, [])]
    backend.remove_flow_policy(flow)
    assert kernel() == [(Dir.IN, 1000, 0, [0]), (Dir.OUT, 1000, 0, [0])]
    backend.clear_spd()
    assert kernel() == []


def test_event_reader_skips_malformed_datagrams(ns_pair: NsPair, backend: XfrmBackend) -> None:
    """Garbage unicast to the event socket (root may send netlink to any port id) is logged and
    dropped; a real ACQUIRE right behind it is still delivered."""
    engine = IPsecEngine([nfs_spd()], backend=backend)
    reader = XfrmEventReader(backend, engine, time.monotonic)
    sender = open_socket(ns_pair.a, socket.AF_NETLINK, socket.SOCK_DGRAM, 6)
    try:
        port = reader.events.sock.getsockname()[0]
        bad_header = struct.pack("=IHHII", 999, 0x17, 0, 0, 0)  # length beyond the datagram
        short_acquire = struct.pack("=IHHII", 16 + 8, 0x17, 0, 0, 0) + bytes(8)  # truncated body
        for junk in (bad_header, short_acquire, b"\x01\x02\x03"):
            sender.sendto(junk, (port, 0))
        flow = FiveTuple.of(A_ADDR, 40080, B_ADDR, 2049, 6)
        backend.install_flow_policy(FlowPolicy(flow, protect_entry(flow), 3))
        s = client(ns_pair.a, 40080)
        with s:
            assert connect_errno(s) == errno.ETIMEDOUT
        wait_delivered(reader, 1)
        assert reader.events.malformed == 3
        assert reader.delivered == 1 and list(engine.key_manager.pending) == [flow]
    finally:
        sender.close()
        reader.close()


def test_event_reader_on_an_asyncio_loop(ns_pair: NsPair, backend: XfrmBackend) -> None:
    """attach(): the loop calls pump() when the kernel's ACQUIRE arrives."""
    flow = FiveTuple.of(A_ADDR, 40090, B_ADDR, 2049, 6)
    engine = IPsecEngine([nfs_spd()], backend=backend)
    backend.install_flow_policy(FlowPolicy(flow, protect_entry(flow), 3))

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        reader = XfrmEventReader(backend, engine, loop.time)
        reader.attach(loop)
        try:
            s = client(ns_pair.a, 40090)
            with s:
                assert await loop.run_in_executor(None, connect_errno, s) == errno.ETIMEDOUT
            for _ in range(50):
                if reader.delivered:
                    break
                await asyncio.sleep(0.1)
        finally:
            reader.detach(loop)
            reader.close()
        assert reader.delivered == 1

    asyncio.run(scenario())
    assert list(engine.key_manager.pending) == [flow]


def test_allocspi_getsa_dump_delsa_round_trip(ns_pair: NsPair) -> None:
    """ALLOCSPI needs no ESP transform (it makes a larval SA): the SPI is in the range asked for,
    the GETSA dump and ``ip xfrm state`` show it, DELSA removes it, a second DELSA says absent."""
    with XfrmSocket(ns_pair.a) as nl:
        a, b = ip(A_ADDR), ip(B_ADDR)
        info = SaInfo(XfrmSelector.any(), XfrmId(b, 0), a, socket.AF_INET, reqid=9)
        spi = nl.alloc_spi(info, 0x4000, 0x4FFF)
        assert 0x4000 <= spi <= 0x4FFF
        assert [(s.info.id.daddr, s.info.id.spi, s.info.reqid, s.info.saddr) for s in nl.sas()] == [
            (b, spi, 9, a)
        ]
        assert f"proto esp spi {spi:#010x} reqid 9 mode transport" in ns_pair.ip(ns_pair.a, "xfrm", "state")
        assert nl.delete_sa(SaId(b, spi)) is True
        assert nl.delete_sa(SaId(b, spi)) is False
        assert nl.sas() == [] and ns_pair.ip(ns_pair.a, "xfrm", "state").strip() == ""


A6, B6 = "2001:db8:5660::1", "2001:db8:5660::2"  # RFC 3849 documentation prefix


def test_ipv6_flow_policy_acquire_and_socket_bypass(ns_pair: NsPair, backend: XfrmBackend) -> None:
    """IPv6: a pinned flow policy ACQUIREs with the v6 5-tuple; an IPV6_XFRM_POLICY BYPASS socket
    gets through a configured v6 PROTECT entry."""
    for ns, ifname, addr in ((ns_pair.a, "xa", A6), (ns_pair.b, "xb", B6)):
        ns_pair.ip(ns, "addr", "add", f"{addr}/64", "dev", ifname, "nodad")
    flow = FiveTuple.of(A6, 40100, B6, 2049, 6)
    sel = Selector(AddressRange.single(A6), AddressRange.single(B6), 6, remote_ports=PortRange.single(2049))
    spd = SpdEntry("nfs6", (sel,), SpdAction.PROTECT, PROTECT)
    engine = IPsecEngine([spd], backend=backend)
    reader = XfrmEventReader(backend, engine, time.monotonic)
    try:
        backend.install_spd([spd])
        backend.install_flow_policy(FlowPolicy(flow, protect_entry(flow), 4))
        text = ip_policies(ns_pair, ns_pair.a)
        assert f"src {A6}/128 dst {B6}/128 proto tcp sport 40100 dport 2049" in text
        assert f"src {A6}/128 dst {B6}/128 proto tcp dport 2049" in text  # the configured entry
        srv = open_socket(ns_pair.b, socket.AF_INET6, socket.SOCK_STREAM)
        srv.bind((B6, 2049))
        srv.listen(4)
        srv.settimeout(5)
        with srv:
            s = open_socket(ns_pair.a, socket.AF_INET6, socket.SOCK_STREAM)
            s.bind((A6, 40100))
            s.settimeout(0.5)
            with s, contextlib.suppress(TimeoutError):
                s.connect((B6, 2049))
                pytest.fail("connected in the clear despite the pinned PROTECT policy")
            wait_delivered(reader, 1)
            assert list(engine.key_manager.pending) == [flow]
            byp = open_socket(ns_pair.a, socket.AF_INET6, socket.SOCK_STREAM)
            byp.bind((A6, 40101))
            byp.settimeout(2)
            with byp:
                bflow = FiveTuple.of(A6, 40101, B6, 2049, 6)
                bypass = SpdEntry.flow_entry(bflow, SpdAction.BYPASS, None, EntryOrigin.APPLICATION_REQUEST)
                backend.install_socket_policy(SocketPolicy(byp.fileno(), bflow, bypass, None))
                byp.connect((B6, 2049))
                conn, peer = srv.accept()
                conn.close()
                assert peer[:2] == (A6, 40101)
    finally:
        reader.close()


# -- the engine drives the kernel: BROKEN latches, the SPD, flow endings ---------------------------


class HostSaXfrmBackend(XfrmBackend):
    """XfrmBackend whose SAs stay out of the kernel: this host has no ESP transform (see
    test_install_sa_refused_by_host_kernel_leaves_nothing; real SAs are in the UML guest test).
    Every policy -- the subject of these tests -- goes to the namespace's kernel as usual."""

    def __init__(self, netns: str) -> None:
        super().__init__(netns, KEYS)
        self.kept_sas: dict[int, SecurityAssociation] = {}

    def install_sa(self, sa: SecurityAssociation) -> None:
        self.kept_sas[sa.sa_id] = sa

    def remove_sa(self, sa: SecurityAssociation) -> None:
        self.kept_sas.pop(sa.sa_id, None)


def _pad() -> list[PadEntry]:
    auth = ChildSaAuthorization((AddressRange.single(B_ADDR),))
    return [PadEntry("b", IdPattern(IdType.ID_FQDN, IkeId.fqdn("b.test").data), AuthMethod.PSK, auth)]


_spis = itertools.count(0x5000, 2)


def _narrow(flow: FiveTuple, peer: str) -> SecurityAssociation:
    spi = next(_spis)
    return SecurityAssociation(
        sa_id=0,
        spi_in=spi,
        spi_out=spi + 1,
        local_addr=ip(A_ADDR),
        remote_addr=ip(B_ADDR),
        traffic_selectors=(Selector.for_flow(flow),),
        peer=PskPeer(IkeId.fqdn(peer)),
        local=LocalIdentity(IkeId.fqdn("a.test"), AuthMethod.PSK),
        params=ProtectionParams(),
        ike_sa=IkeSaRef(1, 2),
    )


def _flow_kernel(backend: XfrmBackend, port: int) -> list[tuple[int, int, list[int]]]:
    """(dir, action, template reqids) of the kernel's per-flow policies on A:port <-> B:2049."""
    return sorted(
        (p.info.dir, p.info.action, [t.reqid for t in p.templates])
        for p in backend.nl.policies()
        if p.info.priority == backend.flow_priority and port in (p.info.sel.sport, p.info.sel.dport)
    )


def test_engine_broken_latch_discards_flow_in_kernel_and_restores(ns_pair: NsPair) -> None:
    """RFC 5660 §2.3 with a kernel datapath: the SPD change that breaks a latch puts BLOCK policies
    on the flow (both directions) in the kernel, so a connect on that 5-tuple is refused at once
    (EPERM) instead of leaving under the configured policy; the SPD change back re-pins it to the
    peer's reqid (no SA here: the SYNs then wait for one)."""
    backend = HostSaXfrmBackend(ns_pair.a)
    try:
        engine = IPsecEngine([nfs_spd()], _pad(), backend=backend)
        flow = FiveTuple.of(A_ADDR, 40100, B_ADDR, 2049, 6)
        engine.install_sa(_narrow(flow, "b.test"), 0.0)
        engine.connect(flow, now=0.0)
        rid = engine.key_manager.reqid_for(PskPeer(IkeId.fqdn("b.test")))
        pinned = [(Dir.IN, 0, [rid]), (Dir.OUT, 0, [rid])]
        assert _flow_kernel(backend, 40100) == pinned
        bypass_all = SpdEntry("all", (Selector(),), SpdAction.BYPASS)
        assert engine.update_spd([bypass_all]) == [engine.latches.find_latch(flow)]
        assert _flow_kernel(backend, 40100) == [(Dir.IN, 1, []), (Dir.OUT, 1, [])]
        with listener(ns_pair.b, 2049) as peers:
            s = client(ns_pair.a, 40100)
            with s:
                assert connect_errno(s) == errno.EPERM  # the kernel's outbound BLOCK policy
            control = client(ns_pair.a, 40101)  # the new SPD bypasses every other flow
            with control:
                assert connects(control)
            deadline = time.monotonic() + 5
            while not peers and time.monotonic() < deadline:
                time.sleep(0.05)
            assert peers == [(A_ADDR, 40101)]
        engine.update_spd([nfs_spd()])
        assert engine.latches.inquire_latch(engine.latches.find_latch(flow)).state.value == "ESTABLISHED"
        assert _flow_kernel(backend, 40100) == pinned
    finally:
        backend.close()
    assert ip_policies(ns_pair, ns_pair.a).strip() == ""


def test_engine_update_spd_mirrors_configured_table_in_kernel(ns_pair: NsPair, backend: XfrmBackend) -> None:
    """The engine pushes its configured SPD to the kernel when made and on every update_spd."""

    def kernel() -> list[tuple[int, int, int, int]]:
        return sorted(
            (p.info.dir, p.info.priority, p.info.sel.sport, p.info.sel.dport) for p in backend.nl.policies()
        )

    nfs = [(Dir.IN, 1000, 2049, 0), (Dir.OUT, 1000, 0, 2049)]
    engine = IPsecEngine([nfs_spd()], backend=backend)
    assert kernel() == nfs
    engine.update_spd([])
    assert kernel() == []
    engine.update_spd([nfs_spd()])
    assert kernel() == nfs
    # an entry XFRM cannot express (a port range) is refused before anything changes
    ranged = Selector(
        AddressRange.single(A_ADDR), AddressRange.single(B_ADDR), 6, remote_ports=PortRange(1, 9)
    )
    with pytest.raises(XfrmUnsupported):
        engine.update_spd([SpdEntry("ranged", (ranged,), SpdAction.BYPASS)])
    assert [e.name for e in engine.spd.entries] == ["nfs"]
    assert kernel() == nfs


def test_engine_flow_end_and_restart_remove_kernel_flow_policies(ns_pair: NsPair) -> None:
    """The engine asks the backend (any backend) which flow policies it holds: a broken flow whose
    latch was closed during its TIME_WAIT hold loses its kernel BLOCK policies when the hold ends;
    a key-manager restart without restore removes every flow policy from the kernel."""
    backend = HostSaXfrmBackend(ns_pair.a)
    try:
        cfg = EngineConfig(time_wait=TimeWaitPolicy(0.01, 0.04, 2.0))  # hold 0.1 s
        engine = IPsecEngine([nfs_spd()], _pad(), config=cfg, backend=backend)
        flows = [FiveTuple.of(A_ADDR, port, B_ADDR, 2049, 6) for port in (40110, 40111)]
        for flow in flows:
            engine.install_sa(_narrow(flow, "b.test"), 0.0)
            engine.connect(flow, now=0.0)
        engine.peer_dead(PskPeer(IkeId.fqdn("b.test")), 0.5)
        assert _flow_kernel(backend, 40110) == [(Dir.IN, 1, []), (Dir.OUT, 1, [])]
        engine.close_flow(flows[0], 1.0)
        engine.latches.admin_close(engine.latches.find_latch(flows[0]))
        assert _flow_kernel(backend, 40110) == [(Dir.IN, 1, []), (Dir.OUT, 1, [])]  # held: still BLOCK
        engine.poll(1.1)
        assert _flow_kernel(backend, 40110) == [] and _flow_kernel(backend, 40111) != []
        engine.restart_key_manager(2.0, restore_latches=False)
        assert backend.installed_flows == frozenset()
        assert all(p.info.priority != backend.flow_priority for p in backend.nl.policies())
    finally:
        backend.close()


def test_engine_flow_closed_during_hold_loses_kernel_pin_when_hold_ends(ns_pair: NsPair) -> None:
    """A latch closed while its flow is in the TIME_WAIT hold keeps its pinned kernel policies for
    the hold; when the hold ends the engine finds them through Backend.flow_policies (not only an
    in-process backend's table) and removes them, so the flow falls back to the configured SPD."""
    backend = HostSaXfrmBackend(ns_pair.a)
    try:
        cfg = EngineConfig(time_wait=TimeWaitPolicy(0.01, 0.04, 2.0))  # hold 0.1 s
        engine = IPsecEngine([nfs_spd()], _pad(), config=cfg, backend=backend)
        flow = FiveTuple.of(A_ADDR, 40120, B_ADDR, 2049, 6)
        engine.install_sa(_narrow(flow, "b.test"), 0.0)
        engine.connect(flow, now=0.0)
        rid = engine.key_manager.reqid_for(PskPeer(IkeId.fqdn("b.test")))
        engine.close_flow(flow, 1.0)
        engine.latches.admin_close(engine.latches.find_latch(flow))
        assert _flow_kernel(backend, 40120) == [(Dir.IN, 0, [rid]), (Dir.OUT, 0, [rid])]
        engine.poll(1.1)
        assert _flow_kernel(backend, 40120) == [] and flow not in backend.flow_policies
    finally:
        backend.close()


def test_backend_netlink_timeout_reaches_its_socket(ns_pair: NsPair) -> None:
    """XfrmBackend(netlink_timeout=) is the XfrmSocket's per-request timeout (default 5 s); the
    kernel answers well within it."""
    default = XfrmBackend(ns_pair.a, KEYS)
    try:
        assert default.nl.timeout == 5.0
    finally:
        default.close()
    quick = XfrmBackend(ns_pair.a, KEYS, netlink_timeout=2.5)
    try:
        assert quick.nl.timeout == 2.5
        flow = FiveTuple.of(A_ADDR, 40130, B_ADDR, 2049, 6)
        quick.install_flow_policy(FlowPolicy(flow, protect_entry(flow), 3))
        assert len(quick.nl.policies()) == 2
    finally:
        quick.close()


def test_sa_pair_install_and_removal_never_leave_a_window_in_the_clear(
    ns_pair: NsPair, backend: XfrmBackend
) -> None:
    """install_sa: outbound SA, then the pinned OUT and IN policies, then the inbound SA (an OUT
    policy never waits for its SA -- no ACQUIRE, no cleartext -- and the peer's ESP is refused
    until everything is in place); remove_sa the other way round. The SAs are recorded, not
    sent (no ESP on this host); the policies go to the namespace's kernel."""
    flow = FiveTuple.of(A_ADDR, 40060, B_ADDR, 2049, 6)
    sa = pinned_sa(flow, 7, 0x3100, reqid=9)
    calls: list[str] = []
    nl = backend.nl
    add_policy, delete_policy = nl.add_policy, nl.delete_policy

    def rec_add_sa(info: Any, _algo: Any, *, update: bool = False) -> None:
        calls.append(f"add_sa {info.id.spi:#x}")

    def rec_delete_sa(sid: Any) -> bool:
        calls.append(f"delete_sa {sid.spi:#x}")
        return True

    def rec_add_policy(info: Any, tmpls: Any = (), *, update: bool = True) -> None:
        calls.append(f"add_policy dir={info.dir}")
        add_policy(info, tmpls, update=update)

    def rec_delete_policy(pid: Any) -> bool:
        calls.append(f"delete_policy dir={pid.dir}")
        return delete_policy(pid)

    nl.add_sa, nl.delete_sa = rec_add_sa, rec_delete_sa  # type: ignore[method-assign]
    nl.add_policy, nl.delete_policy = rec_add_policy, rec_delete_policy  # type: ignore[method-assign]
    backend.install_sa(sa)
    out_dir, in_dir = int(Dir.OUT), int(Dir.IN)
    assert calls == [
        "add_sa 0x3101",
        f"add_policy dir={out_dir}",
        f"add_policy dir={in_dir}",
        "add_sa 0x3100",
    ]
    del calls[:]
    backend.remove_sa(sa)
    assert calls[0] == "delete_sa 0x3100" and calls[-1] == "delete_sa 0x3101", calls
    assert sorted(calls[1:-1]) == sorted([f"delete_policy dir={out_dir}", f"delete_policy dir={in_dir}"])


@pytest.mark.parametrize(
    ("suite", "name", "key_octets"),
    [
        (AES_GCM_256, "rfc4106(gcm(aes))", 36),
        (AES_GCM_128, "rfc4106(gcm(aes))", 20),
        (CHACHA20_POLY1305, "rfc7539esp(chacha20,poly1305)", 36),
    ],
)
def test_each_esp_suite_reaches_the_kernel_as_its_aead_template(
    ns_pair: NsPair, backend: XfrmBackend, suite: CipherSuite, name: str, key_octets: int
) -> None:
    """AES-GCM-16 is the kernel's rfc4106(gcm(aes)), ChaCha20-Poly1305 its
    rfc7539esp(chacha20,poly1305) (RFC 7634), each with a 4-octet salt after the key and a 128-bit
    ICV. The SAs are recorded, not sent (no ESP on this host)."""
    flow = FiveTuple.of(A_ADDR, 40061, B_ADDR, 2049, 6)
    sa = pinned_sa(flow, 8, 0x3200, reqid=10, suite=suite)
    algos: list[tuple[str, int, int]] = []

    def rec_add_sa(_info: Any, algo: Any, *, update: bool = False) -> None:
        algos.append((algo.name, len(algo.key), algo.icv_bits))

    backend.nl.add_sa = rec_add_sa  # type: ignore[method-assign]
    backend.nl.delete_sa = lambda _sid: True  # type: ignore[method-assign]
    backend.install_sa(sa)
    assert algos == [(name, key_octets, 128)] * 2
    backend.remove_sa(sa)


def test_an_administrators_later_policy_never_takes_a_pinned_flow_out_of_its_sas(
    ns_pair: NsPair, backend: XfrmBackend
) -> None:
    """RFC 5660 §2.3: a latched 5-tuple stays pinned to its SAs. The per-flow policies sit at
    kernel priority 0, the highest there is, so an administrator's port-2049 policy added later
    at priority 1 does not take over: the pinned flow still waits for its SA (ACQUIRE, nothing
    sent), while another flow to the port meets the administrator's BLOCK at once (EPERM). (At
    priority 0 too, which of the equals wins depends on the kernel version; not asserted.)"""
    pinned = FiveTuple.of(A_ADDR, 40080, B_ADDR, 2049, 6)
    backend.install_flow_policy(FlowPolicy(pinned, protect_entry(pinned), 11))
    # the administrator's: every TCP segment to port 2049, at priority 1
    admin = ("src", "0.0.0.0/0", "dst", "0.0.0.0/0", "proto", "tcp", "dport", "2049", "dir", "out")
    ns_pair.ip(ns_pair.a, "xfrm", "policy", "add", *admin, "priority", "1", "action", "block")
    try:
        with listener(ns_pair.b, 2049) as peers:
            with client(ns_pair.a, 40081) as other:
                assert connect_errno(other) == errno.EPERM  # the administrator's policy applies here
            with client(ns_pair.a, 40080) as s:
                assert connect_errno(s) == errno.ETIMEDOUT  # ours: PROTECT, no SA -> ACQUIRE, not EPERM
            assert peers == []
    finally:
        ns_pair.ip(ns_pair.a, "xfrm", "policy", "delete", *admin)
