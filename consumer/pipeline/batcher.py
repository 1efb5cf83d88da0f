"""Micro-batches bounded by size and by how long the first item may wait."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

Item = TypeVar("Item")


class MicroBatcher(Generic[Item]):
    """Collects items into batches of at most ``max_size``.

    A batch is released when it is full or when its first item has waited ``max_wait_s``,
    whichever comes first, so a trickle of events is never held back for long and a flood
    fills whole batches.
    """

    def __init__(self, max_size: int, max_wait_s: float) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._max_size = max_size
        self._max_wait_s = max_wait_s
        self._items: deque[Item] = deque()
        self._wakeup = asyncio.Event()
        self._closed = False

    def put(self, item: Item) -> None:
        if self._closed:
            raise RuntimeError("the batcher is closed; no new items are accepted")
        self._items.append(item)
        self._wakeup.set()

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> None:
        """Stop waiting for more items; ``next_batch`` drains what is left, then returns []."""
        self._closed = True
        self._wakeup.set()

    async def next_batch(self) -> list[Item]:
        """Wait for the next batch; an empty list means closed and drained."""
        while not self._items:
            if self._closed:
                return []
            self._wakeup.clear()
            await self._wakeup.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait_s
        while len(self._items) < self._max_size and not self._closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                break
        count = min(self._max_size, len(self._items))
        return [self._items.popleft() for _ in range(count)]
