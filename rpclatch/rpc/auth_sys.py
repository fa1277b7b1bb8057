"""AUTH_NONE and AUTH_SYS flavors (RFC 5531 §10 and appendix A), client and server side.

``AuthSysParms`` is ``authsys_parms`` (RFC 5531 appendix A)::

    struct authsys_parms { unsigned int stamp; string machinename<255>;
                           unsigned int uid; unsigned int gid; unsigned int gids<16>; };

Client flavors: :class:`AuthNoneClient`, :class:`AuthSysClient` (``AuthSysClient.for_current_process()``
fills uid/gid/groups/hostname from this process). Server flavors: :class:`AuthNoneServer` (principal
None) and :class:`AuthSysServer` (principal ``"sys:<uid>:<gid>"``; the parsed credential is in the
``AuthAccept`` via :func:`parse_sys_principal`). AUTH_SYS verifiers are AUTH_NONE; replies carry an
AUTH_NONE verifier (we never issue AUTH_SHORT, though clients accept one, RFC 5531 appendix A).
Neither flavor wraps arguments or results.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from rpclatch.rpc.auth import (
    AuthAccept,
    AuthDeny,
    AuthResult,
    ClientAuth,
    ConnectionInfo,
    PreparedCall,
    ServerAuth,
)
from rpclatch.rpc.errors import AuthVerifierError
from rpclatch.rpc.messages import (
    NULL_AUTH,
    AcceptedReply,
    AuthFlavor,
    AuthStat,
    CallMessage,
    OpaqueAuth,
)
from rpclatch.xdr import Decoder, Encoder, XdrError

#: RFC 5531 appendix A limits.
MAX_MACHINENAME = 255
MAX_GIDS = 16

_REPLY_VERF_FLAVORS = (AuthFlavor.AUTH_NONE, AuthFlavor.AUTH_SHORT)


@dataclass(frozen=True, slots=True)
class AuthSysParms:
    """``authsys_parms`` (RFC 5531 appendix A)."""

    stamp: int
    machinename: str
    uid: int
    gid: int
    gids: tuple[int, ...] = ()

    def encode(self) -> bytes:
        if len(self.gids) > MAX_GIDS:
            raise XdrError(f"AUTH_SYS allows at most {MAX_GIDS} gids, got {len(self.gids)}")
        enc = Encoder()
        enc.uint32(self.stamp).string(self.machinename, MAX_MACHINENAME)
        enc.uint32(self.uid).uint32(self.gid).uint32(len(self.gids))
        for g in self.gids:
            enc.uint32(g)
        return enc.to_bytes()

    @classmethod
    def decode(cls, data: bytes) -> AuthSysParms:
        """Decode a whole credential body; raises :class:`XdrError` if malformed or trailing bytes."""
        dec = Decoder(data)
        stamp = dec.uint32()
        machinename = dec.string(MAX_MACHINENAME)
        uid, gid = dec.uint32(), dec.uint32()
        gids = tuple(dec.array(dec.uint32, MAX_GIDS))
        dec.done()
        return cls(stamp, machinename, uid, gid, gids)


def _check_reply_verf(reply: AcceptedReply) -> bytes:
    if reply.verf.flavor not in _REPLY_VERF_FLAVORS:
        raise AuthVerifierError(f"unexpected reply verifier flavor {reply.verf.flavor}")
    return reply.results


class AuthNoneClient(ClientAuth):
    """AUTH_NONE (RFC 5531 §10): empty credential and verifier."""

    flavor = AuthFlavor.AUTH_NONE

    def prepare_call(self, xid: int, prog: int, vers: int, proc: int, args: bytes) -> PreparedCall:
        return PreparedCall(CallMessage(xid, prog, vers, proc, NULL_AUTH, NULL_AUTH, args))

    def accept_reply(self, prepared: PreparedCall, reply: AcceptedReply) -> bytes:
        return _check_reply_verf(reply)


class AuthSysClient(ClientAuth):
    """AUTH_SYS (RFC 5531 appendix A): the credential asserts uid/gid/groups; verifier AUTH_NONE."""

    flavor = AuthFlavor.AUTH_SYS

    def __init__(self, parms: AuthSysParms) -> None:
        self.parms = parms
        self._cred = OpaqueAuth(AuthFlavor.AUTH_SYS, parms.encode())

    @classmethod
    def for_current_process(cls, stamp: int = 0) -> AuthSysClient:
        """Credential for this process: its uid, gid, up to 16 supplementary groups, host name."""
        name = socket.gethostname()[:MAX_MACHINENAME]
        gid = os.getgid()
        groups = tuple(g for g in os.getgroups() if g != gid)[:MAX_GIDS]
        return cls(AuthSysParms(stamp, name, os.getuid(), gid, groups))

    def prepare_call(self, xid: int, prog: int, vers: int, proc: int, args: bytes) -> PreparedCall:
        return PreparedCall(CallMessage(xid, prog, vers, proc, self._cred, NULL_AUTH, args))

    def accept_reply(self, prepared: PreparedCall, reply: AcceptedReply) -> bytes:
        return _check_reply_verf(reply)


def _seal_none(results: bytes) -> tuple[OpaqueAuth, bytes]:
    return NULL_AUTH, results


class AuthNoneServer(ServerAuth):
    """Accepts AUTH_NONE calls whose credential and verifier bodies are empty (RFC 5531 §10)."""

    flavor = AuthFlavor.AUTH_NONE

    def check_call(self, call: CallMessage, conn: ConnectionInfo, now: float) -> AuthResult:
        if call.cred.body:
            return AuthDeny(AuthStat.AUTH_BADCRED, "AUTH_NONE credential must be empty")
        return AuthAccept(call.args, None, _seal_none)


def sys_principal(parms: AuthSysParms) -> str:
    """The principal string of an AUTH_SYS caller: ``"sys:<uid>:<gid>"``."""
    return f"sys:{parms.uid}:{parms.gid}"


def parse_sys_principal(principal: str) -> tuple[int, int] | None:
    """(uid, gid) from a principal made by :func:`sys_principal`, else None."""
    parts = principal.split(":")
    if len(parts) != 3 or parts[0] != "sys" or not (parts[1].isdigit() and parts[2].isdigit()):
        return None
    return int(parts[1]), int(parts[2])


class AuthSysServer(ServerAuth):
    """Accepts well-formed AUTH_SYS credentials with an AUTH_NONE verifier (RFC 5531 appendix A).

    AUTH_SYS proves nothing; a real server decides what to trust. ``conn.attributes["auth_sys"]`` is
    not touched: the decoded parameters are available via :meth:`parse` when a program needs them.
    """

    flavor = AuthFlavor.AUTH_SYS

    def check_call(self, call: CallMessage, conn: ConnectionInfo, now: float) -> AuthResult:
        try:
            parms = AuthSysParms.decode(call.cred.body)
        except XdrError as exc:
            return AuthDeny(AuthStat.AUTH_BADCRED, f"malformed AUTH_SYS credential: {exc}")
        if call.verf.flavor != AuthFlavor.AUTH_NONE:
            return AuthDeny(AuthStat.AUTH_BADVERF, "AUTH_SYS verifier must be AUTH_NONE")
        return AuthAccept(call.args, sys_principal(parms), _seal_none)

    @staticmethod
    def parse(call: CallMessage) -> AuthSysParms:
        """The AUTH_SYS parameters of an accepted call (raises XdrError for other flavors)."""
        if call.cred.flavor != AuthFlavor.AUTH_SYS:
            raise XdrError("not an AUTH_SYS call")
        return AuthSysParms.decode(call.cred.body)
