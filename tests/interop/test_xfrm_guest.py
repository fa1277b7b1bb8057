"""XfrmBackend on real kernel ESP in the UML guest (the host kernel has no ESP transform).

Two latching engines (approach 2) with their own XfrmBackend run inside the guest: the client in
netns ``client`` and the server in the guest's root netns, on extra TEST-NET-3 addresses
203.0.113.1 / 203.0.113.2 added to the harness's veth for this test (so neither the harness's
static SAs 0x1001/0x1002 nor its policies for 198.51.100.1/2 apply). The client's key manager
"negotiates" from a static provision, the server installs the mirrored SA pair (the IKE responder's
part), both latch the TCP connection (per-5-tuple policies pinned by reqid), data flows in ESP;
then an SPD change at the server breaks its latch, which the engine turns into DISCARD flow
policies in the kernel (the segment is decrypted and dropped by policy), and the SPD back
re-establishes it (re-pinned; the retransmission gets through), and finally the client's SA pair is deleted
and the kernel sends nothing more. Nothing is ever in the clear.

This file is also the guest-side script: ``python tests/interop/test_xfrm_guest.py guest`` prints
one JSON line of observations, which the test checks together with a capture on the veth.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from rpclatch.ipsec.engine import IPsecEngine
    from rpclatch.ipsec.model import FiveTuple, IkeId, IkeSaRef, IPAddress, LocalIdentity
    from rpclatch.ipsec.pad import PadEntry
    from rpclatch.ipsec.sad import Lifetime, SecurityAssociation
    from rpclatch.ipsec.spd import SpdEntry
    from rpclatch.ipsec.xfrm.backend import XfrmBackend

CLIENT_ADDR = "203.0.113.1"
SERVER_ADDR = "203.0.113.2"
PORT = 5660
CLIENT_PORT = 45660
PAYLOAD = 256 * 1024

pytestmark = [pytest.mark.uml, pytest.mark.root]


# ------------------------------------------------------------------------------------------------
# guest side


def _xfrm_stat(netns: str | None) -> dict[str, int]:
    argv = ["cat", "/proc/net/xfrm_stat"]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines() if line.strip())}


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(65536, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


@dataclass(frozen=True)
class _Peers:
    """The configuration both guest scripts share: the two identities on CLIENT_ADDR /
    SERVER_ADDR, each side's SPD entry (PROTECT TCP to / from PORT) and PAD entry (the other side,
    PSK, child SAs for its address only)."""

    c_id: IkeId
    s_id: IkeId
    c_local: LocalIdentity
    s_local: LocalIdentity
    c_addr: IPAddress
    s_addr: IPAddress
    c_spd: SpdEntry
    s_spd: SpdEntry
    c_pad: PadEntry
    s_pad: PadEntry

    def engines(
        self, c_be: XfrmBackend, s_be: XfrmBackend, ike_sa: IkeSaRef, lifetime: Lifetime | None = None
    ) -> tuple[IPsecEngine, IPsecEngine]:
        """Client and server engines (approach 2) on their backends; each pushes its SPD to its
        kernel (Backend.install_spd). The client's key manager "negotiates" from a static
        provision for the server (SAs of IKE SA ``ike_sa``, with ``lifetime`` if given)."""
        from rpclatch.ipsec.engine import Approach, IPsecEngine
        from rpclatch.ipsec.keymgr import SaProvision
        from rpclatch.ipsec.model import AddressRange, ProtectionParams, PskPeer
        from rpclatch.ipsec.sad import Lifetime

        provision = SaProvision(
            AddressRange.single(self.s_addr),
            PskPeer(self.s_id),
            self.s_addr,
            self.c_local,
            ProtectionParams(),
            ike_sa,
            lifetime=Lifetime() if lifetime is None else lifetime,
        )
        client = IPsecEngine(
            [self.c_spd], [self.c_pad], approach=Approach.POLICY, backend=c_be, provisions=[provision]
        )
        server = IPsecEngine([self.s_spd], [self.s_pad], approach=Approach.POLICY, backend=s_be)
        return client, server

    def mirror_sa(self, server: IPsecEngine, sa: SecurityAssociation, s_flow: FiveTuple, now: float) -> None:
        """Install at the server the responder's half of the client's SA pair ``sa`` (standing in
        for IKE): SPIs swapped, narrowed to the server's view ``s_flow`` of the connection."""
        from rpclatch.ipsec.model import PskPeer, Selector
        from rpclatch.ipsec.sad import SecurityAssociation

        server.install_sa(
            SecurityAssociation(
                sa_id=0,
                spi_in=sa.spi_out,
                spi_out=sa.spi_in,
                local_addr=self.s_addr,
                remote_addr=self.c_addr,
                traffic_selectors=(Selector.for_flow(s_flow),),
                peer=PskPeer(self.c_id),
                local=self.s_local,
                params=sa.params,
                ike_sa=sa.ike_sa,
            ),
            now,
        )


