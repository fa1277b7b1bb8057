"""``rpclatch conformance`` against rpclatch's own RPCSEC_GSS server on loopback (a throwaway MIT
realm, the test program): every case PASSes or is OMITted with its reason; servers with one check
disabled make exactly the matching case FAIL; the CLI's outputs and one-line errors."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from rpclatch.cli import main
from rpclatch.conformance import registry, runner
from rpclatch.conformance.model import Outcome, Report
from rpclatch.conformance.probe import NO_CHANNEL, NO_CHANNEL_UDP, NO_STREAM, ProbeConfig
from rpclatch.gss import server as gss_server
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.seqwindow import SeqVerdict, SeqWindow
from rpclatch.gss.server import GssServerAuth
from rpclatch.gss.wire import GssProc, Service, be32, decode_integ, encode_integ
from rpclatch.rpc.aio import RpcServer
from rpclatch.rpc.auth import AuthGarbage
from rpclatch.rpc.messages import PROC_NULL
from rpclatch.rpc.server import RpcDispatcher
from rpclatch.rpc.testprog import (
    PROC_ECHO,
    RPCLATCH_TEST_PROG,
    RPCLATCH_TEST_VERS,
    add_test_program,
    encode_opaque,
)

#: Silence this long counts as a discard (the server answers loopback calls in well under this).
DROP_WAIT = 0.3

ServerFactory = Callable[[ThrowawayRealm], GssServerAuth]


def _server(realm: ThrowawayRealm) -> GssServerAuth:
    return GssServerAuth(GssapiProvider(realm.service_name, keytab=realm.keytab))


async def _run(
    realm: ThrowawayRealm,
    factory: ServerFactory = _server,
    ids: tuple[str, ...] = (),
    *,
    proc: int = PROC_NULL,
    args: bytes = b"",
    proto: str = "tcp",
    dispatcher_cls: type[RpcDispatcher] = RpcDispatcher,
) -> Report:
    dispatcher = dispatcher_cls([factory(realm)])
    add_test_program(dispatcher)
    server = RpcServer(dispatcher)
    listen = server.listen_udp if proto == "udp" else server.listen_tcp
    port = await listen("127.0.0.1", 0)
    try:
        config = ProbeConfig(
            "127.0.0.1",
            port,
            RPCLATCH_TEST_PROG,
            RPCLATCH_TEST_VERS,
            target=realm.service_name,
            drop_wait=DROP_WAIT,
            proc=proc,
            args=args,
            proto=proto,
        )
        provider = GssapiProvider(ccache=realm.users["alice"].ccache)
        return await runner.run(registry.select(ids), config, provider)
    finally:
        await server.close()


#: The test program's ECHO with a few bytes: a procedure with arguments.
ECHO = (PROC_ECHO, encode_opaque(b"conformance"))


@pytest.mark.parametrize("call", [(PROC_NULL, b""), ECHO], ids=["null", "echo"])
def test_rpclatch_server_passes_everything(realm: ThrowawayRealm, call: tuple[int, bytes]) -> None:
    report = asyncio.run(_run(realm, proc=call[0], args=call[1]))
    assert len(report.results) == len(registry.all_cases())
    bad = {
        r.spec.id: (r.outcome.value, r.reason)
        for r in report.results
        if r.outcome not in (Outcome.PASS, Outcome.OMIT)
    }
    assert bad == {}
    omitted = {r.spec.id: r.reason for r in report.results if r.outcome is Outcome.OMIT}
    assert set(omitted) == {f"CB-{n}" for n in range(10, 17)}
    assert {omitted[f"CB-{n}"] for n in range(10, 17)} == {NO_CHANNEL}
    assert report.exit_code == 0


def test_rpclatch_server_over_udp(realm: ThrowawayRealm) -> None:
    """RFC 2203 works over UDP: every case runs but the channel cases (a latched TCP connection)
    and the record-marking probes, which OMIT with their reasons."""
    report = asyncio.run(_run(realm, proto="udp", proc=ECHO[0], args=ECHO[1]))
    assert report.proto == "udp"
    bad = {r.spec.id: (r.outcome.value, r.reason) for r in report.results if r.outcome is not Outcome.PASS}
    assert {i: why for i, (o, why) in bad.items()} == {
        **{f"CB-{n}": NO_CHANNEL_UDP for n in range(10, 17)},
        **{f"ROB-0{n}": NO_STREAM for n in (1, 2, 4)},
    }
    assert {o for o, _ in bad.values()} == {"OMIT"}
    assert "refused or dropped" in report.by_id()["ROB-03"].reason


def test_replay_over_udp_fails_gss_05(realm: ThrowawayRealm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gss_server, "SeqWindow", _NoReplayWindow)
    report = asyncio.run(_run(realm, ids=("GSS-05", "GSS-06", "GSS-01"), proto="udp"))
    assert {r.spec.id: r.outcome for r in report.results} == {
        "GSS-01": Outcome.PASS,
        "GSS-05": Outcome.FAIL,
        "GSS-06": Outcome.PASS,
    }


class _ReplyCache(RpcDispatcher):
    """A duplicate request cache, as UDP servers keep one: a call whose bytes were seen before gets
    the same reply again without being executed."""

    def __init__(self, flavors: Any) -> None:
        super().__init__(flavors)
        self._seen: dict[bytes, bytes] = {}

    def dispatch(self, record: bytes, conn: Any, now: float, max_reply: int | None = None) -> Any:
        cached = self._seen.get(bytes(record))
        if cached is not None:
            return cached
        reply = super().dispatch(record, conn, now, max_reply)
        if isinstance(reply, bytes):
            self._seen[bytes(record)] = reply
        return reply


def test_a_replay_answered_from_a_reply_cache_warns(realm: ThrowawayRealm) -> None:
    report = asyncio.run(_run(realm, ids=("GSS-05",), proto="udp", dispatcher_cls=_ReplyCache))
    (result,) = report.results
    assert result.outcome is Outcome.WARN and "duplicate request cache" in result.reason, result
    assert report.exit_code == 0


# -- servers with one check disabled ------------------------------------------------------------


class _NoReplayWindow(SeqWindow):
    """Remembers nothing inside the window: a replay is NEW (below-window numbers still drop)."""

    def check(self, seq: int) -> SeqVerdict:
        verdict = super().check(seq)
        return SeqVerdict.NEW if verdict is SeqVerdict.REPLAY else verdict


class _SkipRequestMic(GssServerAuth):
    """Does not verify the request MIC of one kind of call (DATA or DESTROY)."""

    skip: GssProc = GssProc.RPCSEC_GSS_DATA

    def _verify_fresh(self, ctx: Any, seq: int, signed: bytes, mic: bytes, *, count: bool) -> Any:  # type: ignore[override]
        # the signed header: xid .. proc (24 bytes), cred flavor, cred length, then the credential
        # (version, gss_proc, ...): gss_proc at offset 36
        if signed[24:28] == be32(6) and signed[36:40] == be32(self.skip):
            verdict = ctx.window.check(seq)
            if verdict is not SeqVerdict.NEW:
                return verdict
            ctx.window.mark(seq)
            return None
        return GssServerAuth._verify_fresh(ctx, seq, signed, mic, count=count)


class _SkipDestroyMic(_SkipRequestMic):
    skip = GssProc.RPCSEC_GSS_DESTROY


class _TrustingGss:
    """A GSS context whose verify_mic accepts anything (the body checksum was checked already)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def verify_mic(self, data: bytes, mic: bytes) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _NoBodySeqCheck(GssServerAuth):
    """Accepts an integrity body whose seq_num differs from the credential's (if its MIC verifies)."""

    def _data(self, call: Any, seq: int, service: Service, ctx: Any) -> Any:
        if service is Service.INTEGRITY:
            try:
                inner, checksum = decode_integ(call.args)
                ctx.gss.verify_mic(inner, checksum)
            except Exception:
                return super()._data(call, seq, service, ctx)
            if inner[:4] != be32(seq):
                call = dataclasses.replace(call, args=encode_integ(be32(seq) + inner[4:], checksum))
                ctx = dataclasses.replace(ctx, gss=_TrustingGss(ctx.gss))
        return super()._data(call, seq, service, ctx)


