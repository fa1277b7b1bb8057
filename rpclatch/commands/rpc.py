"""``rpclatch rpc``: ping an RPC program, serve the rpclatch test program, dump rpcbind.

The subcommands ``ping`` (:func:`cmd_ping`), ``serve`` (:func:`cmd_serve`) and ``dump``
(:func:`cmd_dump`) are thin users of :mod:`rpclatch.rpc` (asyncio clients and server, rpcbind, the
test program) and, for ``--sec krb5|krb5i|krb5p``, of :mod:`rpclatch.gss`. Their options are
documented in the argparse help. Failures print one line, e.g. ``rpclatch: error: 127.0.0.1:
program 100003 version 9 not available (server has 2..4)``, and exit 1; bad arguments exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rpclatch.commands.common import GSS_VERSION_HELP, port_arg, positive_arg, uint32_arg
from rpclatch.rpc.messages import AcceptStat

if TYPE_CHECKING:
    from rpclatch.commands.common import StopSignals
    from rpclatch.connect.kernel import KernelServerEndpoint
    from rpclatch.rpc.aio import RpcServer, RpcStreamClient, RpcUdpClient
    from rpclatch.rpc.server import RpcDispatcher

T = TypeVar("T")

#: ``rpc serve --max-requests-per-context`` default, RFC 5403 §9 (a). Kerberos has no wider MIC to
#: demand for BIND_CHANNEL than for DATA (RFC 4121 MICs carry the session enctype's checksum), so
#: the server limits the DATA requests -- the MICs a man in the middle can replay as a forged
#: BIND_CHANNEL checksum -- per context instead. At N = 2**20 the chance that one of them passes is
#: at most 2**20 * 2**-96 = 2**-76 with the 96-bit checksums of aes*-cts-hmac-sha1-96 (RFC 3962),
#: less with aes*-sha2 (RFC 8009). Reaching the cap costs the client one refresh (CTXPROBLEM, then
#: INIT with its cached service ticket and BIND_CHANNEL: two round trips), i.e. nothing measurable
#: per call, while 2**20 stays far below MAXSEQ. 0 turns the cap off.
DEFAULT_MAX_REQUESTS_PER_CONTEXT = 2**20

ETC_RPC = Path("/etc/rpc")
_BUILTIN_RPC_NAMES = {
    "portmapper": 100000,
    "portmap": 100000,
    "rpcbind": 100000,
    "sunrpc": 100000,
    "nfs": 100003,
    "mountd": 100005,
    "mount": 100005,
    "nlockmgr": 100021,
    "status": 100024,
    "rpclatch_test": 0x20000A11,
}


class CommandFailed(Exception):
    """A runtime failure reported as one line (exit 1)."""


def read_rpc_names(path: Path = ETC_RPC) -> dict[str, int]:
    """name/alias -> program number from an /etc/rpc style file (plus a few built-in names)."""
    names = dict(_BUILTIN_RPC_NAMES)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return names
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[1].isdigit():
            for name in (fields[0], *fields[2:]):
                names.setdefault(name, int(fields[1]))
    return names


def program_names(path: Path = ETC_RPC) -> dict[int, str]:
    """program number -> its first name in /etc/rpc (a few built-in names if it is missing)."""
    out: dict[int, str] = {
        100000: "portmapper",
        100003: "nfs",
        100005: "mountd",
        100021: "nlockmgr",
        100024: "status",
    }
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    seen: set[int] = set()
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[1].isdigit() and int(fields[1]) not in seen:
            seen.add(int(fields[1]))
            out[int(fields[1])] = fields[0]
    out.setdefault(0x20000A11, "rpclatch_test")
    return out


def parse_program(text: str) -> int:
    from rpclatch.cli import UserError

    try:
        value = int(text, 0)
    except ValueError:
        value = -1
        prog = read_rpc_names().get(text)
        if prog is None:
            raise UserError(f"unknown RPC program {text!r}; give a number or a name from /etc/rpc") from None
        value = prog
    if not 0 <= value <= 0xFFFFFFFF:
        raise UserError(f"program number {text} out of range (0..4294967295)")
    return value


def describe_error(
    host: str,
    exc: BaseException,
    prog: int | None = None,
    vers: int | None = None,
    port: int | None = None,
    timeout: float | None = None,
) -> str:
    """One line for a failed RPC operation against ``host``."""
    from rpclatch.rpc.errors import (
        RpcAcceptError,
        RpcAuthError,
        RpcConnectionClosed,
        RpcMismatchError,
        RpcProtocolError,
        RpcTimeout,
    )

    what = f"program {prog}" if prog is not None else "the server"
    if isinstance(exc, RpcAcceptError):
        if exc.stat == AcceptStat.PROG_MISMATCH and exc.mismatch is not None:
            low, high = exc.mismatch
            return f"{host}: {what} version {vers} not available (server has {low}..{high})"
        if exc.stat == AcceptStat.PROG_UNAVAIL:
            return f"{host}: {what} not available"
        if exc.stat == AcceptStat.PROC_UNAVAIL:
            return f"{host}: {what} version {vers}: procedure not available"
        return f"{host}: {what} version {vers}: server replied {exc.stat.name}"
    if isinstance(exc, RpcMismatchError):
        return f"{host}: server does not speak RPC version 2 (has {exc.mismatch[0]}..{exc.mismatch[1]})"
    if isinstance(exc, RpcAuthError):
        return f"{host}: authentication failed: {exc}"
    if isinstance(exc, RpcTimeout | TimeoutError):
        limit = f" within {timeout:g} s" if timeout is not None else ""
        return f"{host}: no reply{limit} (host down, firewalled, or service not running?)"
    if isinstance(exc, ConnectionRefusedError) or (
        isinstance(exc, RpcConnectionClosed) and "refused" in str(exc)
    ):
        at = f" on port {port}" if port is not None else ""
        return f"{host}: connection refused{at} (is the service running?)"
    if isinstance(exc, socket.gaierror):
        return f"{host}: cannot resolve host name ({exc.strerror})"
    if isinstance(exc, RpcProtocolError | RpcConnectionClosed):
        return f"{host}: {exc}"
    if isinstance(exc, OSError):
        return f"{host}: {exc.strerror or exc}"
    return f"{host}: {type(exc).__name__}: {exc}"


def _run(coro_factory: Callable[[], Awaitable[T]]) -> T:
    async def runner() -> T:
        return await coro_factory()

    return asyncio.run(runner())


# -- ping ------------------------------------------------------------------------------------


async def _connect(
    host: str,
    port: int,
    udp: bool,
    auth: Any,
    timeout: float,
) -> RpcStreamClient | RpcUdpClient:
    from rpclatch.rpc.aio import RpcStreamClient, RpcUdpClient

    if udp:
        return await RpcUdpClient.connect(
            host, port, auth=auth, timeout=timeout, retransmit_initial=min(0.5, timeout / 4)
        )
    return await RpcStreamClient.connect_tcp(host, port, auth=auth, timeout=timeout, connect_timeout=timeout)


async def _lookup_port(
    host: str, prog: int, vers: int | None, udp: bool, timeout: float, rpcbind_port: int
) -> int:
    """The port of ``prog``/``vers`` from HOST's portmapper (any version's port when None)."""
    from rpclatch.rpc.rpcbind import IPPROTO_TCP, IPPROTO_UDP, PMAP_PORT, RpcbindClient

    try:
        rpcb = await RpcbindClient.connect(
            host, transport="udp" if udp else "tcp", port=rpcbind_port, timeout=timeout
        )
    except (OSError, TimeoutError) as exc:
        line = describe_error(host, exc, port=rpcbind_port, timeout=timeout)
        line = line.replace("(is the service running?)", "(is rpcbind running? use --port)")
        raise CommandFailed(line) from exc
    prot = IPPROTO_UDP if udp else IPPROTO_TCP
    try:
        if vers is not None:
            port = await rpcb.pmap_getport(prog, vers, prot)
        else:
            entries = await rpcb.pmap_dump()
            ports = sorted((m.vers, m.port) for m in entries if m.prog == prog and m.prot == prot)
            port = ports[0][1] if ports else 0
    except Exception as exc:
        raise CommandFailed(describe_error(host, exc, PMAP_PORT, 2, rpcbind_port, timeout)) from exc
    finally:
        await rpcb.close()
    if port == 0:
        which = f"program {prog}" + (f" version {vers}" if vers is not None else "")
        raise CommandFailed(
            f"{host}: {which} is not registered with rpcbind "
            f"for {'udp' if udp else 'tcp'} (use --port to call it directly)"
        )
    return port


async def _ping(args: argparse.Namespace) -> int:
    from rpclatch.rpc.errors import RpcAcceptError
    from rpclatch.rpc.sec import client_auth_for_sec

    if args.sec == SEC_AUTO:
        return await _ping_auto(args)
    for option, value in (("--keyd", args.keyd), ("--gss-version", args.gss_version)):
        if value is not None:
            from rpclatch.cli import UserError

            raise UserError(f"{option} is for --sec auto (BYPASS-OR-PROTECT): use them together")
    host, timeout, udp = args.host, args.timeout, args.udp
    prog = parse_program(args.prog)
    options: dict[str, Any] = {"host": host, "prog": prog}
    if args.target is not None:
        options["target"] = _gss_only(args.target, "--target", [args.sec])
    auth = client_auth_for_sec(args.sec, **options)
    port = (
        args.port
        if args.port is not None
        else await _lookup_port(host, prog, args.vers, udp, timeout, _rpcbind_port(args.rpcbind_port))
    )
    try:
        client = await _connect(host, port, udp, auth, timeout)
    except (OSError, TimeoutError) as exc:
        raise CommandFailed(describe_error(host, exc, prog, args.vers, port, timeout)) from exc
    try:
        await _establish_gss(
            auth, client, host, prog, args.vers if args.vers is not None else 1, timeout, args.target
        )
        if args.vers is not None:
            try:
                await client.call(prog, args.vers, 0, b"")
            except Exception as exc:
                raise CommandFailed(describe_error(host, exc, prog, args.vers, port, timeout)) from exc
            print(f"program {prog} version {args.vers} ready and waiting")
            return 0
        # No version: like rpcinfo, learn the range from PROG_MISMATCH, then ping each version.
        try:
            await client.call(prog, 0, 0, b"")
            versions = range(0, 1)
        except RpcAcceptError as exc:
            if exc.stat != AcceptStat.PROG_MISMATCH or exc.mismatch is None:
                raise CommandFailed(describe_error(host, exc, prog, 0, port, timeout)) from exc
            low, high = exc.mismatch
            versions = range(low, min(high, low + 64) + 1)
        except Exception as exc:
            raise CommandFailed(describe_error(host, exc, prog, 0, port, timeout)) from exc
        failed = 0
        for vers in versions:
            try:
                await client.call(prog, vers, 0, b"")
                print(f"program {prog} version {vers} ready and waiting")
            except Exception as exc:
                failed += 1
                print(
                    f"rpclatch: error: {describe_error(host, exc, prog, vers, port, timeout)}",
                    file=sys.stderr,
                )
        return 1 if failed else 0
    finally:
        await _destroy_gss(auth, client, prog, args.vers if args.vers is not None else 1)
        await client.close()


#: ``rpc ping --sec auto``: BYPASS-OR-PROTECT (try IPsec through the key manager, latch, bind
#: RPCSEC_GSS v2 to the latch, else fall back to krb5i/krb5p; :mod:`rpclatch.connect`).
SEC_AUTO = "auto"
#: ``rpc serve --ipsec``: the one policy offered.
IPSEC_BYPASS_OR_PROTECT = "bypass-or-protect"


def _keyd_path(given: str | None) -> Path:
    """``--keyd`` or the socket ``rpclatch ipsec keyd`` listens on by default."""
    from rpclatch.commands.ipsec import default_socket

    return Path(given) if given else default_socket(None)


def _numeric_host(host: str) -> str:
    """HOST as an address (the latch names the exact 5-tuple)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise CommandFailed(f"{host}: cannot resolve host name ({exc.strerror})") from exc
    return str(infos[0][4][0])


