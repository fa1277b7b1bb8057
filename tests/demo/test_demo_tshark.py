"""The demo's run directory is real evidence: tshark reads each scenario's pcapng with the key
files the demo wrote next to it (``esp_sa``, ``ikev2_decryption_table``), decodes every frame
without malformed or error marks or bad checksums, decrypts every ESP frame to TCP (and, with
channel_prot inside ESP, finds the payload only the keys reveal), decodes every UDP 500 datagram as
ISAKMP and decrypts every IKEv2 SK payload (RFC 7296 §3.14) with a correct ICV.

The whole demo runs once for the module (every scenario, approach 2); each test reads its files.

One Wireshark 4.0 limitation is tolerated, and only where it applies: it does not know CERT
encoding 15 (raw public key, RFC 7670), parses the key as an X.509 certificate and marks the
frame malformed with "BER Error" expert notes. A frame is excused only if it carries a CERT of
encoding 15 and every expert note it has is such a BER error.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from rpclatch.demo.model import RunResult, ScenarioResult
from rpclatch.demo.runner import run_demo
from rpclatch.demo.scenarios import MARKER, SCENARIOS
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.ipsec.ike.wire import ExchangeType, PayloadType

TSHARK = shutil.which("tshark")
pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")

#: Wireshark 4.0's certificate encoding for an RFC 7670 raw public key it cannot parse (module docstring)
RAW_PUBLIC_KEY_CERT = 15
#: the "error" severity of a Wireshark expert note, as tshark prints ``_ws.expert.severity``
PI_ERROR = 0x00800000


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, realm: ThrowawayRealm) -> RunResult:
    return run_demo(tmp_path_factory.mktemp("demo"), realm=realm)


def _result(run: RunResult, label: str) -> ScenarioResult:
    (res,) = [r for r in run.results if r.label == label]
    assert res.verdict.value == "PASS", [c for c in res.checks if not c.passed] or res.error
    return res


def _rows(path: Path | None) -> list[str]:
    return [r for r in path.read_text().splitlines() if r.strip()] if path is not None else []


def _opts(esp_sa: Path | None, ikev2: Path | None = None) -> list[str]:
    """The demo's key files (Wireshark UAT rows) as tshark options."""
    opts = []
    if esp_sa is not None:
        opts += ["-o", "esp.enable_encryption_decode:TRUE"]
    for row in _rows(esp_sa):
        opts += ["-o", f"uat:esp_sa:{row}"]
    for row in _rows(ikev2):
        opts += ["-o", f"uat:ikev2_decryption_table:{row}"]
    return opts


def _tshark(pcap: Path, esp_sa: Path | None, *args: str, ikev2: Path | None = None) -> str:
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
        [TSHARK, "-n", "-r", str(pcap), *_opts(esp_sa, ikev2), *checks, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "WARNING" not in out.stderr, out.stderr
    return out.stdout


def _count(pcap: Path, esp_sa: Path | None, flt: str) -> int:
    return len(_tshark(pcap, esp_sa, "-Y", flt, "-T", "fields", "-e", "frame.number").split())


@pytest.mark.parametrize("label", ["1", "3"])
def test_tshark_decodes_and_decrypts_the_demo_capture(demo_run: RunResult, label: str) -> None:
    res = _result(demo_run, label)
    pcap, esp_sa = Path(res.files["pcapng"]), Path(res.files["esp_sa"])
    assert esp_sa.read_text().strip(), "the demo exported no ESP keys"
    frames = _count(pcap, esp_sa, "frame")
    assert frames > 10
    esp = _count(pcap, esp_sa, "esp")
    assert esp > 5
    assert _count(pcap, esp_sa, "esp && tcp") == esp  # every ESP frame decrypts
    assert _count(pcap, None, "esp && tcp") == 0  # and only with the demo's keys
    payloads = _tshark(pcap, esp_sa, "-Y", "esp && tcp.len > 0", "-T", "fields", "-e", "tcp.payload")
    text = b"".join(bytes.fromhex(h.replace(":", "")) for h in payloads.split())
    if label == "1":
        # channel_prot: the RPC payload is protected by ESP alone, so the keys reveal it
        assert MARKER in text
    else:
        # BTNS MITM fallback: krb5p inside ESP, the keys reveal RPC but never the payload
        assert MARKER not in text and text


@dataclass(frozen=True, slots=True)
class Frame:
    """What tshark made of one frame (the fields :func:`_frames` asks for)."""

    number: int
    udp_ports: frozenset[int]
    icmp: bool
    exchange: int | None  # ISAKMP exchange type, None if tshark saw no ISAKMP
    response: bool
    payloads: tuple[int, ...]  # every payload type, the decrypted ones inside SK included
    decrypted: bool
    malformed: bool
    severities: tuple[int, ...]
    experts: tuple[str, ...]
    cert_encodings: frozenset[int]
    bad_checksum: bool

    @property
    def excused(self) -> bool:
        """The raw-key CERT quirk (module docstring) and nothing else."""
        return RAW_PUBLIC_KEY_CERT in self.cert_encodings and all(
            e.startswith("BER Error") for e in self.experts
        )


_FIELDS = (
    "frame.number",
    "udp.port",
    "icmp.type",
    "isakmp.exchangetype",
    "isakmp.flag_r",
    "isakmp.typepayload",
    "isakmp.enc.decrypted",
    "_ws.malformed",
    "_ws.expert.severity",
    "_ws.expert.message",
    "isakmp.cert.encoding",
    "tcp.checksum.status",
    "ip.checksum.status",
    "udp.checksum.status",
)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v, 0) for v in text.split("|") if v)


