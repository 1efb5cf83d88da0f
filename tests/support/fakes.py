"""In-memory stand-ins for the engine's collaborators (consumer.pipeline.ports), for unit tests
of the engine's rules. The real ones are tested against the real broker and Triton."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from consumer.contract.events import ImageEvent
from consumer.contract.reasons import ReasonCode
from consumer.errors import DeliveryError, EventRejected, InferenceRejected
from consumer.imaging.decode import DecodedImage, EncodedImage
from consumer.inference.results import Scores
from consumer.pipeline.ports import Pending, Prepared, Ready, Record, Refused, RevokeHandler

TOPIC = "images"
BAD = b"bad"
"""A record value the fake preparer refuses (as event_invalid)."""


def record(partition: int, offset: int, value: bytes | None = None) -> Record:
    return ConsumerRecord(
        topic=TOPIC,
        partition=partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=None,
        value=value if value is not None else f"event-{partition}-{offset}".encode(),
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=0,
        headers=(),
    )


def image(frames: int = 1, fill: int = 0) -> DecodedImage:
    pixels = np.full((frames, 4, 4, 3), fill, dtype=np.uint8)
    return DecodedImage(
        pixels=pixels[0],
        frames=pixels,
        source_frames=frames,
        source_width=4,
        source_height=4,
        source_format="PNG",
        decode_seconds=0.0,
        draft_scale=1,
    )


class FakeSource:
    """Partitions with queued records; pause, resume and commits are recorded."""

    def __init__(self, partitions: Mapping[int, Sequence[Record]]) -> None:
        self.queues = {TopicPartition(TOPIC, p): list(rs) for p, rs in partitions.items()}
        self.assigned = set(self.queues)
        self.paused: set[TopicPartition] = set()
        self.pause_calls = 0
        self.resume_calls = 0
        self.committed: dict[TopicPartition, int] = {}
        self.fetched = 0
        self.on_revoked: RevokeHandler | None = None

    async def start(self, on_revoked: RevokeHandler) -> None:
        self.on_revoked = on_revoked

    async def fetch(self, max_records: int) -> Mapping[TopicPartition, Sequence[Record]]:
        out: dict[TopicPartition, list[Record]] = {}
        for tp in sorted(self.assigned - self.paused, key=lambda tp: tp.partition):
            queue = self.queues[tp]
            take = queue[: max_records - sum(len(v) for v in out.values())]
            if take:
                out[tp] = take
                del queue[: len(take)]
        self.fetched += sum(len(v) for v in out.values())
        # A real poll waits for data; without a pause the fetch loop would spin.
        await asyncio.sleep(0.001 if out else 0.005)
        return out

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def pause(self, partitions: set[TopicPartition]) -> None:
        self.pause_calls += 1
        self.paused |= partitions

    def resume(self, partitions: set[TopicPartition]) -> None:
        self.resume_calls += 1
        self.paused -= partitions

    async def commit(self, positions: Mapping[TopicPartition, int]) -> bool:
        self.committed.update(positions)
        return True

    async def lag(self, partition: TopicPartition) -> int | None:
        return len(self.queues[partition])

    async def close(self) -> None:
        pass

    async def revoke(self, partitions: set[TopicPartition]) -> None:
        """What aiokafka does on a rebalance: call the listener, then drop the partitions."""
        if self.on_revoked is None:
            raise RuntimeError("start() was not called")
        await self.on_revoked(partitions)
        self.assigned -= partitions


class FakePreparer:
    """Every record is a ready event, except those whose value is BAD."""

    async def prepare(self, record: Record) -> Ready | Refused:
        if record.value == BAD:
            return Refused(EventRejected(ReasonCode.EVENT_INVALID, "bad record"))
        event = ImageEvent(
            event_id=f"e-{record.partition}-{record.offset}",
            tenant_id="t",
            image_b64="AAAA",
            created_at=datetime.now(UTC),
        )
        return Ready(event, image())


class FakeScorer:
    """Scores every image at once, unless ``gate`` is closed; ``available`` is settable."""

    def __init__(self) -> None:
        self.available = True
        self.gate = asyncio.Event()
        self.gate.set()
        self.batches: list[int] = []
        self.broken = False
        """Raise a bug (not an outage) from every call."""

    async def score(
        self, images: Sequence[DecodedImage | EncodedImage]
    ) -> list[Scores | EventRejected | InferenceRejected]:
        self.batches.append(len(images))
        await self.gate.wait()
        if self.broken:
            raise ZeroDivisionError("a bug in scoring")
        return [
            Scores(
                probs=np.array([1.0, 0.0], dtype=np.float32),
                embedding=np.zeros(2, dtype=np.float32),
                seconds=0.0,
                pool_entropy=None,
                prototype_similarity=None,
            )
            for _ in images
        ]


@dataclass
class FakeOutcomes:
    """Records the coordinates of every outcome written."""

    decisions: list[tuple[int, int]] = field(default_factory=list)
    dead_letters: list[tuple[int, int, str]] = field(default_factory=list)
    failing_decisions: set[int] = field(default_factory=set)
    """Offsets whose decision raises (as a bug in deciding would)."""
    failing_dead_letters: set[int] = field(default_factory=set)
    """Offsets whose dead letter cannot be delivered either."""

    async def decision(self, item: Prepared, scores: Scores, batch_wait_s: float) -> None:
        if item.pending.record.offset in self.failing_decisions:
            raise KeyError("a bug in deciding")
        self.decisions.append((item.pending.record.partition, item.pending.record.offset))

    async def dead_letter(
        self, pending: Pending, rejection: EventRejected, event: ImageEvent | None
    ) -> None:
        if pending.record.offset in self.failing_dead_letters:
            raise DeliveryError("record too large for the dead-letter topic")
        record = pending.record
        self.dead_letters.append((record.partition, record.offset, rejection.code))

    @property
    def total(self) -> int:
        return len(self.decisions) + len(self.dead_letters)