class _BlindGss(_TrustingGss):
    """Also "unwraps" any privacy token to the call's seq_num and ``args`` (the token is never
    looked at)."""

    def __init__(self, inner: Any, seq: int, args: bytes = b"") -> None:
        super().__init__(inner)
        self._seq = seq
        self._args = args

    def unwrap(self, token: bytes) -> tuple[bytes, bool]:
        return be32(self._seq) + self._args, True


class _NullBodyUnread(GssServerAuth):
    """Reads the body of a call only for a procedure with arguments, as gssrpc and libtirpc do:
    a NULL call's integrity or privacy body is never checked."""

    def _data(self, call: Any, seq: int, service: Service, ctx: Any) -> Any:
        if call.proc == PROC_NULL and service in (Service.INTEGRITY, Service.PRIVACY):
            if service is Service.INTEGRITY:
                call = dataclasses.replace(call, args=encode_integ(be32(seq), b""))
            ctx = dataclasses.replace(ctx, gss=_BlindGss(ctx.gss, seq))
        return super()._data(call, seq, service, ctx)


def test_a_server_reading_bodies_only_with_arguments_fails_gss_10_to_12_only_through_null(
    realm: ThrowawayRealm,
) -> None:
    factory = _factory(_NullBodyUnread)
    null = asyncio.run(_run(realm, factory))
    failed = {r.spec.id: r.reason for r in null.results if r.outcome is Outcome.FAIL}
    assert set(failed) == {"GSS-10", "GSS-11", "GSS-12"}, failed
    assert all("--proc N --args HEX" in why for why in failed.values())
    echo = asyncio.run(_run(realm, factory, proc=ECHO[0], args=ECHO[1]))
    assert {r.spec.id: r.outcome for r in echo.results if r.outcome is not Outcome.PASS} == {
        f"CB-{n}": Outcome.OMIT for n in range(10, 17)
    }
    assert echo.by_id()["GSS-10"].reason == "a tampered integrity body answered GARBAGE_ARGS"


