"""``rpclatch nfs`` helpers: argument parsing, sizes, modes, the progress bar and error lines."""

from __future__ import annotations

import errno
import io
from pathlib import Path

import pytest

from rpclatch.cli import UserError, build_parser
from rpclatch.commands.nfs import Progress, explain, human_size, mode_string, parse_remote
from rpclatch.gss.errors import GssError, GssMajor
from rpclatch.nfs4.const import nfs_opnum4, nfsstat4
from rpclatch.nfs4.errors import Nfs4RemoteError, Nfs4SecurityError
from rpclatch.rpc.errors import RpcAuthError, RpcTimeout
from rpclatch.rpc.messages import AuthStat


def test_parse_remote() -> None:
    assert parse_remote("srv:/a/b") == ("srv", "/a/b")
    assert parse_remote("srv:") == ("srv", "/")
    assert parse_remote("[2001:db8::1]:/x") == ("2001:db8::1", "/x")
    for bad in ("nocolon", ":/x", "[::1/x"):
        with pytest.raises(UserError):
            parse_remote(bad)


def test_human_size_and_mode() -> None:
    assert [human_size(n) for n in (0, 1023, 1536, 3 * 2**20, 5 * 2**40)] == [
        "0",
        "1023",
        "1.5K",
        "3.0M",
        "5.0T",
    ]
    assert mode_string(2, 0o755) == "drwxr-xr-x"
    assert mode_string(1, 0o4644) == "-rwSr--r--"


def test_parser_accepts_the_documented_synopsis() -> None:
    args = build_parser().parse_args(
        ["nfs", "get", "srv:/f", "out", "--sec", "krb5p", "--v4.0", "--port", "20049"]
    )
    assert (args.nfs_command, args.remote, args.local, args.sec, args.minor, args.port) == (
        "get",
        "srv:/f",
        "out",
        "krb5p",
        0,
        20049,
    )
    assert build_parser().parse_args(["nfs", "ls", "srv:/"]).minor == 1
    with pytest.raises(SystemExit):
        build_parser().parse_args(["nfs", "ls", "srv:/", "--sec", "krb6"])


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_tty() -> None:
    tty, pipe = _Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = Progress("get f", 2048, stream)
        bar.update(2048)
        bar.finish()
    assert "100% [########################] 2.0K/2.0K" in tty.getvalue()
    assert pipe.getvalue() == ""


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (Nfs4RemoteError(nfsstat4.NFS4ERR_NOENT, nfs_opnum4.OP_LOOKUP), "srv:/p: no such file or directory"),
        (Nfs4RemoteError(nfsstat4.NFS4ERR_ACCESS, nfs_opnum4.OP_OPEN), "srv:/p: permission denied"),
        (
            Nfs4RemoteError(nfsstat4.NFS4ERR_STALE, nfs_opnum4.OP_PUTFH),
            "srv:/p: server error NFS4ERR_STALE in OP_PUTFH",
        ),
        (
            Nfs4SecurityError("server requires krb5p for /p; rerun with --sec krb5p or --sec auto"),
            "server requires krb5p for /p; rerun with --sec krb5p or --sec auto",
        ),
        (GssError(GssMajor.GSS_S_NO_CRED), "Kerberos failed for --sec sys"),
        (
            RpcAuthError(AuthStat.AUTH_TOOWEAK),
            "srv:2049 rejected our credentials (AUTH_TOOWEAK); try --sec auto",
        ),
        (RpcTimeout("x"), "srv:2049 did not answer in time"),
        (
            ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"),
            "cannot reach srv:2049: Connection refused",
        ),
        (TimeoutError(), "cannot reach srv:2049: connection timed out"),
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "local.bin"),
            "local.bin: No such file or directory",
        ),
    ],
)
def test_explain(exc: Exception, expected: str) -> None:
    line = explain(exc, "srv", 2049, "/p", "sys")
    assert expected in line and "\n" not in line


