"""The asyncio shell of the keyd control plane: an AF_UNIX stream server in front of
:class:`~rpclatch.ipsec.keyd.core.KeydCore`, plus a small client (:class:`KeydClient`).

The server checks each connecting process's uid (``SO_PEERCRED``, :mod:`.access`), splits the
byte stream into frames, hands parsed requests to the core, writes the core's answers and alerts
to the right connections and keeps one loop timer at the core's next deadline. The latching
service reports IKE results with :meth:`KeydServer.deliver` (the outputs of
``KeydCore.latch_established`` / ``latch_failed`` / ``latch_broken``). Nothing a client sends
raises out of the shell: a bad frame gets a typed error answer, an unreadable stream is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rpclatch.ipsec.keyd.access import peer_allowed, peer_uid
from rpclatch.ipsec.keyd.core import ClientOutput, KeydCore
from rpclatch.ipsec.keyd.protocol import (
    Answer,
    ControlDecodeError,
    ErrorCode,
    FrameDecoder,
    decode_request,
    encode_frame,
)

log = logging.getLogger(__name__)

_READ_CHUNK = 4096


class KeydServer:
    """Serves ``core`` on the AF_UNIX socket ``path`` (created by :meth:`start`, mode 0600)."""

    def __init__(self, core: KeydCore, path: Path) -> None:
        self.core = core
        self.path = path
        self._writers: dict[int, asyncio.StreamWriter] = {}
        self._ids = itertools.count(1)
        self._server: asyncio.base_events.Server | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._owner = os.getuid()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        os.chmod(self.path, 0o600)
        self._owner = self.path.stat().st_uid

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for writer in list(self._writers.values()):
            writer.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def deliver(self, outputs: Iterable[ClientOutput]) -> None:
        """Write the core's outputs to their connections and re-arm the timer."""
        for output in outputs:
            writer = self._writers.get(output.client)
            if writer is not None and not writer.is_closing():
                writer.write(encode_frame(output.message))
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.core.next_deadline()
        if deadline is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.deliver(self.core.handle_timer(self.now()))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = next(self._ids)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        sock = writer.get_extra_info("socket")
        try:
            uid = peer_uid(sock)
        except OSError:
            uid = -1
        refusal = None if peer_allowed(uid, self._owner) else ErrorCode.ACCESS_DENIED
        if refusal is None:
            refusal = self.core.client_connected(client, uid)
        if refusal is not None:
            log.info("keyd: refused uid %d: %s", uid, refusal.value)
            writer.write(encode_frame(Answer(0, refusal, f"uid {uid}")))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            return
        self._writers[client] = writer
        decoder = FrameDecoder()
        try:
            while data := await reader.read(_READ_CHUNK):
                try:
                    frames = decoder.feed(data)
                except ControlDecodeError as exc:
                    self.deliver(self.core.handle_frame_error(client, exc))
                    break
                for frame in frames:
                    try:
                        request = decode_request(frame)
                    except ControlDecodeError as exc:
                        self.deliver(self.core.handle_frame_error(client, exc))
                        continue
                    self.deliver(self.core.handle_request(client, request, self.now()))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            del self._writers[client]
            self.core.client_disconnected(client)
            self._arm_timer()
            writer.close()


class KeydClient:
    """A minimal client: one request at a time plus queued alerts (for the CLI and tests)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = FrameDecoder()
        self._frames: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    @classmethod
    async def connect(cls, path: Path) -> KeydClient:
        reader, writer = await asyncio.open_unix_connection(str(path))
        return cls(reader, writer)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()

    async def call(self, op: str, **members: Any) -> dict[str, Any]:
        """Send one request and return its answer (alerts that arrive meanwhile are queued)."""
        rid = next(self._ids)
        self._writer.write(encode_frame({"op": op, "id": rid, **members}))
        await self._writer.drain()
        while True:
            message = await self.receive()
            if "alert" in message:
                self.alerts.append(message)
            elif message.get("id") in (rid, 0):
                return message

    async def receive(self) -> dict[str, Any]:
        while not self._frames:
            data = await self._reader.read(_READ_CHUNK)
            if not data:
                raise ConnectionError("keyd closed the connection")
            self._frames += [json.loads(frame) for frame in self._decoder.feed(data)]
        return self._frames.pop(0)
