"""Errors of the XFRM datapath layer (re-exported by :mod:`rpclatch.ipsec.xfrm.netlink`)."""

from __future__ import annotations

import errno

from rpclatch.ipsec.errors import IPsecLocalError


class XfrmError(IPsecLocalError):
    """Base of the XFRM layer's errors (a local datapath failure, no wire code)."""


class XfrmDecodeError(XfrmError):
    """Bytes from the kernel (or anywhere) that are not a well-formed xfrm_user message."""


class XfrmKernelError(XfrmError):
    """The kernel refused a request; ``errno`` is its error code."""

    def __init__(self, what: str, code: int) -> None:
        super().__init__(f"{what}: {errno.errorcode.get(code, str(code))} ({code})")
        self.errno = code


class XfrmTimeout(XfrmError):
    """The kernel did not answer a request within the socket's timeout."""
