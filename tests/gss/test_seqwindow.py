"""The RFC 2203 §5.3.3.1 replay window, alone (pure data structure, no GSS)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rpclatch.gss.seqwindow import SeqVerdict, SeqWindow


def test_window_accepts_each_number_once_and_drops_below() -> None:
    w = SeqWindow(4)
    for s in (1, 2, 3):
        assert w.check(s) is SeqVerdict.NEW
        w.mark(s)
    assert w.check(2) is SeqVerdict.REPLAY
    w.mark(10)
    assert w.check(6) is SeqVerdict.BELOW_WINDOW
    assert w.check(7) is SeqVerdict.NEW  # 7..10 is the window
    assert w.check(10) is SeqVerdict.REPLAY
    w.mark(7)
    assert w.check(7) is SeqVerdict.REPLAY


def test_check_alone_never_moves_the_window() -> None:
    w = SeqWindow(8)
    w.mark(5)
    assert w.check(1000) is SeqVerdict.NEW
    assert w.highest == 5
    assert w.check(5) is SeqVerdict.REPLAY


@given(st.lists(st.integers(0, 300), max_size=200), st.integers(1, 64))
def test_window_matches_a_reference_model(seqs: list[int], size: int) -> None:
    w = SeqWindow(size)
    seen: set[int] = set()
    highest = -1
    for s in seqs:
        if s > highest:
            expect = SeqVerdict.NEW
        elif s <= highest - size:
            expect = SeqVerdict.BELOW_WINDOW
        else:
            expect = SeqVerdict.REPLAY if s in seen else SeqVerdict.NEW
        assert w.check(s) is expect
        if expect is SeqVerdict.NEW:
            w.mark(s)
            seen.add(s)
            highest = max(highest, s)


@given(st.lists(st.integers(0, 300), max_size=200), st.integers(1, 64))
def test_accept_is_check_then_mark(seqs: list[int], size: int) -> None:
    a, b = SeqWindow(size), SeqWindow(size)
    for s in seqs:
        new = b.check(s) is SeqVerdict.NEW
        if new:
            b.mark(s)
        assert a.accept(s) is new
        assert a.highest == b.highest