async def _ping_auto(args: argparse.Namespace) -> int:
    """``--sec auto``: one connection under BYPASS-OR-PROTECT, procedure 0 of each version."""
    import time

    from rpclatch.cli import UserError
    from rpclatch.connect import ConnectError, ConnectPolicy, FallbackService, ProtectedConnection
    from rpclatch.connect.gss import RpcsecGssConnector
    from rpclatch.connect.kernel import KernelClientWorld, KeydUnavailable
    from rpclatch.gss.client import VersionPolicy
    from rpclatch.gss.errors import RpcGssError
    from rpclatch.gss.provider import GssapiProvider
    from rpclatch.rpc.errors import RpcAcceptError, RpcError

    if args.udp:
        raise UserError("--sec auto latches a TCP connection: drop --udp")
    host, timeout = args.host, args.timeout
    prog = parse_program(args.prog)
    target = _gss_only(args.target, "--target", ["krb5"]) if args.target is not None else f"nfs@{host}"
    port = (
        args.port
        if args.port is not None
        else await _lookup_port(host, prog, args.vers, False, timeout, _rpcbind_port(args.rpcbind_port))
    )
    keyd = _keyd_path(args.keyd)
    world = KernelClientWorld(_numeric_host(host), keyd, rpc_timeout=timeout, connect_timeout=timeout)
    try:
        await world.start()
    except KeydUnavailable as exc:
        raise CommandFailed(f"--keyd {exc} (give the key manager's control socket with --keyd)") from exc
    fallback = FallbackService(args.fallback)
    policy = ConnectPolicy(port=port, fallback=fallback, ike_timeout=args.ike_timeout)
    verbose = bool(getattr(args, "verbose", 0))
    # the policy's steps are logged (rpclatch.connect.client: INFO with -v, warnings always)
    gss_versions = VersionPolicy.V1_ONLY if args.gss_version == "1" else VersionPolicy.PREFER_V2
    connector = RpcsecGssConnector(
        GssapiProvider(), target, prog, args.vers or 1, fallback, versions=gss_versions
    )
    pc = ProtectedConnection(world, connector, policy)
    try:
        t0 = time.monotonic()
        try:
            record = await pc.aconnect()
        except RpcGssError as exc:
            raise CommandFailed(gss_failure(host, exc, target, args.target is not None)) from exc
        except (ConnectError, RpcError, OSError, TimeoutError) as exc:
            raise CommandFailed(describe_error(host, exc, prog, args.vers, port, timeout)) from exc
        elapsed = time.monotonic() - t0
        if verbose:
            print(
                f"rpclatch: security: row ({record.latch_outcome.name}, {record.bind_outcome.name}) "
                f"in {elapsed:.3f}s: {record.summary()}"
                + (f"; IPsec: {record.protection_error}" if record.protection_error else ""),
                file=sys.stderr,
            )
        if args.vers is not None:
            versions: range = range(args.vers, args.vers + 1)
        else:  # like rpcinfo, learn the range from PROG_MISMATCH
            try:
                await pc.acall(prog, 0, 0, b"")
                versions = range(0, 1)
            except RpcAcceptError as exc:
                if exc.stat != AcceptStat.PROG_MISMATCH or exc.mismatch is None:
                    raise CommandFailed(describe_error(host, exc, prog, 0, port, timeout)) from exc
                versions = range(exc.mismatch[0], min(exc.mismatch[1], exc.mismatch[0] + 64) + 1)
            except (ConnectError, RpcError, OSError) as exc:
                raise CommandFailed(describe_error(host, exc, prog, 0, port, timeout)) from exc
        failed = 0
        for vers in versions:
            try:
                await pc.acall(prog, vers, 0, b"")
                print(f"program {prog} version {vers} ready and waiting ({pc.security.gss_service.sec_name})")
            except (ConnectError, RpcError, OSError) as exc:
                failed += 1
                line = describe_error(host, exc, prog, vers, port, timeout)
                print(f"rpclatch: error: {line}", file=sys.stderr)
        return 1 if failed else 0
    finally:
        await pc.aclose()
        await world.close()


