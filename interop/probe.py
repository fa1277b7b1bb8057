"""Small client programs built from this project's own code, run against the Linux nfsd.

They run wherever the harness puts them: in the host-side namespace (``guest.host_run``) or inside
the guest (``guest.run(..., netns="client")`` for the ESP path). Each prints one JSON object on
stdout (``{"ok": true, ...}`` or ``{"ok": false, "error": <type>, "message": ...}``) and exits 0
when the operation succeeded, 1 when it failed, 2 on bad arguments.

``python -m interop.probe null HOST [--port 2049] [--prog 100003] [--vers 4] [--auth none|sys]``
    one RPC NULL call with :class:`rpclatch.rpc.aio.RpcStreamClient`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

NFS_PROGRAM = 100003


def _auth(name: str) -> Any:
    from rpclatch.rpc.auth_sys import AuthNoneClient, AuthSysClient

    if name == "sys":
        return AuthSysClient.for_current_process()
    return AuthNoneClient()


async def rpc_null(host: str, port: int, prog: int, vers: int, auth: str, timeout: float) -> dict[str, Any]:
    """One NULL call (RFC 5531 §12.1: procedure 0 of every program)."""
    from rpclatch.rpc.aio import RpcStreamClient

    t0 = time.monotonic()
    client = await RpcStreamClient.connect_tcp(host, port, auth=_auth(auth), timeout=timeout)
    try:
        local = client.transport.get_extra_info("sockname")
        result = await client.call(prog, vers, 0)
    finally:
        await client.close()
    return {"ok": True, "op": "null", "host": host, "port": port, "prog": prog, "vers": vers,
            "auth": auth, "result_len": len(result), "local": list(local)[:2],
            "elapsed": round(time.monotonic() - t0, 4)}


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
    null.add_argument("--prog", type=int, default=NFS_PROGRAM)
    null.add_argument("--vers", type=int, default=4)
    null.add_argument("--auth", choices=("none", "sys"), default="none")
    null.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args(argv)
    try:
        if args.op == "null":
            out = asyncio.run(rpc_null(args.host, args.port, args.prog, args.vers, args.auth, args.timeout))
        else:  # pragma: no cover - argparse rejects other ops
            return 2
    except Exception as exc:
        out = _error(exc)
    print(json.dumps(out), flush=True)
    return 0 if out.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
