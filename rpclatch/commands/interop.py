"""``rpclatch interop linux-nfsd``: run the interop suite against the Linux kernel NFS server.

The suite and its harness live in the source tree (``interop/``, ``tests/interop/``), not in the
installed package, so this command works from a source checkout (the editable install).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

_REPO_ROOT = Path(__file__).resolve().parents[2]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("interop", help="interop suites against real peers")
    sub = parser.add_subparsers(dest="interop_target", metavar="TARGET", required=True)
    nfsd = sub.add_parser(
        "linux-nfsd",
        help="Linux kernel nfsd (+ RPCSEC_GSS, ESP) in UML or host-kernel namespaces: run the suite, "
        "print a table",
    )
    nfsd.add_argument(
        "--world",
        choices=("auto", "uml", "netns"),
        default=None,
        help="uml: a User-Mode Linux guest; netns: namespaces on this host's kernel (needs "
        "nfsd and esp4); auto (default): netns where possible, else uml",
    )
    nfsd.add_argument("--run-dir", type=Path, help="directory for logs, captures and junit.xml")
    nfsd.add_argument("-k", dest="keyword", help="only tests matching this pytest -k expression")
    nfsd.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failure")
    nfsd.set_defaults(func=_linux_nfsd)


def _linux_nfsd(args: argparse.Namespace) -> int:
    from rpclatch.cli import UserError

    if not (_REPO_ROOT / "interop" / "runner.py").is_file() or not (_REPO_ROOT / "tests/interop").is_dir():
        raise UserError(f"interop suite not found under {_REPO_ROOT}; run from a source checkout of rpclatch")
    if str(_REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(_REPO_ROOT))
    from interop.choose import WorldChoiceError, choose_world

    try:
        choice = choose_world(args.world)
    except WorldChoiceError as exc:
        raise UserError(f"{exc}") from None
    if choice.missing:
        raise UserError(
            f"cannot run the Linux nfsd {choice.kind} world here: "
            + "; ".join(choice.missing)
            + ("" if args.world else "; choose another with --world")
        )
    from interop.runner import run_suite

    extra = []
    if args.keyword:
        extra += ["-k", args.keyword]
    if args.exitfirst:
        extra.append("-x")
    return run_suite(args.run_dir, extra, world=choice.kind)