async def _establish_gss(
    auth: Any,
    client: RpcStreamClient | RpcUdpClient,
    host: str,
    prog: int,
    vers: int,
    timeout: float,
    target: str | None,
) -> None:
    """RPCSEC_GSS (``--sec krb5*``) needs a context before the first call (RFC 2203 §5.2)."""
    from rpclatch.gss.client import GssClientAuth, rpc_call_via
    from rpclatch.gss.errors import RpcGssError
    from rpclatch.rpc.errors import RpcError

    if not isinstance(auth, GssClientAuth):
        return
    try:
        await auth.establish(rpc_call_via(client, prog, vers))
    except RpcGssError as exc:
        raise CommandFailed(gss_failure(host, exc, auth.target, target is not None)) from exc
    except (RpcError, OSError, TimeoutError) as exc:
        raise CommandFailed(describe_error(host, exc, prog, vers, None, timeout)) from exc


def gss_failure(host: str, exc: BaseException, target: str, explicit_target: bool) -> str:
    """One line for a failed RPCSEC_GSS context creation with ``target`` (RFC 2203 §5.2.2); a wrong
    target is told apart by its status codes (:func:`~rpclatch.commands.common.gss_target_problem`)."""
    from rpclatch.commands.common import TargetProblem, gss_target_problem
    from rpclatch.gss.errors import ContextInitFailed

    fix = "fix --target" if explicit_target else "give the server's name with --target SERVICE@HOST"
    problem = gss_target_problem(exc)
    if problem is TargetProblem.UNKNOWN_TO_KDC:
        return f"{host}: the KDC knows no service principal for {target} ({fix})"
    if problem is TargetProblem.NOT_THE_SERVERS:
        return f"{host}: the server does not accept {target}: it serves under another principal ({fix})"
    if isinstance(exc, ContextInitFailed):
        return (
            f"{host}: the server refused the RPCSEC_GSS context for {target}: {exc} "
            f"(is {target} its principal? {fix})"
        )
    return (
        f"{host}: RPCSEC_GSS context creation failed: {exc} (kinit first, or "
        "export the realm's KRB5_CONFIG and KRB5CCNAME)"
    )


