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

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka.errors import KafkaError

from consumer.contract.events import ReviewVerdict
from consumer.contract.parse import parse_record
from consumer.errors import BrokerUnavailable, EventRejected
from consumer.imaging.decode import ImageLimits, decode_image
from consumer.imaging.fetch import ImageFetcher
from consumer.review.queue import RecordAt
from consumer.review.records import RecordReader, RecordUnavailable, event_image
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
        by_partition: dict[tuple[str, int], list[int]] = defaultdict(list)
        for index, verdict in enumerate(verdicts):
            source = verdict.source
            if source.topic not in known:
                records[index] = f"input topic {source.topic} does not exist"
            elif source.partition not in (reader.partitions_for_topic(source.topic) or ()):
                records[index] = f"{source.topic} has no partition {source.partition}"
            else:
                by_partition[(source.topic, source.partition)].append(index)
        # The review page's reader: the same answers for a record gone or beyond the end.
        records_at = RecordReader(reader, RECORD_TIMEOUT_S)
        for indexes in by_partition.values():
            for index in sorted(indexes, key=lambda i: verdicts[i].source.offset):
                source = verdicts[index].source
                try:
                    found = await records_at.read(
                        RecordAt(source.topic, source.partition, source.offset)
                    )
                    records[index] = InputRecord(found.offset, found.value, tuple(found.headers))
                except RecordUnavailable as exc:
                    records[index] = str(exc)
    finally:
        await reader.stop()
    limits = ImageLimits.from_settings(imaging)
    async with ImageFetcher(imaging) as fetcher:
        return [
            await image_of(verdict, records[index], limits, fetcher)
            for index, verdict in enumerate(verdicts)
        ]


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
        image = await event_image(parsed, limits, fetcher)
        # The trainer refuses a set with one image it cannot decode: check each here instead.
        decode_image(image, CHECK_SIZE, limits)
    except EventRejected as exc:
        return MissingImage(verdict, f"{where}: {exc.code}: {exc.message}")
    return FoundImage(verdict, image)
