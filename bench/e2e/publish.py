"""The harness on the broker: publish the events, wait for a group's commits, read outcomes."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Final, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord, RecordMetadata

from bench.e2e.child import ConsumerChild
from bench.e2e.config import TENANTS
from bench.e2e.images import BenchImage
from bench.e2e.results import BenchmarkStalled, PublishResult
from consumer.produce import OutgoingRecord, build_event, json_record, raw_record
from consumer.runtime.settings import KafkaSettings

# Event ids start with the phase that published them, so outcomes can be told apart.
E2E_PREFIX: Final = "e2e-"
LATENCY_PREFIX: Final = "lat-"
# Each poll is a request the broker answers while it is being measured: not too often.
POLL_INTERVAL_S: Final = 0.25

# The bench's photos are JPEGs (bench.e2e.images).
RAW_CONTENT_TYPE: Final = "image/jpeg"

Record: TypeAlias = ConsumerRecord[bytes, bytes]


def _sources(
    images: Sequence[BenchImage], prefix: str, count: int
) -> Iterator[tuple[str, str, bytes]]:
    """(event_id, tenant, jpeg) for each event: photos and tenants cycled."""
    pairs = zip(itertools.cycle(images), itertools.cycle(TENANTS), strict=False)
    for i, (image, tenant) in enumerate(itertools.islice(pairs, count)):
        yield f"{prefix}{i:06d}", tenant, image.jpeg


def outgoing(jpeg: bytes, tenant: str, event_id: str, raw: bool) -> OutgoingRecord:
    """One event as a record: a JSON ImageEvent with the image inline as base64, or (``raw``)
    a raw-image record, the JPEG as the value and the event fields as headers. Its created_at
    is now."""
    if raw:
        return raw_record(jpeg, tenant, RAW_CONTENT_TYPE, event_id)
    return json_record(build_event(jpeg, tenant, event_id))


async def _send(
    producer: AIOKafkaProducer, topic: str, record: OutgoingRecord
) -> tuple[int, asyncio.Future[RecordMetadata]]:
    """Send ``record``; return the bytes of its value and headers, and its acknowledgement."""
    ack: asyncio.Future[RecordMetadata] = await producer.send(
        topic, record.value, key=record.key, headers=record.headers or None
    )
    size = len(record.value) + sum(len(k) + len(v) for k, v in record.headers)
    return size, ack


async def _ends(acks: Sequence[asyncio.Future[RecordMetadata]]) -> dict[int, int]:
    ends: dict[int, int] = {}
    for ack in acks:
        meta = await ack
        ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    return ends


async def publish_backlog(
    producer: AIOKafkaProducer,
    topic: str,
    images: Sequence[BenchImage],
    count: int,
    raw: bool = False,
) -> PublishResult:
    """Publish ``count`` events keyed by event_id (raw-image records if ``raw``) and wait for
    every acknowledgement."""
    began = time.perf_counter()
    acks = []
    total = 0
    for event_id, tenant, jpeg in _sources(images, E2E_PREFIX, count):
        size, ack = await _send(producer, topic, outgoing(jpeg, tenant, event_id, raw))
        total += size
        acks.append(ack)
    ends = await _ends(acks)
    return PublishResult(count, total, round(time.perf_counter() - began, 4), ends)


async def publish_paced(
    producer: AIOKafkaProducer,
    topic: str,
    images: Sequence[BenchImage],
    rate: float,
    seconds: float,
    max_events: int | None = None,
    raw: bool = False,
) -> PublishResult:
    """Publish ``rate`` events a second for ``seconds`` (at most ``max_events``; raw-image
    records if ``raw``); each created_at is its sending time."""
    rate = max(rate, 1.0)
    count = max(1, round(rate * seconds))
    if max_events is not None and count > max_events:
        # The broker keeps every event in memory: never more than the backlog again.
        count = max_events
    loop = asyncio.get_running_loop()
    began = loop.time()
    acks = []
    total = 0
    for i, (event_id, tenant, jpeg) in enumerate(_sources(images, LATENCY_PREFIX, count)):
        delay = began + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        size, ack = await _send(producer, topic, outgoing(jpeg, tenant, event_id, raw))
        total += size
        acks.append(ack)
    sending_s = loop.time() - began
    ends = await _ends(acks)
    return PublishResult(count, total, round(sending_s, 4), ends)


async def wait_for_commits(
    kafka: KafkaSettings, ends: Mapping[int, int], child: ConsumerChild, timeout_s: float
) -> float:
    """Poll the group's committed offsets until they reach ``ends``; return that wall time.

    Raises BenchmarkStalled when the consumer exits or ``timeout_s`` passes first.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        partitions = [TopicPartition(kafka.input_topic, p) for p in ends]
        deadline = time.monotonic() + timeout_s
        while True:
            if child.exited():
                raise BenchmarkStalled(
                    f"{child.name} exited ({child.returncode}) before committing the backlog:\n"
                    f"{child.log_tail()}"
                )
            offsets = await admin.list_consumer_group_offsets(kafka.group_id, partitions=partitions)
            committed = {tp.partition: meta.offset for tp, meta in offsets.items()}
            if all(committed.get(p, -1) >= end for p, end in ends.items()):
                return time.time()
            if time.monotonic() > deadline:
                raise BenchmarkStalled(
                    f"{child.name} had committed {committed} of {dict(ends)} after "
                    f"{timeout_s:.0f}s:\n{child.log_tail()}"
                )
            await asyncio.sleep(POLL_INTERVAL_S)
    finally:
        await admin.close()


async def read_records(
    kafka: KafkaSettings,
    topics: Sequence[str],
    expected: int,
    timeout_s: float,
    since: float | None = None,
) -> list[Record]:
    """Every record of ``topics`` (only those produced at or after the Unix time ``since``,
    when given), once ``expected`` arrived or time runs out.

    ``since`` tells apart what runs writing to the same topics produced; it goes by the
    records' own timestamps because Tansu's end offsets can lag behind the last batch.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=kafka.max_partition_fetch_bytes,
        fetch_max_bytes=kafka.fetch_max_bytes,
    )
    await consumer.start()
    records: list[Record] = []
    earliest_ms = since * 1000 if since is not None else None
    try:
        await consumer.topics()  # refreshes metadata so partitions_for_topic knows every topic
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                records.extend(
                    r for r in batch if earliest_ms is None or r.timestamp >= earliest_ms
                )
    finally:
        await consumer.stop()
    return records