async def _destroy_gss(auth: Any, client: RpcStreamClient | RpcUdpClient, prog: int, vers: int) -> None:
    """Best-effort RPCSEC_GSS_DESTROY (RFC 2203 §5.4) of the context made by _establish_gss, over
    the transport it was made on: a UDP socket has no connection to lose, a TCP one may be gone."""
    from rpclatch.gss.client import GssClientAuth, rpc_call_via
    from rpclatch.rpc.aio import RpcStreamClient

    if not isinstance(auth, GssClientAuth) or not auth.established:
        return
    if isinstance(client, RpcStreamClient) and client.closed:
        auth.close()  # nothing to send it on; the server forgets the context on expiry
        return
    try:
        await auth.destroy(rpc_call_via(client, prog, vers, timeout=2.0))
    except Exception:  # the server forgets it on expiry anyway
        auth.close()


def cmd_ping(args: argparse.Namespace) -> int:
    """``rpclatch rpc ping HOST PROG [VERS]``: call procedure 0 and print ``program P version V
    ready and waiting`` like ``rpcinfo -t``. PROG is a number or a name from /etc/rpc (``nfs``);
    without VERS every version the server has is tried. The port comes from the host's rpcbind
    (portmap GETPORT) unless ``--port`` is given. With ``--sec krb5|krb5i|krb5p`` an RPCSEC_GSS
    context for ``--target`` (default ``nfs@HOST``) is created first and destroyed at the end,
    over TCP and UDP alike."""
    return _guard(lambda: _run(lambda: _ping(args)))


