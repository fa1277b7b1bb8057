"""RPCSEC_GSS v1/v2 client flavor (RFC 2203 §5, RFC 5403 §3-§4, §7) behind :class:`ClientAuth`.

Per-call work (:meth:`GssClientAuth.prepare_call` / :meth:`GssClientAuth.accept_reply`) is
sans-IO; the RPC client cores of :mod:`rpclatch.rpc` call it for every transmission. The control
exchanges that need round trips -- context creation, BIND_CHANNEL, DESTROY and the transparent
refresh after CREDPROBLEM/CTXPROBLEM -- are ``async`` methods that take an :data:`RpcCall`.
Contexts come from a :class:`rpclatch.gss.provider.Provider`; the channel bound to is a
:class:`rpclatch.channel.Channel`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from rpclatch.gss.channel import Channel
from rpclatch.gss.errors import (
    BindFailureReason,
    ChannelBindingFailed,
    ContextInitFailed,
    GssError,
    GssMajor,
    RpcGssLocalError,
    VersionNotSupported,
)
from rpclatch.gss.provider import GssContext, Provider
from rpclatch.gss.wire import (
    CRED_START,
    HASHES_BY_OID,
    MAXSEQ,
    RPCSEC_GSS_VERS_1,
    RPCSEC_GSS_VERS_2,
    SHA256,
    BindChanMicInArgs,
    BindChanMicInRes,
    BindChanStatus,
    BindChanVerfArgs,
    BindChanVerfRes,
    GssCred,
    GssProc,
    HashAlgorithm,
    InitArg,
    InitRes,
    Service,
    be32,
    bind_chan_request_problem,
    decode_integ,
    decode_priv,
    encode_call_header,
    encode_cred_tail,
    encode_integ,
    encode_opaque,
    normalize_oid,
)
from rpclatch.rpc.auth import ClientAuth, PreparedCall
from rpclatch.rpc.errors import AuthVerifierError, RpcAcceptError, RpcAuthError
from rpclatch.rpc.messages import (
    MAX_AUTH_BYTES,
    NULL_AUTH,
    AcceptedReply,
    AcceptStat,
    AuthFlavor,
    AuthStat,
    CallMessage,
    OpaqueAuth,
    opaque_auth,
)
from rpclatch.xdr import XdrError

log = logging.getLogger(__name__)

#: ``rpc_call(auth, proc, args) -> results`` for the target program and version: a coroutine
#: function that sends one call through any RPC client with ``auth`` as the flavor and returns the
#: unwrapped results or raises :class:`rpclatch.rpc.errors.RpcError`. With rpclatch's asyncio
#: client that is e.g. ``lambda auth, proc, args: client.call(PROG, VERS, proc, args, auth=auth)``
#: (:func:`rpc_call_via` builds it).
RpcCall = Callable[[ClientAuth, int, bytes], Awaitable[bytes]]

# Enum members as constants for the per-call path (``is`` instead of an enum attribute lookup).
_DATA = GssProc.RPCSEC_GSS_DATA
_SVC_NONE = Service.NONE
_SVC_INTEGRITY = Service.INTEGRITY
_SVC_PRIVACY = Service.PRIVACY
_SVC_CHANNEL_PROT = Service.CHANNEL_PROT
_FLAVOR_GSS = int(AuthFlavor.RPCSEC_GSS)
_FLAVOR_NONE = int(AuthFlavor.AUTH_NONE)
_ACCEPT_SUCCESS = AcceptStat.SUCCESS

_REFRESH_STATS = frozenset({AuthStat.RPCSEC_GSS_CREDPROBLEM, AuthStat.RPCSEC_GSS_CTXPROBLEM})
_V2_REFUSED = frozenset({AuthStat.AUTH_REJECTEDCRED, AuthStat.AUTH_BADCRED})
_MAX_INIT_ROUNDS = 8


class VersionPolicy(Enum):
    """Which RPCSEC_GSS versions :meth:`GssClientAuth.establish` may use."""

    PREFER_V2 = "prefer-v2"  # v2, and v1 on a fresh context if the server refuses v2
    REQUIRE_V2 = "require-v2"  # channel binding is mandatory: never fall back
    V1_ONLY = "v1-only"


@dataclass(eq=False)
class _Context:
    version: int
    handle: bytes
    gss: GssContext
    seq_window: int
    #: seq_num source; next() on an itertools.count is atomic under the GIL (no lock needed).
    seqs: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    stale: bool = False
    #: a v1 context made because the v2 INIT was refused: the (unauthenticated) MSG_DENIED stat
    v2_refused: AuthStat | None = None
    #: per service, the end of this context's credentials: service and handle (RFC 2203 §5)
    cred_tails: dict[Service, bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.cred_tails = {service: encode_cred_tail(service, self.handle) for service in Service}

    def next_credential(self, gss_proc: GssProc, service: Service) -> tuple[int, OpaqueAuth]:
        """A fresh seq_num -- one for every transmission, retransmissions included (RFC 2203
        §5.3.1) -- and the credential carrying it (RFC 2203 §5)."""
        seq = next(self.seqs)
        if seq >= MAXSEQ:
            self.stale = True
            raise RpcGssLocalError("sequence numbers exhausted: refresh the context")
        body = CRED_START.pack(self.version, gss_proc, seq) + self.cred_tails[service]
        return seq, opaque_auth(_FLAVOR_GSS, body)  # at most 20 + MAX_HANDLE bytes

    def check_reply_verifier(self, seq: int, verf: OpaqueAuth, what: str) -> None:
        """RFC 2203 §5.3.3.2: the verifier of a reply to the call with ``seq`` -- SUCCESS or an
        accepted error, DATA, DESTROY (§5.4) or BIND_CHANNEL -- is an RPCSEC_GSS MIC(seq_num);
        AuthVerifierError otherwise (``what`` names the call in the message)."""
        if verf.flavor != _FLAVOR_GSS:
            raise AuthVerifierError(f"{what} reply verifier is not RPCSEC_GSS")
        try:
            self.gss.verify_mic(_U32.pack(seq), verf.body)
        except GssError as exc:
            raise AuthVerifierError(f"{what} reply verifier MIC(seq_num) does not verify: {exc}") from exc

    def verifier(self, xid: int, prog: int, vers: int, proc: int, cred: OpaqueAuth) -> OpaqueAuth:
        """The call verifier (RFC 2203 §5.3.1): a MIC over the call header from xid through the
        credential. A MIC longer than an opaque_auth allows (RFC 5531 §8.2) raises XdrError."""
        mic = self.gss.get_mic(encode_call_header(xid, prog, vers, proc, _FLAVOR_GSS, cred.body))
        return opaque_auth(_FLAVOR_GSS, mic) if len(mic) <= MAX_AUTH_BYTES else OpaqueAuth(_FLAVOR_GSS, mic)


#: Per-call client state in ``PreparedCall.state``: (context, seq_num, service).
_CallState = tuple[_Context, int, Service]

_U32 = struct.Struct(">I")


def _protect_args(gss: GssContext, seq: int, service: Service, args: bytes) -> bytes:
    """The call body for ``service`` (RFC 2203 §5.3.2): the arguments as they are for none; for
    integrity and privacy ``rpc_gss_data_t`` (seq_num, arguments) with its MIC, or wrapped."""
    if service is _SVC_INTEGRITY:
        inner = _U32.pack(seq) + args
        return encode_integ(inner, gss.get_mic(inner))
    if service is _SVC_PRIVACY:
        return encode_opaque(gss.wrap(_U32.pack(seq) + args, True))
    return args


def _unprotect_results(gss: GssContext, seq: int, service: Service, body: bytes) -> bytes:
    """The results in a SUCCESS reply body of ``service`` (RFC 2203 §5.3.3.2): the body as it is
    for none; for integrity and privacy the ``rpc_gss_data_t`` checked (MIC, or unwrapped and
    encrypted) and its seq_num equal to the request's (§5.3.3.1)."""
    if service is _SVC_NONE:
        return body
    try:
        if service is _SVC_INTEGRITY:
            databody, checksum = decode_integ(body)
            gss.verify_mic(databody, checksum)
        else:
            databody, encrypted = gss.unwrap(decode_priv(body))
            if not encrypted:
                raise AuthVerifierError("privacy reply was not encrypted")
    except (GssError, XdrError) as exc:
        raise AuthVerifierError(f"reply body does not check: {exc}") from exc
    if len(databody) < 4:
        raise AuthVerifierError("reply body does not check: rpc_gss_data_t shorter than its seq_num")
    body_seq = _U32.unpack_from(databody)[0]
    if body_seq != seq:
        raise AuthVerifierError(f"reply body seq_num {body_seq} != request seq_num {seq}")
    return databody[4:]


