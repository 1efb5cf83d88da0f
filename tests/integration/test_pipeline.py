"""End to end on the real broker and the real tritonserver: every event gets exactly one outcome."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.local.tansu import TansuBroker, ensure_topics
from bench.local.triton import TritonServer
from bench.samples import Sample, photos, standins
from consumer.contract.events import Action, Decision
from consumer.errors import ModelMismatch
from consumer.imaging.decode import ImageLimits, decode_image
from consumer.moderation.policy import load_policy
from consumer.runtime.metrics import Metrics
from consumer.runtime.settings import (
    BatchSettings,
    FlowSettings,
    ImagingSettings,
    KafkaSettings,
    MetricsSettings,
    PolicySettings,
    Settings,
    TopicSettings,
    TritonSettings,
)
from consumer.service import serve, topic_routes
from tests.support.kafka_io import (
    Message,
    committed_offsets,
    produce_all,
    produce_positions,
    read_until,
)
from tests.support.paths import DEFAULT_POLICY
from training.nsfwjs import load
from training.nsfwjs.models import CATEGORIES

pytestmark = pytest.mark.integration

PARTITIONS = 3
TENANTS = ("kids-app", "art-gallery", "acme")
MODEL = "mobilenet_v2"
POLICY = DEFAULT_POLICY


@dataclass(frozen=True)
class Deployment:
    settings: Settings
    topics: list[str]


@dataclass(frozen=True)
class Scored:
    sample: Sample
    scores: dict[str, float]


@pytest.fixture(scope="module")
def scored_samples() -> list[Scored]:
    """Sample photos and stand-ins with the scores the eager PyTorch model gives them.

    The pixels come from the consumer's own decoder, so any difference from the served scores
    is the export, Triton or the pipeline, never the resize.
    """
    model = load(MODEL).uint8_input()
    categories = [CATEGORIES[name] for name in model.cfg.class_names]
    samples = [*photos(), *standins()]
    limits = ImageLimits.from_settings(ImagingSettings())
    pixels = np.stack([decode_image(s.data, 224, limits).pixels for s in samples])
    with torch.no_grad():
        probs, _ = model(torch.from_numpy(pixels))
    return [
        Scored(sample, dict(zip(categories, (float(p) for p in row), strict=True)))
        for sample, row in zip(samples, probs.numpy(), strict=True)
    ]


def png(colour: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def image_event(event_id: str, tenant: str, image: bytes) -> bytes:
    return json.dumps(
        {
            "event_id": event_id,
            "tenant_id": tenant,
            "image_b64": base64.b64encode(image).decode(),
            "created_at": datetime.now(UTC).isoformat(),
            "metadata": {"source": "test"},
        }
    ).encode()


def isolated_policy(run: str) -> Path:
    """The repository's policy with its tenant topic override renamed for this run only.

    Topics outlive a test on the session's broker; a shared name would leak one test's
    decisions into another's reads.
    """
    folder = Path(tempfile.mkdtemp(prefix=f"policy-{run}-"))
    path = folder / "policy.yaml"
    path.write_text(POLICY.read_text().replace("art-gallery.review", f"art-gallery.review-{run}"))
    return path


def make_settings(broker: TansuBroker, triton: TritonServer, **batching: float) -> Settings:
    run = uuid.uuid4().hex[:8]
    topics = TopicSettings(
        allow=f"allow-{run}", review=f"review-{run}", block=f"block-{run}", dead_letter=f"dlq-{run}"
    )
    return Settings(
        kafka=KafkaSettings(
            bootstrap_servers=broker.bootstrap_servers,
            group_id=f"modstream-{run}",
            input_topic=f"images-{run}",
            session_timeout_ms=2000,
            heartbeat_interval_ms=500,
            commit_interval_ms=100,
        ),
        topics=topics,
        triton=TritonSettings(url=triton.grpc_url, ready_timeout_s=30),
        batching=BatchSettings(**batching),
        policy=PolicySettings(path=isolated_policy(run)),
        metrics=MetricsSettings(host="127.0.0.1", port=0),
    )


@asynccontextmanager
async def running(
    settings: Settings, metrics: Metrics | None = None
) -> AsyncIterator[asyncio.Task[None]]:
    """``serve`` in a task; stopped (drained) on leaving the block."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop, metrics=metrics))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"condition not met within {timeout_s}s")


