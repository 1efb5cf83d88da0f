"""A circuit breaker for Triton: stop calling it while it is down, probe until it is back.

Closed: calls go through; ``failure_threshold`` consecutive unavailability errors open it.
Open: callers wait; after the open interval one caller becomes the probe (half-open). A probe
that succeeds closes the breaker and releases every waiter; a probe that fails opens it again
for twice as long, up to ``max_open_s``. While it is not closed the consumer pauses its
partitions and reports not ready, so nothing piles up in memory and nothing is dead-lettered
for an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_threshold: int,
        open_s: float,
        max_open_s: float,
        on_change: Callable[[BreakerState], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or open_s <= 0 or max_open_s < open_s:
            raise ValueError(
                "need failure_threshold >= 1 and 0 < open_s <= max_open_s, got "
                f"{failure_threshold}, {open_s}, {max_open_s}"
            )
        self._failure_threshold = failure_threshold
        self._base_open_s = open_s
        self._max_open_s = max_open_s
        self._on_change = on_change
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._open_s = open_s
        self._reopen_at = 0.0
        self._changed = asyncio.Event()

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is BreakerState.CLOSED

    async def acquire(self) -> None:
        """Return when a call may be made: at once when closed, else as the probe or after it."""
        while True:
            if self._state is BreakerState.CLOSED:
                return
            changed = self._changed
            if self._state is BreakerState.OPEN:
                remaining = self._reopen_at - self._clock()
                if remaining <= 0:
                    self._set(BreakerState.HALF_OPEN)
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
            else:
                await changed.wait()

    def record_success(self) -> None:
        self._failures = 0
        self._open_s = self._base_open_s
        if self._state is not BreakerState.CLOSED:
            self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN:
            self._open_s = min(self._open_s * 2, self._max_open_s)
            self._open()
        elif self._state is BreakerState.CLOSED and self._failures >= self._failure_threshold:
            self._open()

    def _open(self) -> None:
        self._reopen_at = self._clock() + self._open_s
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            logger.log(
                logging.WARNING if state is BreakerState.OPEN else logging.INFO,
                "Triton circuit breaker %s -> %s (next probe in %.2fs)",
                self._state.value,
                state.value,
                self._open_s if state is BreakerState.OPEN else 0.0,
            )
        self._state = state
        # Wake everyone waiting on the old state; later waiters wait on a fresh event.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if self._on_change is not None:
            self._on_change(state)
