"""The sans-IO keyd request handler, against a model latch service."""

from __future__ import annotations

import ipaddress
import json

import pytest

from rpclatch.ipsec.keyd.core import ClientOutput, KeydCore, KeydLimits, LatchInfo, ServiceRefusal
from rpclatch.ipsec.keyd.protocol import (
    Alert,
    AlertKind,
    Answer,
    ControlDecodeError,
    ErrorCode,
    Listener,
    Request,
    decode_request,
)
from rpclatch.ipsec.model import FiveTuple


class ModelService:
    def __init__(self) -> None:
        self.next = 1
        self.started: dict[int, FiveTuple] = {}
        self.accepted: dict[FiveTuple, int] = {}
        self.released: list[int] = []
        self.refuse: ServiceRefusal | None = None

    def _new(self) -> int:
        self.next += 1
        return self.next - 1

    def create_listener(self, listener: Listener) -> int:
        if self.refuse:
            raise self.refuse
        return self._new()

    def start_connection(self, flow: FiveTuple, now: float) -> int:
        if self.refuse:
            raise self.refuse
        latch = self._new()
        self.started[latch] = flow
        return latch

    def find(self, flow: FiveTuple) -> int | None:
        return self.accepted.get(flow)

    def inquire(self, latch: int) -> LatchInfo | None:
        return LatchInfo(
            "ESTABLISHED", self.started.get(latch), b"\x30\x2a", {"esp": "aes-gcm-16"}, b"\x01\x02"
        )

    def release(self, latch: int) -> None:
        self.released.append(latch)

    def status(self) -> dict[str, object]:
        return {"ike_sas": [], "child_sas": [], "latches": [{"latch": n} for n in self.started]}


def _request(op: str, rid: int, **members: object) -> Request:
    return decode_request(json.dumps({"op": op, "id": rid, **members}).encode())


FLOW = {
    "local_addr": "198.51.100.1",
    "local_port": 40000,
    "remote_addr": "198.51.100.2",
    "remote_port": 2049,
}


def _answer(outputs: list[ClientOutput], client: int = 1) -> Answer:
    assert len(outputs) == 1 and outputs[0].client == client
    message = outputs[0].message
    assert isinstance(message, Answer)
    return message


@pytest.fixture
def core() -> tuple[KeydCore, ModelService]:
    service = ModelService()
    keyd = KeydCore(service, KeydLimits(max_clients=2, max_latches_per_client=2, max_pending_per_client=1))
    assert keyd.client_connected(1, 1000) is None
    return keyd, service


def test_connection_latch_answers_when_established(core: tuple[KeydCore, ModelService]) -> None:
    keyd, service = core
    assert keyd.handle_request(1, _request("CREATE_CONNECTION_LATCH", 5, **FLOW), 10.0) == []
    (latch,) = service.started
    assert keyd.next_deadline() == 12.0
    answer = _answer(keyd.latch_established(latch))
    assert answer.request_id == 5 and answer.error is None and answer.fields["latch"] == latch
    assert keyd.next_deadline() is None
    info = _answer(keyd.handle_request(1, _request("INQUIRE_LATCH", 6, latch=latch), 10.5))
    assert info.fields["peer_spki"] == "302a"
    assert info.fields["channel_bindings"] == "0102"
    assert info.fields["flow"]["remote_port"] == 2049
    released = _answer(keyd.handle_request(1, _request("RELEASE_LATCH", 7, latch=latch), 11.0))
    assert released.error is None and service.released == [latch]
    again = _answer(keyd.handle_request(1, _request("INQUIRE_LATCH", 8, latch=latch), 11.0))
    assert again.error is ErrorCode.NO_SUCH_LATCH


def test_connection_latch_times_out(core: tuple[KeydCore, ModelService]) -> None:
    keyd, service = core
    keyd.handle_request(1, _request("CREATE_CONNECTION_LATCH", 5, timeout=0.5, **FLOW), 10.0)
    (latch,) = service.started
    assert keyd.handle_timer(10.4) == []
    answer = _answer(keyd.handle_timer(10.5))
    assert answer.error is ErrorCode.IKE_TIMEOUT and answer.request_id == 5
    assert service.released == [latch]
    assert keyd.latch_established(latch) == []  # too late: nobody waits


def test_connection_latch_ike_failure_is_typed(core: tuple[KeydCore, ModelService]) -> None:
    keyd, service = core
    keyd.handle_request(1, _request("CREATE_CONNECTION_LATCH", 5, **FLOW), 10.0)
    (latch,) = service.started
    answer = _answer(keyd.latch_failed(latch, ErrorCode.IKE_FAILED, "AUTHENTICATION_FAILED"))
    assert (answer.error, answer.detail) == (ErrorCode.IKE_FAILED, "AUTHENTICATION_FAILED")


