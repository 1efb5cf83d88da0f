"""The phases of a run, in order: raw Triton, the pipeline over a backlog, its latency under a
paced load, and the naive consumer over the same backlog."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from bench.e2e.config import (
    LATENCY_LOAD_FRACTION,
    TENANTS,
    BenchConfig,
    consumer_settings,
    decision_topics,
    describe_settings,
    stall_timeout_s,
)
from bench.e2e.cpu import CpuMeter
from bench.e2e.images import BenchImage
from bench.e2e.naive import run_naive_consumer
from bench.e2e.outcomes import latency_result, stream_result
from bench.e2e.publish import (
    E2E_PREFIX,
    publish_backlog,
    publish_paced,
    read_records,
    wait_for_commits,
)
from bench.e2e.results import Measurements, PublishResult, RawTritonResult
from bench.local.tansu import TansuBroker, ensure_topics
from bench.local.triton import TritonServer
from consumer.contract.parse import parse_event
from consumer.imaging.decode import ImageLimits, decode_base64, decode_image
from consumer.inference.triton import TritonClassifier
from consumer.moderation.policy import load_policy
from consumer.produce import build_event
from consumer.runtime.kafka import build_producer
from consumer.runtime.metrics import Metrics
from consumer.runtime.settings import Settings
from consumer.service import serve, topic_routes

logger = logging.getLogger(__name__)

Pixels = npt.NDArray[np.uint8]


async def measure(
    config: BenchConfig,
    images: Sequence[BenchImage],
    broker: TansuBroker,
    triton: TritonServer,
    measurements: Measurements,
    groups: Mapping[str, int],
) -> None:
    """Run every phase against ``broker`` and ``triton``, filling in ``measurements``."""
    run = uuid.uuid4().hex[:8]
    settings = consumer_settings(config, broker, triton, run, images)
    policies = load_policy(settings.policy.path, topic_routes(settings.topics))
    measurements.settings = describe_settings(config, settings)
    meter = CpuMeter(groups)

    await _raw_triton_phase(config, settings, images, meter, measurements)

    kafka = settings.kafka
    naive_topic = f"bench-naive-decisions-{run}"
    outcome_topics = [*decision_topics(policies), settings.topics.dead_letter]
    await ensure_topics(
        kafka.bootstrap_servers,
        {kafka.input_topic: config.partitions, naive_topic: 1, **{t: 1 for t in outcome_topics}},
    )
    backlog = await _pipeline_phases(config, settings, images, outcome_topics, meter, measurements)

    logger.info("naive consumer: one event at a time over the same backlog")
    naive_started = time.time()
    with meter.phase("naive", measurements.phase_cpu):
        naive_committed = await run_naive_consumer(
            settings,
            policies,
            backlog.ends,
            naive_topic,
            ImageLimits.from_settings(settings.imaging),
            stall_timeout_s(config),
        )
    naive_records = await read_records(kafka, [naive_topic], config.events, timeout_s=60)
    measurements.naive = stream_result(
        naive_records,
        E2E_PREFIX,
        config.events,
        settings.topics.dead_letter,
        naive_started,
        naive_committed,
        1.0,
    )


async def _raw_triton_phase(
    config: BenchConfig,
    settings: Settings,
    images: Sequence[BenchImage],
    meter: CpuMeter,
    measurements: Measurements,
) -> None:
    batch_size = settings.batching.max_batch_size
    inflight = settings.triton.max_inflight_batches
    limits = ImageLimits.from_settings(settings.imaging)
    classifier = TritonClassifier(settings.triton)
    try:
        spec = await classifier.connect(batch_size)
        measurements.cpu_per_event_ms = per_event_costs(images, spec.input_size, limits)
        pool = [decode_image(image.jpeg, spec.input_size, limits).pixels for image in images]
        logger.info("raw Triton: batches of %d, %d in flight", batch_size, inflight)
        with meter.phase("raw_triton", measurements.phase_cpu):
            raw = await measure_raw_triton(
                classifier, pool, config.events, batch_size, inflight, config.raw_min_seconds
            )
        measurements.raw_triton = raw
        # Not a target, a diagnosis: how Triton's cost per image depends on the batch size.
        for size in sorted(size for size in {1, 4, 8, 16} if size < batch_size):
            measurements.raw_triton_by_batch_size.append(
                await measure_raw_triton(
                    classifier, pool, config.events, size, inflight, config.raw_min_seconds / 4
                )
            )
        measurements.raw_triton_by_batch_size.append(raw)
    finally:
        await classifier.close()


async def _pipeline_phases(
    config: BenchConfig,
    settings: Settings,
    images: Sequence[BenchImage],
    outcome_topics: Sequence[str],
    meter: CpuMeter,
    measurements: Measurements,
) -> PublishResult:
    """The backlog, then the latency run, through one running consumer; returns the backlog."""
    kafka = settings.kafka
    stall_s = stall_timeout_s(config)
    producer = build_producer(kafka)
    await producer.start()
    try:
        logger.info("publishing a backlog of %d events to %s", config.events, kafka.input_topic)
        with meter.phase("publish_backlog", measurements.phase_cpu):
            backlog = await publish_backlog(producer, kafka.input_topic, images, config.events)
        measurements.publish = backlog

        metrics = Metrics()
        stop = asyncio.Event()
        consumer_started = time.time()
        serving = asyncio.create_task(serve(settings, stop, metrics=metrics), name="bench-serve")
        try:
            logger.info("end to end: the consumer drains the backlog")
            with meter.phase("end_to_end", measurements.phase_cpu):
                committed_at = await wait_for_commits(kafka, backlog.ends, serving, stall_s)
            e2e_batches = _batch_totals(metrics)
            outcomes = await read_records(kafka, outcome_topics, config.events, timeout_s=60)
            e2e = stream_result(
                outcomes,
                E2E_PREFIX,
                config.events,
                settings.topics.dead_letter,
                consumer_started,
                committed_at,
                _mean_batch(e2e_batches),
            )
            measurements.end_to_end = e2e

            rate = e2e.decisions_per_s * LATENCY_LOAD_FRACTION
            logger.info("latency: %.1f events/s for %.0fs", rate, config.latency_seconds)
            with meter.phase("latency", measurements.phase_cpu):
                paced = await publish_paced(
                    producer, kafka.input_topic, images, rate, config.latency_seconds, config.events
                )
                ends = {
                    p: max(backlog.ends.get(p, 0), paced.ends.get(p, 0))
                    for p in {*backlog.ends, *paced.ends}
                }
                await wait_for_commits(kafka, ends, serving, stall_s)
            latency_batches = _batch_totals(metrics, since=e2e_batches)
        finally:
            await stop_consumer(serving, stop, settings.flow.drain_timeout_s)
    finally:
        await producer.stop()

    outcomes = await read_records(kafka, outcome_topics, config.events + paced.events, timeout_s=60)
    measurements.latency = latency_result(outcomes, paced, rate, _mean_batch(latency_batches))
    return backlog


async def stop_consumer(serving: asyncio.Task[None], stop: asyncio.Event, drain_s: float) -> None:
    """Ask the consumer to drain and stop; cancel it if it overstays its drain deadline."""
    stop.set()
    try:
        await asyncio.wait_for(serving, timeout=drain_s + 30)
    except TimeoutError:
        logger.warning("the consumer did not stop within %.0fs; cancelled", drain_s + 30)


def _batch_totals(metrics: Metrics, since: tuple[float, float] = (0.0, 0.0)) -> tuple[float, float]:
    """(images, batches) sent to Triton by the pipeline, minus ``since``."""
    registry = metrics.registry
    images = registry.get_sample_value("modstream_batch_size_sum") or 0.0
    batches = registry.get_sample_value("modstream_batch_size_count") or 0.0
    return images - since[0], batches - since[1]


def _mean_batch(totals: tuple[float, float]) -> float | None:
    images, batches = totals
    return round(images / batches, 2) if batches else None


def per_event_costs(
    images: Sequence[BenchImage], input_size: int, limits: ImageLimits
) -> dict[str, float]:
    """Milliseconds per event, on one thread, of the CPU-bound steps every consumer repeats."""
    values = [build_event(image.jpeg, TENANTS[0]).model_dump_json().encode() for image in images]
    rounds = 3
    totals = {"parse_event_ms": 0.0, "decode_base64_ms": 0.0, "decode_image_ms": 0.0}
    for _ in range(rounds):
        for value in values:
            began = time.perf_counter()
            event = parse_event(value)
            parsed = time.perf_counter()
            raw = decode_base64(event.image_b64 or "", limits)
            unwrapped = time.perf_counter()
            decode_image(raw, input_size, limits)
            done = time.perf_counter()
            totals["parse_event_ms"] += parsed - began
            totals["decode_base64_ms"] += unwrapped - parsed
            totals["decode_image_ms"] += done - unwrapped
    count = rounds * len(values)
    return {name: round(total * 1000 / count, 3) for name, total in totals.items()}


async def measure_raw_triton(
    classifier: TritonClassifier,
    pool: Sequence[Pixels],
    count: int,
    batch_size: int,
    inflight: int,
    min_seconds: float,
) -> RawTritonResult:
    """Images/s of pre-decoded batches with ``inflight`` requests outstanding.

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
    began = time.perf_counter()
    while True:
        await asyncio.gather(*(one(batch) for batch in batches))
        sent += count
        elapsed = time.perf_counter() - began
        if elapsed >= min_seconds:
            break
    return RawTritonResult(
        images=sent,
        batches=len(request_seconds),
        batch_size=batch_size,
        inflight_batches=inflight,
        seconds=round(elapsed, 4),
        images_per_s=round(sent / elapsed, 2),
        mean_request_ms=round(1000 * float(np.mean(request_seconds)), 3),
    )
