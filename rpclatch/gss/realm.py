"""Throwaway MIT Kerberos realms on k5test, for tests, demos and ``rpclatch realm up``.

A :class:`ThrowawayRealm` creates a KDC database in a temporary directory, starts ``krb5kdc`` on its
own free port range, registers the service principal ``nfs/<host>`` in a keytab and one or more
user principals with passwords (each kinit'ed into its own credential cache), and removes
everything again on :meth:`ThrowawayRealm.stop` -- also when start-up fails half way.
:func:`running_realm`, :func:`shared_realm` and :func:`realm_fixture` (pytest) wrap it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shlex
import shutil
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import k5test

log = logging.getLogger(__name__)

#: k5test uses $port0 .. $port9 relative to its port base.
_PORTS_PER_REALM = 10
_PORT_RANGE = (20000, 60000)


class RealmError(Exception):
    """The throwaway realm could not be created or used."""


@dataclass(frozen=True, slots=True)
class RealmUser:
    """A user principal of a throwaway realm and the credential cache it is kinit'ed into."""

    name: str
    principal: str
    password: str
    ccache: str


def _ports_free(base: int) -> bool:
    """True if TCP and UDP ports ``base .. base+9`` can all be bound on this host right now."""
    for port in range(base, base + _PORTS_PER_REALM):
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as sock:
                try:
                    sock.bind(("", port))
                except OSError:
                    return False
    return True


def find_free_port_base(rng: random.Random | None = None, attempts: int = 50) -> int:
    """A port base whose ten ports are currently free (probed by binding them)."""
    rng = rng or random.SystemRandom()
    for _ in range(attempts):
        base = rng.randrange(_PORT_RANGE[0], _PORT_RANGE[1], _PORTS_PER_REALM)
        if _ports_free(base):
            return base
    raise RealmError("no free port range for a KDC; free some ports in 20000-60000 and retry")