def test_service_refusal_is_an_answer(core: tuple[KeydCore, ModelService]) -> None:
    keyd, service = core
    service.refuse = ServiceRefusal(ErrorCode.LATCH_EXISTS, "flow already latched")
    answer = _answer(keyd.handle_request(1, _request("CREATE_LISTENER_LATCH", 1, local_port=2049), 0.0))
    assert answer.error is ErrorCode.LATCH_EXISTS


def test_limits(core: tuple[KeydCore, ModelService]) -> None:
    keyd, _service = core
    assert keyd.client_connected(2, 1000) is None
    assert keyd.client_connected(3, 1000) is ErrorCode.TOO_MANY_CLIENTS
    assert keyd.handle_request(1, _request("CREATE_CONNECTION_LATCH", 1, **FLOW), 0.0) == []
    pending = _answer(keyd.handle_request(1, _request("CREATE_CONNECTION_LATCH", 2, **FLOW), 0.0))
    assert pending.error is ErrorCode.TOO_MANY_PENDING
    assert (
        _answer(keyd.handle_request(1, _request("CREATE_LISTENER_LATCH", 3, local_port=1), 0.0)).error is None
    )
    full = _answer(keyd.handle_request(1, _request("CREATE_LISTENER_LATCH", 4, local_port=2), 0.0))
    assert full.error is ErrorCode.TOO_MANY_LATCHES


def test_other_clients_latches_are_out_of_reach(core: tuple[KeydCore, ModelService]) -> None:
    keyd, _service = core
    keyd.client_connected(2, 0)
    latch = _answer(
        keyd.handle_request(1, _request("CREATE_LISTENER_LATCH", 1, local_port=2049), 0.0)
    ).fields["latch"]
    for op in ("INQUIRE_LATCH", "RELEASE_LATCH"):
        answer = _answer(keyd.handle_request(2, _request(op, 2, latch=latch), 0.0), client=2)
        assert answer.error is ErrorCode.NOT_HOLDER
    assert keyd.latches_of(1) == {latch}


def test_find_latch_of_accepted_connection(core: tuple[KeydCore, ModelService]) -> None:
    keyd, service = core
    flow = FiveTuple(
        ipaddress.ip_address("198.51.100.1"), 40000, ipaddress.ip_address("198.51.100.2"), 2049, 6
    )
    missing = _answer(keyd.handle_request(1, _request("FIND_LATCH", 1, **FLOW), 0.0))
    assert missing.error is ErrorCode.NO_SUCH_LATCH
    service.accepted[flow] = 77
    assert _answer(keyd.handle_request(1, _request("FIND_LATCH", 2, **FLOW), 0.0)).fields["latch"] == 77
    keyd.client_connected(2, 1000)
    other = _answer(keyd.handle_request(2, _request("FIND_LATCH", 3, **FLOW), 0.0), client=2)
    assert other.error is ErrorCode.NOT_HOLDER


def test_broken_latch_alerts_its_holder(core: tuple[KeydCore, ModelService]) -> None:
    keyd, _service = core
    latch = _answer(
        keyd.handle_request(1, _request("CREATE_LISTENER_LATCH", 1, local_port=2049), 0.0)
    ).fields["latch"]
    (output,) = keyd.latch_broken(latch, "peer identity changed")
    assert output.client == 1
    assert output.message == Alert(AlertKind.BROKEN, latch, "peer identity changed")
    assert keyd.latch_broken(999) == []


def test_disconnect_releases_everything(core: tuple[KeydCore, ModelService]) -> None:
    keyd, service = core
    latch = _answer(
        keyd.handle_request(1, _request("CREATE_LISTENER_LATCH", 1, local_port=2049), 0.0)
    ).fields["latch"]
    keyd.handle_request(1, _request("CREATE_CONNECTION_LATCH", 2, **FLOW), 0.0)
    keyd.client_disconnected(1)
    assert service.released == [latch]
    assert keyd.next_deadline() is None and keyd.clients == 0


def test_decode_error_is_answered_with_its_code(core: tuple[KeydCore, ModelService]) -> None:
    keyd, _service = core
    answer = _answer(keyd.handle_frame_error(1, ControlDecodeError(ErrorCode.UNKNOWN_OP, "x", 9)))
    assert (answer.request_id, answer.error) == (9, ErrorCode.UNKNOWN_OP)


def test_status_comes_from_the_service(core: tuple[KeydCore, ModelService]) -> None:
    keyd, _service = core
    answer = _answer(keyd.handle_request(1, _request("STATUS", 3), 0.0))
    assert answer.fields == {"ike_sas": [], "child_sas": [], "latches": []}
