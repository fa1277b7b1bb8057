"""A real Linux nfsd (kernel, in User-Mode Linux; H5's interop harness) for the client tests.

One guest per test session; tests skip with the reason when the machine cannot run it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from interop.uml import GuestConfig, LinuxNfsdGuest, missing_requirements  # noqa: E402


@pytest.fixture(scope="session")
def nfsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LinuxNfsdGuest]:
    missing = missing_requirements()
    if missing:
        pytest.skip("Linux nfsd guest cannot run here: " + "; ".join(missing))
    run_dir = tmp_path_factory.mktemp("nfsd-guest")
    with LinuxNfsdGuest(GuestConfig(esp=False, capture=False), run_dir=run_dir) as guest:
        yield guest