class _NoChecksumCheck(GssServerAuth):
    """Executes an integrity call whose body checksum does not verify."""

    def _data(self, call: Any, seq: int, service: Service, ctx: Any) -> Any:
        if service is Service.INTEGRITY:
            ctx = dataclasses.replace(ctx, gss=_TrustingGss(ctx.gss))
        return super()._data(call, seq, service, ctx)


class _NoUnwrapCheck(GssServerAuth):
    """Executes a privacy call whose token does not unwrap, with the arguments it could read."""

    def _data(self, call: Any, seq: int, service: Service, ctx: Any) -> Any:
        result = super()._data(call, seq, service, ctx)
        if service is Service.PRIVACY and isinstance(result, AuthGarbage):
            args = ECHO[1] if call.proc == PROC_ECHO else b""  # what it would have read
            result = super()._data(
                call, seq, service, dataclasses.replace(ctx, gss=_BlindGss(ctx.gss, seq, args))
            )
        return result


def _factory(cls: type[GssServerAuth]) -> ServerFactory:
    return lambda realm: cls(GssapiProvider(realm.service_name, keytab=realm.keytab))


@pytest.mark.parametrize(
    ("breakage", "failing"),
    [
        ("replay", "GSS-05"),
        ("header-mic", "GSS-09"),
        ("maxseq", "GSS-08"),
        ("body-seq", "GSS-11"),
        ("destroy-mic", "GSS-15"),
        ("checksum", "GSS-10"),
        ("unwrap", "GSS-12"),
    ],
)
def test_broken_server_fails_exactly_its_case(
    realm: ThrowawayRealm, monkeypatch: pytest.MonkeyPatch, breakage: str, failing: str
) -> None:
    """Through ECHO (a procedure with arguments): the body cases then test the body checks."""
    factory = _server
    if breakage == "replay":
        monkeypatch.setattr(gss_server, "SeqWindow", _NoReplayWindow)
    elif breakage == "maxseq":
        monkeypatch.setattr(gss_server, "MAXSEQ", 1 << 32)
    elif breakage == "header-mic":
        factory = _factory(_SkipRequestMic)
    elif breakage == "destroy-mic":
        factory = _factory(_SkipDestroyMic)
    elif breakage == "checksum":
        factory = _factory(_NoChecksumCheck)
    elif breakage == "unwrap":
        factory = _factory(_NoUnwrapCheck)
    else:
        factory = _factory(_NoBodySeqCheck)
    report = asyncio.run(_run(realm, factory, proc=ECHO[0], args=ECHO[1]))
    failed = {r.spec.id for r in report.results if r.outcome is Outcome.FAIL}
    assert failed == {failing}, {r.spec.id: r.reason for r in report.results if r.outcome is Outcome.FAIL}
    assert report.exit_code == 1
    others = {r.outcome for r in report.results if r.spec.id != failing}
    assert others <= {Outcome.PASS, Outcome.OMIT, Outcome.WARN}


