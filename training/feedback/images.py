"""The image a verdict is about, read back from the input record the decision came from.

The verdict carries the input record's coordinates (topic, partition, offset). The record is
read by seeking a group-less reader there; it may be gone (retention, a deleted topic), or it
may hold another event than the verdict says (a coordinate copied wrong): both are reported
and the verdict is skipped. The record is parsed as the consumer parses it (a JSON
ImageEvent, or a raw-image record) and the image is fetched through the service's own fetcher
(the egress guard refuses private hosts) and decode-checked with the service's limits, so
every image written is one the trainer loads.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from consumer.contract.events import ReviewVerdict
from consumer.contract.parse import parse_record
from consumer.errors import BrokerUnavailable, EventRejected
from consumer.imaging.decode import ImageLimits, decode_base64, decode_image
from consumer.imaging.fetch import ImageFetcher
from consumer.runtime.kafka import build_reader
from consumer.runtime.settings import ImagingSettings, KafkaSettings

logger = logging.getLogger(__name__)

CHECK_SIZE = 224
RECORD_TIMEOUT_S = 10.0
"""How long one record may take to arrive once its partition is known to hold it."""


@dataclass(frozen=True)
class FoundImage:
    verdict: ReviewVerdict
    image: bytes


@dataclass(frozen=True)
class MissingImage:
    verdict: ReviewVerdict
    reason: str


@dataclass(frozen=True)
class InputRecord:
    offset: int
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


async def read_images(
    verdicts: Sequence[ReviewVerdict], kafka: KafkaSettings, imaging: ImagingSettings
) -> list[FoundImage | MissingImage]:
    """Each verdict's image, or why there is none, in the order of ``verdicts``.

    Raises BrokerUnavailable when Kafka cannot be reached.
    """
    reader = build_reader(kafka)
    try:
        await reader.start()
    except KafkaError as exc:
        await reader.stop()
        raise BrokerUnavailable(f"cannot reach Kafka at {kafka.bootstrap_servers}: {exc}") from exc
    records: dict[int, InputRecord | str] = {}
    try:
        known = await reader.topics()
        by_partition: dict[TopicPartition, list[int]] = defaultdict(list)
        for index, verdict in enumerate(verdicts):
            source = verdict.source
            if source.topic not in known:
                records[index] = f"input topic {source.topic} does not exist"
            elif source.partition not in (reader.partitions_for_topic(source.topic) or ()):
                records[index] = f"{source.topic} has no partition {source.partition}"
            else:
                by_partition[TopicPartition(source.topic, source.partition)].append(index)
        for tp, indexes in by_partition.items():
            for index in sorted(indexes, key=lambda i: verdicts[i].source.offset):
                records[index] = await _record_at(reader, tp, verdicts[index].source.offset)
    finally:
        await reader.stop()
    limits = ImageLimits.from_settings(imaging)
    async with ImageFetcher(imaging) as fetcher:
        return [
            await image_of(verdict, records[index], limits, fetcher)
            for index, verdict in enumerate(verdicts)
        ]


async def _record_at(
    reader: AIOKafkaConsumer, tp: TopicPartition, offset: int
) -> InputRecord | str:
    """The record at ``offset``, or why it cannot be read."""
    where = f"{tp.topic}/{tp.partition}@{offset}"
    reader.assign([tp])
    reader.seek(tp, offset)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RECORD_TIMEOUT_S
    while loop.time() < deadline:
        batch = await reader.getmany(tp, timeout_ms=500, max_records=1)
        for record in batch.get(tp, []):
            if record.offset == offset:
                return InputRecord(record.offset, record.value, tuple(record.headers))
            # An offset out of range resets the reader to the earliest offset still kept.
            if record.offset > offset:
                return f"{where} is gone (the partition now starts at {record.offset}: retention)"
            return f"{where} is beyond the end of the partition"
        highwater = reader.highwater(tp)
        if highwater is not None and offset >= highwater:
            return f"{where} is beyond the end of the partition ({highwater})"
    return f"{where} did not arrive within {RECORD_TIMEOUT_S:.0f} s"


async def image_of(
    verdict: ReviewVerdict,
    record: InputRecord | str,
    limits: ImageLimits,
    fetcher: ImageFetcher,
) -> FoundImage | MissingImage:
    """The verdict's image from its input record (or the reason it cannot be read)."""
    if isinstance(record, str):
        return MissingImage(verdict, record)
    source = verdict.source
    where = f"{source.topic}/{source.partition}@{source.offset}"
    try:
        parsed = parse_record(record.value, record.headers)
        event = parsed.event
        if (event.event_id, event.tenant_id) != (verdict.event_id, verdict.tenant_id):
            return MissingImage(
                verdict,
                f"{where} holds event {event.event_id} of tenant {event.tenant_id}, not the "
                f"verdict's {verdict.event_id} of {verdict.tenant_id}",
            )
        if parsed.image is not None:
            image = parsed.image
        elif event.image_b64 is not None:
            image = decode_base64(event.image_b64, limits)
        else:
            image = await fetcher.fetch(str(event.image_url))
        # The trainer refuses a set with one image it cannot decode: check each here instead.
        decode_image(image, CHECK_SIZE, limits)
    except EventRejected as exc:
        return MissingImage(verdict, f"{where}: {exc.code}: {exc.message}")
    return FoundImage(verdict, image)
