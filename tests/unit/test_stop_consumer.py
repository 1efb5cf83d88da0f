"""Closing the Kafka consumer survives aiokafka re-raising its own fetch's cancellation."""

from __future__ import annotations

import asyncio

import pytest

from consumer.app import _stop_consumer


class _Consumer:
    def __init__(self) -> None:
        self.stopped = False

    async def stop(self) -> None:
        self.stopped = True
        # What aiokafka's fetcher does when a fetch was backing off after a broker outage.
        raise asyncio.CancelledError


async def test_a_cancelled_inner_fetch_does_not_fail_the_shutdown() -> None:
    consumer = _Consumer()
    await _stop_consumer(consumer)
    assert consumer.stopped


async def test_our_own_cancellation_still_propagates() -> None:
    started = asyncio.Event()

    async def stop_slowly() -> None:
        started.set()
        await asyncio.sleep(10)

    consumer = _Consumer()
    consumer.stop = stop_slowly  # type: ignore[method-assign]
    task = asyncio.create_task(_stop_consumer(consumer))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
