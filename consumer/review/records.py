"""Single records read back by their coordinates: a review decision, or the input record
that holds an item's image.

Coordinates only ever come from the queue (the feed recorded them, or the decision names its
input record); nothing a browser sends is turned into an offset.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from consumer.contract.events import Decision
from consumer.contract.parse import ParsedRecord, parse_record
from consumer.contract.reasons import ReasonCode
from consumer.errors import ImageRejected, InvalidEvent
from consumer.imaging.decode import ImageLimits, decode_base64
from consumer.imaging.fetch import ImageFetcher
from consumer.review.queue import QueueEntry, RecordAt

logger = logging.getLogger(__name__)


class RecordUnavailable(Exception):
    """The record cannot be shown; the message says why, for the reviewer."""


class RecordReader:
    """Reads one record at a time by topic, partition and offset, outside any group."""

    def __init__(self, consumer: AIOKafkaConsumer, timeout_s: float) -> None:
        self._consumer = consumer
        self._timeout_s = timeout_s
        # One consumer, one position: reads take turns (a reviewer opens one item at a time).
        self._lock = asyncio.Lock()

    async def read(self, at: RecordAt) -> ConsumerRecord[bytes, bytes]:
        """The record at ``at``; RecordUnavailable when it is gone (retention, compaction),
        beyond the partition's end, or the broker does not answer in time."""
        partition = TopicPartition(at.topic, at.partition)
        where = f"{at.topic}[{at.partition}]@{at.offset}"
        async with self._lock:
            try:
                self._consumer.assign([partition])
                self._consumer.seek(partition, at.offset)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + self._timeout_s
                while loop.time() < deadline:
                    batch = await self._consumer.getmany(partition, timeout_ms=500, max_records=1)
                    for record in batch.get(partition, []):
                        if record.offset == at.offset:
                            return record
                        # Out of range: the reader resets to the earliest offset still kept.
                        if record.offset > at.offset:
                            raise RecordUnavailable(
                                f"{where} is gone (retention or compaction; the partition now "
                                f"starts at {record.offset})"
                            )
                        raise RecordUnavailable(f"{where} is beyond the end of the partition")
                    highwater = self._consumer.highwater(partition)
                    if highwater is not None and at.offset >= highwater:
                        raise RecordUnavailable(
                            f"{where} is beyond the end of the partition ({highwater})"
                        )
            except KafkaError as exc:
                raise RecordUnavailable(f"{where} could not be read: {exc}") from exc
        raise RecordUnavailable(
            f"{where} did not arrive within {self._timeout_s:.0f}s; Kafka may be slow"
        )

    async def decision(self, entry: QueueEntry) -> Decision:
        """The entry's decision, read again when the queue did not keep it in memory."""
        if entry.decision is not None:
            return entry.decision
        record = await self.read(entry.at)
        try:
            decision = Decision.model_validate_json(record.value or b"")
        except ValueError as exc:
            raise RecordUnavailable(f"the review record at {entry.at} is not a decision") from exc
        if (decision.tenant_id, decision.event_id) != (entry.tenant_id, entry.event_id):
            raise RecordUnavailable(f"the review record at {entry.at} is another event")
        return decision


class ImageSource:
    """An item's image bytes: from its input record, or from its URL through the egress
    guard — under the same byte cap as the consumer."""

    def __init__(self, reader: RecordReader, fetcher: ImageFetcher, limits: ImageLimits) -> None:
        self._reader = reader
        self._fetcher = fetcher
        self._limits = limits

    async def image_bytes(self, decision: Decision) -> bytes:
        source = decision.source
        if source is None:
            raise RecordUnavailable("this decision does not name its input record")
        record = await self._reader.read(RecordAt(source.topic, source.partition, source.offset))
        try:
            parsed = parse_record(record.value, record.headers)
        except InvalidEvent as exc:
            raise RecordUnavailable(f"the input record is not an event: {exc}") from exc
        event = parsed.event
        if (event.tenant_id, event.event_id) != (decision.tenant_id, decision.event_id):
            # A decision names its own input record; anything else is not shown.
            logger.warning(
                "input record names another event",
                extra={"event_id": decision.event_id, "tenant": decision.tenant_id},
            )
            raise RecordUnavailable("the input record at these coordinates is another event")
        try:
            return await event_image(parsed, self._limits, self._fetcher)
        except ImageRejected as exc:
            raise RecordUnavailable(f"the image cannot be shown: {exc}") from exc


async def event_image(parsed: ParsedRecord, limits: ImageLimits, fetcher: ImageFetcher) -> bytes:
    """An event's image bytes: a raw-image record's value, the inline base64, or the body at
    its URL (through the egress guard), each under the byte cap. Raises ImageRejected."""
    if parsed.image is not None:
        if len(parsed.image) > limits.max_bytes:
            raise ImageRejected(
                ReasonCode.IMAGE_TOO_LARGE,
                f"the image is {len(parsed.image)} bytes, over MODSTREAM_IMAGING__MAX_IMAGE_BYTES",
            )
        return parsed.image
    event = parsed.event
    if event.image_b64 is not None:
        return decode_base64(event.image_b64, limits)
    if event.image_url is None:
        raise ImageRejected(ReasonCode.EVENT_INVALID, "the event carries no image")
    return await fetcher.fetch(str(event.image_url))
