"""The conformance case model: requirement levels, outcomes, what each case sent, expected and got.

A case's outcome is one of :class:`Outcome`; only a MUST can FAIL (a SHOULD that is not met is a
WARN), so a run's exit code -- nonzero iff a MUST failed -- is :attr:`Report.must_failed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Level(Enum):
    """The requirement's key word (RFC 2119); RFC 2203 predates it, so its "will reject" and
    "silently discarded" are read as MUST where a security property depends on them."""

    MUST = "MUST"
    SHOULD = "SHOULD"


class Outcome(Enum):
    """What a case found."""

    PASS = "PASS"
    FAIL = "FAIL"  # a MUST was not met
    WARN = "WARN"  # a SHOULD was not met, or the server refused in another way than the RFC names
    NOT_SUPPORTED = "NOT-SUPPORTED"  # the server lacks the feature (a finding, not a failure)
    OMIT = "OMIT"  # the run lacks what the case needs (a channel, a context)


class Group(Enum):
    """Case groups: the id prefix, the standard and its title (the table's sections)."""

    GSS = ("GSS", "RFC 2203", "RPCSEC_GSS protocol specification")
    CB = ("CB", "RFC 5403", "RPCSEC_GSS version 2 and channel binding")
    ROB = ("ROB", "RFC 5531", "robustness of the record-marked stream and the credential")

    @property
    def prefix(self) -> str:
        return self.value[0]

    @property
    def rfc(self) -> str:
        return self.value[1]

    @property
    def title(self) -> str:
        return self.value[2]


@dataclass(frozen=True, slots=True)
class CaseSpec:
    """What a case checks: ``id`` (GSS-nn, CB-nn, ROB-nn), its RFC ``section``, the requirement
    ``level``, a one-line ``title``, what it ``sends`` and what the standard ``expects``."""

    id: str
    group: Group
    section: str
    level: Level
    title: str
    sends: str
    expects: str


@dataclass(frozen=True, slots=True)
class Finding:
    """What a case function observed: its outcome, a one-line reason and what came back."""

    outcome: Outcome
    reason: str
    got: str = ""


@dataclass(frozen=True, slots=True)
class CaseResult:
    """A case's spec and finding, the outcome adjusted to the level (a SHOULD never FAILs)."""

    spec: CaseSpec
    outcome: Outcome
    reason: str
    got: str = ""

    @classmethod
    def of(cls, spec: CaseSpec, finding: Finding) -> CaseResult:
        outcome = finding.outcome
        if outcome is Outcome.FAIL and spec.level is Level.SHOULD:
            outcome = Outcome.WARN
        return cls(spec, outcome, finding.reason, finding.got)

    def to_json(self) -> dict[str, str]:
        s = self.spec
        return {
            "id": s.id,
            "group": s.group.prefix,
            "rfc": s.group.rfc,
            "section": s.section,
            "level": s.level.value,
            "title": s.title,
            "sent": s.sends,
            "expected": s.expects,
            "got": self.got,
            "outcome": self.outcome.value,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class Report:
    """One run: the server probed (over ``proto``, "tcp" or "udp") and every selected case's
    result, in run order."""

    server: str
    prog: int
    vers: int
    proc: int
    target: str
    service: str
    results: tuple[CaseResult, ...] = field(default_factory=tuple)
    proto: str = "tcp"

    @property
    def must_failed(self) -> bool:
        return any(r.outcome is Outcome.FAIL for r in self.results)

    @property
    def exit_code(self) -> int:
        """0 unless a MUST failed (then 1)."""
        return 1 if self.must_failed else 0

    def counts(self) -> dict[str, int]:
        out = {o.value: 0 for o in Outcome}
        for r in self.results:
            out[r.outcome.value] += 1
        return out

    def by_id(self) -> dict[str, CaseResult]:
        return {r.spec.id: r for r in self.results}
