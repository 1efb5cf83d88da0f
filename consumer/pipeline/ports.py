"""What the engine works with: the records it tracks and the collaborators it hands them to.

The engine (``consumer.pipeline.engine``) only orchestrates. Everything that talks to Kafka,
Pillow or Triton sits behind these small protocols, so the engine's rules — backpressure,
revocation, drain — are unit-tested with in-memory fakes, and the real implementations
(``KafkaSource``, ``Preparer``, ``Scorer``, ``OutcomeWriter``) are tested against the real
broker and Triton.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeAlias

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from consumer.contract.events import ImageEvent
from consumer.errors import EventRejected, InferenceRejected
from consumer.imaging.decode import DecodedImage, EncodedImage
from consumer.inference.results import Scores
from consumer.pipeline.offsets import Ticket
from consumer.runtime.retry import RetryPolicy

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
RevokeHandler = Callable[[set[TopicPartition]], Awaitable[None]]


@dataclass
class Pending:
    """A record read from Kafka whose outcome is not yet acknowledged."""

    record: Record
    ticket: Ticket[TopicPartition]
    size: int
    consumed_at: datetime


@dataclass(frozen=True)
class Ready:
    """An event parsed and its image decoded (or checked, for Triton to decode): ready for
    the model."""

    event: ImageEvent
    image: DecodedImage | EncodedImage
    pdq: bytes | None = None
    """PDQ hash of the first frame, when banks are consulted and the image could be hashed."""


@dataclass(frozen=True)
class Refused:
    """An event that cannot be moderated; ``event`` is set when the record parsed."""

    rejection: EventRejected
    event: ImageEvent | None = None


@dataclass
class Prepared:
    """A ready event waiting in (or sent from) the micro-batcher."""

    pending: Pending
    ready: Ready
    batched_at: float


@dataclass(frozen=True)
class EngineSettings:
    max_batch_size: int
    max_batch_wait_s: float
    max_inflight_batches: int
    max_poll_records: int
    commit_interval_s: float
    drain_timeout_s: float
    revoke_grace_s: float
    fetch_retry: RetryPolicy  # the fetch loop's backoff after a broker error


class RecordSource(Protocol):
    """The input topic's partitions assigned to this consumer."""

    async def start(self, on_revoked: RevokeHandler) -> None: ...

    async def fetch(self, max_records: int) -> Mapping[TopicPartition, Sequence[Record]]:
        """Records read since the last call; raises a retriable ModstreamError on broker loss."""
        ...

    def assignment(self) -> set[TopicPartition]: ...

    def pause(self, partitions: set[TopicPartition]) -> None: ...

    def resume(self, partitions: set[TopicPartition]) -> None: ...

    async def commit(self, positions: Mapping[TopicPartition, int]) -> bool:
        """Commit ``positions``; False when the commit was skipped (rebalance, broker away)."""
        ...

    async def lag(self, partition: TopicPartition) -> int | None:
        """Records between the fetch position and the high watermark; None when unknown."""
        ...

    async def close(self) -> None: ...


class EventPreparer(Protocol):
    async def prepare(self, record: Record) -> Ready | Refused: ...


class BatchScorer(Protocol):
    @property
    def available(self) -> bool:
        """False while Triton is considered down (the circuit breaker is not closed)."""
        ...

    async def score(
        self, images: Sequence[DecodedImage | EncodedImage]
    ) -> list[Scores | EventRejected | InferenceRejected]:
        """One result per image, in order; waits out outages rather than failing. An image
        Triton's preprocess step refused is an EventRejected with its reason code."""
        ...


class OutcomeWriter(Protocol):
    """Produces an event's one outcome and returns once the broker acknowledged it."""

    async def decision(self, item: Prepared, scores: Scores, batch_wait_s: float) -> None: ...

    async def dead_letter(
        self, pending: Pending, rejection: EventRejected, event: ImageEvent | None
    ) -> None: ...
