"""Exceptions of the simulated network (one base, split local/remote as in the rest of rpclatch).

:class:`SimWireError` is raised by every wire decoder of the simulation (IP, ESP, TCP-like
segments, UDP) for bytes that do not decode; it is the only exception a decoder may raise.
"""

from __future__ import annotations


class SimError(Exception):
    """Base of every error raised by ``rpclatch.netsim``."""


class SimLocalError(SimError):
    """A local misuse of the simulation API (bad address, port in use, closed connection)."""


class SimRemoteError(SimError):
    """Something that came from the (simulated) network was wrong."""


class SimWireError(SimRemoteError):
    """Bytes on the simulated wire that do not decode (bad header, length, checksum)."""


class EspAuthError(SimWireError):
    """ESP ICV check failed (RFC 4303 §3.4.4.1: the packet MUST be discarded)."""
