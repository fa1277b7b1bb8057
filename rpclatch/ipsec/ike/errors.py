"""Exceptions of the IKEv2 core, one family per layer, each carrying its notify type (the wire code).

* :class:`IkeDecodeError` (wire layer): a message or payload that does not parse; its notify is
  INVALID_SYNTAX unless a more specific one applies (UNSUPPORTED_CRITICAL_PAYLOAD,
  INVALID_MAJOR_VERSION) (RFC 7296 §2.5, §3.10.1).
* :class:`IkeCryptoError` (crypto layer): an integrity check that fails, a bad key-exchange value.
  An integrity failure on an SK payload is never answered (RFC 7296 §2.21.2): the core drops the
  message and counts it.
* :class:`IkeExchangeError` (exchange layer): the peer proposed or presented something local
  policy refuses (NO_PROPOSAL_CHOSEN, INVALID_KE_PAYLOAD, AUTHENTICATION_FAILED,
  TS_UNACCEPTABLE, ...).

None of them escapes :class:`~rpclatch.ipsec.ike.sa.IkeSa` for network input: the core turns them
into a notify, a dropped datagram (counted in ``IkeSa.stats``) or an ``IkeSaFailed`` event.
"""

from __future__ import annotations

from enum import IntEnum


class NotifyType(IntEnum):
    """IKEv2 notify message types (RFC 7296 §3.10.1; RFC 7427 §4; RFC 7619)."""

    # errors (< 16384)
    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    SINGLE_PAIR_REQUIRED = 34
    NO_ADDITIONAL_SAS = 35
    INTERNAL_ADDRESS_FAILURE = 36
    FAILED_CP_REQUIRED = 37
    TS_UNACCEPTABLE = 38
    INVALID_SELECTORS = 39
    TEMPORARY_FAILURE = 43
    CHILD_SA_NOT_FOUND = 44
    # status (>= 16384)
    INITIAL_CONTACT = 16384
    SET_WINDOW_SIZE = 16385
    ADDITIONAL_TS_POSSIBLE = 16386
    IPCOMP_SUPPORTED = 16387
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    USE_TRANSPORT_MODE = 16391
    HTTP_CERT_LOOKUP_SUPPORTED = 16392
    REKEY_SA = 16393
    ESP_TFC_PADDING_NOT_SUPPORTED = 16394
    NON_FIRST_FRAGMENTS_ALSO = 16395
    SIGNATURE_HASH_ALGORITHMS = 16431

    @property
    def is_error(self) -> bool:
        return int(self) < 16384


class IkeError(Exception):
    """Base of every exception of the IKEv2 core; ``notify`` is the wire code (may be None)."""

    default_notify: NotifyType | None = None

    def __init__(self, reason: str, notify: NotifyType | None = None) -> None:
        self.reason = reason
        self.notify = notify if notify is not None else self.default_notify
        super().__init__(f"{self.notify.name}: {reason}" if self.notify is not None else reason)


class IkeDecodeError(IkeError):
    """Malformed wire data (RFC 7296 §3); INVALID_SYNTAX unless stated otherwise."""

    default_notify = NotifyType.INVALID_SYNTAX


class UnsupportedCriticalPayload(IkeDecodeError):
    """An unknown payload with the critical bit set (RFC 7296 §2.5): the whole message is rejected
    and UNSUPPORTED_CRITICAL_PAYLOAD carries the one-octet payload type."""

    default_notify = NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD

    def __init__(self, payload_type: int) -> None:
        self.payload_type = payload_type
        super().__init__(f"unknown critical payload type {payload_type}")


class InvalidMajorVersion(IkeDecodeError):
    """A header with a major version other than 2 (RFC 7296 §2.5)."""

    default_notify = NotifyType.INVALID_MAJOR_VERSION


class IkeCryptoError(IkeError):
    """Integrity check failure, undecryptable SK payload, or an invalid key-exchange value."""


class IntegrityCheckFailed(IkeCryptoError):
    """The ICV of an SK payload does not verify (RFC 7296 §3.14; RFC 5282 §3)."""


class InvalidKeyExchange(IkeCryptoError):
    """A KE payload value that is not a valid public value for its group (RFC 7296 §3.4)."""

    default_notify = NotifyType.INVALID_SYNTAX


class IkeExchangeError(IkeError):
    """The peer's exchange is refused by local policy; ``notify`` is what is sent back."""


class NoProposalChosen(IkeExchangeError):
    default_notify = NotifyType.NO_PROPOSAL_CHOSEN


class InvalidKePayload(IkeExchangeError):
    """The KE group is not the one selected (RFC 7296 §1.2); ``group`` is the one we want."""

    default_notify = NotifyType.INVALID_KE_PAYLOAD

    def __init__(self, reason: str, group: int) -> None:
        self.group = group
        super().__init__(reason)


class AuthenticationFailed(IkeExchangeError):
    default_notify = NotifyType.AUTHENTICATION_FAILED


class TsUnacceptable(IkeExchangeError):
    default_notify = NotifyType.TS_UNACCEPTABLE


class IkeLocalError(IkeError):
    """A local API misuse (wrong state, unknown child SA): raised to the caller, never to the peer."""