async def group_committed(settings: Settings) -> dict[int, int]:
    kafka = settings.kafka
    return await committed_offsets(
        kafka.bootstrap_servers, kafka.group_id, kafka.input_topic, PARTITIONS
    )


async def wait_committed(settings: Settings, ends: dict[int, int], timeout_s: float) -> None:
    """Wait until the group's committed offsets reach the end of every partition written."""

    async def reached() -> bool:
        return await group_committed(settings) == ends

    await wait_for(reached, timeout_s)


def decisions_by_id(messages: Sequence[Message]) -> dict[str, Decision]:
    """The decisions among ``messages``, by event id."""
    decisions = (Decision.model_validate_json(m.value or b"") for m in messages)
    return {decision.event_id: decision for decision in decisions}


def output_topics(settings: Settings) -> list[str]:
    """Every topic the run's policy can route to, plus the dead-letter topic."""
    policies = load_policy(settings.policy.path, topic_routes(settings.topics))
    routes = [policies.default, *policies.tenants.values()]
    decided = {r.topics.for_action(a) for r in routes for a in Action}
    return sorted(decided | {settings.topics.dead_letter})


async def test_every_event_gets_exactly_one_outcome(
    broker: TansuBroker, triton: TritonServer, scored_samples: list[Scored]
) -> None:
    settings = make_settings(broker, triton, max_batch_size=16, max_wait_ms=5)
    kafka = settings.kafka
    await ensure_topics(
        kafka.bootstrap_servers,
        {kafka.input_topic: PARTITIONS, **{t: 1 for t in output_topics(settings)}},
    )
    policies = load_policy(settings.policy.path, topic_routes(settings.topics))

    # Expected outcome of each valid event, computed independently of the service: the eager
    # PyTorch model on the decoded pixels, then the policy.
    expected: dict[str, tuple[str, str, dict[str, float]]] = {}
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
    for i in range(540):
        scored = scored_samples[i % len(scored_samples)]
        tenant = TENANTS[i % len(TENANTS)]
        event_id = f"ok-{i}"
        verdict = policies.verdict(tenant, scored.scores)
        topic = policies.rules_for(tenant).topics.for_action(verdict.action)
        expected[event_id] = (topic, verdict.action.value, scored.scores)
        image = scored.sample.data
        records.append(
            (
                event_id.encode(),
                image_event(event_id, tenant, image),
                [("trace-id", event_id.encode())],
            )
        )

    bad: dict[bytes, str] = {}
    corrupt_png = png((1, 2, 3), (50, 50))[:60]
    for i in range(20):
        bad[f"bad-json-{i}".encode()] = "event_not_json"
        records.append((f"bad-json-{i}".encode(), b"{not json", []))
        bad[f"bad-field-{i}".encode()] = "event_invalid"
        records.append(
            (f"bad-field-{i}".encode(), image_event(f"x{i}", "Not A Tenant", b"\x89PNG"), [])
        )
        bad[f"bad-image-{i}".encode()] = "image_corrupt"
        records.append(
            (f"bad-image-{i}".encode(), image_event(f"bad-image-{i}", "acme", corrupt_png), [])
        )
    ends = await produce_all(kafka.bootstrap_servers, kafka.input_topic, records)
    assert sum(ends.values()) == len(records) == 600

    async with running(settings):
        await wait_committed(settings, ends, timeout_s=120)

    messages = await read_until(
        kafka.bootstrap_servers, output_topics(settings), len(records), timeout_s=30
    )
    assert len(messages) == len(records), "every event needs exactly one outcome, no duplicates"

    seen = Counter(m.key for m in messages)
    assert max(seen.values()) == 1
    decisions = [m for m in messages if m.topic != settings.topics.dead_letter]
    dead = [m for m in messages if m.topic == settings.topics.dead_letter]
    assert len(decisions) == len(expected)
    assert len(dead) == len(bad)

    actions: Counter[tuple[str, str]] = Counter()
    for message in decisions:
        decision = Decision.model_validate_json(message.value or b"")
        topic, action, scores = expected[decision.event_id]
        assert message.topic == topic
        assert decision.action.value == action
        assert message.key == decision.event_id.encode()
        assert dict(message.headers)["trace-id"] == decision.event_id.encode()
        assert dict(message.headers)["modstream-action"] == action.encode()
        assert decision.model.name == f"nsfw_{MODEL}"
        assert decision.model.version == "1"
        assert decision.policy_version.startswith("sha256:")
        assert decision.metadata == {"source": "test"}
        for name, score in scores.items():
            assert decision.scores[name] == pytest.approx(score, abs=1e-4)
        if decision.action.value != "allow":
            assert decision.reasons, "a review or block names the rule that fired"
        assert decision.timings.total_ms >= decision.timings.inference_ms
        actions[(decision.tenant_id, decision.action.value)] += 1
    # The three tenants' policies must actually route differently for this test to mean much.
    assert {a for (_, a) in actions} == {"allow", "review", "block"}
    assert actions[("kids-app", "block")] > actions[("acme", "block")]
    assert actions[("art-gallery", "block")] == 0

    for message in dead:
        letter = json.loads(message.value or b"")
        assert message.key is not None
        assert letter["reason_code"] == bad[message.key]
        assert dict(message.headers)["modstream-error-code"] == bad[message.key].encode()
        source = letter["source"]
        assert source["topic"] == kafka.input_topic
        original = base64.b64decode(letter["original_value_b64"])
        assert original == next(v for k, v, _ in records if k == message.key)
        assert source["offset"] < ends[source["partition"]]

    # A restarted consumer in the same group starts after the committed offsets: it decides
    # only the new events, never the old ones again.
    fresh: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
        (f"late-{i}".encode(), image_event(f"late-{i}", "acme", png((30, 200, 40), (64, 64))), [])
        for i in range(30)
    ]
    ends_after = await produce_all(kafka.bootstrap_servers, kafka.input_topic, fresh)
    final_ends = {p: max(ends.get(p, 0), ends_after.get(p, 0)) for p in range(PARTITIONS)}
    final_ends = {p: e for p, e in final_ends.items() if e}

    async with running(settings):
        await wait_committed(settings, final_ends, timeout_s=60)
    after = await read_until(
        kafka.bootstrap_servers, output_topics(settings), len(records) + len(fresh), timeout_s=30
    )
    assert len(after) == len(records) + len(fresh)
    assert Counter(m.key for m in after).most_common(1)[0][1] == 1


