"""The case registry: every case's spec and coroutine, selected by id or group.

Case modules register with :func:`case`; :func:`all_cases` imports them (in table order) and
:func:`select` picks a subset (:class:`UnknownCase` for an id or group that names none).
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from rpclatch.conformance.model import CaseSpec, Finding, Group, Level
from rpclatch.conformance.probe import Session

CaseFn = Callable[[Session], Awaitable[Finding]]

#: The modules defining cases, in the order of the report.
CASE_MODULES = (
    "rpclatch.conformance.cases_rfc2203",
    "rpclatch.conformance.cases_rfc5403",
    "rpclatch.conformance.cases_robustness",
)


@dataclass(frozen=True, slots=True)
class Case:
    """A case: its spec and the coroutine that probes, or ``omit``: why it never runs here."""

    spec: CaseSpec
    run: CaseFn | None
    omit: str = ""


_CASES: dict[str, Case] = {}


class UnknownCase(ValueError):
    """A ``--case`` id or ``--group`` names no case."""


def case(
    id: str, group: Group, section: str, level: Level, title: str, *, sends: str, expects: str
) -> Callable[[CaseFn], CaseFn]:
    """Register the decorated coroutine as case ``id``."""

    def register(fn: CaseFn) -> CaseFn:
        add(Case(CaseSpec(id, group, section, level, title, sends, expects), fn))
        return fn

    return register


def add(c: Case) -> None:
    if not c.spec.id.startswith(c.spec.group.prefix + "-"):
        raise ValueError(f"case id {c.spec.id} does not belong to group {c.spec.group.prefix}")
    if c.spec.id in _CASES:
        raise ValueError(f"duplicate case id {c.spec.id}")
    _CASES[c.spec.id] = c


def all_cases() -> list[Case]:
    """Every case, in report order (by group, then id)."""
    for name in CASE_MODULES:
        importlib.import_module(name)
    order = list(Group)
    return sorted(_CASES.values(), key=lambda c: (order.index(c.spec.group), c.spec.id))


def select(ids: Iterable[str] = (), groups: Iterable[str] = ()) -> list[Case]:
    """The cases named by ``ids`` and the cases of ``groups`` (case-insensitive), in report
    order; every case if both are empty."""
    cases = all_cases()
    by_id = {c.spec.id: c for c in cases}
    wanted_ids = {i.upper() for i in ids}
    wanted_groups = {g.upper() for g in groups}
    for i in sorted(wanted_ids):
        if i not in by_id:
            raise UnknownCase(f"unknown case {i!r} (see --list)")
    prefixes = {g.prefix for g in Group}
    for g in sorted(wanted_groups):
        if g not in prefixes:
            raise UnknownCase(f"unknown group {g!r} (choose from {', '.join(sorted(prefixes))})")
    if not wanted_ids and not wanted_groups:
        return cases
    return [c for c in cases if c.spec.id in wanted_ids or c.spec.group.prefix in wanted_groups]
