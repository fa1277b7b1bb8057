"""IPsec-layer exceptions, split Local vs Remote as in h11 (``LocalProtocolError`` / ``RemoteProtocolError``).

A :class:`IPsecLocalError` is raised for a request our own side made that cannot be honoured
(creating a latch that exists, an illegal state transition, a conflicting SAD). A
:class:`IPsecRemoteError` describes something the peer did (a child-SA proposal the PAD refuses);
it carries the IKEv2 notify type that a real key manager would send (RFC 7296 §3.10.1), our
"wire code".
"""

from __future__ import annotations

from enum import IntEnum


class IkeNotify(IntEnum):
    """IKEv2 error notify types used as wire codes (RFC 7296 §3.10.1)."""

    AUTHENTICATION_FAILED = 24
    NO_PROPOSAL_CHOSEN = 14
    TS_UNACCEPTABLE = 38
    INVALID_SELECTORS = 39
    FAILED_CP_REQUIRED = 37


class IPsecError(Exception):
    """Base of every exception of the rpclatch.ipsec layer."""


class IPsecLocalError(IPsecError):
    """A local request could not be honoured."""


class IllegalTransition(IPsecLocalError):
    """A latch state transition that RFC 5660 §2.2 Figure 1 does not allow."""


class LatchExists(IPsecLocalError):
    """CREATE_*_LATCH for a key that already has a live (non-CLOSED) latch (RFC 5660 §2.3)."""


class LatchConflict(IPsecLocalError):
    """A latch cannot be created because conflicting SAs or SPD entries exist (RFC 5660 §2.3)."""


class LatchNotFound(IPsecLocalError):
    """FIND_LATCH / INQUIRE_LATCH / RELEASE_LATCH on an unknown handle or 5-tuple."""


class PolicyRefused(IPsecLocalError):
    """Local policy (SPD, privilege) refuses the request (RFC 5660 §3.1)."""


class ChannelBindingUnavailable(IPsecLocalError):
    """No channel binding can be derived from this latch; ``reason`` says why."""


class IPsecRemoteError(IPsecError):
    """The peer proposed something local policy refuses; ``notify`` is the IKEv2 answer."""

    def __init__(self, notify: IkeNotify, reason: str) -> None:
        self.notify = notify
        self.reason = reason
        super().__init__(f"{notify.name}: {reason}")


class ChildSaRefused(IPsecRemoteError):
    """A child SA's traffic selectors or peer are not authorized by the PAD (RFC 4301 §4.4.3.4)."""


class PeerNotAuthorized(IPsecRemoteError):
    """No PAD entry authorizes / authenticates the peer (RFC 4301 §4.4.3, RFC 5386 §2)."""
