"""IKEv2 interop with real peers and kernel ESP carrying real traffic (issue #12).

One User-Mode Linux guest (:class:`interop.ike_guest.IkeGuest`) is booted for the whole module;
each test runs one scenario of :mod:`interop.ike_peers` in it: two fresh network namespaces, one
IKE speaker in each (strongSwan over vici, libreswan with whack, or rpclatch's IKEv2 core behind
its UDP shell on the XFRM backend), a transport-mode CHILD_SA for TCP to port 5001, TCP echo
through it with the ``ip -s xfrm state`` counters advancing, echo to port 5002 in clear, DELETE
by the initiator, every daemon stopped by PID, the namespaces deleted. On the host, tshark must
decode every IKE message of the capture without a malformed mark or an error-level expert info,
and decrypt every ESP packet (keys from the kernel's ``ip xfrm state``) to TCP port 5001.

The first four prove the harness with the daemons alone (strongSwan <-> strongSwan Ed25519,
libreswan <-> libreswan NULL, strongSwan <-> libreswan ECDSA P-256 both ways); the others put
rpclatch on one side. The last three negotiate ESP ChaCha20-Poly1305 (RFC 7634) with strongSwan
both ways and with libreswan: the Wireshark 4.0 of Debian 12 cannot decrypt that ESP, so the
test opens every packet itself with the kernel's keys (:func:`check_chacha_esp`).
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from interop.ike_guest import IkeGuest  # noqa: E402
from interop.ike_peers import SCENARIOS  # noqa: E402

pytestmark = [pytest.mark.uml, pytest.mark.root]

PORT = 5001
#: tshark's error severity (malformed packets carry one)
EXPERT_ERROR = "8388608"


@pytest.fixture(scope="module")
def ike_guest() -> Iterator[IkeGuest]:
    missing = IkeGuest.missing()
    if missing:
        pytest.skip("IKE interop guest cannot run here: " + "; ".join(missing))
    base = os.environ.get("RPCLATCH_INTEROP_RUN_DIR")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(base) / "ike" if base else REPO_ROOT / "runs" / "interop-ike" / f"{stamp}-{os.getpid()}"
    with IkeGuest(run_dir=run_dir) as guest:
        yield guest


def run_scenario(g: IkeGuest, name: str) -> dict[str, Any]:
    out = g.run_dir / name
    out.mkdir(parents=True, exist_ok=True)
    r = g.run(
        g.python_argv("-m", "interop.ike_peers", name, g.guest_path(out)),
        env=g.guest_env(None),
        timeout=180,
    )
    assert r.ok, f"scenario {name} crashed (rc {r.returncode}):\n{r.stderr[-4000:]}"
    res: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    (out / "result.json").write_text(json.dumps(res, indent=1))
    return res


def tshark_fields(pcap: Path, esp_rows: list[str], ike_rows: list[str], *fields: str) -> list[list[str]]:
    opts = ["-o", "esp.enable_encryption_decode:TRUE"]
    for row in esp_rows:
        opts += ["-o", f"uat:esp_sa:{row}"]
    for row in ike_rows:
        opts += ["-o", f"uat:ikev2_decryption_table:{row}"]
    argv = ["tshark", "-n", "-r", str(pcap), *opts, "-T", "fields", "-E", "separator=\t"]
    for f in fields:
        argv += ["-e", f]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout
    return [line.split("\t") for line in out.splitlines() if line.strip()]


def check_wire(
    pcap: Path, res: dict[str, Any], *, min_ike: int = 6, esp_keys: dict[int, bytes] | None = None
) -> dict[str, int]:
    """tshark: every IKE message decodes cleanly, every ESP packet decrypts to TCP 5001 with the
    kernel's keys (``esp_keys``: ChaCha20-Poly1305 SAs, opened by :func:`check_chacha_esp`), no
    cleartext TCP 5001; where rpclatch exported its IKE SA keys, every IKE_AUTH message and a
    DELETE decrypt too. Returns the counts."""
    rows = tshark_fields(
        pcap,
        res["esp_sa_rows"],
        [],
        "isakmp.exchangetype",
        "esp.spi",
        "tcp.srcport",
        "tcp.dstport",
        "_ws.expert.severity",
        "frame.protocols",
    )
    ike = [r for r in rows if r[0]]
    bad = [r for r in rows if EXPERT_ERROR in r[4].split(",") or "malformed" in r[5]]
    esp = [r for r in rows if r[1]]
    decrypted = [r for r in esp if str(PORT) in (r[2], r[3])]
    clear_5001 = [r for r in rows if not r[1] and str(PORT) in (r[2], r[3])]
    assert len(ike) >= min_ike, f"only {len(ike)} IKE messages in {pcap}"
    assert not bad, f"malformed or error-marked frames in {pcap}: {bad[:5]}"
    assert esp, f"no ESP in {pcap}"
    if esp_keys is not None:
        assert check_chacha_esp(pcap, esp_keys) == len(esp)
    else:
        assert len(decrypted) == len(esp), (
            f"{len(esp) - len(decrypted)} ESP packets did not decrypt to tcp/{PORT}"
        )
    assert not clear_5001, f"cleartext tcp/{PORT} in {pcap}"
    ike_rows = [
        row
        for state in (res["state_i"], res["state_r"])
        if isinstance(state, dict)
        for row in state.get("ike_decryption_rows", [])
    ]
    if ike_rows:
        # a dead peer gets no DELETE: only the unanswered liveness checks
        check_ike_decryption(pcap, ike_rows, expect_delete=not res["dead"])
    return {"ike": len(ike), "esp": len(esp)}


def check_ike_decryption(pcap: Path, ike_rows: list[str], *, expect_delete: bool = True) -> None:
    """With rpclatch's exported IKE SA keys, tshark decrypts both IKE_AUTH messages (the AUTH
    payload, or for NULL authentication the ID_NULL identity, is seen) and a DELETE.

    Wireshark 4.0 does not know ID_NULL (RFC 7619 §2.2, type 13, "Future use") and its dissector
    trips an assertion on the empty identification data (libreswan's ID_NULL payloads alike), which
    ends the dissection of that message with an error mark: that, and only that, is tolerated."""
    rows = tshark_fields(
        pcap,
        [],
        ike_rows,
        "isakmp.exchangetype",
        "isakmp.auth.method",
        "isakmp.delete.protoid",
        "isakmp.id.type",
        "_ws.expert.severity",
    )
    auth = [r for r in rows if r[0] == "35"]
    assert len(auth) >= 2, f"IKE_AUTH request and response expected in {pcap}: {auth}"
    id_null = [r for r in auth if "13" in r[3].split(",")]
    assert all(r[1] or r in id_null for r in auth), f"IKE_AUTH not decrypted with the exported keys: {auth}"
    if expect_delete:
        assert any(r[2] for r in rows if r[0] == "37"), f"no INFORMATIONAL DELETE decrypted in {pcap}"
    bad = [r for r in rows if EXPERT_ERROR in r[4].split(",") and r not in id_null]
    assert not bad, f"error-marked frames after IKE decryption in {pcap}: {bad[:5]}"


def check_scenario(g: IkeGuest, name: str) -> dict[str, Any]:
    """Run ``name`` and assert everything a scenario must show; returns its result."""
    res = run_scenario(g, name)
    print(json.dumps({k: v for k, v in res.items() if k not in ("xfrm_i", "esp_sa_rows")}))
    assert res["error"] is None, (
        f"{name}: {res['error']} (steps done: {res['ok_steps']}); logs in {g.run_dir / name}"
    )
    # the CHILD_SA is in both kernels: one ESP SA per direction, AES-GCM (or the scenario's
    # ChaCha20-Poly1305), transport mode
    chacha = SCENARIOS[name].esp == "chacha20poly1305"
    assert res["sas_i"] == 2 and res["sas_r"] == 2, (res["sas_i"], res["sas_r"])
    aead = "rfc7539esp(chacha20,poly1305)" if chacha else "rfc4106(gcm(aes))"
    assert res["xfrm_i"].count(aead) == 2 and "mode transport" in res["xfrm_i"], res["xfrm_i"]
    # TCP echo went through ESP (every SA direction of the initiator counted packets), the port
    # outside the selectors in clear
    assert res["echo_protected"] and res["echo_clear"]
    before, after = res["counters_before"], res["counters_after"]
    assert len(after) == 2 and all(after[spi][1] > before.get(spi, [0, 0])[1] for spi in after), (
        before,
        after,
    )
    # the DELETE (by the initiator; by the responder in the lifecycle scenarios) removed the
    # other side's SAs; everything stopped by PID, nothing left
    assert res["sas_r_after_delete"] == 0
    assert all(res["stopped"].values()), res["stopped"]
    assert res["leftovers"] == []
    assert "\n0 packets dropped by kernel" in res["capture_log"], res["capture_log"]
    res["wire"] = check_wire(
        g.run_dir / name / "ike.pcap", res, esp_keys=_xfrm_keys(res["xfrm_i"]) if chacha else None
    )
    return res


def _xfrm_keys(xfrm: str) -> dict[int, bytes]:
    """SPI -> key material (32-octet key || 4-octet salt) of the ChaCha20-Poly1305 SAs in ``ip
    xfrm state`` output."""
    keys = {}
    for block in re.split(r"\n(?=src )", xfrm):
        spi = re.search(r"proto esp spi (0x[0-9a-f]+)", block)
        aead = re.search(r"aead rfc7539esp\(chacha20,poly1305\) 0x([0-9a-f]+)", block)
        if spi and aead:
            keys[int(spi.group(1), 16)] = bytes.fromhex(aead.group(1))
    return keys


def _esp_packets(pcap: Path) -> list[bytes]:
    """The ESP headers and payloads (IPv4) of ``pcap``, via a classic-pcap copy made by tshark."""
    with tempfile.TemporaryDirectory() as tmp:
        flat = Path(tmp) / "esp.pcap"
        subprocess.run(
            ["tshark", "-n", "-r", str(pcap), "-Y", "esp", "-F", "pcap", "-w", str(flat)],
            capture_output=True,
            timeout=120,
            check=True,
        )
        data = flat.read_bytes()
    linktype = struct.unpack_from("<I", data, 20)[0]
    link_header = {1: 14, 113: 16, 276: 20}[linktype]  # Ethernet, Linux cooked v1, v2
    out, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack_from("<I", data, off + 8)[0]
        frame = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        ip = frame[link_header:]
        out.append(ip[(ip[0] & 0x0F) * 4 :])
    return out


def check_chacha_esp(pcap: Path, keys: dict[int, bytes]) -> int:
    """Wireshark 4.0 cannot decrypt ESP ChaCha20-Poly1305, so every ESP packet is opened here
    with OpenSSL's ChaCha20-Poly1305 (``cryptography``) and the kernel's keys, as RFC 7634 §2-3
    lays it out: nonce = salt || 8-octet IV, AAD = SPI || sequence number, 16-octet tag; the
    plaintext must be TCP to or from port 5001 (next header 6). Returns the count."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    packets = _esp_packets(pcap)
    assert packets, f"no ESP in {pcap}"
    for esp in packets:
        spi = int.from_bytes(esp[:4], "big")
        material = keys[spi]
        nonce = material[32:36] + esp[8:16]
        plain = ChaCha20Poly1305(material[:32]).decrypt(nonce, esp[16:], esp[:8])
        assert plain[-1] == 6, f"next header {plain[-1]} in SPI {spi:#x}"
        sport, dport = struct.unpack_from("!HH", plain, 0)
        assert PORT in (sport, dport), (sport, dport)
    return len(packets)


# ---- the harness with the daemons alone -------------------------------------------------------


def test_strongswan_to_strongswan_ed25519(ike_guest: IkeGuest) -> None:
    res = check_scenario(ike_guest, "ss-ss")
    (child,) = [c for sa in res["state_i"] for ike in sa.values() for c in ike["child-sas"].values()]
    assert child["state"] == "INSTALLED" and child["mode"] == "TRANSPORT"


def test_libreswan_to_libreswan_null_auth(ike_guest: IkeGuest) -> None:
    res = check_scenario(ike_guest, "ls-ls")
    assert "ESP/Transport" in res["state_i"] or "ESP" in res["state_i"], res["state_i"]


def test_strongswan_to_libreswan_ecdsa(ike_guest: IkeGuest) -> None:
    check_scenario(ike_guest, "ss-ls")


def test_libreswan_to_strongswan_ecdsa(ike_guest: IkeGuest) -> None:
    res = check_scenario(ike_guest, "ls-ss")
    (child,) = [c for sa in res["state_r"] for ike in sa.values() for c in ike["child-sas"].values()]
    assert child["state"] == "INSTALLED"


# ---- rpclatch against the daemons --------------------------------------------------------------


def _rpclatch_side(res: dict[str, Any], role: str) -> dict[str, Any]:
    state: dict[str, Any] = res["state_i" if role == "initiator" else "state_r"]
    assert state["datapath_errors"] == 0
    assert state["events"][:2] == ["IkeSaEstablished", "ChildSaEstablished"], state["events"]
    assert len(state["installed"]) == 1
    return state


def test_rpclatch_initiator_to_strongswan_responder(ike_guest: IkeGuest) -> None:
    res = check_scenario(ike_guest, "rl-ss")
    state = _rpclatch_side(res, "initiator")
    assert state["installed"][0]["peer"] == "RawPublicKeyPeer"
    # strongSwan narrowed nothing away: the CHILD_SA is the exact 5-tuple rpclatch asked for
    (child,) = [c for sa in res["state_r"] for ike in sa.values() for c in ike["child-sas"].values()]
    assert child["state"] == "INSTALLED" and child["remote-ts"] == [f"{res['addr_i']}/32[tcp/40001]"]


def test_rpclatch_initiator_to_strongswan_responder_ecdsa(ike_guest: IkeGuest) -> None:
    res = check_scenario(ike_guest, "rl-ss-ecdsa")
    _rpclatch_side(res, "initiator")


def test_strongswan_initiator_to_rpclatch_responder(ike_guest: IkeGuest) -> None:
    res = check_scenario(ike_guest, "ss-rl")
    state = _rpclatch_side(res, "responder")
    assert state["installed"][0]["peer"] == "RawPublicKeyPeer"


def test_rpclatch_initiator_to_libreswan_null_auth(ike_guest: IkeGuest) -> None:
    res = check_scenario(ike_guest, "rl-ls")
    state = _rpclatch_side(res, "initiator")
    assert state["installed"][0]["peer"] == "NullAuthPeer"


def test_libreswan_initiator_to_rpclatch_responder_null_auth(ike_guest: IkeGuest) -> None:
    res = check_scenario(ike_guest, "ls-rl")
    state = _rpclatch_side(res, "responder")
    assert state["installed"][0]["peer"] == "NullAuthPeer"


def test_rpclatch_initiator_to_libreswan_responder_ecdsa(ike_guest: IkeGuest) -> None:
    res = check_scenario(ike_guest, "rl-ls-ecdsa")
    assert _rpclatch_side(res, "initiator")["installed"][0]["peer"] == "RawPublicKeyPeer"


def test_libreswan_initiator_to_rpclatch_responder_ecdsa(ike_guest: IkeGuest) -> None:
    # libreswan signs ECDSA P-256 with SHA-512 as initiator, the strongest hash both announced
    res = check_scenario(ike_guest, "ls-rl-ecdsa")
    assert _rpclatch_side(res, "responder")["installed"][0]["peer"] == "RawPublicKeyPeer"


# ---- rekey and DELETE from the responder ------------------------------------------------------


def _moved(counters: list[dict[str, list[int]]]) -> bool:
    """Both SA directions of the initiator counted more packets between the two snapshots."""
    before, after = counters
    return len(after) == 2 and all(after[spi][1] > before.get(spi, [0, 0])[1] for spi in after)


def check_lifecycle(res: dict[str, Any]) -> None:
    life = res["lifecycle"]
    # CHILD_SA rekey: a new SA pair in both kernels (no SPI in common with the old one), the old
    # one gone, and the echo runs through the new one
    assert life["child_rekeyed"], life
    assert not set(life["spis_after_child_rekey"]) & set(life["spis_before"])
    assert set(life["spis_r_after_child_rekey"]) == set(life["spis_after_child_rekey"])
    assert life["echo_after_child_rekey"] and _moved(life["counters_after_child_rekey"])
    # IKE SA rekey: the daemon has only the new IKE SA, which kept the CHILD_SA (RFC 7296 §2.18),
    # and the kernel SAs are untouched and still carry the echo
    assert life["ike_rekeyed"], life["ike_after_rekey"]
    assert [ike["state"] for ike in life["ike_after_rekey"]] == ["ESTABLISHED"]
    assert life["children_after_ike_rekey"] == 1
    assert life["spis_after_ike_rekey"] == life["spis_after_child_rekey"]
    assert life["echo_after_ike_rekey"] and _moved(life["counters_after_ike_rekey"])
    # the responder's DELETE removed the initiator's SAs too
    assert life["sas_i_after_responder_delete"] == 0


def test_rpclatch_rekeys_child_and_ike_sa_with_strongswan_which_then_deletes(ike_guest: IkeGuest) -> None:
    res = check_scenario(ike_guest, "rl-ss-life")
    check_lifecycle(res)
    events = res["state_i"]["events"]
    assert events.count("ChildSaEstablished") == 2 and "IkeSaRekeyed" in events, events
    assert len(res["state_i"]["installed"]) == 1 and res["state_i"]["datapath_errors"] == 0


def test_rpclatch_rekeys_child_and_ike_sa_with_libreswan_null_auth_which_then_deletes(
    ike_guest: IkeGuest,
) -> None:
    res = check_scenario(ike_guest, "rl-ls-life")
    check_lifecycle(res)
    events = res["state_i"]["events"]
    assert events.count("ChildSaEstablished") == 2 and "IkeSaRekeyed" in events, events
    assert len(res["state_i"]["installed"]) == 1 and res["state_i"]["datapath_errors"] == 0


def test_strongswan_rekeys_child_and_ike_sa_with_rpclatch_which_then_deletes(ike_guest: IkeGuest) -> None:
    res = check_scenario(ike_guest, "ss-rl-life")
    check_lifecycle(res)
    events = res["state_r"]["events"]
    assert events.count("ChildSaEstablished") == 2 and "IkeSaRekeyed" in events, events
    assert len(res["state_r"]["installed"]) == 1 and res["state_r"]["datapath_errors"] == 0


# ---- refusals and a dead peer -----------------------------------------------------------------


def check_refusal(g: IkeGuest, name: str) -> dict[str, Any]:
    """The initiator's key is not the one the responder was given: the negotiation fails, no SA
    reaches either kernel, and the capture still decodes cleanly."""
    res = run_scenario(g, name)
    print(json.dumps({k: v for k, v in res.items() if k not in ("xfrm_i", "esp_sa_rows")}))
    assert res["error"] is None, f"{name}: {res['error']} (steps done: {res['ok_steps']})"
    ref = res["refusal"]
    assert ref["initiate_error"], ref
    assert ref["sas_i"] == 0 and ref["sas_r"] == 0, ref
    assert all(res["stopped"].values()) and res["leftovers"] == []
    rows = tshark_fields(
        g.run_dir / name / "ike.pcap",
        [],
        [],
        "isakmp.exchangetype",
        "isakmp.notify.msgtype",
        "_ws.expert.severity",
    )
    assert any(r[0] == "35" for r in rows), rows
    assert not [r for r in rows if EXPERT_ERROR in r[2].split(",")], rows
    return res


def test_strongswan_refuses_an_rpclatch_initiator_with_another_key(ike_guest: IkeGuest) -> None:
    res = check_refusal(ike_guest, "rl-ss-badkey")
    events = res["refusal"]["initiator_events"]
    assert res["refusal"]["initiator_installed"] == 0
    # strongSwan's IKE_AUTH response carries AUTHENTICATION_FAILED, which rpclatch reports
    assert len(events) == 1 and "IkeSaFailed" in events[0] and "notify=24" in events[0], events


def test_rpclatch_refuses_a_strongswan_initiator_with_another_key(ike_guest: IkeGuest) -> None:
    res = check_refusal(ike_guest, "ss-rl-badkey")
    events = res["refusal"]["responder_events"]
    assert res["refusal"]["responder_installed"] == 0
    # rpclatch checked strongSwan's signature against the key its PAD names and answered
    # AUTHENTICATION_FAILED (inside the encrypted IKE_AUTH response); strongSwan gave up
    assert len(events) == 1 and "IkeSaFailed" in events[0] and "AUTHENTICATION_FAILED: 24" in events[0], (
        events
    )


def test_rpclatch_liveness_check_removes_the_sas_of_a_dead_strongswan(ike_guest: IkeGuest) -> None:
    res = check_scenario(ike_guest, "rl-ss-dead")
    dead = res["dead"]
    # charon was killed (no DELETE); the empty INFORMATIONAL went unanswered through its
    # retransmissions, the IKE SA failed with TIMEOUT, and its CHILD_SA left the kernel
    assert "IkeSaFailed" in dead["failure"] and "TIMEOUT" in dead["failure"], dead
    assert dead["sas_i_after"] == 0 and dead["installed_after"] == 0, dead


# ---- ESP ChaCha20-Poly1305 (RFC 7634) -----------------------------------------------------------


def test_rpclatch_initiator_to_strongswan_responder_esp_chacha20_poly1305(ike_guest: IkeGuest) -> None:
    res = check_scenario(ike_guest, "rl-ss-chacha")
    state = _rpclatch_side(res, "initiator")
    assert state["installed"][0]["suite"] == "chacha20-poly1305-256", state["installed"]
    (child,) = [c for sa in res["state_r"] for ike in sa.values() for c in ike["child-sas"].values()]
    assert child["encr-alg"] == "CHACHA20_POLY1305", child


def test_strongswan_initiator_to_rpclatch_responder_esp_chacha20_poly1305(ike_guest: IkeGuest) -> None:
    res = check_scenario(ike_guest, "ss-rl-chacha")
    state = _rpclatch_side(res, "responder")
    assert state["installed"][0]["suite"] == "chacha20-poly1305-256", state["installed"]


def test_libreswan_initiator_to_rpclatch_responder_esp_chacha20_poly1305(ike_guest: IkeGuest) -> None:
    res = check_scenario(ike_guest, "ls-rl-chacha")
    state = _rpclatch_side(res, "responder")
    assert state["installed"][0]["suite"] == "chacha20-poly1305-256", state["installed"]
