"""Build aiokafka clients from KafkaSettings (security options in one place); read topics whole."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from typing import Any

import aiokafka.conn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from aiokafka.helpers import create_ssl_context
from aiokafka.structs import ConsumerRecord

from consumer.errors import BrokerUnavailable
from consumer.runtime.settings import KafkaSettings, MiB

logger = logging.getLogger(__name__)

# aiokafka reads every response through an asyncio StreamReader with a 64 KiB limit, which
# pauses the socket each time 128 KiB are buffered: a fetch of megabyte images pays a pause,
# a resume and a task wakeup per 128 KiB. With 4 MiB the fetch path costs 1.9 ms of CPU per
# 1.2 MB event instead of 3.4-4.0 (bench: reading 300 such records from Tansu).
# Memory: each connection may buffer up to twice this before the socket is paused.
READER_LIMIT = 4 * MiB


def _raise_reader_limit() -> None:
    if not hasattr(aiokafka.conn, "READER_LIMIT"):
        logger.warning("aiokafka.conn.READER_LIMIT is gone: large fetches cost more CPU")
        return
    aiokafka.conn.READER_LIMIT = max(aiokafka.conn.READER_LIMIT, READER_LIMIT)


def _common(settings: KafkaSettings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
        "request_timeout_ms": settings.request_timeout_ms,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        context: ssl.SSLContext = create_ssl_context(
            cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None
        )
        options["ssl_context"] = context
    if settings.security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.sasl_mechanism or "PLAIN"
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = (
            settings.sasl_password.get_secret_value() if settings.sasl_password else None
        )
    return options


def build_consumer(settings: KafkaSettings) -> AIOKafkaConsumer:
    """A group consumer with manual commits; the pipeline decides when offsets are safe."""
    _raise_reader_limit()
    return AIOKafkaConsumer(
        **_common(settings),
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        max_poll_interval_ms=settings.max_poll_interval_ms,
        max_poll_records=settings.max_poll_records,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
        fetch_max_bytes=settings.fetch_max_bytes,
        check_crcs=settings.check_crcs,
    )


def build_reader(settings: KafkaSettings) -> AIOKafkaConsumer:
    """A consumer outside any group, for reading a whole topic (e.g. the policy topic)."""
    return AIOKafkaConsumer(
        **_common(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )


def build_producer(settings: KafkaSettings) -> AIOKafkaProducer:
    """acks=all so a decision counts as delivered only once every in-sync replica has it."""
    return AIOKafkaProducer(
        **_common(settings),
        acks="all",
        linger_ms=settings.producer_linger_ms,
        max_request_size=settings.producer_max_request_size,
        compression_type=settings.compression_type,
    )


async def start_producer(producer: AIOKafkaProducer, bootstrap: str) -> None:
    """Start a producer; BrokerUnavailable says which servers could not be reached."""
    try:
        await producer.start()
    except KafkaError as exc:
        await producer.stop()
        raise BrokerUnavailable(
            f"cannot reach Kafka at {bootstrap} ({exc}); check MODSTREAM_KAFKA__BOOTSTRAP_SERVERS "
            "and the security settings"
        ) from exc


async def read_topics(
    settings: KafkaSettings, topics: Sequence[str], timeout_s: float = 60.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topics`` from the beginning to the high watermark seen at the start.

    Raises BrokerUnavailable when Kafka cannot be reached, TimeoutError when the topics are not
    read to their end within ``timeout_s``.
    """
    consumer = build_reader(settings)
    try:
        await consumer.start()
    except KafkaError as exc:
        await consumer.stop()
        raise BrokerUnavailable(
            f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}"
        ) from exc
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        await consumer.topics()
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return records
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        # The broker's list-offsets answer is unreliable on some Kafka-compatible brokers; the
        # high watermark returned with fetches is not, so read until every position reaches it.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        remaining = set(partitions)
        while remaining:
            if loop.time() > deadline:
                raise TimeoutError(f"could not read {sorted(map(str, remaining))} to the end")
            batch = await consumer.getmany(timeout_ms=500)
            for batch_records in batch.values():
                records.extend(batch_records)
            for tp in list(remaining):
                highwater = consumer.highwater(tp)
                if highwater is not None and await consumer.position(tp) >= highwater:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return records


async def ensure_compacted_topics(
    settings: KafkaSettings, topics: Sequence[str], partitions: int, replication_factor: int
) -> None:
    """Create each of ``topics`` with ``cleanup.policy=compact`` unless it exists (then it is
    kept as it is: its partitions and configuration belong to whoever created it); one
    request for all of them.

    Raises BrokerUnavailable when Kafka cannot be reached or refuses the topic.
    """
    admin = AIOKafkaAdminClient(**_common(settings))
    try:
        await admin.start()
        response = await admin.create_topics(
            [
                NewTopic(
                    topic,
                    partitions,
                    replication_factor=replication_factor,
                    topic_configs={"cleanup.policy": "compact"},
                )
                for topic in topics
            ]
        )
        for name, error_code, error_message in response.topic_errors:
            if error_code != 0 and for_code(error_code) is not TopicAlreadyExistsError:
                raise BrokerUnavailable(
                    f"cannot create topic {name}: {for_code(error_code).__name__} "
                    f"({error_message}); create it (compacted) yourself"
                )
    except KafkaError as exc:
        raise BrokerUnavailable(
            f"cannot reach Kafka at {settings.bootstrap_servers} to check topics "
            f"{', '.join(topics)}: {exc}"
        ) from exc
    finally:
        await admin.close()
