"""BYPASS-OR-PROTECT connect: try IPsec, latch, bind RPCSEC_GSS to the latch, else fall back.

The policy is the table in :mod:`rpclatch.connect.policy`; the client flow that runs it is
:class:`rpclatch.connect.client.ProtectedConnection`; the world it runs in is behind the protocols
of :mod:`rpclatch.connect.world`.
"""

from rpclatch.connect.client import ProtectedConnection, classify_latch
from rpclatch.connect.policy import (
    POLICY,
    BindOutcome,
    BreakDisposition,
    ConnectPolicy,
    Decision,
    GssService,
    LatchOutcome,
    Protection,
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
    "POLICY", "BindOutcome", "BindingRequired", "BreakDisposition", "ConnectError", "ConnectPolicy",
    "ConnectionReset", "Decision", "GssService", "LatchOutcome", "LatchView", "ProtectedConnection",
    "Protection", "ProtectionFailed", "SecurityRecord", "classify_latch", "decide",
]
