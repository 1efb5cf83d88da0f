"""The baseline: a consumer that reads, decodes, classifies, produces and commits one event at a
time, with the functions the pipeline itself calls (JSON events and raw-image records alike)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime

import numpy as np
from aiokafka import TopicPartition

from bench.e2e.publish import Record
from bench.e2e.results import BenchmarkStalled
from consumer.contract.events import ImageEvent
from consumer.contract.headers import Headers
from consumer.contract.parse import parse_record
from consumer.imaging.decode import ImageLimits, decode_base64, decode_image
from consumer.inference.triton import TritonClassifier
from consumer.moderation.decide import StageTimes, decide_event
from consumer.moderation.policy import PolicySet
from consumer.runtime.kafka import build_consumer, build_producer
from consumer.runtime.settings import Settings


def read_image(
    value: bytes | None, headers: Headers | None, limits: ImageLimits
) -> tuple[ImageEvent, bytes]:
    """The event and its image bytes, as the pipeline reads them: a raw-image record's value,
    or a JSON event's inline base64 decoded."""
    parsed = parse_record(value, headers)
    if parsed.image is not None:
        return parsed.event, parsed.image
    return parsed.event, decode_base64(parsed.event.image_b64 or "", limits)


async def run_naive_consumer(
    settings: Settings,
    policies: PolicySet,
    ends: Mapping[int, int],
    topic: str,
    limits: ImageLimits,
    timeout_s: float,
) -> float:
    """Process the backlog one record at a time; return the wall time of the last commit.

    Each record is parsed, decoded, classified alone, its decision produced and acknowledged,
    and its offset committed before the next one is read. The producer does not linger: with
    one record at a time, lingering would only add its delay to every event.

    Raises BenchmarkStalled when the backlog is not done within ``timeout_s``.
    """
    kafka = settings.kafka.model_copy(
        update={"group_id": f"{settings.kafka.group_id}-naive", "producer_linger_ms": 0}
    )
    consumer = build_consumer(kafka)
    producer = build_producer(kafka)
    classifier = TritonClassifier(settings.triton)
    remaining = {p for p, end in ends.items() if end > 0}
    try:
        spec = await classifier.connect(1)
        await producer.start()
        consumer.subscribe([kafka.input_topic])
        await consumer.start()
        async with asyncio.timeout(timeout_s):
            while remaining:
                record: Record = await consumer.getone()
                partition = TopicPartition(record.topic, record.partition)
                if record.offset >= ends.get(record.partition, 0):
                    # Past the backlog (the latency phase's events): not part of this run.
                    consumer.pause(partition)
                    remaining.discard(record.partition)
                    continue
                event, data = read_image(record.value, record.headers, limits)
                image = decode_image(data, spec.input_size, limits)
                result = await classifier.classify(image.pixels[np.newaxis])
                times = StageTimes(
                    consumed_at=datetime.now(UTC),
                    decode_s=image.decode_seconds,
                    batch_wait_s=0.0,
                    inference_s=result.seconds,
                )
                routed = decide_event(
                    event, result.probs[0], spec, policies, times, decided_at=datetime.now(UTC)
                )
                await producer.send_and_wait(
                    topic, routed.decision.model_dump_json().encode(), key=event.event_id.encode()
                )
                await consumer.commit({partition: record.offset + 1})
                if record.offset + 1 >= ends[record.partition]:
                    consumer.pause(partition)
                    remaining.discard(record.partition)
        return time.time()
    except TimeoutError as exc:
        raise BenchmarkStalled(
            f"the naive consumer did not finish within {timeout_s:.0f}s"
        ) from exc
    finally:
        await consumer.stop()
        await producer.stop()
        await classifier.close()
