"""When the review queue counts as loaded, with a stand-in for aiokafka's consumer."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from consumer.review.feed import QueueFeed
from consumer.review.queue import ReviewQueue


class _Consumer:
    def __init__(self, partitions: dict[str, set[int]]) -> None:
        self.partitions = partitions
        self.highwaters: dict[TopicPartition, int] = {}
        self.assigned: list[TopicPartition] = []
        self.reachable = True

    async def topics(self) -> set[str]:
        if not self.reachable:
            raise KafkaConnectionError("down")
        return set(self.partitions)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions.get(topic)

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = partitions

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        return None

    def seek(self, partition: TopicPartition, offset: int) -> None:
        return None

    def highwater(self, partition: TopicPartition) -> int | None:
        return self.highwaters.get(partition)


def _feed(consumer: _Consumer, topics: list[str]) -> QueueFeed:
    stand_in: Any = consumer
    return QueueFeed(stand_in, ReviewQueue(10), lambda: topics, "labels")


def test_loaded_means_the_backlog_seen_at_start_not_the_live_end() -> None:
    consumer = _Consumer({"review": {0}, "labels": {0}})
    feed = _feed(consumer, ["review"])
    review, labels = TopicPartition("review", 0), TopicPartition("labels", 0)

    async def go() -> None:
        assert await feed._assign()
        feed._backlog = dict.fromkeys(feed._next)
        assert not feed._backlog_read()  # no fetch has said where anything ends
        consumer.highwaters = {review: 5, labels: 0}
        assert not feed._backlog_read()
        feed._next[review] = 5
        consumer.highwaters[review] = 9  # traffic goes on: the start's backlog is read
        assert feed._backlog_read()

    asyncio.run(go())


def test_without_metadata_nothing_is_assigned_and_nothing_is_loaded() -> None:
    consumer = _Consumer({"labels": {0}})
    consumer.reachable = False
    feed = _feed(consumer, ["review"])

    async def go() -> None:
        assert not await feed._assign()
        assert not feed._backlog_read()
        consumer.reachable = True
        consumer.partitions = {}
        assert not await feed._assign()  # not even the labels topic exists

    asyncio.run(go())


def test_a_topic_no_policy_names_any_more_is_let_go() -> None:
    consumer = _Consumer({"a.review": {0, 1}, "b.review": {0}, "labels": {0}})
    topics = ["a.review", "b.review"]
    stand_in: Any = consumer
    feed = QueueFeed(stand_in, ReviewQueue(10), lambda: topics, "labels")

    async def go() -> None:
        assert await feed._assign()
        assert len(consumer.assigned) == 4
        topics.remove("b.review")
        assert await feed._assign()
        assert TopicPartition("b.review", 0) not in feed._next
        assert sorted(p.topic for p in consumer.assigned) == ["a.review", "a.review", "labels"]

    asyncio.run(go())
