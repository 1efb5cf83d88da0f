"""Every reason an event can be dead-lettered for: the ``reason_code`` field of a DeadLetter.

The codes are part of the wire contract: consumers of the dead-letter topic group and alert
on them, so a code is never renamed or reused. ``docs/contract.md`` lists each one with its
meaning; a test keeps the page and this enum in step.
"""

from __future__ import annotations

from enum import StrEnum


class ReasonCode(StrEnum):
    """Why an event got a dead letter instead of a decision."""

    # The record itself (consumer.contract.parse).
    EVENT_EMPTY = "event_empty"
    EVENT_NOT_JSON = "event_not_json"
    EVENT_INVALID = "event_invalid"
    # Inline image bytes and decoding (consumer.imaging.decode).
    INVALID_BASE64 = "invalid_base64"
    IMAGE_EMPTY = "image_empty"
    IMAGE_TOO_LARGE = "image_too_large"
    IMAGE_TOO_MANY_PIXELS = "image_too_many_pixels"
    IMAGE_TOO_MANY_FRAMES = "image_too_many_frames"
    IMAGE_CORRUPT = "image_corrupt"
    IMAGE_UNSUPPORTED_FORMAT = "image_unsupported_format"
    # Image URLs (consumer.imaging.fetch, consumer.imaging.egress).
    IMAGE_URL_INVALID = "image_url_invalid"
    IMAGE_URL_SCHEME = "image_url_scheme"
    IMAGE_URL_BLOCKED = "image_url_blocked"
    IMAGE_FETCH_REDIRECTS = "image_fetch_redirects"
    IMAGE_FETCH_HTTP_4XX = "image_fetch_http_4xx"
    IMAGE_FETCH_HTTP_5XX = "image_fetch_http_5xx"
    IMAGE_FETCH_TIMEOUT = "image_fetch_timeout"
    IMAGE_FETCH_FAILED = "image_fetch_failed"
    # Inference and the pipeline itself.
    INFERENCE_REJECTED = "inference_rejected"
    INTERNAL_ERROR = "internal_error"
