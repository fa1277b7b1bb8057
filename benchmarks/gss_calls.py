"""RPCSEC_GSS cost over loopback TCP (rpclatch asyncio client + server, real MIT KDC in a throwaway realm).

Figures, each beside a baseline measured in the same run and process:

* ``gss.echo1k.krb5|krb5i|krb5p|channel_prot`` -- ECHO of 1 KiB, calls/s with ``--inflight`` calls
  in flight; baseline = the same with AUTH_NONE. channel_prot runs with an InMemoryChannel bound
  (RFC 5403 BIND_CHANNEL done, AUTH_NONE verifiers on the wire).
* ``gss.echo64k.krb5i|krb5p`` -- ECHO of 64 KiB, MB/s of payload (one direction); baseline = the raw
  python-gssapi ceiling for the same work: an echo needs two get_mic+verify_mic (krb5i) or two
  wrap+unwrap (krb5p) of 64 KiB (request and reply), so ceiling = 64 KiB / (2 x pair time).

Usage: ``python benchmarks/gss_calls.py [--seconds S] [--inflight N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Callable

import gssapi.raw as graw

from rpclatch.gss.channel import InMemoryChannel
from rpclatch.gss.client import GssClientAuth, rpc_call_via
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

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return done / (time.perf_counter() - start)


def raw_pairs_per_second(ctx_a: object, ctx_b: object, size: int, seconds: float, wrap: bool) -> float:
    """Sender+receiver GSS operations per second on ``size`` bytes (raw API, no RPC)."""
    data = os.urandom(size)
    n = 0
    start = time.perf_counter()
    end = start + seconds
    if wrap:
        while time.perf_counter() < end:
            graw.unwrap(ctx_b, graw.wrap(ctx_a, data, True).message)
            n += 1
    else:
        while time.perf_counter() < end:
            graw.verify_mic(ctx_b, data, graw.get_mic(ctx_a, data))
            n += 1
    return n / (time.perf_counter() - start)


def raw_contexts(service: str) -> tuple[object, object]:
    flags = (graw.RequirementFlag.mutual_authentication | graw.RequirementFlag.integrity
             | graw.RequirementFlag.confidentiality)
    name = graw.import_name(service.encode(), graw.NameType.hostbased_service)
    acred = graw.acquire_cred(name, usage="accept").creds
    i = graw.init_sec_context(name, flags=flags)
    a = graw.accept_sec_context(i.token, acceptor_creds=acred)
    i2 = graw.init_sec_context(name, context=i.context, flags=flags, input_token=a.token)
    return i2.context, a.context


async def main(seconds: float, inflight: int) -> None:
    with running_realm(("alice",)) as realm:
        channels: list[InMemoryChannel] = []

        def on_connection(info: ConnectionInfo, transport: object) -> None:
            info.channel = channels.pop() if channels else None

        gss_server = GssServerAuth(GssapiProvider(realm.service_name, keytab=realm.keytab))
        dispatcher = RpcDispatcher([AuthNoneServer(), gss_server])
        add_test_program(dispatcher)
        server = RpcServer(dispatcher, on_connection=on_connection)
        port = await server.listen_tcp("127.0.0.1", 0)
        provider = GssapiProvider(ccache=realm.users["alice"].ccache)

        async def measure(make_auth: Callable[[], ClientAuth], size: int, bind: bool = False) -> float:
            cli_ch, srv_ch = InMemoryChannel.pair("x-bench", os.urandom(32))
            channels.append(srv_ch)
            async with await RpcStreamClient.connect_tcp("127.0.0.1", port) as client:
                auth = make_auth()
                if isinstance(auth, GssClientAuth):
                    call = rpc_call_via(client, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS)
                    await auth.establish(call)
                    if bind:
                        await auth.bind_channel(call, cli_ch)
                        assert auth.effective_service() == Service.CHANNEL_PROT
                await rate(client, auth, size, min(0.3, seconds / 4), inflight)  # warm up
                result = await rate(client, auth, size, seconds, inflight)
                if isinstance(auth, GssClientAuth):
                    await auth.destroy(call)
                return result

        def gss(service: Service) -> Callable[[], ClientAuth]:
            return lambda: GssClientAuth(provider, realm.service_name, service=service)

        try:
            none_1k = await measure(AuthNoneClient, KIB)
            for label, service, bind in (("krb5", Service.NONE, False), ("krb5i", Service.INTEGRITY, False),
                                         ("krb5p", Service.PRIVACY, False),
                                         ("channel_prot", Service.INTEGRITY, True)):
                bench(f"gss.echo1k.{label}", await measure(gss(service), KIB, bind), "calls/s", none_1k)
            ctx_a, ctx_b = raw_contexts(realm.service_name)
            size = 64 * KIB
            for label, service, wrap in (("krb5i", Service.INTEGRITY, False),
                                         ("krb5p", Service.PRIVACY, True)):
                pairs = raw_pairs_per_second(ctx_a, ctx_b, size, seconds, wrap)
                ceiling = pairs / 2 * size / MB
                calls = await measure(gss(service), size)
                bench(f"gss.echo64k.{label}", calls * size / MB, "MB/s", ceiling)
        finally:
            await server.close(grace=1.0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per figure")
    parser.add_argument("--inflight", type=int, default=8, help="calls in flight for the 1 KiB figures")
    ns = parser.parse_args()
    asyncio.run(main(ns.seconds, ns.inflight))
