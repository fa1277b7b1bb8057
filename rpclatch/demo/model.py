"""The demo's result model: what a scenario observed, the checks computed from it, and its verdict.

Nothing here decides an outcome by itself: a :class:`ScenarioResult` is PASS only when every
:class:`Check` (each computed by a scenario from the wire capture, the latch states at both ends and
the RPCSEC_GSS service seen on the wire) passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Verdict(StrEnum):
    """A scenario's verdict: PASS when it has checks and every one passed, else FAIL."""

    PASS = "PASS"
    FAIL = "FAIL"


class EventKind(StrEnum):
    """What a sequence-diagram arrow or note stands for (it picks the colour)."""

    ESP = "esp"  # a packet protected by ESP
    CLEAR = "clear"  # a cleartext packet (TCP segment, RPC in the clear)
    IKE = "ike"  # key exchange / SA installation
    RPC = "rpc"  # an RPC message (as the RPC layer saw it)
    DROP = "drop"  # a packet dropped (by latch enforcement, policy or the attacker)
    ATTACK = "attack"  # something the attacker did
    STATE = "state"  # a latch / connection state change (drawn as a note on one lane)
    POLICY = "policy"  # a decision of the connect policy (drawn as a note)
    WARNING = "warning"  # a loud policy warning (BIND_CHANNEL failed, ...)


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One line of a scenario's event trace: an arrow ``src -> dst`` or a note on lane ``src``."""

    t: float
    kind: EventKind
    src: str
    dst: str | None
    label: str
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "t": round(self.t, 6),
            "kind": self.kind.value,
            "src": self.src,
            "dst": self.dst,
            "label": self.label,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Check:
    """One expectation a scenario verified against what actually happened."""

    name: str
    passed: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    """What one scenario observed, and its verdict (derived from ``checks``)."""

    number: int
    name: str
    title: str
    latched: str  # e.g. "yes/yes" (client/server), "no", "broken"
    peer: str  # the peer identity the client latched to, or "-"
    binding: str  # "bound", "failed", "unavailable", "not tried", ...
    gss_service: str  # the service seen on the wire for DATA calls ("channel_prot", "krb5p", ...)
    attacker_bytes: int  # bytes of the protected flow that reached the attacker (ciphertext counts)
    attacker_plaintext: int  # payload bytes the attacker could read in the clear (must be 0)
    checks: tuple[Check, ...]
    events: tuple[TraceEvent, ...] = ()
    files: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    error: str | None = None
    security: tuple[dict[str, Any], ...] = ()  # every connection.security record, in order
    variant: str = ""  # "a".."d" for the variants of one scenario (scenario 6), else ""

    @property
    def label(self) -> str:
        """The row's name in the table: the number, plus the variant letter if any (``6a``)."""
        return f"{self.number}{self.variant}"

    @property
    def verdict(self) -> Verdict:
        if self.error is not None or not self.checks:
            return Verdict.FAIL
        return Verdict.PASS if all(c.passed for c in self.checks) else Verdict.FAIL

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "variant": self.variant,
            "label": self.label,
            "name": self.name,
            "title": self.title,
            "latched": self.latched,
            "peer": self.peer,
            "binding": self.binding,
            "gss_service": self.gss_service,
            "attacker_bytes": self.attacker_bytes,
            "attacker_plaintext_bytes": self.attacker_plaintext,
            "outcome": self.verdict.value,
            "reason": self.reason,
            "error": self.error,
            "checks": [c.to_json() for c in self.checks],
            "files": dict(self.files),
            "events": len(self.events),
            "security": list(self.security),
        }


@dataclass(frozen=True, slots=True)
class RunResult:
    """A whole ``rpclatch demo`` run."""

    world: str
    run_dir: str
    realm: str
    results: tuple[ScenarioResult, ...]
    seconds: float
    approach: int = 2  # where latches live: 1 = in the TCB (RFC 5660 §2.4), 2 = in the LD (§2.3)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.verdict is Verdict.PASS for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {
            "world": self.world,
            "approach": self.approach,
            "run_dir": self.run_dir,
            "realm": self.realm,
            "seconds": round(self.seconds, 3),
            "passed": self.passed,
            "scenarios": [r.to_json() for r in self.results],
        }
