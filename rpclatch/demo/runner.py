"""Runs the demo: one throwaway Kerberos realm, the chosen scenarios in the sim world (each on its
testbed on the simulated network), the artefacts in the run directory, a :class:`RunResult` for
the report."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from rpclatch.demo.model import RunResult, ScenarioResult
from rpclatch.demo.scenarios import SCENARIOS, timed
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.ipsec.engine import Approach


def run_demo(
    run_dir: Path,
    numbers: Sequence[int] | None = None,
    progress: TextIO | None = None,
    realm: ThrowawayRealm | None = None,
    approach: Approach = Approach.POLICY,
) -> RunResult:
    """Run scenarios ``numbers`` (default: all) into ``run_dir`` with latches held per ``approach``
    (1: in the TCB; 2: in the latch database, the default). With ``realm`` None a throwaway realm
    is started (and stopped again, also on failure); otherwise the given, activated realm is used."""
    t0 = time.monotonic()
    chosen = [s for s in SCENARIOS if numbers is None or s.number in numbers]
    own = realm is None
    active = realm if realm is not None else ThrowawayRealm(("alice",), service="nfs")
    results: list[ScenarioResult] = []
    try:
        if own:
            if progress is not None:
                print("starting a throwaway Kerberos realm ...", file=progress, flush=True)
            active.start()
            active.activate()
        for spec in chosen:
            result, seconds = timed(spec, active, run_dir, approach)
            results.append(result)
            if progress is not None:
                print(
                    f"[{spec.label}] {spec.title} ... {result.verdict.value} ({seconds:.2f} s)",
                    file=progress,
                    flush=True,
                )
        realm_name = active.realm
    finally:
        if own:
            active.stop()
    return RunResult("sim", str(run_dir), realm_name, tuple(results), time.monotonic() - t0, approach.value)
