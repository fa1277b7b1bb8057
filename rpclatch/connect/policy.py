"""The BYPASS-OR-PROTECT connect policy, in one place (docs/design.md, "The connect policy";
RFC 5660 §3.1 optional protection; RFC 5403 §2, §3.3, §3.4, §7, §9).

The whole decision is the table :data:`POLICY`: given what happened to the connection's IPsec
latch and to RPCSEC_GSS_BIND_CHANNEL, it says which RPCSEC_GSS service the DATA calls use, whether
the latch is kept, whether the GSS context must be destroyed, and whether to warn loudly::

    latch outcome                          BIND_CHANNEL        -> DATA service        notes
    ------------------------------------   -----------------   -------------------    --------------------
    latched, binding data, ESP encrypts    BOUND                  channel_prot           (krb5i and krb5p map)
    latched, binding data, no encryption   BOUND                  channel_prot / krb5p   RFC 5403 §7
    latched, binding data                  MISMATCH               krb5i / krb5p          destroy ctx, WARNING
    latched, binding data                  UNSUPPORTED            krb5i / krb5p          no common prefix
    latched, no binding data (NULL/PSK)    NOT_ATTEMPTED          krb5i / krb5p          keep the latch
    not latched (IKE failed / timed out)   NOT_ATTEMPTED          krb5i / krb5p          BYPASS clone

"krb5i / krb5p" is the configured fallback service (:class:`FallbackService`). UNSUPPORTED is only
an authenticated answer of the server that it cannot bind (or a local choice); anything a relay could
have forged or rewritten -- a reply without a valid MIC, a negotiation answer that contradicts our
request, a v1 context after an (unauthenticated) refusal of v2 -- is MISMATCH
(:data:`rpclatch.connect.gss.BIND_OUTCOMES`). A latch break (RFC 5660
ALERT BROKEN) is not a row: the default disposition is a reset (RFC 5660 §5.5 (b)); the call in
flight fails, and the next call reconnects and runs the whole table again on the new connection,
with a new latch, a new context and a new BIND_CHANNEL (a channel-bound handle is never used on
another connection). With disposition "wait" (§5.5 (a)) the connection is held instead, and the
binding is dropped for good: the configured GSS protection takes over (RFC 5403 §3.4).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum

from rpclatch.gss.wire import Service


class FallbackService(StrEnum):
    """The RPCSEC_GSS service a connection uses when it has no bound channel, krb5i or krb5p
    (:attr:`ConnectPolicy.fallback`; values: the services'
    :attr:`~rpclatch.gss.wire.Service.sec_name`). Not :class:`rpclatch.channel.Protection`, which
    is what a secure channel gives."""

    INTEGRITY = Service.INTEGRITY.sec_name  # krb5i, rpc_gss_svc_integrity (RFC 2203 §5.3.2.2)
    PRIVACY = Service.PRIVACY.sec_name  # krb5p, rpc_gss_svc_privacy (RFC 2203 §5.3.2.3)

    @property
    def service(self) -> Service:
        return Service.from_sec_name(self.value)


class LatchOutcome(Enum):
    """What the protection attempt produced for this connection (RFC 5660 §2.3)."""

    LATCHED_BINDING_CONF = "latched; the latch offers binding data; ESP encrypts"
    LATCHED_BINDING_INTEG = "latched; the latch offers binding data; no confidentiality (AH/ESP-NULL)"
    LATCHED_NO_BINDING = "latched; no binding data (NULL-auth or PSK peer)"
    NOT_LATCHED = "not latched; reconnected without IPsec (BYPASS clone for the 5-tuple)"

    @property
    def latched(self) -> bool:
        return self is not LatchOutcome.NOT_LATCHED

    @property
    def binding_available(self) -> bool:
        return self in (LatchOutcome.LATCHED_BINDING_CONF, LatchOutcome.LATCHED_BINDING_INTEG)


class BindOutcome(Enum):
    """What RPCSEC_GSS_BIND_CHANNEL (RFC 5403 §3.3) produced."""

    BOUND = "BIND_CHANNEL OK, reply MIC verified"
    MISMATCH = "BIND_CHANNEL failed: the two ends see different channels (man in the middle?)"
    UNSUPPORTED = "server cannot bind (its authenticated answer: no common prefix/hash, no channel)"
    NOT_ATTEMPTED = "no binding attempted"


class Fallback(Enum):
    """Placeholder in the table for 'the configured :class:`FallbackService`'."""

    CONFIGURED = "configured fallback"


ServiceChoice = Service | Fallback


@dataclass(frozen=True, slots=True)
class Decision:
    """One row's consequence. ``if_integrity`` / ``if_privacy``: the DATA service when the
    application asked for integrity / privacy."""

    if_integrity: ServiceChoice
    if_privacy: ServiceChoice
    keep_latch: bool
    destroy_context: bool
    warn: bool
    reason: str

    def service_for(self, wanted: FallbackService) -> Service:
        choice = self.if_integrity if wanted is FallbackService.INTEGRITY else self.if_privacy
        if isinstance(choice, Fallback):
            return wanted.service
        return choice


_FB = Fallback.CONFIGURED

#: The policy. Keys: (latch outcome, BIND_CHANNEL outcome). A missing key is an internal error.
POLICY: Mapping[tuple[LatchOutcome, BindOutcome], Decision] = {
    (LatchOutcome.LATCHED_BINDING_CONF, BindOutcome.BOUND): Decision(
        Service.CHANNEL_PROT,
        Service.CHANNEL_PROT,
        keep_latch=True,
        destroy_context=False,
        warn=False,
        reason="latched and bound: channel_prot (the IPsec channel protects the calls)",
    ),
    (LatchOutcome.LATCHED_BINDING_INTEG, BindOutcome.BOUND): Decision(
        Service.CHANNEL_PROT,
        Service.PRIVACY,
        keep_latch=True,
        destroy_context=False,
        warn=False,
        reason="latched and bound, but the channel does not encrypt: privacy stays krb5p (RFC 5403 §7)",
    ),
    (LatchOutcome.LATCHED_BINDING_CONF, BindOutcome.MISMATCH): Decision(
        _FB,
        _FB,
        keep_latch=True,
        destroy_context=True,
        warn=True,
        reason="BIND_CHANNEL failed (man in the middle?): context destroyed, fell back to GSS protection",
    ),
    (LatchOutcome.LATCHED_BINDING_INTEG, BindOutcome.MISMATCH): Decision(
        _FB,
        _FB,
        keep_latch=True,
        destroy_context=True,
        warn=True,
        reason="BIND_CHANNEL failed (man in the middle?): context destroyed, fell back to GSS protection",
    ),
    (LatchOutcome.LATCHED_BINDING_CONF, BindOutcome.UNSUPPORTED): Decision(
        _FB,
        _FB,
        keep_latch=True,
        destroy_context=False,
        warn=False,
        reason="latched, but no binding with the server (no common prefix or hash, or no channel at "
        "its end; or RPCSEC_GSS v1 by local choice): GSS protection over the latch",
    ),
    (LatchOutcome.LATCHED_BINDING_INTEG, BindOutcome.UNSUPPORTED): Decision(
        _FB,
        _FB,
        keep_latch=True,
        destroy_context=False,
        warn=False,
        reason="latched, but no binding with the server (no common prefix or hash, or no channel at "
        "its end; or RPCSEC_GSS v1 by local choice): GSS protection over the latch",
    ),
    (LatchOutcome.LATCHED_NO_BINDING, BindOutcome.NOT_ATTEMPTED): Decision(
        _FB,
        _FB,
        keep_latch=True,
        destroy_context=False,
        warn=False,
        reason="latched to a peer without binding data (NULL auth): GSS protection over the latch",
    ),
    (LatchOutcome.NOT_LATCHED, BindOutcome.NOT_ATTEMPTED): Decision(
        _FB,
        _FB,
        keep_latch=False,
        destroy_context=False,
        warn=False,
        reason="IPsec unavailable: BYPASS for this 5-tuple, GSS protection as configured",
    ),
}


def decide(latch: LatchOutcome, bind: BindOutcome) -> Decision:
    """Look the pair up in :data:`POLICY`."""
    try:
        return POLICY[(latch, bind)]
    except KeyError:
        raise ValueError(f"no policy row for ({latch.name}, {bind.name})") from None


def should_bind(latch: LatchOutcome) -> bool:
    """RFC 5403 §3.3: bind only when the latch offers binding data."""
    return latch.binding_available


class BreakDisposition(StrEnum):
    """What the client does on ALERT BROKEN (RFC 5660 §5.5)."""

    RESET = "reset"  # (b), the RECOMMENDED default for TCP: the RPC connection is reset
    WAIT = "wait"  # (a): hold calls until the latch is ESTABLISHED again (timeouts still apply)


@dataclass(frozen=True, slots=True)
class ConnectPolicy:
    """The knobs of BYPASS-OR-PROTECT for one client.

    ``ike_timeout``: how long to wait for the latch (IKE + child SAs) before reconnecting without
    IPsec (the application, not IPsec, decides what an IKE timeout means). ``btns_ok``: accept unauthenticated
    (BTNS / raw public key / NULL auth) peers (RFC 5386). ``require_binding``: refuse to run
    unbound (no fallback) -- off by default, since the fallback is still krb5i/krb5p.
    ``fallback``: the GSS service used whenever the table says "configured" (and asked for on a
    bound channel, where it decides between channel_prot and krb5p on a non-encrypting latch).
    """

    port: int = 2049
    fallback: FallbackService = FallbackService.PRIVACY
    ike_timeout: float = 5.0
    btns_ok: bool = True
    try_ipsec: bool = True
    require_binding: bool = False
    on_break: BreakDisposition = BreakDisposition.RESET
    max_reconnects: int = 3
