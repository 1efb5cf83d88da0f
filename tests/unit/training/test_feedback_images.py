"""A verdict's image from its input record: both record forms, and every reason to skip."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from consumer.contract.events import Action, ReviewVerdict
from consumer.imaging.decode import ImageLimits
from consumer.imaging.fetch import ImageFetcher
from consumer.runtime.settings import ImagingSettings
from tests.unit.training.test_feedback_labels import verdict
from training.feedback.images import FoundImage, InputRecord, MissingImage, image_of

LIMITS = ImageLimits.from_settings(ImagingSettings())


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(out, format="JPEG")
    return out.getvalue()


def json_event(event_id: str, tenant: str, **source: str) -> bytes:
    return json.dumps(
        {
            "event_id": event_id,
            "tenant_id": tenant,
            "created_at": "2026-12-01T00:00:00Z",
            **source,
        }
    ).encode()


async def read(target: ReviewVerdict, record: InputRecord | str) -> FoundImage | MissingImage:
    async with ImageFetcher(ImagingSettings()) as fetcher:
        return await image_of(target, record, LIMITS, fetcher)


async def test_a_json_event_with_base64_gives_its_bytes() -> None:
    image = jpeg()
    value = json_event("e-1", "marketplace", image_b64=base64.b64encode(image).decode())
    found = await read(verdict(Action.ALLOW, None), InputRecord(3, value, ()))
    assert isinstance(found, FoundImage)
    assert found.image == image


async def test_a_raw_image_record_gives_its_value() -> None:
    image = jpeg()
    headers = (
        ("content-type", b"image/jpeg"),
        ("event-id", b"e-1"),
        ("tenant-id", b"marketplace"),
        ("created-at", b"2026-12-01T00:00:00Z"),
    )
    found = await read(verdict(Action.ALLOW, None), InputRecord(3, image, headers))
    assert isinstance(found, FoundImage)
    assert found.image == image


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (
            json_event("other", "marketplace", image_b64="AAAA"),
            "in/0@3 holds event other of tenant marketplace, not the verdict's e-1 of marketplace",
        ),
        (
            json_event("e-1", "tickets", image_b64="AAAA"),
            "in/0@3 holds event e-1 of tenant tickets, not the verdict's e-1 of marketplace",
        ),
        (json_event("e-1", "marketplace", image_b64="not base64!"), "in/0@3: invalid_base64: "),
        (
            json_event("e-1", "marketplace", image_b64=base64.b64encode(b"text").decode()),
            "in/0@3: image_unsupported_format: ",
        ),
        (b"{", "in/0@3: event_not_json: "),
        (None, "in/0@3: event_empty: "),
        (
            json_event("e-1", "marketplace", image_url="http://127.0.0.1:9/a.jpg"),
            "in/0@3: image_url_blocked: ",
        ),
    ],
)
async def test_bad_records_are_skipped_with_the_reason(value: bytes | None, reason: str) -> None:
    found = await read(verdict(Action.ALLOW, None), InputRecord(3, value, ()))
    assert isinstance(found, MissingImage)
    assert found.reason.startswith(reason), found.reason


async def test_a_record_that_could_not_be_read_keeps_its_reason() -> None:
    found = await read(verdict(Action.ALLOW, None), "in/0@3 is gone (retention)")
    assert found == MissingImage(verdict(Action.ALLOW, None), "in/0@3 is gone (retention)")
