"""``rpclatch conformance`` against the two independent RPCSEC_GSS v1 servers of the interop tests:
MIT kadmind (gssrpc; program 2112 version 2) and the small libtirpc server
(``tirpc_gss_server.c``: rpclatch's test program), each for krb5, krb5i and krb5p, with the runner
API in-process as the Linux nfsd test does. Each is called twice: through NULL, and through a
procedure with arguments (kadmind: GET_PRIVS, whose argument is the API version; libtirpc: ECHO),
because both unwrap a call's body only when the procedure decodes its arguments.

The expected outcomes are the ones observed (docs/conformance.md has the tables, the versions and
why each case that does not PASS does not): a change on either side -- the peer's RPCSEC_GSS or
this suite -- shows up here. Both peers descend from the same University of Michigan code and
answer every case alike.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from rpclatch.conformance import registry, report, runner
from rpclatch.conformance.model import Outcome, Report
from rpclatch.conformance.probe import ProbeConfig
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.wire import Service
from rpclatch.rpc.testprog import PROC_ECHO, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, encode_opaque

from .interop_peers import (
    Kadmind,
    TirpcServer,
    build_tirpc_server,
    missing_tools,
    running_kadmind,
    running_tirpc_server,
)

KADM_PROG = 2112
KADM_VERS = 2
#: kadm5 GET_PRIVS: read-only, its argument is the client's API version (KADM5_API_VERSION_2).
KADM_GET_PRIVS = 12
KADM_GET_PRIVS_ARGS = struct.pack(">I", 0x12345702)
#: The test program's ECHO with four bytes.
ECHO_ARGS = encode_opaque(b"echo")
#: svc_vc_create buffer size of the libtirpc server (as in test_interop_libtirpc.py).
TIRPC_BUFFER = 256 * 1024
SECS = ["krb5", "krb5i", "krb5p"]

#: What both peers answer, for krb5, krb5i and krb5p; every case not listed PASSes. The second
#: element is a piece of the reason or of what came back.
OBSERVED: dict[str, tuple[Outcome, str]] = {
    # a replayed / below-the-window seq_num is answered RPCSEC_GSS_CTXPROBLEM, not dropped
    "GSS-05": (Outcome.WARN, "RPCSEC_GSS_CTXPROBLEM"),
    "GSS-06": (Outcome.WARN, "RPCSEC_GSS_CTXPROBLEM"),
    "GSS-07": (Outcome.WARN, "RPCSEC_GSS_CTXPROBLEM"),
    # seq_num == MAXSEQ accepted (the check is seq_num > MAXSEQ, as in Linux nfsd)
    "GSS-08": (Outcome.WARN, "MAXSEQ: MSG_ACCEPTED SUCCESS"),
    # the arguments are unwrapped only when the procedure decodes them; NULLPROC decodes none
    # (OBSERVED_WITH_ARGS: what a procedure with arguments gets)
    "GSS-10": (Outcome.FAIL, "a tampered integrity body was accepted (with procedure 0, NULL"),
    "GSS-11": (Outcome.FAIL, "a body with another seq_num was accepted (with procedure 0, NULL"),
    "GSS-12": (Outcome.FAIL, "a tampered privacy body was accepted (with procedure 0, NULL"),
    # only PROC_UNAVAIL is an accepted error reply: the tampered NULL body is answered SUCCESS
    "GSS-18": (Outcome.PASS, "verifier verifies on PROC_UNAVAIL |"),
    # the context is the connection's: the handle in the credential is not looked at
    "GSS-13": (Outcome.FAIL, "an unknown handle was accepted | MSG_ACCEPTED SUCCESS"),
    # the context is locked into the service of its INIT credential (RFC 2203 §5.2.2: ignored)
    "GSS-16": (Outcome.WARN, "INIT with krb5, then DATA with krb5i: results do not verify"),
    # a second INIT on a connection that has a context: AUTH_REJECTEDCRED, and the context is dead
    "GSS-17": (Outcome.WARN, "AUTH_REJECTEDCRED); the first context no longer works"),
    # v1 only: version 2 refused with AUTH_BADCRED (RFC 2203 §5.1 says AUTH_REJECTEDCRED)
    "CB-01": (Outcome.NOT_SUPPORTED, "AUTH_BADCRED"),
    "CB-04": (Outcome.NOT_SUPPORTED, "AUTH_BADCRED"),
    **{f"CB-0{n}": (Outcome.NOT_SUPPORTED, "AUTH_BADCRED") for n in range(6, 10)},
    **{f"CB-{n}": (Outcome.OMIT, "") for n in range(10, 17)},
}


#: The same through a procedure with arguments (kadmind GET_PRIVS, libtirpc ECHO).
OBSERVED_WITH_ARGS: dict[str, tuple[Outcome, str]] = {
    **OBSERVED,
    "GSS-10": (Outcome.PASS, "a tampered integrity body answered GARBAGE_ARGS"),
    "GSS-11": (Outcome.PASS, "a body with another seq_num answered GARBAGE_ARGS"),
    "GSS-12": (Outcome.PASS, "a tampered privacy body answered GARBAGE_ARGS"),
    # the GARBAGE_ARGS of a tampered body now carries MIC(seq_num) as well
    "GSS-18": (Outcome.PASS, "verifier verifies on PROC_UNAVAIL, GARBAGE_ARGS"),
}


def _check(result: Report, observed: dict[str, tuple[Outcome, str]] = OBSERVED) -> None:
    seen = {r.spec.id: (r.outcome, f"{r.reason} | {r.got}") for r in result.results}
    expected = {c.spec.id: observed.get(c.spec.id, (Outcome.PASS, "")) for c in registry.all_cases()}
    assert {i: o for i, (o, _) in seen.items()} == {i: o for i, (o, _) in expected.items()}, report.table(
        result
    )
    for case_id, (_, got) in expected.items():
        assert got in seen[case_id][1], (case_id, seen[case_id][1])
    assert result.exit_code == 1  # GSS-10..13 are MUSTs


def _run(
    realm: ThrowawayRealm,
    port: int,
    prog: int,
    vers: int,
    target: str,
    sec: str,
    proc: int = 0,
    args: bytes = b"",
) -> Report:
    config = ProbeConfig(
        "127.0.0.1",
        port,
        prog,
        vers,
        proc=proc,
        args=args,
        target=target,
        service=Service.from_sec_name(sec),
        timeout=10.0,
        drop_wait=0.5,
    )
    provider = GssapiProvider(ccache=realm.users["alice"].ccache)
    return asyncio.run(runner.run(registry.select(), config, provider))


@pytest.fixture(scope="module")
def kadmind(realm: ThrowawayRealm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kadmind]:
    if missing_tools(kadmind=True):
        pytest.skip(f"kadmind needs krb5-admin-server: missing {', '.join(missing_tools(kadmind=True))}")
    with running_kadmind(realm, tmp_path_factory.mktemp("kadmind"), realm.users["alice"].principal) as server:
        yield server


@pytest.fixture(scope="module")
def tirpc(realm: ThrowawayRealm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TirpcServer]:
    if missing_tools(tirpc=True):
        pytest.skip(
            f"libtirpc needs gcc, libtirpc-dev, libkrb5-dev: missing {', '.join(missing_tools(tirpc=True))}"
        )
    workdir: Path = tmp_path_factory.mktemp("tirpc")
    binary = build_tirpc_server(workdir)
    with running_tirpc_server(
        binary,
        realm,
        workdir,
        service=realm.service_name,
        prog=RPCLATCH_TEST_PROG,
        vers=RPCLATCH_TEST_VERS,
        bufsize=TIRPC_BUFFER,
    ) as server:
        yield server


@pytest.mark.parametrize("sec", SECS)
def test_kadmind_conformance(realm: ThrowawayRealm, kadmind: Kadmind, sec: str) -> None:
    result = _run(realm, kadmind.port, KADM_PROG, KADM_VERS, kadmind.target, sec)
    _check(result)
    assert "window of 32" in result.by_id()["GSS-06"].reason


@pytest.mark.parametrize("sec", SECS)
def test_libtirpc_conformance(realm: ThrowawayRealm, tirpc: TirpcServer, sec: str) -> None:
    result = _run(realm, tirpc.port, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, realm.service_name, sec)
    _check(result)
    assert "window of 5" in result.by_id()["GSS-06"].reason


@pytest.mark.parametrize("sec", SECS)
def test_kadmind_conformance_with_arguments(realm: ThrowawayRealm, kadmind: Kadmind, sec: str) -> None:
    result = _run(
        realm, kadmind.port, KADM_PROG, KADM_VERS, kadmind.target, sec, KADM_GET_PRIVS, KADM_GET_PRIVS_ARGS
    )
    _check(result, OBSERVED_WITH_ARGS)


@pytest.mark.parametrize("sec", SECS)
def test_libtirpc_conformance_with_arguments(realm: ThrowawayRealm, tirpc: TirpcServer, sec: str) -> None:
    result = _run(
        realm,
        tirpc.port,
        RPCLATCH_TEST_PROG,
        RPCLATCH_TEST_VERS,
        realm.service_name,
        sec,
        PROC_ECHO,
        ECHO_ARGS,
    )
    _check(result, OBSERVED_WITH_ARGS)
