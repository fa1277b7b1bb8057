"""The key-manager daemon's control plane: the RFC 5660 §2.2 abstract connection-latching API
offered to local processes over an AF_UNIX stream socket (docs/keyd.md).

Modules: ``protocol`` (the sans-IO codec: framing, requests, answers, alerts, error codes),
``access`` (who may talk to the daemon: SO_PEERCRED uid check), ``core`` (the sans-IO request
handler: parsed requests and service events in, answers and alerts out, per-client limits and
timeouts), ``server`` (the asyncio AF_UNIX shell and a small client), ``service`` (the latch
service over the IKE UDP endpoint), ``daemon`` (:class:`~rpclatch.ipsec.keyd.daemon.KeydDaemon`:
all of it started in-process).
"""

from rpclatch.ipsec.keyd.access import peer_allowed
from rpclatch.ipsec.keyd.core import (
    ClientOutput,
    KeydCore,
    KeydLimits,
    LatchInfo,
    LatchService,
    ServiceRefusal,
)
from rpclatch.ipsec.keyd.protocol import (
    Alert,
    AlertKind,
    Answer,
    ControlDecodeError,
    ErrorCode,
    FrameDecoder,
    Op,
    Request,
    decode_request,
    encode_frame,
)

__all__ = [
    "Alert",
    "AlertKind",
    "Answer",
    "ClientOutput",
    "ControlDecodeError",
    "ErrorCode",
    "FrameDecoder",
    "KeydCore",
    "KeydLimits",
    "LatchInfo",
    "LatchService",
    "Op",
    "Request",
    "ServiceRefusal",
    "decode_request",
    "encode_frame",
    "peer_allowed",
]
