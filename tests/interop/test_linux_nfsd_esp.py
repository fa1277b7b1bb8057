"""RPC to the Linux nfsd over manually keyed kernel ESP (RFC 4106 AES-GCM, transport mode).

Our client runs inside the guest, in netns ``client`` (198.51.100.1); every TCP packet between it
and the server (198.51.100.2) must go through the SAs: counters grow, and a capture on the
server-side veth shows ESP with our SPIs and no NFS in clear.
"""

from __future__ import annotations

import json

import pytest

from interop.capture import read_packets
from interop.world import ESP_CLIENT_ADDR, ESP_SERVER_ADDR, ESP_SPI_IN, ESP_SPI_OUT, NfsdWorld

pytestmark = [pytest.mark.uml, pytest.mark.root]


def test_null_over_esp_from_guest_client_namespace(nfsd_guest: NfsdWorld) -> None:
    if not nfsd_guest.config.esp:
        pytest.skip("guest booted without ESP")
    before = {netns: nfsd_guest.xfrm_counters(netns) for netns in (None, "client")}
    with nfsd_guest.capture("esp-null", iface="vs") as pcap:
        res = nfsd_guest.run(
            nfsd_guest.python_argv("-m", "interop.probe", "null", ESP_SERVER_ADDR, "--auth", "sys"),
            netns="client",
            env=nfsd_guest.guest_env(None),
            timeout=120,
        )
    assert res.ok, res
    out = json.loads(res.stdout)
    assert out["ok"] and out["local"][0] == ESP_CLIENT_ADDR

    after = {netns: nfsd_guest.xfrm_counters(netns) for netns in (None, "client")}
    for netns in (None, "client"):
        for spi in (ESP_SPI_IN, ESP_SPI_OUT):
            grew = after[netns][spi].packets - before[netns][spi].packets
            assert grew >= 3, f"SA {spi:#x} in {netns or 'root'} netns: {grew} packets"

    packets = read_packets(pcap)
    assert packets, "capture on vs is empty"
    esp = [p for p in packets if p.is_esp]
    spis = {int(p.esp_spi, 16) for p in esp if p.esp_spi}
    assert {ESP_SPI_IN, ESP_SPI_OUT} <= spis
    clear = [p for p in packets if p.is_nfs_tcp]
    assert clear == [], f"NFS in clear on the ESP path: {clear[:3]}"
    assert all(
        p.is_esp for p in packets if {p.src, p.dst} == {ESP_CLIENT_ADDR, ESP_SERVER_ADDR} and p.proto == "6"
    )


def test_kernel_client_over_esp_from_client_namespace(nfsd_guest: NfsdWorld) -> None:
    # the baseline for our client over ESP: the guest kernel's NFS client mounting from netns
    # "client" (its RPC transport lives in that namespace, so every packet goes through the SAs)
    if not nfsd_guest.config.esp:
        pytest.skip("guest booted without ESP")
    mnt = "/tmp/mnt-esp-kernel"
    before = nfsd_guest.xfrm_counters()
    nfsd_guest.run(["mkdir", "-p", mnt], check=True)
    with nfsd_guest.capture("esp-kernel", iface="vs") as pcap:
        # nsenter, not "ip netns exec": that one unshares the mount namespace and the mount is lost
        nfsd_guest.run(
            [
                "nsenter",
                "--net=/run/netns/client",
                "mount",
                "-t",
                "nfs4",
                "-o",
                "sec=sys,vers=4.1",
                f"{ESP_SERVER_ADDR}:/",
                mnt,
            ],
            check=True,
            timeout=90,
        )
        nfsd_guest.run(["mountpoint", "-q", mnt], check=True)
        try:
            nfsd_guest.run(f"head -c 2000000 /dev/urandom >{mnt}/kernel-esp.bin && sync", check=True)
            via_nfs = nfsd_guest.run(["sha256sum", f"{mnt}/kernel-esp.bin"], check=True).stdout.split()[0]
        finally:
            nfsd_guest.run(["umount", mnt], check=True, timeout=60)
    assert via_nfs == nfsd_guest.server_sha256("/kernel-esp.bin")
    after = nfsd_guest.xfrm_counters()
    assert after[ESP_SPI_IN].bytes - before[ESP_SPI_IN].bytes >= 2_000_000
    packets = read_packets(pcap)
    assert any(p.is_esp for p in packets)
    assert [p for p in packets if p.is_nfs_tcp] == []


def _xfrm_stat(guest: NfsdWorld) -> dict[str, int]:
    text = guest.run(["cat", "/proc/net/xfrm_stat"], check=True).stdout
    return {name: int(value) for name, value in (line.split() for line in text.splitlines())}


def _null_with_socket_policy(guest: NfsdWorld, *policy: str) -> dict[str, object]:
    res = guest.run(
        guest.python_argv("-m", "interop.probe", "null", ESP_SERVER_ADDR, "--connect-timeout", "3", *policy),
        netns="client",
        env=guest.guest_env(None),
        timeout=120,
    )
    out: dict[str, object] = json.loads(res.stdout)
    assert res.ok == bool(out["ok"]), res
    return out


def test_server_inbound_policy_drops_a_client_that_bypasses_ipsec(nfsd_guest: NfsdWorld) -> None:
    # a per-socket BYPASS policy on the client overrides its global PROTECT: the SYN leaves in clear,
    # and the server's inbound SPD entry (tmpl esp) refuses it -- unprotected NFS never gets through
    if not nfsd_guest.config.esp:
        pytest.skip("guest booted without ESP")
    before = _xfrm_stat(nfsd_guest)
    with nfsd_guest.capture("esp-bypass", iface="vs") as pcap:
        out = _null_with_socket_policy(nfsd_guest, "--socket-policy", "bypass")
    assert out["ok"] is False and out["error"] == "TimeoutError", out
    assert _xfrm_stat(nfsd_guest)["XfrmInTmplMismatch"] > before["XfrmInTmplMismatch"]
    packets = read_packets(pcap)
    syns = [p for p in packets if p.src == ESP_CLIENT_ADDR and p.dport == "2049" and p.proto == "6"]
    assert syns, packets
    assert not any(p.src == ESP_SERVER_ADDR and p.proto == "6" for p in packets)  # no SYN-ACK


def test_per_socket_esp_policy_selects_the_sa_by_reqid(nfsd_guest: NfsdWorld) -> None:
    if not nfsd_guest.config.esp:
        pytest.skip("guest booted without ESP")
    before = nfsd_guest.xfrm_counters("client")
    ok = _null_with_socket_policy(
        nfsd_guest, "--socket-policy", "esp", "--policy-src", ESP_CLIENT_ADDR, "--reqid", "1"
    )
    assert ok["ok"] is True and ok["socket_policy"] == "esp", ok
    assert nfsd_guest.xfrm_counters("client")[ESP_SPI_IN].packets > before[ESP_SPI_IN].packets
    # no SA has reqid 7 and no key manager answers the ACQUIRE: the socket policy, not the global
    # one, decides, so the connect fails at once and nothing is sent
    before = nfsd_guest.xfrm_counters("client")
    refused = _null_with_socket_policy(
        nfsd_guest, "--socket-policy", "esp", "--policy-src", ESP_CLIENT_ADDR, "--reqid", "7"
    )
    assert refused["ok"] is False and refused["error"] == "BlockingIOError", refused
    assert nfsd_guest.xfrm_counters("client")[ESP_SPI_IN].packets == before[ESP_SPI_IN].packets
