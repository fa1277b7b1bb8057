"""What an IKE SA needs from its owner: credentials, policy, suites, timers; and a CHILD_SA request.

Peer acceptance is the RFC 4301 PAD of :mod:`rpclatch.ipsec.pad`: an entry with a
``PublicKeyPattern(fingerprint)`` accepts one configured key, the wildcard ``PublicKeyPattern()``
accepts any self-presented key (BTNS, RFC 5386), a ``NullIdPattern`` entry accepts NULL
authentication (RFC 7619). Its child-SA rules bound the remote addresses a peer may claim.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from rpclatch.ipsec.ike.certs import TrustAnchor, certificate_id
from rpclatch.ipsec.ike.crypto import Entropy, IkeSuite, SigningKey, spki_of
from rpclatch.ipsec.ike.events import ChildProposal
from rpclatch.ipsec.ike.negotiation import DEFAULT_ESP_SUITES, DEFAULT_IKE_SUITES, esp_encr
from rpclatch.ipsec.model import CipherSuite, IdType, IkeId, IPAddress, Mode, Selector
from rpclatch.ipsec.pad import PeerAuthorizationDatabase

#: (address, UDP port)
Endpoint = tuple[IPAddress, int]


@dataclass(frozen=True, slots=True)
class Credentials:
    """How we authenticate: a signing key (RFC 7427 digital signature, Ed25519 or ECDSA P-256)
    sent as a raw public key (RFC 7670) when ``send_key``, or None for NULL authentication
    (RFC 7619; then ``ike_id`` should be ID_NULL)."""

    ike_id: IkeId
    key: SigningKey | None = None
    send_key: bool = True
    #: DER of our X.509 certificate (for ``key``), sent as CERT encoding 4 instead of the raw key
    certificate: bytes | None = None

    @classmethod
    def null(cls) -> Credentials:
        return cls(IkeId(IdType.ID_NULL, b""))

    @classmethod
    def raw_key(cls, key: SigningKey, ike_id: IkeId | None = None) -> Credentials:
        """A raw-public-key identity. The default ID is ID_KEY_ID carrying the SHA-256 of the key's
        SPKI: the key is the identity (RFC 7670 §3), and an ID_NULL with empty data, which RFC
        7619 §2.2 also allows here, is flagged malformed by Wireshark 4.0's dissector."""
        return cls(ike_id if ike_id is not None else IkeId.key_id(hashlib.sha256(spki_of(key)).digest()), key)

    @classmethod
    def with_certificate(
        cls, key: SigningKey, certificate_der: bytes, ike_id: IkeId | None = None
    ) -> Credentials:
        """An X.509 identity; the default ID is the certificate's subject DN (ID_DER_ASN1_DN)."""
        return cls(
            ike_id if ike_id is not None else certificate_id(certificate_der), key, True, certificate_der
        )

    spki: bytes | None = field(init=False, default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "spki", spki_of(self.key) if self.key is not None else None)


