"""rpclatch.commands.common: the SERVICE@HOST option check and the stop-signal handling."""

from __future__ import annotations

import os
import signal

import pytest

from rpclatch.commands.common import StopSignals, TargetProblem, gss_target_problem, parse_service_name
from rpclatch.errors import UserError
from rpclatch.gss.errors import ContextInitFailed, GssError, GssMajor


@pytest.mark.parametrize(
    "good", ["nfs@server.example", "rpctest@localhost", "host@127.0.0.1", "HTTP@web-1.example", "nfs@fe80::1"]
)
def test_service_names_accepted(good: str) -> None:
    assert parse_service_name(good, "--target") == good


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("nfs", "--target 'nfs' has no host: give SERVICE@HOST (e.g. --target nfs@server.example)"),
        ("@host", "--target '@host' has no service before the '@'"),
        ("nfs@", "--target 'nfs@' has no host after the '@'"),
        ("nfs@a@b", "--target 'nfs@a@b' has more than one '@'"),
        (
            "nfs/srv.example@EXAMPLE.COM",
            "--target 'nfs/srv.example@EXAMPLE.COM' looks like a Kerberos "
            "principal name; give the host-based service name SERVICE@HOST "
            "instead (--target nfs@srv.example)",
        ),
        ("n fs@host", "bad service name 'n fs'"),
        ("nfs@bad host", "bad host name 'bad host'"),
        ("nfs@host\n", "bad host name 'host\\n'"),
    ],
)
def test_bad_service_names_are_one_line_user_errors(bad: str, says: str) -> None:
    with pytest.raises(UserError) as info:
        parse_service_name(bad, "--target")
    message = str(info.value)
    assert says in message and "\n" not in message


def test_wrong_target_is_told_by_status_codes() -> None:
    unknown = GssError(GssMajor.GSS_S_FAILURE, -1765328377, "any text")  # signed, as libkrb5 has it
    assert gss_target_problem(unknown) is TargetProblem.UNKNOWN_TO_KDC
    assert (
        gss_target_problem(ContextInitFailed(GssMajor.GSS_S_FAILURE, 0x96C73A23))
        is TargetProblem.NOT_THE_SERVERS
    )
    # The same words without the code are not a wrong target; nor is no cause at all.
    assert (
        gss_target_problem(GssError(GssMajor.GSS_S_NO_CRED, 0, "Server not found in Kerberos database"))
        is None
    )
    assert gss_target_problem(ContextInitFailed(GssMajor.GSS_S_FAILURE, 0)) is None
    assert gss_target_problem(None) is None


def test_stop_signals_absorb_repeats_and_restore() -> None:
    before = {sig: signal.getsignal(sig) for sig in StopSignals.SIGNALS}
    calls: list[int] = []
    with StopSignals(ignore_after_stop=False) as signals:
        signals.on_stop(lambda: calls.append(1))
        assert not signals.stop_requested
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next bytecode
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.stop_requested and signals.received == 4
        assert calls == [1]  # the stop callbacks ran once
        late: list[int] = []
        signals.on_stop(lambda: late.append(1))  # added after the stop: runs at once
        assert late == [1]
    assert {sig: signal.getsignal(sig) for sig in StopSignals.SIGNALS} == before


def test_stop_signals_leave_signals_ignored_after_a_requested_stop() -> None:
    before = {sig: signal.getsignal(sig) for sig in StopSignals.SIGNALS}
    try:
        with StopSignals() as signals:
            os.kill(os.getpid(), signal.SIGTERM)
        assert signals.stop_requested
        assert all(signal.getsignal(sig) == signal.SIG_IGN for sig in StopSignals.SIGNALS)
        os.kill(os.getpid(), signal.SIGTERM)  # ignored: the process is on its way out
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_stop_signals_without_a_stop_restore_at_once() -> None:
    before = {sig: signal.getsignal(sig) for sig in StopSignals.SIGNALS}
    with StopSignals():
        assert signal.getsignal(signal.SIGTERM) not in (before[signal.SIGTERM], signal.SIG_IGN)
    assert {sig: signal.getsignal(sig) for sig in StopSignals.SIGNALS} == before
