"""``rpclatch nfs``: a small NFSv4 client on the command line (rpclatch.nfs4).

``rpclatch nfs ls|stat|cat|get|put|rm|mkdir SERVER:/path [LOCAL] [--sec auto|sys|krb5|krb5i|krb5p]
[--v4.0|--v4.1] [--port N] [--target SERVICE@HOST] [--keyd SOCKET] [--fallback krb5i|krb5p]
[--ike-timeout SECONDS]``. ``--target`` (also spelled ``--gss-target``) is the server's
RPCSEC_GSS name, default ``nfs@SERVER``. Transfers show a progress bar on stderr when it is a
terminal. Every failure is one line naming what went wrong and how to fix it.

``--sec auto`` is BYPASS-OR-PROTECT. With a key manager (``--keyd SOCKET``, or the default socket
of ``rpclatch ipsec keyd`` when it exists) each NFS connection goes through the kernel world
(:class:`rpclatch.connect.nfs.KernelConnectionSecurity`): bound source port,
CREATE_CONNECTION_LATCH for the exact 5-tuple, connect, then the policy table; ``-v`` prints the
row that happened, as ``rpclatch rpc ping --sec auto`` does. Without one, IKE is not attempted:
krb5p (or ``--fallback``'s service first) from the server's SECINFO list, in the clear
(:func:`rpclatch.connect.nfs.connection_security`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import stat as statmod
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from rpclatch.connect.nfs import KernelConnectionSecurity
    from rpclatch.connect.record import SecurityRecord
    from rpclatch.nfs4.security import ConnectionSecurity, ConnectionSecurityHook

T = TypeVar("T")

_FTYPE_CHAR = {1: "-", 2: "d", 3: "b", 4: "c", 5: "l", 6: "s", 7: "p", 8: "d", 9: "-"}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "nfs",
        help="NFSv4 client: ls, stat, cat, get, put, rm, mkdir on SERVER:/path",
        description="A small NFSv4.0/4.1 client (RPCSEC_GSS krb5/krb5i/krb5p or AUTH_SYS).",
    )
    sub = parser.add_subparsers(dest="nfs_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        from rpclatch.commands.common import GSS_VERSION_HELP, positive_arg
        from rpclatch.nfs4.security import SEC_CHOICES

        p.add_argument(
            "--sec",
            choices=SEC_CHOICES,
            default="auto",
            help="security flavor; auto = BYPASS-OR-PROTECT: with a key manager (--keyd, or "
            "the default socket of `rpclatch ipsec keyd` when it exists) the connection is "
            "latched to IPsec and RPCSEC_GSS is bound to the latch when the server can bind, else "
            "--fallback over the latch; if IKE fails, --fallback in the clear. Without a key "
            "manager no IKE is attempted: krb5p, else krb5i (--fallback krb5i: the reverse), from "
            "the server's SECINFO list, in the clear. "
            "sys/krb5 only when named",
        )
        p.add_argument(
            "--keyd",
            metavar="SOCKET",
            help="the key manager's control socket for --sec auto (default: the one of "
            "`rpclatch ipsec keyd`, used when it exists)",
        )
        p.add_argument(
            "--fallback",
            choices=("krb5i", "krb5p"),
            default=None,
            help="--sec auto without a bound channel: this service (default krb5p)",
        )
        p.add_argument(
            "--ike-timeout",
            type=positive_arg,
            default=None,
            metavar="SECONDS",
            help="--sec auto with a key manager: wait this long for the latch before connecting "
            "in the clear (default 2)",
        )
        p.add_argument("--gss-version", choices=("auto", "1"), default=None, help=GSS_VERSION_HELP)
        vers = p.add_mutually_exclusive_group()
        vers.add_argument("--v4.0", dest="minor", action="store_const", const=0, help="use NFSv4.0")
        vers.add_argument("--v4.1", dest="minor", action="store_const", const=1, help="use NFSv4.1 (default)")
        p.set_defaults(minor=1)
        p.add_argument("--port", type=int, default=2049, help="server port (default 2049)")
        p.add_argument(
            "--target",
            "--gss-target",
            dest="gss_target",
            default=None,
            metavar="SERVICE@HOST",
            help="the server's RPCSEC_GSS name for krb5* (default nfs@SERVER)",
        )
        p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each reply")

    for name, text in (
        ("ls", "list a directory"),
        ("stat", "show attributes"),
        ("cat", "write a file to stdout"),
        ("rm", "remove a file or empty directory"),
        ("mkdir", "create a directory"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("remote", metavar="SERVER:/path")
        common(p)
        p.set_defaults(func=_main)
    p = sub.add_parser("get", help="download a file")
    p.add_argument("remote", metavar="SERVER:/path")
    p.add_argument("local", metavar="LOCAL", nargs="?", help="local file (default: the remote name)")
    common(p)
    p.set_defaults(func=_main)
    p = sub.add_parser("put", help="upload a file")
    p.add_argument("remote", metavar="SERVER:/path", help="remote file (ending in / = keep LOCAL's name)")
    p.add_argument("local", metavar="LOCAL", help="local file ('-' = stdin)")
    common(p)
    p.set_defaults(func=_main)


#: ``--ike-timeout`` when not given (seconds), as for ``rpclatch rpc ping --sec auto``.
DEFAULT_IKE_TIMEOUT = 2.0


# --- formatting ------------------------------------------------------------------------------------


def human_size(n: float) -> str:
    """1023 -> '1023', 1536 -> '1.5K', 3*2**20 -> '3.0M' (binary units, like ls -h)."""
    for unit in ("", "K", "M", "G", "T", "P"):
        if abs(n) < 1024 or unit == "P":
            return f"{int(n)}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def mode_string(ftype: int, mode: int) -> str:
    return _FTYPE_CHAR.get(int(ftype), "?") + statmod.filemode(mode)[1:]


def parse_remote(spec: str) -> tuple[str, str]:
    """``host:/path`` or ``[v6addr]:/path`` -> (host, path)."""
    from rpclatch.cli import UserError

    if spec.startswith("["):
        end = spec.find("]:")
        if end < 0:
            raise UserError(f"bad remote {spec!r}: expected [ADDRESS]:/path")
        host, path = spec[1:end], spec[end + 2 :]
    else:
        host, sep, path = spec.partition(":")
        if not sep:
            raise UserError(f"bad remote {spec!r}: expected SERVER:/path (e.g. nfs.example:/export/file)")
    if not host:
        raise UserError(f"bad remote {spec!r}: the server name is missing")
    return host, path or "/"


class Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, label: str, total: int | None, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.label = label
        self.total = total
        self.t0 = time.monotonic()
        self.last = 0.0

    def update(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.total = total
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.1 and done != self.total):
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-6)
        if self.total:
            frac = min(1.0, done / self.total)
            bar = "#" * int(frac * 24)
            text = (
                f"\r{self.label} {frac * 100:3.0f}% [{bar:<24}] {human_size(done)}/"
                f"{human_size(self.total)} {human_size(rate)}/s"
            )
        else:
            text = f"\r{self.label} {human_size(done)} {human_size(rate)}/s"
        self.stream.write(text[:200] + "\033[K")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


# --- running ---------------------------------------------------------------------------------------


def _main(args: argparse.Namespace) -> int:
    from rpclatch.cli import UserError

    host, path = parse_remote(args.remote)
    if args.gss_target is not None:
        from rpclatch.commands.common import parse_service_name

        parse_service_name(args.gss_target, "--target")
        if args.sec == "sys":
            raise UserError(
                "--target names the server's RPCSEC_GSS principal: use it with --sec "
                "auto, krb5, krb5i or krb5p"
            )
    if args.sec != "auto":
        for option, value in (
            ("--keyd", args.keyd),
            ("--fallback", args.fallback),
            ("--ike-timeout", args.ike_timeout),
            ("--gss-version", args.gss_version),
        ):
            if value is not None:
                raise UserError(f"{option} is for --sec auto (BYPASS-OR-PROTECT): drop it or use --sec auto")
    return asyncio.run(_guarded(args, host, path, _dispatch(args, host, path)))


async def _guarded(args: argparse.Namespace, host: str, path: str, coro: Awaitable[int]) -> int:
    try:
        return await coro
    except Exception as exc:
        from rpclatch.cli import UserError

        if isinstance(exc, UserError):
            raise
        raise UserError(explain(exc, host, args.port, path, args.sec, args.gss_target)) from exc


def explain(exc: BaseException, host: str, port: int, path: str, sec: str, target: str | None = None) -> str:
    """One line for the user: what failed and how to fix it. ``target`` is the ``--target`` given
    (None: the default ``nfs@HOST``); a context that failed because of it says so."""
    from rpclatch.commands.common import TargetProblem, gss_target_problem
    from rpclatch.gss.errors import GssError, RpcGssError
    from rpclatch.nfs4.const import nfsstat4
    from rpclatch.nfs4.errors import Nfs4LocalError, Nfs4RemoteError, Nfs4SecurityError
    from rpclatch.rpc.errors import (
        RpcAcceptError,
        RpcAuthError,
        RpcConnectionClosed,
        RpcError,
        RpcTimeout,
    )

    where = f"{host}:{path}"
    problem = gss_target_problem(exc.__cause__ if isinstance(exc, Nfs4SecurityError) else exc)
    if problem is not None:
        name = target or f"nfs@{host}"
        fix = "fix --target" if target else "give the server's name with --target SERVICE@HOST"
        if problem is TargetProblem.UNKNOWN_TO_KDC:
            return f"{host}: the KDC knows no service principal for {name} ({fix})"
        return f"{host}:{port} does not accept {name}: it serves under another principal ({fix})"
    if isinstance(exc, Nfs4SecurityError):
        return str(exc)
    from rpclatch.connect.kernel import KeydUnavailable
    from rpclatch.connect.world import ConnectError

    if isinstance(exc, KeydUnavailable):
        return f"--keyd {exc} (give the key manager's control socket with --keyd)"
    if isinstance(exc, ConnectError):
        return f"{host}:{port}: {exc}"
    if isinstance(exc, Nfs4RemoteError):
        s = exc.status
        text = {
            nfsstat4.NFS4ERR_NOENT: "no such file or directory",
            nfsstat4.NFS4ERR_ACCESS: "permission denied",
            nfsstat4.NFS4ERR_PERM: "permission denied (not owner)",
            nfsstat4.NFS4ERR_ISDIR: "is a directory",
            nfsstat4.NFS4ERR_NOTDIR: "not a directory",
            nfsstat4.NFS4ERR_EXIST: "already exists",
            nfsstat4.NFS4ERR_NOTEMPTY: "directory not empty",
            nfsstat4.NFS4ERR_ROFS: "read-only file system",
            nfsstat4.NFS4ERR_NOSPC: "no space left on the server",
            nfsstat4.NFS4ERR_DQUOT: "quota exceeded on the server",
            nfsstat4.NFS4ERR_NAMETOOLONG: "name too long",
            nfsstat4.NFS4ERR_WRONGSEC: f"the server refuses --sec {sec} here; try --sec auto",
            nfsstat4.NFS4ERR_GRACE: "the server is still in its grace period; try again shortly",
            nfsstat4.NFS4ERR_DELAY: "the server is busy; try again shortly",
        }.get(s)
        if text is not None:
            return f"{where}: {text}"
        op = f" in {exc.op.name}" if exc.op is not None else ""
        return f"{where}: server error {s.name}{op}"
    if isinstance(exc, GssError):
        return (
            f"Kerberos failed for --sec {sec} ({exc}); get credentials with kinit "
            "(or set KRB5CCNAME / KRB5_CLIENT_KTNAME) or use --sec sys"
        )
    if isinstance(exc, RpcGssError):  # e.g. the --sec auto policy's context creation
        return f"{host}:{port}: RPCSEC_GSS failed: {exc}"
    if isinstance(exc, RpcAuthError):
        hint = "; try --sec auto" if sec != "auto" else ""
        return f"{host}:{port} rejected our credentials ({exc}){hint}"
    if isinstance(exc, RpcTimeout):
        return f"{host}:{port} did not answer in time (is the NFS server up?)"
    if isinstance(exc, RpcConnectionClosed):
        return f"{host}:{port} closed the connection ({exc})"
    if isinstance(exc, RpcAcceptError):
        return f"{host}:{port} does not serve NFSv4 ({exc})"
    if isinstance(exc, RpcError | Nfs4LocalError):
        return f"{host}:{port}: {exc}"
    if isinstance(exc, TimeoutError):
        return f"cannot reach {host}:{port}: connection timed out"
    if isinstance(exc, OSError) and exc.filename is None:
        reason = os.strerror(exc.errno) if exc.errno else (str(exc) or type(exc).__name__)
        return f"cannot reach {host}:{port}: {reason}"
    if isinstance(exc, OSError):
        return f"{exc.filename}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc} (set RPCLATCH_DEBUG=1 for a traceback)"


def connection_hook(sec: str, fallback: str | None = None) -> ConnectionSecurityHook:
    """The connection-security hook for ``--sec`` without a key manager: ``auto`` goes through
    BYPASS-OR-PROTECT without IPsec (:func:`rpclatch.connect.nfs.connection_security`, the
    ``fallback`` service first); explicit flavors connect plainly."""
    from rpclatch.nfs4.security import default_connection_security

    if sec != "auto":
        return default_connection_security
    from rpclatch.connect import ConnectPolicy, FallbackService
    from rpclatch.connect.nfs import connection_security

    policy = ConnectPolicy(fallback=FallbackService(fallback or FallbackService.PRIVACY.value))

    async def hook(host: str, port: int, flavor: str) -> ConnectionSecurity:
        return await connection_security(host, port, flavor, replace(policy, port=port))

    return hook


def keyd_socket(args: argparse.Namespace) -> Path | None:
    """The key manager for ``--sec auto``: ``--keyd``, else the default socket of ``rpclatch
    ipsec keyd`` if it exists, else None (no IPsec is attempted)."""
    from rpclatch.commands.ipsec import default_socket

    if args.sec != "auto":
        return None
    if args.keyd is not None:
        return Path(args.keyd)
    default = default_socket(None)
    return default if default.exists() else None


def security_row_line(record: SecurityRecord, seconds: float) -> str:
    """The ``-v`` line naming the policy row that happened and why (as ``rpc ping --sec auto``)."""
    return (
        f"rpclatch: security: row ({record.latch_outcome.name}, {record.bind_outcome.name}) "
        f"in {seconds:.3f}s: {record.summary()}"
        + (f"; IPsec: {record.protection_error}" if record.protection_error else "")
        + (f"; binding: {record.bind_detail}" if record.bind_detail else "")
    )


async def _kernel_hook(args: argparse.Namespace, host: str, keyd: Path) -> KernelConnectionSecurity:
    """The kernel-world hook with the key manager on ``keyd`` (connected here: a missing or
    unusable socket is one line naming ``--keyd``)."""
    import socket

    from rpclatch.cli import UserError
    from rpclatch.connect import ConnectPolicy, FallbackService
    from rpclatch.connect.kernel import KernelClientWorld, KeydUnavailable
    from rpclatch.connect.nfs import KernelConnectionSecurity
    from rpclatch.gss.client import VersionPolicy
    from rpclatch.gss.provider import GssapiProvider

    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"{host}: cannot resolve host name ({exc.strerror})") from None
    world = KernelClientWorld(
        str(infos[0][4][0]), keyd, rpc_timeout=args.timeout, connect_timeout=args.timeout
    )
    try:
        await world.start()
    except KeydUnavailable as exc:
        raise UserError(f"--keyd {exc} (give the key manager's control socket with --keyd)") from None
    policy = ConnectPolicy(
        port=args.port,
        fallback=FallbackService(args.fallback or FallbackService.PRIVACY.value),
        ike_timeout=args.ike_timeout if args.ike_timeout is not None else DEFAULT_IKE_TIMEOUT,
    )
    verbose = bool(getattr(args, "verbose", 0))

    def show(record: SecurityRecord, seconds: float) -> None:
        if verbose:
            print(security_row_line(record, seconds), file=sys.stderr, flush=True)

    target = args.gss_target or f"nfs@{host}"
    versions = VersionPolicy.V1_ONLY if args.gss_version == "1" else VersionPolicy.PREFER_V2
    return KernelConnectionSecurity(
        world, target, GssapiProvider(), policy, gss_versions=versions, on_record=show
    )


async def _with_client(args: argparse.Namespace, host: str, body: Callable[[Any], Awaitable[T]]) -> T:
    from rpclatch.nfs4.client import Nfs4Client
    from rpclatch.nfs4.options import Nfs4Options

    options = Nfs4Options(
        port=args.port,
        minorversion=args.minor,
        sec=args.sec,
        gss_target=args.gss_target,
        timeout=args.timeout,
    )
    keyd = keyd_socket(args)
    kernel = await _kernel_hook(args, host, keyd) if keyd is not None else None
    hook = kernel if kernel is not None else connection_hook(args.sec, args.fallback)
    try:
        client = await Nfs4Client.connect(host, options, security_hook=hook)
        try:
            return await body(client)
        finally:
            await client.close()
    finally:
        if kernel is not None:
            await kernel.close()


async def _dispatch(args: argparse.Namespace, host: str, path: str) -> int:
    cmd = args.nfs_command
    out = sys.stdout
    if cmd == "ls":

        async def ls(client: Any) -> int:
            info = await client.stat(path)
            if not info.is_dir:
                out.write(_ls_line(info, info.name) + "\n")
                return 0
            for e in sorted(await client.listdir(path), key=lambda e: e.name):
                if e.info is None:
                    reason = e.error.name if e.error is not None else "no attributes"
                    out.write(
                        f"?????????? {'?':>3} {'?':<8} {'?':<8} {'?':>6} {'?':>12} {e.name}  ({reason})\n"
                    )
                else:
                    out.write(_ls_line(e.info, e.name) + "\n")
            return 0

        return await _with_client(args, host, ls)
    if cmd == "stat":

        async def st(client: Any) -> int:
            i = await client.stat(path)
            rows = [
                ("path", f"{host}:{path}"),
                ("type", i.type.name),
                ("size", f"{i.size} ({human_size(i.size)})"),
                ("mode", f"{i.mode:04o} ({mode_string(i.type, i.mode)})"),
                ("owner", i.owner),
                ("group", i.group),
                ("links", str(i.nlink)),
                ("fileid", str(i.fileid)),
                ("fsid", f"{i.fsid[0]}.{i.fsid[1]}"),
                ("change", str(i.change)),
                ("access", _when(i.atime)),
                ("modify", _when(i.mtime)),
                ("metadata", _when(i.ctime)),
                ("security", client.flavor.value if client.flavor else "?"),
                ("version", f"4.{client.minorversion}"),
            ]
            for k, v in rows:
                out.write(f"{k + ':':<10} {v}\n")
            return 0

        return await _with_client(args, host, st)
    if cmd == "cat":

        async def cat(client: Any) -> int:
            sink = sys.stdout.buffer
            async for chunk in client.read_file(path):
                sink.write(chunk)
            sink.flush()
            return 0

        return await _with_client(args, host, cat)
    if cmd == "get":
        local = Path(args.local or (Path(path).name or "download"))
        if local.is_dir():
            local = local / (Path(path).name or "download")
        return await _with_client(args, host, lambda client: _get(client, path, local))
    if cmd == "put":
        remote = path
        if remote.endswith("/"):
            if args.local == "-":
                from rpclatch.cli import UserError

                raise UserError("put from stdin needs a remote file name, not a directory")
            remote += Path(args.local).name
        return await _with_client(args, host, lambda client: _put(client, remote, args.local))
    if cmd == "rm":

        async def rm(client: Any) -> int:
            await client.remove(path)
            return 0

        return await _with_client(args, host, rm)
    if cmd == "mkdir":

        async def mk(client: Any) -> int:
            await client.mkdir(path)
            return 0

        return await _with_client(args, host, mk)
    raise AssertionError(cmd)  # pragma: no cover - argparse restricts the choices


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1e9):09d}"


def _ls_line(info: Any, name: str) -> str:
    mtime = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.mtime))
    return (
        f"{mode_string(info.type, info.mode)} {info.nlink:>3} {info.owner[:16]:<8} "
        f"{info.group[:16]:<8} {human_size(info.size):>6} {mtime} {name}"
    )


async def _get(client: Any, path: str, local: Path) -> int:
    bar = Progress(f"get {Path(path).name}", None)
    fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", dir=str(local.parent.resolve()))
    try:
        with os.fdopen(fd, "wb") as fh:
            async for chunk in client.read_file(path, progress=bar.update):
                fh.write(chunk)
        os.replace(tmp, local)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        bar.finish()
    return 0


async def _put(client: Any, remote: str, local: str) -> int:
    if local == "-":
        source: Any = sys.stdin.buffer
        total = None
    else:
        source = open(local, "rb")  # noqa: SIM115 - closed below, after the async upload
        total = os.fstat(source.fileno()).st_size
    bar = Progress(f"put {Path(remote).name}", total)
    try:
        await client.write_file(remote, source, progress=bar.update)
    finally:
        bar.finish()
        if local != "-":
            source.close()
    return 0
