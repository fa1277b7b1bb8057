"""BIND_CHANNEL failures -> the policy's BindOutcome, and a relay that tries to make them quiet.

RFC 5403 §2: binding exists to expose a man in the middle. The table
:data:`rpclatch.connect.gss.BIND_OUTCOMES` maps the GSS layer's typed reasons to MISMATCH (warning,
context destroyed) or UNSUPPORTED (quiet); no error text is matched. On the
simulated network a BTNS man in the middle (both latches end at it) edits the RPCSEC_GSS exchange
with the demo's :class:`rpclatch.demo.bindrelay.BindRelayEditor`, trying to turn the loud failure
into a quiet "the server cannot bind": it must stay MISMATCH, with the warning
naming the cause, and ``require_binding`` must refuse naming it.
"""

from __future__ import annotations

import logging

import pytest

from rpclatch.connect import (
    BindingRequired,
    BindOutcome,
    ConnectPolicy,
    LatchOutcome,
    ProtectedConnection,
)
from rpclatch.connect.gss import BIND_OUTCOMES, classify_bind_failure
from rpclatch.demo.bindrelay import BindAttack, BindRelayEditor
from rpclatch.demo.testbed import build_testbed
from rpclatch.gss.errors import BindFailureReason, ChannelBindingFailed
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.wire import Service
from rpclatch.rpc.testprog import (
    PROC_ECHO,
    RPCLATCH_TEST_PROG,
    RPCLATCH_TEST_VERS,
    decode_opaque,
    encode_opaque,
)

_R = BindFailureReason

#: The only reasons that may be quiet: an authenticated answer of the server, or a local choice.
QUIET = {_R.SERVER_HAS_NO_CHANNEL, _R.NO_COMMON_PREFIX, _R.NO_COMMON_HASH, _R.NO_REQUESTED_PREFIX, _R.V1_ONLY}


def test_every_reason_has_an_outcome_and_only_genuine_answers_are_quiet() -> None:
    assert set(BIND_OUTCOMES) == set(BindFailureReason)
    assert {r for r, o in BIND_OUTCOMES.items() if o is BindOutcome.UNSUPPORTED} == QUIET
    assert {o for r, o in BIND_OUTCOMES.items() if r not in QUIET} == {BindOutcome.MISMATCH}


@pytest.mark.parametrize("reason", list(BindFailureReason), ids=[r.value for r in BindFailureReason])
def test_classification_is_by_reason_never_by_text(reason: BindFailureReason) -> None:
    """The words that made the old substring match say UNSUPPORTED ("no common", "v1", "did not
    converge") decide nothing now."""
    exc = ChannelBindingFailed(reason, "no common prefix; v1; did not converge; offers none")
    assert classify_bind_failure(exc) is BIND_OUTCOMES[reason]
    expected = BindOutcome.UNSUPPORTED if reason in QUIET else BindOutcome.MISMATCH
    assert classify_bind_failure(exc) is expected


def echo(pc: ProtectedConnection, payload: bytes) -> None:
    reply = pc.call(RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, PROC_ECHO, encode_opaque(payload))
    assert decode_opaque(reply) == payload


#: attack -> the typed reasons the client may give (the prefix rewrite: TAMPERED_NEGOTIATION from
#: a server that answers PREF_NOTSUPP before checking the MIC, MIC_MISMATCH from one that checks
#: the request MIC first)
ATTACKS = {
    BindAttack.PREFIX: {_R.TAMPERED_NEGOTIATION, _R.MIC_MISMATCH},
    BindAttack.V2_REFUSED: {_R.V1_FALLBACK_ON_BINDABLE_CHANNEL},
    BindAttack.HASH_NOTSUPP: {_R.UNVERIFIABLE_REPLY},
}


@pytest.mark.parametrize("attack", list(ATTACKS), ids=[a.name.lower() for a in ATTACKS])
def test_relay_editing_the_exchange_still_ends_mismatch_with_a_warning(
    realm: ThrowawayRealm, caplog: pytest.LogCaptureFixture, attack: BindAttack
) -> None:
    editor = BindRelayEditor(attack)
    bed = build_testbed(realm, mitm=True, editor=editor)
    pc = bed.connection(ConnectPolicy(ike_timeout=2.0))
    with caplog.at_level(logging.WARNING, logger="rpclatch.connect"):
        rec = pc.connect()
    assert editor.acted
    assert rec.latch_outcome is LatchOutcome.LATCHED_BINDING_CONF
    assert rec.bind_outcome is BindOutcome.MISMATCH and not rec.bound and rec.warnings
    assert rec.bind_detail is not None
    assert any(rec.bind_detail.endswith(f"[{r.value}]") for r in ATTACKS[attack]), rec.bind_detail
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("SECURITY WARNING" in w and rec.bind_detail in w for w in warned), warned
    if attack is BindAttack.V2_REFUSED:
        assert "AUTH_BADCRED" in rec.bind_detail  # (the relay forges once: the new context is v2)
    # the context was destroyed and DATA runs under GSS privacy end to end, never channel_prot
    assert rec.gss_service is Service.PRIVACY
    echo(pc, b"through the relay")
    assert "channel_prot" not in bed.wire_view().data_services()
    # a legitimate client, without the man in the middle, still binds
    honest = build_testbed(realm).connection(ConnectPolicy(ike_timeout=2.0))
    good = honest.connect()
    assert good.bind_outcome is BindOutcome.BOUND and good.gss_service is Service.CHANNEL_PROT
    echo(honest, b"bound")


def test_require_binding_names_the_forged_refusal(realm: ThrowawayRealm) -> None:
    """Item 10 with ``require_binding``: the error says the v2 INIT was refused (and how), not
    merely that binding was unavailable."""
    bed = build_testbed(realm, mitm=True, editor=BindRelayEditor(BindAttack.V2_REFUSED))
    pc = bed.connection(ConnectPolicy(ike_timeout=2.0, require_binding=True))
    with pytest.raises(BindingRequired, match="v2 INIT was refused with AUTH_BADCRED") as refused:
        pc.connect()
    assert "man in the middle" in str(refused.value)
    assert pc.link is None and bed.wire_view().data_services() == []
