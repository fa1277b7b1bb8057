"""``rpclatch conformance HOST[:PORT]``: the RPCSEC_GSS / channel-binding conformance suite
(:mod:`rpclatch.conformance`) against any RPC server, from the client's side.

With ``--keyd SOCKET`` the channel cases run on connections the key manager latched to the
server (RFC 5660); without it they are OMITted. The output is a table grouped by RFC
(``--json`` instead: JSON; ``--junit FILE``: JUnit XML as well); the exit code is 1 iff a MUST
failed, 0 otherwise. Bad arguments (a malformed or unresolvable HOST, an unknown case id) are one
line and exit 2; a server that cannot be reached, or Kerberos credentials missing on this side,
one line and exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from pathlib import Path
from typing import Any

from rpclatch.commands.common import positive_arg, uint32_arg
from rpclatch.errors import UserError

#: The services ``--sec`` may name (channel_prot needs a bound channel: it is never the run's).
SEC_CHOICES = ("krb5", "krb5i", "krb5p")


def hex_arg(text: str) -> bytes:
    """Hex digits (spaces and a 0x prefix allowed) as bytes: the procedure's encoded arguments."""
    digits = "".join(text.split())
    if digits[:2].lower() == "0x":
        digits = digits[2:]
    try:
        return bytes.fromhex(digits)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not hex digits: {text!r}") from None


