"""Small asyncio helpers for the pipeline's tasks: tracked spawning, bounded waits, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable

logger = logging.getLogger(__name__)


def spawn(tasks: set[asyncio.Task[None]], work: Awaitable[None]) -> asyncio.Task[None]:
    """Run ``work`` as a task kept in ``tasks`` until it ends; a crash is logged, not lost."""
    task: asyncio.Task[None] = asyncio.ensure_future(work)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    task.add_done_callback(_log_crash)
    return task


async def wait_all(tasks: set[asyncio.Task[None]], deadline: float) -> bool:
    """Wait for ``tasks`` (a live set that may shrink) until the loop-time ``deadline``;
    whether they all finished."""
    pending = set(tasks)
    while pending:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return False
        _, pending = await asyncio.wait(pending, timeout=remaining)
    return True


async def cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait until it has ended."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("pipeline task failed", exc_info=task.exception())
