"""IPsec model and connection latching (RFC 4301, RFC 5386, RFC 5660), sans-IO.

Modules (one job each):

- :mod:`~rpclatch.ipsec.model` flow keys, selectors, protection parameters, identities;
- :mod:`~rpclatch.ipsec.spd`, :mod:`~rpclatch.ipsec.pad`, :mod:`~rpclatch.ipsec.sad` the three
  RFC 4301 databases (+ BTNS_OK, BTNS/NULL PAD entries, the BYPASS-OR-PROTECT template);
- :mod:`~rpclatch.ipsec.latch` the RFC 5660 §2.3 Latch Database and state machine;
- :mod:`~rpclatch.ipsec.keymgr` the key manager (static keying, ACQUIRE, restart, DPD);
- :mod:`~rpclatch.ipsec.ike` a sans-IO IKEv2 core (RFC 7296; raw public keys, RFC 7670, and NULL
  authentication, RFC 7619);
- :mod:`~rpclatch.ipsec.backend` the datapath interface and its in-process implementation
  (:mod:`~rpclatch.ipsec.xfrm` is the Linux kernel one);
- :mod:`~rpclatch.ipsec.pad_latching` approach 2 (template / cloned PAD entries, TIME_WAIT hold);
- :mod:`~rpclatch.ipsec.ulp` approach 1 (UlpLatch in the TCB, pTokens);
- :mod:`~rpclatch.ipsec.ulp_watch` approach 1's TCB latches watched for RFC 5660 §2 conflicts;
- :mod:`~rpclatch.ipsec.engine` the per-packet facade :class:`IPsecEngine`;
- :mod:`~rpclatch.ipsec.decisions` verdicts, packet tags, named drop reasons;
- :mod:`~rpclatch.ipsec.channel_binding` the project's NON-STANDARD IPsec channel binding and
  LatchChannel (the rpclatch.channel.Channel a latched connection offers RPCSEC_GSS);
- :mod:`~rpclatch.ipsec.examples` one running example (NFSv4 on TCP 2049, BTNS peers) as
  ready-made objects.
"""

from rpclatch.ipsec.decisions import CLEARTEXT, DropReason, InboundDecision, OutboundDecision, PacketTag
from rpclatch.ipsec.engine import Approach, EngineConfig, FlowChoice, IPsecEngine, ProtectionOutcome
from rpclatch.ipsec.latch import (
    Alert,
    AlertReason,
    BrokenDisposition,
    LatchDatabase,
    LatchInfo,
    LatchParams,
    LatchRequest,
    LatchState,
)
from rpclatch.ipsec.model import FiveTuple, Selector, ThreeTuple
from rpclatch.ipsec.ulp import PToken, UlpBreak, UlpBreakReason, UlpLatch

__all__ = [
    "CLEARTEXT",
    "Alert",
    "AlertReason",
    "Approach",
    "BrokenDisposition",
    "DropReason",
    "EngineConfig",
    "FiveTuple",
    "FlowChoice",
    "IPsecEngine",
    "InboundDecision",
    "LatchDatabase",
    "LatchInfo",
    "LatchParams",
    "LatchRequest",
    "LatchState",
    "OutboundDecision",
    "PToken",
    "PacketTag",
    "ProtectionOutcome",
    "Selector",
    "ThreeTuple",
    "UlpBreak",
    "UlpBreakReason",
    "UlpLatch",
]
