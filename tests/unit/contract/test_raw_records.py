"""Raw-image records: the value is the image, the event fields are headers, validated as
strictly as the JSON fields and refused with the same reason codes."""

from __future__ import annotations

import json

import pytest

from consumer.contract.parse import parse_record
from consumer.contract.reasons import ReasonCode
from consumer.errors import InvalidEvent

IMAGE = b"\x89PNG\r\n\x1a\n-not-decoded-here"


def headers(**overrides: str | None) -> list[tuple[str, bytes]]:
    fields: dict[str, str | None] = {
        "content-type": "image/png",
        "event-id": "e-1",
        "tenant-id": "acme",
        "created-at": "2026-12-01T10:00:00+00:00",
        "metadata": json.dumps({"uploader": "u-7"}),
    }
    fields.update(overrides)
    return [(k, v.encode()) for k, v in fields.items() if v is not None]


def test_a_raw_record_carries_its_image_as_the_value() -> None:
    parsed = parse_record(IMAGE, headers())
    assert parsed.image == IMAGE
    event = parsed.event
    assert (event.event_id, event.tenant_id, event.content_type) == ("e-1", "acme", "image/png")
    assert event.metadata == {"uploader": "u-7"}
    assert event.image_b64 is None
    assert event.image_url is None


def test_header_names_are_case_insensitive_and_metadata_optional() -> None:
    upper = [(k.title(), v) for k, v in headers(metadata=None)]
    assert parse_record(IMAGE, upper).event.metadata == {}


def test_without_an_image_content_type_the_value_is_a_json_event() -> None:
    value = json.dumps(
        {"event_id": "j", "tenant_id": "t", "image_b64": "AAAA", "created_at": "2026-01-01T00:00Z"}
    ).encode()
    parsed = parse_record(value, [("content-type", b"application/json")])
    assert parsed.image is None
    assert parsed.event.image_b64 == "AAAA"


@pytest.mark.parametrize(
    ("overrides", "code", "message"),
    [
        ({"event-id": None}, ReasonCode.EVENT_INVALID, "header event-id: Field required"),
        ({"tenant-id": "Not Valid"}, ReasonCode.EVENT_INVALID, "header tenant-id:"),
        ({"created-at": "2026-12-01T10:00:00"}, ReasonCode.EVENT_INVALID, "header created-at:"),
        ({"metadata": "{not json"}, ReasonCode.EVENT_INVALID, "header metadata: not a JSON"),
        (
            {"metadata": json.dumps({str(n): "v" for n in range(40)})},
            ReasonCode.EVENT_INVALID,
            "header metadata:",
        ),
    ],
)
def test_bad_headers_are_refused_with_the_field_named(
    overrides: dict[str, str | None], code: ReasonCode, message: str
) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_record(IMAGE, headers(**overrides))
    assert info.value.code is code
    assert message in info.value.message


def test_a_repeated_header_is_refused() -> None:
    with pytest.raises(InvalidEvent, match="header tenant-id is given 2 times"):
        parse_record(IMAGE, [*headers(), ("tenant-id", b"other")])


def test_a_raw_tombstone_is_empty() -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_record(None, headers())
    assert info.value.code is ReasonCode.EVENT_EMPTY
