from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from consumer.contract.events import MAX_METADATA_ENTRIES, ImageEvent, json_schemas
from tests.support.paths import SCHEMAS

SCHEMA_DIR = SCHEMAS


def event(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "evt-1",
        "tenant_id": "acme",
        "image_b64": "aGVsbG8=",
        "created_at": "2026-11-01T10:00:00Z",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def test_valid_inline_event_round_trips() -> None:
    parsed = ImageEvent.model_validate(event(metadata={"uploader": "u1"}))
    assert parsed.schema_version == "1.0"
    assert parsed.metadata == {"uploader": "u1"}
    assert ImageEvent.model_validate_json(parsed.model_dump_json()) == parsed


def test_url_event_is_valid() -> None:
    parsed = ImageEvent.model_validate(event(image_b64=None, image_url="https://cdn.example/a.jpg"))
    assert str(parsed.image_url) == "https://cdn.example/a.jpg"


@pytest.mark.parametrize(
    "overrides",
    [
        {"image_b64": None},
        {"image_url": "https://cdn.example/a.jpg"},
        {"image_b64": None, "image_url": "ftp://cdn.example/a.jpg"},
        {"tenant_id": "Acme Corp"},
        {"tenant_id": "x" * 65},
        {"event_id": ""},
        {"event_id": "e" * 129},
        {"event_id": "has space"},
        {"created_at": "2026-11-01T10:00:00"},
        {"metadata": {f"k{i}": "v" for i in range(MAX_METADATA_ENTRIES + 1)}},
        {"metadata": {"k": "v" * 1025}},
        {"unexpected": 1},
        {"schema_version": "2.0"},
    ],
)
def test_invalid_events_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ImageEvent.model_validate(event(**overrides))


def test_committed_json_schemas_are_current() -> None:
    for name, schema in json_schemas().items():
        committed = json.loads((SCHEMA_DIR / name).read_text())
        assert committed == schema, f"schemas/{name} is stale: run `modstream schema`"
