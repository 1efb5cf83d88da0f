"""Produce records and wait for the broker's acknowledgement, retrying transient failures."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.structs import RecordMetadata
from prometheus_client import Counter

from consumer.contract.headers import Headers
from consumer.errors import DeliveryError
from consumer.runtime.retry import PRODUCE, RetryPolicy

logger = logging.getLogger(__name__)


class Sink:
    """Delivers records; ``deliver`` returns only once the broker acknowledged (acks=all)."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        retries: Counter,
        retry: RetryPolicy = PRODUCE,
    ) -> None:
        self._producer = producer
        self._retries = retries
        self._retry = retry

    async def deliver(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Headers,
        retry: RetryPolicy | None = None,
    ) -> RecordMetadata:
        """Produce one record, retrying transient failures until it is acknowledged (or, with
        a bounded ``retry`` policy, until that gives up).

        Raises DeliveryError: not retriable when the record can never be accepted (larger than
        the producer's ``max_request_size``, or a permanent broker error such as a missing
        authorisation); retriable when a bounded policy gave up.
        """
        attempts = (retry or self._retry).begin()
        while True:
            try:
                ack = await self._producer.send(topic, value, key=key, headers=list(headers))
                return await ack
            except MessageSizeTooLargeError as exc:
                error = DeliveryError(
                    f"record of {len(value)} bytes for {topic} is over the producer limit; raise "
                    "MODSTREAM_KAFKA__PRODUCER_MAX_REQUEST_SIZE and the broker's message.max.bytes"
                )
                error.retriable = False
                raise error from exc
            except KafkaError as exc:
                if not exc.retriable:
                    error = DeliveryError(f"producing to {topic} failed for good: {exc!r}")
                    error.retriable = False
                    raise error from exc
                delay = attempts.next_delay()
                if delay is None:
                    raise DeliveryError(f"producing to {topic} failed: {exc!r}") from exc
                self._retries.inc()
                logger.warning(
                    "produce to %s failed, retrying in %.2fs: %r",
                    topic,
                    delay,
                    exc,
                    extra={"topic": topic},
                )
                await asyncio.sleep(delay)
