"""``connection.security``: the inspectable outcome of one connection's BYPASS-OR-PROTECT run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rpclatch.connect.policy import BindOutcome, LatchOutcome
from rpclatch.gss.wire import Service
from rpclatch.ipsec.latch import LatchState


def latch_state_name(state: LatchState | None) -> str:
    """A latch state in words for reports and JSON: its RFC 5660 §2.2 name, or ``none`` for no latch."""
    return "none" if state is None else state.value


@dataclass(frozen=True, slots=True)
class SecurityRecord:
    """What protects a connection, and why (a frozen snapshot; a new one replaces it on change).

    ``latched``: the connection has an ESTABLISHED latch (RFC 5660 §2.2). ``latch_state`` is the
    state last seen (ESTABLISHED, BROKEN, CLOSED, ...), or None if the connection had no latch.
    ``peer``: the latched peer identity (RFC 5660 §2.1 peer ID: e.g. the SPKI fingerprint of a
    BTNS peer) or None. ``qop``: the latch's quality of protection in words. ``bound``:
    RPCSEC_GSS_BIND_CHANNEL succeeded on this connection (RFC 5403 §3.3). ``gss_service``: the
    service DATA calls use (by its :attr:`~rpclatch.gss.wire.Service.sec_name` in the summary and
    JSON).
    ``reason``: why (one sentence from the policy table). ``warnings``: loud events (a failed bind).
    ``bind_detail``: what made BIND_CHANNEL fail, as the RPCSEC_GSS layer reported it, or None.
    """

    conn_id: int
    generation: int
    five_tuple: str
    latched: bool
    latch_state: LatchState | None
    peer: str | None
    qop: str | None
    latch_outcome: LatchOutcome
    bind_outcome: BindOutcome
    bound: bool
    gss_service: Service
    gss_version: int
    reason: str
    warnings: tuple[str, ...] = ()
    protection_error: str | None = None
    bind_detail: str | None = None

    def summary(self) -> str:
        latch = f"latched to {self.peer or '?'} ({self.qop or 'qop ?'})" if self.latched else "not latched"
        bound = "bound" if self.bound else "unbound"
        return f"conn {self.conn_id}: {latch}, {bound}, {self.gss_service.sec_name}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (enums by name, the GSS service by its sec_name)."""
        return {
            "conn_id": self.conn_id,
            "generation": self.generation,
            "five_tuple": self.five_tuple,
            "latched": self.latched,
            "latch_state": latch_state_name(self.latch_state),
            "peer": self.peer,
            "qop": self.qop,
            "latch_outcome": self.latch_outcome.name,
            "bind_outcome": self.bind_outcome.name,
            "bound": self.bound,
            "gss_service": self.gss_service.sec_name,
            "gss_version": self.gss_version,
            "reason": self.reason,
            "warnings": list(self.warnings),
            "protection_error": self.protection_error,
            "bind_detail": self.bind_detail,
        }
