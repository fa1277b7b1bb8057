"""The GSS-API as RPCSEC_GSS needs it: a :class:`Provider` interface and its python-gssapi backend.

RPCSEC_GSS (RFC 2203 §5.2.2) needs contexts created *without* GSS replay and sequence detection
(it keeps its own sequence window), per-message ``get_mic``/``verify_mic``/``wrap``/``unwrap``, the
context lifetime (for expiry) and the initiator's name: :class:`Provider` and :class:`GssContext`
say exactly that, so the flavors in :mod:`rpclatch.gss.client` and :mod:`rpclatch.gss.server`
can run on a fake provider in tests. :class:`GssapiProvider` implements it on MIT Kerberos: MIT
establishes every context; the per-message calls then run, for the AES enctypes, on OpenSSL from the
exported context (:mod:`rpclatch.gss.krb5`, docs/krb5-fastpath.md), else on MIT.
"""

from __future__ import annotations

import abc
import contextlib
import os
import threading
from collections.abc import Sequence
from typing import Any

import gssapi.raw as graw

from rpclatch.gss.bindings import gss_channel_bindings
from rpclatch.gss.errors import GssError, GssMajor
from rpclatch.gss.krb5.cfx import CfxContext
from rpclatch.gss.krb5.lucid import export_cfx

#: Environment variable choosing where per-message calls run: ``0`` keeps them on MIT for every
#: context; anything else (or unset) moves them to OpenSSL for the AES enctypes.
FASTPATH_ENV = "RPCLATCH_GSS_FASTPATH"

#: The Kerberos V5 GSS-API mechanism (RFC 1964 §1, RFC 4121): what acceptors take by default.
KRB5_MECH_OID = "1.2.840.113554.1.2.2"

_FLAGS = (
    graw.RequirementFlag.mutual_authentication
    | graw.RequirementFlag.integrity
    | graw.RequirementFlag.confidentiality
)


class GssContext(abc.ABC):
    """One GSS security context (either side), stepped until :attr:`complete`."""

    @property
    @abc.abstractmethod
    def complete(self) -> bool:
        """True once establishment finished."""

    @property
    @abc.abstractmethod
    def lifetime(self) -> int | None:
        """Seconds the context was valid for when it completed (None: indefinite)."""

    @property
    @abc.abstractmethod
    def peer_name(self) -> str | None:
        """The authenticated initiator name (acceptor side), e.g. ``alice@KRBTEST.COM``."""

    @property
    def raw(self) -> Any:
        """The mechanism library's own context object for raw per-message calls (benchmarks), or
        None if the provider has none."""
        return None

    @abc.abstractmethod
    def step(self, token: bytes | None) -> bytes | None:
        """Consume the peer's token (None for the initiator's first step); return ours, if any.

        Raises :class:`GssError` with the failing major status.
        """

    @abc.abstractmethod
    def get_mic(self, data: bytes) -> bytes: ...

    @abc.abstractmethod
    def verify_mic(self, data: bytes, mic: bytes) -> None:
        """Raise :class:`GssError` (e.g. GSS_S_BAD_MIC) if ``mic`` does not verify."""

    @abc.abstractmethod
    def wrap(self, data: bytes, confidential: bool = True) -> bytes: ...

    @abc.abstractmethod
    def unwrap(self, token: bytes) -> tuple[bytes, bool]:
        """Return (message, was_encrypted)."""

    @abc.abstractmethod
    def delete(self) -> None:
        """Release the context (further use raises GssError)."""


class Provider(abc.ABC):
    """Creates initiator and acceptor contexts (RFC 2743 GSS_Init/Accept_sec_context)."""

    @abc.abstractmethod
    def initiate(self, target: str, *, channel_bindings: bytes | None = None) -> GssContext:
        """A fresh initiator context towards host-based service ``target`` (``nfs@host``)."""

    @abc.abstractmethod
    def accept(
        self, *, channel_bindings: bytes | None = None, require_channel_bindings: bool = False
    ) -> GssContext:
        """A fresh acceptor context for this provider's service."""


_raw_get_mic = graw.get_mic
_raw_verify_mic = graw.verify_mic
_raw_wrap = graw.wrap
_raw_unwrap = graw.unwrap
_RawGSSError = graw.GSSError


