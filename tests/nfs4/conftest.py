"""A real Linux nfsd for the client tests: the interop harness's world (UML guest, or network
namespaces on a host kernel with nfsd and esp4; see interop.choose).

One world per test session; tests skip with the reason when the machine can run neither.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from interop.choose import choose_world  # noqa: E402
from interop.world import GuestConfig, NfsdWorld  # noqa: E402


@pytest.fixture(scope="session")
def nfsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NfsdWorld]:
    choice = choose_world()
    if choice.missing:
        pytest.skip(
            f"Linux nfsd world cannot run here: {choice.reason}; missing: " + "; ".join(choice.missing)
        )
    run_dir = tmp_path_factory.mktemp("nfsd-guest")
    with choice.cls(GuestConfig(esp=False, capture=False), run_dir=run_dir) as guest:
        yield guest