class GssClientAuth(ClientAuth):
    """The RPCSEC_GSS client flavor for one principal talking to one target service.

    ``provider`` creates initiator contexts (e.g. ``GssapiProvider(ccache=...)``); ``target`` is the
    host-based service name (``nfs@server``); ``service`` the requested protection for DATA calls
    (``Service.NONE`` / ``INTEGRITY`` / ``PRIVACY``, i.e. krb5 / krb5i / krb5p); ``versions`` the
    version policy. ``gss_channel_bindings`` optionally passes GSS-level channel bindings at
    establishment (RFC 5554; RFC 5403 §5 advises against it for interoperability).

    :meth:`establish` creates the context, :meth:`bind_channel` binds it to a secure channel,
    :meth:`call` makes a call with transparent refresh, :meth:`destroy` ends the context. After
    :meth:`bind_channel` succeeded, calls go out as rpc_gss_svc_channel_prot with AUTH_NONE
    verifiers (RFC 5403 §3.4) while the channel is up; privacy requests are mapped only if the
    channel is confidential (RFC 5403 §7). If the server refuses channel_prot (e.g. the channel
    broke), the binding is dropped and the call is resent once with the requested service.
    """

    flavor = AuthFlavor.RPCSEC_GSS

    def __init__(
        self,
        provider: Provider,
        target: str,
        *,
        service: Service = Service.INTEGRITY,
        versions: VersionPolicy = VersionPolicy.PREFER_V2,
        gss_channel_bindings: bytes | None = None,
    ) -> None:
        if service == Service.CHANNEL_PROT:
            raise ValueError("request NONE/INTEGRITY/PRIVACY; channel_prot is chosen after bind_channel()")
        self.provider = provider
        self.target = target
        self.service = Service(service)  # a member: the per-call path compares with `is`
        self.versions = versions
        self.gss_channel_bindings = gss_channel_bindings
        self._ctx: _Context | None = None
        self._channel: Channel | None = None  # bound channel (RFC 5403 §3.3 succeeded)
        self._refreshing: asyncio.Future[None] | None = None
        self._lock = threading.Lock()

    # -- state ------------------------------------------------------------------------------------------

    @property
    def established(self) -> bool:
        return self._ctx is not None and not self._ctx.stale

    @property
    def version(self) -> int | None:
        return None if self._ctx is None else self._ctx.version

    @property
    def handle(self) -> bytes | None:
        return None if self._ctx is None else self._ctx.handle

    @property
    def seq_window(self) -> int | None:
        return None if self._ctx is None else self._ctx.seq_window

    @property
    def gss_context(self) -> GssContext | None:
        """The GSS context of the current RPCSEC_GSS context (benchmarks and tests), or None."""
        return None if self._ctx is None else self._ctx.gss

    @property
    def bound_channel(self) -> Channel | None:
        return self._channel

    def effective_service(self) -> Service:
        """The service the next DATA call will use (channel_prot when bound and allowed)."""
        channel = self._channel
        if (
            channel is not None
            and channel.is_up()
            and (self.service is not _SVC_PRIVACY or channel.confidential)
        ):
            return _SVC_CHANNEL_PROT
        return self.service

    def _current(self) -> _Context:
        ctx = self._ctx
        if ctx is None:
            raise RpcGssLocalError("RPCSEC_GSS context not established: await establish() first")
        return ctx

    # -- context creation (RFC 2203 §5.2, RFC 5403 §4) ------------------------------------------------

    async def establish(self, rpc_call: RpcCall) -> None:
        """Create the context: v2 first (per policy), v1 on a fresh context if v2 is refused.

        Version negotiation (RFC 5403 §4): AUTH_REJECTEDCRED (the RFC) or AUTH_BADCRED (Linux) in
        answer to the v2 INIT means "no v2", and a *fresh* v1 context is created unless the policy
        requires v2. A handle is only ever used with the version that created it. The refusal is a
        MSG_DENIED, which nothing authenticates, so the v1 context remembers it: binding it later
        fails with ``V1_FALLBACK_ON_BINDABLE_CHANNEL``, not as a genuine "cannot bind" (RFC 5403
        §9)."""
        order = {
            VersionPolicy.PREFER_V2: (RPCSEC_GSS_VERS_2, RPCSEC_GSS_VERS_1),
            VersionPolicy.REQUIRE_V2: (RPCSEC_GSS_VERS_2,),
            VersionPolicy.V1_ONLY: (RPCSEC_GSS_VERS_1,),
        }[self.versions]
        refused: AuthStat | None = None
        for version in order:
            try:
                ctx = await self._create(rpc_call, version)
            except RpcAuthError as exc:
                if version == RPCSEC_GSS_VERS_2 and exc.stat in _V2_REFUSED:
                    if self.versions is VersionPolicy.REQUIRE_V2:
                        raise VersionNotSupported(
                            f"server refused RPCSEC_GSS v2 ({exc.stat.name}) and policy requires "
                            "channel binding; not falling back to v1"
                        ) from exc
                    # A MSG_DENIED is not authenticated (a relay can forge it, RFC 5403 §9): the
                    # fallback is remembered so that binding this context reports it as such.
                    log.info("server refused RPCSEC_GSS v2 (%s): using v1 on a fresh context", exc.stat.name)
                    refused = exc.stat
                    continue
                raise
            ctx.v2_refused = refused
            self._install(ctx)
            return
        raise VersionNotSupported("server refused every RPCSEC_GSS version tried")

    def _install(self, ctx: _Context) -> None:
        # The replaced GSS context is not deleted here: replies to calls still in flight with it
        # must verify; it is released when the last of them is gone.
        with self._lock:
            self._ctx = ctx
            self._channel = None

    async def _create(self, rpc_call: RpcCall, version: int) -> _Context:
        gss = self.provider.initiate(self.target, channel_bindings=self.gss_channel_bindings)
        try:
            token = gss.step(None) or b""
            handle = b""
            proc = GssProc.RPCSEC_GSS_INIT
            for _ in range(_MAX_INIT_ROUNDS):
                init = _InitAuth(version, proc, handle, self.service)
                results = await rpc_call(init, 0, InitArg(token).encode())
                try:
                    res = InitRes.decode(results)
                except XdrError as exc:
                    raise AuthVerifierError(f"malformed rpc_gss_init_res: {exc}") from exc
                if res.gss_major not in (GssMajor.GSS_S_COMPLETE, GssMajor.GSS_S_CONTINUE_NEEDED):
                    raise ContextInitFailed(res.gss_major, res.gss_minor)
                out = gss.step(res.gss_token) if not gss.complete and res.gss_token else None
                if res.gss_major == GssMajor.GSS_S_CONTINUE_NEEDED:
                    if not out:
                        raise ContextInitFailed(GssMajor.GSS_S_DEFECTIVE_TOKEN, 0)
                    handle, token, proc = res.handle, out, GssProc.RPCSEC_GSS_CONTINUE_INIT
                    continue
                if not gss.complete or not res.handle:
                    raise ContextInitFailed(GssMajor.GSS_S_DEFECTIVE_TOKEN, 0)
                # RFC 2203 §5.2.3.1: the verifier is MIC(seq_window) once complete.
                verf = init.reply_verf
                if verf is None or verf.flavor != AuthFlavor.RPCSEC_GSS:
                    raise AuthVerifierError("INIT reply verifier is not an RPCSEC_GSS MIC")
                try:
                    gss.verify_mic(be32(res.seq_window), verf.body)
                except GssError as exc:
                    raise AuthVerifierError(f"INIT reply MIC(seq_window) does not verify: {exc}") from exc
                if res.seq_window == 0:
                    raise AuthVerifierError("server announced a seq_window of 0")
                return _Context(version, res.handle, gss, res.seq_window)
            raise ContextInitFailed(GssMajor.GSS_S_FAILURE, 0)
        except BaseException:
            gss.delete()
            raise

    async def refresh(self, rpc_call: RpcCall) -> None:
        """Replace the context with a fresh one of the same version (RFC 2203 §5.3.3.3) and bind it
        again to the channel that was bound, if that channel is still up."""
        old = self._ctx
        channel = self._channel
        version = old.version if old is not None else None
        if old is not None and old.stale:
            # Best effort: a context we stopped trusting (e.g. a forged BIND_CHANNEL reply) may
            # still be bound on the server; tell it to forget the context.
            try:
                await rpc_call(_DestroyAuth(self, old), 0, b"")
            except Exception as exc:  # the server may already have dropped it; refresh anyway
                log.debug("DESTROY of the stale context failed: %s", exc)
        if version is None:
            await self.establish(rpc_call)
        else:
            try:
                fresh = await self._create(rpc_call, version)
                fresh.v2_refused = old.v2_refused if old is not None else None
                self._install(fresh)
            except RpcAuthError as exc:
                if exc.stat not in _V2_REFUSED:
                    raise
                await self.establish(rpc_call)
        if channel is not None and channel.is_up() and self.version == RPCSEC_GSS_VERS_2:
            try:
                await self.bind_channel(rpc_call, channel)
            except ChannelBindingFailed as exc:
                log.warning("re-binding after refresh failed (%s): using %s", exc, self.service.name)

    async def call(self, rpc_call: RpcCall, proc: int, args: bytes) -> bytes:
        """One call with transparent refresh: on CREDPROBLEM/CTXPROBLEM the context is recreated
        once and the call resent (with new xid and seq_num)."""
        if self._ctx is None:
            await self.establish(rpc_call)
        elif self._ctx.stale:
            await self.refresh(rpc_call)
        before = self._ctx
        try:
            return await rpc_call(self, proc, args)
        except RpcAuthError as exc:
            if exc.stat not in _REFRESH_STATS:
                raise
            if self._ctx is before:
                log.info("server answered %s: refreshing the RPCSEC_GSS context", exc.stat.name)
                await self._refresh_once(rpc_call)
            return await rpc_call(self, proc, args)

    async def _refresh_once(self, rpc_call: RpcCall) -> None:
        """Concurrent callers that hit CREDPROBLEM/CTXPROBLEM share one refresh."""
        pending = self._refreshing
        if pending is not None:
            await asyncio.shield(pending)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # driven without an event loop: calls cannot overlap anyway
            await self.refresh(rpc_call)
            return
        self._refreshing = done = loop.create_future()
        try:
            await self.refresh(rpc_call)
            done.set_result(None)
        except Exception as exc:
            done.set_exception(exc)
            done.exception()  # marked retrieved: the waiters re-raise it themselves
            raise
        except BaseException:
            done.cancel()
            raise
        finally:
            self._refreshing = None

    # -- RPCSEC_GSS_BIND_CHANNEL (RFC 5403 §3.3) -------------------------------------------------------

    async def bind_channel(
        self,
        rpc_call: RpcCall,
        channel: Channel,
        *,
        prefixes: Sequence[str] | None = None,
        hashes: Sequence[HashAlgorithm] = (SHA256,),
    ) -> None:
        """Bind the (v2) context to ``channel``; afterwards DATA uses channel_prot.

        Tries our prefixes/hashes in order, following the server's PREF_NOTSUPP / HASH_NOTSUPP
        lists. Raises :class:`ChannelBindingFailed` if no binding results (the context then keeps
        working with the requested service); its ``reason`` (:class:`BindFailureReason`) says why.
        Every reply is authenticated before it is believed (RFC 5403 §2, §3.3): the OK reply's
        rbcvr_mic over our channel-bindings hash (if it does not verify the channel views differ, a
        MITM: the context is destroyed and replaced), the NOTSUPP replies' MIC as well (one we
        cannot verify is a failed bind, never a "cannot bind"), and accepted errors' MIC(seq_num).
        The request's prefix and hash OID are covered by no MIC, so a verified NOTSUPP that lists
        what we sent means they were rewritten in transit. Raises :class:`RpcGssLocalError` before
        sending anything if a candidate prefix/hash could not be sent (prefix over 64 bytes, OID
        over 32: see :func:`rpclatch.gss.wire.bind_chan_request_problem`).
        """
        ctx = self._current()
        if not channel.is_up():
            raise ChannelBindingFailed(BindFailureReason.CHANNEL_DOWN, "the channel is not up")
        offered = channel.bindings()
        candidates = [p for p in (prefixes if prefixes is not None else offered) if p in offered]
        if not candidates:
            raise ChannelBindingFailed(
                BindFailureReason.NO_REQUESTED_PREFIX, "the channel offers none of the requested prefixes"
            )
        if ctx.version != RPCSEC_GSS_VERS_2:
            if ctx.v2_refused is not None:
                raise ChannelBindingFailed(
                    BindFailureReason.V1_FALLBACK_ON_BINDABLE_CHANNEL,
                    f"the context is RPCSEC_GSS v1 because the v2 INIT was refused with "
                    f"{ctx.v2_refused.name}, a MSG_DENIED nothing authenticates (a v1-only server, or "
                    f"a forged refusal), although the channel offers binding data ({candidates[0]})",
                )
            raise ChannelBindingFailed(
                BindFailureReason.V1_ONLY,
                "the context is RPCSEC_GSS v1 (local version policy): it cannot be bound",
            )
        algorithms = list(hashes)
        if not algorithms:
            raise RpcGssLocalError("bind_channel needs at least one hash algorithm")
        # Every request we might send must fit (RFC 5531 §8.2: opaque_auth body <= 400 bytes):
        # refuse locally, before anything is sent, rather than fail while encoding mid-negotiation.
        for candidate in candidates:
            for alg in algorithms:
                problem = bind_chan_request_problem(candidate, alg)
                if problem is not None:
                    raise RpcGssLocalError(f"cannot request RPCSEC_GSS channel binding: {problem}")
        tried: set[tuple[str, bytes]] = set()
        prefix, algorithm = candidates[0], algorithms[0]
        while True:
            tried.add((prefix, algorithm.oid))
            cb = channel.channel_bindings(prefix)
            bind = _BindAuth(self, ctx, prefix, algorithm, algorithm.digest(cb))
            try:
                await rpc_call(bind, 0, b"")
            except RpcAuthError as exc:
                if exc.stat == AuthStat.RPCSEC_GSS_CREDPROBLEM:
                    raise ChannelBindingFailed(
                        BindFailureReason.MIC_MISMATCH,
                        "server could not verify our BIND_CHANNEL MIC (RPCSEC_GSS_CREDPROBLEM): the "
                        "two ends' channel bindings differ",
                    ) from exc
                raise ChannelBindingFailed(
                    BindFailureReason.SERVER_REFUSED, f"server refused BIND_CHANNEL ({exc.stat.name})"
                ) from exc
            except AuthVerifierError as exc:
                raise ChannelBindingFailed(
                    BindFailureReason.UNVERIFIABLE_REPLY, f"BIND_CHANNEL reply does not authenticate: {exc}"
                ) from exc
            except RpcAcceptError as exc:  # authenticated (MIC(seq_num) verified by _BindAuth)
                raise ChannelBindingFailed(
                    BindFailureReason.SERVER_REFUSED, f"server answered BIND_CHANNEL with {exc.stat.name}"
                ) from exc
            res = bind.reply
            if res is None:
                raise ChannelBindingFailed(
                    BindFailureReason.UNVERIFIABLE_REPLY,
                    "BIND_CHANNEL reply verifier is not rgss2_bind_chan_verf_res",
                )
            status = res.res.status
            if status == BindChanStatus.RGSS2_BIND_CHAN_OK:
                self._check_bind_mic(ctx, bind.seq, bind.cb_hash, res, ok=True)
                with self._lock:
                    if self._ctx is not ctx:
                        raise ChannelBindingFailed(
                            BindFailureReason.CONTEXT_REPLACED, "the context was replaced while binding"
                        )
                    self._channel = channel
                channel.on_break(self._channel_broke)
                log.info("RPCSEC_GSS context bound to channel %s (%s)", prefix, algorithm.name)
                return
            if status == BindChanStatus.RGSS2_BIND_CHAN_PREF_NOTSUPP:
                self._check_bind_mic(ctx, bind.seq, b"", res, ok=False)
                theirs = [p.decode("ascii", "replace") for p in res.res.pref_list]
                if prefix in theirs:
                    raise ChannelBindingFailed(
                        BindFailureReason.TAMPERED_NEGOTIATION,
                        f"server refused channel-binding prefix {prefix!r} yet lists it as supported "
                        f"({theirs}): the prefix it received was not ours (rewritten in transit)",
                    )
                if not theirs:
                    raise ChannelBindingFailed(
                        BindFailureReason.SERVER_HAS_NO_CHANNEL,
                        "server has no channel to bind to on this connection",
                    )
                nxt = next((p for p in candidates if p in theirs), None)
                if nxt is None:
                    raise ChannelBindingFailed(
                        BindFailureReason.NO_COMMON_PREFIX,
                        f"no common channel-binding prefix (server: {theirs})",
                    )
                prefix = nxt
            else:
                oids = [normalize_oid(o) for o in res.res.oid_list]
                first = HASHES_BY_OID.get(oids[0]) if oids else None
                if first is None:
                    # RFC 5403 §3.3: rbcvr_mic covers the hash under rbcr_oid_list[0] (which MUST
                    # exist); without it the reply cannot be authenticated.
                    raise ChannelBindingFailed(
                        BindFailureReason.UNVERIFIABLE_REPLY,
                        "HASH_NOTSUPP reply cannot be verified: "
                        + (
                            f"its first hash OID {oids[0].hex()} is unknown here"
                            if oids
                            else "it lists no hash OID"
                        ),
                    )
                self._check_bind_mic(ctx, bind.seq, first.digest(cb), res, ok=False)
                if algorithm.oid in oids:
                    raise ChannelBindingFailed(
                        BindFailureReason.TAMPERED_NEGOTIATION,
                        f"server refused hash {algorithm.name} yet lists it as supported: the OID it "
                        "received was not ours (rewritten in transit)",
                    )
                nxt_alg = next((a for a in algorithms if a.oid in oids), None)
                if nxt_alg is None:
                    raise ChannelBindingFailed(
                        BindFailureReason.NO_COMMON_HASH, "no common channel-binding hash algorithm"
                    )
                algorithm = nxt_alg
            if (prefix, algorithm.oid) in tried:
                raise ChannelBindingFailed(
                    BindFailureReason.NEGOTIATION_LOOP,
                    f"BIND_CHANNEL negotiation leads back to ({prefix}, {algorithm.name}), already "
                    "refused: contradictory answers",
                )

    def _check_bind_mic(
        self, ctx: _Context, seq: int, cb_hash: bytes, res: BindChanVerfRes, *, ok: bool
    ) -> None:
        try:
            ctx.gss.verify_mic(BindChanMicInRes(seq, cb_hash, res.res).encode(), res.mic)
        except (GssError, XdrError) as exc:
            if ok:
                # The server claims OK but not over our view of the channel: do not trust this
                # context's binding state on the server; the caller should refresh (RFC 5403 §2).
                ctx.stale = True
                raise ChannelBindingFailed(
                    BindFailureReason.MIC_MISMATCH, f"BIND_CHANNEL OK reply MIC does not verify: {exc}"
                ) from exc
            raise ChannelBindingFailed(
                BindFailureReason.UNVERIFIABLE_REPLY,
                f"BIND_CHANNEL {res.res.status.name} reply MIC does not verify: {exc}",
            ) from exc

    def _channel_broke(self, channel: Channel) -> None:
        with self._lock:
            if self._channel is channel:
                self._channel = None
        log.info("bound channel broke: RPCSEC_GSS falls back to %s", self.service.name)

    def unbind(self) -> None:
        """Stop using channel_prot (e.g. the connection is about to be replaced)."""
        with self._lock:
            self._channel = None

    # -- DESTROY (RFC 2203 §5.4) ------------------------------------------------------------------------

    async def destroy(self, rpc_call: RpcCall) -> None:
        """Send RPCSEC_GSS_DESTROY and release the context (locally even if the call fails; an
        AUTH_ERROR answer means the server had already dropped it and is not raised)."""
        ctx = self._ctx
        if ctx is None:
            return
        try:
            if not ctx.stale:
                await rpc_call(_DestroyAuth(self, ctx), 0, b"")
        except RpcAuthError as exc:  # CREDPROBLEM/CTXPROBLEM: the server had dropped it already
            log.debug("DESTROY answered %s: context already gone on the server", exc.stat.name)
        finally:
            self.close()

    def close(self) -> None:
        """Release the context locally (use :meth:`destroy` to tell the server too)."""
        with self._lock:
            ctx, self._ctx = self._ctx, None
            self._channel = None
        if ctx is not None:
            ctx.gss.delete()

    # -- per call (RFC 2203 §5.3, RFC 5403 §3.4) ------------------------------------------------------

    def prepare_call(self, xid: int, prog: int, vers: int, proc: int, args: bytes) -> PreparedCall:
        """One DATA call (RFC 2203 §5.3.1-§5.3.2): a fresh seq_num for every transmission,
        retransmissions included; the verifier a MIC over the header, the arguments protected as
        the service says. On a bound channel channel_prot: AUTH_NONE verifier, the arguments as
        they are (RFC 5403 §3.4)."""
        ctx = self._current()
        service = self.effective_service()
        seq, cred = ctx.next_credential(_DATA, service)
        if service is _SVC_CHANNEL_PROT:
            verf, body = NULL_AUTH, args
        else:
            verf = ctx.verifier(xid, prog, vers, proc, cred)
            body = _protect_args(ctx.gss, seq, service, args)
        return PreparedCall(CallMessage(xid, prog, vers, proc, cred, verf, body), (ctx, seq, service))

    def accept_reply(self, prepared: PreparedCall, reply: AcceptedReply) -> bytes:
        """Every accepted reply, SUCCESS or not: an accepted error (SYSTEM_ERR, GARBAGE_ARGS,
        PROC_UNAVAIL, ...) on a GSS context is believed only with a verifier MIC(seq_num) like any
        other reply (RFC 2203 §5.3.3.2); on channel_prot the channel protects it (RFC 5403 §3.4).
        An error's (empty) results are returned; the caller raises."""
        state: _CallState = prepared.state
        ctx, seq, service = state
        verf = reply.verf
        if service is _SVC_CHANNEL_PROT:
            if verf.flavor != _FLAVOR_NONE or verf.body:
                raise AuthVerifierError("channel_prot reply verifier must be AUTH_NONE (RFC 5403 §3.4)")
            return reply.results
        ctx.check_reply_verifier(seq, verf, "DATA")
        if reply.stat is not _ACCEPT_SUCCESS:
            return reply.results
        return _unprotect_results(ctx.gss, seq, service, reply.results)

    def on_auth_error(self, prepared: PreparedCall, stat: AuthStat) -> bool:
        state: _CallState = prepared.state
        ctx, _seq, service = state
        if service is _SVC_CHANNEL_PROT:
            # The server no longer accepts channel_prot here (channel broke, other connection,
            # expiry): drop the binding and resend once with MIC-protected service.
            log.info("server refused channel_prot (%s): falling back to %s", stat.name, self.service.name)
            self.unbind()
            return True
        if stat in _REFRESH_STATS and ctx is self._ctx:
            ctx.stale = True  # GssClientAuth.call() refreshes it
        return False


