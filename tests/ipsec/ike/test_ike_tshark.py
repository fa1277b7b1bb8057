"""An independent reader of our messages: tshark (Wireshark's IKEv2 dissector) decodes a whole
run, and with the keys we derived (its ``ikev2_decryption_table``) decrypts every SK payload and
checks its ICV. This pins the SK construction (RFC 5282 GCM, CBC + HMAC-SHA2-256-128) and the
encoding of every payload to a second implementation; it cannot check the key derivation, since
Wireshark is given the derived keys.

Known Wireshark 4.0 limitations, tolerated here and nowhere else: CERT encoding 15 (raw public
key, RFC 7670) is unknown to it and parsed as an X.509 certificate (BER warnings inside
"Certificate Data"); an ID_NULL with empty data trips a dissector assertion (so the NULL-auth run
only checks decryption).
"""

from __future__ import annotations

import ipaddress
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from ike_harness import A_ADDR, A_POLICY, B_ADDR, NFS_POLICY, A, B, Pair, btns_pad, make_config, null_pad

from rpclatch.ipsec.ike.config import ChildRequest
from rpclatch.ipsec.ike.crypto import IkeSuite
from rpclatch.ipsec.ike.dispatcher import IkeDispatcher
from rpclatch.ipsec.ike.export import ikev2_decryption_row
from rpclatch.ipsec.ike.negotiation import DEFAULT_IKE_SUITES
from rpclatch.ipsec.model import FiveTuple, Selector

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")


def _ip_udp(src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address, payload: bytes) -> bytes:
    udp = struct.pack(">HHHH", 500, 500, 8 + len(payload), 0) + payload
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src.packed, dst.packed) + udp


def _run(tmp_path: Path, suite: IkeSuite, *, null: bool) -> str:
    keys = (
        (None, None) if null else (ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate())
    )
    pad = null_pad() if null else btns_pad()
    p = Pair(
        IkeDispatcher(make_config(keys[0], pad, A_POLICY, ike_suites=(suite,)), A),
        IkeDispatcher(make_config(keys[1], pad, NFS_POLICY, ike_suites=(suite,)), B),
    )
    sa = p.initiate()
    p.pump()
    sa.create_child(ChildRequest(Selector.for_flow(FiveTuple.of(A_ADDR, 40001, B_ADDR, 2049, 6))), p.now)
    p.a.poll(sa, p.now)
    p.pump()
    sa.delete(p.now)
    p.a.poll(sa, p.now)
    p.pump()
    assert len(p.wire) == 8
    pcap = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 228)  # LINKTYPE_IPV4
    for i, (src, data) in enumerate(p.wire):
        pkt = _ip_udp(src[0], (B if src == A else A)[0], data)
        pcap += struct.pack("<IIII", 1000 + i, 0, len(pkt), len(pkt)) + pkt
    path = tmp_path / "ike.pcap"
    path.write_bytes(pcap)
    assert sa.keys is not None
    row = ikev2_decryption_row(sa.spi_i, sa.spi_r, sa.keys)
    out = subprocess.run(
        ["tshark", "-n", "-r", str(path), "-o", f"uat:ikev2_decryption_table:{row}", "-V"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout


def _malformed_outside_certificates(text: str) -> list[str]:
    bad, in_raw_key_cert = [], False
    for line in text.splitlines():
        if "Payload: " in line:
            in_raw_key_cert = False
        if "Certificate Encoding: RESERVED to IANA (15)" in line:
            in_raw_key_cert = True
        if "Malformed" in line and not in_raw_key_cert:
            bad.append(line)
    return bad


@pytest.mark.parametrize(
    "suite", [DEFAULT_IKE_SUITES[0], DEFAULT_IKE_SUITES[1]], ids=["gcm-x25519", "cbc-ecp256"]
)
def test_tshark_decodes_and_decrypts_a_raw_key_run(tmp_path: Path, suite: IkeSuite) -> None:
    text = _run(tmp_path, suite, null=False)
    assert "Dissector bug" not in text
    assert _malformed_outside_certificates(text) == []
    icvs = [line for line in text.splitlines() if "Integrity Checksum Data" in line]
    assert len(icvs) == 6 and all("[correct]" in line for line in icvs)
    for name in (
        "Identification - Initiator (35)",
        "Identification - Responder (36)",
        "Authentication (39)",
        "Traffic Selector - Initiator (44)",
        "Traffic Selector - Responder (45)",
        "Notify (41) - USE_TRANSPORT_MODE",
        "Delete (42)",
    ):
        assert f"Payload: {name}" in text, name


def test_tshark_decrypts_a_null_auth_run(tmp_path: Path) -> None:
    text = _run(tmp_path, DEFAULT_IKE_SUITES[0], null=True)
    icvs = [line for line in text.splitlines() if "Integrity Checksum Data" in line]
    assert len(icvs) == 6 and all("[correct]" in line for line in icvs)
    assert "Payload: Identification - Initiator (35)" in text
