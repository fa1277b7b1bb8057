"""RPCSEC_GSS cost over loopback TCP (rpclatch asyncio client + server, real MIT KDC in a throwaway realm).

Figures, each beside a baseline measured in the same run and process:

* ``gss.echo1k.krb5|krb5i|krb5p|channel_prot`` -- ECHO of 1 KiB, calls/s with ``--inflight`` calls
  in flight; baseline = the same with AUTH_NONE. channel_prot runs with an InMemoryChannel bound
  (RFC 5403 BIND_CHANNEL done, AUTH_NONE verifiers on the wire).
* ``gss.echo1k.krb5.ceiling|krb5i.ceiling|krb5p.ceiling`` -- the calls/s that flavor would reach
  with zero Python overhead in RPCSEC_GSS: ``1 / (t_none + t_gss)``. ``t_none = 1 / baseline`` is
  the time of one AUTH_NONE call (the baseline of the line above: client and server side, RPC,
  asyncio and TCP -- all a krb5* call needs besides RPCSEC_GSS). ``t_gss`` is the time of the raw
  python-gssapi operations one such call needs, timed (with the same ``--clock``) in a tight loop
  after each round, on the very contexts the calls use (client and server side, called raw,
  without the provider's lock) and with the sizes the calls use: krb5 = 4 MIC operations (the
  call header MIC made and verified, the reply verifier MIC(seq_num) over 4 bytes made and
  verified); krb5i = those 4 plus get_mic+verify_mic of the request's and of the reply's
  rpc_gss_data_t (4-byte seq_num + the 1028-byte ECHO arguments/results); krb5p = the 4 plus
  wrap+unwrap of those two. Medians over the rounds; baseline = AUTH_NONE calls/s, so the
  ratio is the highest ratio the flavor line could reach (the loop runs with warm caches, so if
  anything the ceiling is optimistic). channel_prot has no per-message GSS operation, hence no
  ceiling line (its ceiling is the baseline).
* ``gss.echo64k.krb5i|krb5p`` -- ECHO of 64 KiB (one call in flight), MB/s of payload in one
  direction; baseline = the raw python-gssapi ceiling for the same work: an echo needs two
  get_mic+verify_mic (krb5i) or two wrap+unwrap (krb5p) of 64 KiB (request and reply), so
  ceiling = 64 KiB / (2 x pair time).
* ``gss.echo1k.krb5i.mit`` and ``gss.echo64k.krb5p.mit`` -- the same as ``gss.echo1k.krb5i`` and
  ``gss.echo64k.krb5p`` with per-message calls on MIT on both sides (``GssapiProvider(fastpath=
  False)``, a second server), beside the default path, which runs them on OpenSSL from the
  exported context (:mod:`rpclatch.gss.krb5`). Their baselines are those of the default lines
  (AUTH_NONE; the raw MIT wrap+unwrap ceiling). The ``.ceiling`` lines time the raw per-message
  calls of whichever path the contexts use.

Each figure is the median of ``--rounds`` short runs alternating with its baseline (the machine is
shared, so the baseline is measured right beside each run).

``--clock cpu`` divides by the CPU time this process used (client and server run in it, one
thread) instead of wall time: on a shared machine other processes then do not move the figures.

Usage: ``python benchmarks/gss_calls.py [--seconds S] [--inflight N] [--rounds R] [--clock wall|cpu]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import gssapi.raw as graw

from rpclatch.gss.channel import InMemoryChannel
from rpclatch.gss.client import GssClientAuth, rpc_call_via
from rpclatch.gss.krb5.cfx import CfxContext
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.realm import running_realm
from rpclatch.gss.server import GssServerAuth
from rpclatch.gss.wire import Service
from rpclatch.rpc.aio import RpcServer, RpcStreamClient
from rpclatch.rpc.auth import ClientAuth, ConnectionInfo
from rpclatch.rpc.auth_sys import AuthNoneClient, AuthNoneServer
from rpclatch.rpc.server import RpcDispatcher
from rpclatch.rpc.testprog import (
    PROC_ECHO,
    RPCLATCH_TEST_PROG,
    RPCLATCH_TEST_VERS,
    add_test_program,
    encode_opaque,
)

KIB = 1024
MB = 1_000_000
#: what a rate is divided by: wall time (default) or this process's CPU time (``--clock cpu``)
CLOCK = time.perf_counter


def bench(name: str, value: float, unit: str, baseline: float) -> None:
    ratio = value / baseline if baseline else 0.0
    print(f"BENCH {name} value={value:.1f} unit={unit} baseline={baseline:.1f} ratio={ratio:.3f}", flush=True)


async def rate(client: RpcStreamClient, auth: ClientAuth, size: int, seconds: float, inflight: int) -> float:
    """Calls/s of ECHO(size) with ``inflight`` coroutines each looping on one call."""
    args = encode_opaque(os.urandom(size))
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await client.call(RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, PROC_ECHO, args, auth=auth)
            done += 1

    start = CLOCK()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return done / (CLOCK() - start)


def raw_pairs_per_second(ctx_a: Any, ctx_b: Any, size: int, seconds: float, wrap: bool) -> float:
    """Sender+receiver GSS operations per second on ``size`` bytes (raw API, no RPC)."""
    data = os.urandom(size)
    n = 0
    start = CLOCK()
    end = time.perf_counter() + seconds
    if wrap:
        while time.perf_counter() < end:
            graw.unwrap(ctx_b, graw.wrap(ctx_a, data, True).message)
            n += 1
    else:
        while time.perf_counter() < end:
            graw.verify_mic(ctx_b, data, graw.get_mic(ctx_a, data))
            n += 1
    return n / (CLOCK() - start)


def call_gss_ops(
    auth: GssClientAuth, server: GssServerAuth, service: Service, args_len: int
) -> Callable[[], None]:
    """The raw per-message operations of one ECHO call of ``args_len`` argument bytes with
    ``service`` (see the module docstring), on the client's and the server's context of ``auth``:
    python-gssapi calls on MIT contexts, or the exported contexts' own calls on the fast path."""
    client_gss = auth.gss_context
    server_gss = server.gss_context(auth.handle or b"")
    assert client_gss is not None and server_gss is not None
    cctx, sctx = client_gss.raw, server_gss.raw
    assert cctx is not None and sctx is not None
    prepared = auth.prepare_call(1, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, PROC_ECHO, bytes(args_len))
    header = prepared.message.encode_header_through_cred()  # what the verifier MIC covers
    seq = bytes(4)  # the reply verifier covers the 4-byte seq_num
    request = os.urandom(4 + args_len)  # rpc_gss_data_t: seq_num + arguments
    reply = os.urandom(4 + args_len)  # ECHO: results as long as the arguments
    if isinstance(cctx, CfxContext) and isinstance(sctx, CfxContext):
        c, s = cctx, sctx

        def header_and_verifier() -> None:
            s.verify_mic(header, c.get_mic(header))
            c.verify_mic(seq, s.get_mic(seq))

        def integrity() -> None:
            header_and_verifier()
            s.verify_mic(request, c.get_mic(request))
            c.verify_mic(reply, s.get_mic(reply))

        def privacy() -> None:
            header_and_verifier()
            s.unwrap(c.wrap(request, True))
            c.unwrap(s.wrap(reply, True))

        return {Service.NONE: header_and_verifier, Service.INTEGRITY: integrity, Service.PRIVACY: privacy}[
            service
        ]
    assert not isinstance(cctx, CfxContext) and not isinstance(sctx, CfxContext), "mixed paths"
    get_mic, verify_mic, wrap, unwrap = graw.get_mic, graw.verify_mic, graw.wrap, graw.unwrap

    def header_and_verifier() -> None:
        verify_mic(sctx, header, get_mic(cctx, header))
        verify_mic(cctx, seq, get_mic(sctx, seq))

    def integrity() -> None:
        header_and_verifier()
        verify_mic(sctx, request, get_mic(cctx, request))
        verify_mic(cctx, reply, get_mic(sctx, reply))

    def privacy() -> None:
        header_and_verifier()
        unwrap(sctx, wrap(cctx, request, True).message)
        unwrap(cctx, wrap(sctx, reply, True).message)

    return {Service.NONE: header_and_verifier, Service.INTEGRITY: integrity, Service.PRIVACY: privacy}[
        service
    ]


