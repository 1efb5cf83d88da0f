"""The necessary stages, each measured alone: parse + base64 + decode of one event on one
thread, and Triton on pre-decoded batches of each size (its CPU per image included).

A raw-image record has no base64: its parse reads the headers only and its value is the JPEG,
so its base64 step costs nothing and is reported as 0."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from bench.e2e.config import TENANTS
from bench.e2e.cpu import HARNESS, CpuMeter
from bench.e2e.images import BenchImage
from bench.e2e.publish import outgoing
from bench.e2e.results import RawTritonResult
from consumer.contract.parse import parse_record
from consumer.imaging.decode import ImageLimits, decode_base64, decode_image
from consumer.inference.triton import TritonClassifier

Pixels = npt.NDArray[np.uint8]

STEPS = ("parse_event", "decode_base64", "decode_image")


def per_event_costs(
    images: Sequence[BenchImage],
    input_size: int,
    limits: ImageLimits,
    rounds: int = 3,
    raw: bool = False,
) -> dict[str, float]:
    """Milliseconds per event of the CPU-bound steps every consumer repeats, on one thread,
    on records as the run publishes them (raw-image records if ``raw``).

    ``<step>_cpu_ms`` is the thread's CPU time (what the step costs the machine), ``<step>_ms``
    the wall time (what it takes on a core that is also busy with other work). The parse step
    is the pipeline's ``parse_record`` (kept under the name ``parse_event``); with ``raw`` the
    base64 step does nothing and is 0.
    """
    records = [outgoing(im.jpeg, TENANTS[0], f"stage-{i}", raw) for i, im in enumerate(images)]
    cpu = dict.fromkeys(STEPS, 0.0)
    wall = dict.fromkeys(STEPS, 0.0)
    for _ in range(rounds):
        for record in records:
            marks = [(time.thread_time(), time.perf_counter())]
            parsed = parse_record(record.value, record.headers)
            marks.append((time.thread_time(), time.perf_counter()))
            if parsed.image is not None:
                data = parsed.image
                # Nothing to decode: the same mark again, so the step adds exactly 0.
                marks.append(marks[-1])
            else:
                data = decode_base64(parsed.event.image_b64 or "", limits)
                marks.append((time.thread_time(), time.perf_counter()))
            decode_image(data, input_size, limits)
            marks.append((time.thread_time(), time.perf_counter()))
            for step, (before, after) in zip(STEPS, itertools.pairwise(marks), strict=True):
                cpu[step] += after[0] - before[0]
                wall[step] += after[1] - before[1]
    count = rounds * len(records)
    costs = {f"{step}_ms": round(wall[step] * 1000 / count, 3) for step in STEPS}
    costs.update({f"{step}_cpu_ms": round(cpu[step] * 1000 / count, 3) for step in STEPS})
    return costs


async def measure_raw_triton(
    classifier: TritonClassifier,
    pool: Sequence[Pixels],
    count: int,
    batch_size: int,
    inflight: int,
    min_seconds: float,
    meter: CpuMeter,
) -> RawTritonResult:
    """Images/s of pre-decoded batches with ``inflight`` requests outstanding, and the CPU per
    image they cost tritonserver and this process (the client).

    Passes of ``count`` images repeat until ``min_seconds`` have passed: a pass of a dozen
    batches alone is too short to time.
    """
    cycle = itertools.cycle(pool)
    sizes = [min(batch_size, count - start) for start in range(0, count, batch_size)]
    batches = [np.stack([next(cycle) for _ in range(size)]) for size in sizes]
    await classifier.classify(batches[0])  # warm-up, not timed

    slots = asyncio.Semaphore(inflight)
    request_seconds: list[float] = []

    async def one(batch: Pixels) -> None:
        async with slots:
            result = await classifier.classify(batch)
        request_seconds.append(result.seconds)

    sent = 0
    before = meter.sample()
    began = time.perf_counter()
    while True:
        await asyncio.gather(*(one(batch) for batch in batches))
        sent += count
        elapsed = time.perf_counter() - began
        if elapsed >= min_seconds:
            break
    after = meter.sample()

    def per_image(group: str) -> float | None:
        if group not in after:
            return None
        return round((after[group] - before[group]) * 1000 / sent, 3)

    return RawTritonResult(
        images=sent,
        batches=len(request_seconds),
        batch_size=batch_size,
        inflight_batches=inflight,
        seconds=round(elapsed, 4),
        images_per_s=round(sent / elapsed, 2),
        mean_request_ms=round(1000 * float(np.mean(request_seconds)), 3),
        triton_cpu_ms_per_image=per_image("triton"),
        client_cpu_ms_per_image=per_image(HARNESS),
    )


def cheapest(results: Sequence[RawTritonResult]) -> RawTritonResult:
    """The batch size at which Triton spends the least CPU per image (fastest where unknown)."""
    measured = [r for r in results if r.triton_cpu_ms_per_image is not None]
    if measured:
        return min(measured, key=lambda r: r.triton_cpu_ms_per_image or 0.0)
    return max(results, key=lambda r: r.images_per_s)
