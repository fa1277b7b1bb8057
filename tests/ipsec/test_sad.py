"""SAD (RFC 4301 §4.4.2): indexes, lookups, expiry, SPI range."""

from __future__ import annotations

import pytest

from rpclatch.ipsec import examples as ex
from rpclatch.ipsec.model import Selector
from rpclatch.ipsec.sad import Lifetime, SecurityAssociationDatabase

F = ex.flow("192.0.2.1", 2049, "192.0.2.2", 40000)


def test_narrow_and_wide_lookup_and_removal() -> None:
    sad = SecurityAssociationDatabase()
    narrow = ex.narrow_sa(F, ex.btns_peer(2), ex.btns_local(1))
    narrow = narrow.narrowed(narrow.traffic_selectors)
    from dataclasses import replace

    n = replace(narrow, sa_id=sad.next_sa_id())
    w = replace(
        ex.narrow_sa(F, ex.btns_peer(3), ex.btns_local(1), selectors=(Selector(remote=ex.NET),)),
        sa_id=sad.next_sa_id(),
    )
    sad.add(n)
    sad.add(w)
    assert n.is_narrow and not w.is_narrow
    assert sad.carrying(F) == [n, w]
    assert sad.carrying(ex.flow("192.0.2.1", 2049, "192.0.2.9", 1)) == [w]
    assert sad.with_peer(ex.btns_peer(3)) == [w]
    with pytest.raises(ValueError):
        sad.add(n)
    before = sad.removals
    assert sad.remove(n.sa_id) is n and sad.remove(n.sa_id) is None and sad.removals == before + 1
    assert sad.carrying(F) == [w] and len(sad) == 1


def test_expiry_and_spi_range() -> None:
    from dataclasses import replace

    sa = replace(
        ex.narrow_sa(F, ex.btns_peer(2), ex.btns_local(1)), lifetime=Lifetime(hard_seconds=10), created_at=5
    )
    assert not sa.expired(14.9) and sa.expired(15)
    with pytest.raises(ValueError):
        replace(sa, spi_in=255)
    with pytest.raises(ValueError):
        replace(sa, traffic_selectors=())