def seconds_per_run(ops: Callable[[], None], seconds: float) -> float:
    """Time of one ``ops()`` (by ``CLOCK``), looping for about ``seconds`` of wall time."""
    n = 0
    start = CLOCK()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        ops()
        n += 1
    return (CLOCK() - start) / n


def raw_contexts(service: str) -> tuple[Any, Any]:
    flags = (
        graw.RequirementFlag.mutual_authentication
        | graw.RequirementFlag.integrity
        | graw.RequirementFlag.confidentiality
    )
    name = graw.import_name(service.encode(), graw.NameType.hostbased_service)
    acred = graw.acquire_cred(name, usage="accept").creds
    i = graw.init_sec_context(name, flags=flags)
    assert i.token is not None
    a = graw.accept_sec_context(i.token, acceptor_creds=acred)
    i2 = graw.init_sec_context(name, context=i.context, flags=flags, input_token=a.token)
    return i2.context, a.context


async def main(seconds: float, inflight: int, rounds: int) -> None:
    with running_realm(("alice",)) as realm:
        channels: list[InMemoryChannel] = []

        def on_connection(info: ConnectionInfo, transport: object) -> None:
            info.channel = channels.pop() if channels else None

        async def start_server(fastpath: bool) -> tuple[RpcServer, GssServerAuth, int]:
            gss = GssServerAuth(GssapiProvider(realm.service_name, keytab=realm.keytab, fastpath=fastpath))
            dispatcher = RpcDispatcher([AuthNoneServer(), gss])
            add_test_program(dispatcher)
            srv = RpcServer(dispatcher, on_connection=on_connection)
            return srv, gss, await srv.listen_tcp("127.0.0.1", 0)

        server, gss_server, port = await start_server(True)
        mit_server, _mit_gss_server, mit_port = await start_server(False)
        provider = GssapiProvider(ccache=realm.users["alice"].ccache, fastpath=True)
        mit_provider = GssapiProvider(ccache=realm.users["alice"].ccache, fastpath=False)

        async def open_client(
            make_auth: Callable[[], ClientAuth], bind: bool = False, mit: bool = False
        ) -> tuple[RpcStreamClient, ClientAuth]:
            cli_ch, srv_ch = InMemoryChannel.pair("x-bench", os.urandom(32))
            channels.append(srv_ch)
            client = await RpcStreamClient.connect_tcp("127.0.0.1", mit_port if mit else port)
            auth = make_auth()
            if isinstance(auth, GssClientAuth):
                call = rpc_call_via(client, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS)
                await auth.establish(call)
                if bind:
                    await auth.bind_channel(call, cli_ch)
                    assert auth.effective_service() == Service.CHANNEL_PROT
            return client, auth

        def gss(service: Service, mit: bool = False) -> Callable[[], ClientAuth]:
            return lambda: GssClientAuth(
                mit_provider if mit else provider, realm.service_name, service=service
            )

        async def paired(
            flavor: tuple[RpcStreamClient, ClientAuth],
            base: tuple[RpcStreamClient, ClientAuth],
            size: int,
            ops: Callable[[], None] | None = None,
        ) -> tuple[float, float, float | None]:
            """Median (value, baseline, seconds per ``ops()``) over ``rounds`` alternating short
            runs: the machine is shared, so the baseline (and the raw GSS operations, if given)
            are re-measured right beside each run."""
            values, bases, op_times = [], [], []
            for _ in range(rounds):
                bases.append(await rate(base[0], base[1], size, seconds / rounds, inflight))
                values.append(await rate(flavor[0], flavor[1], size, seconds / rounds, inflight))
                if ops is not None:
                    op_times.append(seconds_per_run(ops, seconds / rounds / 4))
            return (
                statistics.median(values),
                statistics.median(bases),
                statistics.median(op_times) if op_times else None,
            )

        opened: list[tuple[RpcStreamClient, ClientAuth]] = []
        try:
            none = await open_client(AuthNoneClient)
            opened.append(none)
            for c, a in [none]:
                await rate(c, a, KIB, 0.3, inflight)  # warm up
            for label, service, bind in (
                ("krb5", Service.NONE, False),
                ("krb5i", Service.INTEGRITY, False),
                ("krb5p", Service.PRIVACY, False),
                ("channel_prot", Service.INTEGRITY, True),
            ):
                flavor = await open_client(gss(service), bind)
                opened.append(flavor)
                auth = flavor[1]
                assert isinstance(auth, GssClientAuth)
                args_len = len(encode_opaque(bytes(KIB)))  # what rate() sends: XDR opaque of 1 KiB
                ops = None if bind else call_gss_ops(auth, gss_server, service, args_len)
                value, base, op_time = await paired(flavor, none, KIB, ops)
                bench(f"gss.echo1k.{label}", value, "calls/s", base)
                if op_time is not None:
                    # zero Python overhead: an AUTH_NONE call plus the raw GSS work of one call
                    bench(f"gss.echo1k.{label}.ceiling", 1 / (1 / base + op_time), "calls/s", base)
                if label == "krb5i":  # the same on MIT's per-message calls
                    mit_flavor = await open_client(gss(service, mit=True), mit=True)
                    opened.append(mit_flavor)
                    value, base, _ = await paired(mit_flavor, none, KIB)
                    bench(f"gss.echo1k.{label}.mit", value, "calls/s", base)
            ctx_a, ctx_b = raw_contexts(realm.service_name)
            size = 64 * KIB
            for label, service, wrap, mit in (
                ("krb5i", Service.INTEGRITY, False, False),
                ("krb5p", Service.PRIVACY, True, False),
                ("krb5p.mit", Service.PRIVACY, True, True),
            ):
                flavor = await open_client(gss(service, mit), mit=mit)
                opened.append(flavor)
                values, ceilings = [], []
                for _ in range(rounds):
                    pairs = raw_pairs_per_second(ctx_a, ctx_b, size, seconds / rounds, wrap)
                    ceilings.append(pairs / 2 * size / MB)
                    values.append(await rate(flavor[0], flavor[1], size, seconds / rounds, 1) * size / MB)
                bench(f"gss.echo64k.{label}", statistics.median(values), "MB/s", statistics.median(ceilings))
        finally:
            for client, auth in opened:
                if isinstance(auth, GssClientAuth):
                    await auth.destroy(rpc_call_via(client, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS))
                await client.close()
            await server.close(grace=1.0)
            await mit_server.close(grace=1.0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per figure")
    parser.add_argument("--inflight", type=int, default=8, help="calls in flight for the 1 KiB figures")
    parser.add_argument("--rounds", type=int, default=5, help="alternating value/baseline runs per figure")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="divide by wall time (default) or by this process's CPU time",
    )
    ns = parser.parse_args()
    if ns.clock == "cpu":
        CLOCK = time.process_time
    asyncio.run(main(ns.seconds, ns.inflight, ns.rounds))