# -- dump ------------------------------------------------------------------------------------


async def _dump(args: argparse.Namespace) -> int:
    from rpclatch.rpc.rpcbind import PMAP_PORT, RpcbindClient

    host = args.host
    port = _rpcbind_port(args.port)
    try:
        rpcb = await RpcbindClient.connect(
            host, transport="udp" if args.udp else "tcp", port=port, timeout=args.timeout
        )
    except (OSError, TimeoutError) as exc:
        line = describe_error(host, exc, port=port, timeout=args.timeout)
        raise CommandFailed(line.replace("(is the service running?)", "(is rpcbind running?)")) from exc
    try:
        entries = await rpcb.pmap_dump()
    except Exception as exc:
        raise CommandFailed(describe_error(host, exc, PMAP_PORT, 2, port, args.timeout)) from exc
    finally:
        await rpcb.close()
    names = program_names()
    print("   program vers proto   port  service")
    for m in entries:
        print(f"{m.prog:10d} {m.vers:4d} {m.protocol_name:>5s} {m.port:6d}  {names.get(m.prog, '')}".rstrip())
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    """``rpclatch rpc dump HOST``: the host's portmap list, like ``rpcinfo -p``."""
    return _guard(lambda: _run(lambda: _dump(args)))


# -- serve -----------------------------------------------------------------------------------


