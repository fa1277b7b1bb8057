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


class BindFailure(Enum):
    """Why RPCSEC_GSS_BIND_CHANNEL did not bind."""

    MISMATCH = "mismatch"  # a MIC over the channel bindings failed on one side: different channels
    UNSUPPORTED = "unsupported"  # v1 handle, no common prefix or hash, or no channel at the server
    CHANNEL_DOWN = "channel-down"  # our channel is not up
    REFUSED = "refused"  # the server refused the call for another reason (its auth_stat)


class ChannelBindingFailed(RpcGssRemoteError):
    """RPCSEC_GSS_BIND_CHANNEL did not succeed (RFC 5403 §3.3); ``kind`` says why. The context
    stays usable with integrity/privacy (after a MISMATCH detected on our side it is refreshed)."""

    def __init__(self, message: str, kind: BindFailure = BindFailure.MISMATCH) -> None:
        self.kind = kind
        super().__init__(message)
