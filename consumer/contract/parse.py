"""Turn a record value into a validated ImageEvent, or say exactly what is wrong with it."""

from __future__ import annotations

from pydantic import ValidationError

from consumer.contract.events import ImageEvent
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