async def _serve(args: argparse.Namespace, signals: StopSignals) -> int:
    from rpclatch.gss.wire import Service
    from rpclatch.rpc import rpcbind
    from rpclatch.rpc.aio import RpcServer
    from rpclatch.rpc.sec import server_auths_for_sec
    from rpclatch.rpc.server import RpcDispatcher
    from rpclatch.rpc.testprog import RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, add_test_program

    if args.keyd is not None and args.ipsec is None:
        from rpclatch.cli import UserError

        raise UserError("--keyd is the key manager for --ipsec: use them together")
    tcp = args.tcp or not args.udp
    udp = args.udp or not args.tcp
    sec = args.sec or ["none", "sys"]
    options: dict[str, Any] = {"host": args.host}
    if args.principal is not None:
        options["acceptor"] = _gss_only(args.principal, "--principal", sec)
    if args.max_requests_per_context < 0:
        from rpclatch.cli import UserError

        raise UserError(
            f"--max-requests-per-context {args.max_requests_per_context}: give a count "
            "of requests, or 0 for no cap"
        )
    options["max_requests_per_context"] = args.max_requests_per_context or None
    gss_names = _gss_sec_names()
    gss_services = [Service.from_sec_name(name) for name in sec if name in gss_names]
    if gss_services:  # one RPCSEC_GSS server: its floor is the weakest service listed
        options["min_service"] = min(gss_services)
    dispatcher = RpcDispatcher(server_auths_for_sec(sec, **options))
    add_test_program(dispatcher)
    limits: dict[str, Any] = {
        "max_connections": args.max_connections,
        "idle_timeout": args.idle_timeout,
        "write_timeout": args.write_timeout,
    }
    server: RpcServer | KernelServerEndpoint
    tcp_port = udp_port = None
    if args.ipsec is not None:
        server, tcp_port = await _serve_latched(args, dispatcher, limits)
    else:
        server = RpcServer(dispatcher, **limits)
        try:
            if tcp:
                tcp_port = await server.listen_tcp(args.host, args.port)
            if udp:
                udp_port = await server.listen_udp(args.host, args.port if args.port else (tcp_port or 0))
        except OSError as exc:
            await server.close()
            raise CommandFailed(f"{args.host}: cannot listen on port {args.port}: {exc.strerror}") from exc
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def request_stop() -> None:  # runs in a signal handler (StopSignals): must not raise
        if not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)

    signals.on_stop(request_stop)
    registered = False
    rpcbind_path = args.rpcbind_socket or rpcbind.rpcbind_socket_path()
    try:
        if args.register:
            try:
                await rpcbind.register(
                    RPCLATCH_TEST_PROG,
                    RPCLATCH_TEST_VERS,
                    tcp_port=tcp_port,
                    udp_port=udp_port,
                    host=args.host,
                    path=rpcbind_path,
                )
                registered = True
            except Exception as exc:
                why = describe_error("rpcbind", exc).replace("(is the service running?)", "(is it running?)")
                raise CommandFailed(
                    f"cannot register with the local rpcbind ({rpcbind_path}): {why}"
                ) from exc
        listeners = (("tcp", tcp_port), ("udp", udp_port))
        where = ", ".join(f"{name} {args.host}:{port}" for name, port in listeners if port is not None)
        latched = (
            f" under {args.ipsec} (key manager {_keyd_path(args.keyd)})" if args.ipsec is not None else ""
        )
        print(
            f"serving program {RPCLATCH_TEST_PROG} version {RPCLATCH_TEST_VERS} on {where}{latched}"
            f"{' (registered with rpcbind)' if registered else ''}; Ctrl-C stops",
            flush=True,
        )
        await stop.wait()
    finally:
        # Signals that come now are absorbed by StopSignals: the cleanup always runs to its end.
        await server.close()
        if registered:
            registered = False
            try:
                await rpcbind.unregister(RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, path=rpcbind_path)
            except Exception as exc:
                print(f"rpclatch: warning: could not unregister from rpcbind: {exc}", file=sys.stderr)
    print("stopped", flush=True)
    return 0


async def _serve_latched(
    args: argparse.Namespace, dispatcher: RpcDispatcher, limits: dict[str, Any]
) -> tuple[KernelServerEndpoint, int]:
    """``--ipsec bypass-or-protect``: TCP only, a LISTENER latch on the 3-tuple, FIND_LATCH per
    accepted connection (:class:`rpclatch.connect.kernel.KernelServerEndpoint`)."""
    from rpclatch.cli import UserError
    from rpclatch.connect.kernel import KernelServerEndpoint, KeydUnavailable

    if args.udp:
        raise UserError("--ipsec latches TCP connections: drop --udp")
    keyd = _keyd_path(args.keyd)
    endpoint = KernelServerEndpoint(dispatcher, keyd, **limits)
    try:
        port = await endpoint.start(args.host, args.port)
    except KeydUnavailable as exc:
        raise CommandFailed(f"--keyd {exc} (give the key manager's control socket with --keyd)") from exc
    except OSError as exc:
        raise CommandFailed(f"{args.host}: cannot listen on port {args.port}: {exc.strerror}") from exc
    return endpoint, port


