from __future__ import annotations

import pytest

from consumer.contract.parse import parse_event
from consumer.errors import InvalidEvent


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (None, "event_empty"),
        (b"", "event_not_json"),
        (b"\xff\xfe not json", "event_not_json"),
        (b"[1, 2]", "event_invalid"),
        (b'{"event_id": "e", "tenant_id": "t"}', "event_invalid"),
        (
            b'{"event_id": "e", "tenant_id": "t", "created_at": "2026-01-01T00:00:00Z",'
            b' "image_b64": "aGk=", "image_url": "https://x/y"}',
            "event_invalid",
        ),
    ],
)
def test_bad_records_give_a_reason_code(value: bytes | None, code: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_event(value)
    assert info.value.code == code
    assert info.value.message


def test_good_record_parses() -> None:
    event = parse_event(
        b'{"event_id": "e", "tenant_id": "t", "created_at": "2026-01-01T00:00:00Z",'
        b' "image_b64": "aGk="}'
    )
    assert event.tenant_id == "t"
