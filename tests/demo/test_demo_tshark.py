"""The demo's run directory is real evidence: tshark reads each scenario's pcapng with the
esp_sa file the demo wrote next to it, decodes every frame without malformed or error marks or
bad checksums, decrypts every ESP frame to TCP, and (with channel_prot inside ESP) finds the
payload only the keys reveal."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from rpclatch.demo.runner import run_demo
from rpclatch.demo.scenarios import MARKER
from rpclatch.gss.realm import ThrowawayRealm

TSHARK = shutil.which("tshark")
pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")


def _opts(esp_sa: Path | None) -> list[str]:
    """The demo's esp_sa file (Wireshark UAT rows) as tshark options."""
    if esp_sa is None:
        return []
    rows = [r for r in esp_sa.read_text().splitlines() if r.strip()]
    opts = ["-o", "esp.enable_encryption_decode:TRUE"]
    for row in rows:
        opts += ["-o", f"uat:esp_sa:{row}"]
    return opts


def _tshark(pcap: Path, esp_sa: Path | None, *args: str) -> str:
    assert TSHARK is not None
    checks = [
        "-o",
        "tcp.check_checksum:TRUE",
        "-o",
        "ip.check_checksum:TRUE",
        "-o",
        "udp.check_checksum:TRUE",
    ]
    out = subprocess.run(
        [TSHARK, "-n", "-r", str(pcap), *_opts(esp_sa), *checks, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "WARNING" not in out.stderr, out.stderr
    return out.stdout


def _count(pcap: Path, esp_sa: Path | None, flt: str) -> int:
    return len(_tshark(pcap, esp_sa, "-Y", flt, "-T", "fields", "-e", "frame.number").split())


@pytest.mark.parametrize("number", [1, 3])
def test_tshark_decodes_and_decrypts_the_demo_capture(
    tmp_path: Path, realm: ThrowawayRealm, number: int
) -> None:
    result = run_demo(tmp_path, [number], realm=realm)
    (res,) = result.results
    assert res.verdict.value == "PASS"
    pcap, esp_sa = Path(res.files["pcapng"]), Path(res.files["esp_sa"])
    assert esp_sa.read_text().strip(), "the demo exported no ESP keys"
    frames = _count(pcap, esp_sa, "frame")
    assert frames > 10
    bad = _tshark(
        pcap,
        esp_sa,
        "-Y",
        "_ws.malformed || _ws.expert.severity == error "
        "|| tcp.checksum.status == 0 || ip.checksum.status == 0 || udp.checksum.status == 0",
        "-T",
        "fields",
        "-e",
        "frame.number",
        "-e",
        "_ws.col.info",
    )
    assert bad.strip() == ""
    esp = _count(pcap, esp_sa, "esp")
    assert esp > 5
    assert _count(pcap, esp_sa, "esp && tcp") == esp  # every ESP frame decrypts
    assert _count(pcap, None, "esp && tcp") == 0  # and only with the demo's keys
    payloads = _tshark(pcap, esp_sa, "-Y", "esp && tcp.len > 0", "-T", "fields", "-e", "tcp.payload")
    text = b"".join(bytes.fromhex(h.replace(":", "")) for h in payloads.split())
    if number == 1:
        # channel_prot: the RPC payload is protected by ESP alone, so the keys reveal it
        assert MARKER in text
    else:
        # BTNS MITM fallback: krb5p inside ESP, the keys reveal RPC but never the payload
        assert MARKER not in text and text
