"""Kafka client options that cost CPU per megabyte of image: the reader limit and CRC checks."""

from __future__ import annotations

import aiokafka.conn

from consumer.runtime.kafka import READER_LIMIT, build_consumer
from consumer.runtime.settings import KafkaSettings


async def test_the_consumer_reads_responses_in_large_buffers_without_recomputing_crcs() -> None:
    consumer = build_consumer(KafkaSettings())
    checking = build_consumer(KafkaSettings(check_crcs=True))
    try:
        # aiokafka reads the constant when it opens a connection, after the client is built.
        assert aiokafka.conn.READER_LIMIT >= READER_LIMIT
        # Handed to the fetcher aiokafka builds on start().
        assert consumer._check_crcs is False
        assert checking._check_crcs is True
    finally:
        await consumer.stop()
        await checking.stop()
