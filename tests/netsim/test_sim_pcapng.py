"""The exported capture is real: tshark decodes every frame (no malformed marks), checksums
verify, ESP decrypts with the exported esp_sa keys, and the IKEv2 SK payloads decrypt with the
exported ikev2_decryption_table."""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from rpclatch.ipsec.engine import Approach
from rpclatch.ipsec.model import Selector
from rpclatch.netsim.pcapng import EspSaExport, tshark_esp_options, tshark_ikev2_options
from rpclatch.netsim.tcp import Flags
from rpclatch.netsim.testing.lab import Lab
from rpclatch.netsim.testing.wireview import decode_wire

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
#: frames carrying a CERT of encoding 15 (raw public key, RFC 7670), which Wireshark 4.0 misparses
_RAW_KEY_CERT = "isakmp.cert.encoding == 15"


def _scenario(tmp_path: Path) -> tuple[Lab, dict[str, Path]]:
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
    lab.stack(c).ike.initiate(lab.b.address, lab.a.address, (Selector.for_flow(f.reversed()),))
    lab.net.run_for(1.0)
    return lab, lab.export(tmp_path, "run")


def _tshark(pcap: Path, sas: list[EspSaExport], *args: str, ike_rows: Sequence[str] = ()) -> str:
    assert TSHARK is not None
    opts = [
        *tshark_esp_options(sas),
        *tshark_ikev2_options(ike_rows),
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


def _numbers(pcap: Path, sas: list[EspSaExport], flt: str, ike_rows: Sequence[str] = ()) -> list[str]:
    return _tshark(pcap, sas, "-Y", flt, "-T", "fields", "-e", "frame.number", ike_rows=ike_rows).split()


def test_pcapng_structure(tmp_path: Path) -> None:
    lab, files = _scenario(tmp_path)
    assert sorted(files) == ["esp_sa", "ikev2_decryption_table", "pcapng"]
    raw = files["pcapng"].read_bytes()
    assert struct.unpack_from("<I", raw)[0] == 0x0A0D0D0A
    assert struct.unpack_from("<I", raw, 8)[0] == 0x1A2B3C4D
    rows = files["esp_sa"].read_text().splitlines()
    assert len(rows) == len(lab.net.esp_keys) >= 4
    assert all(r.startswith('"IPv4","192.0.2.') for r in rows)
    # one row per IKE SA although both ends know its keys: a-b's, and the attacker c's with a
    ike_rows = files["ikev2_decryption_table"].read_text().splitlines()
    daemons = [lab.stack(h).ike for h in lab.net.hosts.values()]
    assert set(ike_rows) == {row for d in daemons for row in d.decryption_rows()}
    assert len(ike_rows) == len(set(ike_rows)) == 2


@needs_tshark
def test_tshark_decodes_and_decrypts_without_malformed_packets(tmp_path: Path) -> None:
    lab, files = _scenario(tmp_path)
    pcap, sas = files["pcapng"], lab.net.esp_keys
    ike_rows = files["ikev2_decryption_table"].read_text().splitlines()
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
        "tcp.checksum.status == 0 || ip.checksum.status == 0 || udp.checksum.status == 0 "
        f"|| ((_ws.malformed || _ws.expert.severity == error) && !{_RAW_KEY_CERT})",
        ike_rows=ike_rows,
    )
    assert bad.strip() == ""
    # Wireshark 4.0 does not know CERT encoding 15 (raw public key, RFC 7670) and parses it as
    # X.509: such frames may carry BER errors, and nothing else
    quirk = _tshark(
        pcap, sas, "-Y", _RAW_KEY_CERT, "-T", "fields", "-e", "_ws.expert.message", ike_rows=ike_rows
    )
    assert all(m.startswith("BER Error") for m in quirk.replace("\n", ",").split(",") if m), quirk
    good = _tshark(pcap, sas, "-Y", "tcp.checksum.status == 1", "-T", "fields", "-e", "frame.number")
    assert len(good.split()) > 10
    # every ESP frame whose keys were exported decrypts to a TCP segment with a valid checksum
    esp = [p for p in decode_wire(lab.net.hub) if p.protected and p.decrypted]
    inner = _tshark(pcap, sas, "-Y", "esp && tcp", "-T", "fields", "-e", "frame.number").split()
    assert len(inner) == len(esp) > 5
    payloads = _tshark(pcap, sas, "-Y", "esp && tcp.len > 0", "-T", "fields", "-e", "tcp.payload").split()
    text = b"".join(bytes.fromhex(h.replace(":", "")) for h in payloads)
    assert b"hello over esp" in text and b"reply over esp" in text
    # every IKE datagram is ISAKMP, and every SK payload decrypts with the exported table (the
    # IKE_AUTH requests show their AUTH payload, which only ever travels inside SK)
    ike = [p for p in decode_wire(lab.net.hub) if p.ike]
    assert len(_numbers(pcap, sas, "udp.port == 500 && isakmp")) == len(ike) >= 8
    sk = _numbers(pcap, sas, "isakmp.typepayload == 46", ike_rows)
    assert _numbers(pcap, sas, "isakmp.enc.decrypted", ike_rows) == sk != []
    auth_requests = _numbers(pcap, sas, "isakmp.exchangetype == 35 && isakmp.flag_r == 0", ike_rows)
    assert (
        _numbers(
            pcap, sas, "isakmp.exchangetype == 35 && isakmp.flag_r == 0 && isakmp.typepayload == 39", ike_rows
        )
        == auth_requests
        != []
    )
    assert _numbers(pcap, sas, "isakmp.enc.decrypted") == []  # and only with the table


@needs_tshark
def test_without_keys_esp_stays_opaque(tmp_path: Path) -> None:
    _lab, files = _scenario(tmp_path)
    pcap = files["pcapng"]
    inner = _tshark(pcap, [], "-Y", "esp && tcp", "-T", "fields", "-e", "frame.number")
    assert inner.strip() == ""
    comments = _tshark(pcap, [], "-Y", "frame.comment", "-T", "fields", "-e", "frame.comment")
    assert "injected by c" in comments and "dropped in transit" in comments