def _gss_error(exc: Any) -> GssError:
    major = int(getattr(exc, "maj_code", GssMajor.GSS_S_FAILURE))
    minor = int(getattr(exc, "min_code", 0))
    try:
        message = str(exc.gen_message())
    except Exception:  # the message is best effort; the codes are what matter
        message = type(exc).__name__
    return GssError(major, minor, message)


class _GssapiContext(GssContext):
    __slots__ = (
        "_cb",
        "_complete",
        "_creds",
        "_ctx",
        "_fast",
        "_fastpath",
        "_initiator",
        "_lifetime",
        "_live",
        "_lock",
        "_peer",
        "_require_cb",
        "_target",
    )

    def __init__(
        self,
        initiator: bool,
        creds: Any,
        target: Any,
        cb: bytes | None,
        require_cb: bool,
        fastpath: bool = True,
    ) -> None:
        self._initiator = initiator
        self._fastpath = fastpath
        self._fast: CfxContext | None = None  # the exported context once complete, if it took
        self._creds = creds
        self._target = target
        self._cb = gss_channel_bindings(cb) if cb is not None else None
        self._require_cb = require_cb
        self._ctx: Any = None
        self._live: Any = None  # self._ctx once complete (the per-message methods check only this)
        self._complete = False
        self._lifetime: int | None = None
        self._peer: str | None = None
        self._lock = threading.Lock()

    @property
    def complete(self) -> bool:
        return self._complete

    @property
    def lifetime(self) -> int | None:
        return self._lifetime

    @property
    def peer_name(self) -> str | None:
        return self._peer

    @property
    def raw(self) -> Any:
        """What the per-message calls run on once established, else None: the python-gssapi
        ``SecurityContext`` (MIT path) or the :class:`~rpclatch.gss.krb5.cfx.CfxContext` (OpenSSL
        path). benchmarks/gss_calls.py times raw calls on it (the zero-overhead ceiling). Calls
        on it bypass this object's lock: only for single-threaded use."""
        return self._fast if self._fast is not None else self._live

    @property
    def fast_path(self) -> bool:
        """True once per-message calls run on OpenSSL from the exported context."""
        return self._fast is not None

    def step(self, token: bytes | None) -> bytes | None:
        if self._complete:
            raise GssError(GssMajor.GSS_S_FAILURE, 0, "context already established")
        with self._lock:
            try:
                if self._initiator:
                    ires = graw.init_sec_context(
                        self._target,
                        creds=self._creds,
                        context=self._ctx,
                        flags=_FLAGS,
                        channel_bindings=self._cb,
                        input_token=token,
                    )
                    self._ctx = ires.context
                    out, more, life = ires.token, ires.more_steps, ires.lifetime
                else:
                    if token is None:
                        raise GssError(GssMajor.GSS_S_DEFECTIVE_TOKEN, 0, "acceptor needs a token")
                    ares = graw.accept_sec_context(
                        token,
                        acceptor_creds=self._creds,
                        context=self._ctx,
                        channel_bindings=self._cb,
                    )
                    self._ctx = ares.context
                    out, more, life = ares.token, ares.more_steps, ares.lifetime
                    if not more:
                        bound = int(graw.RequirementFlag.channel_bound) & int(ares.flags)
                        if self._require_cb and not bound:
                            raise GssError(
                                GssMajor.GSS_S_BAD_BINDINGS,
                                0,
                                "initiator sent no channel bindings but they are required",
                            )
                        self._peer = bytes(graw.display_name(ares.initiator_name).name).decode(
                            "utf-8", "replace"
                        )
            except graw.GSSError as exc:
                raise _gss_error(exc) from None
        if not more:
            if self._fastpath:
                # MIT deletes the context when it exports it: from here on every per-message
                # call goes to the exported copy, which carries on MIT's sequence numbers.
                with self._lock:
                    fast = export_cfx(self._ctx)
                    if fast is not None:
                        self._fast, self._ctx = fast, None
            self._complete = True
            self._lifetime = int(life) if life is not None else None
            self._live = self._ctx
        return bytes(out) if out else None

    # get_mic/verify_mic/wrap/unwrap run several times per RPC call: no helper calls, the raw
    # functions bound at module level, one attribute (``_live``: the context once complete, None
    # before and after delete) for the "established?" check, and the lock taken with
    # acquire()/release(), which costs less than ``with lock`` on CPython.

    def get_mic(self, data: bytes) -> bytes:
        fast = self._fast
        if fast is not None:
            lock = self._lock
            lock.acquire()
            try:
                return fast.get_mic(data)
            finally:
                lock.release()
        ctx = self._live
        if ctx is None:
            raise GssError(GssMajor.GSS_S_NO_CONTEXT, 0, "context not established")
        lock = self._lock
        lock.acquire()
        try:
            mic: bytes = _raw_get_mic(ctx, data)
        except _RawGSSError as exc:
            raise _gss_error(exc) from None
        finally:
            lock.release()
        return mic

    def verify_mic(self, data: bytes, mic: bytes) -> None:
        fast = self._fast
        if fast is not None:
            lock = self._lock
            lock.acquire()
            try:
                fast.verify_mic(data, mic)
                return
            finally:
                lock.release()
        ctx = self._live
        if ctx is None:
            raise GssError(GssMajor.GSS_S_NO_CONTEXT, 0, "context not established")
        lock = self._lock
        lock.acquire()
        try:
            _raw_verify_mic(ctx, data, mic)
        except _RawGSSError as exc:
            raise _gss_error(exc) from None
        finally:
            lock.release()

    def wrap(self, data: bytes, confidential: bool = True) -> bytes:
        fast = self._fast
        if fast is not None:
            lock = self._lock
            lock.acquire()
            try:
                return fast.wrap(data, confidential)
            finally:
                lock.release()
        ctx = self._live
        if ctx is None:
            raise GssError(GssMajor.GSS_S_NO_CONTEXT, 0, "context not established")
        lock = self._lock
        lock.acquire()
        try:
            res = _raw_wrap(ctx, data, confidential)
        except _RawGSSError as exc:
            raise _gss_error(exc) from None
        finally:
            lock.release()
        if confidential and not res.encrypted:
            raise GssError(GssMajor.GSS_S_FAILURE, 0, "mechanism did not encrypt")
        message: bytes = res.message
        return message

    def unwrap(self, token: bytes) -> tuple[bytes, bool]:
        fast = self._fast
        if fast is not None:
            lock = self._lock
            lock.acquire()
            try:
                return fast.unwrap(token)
            finally:
                lock.release()
        ctx = self._live
        if ctx is None:
            raise GssError(GssMajor.GSS_S_NO_CONTEXT, 0, "context not established")
        lock = self._lock
        lock.acquire()
        try:
            # MIT rewrites the token buffer it is given (an unencrypted Wrap token is rotated and
            # stripped in place) and python-gssapi hands it the bytes object's own buffer: a copy.
            res = _raw_unwrap(ctx, bytes(memoryview(token)))
        except _RawGSSError as exc:
            raise _gss_error(exc) from None
        finally:
            lock.release()
        message: bytes = res.message
        return message, bool(res.encrypted)

    def delete(self) -> None:
        with self._lock:
            ctx, self._ctx = self._ctx, None
            fast, self._fast = self._fast, None
            self._live = None
            if fast is not None:
                fast.delete()
            self._complete = False
            if ctx is not None:
                with contextlib.suppress(graw.GSSError):  # already gone: nothing to release
                    graw.delete_sec_context(ctx)