@pytest.mark.parametrize(
    ("breakage", "warned"),
    [
        ("maxseq-inclusive", "GSS-08"),  # accepts seq_num == MAXSEQ, as Linux does
        ("no-init-cache", "GSS-17"),  # a retransmitted INIT is accepted afresh
    ],
)
def test_a_should_or_ambiguity_not_met_warns_and_exits_0(
    realm: ThrowawayRealm, monkeypatch: pytest.MonkeyPatch, breakage: str, warned: str
) -> None:
    factory = _server
    if breakage == "maxseq-inclusive":
        monkeypatch.setattr(gss_server, "MAXSEQ", gss_server.MAXSEQ + 1)
    else:

        def factory(realm: ThrowawayRealm) -> GssServerAuth:
            return GssServerAuth(GssapiProvider(realm.service_name, keytab=realm.keytab), init_cache_size=0)

    report = asyncio.run(_run(realm, factory, (warned, "GSS-01", "GSS-05")))
    outcomes = {r.spec.id: r.outcome for r in report.results}
    assert outcomes == {"GSS-01": Outcome.PASS, "GSS-05": Outcome.PASS, warned: Outcome.WARN}
    assert report.exit_code == 0


# -- the command line ---------------------------------------------------------------------------


@contextmanager
def _server_thread(
    realm: ThrowawayRealm, factory: ServerFactory = _server, proto: str = "tcp"
) -> Iterator[int]:
    """The test program with RPCSEC_GSS on 127.0.0.1, in its own thread and event loop."""
    started = threading.Event()
    state: dict[str, Any] = {}

    def serve() -> None:
        async def main_loop() -> None:
            dispatcher = RpcDispatcher([factory(realm)])
            add_test_program(dispatcher)
            server = RpcServer(dispatcher)
            listen = server.listen_udp if proto == "udp" else server.listen_tcp
            state["port"] = await listen("127.0.0.1", 0)
            state["stop"] = stop = asyncio.Event()
            state["loop"] = asyncio.get_running_loop()
            started.set()
            await stop.wait()
            await server.close()

        asyncio.run(main_loop())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield int(state["port"])
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(10)


def _cli(port: int, realm: ThrowawayRealm, *extra: str) -> int:
    return main(
        [
            "conformance",
            f"127.0.0.1:{port}",
            "--prog",
            str(RPCLATCH_TEST_PROG),
            "--vers",
            str(RPCLATCH_TEST_VERS),
            "--target",
            realm.service_name,
            "--drop-wait",
            str(DROP_WAIT),
            *extra,
        ]
    )


def test_cli_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conformance", "--list"]) == 0
    out = capsys.readouterr().out
    ids = [line.split()[0] for line in out.splitlines()]
    assert ids == [c.spec.id for c in registry.all_cases()]
    assert main(["conformance", "--list", "--group", "ROB"]) == 0
    assert all(line.startswith("ROB-") for line in capsys.readouterr().out.splitlines())


