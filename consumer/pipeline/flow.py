"""Bounds on work held in memory, and when to pause or resume the input's partitions.

Backpressure is an explicit signal, as in quix-streams: while too many events or bytes are in
flight, or Triton is down, every assigned partition is paused (heartbeats go on, so the group
does not rebalance). Fetching resumes once in-flight work has fallen to ``RESUME_FRACTION`` of
its bounds, so the consumer does not flap between paused and resumed on every event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from enum import Enum

from consumer.runtime.metrics import Metrics
from consumer.runtime.settings import FlowSettings

RESUME_FRACTION = 0.8


class Signal(Enum):
    PAUSE = "pause"
    RESUME = "resume"
    KEEP = "keep"
    """Stay as we are: running, or paused and not yet drained enough."""


class FlowControl:
    """Counts events and bytes in flight; says when to pause and resume."""

    def __init__(self, settings: FlowSettings, metrics: Metrics) -> None:
        self._max_events = settings.max_inflight_events
        self._max_bytes = settings.max_inflight_bytes
        self._metrics = metrics
        self.events = 0
        self.bytes = 0
        self.paused = False
        self.finished = asyncio.Event()
        """Set whenever an event finishes; waiters clear it before waiting."""

    def room(self) -> int:
        """How many more events may be read before the event bound is reached."""
        return max(0, self._max_events - self.events)

    def admit(self, size: int) -> None:
        self.events += 1
        self.bytes += size
        self._update_gauges()

    def release(self, size: int) -> None:
        self.events -= 1
        self.bytes -= size
        self.finished.set()
        self._update_gauges()

    async def wait_until(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        """Wait, re-checking as events finish, until ``condition`` holds or ``timeout_s``
        passes; whether it holds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not condition():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self.finished.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.finished.wait(), remaining)
        return True

    def signal(self, downstream_available: bool) -> Signal:
        """Pause over the bounds or while downstream is down; resume once drained enough."""
        over = (
            self.events >= self._max_events
            or self.bytes >= self._max_bytes
            or not downstream_available
        )
        drained = (
            self.events <= self._max_events * RESUME_FRACTION
            and self.bytes <= self._max_bytes * RESUME_FRACTION
            and downstream_available
        )
        if over or (self.paused and not drained):
            self.paused = True
            return Signal.PAUSE
        if self.paused:
            self.paused = False
            return Signal.RESUME
        return Signal.KEEP

    def _update_gauges(self) -> None:
        self._metrics.inflight_events.set(self.events)
        self._metrics.inflight_bytes.set(self.bytes)
