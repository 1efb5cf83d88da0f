"""The consumer a user would write instead of modstream: every image its own Triton request,
many at once, and Triton's dynamic batcher doing all the batching.

It reads with the pipeline's Kafka settings, decodes with the pipeline's functions on
asyncio's default thread pool, keeps up to ``max_inflight`` events in flight, produces each
decision as soon as it has it and commits contiguous completed offsets every
``commit_interval_ms``. What it lacks is the consumer's own micro-batcher, so comparing the
two shows what that adds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime

import numpy as np
from aiokafka import TopicPartition

from bench.e2e.naive import read_image
from bench.e2e.publish import Record
from bench.e2e.results import BenchmarkStalled
from consumer.contract.events import ImageEvent
from consumer.contract.headers import Headers
from consumer.imaging.decode import DecodedImage, ImageLimits, decode_image
from consumer.inference.triton import TritonClassifier
from consumer.moderation.decide import StageTimes, decide_event
from consumer.moderation.policy import PolicySet
from consumer.runtime.kafka import build_consumer, build_producer
from consumer.runtime.settings import Settings


def _prepare(
    value: bytes | None, headers: Headers | None, input_size: int, limits: ImageLimits
) -> tuple[ImageEvent, DecodedImage]:
    event, data = read_image(value, headers, limits)
    return event, decode_image(data, input_size, limits)


class _Offsets:
    """Completed offsets per partition and the contiguous prefix that may be committed."""

    def __init__(self) -> None:
        self._next: dict[int, int] = {}
        self._done: dict[int, set[int]] = {}

    def started(self, partition: int, offset: int) -> None:
        self._next.setdefault(partition, offset)
        self._done.setdefault(partition, set())

    def finished(self, partition: int, offset: int) -> None:
        self._done[partition].add(offset)

    def committable(self) -> dict[int, int]:
        """Advance each partition past its contiguous completed offsets; return the new ends."""
        moved = {}
        for partition, done in self._done.items():
            position = self._next[partition]
            while position in done:
                done.remove(position)
                position += 1
            if position != self._next[partition]:
                self._next[partition] = position
                moved[partition] = position
        return moved


async def run_peer_consumer(
    settings: Settings,
    policies: PolicySet,
    ends: Mapping[int, int],
    topic: str,
    limits: ImageLimits,
    timeout_s: float,
    max_inflight: int,
) -> None:
    """Process the backlog up to ``ends`` with one Triton request per image, concurrently.

    Raises BenchmarkStalled when the backlog is not committed within ``timeout_s``, and the
    first error of any event (the benchmark's events are all valid).
    """
    kafka = settings.kafka
    consumer = build_consumer(kafka)
    producer = build_producer(kafka)
    classifier = TritonClassifier(settings.triton)
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(max_inflight)
    offsets = _Offsets()
    tasks: set[asyncio.Task[None]] = set()
    errors: list[BaseException] = []
    committed: dict[int, int] = {}
    commit_every_s = kafka.commit_interval_ms / 1000

    async def handle(record: Record) -> None:
        spec = classifier.spec
        try:
            consumed_at = datetime.now(UTC)
            event, image = await loop.run_in_executor(
                None, _prepare, record.value, record.headers, spec.input_size, limits
            )
            result = await classifier.classify(image.pixels[np.newaxis])
            times = StageTimes(consumed_at, image.decode_seconds, 0.0, result.seconds)
            similarity = result.prototype_similarity
            routed = decide_event(
                event,
                result.probs[0],
                spec,
                policies,
                times,
                decided_at=datetime.now(UTC),
                prototype_similarity=similarity[0] if similarity is not None else None,
            )
            await producer.send_and_wait(
                topic, routed.decision.model_dump_json().encode(), key=event.event_id.encode()
            )
            offsets.finished(record.partition, record.offset)
        finally:
            slots.release()

    async def commit() -> None:
        moved = offsets.committable()
        if moved:
            await consumer.commit(
                {TopicPartition(kafka.input_topic, p): offset for p, offset in moved.items()}
            )
            committed.update(moved)

    def settled(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            errors.append(task.exception() or RuntimeError("a peer task failed"))

    def done() -> bool:
        return all(committed.get(p, 0) >= end for p, end in ends.items() if end > 0)

    try:
        await classifier.connect(1)
        await producer.start()
        consumer.subscribe([kafka.input_topic])
        await consumer.start()
        async with asyncio.timeout(timeout_s):
            last_commit = time.monotonic()
            while not done():
                batches = await consumer.getmany(timeout_ms=100)
                for tp, records in batches.items():
                    for record in records:
                        if record.offset >= ends.get(tp.partition, 0):
                            # Past the backlog (the latency phase's events): not this run's.
                            consumer.pause(tp)
                            break
                        await slots.acquire()
                        offsets.started(tp.partition, record.offset)
                        task = asyncio.create_task(handle(record))
                        tasks.add(task)
                        task.add_done_callback(settled)
                if errors:
                    raise errors[0]
                if time.monotonic() - last_commit >= commit_every_s or not tasks:
                    await commit()
                    last_commit = time.monotonic()
            await asyncio.gather(*tasks)
    except TimeoutError as exc:
        raise BenchmarkStalled(f"the peer consumer did not finish within {timeout_s:.0f}s") from exc
    finally:
        for task in tasks:
            task.cancel()
        await consumer.stop()
        await producer.stop()
        await classifier.close()
