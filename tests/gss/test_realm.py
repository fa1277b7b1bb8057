"""The throwaway realm helper: a real KDC that starts, serves and cleans up."""

from __future__ import annotations

import os
import subprocess

import pytest

from rpclatch.gss.realm import RealmError, ThrowawayRealm


def test_realm_lifecycle_cleans_up() -> None:
    realm = ThrowawayRealm({"carol": "pw-carol-1"})
    with realm:
        tmp = realm.tmpdir
        env = {**os.environ, **realm.env}
        out = subprocess.run(
            ["klist", "-k", realm.keytab], env=env, capture_output=True, text=True, check=True
        ).stdout
        assert realm.service_principal in out
        assert realm.users["carol"].password == "pw-carol-1"
        # the password really works against the KDC
        subprocess.run(
            ["kinit", "-c", os.path.join(tmp, "cc2"), "carol"],
            input="pw-carol-1\n",
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert any(line.startswith("export KRB5_CONFIG=") for line in realm.export_lines())
    assert not os.path.exists(tmp)
    assert not realm.running


def test_bad_user_name_is_refused() -> None:
    with pytest.raises(RealmError):
        ThrowawayRealm(["a b"])


def test_shared_realm_fixture(realm: ThrowawayRealm) -> None:
    assert os.environ["KRB5_CONFIG"] == realm.env["KRB5_CONFIG"]
    assert set(realm.users) >= {"alice", "bob"}


def _our_kdc_alive(pid: int, tmpdir: str) -> bool:
    """True if ``pid`` is still a krb5kdc process of the realm in ``tmpdir`` (not a reused PID)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return b"krb5kdc" in cmdline and tmpdir.encode() in environ


def test_start_failing_after_the_kdc_is_up_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start fails at the kinit step, after the KDC runs and the principals exist: the real kinit is
    run with a wrong password (a real KDC refusal). Every attempt's krb5kdc must be gone (checked by
    PID) and every realm directory removed; start raises RealmError."""
    import k5test.realm

    seen: list[tuple[int, str]] = []
    real_kinit = k5test.realm.MITRealm.kinit

    def failing_kinit(
        self: k5test.realm.MITRealm, princname: str, password: str | None = None, **kwargs: object
    ) -> object:
        pid = self._kdc_proc.pid
        assert _our_kdc_alive(pid, self.tmpdir), "the KDC should be running when kinit is reached"
        seen.append((pid, self.tmpdir))
        return real_kinit(self, princname, "not-the-password", **kwargs)

    monkeypatch.setattr(k5test.realm.MITRealm, "kinit", failing_kinit)
    realm = ThrowawayRealm({"dave": "pw-dave"})
    with pytest.raises(RealmError, match="could not start a KDC"):
        realm.start()
    assert len(seen) == 3  # start() retries on fresh port bases; each attempt must clean up
    for pid, tmpdir in seen:
        assert not _our_kdc_alive(pid, tmpdir), f"krb5kdc {pid} leaked"
        assert not os.path.exists(tmpdir), f"{tmpdir} leaked"
    assert not realm.running
