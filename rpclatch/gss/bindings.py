"""GSS-level channel bindings for Kerberos V5: what we hand to libkrb5, and the ``Bnd`` it derives.

RFC 5554 §4 GSS-level binding: the initiator and acceptor pass a ``gss_channel_bindings_struct``
(RFC 2744 §3.11) to ``gss_init_sec_context`` / ``gss_accept_sec_context``. Ours is always

* ``initiator_addrtype`` = ``acceptor_addrtype`` = 0 (``GSS_C_AF_UNSPEC``), both addresses empty
  (the channel, not an address, is what we bind to);
* ``application_data`` = the canonical channel bindings ``prefix ":" data`` (RFC 5056 §2.1).

:func:`gss_channel_bindings` builds that struct for python-gssapi (:mod:`rpclatch.gss.provider`
uses it); :func:`krb5_bnd` computes what the Kerberos mechanism derives from it. RFC 6542 hash
agility (Bnd = 16 x 0xFF plus a usage-43 MIC in Exts) is not requested by MIT's initiator by
default and is not modelled here.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import gssapi.raw as graw

#: RFC 2744 §3.11 / gssapi.h: ``GSS_C_AF_UNSPEC`` (no address).
GSS_C_AF_UNSPEC = 0
#: ``Bnd`` for ``GSS_C_NO_BINDINGS`` (RFC 4121 §4.1.1.2 item 3).
NO_BINDINGS_BND = bytes(16)


def gss_channel_bindings(application_data: bytes) -> Any:
    """The ``gssapi.raw.ChannelBindings`` we pass to libkrb5: address types 0, empty addresses,
    ``application_data`` as given (our ``prefix:data``)."""
    return graw.ChannelBindings(
        initiator_address_type=GSS_C_AF_UNSPEC,
        initiator_address=None,
        acceptor_address_type=GSS_C_AF_UNSPEC,
        acceptor_address=None,
        application_data=application_data,
    )


def _buffer(value: bytes) -> bytes:
    return struct.pack("<I", len(value)) + value


def krb5_bnd(
    application_data: bytes | None,
    *,
    initiator: tuple[int, bytes] = (GSS_C_AF_UNSPEC, b""),
    acceptor: tuple[int, bytes] = (GSS_C_AF_UNSPEC, b""),
) -> bytes:
    """RFC 4121 §4.1.1.2 ``Bnd`` for a channel-bindings struct; ``None`` means GSS_C_NO_BINDINGS.

    ``initiator``/``acceptor`` are (address type, address) pairs; ours are always (0, b"").

    Bnd is the 16-byte field the Kerberos mechanism puts in the authenticator checksum: MD5 over,
    in order, initiator_addrtype, the initiator address length and value, acceptor_addrtype, the
    acceptor address length and value, and the application data length and value; every integer
    and length is 4 octets little-endian, lengths are included even when zero, values only when
    non-empty. Without bindings it is 16 zero octets. MIT libkrb5 computes the same bytes
    internally (``kg_checksum_channel_bindings`` in src/lib/gssapi/krb5/util_cksum.c) from the
    struct we pass; we never put Bnd on the wire ourselves, so this function documents and tests
    *what* is bound (a vector computed from that layout: ``"abc"`` ->
    ``420b92da63953711d03790fc6a20013d``).
    """
    if application_data is None:
        return NO_BINDINGS_BND
    data = (
        struct.pack("<I", initiator[0])
        + _buffer(initiator[1])
        + struct.pack("<I", acceptor[0])
        + _buffer(acceptor[1])
        + _buffer(application_data)
    )
    return hashlib.md5(data, usedforsecurity=False).digest()
