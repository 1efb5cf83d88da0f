"""Where images are decoded, end to end on the real broker and tritonserver: in the consumer's
threads, in worker processes, or in Triton's preprocess step. Every mode gives every event the
same outcome: the same action and scores for good images, the same reason code for bad ones,
including a JPEG whose header is fine and whose data is cut off (only a decoder finds that;
in Triton mode the preprocess step reports it per image without failing its batch)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from bench.local.tansu import TansuBroker, ensure_topics
from bench.local.triton import TritonServer
from bench.samples import photos
from consumer.contract.events import DeadLetter, Decision
from consumer.runtime.settings import ImagingSettings, Settings
from tests.integration.test_pipeline import (
    PARTITIONS,
    decisions_by_id,
    image_event,
    make_settings,
    output_topics,
    running,
)
from tests.support.kafka_io import produce_all, read_until

pytestmark = pytest.mark.integration

MODES = {
    "threads": ImagingSettings(decode_pool="threads"),
    "processes": ImagingSettings(decode_pool="processes", decode_workers=2),
    "triton": ImagingSettings(decode_in="triton"),
}


def animation() -> bytes:
    """Two frames: the consumer decodes animations itself in every mode."""
    frames = [Image.new("RGB", (64, 48), colour) for colour in ((200, 40, 40), (20, 20, 220))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    return buffer.getvalue()


def images() -> dict[str, bytes]:
    samples = {sample.name: sample.data for sample in photos()[:4]}
    first = next(iter(samples.values()))
    samples["animation"] = animation()
    samples["truncated"] = first[: len(first) // 2]
    samples["not-an-image"] = b"plain text, not an image" * 10
    return samples


async def outcomes(
    broker: TansuBroker, triton: TritonServer, imaging: ImagingSettings
) -> tuple[dict[str, Decision], dict[str, DeadLetter]]:
    base = make_settings(broker, triton, max_batch_size=8, max_wait_ms=20)
    settings = Settings.model_validate({**base.model_dump(), "imaging": imaging.model_dump()})
    kafka = settings.kafka
    topics = output_topics(settings)
    await ensure_topics(
        kafka.bootstrap_servers, {kafka.input_topic: PARTITIONS, **{t: 1 for t in topics}}
    )
    samples = images()
    await produce_all(
        kafka.bootstrap_servers,
        kafka.input_topic,
        [(name.encode(), image_event(name, "acme", data), []) for name, data in samples.items()],
    )
    async with running(settings):
        messages = await read_until(kafka.bootstrap_servers, topics, len(samples), timeout_s=90)
    dead = settings.topics.dead_letter
    letters = [DeadLetter.model_validate_json(m.value or b"") for m in messages if m.topic == dead]
    return (
        decisions_by_id([m for m in messages if m.topic != dead]),
        {letter.event_id or "": letter for letter in letters},
    )


async def test_every_decode_mode_gives_every_event_the_same_outcome(
    broker: TansuBroker, triton: TritonServer, tmp_path: Path
) -> None:
    results = {mode: await outcomes(broker, triton, imaging) for mode, imaging in MODES.items()}
    reference_decisions, reference_letters = results["threads"]
    assert set(reference_decisions) == {*photos_names(), "animation"}
    assert {k: v.reason_code for k, v in reference_letters.items()} == {
        "truncated": "image_corrupt",
        "not-an-image": "image_unsupported_format",
    }
    for mode, (decisions, letters) in results.items():
        assert set(decisions) == set(reference_decisions), mode
        for event_id, decision in decisions.items():
            reference = reference_decisions[event_id]
            assert decision.action is reference.action, (mode, event_id)
            for category, score in reference.scores.items():
                # Same decode code, same pixels: only batch composition may move the floats.
                assert decision.scores[category] == pytest.approx(score, abs=1e-5), mode
        assert {k: v.reason_code for k, v in letters.items()} == {
            k: v.reason_code for k, v in reference_letters.items()
        }, mode
    triton_letters = results["triton"][1]
    assert "decoded in Triton" in triton_letters["truncated"].reason


def photos_names() -> list[str]:
    return [sample.name for sample in photos()[:4]]
