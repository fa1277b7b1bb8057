"""The policy table of rpclatch.connect.policy: every reachable row, and nothing else."""

from __future__ import annotations

import itertools

import pytest

from rpclatch.connect.policy import (
    POLICY,
    BindOutcome,
    FallbackService,
    LatchOutcome,
    decide,
    should_bind,
)
from rpclatch.gss.wire import Service


def reachable() -> list[tuple[LatchOutcome, BindOutcome]]:
    """Pairs the client flow can produce: a bind is attempted exactly when binding data exists."""
    pairs = []
    for latch, bind in itertools.product(LatchOutcome, BindOutcome):
        attempted = bind is not BindOutcome.NOT_ATTEMPTED
        if attempted == should_bind(latch):
            pairs.append((latch, bind))
    return pairs


def test_table_covers_exactly_the_reachable_pairs() -> None:
    assert set(POLICY) == set(reachable())


@pytest.mark.parametrize(("latch", "bind"), reachable())
def test_channel_prot_only_when_bound(latch: LatchOutcome, bind: BindOutcome) -> None:
    decision = decide(latch, bind)
    for wanted in FallbackService:
        service = decision.service_for(wanted)
        if bind is not BindOutcome.BOUND:
            assert service is wanted.service
        assert service is not Service.NONE


def test_privacy_maps_to_channel_prot_only_on_an_encrypting_channel() -> None:
    enc = decide(LatchOutcome.LATCHED_BINDING_CONF, BindOutcome.BOUND)
    integ_only = decide(LatchOutcome.LATCHED_BINDING_INTEG, BindOutcome.BOUND)
    assert enc.service_for(FallbackService.PRIVACY) is Service.CHANNEL_PROT
    assert enc.service_for(FallbackService.INTEGRITY) is Service.CHANNEL_PROT
    assert integ_only.service_for(FallbackService.PRIVACY) is Service.PRIVACY
    assert integ_only.service_for(FallbackService.INTEGRITY) is Service.CHANNEL_PROT


def test_mismatch_destroys_the_context_and_warns() -> None:
    for latch in (LatchOutcome.LATCHED_BINDING_CONF, LatchOutcome.LATCHED_BINDING_INTEG):
        d = decide(latch, BindOutcome.MISMATCH)
        assert d.destroy_context and d.warn and d.keep_latch
        assert d.service_for(FallbackService.PRIVACY) is Service.PRIVACY


def test_only_a_mismatch_warns_or_destroys() -> None:
    for (_latch, bind), d in POLICY.items():
        assert d.warn == (bind is BindOutcome.MISMATCH)
        assert d.destroy_context == (bind is BindOutcome.MISMATCH)


def test_not_latched_keeps_no_latch_and_latched_keeps_it() -> None:
    for (latch, _bind), d in POLICY.items():
        assert d.keep_latch == latch.latched


def test_unreachable_pair_is_an_error() -> None:
    with pytest.raises(ValueError, match="no policy row"):
        decide(LatchOutcome.NOT_LATCHED, BindOutcome.BOUND)


def test_fallback_services_are_wire_services() -> None:
    """FallbackService names the two services a connection falls back to by their sec_name, with
    RFC 2203 §5's numbers."""
    assert [(p.value, int(p.service)) for p in FallbackService] == [("krb5i", 2), ("krb5p", 3)]
    assert all(p.value == p.service.sec_name for p in FallbackService)
