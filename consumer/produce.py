"""Publish ImageEvents built from image files (``modstream produce``)."""

from __future__ import annotations

import base64
import itertools
import json
import mimetypes
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


@dataclass(frozen=True)
class OutgoingRecord:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def json_record(event: ImageEvent) -> OutgoingRecord:
    """The event as a JSON ImageEvent value."""
    return OutgoingRecord(event.event_id.encode(), event.model_dump_json().encode(), [])


def raw_record(
    image: bytes,
    tenant_id: str,
    content_type: str,
    event_id: str | None = None,
    metadata: dict[str, str] | None = None,
) -> OutgoingRecord:
    """A raw-image record: the image as the value, the event fields as headers."""
    event_id = event_id or uuid.uuid4().hex
    headers = [
        ("content-type", content_type.encode()),
        ("event-id", event_id.encode()),
        ("tenant-id", tenant_id.encode()),
        ("created-at", datetime.now(UTC).isoformat().encode()),
    ]
    if metadata:
        headers.append(("metadata", json.dumps(metadata).encode()))
    return OutgoingRecord(event_id.encode(), image, headers)


def round_robin_records(
    images: Sequence[Path], tenants: Sequence[str], count: int, raw: bool = False
) -> Iterator[OutgoingRecord]:
    """``count`` records cycling over the images and the tenants, in either form."""
    contents = [path.read_bytes() for path in images]
    pairs = zip(itertools.cycle(zip(images, contents, strict=True)), itertools.cycle(tenants))
    for (path, image), tenant in itertools.islice(pairs, count):
        if raw:
            yield raw_record(image, tenant, _content_type(path))
        else:
            yield json_record(build_event(image, tenant))


def _content_type(path: Path) -> str:
    guessed = mimetypes.guess_type(path.name)[0]
    return guessed if guessed and guessed.startswith("image/") else "image/octet-stream"


async def publish(
    producer: AIOKafkaProducer, topic: str, records: Iterator[OutgoingRecord]
) -> ProduceReport:
    """Send every record and wait for all acknowledgements."""
    acks = []
    total = 0
    for record in records:
        total += len(record.value)
        acks.append(
            await producer.send(topic, record.value, key=record.key, headers=record.headers)
        )
    for ack in acks:
        await ack
    return ProduceReport(events=len(acks), bytes=total)
