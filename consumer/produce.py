"""Publish ImageEvents built from image files (``modstream produce``)."""

from __future__ import annotations

import base64
import itertools
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaProducer

from consumer.contract.events import ImageEvent
from consumer.errors import ConfigError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class ProduceReport:
    events: int
    bytes: int


def image_files(paths: Sequence[Path]) -> list[Path]:
    """Expand folders into the image files they hold, sorted; ConfigError if none."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise ConfigError(f"{path} does not exist; pass image files or folders")
    if not found:
        raise ConfigError(
            f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under the paths given"
        )
    return found


def build_event(image: bytes, tenant_id: str, event_id: str | None = None) -> ImageEvent:
    return ImageEvent(
        event_id=event_id or uuid.uuid4().hex,
        tenant_id=tenant_id,
        image_b64=base64.b64encode(image).decode(),
        created_at=datetime.now(UTC),
    )


def round_robin_events(
    images: Sequence[bytes], tenants: Sequence[str], count: int
) -> Iterator[ImageEvent]:
    pairs = zip(itertools.cycle(images), itertools.cycle(tenants), strict=False)
    for image, tenant in itertools.islice(pairs, count):
        yield build_event(image, tenant)


async def publish(
    producer: AIOKafkaProducer, topic: str, events: Iterator[ImageEvent]
) -> ProduceReport:
    """Send every event keyed by event_id and wait for all acknowledgements."""
    acks = []
    total = 0
    for event in events:
        value = event.model_dump_json().encode()
        total += len(value)
        acks.append(await producer.send(topic, value, key=event.event_id.encode()))
    for ack in acks:
        await ack
    return ProduceReport(events=len(acks), bytes=total)
