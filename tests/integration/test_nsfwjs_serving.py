"""The exported nsfwjs model, served by the real tritonserver, agrees with nsfwjs itself.

The repository ``scripts/setup.sh`` generated (ONNX, uint8 input, parity-checked against eager
PyTorch at export) → tritonserver → the consumer's own client and the whole pipeline → the
probabilities nsfwjs computed in Node.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bench.local.tansu import TansuBroker, ensure_topics
from bench.local.triton import TritonServer
from consumer.contract.events import Decision
from consumer.inference.triton import TritonClassifier
from consumer.runtime.settings import (
    PolicySettings,
    TritonSettings,
)
from consumer.service import serve
from tests.integration.test_pipeline import image_event, make_settings, wait_committed
from tests.support.kafka_io import produce_all, read_until
from tests.support.paths import FIXTURES
from training.nsfwjs.export import triton_name
from training.nsfwjs.models import CATEGORIES

pytestmark = pytest.mark.integration

FIXTURES = FIXTURES / "nsfwjs"
MODEL = "mobilenet_v2"
POLICY = """
default:
  thresholds:
    sexual_explicit: {review: 0.4, block: 0.8}
    sexual_explicit_drawn: {review: 0.4, block: 0.8}
    suggestive: {review: 0.6}
"""


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "reference.json").read_text())
    model: dict[str, Any] = data["models"][MODEL]
    return model


def _pixels(name: str) -> np.ndarray[Any, np.dtype[np.uint8]]:
    with Image.open(FIXTURES / "images" / f"{name}_224.png") as image:
        return np.asarray(image.convert("RGB")).copy()


async def test_triton_serves_what_nsfwjs_computes(
    triton: TritonServer, reference: dict[str, Any]
) -> None:
    classifier = TritonClassifier(
        TritonSettings(url=triton.grpc_url, model_name=triton_name(MODEL))
    )
    try:
        spec = await classifier.connect(32)
        assert spec.class_names == tuple(
            CATEGORIES[c] for c in ("Drawing", "Hentai", "Neutral", "Porn", "Sexy")
        )
        assert spec.embedding_dim == 1280
        names = sorted(reference["images"])
        result = await classifier.classify(np.stack([_pixels(n) for n in names]))
    finally:
        await classifier.close()
    for row, name in enumerate(names):
        expected = reference["images"][name]
        assert np.max(np.abs(result.probs[row] - np.array(expected["probs"]))) <= 1e-4, name
        assert np.max(np.abs(result.embeddings[row] - np.array(expected["embedding"]))) <= 1e-3, (
            name
        )


async def test_pipeline_decides_with_nsfwjs_scores(
    broker: TansuBroker, triton: TritonServer, reference: dict[str, Any], tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    settings = make_settings(broker, triton, max_batch_size=8).model_copy(
        update={
            "triton": TritonSettings(url=triton.grpc_url, model_name=triton_name(MODEL)),
            "policy": PolicySettings(path=policy),
        }
    )
    outputs = [
        settings.topics.allow,
        settings.topics.review,
        settings.topics.block,
        settings.topics.dead_letter,
    ]
    await ensure_topics(
        broker.bootstrap_servers, {settings.kafka.input_topic: 3, **{t: 1 for t in outputs}}
    )
    names = sorted(reference["images"])
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
    for name in names:
        png = (FIXTURES / "images" / f"{name}_224.png").read_bytes()
        records.append((name.encode(), image_event(name, "acme", png), []))
    ends = await produce_all(broker.bootstrap_servers, settings.kafka.input_topic, records)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    try:
        await wait_committed(settings, ends, timeout_s=60)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)
    messages = await read_until(broker.bootstrap_servers, outputs, len(names), timeout_s=20)
    assert len(messages) == len(names)
    for message in messages:
        decision = Decision.model_validate_json(message.value or b"")
        expected = reference["images"][decision.event_id]["probs"]
        scores = [
            decision.scores[CATEGORIES[c]] for c in ("Drawing", "Hentai", "Neutral", "Porn", "Sexy")
        ]
        assert np.max(np.abs(np.array(scores) - np.array(expected))) <= 1e-4, decision.event_id
        assert decision.model.name == triton_name(MODEL)
