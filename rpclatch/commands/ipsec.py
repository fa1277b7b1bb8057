"""``rpclatch ipsec``: run the key-manager daemon (``keyd``) and show its state (``status``).

``keyd`` runs :class:`rpclatch.ipsec.keyd.daemon.KeydDaemon` in this host's (or ``--netns``'s)
network namespace: IKEv2 on UDP 500 of ``--address``, SAs and per-flow policies in the kernel's
XFRM tables, and the RFC 5660 latching API on an AF_UNIX socket (docs/keyd.md). ``status`` asks a
running daemon for its IKE SAs, CHILD_SAs and latches and prints them as tables (or JSON).
Errors are one line.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rpclatch.errors import UserError

if TYPE_CHECKING:
    from rpclatch.ipsec.ike.crypto import SigningKey
    from rpclatch.ipsec.pad import PeerAuthorizationDatabase

DEFAULT_SOCKET = Path("/run/rpclatch/keyd.sock")


def default_socket(netns: str | None) -> Path:
    if netns is None:
        return DEFAULT_SOCKET
    return DEFAULT_SOCKET.with_name(f"keyd-{Path(netns).name}.sock")


def load_private_key(path: str) -> SigningKey:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise UserError(f"--key {path}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise UserError(f"--key {path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise UserError(f"--key {path}: use an Ed25519 or ECDSA key")
    return key


def accept_pad(accept: list[str]) -> PeerAuthorizationDatabase:
    """``any``: every raw public key (BTNS, RFC 5386); else only the keys in the PEM files."""
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_private_key,
        load_pem_public_key,
    )

    from rpclatch.ipsec.model import AuthMethod, spki_fingerprint
    from rpclatch.ipsec.pad import ChildSaAuthorization, PadEntry, PeerAuthorizationDatabase, PublicKeyPattern

    auth = ChildSaAuthorization(own_address_only=True)
    if "any" in accept and accept != ["any"]:
        raise UserError("--accept: give either 'any' or key files, not both")
    if accept == ["any"]:
        return PeerAuthorizationDatabase(
            [PadEntry("any", PublicKeyPattern(), AuthMethod.RAW_PUBLIC_KEY, auth)]
        )
    entries = []
    for path in accept:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise UserError(f"--accept {path}: {exc.strerror}") from None
        try:
            public = load_pem_public_key(data)
        except ValueError:
            try:
                public = load_pem_private_key(data, password=None).public_key()
            except (ValueError, TypeError):
                raise UserError(f"--accept {path}: not a PEM public key (or 'any')") from None
        spki = public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        pattern = PublicKeyPattern(spki_fingerprint(spki))
        entries.append(PadEntry(Path(path).name, pattern, AuthMethod.RAW_PUBLIC_KEY, auth))
    return PeerAuthorizationDatabase(entries)


def cmd_keyd(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from rpclatch.commands.common import StopSignals
    from rpclatch.ipsec.ike.config import Credentials, IkeConfig
    from rpclatch.ipsec.ike.udp import NegotiatedKeys
    from rpclatch.ipsec.keyd.daemon import KeydDaemon
    from rpclatch.ipsec.model import AddressRange, Selector
    from rpclatch.ipsec.xfrm.backend import XfrmBackend
    from rpclatch.ipsec.xfrm.errors import XfrmError
    from rpclatch.ipsec.xfrm.netns import open_socket

    try:
        address = ipaddress.ip_address(args.address)
    except ValueError:
        raise UserError(f"--address {args.address!r}: not an IP address") from None
    key = load_private_key(args.key) if args.key else ed25519.Ed25519PrivateKey.generate()
    pad = accept_pad(args.accept)
    config = IkeConfig(Credentials.raw_key(key), pad, (Selector(AddressRange.single(address), None),))
    path = Path(args.socket) if args.socket else default_socket(args.netns)
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    try:
        sock = open_socket(args.netns, family, socket.SOCK_DGRAM)
    except XfrmError as exc:
        raise UserError(f"--netns {args.netns}: {exc}") from None
    try:
        sock.bind((str(address), args.port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot bind UDP {address}:{args.port}: {exc.strerror}") from None
    keys = NegotiatedKeys()
    backend = XfrmBackend(args.netns, keys)

    async def run(signals: StopSignals) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def request_stop() -> None:
            loop.call_soon_threadsafe(stop.set)

        signals.on_stop(request_stop)
        path.parent.mkdir(parents=True, exist_ok=True)
        daemon = await KeydDaemon.start(config, sock, path, backend=backend, keys=keys)
        spki = config.credentials.spki or b""
        print(
            f"# keyd: IKE on {address}:{args.port}, control socket {path}, key SPKI {spki.hex()}", flush=True
        )
        try:
            await stop.wait()
        finally:
            await daemon.close()

    with StopSignals() as signals:
        asyncio.run(run(signals))
    return 0


def _table(title: str, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return f"{title}: none"
    columns = list(rows[0])
    widths = [max(len(col), *(len(str(row.get(col, ""))) for row in rows)) for col in columns]
    lines = [f"{title}:", "  ".join(col.upper().ljust(w) for col, w in zip(columns, widths, strict=True))]
    for row in rows:
        lines.append(
            "  ".join(str(row.get(col, "")).ljust(w) for col, w in zip(columns, widths, strict=True))
        )
    return "\n".join(line.rstrip() for line in lines)


def format_status(status: dict[str, Any]) -> str:
    return "\n\n".join(
        _table(title, list(status.get(key, [])))
        for title, key in (("IKE SAs", "ike_sas"), ("CHILD SAs", "child_sas"), ("Latches", "latches"))
    )


def cmd_status(args: argparse.Namespace) -> int:
    from rpclatch.ipsec.keyd.server import KeydClient

    path = Path(args.socket) if args.socket else DEFAULT_SOCKET

    async def ask() -> dict[str, Any]:
        try:
            client = await KeydClient.connect(path)
        except OSError as exc:
            raise UserError(
                f"no keyd at {path}: {exc.strerror or exc} (start 'rpclatch ipsec keyd')"
            ) from None
        try:
            return await asyncio.wait_for(client.call("STATUS"), 5)
        finally:
            await client.close()

    answer = asyncio.run(ask())
    if not answer.get("ok"):
        raise UserError(f"keyd at {path} refused: {answer.get('error')} {answer.get('detail', '')}".rstrip())
    status = {key: answer.get(key, []) for key in ("ike_sas", "child_sas", "latches")}
    if args.json:
        json.dump(status, sys.stdout, indent=2, sort_keys=True)
        print()
    else:
        print(format_status(status))
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("ipsec", help="IKEv2 key-manager daemon with the RFC 5660 latching API")
    sub = parser.add_subparsers(dest="ipsec_command", metavar="SUBCOMMAND", required=True)
    keyd = sub.add_parser("keyd", help="run the key-manager daemon (one per host or network namespace)")
    keyd.add_argument("--address", required=True, help="local IP address peers send IKE to")
    keyd.add_argument("--port", type=int, default=500, help="IKE UDP port (default 500)")
    keyd.add_argument("--netns", help="network namespace (name under /var/run/netns or a path)")
    keyd.add_argument("--socket", help=f"control socket path (default {DEFAULT_SOCKET})")
    keyd.add_argument("--key", help="PEM private key (Ed25519 or ECDSA); default: a new key per run")
    keyd.add_argument(
        "--accept",
        nargs="+",
        default=["any"],
        metavar="any|KEYFILE",
        help="peers to accept: any raw public key (default) or the keys in these PEM files",
    )
    keyd.set_defaults(func=cmd_keyd)
    status = sub.add_parser("status", help="IKE SAs, CHILD SAs and latches of a running keyd")
    status.add_argument("--socket", help=f"control socket path (default {DEFAULT_SOCKET})")
    status.add_argument("--json", action="store_true", help="print JSON instead of tables")
    status.set_defaults(func=cmd_status)
