"""``--sec krb5 | krb5i | krb5p``: RPCSEC_GSS entries for :mod:`rpclatch.rpc.sec`.

Imported by :mod:`rpclatch.rpc.sec` on first lookup (``SEC_EXTENSION_MODULES``). The names follow
the NFS convention (RFC 7530 §3.2.1): krb5 = Kerberos V5 with rpc_gss_svc_none, krb5i = integrity,
krb5p = privacy. The client auth returned still needs ``await auth.establish(rpc_call)`` (see
:func:`rpclatch.gss.client.rpc_call_via`) before its first call.

Options understood (all optional): ``host`` (the server host; the target is ``service@host``),
``service`` (host-based service name, default ``nfs``), ``target`` (full ``service@host``
override), ``ccache`` (initiator credential cache), ``keytab`` (acceptor keytab),
``acceptor`` (the acceptor's ``service@host``, default ``nfs@<this host's FQDN>``),
``seq_window``, ``max_requests_per_context`` (RFC 5403 §9 (a) cap, None = none), ``versions``
(``prefer-v2`` | ``require-v2`` | ``v1-only``), ``min_service`` (server: the weakest service
accepted, a ``Service``; default the one named: ``--sec krb5i`` serves krb5i, krb5p and
channel_prot, not krb5; ``--sec krb5p`` krb5p and channel_prot on an encrypting channel).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from rpclatch.gss.client import GssClientAuth, VersionPolicy
from rpclatch.gss.errors import GssError
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.server import DEFAULT_SEQ_WINDOW, GssServerAuth
from rpclatch.gss.wire import SEC_SERVICES, Service
from rpclatch.rpc.auth import ClientAuth, ServerAuth
from rpclatch.rpc.sec import SecFlavor, register_sec


def _client(service: Service, options: dict[str, Any]) -> ClientAuth:
    target = options.get("target")
    if target is None:
        host = str(options.get("host") or "localhost")
        if host in ("127.0.0.1", "::1"):
            host = "localhost"  # the loopback's principal name (nfs/localhost)
        target = f"{options.get('service', 'nfs')}@{host}"
    provider = GssapiProvider(ccache=options.get("ccache"))
    return GssClientAuth(
        provider, str(target), service=service, versions=VersionPolicy(options.get("versions", "prefer-v2"))
    )


def _server(service: Service, options: dict[str, Any]) -> list[ServerAuth]:
    """The server flavor for ``--sec krb5|krb5i|krb5p``: it accepts that service or a stronger one
    (``GssServerAuth(min_service=...)``; weaker DATA calls get AUTH_TOOWEAK, RFC 5531 §9). The
    ``min_service`` option (a :class:`Service`) overrides the floor. With several ``--sec krb5*``
    names, :func:`rpclatch.rpc.sec.server_auths_for_sec` keeps the first one's server."""
    acceptor = options.get("acceptor") or f"{options.get('service', 'nfs')}@{socket.getfqdn()}"
    provider = GssapiProvider(str(acceptor), keytab=options.get("keytab"))
    try:
        provider.check_acceptor()
    except GssError as exc:
        from rpclatch.cli import UserError

        keytab = options.get("keytab") or os.environ.get("KRB5_KTNAME", "the default keytab")
        raise UserError(
            f"cannot accept RPCSEC_GSS as {acceptor}: no usable key in {keytab} ({exc}); "
            "run `rpclatch realm up` and export its lines, or set KRB5_KTNAME"
        ) from exc
    floor = Service(options.get("min_service", service))
    return [
        GssServerAuth(
            provider,
            seq_window=int(options.get("seq_window", DEFAULT_SEQ_WINDOW)),
            min_service=floor,
            max_requests_per_context=options.get("max_requests_per_context"),
        )
    ]


def _register() -> None:
    for service in SEC_SERVICES:
        register_sec(
            SecFlavor(
                service.sec_name,
                f"RPCSEC_GSS {service.description} ({service.rfc_name})",
                client=lambda o, s=service: _client(s, o),  # type: ignore[misc]
                server=lambda o, s=service: _server(s, o),  # type: ignore[misc]
            )
        )


_register()
