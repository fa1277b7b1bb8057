"""``--sec krb5 | krb5i | krb5p``: the RPCSEC_GSS choices of :mod:`rpclatch.rpc.sec`.

:mod:`rpclatch.rpc.sec` imports this module on first lookup (``SEC_EXTENSION_MODULES``): rpc/
sits below gss/ and cannot import it. The names follow the NFS convention (RFC 7530 §3.2.1):
krb5 = Kerberos V5 with rpc_gss_svc_none, krb5i = integrity, krb5p = privacy.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from rpclatch.errors import UserError
from rpclatch.gss.client import GssClientAuth, VersionPolicy
from rpclatch.gss.errors import GssError
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.server import DEFAULT_SEQ_WINDOW, GssServerAuth
from rpclatch.gss.wire import SEC_SERVICES, Service
from rpclatch.rpc.auth import ClientAuth, ServerAuth
from rpclatch.rpc.sec import SecChoice, register_sec


def _client(service: Service, options: dict[str, Any]) -> ClientAuth:
    """The client auth for ``--sec krb5|krb5i|krb5p``; it still needs ``await
    auth.establish(rpc_call)`` (see :func:`rpclatch.gss.client.rpc_call_via`) before its first call.

    Options (all optional): ``host`` (the server; the target is ``service@host``), ``service``
    (host-based service name, default ``nfs``), ``target`` (a full ``service@host``, overriding
    both), ``ccache`` (initiator credential cache), ``versions`` (``prefer-v2`` | ``require-v2`` |
    ``v1-only``).
    """
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
    """The server auth for ``--sec krb5|krb5i|krb5p``: it accepts that service or a stronger one
    (``GssServerAuth(min_service=...)``; weaker DATA calls get AUTH_TOOWEAK, RFC 5531 §9). The
    ``min_service`` option (a :class:`Service`) overrides the floor. With several ``--sec krb5*``
    names, :func:`rpclatch.rpc.sec.server_auths_for_sec` keeps the first one's server.

    Other options (all optional): ``acceptor`` (the ``service@host`` accepted as, default
    ``nfs@<this host's FQDN>``), ``service``, ``keytab`` (acceptor keytab), ``seq_window``,
    ``max_requests_per_context`` (the RFC 5403 §9 (a) cap; None = none)."""
    acceptor = options.get("acceptor") or f"{options.get('service', 'nfs')}@{socket.getfqdn()}"
    provider = GssapiProvider(str(acceptor), keytab=options.get("keytab"))
    try:
        provider.check_acceptor()
    except GssError as exc:
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
            SecChoice(
                service.sec_name,
                f"RPCSEC_GSS {service.description} ({service.rfc_name})",
                client=lambda o, s=service: _client(s, o),  # type: ignore[misc]
                server=lambda o, s=service: _server(s, o),  # type: ignore[misc]
            )
        )


_register()
