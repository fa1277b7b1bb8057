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
import os
import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rpclatch.errors import UserError
from rpclatch.ipsec.model import AES_GCM_128, AES_GCM_256, CHACHA20_POLY1305, CipherSuite

if TYPE_CHECKING:
    from rpclatch.ipsec.ike.crypto import SigningKey
    from rpclatch.ipsec.model import IPAddress
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


def load_public_spki(option: str, path: str) -> bytes:
    """DER SubjectPublicKeyInfo of the PEM public key (or private key) in ``path``."""
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_private_key,
        load_pem_public_key,
    )

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"{option} {path}: {exc.strerror}") from None
    try:
        public = load_pem_public_key(data)
    except ValueError:
        try:
            public = load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError):
            raise UserError(f"{option} {path}: not a PEM public key") from None
    return public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def peer_keys(specs: list[str]) -> dict[IPAddress, bytes]:
    """``--peer-key ADDR=KEYFILE``: raw public keys of peers that do not send theirs (strongSwan,
    libreswan), by the IP address they assert as their IKE ID (RFC 7296 §3.5)."""
    keys: dict[IPAddress, bytes] = {}
    for spec in specs:
        addr_text, sep, path = spec.partition("=")
        if not sep or not path:
            raise UserError(f"--peer-key {spec!r}: use ADDR=KEYFILE")
        try:
            addr = ipaddress.ip_address(addr_text)
        except ValueError:
            raise UserError(f"--peer-key {spec!r}: {addr_text!r} is not an IP address") from None
        keys[addr] = load_public_spki("--peer-key", path)
    return keys


def accept_pad(accept: list[str], extra: Iterable[bytes] = ()) -> PeerAuthorizationDatabase:
    """``any``: every raw public key (BTNS, RFC 5386); else only the keys in the PEM files (and
    the ``extra`` SPKIs: the ``--peer-key`` keys)."""
    from rpclatch.ipsec.model import AuthMethod, spki_fingerprint
    from rpclatch.ipsec.pad import ChildSaAuthorization, PadEntry, PeerAuthorizationDatabase, PublicKeyPattern

    auth = ChildSaAuthorization(own_address_only=True)
    if "any" in accept and accept != ["any"]:
        raise UserError("--accept: give either 'any' or key files, not both")
    if accept == ["any"]:
        return PeerAuthorizationDatabase(
            [PadEntry("any", PublicKeyPattern(), AuthMethod.RAW_PUBLIC_KEY, auth)]
        )
    spkis = [(Path(path).name, load_public_spki("--accept", path)) for path in accept]
    spkis += [(f"peer-key-{n}", spki) for n, spki in enumerate(extra, 1)]
    return PeerAuthorizationDatabase(
        [
            PadEntry(name, PublicKeyPattern(spki_fingerprint(spki)), AuthMethod.RAW_PUBLIC_KEY, auth)
            for name, spki in spkis
        ]
    )


