"""``rpclatch realm up``: a throwaway MIT Kerberos realm for trying RPCSEC_GSS by hand.

The command (:func:`cmd_up`) runs a :class:`rpclatch.gss.realm.ThrowawayRealm` in the foreground.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any


def cmd_up(args: argparse.Namespace) -> int:
    """Start the realm, print its export lines, run until SIGTERM/SIGINT, then remove it.

    ``rpclatch realm up [--user NAME] [--password PW] [--service NAME]`` starts a KDC on free local
    ports with the service principal ``nfs/<host>`` in a keytab and the user (default ``alice``,
    random password unless given) kinit'ed, prints ``export ...`` lines to paste into the shells
    that should use the realm, and stays up until Ctrl-C / SIGTERM, then stops the KDC and removes
    every file.

    The stop signals are taken over before the realm starts and kept through its removal
    (:class:`~rpclatch.commands.common.StopSignals`): a signal during start-up stops right after
    it, and repeated signals (``timeout`` signals the process and then its group) cannot cut the
    cleanup short and leave a KDC or realm files behind.
    """
    from rpclatch.cli import UserError
    from rpclatch.commands.common import StopSignals
    from rpclatch.gss.realm import RealmError, ThrowawayRealm

    users: dict[str, str | None] = {args.user: args.password}
    try:
        realm = ThrowawayRealm(users, service=args.service)
    except RealmError as exc:
        raise UserError(f"{exc}") from exc
    with StopSignals() as signals:
        try:
            realm.start()
        except RealmError as exc:
            print(f"rpclatch: error: {exc} (are krb5-kdc and krb5-admin-server installed?)", file=sys.stderr)
            return 1
        try:
            if not signals.stop_requested:
                user = realm.users[args.user]
                print(f"# realm {realm.realm}: KDC on port {realm.kdc_port}, files in {realm.tmpdir}")
                print(f"# service principal {realm.service_principal} (keytab {realm.keytab})")
                print(f"# user {user.principal} password {user.password} (kinit'ed into KRB5CCNAME)")
                print("# paste these into the shells that should use this realm:")
                for line in realm.export_lines():
                    print(line)
                print("# running until Ctrl-C", flush=True)
            while not signals.stop_requested:
                time.sleep(0.2)  # a signal runs its handler and the sleep resumes (PEP 475)
        finally:
            realm.stop()
    print("# realm stopped and removed", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("realm", help="throwaway MIT Kerberos realm for RPCSEC_GSS")
    sub = parser.add_subparsers(dest="realm_command", metavar="SUBCOMMAND", required=True)
    up = sub.add_parser(
        "up", help="start a KDC with nfs/<host> and a user; print export lines; run until Ctrl-C"
    )
    up.add_argument("--user", default="alice", help="user principal name (default alice)")
    up.add_argument("--password", default=None, help="its password (default: random, printed)")
    up.add_argument("--service", default="nfs", help="host-based service (default nfs -> nfs/<host>)")
    up.set_defaults(func=cmd_up)