class _InitAuth(ClientAuth):
    """INIT / CONTINUE_INIT: cred with the handle (empty first), AUTH_NONE verifier (§5.2.1).

    The credential carries the service the context will be used with. RFC 2203 §5.2.2 says a
    server ignores it, but MIT gssrpc and libtirpc's svcauth_gss record it at INIT and protect every
    later message with it, and every C client (libtirpc, MIT, the Linux kernel) sends the real
    service there; so does this one.
    """

    flavor = AuthFlavor.RPCSEC_GSS

    def __init__(self, version: int, proc: GssProc, handle: bytes, service: Service) -> None:
        cred = GssCred(version, proc, 0, service, handle)
        self._cred = OpaqueAuth(AuthFlavor.RPCSEC_GSS, cred.encode())
        self.reply_verf: OpaqueAuth | None = None

    def prepare_call(self, xid: int, prog: int, vers: int, proc: int, args: bytes) -> PreparedCall:
        return PreparedCall(CallMessage(xid, prog, vers, proc, self._cred, NULL_AUTH, args))

    def accept_reply(self, prepared: PreparedCall, reply: AcceptedReply) -> bytes:
        self.reply_verf = reply.verf
        return reply.results


class _DestroyAuth(ClientAuth):
    """RPCSEC_GSS_DESTROY: like DATA with no arguments; reply verifier MIC(seq_num) (§5.4)."""

    flavor = AuthFlavor.RPCSEC_GSS

    def __init__(self, owner: GssClientAuth, ctx: _Context) -> None:
        self._owner = owner
        self._ctx = ctx

    def prepare_call(self, xid: int, prog: int, vers: int, proc: int, args: bytes) -> PreparedCall:
        ctx = self._ctx
        seq, cred = ctx.next_credential(GssProc.RPCSEC_GSS_DESTROY, self._owner.service)
        verf = ctx.verifier(xid, prog, vers, proc, cred)
        return PreparedCall(CallMessage(xid, prog, vers, proc, cred, verf, args), seq)

    def accept_reply(self, prepared: PreparedCall, reply: AcceptedReply) -> bytes:
        self._ctx.check_reply_verifier(prepared.state, reply.verf, "DESTROY")
        return reply.results


