"""Virtual clock and deterministic event scheduler for the simulated network.

Nothing in the simulation reads the wall clock: time only advances when the scheduler runs the
next event. Events with equal times run in the order they were scheduled, and all randomness comes
from one seeded :class:`random.Random`, so a scenario replays byte for byte.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rpclatch.netsim.errors import SimLocalError


@dataclass(order=True)
class Timer:
    """A scheduled callback; :meth:`cancel` stops it from running."""

    when: float
    order: int
    callback: Callable[..., Any] = field(compare=False)
    args: tuple[Any, ...] = field(compare=False, default=())
    cancelled: bool = field(compare=False, default=False)

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    """A discrete-event loop over virtual time (seconds, float)."""

    def __init__(self, seed: int = 0) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self._heap: list[Timer] = []
        self._counter = itertools.count()
        self.events_run = 0

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Timer:
        if when < self.now:
            when = self.now
        timer = Timer(when, next(self._counter), callback, args)
        heapq.heappush(self._heap, timer)
        return timer

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        if delay < 0:
            raise SimLocalError(f"negative delay {delay}")
        return self.call_at(self.now + delay, callback, *args)

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> Timer:
        return self.call_at(self.now, callback, *args)

    def next_time(self) -> float | None:
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0].when if self._heap else None

    def step(self) -> bool:
        """Run the next event; return False if there was none."""
        while self._heap:
            timer = heapq.heappop(self._heap)
            if timer.cancelled:
                continue
            self.now = timer.when
            self.events_run += 1
            timer.callback(*timer.args)
            return True
        return False

    def run_until(self, deadline: float, max_events: int = 1_000_000) -> None:
        """Run every event due at or before ``deadline``, then set the clock to ``deadline``."""
        for _ in range(max_events):
            nxt = self.next_time()
            if nxt is None or nxt > deadline:
                break
            self.step()
        else:
            raise SimLocalError(f"more than {max_events} events before t={deadline}")
        self.now = max(self.now, deadline)

    def run_for(self, duration: float, max_events: int = 1_000_000) -> None:
        self.run_until(self.now + duration, max_events)

    def run_until_true(
        self, predicate: Callable[[], bool], timeout: float, max_events: int = 1_000_000
    ) -> bool:
        """Run events until ``predicate()`` holds (checked after each event) or ``timeout`` passes."""
        deadline = self.now + timeout
        if predicate():
            return True
        for _ in range(max_events):
            nxt = self.next_time()
            if nxt is None or nxt > deadline:
                self.now = max(self.now, deadline)
                return predicate()
            self.step()
            if predicate():
                return True
        raise SimLocalError(f"more than {max_events} events waiting for a condition")
