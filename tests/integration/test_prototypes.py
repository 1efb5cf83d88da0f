"""The prototype check on the real tritonserver serving the exported model.

The model labels blank images and gradients "safe_drawing" with confidence; their embeddings
are far from the prototype of the labelled drawings, so the shipped policy sends them to
review. A drawing and photos the prototypes have not seen stay allowed.
"""

from __future__ import annotations

import pytest
from PIL import Image

from bench.local.tansu import TansuBroker, ensure_topics
from bench.local.triton import TritonServer
from bench.samples import photo_image
from consumer.contract.events import Action
from tests.integration.test_pipeline import (
    PARTITIONS,
    decisions_by_id,
    image_event,
    make_settings,
    output_topics,
    running,
    wait_committed,
)
from tests.support.kafka_io import produce_all, read_until
from training.prototypes import HELD_OUT_DRAWING_SEED, clipart, encode

pytestmark = pytest.mark.integration


async def test_confident_labels_far_from_their_prototype_are_reviewed(
    broker: TansuBroker, triton: TritonServer
) -> None:
    blank_red = encode(Image.new("RGB", (320, 240), (200, 30, 30)))
    gradient = encode(Image.linear_gradient("L").convert("RGB"))
    drawing = encode(clipart(HELD_OUT_DRAWING_SEED + 5))
    coffee = encode(photo_image("coffee"), "JPEG", quality=90)
    page = encode(photo_image("page"))
    images = {"blank": blank_red, "gradient": gradient, "drawing": drawing, "coffee": coffee}
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
        (f"{name}-{tenant}".encode(), image_event(f"{name}-{tenant}", tenant, data), [])
        for name, data in images.items()
        for tenant in ("acme", "trusting-tenant")
    ]
    records.append((b"page-kids", image_event("page-kids", "kids-app", page), []))
    records.append((b"page-acme", image_event("page-acme", "acme", page), []))

    settings = make_settings(broker, triton, max_batch_size=4, max_wait_ms=5)
    policy_path = settings.policy.path
    policy_path.write_text(
        policy_path.read_text() + "  trusting-tenant:\n    prototype_check: {safe_drawing: null}\n"
    )
    kafka = settings.kafka
    outputs = output_topics(settings)
    await ensure_topics(
        kafka.bootstrap_servers, {kafka.input_topic: PARTITIONS, **{t: 1 for t in outputs}}
    )
    ends = await produce_all(kafka.bootstrap_servers, kafka.input_topic, records)
    async with running(settings):
        await wait_committed(settings, ends, timeout_s=60)
    decisions = decisions_by_id(
        await read_until(kafka.bootstrap_servers, outputs, len(records), timeout_s=20)
    )

    for name in ("blank", "gradient"):
        decision = decisions[f"{name}-acme"]
        assert decision.scores["safe_drawing"] > 0.7, decision.scores
        assert decision.action is Action.REVIEW, decision
        (reason,) = decision.reasons
        assert (reason.rule, reason.category, reason.threshold) == (
            "low_prototype_similarity",
            "safe_drawing",
            0.5,
        )
        assert reason.score is not None
        assert reason.score < 0.4
        # The tenant that switched the check off gets the model's label as it is.
        assert decisions[f"{name}-trusting-tenant"].action is Action.ALLOW
    for name in ("drawing", "coffee"):
        decision = decisions[f"{name}-acme"]
        assert decision.action is Action.ALLOW, decision
        assert decision.prototype_similarity is not None
        assert decision.prototype_similarity > 0.6
    # A scanned page is "safe" to the model; only kids-app checks `safe` against its prototype.
    assert decisions["page-acme"].action is Action.ALLOW
    kids = decisions["page-kids"]
    assert kids.action is Action.REVIEW, kids
    assert [r.rule for r in kids.reasons] == ["low_prototype_similarity"]