def _socket_dir(path: Path) -> None:
    """Make the control socket's directory, or say in one line why it cannot be used."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--socket {path}: cannot make {path.parent}: {exc.strerror}") from None
    if not path.parent.is_dir():
        raise UserError(f"--socket {path}: {path.parent} is not a directory")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise UserError(f"--socket {path}: {path.parent} is not writable")


#: ``--esp`` names -> CHILD_SA suites
ESP_SUITE_NAMES = ("aes-gcm-256", "aes-gcm-128", "chacha20-poly1305")


def esp_suites(text: str) -> tuple[CipherSuite, ...]:
    """``--esp``: a comma-separated list of :data:`ESP_SUITE_NAMES` (UserError otherwise)."""
    table = dict(zip(ESP_SUITE_NAMES, (AES_GCM_256, AES_GCM_128, CHACHA20_POLY1305), strict=True))
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in table]
    if not names or unknown:
        choices = ", ".join(ESP_SUITE_NAMES)
        raise UserError(f"--esp {text!r}: not a CHILD_SA cipher (choose from {choices})")
    return tuple(dict.fromkeys(table[name] for name in names))


def cmd_keyd(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from rpclatch.commands.common import StopSignals
    from rpclatch.ipsec.ike.config import Credentials, IkeConfig
    from rpclatch.ipsec.ike.negotiation import DEFAULT_ESP_SUITES
    from rpclatch.ipsec.ike.udp import NegotiatedKeys
    from rpclatch.ipsec.keyd.daemon import KeydDaemon
    from rpclatch.ipsec.model import AddressRange, IkeId, Selector
    from rpclatch.ipsec.xfrm.backend import XfrmBackend
    from rpclatch.ipsec.xfrm.errors import XfrmError
    from rpclatch.ipsec.xfrm.netns import open_socket

    try:
        address = ipaddress.ip_address(args.address)
    except ValueError:
        raise UserError(f"--address {args.address!r}: not an IP address") from None
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: not a UDP port")
    key = load_private_key(args.key) if args.key else ed25519.Ed25519PrivateKey.generate()
    suites = esp_suites(args.esp) if args.esp is not None else None
    known = peer_keys(args.peer_key or [])
    pad = accept_pad(args.accept, known.values())
    config = IkeConfig(
        Credentials.raw_key(key, IkeId.address(address) if args.id == "address" else None),
        pad,
        (Selector(AddressRange.single(address), None),),
        peer_keys={IkeId.address(addr): spki for addr, spki in known.items()},
        esp_suites=suites or DEFAULT_ESP_SUITES,
    )
    path = Path(args.socket) if args.socket else default_socket(args.netns)
    _socket_dir(path)
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
    try:
        backend = XfrmBackend(args.netns, keys)
    except (XfrmError, OSError) as exc:
        sock.close()
        raise UserError(f"no XFRM datapath{f' in {args.netns}' if args.netns else ''}: {exc}") from None

    async def run(signals: StopSignals) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def request_stop() -> None:
            loop.call_soon_threadsafe(stop.set)

        signals.on_stop(request_stop)
        try:
            daemon = await KeydDaemon.start(config, sock, path, backend=backend, keys=keys)
        except OSError as exc:
            sock.close()
            raise UserError(f"--socket {path}: {exc.strerror or exc}") from None
        spki = config.credentials.spki or b""
        print(
            f"# keyd: IKE on {address}:{args.port}, control socket {path}, key SPKI {spki.hex()}", flush=True
        )
        try:
            await stop.wait()
        finally:
            await daemon.close()

    try:
        with StopSignals() as signals:
            asyncio.run(run(signals))
    finally:
        backend.close()  # whatever is still installed (nothing, after a clean close)
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

    path = Path(args.socket) if args.socket else default_socket(args.netns)

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
        "--id",
        choices=("key", "address"),
        default="key",
        help="IKE identity to send: the key's SHA-256 (ID_KEY_ID, default) or --address",
    )
    keyd.add_argument(
        "--peer-key",
        action="append",
        metavar="ADDR=KEYFILE",
        help="public key of a peer that does not send its own, by its address ID (repeatable)",
    )
    keyd.add_argument(
        "--accept",
        nargs="+",
        default=["any"],
        metavar="any|KEYFILE",
        help="peers to accept: any raw public key (default) or the keys in these PEM files",
    )
    keyd.add_argument(
        "--esp",
        default=None,
        metavar="SUITE[,SUITE...]",
        help="CHILD_SA ciphers, most preferred first, from "
        + ", ".join(ESP_SUITE_NAMES)
        + " (default aes-gcm-256,aes-gcm-128; chacha20-poly1305, RFC 7634, is the fast one on a "
        "kernel without AES instructions)",
    )
    keyd.set_defaults(func=cmd_keyd)
    status = sub.add_parser("status", help="IKE SAs, CHILD SAs and latches of a running keyd")
    status.add_argument("--netns", help="the keyd of this namespace (its default socket path)")
    status.add_argument("--socket", help=f"control socket path (default {DEFAULT_SOCKET})")
    status.add_argument("--json", action="store_true", help="print JSON instead of tables")
    status.set_defaults(func=cmd_status)
