"""The ``--sec`` choices of the command line (``none``, ``sys``, ``krb5``, ``krb5i``, ``krb5p``).

A ``--sec`` string becomes auth objects through one registry, so a new choice (e.g. the
RPCSEC_GSS ones, RFC 2203 / RFC 5403) only adds an entry. A choice is a command-line name, not an
RPC auth flavor number: krb5, krb5i and krb5p are three choices of the one RPCSEC_GSS flavor.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rpclatch.rpc.auth import ClientAuth, ServerAuth
from rpclatch.rpc.auth_sys import AuthNoneClient, AuthNoneServer, AuthSysClient, AuthSysServer

#: Modules imported (if present) before the first lookup; they may call :func:`register_sec` at
#: import time. The GSS layer sits above rpc/, so rpc/ names it here instead of importing it.
SEC_EXTENSION_MODULES: tuple[str, ...] = ("rpclatch.gss.sec",)


class UnknownSec(ValueError):
    """No ``--sec`` choice of that name is registered."""


@dataclass(frozen=True, slots=True)
class SecChoice:
    """One ``--sec`` choice: how to build its client auth and its server auth objects.

    ``client(options)`` and ``server(options)`` get a free ``dict`` of command-line context
    (e.g. ``host``, ``service``, ``prog``, ``vers``, ``keytab``, ``realm``); each choice reads the
    keys it understands.
    """

    name: str
    description: str
    client: Callable[[dict[str, Any]], ClientAuth]
    server: Callable[[dict[str, Any]], list[ServerAuth]]


_REGISTRY: dict[str, SecChoice] = {}
_extensions_loaded = False


def register_sec(choice: SecChoice) -> None:
    """Add (or replace) a ``--sec`` choice."""
    _REGISTRY[choice.name] = choice


register_sec(
    SecChoice("none", "AUTH_NONE (RFC 5531 §10)", lambda o: AuthNoneClient(), lambda o: [AuthNoneServer()])
)
register_sec(
    SecChoice(
        "sys",
        "AUTH_SYS, uid/gid of this process (RFC 5531 appendix A)",
        lambda o: AuthSysClient.for_current_process(),
        lambda o: [AuthSysServer()],
    )
)


def _load_extensions() -> None:
    global _extensions_loaded
    if _extensions_loaded:
        return
    _extensions_loaded = True
    for name in SEC_EXTENSION_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


def sec_names() -> list[str]:
    """Registered ``--sec`` names, in registration order."""
    _load_extensions()
    return list(_REGISTRY)


def get_sec(name: str) -> SecChoice:
    """The choice registered as ``name``; :class:`UnknownSec` if there is none."""
    _load_extensions()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownSec(f"unknown security flavor {name!r} (choose from {', '.join(_REGISTRY)})") from None


def client_auth_for_sec(name: str, **options: Any) -> ClientAuth:
    """The client auth object for ``--sec name``."""
    return get_sec(name).client(options)


def server_auths_for_sec(names: Iterable[str], **options: Any) -> list[ServerAuth]:
    """Server auth objects accepting every choice in ``names``, one per RPC auth flavor number
    (the first name of a flavor wins: ``krb5i`` then ``krb5p`` serve as ``krb5i``)."""
    out: list[ServerAuth] = []
    seen: set[int] = set()
    for name in names:
        for auth in get_sec(name).server(options):
            if int(auth.flavor) not in seen:
                seen.add(int(auth.flavor))
                out.append(auth)
    return out
