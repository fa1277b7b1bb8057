"""RPCSEC_GSS layer exceptions, split Local / Remote as in the rest of rpclatch.

:class:`GssError` carries a GSS-API major status (RFC 2743 §1.2.1, RFC 2203 Appendix A) so that a
server can put it into ``rpc_gss_init_res.gss_major`` and a client can report what the peer said.
"""

from __future__ import annotations

from enum import Enum, IntEnum


class GssMajor(IntEnum):
    """GSS-API major status codes (RFC 2203 Appendix A, RFC 2744 §3.9.1)."""

    GSS_S_COMPLETE = 0x00000000
    GSS_S_CONTINUE_NEEDED = 0x00000001
    GSS_S_DUPLICATE_TOKEN = 0x00000002
    GSS_S_OLD_TOKEN = 0x00000004
    GSS_S_UNSEQ_TOKEN = 0x00000008
    GSS_S_GAP_TOKEN = 0x00000010
    GSS_S_BAD_MECH = 0x00010000
    GSS_S_BAD_NAME = 0x00020000
    GSS_S_BAD_NAMETYPE = 0x00030000
    GSS_S_BAD_BINDINGS = 0x00040000
    GSS_S_BAD_STATUS = 0x00050000
    GSS_S_BAD_MIC = 0x00060000
    GSS_S_NO_CRED = 0x00070000
    GSS_S_NO_CONTEXT = 0x00080000
    GSS_S_DEFECTIVE_TOKEN = 0x00090000
    GSS_S_DEFECTIVE_CREDENTIAL = 0x000A0000
    GSS_S_CREDENTIALS_EXPIRED = 0x000B0000
    GSS_S_CONTEXT_EXPIRED = 0x000C0000
    GSS_S_FAILURE = 0x000D0000
    GSS_S_BAD_QOP = 0x000E0000
    GSS_S_UNAUTHORIZED = 0x000F0000
    GSS_S_UNAVAILABLE = 0x00100000
    GSS_S_DUPLICATE_ELEMENT = 0x00110000
    GSS_S_NAME_NOT_MN = 0x00120000


def major_name(major: int) -> str:
    """Readable name of a major status (routine error part), e.g. ``GSS_S_BAD_MIC``."""
    routine = major & 0x00FF0000
    try:
        return GssMajor(routine if routine else major).name
    except ValueError:
        return f"0x{major:08x}"


class RpcGssError(Exception):
    """Base of every RPCSEC_GSS-layer error."""


class RpcGssLocalError(RpcGssError):
    """Something failed on our side (a GSS call, a policy decision, bad use of the API)."""


class GssError(RpcGssLocalError):
    """A GSS-API call failed locally; ``major``/``minor`` are its status codes."""

    def __init__(self, major: int, minor: int = 0, message: str = "") -> None:
        self.major = major
        self.minor = minor
        super().__init__(f"{major_name(major)}" + (f": {message}" if message else ""))


class RpcGssRemoteError(RpcGssError):
    """The peer said no (its status is on the exception)."""


class ContextInitFailed(RpcGssRemoteError):
    """The server answered RPCSEC_GSS_INIT with a failing ``gss_major`` (RFC 2203 §5.2.3.1)."""

    def __init__(self, major: int, minor: int) -> None:
        self.major = major
        self.minor = minor
        super().__init__(f"server failed context creation: {major_name(major)} (minor {minor})")


class VersionNotSupported(RpcGssRemoteError):
    """The server refused RPCSEC_GSS version 2 and local policy forbids falling back to v1."""


class BindFailureReason(Enum):
    """Why RPCSEC_GSS_BIND_CHANNEL (RFC 5403 §3.3) did not bind, as the client saw it.

    The GSS layer only states what happened; whether that is a genuine, authenticated "the server
    cannot bind" or a sign of tampering is decided in one place, the connect policy's table
    (``rpclatch.connect.gss.BIND_OUTCOMES``). What is not covered by a MIC -- the request's
    ``rbcva_chan_bind_prefix`` and hash OID, any MSG_DENIED -- can be rewritten or forged by whoever
    relays the connection (RFC 5403 §2, §9), so answers that only make sense if something was
    rewritten have reasons of their own.
    """

    #: the server's MIC check of our request failed (its RPCSEC_GSS_CREDPROBLEM), or the OK reply's
    #: rbcvr_mic does not verify over our channel-bindings hash: the two ends see different channels
    MIC_MISMATCH = "mic-mismatch"
    #: a verified PREF_NOTSUPP listing the very prefix we sent, or HASH_NOTSUPP listing the very OID
    #: we sent: the server got another prefix/OID than ours (the request fields were rewritten)
    TAMPERED_NEGOTIATION = "tampered-negotiation"
    #: verified NOTSUPP answers that lead back to a (prefix, hash) already refused: contradictory
    NEGOTIATION_LOOP = "negotiation-loop"
    #: a reply we cannot authenticate: no rgss2_bind_chan_verf_res, a NOTSUPP whose rbcvr_mic does
    #: not verify, a HASH_NOTSUPP whose first OID we do not know (so its MIC cannot be checked) or
    #: that lists none, an accepted error without MIC(seq_num)
    UNVERIFIABLE_REPLY = "unverifiable-reply"
    #: MSG_DENIED other than CREDPROBLEM, or an authenticated accepted error: a v2 target MUST
    #: support BIND_CHANNEL (RFC 5403 §3.3)
    SERVER_REFUSED = "server-refused"
    #: a verified PREF_NOTSUPP with an empty list: the server has no channel on this connection
    SERVER_HAS_NO_CHANNEL = "server-has-no-channel"
    #: a verified PREF_NOTSUPP none of whose prefixes we may use
    NO_COMMON_PREFIX = "no-common-prefix"
    #: a verified HASH_NOTSUPP none of whose algorithms we may use
    NO_COMMON_HASH = "no-common-hash"
    #: local: our channel offers none of the prefixes we were asked to use
    NO_REQUESTED_PREFIX = "no-requested-prefix"
    #: local: our channel is not up
    CHANNEL_DOWN = "channel-down"
    #: the context is v1 because the local version policy chose v1 (nothing was negotiated)
    V1_ONLY = "v1-only"
    #: the context is v1 because the v2 INIT was refused with a MSG_DENIED (AUTH_REJECTEDCRED /
    #: AUTH_BADCRED), which nothing authenticates (RFC 5403 §4, §9): a v1-only server, or a forged
    #: refusal, on a channel that offers binding data
    V1_FALLBACK_ON_BINDABLE_CHANNEL = "v1-fallback-on-bindable-channel"
    #: local: the context was replaced (refreshed) while the binding was in flight
    CONTEXT_REPLACED = "context-replaced"


class ChannelBindingFailed(RpcGssRemoteError):
    """RPCSEC_GSS_BIND_CHANNEL did not succeed (RFC 5403 §3.3); ``reason`` says why (typed: never
    match on the message, which is for people). The context stays usable with integrity/privacy
    (after a MIC mismatch detected on our side it is refreshed)."""

    def __init__(self, reason: BindFailureReason, message: str) -> None:
        self.reason = reason
        super().__init__(f"{message} [{reason.value}]")