def test_cli_json_and_junit(
    realm: ThrowawayRealm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junit = tmp_path / "conformance.xml"
    with _server_thread(realm) as port:
        rc = _cli(
            port,
            realm,
            "--case",
            "GSS-01",
            "--case",
            "GSS-05",
            "--group",
            "ROB",
            "--case",
            "CB-10",
            "--json",
            "--junit",
            str(junit),
        )
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["prog"] == RPCLATCH_TEST_PROG and data["service"] == "krb5i" and data["must_failed"] is False
    outcomes = {c["id"]: c["outcome"] for c in data["cases"]}
    assert outcomes == {
        "GSS-01": "PASS",
        "GSS-05": "PASS",
        "CB-10": "OMIT",
        **{f"ROB-0{n}": "PASS" for n in range(1, 5)},
    }
    case = data["cases"][0]
    assert (
        case["rfc"] == "RFC 2203"
        and case["level"] == "MUST"
        and case["sent"]
        and case["expected"]
        and case["got"]
    )
    root = ET.parse(junit).getroot()
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {"RFC 2203 (GSS)", "RFC 5403 (CB)", "RFC 5531 (ROB)"}
    assert suites["RFC 5403 (CB)"].get("skipped") == "1"
    assert all(s.get("failures") == "0" for s in suites.values())


def test_cli_table_and_exit_code_on_a_failed_must(
    realm: ThrowawayRealm, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(gss_server, "MAXSEQ", 1 << 32)
    with _server_thread(realm) as port:
        assert _cli(port, realm, "--case", "GSS-02") == 0
        assert "GSS-02  PASS" in capsys.readouterr().out
        assert _cli(port, realm, "--case", "GSS-08", "--sec", "krb5p") == 1
    out = capsys.readouterr().out
    assert "RFC 2203" in out and "GSS-08  FAIL" in out and "service krb5p" in out
    assert out.splitlines()[-1] == "result: a MUST failed"


@pytest.mark.parametrize(
    ("argv", "message", "code"),
    [
        (["conformance", "nohost.invalid:2049", "--prog", "1", "--vers", "1"], "cannot resolve HOST", 2),
        (["conformance", "127.0.0.1:99999", "--prog", "1", "--vers", "1"], "bad port in HOST", 2),
        (["conformance", "[::1", "--prog", "1", "--vers", "1"], "bad HOST", 2),
        (["conformance", "127.0.0.1:2049", "--prog", "nosuchprog", "--vers", "1"], "unknown RPC program", 2),
        (
            ["conformance", "127.0.0.1:2049", "--prog", "1", "--vers", "1", "--case", "GSS-99"],
            "unknown case",
            2,
        ),
        (["conformance", "--list", "--group", "NOPE"], "unknown group", 2),
        (["conformance", "127.0.0.1:2049"], "--prog N --vers N", 2),
        (["conformance", "--prog", "1", "--vers", "1"], "HOST[:PORT]", 2),
    ],
)
def test_cli_bad_input_is_one_line(
    argv: list[str], message: str, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err and err.startswith("rpclatch: error: ")


def test_cli_keyd_without_a_key_manager_omits_the_channel_cases(
    realm: ThrowawayRealm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with _server_thread(realm) as port:
        rc = _cli(
            port, realm, "--case", "CB-10", "--case", "CB-12", "--keyd", str(tmp_path / "no.sock"), "--json"
        )
    assert rc == 0
    cases = json.loads(capsys.readouterr().out)["cases"]
    assert [(c["id"], c["outcome"]) for c in cases] == [("CB-10", "OMIT"), ("CB-12", "OMIT")]
    assert all(c["reason"].startswith("no key manager") for c in cases)


def test_cli_over_udp(realm: ThrowawayRealm, capsys: pytest.CaptureFixture[str]) -> None:
    with _server_thread(realm, proto="udp") as port:
        rc = _cli(port, realm, "--proto", "udp", "--case", "GSS-05", "--case", "ROB-01", "--json")
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["proto"] == "udp"
    assert {c["id"]: c["outcome"] for c in data["cases"]} == {"GSS-05": "PASS", "ROB-01": "OMIT"}


def test_cli_no_answer_over_udp_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # bound, never read
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        argv = ["conformance", f"127.0.0.1:{port}", "--prog", "1", "--vers", "1", "--proto", "udp"]
        assert main([*argv, "--timeout", "0.3"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no answer over UDP" in err


def test_cli_refused_connection_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert main(["conformance", f"127.0.0.1:{port}", "--prog", "1", "--vers", "1"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "connection refused" in err
