"""What the engine answers per packet: verdicts, per-packet tags and named drop reasons.

Every packet the engine refuses carries a :class:`DropReason`; grep the name to find the one
place that produces it. The sim's host stack maps verdicts onto its packet path:

- outbound: ``BYPASS`` send in the clear; ``PROTECT`` encapsulate with ``decision.sa``;
  ``DISCARD`` drop (``decision.reason``); ``NEED_SA`` queue or drop the packet, an ACQUIRE is
  pending with the key manager (RFC 4301 §5.1 step 3c) — retry after ``IPsecEngine.poll``.
- inbound: ``ACCEPT`` deliver with ``decision.tag`` (RFC 5660 §2.4 packet tag: which SA
  protected it, or cleartext); ``DROP`` discard (``decision.reason``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from rpclatch.channel import Protection
from rpclatch.ipsec.model import LocalIdentity, PeerIdentity, ProtectionParams
from rpclatch.ipsec.sad import SecurityAssociation


class OutboundVerdict(Enum):
    BYPASS = "bypass"
    PROTECT = "protect"
    DISCARD = "discard"
    NEED_SA = "need-sa"


class InboundVerdict(Enum):
    ACCEPT = "accept"
    DROP = "drop"


class DropReason(Enum):
    """Why a packet was dropped / not sent. Values are stable strings for logs and reports."""

    # RFC 4301 processing
    NO_POLICY = "no-spd-entry"  # §4.4.1: no entry matches, act as the final discard-all entry
    SPD_DISCARD = "spd-discard"  # a DISCARD entry matched
    CLEARTEXT_ON_PROTECTED_FLOW = "cleartext-on-protect-entry"  # §5.2: SPD-I says PROTECT
    SA_UNKNOWN = "sa-not-in-sad"  # the protecting SA is not (any longer) in the SAD
    SA_SELECTOR_MISMATCH = "sa-selectors-do-not-cover-flow"  # §5.2 step 4 (INVALID_SELECTORS)
    SA_POLICY_MISMATCH = "sa-does-not-satisfy-spd-entry"  # SA params not admitted by the entry
    SA_NOT_BTNS_OK = "btns-peer-on-entry-without-btns-ok"  # RFC 5386 §2
    # RFC 5660 latches (approach 2 / normative model)
    LATCH_LARVAL = "latch-not-yet-established"  # §2: no packets before the channel exists
    LATCH_BROKEN = "latch-broken"  # §2.3: while BROKEN drop input and send nothing
    LATCHED_FLOW_CLEARTEXT = "cleartext-on-latched-flow"  # §2 bullet 4
    LATCH_PEER_MISMATCH = "sa-peer-differs-from-latched-peer"  # §2 (peer ID must not change)
    LATCH_LOCAL_ID_MISMATCH = "sa-local-id-differs-from-latched-local-id"  # §2 (local ID too)
    LATCH_QOP_MISMATCH = "sa-qop-differs-from-latched-qop"  # §2 (QoP must not change)
    # BYPASS-OR-PROTECT template (RFC 5660 §3.1; docs/design.md)
    BOP_UNDECIDED = "bypass-or-protect-flow-not-decided"  # first packet not initiating / no app choice
    BOP_FLOW_DECIDED_CLEARTEXT = "protected-packet-on-cleartext-decided-flow"
    BOP_IKE_FAILED = "bypass-or-protect-ike-failed"  # the app must choose BYPASS explicitly
    # approach 1 (ULP-held latch)
    ULP_CANNOT_PROTECT_AS_LATCHED = "cannot-protect-like-latched-tag"  # §2.4 (a): inform ULP, drop
    ULP_TAG_MISMATCH = "inbound-tag-differs-from-latched-tag"  # §2.4: ULP drops mismatching input
    ULP_LATCH_BROKEN = "ulp-latch-broken"
    ULP_LATCH_CLOSED = "ulp-latch-closed"
    ULP_PROTECTION_REQUIRED = "ulp-requires-protection"  # app required a channel, packet was cleartext


@dataclass(frozen=True, slots=True)
class PacketTag:
    """RFC 5660 §2.4 packet tag: the SA that protected (or will protect) a packet, or cleartext.

    ``sa_id`` identifies the SAD entry; ``peer``, ``local`` and ``params`` are what latches
    compare (an SA rekeyed with the same identities and QoP yields a different ``sa_id`` but an
    equivalent tag, see :meth:`same_protection`). ``local`` is the local ID the SA asserted to the
    peer (RFC 5660 §2 latches it as well as the peer's). ``CLEARTEXT`` is the tag of unprotected
    packets.
    """

    sa_id: int | None
    peer: PeerIdentity | None
    params: ProtectionParams | None
    btns: bool = False
    narrow: bool = False
    local: LocalIdentity | None = None

    @classmethod
    def of_sa(cls, sa: SecurityAssociation) -> PacketTag:
        return cls(sa.sa_id, sa.peer, sa.params, sa.btns, sa.is_narrow, sa.local)

    @property
    def protected(self) -> bool:
        return self.sa_id is not None

    @property
    def protection(self) -> Protection:
        return Protection.NONE if self.params is None else self.params.protection

    def same_protection(self, other: PacketTag) -> bool:
        """Same peer, same local identity (RFC 5660 §2) and same QoP (protocol, mode, suite,
        replay on/off); SA ids may differ."""
        if self.params is None or other.params is None:
            return self.params is None and other.params is None
        a, b = self.params, other.params
        return (
            self.peer == other.peer
            and self.local == other.local
            and a.protocol is b.protocol
            and a.mode is b.mode
            and a.suite == b.suite
            and (a.replay_window > 0) == (b.replay_window > 0)
        )

    def __str__(self) -> str:
        if self.params is None:
            return "cleartext"
        return f"SA#{self.sa_id} peer={self.peer} {self.params.protocol.value}/{self.params.suite}"


CLEARTEXT = PacketTag(None, None, None)


@dataclass(frozen=True, slots=True)
class OutboundDecision:
    """Answer of ``IPsecEngine.outbound``. ``sa``/``tag`` are set for PROTECT (``tag`` is the
    RFC 5660 §2.4 (b) feedback "this is how it was protected"); ``reason`` for DISCARD and NEED_SA;
    ``latch`` is the latch handle governing the flow, if any."""

    verdict: OutboundVerdict
    sa: SecurityAssociation | None = None
    tag: PacketTag | None = None
    reason: DropReason | None = None
    latch: int | None = None

    @property
    def sendable(self) -> bool:
        return self.verdict in (OutboundVerdict.BYPASS, OutboundVerdict.PROTECT)


@dataclass(frozen=True, slots=True)
class InboundDecision:
    """Answer of ``IPsecEngine.inbound``: ACCEPT with the packet's tag, or DROP with a reason.
    ``latch`` is the handle of the latch the flow is held by (approach 2), else None. ``sa`` is
    the SA an ACCEPT of a latched flow was judged for (the engine's per-flow verdict cache)."""

    verdict: InboundVerdict
    tag: PacketTag | None = None
    reason: DropReason | None = None
    latch: int | None = None
    sa: SecurityAssociation | None = field(default=None, compare=False, repr=False)

    @property
    def accepted(self) -> bool:
        return self.verdict is InboundVerdict.ACCEPT


BYPASS_DECISION = OutboundDecision(OutboundVerdict.BYPASS, tag=CLEARTEXT)


def discard(reason: DropReason, latch: int | None = None) -> OutboundDecision:
    return OutboundDecision(OutboundVerdict.DISCARD, reason=reason, latch=latch)


def drop(reason: DropReason, latch: int | None = None) -> InboundDecision:
    return InboundDecision(InboundVerdict.DROP, reason=reason, latch=latch)
