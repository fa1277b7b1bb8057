"""``rpclatch demo --world uml|netns``: the demo's scenarios on real kernels.

The scenarios run in the Linux nfsd world of the checkout's ``interop`` package (a User-Mode
Linux guest, or namespaces on a host kernel that has ESP; :mod:`interop.choose` picks it): kernel
ESP (RFC 4106 AES-GCM, transport mode), real IKEv2 between ``rpclatch ipsec keyd`` processes,
real TCP sockets in separate network namespaces, the world's KDC. ``interop/demo_guest.py`` acts
in the guest and records what happened; this module judges it on the host, from evidence only:

* the capture of the segment the parties share (pcapng), its ESP decrypted with the AES-GCM keys
  the kernels themselves report (``ip xfrm state``) by the same observer as the simulated world
  (:class:`rpclatch.demo.wiretap.WireView`: TCP reassembly, RPC records, RPCSEC_GSS credentials);
* the kernel's XFRM state and each key manager's latches (``rpclatch ipsec status``) while the
  flow lived;
* the RPC results and the client's security records.

The table, ``--json``, the pcapng with its ``esp_sa`` key file, and the diagrams are the simulated
world's (:mod:`rpclatch.demo.report`, :mod:`rpclatch.demo.diagram`).

``interop`` is not part of the wheel: it is imported only when a kernel world is asked for, from
the checkout this package was loaded from; without it the command says so in one line.
"""

from __future__ import annotations

import importlib
import ipaddress
import json
import os
import re
import shutil
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from rpclatch.demo.diagram import render_html, render_svg
from rpclatch.demo.model import EventKind, RunResult, ScenarioResult, TraceEvent
from rpclatch.demo.rundir import slug
from rpclatch.demo.scenarios import (
    LANES,
    MARKER,
    PAYLOAD,
    SCENARIOS,
    Observation,
    marker_bytes,
    rogue_cell,
    rogue_reason,
)
from rpclatch.demo.testbed import _ike_label, _seg_label, _short
from rpclatch.demo.wiretap import WireView
from rpclatch.gss.wire import BindChanStatus
from rpclatch.netsim.esp import EspKeys
from rpclatch.netsim.ikev2 import IKE_PORT
from rpclatch.netsim.ip import PROTO_TCP, PROTO_UDP, internet_checksum, pseudo_header
from rpclatch.netsim.link import WireRecord
from rpclatch.netsim.pcapng import EspSaExport, write_esp_sa_uat

__all__ = ["MARKER", "PAYLOAD", "KernelWorldUnavailable", "run_kernel_demo"]

#: the scenarios the kernel world runs (the others are the simulated world's only)
KERNEL_SCENARIOS = (1, 2, 3, 4, 5)
PORT = 2049
PROTO_ICMP = 1
WORLD_LANE = "world"  # the bridge's own address: the nfsd world's root namespace (its KDC)


class KernelWorldUnavailable(Exception):
    """The kernel world cannot run on this machine; the message says what is missing and how to
    get it (one line)."""