def _peers() -> _Peers:
    from rpclatch.ipsec.model import (
        AddressRange,
        AuthMethod,
        IdType,
        IkeId,
        LocalIdentity,
        PortRange,
        ProtectionPolicy,
        Selector,
        ip,
    )
    from rpclatch.ipsec.pad import ChildSaAuthorization, IdPattern, PadEntry
    from rpclatch.ipsec.spd import SpdAction, SpdEntry

    c_id, s_id = IkeId.fqdn("client.xfrm.test"), IkeId.fqdn("server.xfrm.test")
    c_addr, s_addr = ip(CLIENT_ADDR), ip(SERVER_ADDR)
    c_sel = Selector(
        AddressRange.single(c_addr), AddressRange.single(s_addr), 6, remote_ports=PortRange.single(PORT)
    )
    s_sel = Selector(
        AddressRange.single(s_addr), AddressRange.single(c_addr), 6, local_ports=PortRange.single(PORT)
    )

    def pad(peer: IkeId, addr: str) -> PadEntry:
        auth = ChildSaAuthorization((AddressRange.single(addr),))
        return PadEntry("peer", IdPattern(IdType.ID_FQDN, peer.data), AuthMethod.PSK, auth)

    return _Peers(
        c_id,
        s_id,
        LocalIdentity(c_id, AuthMethod.PSK),
        LocalIdentity(s_id, AuthMethod.PSK),
        c_addr,
        s_addr,
        SpdEntry("xfrm-test", (c_sel,), SpdAction.PROTECT, ProtectionPolicy()),
        SpdEntry("xfrm-test", (s_sel,), SpdAction.PROTECT, ProtectionPolicy()),
        pad(s_id, SERVER_ADDR),
        pad(c_id, CLIENT_ADDR),
    )