class _BindAuth(ClientAuth):
    """RPCSEC_GSS_BIND_CHANNEL (RFC 5403 §3.3): NULL proc, no args, seq_num as for DATA, service
    none; verifier = rgss2_bind_chan_verf_args with MIC(header || XDR(hash)). The hash itself is
    never sent."""

    flavor = AuthFlavor.RPCSEC_GSS

    def __init__(
        self, owner: GssClientAuth, ctx: _Context, prefix: str, algorithm: HashAlgorithm, cb_hash: bytes
    ) -> None:
        self._owner = owner
        self._ctx = ctx
        self._prefix = prefix
        self._algorithm = algorithm
        self.cb_hash = cb_hash
        self.seq = -1
        self.reply: BindChanVerfRes | None = None

    def prepare_call(self, xid: int, prog: int, vers: int, proc: int, args: bytes) -> PreparedCall:
        ctx = self._ctx
        self.seq, cred = ctx.next_credential(GssProc.RPCSEC_GSS_BIND_CHANNEL, Service.NONE)
        # RFC 5403 §3.3: the MIC covers the header, as for DATA, followed by the hash
        header = encode_call_header(xid, prog, vers, proc, _FLAVOR_GSS, cred.body)
        mic = ctx.gss.get_mic(header + BindChanMicInArgs(self.cb_hash).encode())
        verf_body = BindChanVerfArgs(self._prefix.encode("ascii"), self._algorithm.oid, mic).encode()
        return PreparedCall(
            CallMessage(xid, prog, vers, proc, cred, OpaqueAuth(AuthFlavor.RPCSEC_GSS, verf_body), args)
        )

    def accept_reply(self, prepared: PreparedCall, reply: AcceptedReply) -> bytes:
        if reply.stat is not _ACCEPT_SUCCESS:
            # An accepted error is believed only with MIC(seq_num) (as for DATA, RFC 2203
            # §5.3.3.2); otherwise anyone relaying the connection could end the bind quietly.
            self._ctx.check_reply_verifier(self.seq, reply.verf, f"BIND_CHANNEL {reply.stat.name}")
            return reply.results
        if reply.verf.flavor == AuthFlavor.RPCSEC_GSS:
            try:
                self.reply = BindChanVerfRes.decode(reply.verf.body)
            except XdrError:
                self.reply = None
        return reply.results


def rpc_call_via(client: Any, prog: int, vers: int, *, timeout: float | None = None) -> RpcCall:
    """An :data:`RpcCall` over any client with ``await client.call(prog, vers, proc, args, *,
    auth=..., timeout=...)`` (``rpclatch.rpc.aio.RpcStreamClient`` / ``RpcUdpClient``)."""

    async def rpc_call(auth: ClientAuth, proc: int, args: bytes) -> bytes:
        result: bytes = await client.call(prog, vers, proc, args, auth=auth, timeout=timeout)
        return result

    return rpc_call
