"""rpclatch's RPCSEC_GSS client against MIT kadmind, whose RPC library (gssrpc) is an independent
RPCSEC_GSS v1 acceptor.

kadmind runs on the session's throwaway realm (``interop_peers.running_kadmind``: 127.0.0.1 only,
its own ACL granting alice every privilege, target ``kadmin/<host>``). kadmind serves program
2112 (KADM) version 2; the calls below use its XDR (MIT src/lib/kadm5/kadm_rpc_xdr.c):
``xdr_nullstring`` is a u32 length that counts a trailing NUL, then the bytes and the NUL, padded.

kadmind has no echo. The "ECHO-like" calls store a value as a string attribute of a scratch
principal (SET_STRING) and read it back (GET_STRINGS): the bytes travel to kadmind and back, each
way under the context's service. kadmind bounds that path: all string attributes of a principal
live in one tl_data entry with a 16-bit length, so a 64 KiB value is refused with
KRB5_KDB_STRINGS_TOOLONG (a well-formed, protected error reply). A 64 KiB request is therefore
sent as GET_PRINCS with a 64 KiB glob (kadmind unwraps and runs it; nothing matches), and the
largest value kadmind stores (60000 bytes) is echoed.

Like libtirpc, gssrpc locks a context into the service of its INIT credential (RFC 2203 §5.2.2
says that field is ignored); before commit 700dae3 rpclatch said ``rpc_gss_svc_none`` there and
every krb5i/krb5p call failed with "reply body does not check" (checked against that code).
gssrpc also refuses RPCSEC_GSS version 2 with AUTH_BADCRED, so the client falls back to v1.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Awaitable, Callable, Iterator

import pytest

from rpclatch.gss.client import GssClientAuth, VersionPolicy, rpc_call_via
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.wire import RPCSEC_GSS_VERS_1, Service
from rpclatch.rpc.aio import RpcStreamClient
from rpclatch.xdr import Decoder

from .interop_peers import Kadmind, missing_tools, running_kadmind

pytestmark = pytest.mark.skipif(
    bool(missing_tools(kadmind=True)),
    reason=f"kadmind interop needs krb5-admin-server: missing {', '.join(missing_tools(kadmind=True))}",
)

SERVICES = [Service.NONE, Service.INTEGRITY, Service.PRIVACY]
SERVICE_IDS = ["krb5", "krb5i", "krb5p"]

KADM_PROG = 2112
KADM_VERS = 2
NULLPROC = 0
GET_PRIVS = 12
GET_PRINCS = 14
GET_STRINGS = 23
SET_STRING = 24
#: KADM5_API_VERSION_4 (kadm5/admin.h): the api_version every argument and result starts with.
API_VERSION = 0x12345704
KADM5_OK = 0
#: KRB5_KDB_STRINGS_TOOLONG (krb5.h), as kadm5_ret_t on the wire.
STRINGS_TOOLONG = -1780008403 & 0xFFFFFFFF
#: The largest string attribute value kadmind stores next to a short key (see module docstring).
MAX_STORED_VALUE = 60000

Body = Callable[[RpcStreamClient, GssClientAuth], Awaitable[None]]


def nullstring(text: str | None) -> bytes:
    """MIT's ``xdr_nullstring``: length including the NUL, the bytes and the NUL, padded; a
    NULL pointer is length 0."""
    if text is None:
        return struct.pack(">I", 0)
    data = text.encode() + b"\0"
    return struct.pack(">I", len(data)) + data + bytes(-len(data) & 3)


def read_nullstring(dec: Decoder) -> str:
    data = dec.opaque(1 << 20)
    assert data.endswith(b"\0"), data[-8:]
    return data[:-1].decode()


def header(dec: Decoder) -> int:
    """api_version and kadm5_ret_t of a result; returns the code."""
    assert dec.uint32() == API_VERSION
    return dec.uint32()


@pytest.fixture(scope="module")
def kadmind(realm: ThrowawayRealm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kadmind]:
    with running_kadmind(realm, tmp_path_factory.mktemp("kadmind"), realm.users["alice"].principal) as server:
        yield server


def run_session(realm: ThrowawayRealm, kadmind: Kadmind, service: Service, body: Body) -> None:
    """Connect, establish a context with ``service`` (v1 after kadmind refuses v2), run ``body``,
    DESTROY."""

    async def run() -> None:
        auth = GssClientAuth(
            GssapiProvider(ccache=realm.users["alice"].ccache),
            kadmind.target,
            service=service,
            versions=VersionPolicy.PREFER_V2,
        )
        async with await RpcStreamClient.connect_tcp("127.0.0.1", kadmind.port) as client:
            call = rpc_call_via(client, KADM_PROG, KADM_VERS)
            await auth.establish(call)
            assert auth.version == RPCSEC_GSS_VERS_1
            await body(client, auth)
            await auth.destroy(call)
            assert not auth.established

    asyncio.run(run())


async def kadm(client: RpcStreamClient, auth: GssClientAuth, proc: int, args: bytes) -> Decoder:
    return Decoder(await client.call(KADM_PROG, KADM_VERS, proc, args, auth=auth))


async def set_string(
    client: RpcStreamClient, auth: GssClientAuth, principal: str, key: str, value: str | None
) -> int:
    """SET_STRING; ``value`` None removes ``key``. Returns the kadm5_ret_t."""
    dec = await kadm(
        client,
        auth,
        SET_STRING,
        struct.pack(">I", API_VERSION) + nullstring(principal) + nullstring(key) + nullstring(value),
    )
    code = header(dec)
    dec.done()
    return code


async def get_strings(client: RpcStreamClient, auth: GssClientAuth, principal: str) -> dict[str, str]:
    dec = await kadm(client, auth, GET_STRINGS, struct.pack(">I", API_VERSION) + nullstring(principal))
    assert header(dec) == KADM5_OK
    count = dec.uint32()
    assert dec.uint32() == count  # xdr_array repeats the count
    strings = {}
    for _ in range(count):
        key = read_nullstring(dec)
        strings[key] = read_nullstring(dec)
    dec.done()
    return strings


@pytest.mark.parametrize("service", SERVICES, ids=SERVICE_IDS)
def test_null_and_get_privs(realm: ThrowawayRealm, kadmind: Kadmind, service: Service) -> None:
    """NULL (kadmind checks the target is a kadmin/* principal first) and GET_PRIVS, whose
    result kadmind computes from the authenticated client name."""

    async def body(client: RpcStreamClient, auth: GssClientAuth) -> None:
        assert await client.call(KADM_PROG, KADM_VERS, NULLPROC, auth=auth) == b""
        dec = await kadm(client, auth, GET_PRIVS, struct.pack(">I", API_VERSION))
        assert header(dec) == KADM5_OK
        privs = dec.uint32()
        dec.done()
        assert privs & 0x0F == 0x0F  # get, add, modify, delete: the ACL's "*"

    run_session(realm, kadmind, service, body)
    client = realm.users["alice"].principal
    assert (
        f"kadm5_get_privs, {client}, success, client={client}, "
        f"service=kadmin/{realm.hostname}@{realm.realm}" in kadmind.log_text()
    )


@pytest.mark.parametrize("service", SERVICES, ids=SERVICE_IDS)
def test_echo_1k(realm: ThrowawayRealm, kadmind: Kadmind, service: Service) -> None:
    """1 KiB to kadmind (SET_STRING) and back (GET_STRINGS)."""
    key = f"echo-{service.name.lower()}-1k"
    value = os.urandom(512).hex()

    async def body(client: RpcStreamClient, auth: GssClientAuth) -> None:
        assert await set_string(client, auth, kadmind.scratch_principal, key, value) == KADM5_OK
        assert (await get_strings(client, auth, kadmind.scratch_principal))[key] == value
        assert await set_string(client, auth, kadmind.scratch_principal, key, None) == KADM5_OK

    run_session(realm, kadmind, service, body)


@pytest.mark.parametrize("service", SERVICES, ids=SERVICE_IDS)
def test_64k(realm: ThrowawayRealm, kadmind: Kadmind, service: Service) -> None:
    """A 64 KiB request (GET_PRINCS glob), kadmind's refusal of a 64 KiB string value (a
    protected error reply to a 64 KiB request), and the largest echo kadmind stores."""
    glob = "rpclatch-no-such-" + os.urandom(32 * 1024).hex()[: 64 * 1024 - 17]
    assert len(glob) == 64 * 1024
    key = f"echo-{service.name.lower()}-big"
    too_big = os.urandom(32 * 1024).hex()
    largest = os.urandom(MAX_STORED_VALUE // 2).hex()

    async def body(client: RpcStreamClient, auth: GssClientAuth) -> None:
        dec = await kadm(client, auth, GET_PRINCS, struct.pack(">I", API_VERSION) + nullstring(glob))
        assert header(dec) == KADM5_OK
        assert (dec.uint32(), dec.uint32()) == (0, 0)  # count, and xdr_array's count: no match
        dec.done()
        assert await set_string(client, auth, kadmind.scratch_principal, key, too_big) == STRINGS_TOOLONG
        assert await set_string(client, auth, kadmind.scratch_principal, key, largest) == KADM5_OK
        assert (await get_strings(client, auth, kadmind.scratch_principal))[key] == largest
        assert await set_string(client, auth, kadmind.scratch_principal, key, None) == KADM5_OK

    run_session(realm, kadmind, service, body)
    log = kadmind.log_text()
    # kadmind logs the first 125 characters of the glob it ran and "..." for the rest
    assert f"kadm5_get_principals, {glob[:125]}..., success" in log
    assert f"kadm5_mod_strings, {kadmind.scratch_principal}, Too much string mapping data" in log
