"""RPCSEC_GSS v1/v2 server flavor (RFC 2203 §5, RFC 5403 §3) behind :class:`ServerAuth`.

Sans-IO: :meth:`GssServerAuth.check_call` takes a decoded call, the connection it arrived on and
the time ``now`` and returns what the dispatcher (:class:`rpclatch.rpc.server.RpcDispatcher`)
should do; nothing here reads a clock or a socket. Contexts come from a
:class:`rpclatch.gss.provider.Provider`, channel bindings from the connection's
:class:`rpclatch.channel.Channel`; the wire structures are in :mod:`rpclatch.gss.wire`.
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
    HASHES_BY_OID,
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
from rpclatch.rpc.messages import (
    MAX_AUTH_BYTES,
    NULL_AUTH,
    PROC_NULL,
    AuthFlavor,
    AuthStat,
    CallMessage,
    OpaqueAuth,
    opaque_auth,
)
from rpclatch.rpc.server import LogLimiter
from rpclatch.xdr import XdrError

log = logging.getLogger(__name__)

# Enum members as module constants, compared with ``is``: these checks run on every call, and
# ``x == GssProc.RPCSEC_GSS_DATA`` would look the member up on the enum class each time.
_DATA = GssProc.RPCSEC_GSS_DATA
_DESTROY = GssProc.RPCSEC_GSS_DESTROY
_BIND = GssProc.RPCSEC_GSS_BIND_CHANNEL
_SVC_NONE = Service.NONE
_SVC_INTEGRITY = Service.INTEGRITY
_SVC_CHANNEL_PROT = Service.CHANNEL_PROT
_FLAVOR_GSS = int(AuthFlavor.RPCSEC_GSS)
_FLAVOR_NONE = int(AuthFlavor.AUTH_NONE)
_NEW = SeqVerdict.NEW
_INIT = GssProc.RPCSEC_GSS_INIT
_CONTINUE_INIT = GssProc.RPCSEC_GSS_CONTINUE_INIT


def _seal_clear(results: bytes) -> tuple[OpaqueAuth, bytes]:
    """channel_prot replies: the results as they are, AUTH_NONE verifier (RFC 5403 §3.4)."""
    return NULL_AUTH, results


_U32 = struct.Struct(">I")


def _signed_header(call: CallMessage) -> bytes:
    """The call header from xid through the credential (RFC 2203 §5.3.1): the bytes as received
    when the RPC layer kept them (``call.header``), else re-encoded."""
    return call.header or encode_call_header(
        call.xid, call.prog, call.vers, call.proc, call.cred.flavor, call.cred.body, call.rpcvers
    )


DEFAULT_SEQ_WINDOW = 128
#: Lifetime assumed for contexts whose mechanism reports "indefinite" (also what gets halved).
DEFAULT_INDEFINITE_LIFETIME = 8 * 3600.0
#: Half-open contexts (INIT answered CONTINUE_NEEDED) kept at once. Kerberos V5 needs none (its
#: acceptor completes in one step); multi-leg mechanisms need one per client mid-handshake.
DEFAULT_MAX_HALF_OPEN = 64
#: Seconds between two log lines of one kind that a flood of calls could trigger.
LOG_INTERVAL = 10.0
#: The kinds of log line a peer can trigger at will (keys of :attr:`GssServerAuth.log_limiters`).
LOG_KINDS = ("half-open", "too-weak", "bind-failure", "init-failure", "table-full", "principal-quota")

# Protection strength of a service (RFC 2203 §2: none < integrity < privacy).
_STRENGTH = {Service.NONE: 0, Service.INTEGRITY: 1, Service.PRIVACY: 2}


def _strength(service: Service, channel: Channel | None) -> int:
    """What a DATA call of ``service`` protects on a connection latched to ``channel``: channel_prot
    (RFC 5403 §3.4) gives what the channel gives -- integrity on any secure channel (RFC 5056 §2),
    privacy only on one that encrypts."""
    if service is _SVC_CHANNEL_PROT:
        return 2 if channel is not None and channel.confidential else 1
    return _STRENGTH[service]


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
    #: The connection whose entry of the bound-handle index holds this handle (under the table lock).
    indexed_conn: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class GssServerAuth(ServerAuth):
    """The RPCSEC_GSS server flavor (flavor 6).

    ``provider`` creates acceptor contexts. ``versions`` are the credential versions served;
    ``unsupported_version_stat`` is how others are refused (RFC 2203 §5.1 says AUTH_REJECTEDCRED;
    a v1-only Linux nfsd answers AUTH_BADCRED). ``seq_window`` is announced in INIT replies.
    ``max_contexts`` bounds the table of established contexts (least recently used contexts are
    evicted, their clients get CREDPROBLEM and refresh). ``max_contexts_per_principal`` bounds
    what one authenticated principal holds of it: its next context evicts its own oldest one, so
    a user who opens contexts in a loop churns only its own and cannot push other users' contexts
    out of the table (None: no per-principal bound). ``max_half_open`` bounds the separate
    table of half-open contexts (INIT answered CONTINUE_NEEDED, nobody authenticated yet): a new
    one drops the oldest half-open one, never an established context (RFC 2203 §5.2.2); 0 refuses
    multi-step establishment (Kerberos V5 needs none). ``init_cache_size`` bounds the cache of
    INIT/CONTINUE_INIT replies kept for retransmissions (RFC 2203 §5.2.3).
    ``prefixes`` limits the channel-binding prefixes accepted (None: whatever the connection's
    channel offers). ``hashes`` are the accepted channel-binding hashes, preferred first; SHA-256
    is mandatory. ``max_lifetime`` caps context lifetimes (seconds).
    ``max_requests_per_context`` caps the MIC-protected requests one context may make before it
    must be refreshed (CTXPROBLEM) -- RFC 5403 §9 mitigation (a): fewer DATA MICs per context
    means fewer forgery attempts against BIND_CHANNEL; None = no cap.
    ``min_service`` is the weakest service DATA calls may use (NONE: any; INTEGRITY: krb5i, krb5p
    and channel_prot; PRIVACY: krb5p, and channel_prot only on a channel that encrypts); weaker
    calls get MSG_DENIED / AUTH_ERROR / AUTH_TOOWEAK (RFC 5531 §9) and a rate-limited log line
    naming the floor. Control procedures (DESTROY, BIND_CHANNEL) are not subject to it.
    ``gss_channel_bindings=True`` additionally requires GSS-level channel bindings of the
    connection's channel at establishment (RFC 5554; off by default, RFC 5403 §5).

    Processing order for DATA/DESTROY/BIND_CHANNEL (RFC 2203 §5.3.3.1): credential version, proc
    and service -> handle -> expiry / MAXSEQ -> (DATA) the service floor -> replay window (drops
    before the MIC, §7.2.2 allows it) -> request MIC (nothing in the credential is trusted before
    this) -> mark the window -> service body. There is one path: :meth:`check_call` decodes the
    credential and hands every established-context call to :meth:`_established_call`. Where
    RFC 5403 §3.3 and §3.4 leave the choice open, :meth:`_bind_channel`, :meth:`_channel_prot`
    and :meth:`_garbage` say what this server does.

    Besides the tables above, what the network can make it hold or do is bounded too: the
    per-connection index of bound handles holds each context at most once, so it is never larger
    than the context table, and closing a connection visits only its own handles; log lines a
    flood could trigger (half-open eviction, calls below the service floor, failed BIND_CHANNELs
    -- a relay can forge one per request) are rate-limited, one
    :class:`~rpclatch.rpc.server.LogLimiter` per kind (:attr:`log_limiters`).
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
        max_contexts_per_principal: int | None = 1024,
        max_half_open: int = DEFAULT_MAX_HALF_OPEN,
        prefixes: Sequence[str] | None = None,
        hashes: Sequence[HashAlgorithm] = (SHA256, SHA1, SHA384, SHA512),
        max_lifetime: float | None = None,
        gss_channel_bindings: bool = False,
        init_cache_size: int = 256,
        max_requests_per_context: int | None = None,
        min_service: Service = Service.NONE,
        new_handle: Callable[[], bytes] = lambda: secrets.token_bytes(16),
    ) -> None:
        if SHA256 not in hashes:
            raise ValueError("SHA-256 is mandatory for channel binding hashes")
        if min_service not in _STRENGTH:
            raise ValueError(f"min_service must be NONE, INTEGRITY or PRIVACY, not {min_service!r}")
        if max_contexts < 1 or max_half_open < 0:
            raise ValueError("max_contexts must be >= 1 and max_half_open >= 0")
        if max_contexts_per_principal is not None and max_contexts_per_principal < 1:
            raise ValueError("max_contexts_per_principal must be >= 1 (or None)")
        self.provider = provider
        self.versions = frozenset(versions)
        self.unsupported_version_stat = unsupported_version_stat
        self.seq_window = seq_window
        self.max_contexts = max_contexts
        self.max_contexts_per_principal = max_contexts_per_principal
        self.max_half_open = max_half_open
        self.prefixes = None if prefixes is None else tuple(prefixes)
        self.hashes = tuple(hashes)
        self.max_lifetime = max_lifetime
        self.gss_channel_bindings = gss_channel_bindings
        self.min_service = Service(min_service)
        self._floor = _STRENGTH[self.min_service]  # 0: no floor (one falsy test per call)
        self._new_handle = new_handle
        self._contexts: OrderedDict[bytes, _ServerContext] = OrderedDict()
        self._half_open: OrderedDict[bytes, _ServerContext] = OrderedDict()
        #: principal -> its established contexts' handles, oldest first (under self._lock)
        self._by_principal: dict[str | None, OrderedDict[bytes, None]] = {}
        self._bound_by_conn: dict[int, set[bytes]] = {}
        self._init_cache: OrderedDict[bytes, AuthControlReply] = OrderedDict()
        self._init_cache_size = init_cache_size
        self.max_requests_per_context = max_requests_per_context
        self._lock = threading.Lock()
        #: One limiter per kind of peer-triggered log line (:data:`LOG_KINDS`): one line per
        #: :data:`LOG_INTERVAL`, then a count of the lines held back. Replaceable (tests: a clock).
        self.log_limiters = {kind: LogLimiter(burst=1, interval=LOG_INTERVAL) for kind in LOG_KINDS}
        self._log_lock = threading.Lock()  # LogLimiter is not thread-safe; calls come from threads

    def _log_limited(self, kind: str, level: int, msg: str, *args: object) -> None:
        with self._log_lock:
            self.log_limiters[kind].log(log, level, msg, *args)

    # -- introspection (tests, demos, CLI) ----------------------------------------------------------

    def context_count(self) -> int:
        """Established contexts in the table (half-open ones: :meth:`half_open_count`)."""
        with self._lock:
            return len(self._contexts)

    def half_open_count(self) -> int:
        with self._lock:
            return len(self._half_open)

    def bound_handles(self, conn_id: int) -> frozenset[bytes]:
        """The handles the bound-handle index lists for connection ``conn_id``."""
        with self._lock:
            return frozenset(self._bound_by_conn.get(conn_id, ()))

    def contexts(self) -> list[ContextInfo]:
        """Snapshots of every context: half-open ones first, then the established ones, least
        recently used first."""
        with self._lock:
            contexts = [*self._half_open.values(), *self._contexts.values()]
        out = []
        for c in contexts:
            with c.lock:
                b = c.binding
                out.append(
                    ContextInfo(
                        c.handle,
                        c.principal,
                        c.version,
                        c.established,
                        c.expires_at,
                        b.conn_id if b else None,
                        b.prefix if b else None,
                        c.bind_failures,
                        c.window.highest,
                    )
                )
        return out

    def drop_all_contexts(self) -> int:
        """Forget every context (an administrative revoke, or what a restart does); clients get
        RPCSEC_GSS_CREDPROBLEM and refresh. Returns how many established ones were dropped."""
        with self._lock:
            dropped = list(self._contexts.values())
            half_open = list(self._half_open.values())
            self._contexts.clear()
            self._by_principal.clear()
            self._half_open.clear()
            self._bound_by_conn.clear()
            self._init_cache.clear()
        for ctx in [*dropped, *half_open]:
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
        """The per-call entry (RFC 2203 §5.3.3.1): the credential (version, proc, service, handle
        layout), then INIT/CONTINUE_INIT to :meth:`_init` and every other call to
        :meth:`_established_call`."""
        try:
            version, proc, seq, service, handle = decode_cred_fields(call.cred.body)
        except UnsupportedVersion as exc:
            return AuthDeny(self.unsupported_version_stat, str(exc))
        except XdrError as exc:
            return AuthDeny(AuthStat.AUTH_BADCRED, f"malformed RPCSEC_GSS credential: {exc}")
        if version not in self.versions:
            return AuthDeny(self.unsupported_version_stat, f"RPCSEC_GSS version {version} not served")
        if proc is _INIT or proc is _CONTINUE_INIT:
            return self._init(call, _Cred(version, proc, seq, service, handle), conn, now)
        return self._established_call(call, conn, now, version, proc, seq, service, handle)

    def connection_closed(self, conn: ConnectionInfo) -> None:
        """RFC 5403 §3.4: a binding is valid only while its channel (this connection's) exists.
        Visits only the contexts the bound-handle index lists for ``conn``."""
        with self._lock:
            handles = self._bound_by_conn.pop(conn.conn_id, ())
            bound = []
            for handle in handles:
                ctx = self._contexts.get(handle)
                if ctx is not None and ctx.indexed_conn == conn.conn_id:
                    ctx.indexed_conn = None
                    bound.append(ctx)
        for ctx in bound:
            with ctx.lock:
                if ctx.binding is not None and ctx.binding.conn_id == conn.conn_id:
                    ctx.binding = None

    # -- context creation (RFC 2203 §5.2) -------------------------------------------------------------

    def _init(self, call: CallMessage, cred: _Cred, conn: ConnectionInfo, now: float) -> AuthResult:
        if call.proc != PROC_NULL:
            return AuthDeny(AuthStat.AUTH_BADCRED, "INIT must use the NULL procedure (RFC 2203 §5.2.1)")
        if call.verf.flavor != AuthFlavor.AUTH_NONE or call.verf.body:
            return AuthDeny(AuthStat.AUTH_BADVERF, "INIT verifier must be AUTH_NONE (RFC 2203 §5.2.1)")
        try:
            token = InitArg.decode(call.args).gss_token
        except XdrError as exc:
            return AuthGarbage(f"bad rpc_gss_init_arg: {exc}")
        # RFC 2203 §5.2.3: retransmissions must get the same answer; a second accept of the same
        # AP-REQ would fail the Kerberos replay cache.
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
        self._log_limited("init-failure", logging.INFO, "RPCSEC_GSS context creation failed: %s", why)
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
                found = self._half_open.get(cred.handle)
            if found is None or found.version != cred.version:
                return self._failed_init(GssMajor.GSS_S_NO_CONTEXT, 0, "CONTINUE_INIT for unknown handle")
            ctx = found
        try:
            out = ctx.gss.step(token)
        except GssError as exc:
            self._forget_half_open(ctx)
            ctx.gss.delete()
            return self._failed_init(exc.major, exc.minor, str(exc))
        if not ctx.gss.complete:
            if not self._remember_half_open(ctx):
                ctx.gss.delete()
                return self._failed_init(
                    GssMajor.GSS_S_FAILURE,
                    0,
                    "multi-step context establishment is disabled (max_half_open=0)",
                )
            return AuthControlReply(
                NULL_AUTH,
                InitRes(ctx.handle, GssMajor.GSS_S_CONTINUE_NEEDED, 0, self.seq_window, out or b"").encode(),
            )
        self._forget_half_open(ctx)
        lifetime = float(ctx.gss.lifetime) if ctx.gss.lifetime is not None else DEFAULT_INDEFINITE_LIFETIME
        if self.max_lifetime is not None:
            lifetime = min(lifetime, self.max_lifetime)
        ctx.expires_at = now + lifetime
        ctx.principal = ctx.gss.peer_name
        ctx.established = True
        try:
            verf = OpaqueAuth(AuthFlavor.RPCSEC_GSS, ctx.gss.get_mic(be32(self.seq_window)))
        except GssError as exc:
            ctx.gss.delete()
            return self._failed_init(exc.major, exc.minor, f"MIC of seq_window: {exc}")
        self._remember(ctx, now)
        log.debug("RPCSEC_GSS v%d context for %s established", ctx.version, ctx.principal)
        return AuthControlReply(
            verf, InitRes(ctx.handle, GssMajor.GSS_S_COMPLETE, 0, self.seq_window, out or b"").encode()
        )

    def _remember_half_open(self, ctx: _ServerContext) -> bool:
        """Keep a context that answered CONTINUE_NEEDED in the half-open table (at most
        ``max_half_open``; the oldest goes first). False if the table holds none at all."""
        if self.max_half_open == 0:
            return False
        evicted = []
        with self._lock:
            self._half_open[ctx.handle] = ctx
            self._half_open.move_to_end(ctx.handle)
            while len(self._half_open) > self.max_half_open:
                evicted.append(self._half_open.popitem(last=False)[1])
        for old in evicted:
            old.gss.delete()
        if evicted:
            self._log_limited(
                "half-open",
                logging.WARNING,
                "RPCSEC_GSS half-open contexts at their limit (%d): dropped the oldest (an INIT flood?)",
                self.max_half_open,
            )
        return True

    def _forget_half_open(self, ctx: _ServerContext) -> None:
        with self._lock:
            if self._half_open.get(ctx.handle) is ctx:
                del self._half_open[ctx.handle]

    def _remember(self, ctx: _ServerContext, now: float) -> None:
        # Changes to the table are made under self._lock. The per-call path of check_call reads
        # it without the lock (one atomic get and move_to_end each, under the GIL), so whatever
        # loops over the table in Python loops over a snapshot (list(...) is one atomic copy).
        evicted = []
        quota_hit = False
        lru_evicted: list[str | None] = []  # principals of the contexts the LRU evicted
        with self._lock:
            contexts = self._contexts
            own = self._by_principal.setdefault(ctx.principal, OrderedDict())
            quota = self.max_contexts_per_principal
            while quota is not None and len(own) >= quota:
                handle, _ = own.popitem(last=False)
                old = contexts.pop(handle)
                self._unindex(old)
                evicted.append(old)
                quota_hit = True
            contexts[ctx.handle] = ctx
            contexts.move_to_end(ctx.handle)
            own[ctx.handle] = None
            if len(contexts) > self.max_contexts:
                for h, c in list(contexts.items()):
                    if c.expires_at is not None and c.expires_at <= now:
                        del contexts[h]
                        self._unlist(c)
                        evicted.append(c)
            while len(contexts) > self.max_contexts:
                _, old = contexts.popitem(last=False)
                self._unlist(old)
                evicted.append(old)
                lru_evicted.append(old.principal)
        for old in evicted:
            old.gss.delete()
        if lru_evicted:
            self._log_limited(
                "table-full",
                logging.INFO,
                "RPCSEC_GSS context table full: evicted a context of %s",
                lru_evicted[-1],
            )
        if quota_hit:
            self._log_limited(
                "principal-quota",
                logging.INFO,
                "RPCSEC_GSS: %s holds its limit of %d contexts: dropped its oldest",
                ctx.principal,
                self.max_contexts_per_principal,
            )

    def _forget(self, handle: bytes) -> _ServerContext | None:
        with self._lock:
            ctx = self._contexts.pop(handle, None)
            if ctx is not None:
                self._unlist(ctx)
            return ctx

    def _unlist(self, ctx: _ServerContext) -> None:
        """Drop a context just taken out of the table from the per-principal list and the
        bound-handle index (caller holds self._lock)."""
        own = self._by_principal.get(ctx.principal)
        if own is not None:
            own.pop(ctx.handle, None)
            if not own:
                del self._by_principal[ctx.principal]
        self._unindex(ctx)

    def _unindex(self, ctx: _ServerContext) -> None:
        """Drop ``ctx`` from the bound-handle index (caller holds self._lock)."""
        conn_id = ctx.indexed_conn
        if conn_id is not None:
            ctx.indexed_conn = None
            handles = self._bound_by_conn.get(conn_id)
            if handles is not None:
                handles.discard(ctx.handle)
                if not handles:
                    del self._bound_by_conn[conn_id]

    def _index(self, ctx: _ServerContext, conn_id: int) -> None:
        """List ``ctx`` under ``conn_id`` in the bound-handle index (each context under one
        connection at most, and only while it is in the table)."""
        with self._lock:
            if self._contexts.get(ctx.handle) is not ctx:
                return  # forgotten meanwhile: nothing to index
            self._unindex(ctx)
            self._bound_by_conn.setdefault(conn_id, set()).add(ctx.handle)
            ctx.indexed_conn = conn_id

    # -- established contexts (RFC 2203 §5.3, §5.4; RFC 5403 §3.3, §3.4) ------------------------------

    def _established_call(
        self,
        call: CallMessage,
        conn: ConnectionInfo,
        now: float,
        version: int,
        proc: GssProc,
        seq: int,
        service: Service,
        handle: bytes,
    ) -> AuthResult:
        """Every DATA, DESTROY and BIND_CHANNEL call, in the order of the class docstring: enum
        identity tests, the table read without its lock (see :meth:`_remember`), the context's
        lock taken with acquire/release, the header MIC over the header bytes as received.

        ``min_service``: DATA calls weaker than the floor (none < integrity < privacy;
        channel_prot counts as integrity, and as privacy on a channel that encrypts) are refused
        with AUTH_TOOWEAK (RFC 5531 §9) before the MIC is checked."""
        if proc is not _DATA:
            if proc is _BIND and (version != RPCSEC_GSS_VERS_2 or service is not _SVC_NONE):
                return AuthDeny(AuthStat.AUTH_BADCRED, "BIND_CHANNEL needs version 2 and service none")
            if proc is _DESTROY and service is _SVC_CHANNEL_PROT:
                return AuthDeny(AuthStat.AUTH_BADCRED, "DESTROY needs a MIC-carrying service")
        if service is _SVC_CHANNEL_PROT and version != RPCSEC_GSS_VERS_2:
            return AuthDeny(AuthStat.AUTH_BADCRED, "channel_prot is an RPCSEC_GSS v2 service")
        if proc is not _DATA and call.proc != PROC_NULL:
            return AuthDeny(AuthStat.AUTH_BADCRED, f"{proc.name} must use the NULL procedure")
        # The table without its lock: get and move_to_end are each one atomic operation under the
        # GIL; a context removed in between is unknown, as it is a moment later.
        contexts = self._contexts
        ctx = contexts.get(handle)
        if ctx is not None:
            try:
                contexts.move_to_end(handle)  # least recently used first
            except KeyError:
                ctx = None
        if ctx is None:
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
        if self._floor and proc is _DATA and _strength(service, conn.channel) < self._floor:
            return self._too_weak(service, conn)
        if service is _SVC_CHANNEL_PROT:
            return self._channel_prot(call, seq, ctx, conn)
        verf = call.verf
        if verf.flavor != _FLAVOR_GSS:
            return AuthDeny(AuthStat.RPCSEC_GSS_CREDPROBLEM, "verifier is not RPCSEC_GSS")
        if proc is _BIND:
            return self._bind_channel(call, seq, ctx, conn, now)
        problem = self._verify_fresh(ctx, seq, call.header or _signed_header(call), verf.body, count=True)
        if problem is not None:
            if isinstance(problem, SeqVerdict):
                return AuthDrop(f"seq_num {seq}: {problem.value}")
            return AuthDeny(AuthStat.RPCSEC_GSS_CREDPROBLEM, f"header MIC: {problem}")
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
    def _verify_fresh(
        ctx: _ServerContext, seq: int, signed: bytes, mic: bytes, *, count: bool
    ) -> SeqVerdict | GssError | None:
        """The replay window around a request MIC (RFC 2203 §5.3.3.1), for DATA, DESTROY and
        BIND_CHANNEL: a seq_num seen before or below the window is dropped before the MIC (§7.2.2
        allows it); only a request whose MIC verifies marks its seq_num (and, with ``count``, counts
        towards ``max_requests_per_context``). Check, verify and mark happen under the context's
        lock, so a duplicate on another thread cannot slip in between. None: fresh and authentic;
        else the window's verdict or the MIC's error."""
        ctx_lock = ctx.lock
        ctx_lock.acquire()
        try:
            window = ctx.window
            verdict = window.check(seq)
            if verdict is not _NEW:
                return verdict
            try:
                ctx.gss.verify_mic(signed, mic)
            except GssError as exc:
                return exc
            window.mark(seq)
            if count:
                ctx.data_requests += 1
            return None
        finally:
            ctx_lock.release()

    def _too_weak(self, service: Service, conn: ConnectionInfo) -> AuthDeny:
        """RFC 5531 §9 AUTH_TOOWEAK for a DATA call below ``min_service``."""
        floor = f"{self.min_service.sec_name} ({self.min_service.rfc_name})"
        what = service.name.lower() + (
            " on a channel that does not encrypt" if service is _SVC_CHANNEL_PROT else ""
        )
        self._log_limited(
            "too-weak",
            logging.WARNING,
            "RPCSEC_GSS call with service %s on connection %d refused: this server's "
            "floor is %s (AUTH_TOOWEAK)",
            what,
            conn.conn_id,
            floor,
        )
        return AuthDeny(AuthStat.AUTH_TOOWEAK, f"service {what} is below the floor {floor}")

    @staticmethod
    def _garbage(gss: GssContext, seq: int, reason: str) -> AuthResult:
        """GARBAGE_ARGS for an authenticated request (integrity checksum or unwrap failed, body
        seq_num != credential seq_num, arguments to BIND_CHANNEL): the verifier is MIC(seq_num), as
        on a SUCCESS reply (RFC 2203 §5.3.3.2; Linux svcauth_gss does the same), so the client can
        check the verifier of every accepted reply; if GetMIC fails, CTXPROBLEM (§5.3.3.4.1)."""
        try:
            mic = gss.get_mic(_U32.pack(seq))
            return AuthGarbage(reason, opaque_auth(_FLAVOR_GSS, mic))
        except (GssError, XdrError) as exc:
            return AuthDeny(AuthStat.RPCSEC_GSS_CTXPROBLEM, f"reply verifier MIC: {exc} ({reason})")

    def _data(self, call: CallMessage, seq: int, service: Service, ctx: _ServerContext) -> AuthResult:
        """The body of an authenticated DATA call (RFC 2203 §5.3.2.2, §5.3.2.3, §5.3.3.1)."""
        gss = ctx.gss
        seq_bytes = _U32.pack(seq)
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
                return self._garbage(
                    gss, seq, f"{'integrity' if service is _SVC_INTEGRITY else 'privacy'} body: {exc}"
                )
            if len(inner) < 4:
                return self._garbage(gss, seq, "rpc_gss_data_t shorter than its seq_num")
            if not encrypted:
                return self._garbage(gss, seq, "privacy body was not encrypted")
            if inner[:4] != seq_bytes:  # RFC 2203 §5.3.3.1
                return self._garbage(
                    gss, seq, f"body seq_num {_U32.unpack_from(inner)[0]} != credential seq_num {seq}"
                )
            args = inner[4:]

        # RFC 2203 §5.3.3.4.1: if the reply verifier's GSS_GetMIC fails, answer CTXPROBLEM -- so
        # compute it now, before the procedure runs (it depends on the seq_num only).
        try:
            mic = gss.get_mic(seq_bytes)
            verf = (
                opaque_auth(_FLAVOR_GSS, mic) if len(mic) <= MAX_AUTH_BYTES else OpaqueAuth(_FLAVOR_GSS, mic)
            )  # XdrError: too long
        except (GssError, XdrError) as exc:
            return AuthDeny(AuthStat.RPCSEC_GSS_CTXPROBLEM, f"reply verifier MIC: {exc}")

        if service is _SVC_NONE:

            def seal(results: bytes) -> tuple[OpaqueAuth, bytes]:
                return verf, results
        elif service is _SVC_INTEGRITY:

            def seal(results: bytes) -> tuple[OpaqueAuth, bytes]:
                """RFC 2203 §5.3.3.2. A GssError here means no reply may be sent (RFC 2203
                §5.3.3.4.1; the dispatcher sends none)."""
                inner = seq_bytes + results
                return verf, encode_integ(inner, gss.get_mic(inner))
        else:

            def seal(results: bytes) -> tuple[OpaqueAuth, bytes]:
                """RFC 2203 §5.3.3.2; a GssError means no reply (§5.3.3.4.4)."""
                return verf, encode_opaque(gss.wrap(seq_bytes + results, True))

        return AuthAccept(args, ctx.principal, seal)

    @staticmethod
    def _channel_prot(call: CallMessage, seq: int, ctx: _ServerContext, conn: ConnectionInfo) -> AuthResult:
        """RFC 5403 §3.4: valid only on a bound v2 handle, on the bound connection, while its
        channel exists; AUTH_NONE verifiers both ways. (DESTROY and BIND_CHANNEL never get
        here: both are refused with channel_prot before.)

        Where the RFC is silent: channel_prot on an unbound handle, on another connection, on a
        broken channel or after expiry is answered RPCSEC_GSS_CTXPROBLEM (on a v1 handle:
        AUTH_BADCRED, before this); channel_prot sequence numbers still go through the window
        (duplicates are dropped)."""
        verf = call.verf
        if verf.flavor != _FLAVOR_NONE or verf.body:
            return AuthDeny(AuthStat.AUTH_BADVERF, "channel_prot requests carry an AUTH_NONE verifier")
        binding = ctx.binding
        if binding is None:
            return AuthDeny(AuthStat.RPCSEC_GSS_CTXPROBLEM, "channel_prot on an unbound handle")
        if binding.conn_id != conn.conn_id or conn.channel is not binding.channel:
            return AuthDeny(AuthStat.RPCSEC_GSS_CTXPROBLEM, "channel_prot on a connection not bound")
        ctx_lock = ctx.lock
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

    def _bind_channel(
        self, call: CallMessage, seq: int, ctx: _ServerContext, conn: ConnectionInfo, now: float
    ) -> AuthResult:
        """RFC 5403 §3.3, processed like DATA ("seq_num ... as if gss_proc were
        RPCSEC_GSS_DATA"): a replayed or too old seq_num is dropped silently (RFC 2203 §5.3.3.1);
        the request MIC is verified before anything is answered; a verified request spends its
        seq_num and only then gets an answer carrying a MIC (OK, PREF_NOTSUPP, HASH_NOTSUPP). An
        unauthenticated PREF_NOTSUPP/HASH_NOTSUPP would be a replayable MIC oracle: a MIC over
        ``seq_num || ...`` is also a valid krb5i reply checksum for that seq_num.

        The request MIC can be checked whenever this connection's channel has bindings under the
        requested prefix and the hash OID is one we implement (even if policy refuses that prefix
        or hash: the refusal then follows, signed). A MIC that does not verify, or one we cannot
        check (no channel, a prefix the channel does not have, an unknown hash), is answered like
        a failed request MIC -- MSG_DENIED / AUTH_ERROR / RPCSEC_GSS_CREDPROBLEM (RFC 2203
        §5.3.3.4.2) -- and halves the context's remaining lifetime (RFC 5403 §9 rollback
        mitigation). One-sided latching (no channel at the server) is indistinguishable from a man
        in the middle that stripped the server's side (RFC 5403 §2), so it is a failed binding too.
        For PREF_NOTSUPP the reply MIC covers an empty hash, for HASH_NOTSUPP the hash of the
        requested prefix's bindings under ``rbcr_oid_list[0]``."""
        try:
            verf = BindChanVerfArgs.decode(call.verf.body)
            prefix = verf.chan_bind_prefix.decode("ascii")
        except (XdrError, UnicodeDecodeError) as exc:
            return AuthDeny(AuthStat.AUTH_BADVERF, f"bad rgss2_bind_chan_verf_args: {exc}")
        # A replay is dropped before anything else (as for DATA, RFC 2203 §7.2.2), in particular
        # before a MIC that cannot be checked halves the lifetime; _verify_fresh checks it again.
        with ctx.lock:
            verdict = ctx.window.check(seq)
        if verdict is not _NEW:
            return AuthDrop(f"BIND_CHANNEL seq_num {seq}: {verdict.value}")
        channel: Channel | None = conn.channel
        known = channel.bindings() if channel is not None and channel.is_up() else {}
        data = known.get(prefix)
        requested = HASHES_BY_OID.get(normalize_oid(verf.chan_bind_oid_hash))
        if channel is None or data is None or requested is None:
            self._halve_lifetime(ctx, now)
            why = (
                "no secure channel on this connection"
                if not known
                else f"the channel has no bindings under prefix {prefix!r}"
                if data is None
                else "the hash OID names no algorithm this server implements"
            )
            return AuthDeny(AuthStat.RPCSEC_GSS_CREDPROBLEM, f"BIND_CHANNEL MIC cannot be checked: {why}")
        cb = channel_bindings_bytes(prefix, data)
        cb_hash = requested.digest(cb)
        micin = _signed_header(call) + BindChanMicInArgs(cb_hash).encode()
        problem = self._verify_fresh(ctx, seq, micin, verf.chan_mic, count=False)
        if isinstance(problem, SeqVerdict):
            return AuthDrop(f"BIND_CHANNEL seq_num {seq}: {problem.value}")
        if problem is not None:
            self._halve_lifetime(ctx, now)
            return AuthDeny(
                AuthStat.RPCSEC_GSS_CREDPROBLEM, f"BIND_CHANNEL MIC (or bindings) wrong: {problem}"
            )
        # Authentic and fresh from here on: every answer is signed.
        if call.args:
            return self._garbage(ctx.gss, seq, "BIND_CHANNEL takes no arguments")
        accepted = [p for p in known if self.prefixes is None or p in self.prefixes]
        if prefix not in accepted:
            res = BindChanRes(
                BindChanStatus.RGSS2_BIND_CHAN_PREF_NOTSUPP, tuple(p.encode() for p in accepted)
            )
            return self._bind_reply(ctx, seq, b"", res)
        if requested not in self.hashes:
            res = BindChanRes(
                BindChanStatus.RGSS2_BIND_CHAN_HASH_NOTSUPP, (), tuple(h.oid for h in self.hashes)
            )
            return self._bind_reply(ctx, seq, self.hashes[0].digest(cb), res)
        binding = _Binding(conn.conn_id, channel, prefix, requested)
        with ctx.lock:
            ctx.binding = binding
        self._index(ctx, conn.conn_id)

        def forget(_: Channel) -> None:
            with ctx.lock:
                if ctx.binding is binding:
                    ctx.binding = None

        channel.on_break(forget)
        log.info(
            "RPCSEC_GSS handle of %s bound to channel %s on connection %d",
            ctx.principal,
            prefix,
            conn.conn_id,
        )
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
            failures = ctx.bind_failures
        self._log_limited(
            "bind-failure",
            logging.WARNING,
            "BIND_CHANNEL failure %d for %s: context lifetime halved",
            failures,
            ctx.principal,
        )