# ---------------------------------------------------------------------------------------------
# evidence: the capture, the kernel's SAs


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured Ethernet frame carrying IPv4: when, from which MAC to which, the IP datagram."""

    time: float
    src_mac: str
    dst_mac: str
    ip: bytes


def read_pcapng(path: Path) -> list[Frame]:
    """The IPv4 frames of a little-endian pcapng written by dumpcap on an Ethernet link (RFC-less
    format, IETF draft-ietf-opsawg-pcapng: SHB, IDB with if_tsresol, EPB)."""
    data = path.read_bytes()
    frames: list[Frame] = []
    resolutions: list[float] = []
    linktypes: list[int] = []
    pos = 0
    while pos + 12 <= len(data):
        btype, blen = struct.unpack_from("<II", data, pos)
        if blen < 12 or pos + blen > len(data):
            break
        body = data[pos + 8 : pos + blen - 4]
        if btype == 0x0A0D0D0A:  # section header: interfaces start again
            resolutions, linktypes = [], []
        elif btype == 1:  # interface description
            linktypes.append(struct.unpack_from("<H", body, 0)[0])
            resolutions.append(_tsresol(body[8:]))
        elif btype == 6 and len(body) >= 20:  # enhanced packet
            iface, hi, lo, caplen, _orig = struct.unpack_from("<IIIII", body, 0)
            packet = body[20 : 20 + caplen]
            if iface < len(linktypes) and linktypes[iface] == 1 and len(packet) >= 14:
                ethertype = int.from_bytes(packet[12:14], "big")
                if ethertype == 0x0800:
                    t = ((hi << 32) | lo) * resolutions[iface]
                    frames.append(Frame(t, packet[6:12].hex(":"), packet[0:6].hex(":"), packet[14:]))
        pos += blen
    return frames


def _tsresol(options: bytes) -> float:
    pos = 0
    while pos + 4 <= len(options):
        code, length = struct.unpack_from("<HH", options, pos)
        if code == 0:
            break
        if code == 9 and length >= 1:
            value = options[pos + 4]
            return 2.0 ** -(value & 0x7F) if value & 0x80 else 10.0**-value
        pos += 4 + length + (-length % 4)
    return 1e-6


def normalise_tcp_checksum(ip: bytes) -> bytes:
    """The datagram with its cleartext TCP checksum recomputed. A veth hands the kernel's
    segments to the bridge with the checksum left to the (absent) hardware, so a capture shows a
    partial sum; the observer's TCP decoder checks sums, and must not miss cleartext for it. ESP
    datagrams are left alone (their TCP checksum was completed before encryption)."""
    if len(ip) < 40 or ip[0] != 0x45 or ip[9] != PROTO_TCP:
        return ip
    total = int.from_bytes(ip[2:4], "big")
    if total > len(ip) or total < 40:
        return ip
    src = ipaddress.IPv4Address(ip[12:16])
    dst = ipaddress.IPv4Address(ip[16:20])
    tcp = bytearray(ip[20:total])
    tcp[16:18] = b"\0\0"
    csum = internet_checksum(pseudo_header(src, dst, PROTO_TCP, len(tcp)) + bytes(tcp))
    tcp[16:18] = csum.to_bytes(2, "big")
    return ip[:20] + bytes(tcp) + ip[total:]


_SA_HEAD = re.compile(r"^src (\S+) dst (\S+)")
_SA_SPI = re.compile(r"proto esp spi 0x([0-9a-fA-F]+)")
_SA_AEAD = re.compile(r"aead rfc4106\(gcm\(aes\)\) 0x([0-9a-fA-F]+)")


def kernel_sas(text: str) -> list[EspSaExport]:
    """The AES-GCM ESP SAs in ``ip xfrm state`` output, with the keys the kernel reports."""
    sas: list[EspSaExport] = []
    src = dst = ""
    spi: int | None = None
    for line in text.splitlines():
        if m := _SA_HEAD.match(line):
            src, dst, spi = m.group(1), m.group(2), None
        elif m := _SA_SPI.search(line):
            spi = int(m.group(1), 16)
        elif (m := _SA_AEAD.search(line)) and spi is not None:
            material = bytes.fromhex(m.group(1))
            keys = EspKeys(spi, material[:-4], material[-4:])
            sas.append(EspSaExport(ipaddress.ip_address(src), ipaddress.ip_address(dst), keys))
    return sas


def sas_between(sas: Sequence[EspSaExport], a: str, b: str) -> list[EspSaExport]:
    """The SAs from ``a`` to ``b`` or back."""
    return [sa for sa in sas if {str(sa.src), str(sa.dst)} == {a, b}]


class Evidence:
    """One scenario's capture, decoded with every key any kernel reported during it."""

    def __init__(self, pcap: Path, macs: dict[str, str], sas: Sequence[EspSaExport]) -> None:
        self.pcap = pcap
        self.frames = read_pcapng(pcap)
        self.sas: list[EspSaExport] = []
        for sa in sas:
            if sa.keys.spi not in {s.keys.spi for s in self.sas}:
                self.sas.append(sa)
        self.t0 = self.frames[0].time if self.frames else 0.0
        self.records = [
            WireRecord(
                f.time - self.t0,
                normalise_tcp_checksum(f.ip),
                macs.get(f.src_mac, WORLD_LANE),
                macs.get(f.dst_mac, WORLD_LANE),
            )
            for f in self.frames
        ]
        self.view = WireView(self.records, [sa.keys for sa in self.sas], PORT)

    def rel(self, t: float) -> float:
        """A guest wall-clock time on the capture's time line."""
        return t - self.t0

    def frames_with_marker(self) -> int:
        """Frames whose bytes, as captured (no decryption), contain the client's secret."""
        return sum(1 for f in self.frames if MARKER in f.ip)

    def decrypted_marker(self) -> int:
        """Decrypted ESP frames whose TCP payload contains (a piece of) the client's secret; the
        capture's check of the keys (a wrong key set gives 0)."""
        return sum(
            1
            for fv in self.view.frames
            if fv.decrypted and fv.inner is not None and MARKER[:16] in fv.inner.payload
        )

    def esp_frames(self) -> tuple[int, int]:
        """(ESP frames, of which decrypted with the kernel's keys)."""
        esp = [fv for fv in self.view.frames if fv.esp_spi is not None]
        return len(esp), sum(1 for fv in esp if fv.decrypted)

    def clear_tcp_frames(self, port: int = PORT) -> int:
        """Cleartext TCP segments to or from ``port`` (SYNs and ACKs count, not only payload)."""
        return sum(
            1
            for fv in self.view.frames
            if fv.esp_spi is None and fv.inner is not None and port in (fv.inner.src_port, fv.inner.dst_port)
        )

    def udp_to(self, port: int) -> int:
        n = 0
        for rec in self.records:
            pkt = rec.packet()
            if pkt is not None and pkt.proto == PROTO_UDP and len(pkt.payload) >= 4:
                n += int.from_bytes(pkt.payload[2:4], "big") == port
        return n

    def icmp_unreachable(self) -> int:
        """ICMP destination-unreachable messages (type 3) on the wire."""
        n = 0
        for rec in self.records:
            pkt = rec.packet()
            n += pkt is not None and pkt.proto == PROTO_ICMP and bool(pkt.payload) and pkt.payload[0] == 3
        return n

    def trace(self, notes: Sequence[tuple[float, str, str, str]]) -> list[TraceEvent]:
        """The diagram's events: every frame (ESP, IKE, cleartext, ICMP, Kerberos), every RPC call
        the observer decoded, and ``notes`` (guest time, lane, kind, text) of the scenario."""
        events: list[TraceEvent] = []
        for fv in self.view.frames:
            rec = fv.record
            pkt = fv.packet
            sport = dport = 0
            if pkt is not None and pkt.proto in (PROTO_UDP, PROTO_TCP) and len(pkt.payload) >= 4:
                sport = int.from_bytes(pkt.payload[0:2], "big")
                dport = int.from_bytes(pkt.payload[2:4], "big")
            if pkt is not None and pkt.proto == PROTO_UDP and IKE_PORT in (sport, dport):
                kind, label = EventKind.IKE, _ike_label(rec)
            elif fv.esp_spi is not None:
                kind = EventKind.ESP
                label = "ESP " + (_seg_label(fv.inner.flags, bool(fv.inner.payload)) if fv.inner else "?")
            elif 88 in (sport, dport):
                kind, label = EventKind.CLEAR, "Kerberos (KDC)"
            elif pkt is not None and pkt.proto == PROTO_ICMP:
                what = "unreachable" if pkt.payload[:1] == b"\x03" else f"type {pkt.payload[:1].hex()}"
                kind, label = EventKind.DROP, f"ICMP {what}"
            elif fv.inner is not None:
                kind = EventKind.CLEAR
                label = "CLEARTEXT " + _seg_label(fv.inner.flags, bool(fv.inner.payload))
            else:
                kind, label = EventKind.CLEAR, "packet"
            events.append(TraceEvent(rec.time, kind, rec.sender, rec.receiver, label, _flow_text(pkt)))
        # a call goes where the frame that completed it went (to the man in the middle, if any)
        receivers = {(rec.time, rec.sender): rec.receiver for rec in self.records}
        for call in self.view.calls:
            dst = receivers.get((call.time, call.sender)) or (
                "server" if call.sender != "server" else "client"
            )
            events.append(TraceEvent(call.time, EventKind.RPC, call.sender, dst, call.label, call.flow))
        for t, lane, note_kind, text in notes:
            ek = {"warning": EventKind.WARNING, "state": EventKind.STATE, "attack": EventKind.ATTACK}
            events.append(
                TraceEvent(self.rel(t), ek.get(note_kind, EventKind.POLICY), lane, None, _short(text), text)
            )
        events.sort(key=lambda e: e.t)
        return events


