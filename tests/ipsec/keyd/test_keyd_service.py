"""LatchGuardBackend (rpclatch.ipsec.keyd.service): the DISCARD policies the key manager puts on a
broken latch's 5-tuple (``block``) and on a released one's for TCP's TIME_WAIT (``seal``), over the
in-process datapath; what lifts each, and the bound on seals."""

from __future__ import annotations

import ipaddress

import pytest

from rpclatch.ipsec.backend import InProcessBackend
from rpclatch.ipsec.keyd.service import LatchGuardBackend
from rpclatch.ipsec.model import (
    AuthMethod,
    FiveTuple,
    IkeId,
    IkeSaRef,
    IpProto,
    LocalIdentity,
    PskPeer,
    Selector,
)
from rpclatch.ipsec.sad import ProtectionParams, SecurityAssociation
from rpclatch.ipsec.spd import SpdAction

A = ipaddress.ip_address("192.0.2.1")
B = ipaddress.ip_address("192.0.2.2")


def _flow(sport: int) -> FiveTuple:
    return FiveTuple(A, sport, B, 2049, IpProto.TCP)


def _sa(flow: FiveTuple, sa_id: int) -> SecurityAssociation:
    return SecurityAssociation(
        sa_id=sa_id,
        spi_in=0x1000 + sa_id,
        spi_out=0x2000 + sa_id,
        local_addr=A,
        remote_addr=B,
        traffic_selectors=(Selector.for_flow(flow),),
        peer=PskPeer(IkeId.fqdn("b.test")),
        local=LocalIdentity(IkeId.fqdn("a.test"), AuthMethod.PSK),
        params=ProtectionParams(),
        ike_sa=IkeSaRef(1, 2),
    )


@pytest.fixture
def guard() -> LatchGuardBackend:
    return LatchGuardBackend(InProcessBackend(), lambda flow: False, lambda sa: False)


def _discarded(guard: LatchGuardBackend) -> list[FiveTuple]:
    return [f for f, p in guard.flow_policies.items() if p.entry.action is SpdAction.DISCARD]


def test_a_seal_discards_until_unsealed_with_its_own_token(guard: LatchGuardBackend) -> None:
    token = guard.seal(_flow(1000))
    assert token is not None and _discarded(guard) == [_flow(1000)]
    guard.unseal(_flow(1000), token + 1)  # another seal's token: nothing happens
    assert _discarded(guard) == [_flow(1000)]
    guard.unseal(_flow(1000), token)
    assert not _discarded(guard) and not guard.sealed


def test_a_new_sa_on_a_sealed_5_tuple_lifts_the_seal_but_not_a_block(guard: LatchGuardBackend) -> None:
    """A sealed 5-tuple is a closed connection's: a new connection's SA decides for it. A blocked
    one is a broken latch's: a (conflicting) SA installed for it stays under the DISCARD."""
    token = guard.seal(_flow(1000))
    guard.install_sa(_sa(_flow(1000), 1))
    assert not guard.sealed and not _discarded(guard)
    assert token is not None
    guard.unseal(_flow(1000), token)  # the late timer of the lifted seal: harmless
    guard.block(_flow(2000))
    guard.install_sa(_sa(_flow(2000), 2))
    assert _discarded(guard) == [_flow(2000)]


def test_a_block_takes_over_a_seal_and_a_blocked_flow_is_not_sealed(guard: LatchGuardBackend) -> None:
    token = guard.seal(_flow(1000))
    guard.block(_flow(1000))
    assert not guard.sealed and guard.blocked == {_flow(1000)}
    assert token is not None
    guard.unseal(_flow(1000), token)  # the seal's timer does not lift the block
    assert _discarded(guard) == [_flow(1000)]
    assert guard.seal(_flow(1000)) is None


def test_seals_are_bounded(guard: LatchGuardBackend, caplog: pytest.LogCaptureFixture) -> None:
    """Connection churn feeds the seal table: past ``max_sealed`` a released flow is not sealed
    (one log line), and the kernel holds no more DISCARD policies than the limit."""
    guard.max_sealed = 3
    tokens = [guard.seal(_flow(1000 + i)) for i in range(5)]
    assert [t is not None for t in tokens] == [True, True, True, False, False]
    assert len(guard.sealed) == 3 and len(_discarded(guard)) == 3
    assert len([r for r in caplog.records if "not sealed" in r.getMessage()]) == 1
    first = tokens[0]
    assert first is not None
    guard.unseal(_flow(1000), first)
    assert guard.seal(_flow(1003)) is not None  # room again
