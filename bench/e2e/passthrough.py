"""The broker alone: a consumer that only fetches each event, produces a decision-sized record
for it and commits, so the broker's CPU per event can be measured without decoding or
inference competing for the cores."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from aiokafka import TopicPartition
from aiokafka.structs import RecordMetadata

from bench.e2e.results import BenchmarkStalled
from consumer.runtime.kafka import build_consumer, build_producer
from consumer.runtime.settings import Settings


async def run_passthrough(
    settings: Settings, ends: Mapping[int, int], topic: str, payload: bytes, timeout_s: float
) -> None:
    """Read the backlog up to ``ends``; for each event produce ``payload`` keyed like it.

    Offsets are committed, after the acknowledgements, as often as the consumer commits
    (``commit_interval_ms``), so the broker sees the same kind of traffic as from the pipeline.

    Raises BenchmarkStalled when the backlog is not done within ``timeout_s``.
    """
    kafka = settings.kafka
    consumer = build_consumer(kafka)
    producer = build_producer(kafka)
    remaining = {p for p, end in ends.items() if end > 0}
    pending: list[asyncio.Future[RecordMetadata]] = []
    positions: dict[TopicPartition, int] = {}
    commit_every_s = kafka.commit_interval_ms / 1000

    async def commit() -> None:
        await asyncio.gather(*pending)
        pending.clear()
        if positions:
            await consumer.commit(dict(positions))
            for tp, position in positions.items():
                if position >= ends.get(tp.partition, 0):
                    remaining.discard(tp.partition)
            positions.clear()

    try:
        await producer.start()
        consumer.subscribe([kafka.input_topic])
        await consumer.start()
        async with asyncio.timeout(timeout_s):
            last_commit = time.monotonic()
            while remaining:
                batches = await consumer.getmany(timeout_ms=100)
                for tp, records in batches.items():
                    for record in records:
                        if record.offset >= ends.get(tp.partition, 0):
                            consumer.pause(tp)
                            break
                        pending.append(await producer.send(topic, payload, key=record.key))
                        positions[tp] = record.offset + 1
                if time.monotonic() - last_commit >= commit_every_s or not batches:
                    await commit()
                    last_commit = time.monotonic()
            await commit()
    except TimeoutError as exc:
        raise BenchmarkStalled(
            f"the pass-through consumer did not finish within {timeout_s:.0f}s"
        ) from exc
    finally:
        await consumer.stop()
        await producer.stop()
