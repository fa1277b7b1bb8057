"""The sans-IO request handler of the key-manager daemon (RFC 5660 §2.2).

:class:`KeydCore` takes parsed :class:`~rpclatch.ipsec.keyd.protocol.Request` objects from
numbered clients and events from the latching service (a latch became ESTABLISHED, its IKE
attempt failed, it broke) and returns :class:`ClientOutput` items: answers and alerts to write to
a client's connection. It owns the per-client bookkeeping -- which latches a client holds, the
CREATE_CONNECTION_LATCH requests still waiting, the limits -- and never touches a socket or a
clock: ``now`` is an argument and :meth:`KeydCore.next_deadline` / :meth:`KeydCore.handle_timer`
drive the request timeouts.

The latch database, the IKE endpoint and the datapath sit behind :class:`LatchService`; the daemon
implements it with :class:`~rpclatch.ipsec.engine.IPsecEngine` and the IKE UDP endpoint, tests
with a model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from rpclatch.ipsec.keyd.protocol import (
    Alert,
    AlertKind,
    Answer,
    ControlDecodeError,
    ErrorCode,
    Listener,
    Op,
    Request,
    protocol_name,
)
from rpclatch.ipsec.model import FiveTuple


class ServiceRefusal(Exception):
    """A :class:`LatchService` operation refused, with the :class:`ErrorCode` to answer."""

    def __init__(self, code: ErrorCode, detail: str = "") -> None:
        super().__init__(f"{code.value}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class LatchInfo:
    """INQUIRE_LATCH results (RFC 5660 §2.2): state, the peer's identity (the SPKI of a raw public
    key, DER, or None for NULL authentication), the quality of protection and the channel-binding
    data of the latched SAs (RFC 5660 §2.5)."""

    state: str
    flow: FiveTuple | None
    peer_spki: bytes | None
    qop: Mapping[str, Any]
    channel_bindings: bytes | None

    def to_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state": self.state,
            "peer_spki": None if self.peer_spki is None else self.peer_spki.hex(),
            "qop": dict(self.qop),
            "channel_bindings": None if self.channel_bindings is None else self.channel_bindings.hex(),
        }
        if self.flow is not None:
            out["flow"] = flow_fields(self.flow)
        return out


def flow_fields(flow: FiveTuple) -> dict[str, Any]:
    return {
        "local_addr": str(flow.local_addr),
        "local_port": flow.local_port,
        "remote_addr": str(flow.remote_addr),
        "remote_port": flow.remote_port,
        "proto": protocol_name(flow.proto),
    }


class LatchService(Protocol):
    """What the core needs from the latch database / IKE / datapath.

    Latch handles are positive integers unique for the service's lifetime. Methods raise
    :class:`ServiceRefusal` to refuse."""

    def create_listener(self, listener: Listener) -> int:
        """CREATE_LISTENER_LATCH: latch every connection accepted on ``listener``."""
        ...

    def start_connection(self, flow: FiveTuple, now: float) -> int:
        """CREATE_CONNECTION_LATCH: begin negotiating SAs for exactly ``flow`` (the initiator's
        side); the result arrives later through :meth:`KeydCore.latch_established` or
        :meth:`KeydCore.latch_failed`, or :meth:`KeydCore.handle_timer` gives up."""
        ...

    def find(self, flow: FiveTuple) -> int | None:
        """FIND_LATCH: the latch of an accepted connection, if any."""
        ...

    def inquire(self, latch: int) -> LatchInfo | None: ...

    def release(self, latch: int) -> None:
        """RELEASE_LATCH: forget the latch (and stop protecting it unless policy needs it)."""
        ...

    def status(self) -> dict[str, Any]:
        """STATUS: JSON-ready lists ``ike_sas``, ``child_sas``, ``latches``."""
        ...


@dataclass(frozen=True, slots=True)
class ClientOutput:
    """A message for client ``client``."""

    client: int
    message: Answer | Alert


@dataclass(frozen=True, slots=True)
class KeydLimits:
    """Bounds on what local processes may ask for."""

    max_clients: int = 64
    max_latches_per_client: int = 256
    max_pending_per_client: int = 16


@dataclass(slots=True)
class _Pending:
    client: int
    request_id: int
    latch: int
    deadline: float


@dataclass(slots=True)
class _Client:
    uid: int
    latches: set[int] = field(default_factory=set)
    pending: dict[int, _Pending] = field(default_factory=dict)  # by request id


class KeydCore:
    """Request handling for every client of one daemon (see the module docstring)."""

    def __init__(self, service: LatchService, limits: KeydLimits | None = None) -> None:
        self.service = service
        self.limits = limits or KeydLimits()
        self._clients: dict[int, _Client] = {}
        self._holder: dict[int, int] = {}  # latch -> client
        self._pending: dict[int, _Pending] = {}  # latch -> waiting CREATE_CONNECTION_LATCH

    # -- clients -----------------------------------------------------------------------------

    def client_connected(self, client: int, uid: int) -> ErrorCode | None:
        """Register a new connection; an error code means: refuse it (send nothing else, close)."""
        if client in self._clients:
            raise ValueError(f"client {client} already connected")
        if len(self._clients) >= self.limits.max_clients:
            return ErrorCode.TOO_MANY_CLIENTS
        self._clients[client] = _Client(uid)
        return None

    def client_disconnected(self, client: int) -> None:
        """The connection closed: every latch it held is released (RFC 5660 §2.2 RELEASE_LATCH
        is implied when the holder goes away)."""
        state = self._clients.pop(client, None)
        if state is None:
            return
        for pending in state.pending.values():
            self._pending.pop(pending.latch, None)
        for latch in sorted(state.latches):
            self._holder.pop(latch, None)
            self._release_quietly(latch)

    @property
    def clients(self) -> int:
        return len(self._clients)

    def latches_of(self, client: int) -> frozenset[int]:
        state = self._clients.get(client)
        return frozenset(state.latches) if state else frozenset()

    # -- requests ----------------------------------------------------------------------------

    def handle_frame_error(self, client: int, error: ControlDecodeError) -> list[ClientOutput]:
        """A request that did not parse: answer with its error (id 0 when unknown)."""
        answer = Answer(error.request_id or 0, error.code, error.detail)
        return [ClientOutput(client, answer)]

    def handle_request(self, client: int, request: Request, now: float) -> list[ClientOutput]:
        """Answer ``request`` now, or (CREATE_CONNECTION_LATCH) remember it and answer later."""
        state = self._clients.get(client)
        if state is None:
            raise ValueError(f"unknown client {client}")
        try:
            answer = self._dispatch(client, state, request, now)
        except ServiceRefusal as exc:
            answer = Answer(request.request_id, exc.code, exc.detail)
        return [] if answer is None else [ClientOutput(client, answer)]

    def _dispatch(self, client: int, state: _Client, request: Request, now: float) -> Answer | None:
        rid = request.request_id
        creates = request.op in (Op.CREATE_LISTENER_LATCH, Op.CREATE_CONNECTION_LATCH)
        if creates and self._full(state):
            return Answer(rid, ErrorCode.TOO_MANY_LATCHES, f"limit {self.limits.max_latches_per_client}")
        if request.op is Op.CREATE_LISTENER_LATCH:
            assert request.listener is not None
            latch = self.service.create_listener(request.listener)
            self._hold(client, state, latch)
            return Answer(rid, fields={"latch": latch})
        if request.op is Op.CREATE_CONNECTION_LATCH:
            assert request.flow is not None
            if rid in state.pending:
                return Answer(rid, ErrorCode.DUPLICATE_ID, "request id still outstanding")
            if len(state.pending) >= self.limits.max_pending_per_client:
                return Answer(rid, ErrorCode.TOO_MANY_PENDING, f"limit {self.limits.max_pending_per_client}")
            latch = self.service.start_connection(request.flow, now)
            pending = _Pending(client, rid, latch, now + request.timeout)
            state.pending[rid] = pending
            self._pending[latch] = pending
            return None
        if request.op is Op.STATUS:
            return Answer(rid, fields=self.service.status())
        if request.op is Op.FIND_LATCH:
            assert request.flow is not None
            found = self.service.find(request.flow)
            if found is None:
                return Answer(rid, ErrorCode.NO_SUCH_LATCH, "no latch for this 5-tuple")
            holder = self._holder.get(found)
            if holder is not None and holder != client:
                return Answer(rid, ErrorCode.NOT_HOLDER, "latch held by another client")
            if holder is None:
                if self._full(state):
                    return Answer(
                        rid, ErrorCode.TOO_MANY_LATCHES, f"limit {self.limits.max_latches_per_client}"
                    )
                self._hold(client, state, found)
            return Answer(rid, fields={"latch": found})
        assert request.latch is not None
        latch = request.latch
        if self._holder.get(latch) != client:
            code = ErrorCode.NO_SUCH_LATCH if latch not in self._holder else ErrorCode.NOT_HOLDER
            return Answer(rid, code, f"latch {latch}")
        if request.op is Op.INQUIRE_LATCH:
            info = self.service.inquire(latch)
            if info is None:
                return Answer(rid, ErrorCode.NO_SUCH_LATCH, f"latch {latch}")
            return Answer(rid, fields={"latch": latch, **info.to_fields()})
        # RELEASE_LATCH
        state.latches.discard(latch)
        del self._holder[latch]
        self.service.release(latch)
        return Answer(rid, fields={"latch": latch})

    def _full(self, state: _Client) -> bool:
        return len(state.latches) + len(state.pending) >= self.limits.max_latches_per_client

    def _hold(self, client: int, state: _Client, latch: int) -> None:
        state.latches.add(latch)
        self._holder[latch] = client

    def _release_quietly(self, latch: int) -> None:
        with contextlib.suppress(ServiceRefusal):
            self.service.release(latch)

    # -- service events ----------------------------------------------------------------------

    def latch_established(self, latch: int) -> list[ClientOutput]:
        """The latch a CREATE_CONNECTION_LATCH waits for is ESTABLISHED: answer the request."""
        pending = self._pending.pop(latch, None)
        if pending is None:
            return []
        state = self._clients[pending.client]
        del state.pending[pending.request_id]
        self._hold(pending.client, state, latch)
        return [ClientOutput(pending.client, Answer(pending.request_id, fields={"latch": latch}))]

    def latch_failed(self, latch: int, code: ErrorCode, detail: str = "") -> list[ClientOutput]:
        """The IKE attempt behind a waiting CREATE_CONNECTION_LATCH failed."""
        pending = self._pending.pop(latch, None)
        if pending is None:
            return []
        del self._clients[pending.client].pending[pending.request_id]
        self._release_quietly(latch)
        return [ClientOutput(pending.client, Answer(pending.request_id, code, detail))]

    def latch_broken(self, latch: int, detail: str = "") -> list[ClientOutput]:
        """RFC 5660 §2.2 ALERT: a held latch went BROKEN (e.g. the peer's SAs changed identity).
        The client keeps the handle (it may still INQUIRE) until it releases it."""
        if latch in self._pending:
            return self.latch_failed(latch, ErrorCode.IKE_FAILED, detail or "latch broken")
        holder = self._holder.get(latch)
        if holder is None:
            return []
        return [ClientOutput(holder, Alert(AlertKind.BROKEN, latch, detail))]

    # -- timers ------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self._pending.values()), default=None)

    def handle_timer(self, now: float) -> list[ClientOutput]:
        """Fail the CREATE_CONNECTION_LATCH requests whose timeout has passed (IKE_TIMEOUT)."""
        out: list[ClientOutput] = []
        for latch, pending in sorted(self._pending.items()):
            if pending.deadline <= now:
                out += self.latch_failed(latch, ErrorCode.IKE_TIMEOUT, "no ESTABLISHED latch in time")
        return out


def parse_hex(value: object) -> bytes | None:
    """Inverse of the hex encoding used in INQUIRE_LATCH answers (for clients)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("expected a hex string")
    return bytes.fromhex(value)
