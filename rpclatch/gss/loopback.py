"""An in-process RPC transport between a client flavor and a server flavor.

Every call is really encoded (:meth:`CallMessage.encode`), decoded (:func:`decode_message`), checked
by the server flavor, answered by a program handler, sealed, encoded as a reply and decoded again
on the client side -- the same bytes a socket would carry, without the socket. Used by the flavor
tests, the conformance tests that probe the server with hand-made calls, and benchmarks that want
the per-call cost of the flavor alone. ``tamper`` hooks let tests modify the bytes in flight
(a man in the middle).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from rpclatch.rpc.auth import (
    AuthAccept,
    AuthControlReply,
    AuthDeny,
    AuthDrop,
    AuthGarbage,
    ClientAuth,
    ConnectionInfo,
    ServerAuth,
)
from rpclatch.rpc.errors import RpcAcceptError, RpcAuthError, RpcTimeout
from rpclatch.rpc.messages import (
    AcceptedReply,
    AcceptStat,
    CallMessage,
    DeniedReply,
    RejectStat,
    decode_message,
)

Handler = Callable[[int, bytes], bytes]
Tamper = Callable[[bytes], bytes]

_conn_ids = itertools.count(1_000_000)


def echo_handler(proc: int, args: bytes) -> bytes:
    """Program handler that returns its arguments (NULL procedure included)."""
    return args


class LoopbackTransport:
    """One "connection" from a client to ``server_auth``; ``handler(proc, args) -> results``.

    ``conn`` describes the connection to the server flavor (its ``channel`` is what BIND_CHANNEL
    binds to). ``now`` is a callable giving the server's notion of time (tests pass a fake clock).
    """

    def __init__(
        self,
        server_auth: ServerAuth,
        handler: Handler = echo_handler,
        *,
        prog: int = 0x20000099,
        vers: int = 1,
        channel: object | None = None,
        now: Callable[[], float] = lambda: 0.0,
        conn: ConnectionInfo | None = None,
    ) -> None:
        self.server_auth = server_auth
        self.handler = handler
        self.prog = prog
        self.vers = vers
        self.now = now
        self.conn = conn or ConnectionInfo(next(_conn_ids), ("127.0.0.1", 0), "sim", channel)
        self._xids = itertools.count(0x1000)
        self.tamper_call: Tamper | None = None
        self.tamper_reply: Tamper | None = None
        self.sent: list[bytes] = []
        self.dropped = 0

    def serve(self, data: bytes) -> bytes | None:
        """Server side: one encoded call in, one encoded reply (or None: dropped) out."""
        call = decode_message(data)
        assert isinstance(call, CallMessage)
        result = self.server_auth.check_call(call, self.conn, self.now())
        if isinstance(result, AuthAccept):
            verf, body = result.seal(self.handler(call.proc, result.args))
            return AcceptedReply(call.xid, verf, AcceptStat.SUCCESS, body).encode()
        if isinstance(result, AuthControlReply):
            return AcceptedReply(call.xid, result.verf, AcceptStat.SUCCESS, result.results).encode()
        if isinstance(result, AuthDeny):
            return DeniedReply(call.xid, RejectStat.AUTH_ERROR, auth_stat=result.stat).encode()
        if isinstance(result, AuthGarbage):
            return AcceptedReply(call.xid, result.verf, AcceptStat.GARBAGE_ARGS).encode()
        assert isinstance(result, AuthDrop)
        self.dropped += 1
        return None

    def call_sync(self, auth: ClientAuth, proc: int, args: bytes) -> bytes:
        """Send one call with ``auth`` and return its results, raising like a real client."""
        retried = False
        while True:
            prepared = auth.prepare_call(next(self._xids), self.prog, self.vers, proc, args)
            data = prepared.message.encode()
            if self.tamper_call is not None:
                data = self.tamper_call(data)
            self.sent.append(data)
            reply_bytes = self.serve(data)
            if reply_bytes is None:
                raise RpcTimeout("server dropped the call silently")
            if self.tamper_reply is not None:
                reply_bytes = self.tamper_reply(reply_bytes)
            reply = decode_message(reply_bytes)
            if isinstance(reply, AcceptedReply):
                results = auth.accept_reply(prepared, reply)  # every accepted reply, as the client
                if reply.stat != AcceptStat.SUCCESS:
                    raise RpcAcceptError(reply.stat, reply.mismatch)
                return results
            assert isinstance(reply, DeniedReply) and reply.auth_stat is not None
            if not retried and auth.on_auth_error(prepared, reply.auth_stat):
                retried = True
                continue
            raise RpcAuthError(reply.auth_stat)

    async def call(self, auth: ClientAuth, proc: int, args: bytes) -> bytes:
        """The :data:`rpclatch.gss.client.RpcCall` shape."""
        return self.call_sync(auth, proc, args)