async def test_consumer_refuses_a_model_that_does_not_fit(
    broker: TansuBroker, triton: TritonServer
) -> None:
    settings = make_settings(broker, triton, max_batch_size=64)
    with pytest.raises(ModelMismatch, match="max_batch_size is 32"):
        await asyncio.wait_for(serve(settings, asyncio.Event()), timeout=60)


async def test_unknown_model_name_is_a_clear_error(
    broker: TansuBroker, triton: TritonServer
) -> None:
    settings = make_settings(broker, triton)
    settings = settings.model_copy(
        update={"triton": TritonSettings(url=triton.grpc_url, model_name="nope", ready_timeout_s=1)}
    )
    with pytest.raises(Exception, match="not ready on Triton"):
        await asyncio.wait_for(serve(settings, asyncio.Event()), timeout=30)


async def test_stop_mid_stream_commits_only_decided_events(
    broker: TansuBroker, triton: TritonServer
) -> None:
    settings = make_settings(broker, triton, max_batch_size=8, max_wait_ms=5)
    # A small in-flight bound keeps most of the backlog unread when the stop comes.
    settings = settings.model_copy(update={"flow": FlowSettings(max_inflight_events=24)})
    kafka = settings.kafka
    await ensure_topics(
        kafka.bootstrap_servers,
        {kafka.input_topic: PARTITIONS, **{t: 1 for t in output_topics(settings)}},
    )
    image = png((30, 200, 40), (2400, 1800))
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
        (f"e-{i}".encode(), image_event(f"e-{i}", TENANTS[i % 3], image), []) for i in range(300)
    ]
    positions = await produce_positions(kafka.bootstrap_servers, kafka.input_topic, records)
    ends: dict[int, int] = {}
    for partition, offset in positions:
        ends[partition] = max(ends.get(partition, 0), offset + 1)

    async def some_decided() -> bool:
        return sum((await group_committed(settings)).values()) >= 1

    async with running(settings):
        await wait_for(some_decided, timeout_s=60)
    # The drain finished what was read: everything committed has an outcome, and nothing
    # beyond what was read was committed.
    committed = await group_committed(settings)
    assert sum(committed.values()) < len(records), "stopped too late to test a partial drain"
    outcomes = await read_until(
        kafka.bootstrap_servers, output_topics(settings), sum(committed.values()), timeout_s=20
    )
    decided_keys = {m.key for m in outcomes}
    committed_keys = {
        key
        for (key, _, _), (partition, offset) in zip(records, positions, strict=True)
        if offset < committed.get(partition, 0)
    }
    assert committed_keys, "nothing was committed before the stop"
    assert committed_keys <= decided_keys, "an offset was committed without its outcome"

    # A restart picks up exactly where the commits stopped; every event ends with an outcome.
    async with running(settings):
        await wait_committed(settings, ends, timeout_s=120)
    final = await read_until(
        kafka.bootstrap_servers, output_topics(settings), len(records), timeout_s=30
    )
    assert {m.key for m in final} == {key for key, _, _ in records}
    assert decided_keys <= {m.key for m in final}


