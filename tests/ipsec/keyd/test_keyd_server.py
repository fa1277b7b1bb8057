"""The asyncio AF_UNIX shell of keyd, with the model latch service, over a real socket."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

from test_keyd_core import FLOW, ModelService

from rpclatch.ipsec.keyd.core import KeydCore, KeydLimits
from rpclatch.ipsec.keyd.server import KeydClient, KeydServer


def run(tmp_path: Path, body: Callable[[KeydServer, ModelService, Path], Awaitable[None]]) -> None:
    async def main() -> None:
        service = ModelService()
        server = KeydServer(KeydCore(service, KeydLimits(max_clients=1)), tmp_path / "keyd.sock")
        await server.start()
        try:
            await body(server, service, tmp_path / "keyd.sock")
        finally:
            await server.close()

    asyncio.run(main())


def test_requests_answers_and_alerts(tmp_path: Path) -> None:
    async def body(server: KeydServer, service: ModelService, path: Path) -> None:
        assert path.stat().st_mode & 0o777 == 0o600
        client = await KeydClient.connect(path)
        listener = await client.call("CREATE_LISTENER_LATCH", local_port=2049)
        assert listener["ok"] is True
        bad = await client.call("INQUIRE_LATCH", latch="x")
        assert (bad["ok"], bad["error"]) == (False, "MALFORMED")
        # CREATE_CONNECTION_LATCH is answered when the service reports the result
        call = asyncio.ensure_future(client.call("CREATE_CONNECTION_LATCH", **FLOW))
        while not service.started:
            await asyncio.sleep(0.01)
        (latch,) = service.started
        server.deliver(server.core.latch_established(latch))
        answer = await call
        assert answer == {"id": 3, "ok": True, "latch": latch}
        server.deliver(server.core.latch_broken(latch, "peer changed"))
        info = await client.call("INQUIRE_LATCH", latch=latch)
        assert info["peer_spki"] == "302a"
        assert client.alerts == [{"alert": "BROKEN", "latch": latch, "detail": "peer changed"}]
        await client.close()
        while server.core.clients:
            await asyncio.sleep(0.01)
        assert sorted(service.released) == sorted([listener["latch"], latch])

    run(tmp_path, body)


def test_timeout_answer_comes_from_the_timer(tmp_path: Path) -> None:
    async def body(server: KeydServer, service: ModelService, path: Path) -> None:
        client = await KeydClient.connect(path)
        answer = await client.call("CREATE_CONNECTION_LATCH", timeout=0.05, **FLOW)
        assert (answer["ok"], answer["error"]) == (False, "IKE_TIMEOUT")
        await client.close()

    run(tmp_path, body)


def test_second_client_refused_and_oversized_frame_closes(tmp_path: Path) -> None:
    async def body(server: KeydServer, service: ModelService, path: Path) -> None:
        first = await KeydClient.connect(path)
        assert (await first.call("FIND_LATCH", **FLOW))["error"] == "NO_SUCH_LATCH"
        second = await KeydClient.connect(path)
        refused = await second.receive()
        assert refused["error"] == "TOO_MANY_CLIENTS"
        await second.close()
        await first.close()
        while server.core.clients:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(struct.pack(">I", 1 << 30))
        assert await reader.read() != b""  # the typed answer, then EOF
        writer.close()

    run(tmp_path, body)
