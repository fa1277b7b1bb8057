"""The interop suite in the network-namespace world, on a kernel that has nfsd and esp4.

The issue asks that on a host whose own kernel has nfsd and esp4 the same suite runs in network
namespaces instead of UML. This machine's kernel has neither, so the test makes such a host: a
User-Mode Linux guest (:mod:`interop.capable_host`) that loads nfsd and esp4 and nothing else, and
runs ``interop/run --world netns`` in it. Inside, :class:`interop.hostkernel.HostKernelNfsd` builds
the world from scratch (server netns + veth, PID/mount/UTS namespaces, KDC, gssproxy, nfsdcld,
nfsd, ESP between two namespaces) and the whole suite runs against it. Where the host kernel itself
can run the netns world, the suite's own fixtures already use it and this test is skipped.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from interop import uml
from interop.capable_host import CapableHost
from interop.choose import choose_world
from interop.world import REPO_ROOT


def _run_dir() -> Path:
    base = os.environ.get("RPCLATCH_INTEROP_RUN_DIR")
    root = Path(base) if base else REPO_ROOT / "runs" / "interop"
    return root / f"netns-world-{os.getpid()}-{time.time_ns()}"


@pytest.mark.uml
@pytest.mark.root
@pytest.mark.timeout(3000)
def test_whole_suite_passes_in_the_netns_world_on_a_kernel_with_nfsd_and_esp4() -> None:
    if choose_world().kind == "netns":
        pytest.skip("this host's kernel runs the netns world itself: the suite's fixtures use it directly")
    missing = uml.missing_requirements()
    if missing:
        pytest.skip("no kernel with nfsd and esp4 to run the netns world on: " + "; ".join(missing))
    run_dir = _run_dir()
    host = CapableHost(run_dir)
    suite = run_dir / "suite"
    result = host.run(
        [sys.executable, "-m", "interop.runner", "--world", "netns", "--run-dir", host.guest_path(suite)],
        env={
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONPATH": str(REPO_ROOT),
            "HYPOTHESIS_STORAGE_DIRECTORY": "/tmp/hypothesis",
        },
        timeout=2700,
    )
    tail = result.log[-4000:]
    assert result.returncode == 0, f"suite in the netns world failed (exit {result.returncode}):\n{tail}"
    assert "interop: world: network namespaces on the host kernel (asked for)" in result.log
    cases = json.loads((suite / "results.json").read_text())
    outcomes = {c["outcome"] for c in cases}
    assert outcomes <= {"passed", "skipped"}, tail
    passed = [c for c in cases if c["outcome"] == "passed"]
    skipped = [c for c in cases if c["outcome"] == "skipped"]
    # only what needs a UML guest is skipped inside (UML does not nest): the UML variants of the
    # harness tests, the IKE peer and keyd tests (their own UML guest), and this test itself (the
    # world there is netns already)
    assert all(
        c["name"].endswith(("-uml]", "[uml]"))
        or c["name"].startswith(("test_netns_world::", "test_ike_peers::", "test_keyd_guest::"))
        for c in skipped
    ), skipped
    assert len(passed) >= 60, f"only {len(passed)} passed"
    for name in (
        "test_linux_nfsd_nfs4_esp",
        "test_linux_nfsd_gss",
        "test_linux_nfsd_faults",
        "test_linux_nfsd_kernel_client",
        "test_xfrm_guest",
    ):
        assert any(c["name"].startswith(name) for c in passed), f"nothing of {name} passed"
    console = (suite / "guest" / "console.log").read_text(errors="replace")
    assert "init (netns world)" in console and "nfsd up" in console