def cmd_serve(args: argparse.Namespace) -> int:
    """``rpclatch rpc serve``: serve the test program (0x20000A11 v1) over TCP and UDP (both
    unless one is chosen) until Ctrl-C or SIGTERM; ``--register`` registers it with the local
    rpcbind and unregisters it on exit. ``--principal`` is the RPCSEC_GSS acceptor name (default
    ``nfs@<this host's FQDN>``); ``--max-requests-per-context`` is the RFC 5403 §9 (a) cap
    (:data:`DEFAULT_MAX_REQUESTS_PER_CONTEXT`).

    SIGTERM/SIGINT stop the server; they are taken over before it starts and stay absorbed
    through its cleanup (closing listeners, rpcbind unregistration), so a repeated signal --
    ``timeout`` signals the process and its process group -- cannot leave a stale registration."""
    from rpclatch.commands.common import StopSignals

    with StopSignals() as signals:
        return _guard(lambda: _run(lambda: _serve(args, signals)))


def _gss_only(value: str, option: str, sec: list[str]) -> str:
    """A checked ``SERVICE@HOST`` for ``option``, which only means something with RPCSEC_GSS."""
    from rpclatch.cli import UserError
    from rpclatch.commands.common import parse_service_name

    name = parse_service_name(value, option)
    gss_names = _gss_sec_names()
    if not any(s in gss_names for s in sec):
        raise UserError(f"{option} names an RPCSEC_GSS principal: use it with --sec krb5, krb5i or krb5p")
    return name


def _gss_sec_names() -> frozenset[str]:
    """The ``--sec`` names that mean RPCSEC_GSS (krb5, krb5i, krb5p), from the one service table
    (imported here, not at module level: ``rpclatch rpc`` without GSS does not load the gss package)."""
    from rpclatch.gss.wire import SEC_SERVICES

    return frozenset(service.sec_name for service in SEC_SERVICES)


def _rpcbind_port(given: int | None) -> int:
    """``--rpcbind-port``/``--port`` if given, else ``$RPCLATCH_RPCBIND_PORT``, else 111."""
    if given is not None:
        return given
    from rpclatch.cli import UserError
    from rpclatch.rpc.rpcbind import rpcbind_port

    try:
        return rpcbind_port()
    except ValueError as exc:
        raise UserError(f"{exc}; unset it or give a port number") from None