async def test_animated_image_is_judged_by_its_worst_frame(
    broker: TansuBroker, triton: TritonServer
) -> None:
    settings = make_settings(broker, triton, max_batch_size=4, max_wait_ms=5)
    kafka = settings.kafka
    await ensure_topics(
        kafka.bootstrap_servers,
        {kafka.input_topic: PARTITIONS, **{t: 1 for t in output_topics(settings)}},
    )
    benign = Image.open(io.BytesIO(photos()[0].data)).convert("RGB").resize((224, 224))
    explicit = Image.open(io.BytesIO(next(s for s in standins() if s.name == "explicit-high").data))
    # Lossless APNG of 11 frames: the stand-in is frames 3-5, the rest is benign.
    frames = [benign] * 3 + [explicit.convert("RGB")] * 3 + [benign] * 5
    animation = io.BytesIO()
    frames[0].save(animation, format="PNG", save_all=True, append_images=frames[1:], duration=40)
    still = io.BytesIO()
    benign.save(still, format="PNG")
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
        (b"animated", image_event("animated", "acme", animation.getvalue()), []),
        (b"still", image_event("still", "acme", still.getvalue()), []),
    ]
    ends = await produce_all(kafka.bootstrap_servers, kafka.input_topic, records)
    async with running(settings):
        await wait_committed(settings, ends, timeout_s=60)
    messages = await read_until(kafka.bootstrap_servers, output_topics(settings), 2, timeout_s=20)
    decisions = decisions_by_id(messages)
    assert decisions["still"].action is Action.ALLOW
    # Frames 0, 3, 7 and 10 are sampled: the first frame alone would have been allowed.
    assert decisions["animated"].action is Action.BLOCK
    assert decisions["animated"].scores["sexual_explicit"] > 0.9
