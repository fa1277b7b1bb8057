"""Fixtures for the interop suite against the real Linux kernel NFS server in User-Mode Linux.

``nfsd_guest`` boots one guest per test session (about 12 s) and tears it down at the end, also on
failure or Ctrl-C. Tests skip with the reason when the machine cannot run it (not root, no
/dev/net/tun, no linux.uml). ``RPCLATCH_INTEROP_RUN_DIR`` (set by ``interop/run``) chooses where
the guest's logs and captures go; by default ``runs/interop/<time>-<pid>/``.
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

from interop.uml import LinuxNfsdGuest, host_kernel_gaps, missing_requirements  # noqa: E402


@pytest.fixture(scope="session")
def nfsd_guest() -> Iterator[LinuxNfsdGuest]:
    missing = missing_requirements()
    if missing:
        # the host kernel cannot stand in either: its network-namespace mode is not implemented
        host = "; ".join(host_kernel_gaps()) or "host kernel has nfsd and esp4 but it is not implemented"
        pytest.skip("Linux nfsd guest cannot run here: " + "; ".join(missing)
                    + f" (and no host-kernel mode: {host})")
    base = os.environ.get("RPCLATCH_INTEROP_RUN_DIR")
    run_dir = Path(base) / "guest" if base else None
    with LinuxNfsdGuest(run_dir=run_dir) as guest:
        yield guest