@dataclass(frozen=True, slots=True, eq=False)
class IkeConfig:
    """Configuration of one host's IKE endpoint (shared by all its IKE SAs).

    * ``pad``: who is accepted (see the module docstring).
    * ``policy``: the traffic (local-oriented selectors, in order) this host protects as responder;
      proposals are narrowed to the first non-empty intersection (RFC 7296 §2.9).
    * ``peer_keys``: SPKIs of peers that do not send their key, by the ID they assert.
    * Retransmission (RFC 7296 §2.1): ``retransmit_timeout`` doubled (``retransmit_backoff``) at
      each of ``retransmit_tries`` retransmissions, then one more timeout and the SA fails.
    * ``trust_anchors``: CAs whose directly issued certificates authenticate peers (CERT encoding
      4); a CERTREQ naming them is sent. ``certificate_clock`` (aware UTC ``datetime``), if
      given, is asked for the time when a certificate's validity period is checked; without it the
      period is not checked (the core reads no clock itself).
    * ``child_rekey_after`` / ``ike_rekey_after``: seconds after which a CHILD_SA / the IKE SA is
      rekeyed by this end (soft lifetimes, §2.8), shortened by a random fraction up to
      ``rekey_jitter``; a failed rekey is retried after ``rekey_jitter`` of the lifetime. None = the
      owner rekeys (``rekey_child``/``rekey``). There are no hard lifetimes.
    * ``liveness_interval``: an established SA that has heard nothing authenticated from its peer
      for that long sends an empty INFORMATIONAL (§1.4); None = only on request.

    Hooks for an owner (docs/ike.md), all None by default:

    * ``entropy``: ``n -> n random octets``, the source of every random value the core draws (IKE
      SPIs, nonces, key-exchange secrets, SK IVs, CHILD_SA SPIs, rekey jitter); with it, ECDSA
      signatures are deterministic (RFC 6979). A seeded generator makes a run reproducible
      (simulation); None = ``os.urandom`` / ``secrets``.
    * ``child_spi``: allocates our inbound CHILD_SA SPIs; a value outside 256..2^32-1 (RFC 4303
      §2.1 reserves 1..255) raises ValueError where it is used (from the call that needed the SPI:
      ``initiate``, ``create_child``, ``rekey_child``, ``receive_datagram``, ``handle_timer``).
      None = random.
    * ``child_vetter``: responder side, called with a :class:`ChildProposal` for every CHILD_SA a
      peer asks for (IKE_AUTH, CREATE_CHILD_SA, CHILD_SA rekey) after TS narrowing and the PAD's
      child-SA rules, before answering (RFC 5660 §2.3). It returns the selector to use (the
      proposal's or a narrower one, sent back in TSi/TSr) or None to refuse: TS_UNACCEPTABLE for
      a new CHILD_SA (in IKE_AUTH the IKE SA is still established, §1.2), NO_PROPOSAL_CHOSEN for a
      rekey. A wider selector, or an exception from it (logged), is a refusal.
    """

    credentials: Credentials
    pad: PeerAuthorizationDatabase
    policy: tuple[Selector, ...] = ()
    mode: Mode = Mode.TRANSPORT
    ike_suites: tuple[IkeSuite, ...] = DEFAULT_IKE_SUITES
    esp_suites: tuple[CipherSuite, ...] = DEFAULT_ESP_SUITES
    peer_keys: Mapping[IkeId, bytes] = field(default_factory=lambda: MappingProxyType({}))
    retransmit_timeout: float = 1.0
    retransmit_backoff: float = 2.0
    retransmit_tries: int = 5
    half_open_timeout: float = 30.0
    liveness_interval: float | None = None
    child_rekey_after: float | None = None
    ike_rekey_after: float | None = None
    rekey_jitter: float = 0.1
    trust_anchors: tuple[TrustAnchor, ...] = ()
    certificate_clock: Callable[[], datetime] | None = None
    nonce_len: int = 32
    entropy: Entropy | None = None
    child_spi: Callable[[], int] | None = None
    child_vetter: Callable[[ChildProposal], Selector | None] | None = None

    def __post_init__(self) -> None:
        if not self.ike_suites or not self.esp_suites:
            raise ValueError("IkeConfig needs at least one IKE suite and one ESP suite")
        for suite in self.esp_suites:
            esp_encr(suite)  # ValueError for a suite the core cannot negotiate
        for name in ("liveness_interval", "child_rekey_after", "ike_rekey_after"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive")
        if not 0.0 <= self.rekey_jitter < 1.0:
            raise ValueError("rekey_jitter must be in [0, 1)")
        if self.liveness_interval is not None and self.liveness_interval <= 0:
            raise ValueError("liveness interval must be positive")
        if not 16 <= self.nonce_len <= 256:
            raise ValueError("nonce length must be 16..256 octets (RFC 7296 §2.10)")


@dataclass(frozen=True, slots=True)
class ChildRequest:
    """What the initiator asks for: one local-oriented selector (e.g. ``Selector.for_flow``),
    the mode, (optionally) the ESP suites to offer instead of the configuration's, and a
    key-exchange group for PFS (only used by CREATE_CHILD_SA; the first CHILD_SA of IKE_AUTH
    takes its keys from the IKE SA's, §1.2)."""

    selector: Selector
    mode: Mode = Mode.TRANSPORT
    esp_suites: tuple[CipherSuite, ...] | None = None
    pfs_group: int | None = None