class GssapiProvider(Provider):
    """MIT Kerberos through python-gssapi's raw API.

    ``service`` is the acceptor's host-based service name (``nfs@localhost``); acceptor credentials
    are acquired for exactly that principal, from ``keytab`` if given, else the default keytab
    (``KRB5_KTNAME``). ``acceptor_mechs`` are the mechanism OIDs (dotted) the acceptor takes:
    Kerberos V5 only by default, so a token of any other mechanism (SPNEGO included) fails at once
    with GSS_S_NO_CRED instead of opening a half-open context; None accepts every mechanism the
    keytab allows. Initiator credentials come from ``ccache`` if given, else the default ccache
    (``KRB5CCNAME``). Credentials are acquired on first use and kept. ``fastpath`` chooses where
    per-message calls run once a context is established: True exports AES contexts and runs
    them on OpenSSL (:mod:`rpclatch.gss.krb5`; other enctypes stay on MIT), False keeps all on
    MIT; None (default) reads :data:`FASTPATH_ENV` (``0``: MIT, else OpenSSL).

    It uses ``gssapi.raw`` (the high-level API's per-call overhead dominates for small messages),
    with:

    * flags ``mutual | integ | conf`` and never replay/sequence (RFC 2203 §5.2.2);
    * one lock per context: MIT contexts are not thread-safe and the bindings release the GIL
      (two threads on one context would emit the same sequence number twice);
    * acceptor credentials restricted to the configured service principal (not every key in the
      keytab) and, by default, to the Kerberos V5 mechanism (RFC 4121; OID 1.2.840.113554.1.2.2):
      an acceptor that also speaks SPNEGO answers a 29-byte NegTokenInit without a mech token with
      CONTINUE_NEEDED, which lets anyone park half-open contexts on the server (RFC 2203 §5.2.2);
    * GSS errors turned into :class:`~rpclatch.gss.errors.GssError` carrying the major/minor
      status;
    * optional GSS-level channel bindings at establishment (RFC 5554 §4, RFC 4121 §4.1.1.2): the
      initiator sends ``application_data`` (struct built by :mod:`rpclatch.gss.bindings`); an
      acceptor asked to require them fails an initiator that sent none (``channel_bound`` missing
      from the flags), which MIT alone would accept.
    """

    def __init__(
        self,
        service: str | None = None,
        *,
        ccache: str | None = None,
        keytab: str | None = None,
        acceptor_mechs: Sequence[str] | None = (KRB5_MECH_OID,),
        fastpath: bool | None = None,
    ) -> None:
        self._service = service
        self._fastpath = os.environ.get(FASTPATH_ENV, "1") != "0" if fastpath is None else fastpath
        self._ccache = ccache
        self._keytab = keytab
        self._acceptor_mechs = None if acceptor_mechs is None else tuple(acceptor_mechs)
        self._init_creds: Any = None
        self._accept_creds: Any = None
        self._lock = threading.Lock()

    @staticmethod
    def _name(service: str) -> Any:
        try:
            return graw.import_name(service.encode(), graw.NameType.hostbased_service)
        except graw.GSSError as exc:
            raise _gss_error(exc) from None

    def _initiator_creds(self) -> Any:
        with self._lock:
            if self._init_creds is None:
                try:
                    if self._ccache is not None:
                        from gssapi.raw import acquire_cred_from

                        res = acquire_cred_from({b"ccache": self._ccache.encode()}, usage="initiate")
                    else:
                        res = graw.acquire_cred(None, usage="initiate")
                except graw.GSSError as exc:
                    raise _gss_error(exc) from None
                self._init_creds = res.creds
            return self._init_creds

    def _acceptor_creds(self) -> Any:
        if self._service is None:
            raise GssError(GssMajor.GSS_S_NO_CRED, 0, "provider has no acceptor service name")
        with self._lock:
            if self._accept_creds is None:
                name = self._name(self._service)
                try:
                    mechs = (
                        None
                        if self._acceptor_mechs is None
                        else [graw.OID.from_int_seq(m) for m in self._acceptor_mechs]
                    )
                    if self._keytab is not None:
                        from gssapi.raw import acquire_cred_from

                        res = acquire_cred_from(
                            {b"keytab": self._keytab.encode()}, name=name, mechs=mechs, usage="accept"
                        )
                    else:
                        res = graw.acquire_cred(name, mechs=mechs, usage="accept")
                except graw.GSSError as exc:
                    raise _gss_error(exc) from None
                self._accept_creds = res.creds
            return self._accept_creds

    def check_acceptor(self) -> None:
        """Acquire the acceptor credentials now (raises :class:`GssError` if the keytab has no key
        for the service), instead of failing the first INIT."""
        self._acceptor_creds()

    def initiate(self, target: str, *, channel_bindings: bytes | None = None) -> GssContext:
        return _GssapiContext(
            True, self._initiator_creds(), self._name(target), channel_bindings, False, self._fastpath
        )

    def accept(
        self, *, channel_bindings: bytes | None = None, require_channel_bindings: bool = False
    ) -> GssContext:
        if require_channel_bindings and channel_bindings is None:
            raise GssError(GssMajor.GSS_S_BAD_BINDINGS, 0, "channel bindings required but none given")
        return _GssapiContext(
            False, self._acceptor_creds(), None, channel_bindings, require_channel_bindings, self._fastpath
        )
