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
        out = subprocess.run(["klist", "-k", realm.keytab], env=env, capture_output=True, text=True,
                             check=True).stdout
        assert realm.service_principal in out
        assert realm.users["carol"].password == "pw-carol-1"
        # the password really works against the KDC
        subprocess.run(["kinit", "-c", os.path.join(tmp, "cc2"), "carol"], input="pw-carol-1\n",
                       env=env, capture_output=True, text=True, check=True)
        assert any(line.startswith("export KRB5_CONFIG=") for line in realm.export_lines())
    assert not os.path.exists(tmp)
    assert not realm.running


def test_bad_user_name_is_refused() -> None:
    with pytest.raises(RealmError):
        ThrowawayRealm(["a b"])


def test_shared_realm_fixture(realm: ThrowawayRealm) -> None:
    assert os.environ["KRB5_CONFIG"] == realm.env["KRB5_CONFIG"]
    assert set(realm.users) >= {"alice", "bob"}
