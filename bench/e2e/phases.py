"""The phases of a run, in order: the stages alone (decode, raw Triton), the backlog, the
pipeline over it in each mode (the first with the latency run), the broker alone, and the peer
and naive consumers over the same backlog."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.e2e.ceiling import build_ceiling
from bench.e2e.config import (
    BenchConfig,
    consumer_settings,
    decision_topics,
    describe_settings,
    event_format,
)
from bench.e2e.consumers import Bench, run_baseline, run_broker_alone, run_pipeline
from bench.e2e.cpu import CpuMeter
from bench.e2e.images import BenchImage
from bench.e2e.modes import mode_settings, usable_cores
from bench.e2e.publish import publish_backlog, read_records
from bench.e2e.results import BenchmarkStalled, Measurements
from bench.e2e.stages import cheapest, measure_raw_triton, per_event_costs
from bench.local.tansu import TansuBroker, ensure_topics
from bench.local.triton import TritonServer
from consumer.imaging.decode import ImageLimits, decode_image
from consumer.inference.triton import TritonClassifier
from consumer.moderation.policy import load_policy
from consumer.runtime.kafka import build_producer
from consumer.runtime.settings import Settings
from consumer.service import topic_routes

logger = logging.getLogger(__name__)

# Batch sizes raw Triton is also timed at, below the consumer's own, for its cost per image.
SMALLER_BATCHES = (1, 4, 8, 16)


async def measure(
    config: BenchConfig,
    images: Sequence[BenchImage],
    broker: TansuBroker,
    triton: TritonServer,
    measurements: Measurements,
    groups: Mapping[str, int],
    work: Path,
) -> None:
    """Run every phase against ``broker`` and ``triton``, filling in ``measurements``."""
    run = uuid.uuid4().hex[:8]
    settings = consumer_settings(config, broker, triton, run, images)
    policies = load_policy(settings.policy.path, topic_routes(settings.topics))
    measurements.settings = describe_settings(config, settings)
    measurements.modes = list(config.modes)
    meter = CpuMeter(groups)

    await _stages_alone(config, settings, images, meter, measurements)

    kafka = settings.kafka
    own_topics = {kind: f"bench-{kind}-decisions-{run}" for kind in ("naive", "peer", "broker")}
    outcome_topics = [*decision_topics(policies), settings.topics.dead_letter]
    await ensure_topics(
        kafka.bootstrap_servers,
        {
            kafka.input_topic: config.partitions,
            **{t: 1 for t in own_topics.values()},
            **{t: 1 for t in outcome_topics},
        },
    )
    producer = build_producer(kafka)
    await producer.start()
    try:
        logger.info(
            "publishing a backlog of %d %s events to %s",
            config.events,
            event_format(config),
            kafka.input_topic,
        )
        with meter.phase("publish_backlog", measurements.phase_cpu):
            backlog = await publish_backlog(
                producer, kafka.input_topic, images, config.events, raw=config.raw
            )
    finally:
        await producer.stop()
    measurements.publish = backlog
    bench = Bench(config, images, triton, meter, work, backlog, measurements.phase_cpu)

    # The first mode runs last: its latency run adds events to the input topic, which the
    # other modes' consumers would otherwise read after the backlog.
    primary, *others = config.modes
    for mode in [*others, primary]:
        result, latency = await run_pipeline(
            bench,
            mode,
            mode_settings(settings, mode, config.decode_workers),
            outcome_topics,
            latency=mode == primary,
        )
        measurements.consumers[mode] = result
        bench.phase_cpu["end_to_end" if mode == primary else f"end_to_end_{mode}"] = (
            result.whole_run
        )
        if latency is not None:
            measurements.end_to_end, measurements.latency = result.stream, latency
    measurements.consumers = {mode: measurements.consumers[mode] for mode in config.modes}

    decision = await _one_decision(settings, outcome_topics)
    measurements.broker_alone = await run_broker_alone(
        bench, settings, own_topics["broker"], decision
    )
    logger.info("peer consumer: one request per image, Triton's dynamic batcher batches")
    inflight = settings.batching.max_batch_size * settings.triton.max_inflight_batches
    measurements.consumers["peer"] = await run_baseline(
        bench, "peer", settings, own_topics["peer"], max_inflight=inflight
    )
    logger.info("naive consumer: one event at a time over the same backlog")
    naive = await run_baseline(bench, "naive", settings, own_topics["naive"])
    measurements.consumers["naive"] = naive
    measurements.naive = naive.stream

    measurements.ceiling = build_ceiling(
        usable_cores(),
        measurements.cpu_per_event_ms,
        cheapest(measurements.raw_triton_by_batch_size),
        measurements.broker_alone,
    )


async def _stages_alone(
    config: BenchConfig,
    settings: Settings,
    images: Sequence[BenchImage],
    meter: CpuMeter,
    measurements: Measurements,
) -> None:
    """Decode per event on one thread, then Triton on pre-decoded batches of each size."""
    batch_size = settings.batching.max_batch_size
    inflight = settings.triton.max_inflight_batches
    limits = ImageLimits.from_settings(settings.imaging)
    classifier = TritonClassifier(settings.triton)
    try:
        spec = await classifier.connect(batch_size)
        logger.info("parse, base64 and decode alone, one event at a time")
        rounds = 1 if config.quick else 3
        measurements.cpu_per_event_ms = per_event_costs(
            images, spec.input_size, limits, rounds, raw=config.raw
        )
        pool = [decode_image(image.jpeg, spec.input_size, limits).pixels for image in images]
        logger.info("raw Triton: batches of %d, %d in flight", batch_size, inflight)
        with meter.phase("raw_triton", measurements.phase_cpu):
            raw = await measure_raw_triton(
                classifier, pool, config.events, batch_size, inflight, config.raw_min_seconds, meter
            )
        measurements.raw_triton = raw
        # Triton's CPU per image depends on the batch size; the ceiling takes the cheapest.
        for size in sorted(size for size in SMALLER_BATCHES if size < batch_size):
            measurements.raw_triton_by_batch_size.append(
                await measure_raw_triton(
                    classifier,
                    pool,
                    config.events,
                    size,
                    inflight,
                    config.raw_min_seconds / 4,
                    meter,
                )
            )
        measurements.raw_triton_by_batch_size.append(raw)
    finally:
        await classifier.close()


async def _one_decision(settings: Settings, outcome_topics: Sequence[str]) -> bytes:
    """A decision the pipeline wrote: what the pass-through consumer produces per event.

    Raises BenchmarkStalled when there is none.
    """
    decision_topics_only = [t for t in outcome_topics if t != settings.topics.dead_letter]
    records = await read_records(settings.kafka, decision_topics_only, 1, timeout_s=30)
    for record in records:
        if record.value:
            return bytes(record.value)
    raise BenchmarkStalled("no decision to measure the broker with")