def guest_main() -> dict[str, Any]:
    from pyroute2 import netns as pr_netns

    from rpclatch.ipsec.model import FiveTuple, IkeSaRef
    from rpclatch.ipsec.spd import SpdAction, SpdEntry
    from rpclatch.ipsec.xfrm.backend import DerivedKeys, XfrmBackend, esp_sa_uat_rows

    keys = DerivedKeys(b"guest test secret")
    p = _peers()
    c_flow = FiveTuple(p.c_addr, CLIENT_PORT, p.s_addr, PORT, 6)
    s_flow = c_flow.reversed()
    s_spd = p.s_spd

    res: dict[str, Any] = {}
    c_be = XfrmBackend("client", keys)
    s_be = XfrmBackend(None, keys)
    srv = cli = conn = None
    try:
        client, server = p.engines(c_be, s_be, IkeSaRef(0x5660, 1))
        # (each engine has pushed its configured SPD to its kernel: Backend.install_spd)

        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((SERVER_ADDR, PORT))
        srv.listen(4)
        srv.settimeout(10)

        # client: CREATE_CONNECTION_LATCH before the first packet; the key manager installs the SAs
        client.connect(c_flow, now=0.0)
        c_latch = client.latches.latch_for(c_flow)
        assert c_latch is not None
        (c_sa,) = list(client.sad)
        res["client_latch"] = c_latch.state.value
        res["spi_out"], res["spi_in"], res["reqid"] = c_sa.spi_out, c_sa.spi_in, c_sa.reqid
        # server: the responder's half of the same child SA pair, then it latches on accept
        p.mirror_sa(server, c_sa, s_flow, 0.0)

        cli = pr_netns.create_socket("client", socket.AF_INET, socket.SOCK_STREAM)
        cli.bind((CLIENT_ADDR, CLIENT_PORT))
        cli.settimeout(10)
        cli.connect((SERVER_ADDR, PORT))
        conn, peer = srv.accept()
        conn.settimeout(10)
        res["accepted_from"] = list(peer)
        server.connect(s_flow, now=0.0)
        s_latch = server.latches.latch_for(s_flow)
        assert s_latch is not None
        res["server_latch"] = s_latch.state.value
        res["client_flow_policies"] = sorted(
            [p.info.dir, p.info.sel.sport, p.info.sel.dport, [t.reqid for t in p.templates]]
            for p in c_be.nl.policies()
            if p.info.priority == c_be.flow_priority
            and p.info.sel.sport
            and p.info.sel.dport  # 5-tuples: no socket policies
        )
        res["server_flow_policies"] = sorted(
            [p.info.dir, p.info.sel.sport, p.info.sel.dport, [t.reqid for t in p.templates]]
            for p in s_be.nl.policies()
            if p.info.priority == s_be.flow_priority
            and p.info.sel.sport
            and p.info.sel.dport  # 5-tuples: no socket policies
        )

        def counters() -> dict[str, int]:
            out = {}
            for side, be in (("client", c_be), ("server", s_be)):
                for sa in be.nl.sas():
                    if str(sa.info.id.daddr) in (CLIENT_ADDR, SERVER_ADDR):
                        out[f"{side}:{sa.info.id.daddr}:{sa.info.id.spi:#x}"] = sa.info.lft.cur_bytes
            return out

        res["counters_before"] = counters()
        data = bytes(range(256)) * (PAYLOAD // 256)
        received: list[bytes] = []
        reader = threading.Thread(target=lambda: received.append(_recv_exactly(conn, PAYLOAD)))
        reader.start()
        cli.sendall(data)
        reader.join(30)
        got = received[0] if received else b""
        conn.sendall(b"ok")
        res["echo"] = _recv_exactly(cli, 2).decode()
        res["received_intact"] = got == data
        res["counters_after"] = counters()
        res["esp_sa_rows"] = esp_sa_uat_rows(
            sa for sa in c_be.nl.sas() if str(sa.info.id.daddr) in (CLIENT_ADDR, SERVER_ADDR)
        )

        # SPD change at the server that would bypass the latched flow: the latch goes BROKEN (RFC
        # 5660 §2.3) and the engine puts DISCARD flow policies (both directions) in the kernel; the
        # ESP segment is decrypted and then dropped by the inbound policy check, so nothing reaches
        # the socket (and the server's kernel would send nothing on the flow either)
        def flow_kernel() -> list[list[int]]:
            return sorted(
                [p.info.dir, p.info.action, *[t.reqid for t in p.templates]]
                for p in s_be.nl.policies()
                if p.info.priority == s_be.flow_priority
                and p.info.sel.sport
                and p.info.sel.dport
                and PORT in (p.info.sel.sport, p.info.sel.dport)
            )

        s_stat0, c_stat0 = _xfrm_stat(None), _xfrm_stat("client")
        server.update_spd([SpdEntry("xfrm-test", s_spd.selectors, SpdAction.BYPASS)])
        res["server_latch_after_spd_change"] = s_latch.state.value
        res["server_flow_kernel_broken"] = flow_kernel()
        cli.sendall(b"after-discard")
        conn.settimeout(3)
        try:
            res["server_got_after_discard"] = conn.recv(100).decode()
        except TimeoutError:
            res["server_got_after_discard"] = None
        s_stat1, c_stat1 = _xfrm_stat(None), _xfrm_stat("client")
        res["in_pol_block_delta"] = s_stat1["XfrmInPolBlock"] - s_stat0["XfrmInPolBlock"]
        # every xfrm counter that moved at either end: says where the segment went when it was not
        # counted as blocked by the inbound policy
        res["xfrm_stat_moved"] = {
            f"{side}:{k}": after[k] - before.get(k, 0)
            for side, before, after in (("server", s_stat0, s_stat1), ("client", c_stat0, c_stat1))
            for k in after
            if after[k] != before.get(k, 0)
        }
        # ... and the SPD back: the latch is ESTABLISHED again, the engine re-pins the flow to the
        # client's SAs (reqid) in the kernel, and TCP's retransmission now gets through
        server.update_spd([s_spd])
        res["server_latch_after_spd_restore"] = s_latch.state.value
        res["server_flow_kernel_restored"] = flow_kernel()
        conn.settimeout(20)
        res["server_got_after_restore"] = _recv_exactly(conn, len(b"after-discard")).decode()

        # delete the client's SA pair (IKE Delete / expiry): the kernel has no SA for the pinned
        # flow any more, so the next segment is blackholed, never sent in the clear
        stat0 = _xfrm_stat("client")
        client.delete_sa(c_sa.sa_id, 1.0)
        res["client_latch_after_delete"] = c_latch.state.value
        res["client_sas_after_delete"] = [
            hex(sa.info.id.spi) for sa in c_be.nl.sas() if str(sa.info.id.daddr) in (CLIENT_ADDR, SERVER_ADDR)
        ]
        cli.sendall(b"after-delete")
        conn.settimeout(3)
        try:
            res["server_got_after_delete"] = conn.recv(100).decode()
        except TimeoutError:
            res["server_got_after_delete"] = None
        res["out_no_states_delta"] = _xfrm_stat("client")["XfrmOutNoStates"] - stat0["XfrmOutNoStates"]
    except BaseException:
        diag = subprocess.run(
            "for n in '' '-n client'; do echo \"== ip $n\"; ip $n -s xfrm state; ip $n xfrm policy; "
            "ip $n -s link; done; grep -v ' 0$' /proc/net/xfrm_stat; "
            "ip netns exec client grep -v ' 0$' /proc/net/xfrm_stat",
            shell=True,
            capture_output=True,
            text=True,
            check=False,
        )
        print(diag.stdout, diag.stderr, file=sys.stderr)
        raise
    finally:
        # abortive close (one RST, no FIN retransmissions) while the policies still stand: tearing
        # the policies down under a live connection would let its retransmissions out in the clear
        for s in (conn, cli, srv):
            if s is not None:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
        time.sleep(0.2)
        c_be.close()
        s_be.close()
    res["left_states"] = subprocess.run(
        "ip xfrm state; ip -n client xfrm state; ip xfrm policy; ip -n client xfrm policy",
        shell=True,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.count("203.0.113.")
    return res


def guest_acquire_main() -> dict[str, Any]:
    """On-demand keying on kernel ESP: no latch call before the connect; the kernel's ACQUIRE
    reaches the client engine through XfrmEventReader, its key manager installs a narrow SA pair
    (the server gets the mirrored pair, standing in for IKE), the SYN retransmission goes out in
    ESP. The SA has a 4 s hard lifetime in the kernel: the kernel's EXPIRE reaches the engine,
    which deletes it; the next segment ACQUIREs again and gets a new SA pair."""
    import select

    from pyroute2 import netns as pr_netns

    from rpclatch.ipsec.model import FiveTuple, IkeSaRef
    from rpclatch.ipsec.sad import Lifetime
    from rpclatch.ipsec.xfrm.backend import DerivedKeys, XfrmBackend, XfrmEventReader

    keys = DerivedKeys(b"guest acquire secret")
    p = _peers()
    c_flow = FiveTuple(p.c_addr, CLIENT_PORT + 1, p.s_addr, PORT, 6)

    t0 = time.monotonic()

    def now() -> float:
        return time.monotonic() - t0

    res: dict[str, Any] = {"acquires": 0, "expires": 0}
    c_be = XfrmBackend("client", keys)
    s_be = XfrmBackend(None, keys)
    srv = cli = conn = None
    try:
        client, server = p.engines(c_be, s_be, IkeSaRef(0x5661, 1), Lifetime(hard_seconds=4.0))
        # (each engine has pushed its configured SPD to its kernel: Backend.install_spd)

        class Counting:
            """Counts what the reader delivers, then hands it to the client engine."""

            def backend_acquire(self, flow: FiveTuple, t: float) -> None:
                res["acquires"] += 1
                res.setdefault("acquired_flows", []).append(str(flow))
                client.backend_acquire(flow, t)

            def backend_expire(self, sa_id: int, hard: bool, t: float) -> None:
                res["expires"] += 1
                client.backend_expire(sa_id, hard, t)

        reader = XfrmEventReader(c_be, Counting(), now)
        mirrored: set[int] = set()

        def step(timeout: float = 0.1) -> None:
            """One turn of the client's event loop, plus the 'IKE' that mirrors new SAs to the server."""
            select.select([reader.fileno()], [], [], timeout)
            reader.pump()
            for sa in list(client.sad):
                if sa.sa_id not in mirrored:
                    mirrored.add(sa.sa_id)
                    p.mirror_sa(server, sa, c_flow.reversed(), now())
                    res.setdefault("spi_pairs", []).append([sa.spi_out, sa.spi_in])

        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((SERVER_ADDR, PORT))
        srv.listen(4)
        srv.settimeout(0.1)
        cli = pr_netns.create_socket("client", socket.AF_INET, socket.SOCK_STREAM)
        cli.bind((CLIENT_ADDR, CLIENT_PORT + 1))
        cli.setblocking(False)
        cli.connect_ex((SERVER_ADDR, PORT))  # EINPROGRESS: the SYN waits for an SA (ACQUIRE)
        deadline = time.monotonic() + 20
        while conn is None and time.monotonic() < deadline:
            step()
            try:
                conn, _peer = srv.accept()
            except TimeoutError:
                continue
        assert conn is not None, "no connection"
        res["connected_after_acquires"] = res["acquires"]
        res["client_sas"] = len(client.sad)
        conn.settimeout(10)
        cli.setblocking(True)
        cli.sendall(b"first")
        res["first"] = _recv_exactly(conn, 5).decode()

        # wait for the kernel's hard expiry of the SA pair (4 s after it was added)
        deadline = time.monotonic() + 15
        while res["expires"] == 0 and time.monotonic() < deadline:
            step(0.5)
        res["client_sas_after_expire"] = len(client.sad)
        res["backend_sas_after_expire"] = len(c_be.installed_sas)

        # the next segment has no SA: ACQUIRE again, a new SA pair, TCP's retransmission gets through
        cli.sendall(b"again")
        conn.settimeout(0.1)
        got = b""
        deadline = time.monotonic() + 20
        while len(got) < 5 and time.monotonic() < deadline:
            step()
            try:
                got += conn.recv(5 - len(got))
            except TimeoutError:
                continue
        res["again"] = got.decode()
        res["acquires_total"] = res["acquires"]
    finally:
        for sk in (conn, cli, srv):
            if sk is not None:
                sk.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sk.close()
        time.sleep(0.2)
        c_be.close()
        s_be.close()
    return res


# ------------------------------------------------------------------------------------------------
# host side


def test_xfrm_backend_latches_tcp_over_kernel_esp(nfsd_guest: Any) -> None:
    from interop.capture import read_packets

    g = nfsd_guest
    g.run(f"ip -n client addr add {CLIENT_ADDR}/24 dev vc && ip addr add {SERVER_ADDR}/24 dev vs", check=True)
    try:
        with g.capture(
            "xfrm-latch", iface="vs", bpf="host 203.0.113.1 or host 203.0.113.2", snaplen=4096
        ) as pcap:
            r = g.run(
                g.python_argv(str(Path(__file__).resolve()), "guest"), env=g.guest_env(None), timeout=120
            )
        assert r.ok, r.stderr[-3000:]
        res = json.loads(r.stdout.strip().splitlines()[-1])
        print(json.dumps(res))
    finally:
        g.run(f"ip -n client addr del {CLIENT_ADDR}/24 dev vc; ip addr del {SERVER_ADDR}/24 dev vs")

    # both ends latched, each flow pinned in and out to the peer's SAs by reqid
    assert res["client_latch"] == "ESTABLISHED" and res["server_latch"] == "ESTABLISHED"
    assert res["accepted_from"] == [CLIENT_ADDR, CLIENT_PORT]
    rid = res["reqid"]
    assert res["client_flow_policies"] == [[0, PORT, CLIENT_PORT, [rid]], [1, CLIENT_PORT, PORT, [rid]]]
    assert res["server_flow_policies"] == [[0, CLIENT_PORT, PORT, [rid]], [1, PORT, CLIENT_PORT, [rid]]]
    # data went through, and every SA direction counted it (client out = server in, and back)
    assert res["received_intact"] and res["echo"] == "ok"
    out_c = f"client:{SERVER_ADDR}:{res['spi_out']:#x}"
    in_s = f"server:{SERVER_ADDR}:{res['spi_out']:#x}"
    out_s = f"server:{CLIENT_ADDR}:{res['spi_in']:#x}"
    in_c = f"client:{CLIENT_ADDR}:{res['spi_in']:#x}"
    before, after = res["counters_before"], res["counters_after"]
    assert set(after) == {out_c, in_s, out_s, in_c}
    assert after[out_c] - before[out_c] >= PAYLOAD and after[in_s] - before[in_s] >= PAYLOAD
    assert after[out_s] > before[out_s] and after[in_c] > before[in_c]
    # the server's SPD change breaks its latch: BLOCK (action 1) flow policies in and out, the
    # segment is decrypted, then dropped by policy; the SPD back re-establishes the latch, re-pins
    # the flow by reqid and lets TCP's retransmission through
    assert res["server_latch_after_spd_change"] == "BROKEN"
    assert res["server_flow_kernel_broken"] == [[0, 1], [1, 1]]
    assert res["server_got_after_discard"] is None
    assert res["in_pol_block_delta"] > 0, res["xfrm_stat_moved"]
    assert res["server_latch_after_spd_restore"] == "ESTABLISHED"
    assert res["server_flow_kernel_restored"] == [[0, 0, rid], [1, 0, rid]]
    assert res["server_got_after_restore"] == "after-discard"
    # after the SA pair is deleted the latch stays (it binds the flow to the peer, not to one SA:
    # a rekeyed SA of the same peer may carry it, RFC 5660 §2.3), but with no SA the kernel sends
    # nothing: the segment never reaches the server and is not seen in the clear (capture below)
    assert res["client_latch_after_delete"] == "ESTABLISHED"
    assert res["client_sas_after_delete"] == []
    assert res["server_got_after_delete"] is None
    assert res["out_no_states_delta"] > 0
    # everything the backends installed is gone again
    assert res["left_states"] == 0
    # on the wire: IP between the two addresses is ESP only, with exactly our SPIs
    packets = read_packets(pcap, f"ip.addr=={CLIENT_ADDR}")
    assert len(packets) > 10
    assert all(p.is_esp for p in packets), [p for p in packets if not p.is_esp][:5]
    assert {int(p.esp_spi, 16) for p in packets} == {res["spi_out"], res["spi_in"]}
    # decrypted with the keys the kernel reports, the ESP carries exactly our TCP connection
    assert len(res["esp_sa_rows"]) == 2
    opts = ["-o", "esp.enable_encryption_decode:TRUE"]
    for row in res["esp_sa_rows"]:
        opts += ["-o", f"uat:esp_sa:{row}"]
    out = subprocess.run(
        [
            "tshark",
            "-n",
            "-r",
            str(pcap),
            *opts,
            "-Y",
            f"ip.addr=={CLIENT_ADDR}",
            "-T",
            "fields",
            "-e",
            "tcp.srcport",
            "-e",
            "tcp.dstport",
            "-e",
            "tcp.len",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split("\n")
    rows = [line.split("\t") for line in out if line.strip()]
    decrypted = [r for r in rows if r[0]]
    assert len(decrypted) >= len(rows) - 5  # the segments sent under the deleted SA stay opaque
    assert {(int(r[0]), int(r[1])) for r in decrypted} == {(CLIENT_PORT, PORT), (PORT, CLIENT_PORT)}
    assert sum(int(r[2]) for r in decrypted if int(r[0]) == CLIENT_PORT) >= PAYLOAD


def test_xfrm_acquire_and_expire_on_kernel_esp(nfsd_guest: Any) -> None:
    g = nfsd_guest
    g.run(f"ip -n client addr add {CLIENT_ADDR}/24 dev vc && ip addr add {SERVER_ADDR}/24 dev vs", check=True)
    try:
        r = g.run(g.python_argv(str(Path(__file__).resolve()), "acquire"), env=g.guest_env(None), timeout=120)
        assert r.ok, r.stderr[-3000:]
        res = json.loads(r.stdout.strip().splitlines()[-1])
        print(json.dumps(res))
    finally:
        g.run(f"ip -n client addr del {CLIENT_ADDR}/24 dev vc; ip addr del {SERVER_ADDR}/24 dev vs")
    flow = f"{CLIENT_ADDR}:{CLIENT_PORT + 1}<->{SERVER_ADDR}:{PORT}/6"
    # the kernel's ACQUIRE named the bound 5-tuple, and the engine's SA made the connection work
    assert res["connected_after_acquires"] >= 1 and res["acquired_flows"][0] == flow
    assert res["client_sas"] == 1 and res["first"] == "first"
    # the kernel's hard EXPIRE reached the engine, which deleted the pair (SAD and kernel)
    assert res["expires"] >= 1
    assert res["client_sas_after_expire"] == 0 and res["backend_sas_after_expire"] == 0
    # the next segment ACQUIREd a new pair with new SPIs, and the data arrived
    assert res["again"] == "again"
    assert res["acquires_total"] > res["connected_after_acquires"]
    assert len(res["spi_pairs"]) == 2 and res["spi_pairs"][0] != res["spi_pairs"][1]


if __name__ == "__main__":
    modes = {"guest": guest_main, "acquire": guest_acquire_main}
    if len(sys.argv) != 2 or sys.argv[1] not in modes:
        sys.exit("usage: test_xfrm_guest.py guest|acquire   (runs inside the UML guest)")
    t0 = time.monotonic()
    result = modes[sys.argv[1]]()
    result["seconds"] = round(time.monotonic() - t0, 2)
    print(json.dumps(result))