def _guard(fn: Callable[[], int]) -> int:
    from rpclatch.rpc.sec import UnknownSec

    try:
        return fn()
    except CommandFailed as exc:
        print(f"rpclatch: error: {exc}", file=sys.stderr)
        return 1
    except UnknownSec as exc:
        from rpclatch.cli import UserError

        raise UserError(str(exc)) from exc


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("rpc", help="ONC RPC tools: ping, serve the test program, dump rpcbind")
    sub = parser.add_subparsers(dest="rpc_command", metavar="SUBCOMMAND", required=True)

    ping = sub.add_parser("ping", help="call procedure 0 of PROG/VERS on HOST (like rpcinfo -t/-u)")
    ping.add_argument("host", metavar="HOST")
    ping.add_argument("prog", metavar="PROG", help="program number or /etc/rpc name (e.g. nfs)")
    ping.add_argument(
        "vers",
        metavar="VERS",
        nargs="?",
        type=uint32_arg,
        help="version (default: every version the server has)",
    )
    ping.add_argument("--udp", action="store_true", help="use UDP (default TCP)")
    ping.add_argument("--tcp", action="store_false", dest="udp", help="use TCP (the default)")
    ping.add_argument("--port", type=port_arg, help="call this port instead of asking rpcbind")
    ping.add_argument(
        "--rpcbind-port",
        type=port_arg,
        metavar="N",
        help="HOST's rpcbind port for the lookup (default $RPCLATCH_RPCBIND_PORT or 111)",
    )
    ping.add_argument("--timeout", type=positive_arg, default=5.0, help="seconds to wait (default 5)")
    ping.add_argument(
        "--sec",
        default="none",
        metavar="FLAVOR",
        help="security flavor: none (default), sys, krb5, krb5i, krb5p (RPCSEC_GSS; "
        "needs Kerberos credentials, e.g. from `rpclatch realm up`), or auto: "
        "BYPASS-OR-PROTECT (IPsec through the key manager, RPCSEC_GSS v2 bound to the latch, "
        "channel_prot; else --fallback)",
    )
    ping.add_argument(
        "--keyd",
        metavar="SOCKET",
        help="the key manager's control socket for --sec auto (default: the one of `rpclatch ipsec keyd`)",
    )
    ping.add_argument(
        "--fallback",
        choices=("krb5i", "krb5p"),
        default="krb5p",
        help="--sec auto without a bound channel: this service (default krb5p)",
    )
    ping.add_argument(
        "--ike-timeout",
        type=positive_arg,
        default=2.0,
        metavar="SECONDS",
        help="--sec auto: wait this long for the latch before connecting in the clear (default 2)",
    )
    ping.add_argument("--gss-version", choices=("auto", "1"), default=None, help=GSS_VERSION_HELP)
    ping.add_argument(
        "--target",
        metavar="SERVICE@HOST",
        help="the server's RPCSEC_GSS name for --sec krb5* (default nfs@HOST; "
        "e.g. the --principal of `rpclatch rpc serve`)",
    )
    ping.set_defaults(func=cmd_ping)

    serve = sub.add_parser("serve", help="serve the rpclatch test program (0x20000A11 v1)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=port_arg, default=0, help="port (default: any free port)")
    serve.add_argument("--tcp", action="store_true", help="serve TCP (default: TCP and UDP)")
    serve.add_argument("--udp", action="store_true", help="serve UDP (default: TCP and UDP)")
    serve.add_argument(
        "--register", action="store_true", help="register with the local rpcbind (unregistered on exit)"
    )
    serve.add_argument(
        "--rpcbind-socket",
        metavar="PATH",
        help="the local rpcbind's unix socket for --register (default "
        "$RPCLATCH_RPCBIND_SOCKET or /run/rpcbind.sock)",
    )
    serve.add_argument(
        "--sec",
        action="append",
        metavar="FLAVOR",
        help="accept this security flavor (repeatable; default none and sys; krb5, "
        "krb5i, krb5p accept RPCSEC_GSS with the nfs/<host> key from KRB5_KTNAME)",
    )
    serve.add_argument(
        "--principal",
        metavar="SERVICE@HOST",
        help="RPCSEC_GSS acceptor name for --sec krb5* (default nfs@<this host's "
        "FQDN>; its key must be in KRB5_KTNAME)",
    )
    serve.add_argument(
        "--max-requests-per-context",
        type=int,
        metavar="N",
        default=DEFAULT_MAX_REQUESTS_PER_CONTEXT,
        help="RPCSEC_GSS requests one context may make before the client must "
        "refresh it (RFC 5403 §9 (a): bounds MIC-forging tries against "
        f"BIND_CHANNEL; default {DEFAULT_MAX_REQUESTS_PER_CONTEXT}, 0 = no cap)",
    )
    serve.add_argument(
        "--ipsec",
        choices=(IPSEC_BYPASS_OR_PROTECT,),
        help="latch accepted TCP connections through the key manager (RFC 5660): a latched one's "
        "channel is what RPCSEC_GSS v2 binds to, an unlatched one is served as is",
    )
    serve.add_argument(
        "--keyd",
        metavar="SOCKET",
        help="the key manager's control socket for --ipsec (default: the one of `rpclatch ipsec keyd`)",
    )
    serve.add_argument("--max-connections", type=int, default=1024, help=argparse.SUPPRESS)
    serve.add_argument("--idle-timeout", type=positive_arg, default=300.0, help=argparse.SUPPRESS)
    serve.add_argument(
        "--write-timeout",
        type=positive_arg,
        default=30.0,
        metavar="SECONDS",
        help="abort a connection whose peer takes no reply bytes for this long "
        "(a client that stops reading must not pin its replies; default 30)",
    )
    serve.set_defaults(func=cmd_serve)

    dump = sub.add_parser("dump", help="list HOST's rpcbind registrations (like rpcinfo -p)")
    dump.add_argument("host", metavar="HOST")
    dump.add_argument("--udp", action="store_true", help="ask over UDP (default TCP)")
    dump.add_argument(
        "--port", "--rpcbind-port", type=port_arg, help="rpcbind port (default $RPCLATCH_RPCBIND_PORT or 111)"
    )
    dump.add_argument("--timeout", type=positive_arg, default=5.0, help="seconds to wait (default 5)")
    dump.set_defaults(func=cmd_dump)
