"""Latched connections for the channel cases: a TCP connection whose 5-tuple the key manager
latched to an IPsec SA pair (RFC 5660 §2.3), and the channel RPCSEC_GSS v2 binds to (RFC 5403 §3).

The socket is bound first, CREATE_CONNECTION_LATCH names its exact 5-tuple, INQUIRE_LATCH gives the
channel-binding data, and only then does the socket connect (so the first SYN already goes through
the SA). Closing the connection releases the latch. Anything that keeps the latch from being made
is :class:`~rpclatch.conformance.probe.NoChannel`: the channel cases then OMIT with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

from rpclatch.channel import Channel
from rpclatch.conformance.probe import Connection, NoChannel, StreamConnection
from rpclatch.connect.kernel import (
    CONTROL_TIMEOUT,
    KeydControl,
    KeydRefused,
    KeydUnavailable,
    LatchReport,
    channel_for,
)
from rpclatch.ipsec.latch import LatchState


class KeydLatcher:
    """Opens latched connections through the key manager on ``keyd_path`` (its control socket),
    from ``source_addr`` (default: the route's source address towards the server)."""

    def __init__(self, keyd_path: Path, *, source_addr: str | None = None, ike_timeout: float = 5.0) -> None:
        self.keyd_path = keyd_path
        self.source_addr = source_addr
        self.ike_timeout = ike_timeout
        self._control: KeydControl | None = None

    async def _connect(self) -> KeydControl:
        if self._control is None or self._control.closed:
            try:
                self._control = await KeydControl.connect(self.keyd_path)
            except KeydUnavailable as exc:
                raise NoChannel(f"no key manager: {exc}") from exc
        return self._control

    def _source(self, host: str) -> str:
        if self.source_addr is not None:
            return self.source_addr
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))
            return str(probe.getsockname()[0])

    async def open(self, host: str, port: int, timeout: float) -> tuple[Connection, Channel]:
        control = await self._connect()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        handle: int | None = None
        try:
            sock.bind((self._source(host), 0))
            local = sock.getsockname()
            flow = {
                "local_addr": str(local[0]),
                "local_port": int(local[1]),
                "remote_addr": host,
                "remote_port": port,
                "proto": "tcp",
            }
            try:
                answer = await control.request(
                    "CREATE_CONNECTION_LATCH",
                    wait=self.ike_timeout + CONTROL_TIMEOUT,
                    timeout=self.ike_timeout,
                    **flow,
                )
                handle = int(answer["latch"])
                report = LatchReport.from_answer(handle, await control.request("INQUIRE_LATCH", latch=handle))
            except (KeydRefused, KeydUnavailable) as exc:
                raise NoChannel(f"the key manager made no latch to {host}:{port}: {exc}") from exc
            channel = channel_for(report)
            if report.state is not LatchState.ESTABLISHED or channel is None:
                raise NoChannel(
                    f"the latch to {host}:{port} is {report.state.value} without channel bindings"
                )
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
            reader, writer = await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            if handle is not None:
                control.release(handle)
            raise
        latch = handle

        def release() -> None:
            control.release(latch)

        return StreamConnection(reader, writer, on_close=release), channel

    async def close(self) -> None:
        if self._control is not None:
            with contextlib.suppress(Exception):
                await self._control.close()
            self._control = None
