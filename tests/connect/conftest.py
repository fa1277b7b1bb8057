"""A real MIT realm for the session (shared with the GSS tests, see rpclatch.gss.realm)."""

from __future__ import annotations

from rpclatch.gss.realm import realm_fixture

realm = realm_fixture()
