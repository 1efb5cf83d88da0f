"""Produce records and wait for the broker's acknowledgement, retrying transient failures."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.structs import RecordMetadata

from consumer.errors import DeliveryError
from consumer.runtime.metrics import Metrics

logger = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]


class Sink:
    """Delivers records; ``deliver`` returns only once the broker acknowledged (acks=all)."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        metrics: Metrics,
        initial_backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._producer = producer
        self._metrics = metrics
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s

    async def deliver(
        self, topic: str, key: bytes | None, value: bytes, headers: Headers
    ) -> RecordMetadata:
        """Produce one record, retrying until it is acknowledged.

        Raises DeliveryError (not retriable) only when the record can never be accepted,
        e.g. it is larger than the producer's ``max_request_size``.
        """
        backoff = self._initial_backoff_s
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
                self._metrics.produce_retries.inc()
                logger.warning(
                    "produce to %s failed, retrying in %.2fs: %r",
                    topic,
                    backoff,
                    exc,
                    extra={"topic": topic},
                )
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, self._max_backoff_s)
