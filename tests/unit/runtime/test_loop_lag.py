"""The loop-lag watcher sees the event loop blocked and stays near zero when it is not."""

from __future__ import annotations

import asyncio
import contextlib
import time

from prometheus_client import CollectorRegistry, Histogram

from consumer.runtime.loop_lag import watch_loop_lag


def _histogram() -> Histogram:
    return Histogram("lag_seconds", "test", registry=CollectorRegistry(), buckets=(0.05, 1.0))


def _count_and_sum(histogram: Histogram) -> tuple[float, float]:
    samples = {s.name: s.value for s in next(iter(histogram.collect())).samples}
    return samples["lag_seconds_count"], samples["lag_seconds_sum"]


async def test_a_blocked_loop_is_measured_as_lag() -> None:
    histogram = _histogram()
    watcher = asyncio.create_task(watch_loop_lag(histogram, interval_s=0.02))
    await asyncio.sleep(0.1)
    _, idle_sum = _count_and_sum(histogram)
    time.sleep(0.3)  # noqa: ASYNC251 (what a decode holding the interpreter lock does)
    await asyncio.sleep(0.05)
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    count, total = _count_and_sum(histogram)
    assert count >= 3
    assert idle_sum < 0.1
    assert total - idle_sum >= 0.25
