"""Human and machine renderings of a demo run: a fixed-width verdict table and JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence

from rpclatch.demo.model import RunResult, ScenarioResult, Verdict

COLUMNS = (
    "#",
    "scenario",
    "latched?",
    "peer",
    "binding",
    "GSS service",
    "attacker bytes (payload read)",
    "outcome",
)


def _row(r: ScenarioResult) -> tuple[str, ...]:
    attacker = f"{r.attacker_bytes} ({r.attacker_plaintext} read)"
    return (r.label, r.title, r.latched, r.peer, r.binding, r.gss_service, attacker, r.verdict.value)


def render_table(results: Sequence[ScenarioResult]) -> str:
    """A plain-text table, one line per scenario, columns sized to their content."""
    rows = [COLUMNS, *(_row(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_failures(results: Sequence[ScenarioResult]) -> str:
    """The failed checks (and errors) of failed scenarios, or an empty string."""
    out = []
    for r in results:
        if r.verdict is Verdict.PASS:
            continue
        if r.error is not None:
            out.append(f"scenario {r.label} ({r.name}): error: {r.error}")
        out.extend(
            f"scenario {r.label} ({r.name}): check '{c.name}' failed: {c.detail}"
            for c in r.checks
            if not c.passed
        )
        if not r.checks and r.error is None:
            out.append(f"scenario {r.label} ({r.name}): no checks ran")
    return "\n".join(out)


def render_text(run: RunResult) -> str:
    where = "TCB (RFC 5660 §2.4)" if run.approach == 1 else "latch database (RFC 5660 §2.3)"
    parts = [
        f"rpclatch demo: world={run.world}, approach {run.approach} (latches in the {where}), "
        f"realm={run.realm}",
        "",
        render_table(run.results),
        "",
    ]
    for r in run.results:
        parts.append(f"  [{r.label}] {r.reason}")
    failures = render_failures(run.results)
    if failures:
        parts += ["", failures]
    verdict = "all scenarios behaved as expected" if run.passed else "SOME SCENARIOS FAILED"
    parts += ["", f"{verdict} ({run.seconds:.1f} s); run directory: {run.run_dir}"]
    return "\n".join(parts)


def render_json(run: RunResult) -> str:
    return json.dumps(run.to_json(), indent=2, sort_keys=False)
