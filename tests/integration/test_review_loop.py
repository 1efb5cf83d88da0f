"""End to end on the real broker and tritonserver: the consumer sends images to review, a
reviewer gives verdicts on the page, the final decisions land on the action's topics and the
verdicts on the labels topic, from which the training tools fetch the very images.

The rest of the loop — a labelled set with a tenant's head, the audit, retrained heads through
shadow and promotion — is tests/integration/test_review_feedback.py."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
from datetime import UTC, datetime

import httpx
import pytest
import yaml
from PIL import Image

from bench.local.tansu import TansuBroker, ensure_topics
from bench.local.triton import TritonServer
from bench.samples import photos, standins
from consumer.contract.events import Action, Decision, ImageEvent, ReviewVerdict
from consumer.review.queue import item_key
from consumer.runtime.settings import BatchSettings, Settings, TritonSettings
from tests.integration.test_pipeline import running
from tests.support.kafka_io import produce_positions, read_until
from tests.support.paths import TRITON_REPO
from tests.support.review import fresh_topics, review_page, review_settings, write_reviewers
from training.feedback.build import BuildOptions, build_set
from training.feedback.labels import catalog_of

pytestmark = pytest.mark.integration

TOKEN = "loop-reviewer"
SERVED = TritonSettings().model_name


async def test_review_verdicts_become_final_decisions_and_labels(
    broker: TansuBroker, triton: TritonServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("review-loop")
    topics = fresh_topics()
    bootstrap = broker.bootstrap_servers
    await ensure_topics(
        bootstrap,
        {topics.input: 2, topics.review: 1, topics.allow: 1, topics.block: 1, topics.labels: 1},
    )
    # Low review thresholds and no block: the model sends (nearly) everything to people.
    policy = folder / "policy.yaml"
    policy.write_text(
        yaml.safe_dump(
            {
                "default": {
                    "thresholds": {
                        "sexual_explicit": {"review": 0.001},
                        "suggestive": {"review": 0.001},
                    }
                }
            }
        ),
        encoding="utf-8",
    )
    reviewers = write_reviewers(folder / "reviewers.yaml", {"ravi": (TOKEN, ["shop"])})
    settings = review_settings(bootstrap, topics, policy, reviewers, TRITON_REPO)
    consumer_settings: Settings = settings.model_copy(
        update={
            "triton": TritonSettings(url=triton.grpc_url, ready_timeout_s=30),
            "batching": BatchSettings(max_batch_size=8, max_wait_ms=5),
        }
    )
    samples = [*photos()[:3], *standins()[:3]]
    events = [
        ImageEvent(
            event_id=f"shop-{index}",
            tenant_id="shop",
            image_b64=base64.b64encode(sample.data).decode(),
            created_at=datetime.now(UTC),
        )
        for index, sample in enumerate(samples)
    ]
    positions = await produce_positions(
        bootstrap,
        topics.input,
        [(e.event_id.encode(), e.model_dump_json().encode(), []) for e in events],
    )
    where = {e.event_id: p for e, p in zip(events, positions, strict=True)}
    async with running(consumer_settings):
        decided = await read_until(
            bootstrap, [topics.review, topics.allow, topics.block], len(events), 60
        )
    decisions = [Decision.model_validate_json(m.value or b"") for m in decided]
    reviewed = [d for d in decisions if d.action is Action.REVIEW]
    assert len(decisions) == len(events)
    assert len(reviewed) >= 4, [d.scores for d in decisions]
    for decision in reviewed:
        assert decision.source is not None
        assert (decision.source.topic, decision.source.partition, decision.source.offset) == (
            topics.input,
            *where[decision.event_id],
        )

    # The page runs on its own loop in a thread; talk to it without blocking this one.
    with review_page(settings) as page:
        async with httpx.AsyncClient(
            base_url=page.url, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as client:
            for _ in range(100):
                queue = await client.get("/t/shop")
                if queue.status_code == 200 and f"{len(reviewed)} waiting" in queue.text:
                    break
                await asyncio.sleep(0.2)
            assert f"{len(reviewed)} waiting" in queue.text
            first = min(reviewed, key=lambda d: (d.decided_at, d.event_id))
            shown = await client.get(f"/t/shop/items/{item_key(first.event_id)}/image")
            original = next(
                s for s, e in zip(samples, events, strict=True) if e.event_id == first.event_id
            )
            with (
                Image.open(io.BytesIO(shown.content)) as picture,
                Image.open(io.BytesIO(original.data)) as source,
            ):
                assert picture.format == "JPEG"
                assert max(picture.size) <= max(source.size)
                assert (
                    abs(picture.size[0] / picture.size[1] - source.size[0] / source.size[1]) < 0.02
                )
            page_html = (await client.get(f"/t/shop/items/{item_key(first.event_id)}")).text
            csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page_html)
            assert csrf is not None
            chosen: dict[str, tuple[str, str | None]] = {}
            for index, decision in enumerate(sorted(reviewed, key=lambda d: d.event_id)):
                choice = ("allow", None) if index % 2 == 0 else ("block", "suggestive")
                chosen[decision.event_id] = choice
                form = {"csrf": csrf.group(1), "action": choice[0]}
                if choice[1] is not None:
                    form["category"] = choice[1]
                answer = await client.post(
                    f"/t/shop/items/{item_key(decision.event_id)}/verdict", data=form
                )
                assert answer.status_code == 303, answer.text
            empty = await client.get("/t/shop")
            assert "Nothing waiting" in empty.text

    labels = await read_until(bootstrap, [topics.labels], len(reviewed), 30)
    verdicts = {
        v.event_id: v for v in (ReviewVerdict.model_validate_json(m.value or b"") for m in labels)
    }
    assert set(verdicts) == set(chosen)
    finals = await read_until(
        bootstrap, [topics.allow, topics.block], len(decisions) - len(reviewed) + len(reviewed), 30
    )
    by_event = {}
    for message in finals:
        final = Decision.model_validate_json(message.value or b"")
        if final.human_review is not None:
            by_event[final.event_id] = (message.topic, final)
    assert set(by_event) == set(chosen)
    original_by_id = {d.event_id: d for d in reviewed}
    for event_id, (action, category) in chosen.items():
        topic, final = by_event[event_id]
        assert topic == (topics.allow if action == "allow" else topics.block)
        assert final.action.value == action
        assert final.reasons[0].rule == "human_review"
        assert final.human_review is not None
        assert final.human_review.overrides.reasons == original_by_id[event_id].reasons
        assert final.scores == original_by_id[event_id].scores
        verdict = verdicts[event_id]
        assert (verdict.action.value, verdict.category) == (action, category)
        assert verdict.source == original_by_id[event_id].source
        # The model leaned to block (a category threshold fired): an allow overturns it.
        assert verdict.overturned is (action == "allow")

    # Back into training: the allows are negatives for every head, each with the very bytes of
    # its input record; a block naming a built-in category teaches the heads nothing.
    report = await build_set(
        BuildOptions(
            out=folder / "feedback-set",
            labels_topic=topics.labels,
            catalog=catalog_of(TRITON_REPO, SERVED, "heads", "moderation"),
            tenant="shop",
            kafka=settings.kafka,
            imaging=settings.imaging,
            timeout_s=30,
        )
    )
    allowed = {event_id for event_id, (action, _) in chosen.items() if action == "allow"}
    assert report["rows"] == len(allowed)
    assert set(report["skipped"]) == set(chosen) - allowed
    rows = [
        json.loads(line)
        for line in (folder / "feedback-set" / "verdicts.jsonl").read_text().splitlines()
    ]
    by_id = {e.event_id: s for s, e in zip(samples, events, strict=True)}
    assert {row["event_id"] for row in rows} == allowed
    for row in rows:
        assert (folder / "feedback-set" / row["image"]).read_bytes() == by_id[row["event_id"]].data
        assert row["reviewer_id"] == "ravi"