def _frames(pcap: Path, esp_sa: Path, ikev2: Path | None) -> list[Frame]:
    args = ["-T", "fields", "-E", "aggregator=|", "-E", "occurrence=a"]
    for f in _FIELDS:
        args += ["-e", f]
    out = []
    for line in _tshark(pcap, esp_sa, *args, ikev2=ikev2).splitlines():
        v = dict(zip(_FIELDS, line.split("\t"), strict=True))
        checksums = _ints(v["tcp.checksum.status"]) + _ints(v["ip.checksum.status"])
        checksums += _ints(v["udp.checksum.status"])
        exchanges = _ints(v["isakmp.exchangetype"])
        out.append(
            Frame(
                int(v["frame.number"]),
                frozenset(_ints(v["udp.port"])),
                bool(v["icmp.type"]),
                exchanges[0] if exchanges else None,
                v["isakmp.flag_r"].split("|")[0] in ("1", "True"),
                _ints(v["isakmp.typepayload"]),
                bool(v["isakmp.enc.decrypted"]),
                bool(v["_ws.malformed"]),
                _ints(v["_ws.expert.severity"]),
                tuple(m for m in v["_ws.expert.message"].split("|") if m),
                frozenset(_ints(v["isakmp.cert.encoding"])),
                0 in checksums,
            )
        )
    return out


@pytest.mark.parametrize("label", [s.label for s in SCENARIOS])
def test_tshark_decodes_every_ikev2_message_and_decrypts_it_with_the_demo_table(
    demo_run: RunResult, label: str
) -> None:
    res = _result(demo_run, label)
    pcap, esp_sa = Path(res.files["pcapng"]), Path(res.files["esp_sa"])
    table = Path(res.files["ikev2_decryption_table"])
    assert table.name == f"{pcap.stem}.ikev2_decryption_table" and table.parent == pcap.parent
    rows = _rows(table)
    assert len(set(rows)) == len(rows), "an IKE SA is listed twice"
    frames = _frames(pcap, esp_sa, table)

    # every scenario tries IKE first, and every UDP 500 datagram on the wire is ISAKMP (IKEv2)
    ike = [f for f in frames if 500 in f.udp_ports and not f.icmp]
    assert ike, "no IKE on the wire"
    assert [f.number for f in ike if f.exchange is None] == []
    assert all(f.exchange in set(ExchangeType) for f in ike), {f.exchange for f in ike}

    # no malformed frame, error note or bad checksum, but for the raw-key CERT quirk
    bad = [
        f for f in frames if f.bad_checksum or ((f.malformed or PI_ERROR in f.severities) and not f.excused)
    ]
    assert bad == [], bad

    # a scenario that negotiated IPsec has IKE_SA_INIT and IKE_AUTH, both answered, and its keys
    negotiated = bool(_rows(esp_sa))
    if negotiated:
        assert rows, "ESP SAs but no IKE SA keys"
        for exchange in (ExchangeType.IKE_SA_INIT, ExchangeType.IKE_AUTH):
            assert any(f.exchange == exchange and not f.response for f in ike), exchange.name
            assert any(f.exchange == exchange and f.response for f in ike), exchange.name

    # every SK payload decrypts with the table: its inner payloads are dissected; an IKE_AUTH
    # request always carries IDi and AUTH, which only ever travel inside SK
    sk = [f for f in ike if PayloadType.SK in f.payloads]
    assert [f.number for f in sk if not f.decrypted] == []
    for f in ike:
        if f.exchange == ExchangeType.IKE_AUTH and not f.response:
            assert {PayloadType.IDI, PayloadType.AUTH} <= set(f.payloads), f
    assert bool(sk) == bool(rows)
    if sk:
        # the ICV of each SK payload checks out under the table's integrity keys
        verbose = _tshark(pcap, esp_sa, "-Y", "isakmp", "-V", ikev2=table)
        icvs = [line for line in verbose.splitlines() if "Integrity Checksum Data" in line]
        assert len(icvs) == len(sk) and all(line.endswith("[correct]") for line in icvs), icvs
        # and without the table nothing decrypts
        assert not any(f.decrypted for f in _frames(pcap, esp_sa, None))
