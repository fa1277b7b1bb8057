"""BYPASS-OR-PROTECT for the NFSv4 client's connection hook (``rpclatch nfs ... --sec auto``).

:data:`rpclatch.nfs4.security.ConnectionSecurityHook` runs once per NFS connection, before any NFS
traffic. :func:`connection_security` answers it from the policy table (:mod:`rpclatch.connect.policy`)
for ``--sec auto``; explicit ``--sec`` values are the user's choice and pass through unchanged.

On real sockets the first step of the policy -- a latched IPsec connection to port 2049 -- needs a
kernel IPsec backend (Linux XFRM with ESP) driven by rpclatch, which is not part of this release
(this host's kernel has XFRM but no ESP transform; see /work/shared/README.md). So the protection
request fails for the stated reason and the table's "not latched" row applies: RPCSEC_GSS privacy
or integrity, as configured, preferred in that order; AUTH_SYS and krb5 without protection are not
offered automatically (the NFS client explains what the server wants if it insists on them). The
order is the policy's, not the server's: ``prefer_allowed_order`` makes the client take the first
of ``allowed`` that SECINFO offers (a server listing krb5i before krb5p still gets krb5p when no
channel is bound and privacy is configured).
"""

from __future__ import annotations

from rpclatch.connect.policy import BindOutcome, ConnectPolicy, GssService, LatchOutcome, decide
from rpclatch.nfs4.security import ConnectionSecurity, SecFlavor, default_connection_security

#: why the protection request fails on real sockets in this release
NO_KERNEL_BACKEND = ("no kernel IPsec backend is wired to rpclatch on this host (the Linux XFRM "
                     "backend comes later); IKE was not attempted")


async def connection_security(host: str, port: int, sec: str,
                              policy: ConnectPolicy | None = None) -> ConnectionSecurity:
    """The connection hook: for ``sec == "auto"`` apply the BYPASS-OR-PROTECT table, else pass."""
    if sec != "auto":
        return await default_connection_security(host, port, sec)
    pol = policy or ConnectPolicy(port=port)
    latch, bind = LatchOutcome.NOT_LATCHED, BindOutcome.NOT_ATTEMPTED
    decision = decide(latch, bind)
    service = decision.service_for(pol.protection)
    allowed = ((SecFlavor.KRB5P, SecFlavor.KRB5I) if service is GssService.PRIVACY
               else (SecFlavor.KRB5I, SecFlavor.KRB5P))
    record = {
        "peer": f"{host}:{port}", "latched": False, "latch_outcome": latch.name,
        "bind_outcome": bind.name, "bound": False, "gss_service": service.value,
        "protection_error": NO_KERNEL_BACKEND if pol.try_ipsec else None,
        "reason": decision.reason,
    }
    return ConnectionSecurity(allowed, record=record, prefer_allowed_order=True)
