"""The demo's run directory: one per run, named after the time, holding every artefact."""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path


def default_run_dir(base: Path | None = None, now: _dt.datetime | None = None) -> Path:
    """``./runs/demo-YYYYmmdd-HHMMSS`` (with ``-2``, ``-3``... if that already exists)."""
    base = base if base is not None else Path.cwd() / "runs"
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    candidate = base / f"demo-{stamp}"
    n = 2
    while candidate.exists():
        candidate = base / f"demo-{stamp}-{n}"
        n += 1
    return candidate


def prepare_run_dir(out: str | None) -> Path:
    """Create the run directory (``out`` or the default) and return its absolute path.

    Raises ``OSError`` (with the path in the message) when it cannot be created or is a file.
    """
    path = Path(out) if out else default_run_dir()
    path = path.expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    return path


def slug(text: str) -> str:
    """A file-name-safe version of a scenario name."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "scenario"
