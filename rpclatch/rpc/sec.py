"""Security flavor names for the command line (``--sec none|sys|krb5|krb5i|krb5p``).

The CLI and tools map a ``--sec`` string to auth objects through this one table, so a new flavor
(e.g. RPCSEC_GSS krb5/krb5i/krb5p, RFC 2203 / RFC 5403) only adds an entry:

``register_sec(SecFlavor(name, description, client=..., server=...))`` where ``client(options) ->
ClientAuth`` and ``server(options) -> list[ServerAuth]``; ``options`` is a free ``dict`` of
command-line context (e.g. ``host``, ``service``, ``prog``, ``vers``, ``keytab``, ``realm``).

Lookup: ``sec_names() -> list[str]``, ``client_auth_for_sec(name, **options) -> ClientAuth``,
``server_auths_for_sec(names, **options) -> list[ServerAuth]`` (one list for all names, duplicates
by flavor number removed). Unknown names raise :class:`UnknownSec` (a ``ValueError``).

Extension modules listed in ``SEC_EXTENSION_MODULES`` are imported on first lookup if they exist
and may call ``register_sec`` at import time (the GSS layer lives above rpc/, so rpc/ does not
import it directly).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rpclatch.rpc.auth import ClientAuth, ServerAuth
from rpclatch.rpc.auth_sys import AuthNoneClient, AuthNoneServer, AuthSysClient, AuthSysServer

#: Modules imported (if present) before the first lookup; they register more flavors.
SEC_EXTENSION_MODULES: tuple[str, ...] = ("rpclatch.gss.sec",)


class UnknownSec(ValueError):
    """No security flavor of that name is registered."""


@dataclass(frozen=True, slots=True)
class SecFlavor:
    """One ``--sec`` choice: how to build its client auth and its server auth objects."""

    name: str
    description: str
    client: Callable[[dict[str, Any]], ClientAuth]
    server: Callable[[dict[str, Any]], list[ServerAuth]]


_REGISTRY: dict[str, SecFlavor] = {}
_extensions_loaded = False


def register_sec(flavor: SecFlavor) -> None:
    """Add (or replace) a ``--sec`` choice."""
    _REGISTRY[flavor.name] = flavor


register_sec(
    SecFlavor("none", "AUTH_NONE (RFC 5531 §10)", lambda o: AuthNoneClient(), lambda o: [AuthNoneServer()])
)
register_sec(
    SecFlavor(
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


def get_sec(name: str) -> SecFlavor:
    _load_extensions()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownSec(f"unknown security flavor {name!r} (choose from {', '.join(_REGISTRY)})") from None


def client_auth_for_sec(name: str, **options: Any) -> ClientAuth:
    """The client auth object for ``--sec name``."""
    return get_sec(name).client(options)


def server_auths_for_sec(names: Iterable[str], **options: Any) -> list[ServerAuth]:
    """Server auth objects accepting every flavor in ``names`` (first one per flavor number wins)."""
    out: list[ServerAuth] = []
    seen: set[int] = set()
    for name in names:
        for auth in get_sec(name).server(options):
            if int(auth.flavor) not in seen:
                seen.add(int(auth.flavor))
                out.append(auth)
    return out
