"""Fixtures for the interop suite against the real Linux kernel NFS server.

``nfsd_guest`` brings up one nfsd world per test session and tears it down at the end, also on
failure or Ctrl-C: network namespaces on the host kernel where it has nfsd and esp4, else a
User-Mode Linux guest (``RPCLATCH_INTEROP_WORLD=uml|netns|auto`` overrides, see
:mod:`interop.choose`). Tests skip with the reason when the machine can run neither (not root, no
/dev/net/tun, no linux.uml, ...). ``RPCLATCH_INTEROP_RUN_DIR`` (set by ``interop/run``) chooses
where the world's logs and captures go; by default ``runs/interop/<time>-<pid>/``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from interop.choose import choose_world  # noqa: E402
from interop.world import NfsdWorld  # noqa: E402


@pytest.fixture(scope="session")
def nfsd_guest() -> Iterator[NfsdWorld]:
    choice = choose_world()
    if choice.missing:
        pytest.skip(
            f"Linux nfsd world cannot run here: {choice.reason}; missing: " + "; ".join(choice.missing)
        )
    base = os.environ.get("RPCLATCH_INTEROP_RUN_DIR")
    run_dir = Path(base) / "guest" if base else None
    with choice.cls(run_dir=run_dir) as world:
        yield world
