"""The secure-channel interface RPCSEC_GSS v2 binds to (RFC 5403 §2, RFC 5056 §2).

A :class:`Channel` is what a transport connection is latched to: it names itself with channel
bindings (``prefix ":" data``, RFC 5056 §2.1), says what protection it gives, whether it still
exists (RFC 5403 §3.4: channel_prot is valid only while "the secure channel still exists"), and
calls back when it breaks. The interface itself lives in :mod:`rpclatch.channel` (re-exported
here); the IPsec latching engine implements it for latched connections (RFC 5660);
:class:`InMemoryChannel` is a small complete implementation for tests and demos.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping

from rpclatch.channel import BreakCallback, Channel, Protection

__all__ = ["BreakCallback", "Channel", "InMemoryChannel", "Protection"]

log = logging.getLogger(__name__)


class InMemoryChannel(Channel):
    """A real, minimal channel: endpoints made by :meth:`pair` share their up/down state.

    ``break_()`` (``break`` is a Python keyword) takes the channel down for both endpoints and fires
    every registered callback once. Two endpoints built with *different* data model a
    man-in-the-middle that terminated the channel on each side with its own keys.
    """

    def __init__(
        self,
        prefix: str,
        data: bytes,
        protection: Protection = Protection.INTEGRITY | Protection.CONFIDENTIALITY,
        *,
        _shared: _Shared | None = None,
        extra_bindings: Mapping[str, bytes] | None = None,
    ) -> None:
        if not prefix or not all(c.isalnum() or c in ".-" for c in prefix) or not prefix.isascii():
            raise ValueError(f"bad channel-binding prefix {prefix!r} (RFC 5056 §7: alnum . -)")
        if Protection.INTEGRITY not in protection:
            raise ValueError("a secure channel gives integrity at least (RFC 5056 §2)")
        self._prefix = prefix
        self._data = bytes(data)
        self._protection = protection
        self._shared = _shared if _shared is not None else _Shared()
        self._extra = dict(extra_bindings or {})

    @classmethod
    def pair(
        cls,
        prefix: str = "x-test-channel",
        data: bytes = b"",
        protection: Protection = Protection.INTEGRITY | Protection.CONFIDENTIALITY,
        *,
        other_data: bytes | None = None,
    ) -> tuple[InMemoryChannel, InMemoryChannel]:
        """Client and server ends of one channel. ``other_data`` gives the server end different
        binding data (a MITM)."""
        data = data or os.urandom(32)
        shared = _Shared()
        a = cls(prefix, data, protection, _shared=shared)
        b = cls(prefix, data if other_data is None else other_data, protection, _shared=shared)
        return a, b

    @property
    def binding_prefix(self) -> str:
        return self._prefix

    @property
    def binding_data(self) -> bytes:
        return self._data

    @property
    def protection(self) -> Protection:
        return self._protection

    def bindings(self) -> Mapping[str, bytes]:
        return {self._prefix: self._data, **self._extra}

    def is_up(self) -> bool:
        return self._shared.up

    def on_break(self, callback: BreakCallback) -> None:
        self._shared.add(self, callback)

    def break_(self) -> None:
        """Take the channel down (both ends) and fire the callbacks."""
        self._shared.fire()


class _Shared:
    """State shared by the endpoints of one in-memory channel."""

    def __init__(self) -> None:
        self.up = True
        self._lock = threading.Lock()
        self._callbacks: list[tuple[Channel, BreakCallback]] = []

    def add(self, channel: Channel, callback: BreakCallback) -> None:
        with self._lock:
            if self.up:
                self._callbacks.append((channel, callback))
                return
        callback(channel)

    def fire(self) -> None:
        with self._lock:
            if not self.up:
                return
            self.up = False
            callbacks, self._callbacks = self._callbacks, []
        for channel, callback in callbacks:
            try:
                callback(channel)
            except Exception:  # one bad listener must not keep the others from hearing the break
                log.exception("channel break callback failed")
