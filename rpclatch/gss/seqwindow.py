"""The RPCSEC_GSS server's replay window (RFC 2203 §5.3.3.1).

Let N be the highest sequence number seen; the window is [N - size + 1, N]. A number above N
advances the window (only after the header MIC verified); one in the window is accepted once; one
below the window, or seen before, is silently dropped. Checking (:meth:`SeqWindow.check`) and
recording (:meth:`SeqWindow.mark`) are separate so that the MIC can be verified in between and a
forged number never moves the window.
"""

from __future__ import annotations

from enum import Enum


class SeqVerdict(Enum):
    NEW = "new"  # acceptable if the MIC verifies
    REPLAY = "replay"  # seen already: drop silently
    BELOW_WINDOW = "below-window"  # too old: drop silently


_NEW = SeqVerdict.NEW
_REPLAY = SeqVerdict.REPLAY
_BELOW_WINDOW = SeqVerdict.BELOW_WINDOW


class SeqWindow:
    """A bitmap window of ``size`` sequence numbers. Not thread-safe (the caller holds a lock)."""

    __slots__ = ("_bits", "_highest", "_mask", "size")

    def __init__(self, size: int = 128) -> None:
        if not 1 <= size <= 1 << 16:
            raise ValueError("seq window must be 1..65536")
        self.size = size
        self._mask = (1 << size) - 1
        self._highest = -1  # nothing seen yet
        self._bits = 0  # bit i set: (highest - i) was seen

    @property
    def highest(self) -> int:
        return self._highest

    def check(self, seq: int) -> SeqVerdict:
        if seq > self._highest:
            return _NEW  # module constants: every call checks, and a global beats an enum lookup
        offset = self._highest - seq
        if offset >= self.size:
            return _BELOW_WINDOW
        return _REPLAY if (self._bits >> offset) & 1 else _NEW

    def accept(self, seq: int) -> bool:
        """:meth:`check` and, if NEW, :meth:`mark` at once (for calls with no MIC to verify in
        between, i.e. channel_prot). True if ``seq`` was new."""
        highest = self._highest
        if seq > highest:
            shift = seq - highest
            self._bits = ((self._bits << shift) | 1) & self._mask if shift < self.size else 1
            self._highest = seq
            return True
        offset = highest - seq
        if offset >= self.size or (self._bits >> offset) & 1:
            return False
        self._bits |= 1 << offset
        return True

    def mark(self, seq: int) -> None:
        """Record ``seq`` as used; call only after :meth:`check` said NEW and the MIC verified."""
        if seq > self._highest:
            shift = seq - self._highest
            self._bits = ((self._bits << shift) | 1) & self._mask if shift < self.size else 1
            self._highest = seq
        else:
            offset = self._highest - seq
            if offset < self.size:
                self._bits |= 1 << offset
