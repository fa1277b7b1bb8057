"""Scenario 6: a BTNS man in the middle edits the BIND_CHANNEL exchange.

Whatever the relay edits -- the unauthenticated prefix, a forged v2 refusal, a forged HASH_NOTSUPP,
replays to the server -- the client must end with MISMATCH (not the quiet UNSUPPORTED), warn, not
keep the context, fall back to krb5p, and the relay must read no payload. Plus the relay's parts
(record splitting, each edit) and the demo server's RFC 5403 §9 (a) cap.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rpclatch.cli import main
from rpclatch.demo import bindrelay
from rpclatch.demo.bindrelay import (
    REWRITTEN_PREFIX,
    UNKNOWN_HASH_OID,
    ZERO_MIC,
    BindAttack,
    BindRelayEditor,
    gss_call,
)
from rpclatch.demo.testbed import DEMO_MAX_REQUESTS_PER_CONTEXT, RecordSplitter, build_testbed
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.server import GssServerAuth
from rpclatch.gss.wire import (
    SHA256,
    BindChanStatus,
    BindChanVerfArgs,
    BindChanVerfRes,
    GssCred,
    GssProc,
    Service,
)
from rpclatch.ipsec.engine import Approach
from rpclatch.rpc.messages import (
    AcceptedReply,
    AuthFlavor,
    AuthStat,
    CallMessage,
    DeniedReply,
    OpaqueAuth,
    decode_message,
)
from rpclatch.rpc.record import encode_record

CHECKS = {
    "binding failed as MISMATCH, not UNSUPPORTED",
    "failure reported loudly",
    "context destroyed, never used for channel_prot",
    "fell back to krb5p (both segments)",
    "attacker learned nothing",
    "relay acted",
}


@pytest.mark.parametrize("approach", [Approach.ULP, Approach.POLICY], ids=["approach1", "approach2"])
def test_scenario_6_every_edit_still_ends_in_mismatch(
    tmp_path: Path, realm: ThrowawayRealm, approach: Approach
) -> None:
    from rpclatch.demo.runner import run_demo

    result = run_demo(tmp_path, [6], realm=realm, approach=approach)
    assert [r.label for r in result.results] == ["6a", "6b", "6c", "6d"]
    for r in result.results:
        assert r.verdict.value == "PASS", [c for c in r.checks if not c.passed] or r.error
        assert {c.name for c in r.checks} >= CHECKS
        assert r.binding == "FAILED (mismatch)" and r.gss_service == "krb5p"
        assert r.attacker_bytes > 0 and r.attacker_plaintext == 0
        first = r.security[0]  # the attacked connection's connection.security
        assert first["bind_outcome"] == "MISMATCH" and first["warnings"] and first["latched"]
    replay = result.results[3]
    assert "server signed at most one answer to the copies (no MIC oracle)" in {c.name for c in replay.checks}


def test_scenario_6_json_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path), "--json", "--scenario", "6"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] is True
    assert [(s["number"], s["variant"], s["label"]) for s in data["scenarios"]] == [
        (6, v, f"6{v}") for v in "abcd"
    ]
    for s in data["scenarios"]:
        assert Path(s["files"]["pcapng"]).name.startswith(f"6{s['variant']}-bind-relay-")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["label"] for s in summary["scenarios"]] == ["6a", "6b", "6c", "6d"]


def test_scenario_6_checks_see_a_relay_that_does_not_edit(
    tmp_path: Path, realm: ThrowawayRealm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verdicts come from the wire: a relay that only copies (scenario 3's) must fail the
    'relay acted' and 'relay ...' checks of every variant."""
    from rpclatch.demo.runner import run_demo

    monkeypatch.setattr(BindRelayEditor, "from_client", lambda self, record: ([record], []))
    result = run_demo(tmp_path, [6], realm=realm)
    for r in result.results:
        failed = {c.name for c in r.checks if not c.passed}
        assert "relay acted" in failed and any(name.startswith("relay ") for name in failed - {"relay acted"})


# -- the relay's parts -----------------------------------------------------------------------------


def bind_call(prefix: bytes = b"rpclatch-ipsec-latch-v1", xid: int = 7) -> bytes:
    cred = GssCred(2, GssProc.RPCSEC_GSS_BIND_CHANNEL, 5, Service.NONE, b"h" * 16)
    verf = BindChanVerfArgs(prefix, SHA256.oid, b"m" * 28)
    return CallMessage(
        xid,
        100003,
        4,
        0,
        OpaqueAuth(AuthFlavor.RPCSEC_GSS, cred.encode()),
        OpaqueAuth(AuthFlavor.RPCSEC_GSS, verf.encode()),
    ).encode()


def init_call(version: int, xid: int = 3) -> bytes:
    cred = GssCred(version, GssProc.RPCSEC_GSS_INIT, 0, Service.PRIVACY)
    return CallMessage(
        xid, 100003, 4, 0, OpaqueAuth(AuthFlavor.RPCSEC_GSS, cred.encode()), args=b"\0\0\0\x04tokn"
    ).encode()


def test_record_splitter_joins_fragments_and_bounds_a_record() -> None:
    sp = RecordSplitter(limit=64)
    msg = bytes(range(40))
    wire = encode_record(msg, max_fragment=16) + encode_record(b"x" * 8)
    out = [r for i in range(0, len(wire), 5) for r in sp.feed(wire[i : i + 5])]
    assert out == [msg, b"x" * 8]
    with pytest.raises(ValueError, match="record over 64 bytes"):
        sp.feed((0x80000000 | 65).to_bytes(4, "big"))
    sp2 = RecordSplitter(limit=64)
    with pytest.raises(ValueError):  # fragments add up past the limit
        sp2.feed(encode_record(b"y" * 100, max_fragment=40))


