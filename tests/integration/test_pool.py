"""A pool of two served models: images they disagree on are reviewed instead of allowed."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from bench.local.tansu import TansuBroker, ensure_topics
from bench.local.triton import TritonServer
from bench.samples import photos
from consumer.contract.events import Action
from consumer.errors import ModelMismatch
from consumer.runtime.settings import PolicySettings, TritonSettings
from consumer.service import serve
from tests.integration.conftest import SERVED_MODEL
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
from tests.support.paths import TRITON_REPO

pytestmark = pytest.mark.integration

POOL_MODEL = "nsfw_mobilenet_v2_mid"
# Entropy (nats) of the two models' mean prediction: 0.02-0.08 for the photos used here,
# 0.85-0.89 for flat grey and a plain gradient, which MobileNetV2 calls a drawing and the
# mid model calls safe, both with confidence.
POLICY = "default:\n  pool_max_entropy: 0.8\n"


@pytest.fixture(scope="module")
def pool_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    server = TritonServer(
        model_repository=TRITON_REPO,
        work_dir=tmp_path_factory.mktemp("triton-pool"),
        models=[SERVED_MODEL, POOL_MODEL, "nsfw_inception_v3"],
    )
    server.start(deadline_s=180)
    try:
        yield server
    finally:
        server.close()


def _png(pixels: npt.NDArray[np.uint8]) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


async def test_pool_disagreement_sends_confident_but_contested_images_to_review(
    broker: TansuBroker, pool_triton: TritonServer, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    settings = make_settings(broker, pool_triton, max_batch_size=4, max_wait_ms=5)
    settings = settings.model_copy(
        update={
            "policy": PolicySettings(path=policy),
            "triton": TritonSettings(url=pool_triton.grpc_url, pool_models=[POOL_MODEL]),
        }
    )
    kafka = settings.kafka
    outputs = output_topics(settings)
    await ensure_topics(
        kafka.bootstrap_servers, {kafka.input_topic: PARTITIONS, **{t: 1 for t in outputs}}
    )
    ramp = np.tile(np.linspace(0, 255, 224), (224, 1)).astype(np.uint8)
    images = {
        "grey": _png(np.full((224, 224, 3), 128, dtype=np.uint8)),
        "gradient": _png(np.stack([ramp] * 3, axis=-1)),
        "astronaut": photos()[0].data,
        "coffee": next(p for p in photos() if p.name == "coffee").data,
    }
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
        (name.encode(), image_event(name, "acme", data), []) for name, data in images.items()
    ]
    ends = await produce_all(kafka.bootstrap_servers, kafka.input_topic, records)
    async with running(settings):
        await wait_committed(settings, ends, timeout_s=60)
    messages = await read_until(kafka.bootstrap_servers, outputs, len(records), timeout_s=20)
    decisions = decisions_by_id(messages)
    for name in ("grey", "gradient"):
        decision = decisions[name]
        assert decision.action is Action.REVIEW, name
        (reason,) = decision.reasons
        assert reason.rule == "pool_disagreement"
        assert reason.score is not None
        assert reason.score > 0.8
    for name in ("astronaut", "coffee"):
        assert decisions[name].action is Action.ALLOW, name


async def test_a_pool_model_with_another_input_size_is_refused(
    broker: TansuBroker, pool_triton: TritonServer
) -> None:
    settings = make_settings(broker, pool_triton)
    settings = settings.model_copy(
        update={
            "triton": TritonSettings(url=pool_triton.grpc_url, pool_models=["nsfw_inception_v3"])
        }
    )
    with pytest.raises(ModelMismatch, match="same classes and input size"):
        await serve(settings, asyncio.Event())
