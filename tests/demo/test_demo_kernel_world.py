"""``rpclatch demo --world uml --json``: the demo's scenarios on kernel ESP in one UML boot.

One run of the command (it boots its own guest, runs every kernel-world scenario, judges them
from the captures decrypted with the kernels' keys, the XFRM state, the key managers' latches and
the RPC results); then each scenario's row and every one of its checks is asserted here. Skips
with the reason where UML or root is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.uml, pytest.mark.root]


def _rpclatch() -> list[str]:
    script = Path(sys.executable).parent / "rpclatch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "rpclatch.cli"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from interop.choose import choose_world

    choice = choose_world("uml")
    if choice.missing:
        pytest.skip("the UML world cannot run here: " + "; ".join(choice.missing))
    out = tmp_path_factory.mktemp("demo-uml")
    proc = subprocess.run(
        [*_rpclatch(), "demo", "--world", "uml", "--json", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.stdout.strip(), proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    result["rc"] = proc.returncode
    result["stderr"] = proc.stderr[-3000:]
    return result


def _scenario(run: dict[str, Any], number: int, esp: bool = True) -> dict[str, Any]:
    rows = [s for s in run["scenarios"] if s["number"] == number]
    assert len(rows) == 1, [s["label"] for s in run["scenarios"]]
    row: dict[str, Any] = rows[0]
    failed = [c for c in row["checks"] if not c["passed"]]
    assert row["error"] is None and not failed and row["outcome"] == "PASS", json.dumps(
        {"error": row["error"], "failed": failed, "reason": row["reason"]}, indent=1
    )
    for kind in ("pcapng", "svg", "html", *(("esp_sa",) if esp else ())):
        assert Path(row["files"][kind]).stat().st_size > 0, kind
    assert Path(row["files"]["esp_sa"]).exists()
    return row


def _tshark_esp(pcap: Path, esp_sa: Path) -> tuple[int, int]:
    """(ESP frames, of which tshark decrypted to TCP) with the run's ``esp_sa`` key file."""
    opts = ["-o", "esp.enable_encryption_decode:TRUE"]
    for row in esp_sa.read_text().splitlines():
        if row.strip():
            opts += ["-o", f"uat:esp_sa:{row}"]
    argv = ["tshark", "-n", "-r", str(pcap), *opts, "-Y", "esp", "-T", "fields", "-e", "frame.number"]
    argv += ["-e", "tcp.srcport", "-E", "separator=/t"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout
    rows = [line.split("\t") for line in out.splitlines() if line.strip()]
    return len(rows), sum(1 for r in rows if len(r) > 1 and r[1])


@pytest.mark.parametrize("number", [1, 3, 4, 5])
def test_tshark_decrypts_every_esp_frame_with_the_exported_keys(run: dict[str, Any], number: int) -> None:
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    row = next(s for s in run["scenarios"] if s["number"] == number)
    total, decrypted = _tshark_esp(Path(row["files"]["pcapng"]), Path(row["files"]["esp_sa"]))
    assert total > 0 and decrypted == total, (total, decrypted)


def test_the_run_passes_as_a_whole(run: dict[str, Any]) -> None:
    assert run["world"] == "uml"
    assert run["rc"] == 0 and run["passed"] is True, run["stderr"]
    assert [s["number"] for s in run["scenarios"]] == [1, 2, 3, 4, 5]


def test_1_latched_at_both_ends_bound_channel_prot(run: dict[str, Any]) -> None:
    row = _scenario(run, 1)
    assert (row["latched"], row["binding"], row["gss_service"]) == ("yes/yes", "bound", "channel_prot")
    names = {c["name"] for c in row["checks"]}
    assert {
        "kernel ESP SAs at both ends",
        "every ESP frame decrypted with the kernel's keys",
        "no cleartext TCP on port 2049",
        "BIND_CHANNEL inside ESP, answered OK",
    } <= names
    assert row["security"][0]["bind_outcome"] == "BOUND"


def test_2_no_key_manager_on_the_server_falls_back_to_krb5p(run: dict[str, Any]) -> None:
    row = _scenario(run, 2, esp=False)
    assert (row["latched"], row["gss_service"]) == ("no", "krb5p")
    record = row["security"][0]
    assert record["latch_outcome"] == "NOT_LATCHED" and "IKE_UNREACHABLE" in record["protection_error"]
    assert "fallback decided" in row["reason"]  # the time it took is reported


def test_5_policy_change_mid_flow_pinned_never_cleartext(run: dict[str, Any]) -> None:
    row = _scenario(run, 5)
    assert (row["latched"], row["gss_service"]) == ("pinned/pinned", "channel_prot")
    names = {c["name"] for c in row["checks"]}
    assert {"never cleartext on port 2049", "channel_prot still accepted after the client change"} <= names


def test_4_rogue_on_the_servers_address_breaks_the_latch_then_relatch_and_rebind(run: dict[str, Any]) -> None:
    """The simulated scenario 4's outcome (RFC 5660 §2.3, §5.5 (b)): BROKEN, reset, nothing
    readable by the rogue, reconnect, re-latch to the server's key, re-bind."""
    row = _scenario(run, 4)
    assert (row["latched"], row["binding"], row["gss_service"]) == ("broken->yes", "bound", "channel_prot")
    assert row["attacker_plaintext_bytes"] == 0
    names = {c["name"] for c in row["checks"]}
    assert {
        "client latch went BROKEN",
        "connection reset (RFC 5660 §5.5 default)",
        "the rogue's SA accepted only under a DISCARD of the broken 5-tuple",
        "the rogue's IKE reached the client's key manager",
        "the rogue could read no frame of the flow",
        "reconnected on a new 5-tuple, re-latched to the server's key and re-bound",
    } <= names


def test_3_btns_man_in_the_middle_binding_fails_krb5p_nothing_read(run: dict[str, Any]) -> None:
    row = _scenario(run, 3)
    assert (row["binding"], row["gss_service"]) == ("failed", "krb5p")
    assert row["attacker_bytes"] > 0 and row["attacker_plaintext_bytes"] == 0
    record = row["security"][-1]
    assert record["bind_outcome"] == "MISMATCH" and record["gss_service"] == "krb5p"
    names = {c["name"] for c in row["checks"]}
    assert {
        "both ends latched (to the attacker)",
        "the attacker read no payload (its keys, its relay)",
    } <= names
