"""Where the CPU-bound part of preparing an event runs: threads or worker processes.

Threads share the interpreter lock, and parsing, base64 and the Python glue around Pillow
hold it: a consumer decoding in threads uses about 0.7 of a core however many it has.
Worker processes each have their own interpreter, so decoding uses every core while the
event loop (heartbeats, commits, produce) stays responsive. The in-flight bounds of the
flow control bound what is queued here, so the pool needs no queue of its own.

A worker that dies (the kernel's OOM killer, a crash in a native decoder) breaks a process
pool for every call in it. The pool is rebuilt and each of those calls tried once more on
the new one; a call that breaks a fresh pool again raises ``DecodeWorkerLost``, so one
poisonous image is dead-lettered instead of stalling its partition.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import multiprocessing
import signal
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Literal, ParamSpec, TypeVar

from consumer.runtime.logs import configure_logging
from consumer.runtime.settings import LogSettings

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

PoolKind = Literal["threads", "processes"]


class DecodeWorkerLost(Exception):
    """A decode worker process died while working on this call, twice."""


class DecodePool:
    """Runs CPU-bound functions off the event loop, in threads or worker processes."""

    def __init__(self, workers: int, kind: PoolKind, log_settings: LogSettings) -> None:
        self._workers = workers
        self._kind = kind
        self._log_settings = log_settings
        self._executor = self._new_executor()

    @property
    def kind(self) -> PoolKind:
        return self._kind

    async def run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``function(*args)`` in the pool; with processes, function and arguments must
        pickle. Raises what the function raises, or DecodeWorkerLost."""
        for attempt in (1, 2):
            executor = self._executor
            try:
                return await asyncio.get_running_loop().run_in_executor(
                    executor, _call, function, args, kwargs
                )
            except BrokenProcessPool as exc:
                self._replace(executor)
                if attempt == 2:
                    raise DecodeWorkerLost(
                        "a decode worker process died twice while preparing this event (out "
                        "of memory, or a crash in a native decoder); check the worker's "
                        "memory limit and MODSTREAM_IMAGING__MAX_DECODE_BYTES"
                    ) from exc
        raise RuntimeError("unreachable: the second attempt returns or raises")

    async def warm_up(self) -> None:
        """Start every worker process now, so the first events do not wait for imports."""
        if self._kind == "processes":
            await asyncio.gather(*(self.run(_ready) for _ in range(self._workers)))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _replace(self, broken: Executor) -> None:
        # Several calls see the same broken pool; only the first replaces it.
        if self._executor is broken:
            logger.error("a decode worker process died; starting a new pool")
            broken.shutdown(wait=False, cancel_futures=True)
            self._executor = self._new_executor()

    def _new_executor(self) -> Executor:
        if self._kind == "threads":
            return ThreadPoolExecutor(self._workers, thread_name_prefix="modstream-decode")
        # spawn, not fork: the parent runs an event loop and client threads that a forked
        # child would inherit in whatever state they were in.
        return ProcessPoolExecutor(
            self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self._log_settings,),
        )


def _call(function: Callable[..., T], args: tuple[object, ...], kwargs: dict[str, object]) -> T:
    return function(*args, **kwargs)


def _init_worker(log_settings: LogSettings) -> None:
    configure_logging(log_settings)
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _ready() -> bool:
    # A worker imports the decode stack when it unpickles its first call; do it at startup.
    importlib.import_module("consumer.imaging.unpack")
    return True
