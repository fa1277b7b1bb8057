"""``rpclatch demo``: the main job -- BYPASS-OR-PROTECT, latching and channel binding, shown.

With no arguments it starts a throwaway Kerberos realm and runs every scenario on the deterministic
simulated network, prints a verdict table, and writes a pcapng (with its ESP and IKEv2 key files)
and a sequence diagram per scenario into a run directory. Exit 0 only if every scenario behaved as
expected.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

WORLDS = ("sim", "uml", "netns")


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="run the latching + channel-binding scenarios (default: simulated network)",
        description="Start a throwaway Kerberos realm and run the BYPASS-OR-PROTECT scenarios: "
        "latched+bound, no IKE, BTNS man in the middle, rogue address claim, policy change.",
    )
    p.add_argument(
        "--world",
        choices=WORLDS,
        default="sim",
        help="where the scenarios run (default: sim, the deterministic simulated network)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="run directory for pcapng captures and diagrams (default: ./runs/demo-<timestamp>)",
    )
    p.add_argument(
        "--scenario",
        metavar="N",
        action="append",
        type=str,
        default=None,
        help="run only scenario N (repeatable); see --list",
    )
    p.add_argument(
        "--approach",
        choices=("1", "2"),
        default="2",
        help="where latches live: 1 = in the transport control block (RFC 5660 §2.4 packet "
        "tagging), 2 = in the latch database next to the SAD (§2.3, the default)",
    )
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rpclatch.cli import UserError
    from rpclatch.demo.report import render_json, render_text
    from rpclatch.demo.rundir import prepare_run_dir
    from rpclatch.demo.scenarios import SCENARIOS

    if args.list:
        for spec in SCENARIOS:
            print(f"{spec.label:<3} {spec.name:<23} {spec.title}")
        return 0
    if args.world != "sim":
        return _run_kernel(args)
    numbers = _parse_scenarios(args.scenario, sorted({s.number for s in SCENARIOS}))
    try:
        run_dir = prepare_run_dir(args.out)
    except OSError as exc:
        raise UserError(f"cannot use the run directory: {exc}; pass another --out DIR") from exc

    from rpclatch.demo.runner import run_demo
    from rpclatch.gss.realm import RealmError
    from rpclatch.ipsec.engine import Approach

    approach = Approach.ULP if args.approach == "1" else Approach.POLICY
    try:
        result = run_demo(run_dir, numbers, progress=None if args.json else sys.stderr, approach=approach)
    except RealmError as exc:
        raise UserError(
            f"cannot start the throwaway Kerberos realm ({exc}); install the KDC with "
            "'bash scripts/setup.sh' (krb5-kdc, krb5-admin-server)"
        ) from exc
    text = render_text(result)
    (run_dir / "summary.txt").write_text(text + "\n", encoding="utf-8")
    (run_dir / "summary.json").write_text(render_json(result) + "\n", encoding="utf-8")
    print(render_json(result) if args.json else text)
    return 0 if result.passed else 1


def _run_kernel(args: argparse.Namespace) -> int:
    """``--world uml|netns``: the scenarios on kernel ESP in one boot of the nfsd world."""
    from rpclatch.cli import UserError
    from rpclatch.demo.kernel import KERNEL_SCENARIOS, KernelWorldUnavailable, run_kernel_demo
    from rpclatch.demo.report import render_json, render_text
    from rpclatch.demo.rundir import prepare_run_dir
    from rpclatch.demo.scenarios import SCENARIOS

    numbers = _parse_scenarios(args.scenario, sorted({s.number for s in SCENARIOS}))
    others = [n for n in numbers if n not in KERNEL_SCENARIOS]
    if args.scenario and others:
        raise UserError(
            f"the {args.world} world runs scenarios {', '.join(map(str, KERNEL_SCENARIOS))}; "
            f"scenario {', '.join(map(str, others))} runs with --world sim"
        )
    numbers = [n for n in numbers if n in KERNEL_SCENARIOS]
    if args.approach != "2":
        raise UserError(
            f"--world {args.world} keeps latches in the key manager (approach 2); drop --approach"
        )
    try:
        run_dir = prepare_run_dir(args.out)
    except OSError as exc:
        raise UserError(f"cannot use the run directory: {exc}; pass another --out DIR") from exc
    try:
        result = run_kernel_demo(run_dir, args.world, numbers, progress=None if args.json else sys.stderr)
    except KernelWorldUnavailable as exc:
        raise UserError(str(exc)) from exc
    text = render_text(result)
    (run_dir / "summary.txt").write_text(text + "\n", encoding="utf-8")
    (run_dir / "summary.json").write_text(render_json(result) + "\n", encoding="utf-8")
    print(render_json(result) if args.json else text)
    return 0 if result.passed else 1


def _parse_scenarios(values: list[str] | None, known: list[int]) -> list[int]:
    from rpclatch.cli import UserError

    if not values:
        return known
    numbers: list[int] = []
    for value in values:
        for part in value.split(","):
            try:
                n = int(part)
            except ValueError:
                raise UserError(
                    f"--scenario {part!r} is not a number; use one of {', '.join(map(str, known))}"
                ) from None
            if n not in known:
                raise UserError(f"there is no scenario {n}; use one of {', '.join(map(str, known))}")
            if n not in numbers:
                numbers.append(n)
    return numbers
