"""Turn a record into a validated ImageEvent, or say exactly what is wrong with it.

Two forms: a JSON ImageEvent as the value (the image inline as base64, or as a URL), or a
raw-image record whose value is the image itself and whose event fields are headers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import ValidationError

from consumer.contract.events import ImageEvent, RawImageEvent
from consumer.contract.headers import Headers
from consumer.contract.reasons import ReasonCode
from consumer.errors import InvalidEvent


def parse_event(value: bytes | None) -> ImageEvent:
    """Validate a record value as an ImageEvent; InvalidEvent says which field is wrong."""
    if value is None:
        raise InvalidEvent(
            ReasonCode.EVENT_EMPTY, "record has no value (a tombstone); publish an ImageEvent"
        )
    try:
        return ImageEvent.model_validate_json(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise InvalidEvent(
                ReasonCode.EVENT_NOT_JSON, f"record value is not JSON: {first['msg']}"
            ) from exc
        where = ".".join(str(part) for part in first["loc"]) or "(event)"
        raise InvalidEvent(
            ReasonCode.EVENT_INVALID,
            f"{where}: {first['msg']} ({exc.error_count()} problem(s) in total)",
        ) from exc


# A record whose content-type header is image/* is a raw-image record: its value is the image,
# its event fields are these headers (values UTF-8; metadata a JSON object of strings).
RAW_CONTENT_PREFIX = "image/"
RAW_HEADERS = {
    "event-id": "event_id",
    "tenant-id": "tenant_id",
    "created-at": "created_at",
    "metadata": "metadata",
}


@dataclass(frozen=True)
class ParsedRecord:
    event: ImageEvent
    image: bytes | None = None
    """The image bytes of a raw-image record; None for a JSON event (image_b64/image_url)."""


def parse_record(value: bytes | None, headers: Headers | None) -> ParsedRecord:
    """Validate a record as a JSON ImageEvent, or as a raw-image record when its
    ``content-type`` header is ``image/*``; InvalidEvent says which field is wrong."""
    content_type = _header(headers, "content-type")
    if content_type is None or not content_type.lower().startswith(RAW_CONTENT_PREFIX):
        return ParsedRecord(parse_event(value))
    fields: dict[str, object] = {"content_type": content_type}
    for header, field in RAW_HEADERS.items():
        text = _header(headers, header)
        if text is None:
            continue
        if field == "metadata":
            try:
                fields[field] = json.loads(text)
            except ValueError as exc:
                raise InvalidEvent(
                    ReasonCode.EVENT_INVALID, f"header metadata: not a JSON object: {exc}"
                ) from exc
        else:
            fields[field] = text
    try:
        event = RawImageEvent.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        header = next((h for h, f in RAW_HEADERS.items() if f == field), field or "(headers)")
        raise InvalidEvent(
            ReasonCode.EVENT_INVALID,
            f"header {header}: {first['msg']} ({exc.error_count()} problem(s) in total); a "
            "raw-image record needs event-id, tenant-id and created-at headers",
        ) from exc
    if value is None:
        raise InvalidEvent(
            ReasonCode.EVENT_EMPTY, "raw-image record has no value (a tombstone); send the image"
        )
    return ParsedRecord(event, value)


def _header(headers: Headers | None, name: str) -> str | None:
    """The one value of header ``name`` (case-insensitive); InvalidEvent when it repeats or is
    not UTF-8."""
    found = [v for k, v in headers or () if k.lower() == name]
    if not found:
        return None
    if len(found) > 1:
        raise InvalidEvent(ReasonCode.EVENT_INVALID, f"header {name} is given {len(found)} times")
    try:
        return found[0].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent(ReasonCode.EVENT_INVALID, f"header {name} is not UTF-8") from exc
