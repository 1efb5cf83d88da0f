"""The review page for tests: the real service in a thread, on free loopback ports, against
the real broker; and review items (input record + review decision) published to it."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import yaml
from PIL import Image

from consumer.contract.events import (
    Action,
    Decision,
    ImageEvent,
    ModelRef,
    Reason,
    SourceRecord,
    Timings,
)
from consumer.moderation.decide import POOL_RULE
from consumer.moderation.policy import THRESHOLD_RULE
from consumer.review.auth import token_digest
from consumer.review.service import serve_review
from consumer.runtime.settings import (
    KafkaSettings,
    MetricsSettings,
    PolicySettings,
    ReviewSettings,
    Settings,
    TopicSettings,
)
from tests.support.kafka_io import produce_positions

READY_TIMEOUT_S = 60.0
CSRF_SECRET = "test-csrf-secret"


@dataclass(frozen=True)
class Topics:
    input: str
    allow: str
    review: str
    block: str
    labels: str
    claims: str
    tickets_review: str
    dead_letter: str


def fresh_topics() -> Topics:
    prefix = f"rv-{uuid.uuid4().hex[:8]}"
    return Topics(
        input=f"{prefix}.images",
        allow=f"{prefix}.allow",
        review=f"{prefix}.review",
        block=f"{prefix}.block",
        labels=f"{prefix}.labels",
        claims=f"{prefix}.claims",
        tickets_review=f"{prefix}.tickets.review",
        dead_letter=f"{prefix}.dlq",
    )


def write_policy(path: Path, topics: Topics) -> Path:
    """Default thresholds; ``tickets`` has its own review topic (the page reads both)."""
    document = {
        "default": {
            "thresholds": {
                "sexual_explicit": {"review": 0.4, "block": 0.8},
                "sexual_explicit_drawn": {"review": 0.4, "block": 0.8},
                "suggestive": {"review": 0.6},
            }
        },
        "tenants": {"tickets": {"topics": {"review": topics.tickets_review}}},
    }
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def write_reviewers(path: Path, reviewers: dict[str, tuple[str, Sequence[str]]]) -> Path:
    """``reviewers``: id -> (token, tenants)."""
    document = {
        "reviewers": [
            {"id": rid, "token_sha256": token_digest(token), "tenants": list(tenants)}
            for rid, (token, tenants) in reviewers.items()
        ]
    }
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def review_settings(
    bootstrap: str,
    topics: Topics,
    policy: Path,
    reviewers: Path,
    saliency_repository: Path | None = None,
) -> Settings:
    return Settings(
        kafka=KafkaSettings(
            bootstrap_servers=bootstrap,
            input_topic=topics.input,
            session_timeout_ms=2000,
            heartbeat_interval_ms=500,
        ),
        topics=TopicSettings(
            allow=topics.allow,
            review=topics.review,
            block=topics.block,
            labels=topics.labels,
            review_claims=topics.claims,
            dead_letter=topics.dead_letter,
        ),
        policy=PolicySettings(path=policy, reload_interval_s=0),
        metrics=MetricsSettings(host="127.0.0.1", port=0),
        review=ReviewSettings(
            host="127.0.0.1",
            port=0,
            reviewers_file=reviewers,
            csrf_secret=CSRF_SECRET,
            secure_cookies=False,
            labels_partitions=1,
            labels_replication_factor=1,
            saliency_repository=saliency_repository,
        ),
    )


def wait_until(check: Callable[[], bool], timeout_s: float, message: str) -> None:
    """Poll ``check`` until it holds; AssertionError(``message``) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.2)


def answered(get: Callable[[], httpx.Response], timeout_s: float) -> httpx.Response:
    """The first 200 answer of ``get`` within ``timeout_s`` (else the last answer)."""
    deadline = time.monotonic() + timeout_s
    answer = get()
    while answer.status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        answer = get()
    return answer


@dataclass
class RunningPage:
    url: str
    metrics_url: str


@contextmanager
def review_page(settings: Settings) -> Iterator[RunningPage]:
    """Run ``serve_review`` on its own loop in a thread until the block ends."""
    started = threading.Event()
    ports: list[int] = []
    failure: list[BaseException] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def on_started(page: int, metrics: int) -> None:
        ports.extend((page, metrics))
        started.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve_review(settings, stop, on_started=on_started))
        except BaseException as exc:  # reported to the test below
            failure.append(exc)
            started.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="review-page", daemon=True)
    thread.start()
    if not started.wait(READY_TIMEOUT_S) or failure:
        raise RuntimeError(f"review page did not start: {failure[:1]}")
    try:
        yield RunningPage(f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}")
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
    if failure:
        raise RuntimeError("review page failed") from failure[0]


def png_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (320, 240)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def review_decision(
    event: ImageEvent,
    source: SourceRecord,
    *,
    suspect: str | None = "suggestive",
    decided_at: datetime,
) -> Decision:
    """A review decision as the consumer writes one: a category threshold that fired
    (``suspect``), or the pool's disagreement on an image it would allow (None)."""
    if suspect is not None:
        reason = Reason(
            rule=THRESHOLD_RULE, action=Action.REVIEW, category=suspect, score=0.7, threshold=0.6
        )
    else:
        reason = Reason(rule=POOL_RULE, action=Action.REVIEW, category="safe", score=0.9)
    return Decision(
        event_id=event.event_id,
        tenant_id=event.tenant_id,
        action=Action.REVIEW,
        scores={
            "safe_drawing": 0.05,
            "sexual_explicit_drawn": 0.05,
            "safe": 0.1,
            "sexual_explicit": 0.1,
            "suggestive": 0.7,
        },
        reasons=[reason],
        prototype_similarity=0.61,
        model=ModelRef(name="nsfw_mobilenet_v2", version="1"),
        policy_version="test",
        timings=Timings(queue_ms=1, decode_ms=1, batch_wait_ms=1, inference_ms=1, total_ms=5),
        decided_at=decided_at,
        metadata=dict(event.metadata),
        source=source,
    )


async def queue_items(
    bootstrap: str,
    topics: Topics,
    items: Sequence[tuple[str, str, bytes, str | None]],
    *,
    metadata: dict[str, str] | None = None,
    adjust: Callable[[Decision], Decision] | None = None,
) -> list[Decision]:
    """Publish each (tenant, event id, image, suspected category) as an input event and its
    review decision (changed by ``adjust``), oldest first (a minute apart); return the
    decisions."""
    now = datetime.now(UTC) - timedelta(minutes=len(items) + 1)
    events = [
        ImageEvent(
            event_id=event_id,
            tenant_id=tenant,
            image_b64=base64.b64encode(image).decode(),
            created_at=now,
            metadata=metadata or {},
        )
        for tenant, event_id, image, _ in items
    ]
    positions = await produce_positions(
        bootstrap,
        topics.input,
        [(e.event_id.encode(), e.model_dump_json().encode(), []) for e in events],
    )
    decisions: list[Decision] = []
    for index, (event, (partition, offset), item) in enumerate(
        zip(events, positions, items, strict=True)
    ):
        source = SourceRecord(
            topic=topics.input, partition=partition, offset=offset, timestamp_ms=None, key_b64=None
        )
        decisions.append(
            review_decision(
                event, source, suspect=item[3], decided_at=now + timedelta(minutes=index)
            )
        )
    if adjust is not None:
        decisions = [adjust(decision) for decision in decisions]
    for decision in decisions:
        topic = topics.tickets_review if decision.tenant_id == "tickets" else topics.review
        await produce_positions(
            bootstrap,
            topic,
            [(decision.event_id.encode(), decision.model_dump_json().encode(), [])],
        )
    return decisions
