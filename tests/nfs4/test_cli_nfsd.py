"""``rpclatch nfs`` as a user runs it (a subprocess in the host-side namespace) against the real
Linux nfsd: listings, transfers, and one-line errors without tracebacks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from interop.world import SERVER_ADDR, CommandResult, NfsdWorld

pytestmark = [pytest.mark.uml, pytest.mark.root, pytest.mark.timeout(600)]


def nfs(
    guest: NfsdWorld,
    *argv: str,
    user: str | None = "alice",
    stdin: str | None = None,
    target: str | None = None,
) -> CommandResult:
    # not "-m rpclatch.cli": that would make a second copy of the module (__main__) whose
    # UserError is not the one the commands raise
    main = "import sys; from rpclatch.cli import main; sys.exit(main())"
    sec = argv[argv.index("--sec") + 1] if "--sec" in argv else "auto"
    # the GSS target only with a flavor that uses it (with --sec sys it is a one-line user error)
    gss = [] if sec == "sys" else ["--gss-target", target or guest.service_name]
    cmd = [guest.config.python, "-c", main, "nfs", *argv, *gss]
    return guest.host_run(cmd, env=guest.host_env(user), input_data=stdin, timeout=180)


def assert_one_line_error(r: CommandResult, text: str) -> None:
    assert r.returncode == 2, r
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rpclatch: error: "), r.stderr
    assert text in lines[0], lines[0]


def test_ls_get_put_cat_rm(nfsd: NfsdWorld, tmp_path: Path) -> None:
    r = nfs(nfsd, "ls", f"{SERVER_ADDR}:/", "--sec", "sys")
    assert r.ok, r.stderr
    assert any(line.endswith(" file.txt") and line.startswith("-rw-r--r--") for line in r.stdout.splitlines())
    assert "krb5ponly  (NFS4ERR_WRONGSEC)" in r.stdout

    local = tmp_path / "up.bin"
    local.write_bytes(os.urandom(700_000))
    r = nfs(nfsd, "put", f"{SERVER_ADDR}:/cli/", str(local), "--sec", "sys")
    assert_one_line_error(r, "no such file or directory")
    assert nfs(nfsd, "mkdir", f"{SERVER_ADDR}:/cli", "--sec", "sys").ok  # owned by root
    r = nfs(nfsd, "put", f"{SERVER_ADDR}:/cli/", str(local), "--v4.0", "--sec", "krb5i")  # as alice
    assert_one_line_error(r, "permission denied")
    assert nfs(nfsd, "rm", f"{SERVER_ADDR}:/cli", "--sec", "sys").ok
    assert nfs(nfsd, "mkdir", f"{SERVER_ADDR}:/cli", "--sec", "krb5i").ok
    r = nfs(nfsd, "put", f"{SERVER_ADDR}:/cli/", str(local), "--v4.0", "--sec", "krb5i")
    assert r.ok, r.stderr
    back = tmp_path / "back.bin"
    r = nfs(nfsd, "get", f"{SERVER_ADDR}:/cli/up.bin", str(back), "--sec", "krb5p")
    assert r.ok, r.stderr
    assert back.read_bytes() == local.read_bytes()
    r = nfs(nfsd, "stat", f"{SERVER_ADDR}:/cli/up.bin")  # --sec auto: BYPASS-OR-PROTECT hook
    assert r.ok and "size:      700000 (683.6K)" in r.stdout, r.stdout
    # the export lists krb5i before krb5p; the policy (no IPsec channel bound) prefers krb5p
    assert "security:  krb5p" in r.stdout, r.stdout
    assert nfs(nfsd, "rm", f"{SERVER_ADDR}:/cli/up.bin").ok
    assert nfs(nfsd, "rm", f"{SERVER_ADDR}:/cli").ok
    r = nfs(nfsd, "cat", f"{SERVER_ADDR}:/krb5only/file.txt", "--sec", "krb5")
    assert r.ok and r.stdout == "secret-data /krb5only\n", r


def test_errors_are_one_line(nfsd: NfsdWorld) -> None:
    assert_one_line_error(
        nfs(nfsd, "cat", f"{SERVER_ADDR}:/nope.txt", "--sec", "sys"),
        f"{SERVER_ADDR}:/nope.txt: no such file or directory",
    )
    assert_one_line_error(
        nfs(nfsd, "cat", f"{SERVER_ADDR}:/krb5ponly/file.txt", "--sec", "sys"),
        "server requires krb5p for /krb5ponly; rerun with --sec krb5p or --sec auto",
    )
    assert_one_line_error(nfs(nfsd, "cat", f"{SERVER_ADDR}:/", "--sec", "sys"), "is a directory")
    assert_one_line_error(nfs(nfsd, "ls", f"{SERVER_ADDR}:/", "--sec", "krb5i", user=None), "Kerberos failed")
    assert_one_line_error(nfs(nfsd, "ls", f"{SERVER_ADDR}:/", user=None), "or use --sec sys")
    # a service principal the server has no key for: Linux closes the connection at RPCSEC_GSS INIT
    wrong = f"nfs@wrong.{nfsd.config.domain}"
    assert_one_line_error(
        nfs(nfsd, "ls", f"{SERVER_ADDR}:/", "--sec", "krb5i", target=wrong),
        "server closed the connection during RPCSEC_GSS context setup: check the "
        f"GSS target (--gss-target nfs@HOST, now {wrong}) and the server's keytab",
    )
    assert_one_line_error(
        nfs(nfsd, "ls", f"{SERVER_ADDR}:/", "--port", "2050", "--sec", "sys"),
        f"cannot reach {SERVER_ADDR}:2050: Connection refused",
    )
