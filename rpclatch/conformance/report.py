"""The run's output: a table grouped by RFC (people), JSON and JUnit XML (CI systems)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from rpclatch.conformance.model import Group, Outcome, Report
from rpclatch.conformance.registry import Case


def _header(report: Report) -> str:
    return (
        f"rpclatch conformance: {report.server} over {report.proto} program {report.prog} "
        f"version {report.vers} procedure {report.proc}, target {report.target}, service {report.service}"
    )


def table(report: Report) -> str:
    """One section per RFC; per case: id, outcome, level, section, title and the reason."""
    lines = [_header(report)]
    w = max((len(r.spec.section) for r in report.results), default=8)
    for group in Group:
        rows = [r for r in report.results if r.spec.group is group]
        if not rows:
            continue
        lines.append("")
        lines.append(f"{group.rfc}: {group.title}")
        for r in rows:
            s = r.spec
            lines.append(f"  {s.id:<7} {r.outcome.value:<13} {s.level.value:<6} {s.section:<{w}}  {s.title}")
            lines.append(f"  {'':<{30 + w}} -> {r.reason}")
    counts = report.counts()
    lines.append("")
    lines.append("  ".join(f"{k} {v}" for k, v in counts.items()))
    lines.append("result: " + ("a MUST failed" if report.must_failed else "no MUST failed"))
    return "\n".join(lines)


def to_json(report: Report) -> str:
    data = {
        "server": report.server,
        "proto": report.proto,
        "prog": report.prog,
        "vers": report.vers,
        "proc": report.proc,
        "target": report.target,
        "service": report.service,
        "counts": report.counts(),
        "must_failed": report.must_failed,
        "cases": [r.to_json() for r in report.results],
    }
    return json.dumps(data, indent=2)


def junit(report: Report) -> bytes:
    """JUnit XML: one testsuite per RFC; FAIL is a failure, NOT-SUPPORTED and OMIT are skipped,
    WARN passes with the reason in system-out."""
    suites = ET.Element("testsuites", name="rpclatch conformance")
    for group in Group:
        rows = [r for r in report.results if r.spec.group is group]
        if not rows:
            continue
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=f"{group.rfc} ({group.prefix})",
            tests=str(len(rows)),
            failures=str(sum(r.outcome is Outcome.FAIL for r in rows)),
            skipped=str(sum(r.outcome in (Outcome.OMIT, Outcome.NOT_SUPPORTED) for r in rows)),
            errors="0",
        )
        for r in rows:
            s = r.spec
            tc = ET.SubElement(
                suite, "testcase", classname=f"conformance.{group.prefix}", name=f"{s.id} {s.title}"
            )
            text = f"{r.outcome.value}: {r.reason}\nsent: {s.sends}\nexpected: {s.expects}\ngot: {r.got}"
            if r.outcome is Outcome.FAIL:
                ET.SubElement(tc, "failure", message=r.reason, type=s.level.value).text = text
            elif r.outcome in (Outcome.OMIT, Outcome.NOT_SUPPORTED):
                ET.SubElement(tc, "skipped", message=f"{r.outcome.value}: {r.reason}")
            ET.SubElement(tc, "system-out").text = text
    out: bytes = ET.tostring(suites, encoding="utf-8", xml_declaration=True)
    return out


def listing(cases: Sequence[Case]) -> str:
    """``--list``: every case with its section, level and title."""
    lines = []
    w = max((len(c.spec.section) for c in cases), default=8)
    for c in cases:
        s = c.spec
        omit = "  [OMIT: " + c.omit + "]" if c.run is None else ""
        lines.append(f"{s.id:<7} {s.group.rfc:<9} {s.section:<{w}}  {s.level.value:<6} {s.title}{omit}")
    return "\n".join(lines)
