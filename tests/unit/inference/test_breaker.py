"""The Triton circuit breaker: open after repeated failures, one probe, exponential reopen."""

from __future__ import annotations

import asyncio

import pytest

from consumer.inference.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, changes: list[BreakerState] | None = None) -> CircuitBreaker:
    return CircuitBreaker(
        failure_threshold=3,
        open_s=1.0,
        max_open_s=4.0,
        clock=clock,
        on_change=changes.append if changes is not None else None,
    )


async def test_stays_closed_below_the_threshold_and_success_resets_the_count() -> None:
    subject = breaker(Clock())
    subject.record_failure()
    subject.record_failure()
    subject.record_success()
    subject.record_failure()
    subject.record_failure()
    assert subject.state is BreakerState.CLOSED
    await asyncio.wait_for(subject.acquire(), 0.1)


async def test_opens_after_consecutive_failures_and_holds_callers() -> None:
    clock = Clock()
    changes: list[BreakerState] = []
    subject = breaker(clock, changes)
    for _ in range(3):
        subject.record_failure()
    assert subject.state is BreakerState.OPEN
    assert changes == [BreakerState.OPEN]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(subject.acquire(), 0.05)


async def test_one_probe_after_the_open_interval_and_success_releases_everyone() -> None:
    clock = Clock()
    subject = breaker(clock)
    for _ in range(3):
        subject.record_failure()
    clock.now += 1.0
    await asyncio.wait_for(subject.acquire(), 0.1)  # this caller is the probe
    assert subject.state is BreakerState.HALF_OPEN
    waiters = [asyncio.create_task(subject.acquire()) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in waiters), "only one probe at a time"
    subject.record_success()
    await asyncio.wait_for(asyncio.gather(*waiters), 0.1)
    assert subject.closed


async def test_failed_probe_reopens_for_twice_as_long_up_to_the_cap() -> None:
    clock = Clock()
    subject = breaker(clock)
    for _ in range(3):
        subject.record_failure()
    intervals = []
    for _ in range(4):
        opened = clock.now
        while True:
            try:
                await asyncio.wait_for(subject.acquire(), 0.02)
                break
            except TimeoutError:
                clock.now += 0.25
        intervals.append(clock.now - opened)
        subject.record_failure()
    assert intervals == [1.0, 2.0, 4.0, 4.0]
    subject.record_success()
    assert subject.state is BreakerState.CLOSED


def test_nonsense_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(failure_threshold=0, open_s=1, max_open_s=1)
