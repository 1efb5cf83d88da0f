"""Run a coroutine until SIGINT/SIGTERM: the first signal drains, a second one abandons.

SIGUSR2 logs every pending asyncio task with its stack: what a stuck process is waiting on.
"""

from __future__ import annotations

import asyncio
import io
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
        loop.add_signal_handler(signal.SIGUSR2, log_pending_tasks)
        while _early_signals:
            on_signal(_early_signals.pop(0))
        try:
            await task
        except asyncio.CancelledError:
            if not stop.is_set():
                raise

    asyncio.run(supervise())


def log_pending_tasks() -> None:
    """Log each pending task of the running loop with the stack it is suspended in."""
    tasks = [task for task in asyncio.all_tasks() if not task.done()]
    for task in tasks:
        stack = io.StringIO()
        task.print_stack(file=stack)
        logger.warning("pending task %s:\n%s", task.get_name(), stack.getvalue().rstrip())
    logger.warning("%d pending task(s) logged", len(tasks))
