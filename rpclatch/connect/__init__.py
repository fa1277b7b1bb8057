"""BYPASS-OR-PROTECT connect: try IPsec, latch, bind RPCSEC_GSS to the latch, else fall back.

The policy is the table in :mod:`rpclatch.connect.policy`; the client flow that runs it is
:class:`rpclatch.connect.client.ProtectedConnection`; the world it runs in is behind the protocols
of :mod:`rpclatch.connect.world` (the simulated network: :mod:`rpclatch.connect.sim`); RPCSEC_GSS
comes from :mod:`rpclatch.connect.gss`. ::

    pc = ProtectedConnection(SimClientWorld(net, client_host, "192.0.2.20"),
                             RpcsecGssConnector(provider, "nfs@server", PROG, VERS),
                             ConnectPolicy(port=2049, fallback=FallbackService.PRIVACY, ike_timeout=5))
    record = pc.connect()          # or: await pc.aconnect() from asyncio
    record.latched, record.peer, record.bound, record.gss_service, record.reason
    results = pc.call(PROG, VERS, proc, args)

Server side: :class:`rpclatch.connect.sim.SimServerEndpoint` (LISTENER latch, FIND_LATCH per
accepted connection, the latch's channel in ``ConnectionInfo.channel`` for RPCSEC_GSS).
"""

from rpclatch.connect.client import ProtectedConnection, classify_latch
from rpclatch.connect.policy import (
    POLICY,
    BindOutcome,
    BreakDisposition,
    ConnectPolicy,
    Decision,
    FallbackService,
    GssService,
    LatchOutcome,
    decide,
)
from rpclatch.connect.record import SecurityRecord
from rpclatch.connect.world import (
    BindingRequired,
    ConnectError,
    ConnectionReset,
    LatchView,
    ProtectionFailed,
)

__all__ = [
    "POLICY",
    "BindOutcome",
    "BindingRequired",
    "BreakDisposition",
    "ConnectError",
    "ConnectPolicy",
    "ConnectionReset",
    "Decision",
    "FallbackService",
    "GssService",
    "LatchOutcome",
    "LatchView",
    "ProtectedConnection",
    "ProtectionFailed",
    "SecurityRecord",
    "classify_latch",
    "decide",
]
