"""The exported capture is real: tshark decodes every frame (no malformed marks), checksums
verify, and ESP decrypts with the exported esp_sa keys."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from rpclatch.ipsec.engine import Approach
from rpclatch.ipsec.model import Selector
from rpclatch.netsim.pcapng import EspSaExport, tshark_esp_options
from rpclatch.netsim.tcp import Flags
from rpclatch.netsim.testing.lab import Lab
from rpclatch.netsim.testing.wireview import decode_wire

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")


def _scenario(tmp_path: Path) -> tuple[Lab, Path, Path]:
    lab = Lab.build(approach=Approach.POLICY)
    client, server = lab.open()
    assert server is not None
    lab.send(client, b"hello over esp")
    lab.send(server, b"reply over esp")
    clear, _ = lab.open(4000)
    lab.send(clear, b"cleartext flow")
    c = lab.attacker()
    f = client.flow
    c.inject_tcp(f.remote_addr, f.remote_port, f.local_addr, f.local_port, seq=1, flags=Flags.RST)
    c.blackhole(lab.a.address, lab.b.address)
    clear.send(b"lost for a while")
    lab.net.run_for(0.3)
    c.stop_dropping()
    lab.net.run_for(1.0)
    c.claim_address(lab.b.address)
    lab.stack(c).sike.initiate(lab.b.address, lab.a.address, (Selector.for_flow(f.reversed()),))
    lab.net.run_for(1.0)
    pcap, keys = tmp_path / "run.pcapng", tmp_path / "run.esp_sa"
    lab.net.export_pcapng(pcap, keys)
    return lab, pcap, keys


def _tshark(pcap: Path, sas: list[EspSaExport], *args: str) -> str:
    assert TSHARK is not None
    opts = [
        *tshark_esp_options(sas),
        "-o",
        "tcp.check_checksum:TRUE",
        "-o",
        "ip.check_checksum:TRUE",
        "-o",
        "udp.check_checksum:TRUE",
    ]
    out = subprocess.run(
        [TSHARK, "-n", "-r", str(pcap), *opts, *args], capture_output=True, text=True, timeout=120, check=True
    )
    assert "WARNING" not in out.stderr, out.stderr
    return out.stdout


def test_pcapng_structure(tmp_path: Path) -> None:
    lab, pcap, keys = _scenario(tmp_path)
    raw = pcap.read_bytes()
    assert struct.unpack_from("<I", raw)[0] == 0x0A0D0D0A
    assert struct.unpack_from("<I", raw, 8)[0] == 0x1A2B3C4D
    rows = keys.read_text().splitlines()
    assert len(rows) == len(lab.net.esp_keys) >= 4
    assert all(r.startswith('"IPv4","192.0.2.') for r in rows)


@needs_tshark
def test_tshark_decodes_and_decrypts_without_malformed_packets(tmp_path: Path) -> None:
    lab, pcap, _ = _scenario(tmp_path)
    sas = lab.net.esp_keys
    frames = _tshark(pcap, sas, "-T", "fields", "-e", "frame.number").split()
    claims = [c for c in lab.net.hub.claims if c[1].version == 4]
    assert len(frames) == len(lab.net.wire) + len(claims)
    # address claims show as gratuitous ARP; C's claim of B's address is visible on the wire
    garp = _tshark(
        pcap,
        sas,
        "-Y",
        "arp.isgratuitous",
        "-T",
        "fields",
        "-e",
        "arp.src.proto_ipv4",
        "-e",
        "arp.src.hw_mac",
    ).splitlines()
    assert len(garp) == len(claims)
    by_addr: dict[str, set[str]] = {}
    for line in garp:
        addr, mac = line.split("\t")
        by_addr.setdefault(addr, set()).add(mac)
    assert len(by_addr["192.0.2.2"]) == 2  # two different MACs claimed the server address
    bad = _tshark(
        pcap,
        sas,
        "-Y",
        "_ws.malformed || _ws.expert.severity == error "
        "|| tcp.checksum.status == 0 "
        "|| ip.checksum.status == 0 || udp.checksum.status == 0",
    )
    assert bad.strip() == ""
    good = _tshark(pcap, sas, "-Y", "tcp.checksum.status == 1", "-T", "fields", "-e", "frame.number")
    assert len(good.split()) > 10
    # every ESP frame whose keys were exported decrypts to a TCP segment with a valid checksum
    esp = [p for p in decode_wire(lab.net.hub) if p.protected and p.decrypted]
    inner = _tshark(pcap, sas, "-Y", "esp && tcp", "-T", "fields", "-e", "frame.number").split()
    assert len(inner) == len(esp) > 5
    payloads = _tshark(pcap, sas, "-Y", "esp && tcp.len > 0", "-T", "fields", "-e", "tcp.payload").split()
    text = b"".join(bytes.fromhex(h.replace(":", "")) for h in payloads)
    assert b"hello over esp" in text and b"reply over esp" in text


@needs_tshark
def test_without_keys_esp_stays_opaque(tmp_path: Path) -> None:
    _lab, pcap, _ = _scenario(tmp_path)
    inner = _tshark(pcap, [], "-Y", "esp && tcp", "-T", "fields", "-e", "frame.number")
    assert inner.strip() == ""
    comments = _tshark(pcap, [], "-Y", "frame.comment", "-T", "fields", "-e", "frame.comment")
    assert "injected by c" in comments and "dropped in transit" in comments
