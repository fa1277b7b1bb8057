"""Approach 2 PAD layer: templates, clones, TIME_WAIT-like holds."""

from __future__ import annotations

import pytest

from rpclatch.ipsec import examples as ex
from rpclatch.ipsec.latch import LatchRequest
from rpclatch.ipsec.model import Selector, ThreeTuple
from rpclatch.ipsec.pad_latching import PadLatchLayer, PadTemplate, TimeWaitPolicy

F = ex.flow("192.0.2.1", 2049, "192.0.2.2", 40000)


def test_hold_length_from_local_latencies() -> None:
    assert TimeWaitPolicy(0.01, 0.04, 4.0).hold == pytest.approx(0.2)


def test_templates_and_clone() -> None:
    layer = PadLatchLayer()
    lt = PadTemplate(ThreeTuple.of("192.0.2.1", 2049, 6), LatchRequest(), 1)
    layer.add_template(lt)
    assert layer.template_for(F) is lt
    any_addr = PadTemplate(ThreeTuple.of("0.0.0.0", 111, 6), LatchRequest(), 2)
    layer.add_template(any_addr)
    assert layer.template_for(ex.flow("192.0.2.1", 111, "192.0.2.2", 1)) is any_addr
    ft = PadTemplate(F, LatchRequest(), 3)
    layer.add_template(ft)
    assert layer.template_for(F) is ft  # the 5-tuple template is more specific
    c = layer.clone(ft, F, ex.btns_peer(2), F.remote_addr, 3)
    assert c.child_sa == Selector.for_flow(F) and layer.clones[F] is c
    layer.remove_template(lt.key)
    assert layer.template_for(ex.flow("192.0.2.1", 2049, "192.0.2.3", 1)) is None


def test_holds_expire_in_order_once() -> None:
    layer = PadLatchLayer(TimeWaitPolicy(0.0, 1.0, 1.0))
    g = ex.flow("192.0.2.1", 2049, "192.0.2.3", 1)
    layer.hold(F, 0.0)
    layer.hold(g, 0.5)
    assert layer.next_deadline() == 1.0
    assert layer.due(1.0) == [F] and layer.due(1.0) == []
    layer.hold(g, 1.0)  # re-held: the older deadline no longer counts
    assert layer.due(1.5) == [] and layer.next_deadline() == 2.0
    assert layer.due(2.0) == [g] and layer.next_deadline() is None
