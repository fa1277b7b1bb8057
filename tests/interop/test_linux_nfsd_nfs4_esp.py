"""rpclatch's NFSv4 client inside the guest, over manually keyed kernel ESP, against the Linux nfsd.

The client runs in the guest's netns ``client`` (198.51.100.1); the kernel protects every TCP
packet to the server (198.51.100.2) with the rfc4106(gcm(aes)) SAs. The data must round-trip, the SA
counters must account for it, and a capture on the server side must show no NFS in clear.
"""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest

from interop.capture import read_packets
from interop.probe import payload
from interop.world import ESP_SERVER_ADDR, ESP_SPI_IN, ESP_SPI_OUT, NfsdWorld

pytestmark = [pytest.mark.uml, pytest.mark.root]

SIZE = 1 << 20


@pytest.mark.parametrize(("sec", "minor"), [("sys", 1), ("krb5i", 1), ("krb5p", 0)])
def test_round_trip_over_esp(nfsd_guest: NfsdWorld, sec: str, minor: int) -> None:
    if not nfsd_guest.config.esp:
        pytest.skip("guest booted without ESP")
    base = "/" if sec == "sys" else "/krb5only/"
    path = f"{base}esp-{sec}-{uuid.uuid4().hex[:8]}.bin"
    before = nfsd_guest.xfrm_counters()
    with nfsd_guest.capture(f"esp-nfs-{sec}", iface="vs") as pcap:
        res = nfsd_guest.run(
            nfsd_guest.python_argv(
                "-m",
                "interop.probe",
                "nfs",
                ESP_SERVER_ADDR,
                "--sec",
                sec,
                "--minor",
                str(minor),
                "--target",
                nfsd_guest.service_name,
                "--write",
                path,
                "--size",
                str(SIZE),
                "--seed",
                "3",
                "--read",
                path,
            ),
            netns="client",
            env=nfsd_guest.guest_env("alice", "client"),
            timeout=300,
        )
    assert res.ok, res
    out = json.loads(res.stdout)
    want = hashlib.sha256(payload(SIZE, 3)).hexdigest()
    assert out["write_sha256"] == out["read_sha256"] == want
    assert out["flavor"] == sec
    assert nfsd_guest.server_sha256(path) == want
    nfsd_guest.run(["rm", "-f", nfsd_guest.server_path(path)], check=True)

    after = nfsd_guest.xfrm_counters()
    inbound = after[ESP_SPI_IN].bytes - before[ESP_SPI_IN].bytes
    outbound = after[ESP_SPI_OUT].bytes - before[ESP_SPI_OUT].bytes
    assert inbound >= SIZE and outbound >= SIZE, (inbound, outbound)  # written, then read back
    packets = read_packets(pcap)
    assert any(p.is_esp for p in packets)
    assert [p for p in packets if p.is_nfs_tcp] == []


def test_cli_over_esp_follows_wrongsec_and_refuses_weaker_flavor(nfsd_guest: NfsdWorld) -> None:
    if not nfsd_guest.config.esp:
        pytest.skip("guest booted without ESP")
    env = nfsd_guest.guest_env("bob", "client")

    def cli(*args: str) -> tuple[int, str, str]:
        res = nfsd_guest.run(
            nfsd_guest.python_argv(
                "-m",
                "rpclatch.cli",
                "nfs",
                "cat",
                f"{ESP_SERVER_ADDR}:/krb5ponly/file.txt",
                "--gss-target",
                nfsd_guest.service_name,
                *args,
            ),
            netns="client",
            env=env,
            timeout=180,
        )
        return res.returncode, res.stdout, res.stderr

    before = nfsd_guest.xfrm_counters()
    rc, out, err = cli("--sec", "auto")
    assert (rc, out) == (0, "secret-data /krb5ponly\n"), err
    assert nfsd_guest.xfrm_counters()[ESP_SPI_IN].packets > before[ESP_SPI_IN].packets
    rc, out, err = cli("--sec", "krb5i")
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "krb5p" in lines[0] and "Traceback" not in err, err
