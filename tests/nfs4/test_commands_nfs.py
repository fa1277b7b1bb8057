"""``rpclatch nfs`` helpers: argument parsing, sizes, modes, the progress bar and error lines."""

from __future__ import annotations

import errno
import io

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


def test_sec_auto_help_and_record_say_what_happens_on_real_sockets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--sec auto`` is honest about real sockets: no latch (no IKE key manager), so krb5p then
    krb5i from the policy table -- in the help text and in the hook's record."""
    import asyncio

    from rpclatch.commands.nfs import connection_hook
    from rpclatch.nfs4.security import SecFlavor

    with pytest.raises(SystemExit):
        build_parser().parse_args(["nfs", "ls", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "no IPsec latch is made (no IKE key manager yet)" in help_text
    assert "krb5p, else krb5i" in help_text

    sec = asyncio.run(connection_hook("auto")("192.0.2.9", 2049, "auto"))
    assert sec.allowed == (SecFlavor.KRB5P, SecFlavor.KRB5I)
    assert sec.record["latched"] is False and sec.record["latch_outcome"] == "NOT_LATCHED"
    assert "no IKE key manager for real sockets" in str(sec.record["protection_error"])
