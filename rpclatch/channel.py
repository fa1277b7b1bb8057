"""The secure-channel interface that channel binding binds to (RFC 5056 §2, RFC 5403 §2).

A :class:`Channel` is what a transport connection is latched to: it names itself with channel
bindings (``prefix ":" data``, RFC 5056 §2.1), says what protection it gives, whether it still
exists (RFC 5403 §3.4: channel_prot is valid only while "the secure channel still exists"), and
calls back when it breaks.

It lives at the bottom of the package because both sides of the binding use it: the IPsec latching
engine (``rpclatch.ipsec.channel_binding.LatchChannel``) implements it, RPCSEC_GSS
(``rpclatch.gss``) consumes it, and neither may import the other's layer. A small in-memory
implementation for tests is ``rpclatch.gss.channel.InMemoryChannel``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from enum import Flag, auto


class Protection(Flag):
    """Integrity and/or confidentiality: what a secure channel protects, integrity always (RFC 5056
    §2), confidentiality optionally; for IPsec, an SA's or a latch's "type of protection" (RFC 5660
    §2), and ``NONE`` for a packet that no SA protected.

    A property of the channel; the GSS service a connection uses without a bound channel is
    :class:`rpclatch.connect.policy.FallbackService`."""

    NONE = 0
    INTEGRITY = auto()
    CONFIDENTIALITY = auto()


BreakCallback = Callable[["Channel"], None]


class Channel(abc.ABC):
    """A secure channel as seen by RPCSEC_GSS. Implementations must be safe to query from any thread.

    Equality is identity: a binding made on one channel object is valid only on that object.
    """

    @property
    @abc.abstractmethod
    def binding_prefix(self) -> str:
        """The channel-binding type prefix, without the colon (e.g. ``rpclatch-ipsec-latch-v1``)."""

    @property
    @abc.abstractmethod
    def binding_data(self) -> bytes:
        """The channel-binding data that follows ``prefix ":"``."""

    @property
    @abc.abstractmethod
    def protection(self) -> Protection:
        """Protection the channel gives to every byte of this connection."""

    @abc.abstractmethod
    def is_up(self) -> bool:
        """True while the channel exists and is intact (latch ESTABLISHED)."""

    @abc.abstractmethod
    def on_break(self, callback: BreakCallback) -> None:
        """Call ``callback(channel)`` once when the channel breaks or closes (immediately if it
        already has)."""

    # -- derived ------------------------------------------------------------------------------------

    def bindings(self) -> Mapping[str, bytes]:
        """Every (prefix -> data) this channel can be named by; RFC 5403 §3.3 lets a channel have
        several. The first is the preferred one."""
        return {self.binding_prefix: self.binding_data}

    def channel_bindings(self, prefix: str | None = None) -> bytes:
        """Canonical channel bindings ``prefix ":" data`` (RFC 5056 §2.1)."""
        prefix = self.binding_prefix if prefix is None else prefix
        return prefix.encode("ascii") + b":" + self.bindings()[prefix]

    @property
    def confidential(self) -> bool:
        """The channel encrypts (RFC 5403 §7: only then may channel_prot stand in for privacy)."""
        return Protection.CONFIDENTIALITY in self.protection
