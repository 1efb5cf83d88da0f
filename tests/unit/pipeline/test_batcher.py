from __future__ import annotations

import asyncio

import pytest

from consumer.pipeline.batcher import MicroBatcher


async def test_full_batch_is_released_without_waiting() -> None:
    batcher: MicroBatcher[int] = MicroBatcher(max_size=4, max_wait_s=60)
    for i in range(10):
        batcher.put(i)
    async with asyncio.timeout(1):
        assert await batcher.next_batch() == [0, 1, 2, 3]
        assert await batcher.next_batch() == [4, 5, 6, 7]


async def test_partial_batch_is_released_after_max_wait() -> None:
    batcher: MicroBatcher[int] = MicroBatcher(max_size=32, max_wait_s=0.05)
    batcher.put(1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await batcher.next_batch() == [1]
    assert loop.time() - started >= 0.04


async def test_items_arriving_during_the_wait_join_the_batch() -> None:
    batcher: MicroBatcher[int] = MicroBatcher(max_size=3, max_wait_s=5)
    batcher.put(1)

    async def feed() -> None:
        await asyncio.sleep(0.01)
        batcher.put(2)
        await asyncio.sleep(0.01)
        batcher.put(3)

    feeder = asyncio.create_task(feed())
    async with asyncio.timeout(1):
        assert await batcher.next_batch() == [1, 2, 3]
    await feeder


async def test_close_drains_then_returns_empty() -> None:
    batcher: MicroBatcher[int] = MicroBatcher(max_size=2, max_wait_s=60)
    batcher.put(1)
    batcher.put(2)
    batcher.put(3)
    batcher.close()
    assert await batcher.next_batch() == [1, 2]
    assert await batcher.next_batch() == [3]
    assert await batcher.next_batch() == []
    with pytest.raises(RuntimeError, match="closed"):
        batcher.put(4)


async def test_waiting_consumer_wakes_on_close() -> None:
    batcher: MicroBatcher[int] = MicroBatcher(max_size=2, max_wait_s=60)
    waiter = asyncio.create_task(batcher.next_batch())
    await asyncio.sleep(0.01)
    batcher.close()
    async with asyncio.timeout(1):
        assert await waiter == []
