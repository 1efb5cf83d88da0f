"""The input topic through aiokafka: assignment, pause/resume, commits, lag, a bounded close.

aiokafka errors are translated here, at the boundary: the engine sees a retriable
``BrokerUnavailable`` for a lost broker, and a commit that could not happen is reported as
skipped (the next interval, or the partition's next owner, commits it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from consumer.errors import BrokerUnavailable
from consumer.pipeline.ports import Record, RevokeHandler
from consumer.runtime.signals import log_pending_tasks

logger = logging.getLogger(__name__)

# How long one poll waits for records when nothing is buffered; short, so backpressure and
# shutdown are looked at often.
POLL_TIMEOUT_MS = 200


class KafkaSource:
    """A subscribed ``AIOKafkaConsumer`` (manual commits)."""

    def __init__(self, consumer: AIOKafkaConsumer, topic: str, close_timeout_s: float) -> None:
        self._consumer = consumer
        self._topic = topic
        self._close_timeout_s = close_timeout_s

    async def start(self, on_revoked: RevokeHandler) -> None:
        self._consumer.subscribe([self._topic], listener=_CommitOnRevoke(on_revoked))
        await self._consumer.start()

    async def fetch(self, max_records: int) -> Mapping[TopicPartition, Sequence[Record]]:
        try:
            batches: dict[TopicPartition, list[Record]] = await self._consumer.getmany(
                timeout_ms=POLL_TIMEOUT_MS, max_records=max_records
            )
        except KafkaError as exc:
            raise BrokerUnavailable(f"fetch from {self._topic} failed: {exc!r}") from exc
        return batches

    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment())

    def pause(self, partitions: set[TopicPartition]) -> None:
        self._consumer.pause(*partitions)

    def resume(self, partitions: set[TopicPartition]) -> None:
        self._consumer.resume(*partitions)

    async def commit(self, positions: Mapping[TopicPartition, int]) -> bool:
        try:
            await self._consumer.commit(dict(positions))
        except (CommitFailedError, IllegalStateError) as exc:
            # The group rebalanced under us; the new owner re-reads from the last commit.
            logger.warning("commit skipped after a rebalance: %r", exc)
            return False
        except KafkaError as exc:
            logger.warning("commit failed, will retry on the next interval: %r", exc)
            return False
        return True

    async def lag(self, partition: TopicPartition) -> int | None:
        highwater: int | None = self._consumer.highwater(partition)
        if highwater is None:
            return None  # nothing fetched from this partition yet
        try:
            position: int = await self._consumer.position(partition)
        except (IllegalStateError, KafkaError):
            return None  # revoked meanwhile, or the broker is away
        return max(0, highwater - position)

    async def close(self) -> None:
        await stop_consumer(self._consumer, self._close_timeout_s)


async def stop_consumer(consumer: AIOKafkaConsumer, timeout_s: float) -> None:
    """Close the consumer (leaving the group), giving up after ``timeout_s``.

    Offsets are already committed when this runs, so giving up loses nothing: the group
    reassigns the partitions once the session times out.
    """
    closing = asyncio.create_task(consumer.stop(), name="kafka-consumer-close")
    done, _ = await asyncio.wait({closing}, timeout=timeout_s)
    if not done:
        # Kept in the log: a close this slow means something to look into.
        log_pending_tasks()
        logger.warning(
            "Kafka consumer did not close within %.0fs; exiting without leaving the group "
            "(MODSTREAM_FLOW__CLOSE_TIMEOUT_S)",
            timeout_s,
        )
        closing.cancel()
        return
    if closing.cancelled():
        # aiokafka re-raises the cancellation of its own in-flight fetch (one backing off
        # after a broker outage) from stop(); the consumer is closed all the same.
        logger.warning("Kafka consumer closed while a fetch was being retried")
        return
    closing.result()


def coordinates(record: Record) -> dict[str, object]:
    """The record's topic, partition and offset, as structured log fields."""
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


class _CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Commit what is complete before partitions move to another consumer."""

    def __init__(self, on_revoked: RevokeHandler) -> None:
        self._on_revoked = on_revoked

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        logger.info("assigned %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