def test_sec_auto_help_and_record_say_what_happens_without_a_key_manager(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--sec auto`` is honest about real sockets: the help says what a key manager changes, and
    without one no latch is made, so krb5p then krb5i (or the --fallback first) from the policy
    table, in the hook's record."""
    import asyncio

    from rpclatch.commands.nfs import connection_hook
    from rpclatch.nfs4.security import SecFlavor

    with pytest.raises(SystemExit):
        build_parser().parse_args(["nfs", "ls", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert (
        "Without a key manager no IKE is attempted: krb5p, else krb5i (--fallback krb5i: the reverse)"
        in help_text
    )
    assert "--keyd SOCKET" in help_text and "--ike-timeout SECONDS" in help_text

    sec = asyncio.run(connection_hook("auto")("192.0.2.9", 2049, "auto"))
    assert sec.allowed == (SecFlavor.KRB5P, SecFlavor.KRB5I) and sec.rpc is None
    assert sec.record["latched"] is False and sec.record["latch_outcome"] == "NOT_LATCHED"
    assert "no key manager to ask" in str(sec.record["protection_error"])
    assert sec.record["peer"] == "192.0.2.9:2049"
    sec = asyncio.run(connection_hook("auto", "krb5i")("192.0.2.9", 2049, "auto"))
    assert sec.allowed == (SecFlavor.KRB5I, SecFlavor.KRB5P) and sec.record["gss_service"] == "krb5i"


def test_key_manager_socket_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--keyd`` if given; else the default socket of ``rpclatch ipsec keyd`` only when it
    exists (then the kernel world is used); else None: today's behaviour without IPsec."""
    from rpclatch.commands import ipsec
    from rpclatch.commands.nfs import keyd_socket

    parser = build_parser()
    monkeypatch.setattr(ipsec, "DEFAULT_SOCKET", tmp_path / "keyd.sock")
    assert keyd_socket(parser.parse_args(["nfs", "ls", "srv:/"])) is None
    given = parser.parse_args(["nfs", "ls", "srv:/", "--keyd", str(tmp_path / "other.sock")])
    assert keyd_socket(given) == tmp_path / "other.sock"
    (tmp_path / "keyd.sock").touch()
    assert keyd_socket(parser.parse_args(["nfs", "ls", "srv:/"])) == tmp_path / "keyd.sock"
    assert keyd_socket(parser.parse_args(["nfs", "ls", "srv:/", "--sec", "krb5p"])) is None


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--sec", "krb5p", "--keyd", "/run/x.sock"], "--keyd is for --sec auto"),
        (["--sec", "sys", "--fallback", "krb5i"], "--fallback is for --sec auto"),
        (["--sec", "krb5i", "--ike-timeout", "3"], "--ike-timeout is for --sec auto"),
        (["--sec", "krb5p", "--gss-version", "1"], "--gss-version is for --sec auto"),
        (["--gss-version", "2"], "--gss-version: invalid choice"),
        (["--ike-timeout", "0"], "--ike-timeout: must be a positive number"),
        (["--ike-timeout", "soon"], "--ike-timeout: not a number"),
        (["--ike-timeout", "inf"], "--ike-timeout: must be a positive number"),
        (["--fallback", "krb5"], "--fallback: invalid choice"),
    ],
)
def test_bad_sec_auto_options_are_one_line_errors(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from rpclatch.cli import main

    try:
        rc = main(["nfs", "ls", "192.0.2.9:/", *argv])
    except SystemExit as exc:  # argparse: the usage, then one error line
        rc = int(exc.code or 0)
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and needle in errors[0], err


def test_missing_key_manager_socket_is_one_line_naming_keyd(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rpclatch.cli import main

    assert main(["nfs", "ls", "192.0.2.9:/", "--keyd", str(tmp_path / "no.sock")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--keyd" in err and "no such socket" in err, err


def test_security_row_line_is_the_rpc_ping_line() -> None:
    from rpclatch.commands.nfs import security_row_line
    from rpclatch.connect import BindOutcome, LatchOutcome, SecurityRecord
    from rpclatch.connect.policy import decide
    from rpclatch.gss.wire import Service

    row = decide(LatchOutcome.NOT_LATCHED, BindOutcome.NOT_ATTEMPTED)
    record = SecurityRecord(
        conn_id=1,
        generation=1,
        five_tuple="tcp 192.0.2.1:1000 -> 192.0.2.9:2049",
        latched=False,
        latch_state=None,
        peer=None,
        qop=None,
        latch_outcome=LatchOutcome.NOT_LATCHED,
        bind_outcome=BindOutcome.NOT_ATTEMPTED,
        bound=False,
        gss_service=Service.PRIVACY,
        gss_version=2,
        reason=row.reason,
        protection_error="key manager: IKE_TIMEOUT",
    )
    assert security_row_line(record, 2.0314) == (
        "rpclatch: security: row (NOT_LATCHED, NOT_ATTEMPTED) in 2.031s: conn 1: not latched, "
        f"unbound, krb5p: {row.reason}; IPsec: key manager: IKE_TIMEOUT"
    )


def test_explain_kernel_world_failures() -> None:
    from rpclatch.connect import ConnectError
    from rpclatch.connect.kernel import KeydUnavailable
    from rpclatch.gss.errors import VersionNotSupported

    line = explain(KeydUnavailable("/run/k.sock: no such socket"), "srv", 2049, "/p", "auto")
    assert line.startswith("--keyd /run/k.sock: no such socket") and "\n" not in line
    assert explain(ConnectError("latch gone"), "srv", 2049, "/p", "auto") == "srv:2049: latch gone"
    line = explain(VersionNotSupported("no version left"), "srv", 2049, "/p", "auto")
    assert line == "srv:2049: RPCSEC_GSS failed: no version left"
