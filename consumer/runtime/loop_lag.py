"""How late the event loop wakes up: the measure of whether fetches, heartbeats and commits
can still run on time while images are decoded.

A sleep of ``interval_s`` that returns ``lag`` seconds late means every callback scheduled in
that window waited as long. Decoding in threads holds the interpreter lock and shows up here;
decoding in worker processes should not.
"""

from __future__ import annotations

import asyncio

from prometheus_client import Histogram


async def watch_loop_lag(histogram: Histogram, interval_s: float = 0.25) -> None:
    """Observe the loop's lag every ``interval_s`` until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(interval_s)
        histogram.observe(max(0.0, loop.time() - started - interval_s))
