"""Pieces shared by the ``rpclatch`` commands: number options, GSS service-name options and stop
signals.

:func:`uint32_arg`, :func:`port_arg` and :func:`positive_arg` are ``argparse`` types: a bad value
is argparse's one-line usage error naming the option.

:func:`parse_service_name` checks ``SERVICE@HOST`` options (``rpc ping --target``, ``rpc serve
--principal``, ``nfs --target``) and :func:`gss_target_problem` explains a failed context creation;
:class:`StopSignals` keeps a long-running command's cleanup (``rpc serve``, ``realm up``) from
being cut short by a repeated signal.
"""

from __future__ import annotations

import argparse
import re
import signal
from collections.abc import Callable
from enum import Enum
from types import FrameType, TracebackType

from rpclatch.errors import UserError

__all__ = [
    "GSS_VERSION_HELP",
    "StopSignals",
    "TargetProblem",
    "gss_target_problem",
    "parse_service_name",
    "port_arg",
    "positive_arg",
    "uint32_arg",
]


#: ``--gss-version`` (``nfs`` and ``rpc ping``, with ``--sec auto``).
GSS_VERSION_HELP = (
    "--sec auto: the RPCSEC_GSS versions to use. auto (default): v2 and BIND_CHANNEL to the latch; "
    "a server that refuses v2 gets v1 with a SECURITY WARNING, since nothing authenticates the "
    "refusal. 1: v1 only, for a server known to have no v2 (the Linux nfsd): the latch is kept and "
    "GSS protection runs over it, no binding attempted, no warning"
)


def uint32_arg(text: str) -> int:
    """An XDR unsigned int (program, version, procedure numbers), decimal or 0x hex."""
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= v <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"out of range: {text}")
    return v


def port_arg(text: str) -> int:
    """A TCP/UDP port number."""
    v = uint32_arg(text)
    if v > 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {text}")
    return v


def positive_arg(text: str) -> float:
    """A positive number of seconds."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return v


# A service is a plain name (nfs, host, HTTP, rpctest); a host a DNS name or an address literal.
_SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:-]*")


def parse_service_name(text: str, option: str) -> str:
    """``text`` if it is a ``SERVICE@HOST`` host-based service name, else a one-line UserError.

    That is the GSS host-based service name form (RFC 2743 §4.1, GSS_C_NT_HOSTBASED_SERVICE),
    which the Kerberos mechanism maps to ``SERVICE/HOST@REALM``. The error names the option, what
    is wrong and the form to use; ``option`` is how the user gave it (e.g. ``--target``). Kerberos
    principal syntax (``nfs/host@REALM``) is recognised and the host-based form suggested: the
    realm comes from the KDC configuration, not from the name.
    """
    example = f"e.g. {option} nfs@server.example"
    if "/" in text:
        service, _, rest = text.partition("/")
        host = rest.split("@", 1)[0]
        hint = f"{option} {service}@{host}" if service and host else example
        raise UserError(
            f"{option} {text!r} looks like a Kerberos principal name; give the host-based "
            f"service name SERVICE@HOST instead ({hint})"
        )
    service, at, host = text.partition("@")
    if not at:
        raise UserError(f"{option} {text!r} has no host: give SERVICE@HOST ({example})")
    if not service:
        raise UserError(f"{option} {text!r} has no service before the '@': give SERVICE@HOST ({example})")
    if not host:
        raise UserError(f"{option} {text!r} has no host after the '@': give SERVICE@HOST ({example})")
    if "@" in host:
        raise UserError(f"{option} {text!r} has more than one '@': give SERVICE@HOST ({example})")
    if _SERVICE.fullmatch(service) is None:
        raise UserError(
            f"{option} {text!r}: bad service name {service!r} (letters, digits, '.', '_', '-'; {example})"
        )
    if _HOST.fullmatch(host) is None:
        raise UserError(f"{option} {text!r}: bad host name {host!r} (a DNS name or an address; {example})")
    return text


class TargetProblem(Enum):
    """Why an RPCSEC_GSS context could not be made for the target name the user gave."""

    UNKNOWN_TO_KDC = "the KDC knows no service principal of that name"
    NOT_THE_SERVERS = "the server holds the key of another principal"


#: MIT krb5 minor status codes (its krb5 error table, base 0x96c73a00) that say the GSS target name
#: is wrong: the KDC has no such principal (initiator side), or the acceptor has no key for the
#: ticket's principal (the server's gss_major/gss_minor in its INIT reply, RFC 2203 §5.2.3.1).
_KRB5KDC_ERR_S_PRINCIPAL_UNKNOWN = 0x96C73A07
_KRB5KRB_AP_WRONG_PRINC = 0x96C73A23
_KRB5_KT_NOTFOUND = 0x96C73AB5


def gss_target_problem(exc: BaseException | None) -> TargetProblem | None:
    """What a failed RPCSEC_GSS context creation says about the target name, from the typed
    status codes (a local :class:`~rpclatch.gss.errors.GssError` or the server's
    :class:`~rpclatch.gss.errors.ContextInitFailed`), or None if it is about something else."""
    from rpclatch.gss.errors import ContextInitFailed, GssError

    if isinstance(exc, GssError) and exc.minor & 0xFFFFFFFF == _KRB5KDC_ERR_S_PRINCIPAL_UNKNOWN:
        return TargetProblem.UNKNOWN_TO_KDC
    if isinstance(exc, ContextInitFailed) and exc.minor & 0xFFFFFFFF in (
        _KRB5KRB_AP_WRONG_PRINC,
        _KRB5_KT_NOTFOUND,
    ):
        return TargetProblem.NOT_THE_SERVERS
    return None


Callback = Callable[[], None]


class StopSignals:
    """SIGTERM and SIGINT as a stop request, for the whole life of a command, cleanup included.

    One stop request, every later signal absorbed, so the command's cleanup (rpcbind
    unregistration, stopping a KDC, removing its files) is never cut short by a repeated signal --
    ``timeout`` sends SIGTERM to the process and then to its process group, i.e. twice.

    Used as a context manager around everything the command does (start-up, the serving loop and
    its cleanup). The first signal runs the callbacks added with :meth:`on_stop` (each once; one
    added after the stop runs at once); later signals are only counted. On exit the previous
    handlers come back -- unless a stop was requested and ``ignore_after_stop`` is true (the
    default for the CLI): then the process is exiting on request and SIGTERM/SIGINT stay ignored
    until it has, so a late duplicate cannot turn a clean exit into death by signal.

    Explicit handlers also matter for SIGINT: a shell starts background jobs with SIGINT ignored,
    and Python's KeyboardInterrupt would then never come. The handlers run in the main thread
    between bytecodes, also while an asyncio loop waits in ``epoll`` (the wait is retried after
    the handler, PEP 475), so a callback may use ``loop.call_soon_threadsafe``.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, *, ignore_after_stop: bool = True) -> None:
        self.ignore_after_stop = ignore_after_stop
        self.received = 0
        self._callbacks: list[Callback] = []
        self._previous: dict[int, object] = {}

    @property
    def stop_requested(self) -> bool:
        return self.received > 0

    def on_stop(self, callback: Callback) -> None:
        """Run ``callback`` on the first stop signal (at once if one already came)."""
        self._callbacks.append(callback)
        if self.received:
            callback()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received += 1
        if self.received == 1:
            for callback in self._callbacks:
                callback()

    def __enter__(self) -> StopSignals:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._callbacks.clear()
        for sig, previous in self._previous.items():
            if self.received and self.ignore_after_stop:
                signal.signal(sig, signal.SIG_IGN)
            else:
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)  # type: ignore[arg-type]
        self._previous.clear()
