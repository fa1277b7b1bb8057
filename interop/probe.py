"""Small client programs built from this project's own code, run against the Linux nfsd.

They run wherever the harness puts them: in the host-side namespace (``guest.host_run``) or inside
the guest (``guest.run(..., netns="client")`` for the ESP path), as ``python -m interop.probe null
HOST ...`` (:func:`rpc_null`) or ``python -m interop.probe nfs HOST ...`` (:func:`nfs_ops`); the
options are in :func:`main`'s argparse help. Each prints one JSON object on stdout (``{"ok": true,
...}`` or ``{"ok": false, "error": <type>, "message": ...}``) and exits 0 when the operation
succeeded, 1 when it failed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from rpclatch.nfs4.const import NFS4_PROGRAM


def _auth(name: str) -> Any:
    from rpclatch.rpc.auth_sys import AuthNoneClient, AuthSysClient

    if name == "sys":
        return AuthSysClient.for_current_process()
    return AuthNoneClient()


def _policy_socket(host: str, port: int, policy: str, src: str, reqid: int, timeout: float) -> socket.socket:
    from interop import sockpolicy

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if policy == "bypass":
            sockpolicy.set_bypass(sock)
        else:
            sockpolicy.set_esp(sock, src, host, reqid)
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def rpc_null(
    host: str,
    port: int,
    prog: int,
    vers: int,
    auth: str,
    timeout: float,
    policy: str = "none",
    policy_src: str = "",
    reqid: int = 1,
    connect_timeout: float = 10.0,
) -> dict[str, Any]:
    """One NULL call (RFC 5531 §12.1: procedure 0 of every program) with
    :class:`rpclatch.rpc.aio.RpcStreamClient`; with ``policy`` (``bypass`` or ``esp``) the TCP
    socket gets a per-socket IPsec policy first (:mod:`interop.sockpolicy`)."""
    from rpclatch.rpc.aio import RpcStreamClient

    t0 = time.monotonic()
    sock = None
    if policy != "none":
        sock = _policy_socket(host, port, policy, policy_src, reqid, connect_timeout)
    client = await RpcStreamClient.connect_tcp(
        host, port, auth=_auth(auth), timeout=timeout, sock=sock, connect_timeout=connect_timeout
    )
    try:
        local = client.transport.get_extra_info("sockname")
        result = await client.call(prog, vers, 0)
    finally:
        await client.close()
    return {
        "ok": True,
        "op": "null",
        "host": host,
        "port": port,
        "prog": prog,
        "vers": vers,
        "auth": auth,
        "socket_policy": policy,
        "result_len": len(result),
        "local": list(local)[:2],
        "elapsed": round(time.monotonic() - t0, 4),
    }


def payload(size: int, seed: int) -> bytes:
    """The deterministic test data ``nfs --write`` writes (also used by tests to compare)."""
    return random.Random(seed).randbytes(size)


async def nfs_ops(args: argparse.Namespace) -> dict[str, Any]:
    """Write / read / remove with :class:`rpclatch.nfs4.client.Nfs4Client`, in that order: write
    ``--size`` deterministic pseudo-random bytes (:func:`payload`), read a file back (streamed,
    SHA-256 and MB/s reported), remove. Timings are wall clock around each operation."""
    from rpclatch.nfs4.client import Nfs4Client
    from rpclatch.nfs4.options import Nfs4Options

    out: dict[str, Any] = {"ok": True, "op": "nfs", "host": args.host, "sec": args.sec, "minor": args.minor}
    t0 = time.monotonic()
    client = await Nfs4Client.connect(
        args.host, Nfs4Options(port=args.port, minorversion=args.minor, sec=args.sec, gss_target=args.target)
    )
    try:
        out["connect_seconds"] = round(time.monotonic() - t0, 4)
        if args.write:
            data = payload(args.size, args.seed)
            t = time.monotonic()
            written = await client.write_file(args.write, data)
            out.update(
                written=written,
                write_sha256=hashlib.sha256(data).hexdigest(),
                write_seconds=round(time.monotonic() - t, 4),
            )
        if args.read:
            digest = hashlib.sha256()
            n = 0
            t = time.monotonic()
            async for chunk in client.read_file(args.read):
                digest.update(chunk)
                n += len(chunk)
            secs = time.monotonic() - t
            out.update(
                read_bytes=n,
                read_sha256=digest.hexdigest(),
                read_seconds=round(secs, 4),
                read_mb_per_s=round(n / 1e6 / secs, 3) if secs > 0 else None,
            )
        if args.remove:
            await client.remove(args.remove)
            out["removed"] = args.remove
        flavor = client.flavor
        out["flavor"] = flavor.value if flavor is not None else None
    finally:
        await client.close()
    return out


def _error(exc: BaseException) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": False, "error": type(exc).__name__, "message": str(exc)}
    stat = getattr(exc, "stat", None)
    if stat is not None:
        out["stat"] = getattr(stat, "name", str(stat))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interop.probe")
    sub = parser.add_subparsers(dest="op", required=True)
    null = sub.add_parser("null", help="RPC NULL call over TCP")
    null.add_argument("host")
    null.add_argument("--port", type=int, default=2049)
    null.add_argument("--prog", type=int, default=NFS4_PROGRAM)
    null.add_argument("--vers", type=int, default=4)
    null.add_argument("--auth", choices=("none", "sys"), default="none")
    null.add_argument("--timeout", type=float, default=20.0)
    null.add_argument("--connect-timeout", type=float, default=10.0)
    null.add_argument("--socket-policy", choices=("none", "bypass", "esp"), default="none")
    null.add_argument("--policy-src", default="", help="our address (ESP template source)")
    null.add_argument("--reqid", type=int, default=1, help="reqid of the SAs the template asks for")
    nfs = sub.add_parser("nfs", help="write/read/remove with the NFSv4 client")
    nfs.add_argument("host")
    nfs.add_argument("--port", type=int, default=2049)
    nfs.add_argument("--sec", default="sys", choices=("auto", "sys", "krb5", "krb5i", "krb5p"))
    nfs.add_argument("--minor", type=int, default=1, choices=(0, 1))
    nfs.add_argument("--target", help="GSS service name of the server (default nfs@HOST)")
    nfs.add_argument("--write", metavar="PATH")
    nfs.add_argument("--size", type=int, default=4096)
    nfs.add_argument("--seed", type=int, default=1)
    nfs.add_argument("--read", metavar="PATH")
    nfs.add_argument("--remove", metavar="PATH")
    args = parser.parse_args(argv)
    try:
        if args.op == "null":
            out = asyncio.run(
                rpc_null(
                    args.host,
                    args.port,
                    args.prog,
                    args.vers,
                    args.auth,
                    args.timeout,
                    args.socket_policy,
                    args.policy_src,
                    args.reqid,
                    args.connect_timeout,
                )
            )
        else:
            out = asyncio.run(nfs_ops(args))
    except Exception as exc:
        out = _error(exc)
    print(json.dumps(out), flush=True)
    return 0 if out.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
