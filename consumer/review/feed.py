"""Keeps the review queue in step with the review topics and the labels topic.

One consumer outside any group reads every partition of both from the beginning: review
decisions join the queue, verdicts settle them. The page is ready once both were read to the
high watermark seen at start, so a restarted replica never shows items that were already
reviewed. Partitions that appear later (a topic created after start) are picked up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from consumer.contract.events import Action, Decision, ReviewClaim, ReviewVerdict
from consumer.review.queue import RecordAt, ReviewQueue

logger = logging.getLogger(__name__)

PARTITION_CHECK_S = 10.0


class QueueFeed:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        queue: ReviewQueue,
        review_topics: Callable[[], Sequence[str]],
        labels_topic: str,
        claims_topic: str | None = None,
    ) -> None:
        """``review_topics`` is asked again every time partitions are checked: a policy that
        names a new review topic adds it without a restart."""
        self._consumer = consumer
        self._queue = queue
        self._review_topics = review_topics
        self._labels_topic = labels_topic
        self._claims_topic = claims_topic
        self._next: dict[TopicPartition, int] = {}
        # The backlog at start: each partition's first high watermark (from a fetch: the
        # answer of list-offsets is wrong on some Kafka-compatible brokers).
        self._backlog: dict[TopicPartition, int | None] | None = None
        self.caught_up = asyncio.Event()

    async def run(self) -> None:
        """Read until cancelled; ``caught_up`` is set once the start's backlog is read."""
        loop = asyncio.get_running_loop()
        # No metadata yet: nothing to read, and not ready.
        assigned = await self._assign()
        while not assigned:
            await asyncio.sleep(1.0)
            assigned = await self._assign()
        self._backlog = dict.fromkeys(self._next)
        checked_at = loop.time()
        while True:
            batches = await self._consumer.getmany(timeout_ms=500, max_records=500)
            for partition, records in batches.items():
                for record in records:
                    self._apply(record)
                    self._next[partition] = record.offset + 1
            if not self.caught_up.is_set() and self._backlog_read():
                self.caught_up.set()
                logger.info("review queue loaded from %s", ", ".join(self._topics()))
            if loop.time() - checked_at > PARTITION_CHECK_S:
                checked_at = loop.time()
                await self._assign()

    def _backlog_read(self) -> bool:
        """Every partition of the start read up to where it ended then; a partition that
        went away since counts as read."""
        backlog = self._backlog
        if backlog is None:
            return False
        for partition, end in backlog.items():
            if partition not in self._next:
                continue
            if end is None:
                end = backlog[partition] = self._consumer.highwater(partition)
            if end is None or self._next[partition] < end:
                return False
        return True

    def _topics(self) -> tuple[str, ...]:
        others = (self._labels_topic, self._claims_topic)
        return (*dict.fromkeys(self._review_topics()), *(t for t in others if t is not None))

    async def _assign(self) -> bool:
        """Follow every partition of the topics now wanted; False when Kafka's metadata
        could not be read (nothing changed)."""
        try:
            await self._consumer.topics()
        except KafkaError:
            logger.warning("cannot refresh topic metadata; retrying", exc_info=True)
            return False
        topics = self._topics()
        wanted = {
            TopicPartition(topic, partition)
            for topic in topics
            for partition in self._consumer.partitions_for_topic(topic) or ()
        }
        if not wanted:
            logger.warning("none of %s exists yet; checking again", ", ".join(topics))
            return False
        if wanted == set(self._next):
            return True
        missing = [t for t in topics if not self._consumer.partitions_for_topic(t)]
        if missing:
            logger.warning(
                "topics not found yet (checked again every %.0fs): %s",
                PARTITION_CHECK_S,
                ", ".join(missing),
            )
        for gone in set(self._next) - wanted:
            del self._next[gone]
        self._consumer.assign(sorted(wanted))
        for partition in wanted:
            # Re-assigning forgets positions; resume where this feed left off.
            start = self._next.setdefault(partition, 0)
            if start == 0:
                await self._consumer.seek_to_beginning(partition)
            else:
                self._consumer.seek(partition, start)
        return True

    def _apply(self, record: ConsumerRecord[bytes, bytes]) -> None:
        if record.value is None:
            return
        at = RecordAt(record.topic, record.partition, record.offset)
        try:
            if record.topic == self._labels_topic:
                self._queue.settle(ReviewVerdict.model_validate_json(record.value))
                return
            if record.topic == self._claims_topic:
                self._queue.claim(ReviewClaim.model_validate_json(record.value))
                return
            decision = Decision.model_validate_json(record.value)
        except ValidationError as exc:
            logger.warning(
                "skipping a record that is not what its topic holds: %s",
                exc.errors()[0]["msg"],
                extra={"topic": at.topic, "partition": at.partition, "offset": at.offset},
            )
            return
        # A topic may carry other actions when a tenant routes several to it, and a
        # reviewer's own final decision never goes back into the queue.
        if decision.action is Action.REVIEW and decision.human_review is None:
            headers = tuple((key, bytes(value)) for key, value in record.headers or ())
            self._queue.add(decision, at, headers)
