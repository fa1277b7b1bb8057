"""Fixtures for the RPCSEC_GSS tests: one real MIT realm per test session (shared with
tests/conformance through :func:`rpclatch.gss.realm.shared_realm`)."""

from __future__ import annotations

from rpclatch.gss.realm import realm_fixture

realm = realm_fixture()
