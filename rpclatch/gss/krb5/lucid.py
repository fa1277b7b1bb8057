"""Moving an established MIT Kerberos context to :class:`~rpclatch.gss.krb5.cfx.CfxContext`.

``gss_krb5_export_lucid_sec_context`` (python-gssapi: ``krb5_export_lucid_sec_context``, version
1) hands out a context's keys and sequence numbers, and MIT then *deletes* the context: after a
successful export the MIT handle is gone, so every later per-message call must go to the exported
copy (which continues the sequence numbers where MIT left them), and an export that cannot be
used must not be attempted. Before exporting, :func:`token_enctype` asks, without touching the
context, which enctype its tokens use: ``gss_inquire_sec_context_by_oid`` with
GSS_C_INQ_SSPI_SESSION_KEY (1.2.840.113554.1.2.2.5.5) returns that key and, as a second element,
the OID ``1.2.840.113554.1.2.2.4.<enctype>``. Only when it is one of the AES enctypes of
:mod:`~rpclatch.gss.krb5.enctypes` is the context exported; otherwise (or if the inquiry fails)
:func:`export_cfx` returns None and the caller keeps using MIT. The same for a context with GSS
replay or sequence detection: the exported copy does not check received sequence numbers
(RPCSEC_GSS, which asks for neither, keeps its own window: RFC 2203 §5.2.2).
"""

from __future__ import annotations

import logging
from typing import Any

import gssapi.raw as graw

from rpclatch.gss.errors import GssError, GssMajor
from rpclatch.gss.krb5.cfx import CfxContext
from rpclatch.gss.krb5.enctypes import ENCTYPES

log = logging.getLogger(__name__)

GSS_C_INQ_SSPI_SESSION_KEY = "1.2.840.113554.1.2.2.5.5"
#: DER body of 1.2.840.113554.1.2.2.4 (GSS_KRB5_SESSION_KEY_ENCTYPE_OID); the enctype follows
_ENCTYPE_OID_PREFIX = bytes.fromhex("2a864886f71201020204")

_inquire_oid: Any = None


def _decode_oid_arc(data: bytes) -> int | None:
    """One base-128 OID sub-identifier filling ``data`` exactly (X.690 §8.19.2), or None."""
    value = 0
    for i, byte in enumerate(data):
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value if i == len(data) - 1 else None
    return None


def token_enctype(ctx: Any) -> int | None:
    """The enctype of the key ``ctx``'s per-message tokens use (acceptor subkey if asserted, else
    the context key), or None if MIT does not say. Leaves the context untouched."""
    global _inquire_oid
    if _inquire_oid is None:
        _inquire_oid = graw.OID.from_int_seq(GSS_C_INQ_SSPI_SESSION_KEY)
    try:
        data = graw.inquire_sec_context_by_oid(ctx, _inquire_oid)
    except graw.GSSError:
        return None
    if len(data) < 2:
        return None
    oid = bytes(data[1])
    if not oid.startswith(_ENCTYPE_OID_PREFIX):
        return None
    return _decode_oid_arc(oid[len(_ENCTYPE_OID_PREFIX) :])


def _wants_sequence_checks(ctx: Any) -> bool:
    try:
        flags: Any = graw.inquire_context(
            ctx,
            initiator_name=False,
            target_name=False,
            lifetime=False,
            mech=False,
            flags=True,
            locally_init=False,
            complete=False,
        ).flags
    except graw.GSSError:
        return True  # unknown: stay on MIT
    wanted = graw.RequirementFlag.replay_detection | graw.RequirementFlag.out_of_sequence_detection
    return bool(int(flags) & int(wanted))


def export_cfx(ctx: Any) -> CfxContext | None:
    """Export the established MIT context ``ctx`` into a :class:`CfxContext`.

    Returns None, with ``ctx`` untouched, when its token enctype is not one implemented here, it
    has replay or sequence detection, or the export fails; after a successful export ``ctx`` is
    deleted (by MIT) and only the returned object may be used. Raises :class:`GssError`
    (GSS_S_FAILURE) only if MIT exported something it had not announced (the context is then
    lost).
    """
    etype = token_enctype(ctx)
    if etype not in ENCTYPES:
        log.debug("per-message calls stay on MIT: token enctype %s", etype)
        return None
    if _wants_sequence_checks(ctx):
        log.debug("per-message calls stay on MIT: the context checks replay or sequence")
        return None
    try:
        lucid: Any = graw.krb5_export_lucid_sec_context(ctx, 1)  # a Krb5LucidContextV1
    except graw.GSSError as exc:  # MIT keeps the context when the export fails
        log.debug("per-message calls stay on MIT: lucid export failed: %s", exc)
        return None
    kd = lucid.cfx_kd
    if lucid.protocol != 1 or kd is None:
        raise GssError(GssMajor.GSS_S_FAILURE, 0, "exported context is not an RFC 4121 context")
    try:
        return CfxContext(
            initiator=bool(lucid.is_initiator),
            ctx_enctype=int(kd.ctx_key_type),
            ctx_key=bytes(kd.ctx_key),
            acceptor_enctype=None if kd.acceptor_subkey is None else int(kd.acceptor_subkey_type),
            acceptor_subkey=None if kd.acceptor_subkey is None else bytes(kd.acceptor_subkey),
            send_seq=int(lucid.send_seq or 0),
            endtime=int(lucid.endtime or 0),
        )
    except Exception as exc:
        raise GssError(GssMajor.GSS_S_FAILURE, 0, f"exported context unusable: {exc}") from None