def seconds_arg(text: str) -> float:
    """A number of seconds, zero or more."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be zero or a positive number of seconds: {text!r}")
    return v


class CommandFailed(Exception):
    """A runtime failure reported as one line (exit 1)."""


def parse_host(text: str) -> tuple[str, int | None]:
    """``HOST``, ``HOST:PORT`` or ``[V6ADDR]:PORT`` -> (host, port or None); UserError if malformed."""
    host, port = text, None
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and text[end + 1] != ":"):
            raise UserError(f"bad HOST {text!r}: write an IPv6 address as [ADDR] or [ADDR]:PORT")
        host = text[1:end]
        rest = text[end + 2 :] if end + 1 < len(text) else None
        port_text = rest
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        port_text = None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
            raise UserError(f"bad port in HOST {text!r}: give HOST:PORT with PORT in 1..65535")
        port = int(port_text)
    if not host or any(c.isspace() for c in host):
        raise UserError(f"bad HOST {text!r}")
    return host, port


def _resolve(host: str) -> str:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise UserError(f"cannot resolve HOST {host!r} ({reason})") from None
    return str(infos[0][4][0])


async def _rpcbind_port(
    host: str, prog: int, vers: int, rpcbind_port: int, timeout: float, proto: str = "tcp"
) -> int:
    from rpclatch.rpc.rpcbind import IPPROTO_TCP, IPPROTO_UDP, RpcbindClient

    try:
        rpcb = await RpcbindClient.connect(host, transport="tcp", port=rpcbind_port, timeout=timeout)
        try:
            port = await rpcb.pmap_getport(prog, vers, IPPROTO_UDP if proto == "udp" else IPPROTO_TCP)
        finally:
            await rpcb.close()
    except Exception as exc:
        raise CommandFailed(
            f"{host}: cannot ask rpcbind on port {rpcbind_port} for program {prog} version {vers} "
            f"({exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__}); "
            "give HOST:PORT"
        ) from exc
    if port == 0:
        raise CommandFailed(
            f"{host}: program {prog} version {vers} over {proto} is not registered with rpcbind; "
            "give HOST:PORT"
        )
    return int(port)


async def _conformance(args: argparse.Namespace, cases: list[Any]) -> int:
    from rpclatch.conformance import report, runner
    from rpclatch.conformance.probe import Connection, LocalGssError, ProbeConfig, ReplyKind, null_call
    from rpclatch.gss.provider import GssapiProvider
    from rpclatch.gss.wire import Service

    host, port = parse_host(args.host)
    address = _resolve(host)
    if port is None:
        port = await _rpcbind_port(address, args.prog, args.vers, args.rpcbind_port, args.timeout, args.proto)
    try:
        probe = await Connection.open(address, port, args.timeout, args.proto)
    except (OSError, TimeoutError) as exc:
        if isinstance(exc, ConnectionRefusedError):
            reason = "connection refused: is the service running?"
        elif isinstance(exc, OSError) and exc.strerror:
            reason = exc.strerror
        else:
            reason = "no answer"
        raise CommandFailed(f"{args.host}: cannot connect to port {port} ({reason})") from exc
    try:
        if args.proto == "udp":
            # UDP has no handshake: a NULL call with AUTH_NONE shows someone answers (any reply).
            reply = await probe.call(1, null_call(1, args.prog, args.vers), args.timeout)
            if reply.kind is not ReplyKind.REPLY:
                raise CommandFailed(f"{args.host}: no answer over UDP on port {port} ({reply.describe()})")
    finally:
        probe.close()
    latcher = None
    if args.keyd is not None:
        from rpclatch.conformance.latching import KeydLatcher

        latcher = KeydLatcher(Path(args.keyd), ike_timeout=args.ike_timeout)
    config = ProbeConfig(
        host=address,
        port=port,
        prog=args.prog,
        vers=args.vers,
        proc=args.proc,
        args=args.args,
        target=args.target or f"nfs@{host}",
        service=Service.from_sec_name(args.sec),
        timeout=args.timeout,
        drop_wait=args.drop_wait,
        channels=latcher,
        expiry_wait=args.expiry_wait,
        clock_skew=args.clock_skew,
        proto=args.proto,
    )
    try:
        result = await runner.run(cases, config, GssapiProvider())
    except LocalGssError as exc:
        raise CommandFailed(f"{exc} (kinit first, or export the realm's KRB5_CONFIG and KRB5CCNAME)") from exc
    finally:
        if latcher is not None:
            await latcher.close()
    if args.json:
        print(report.to_json(result))
    else:
        print(report.table(result))
    if args.junit is not None:
        try:
            Path(args.junit).write_bytes(report.junit(result))
        except OSError as exc:
            raise CommandFailed(f"cannot write --junit {args.junit}: {exc.strerror or exc}") from exc
    return result.exit_code


def cmd_conformance(args: argparse.Namespace) -> int:
    from rpclatch.conformance import registry, report

    try:
        cases = registry.select(args.case or (), args.group or ())
    except registry.UnknownCase as exc:
        raise UserError(str(exc)) from None
    if args.list:
        print(report.listing(cases))
        return 0
    if args.host is None:
        raise UserError("give HOST[:PORT] of the server to probe (or --list)")
    if args.prog is None or args.vers is None:
        raise UserError(
            "give the RPC program and version to call with --prog N --vers N (e.g. NFS: 100003 4)"
        )
    from rpclatch.commands.rpc import parse_program

    args.prog = parse_program(args.prog)  # UserError (one line, exit 2) for an unknown name
    try:
        return asyncio.run(_conformance(args, cases))
    except CommandFailed as exc:
        print(f"rpclatch: error: {exc}", file=sys.stderr)
        return 1


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "conformance",
        help="RPCSEC_GSS (RFC 2203) and channel-binding (RFC 5403) conformance of any RPC server",
        description="Probe an RPC server's RPCSEC_GSS from the client side: each case says its RFC "
        "section, MUST/SHOULD, what was sent, expected and got. Exit 1 iff a MUST failed.",
    )
    p.add_argument("host", metavar="HOST[:PORT]", nargs="?", help="the server (no PORT: ask its rpcbind)")
    p.add_argument("--prog", help="RPC program number or /etc/rpc name (e.g. 100003 or nfs)")
    p.add_argument("--vers", type=uint32_arg, help="program version (e.g. 4)")
    p.add_argument("--proc", type=uint32_arg, default=0, help="procedure of the DATA calls (default 0, NULL)")
    p.add_argument(
        "--args",
        type=hex_arg,
        default=b"",
        metavar="HEX",
        help="--proc's XDR-encoded arguments in hex (default none); a procedure with arguments "
        "makes servers that unwrap bodies only for them show GSS-10..12",
    )
    p.add_argument(
        "--proto",
        choices=("tcp", "udp"),
        default="tcp",
        help="transport of the calls (default tcp; over udp the channel cases and the record-marking "
        "probes OMIT)",
    )
    p.add_argument("--target", metavar="SERVICE@HOST", help="the server's GSS name (default nfs@HOST)")
    p.add_argument(
        "--sec",
        choices=SEC_CHOICES,
        default="krb5i",
        help="service of the general cases (default krb5i; GSS-02..04 try each)",
    )
    p.add_argument("--case", action="append", metavar="ID", help="run this case (repeatable; see --list)")
    p.add_argument(
        "--group", action="append", metavar="GROUP", help="run this group: GSS, CB or ROB (repeatable)"
    )
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report to FILE")
    p.add_argument(
        "--timeout", type=positive_arg, default=5.0, help="seconds to wait for a reply (default 5)"
    )
    p.add_argument(
        "--drop-wait",
        type=positive_arg,
        default=1.0,
        metavar="SECONDS",
        help="silence this long counts as a discarded request (default 1)",
    )
    p.add_argument(
        "--keyd",
        metavar="SOCKET",
        help="the key manager's control socket: run the channel cases (CB-10..16) on latched connections",
    )
    p.add_argument(
        "--expiry-wait",
        type=seconds_arg,
        default=30.0,
        metavar="SECONDS",
        help="CB-14/15: wait at most this long for a context to expire (default 30)",
    )
    p.add_argument(
        "--clock-skew",
        type=seconds_arg,
        default=300.0,
        metavar="SECONDS",
        help="CB-14/15: the clock-skew allowance the server adds to a ticket's end (default 300, MIT's)",
    )
    p.add_argument(
        "--ike-timeout",
        type=positive_arg,
        default=5.0,
        metavar="SECONDS",
        help="--keyd: wait this long for a latch (default 5)",
    )
    p.add_argument(
        "--rpcbind-port", type=int, default=111, metavar="N", help="HOST's rpcbind port (default 111)"
    )
    p.set_defaults(func=cmd_conformance)