def _flow_text(pkt: Any) -> str:
    if pkt is None:
        return ""
    return f"{pkt.src} -> {pkt.dst} proto {pkt.proto}"


# ---------------------------------------------------------------------------------------------
# the verdicts


def _record(answer: dict[str, Any]) -> dict[str, Any]:
    rec: dict[str, Any] = answer.get("record") or {}
    return rec


def _echo_ok(answer: dict[str, Any]) -> tuple[bool, list[str]]:
    results = answer.get("results") or []
    return bool(results) and all(r.get("ok") for r in results), [
        r.get("service", r.get("error")) for r in results
    ]


def _latches(status: dict[str, Any], port: int) -> list[dict[str, Any]]:
    """The key manager's latches on a flow with ``port``."""
    return [row for row in status.get("latches", []) if f":{port}" in str(row.get("flow", ""))]


def _sport(five_tuple: str | None) -> int | None:
    """The client's port of a five-tuple text ``a:p -> b:q``."""
    if not five_tuple:
        return None
    try:
        return int(five_tuple.split(" -> ")[0].rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None


def _end_word(rows: list[dict[str, Any]]) -> str:
    states = {str(r.get("state")) for r in rows if r.get("peer") != "BYPASS"}
    if "ESTABLISHED" in states:
        return "yes"
    if "BROKEN" in states:
        return "broken"
    return "no"


class Scenario:
    """What the guest recorded of one scenario, and the evidence on the host."""

    def __init__(self, number: int, raw: dict[str, Any], parties: dict[str, list[str]], pcap: Path) -> None:
        self.number = number
        self.raw = raw
        self.attacker_bytes = 0  # bytes of frames delivered to an attacker (ciphertext counts)
        self.attacker_plaintext = 0  # payload bytes an attacker could read
        self.addr = {name: p[1] for name, p in parties.items()}
        macs = {p[2]: name for name, p in parties.items()}
        sas: list[EspSaExport] = []
        for snap in self.snapshots():
            for party in snap.get("xfrm", {}).values():
                sas += kernel_sas(party.get("state", ""))
        self.ev = Evidence(pcap, macs, sas)

    def snapshots(self) -> list[dict[str, Any]]:
        return [v for k, v in self.raw.items() if isinstance(v, dict) and "xfrm" in v and "t" in v]

    def notes(self) -> list[tuple[float, str, str, str]]:
        close = self.raw.get("close") or {}
        out = [(float(t), "client", kind, text) for t, kind, text in close.get("notes", [])]
        out += [(float(t), lane, kind, text) for t, lane, kind, text in self.raw.get("marks", [])]
        return out


def check_ipsec_available(s: Scenario) -> Observation:
    """1: latched at both ends (kernel SAs, both key managers), bound, channel_prot on the wire."""
    rec = _record(s.raw["connect"])
    ok, services = _echo_ok(s.raw["echo"])
    during = s.raw["during"]
    c, srv = s.addr["client"], s.addr["server"]
    c_sas = sas_between(kernel_sas(during["xfrm"]["client"]["state"]), c, srv)
    s_sas = sas_between(kernel_sas(during["xfrm"]["server"]["state"]), c, srv)
    sport = _sport(rec.get("five_tuple"))
    c_latch = [r for r in _latches(during["keyd"]["client"], PORT) if f":{sport}" in r["flow"]]
    s_latch = [r for r in _latches(during["keyd"]["server"], PORT) if f":{sport}" in r["flow"]]
    v = s.ev.view
    o = Observation(
        "IPsec available",
        f"{_end_word(c_latch)}/{_end_word(s_latch)}",
        (rec.get("peer") or "-")[:32],
        "bound" if rec.get("bound") else str(rec.get("bind_outcome", "?")).lower(),
        ",".join(v.data_services()) or "-",
        reason=str(rec.get("reason", s.raw["connect"].get("error", "")))
        + f" (IKE + CHILD_SA: {s.raw['connect'].get('latch_seconds') or 0:.3f} s)",
    )
    o.check(
        "client key manager: latch ESTABLISHED",
        _end_word(c_latch) == "yes",
        f"client latches on the flow: {c_latch}",
    )
    o.check(
        "server key manager: latch ESTABLISHED",
        _end_word(s_latch) == "yes",
        f"server latches on the flow: {s_latch}",
    )
    o.check(
        "kernel ESP SAs at both ends",
        len(c_sas) >= 2
        and len(s_sas) >= 2
        and {sa.keys.spi for sa in c_sas} == {sa.keys.spi for sa in s_sas},
        f"client SPIs {sorted(hex(sa.keys.spi) for sa in c_sas)}, server SPIs "
        f"{sorted(hex(sa.keys.spi) for sa in s_sas)}",
    )
    esp, decrypted = s.ev.esp_frames()
    o.check(
        "every ESP frame decrypted with the kernel's keys",
        esp > 0 and decrypted == esp and s.ev.decrypted_marker() > 0,
        f"{decrypted}/{esp} ESP frames decrypted; {s.ev.decrypted_marker()} carry the payload",
    )
    binds = v.bind_calls("client")
    replies = [r for b in binds for r in v.replies_to(b.xid, "server")]
    o.check(
        "BIND_CHANNEL inside ESP, answered OK",
        bool(binds)
        and all(b.protected for b in binds)
        and any(r.bind_status is BindChanStatus.RGSS2_BIND_CHAN_OK for r in replies),
        f"{len(binds)} BIND_CHANNEL call(s), reply status "
        f"{[getattr(r.bind_status, 'name', None) for r in replies]}",
    )
    o.check(
        "DATA calls are channel_prot on the wire",
        v.data_services() == ["channel_prot"],
        f"services on the wire: {v.data_services()}",
    )
    o.check(
        "security record says latched + bound + channel_prot",
        rec.get("latch_outcome") == "LATCHED_BINDING_CONF"
        and rec.get("bind_outcome") == "BOUND"
        and rec.get("gss_service") == "channel_prot",
        json.dumps({k: rec.get(k) for k in ("latch_outcome", "bind_outcome", "gss_service")}),
    )
    o.check(
        "no cleartext TCP on port 2049",
        s.ev.clear_tcp_frames() == 0,
        f"{s.ev.clear_tcp_frames()} cleartext TCP segments to/from port {PORT}",
    )
    o.check(
        "payload never visible on the wire",
        s.ev.frames_with_marker() == 0,
        f"{s.ev.frames_with_marker()} frames contain the payload in the clear",
    )
    o.check("ECHO replies intact", ok, f"4 ECHO calls: {services}")
    return o


def check_no_ike(s: Scenario) -> Observation:
    """2: the server host has no key manager: IKE answered by ICMP, BYPASS, krb5p, how fast."""
    connect = s.raw["connect"]
    rec = _record(connect)
    ok, services = _echo_ok(s.raw["echo"])
    during = s.raw["during"]
    c, srv = s.addr["client"], s.addr["server"]
    sport = _sport(rec.get("five_tuple"))
    c_sas = [b for b in policy_blocks(during["xfrm"]["client"]["state"]) if f"port {sport} " in b]
    c_latch = [r for r in _latches(during["keyd"]["client"], PORT) if f":{sport}" in r["flow"]]
    v = s.ev.view
    latch_s = connect.get("latch_seconds")
    took = f"fallback decided {latch_s:.3f} s after CREATE_CONNECTION_LATCH" if latch_s is not None else ""
    o = Observation(
        "no IKE on the server",
        "no",
        (rec.get("peer") or "-")[:32],
        "not tried" if rec.get("bind_outcome") == "NOT_ATTEMPTED" else str(rec.get("bind_outcome")).lower(),
        ",".join(v.data_services()) or "-",
        reason=f"{rec.get('reason', connect.get('error', ''))} ({rec.get('protection_error')}); {took}; "
        f"connected in {connect.get('seconds')} s",
    )
    o.check(
        "protection attempt failed",
        rec.get("latch_outcome") == "NOT_LATCHED" and rec.get("protection_error") is not None,
        f"protection error: {rec.get('protection_error')}",
    )
    o.check(
        "IKE tried first, answered by an ICMP unreachable",
        s.ev.udp_to(IKE_PORT) > 0 and s.ev.icmp_unreachable() > 0,
        f"{s.ev.udp_to(IKE_PORT)} IKE datagrams to port {IKE_PORT}, "
        f"{s.ev.icmp_unreachable()} ICMP unreachable",
    )
    policy = during["xfrm"]["client"]["policy"]
    o.check(
        "client: no latch and no XFRM policy left on the 5-tuple (BYPASS is the kernel's default)",
        not [r for r in c_latch if r.get("state") == "ESTABLISHED"] and f"sport {sport} " not in policy,
        f"client key manager's latches on the flow: {c_latch}; client XFRM policies: "
        f"{len(policy.splitlines())} lines",
    )
    o.check(
        "no ESP SA for the 5-tuple",
        not c_sas,
        f"{len(c_sas)} SAs for it in the client's kernel (of "
        f"{len(sas_between(kernel_sas(during['xfrm']['client']['state']), c, srv))} with the "
        "server's address)",
    )
    o.check("no BIND_CHANNEL attempted", not v.bind_calls(), f"{len(v.bind_calls())} BIND_CHANNEL")
    o.check(
        "DATA calls are krb5p on the wire",
        v.data_services() == ["krb5p"],
        f"services on the wire: {v.data_services()}",
    )
    o.check(
        "payload never visible on the wire",
        s.ev.frames_with_marker() == 0 and s.ev.clear_tcp_frames() > 0,
        f"{s.ev.frames_with_marker()} frames contain the payload in the clear "
        f"({s.ev.clear_tcp_frames()} cleartext TCP segments: krb5p wraps it)",
    )
    o.check("ECHO replies intact", ok, f"4 ECHO calls: {services}")
    return o


def check_btns_mitm(s: Scenario) -> Observation:
    """3: the concatenated-SA man in the middle (RFC 5387 §1.2): both ends latch, to the
    attacker's two keys; BIND_CHANNEL fails (the ends see different channels), the context is
    destroyed, krb5p; the attacker, who decrypts both SAs, reads no payload."""
    rec = _record(s.raw["connect"])
    ok, services = _echo_ok(s.raw["echo"])
    during = s.raw["during"]
    keys = s.raw.get("keys") or {}
    sport = _sport(rec.get("five_tuple"))
    mitm_b = s.addr.get("mitm-b", "?")
    c_peers = _peers(during["keyd"]["client"], sport)
    s_latches = [
        r
        for r in _latches(during["keyd"]["server"], PORT)
        if mitm_b in str(r.get("flow")) and r.get("state") == "ESTABLISHED"
    ]
    v = s.ev.view
    attacker_keys = [
        sa.keys
        for party in ("mitm", "mitm-b")
        for sa in kernel_sas(during["xfrm"].get(party, {}).get("state", ""))
    ]
    relay = s.raw.get("relay") or {}
    readable = v.readable_by("mitm", attacker_keys) + v.readable_by("mitm-b", attacker_keys)
    s.attacker_bytes = v.bytes_to("mitm") + v.bytes_to("mitm-b")
    s.attacker_plaintext = marker_bytes(readable) + int(relay.get("marker_bytes", 0))
    o = Observation(
        "BTNS man in the middle",
        f"{_end_word(_latches(during['keyd']['client'], PORT))}/{'yes' if s_latches else 'no'}"
        " (to the attacker)",
        (rec.get("peer") or "-")[:32],
        "failed" if rec.get("bind_outcome") == "MISMATCH" else str(rec.get("bind_outcome", "?")).lower(),
        ",".join(v.data_services()) or "-",
        reason=str(rec.get("reason", s.raw["connect"].get("error", ""))),
    )
    o.check(
        "the attacker is set up on the path",
        all(s.raw.get("mitm_ready") or [False])
        and not s.raw.get("ip_errors")
        and '"ready"' in str(s.raw.get("relay_ready")),
        f"key managers ready {s.raw.get('mitm_ready')}, relay {s.raw.get('relay_ready')!r}, "
        f"errors {s.raw.get('ip_errors')}",
    )
    o.check(
        "both ends latched (to the attacker)",
        c_peers == [keys.get("mitm")] and [r.get("peer") for r in s_latches] == [keys.get("mitm-b")],
        f"client latched to {c_peers} (mitm {keys.get('mitm')}, server {keys.get('server')}); server latched "
        f"{[(r.get('flow'), r.get('peer')) for r in s_latches]} (mitm-b {keys.get('mitm-b')})",
    )
    o.check(
        "BIND_CHANNEL attempted and failed",
        bool(v.bind_calls("client")) and rec.get("bind_outcome") == "MISMATCH",
        f"{len(v.bind_calls('client'))} BIND_CHANNEL on the wire; bind outcome {rec.get('bind_outcome')}",
    )
    o.check(
        "failure reported loudly", bool(rec.get("warnings")), str((rec.get("warnings") or ["no warning"])[0])
    )
    from rpclatch.gss.wire import GssProc

    destroys = v.gss_calls(GssProc.RPCSEC_GSS_DESTROY, sender="client")
    o.check(
        "the bound context destroyed", bool(destroys), f"{len(destroys)} RPCSEC_GSS_DESTROY from the client"
    )
    o.check(
        "fell back to krb5p (both segments)",
        v.data_services("client") == ["krb5p"] and v.data_services("mitm-b") == ["krb5p"],
        f"client segment {v.data_services('client')}, server segment {v.data_services('mitm-b')}",
    )
    o.check(
        "the attacker read no payload (its keys, its relay)",
        s.attacker_plaintext == 0 and int(relay.get("plaintext_bytes", 0)) > 0 and bool(attacker_keys),
        f"relay read {relay.get('plaintext_bytes')} bytes of RPC in clear, "
        f"{relay.get('marker_bytes')} of them payload; {len(readable)} bytes of the capture "
        f"readable with its {len(attacker_keys)} SA keys, {marker_bytes(readable)} of them payload",
    )
    o.check(
        "no cleartext TCP on port 2049",
        s.ev.clear_tcp_frames() == 0,
        f"{s.ev.clear_tcp_frames()} cleartext TCP segments to/from port {PORT}",
    )
    o.check("ECHO replies intact", ok, f"4 ECHO calls: {services}")
    return o


def _peers(status: dict[str, Any], sport: int | None) -> list[str]:
    return [
        str(r.get("peer"))
        for r in _latches(status, PORT)
        if f":{sport}" in str(r.get("flow")) and r.get("state") == "ESTABLISHED"
    ]


def check_rogue(s: Scenario) -> Observation:
    """4: a rogue takes the server's address mid-flow (the client's ARP entry too) and its own key
    manager asks the client's for a CHILD_SA on exactly the latched 5-tuple. That cannot be
    narrowed, so the client's key manager breaks the latch -- DISCARD on the 5-tuple, ALERT --
    before it accepts the SA (RFC 5660 §2.3); the client resets the connection (§5.5 (b)) and the
    call in flight fails; the ESP the rogue receives meanwhile stays unreadable. Once the server
    has its address back, the next call reconnects on a new 5-tuple, re-latches to the server's
    key and re-binds (the verdicts of the simulated scenario 4)."""
    rec = _record(s.raw["connect"])
    sport = _sport(rec.get("five_tuple"))
    ok_before, _ = _echo_ok(s.raw["echo_before"])
    before, during, after = s.raw["before"], s.raw["during"], s.raw["after"]
    v = s.ev.view
    rogue_keys = [sa.keys for sa in kernel_sas(during["xfrm"].get("rogue", {}).get("state", ""))]
    readable = v.readable_by("rogue", rogue_keys)
    s.attacker_bytes = v.bytes_to("rogue")
    s.attacker_plaintext = marker_bytes(readable)
    claim = s.ev.rel(float(s.raw.get("t_claim", 0.0)))
    back = s.ev.rel(float(s.raw.get("t_back", 0.0)))
    rogue = s.raw.get("rogue_latch") or {}
    history: list[dict[str, Any]] = (s.raw.get("close") or {}).get("history") or []
    broken = [r for r in history if r.get("latch_state") == "BROKEN"]
    reset = bool(broken) and "reset" in str(broken[0].get("reason"))
    last = history[-1] if history else {}
    new_sport = _sport(last.get("five_tuple"))
    ok_during, during_services = _echo_ok(s.raw["echo_during"])
    ok_after, after_services = _echo_ok(s.raw["echo_after"])
    alerts = ["BROKEN"] if broken else []
    relatched = bool(last.get("latched")) and new_sport not in (None, sport)
    o = Observation(
        "rogue claims server address",
        rogue_cell(alerts, relatched),
        (last.get("peer") or "-")[:32],
        "bound" if last.get("bound") else str(last.get("bind_outcome", "?")).lower(),
        ",".join(v.data_services()) or "-",
        reason=rogue_reason(
            alerts, reset, last.get("conn_id") != rec.get("conn_id"), relatched, bool(last.get("bound"))
        ),
    )
    o.check(
        "first connection latched and bound", bool(rec.get("bound")) and ok_before, str(rec.get("reason"))
    )
    o.check(
        "rogue up on the server's address, its key manager ready",
        bool(s.raw.get("rogue_ready")) and not s.raw.get("ip_errors"),
        f"ready {s.raw.get('rogue_ready')}, errors {s.raw.get('ip_errors')}",
    )
    o.check(
        "the rogue's IKE reached the client's key manager",
        any(
            e.kind is EventKind.IKE and e.src == "rogue" and e.dst == "client"
            for e in s.ev.trace(())
            if e.t >= claim
        ),
        "IKE from the rogue's MAC to the client after the claim",
    )
    o.check(
        "client latch went BROKEN",
        bool(broken),
        f"client records: {[(r.get('conn_id'), r.get('latch_state'), r.get('reason')) for r in history]}",
    )
    o.check(
        "connection reset (RFC 5660 §5.5 default)",
        reset and not ok_during and bool(s.raw.get("during_done")),
        f"the call in flight: {during_services} (failed before the server had its address back: "
        f"{s.raw.get('during_done')})",
    )
    # what the client's kernel held right after the break: the rogue's SA pair for the old
    # 5-tuple (accepted after the ALERT) under the key manager's exact DISCARD policy
    blocks = [
        b
        for b in policy_blocks(during["xfrm"]["client"]["policy"])
        if sport is not None and f"port {sport}" in b and "action block" in b
    ]
    rogue_spis = {sa.keys.spi for sa in kernel_sas(during["xfrm"].get("rogue", {}).get("state", ""))}
    client_spis = {sa.keys.spi for sa in kernel_sas(during["xfrm"]["client"]["state"])}
    accepted = sorted(hex(x) for x in rogue_spis & client_spis)
    o.check(
        "the rogue's SA accepted only under a DISCARD of the broken 5-tuple",
        "answer" in rogue and bool(rogue_spis & client_spis) and len(blocks) >= 2,
        f"rogue key manager's CREATE_CONNECTION_LATCH: {rogue}; rogue SPIs in the client's kernel "
        f"{accepted}; DISCARD policies on port {sport}: {len(blocks)}",
    )
    to_rogue = [fv for fv in v.delivered_to("rogue") if fv.inner is not None or fv.esp_spi is not None]
    o.check(
        "the rogue could read no frame of the flow",
        s.attacker_plaintext == 0
        and not [fv for fv in to_rogue if fv.esp_spi is None and fv.inner is not None],
        f"{len(to_rogue)} TCP/ESP frames delivered to the rogue ({s.attacker_bytes} bytes), "
        f"{len(readable)} bytes readable with its keys, {s.attacker_plaintext} payload bytes",
    )
    first_peer = _peers(before["keyd"]["server"], sport)
    new_peer = _peers(after["keyd"]["server"], new_sport)
    o.check(
        "reconnected on a new 5-tuple, re-latched to the server's key and re-bound",
        relatched
        and bool(last.get("bound"))
        and last.get("peer") == rec.get("peer")
        and ok_after
        and v.data_services(after=back) == ["channel_prot"],
        f"{last.get('five_tuple')}: {last.get('reason')}; calls {after_services}, services on the wire "
        f"after the server's return {v.data_services(after=back)}",
    )
    o.check(
        "server latched the new connection to the client's key",
        bool(new_peer) and new_peer == first_peer,
        f"server latch peers: first connection {first_peer}, new connection {new_peer}",
    )
    o.check(
        "never cleartext on port 2049",
        s.ev.clear_tcp_frames() == 0,
        f"{s.ev.clear_tcp_frames()} cleartext TCP segments to/from port {PORT}",
    )
    o.check(
        "payload never visible on the wire",
        s.ev.frames_with_marker() == 0,
        f"{s.ev.frames_with_marker()} frames contain the payload in the clear",
    )
    return o


def policy_blocks(text: str) -> list[str]:
    """``ip xfrm policy`` (or ``state``) output cut into one text per policy (or SA)."""
    blocks: list[str] = []
    for line in text.splitlines():
        if line.startswith("src "):
            blocks.append(line)
        elif blocks and line.strip():
            blocks[-1] += "\n" + line
    return blocks


def flow_policies(text: str, sport: int | None) -> list[str]:
    """The key manager's policies pinned to the flow of client port ``sport`` (ESP template)."""
    return [
        b
        for b in policy_blocks(text)
        if sport is not None and f"port {sport}" in b and "proto esp" in b and "action block" not in b
    ]


def admin_policies(text: str) -> list[str]:
    """The administrator's port-2049 BYPASS policies of scenario 5: wildcard addresses, no
    template, not BLOCK (the key manager's own policies are exact 5-tuples), at any priority."""
    return [
        b
        for b in policy_blocks(text)
        if b.startswith("src 0.0.0.0/0 ")
        and f"port {PORT}" in b
        and "tmpl" not in b
        and "action block" not in b
    ]


def check_policy_change(s: Scenario) -> Observation:
    """5: port 2049 made BYPASS by the administrator mid-flow, server then client: the latched
    flow stays pinned to its SAs at both ends (the key manager's per-5-tuple policies come first),
    calls go on in channel_prot inside ESP, never a cleartext segment."""
    rec = _record(s.raw["connect"])
    sport = _sport(rec.get("five_tuple"))
    ok_before, _ = _echo_ok(s.raw["echo_before"])
    v = s.ev.view
    words: dict[str, str] = {}
    o = Observation(
        "policy changed mid-flow", "?", (rec.get("peer") or "-")[:32], "?", ",".join(v.data_services()) or "-"
    )
    o.check(
        "first connection latched and bound",
        bool(rec.get("bound")) and ok_before,
        json.dumps({k: rec.get(k) for k in ("latch_outcome", "bind_outcome", "gss_service")}),
    )
    for party in ("server", "client"):
        after = s.raw[f"after_{party}"]
        text = after["xfrm"][party]["policy"]
        latch = [r for r in _latches(after["keyd"][party], PORT) if f":{sport}" in r["flow"]]
        pinned = _end_word(latch) == "yes" and len(flow_policies(text, sport)) >= 2
        admin = admin_policies(text)
        words[party] = "pinned" if pinned else _end_word(latch)
        o.check(
            f"{party}: admin's port-2049 BYPASS in the kernel, latched flow still pinned",
            pinned and len(admin) == 2 and not s.raw.get(f"admin_{party}_errors"),
            f"{party} latch {[r.get('state') for r in latch]}, {len(flow_policies(text, sport))} per-5-tuple "
            f"ESP policies, {len(admin)} admin BYPASS policies, errors {s.raw.get(f'admin_{party}_errors')}",
        )
        ok, services = _echo_ok(s.raw[f"echo_after_{party}"])
        after_t = s.ev.rel(float(s.raw[f"t_{party}"]))
        o.check(
            f"channel_prot still accepted after the {party} change",
            ok and v.data_services(after=after_t) == ["channel_prot"],
            f"ECHOs {services}; services on the wire after it: {v.data_services(after=after_t)}",
        )
    esp, decrypted = s.ev.esp_frames()
    o.check(
        "never cleartext on port 2049",
        s.ev.clear_tcp_frames() == 0 and esp > 0 and decrypted == esp,
        f"{s.ev.clear_tcp_frames()} cleartext TCP segments; {decrypted}/{esp} ESP frames decrypted",
    )
    o.check(
        "payload never visible on the wire",
        s.ev.frames_with_marker() == 0,
        f"{s.ev.frames_with_marker()} frames contain the payload in the clear",
    )
    o.latched = f"{words['server']}/{words['client']}"
    o.binding = "bound" if rec.get("bound") else str(rec.get("bind_outcome", "?")).lower()
    o.reason = (
        f"server {words['server']}, client {words['client']}: the key manager's per-5-tuple policies "
        f"(priority 0) come before the administrator's port-{PORT} BYPASS (priority 1)"
    )
    return o


CHECKS: dict[int, Callable[[Scenario], Observation]] = {
    1: check_ipsec_available,
    2: check_no_ike,
    3: check_btns_mitm,
    4: check_rogue,
    5: check_policy_change,
}


def judge(number: int, raw: dict[str, Any], parties: dict[str, list[str]], run_dir: Path) -> ScenarioResult:
    """One scenario's result from what the guest recorded and its capture (errors become FAIL)."""
    spec = next(s for s in SCENARIOS if s.number == number)
    base = f"{number}-{slug(spec.name)}"
    pcap = run_dir / f"{base}.pcapng"
    files: dict[str, str] = {}
    events: list[TraceEvent] = []
    error = raw.get("error")
    s: Scenario | None = None
    try:
        if error is not None:
            raise RuntimeError(error)
        s = Scenario(number, raw, parties, pcap)
        o = CHECKS[number](s)
        errors = [str(a["error"]) for a in raw.values() if isinstance(a, dict) and a.get("error")]
        error = "; ".join(errors) or None
    except Exception as exc:  # a crash is a FAIL with its reason, never a traceback for the user
        error = error or f"{type(exc).__name__}: {exc}"
        o = Observation(spec.title, "?", "?", "?", "?", reason=error)
    if s is not None:
        events = s.ev.trace(s.notes())
        esp_sa = run_dir / f"{base}.esp_sa"
        write_esp_sa_uat(esp_sa, s.ev.sas)
        files["pcapng"] = str(pcap)
        files["esp_sa"] = str(esp_sa)
    title = f"Scenario {number}: {spec.title} (kernel ESP)"
    svg = render_svg(title, events, (*LANES, WORLD_LANE))
    (run_dir / f"{base}.svg").write_text(svg, encoding="utf-8")
    summary = [
        ("latched?", o.latched),
        ("peer", o.peer),
        ("binding", o.binding),
        ("GSS service", o.gss_service),
        ("why", o.reason),
    ] + ([("error", error)] if error else [])
    if "pcapng" in files:
        summary.append(
            (
                "capture",
                f"{pcap.name}: open in Wireshark; to decrypt the ESP, copy {Path(files['esp_sa']).name} "
                "to ~/.config/wireshark/esp_sa and enable 'Attempt to detect/decode encrypted ESP "
                "payloads' (keys as the kernels reported them in ip xfrm state)",
            )
        )
    (run_dir / f"{base}.html").write_text(
        render_html(title, svg, o.checks, summary, events), encoding="utf-8"
    )
    files["svg"] = str(run_dir / f"{base}.svg")
    files["html"] = str(run_dir / f"{base}.html")
    records = (raw.get("close") or {}).get("history") or []
    return ScenarioResult(
        number,
        spec.name,
        o.title,
        o.latched,
        o.peer,
        o.binding,
        o.gss_service,
        s.attacker_bytes if s is not None else 0,
        s.attacker_plaintext if s is not None else 0,
        tuple(o.checks),
        tuple(events),
        files,
        o.reason,
        error,
        tuple(records),
    )


# ---------------------------------------------------------------------------------------------
# the world


def _interop() -> tuple[Any, Path]:
    """The checkout's ``interop.choose`` module and ``interop/demo_guest.py`` (one-line error if
    this rpclatch was not loaded from a checkout)."""
    checkout = Path(__file__).resolve().parents[2]
    guest = checkout / "interop" / "demo_guest.py"
    if not guest.exists():
        raise KernelWorldUnavailable(
            "the kernel worlds need a source checkout of rpclatch (the interop/ package is not in "
            "the wheel): run 'rpclatch demo --world uml' from the git checkout's .venv"
        )
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    return importlib.import_module("interop.choose"), guest


def _last_error(stderr: str) -> str:
    """The line of a guest program's stderr that says what went wrong (its exception)."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line)]
    return (errors or lines or ["no output"])[-1]


def run_kernel_demo(
    run_dir: Path,
    kind: str,
    numbers: Sequence[int] | None = None,
    progress: TextIO | None = None,
) -> RunResult:
    """Boot the ``kind`` world (``uml`` or ``netns``) once, run the scenarios ``numbers`` (default:
    all the kernel world has) in it, judge them. Raises :class:`KernelWorldUnavailable`."""
    t0 = time.monotonic()
    chosen = [n for n in (numbers or KERNEL_SCENARIOS) if n in KERNEL_SCENARIOS]
    if not chosen:
        raise KernelWorldUnavailable(
            f"the {kind} world runs scenarios {', '.join(map(str, KERNEL_SCENARIOS))}; "
            "the others run with --world sim"
        )
    if shutil.which("dumpcap") is None:
        raise KernelWorldUnavailable("dumpcap is not installed: run 'bash scripts/setup.sh' (tshark)")
    choose, guest_script = _interop()
    choice = choose.choose_world(kind)
    if choice.missing:
        raise KernelWorldUnavailable(
            f"--world {kind} cannot run here: {'; '.join(choice.missing)} "
            "(run as root after 'bash scripts/setup.sh'; --world sim needs neither)"
        )
    world_mod = importlib.import_module("interop.world")

    def say(line: str) -> None:
        if progress is not None:
            print(line, file=progress, flush=True)

    config = world_mod.GuestConfig(esp=False, capture=False)
    world_dir = run_dir / "world"
    names = {str(n): f"{n}-{slug(next(s for s in SCENARIOS if s.number == n).name)}.pcapng" for n in chosen}
    say(f"booting the {choice.kind} world ({choice.reason}) ...")
    out = world_dir / "demo"
    try:
        with choice.cls(config, run_dir=world_dir, progress=say) as world:
            out.mkdir(parents=True, exist_ok=True)
            env = {k: v for k, v in world.guest_env("alice", "rl-client").items() if k != "PYTHONPATH"}
            cfg = {"out": world.guest_path(out), "scenarios": names, "env": env}
            say(f"running scenarios {', '.join(map(str, chosen))} in the {choice.kind} world ...")
            res = world.run(
                world.python_argv(str(guest_script), "run", json.dumps(cfg)),
                env=world.guest_env(None),
                timeout=900,
            )
    except world_mod.GuestError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise KernelWorldUnavailable(
            f"the {choice.kind} world failed: {first} (logs in {world_dir})"
        ) from exc
    lines = res.stdout.strip().splitlines()
    if not res.ok or not lines:
        raise KernelWorldUnavailable(
            f"the scenarios did not run in the {choice.kind} world (exit {res.returncode}): "
            + _last_error(res.stderr)
            + f"; logs in {world_dir}"
        )
    guest: dict[str, Any] = json.loads(lines[-1])
    (run_dir / "guest.json").write_text(json.dumps(guest, indent=1) + "\n", encoding="utf-8")
    for name in names.values():
        if (out / name).exists():
            os.replace(out / name, run_dir / name)
    results = []
    for n in chosen:
        raw = guest.get("scenarios", {}).get(str(n)) or {"error": guest.get("error", "not run")}
        result = judge(n, raw, guest.get("parties", {}), run_dir)
        say(f"[{n}] {result.title} ... {result.verdict.value}")
        results.append(result)
    return RunResult(choice.kind, str(run_dir), world.realm, tuple(results), time.monotonic() - t0)