class ThrowawayRealm:
    """A running MIT KDC with a service keytab and password users; a context manager.

    ``service`` is the host-based service name (``nfs`` gives ``nfs/<host>@REALM``); ``users`` maps
    user names to passwords (``None`` picks a random one). The first user is also kinit'ed into the
    realm's default ccache (``KRB5CCNAME`` of :attr:`env`), so default-credential initiators act as
    that user. ``extra_services`` adds more host-based service principals to the same keytab.

    libkrb5 reads ``KRB5_CONFIG``, ``KRB5CCNAME`` and ``KRB5_KTNAME`` from the process environment
    on every call, so in-process GSS users must :meth:`activate` the realm (or run child processes
    with :attr:`env`).

    Why not plain ``k5test.K5Realm()``: its constructor starts the KDC and leaks it (and its
    temporary directory) when a later step raises, and every realm defaults to the same port base,
    so two realms running at once silently share ports. Here the constructor only writes
    configuration files; every step that starts a process runs inside try/stop.
    """

    def __init__(
        self,
        users: dict[str, str | None] | Sequence[str] = ("alice",),
        *,
        service: str = "nfs",
        extra_services: Sequence[str] = (),
        realm_name: str = "KRBTEST.COM",
        port_base: int | None = None,
    ) -> None:
        wanted = dict(users) if isinstance(users, dict) else dict.fromkeys(users)
        if not wanted:
            raise RealmError("a realm needs at least one user")
        for name in wanted:
            if not name or "@" in name or "/" in name or any(c.isspace() for c in name):
                raise RealmError(f"bad user name {name!r}: use a plain name like 'alice'")
        self._wanted_users = wanted
        self._service = service
        self._extra_services = tuple(extra_services)
        self._realm_name = realm_name
        self._port_base = port_base
        self._k5: Any = None
        self._saved_env: dict[str, str | None] | None = None
        self.users: dict[str, RealmUser] = {}

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> ThrowawayRealm:
        """Create the database, start the KDC, create principals, keytab and ccaches."""
        if self._k5 is not None:
            raise RealmError("realm already started")
        last_exc: Exception | None = None
        for _ in range(3 if self._port_base is None else 1):
            base = self._port_base if self._port_base is not None else find_free_port_base()
            try:
                self._start_at(base)
                return self
            except Exception as exc:  # k5test raises bare Exception for daemon start failures
                last_exc = exc
                log.warning("realm start on port base %d failed: %s", base, exc)
        raise RealmError(f"could not start a KDC: {last_exc}") from last_exc

    def _start_at(self, base: int) -> None:
        # create_kdb=False: the constructor only writes config files, so nothing can leak from it
        # but the temporary directory, which we remove ourselves if it raises after mkdtemp.
        k5 = k5test.K5Realm(
            realm=self._realm_name,
            portbase=base,
            create_kdb=False,
            create_user=False,
            create_host=False,
            get_creds=False,
            start_kdc=False,
        )
        try:
            k5.create_kdb()
            k5.start_kdc()
            service_princ = f"{self._service}/{k5.hostname}@{k5.realm}"
            for svc in (self._service, *self._extra_services):
                princ = f"{svc}/{k5.hostname}@{k5.realm}"
                k5.addprinc(princ)
                k5.extract_keytab(princ, k5.keytab)
            users: dict[str, RealmUser] = {}
            for index, (name, password) in enumerate(self._wanted_users.items()):
                pw = password if password is not None else os.urandom(12).hex()
                principal = f"{name}@{k5.realm}"
                k5.addprinc(principal, pw)
                ccache = k5.ccache if index == 0 else os.path.join(k5.tmpdir, f"ccache.{name}")
                k5.kinit(principal, pw, flags=["-c", ccache], verbose=False)
                users[name] = RealmUser(name, principal, pw, ccache)
        except BaseException:
            with contextlib.suppress(Exception):
                k5.stop()
            if os.path.isdir(k5.tmpdir):
                shutil.rmtree(k5.tmpdir, ignore_errors=True)
            raise
        self._k5 = k5
        self.users = users
        self.service_principal = service_princ
        log.info("realm %s up: KDC on port %d, dir %s", k5.realm, base, k5.tmpdir)

    def stop(self) -> None:
        """Stop the KDC (by its own PID) and delete the realm directory. Idempotent."""
        self.deactivate()
        k5, self._k5 = self._k5, None
        if k5 is None:
            return
        try:
            k5.stop()
        finally:
            if os.path.isdir(k5.tmpdir):
                shutil.rmtree(k5.tmpdir, ignore_errors=True)

    def __enter__(self) -> ThrowawayRealm:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- what users of the realm need ---------------------------------------------------------------

    def _require(self) -> Any:
        if self._k5 is None:
            raise RealmError("realm is not running")
        return self._k5

    @property
    def running(self) -> bool:
        return self._k5 is not None

    @property
    def realm(self) -> str:
        return str(self._require().realm)

    @property
    def hostname(self) -> str:
        return str(self._require().hostname)

    @property
    def kdc_port(self) -> int:
        return int(self._require().portbase)

    @property
    def tmpdir(self) -> str:
        return str(self._require().tmpdir)

    @property
    def keytab(self) -> str:
        return str(self._require().keytab)

    @property
    def service_name(self) -> str:
        """The host-based service name to target, e.g. ``nfs@localhost`` (GSS_C_NT_HOSTBASED)."""
        return f"{self._service}@{self.hostname}"

    @property
    def default_user(self) -> RealmUser:
        return next(iter(self.users.values()))

    @property
    def env(self) -> dict[str, str]:
        """Environment variables (KRB5_CONFIG, KRB5CCNAME, KRB5_KTNAME, ...) for this realm."""
        return {str(k): str(v) for k, v in self._require().env.items()}

    def export_lines(self) -> list[str]:
        """``export NAME=value`` lines for a POSIX shell."""
        return [f"export {k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]

    def kinit(self, user: str) -> None:
        """(Re-)acquire a TGT for ``user`` into its ccache."""
        u = self.users[user]
        self._require().kinit(u.principal, u.password, flags=["-c", u.ccache], verbose=False)

    def activate(self) -> None:
        """Put :attr:`env` into ``os.environ`` (libkrb5 reads it on every call); undo on stop."""
        env = self.env
        if self._saved_env is None:
            self._saved_env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)

    def deactivate(self) -> None:
        """Restore the environment variables :meth:`activate` changed."""
        saved, self._saved_env = self._saved_env, None
        if saved is None:
            return
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def running_realm(
    users: dict[str, str | None] | Sequence[str] = ("alice", "bob"),
    *,
    service: str = "nfs",
    activate: bool = True,
) -> Iterator[ThrowawayRealm]:
    """A started (and by default activated) realm, stopped and removed on exit.

    This is the reusable fixture body: a pytest fixture is ``yield from``-free with
    ``with running_realm() as realm: yield realm``.
    """
    realm = ThrowawayRealm(users, service=service)
    realm.start()
    try:
        if activate:
            realm.activate()
        yield realm
    finally:
        realm.stop()


_shared_lock = threading.Lock()
_shared_realm: ThrowawayRealm | None = None
_shared_refs = 0

#: Users of the shared realm (tests and benchmarks rely on these names).
SHARED_USERS = ("alice", "bob")


@contextlib.contextmanager
def shared_realm() -> Iterator[ThrowawayRealm]:
    """One activated realm per process, reference counted.

    Several test directories (each with its own session fixture) then use the *same* KDC, which
    matters because libkrb5 reads ``KRB5_CONFIG`` from the process environment: two activated realms
    at once would point some callers at the wrong KDC.
    """
    global _shared_realm, _shared_refs
    with _shared_lock:
        if _shared_realm is None:
            realm = ThrowawayRealm(SHARED_USERS)
            realm.start()
            realm.activate()
            _shared_realm = realm
        _shared_refs += 1
        realm = _shared_realm
    try:
        yield realm
    finally:
        with _shared_lock:
            _shared_refs -= 1
            if _shared_refs == 0 and _shared_realm is not None:
                _shared_realm.stop()
                _shared_realm = None


def realm_fixture(name: str = "realm") -> Any:
    """A session-scoped pytest fixture yielding the process-wide :func:`shared_realm` (users alice and bob,
    service ``nfs/<host>``, environment activated). In a test module or conftest::

        from rpclatch.gss.realm import realm_fixture
        realm = realm_fixture()
    """
    import pytest  # only test code calls this; the package does not depend on pytest

    def _realm() -> Iterator[ThrowawayRealm]:
        with shared_realm() as realm:
            yield realm

    return pytest.fixture(_realm, scope="session", name=name)
