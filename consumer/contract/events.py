"""The wire contract: ``ImageEvent`` in, ``Decision`` or ``DeadLetter`` out.

Every payload carries ``schema_version``. Consumers of decisions must accept unknown fields
(new optional fields do not bump the major version); ``modstream schema`` writes the JSON
Schemas to ``schemas/``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

MAX_METADATA_ENTRIES = 32
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 1024

EventId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
TenantId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
]
MetadataValue = Annotated[str, StringConstraints(max_length=MAX_METADATA_VALUE_CHARS)]


class Action(StrEnum):
    ALLOW = "allow"
    REVIEW = "review"
    BLOCK = "block"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Action.ALLOW: 0, Action.REVIEW: 1, Action.BLOCK: 2}


class ImageEvent(BaseModel):
    """An image to moderate, published by an upload service."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal["1.0"] = "1.0"
    event_id: EventId
    tenant_id: TenantId
    image_b64: str | None = Field(default=None, description="The image bytes, base64 (RFC 4648).")
    image_url: AnyHttpUrl | None = Field(default=None, description="http(s) URL of the image.")
    content_type: (
        Annotated[str, StringConstraints(max_length=100, pattern=r"^[\w.+-]+/[\w.+-]+$")] | None
    ) = None
    created_at: AwareDatetime = Field(
        description="When the upload happened (RFC 3339, with offset)."
    )
    metadata: dict[
        Annotated[str, StringConstraints(min_length=1, max_length=MAX_METADATA_KEY_CHARS)],
        MetadataValue,
    ] = Field(default_factory=dict, description="Passed through to the decision untouched.")

    @field_validator("metadata")
    @classmethod
    def _bounded_metadata(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_METADATA_ENTRIES:
            raise ValueError(f"at most {MAX_METADATA_ENTRIES} metadata entries are allowed")
        return value

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ImageEvent:
        if (self.image_b64 is None) == (self.image_url is None):
            raise ValueError("give exactly one of image_b64 or image_url")
        return self


class RawImageEvent(ImageEvent):
    """The event fields of a raw-image record: the record's value is the image itself, the
    fields travel in headers (``consumer.contract.parse``). Validated exactly like an
    ImageEvent's, but it carries neither ``image_b64`` nor ``image_url``."""

    @model_validator(mode="after")
    def _exactly_one_source(self) -> RawImageEvent:
        if self.image_b64 is not None or self.image_url is not None:
            raise ValueError("a raw-image record carries the image as its value, not in headers")
        return self


class Reason(BaseModel):
    """One rule that fired, with the numbers that made it fire."""

    model_config = ConfigDict(frozen=True)

    rule: str
    action: Action
    category: str | None = None
    score: float | None = None
    threshold: float | None = None
    bank_id: str | None = Field(default=None, description="exemplar_match: the bank matched.")
    entry_id: str | None = Field(default=None, description="exemplar_match: the entry matched.")


class ModelRef(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    heads_model: str | None = Field(
        default=None, description="The heads model whose categories scored too, if any."
    )
    heads_version: str | None = Field(
        default=None, description="The heads version that scored this image, if any."
    )


class Timings(BaseModel):
    """Milliseconds spent in each stage; ``total_ms`` runs from ``created_at`` to the decision."""

    model_config = ConfigDict(frozen=True)

    queue_ms: float = Field(description="created_at to the moment the consumer read the record")
    decode_ms: float
    batch_wait_ms: float
    inference_ms: float
    total_ms: float


class SourceRecord(BaseModel):
    """Where a record came from: the input record of a decision or dead letter."""

    model_config = ConfigDict(frozen=True)

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key_b64: str | None


class OverriddenDecision(BaseModel):
    """The model's decision a reviewer replaced, as it was produced."""

    model_config = ConfigDict(frozen=True)

    action: Action
    reasons: list[Reason]
    policy_version: str
    decided_at: datetime


class HumanReview(BaseModel):
    """Who replaced the model's decision, when, and what the model had decided."""

    model_config = ConfigDict(frozen=True)

    reviewer_id: str
    reviewed_at: datetime
    category: str | None = Field(
        default=None, description="The category the reviewer named, if any."
    )
    overrides: OverriddenDecision


class Decision(BaseModel):
    """The verdict on one ImageEvent; produced keyed by ``event_id`` to the action's topic."""

    model_config = ConfigDict(frozen=True)

    schema_version: Literal["1.0"] = "1.0"
    event_id: EventId
    tenant_id: TenantId
    action: Action
    scores: dict[str, float]
    reasons: list[Reason]
    prototype_similarity: float | None = Field(
        default=None,
        description=(
            "Cosine similarity of the image's embedding to the prototype of the category the "
            "model gave it; null when the model has no prototype for that category."
        ),
    )
    model: ModelRef
    policy_version: str
    timings: Timings
    decided_at: datetime
    metadata: dict[str, str] = Field(default_factory=dict)
    pool_entropy: float | None = Field(
        default=None,
        description="Entropy of the pool's mean scores (how much its models disagree); null "
        "without a pool.",
    )
    source: SourceRecord | None = Field(
        default=None,
        description="The input record the event was read from; the review page fetches the "
        "image from it.",
    )
    human_review: HumanReview | None = Field(
        default=None,
        description="Set on a decision a reviewer made (reason ``human_review``); it replaces "
        "the model's decision on the same event.",
    )


class DeadLetter(BaseModel):
    """A record that could not be moderated, with the reason and its original bytes."""

    model_config = ConfigDict(frozen=True)

    schema_version: Literal["1.0"] = "1.0"
    reason_code: str
    reason: str
    event_id: str | None = None
    tenant_id: str | None = None
    source: SourceRecord
    original_value_b64: str | None
    failed_at: datetime


class ShadowComparison(BaseModel):
    """One event's live decision beside the one a candidate heads version would have made.

    Produced to the heads-shadow topic, keyed by ``event_id``; it routes nothing.
    """

    model_config = ConfigDict(frozen=True)

    schema_version: Literal["1.0"] = "1.0"
    event_id: EventId
    tenant_id: TenantId
    live_heads_version: str | None
    shadow_heads_version: str
    live_action: Action
    shadow_action: Action
    live_categories: list[str] = Field(description="Categories of the rules that fired live.")
    shadow_categories: list[str] = Field(
        description="Categories of the rules that would have fired with the candidate heads."
    )
    live_head_scores: dict[str, float] = Field(
        default_factory=dict, description="The live heads' scores this tenant sees."
    )
    shadow_scores: dict[str, float] = Field(
        description="The candidate's scores of the heads this tenant sees."
    )
    compared_at: datetime


class ReviewVerdict(BaseModel):
    """A reviewer's verdict on one event: produced to the compacted labels topic, keyed by
    ``event_id`` (a later verdict on the same event replaces the earlier one).

    ``action`` is ``allow`` or ``block``; ``category`` names what the image is when the
    reviewer said so (a built-in category or one of the tenant's heads). ``model_action`` and
    ``model_category`` are what the model leaned to (``consumer.review.verdicts.leaning``):
    ``overturned`` is true when the reviewer's action differs from it.
    """

    model_config = ConfigDict(frozen=True)

    schema_version: Literal["1.0"] = "1.0"
    event_id: EventId
    tenant_id: TenantId
    action: Literal[Action.ALLOW, Action.BLOCK]
    category: str | None = None
    reviewer_id: str
    reviewed_at: datetime
    decided_at: datetime = Field(description="When the model's decision was made.")
    source: SourceRecord = Field(description="The input record holding the image.")
    model: ModelRef
    model_action: Action
    model_category: str | None
    overturned: bool


class ReviewClaim(BaseModel):
    """A reviewer has an item open: produced by the review page to the compacted claims
    topic, keyed by ``event_id``, so that other reviewers (on any replica) are sent to other
    items until ``expires_at``."""

    model_config = ConfigDict(frozen=True)

    schema_version: Literal["1.0"] = "1.0"
    event_id: EventId
    tenant_id: TenantId
    reviewer_id: str
    expires_at: datetime


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schemas of every payload, keyed by file name."""
    return {
        "image_event.schema.json": ImageEvent.model_json_schema(),
        "decision.schema.json": Decision.model_json_schema(),
        "dead_letter.schema.json": DeadLetter.model_json_schema(),
        "heads_shadow.schema.json": ShadowComparison.model_json_schema(),
        "review_verdict.schema.json": ReviewVerdict.model_json_schema(),
        "review_claim.schema.json": ReviewClaim.model_json_schema(),
    }
