"""Security Policy Database (RFC 4301 §4.4.1) with RFC 5386 BTNS_OK and two extensions.

- The *configured* SPD is an ordered list of :class:`SpdEntry`; first match wins (RFC 4301
  §4.4.1). No match means DISCARD (an SPD SHOULD end with a discard-all entry; we act as if it did).
- The *logical overlay* holds per-5-tuple entries that sit logically at the head of SPD-S
  (RFC 5660 §2.3 "logical SPD update", §3.1 optional protection) and the per-flow clones of
  BYPASS-OR-PROTECT templates. The overlay is volatile by construction: :meth:`clear_volatile`
  is called on every key-manager restart, and nothing here is ever persisted (RFC 5660 §2.3: such
  entries MUST NOT survive crashes or reboots).
- :attr:`SpdAction.BYPASS_OR_PROTECT` is the project's SPD extension (docs/design.md,
  BYPASS-OR-PROTECT; RFC 5660 §3.1 optional protection; libreswan's private-or-clear): the entry is a
  *template*; each flow that matches it gets its own PROTECT or BYPASS clone in the overlay, decided
  by how its first packet arrived (inbound) or by what the application asked for (outbound).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from rpclatch.ipsec.model import FiveTuple, ProtectionParams, ProtectionPolicy, Selector


class SpdAction(Enum):
    PROTECT = "protect"
    BYPASS = "bypass"
    DISCARD = "discard"
    #: project extension: a template whose per-flow clones are PROTECT or BYPASS
    BYPASS_OR_PROTECT = "bypass-or-protect"


class EntryOrigin(Enum):
    """Where an SPD entry came from."""

    CONFIGURED = "configured"
    #: RFC 5660 §2.3 optional "logical SPD update" keeping a latched flow protected
    PINNED_LATCH = "pinned-latch"
    #: RFC 5660 §3.1 optional protection / privileged bypass requested by an application
    APPLICATION_REQUEST = "application-request"
    #: per-flow clone of a BYPASS_OR_PROTECT template
    TEMPLATE_CLONE = "template-clone"
    #: approach 1: a TCB latch broke; its exact 5-tuple is DISCARDed until the flow's hold ends
    #: (RFC 5660 §2.3: while BROKEN drop input and send nothing -- also the stack's own RSTs)
    BROKEN_LATCH = "broken-latch"


@dataclass(frozen=True, slots=True)
class SpdEntry:
    """One SPD entry (RFC 4301 §4.4.1.2).

    ``protection`` is required for PROTECT and BYPASS_OR_PROTECT (what "protect" means there) and
    must be None otherwise. ``btns_ok`` is RFC 5386 §2's flag: traffic with BTNS peers matches only
    entries that set it. ``template`` names the template an overlay clone was made from.
    """

    name: str
    selectors: tuple[Selector, ...]
    action: SpdAction
    protection: ProtectionPolicy | None = None
    btns_ok: bool = False
    origin: EntryOrigin = EntryOrigin.CONFIGURED
    template: str | None = None

    def __post_init__(self) -> None:
        needs = self.action in (SpdAction.PROTECT, SpdAction.BYPASS_OR_PROTECT)
        if needs and self.protection is None:
            raise ValueError(f"SPD entry {self.name!r}: {self.action.value} needs a ProtectionPolicy")
        if not needs and self.protection is not None:
            raise ValueError(f"SPD entry {self.name!r}: {self.action.value} takes no ProtectionPolicy")
        if not self.selectors:
            raise ValueError(f"SPD entry {self.name!r} has no selectors")

    def matches(self, flow: FiveTuple) -> bool:
        for sel in self.selectors:  # noqa: SIM110 - per-packet path, a loop beats any()
            if sel.matches(flow):
                return True
        return False

    def admits(self, params: ProtectionParams) -> bool:
        """True if an SA with ``params`` satisfies this entry (PROTECT-like entries only)."""
        return self.protection is not None and self.protection.admits(params)

    @classmethod
    def flow_entry(
        cls,
        flow: FiveTuple,
        action: SpdAction,
        protection: ProtectionPolicy | None,
        origin: EntryOrigin,
        *,
        btns_ok: bool = False,
        template: str | None = None,
    ) -> SpdEntry:
        """An exact-5-tuple overlay entry."""
        return cls(
            f"{origin.value}:{flow}",
            (Selector.for_flow(flow),),
            action,
            protection,
            btns_ok,
            origin,
            template,
        )


_CACHE_LIMIT = 1 << 16


@dataclass
class SecurityPolicyDatabase:
    """Ordered configured entries + the volatile per-5-tuple overlay (see module docstring)."""

    _entries: list[SpdEntry] = field(default_factory=list)
    _overlay: dict[FiveTuple, SpdEntry] = field(default_factory=dict)
    _cache: dict[tuple[FiveTuple, bool], SpdEntry | None] = field(default_factory=dict)
    generation: int = 0
    #: bumped on every change of configured or overlay entries (lets per-flow caches stay valid)
    version: int = 0

    def __init__(self, entries: Iterable[SpdEntry] = ()) -> None:
        self._entries = list(entries)
        self._overlay = {}
        self._cache = {}
        self.generation = 0
        self.version = 0
        self._check_names()

    # -- configured entries ------------------------------------------------------------------

    @property
    def entries(self) -> tuple[SpdEntry, ...]:
        return tuple(self._entries)

    def replace_entries(self, entries: Iterable[SpdEntry]) -> None:
        """Administrative SPD change. Callers must let the latch DB re-check live latches
        (``IPsecEngine.update_spd`` does): RFC 5660 §2.3."""
        previous, self._entries = self._entries, list(entries)
        try:
            self._check_names()
        except ValueError:
            self._entries = previous  # refused: the SPD stays as it was
            raise
        self._cache.clear()
        self.generation += 1
        self.version += 1

    def _check_names(self) -> None:
        names = [e.name for e in self._entries]
        if len(names) != len(set(names)):
            raise ValueError("SPD entry names must be unique")
        for e in self._entries:
            if e.origin is not EntryOrigin.CONFIGURED:
                raise ValueError(f"SPD entry {e.name!r}: configured entries must have origin CONFIGURED")

    def lookup_configured(self, flow: FiveTuple, *, btns_peer: bool = False) -> SpdEntry | None:
        """First configured entry matching ``flow`` (None means no entry: DISCARD).

        ``btns_peer`` is accepted for callers that know the peer; the BTNS_OK rule (RFC 5386 §2)
        is enforced by the caller on the entry found: traffic with a BTNS peer that meets a
        PROTECT entry without BTNS_OK is refused, never matched against later entries (a later
        BYPASS must not admit it)."""
        key = (flow, False)
        try:
            return self._cache[key]
        except KeyError:
            pass
        found: SpdEntry | None = None
        for entry in self._entries:
            if entry.matches(flow):
                found = entry
                break
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = found
        return found

    def lookup(self, flow: FiveTuple, *, btns_peer: bool = False) -> SpdEntry | None:
        """The entry governing ``flow``: its overlay entry if any, else the configured lookup."""
        entry = self._overlay.get(flow)
        if entry is not None:
            return entry
        return self.lookup_configured(flow, btns_peer=btns_peer)

    # -- overlay -----------------------------------------------------------------------------

    def overlay_entry(self, flow: FiveTuple) -> SpdEntry | None:
        return self._overlay.get(flow)

    def install_overlay(self, flow: FiveTuple, entry: SpdEntry) -> None:
        if entry.origin is EntryOrigin.CONFIGURED:
            raise ValueError("overlay entries must not have origin CONFIGURED")
        if not entry.matches(flow):
            raise ValueError(f"overlay entry {entry.name!r} does not match {flow}")
        self._overlay[flow] = entry
        self.version += 1

    def remove_overlay(self, flow: FiveTuple) -> SpdEntry | None:
        entry = self._overlay.pop(flow, None)
        if entry is not None:
            self.version += 1
        return entry

    def overlay_entries(self) -> dict[FiveTuple, SpdEntry]:
        return dict(self._overlay)

    def clear_volatile(self) -> None:
        """Forget every overlay entry (key-manager restart / reboot, RFC 5660 §2.3, §3.1)."""
        self._overlay.clear()
        self.version += 1
