"""RPCSEC_GSS v1/v2 server flavor (RFC 2203 §5, RFC 5403 §3) behind :class:`ServerAuth`.

Sans-IO: :meth:`GssServerAuth.check_call` takes a decoded call, the connection it arrived on and
the time ``now`` and returns what the dispatcher should do. Nothing here reads a clock or a socket.

Processing order for DATA/DESTROY/BIND_CHANNEL (RFC 2203 §5.3.3.1): credential version, proc and
service -> handle -> expiry / MAXSEQ -> replay window (drops before the MIC, §7.2.2 allows it) ->
header MIC (nothing in the credential is trusted before this) -> mark the window -> service body.

Project choices where the RFCs are silent (standards digest §7.3, §7.4, §12):

* a BIND_CHANNEL MIC failure is answered MSG_DENIED / AUTH_ERROR / RPCSEC_GSS_CREDPROBLEM and halves
  the context's remaining lifetime (RFC 5403 §9 rollback mitigation);
* BIND_CHANNEL on a connection without an intact channel answers RGSS2_BIND_CHAN_PREF_NOTSUPP with an
  empty prefix list; for PREF_NOTSUPP the reply MIC covers an empty hash (there is nothing to hash),
  for HASH_NOTSUPP the hash of the requested prefix's bindings under ``rbcr_oid_list[0]``;
* channel_prot on an unbound handle, on another connection, on a broken channel or after expiry is
  answered RPCSEC_GSS_CTXPROBLEM; on a v1 handle AUTH_BADCRED;
* channel_prot sequence numbers still go through the window (duplicates are dropped).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from rpclatch.gss.channel import Channel
from rpclatch.gss.errors import GssError, GssMajor
from rpclatch.gss.provider import GssContext, Provider
from rpclatch.gss.seqwindow import SeqVerdict, SeqWindow
from rpclatch.gss.wire import (
    MAX_HANDLE,
    MAXSEQ,
    RPCSEC_GSS_VERS_1,
    RPCSEC_GSS_VERS_2,
    SHA1,
    SHA256,
    SHA384,
    SHA512,
    BindChanMicInArgs,
    BindChanMicInRes,
    BindChanRes,
    BindChanStatus,
    BindChanVerfArgs,
    BindChanVerfRes,
    GssProc,
    HashAlgorithm,
    InitArg,
    InitRes,
    Service,
    UnsupportedVersion,
    be32,
    channel_bindings_bytes,
    decode_cred_fields,
    decode_integ,
    decode_priv,
    encode_call_header,
    encode_integ,
    encode_opaque,
    normalize_oid,
)
from rpclatch.rpc.auth import (
    AuthAccept,
    AuthControlReply,
    AuthDeny,
    AuthDrop,
    AuthGarbage,
    AuthResult,
    ConnectionInfo,
    ServerAuth,
)
from rpclatch.rpc.messages import MAX_AUTH_BYTES, NULL_AUTH, AuthFlavor, AuthStat, CallMessage, OpaqueAuth
from rpclatch.rpc.wire import opaque_auth
from rpclatch.xdr import XdrError

log = logging.getLogger(__name__)

# Enum members as module constants: ``x is _DATA`` costs ~15 ns, ``x == GssProc.RPCSEC_GSS_DATA``
# ~180 ns (attribute lookup on the enum class), and these checks run on every call.
_DATA = GssProc.RPCSEC_GSS_DATA
_DESTROY = GssProc.RPCSEC_GSS_DESTROY
_BIND = GssProc.RPCSEC_GSS_BIND_CHANNEL
_SVC_NONE = Service.NONE
_SVC_INTEGRITY = Service.INTEGRITY
_SVC_CHANNEL_PROT = Service.CHANNEL_PROT
_FLAVOR_GSS = int(AuthFlavor.RPCSEC_GSS)
_FLAVOR_NONE = int(AuthFlavor.AUTH_NONE)
_NEW = SeqVerdict.NEW


def _seal_clear(results: bytes) -> tuple[OpaqueAuth, bytes]:
    """channel_prot replies: the results as they are, AUTH_NONE verifier (RFC 5403 §3.4)."""
    return NULL_AUTH, results


_CRED_HEAD = struct.Struct(">IIIII")  # rpc_gss_cred_vers_1_t up to the handle length
_U32 = struct.Struct(">I")
_PROCS = {int(p): p for p in GssProc}
_SERVICES = {int(v): v for v in Service}
_INIT = GssProc.RPCSEC_GSS_INIT
_CONTINUE_INIT = GssProc.RPCSEC_GSS_CONTINUE_INIT


def _signed_header(call: CallMessage) -> bytes:
    """The call header from xid through the credential (RFC 2203 §5.3.1): the bytes as received
    when the RPC layer kept them (``call.header``), else re-encoded."""
    return call.header or encode_call_header(call.xid, call.prog, call.vers, call.proc,
                                             call.cred.flavor, call.cred.body, call.rpcvers)

DEFAULT_SEQ_WINDOW = 128
#: Lifetime assumed for contexts whose mechanism reports "indefinite" (also what gets halved).
DEFAULT_INDEFINITE_LIFETIME = 8 * 3600.0


class _Cred(NamedTuple):
    """A decoded credential (the fields of :class:`GssCred`; a tuple is cheaper per call)."""

    version: int
    gss_proc: GssProc
    seq_num: int
    service: Service
    handle: bytes


@dataclass(frozen=True, slots=True)
class _Binding:
    """A successful BIND_CHANNEL: valid only on this connection and this channel object."""

    conn_id: int
    channel: Channel
    prefix: str
    algorithm: HashAlgorithm


@dataclass(frozen=True, slots=True)
class ContextInfo:
    """A snapshot of one server context, for demos, logs and the CLI."""

    handle: bytes
    principal: str | None
    version: int
    established: bool
    expires_at: float | None
    bound_conn_id: int | None
    bound_prefix: str | None
    bind_failures: int
    highest_seq: int


@dataclass(eq=False)
class _ServerContext:
    handle: bytes
    version: int
    gss: GssContext
    window: SeqWindow
    established: bool = False
    expires_at: float | None = None
    principal: str | None = None
    binding: _Binding | None = None
    bind_failures: int = 0
    data_requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class GssServerAuth(ServerAuth):
    """The RPCSEC_GSS server flavor (flavor 6).

    ``provider`` creates acceptor contexts. ``versions`` are the credential versions served;
    ``unsupported_version_stat`` is how others are refused (RFC 2203 §5.1 says AUTH_REJECTEDCRED;
    a v1-only Linux nfsd answers AUTH_BADCRED). ``seq_window`` is announced in INIT replies.
    ``max_contexts`` bounds the context table (least recently used contexts are evicted, their
    clients get CREDPROBLEM and refresh). ``prefixes`` limits the channel-binding prefixes accepted
    (None: whatever the connection's channel offers). ``hashes`` are the accepted channel-binding
    hashes, preferred first; SHA-256 is mandatory. ``max_lifetime`` caps context lifetimes (seconds).
    ``max_requests_per_context`` caps the MIC-protected requests one context may make before it
    must be refreshed (CTXPROBLEM) -- RFC 5403 §9 mitigation (a): fewer DATA MICs per context
    means fewer forgery attempts against BIND_CHANNEL; None = no cap.
    ``gss_channel_bindings=True`` additionally requires GSS-level channel bindings of the
    connection's channel at establishment (RFC 5554; off by default, RFC 5403 §5).
    """

    flavor = AuthFlavor.RPCSEC_GSS

    def __init__(
        self,
        provider: Provider,
        *,
        versions: Sequence[int] = (RPCSEC_GSS_VERS_1, RPCSEC_GSS_VERS_2),
        unsupported_version_stat: AuthStat = AuthStat.AUTH_REJECTEDCRED,
        seq_window: int = DEFAULT_SEQ_WINDOW,
        max_contexts: int = 4096,
        prefixes: Sequence[str] | None = None,
        hashes: Sequence[HashAlgorithm] = (SHA256, SHA1, SHA384, SHA512),
        max_lifetime: float | None = None,
        gss_channel_bindings: bool = False,
        init_cache_size: int = 256,
        max_requests_per_context: int | None = None,
        new_handle: Callable[[], bytes] = lambda: secrets.token_bytes(16),
    ) -> None:
        if SHA256 not in hashes:
            raise ValueError("SHA-256 is mandatory for channel binding hashes")
        self.provider = provider
        self.versions = frozenset(versions)
        self.unsupported_version_stat = unsupported_version_stat
        self.seq_window = seq_window
        self.max_contexts = max_contexts
        self.prefixes = None if prefixes is None else tuple(prefixes)
        self.hashes = tuple(hashes)
        self.max_lifetime = max_lifetime
        self.gss_channel_bindings = gss_channel_bindings
        self._new_handle = new_handle
        self._contexts: OrderedDict[bytes, _ServerContext] = OrderedDict()
        self._init_cache: OrderedDict[bytes, AuthControlReply] = OrderedDict()
        self._init_cache_size = init_cache_size
        self.max_requests_per_context = max_requests_per_context
        self._lock = threading.Lock()

    # -- introspection (tests, demos, CLI) ----------------------------------------------------------

    def context_count(self) -> int:
        with self._lock:
            return len(self._contexts)

    def contexts(self) -> list[ContextInfo]:
        """Snapshots of every context in the table, least recently used first."""
        with self._lock:
            contexts = list(self._contexts.values())
        out = []
        for c in contexts:
            with c.lock:
                b = c.binding
                out.append(ContextInfo(c.handle, c.principal, c.version, c.established, c.expires_at,
                                       b.conn_id if b else None, b.prefix if b else None,
                                       c.bind_failures, c.window.highest))
        return out

    def drop_all_contexts(self) -> int:
        """Forget every context (an administrative revoke, or what a restart does); clients get
        RPCSEC_GSS_CREDPROBLEM and refresh. Returns how many were dropped."""
        with self._lock:
            dropped = list(self._contexts.values())
            self._contexts.clear()
            self._init_cache.clear()
        for ctx in dropped:
            ctx.gss.delete()
        return len(dropped)

    def gss_context(self, handle: bytes) -> GssContext | None:
        """The GSS context behind ``handle`` (benchmarks and tests), or None if there is none."""
        with self._lock:
            ctx = self._contexts.get(handle)
        return None if ctx is None else ctx.gss

    def context_expiry(self, handle: bytes) -> float | None:
        with self._lock:
            ctx = self._contexts.get(handle)
        return None if ctx is None else ctx.expires_at

    def is_bound(self, handle: bytes, conn: ConnectionInfo | None = None) -> bool:
        with self._lock:
            ctx = self._contexts.get(handle)
        if ctx is None or ctx.binding is None:
            return False
        return conn is None or ctx.binding.conn_id == conn.conn_id

    # -- ServerAuth -----------------------------------------------------------------------------------

    def check_call(self, call: CallMessage, conn: ConnectionInfo, now: float) -> AuthResult:
        """The per-call path. A well-formed credential (the fixed layout read with one unpack: the
        checks of ``decode_cred_fields`` without building objects) of an RPCSEC_GSS_DATA call is
        handled right here: the checks of :meth:`_established_call` followed by those of
        :meth:`_data` or :meth:`_channel_prot`, written out as one function (same checks, same
        order, same answers -- tests/gss/test_server.py compares this path with
        :meth:`_check_general`), the context table read without its lock (see :meth:`_remember`),
        the context's lock taken with acquire/release, the seq_num packed once and the header MIC
        computed over the header bytes as received. DESTROY and BIND_CHANNEL go to
        :meth:`_established_call`, everything else to :meth:`_check_general`."""
        body = call.cred.body
        n = len(body)
        if n < 20:
            return self._check_general(call, conn, now)
        version, proc, seq, service_no, hlen = _CRED_HEAD.unpack_from(body)
        if hlen > MAX_HANDLE or n != 20 + ((hlen + 3) & ~3) or version not in self.versions:
            return self._check_general(call, conn, now)
        if proc != 0 or not 0 < service_no < 5:  # not RPCSEC_GSS_DATA with a known service
            procedure = _PROCS.get(proc)
            service = _SERVICES.get(service_no)
            if (procedure is not None and procedure is not _INIT and procedure is not _CONTINUE_INIT
                    and service is not None):
                return self._established_call(call, conn, now, version, procedure, seq, service,
                                              body[20:20 + hlen])
            return self._check_general(call, conn, now)
        handle = body[20:20 + hlen]
        if service_no == 4 and version != RPCSEC_GSS_VERS_2:
            return AuthDeny(AuthStat.AUTH_BADCRED, "channel_prot is an RPCSEC_GSS v2 service")
        # The table without its lock (see _remember): get and move_to_end are each one atomic
        # operation under the GIL; a context removed in between is unknown, as it is a moment later.
        contexts = self._contexts
        ctx = contexts.get(handle)
        if ctx is not None:
            try:
                contexts.move_to_end(handle)  # least recently used first
            except KeyError:
                ctx = None
        if ctx is None or not ctx.established:
            return AuthDeny(AuthStat.RPCSEC_GSS_CREDPROBLEM, "unknown context handle")
        if ctx.version != version:
            # RFC 5403 §4: a handle never crosses versions.
            return AuthDeny(AuthStat.AUTH_BADCRED, "credential version differs from the context's")
        expires_at = ctx.expires_at
        if expires_at is not None and now >= expires_at:
            self._forget(ctx.handle)
            ctx.gss.delete()
            return AuthDeny(AuthStat.RPCSEC_GSS_CTXPROBLEM, "context expired")
        if seq >= MAXSEQ:
            return AuthDeny(AuthStat.RPCSEC_GSS_CTXPROBLEM, "seq_num at or above MAXSEQ")
        cap = self.max_requests_per_context
        if cap is not None and ctx.data_requests >= cap:
            self._forget(ctx.handle)
            return AuthDeny(AuthStat.RPCSEC_GSS_CTXPROBLEM, f"context used for {cap} requests: refresh it")
        verf = call.verf
        ctx_lock = ctx.lock
        if service_no == 4:  # channel_prot (RFC 5403 §3.4), as in _channel_prot
            if verf.flavor != _FLAVOR_NONE or verf.body:
                return AuthDeny(AuthStat.AUTH_BADVERF, "channel_prot requests carry an AUTH_NONE verifier")
            binding = ctx.binding
            if binding is None:
                return AuthDeny(AuthStat.RPCSEC_GSS_CTXPROBLEM, "channel_prot on an unbound handle")
            if binding.conn_id != conn.conn_id or conn.channel is not binding.channel:
                return AuthDeny(AuthStat.RPCSEC_GSS_CTXPROBLEM, "channel_prot on a connection not bound")
            if not binding.channel.is_up():
                with ctx_lock:
                    ctx.binding = None
                return AuthDeny(AuthStat.RPCSEC_GSS_CTXPROBLEM, "the bound channel is gone")
            ctx_lock.acquire()
            try:
                fresh = ctx.window.accept(seq)  # no MIC to verify in between: check and mark at once
            finally:
                ctx_lock.release()
            if not fresh:
                return AuthDrop(f"channel_prot seq_num {seq} replayed or below window")
            return AuthAccept(call.args, ctx.principal, _seal_clear)
        if verf.flavor != _FLAVOR_GSS:
            return AuthDeny(AuthStat.RPCSEC_GSS_CREDPROBLEM, "verifier is not RPCSEC_GSS")
        gss = ctx.gss
        window = ctx.window
        # Check, verify, mark under the context's lock (as in _established_call).
        ctx_lock.acquire()
        try:
            verdict = window.check(seq)
            if verdict is not _NEW:
                return AuthDrop(f"seq_num {seq}: {verdict.value}")
            try:
                gss.verify_mic(call.header or _signed_header(call), verf.body)
            except GssError as exc:
                return AuthDeny(AuthStat.RPCSEC_GSS_CREDPROBLEM, f"header MIC: {exc}")
            window.mark(seq)
            ctx.data_requests += 1
        finally:
            ctx_lock.release()
        seq_bytes = _U32.pack(seq)
        if service_no == 1:
            args = call.args
        else:  # as in _data
            try:
                if service_no == 2:
                    inner, checksum = decode_integ(call.args)
                    gss.verify_mic(inner, checksum)
                    encrypted = True
                else:
                    inner, encrypted = gss.unwrap(decode_priv(call.args))
            except (XdrError, GssError) as exc:
                return AuthGarbage(f"{'integrity' if service_no == 2 else 'privacy'} body: {exc}")
            if len(inner) < 4:
                return AuthGarbage("rpc_gss_data_t shorter than its seq_num")
            if not encrypted:
                return AuthGarbage("privacy body was not encrypted")
            if inner[:4] != seq_bytes:  # RFC 2203 §5.3.3.1
                return AuthGarbage(f"body seq_num {_U32.unpack_from(inner)[0]} != credential seq_num {seq}")
            args = inner[4:]
        # RFC 2203 §5.3.3.4.1: the reply verifier's GSS_GetMIC before the procedure runs.
        try:
            mic = gss.get_mic(seq_bytes)
            reply_verf = (opaque_auth(_FLAVOR_GSS, mic) if len(mic) <= MAX_AUTH_BYTES
                          else OpaqueAuth(_FLAVOR_GSS, mic))  # XdrError: too long
        except (GssError, XdrError) as exc:
            return AuthDeny(AuthStat.RPCSEC_GSS_CTXPROBLEM, f"reply verifier MIC: {exc}")
        if service_no == 1:
            def seal(results: bytes) -> tuple[OpaqueAuth, bytes]:
                return reply_verf, results
        elif service_no == 2:
            def seal(results: bytes) -> tuple[OpaqueAuth, bytes]:
                """RFC 2203 §5.3.3.2; a GssError means no reply (§5.3.3.4.1)."""
                inner = seq_bytes + results
                return reply_verf, encode_integ(inner, gss.get_mic(inner))
        else:
            def seal(results: bytes) -> tuple[OpaqueAuth, bytes]:
                """RFC 2203 §5.3.3.2; a GssError means no reply (§5.3.3.4.4)."""
                return reply_verf, encode_opaque(gss.wrap(seq_bytes + results, True))
        return AuthAccept(args, ctx.principal, seal)

    def _check_general(self, call: CallMessage, conn: ConnectionInfo, now: float) -> AuthResult:
        """:meth:`check_call` without its fast paths: the credential through ``decode_cred_fields``
        and every established-context call through :meth:`_established_call`."""
        body = call.cred.body
        try:
            cred = _Cred(*decode_cred_fields(body))
        except UnsupportedVersion as exc:
            return AuthDeny(self.unsupported_version_stat, str(exc))
        except XdrError as exc:
            return AuthDeny(AuthStat.AUTH_BADCRED, f"malformed RPCSEC_GSS credential: {exc}")
        if cred.version not in self.versions:
            return AuthDeny(self.unsupported_version_stat, f"RPCSEC_GSS version {cred.version} not served")
        if cred.gss_proc in (GssProc.RPCSEC_GSS_INIT, GssProc.RPCSEC_GSS_CONTINUE_INIT):
            return self._init(call, cred, conn, now)
        return self._established_call(call, conn, now, cred.version, cred.gss_proc, cred.seq_num,
                                      cred.service, cred.handle)

    def connection_closed(self, conn: ConnectionInfo) -> None:
        """RFC 5403 §3.4: a binding is valid only while its channel (this connection's) exists."""
        with self._lock:
            contexts = list(self._contexts.values())
        for ctx in contexts:
            with ctx.lock:
                if ctx.binding is not None and ctx.binding.conn_id == conn.conn_id:
                    ctx.binding = None

    # -- context creation (RFC 2203 §5.2) -------------------------------------------------------------

    def _init(self, call: CallMessage, cred: _Cred, conn: ConnectionInfo, now: float) -> AuthResult:
        if call.proc != 0:
            return AuthDeny(AuthStat.AUTH_BADCRED, "INIT must use the NULL procedure (RFC 2203 §5.2.1)")
        if call.verf.flavor != AuthFlavor.AUTH_NONE or call.verf.body:
            return AuthDeny(AuthStat.AUTH_BADVERF, "INIT verifier must be AUTH_NONE (RFC 2203 §5.2.1)")
        try:
            token = InitArg.decode(call.args).gss_token
        except XdrError as exc:
            return AuthGarbage(f"bad rpc_gss_init_arg: {exc}")
        # RFC 2203 §5.2.3: retransmissions must get the same answer; a second accept of the same
        # AP-REQ would fail the Kerberos replay cache (recipes/gss §6.5).
        key = hashlib.sha256(
            be32(cred.version) + be32(cred.gss_proc) + be32(len(cred.handle)) + cred.handle + token
        ).digest()
        with self._lock:
            cached = self._init_cache.get(key)
            if cached is not None:
                self._init_cache.move_to_end(key)
                return cached
        reply = self._init_step(cred, token, conn, now)
        with self._lock:
            self._init_cache[key] = reply
            while len(self._init_cache) > self._init_cache_size:
                self._init_cache.popitem(last=False)
        return reply

    def _failed_init(self, major: int, minor: int, why: str) -> AuthControlReply:
        log.info("RPCSEC_GSS context creation failed: %s", why)
        return AuthControlReply(NULL_AUTH, InitRes(b"", major, minor, 0, b"").encode())

    def _init_step(self, cred: _Cred, token: bytes, conn: ConnectionInfo, now: float) -> AuthControlReply:
        if cred.gss_proc == GssProc.RPCSEC_GSS_INIT:
            if cred.handle:
                return self._failed_init(GssMajor.GSS_S_DEFECTIVE_TOKEN, 0, "INIT with a handle")
            try:
                cb = None
                if self.gss_channel_bindings:
                    channel = conn.channel
                    if channel is None or not channel.is_up():
                        return self._failed_init(GssMajor.GSS_S_BAD_BINDINGS, 0, "no channel to bind")
                    cb = channel.channel_bindings()
                gss = self.provider.accept(channel_bindings=cb, require_channel_bindings=cb is not None)
            except GssError as exc:
                return self._failed_init(exc.major, exc.minor, str(exc))
            ctx = _ServerContext(self._new_handle(), cred.version, gss, SeqWindow(self.seq_window))
        else:
            with self._lock:
                found = self._contexts.get(cred.handle)
            if found is None or found.established or found.version != cred.version:
                return self._failed_init(GssMajor.GSS_S_NO_CONTEXT, 0, "CONTINUE_INIT for unknown handle")
            ctx = found
        try:
            out = ctx.gss.step(token)
        except GssError as exc:
            self._forget(ctx.handle)
            ctx.gss.delete()
            return self._failed_init(exc.major, exc.minor, str(exc))
        if not ctx.gss.complete:
            self._remember(ctx, now)
            return AuthControlReply(
                NULL_AUTH,
                InitRes(ctx.handle, GssMajor.GSS_S_CONTINUE_NEEDED, 0, self.seq_window, out or b"").encode(),
            )
        lifetime = float(ctx.gss.lifetime) if ctx.gss.lifetime is not None else DEFAULT_INDEFINITE_LIFETIME
        if self.max_lifetime is not None:
            lifetime = min(lifetime, self.max_lifetime)
        ctx.expires_at = now + lifetime
        ctx.principal = ctx.gss.peer_name
        ctx.established = True
        try:
            verf = OpaqueAuth(AuthFlavor.RPCSEC_GSS, ctx.gss.get_mic(be32(self.seq_window)))
        except GssError as exc:
            self._forget(ctx.handle)
            return self._failed_init(exc.major, exc.minor, f"MIC of seq_window: {exc}")
        self._remember(ctx, now)
        log.debug("RPCSEC_GSS v%d context for %s established", ctx.version, ctx.principal)
        return AuthControlReply(
            verf, InitRes(ctx.handle, GssMajor.GSS_S_COMPLETE, 0, self.seq_window, out or b"").encode()
        )

    def _remember(self, ctx: _ServerContext, now: float) -> None:
        # Changes to the table are made under self._lock. The per-call path of check_call reads
        # it without the lock (one atomic get and move_to_end each, under the GIL), so whatever
        # loops over the table in Python loops over a snapshot (list(...) is one atomic copy).
        with self._lock:
            self._contexts[ctx.handle] = ctx
            self._contexts.move_to_end(ctx.handle)
            if len(self._contexts) > self.max_contexts:
                expired = [h for h, c in list(self._contexts.items())
                           if c.expires_at is not None and c.expires_at <= now]
                for h in expired:
                    del self._contexts[h]
            while len(self._contexts) > self.max_contexts:
                _, old = self._contexts.popitem(last=False)
                log.info("RPCSEC_GSS context table full: evicted a context of %s", old.principal)

    def _forget(self, handle: bytes) -> _ServerContext | None:
        with self._lock:
            return self._contexts.pop(handle, None)

    # -- established contexts (RFC 2203 §5.3, §5.4; RFC 5403 §3.3, §3.4) ------------------------------

    def _established_call(
        self, call: CallMessage, conn: ConnectionInfo, now: float, version: int, proc: GssProc,
        seq: int, service: Service, handle: bytes,
    ) -> AuthResult:
        if proc is not _DATA:
            if proc is _BIND and (version != RPCSEC_GSS_VERS_2 or service is not _SVC_NONE):
                return AuthDeny(AuthStat.AUTH_BADCRED, "BIND_CHANNEL needs version 2 and service none")
            if proc is _DESTROY and service is _SVC_CHANNEL_PROT:
                return AuthDeny(AuthStat.AUTH_BADCRED, "DESTROY needs a MIC-carrying service")
        if service is _SVC_CHANNEL_PROT and version != RPCSEC_GSS_VERS_2:
            return AuthDeny(AuthStat.AUTH_BADCRED, "channel_prot is an RPCSEC_GSS v2 service")
        if proc is not _DATA and call.proc != 0:
            return AuthDeny(AuthStat.AUTH_BADCRED, f"{proc.name} must use the NULL procedure")
        contexts = self._contexts
        with self._lock:
            ctx = contexts.get(handle)
            if ctx is not None:
                contexts.move_to_end(handle)
        if ctx is None or not ctx.established:
            return AuthDeny(AuthStat.RPCSEC_GSS_CREDPROBLEM, "unknown context handle")
        if ctx.version != version:
            # RFC 5403 §4: a handle never crosses versions.
            return AuthDeny(AuthStat.AUTH_BADCRED, "credential version differs from the context's")
        expires_at = ctx.expires_at
        if expires_at is not None and now >= expires_at:
            self._forget(ctx.handle)
            ctx.gss.delete()
            return AuthDeny(AuthStat.RPCSEC_GSS_CTXPROBLEM, "context expired")
        if seq >= MAXSEQ:
            return AuthDeny(AuthStat.RPCSEC_GSS_CTXPROBLEM, "seq_num at or above MAXSEQ")
        cap = self.max_requests_per_context
        if cap is not None and ctx.data_requests >= cap and proc is not _DESTROY:
            self._forget(ctx.handle)
            return AuthDeny(AuthStat.RPCSEC_GSS_CTXPROBLEM, f"context used for {cap} requests: refresh it")
        if service is _SVC_CHANNEL_PROT:
            return self._channel_prot(call, seq, ctx, conn)
        verf = call.verf
        if verf.flavor != _FLAVOR_GSS:
            return AuthDeny(AuthStat.RPCSEC_GSS_CREDPROBLEM, "verifier is not RPCSEC_GSS")
        window = ctx.window
        if proc is _BIND:
            with ctx.lock:
                verdict = window.check(seq)
            if verdict is not _NEW:
                return AuthDrop(f"seq_num {seq}: {verdict.value}")
            return self._bind_channel(call, seq, ctx, conn, now)
        # Check, verify, mark under the context's lock (GSS calls on one context are serialized by
        # the provider anyway): a duplicate racing on another thread cannot slip in between.
        with ctx.lock:
            verdict = window.check(seq)
            if verdict is not _NEW:
                return AuthDrop(f"seq_num {seq}: {verdict.value}")
            try:
                ctx.gss.verify_mic(_signed_header(call), verf.body)
            except GssError as exc:
                return AuthDeny(AuthStat.RPCSEC_GSS_CREDPROBLEM, f"header MIC: {exc}")
            window.mark(seq)
            ctx.data_requests += 1
        if proc is _DESTROY:
            try:
                reply_verf = OpaqueAuth(_FLAVOR_GSS, ctx.gss.get_mic(be32(seq)))
            except GssError as exc:
                return AuthDeny(AuthStat.RPCSEC_GSS_CTXPROBLEM, f"reply MIC: {exc}")
            self._forget(ctx.handle)
            ctx.gss.delete()
            return AuthControlReply(reply_verf, b"")
        return self._data(call, seq, service, ctx)

    @staticmethod
    def _mark(ctx: _ServerContext, seq: int) -> bool:
        with ctx.lock:
            if ctx.window.check(seq) is not _NEW:
                return False
            ctx.window.mark(seq)
            return True

    def _data(self, call: CallMessage, seq: int, service: Service, ctx: _ServerContext) -> AuthResult:
        gss = ctx.gss
        if service is _SVC_NONE:
            args = call.args
        else:
            try:
                if service is _SVC_INTEGRITY:
                    inner, checksum = decode_integ(call.args)
                    gss.verify_mic(inner, checksum)
                    encrypted = True
                else:
                    inner, encrypted = gss.unwrap(decode_priv(call.args))
            except (XdrError, GssError) as exc:
                return AuthGarbage(f"{'integrity' if service is _SVC_INTEGRITY else 'privacy'} body: {exc}")
            if len(inner) < 4:
                return AuthGarbage("rpc_gss_data_t shorter than its seq_num")
            if not encrypted:
                return AuthGarbage("privacy body was not encrypted")
            if inner[:4] != _U32.pack(seq):  # RFC 2203 §5.3.3.1
                return AuthGarbage(f"body seq_num {_U32.unpack_from(inner)[0]} != credential seq_num {seq}")
            args = inner[4:]

        # RFC 2203 §5.3.3.4.1: if the reply verifier's GSS_GetMIC fails, answer CTXPROBLEM -- so
        # compute it now, before the procedure runs (it depends on the seq_num only).
        try:
            mic = gss.get_mic(_U32.pack(seq))
            verf = (opaque_auth(_FLAVOR_GSS, mic) if len(mic) <= MAX_AUTH_BYTES
                    else OpaqueAuth(_FLAVOR_GSS, mic))  # XdrError: too long
        except (GssError, XdrError) as exc:
            return AuthDeny(AuthStat.RPCSEC_GSS_CTXPROBLEM, f"reply verifier MIC: {exc}")

        if service is _SVC_NONE:
            def seal(results: bytes) -> tuple[OpaqueAuth, bytes]:
                return verf, results
        elif service is _SVC_INTEGRITY:
            def seal(results: bytes) -> tuple[OpaqueAuth, bytes]:
                """RFC 2203 §5.3.3.2. A GssError here means no reply may be sent (RFC 2203
                §5.3.3.4.1; the dispatcher sends none)."""
                inner = _U32.pack(seq) + results
                return verf, encode_integ(inner, gss.get_mic(inner))
        else:
            def seal(results: bytes) -> tuple[OpaqueAuth, bytes]:
                """RFC 2203 §5.3.3.2; a GssError means no reply (§5.3.3.4.4)."""
                return verf, encode_opaque(gss.wrap(_U32.pack(seq) + results, True))

        return AuthAccept(args, ctx.principal, seal)

    def _channel_prot(
        self, call: CallMessage, seq: int, ctx: _ServerContext, conn: ConnectionInfo
    ) -> AuthResult:
        """RFC 5403 §3.4: valid only on a bound v2 handle, on the bound connection, while its
        channel exists; AUTH_NONE verifiers both ways. (DESTROY and BIND_CHANNEL never get
        here: both are refused with channel_prot before.)"""
        verf = call.verf
        if verf.flavor != _FLAVOR_NONE or verf.body:
            return AuthDeny(AuthStat.AUTH_BADVERF, "channel_prot requests carry an AUTH_NONE verifier")
        binding = ctx.binding
        if binding is None:
            return AuthDeny(AuthStat.RPCSEC_GSS_CTXPROBLEM, "channel_prot on an unbound handle")
        if binding.conn_id != conn.conn_id or conn.channel is not binding.channel:
            return AuthDeny(AuthStat.RPCSEC_GSS_CTXPROBLEM, "channel_prot on a connection not bound")
        if not binding.channel.is_up():
            with ctx.lock:
                ctx.binding = None
            return AuthDeny(AuthStat.RPCSEC_GSS_CTXPROBLEM, "the bound channel is gone")
        with ctx.lock:
            fresh = ctx.window.accept(seq)  # no MIC to verify in between: check and mark at once
        if not fresh:
            return AuthDrop(f"channel_prot seq_num {seq} replayed or below window")
        return AuthAccept(call.args, ctx.principal, _seal_clear)

    def _bind_channel(
        self, call: CallMessage, seq: int, ctx: _ServerContext, conn: ConnectionInfo, now: float
    ) -> AuthResult:
        """RFC 5403 §3.3."""
        if call.args:
            return AuthGarbage("BIND_CHANNEL takes no arguments")
        try:
            verf = BindChanVerfArgs.decode(call.verf.body)
            prefix = verf.chan_bind_prefix.decode("ascii")
        except (XdrError, UnicodeDecodeError) as exc:
            return AuthDeny(AuthStat.AUTH_BADVERF, f"bad rgss2_bind_chan_verf_args: {exc}")
        channel: Channel | None = conn.channel
        offered: dict[str, bytes] = {}
        if channel is not None and channel.is_up():
            offered = {p: d for p, d in channel.bindings().items()
                       if self.prefixes is None or p in self.prefixes}
        if prefix not in offered:
            res = BindChanRes(
                BindChanStatus.RGSS2_BIND_CHAN_PREF_NOTSUPP, tuple(p.encode() for p in offered)
            )
            return self._bind_reply(ctx, seq, b"", res)
        cb = channel_bindings_bytes(prefix, offered[prefix])
        oid = normalize_oid(verf.chan_bind_oid_hash)
        algorithm = next((h for h in self.hashes if h.oid == oid), None)
        if algorithm is None:
            res = BindChanRes(
                BindChanStatus.RGSS2_BIND_CHAN_HASH_NOTSUPP, (), tuple(h.oid for h in self.hashes)
            )
            return self._bind_reply(ctx, seq, self.hashes[0].digest(cb), res)
        cb_hash = algorithm.digest(cb)
        micin = _signed_header(call) + BindChanMicInArgs(cb_hash).encode()
        try:
            ctx.gss.verify_mic(micin, verf.chan_mic)
        except GssError as exc:
            self._halve_lifetime(ctx, now)
            return AuthDeny(AuthStat.RPCSEC_GSS_CREDPROBLEM, f"BIND_CHANNEL MIC (or bindings) wrong: {exc}")
        if not self._mark(ctx, seq):
            return AuthDrop(f"seq_num {seq}: raced with a duplicate")
        assert channel is not None
        binding = _Binding(conn.conn_id, channel, prefix, algorithm)
        with ctx.lock:
            ctx.binding = binding
        conn.attributes.setdefault("gss_bound_handles", set()).add(ctx.handle)

        def forget(_: Channel) -> None:
            with ctx.lock:
                if ctx.binding is binding:
                    ctx.binding = None

        channel.on_break(forget)
        log.info("RPCSEC_GSS handle of %s bound to channel %s on connection %d",
                 ctx.principal, prefix, conn.conn_id)
        return self._bind_reply(ctx, seq, cb_hash, BindChanRes(BindChanStatus.RGSS2_BIND_CHAN_OK))

    def _bind_reply(self, ctx: _ServerContext, seq: int, cb_hash: bytes, res: BindChanRes) -> AuthResult:
        while True:
            try:
                mic = ctx.gss.get_mic(BindChanMicInRes(seq, cb_hash, res).encode())
            except GssError as exc:
                return AuthDeny(AuthStat.RPCSEC_GSS_CTXPROBLEM, f"reply MIC: {exc}")
            try:
                body = BindChanVerfRes(res, mic).encode()
                break
            except XdrError:
                if not res.pref_list:
                    raise
                # Too many prefixes for 400 bytes: offer fewer (the most preferred first).
                res = BindChanRes(res.status, res.pref_list[:-1])
        assert len(body) <= MAX_AUTH_BYTES
        return AuthControlReply(OpaqueAuth(AuthFlavor.RPCSEC_GSS, body), b"")

    def _halve_lifetime(self, ctx: _ServerContext, now: float) -> None:
        """RFC 5403 §9: each failed BIND_CHANNEL cuts the remaining context lifetime in half."""
        with ctx.lock:
            ctx.bind_failures += 1
            expires = ctx.expires_at if ctx.expires_at is not None else now + DEFAULT_INDEFINITE_LIFETIME
            ctx.expires_at = now + max(0.0, expires - now) / 2
        log.warning("BIND_CHANNEL failure %d for %s: context lifetime halved",
                    ctx.bind_failures, ctx.principal)
