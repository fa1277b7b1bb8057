"""Helpers shared by the RPCSEC_GSS conformance modules (the sans-IO GSS cores over
:class:`rpclatch.gss.loopback.LoopbackTransport`)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Clock:
    """A settable clock for the GSS server and transport (``now=clock``); tests move ``t``."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one client coroutine (establish, bind_channel, call) to completion."""
    return asyncio.run(coro)
