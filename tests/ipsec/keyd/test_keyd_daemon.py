"""Two in-process keyd daemons (loopback UDP, in-process datapath): CREATE_CONNECTION_LATCH
negotiates the exact 5-tuple, INQUIRE_LATCH names the peer's key, FIND_LATCH finds the latch on
the accepting side, and an absent peer gives a typed failure."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from rpclatch.ipsec.backend import InProcessBackend
from rpclatch.ipsec.channel_binding import decode_binding_data
from rpclatch.ipsec.ike.config import Credentials, IkeConfig
from rpclatch.ipsec.ike.events import IkeSaDeleted
from rpclatch.ipsec.keyd.daemon import KeydDaemon
from rpclatch.ipsec.keyd.server import KeydClient
from rpclatch.ipsec.model import (
    AddressRange,
    AuthMethod,
    IPAddress,
    IpProto,
    PortRange,
    Selector,
)
from rpclatch.ipsec.pad import ChildSaAuthorization, PadEntry, PeerAuthorizationDatabase, PublicKeyPattern

A_ADDR = ipaddress.ip_address("127.0.0.1")
B_ADDR = ipaddress.ip_address("127.0.0.2")
PORT = 2049


def _pad() -> PeerAuthorizationDatabase:
    entry = PadEntry(
        "btns", PublicKeyPattern(), AuthMethod.RAW_PUBLIC_KEY, ChildSaAuthorization(own_address_only=True)
    )
    return PeerAuthorizationDatabase([entry])


def _udp(addr: IPAddress) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((str(addr), 0))
    return sock


Body = Callable[[KeydDaemon, KeydDaemon, Path, Path, dict[IPAddress, int]], Awaitable[None]]


def run(tmp_path: Path, body: Body, *, b_running: bool = True, b_silent: bool = False) -> None:
    """``b_running`` False: B's IKE port is closed (the kernel answers ICMP port unreachable);
    ``b_silent``: it stays bound but nothing reads it (IKE goes unanswered, no ICMP)."""

    async def main() -> None:
        ports: dict[IPAddress, int] = {}
        a_sock, b_sock = _udp(A_ADDR), _udp(B_ADDR)
        ports[A_ADDR] = a_sock.getsockname()[1]
        ports[B_ADDR] = b_sock.getsockname()[1]
        if not b_running and not b_silent:
            b_sock.close()  # nobody listens for IKE on B

        def resolve(addr: IPAddress) -> tuple[IPAddress, int]:
            return (addr, ports[addr])

        def config(key: ed25519.Ed25519PrivateKey, policy: tuple[Selector, ...]) -> IkeConfig:
            return IkeConfig(Credentials.raw_key(key), _pad(), policy)

        b_policy = (Selector(AddressRange.single(B_ADDR), None, IpProto.TCP, PortRange.single(PORT)),)
        a = await KeydDaemon.start(
            config(ed25519.Ed25519PrivateKey.generate(), ()),
            a_sock,
            tmp_path / "a.sock",
            backend=InProcessBackend(),
            peer_endpoint=resolve,
        )
        b = None
        if b_running:
            b = await KeydDaemon.start(
                config(ed25519.Ed25519PrivateKey.generate(), b_policy),
                b_sock,
                tmp_path / "b.sock",
                backend=InProcessBackend(),
                peer_endpoint=resolve,
            )
        try:
            await body(a, b if b is not None else a, tmp_path / "a.sock", tmp_path / "b.sock", ports)
        finally:
            await a.close()
            if b is not None:
                await b.close()
            b_sock.close()

    asyncio.run(main())


def _flow(sport: int) -> dict[str, object]:
    return {
        "local_addr": str(A_ADDR),
        "local_port": sport,
        "remote_addr": str(B_ADDR),
        "remote_port": PORT,
    }


def test_connection_latch_established_inquired_found_and_released(tmp_path: Path) -> None:
    async def body(
        a: KeydDaemon, b: KeydDaemon, a_path: Path, b_path: Path, _p: dict[IPAddress, int]
    ) -> None:
        client = await KeydClient.connect(a_path)
        answer = await client.call("CREATE_CONNECTION_LATCH", timeout=5, **_flow(40000))
        assert answer["ok"] is True, answer
        latch = answer["latch"]
        info = await client.call("INQUIRE_LATCH", latch=latch)
        b_spki = b.endpoint.dispatcher.config.credentials.spki
        a_spki = a.endpoint.dispatcher.config.credentials.spki
        assert b_spki is not None and a_spki is not None
        assert info["state"] == "ESTABLISHED"
        assert bytes.fromhex(info["peer_spki"]) == b_spki
        assert decode_binding_data(bytes.fromhex(info["channel_bindings"])) == (a_spki, b_spki)
        status = await client.call("STATUS")
        assert len(status["ike_sas"]) == 1 and len(status["child_sas"]) == 1
        assert [(row["latch"], row["state"]) for row in status["latches"]] == [(latch, "ESTABLISHED")]
        # exactly this 5-tuple was negotiated and installed on both sides
        (sa_a,) = a.endpoint.backend.sas.values()  # type: ignore[union-attr]
        assert sa_a.is_narrow
        # the accepting side finds the latch of the connection (its own orientation)
        server = await KeydClient.connect(b_path)
        found = await server.call(
            "FIND_LATCH", local_addr=str(B_ADDR), local_port=PORT, remote_addr=str(A_ADDR), remote_port=40000
        )
        assert found["ok"] is True, found
        b_info = await server.call("INQUIRE_LATCH", latch=found["latch"])
        assert bytes.fromhex(b_info["peer_spki"]) == a_spki
        # an IKE SA rekey moves the CHILD_SA: the latches stay ESTABLISHED, no alert
        (ike_a,) = a.endpoint.dispatcher.sas
        a.endpoint.rekey(ike_a)
        await b.endpoint.wait_for(lambda _r, e: isinstance(e, IkeSaDeleted), 5)
        await a.endpoint.wait_for(lambda _r, e: isinstance(e, IkeSaDeleted), 5)
        assert (await client.call("INQUIRE_LATCH", latch=latch))["state"] == "ESTABLISHED"
        assert (await server.call("INQUIRE_LATCH", latch=found["latch"]))["state"] == "ESTABLISHED"
        assert client.alerts == [] and server.alerts == []
        # a second latch for the same flow is refused
        again = await client.call("CREATE_CONNECTION_LATCH", **_flow(40000))
        assert again["error"] == "LATCH_EXISTS"
        released = await client.call("RELEASE_LATCH", latch=latch)
        assert released["ok"] is True
        # releasing the initiator's latch deletes its IKE SA: the acceptor's latch breaks
        alert = await asyncio.wait_for(server.receive(), 5)
        assert (alert["alert"], alert["latch"]) == ("BROKEN", found["latch"])
        await client.close()
        await server.close()

    run(tmp_path, body)


def test_silent_peer_gives_typed_failure_within_the_timeout(tmp_path: Path) -> None:
    async def body(a: KeydDaemon, _b: KeydDaemon, a_path: Path, _bp: Path, _p: dict[IPAddress, int]) -> None:
        client = await KeydClient.connect(a_path)
        answer = await asyncio.wait_for(
            client.call("CREATE_CONNECTION_LATCH", timeout=0.3, **_flow(40001)), 5
        )
        assert (answer["ok"], answer["error"]) == (False, "IKE_TIMEOUT")
        await client.close()

    run(tmp_path, body, b_running=False, b_silent=True)


def test_no_ike_listener_gives_ike_unreachable_before_the_timeout(tmp_path: Path) -> None:
    """Nothing listens on B's IKE port: the ICMP port unreachable fails the IKE_SA_INIT and the
    answer is IKE_UNREACHABLE, although the request allowed 60 s (the client-side bound only
    stops a broken test)."""

    async def body(a: KeydDaemon, _b: KeydDaemon, a_path: Path, _bp: Path, _p: dict[IPAddress, int]) -> None:
        client = await KeydClient.connect(a_path)
        answer = await asyncio.wait_for(
            client.call("CREATE_CONNECTION_LATCH", timeout=60, **_flow(40002)), 10
        )
        assert (answer["ok"], answer["error"]) == (False, "IKE_UNREACHABLE"), answer
        assert answer["detail"] == "unreachable"
        status = await client.call("STATUS")
        assert status["ike_sas"] == [] and status["latches"] == []
        # a second attempt fails the same way (the socket's error queue was drained)
        again = await asyncio.wait_for(client.call("CREATE_CONNECTION_LATCH", timeout=60, **_flow(40003)), 10)
        assert again["error"] == "IKE_UNREACHABLE"
        await client.close()

    run(tmp_path, body, b_running=False)


def test_closing_a_daemon_deletes_its_ike_sas_with_the_peer(tmp_path: Path) -> None:
    """The responder's daemon stops (SIGTERM in ``rpclatch ipsec keyd``): it deletes the IKE SA
    with the initiator, whose latch breaks and whose SAs are removed -- not left to a timeout."""

    async def body(a: KeydDaemon, b: KeydDaemon, a_path: Path, _bp: Path, _p: dict[IPAddress, int]) -> None:
        client = await KeydClient.connect(a_path)
        answer = await client.call("CREATE_CONNECTION_LATCH", timeout=5, **_flow(40002))
        assert answer["ok"] is True, answer
        assert len(a.endpoint.installed) == 1 and len(b.endpoint.installed) == 1
        await b.close()
        assert b.endpoint.installed == {} and not b.endpoint.backend.sas  # type: ignore[union-attr]
        alert = await asyncio.wait_for(client.receive(), 5)
        assert (alert["alert"], alert["latch"]) == ("BROKEN", answer["latch"])
        assert a.endpoint.installed == {} and not a.endpoint.backend.sas  # type: ignore[union-attr]
        assert (await client.call("STATUS"))["ike_sas"] == []
        await client.close()

    run(tmp_path, body)
