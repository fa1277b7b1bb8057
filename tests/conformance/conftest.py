"""Fixtures of the conformance suite: the process-wide MIT realm (users alice and bob, service
``nfs/<host>``; see :func:`rpclatch.gss.realm.realm_fixture`)."""

from __future__ import annotations

from rpclatch.gss.realm import realm_fixture

realm = realm_fixture()
