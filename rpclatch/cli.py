"""The ``rpclatch`` command line: dispatches to the command groups in :mod:`rpclatch.commands`.

User errors become one line on stderr naming what was wrong and how to fix it (exit 2); a failed
check or run is exit 1; no traceback reaches the user unless ``RPCLATCH_DEBUG=1`` is set.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from rpclatch.commands import COMMAND_MODULES
from rpclatch.errors import UserError

__all__ = ["UserError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rpclatch",
        description="IPsec connection latching and RPCSEC_GSS channel binding for ONC RPC / NFSv4",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"rpclatch.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"rpclatch.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(int(args.verbose), 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args))
    except UserError as exc:
        print(f"rpclatch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rpclatch: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("RPCLATCH_DEBUG"):
            raise
        print(
            f"rpclatch: error: {type(exc).__name__}: {exc} (set RPCLATCH_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
