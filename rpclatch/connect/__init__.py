"""BYPASS-OR-PROTECT connect: try IPsec, latch, bind RPCSEC_GSS to the latch, else fall back.

The policy is the table in :mod:`rpclatch.connect.policy`; the client flow that runs it is
:class:`rpclatch.connect.client.ProtectedConnection`; what it needs from the world it runs in is
the protocols of :mod:`rpclatch.connect.world` (on the simulated network:
:mod:`rpclatch.connect.sim`; on real sockets and kernel ESP through the key-manager daemon:
:mod:`rpclatch.connect.kernel`; client and server side in both); RPCSEC_GSS comes from
:mod:`rpclatch.connect.gss`; :mod:`rpclatch.connect.nfs` answers the NFSv4 client's connection hook.
"""

from rpclatch.connect.client import ProtectedConnection, classify_latch
from rpclatch.connect.policy import (
    POLICY,
    BindOutcome,
    BreakDisposition,
    ConnectPolicy,
    Decision,
    FallbackService,
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
    "LatchOutcome",
    "LatchView",
    "ProtectedConnection",
    "ProtectionFailed",
    "SecurityRecord",
    "classify_latch",
    "decide",
]
