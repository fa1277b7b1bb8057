"""The Channel interface and its in-memory implementation."""

from __future__ import annotations

import pytest

from rpclatch.gss.channel import Channel, InMemoryChannel, Protection


def test_pair_shares_state_and_fires_callbacks_once() -> None:
    a, b = InMemoryChannel.pair("x-test", b"data")
    heard: list[Channel] = []
    a.on_break(heard.append)
    b.on_break(heard.append)
    assert a.is_up() and b.is_up()
    assert a.channel_bindings() == b"x-test:data" == b.channel_bindings()
    b.break_()
    b.break_()
    assert not a.is_up() and not b.is_up()
    assert heard == [a, b]
    late: list[Channel] = []
    a.on_break(late.append)  # registering after the break calls back at once
    assert late == [a]


def test_mitm_pair_has_different_bindings() -> None:
    a, b = InMemoryChannel.pair("x-test", b"client-view", other_data=b"server-view")
    assert a.channel_bindings() != b.channel_bindings()


def test_protection_and_prefix_rules() -> None:
    a, _ = InMemoryChannel.pair("x-test", b"d", Protection.INTEGRITY)
    assert not a.confidential
    with pytest.raises(ValueError):
        InMemoryChannel("bad prefix:", b"d")
    with pytest.raises(ValueError):
        InMemoryChannel("x", b"d", Protection.CONFIDENTIALITY)
