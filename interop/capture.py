"""Reading the harness's packet captures with tshark (on the host; the guest writes pcapng files).

Used by interop tests to assert on what went over the wire, e.g. that every packet between the
guest's ``client`` namespace and the server was ESP and no NFS (port 2049) packet was in clear.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DEFAULT_FIELDS = ("frame.number", "ip.src", "ip.dst", "ip.proto", "tcp.srcport", "tcp.dstport", "esp.spi")


class CaptureError(Exception):
    """tshark is missing or could not read the capture."""


@dataclass(frozen=True)
class Packet:
    """The fields of one packet that the tests look at (empty string where absent)."""

    number: int
    src: str
    dst: str
    proto: str
    sport: str
    dport: str
    esp_spi: str

    @property
    def is_esp(self) -> bool:
        return self.proto == "50"

    @property
    def is_nfs_tcp(self) -> bool:
        return "2049" in (self.sport, self.dport)


def read_packets(pcap: Path, display_filter: str = "") -> list[Packet]:
    """Packets of ``pcap`` matching the Wireshark ``display_filter`` (all when empty)."""
    tshark = shutil.which("tshark")
    if tshark is None:
        raise CaptureError("tshark not installed (apt-get install tshark)")
    argv = [tshark, "-n", "-r", str(pcap), "-T", "fields", "-E", "separator=\t", "-E", "occurrence=f"]
    for f in DEFAULT_FIELDS:
        argv += ["-e", f]
    if display_filter:
        argv += ["-Y", display_filter]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise CaptureError(f"tshark -r {pcap}: {proc.stderr.strip()[-500:]}")
    packets = []
    for line in proc.stdout.splitlines():
        cols = (line.split("\t") + [""] * len(DEFAULT_FIELDS))[: len(DEFAULT_FIELDS)]
        if not cols[0].isdigit():
            continue
        packets.append(Packet(int(cols[0]), *cols[1:]))
    return packets


def read_fields(
    pcap: Path, fields: tuple[str, ...], display_filter: str = "", *, all_occurrences: bool = False
) -> list[tuple[str, ...]]:
    """Rows of the given Wireshark ``fields``: the first occurrence of each ("" where absent), or
    with ``all_occurrences`` every occurrence joined by commas (e.g. all opcodes of a COMPOUND)."""
    tshark = shutil.which("tshark")
    if tshark is None:
        raise CaptureError("tshark not installed (apt-get install tshark)")
    occurrence = "a" if all_occurrences else "f"
    argv = [
        tshark,
        "-n",
        "-r",
        str(pcap),
        "-T",
        "fields",
        "-E",
        "separator=\t",
        "-E",
        f"occurrence={occurrence}",
        "-E",
        "aggregator=,",
    ]
    for f in fields:
        argv += ["-e", f]
    if display_filter:
        argv += ["-Y", display_filter]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise CaptureError(f"tshark -r {pcap}: {proc.stderr.strip()[-500:]}")
    width = len(fields)
    return [tuple((line.split("\t") + [""] * width)[:width]) for line in proc.stdout.splitlines()]
