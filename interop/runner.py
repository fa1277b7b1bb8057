"""Runs the interop suite (pytest on tests/interop) and prints a pass/fail table.

Shared by ``interop/run`` and ``rpclatch interop linux-nfsd``. Everything of one run lands in one
directory: ``pytest.log`` (full output), ``junit.xml``, ``results.json``, and ``guest/`` (the nfsd
world's console, captures, daemon logs and command jobs, see :mod:`interop.world`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SUITE = REPO_ROOT / "tests" / "interop"


@dataclass(frozen=True)
class CaseResult:
    """One test case from the JUnit XML."""

    name: str
    outcome: str  # passed | failed | error | skipped
    seconds: float
    message: str


def default_run_dir() -> Path:
    return REPO_ROOT / "runs" / "interop" / f"{time.strftime('%Y%m%d-%H%M%S')}-suite-{os.getpid()}"


def parse_junit(path: Path) -> list[CaseResult]:
    """Test cases of a pytest JUnit XML file, in file order."""
    root = ET.parse(path).getroot()
    cases = []
    for case in root.iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        name = f"{module}::{case.get('name', '?')}"
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "failed" if tag == "failure" else tag
                message = (node.get("message") or "").splitlines()[0][:160] if node.get("message") else ""
                break
        cases.append(CaseResult(name, outcome, float(case.get("time", "0") or 0), message))
    return cases


def format_table(cases: Sequence[CaseResult]) -> str:
    width = max((len(c.name) for c in cases), default=10)
    lines = [f"{'RESULT':<8} {'SECONDS':>8}  {'TEST':<{width}}  DETAIL"]
    for c in cases:
        lines.append(f"{c.outcome.upper():<8} {c.seconds:>8.2f}  {c.name:<{width}}  {c.message}".rstrip())
    counts = {k: sum(1 for c in cases if c.outcome == k) for k in ("passed", "failed", "error", "skipped")}
    lines.append(", ".join(f"{v} {k}" for k, v in counts.items()) + f" of {len(cases)}")
    return "\n".join(lines)


def run_suite(
    run_dir: Path | None = None,
    pytest_args: Sequence[str] = (),
    out: Callable[[str], None] = print,
    world: str | None = None,
) -> int:
    """Run tests/interop under pytest against the ``world`` (``uml``, ``netns``, ``auto``; default
    ``$RPCLATCH_INTEROP_WORLD`` or auto); 0 when nothing failed and at least one test passed."""
    run_dir = (run_dir or default_run_dir()).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    junit = run_dir / "junit.xml"
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        str(SUITE),
        f"--junitxml={junit}",
        "-o",
        "log_cli=true",
        "--log-cli-level=INFO",
        "-rA",
        *pytest_args,
    ]
    env = dict(os.environ, RPCLATCH_INTEROP_RUN_DIR=str(run_dir))
    if world:
        env["RPCLATCH_INTEROP_WORLD"] = world
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    out(f"interop: world: {_why_world(world)}")
    out(f"interop: run dir {run_dir}")
    out("interop: " + " ".join(argv))
    with (run_dir / "pytest.log").open("w") as log:
        proc = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                out(line.rstrip("\n"))
            rc = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()  # pytest tears the world down on SIGTERM (see interop.world)
            proc.wait(timeout=60)
            raise
    if not junit.exists():
        out(f"interop: pytest wrote no JUnit XML (exit {rc}); see {run_dir / 'pytest.log'}")
        return 1
    cases = parse_junit(junit)
    (run_dir / "results.json").write_text(json.dumps([asdict(c) for c in cases], indent=1))
    out("")
    out(format_table(cases))
    out(f"interop: logs, captures and JUnit XML in {run_dir}")
    if rc == 5 or not cases:
        return 1
    if not any(c.outcome == "passed" for c in cases):
        out("interop: nothing passed (every test skipped); see the DETAIL column for why")
        return 1
    bad = [c for c in cases if c.outcome in ("failed", "error")]
    return 1 if bad or rc != 0 else 0


def _why_world(world: str | None = None) -> str:
    """One line: the world the suite uses here and why (or why it cannot run)."""
    if str(REPO_ROOT) not in sys.path:  # run as a script: interop/ is not importable yet
        sys.path.insert(0, str(REPO_ROOT))
    from interop.choose import WorldChoiceError, choose_world

    try:
        choice = choose_world(world)
    except WorldChoiceError as exc:
        return str(exc)
    return choice.reason + (f"; cannot run: {'; '.join(choice.missing)}" if choice.missing else "")


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="interop/run",
        description="Run the interop suite against the real Linux nfsd.",
        epilog=(
            "Worlds: 'uml' boots the Linux nfsd in a User-Mode Linux guest; 'netns' runs it in "
            "network namespaces on the host's own kernel (needs nfsd and esp4 there); 'auto' "
            "(default, or $RPCLATCH_INTEROP_WORLD) takes netns where the host kernel can, else uml. "
            "On this machine: " + _why_world() + "."
        ),
    )
    parser.add_argument("--run-dir", type=Path, help="where logs, captures and junit.xml go")
    parser.add_argument("--world", choices=("auto", "uml", "netns"), help="which nfsd world (default auto)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --), e.g. -k esp")
    args = parser.parse_args(argv)
    return run_suite(args.run_dir, args.pytest_args, world=args.world)


if __name__ == "__main__":
    sys.exit(main())
