"""The host side of the kernel-world demo without a kernel world: reading dumpcap's pcapng, the
keys of ``ip xfrm state``, the observer's view of a capture, and the one-line errors."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

from rpclatch.demo.kernel import (
    Evidence,
    kernel_sas,
    normalise_tcp_checksum,
    read_pcapng,
    sas_between,
)
from rpclatch.netsim.esp import EspKeys, esp_seal
from rpclatch.netsim.ip import PROTO_ESP, PROTO_TCP, IpPacket
from rpclatch.netsim.pcapng import CapturedPacket, write_pcapng
from rpclatch.netsim.tcp import Flags, TcpSegment

C, S = ipaddress.ip_address("203.0.113.11"), ipaddress.ip_address("203.0.113.12")
C_MAC, S_MAC = "02:00:00:00:71:0b", "02:00:00:00:71:0c"

XFRM_STATE = """src 203.0.113.12 dst 203.0.113.11
\tproto esp spi 0xc1a2b3c4 reqid 1 mode transport
\treplay-window 32
\taead rfc4106(gcm(aes)) 0x000102030405060708090a0b0c0d0e0f10111213 128
\tsel src 203.0.113.12/32 dst 203.0.113.11/32 proto tcp sport 2049 dport 40000
src 203.0.113.11 dst 203.0.113.12
\tproto esp spi 0x00001234 reqid 1 mode transport
\taead rfc4106(gcm(aes)) 0xffeeddccbbaa99887766554433221100ffeeddcc 128
src 198.51.100.1 dst 198.51.100.2
\tproto esp spi 0x00001001 reqid 0 mode transport
\taead rfc4106(gcm(aes)) 0x00112233445566778899aabbccddeeff00112233 128
"""


def test_kernel_sas_reads_spi_addresses_and_key_material() -> None:
    sas = kernel_sas(XFRM_STATE)
    assert [(str(sa.src), str(sa.dst), sa.keys.spi) for sa in sas] == [
        ("203.0.113.12", "203.0.113.11", 0xC1A2B3C4),
        ("203.0.113.11", "203.0.113.12", 0x1234),
        ("198.51.100.1", "198.51.100.2", 0x1001),
    ]
    assert sas[0].keys.key == bytes(range(16)) and sas[0].keys.salt == bytes(range(16, 20))
    assert [sa.keys.spi for sa in sas_between(sas, str(C), str(S))] == [0xC1A2B3C4, 0x1234]


def _frame(src_mac: str, dst_mac: str, ip: bytes) -> bytes:
    return (
        bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) + b"\x08\x00" + ip
    )


def _tcp(payload: bytes, sport: int = 40000, dport: int = 2049) -> bytes:
    return TcpSegment(sport, dport, 1, 1, Flags.ACK | Flags.PSH, 65535, payload).encode(C, S)


def test_read_pcapng_gives_ipv4_frames_with_macs_and_times(tmp_path: Path) -> None:
    ip = IpPacket(C, S, PROTO_TCP, _tcp(b"hello")).encode()
    arp = bytes(6) + bytes(6) + b"\x08\x06" + bytes(28)
    pcap = tmp_path / "x.pcapng"
    packets = [
        CapturedPacket(1.5, 0, _frame(C_MAC, S_MAC, ip)),
        CapturedPacket(1.6, 0, arp),
    ]
    write_pcapng(pcap, packets, ["rlbr0"])
    frames = read_pcapng(pcap)
    assert len(frames) == 1
    assert (frames[0].src_mac, frames[0].dst_mac, frames[0].ip) == (C_MAC, S_MAC, ip)
    assert frames[0].time == pytest.approx(1.5)


def test_a_partial_tcp_checksum_is_completed_so_cleartext_is_not_missed() -> None:
    ip = bytearray(IpPacket(C, S, PROTO_TCP, _tcp(b"secret")).encode())
    ip[20 + 16 : 20 + 18] = b"\x12\x34"  # what a veth leaves for the hardware to finish
    with pytest.raises(Exception):  # noqa: B017 -- the strict decoder refuses it as captured
        TcpSegment.decode(bytes(ip[20:]), C, S)
    fixed = normalise_tcp_checksum(bytes(ip))
    assert TcpSegment.decode(fixed[20:], C, S).payload == b"secret"


def test_evidence_decrypts_esp_with_the_kernel_keys_and_counts_cleartext(tmp_path: Path) -> None:
    from rpclatch.demo.scenarios import MARKER

    sa = kernel_sas(XFRM_STATE)[1]  # 203.0.113.11 -> .12, spi 0x1234
    keys: EspKeys = sa.keys
    inner = _tcp(MARKER)
    esp = esp_seal(keys, 1, PROTO_TCP, inner)
    pcap = tmp_path / "e.pcapng"
    write_pcapng(
        pcap,
        [
            CapturedPacket(1.0, 0, _frame(C_MAC, S_MAC, IpPacket(C, S, PROTO_ESP, esp).encode())),
            CapturedPacket(2.0, 0, _frame(C_MAC, S_MAC, IpPacket(C, S, PROTO_TCP, _tcp(b"clear")).encode())),
        ],
        ["rlbr0"],
    )
    macs = {C_MAC: "client", S_MAC: "server"}
    ev = Evidence(pcap, macs, [sa])
    assert ev.esp_frames() == (1, 1)
    assert ev.decrypted_marker() == 1 and ev.frames_with_marker() == 0
    assert ev.clear_tcp_frames() == 1
    assert Evidence(pcap, macs, []).esp_frames() == (1, 0)  # no keys, nothing decrypted


def test_world_netns_without_esp_in_the_host_kernel_is_one_line(tmp_path: Path) -> None:
    if str(Path(__file__).resolve().parents[2]) not in sys.path:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from interop.choose import choose_world

    if not choose_world("netns").missing:
        pytest.skip("this host kernel can run the netns world")
    script = Path(sys.executable).parent / "rpclatch"
    proc = subprocess.run(
        [str(script), "demo", "--world", "netns", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rpclatch: error: --world netns cannot run here: "), lines
    assert "Traceback" not in proc.stderr


def test_a_scenario_the_kernel_world_lacks_is_one_line(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "rpclatch"
    proc = subprocess.run(
        [str(script), "demo", "--world", "uml", "--scenario", "6", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def _s1_raw(sport: int = 40000) -> dict[str, object]:
    """What the guest would record of scenario 1 where everything claims success."""
    flow = f"203.0.113.11:{sport}<->203.0.113.12:2049/6"
    latch = {"latches": [{"flow": flow, "latch": 1, "peer": "aa" * 8, "state": "ESTABLISHED"}]}
    record = {
        "five_tuple": f"tcp 203.0.113.11:{sport} -> 203.0.113.12:2049",
        "peer": "raw key sha256:" + "bb" * 8,
        "latch_outcome": "LATCHED_BINDING_CONF",
        "bind_outcome": "BOUND",
        "bound": True,
        "gss_service": "channel_prot",
        "reason": "latched and bound",
    }
    return {
        "connect": {"record": record, "latch_seconds": 0.5},
        "echo": {"results": [{"ok": True, "service": "channel_prot"}] * 4},
        "during": {
            "t": 0.0,
            "xfrm": {
                "client": {"state": XFRM_STATE, "policy": ""},
                "server": {"state": XFRM_STATE, "policy": ""},
            },
            "keyd": {"client": latch, "server": latch},
        },
    }


PARTIES = {
    "client": ["rl-client", str(C), C_MAC, "rlv-client"],
    "server": ["rl-server", str(S), S_MAC, "rlv-server"],
}


def test_scenario_1_fails_on_cleartext_in_the_capture_whatever_the_client_claims(tmp_path: Path) -> None:
    from rpclatch.demo.kernel import Scenario, check_ipsec_available
    from rpclatch.demo.scenarios import MARKER

    pcap = tmp_path / "1.pcapng"
    clear = IpPacket(C, S, PROTO_TCP, _tcp(MARKER)).encode()
    write_pcapng(pcap, [CapturedPacket(1.0, 0, _frame(C_MAC, S_MAC, clear))], ["rlbr0"])
    o = check_ipsec_available(Scenario(1, _s1_raw(), PARTIES, pcap))
    failed = {c.name for c in o.checks if not c.passed}
    assert {
        "no cleartext TCP on port 2049",
        "payload never visible on the wire",
        "every ESP frame decrypted with the kernel's keys",
        "DATA calls are channel_prot on the wire",
    } <= failed
    assert (
        "security record says latched + bound + channel_prot" not in failed
    )  # the claim alone is not enough


def test_scenario_1_esp_under_the_kernel_keys_passes_the_wire_checks(tmp_path: Path) -> None:
    from rpclatch.demo.kernel import Scenario, check_ipsec_available
    from rpclatch.demo.scenarios import MARKER

    sa = kernel_sas(XFRM_STATE)[1]
    esp = esp_seal(sa.keys, 1, PROTO_TCP, _tcp(MARKER))
    pcap = tmp_path / "1.pcapng"
    write_pcapng(
        pcap,
        [CapturedPacket(1.0, 0, _frame(C_MAC, S_MAC, IpPacket(C, S, PROTO_ESP, esp).encode()))],
        ["rlbr0"],
    )
    o = check_ipsec_available(Scenario(1, _s1_raw(), PARTIES, pcap))
    passed = {c.name for c in o.checks if c.passed}
    assert {
        "no cleartext TCP on port 2049",
        "payload never visible on the wire",
        "every ESP frame decrypted with the kernel's keys",
        "kernel ESP SAs at both ends",
        "client key manager: latch ESTABLISHED",
    } <= passed
