"""BYPASS-OR-PROTECT for the NFSv4 client's connection hook (``rpclatch nfs ... --sec auto``):
:data:`rpclatch.nfs4.security.ConnectionSecurityHook` runs once per NFS connection, before any NFS
traffic, and :func:`connection_security` answers it from the policy table
(:mod:`rpclatch.connect.policy`).
"""

from __future__ import annotations

from rpclatch.connect.policy import BindOutcome, ConnectPolicy, LatchOutcome, decide
from rpclatch.gss.wire import Service
from rpclatch.nfs4.security import ConnectionSecurity, SecFlavor, default_connection_security

#: Why the protection request fails on real sockets: the protection error the hook records.
NO_KERNEL_BACKEND = (
    "no IKE key manager for real sockets in rpclatch (the Linux XFRM backend "
    "exists, but nothing negotiates SAs for it); IKE was not attempted, not latched"
)


async def connection_security(
    host: str, port: int, sec: str, policy: ConnectPolicy | None = None
) -> ConnectionSecurity:
    """The connection hook: for ``sec == "auto"`` apply the BYPASS-OR-PROTECT table; explicit
    ``--sec`` values are the user's choice and pass through unchanged.

    On real sockets the hook never latches. The policy's first step, a latched IPsec connection
    to the NFS port (RFC 5660), needs a kernel datapath and a key manager. The datapath exists
    (:class:`rpclatch.ipsec.xfrm.backend.XfrmBackend` puts the engine's policies into Linux
    XFRM); what is missing is a key manager for real sockets, an IKEv2 daemon (or a binding to
    one) that answers the kernel's ACQUIRE, authenticates the peer against the PAD and installs
    the SA pair. So IKE is not attempted, :data:`NO_KERNEL_BACKEND` is recorded as the
    protection error, and the table's "not latched" row applies: RPCSEC_GSS privacy or integrity
    (krb5p, then krb5i, or the reverse when the policy asks for integrity only) without channel
    binding. AUTH_SYS and krb5 without protection are not offered automatically (the NFS client
    explains what the server wants if it insists on them). The order is the policy's, not the
    server's: ``prefer_allowed_order`` makes the client take the first of ``allowed`` that SECINFO
    offers, so a server listing krb5i before krb5p still gets krb5p when privacy is configured."""
    if sec != "auto":
        return await default_connection_security(host, port, sec)
    pol = policy or ConnectPolicy(port=port)
    latch, bind = LatchOutcome.NOT_LATCHED, BindOutcome.NOT_ATTEMPTED
    decision = decide(latch, bind)
    service = decision.service_for(pol.fallback)
    allowed = (
        (SecFlavor.KRB5P, SecFlavor.KRB5I)
        if service is Service.PRIVACY
        else (SecFlavor.KRB5I, SecFlavor.KRB5P)
    )
    record = {
        "peer": f"{host}:{port}",
        "latched": False,
        "latch_outcome": latch.name,
        "bind_outcome": bind.name,
        "bound": False,
        "gss_service": service.sec_name,
        "protection_error": NO_KERNEL_BACKEND if pol.try_ipsec else None,
        "reason": decision.reason,
    }
    return ConnectionSecurity(allowed, record=record, prefer_allowed_order=True)
