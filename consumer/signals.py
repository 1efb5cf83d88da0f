"""Run a coroutine until SIGINT/SIGTERM: the first signal drains, a second one abandons."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger(__name__)


def run_until_signalled(work: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run ``work(stop)``; the first SIGINT/SIGTERM sets ``stop``, a second one abandons it."""

    async def supervise() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        task = asyncio.create_task(work(stop))

        def on_signal(signum: int) -> None:
            if stop.is_set():
                logger.warning("second signal: abandoning in-flight work (it will be redelivered)")
                task.cancel()
                return
            logger.info("signal %s: draining, then stopping", signal.Signals(signum).name)
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            await task
        except asyncio.CancelledError:
            if not stop.is_set():
                raise

    asyncio.run(supervise())
