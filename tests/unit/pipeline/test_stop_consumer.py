"""Closing the Kafka consumer: survives aiokafka re-raising its own fetch's cancellation,
and gives up after its timeout instead of holding the shutdown."""

from __future__ import annotations

import asyncio

import pytest

from consumer.pipeline.source import stop_consumer


class _Consumer:
    def __init__(self) -> None:
        self.stopped = False

    async def stop(self) -> None:
        self.stopped = True
        # What aiokafka's fetcher does when a fetch was backing off after a broker outage.
        raise asyncio.CancelledError


async def test_a_cancelled_inner_fetch_does_not_fail_the_shutdown() -> None:
    consumer = _Consumer()
    await stop_consumer(consumer, timeout_s=5)
    assert consumer.stopped


async def test_our_own_cancellation_still_propagates() -> None:
    started = asyncio.Event()

    async def stop_slowly() -> None:
        started.set()
        await asyncio.sleep(10)

    consumer = _Consumer()
    consumer.stop = stop_slowly  # type: ignore[method-assign]
    task = asyncio.create_task(stop_consumer(consumer, timeout_s=5))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_close_that_hangs_is_abandoned_after_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closing_cancelled = asyncio.Event()

    async def hang() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            closing_cancelled.set()
            raise

    consumer = _Consumer()
    consumer.stop = hang  # type: ignore[method-assign]
    await asyncio.wait_for(stop_consumer(consumer, timeout_s=0.05), timeout=5)
    await asyncio.wait_for(closing_cancelled.wait(), timeout=5)
    messages = [record.getMessage() for record in caplog.records]
    assert any("did not close within" in message for message in messages)
    # The stuck close is named with its stack, so the log says what it waited on.
    assert any("pending task kafka-consumer-close" in message for message in messages)


async def test_other_close_errors_propagate() -> None:
    async def fail() -> None:
        raise RuntimeError("broken")

    consumer = _Consumer()
    consumer.stop = fail  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="broken"):
        await stop_consumer(consumer, timeout_s=5)
