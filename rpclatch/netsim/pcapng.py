"""pcapng export of the simulated wire (draft-ietf-opsawg-pcapng) and tshark key export (ESP, IKEv2).

One section, one interface per simulated segment, LINKTYPE_ETHERNET (1; frames from
``Hub.captured()``, with gratuitous ARP for address claims) or LINKTYPE_RAW (101: raw IPv4/IPv6),
microsecond timestamps from the virtual clock. Packets may carry an ``opt_comment`` (e.g. "dropped by
attacker"). ESP keys are exported as rows of Wireshark's ``esp_sa`` UAT so that
``tshark -o esp.enable_encryption_decode:TRUE -o "uat:esp_sa:<row>"`` decrypts the capture; the
IKE SAs' keys as rows of its ``ikev2_decryption_table`` UAT, so that it decrypts the SK payloads
of IKE_AUTH, CREATE_CHILD_SA and INFORMATIONAL (RFC 7296 §3.14). A capture's key files are written
together by :func:`write_capture_keys`.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rpclatch.netsim.esp import EspKeys

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
_SHB = 0x0A0D0D0A
_IDB = 0x00000001
_EPB = 0x00000006
OPT_ENDOFOPT = 0
OPT_COMMENT = 1
IF_NAME = 2
SHB_USERAPPL = 4

ESP_ENC_AES_GCM_16 = "AES-GCM with 16 octet ICV [RFC4106]"


def _pad4(data: bytes) -> bytes:
    return data + b"\x00" * ((-len(data)) % 4)


def _options(opts: Iterable[tuple[int, bytes]]) -> bytes:
    out = b""
    for code, value in opts:
        out += struct.pack("<HH", code, len(value)) + _pad4(value)
    if out:
        out += struct.pack("<HH", OPT_ENDOFOPT, 0)
    return out


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


@dataclass(frozen=True, slots=True)
class CapturedPacket:
    time: float
    interface: int
    data: bytes
    comment: str = ""


@dataclass(frozen=True, slots=True)
class EspSaExport:
    """One direction of an ESP SA as Wireshark needs it to decrypt."""

    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    keys: EspKeys

    def uat_row(self) -> str:
        """A row of the ``esp_sa`` UAT (Wireshark 4.0 fields: protocol, src, dst, SPI, encryption,
        key, authentication, authentication key; later versions add SN fields and default them)."""
        proto = "IPv4" if self.src.version == 4 else "IPv6"
        return (
            f'"{proto}","{self.src}","{self.dst}","0x{self.keys.spi:08x}",'
            f'"{ESP_ENC_AES_GCM_16}","0x{self.keys.key_material.hex()}","NULL",""'
        )


def encode_pcapng(
    packets: Iterable[CapturedPacket],
    interfaces: list[str],
    application: str,
    linktype: int = LINKTYPE_ETHERNET,
) -> bytes:
    """Serialize ``packets`` (time in seconds of virtual time) into a pcapng byte string."""
    shb_body = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + _options([(SHB_USERAPPL, application.encode())])
    out = [_block(_SHB, shb_body)]
    for name in interfaces:
        idb_body = struct.pack("<HHI", linktype, 0, 0) + _options([(IF_NAME, name.encode())])
        out.append(_block(_IDB, idb_body))
    for pkt in packets:
        ts = round(pkt.time * 1_000_000)
        opts = _options([(OPT_COMMENT, pkt.comment.encode())] if pkt.comment else [])
        body = struct.pack("<IIIII", pkt.interface, ts >> 32, ts & 0xFFFFFFFF, len(pkt.data), len(pkt.data))
        out.append(_block(_EPB, body + _pad4(pkt.data) + opts))
    return b"".join(out)


def write_pcapng(
    path: Path | str,
    packets: Iterable[CapturedPacket],
    interfaces: list[str],
    application: str = "rpclatch.netsim",
    linktype: int = LINKTYPE_ETHERNET,
) -> None:
    Path(path).write_bytes(encode_pcapng(packets, interfaces, application, linktype))


def write_esp_sa_uat(path: Path | str, sas: Iterable[EspSaExport]) -> None:
    """Write an ``esp_sa`` UAT file (copy into a Wireshark profile, or pass rows via ``-o uat:``)."""
    Path(path).write_text("".join(sa.uat_row() + "\n" for sa in sas))


def tshark_esp_options(sas: Iterable[EspSaExport]) -> list[str]:
    """Command-line options for tshark that enable ESP decryption with these SAs."""
    opts = ["-o", "esp.enable_encryption_decode:TRUE"]
    for sa in sas:
        opts += ["-o", f"uat:esp_sa:{sa.uat_row()}"]
    return opts


def write_ikev2_decryption_table(path: Path | str, rows: Iterable[str]) -> None:
    """Write an ``ikev2_decryption_table`` UAT file, one row per IKE SA (rows from
    :meth:`rpclatch.netsim.ikev2.SimIkeEndpoint.decryption_rows`), so Wireshark decrypts the
    capture's IKEv2 SK payloads (RFC 7296 §3.14)."""
    Path(path).write_text("".join(row + "\n" for row in rows))


class IkeKeySource(Protocol):
    """Whatever keyed IKE SAs and gives them as ``ikev2_decryption_table`` rows: a host's simulated
    IKE daemon (``stack.ike``), or a bare :class:`rpclatch.netsim.ikev2.SimIkeEndpoint`."""

    def decryption_rows(self) -> list[str]: ...


def ikev2_decryption_rows(sources: Iterable[IkeKeySource]) -> list[str]:
    """The rows of every source, each once and in first-seen order: both ends of an IKE SA know its
    keys, so two hosts' daemons give the same row for it."""
    return list(dict.fromkeys(row for source in sources for row in source.decryption_rows()))


def write_capture_keys(
    esp_sa_path: Path | str,
    ikev2_path: Path | str,
    sas: Iterable[EspSaExport],
    ike: Iterable[IkeKeySource],
) -> None:
    """Write the two key files that go beside a capture: ``esp_sa`` (every ESP SA in ``sas``) and
    ``ikev2_decryption_table`` (every IKE SA the daemons in ``ike`` keyed, each once)."""
    write_esp_sa_uat(esp_sa_path, sas)
    write_ikev2_decryption_table(ikev2_path, ikev2_decryption_rows(ike))


def tshark_ikev2_options(rows: Iterable[str]) -> list[str]:
    """Command-line options for tshark that decrypt IKEv2 with these IKE SAs' keys."""
    opts: list[str] = []
    for row in rows:
        opts += ["-o", f"uat:ikev2_decryption_table:{row}"]
    return opts
