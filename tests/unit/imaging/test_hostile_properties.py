"""Property: every generated hostile event is rejected with the reason code it was built for."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from consumer.contract.parse import parse_event
from consumer.errors import EventRejected
from consumer.imaging.decode import ImageLimits, decode_base64, decode_image
from tests.support.hostile import (
    MAX_DECODE_BYTES,
    MAX_IMAGE_BYTES,
    MAX_PIXELS,
    Hostile,
    hostile_event,
)

LIMITS = ImageLimits(
    max_bytes=MAX_IMAGE_BYTES, max_pixels=MAX_PIXELS, max_decode_bytes=MAX_DECODE_BYTES
)


def _rejection(value: bytes | None) -> str:
    try:
        event = parse_event(value)
        if event.image_b64 is None:
            # Fetching is refused at connect time (tests/unit/imaging/test_egress.py); here the URL
            # must at least have parsed.
            return "image_url_blocked"
        decode_image(decode_base64(event.image_b64, LIMITS), 224, LIMITS)
    except EventRejected as exc:
        return exc.code
    return "accepted"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_event())
def test_hostile_event_gets_its_reason_code(hostile: Hostile) -> None:
    value, code = hostile
    assert _rejection(value) == code
