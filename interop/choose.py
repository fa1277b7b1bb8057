"""Which nfsd world the interop suite runs against on this machine, and why.

``RPCLATCH_INTEROP_WORLD`` (or the ``kind`` argument) asks for ``uml``, ``netns`` or ``auto`` (the
default): the host-kernel world (:class:`interop.hostkernel.HostKernelNfsd`, network namespaces)
where the host kernel has nfsd and esp4 and the tools are there, else the User-Mode Linux guest
(:class:`interop.uml.LinuxNfsdGuest`). Both run the same suite through the same API.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from interop import hostkernel, uml
from interop.world import GuestConfig, NfsdWorld, Progress

WORLD_ENV = "RPCLATCH_INTEROP_WORLD"
KINDS = ("auto", "uml", "netns")
#: The worlds by kind.
WORLDS: dict[str, type[NfsdWorld]] = {"uml": uml.LinuxNfsdGuest, "netns": hostkernel.HostKernelNfsd}


class WorldChoiceError(ValueError):
    """``RPCLATCH_INTEROP_WORLD`` names no world."""


@dataclass(frozen=True)
class WorldChoice:
    """The world picked, why (one line), and what this machine lacks for it (empty: it can run)."""

    cls: type[NfsdWorld]
    reason: str
    missing: tuple[str, ...]

    @property
    def kind(self) -> str:
        return self.cls.kind


def choose_world(kind: str | None = None) -> WorldChoice:
    """Pick the world for ``kind`` (default: ``$RPCLATCH_INTEROP_WORLD``, else ``auto``)."""
    asked = (kind or os.environ.get(WORLD_ENV) or "auto").strip().lower()
    if asked not in KINDS:
        raise WorldChoiceError(f"{WORLD_ENV}={asked!r} is not a world; use one of {', '.join(KINDS)}")
    netns_missing = hostkernel.missing_requirements()
    if asked == "netns" or (asked == "auto" and not netns_missing):
        why = "asked for" if asked == "netns" else "the host kernel has nfsd and esp4"
        return WorldChoice(
            WORLDS["netns"], f"network namespaces on the host kernel ({why})", tuple(netns_missing)
        )
    uml_missing = uml.missing_requirements()
    if asked == "uml":
        why = "asked for"
    else:
        why = "the host-kernel mode cannot run here: " + "; ".join(netns_missing)
    return WorldChoice(WORLDS["uml"], f"User-Mode Linux ({why})", tuple(uml_missing))


def open_world(
    config: GuestConfig | None = None,
    run_dir: Path | str | None = None,
    progress: Progress | None = None,
    kind: str | None = None,
) -> NfsdWorld:
    """A not yet started world of the chosen kind (``with open_world(...) as world:`` starts it)."""
    return choose_world(kind).cls(config, run_dir, progress)