def test_prefix_edit_changes_only_the_prefix() -> None:
    actions: list[str] = []
    ed = BindRelayEditor(BindAttack.PREFIX, on_action=actions.append)
    onward, back = ed.from_client(init_call(2))
    assert onward == [init_call(2)] and back == [] and not ed.acted
    original = bind_call()
    onward, back = ed.from_client(original)
    assert back == [] and len(onward) == 1 and ed.target_xid == 7 and actions
    before, after = decode_message(original), decode_message(onward[0])
    assert isinstance(before, CallMessage) and isinstance(after, CallMessage)
    v0, v1 = BindChanVerfArgs.decode(before.verf.body), BindChanVerfArgs.decode(after.verf.body)
    assert v1.chan_bind_prefix == REWRITTEN_PREFIX
    assert (v1.chan_bind_oid_hash, v1.chan_mic) == (v0.chan_bind_oid_hash, v0.chan_mic)
    assert after.encode_header_through_cred() == before.encode_header_through_cred()
    assert ed.from_client(original) == ([original], [])  # acts once


def test_v2_refusal_is_forged_for_v2_init_only() -> None:
    ed = BindRelayEditor(BindAttack.V2_REFUSED)
    assert ed.from_client(init_call(1)) == ([init_call(1)], [])
    onward, back = ed.from_client(init_call(2, xid=9))
    assert onward == []
    (reply,) = back
    msg = decode_message(reply)
    assert isinstance(msg, DeniedReply) and msg.xid == 9 and msg.auth_stat is AuthStat.AUTH_BADCRED


def test_hash_notsupp_is_forged_with_an_unknown_oid_and_a_zero_mic() -> None:
    ed = BindRelayEditor(BindAttack.HASH_NOTSUPP)
    onward, (reply,) = ed.from_client(bind_call(xid=11))
    assert onward == []
    msg = decode_message(reply)
    assert isinstance(msg, AcceptedReply) and msg.xid == 11 and msg.verf.flavor == AuthFlavor.RPCSEC_GSS
    res = BindChanVerfRes.decode(msg.verf.body)
    assert res.res.status is BindChanStatus.RGSS2_BIND_CHAN_HASH_NOTSUPP
    assert res.res.oid_list == (UNKNOWN_HASH_OID,) and res.mic == ZERO_MIC == bytes(len(ZERO_MIC))


def test_replay_sends_copies_and_keeps_the_extra_answers() -> None:
    ed = BindRelayEditor(BindAttack.REPLAY, replays=5)
    onward, back = ed.from_client(bind_call(xid=13))
    assert back == [] and len(onward) == 6 and len(set(onward)) == 1
    decoded = gss_call(onward[0])
    assert decoded is not None and decoded[1].gss_proc is GssProc.RPCSEC_GSS_BIND_CHANNEL
    answer = AcceptedReply(13).encode()
    other = AcceptedReply(14).encode()
    assert ed.from_server(answer) == ([answer], [])  # the first answer goes to the client
    assert ed.from_server(answer) == ([], [])  # the rest the relay keeps
    assert ed.from_server(other) == ([other], [])
    assert len(ed.kept) == 2


def test_unknown_oid_is_not_a_hash_anyone_implements() -> None:
    from rpclatch.gss.wire import HASHES_BY_OID

    assert UNKNOWN_HASH_OID not in HASHES_BY_OID
    assert bindrelay.REWRITTEN_PREFIX != b"rpclatch-ipsec-latch-v1"


# -- RFC 5403 §9 (a) on the demo testbed ----------------------------------------------------------


def test_demo_server_caps_requests_per_context(realm: ThrowawayRealm) -> None:
    """The demo server runs with the cap on by default; pushed against (a cap of 3, krb5p calls
    with no IKE on the server, so every call carries a MIC), the 4th DATA call of the context is
    refused with CTXPROBLEM on the wire, and the client refreshes the context (a new INIT,
    RFC 2203 §5.3.3.3) and resends: the call succeeds."""
    from rpclatch.connect.policy import ConnectPolicy
    from rpclatch.demo.scenarios import echo
    from rpclatch.netsim.ike import IkeMode

    default = build_testbed(realm, seed=2)
    (flavor,) = [f for f in default.endpoint.dispatcher.flavors.values() if isinstance(f, GssServerAuth)]
    assert flavor.max_requests_per_context == DEMO_MAX_REQUESTS_PER_CONTEXT == 1024

    bed = build_testbed(realm, seed=2, server_ike=IkeMode.ABSENT, max_requests_per_context=3)
    pc = bed.connection(ConnectPolicy(ike_timeout=2.0))
    pc.connect()
    assert [echo(pc) for _ in range(4)] == [True] * 4
    view = bed.wire_view()
    data = [c for c in view.calls if c.gss_proc is GssProc.RPCSEC_GSS_DATA and c.sender == "client"]
    stats = [r.stat for c in data for r in view.replies_to(c.xid, "server")]
    assert stats == ["SUCCESS"] * 3 + ["RPCSEC_GSS_CTXPROBLEM", "SUCCESS"]
    inits = [c for c in view.calls if c.gss_proc is GssProc.RPCSEC_GSS_INIT and c.sender == "client"]
    assert len(inits) == 2 and data[3].time < inits[1].time < data[4].time
