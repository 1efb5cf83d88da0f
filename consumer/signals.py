"""Run a coroutine until SIGINT/SIGTERM: the first signal drains, a second one abandons."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger(__name__)

_early_signals: list[int] = []


def defer_signals() -> None:
    """Hold SIGINT/SIGTERM that arrive while the process is still starting up.

    Imports and connecting take a few seconds; a SIGTERM in that window (a fast rollout, a
    scale-down) would otherwise kill the process mid-start instead of letting it stop cleanly.
    ``run_until_signalled`` replays what was held.
    """

    def hold(signum: int, _frame: object) -> None:
        _early_signals.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, hold)


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
        while _early_signals:
            on_signal(_early_signals.pop(0))
        try:
            await task
        except asyncio.CancelledError:
            if not stop.is_set():
                raise

    asyncio.run(supervise())
