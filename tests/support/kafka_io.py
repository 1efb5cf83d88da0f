"""Reading and writing test topics with plain aiokafka clients (no consumer group)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


async def produce_positions(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None, Sequence[tuple[str, bytes]]]],
) -> list[tuple[int, int]]:
    """Produce (key, value, headers) records; return each record's (partition, offset)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=32 << 20)
    await producer.start()
    try:
        acks = [
            await producer.send(topic, value, key=key, headers=list(headers))
            for key, value, headers in records
        ]
        positions = []
        for ack in acks:
            meta = await ack
            positions.append((meta.partition, meta.offset))
    finally:
        await producer.stop()
    return positions


async def produce_all(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None, Sequence[tuple[str, bytes]]]],
) -> dict[int, int]:
    """Produce (key, value, headers) records; return the end offset of each partition written."""
    return ends_of(await produce_positions(bootstrap, topic, records))


def ends_of(positions: Iterable[tuple[int, int]]) -> dict[int, int]:
    """The end offset (last + 1) of each partition among (partition, offset) positions."""
    ends: dict[int, int] = {}
    for partition, offset in positions:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    return ends


async def read_until(
    bootstrap: str, topics: Sequence[str], expected: int, timeout_s: float
) -> list[Message]:
    """Read every topic from the start until ``expected`` messages arrived or time runs out."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=32 << 20,
        fetch_max_bytes=64 << 20,
    )
    await consumer.start()
    messages: list[Message] = []
    try:
        partitions = []
        await consumer.topics()  # refreshes metadata so partitions_for_topic knows every topic
        for topic in topics:
            for partition in sorted(consumer.partitions_for_topic(topic) or ()):
                partitions.append(TopicPartition(topic, partition))
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(messages) < expected and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                messages.extend(
                    Message(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers))
                    for r in records
                )
        # Anything beyond the expected count would be a duplicate: give it a moment to show.
        if len(messages) >= expected:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                messages.extend(
                    Message(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers))
                    for r in records
                )
    finally:
        await consumer.stop()
    return messages


async def committed_offsets(
    bootstrap: str, group_id: str, topic: str, partitions: int
) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        offsets = await admin.list_consumer_group_offsets(group_id, partitions=tps)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
