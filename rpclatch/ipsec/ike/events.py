"""Events an IKE SA reports (taken with ``IkeSa.next_event()``), in the order they happened."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from rpclatch.ipsec.model import (
    CertificatePeer,
    CipherSuite,
    IkeSaRef,
    IPAddress,
    Mode,
    NullAuthPeer,
    RawPublicKeyPeer,
    Selector,
)

#: the authenticated peer: its raw public key (SPKI DER), its X.509 certificate, or NULL authentication
IkePeer = RawPublicKeyPeer | CertificatePeer | NullAuthPeer


@dataclass(frozen=True, slots=True)
class IkeSaEstablished:
    """IKE_AUTH completed; ``peer`` is authenticated (or NULL), ``btns`` if a BTNS PAD entry
    admitted it; ``nat_local``/``nat_remote``: RFC 7296 §2.23 NAT detection results;
    ``initial_contact``: the peer sent INITIAL_CONTACT (§2.4) in its IKE_AUTH message."""

    ike_sa: IkeSaRef
    peer: IkePeer
    pad_entry: str
    btns: bool
    initiator: bool
    suite: str
    nat_local: bool = False
    nat_remote: bool = False
    initial_contact: bool = False


@dataclass(frozen=True, slots=True)
class ChildSa:
    """A negotiated ESP SA pair (RFC 7296 §2.17): SPIs and keys per direction, local-oriented
    selector, mode. ``key_in``/``key_out`` are AES-GCM key || 4-octet salt (RFC 4106 §8.1)."""

    spi_in: int
    spi_out: int
    suite: CipherSuite
    mode: Mode
    selector: Selector
    key_in: bytes
    key_out: bytes
    narrowed: bool = False


@dataclass(frozen=True, slots=True)
class ChildProposal:
    """A CHILD_SA a peer asks us (the exchange responder) for, as ``IkeConfig.child_vetter``
    sees it: after TS narrowing and the PAD's child-SA rules, before we answer (RFC 5660 §2.3).
    ``selector`` is local-oriented; ``local``/``remote`` are the IKE endpoints (address, port);
    ``spi_in`` is the SPI we allocated for it (inbound), ``spi_out`` the peer's (RFC 7296 §3.3.1);
    ``rekey_of`` is our inbound SPI of the CHILD_SA it rekeys, None for a new one."""

    ike_sa: IkeSaRef
    peer: IkePeer
    local: tuple[IPAddress, int]
    remote: tuple[IPAddress, int]
    selector: Selector
    suite: CipherSuite
    mode: Mode
    spi_in: int
    spi_out: int
    rekey_of: int | None = None


@dataclass(frozen=True, slots=True)
class ChildSaEstablished:
    """A new CHILD_SA; ``replaces`` is the inbound SPI of the CHILD_SA it rekeys (§1.3.3), whose
    deletion follows."""

    ike_sa: IkeSaRef
    child: ChildSa
    replaces: int | None = None


@dataclass(frozen=True, slots=True)
class ChildSaFailed:
    """The CHILD_SA of an exchange was refused (by us or the peer): ``notify`` is the code."""

    ike_sa: IkeSaRef
    notify: int
    by_peer: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ChildSaDeleted:
    ike_sa: IkeSaRef
    spi_in: int
    spi_out: int
    by_peer: bool


@dataclass(frozen=True, slots=True)
class IkeSaRekeyed:
    """The IKE SA ``old`` was rekeyed (§1.3.2, §2.18): ``new`` (``IkeSa.successor``) now owns its
    CHILD_SAs and peer; the deletion of ``old`` (``IkeSaDeleted``) follows."""

    old: IkeSaRef
    new: IkeSaRef


@dataclass(frozen=True, slots=True)
class IkeSaRekeyFailed:
    """Our IKE SA rekey was refused (``notify``) or its answer was unusable; the SA carries on."""

    ike_sa: IkeSaRef
    notify: int | None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class IkeSaDeleted:
    ike_sa: IkeSaRef
    by_peer: bool


class FailureReason(Enum):
    """Why an IKE SA failed (``IkeSaFailed.reason``)."""

    TIMEOUT = "timeout"  # no answer after the last retransmission (RFC 7296 §2.1): peer dead
    HALF_OPEN_TIMEOUT = "half-open-timeout"  # responder: no IKE_AUTH in time
    NO_PROPOSAL_CHOSEN = "no-proposal-chosen"
    INVALID_KE = "invalid-ke"  # no acceptable group after INVALID_KE_PAYLOAD retries
    AUTHENTICATION_FAILED = "authentication-failed"  # we refused the peer
    PEER_REFUSED = "peer-refused"  # the peer answered with an error notify
    PROTOCOL_ERROR = "protocol-error"  # malformed or inconsistent exchange
    LOCAL = "local"  # our configuration cannot do what the peer needs
    CANCELLED = "cancelled"  # the owner gave it up before it was established (IkeDispatcher.cancel)
    #: initiator: an ICMP port unreachable answered our first IKE_SA_INIT request, before any
    #: answer from the peer (IkeDispatcher.peer_unreachable; an unauthenticated hint, see there)
    UNREACHABLE = "unreachable"


@dataclass(frozen=True, slots=True)
class IkeSaFailed:
    ike_sa: IkeSaRef
    reason: FailureReason
    notify: int | None = None
    detail: str = ""


IkeEvent = (
    IkeSaEstablished
    | ChildSaEstablished
    | ChildSaFailed
    | ChildSaDeleted
    | IkeSaRekeyed
    | IkeSaRekeyFailed
    | IkeSaDeleted
    | IkeSaFailed
)
