"""What every route of the page works with, built once by ``consumer.review.service``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.responses import Response

from consumer.contract.events import ReviewVerdict
from consumer.imaging.decode import ImageLimits
from consumer.moderation.watch import LivePolicies
from consumer.review.access import Gate
from consumer.review.auth import Reviewer
from consumer.review.metrics import ReviewMetrics
from consumer.review.pages import Pages
from consumer.review.queue import ReviewQueue
from consumer.review.records import ImageSource, RecordReader
from consumer.review.render import MODEL_INPUT_SIZE, ShownCache
from consumer.review.saliency import SaliencyModel
from consumer.review.verdicts import VerdictPublisher

SHOWN_CACHE_SIZE = 8


@dataclass(frozen=True)
class Review:
    queue: ReviewQueue
    gate: Gate
    pages: Pages
    publisher: VerdictPublisher
    reader: RecordReader
    images: ImageSource
    limits: ImageLimits
    policies: LivePolicies
    metrics: ReviewMetrics
    saliency: SaliencyModel | None
    display_max_side: int
    ready: Callable[[], bool]
    claim_s: float = 120.0
    shown: ShownCache = field(default_factory=lambda: ShownCache(SHOWN_CACHE_SIZE))
    # Decoding takes one core each; a heat map runs ONNX Runtime on every core.
    decode_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))
    heat_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))
    in_flight: set[tuple[str, str]] = field(default_factory=set)
    """Items whose verdict is being produced on this replica: a second post waits its turn."""
    unlabelled: dict[tuple[str, str], ReviewVerdict] = field(default_factory=dict)
    """Verdicts whose final decision went out but whose label did not, to complete as given."""

    @property
    def model_input_size(self) -> int:
        return self.saliency.input_size if self.saliency is not None else MODEL_INPUT_SIZE


class NotFound(Exception):
    """Not in this tenant's queue (or never was): always the same 404."""


def render(review: Review, reviewer: Reviewer, template: str, **context: object) -> Response:
    return review.pages.render(
        template, reviewer=reviewer, csrf=review.gate.csrf_token(reviewer), **context
    )


def field_of(value: object) -> str | None:
    return value if isinstance(value, str) else None
