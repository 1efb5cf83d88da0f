"""The scorer with an in-memory classifier: bisection isolates a rejected image, outages are
retried behind the breaker, requests stay within the batch size, frames and pool reduce to one
result per image."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest

from consumer.contract.reasons import ReasonCode
from consumer.errors import ImageRejected, InferenceRejected, InferenceUnavailable, ModelMismatch
from consumer.imaging.decode import DecodedImage, EncodedImage
from consumer.inference.model_check import ModelSpec
from consumer.inference.results import Scores, entropy
from consumer.inference.scorer import BreakerSettings, Scorer
from consumer.inference.triton import BatchResult
from consumer.runtime.health import HealthState
from consumer.runtime.metrics import Metrics
from consumer.runtime.retry import RetryPolicy
from tests.support.fakes import image

POISON = 255
"""A frame whose first pixel is this value makes the fake classifier reject its whole request."""


def spec(classes: tuple[str, ...] = ("safe", "explicit"), size: int = 4) -> ModelSpec:
    return ModelSpec("m", "1", "input", size, classes, 2, 32)


class FakeClassifier:
    """probs = (1 - p, p) with p = first pixel / 254; rejects requests carrying POISON."""

    def __init__(self, model: ModelSpec | None = None, outages: int = 0) -> None:
        self.model = model or spec()
        self.outages = outages
        self.requests: list[int] = []

    async def connect(self, min_batch_size: int) -> ModelSpec:
        return self.model

    async def connect_bytes(self, name: str) -> frozenset[str]:
        self.bytes_model = name
        return frozenset({"JPEG"})

    async def classify(self, pixels: npt.NDArray[np.uint8]) -> BatchResult:
        if self.outages:
            self.outages -= 1
            raise InferenceUnavailable("Triton restarting", "UNAVAILABLE")
        self.requests.append(len(pixels))
        first = pixels[:, 0, 0, 0].astype(np.float32)
        if (first == POISON).any():
            raise InferenceRejected("bad tensor", "INVALID_ARG")
        p = first / 254
        probs = np.stack([1 - p, p], axis=1).astype(np.float32)
        return BatchResult(
            probs=probs,
            embeddings=np.repeat(first[:, None], 2, axis=1),
            seconds=0.001,
            prototype_similarity=1 - probs,
        )

    async def classify_encoded(self, images: Sequence[bytes]) -> BatchResult:
        """Encoded stand-ins: byte 0 is the first pixel; ``refuse:<code>`` is refused by the
        preprocess step."""
        self.requests.append(len(images))
        refused = [data.startswith(b"refuse:") for data in images]
        pixels = np.zeros((len(images), 1, 1, 3), dtype=np.uint8)
        for index, data in enumerate(images):
            pixels[index, 0, 0, 0] = 0 if refused[index] else data[0]
        result = await self.classify(pixels)
        self.requests.pop()  # counted once, above
        return replace(
            result,
            preprocess_status=tuple(
                d.removeprefix(b"refuse:").decode() if r else ""
                for d, r in zip(images, refused, strict=True)
            ),
            preprocess_detail=tuple("bad bytes" if r else "" for r in refused),
        )

    async def close(self) -> None:
        pass


def scorer(
    primary: FakeClassifier, pool: list[FakeClassifier] | None = None, max_batch: int = 8
) -> tuple[Scorer, HealthState, Metrics]:
    health, metrics = HealthState(), Metrics()
    made = Scorer(
        primary,
        pool or [],
        max_batch_size=max_batch,
        retry=RetryPolicy(initial_s=0.001, max_s=0.01),
        breaker=BreakerSettings(failure_threshold=2, open_s=0.01),
        metrics=metrics,
        health=health,
    )
    return made, health, metrics


async def test_a_rejected_batch_is_split_until_the_bad_image_is_isolated() -> None:
    classifier = FakeClassifier()
    made, _, _ = scorer(classifier)
    await made.connect()
    images = [image(fill=v) for v in (10, 20, POISON, 30, 40, 50, 60, 70)]
    results = await made.score(images)
    assert [isinstance(r, InferenceRejected) for r in results] == [
        False, False, True, False, False, False, False, False
    ]  # fmt: skip
    good = [r for r in results if isinstance(r, Scores)]
    assert [round(float(r.probs[1]) * 254) for r in good] == [10, 20, 30, 40, 50, 60, 70]
    # Halves that hold the bad image are split again; clean halves go in one request each.
    assert classifier.requests == [8, 4, 2, 2, 1, 1, 4]


async def test_requests_never_exceed_the_batch_size_and_frames_reduce_per_image() -> None:
    classifier = FakeClassifier()
    made, _, _ = scorer(classifier, max_batch=3)
    await made.connect()
    animation = image(frames=3)
    animation.frames[1, 0, 0, 0] = 200  # the worst frame is in the middle
    results = await made.score([image(fill=5), animation, image(fill=7)])
    assert classifier.requests == [3, 2]
    first, animated, last = results
    assert isinstance(animated, Scores)
    assert isinstance(first, Scores)
    assert isinstance(last, Scores)
    assert animated.probs[1] == pytest.approx(200 / 254)
    # The lowest prototype similarity over the frames, the first frame's embedding.
    assert animated.prototype_similarity is not None
    assert animated.prototype_similarity[1] == pytest.approx(1 - 200 / 254)
    assert animated.embedding[0] == 0
    assert first.pool_entropy is None


async def test_outages_are_retried_and_the_breaker_reports_unavailability() -> None:
    classifier = FakeClassifier(outages=3)
    made, health, metrics = scorer(classifier)
    await made.connect()
    states: list[bool] = []

    async def watch() -> None:
        while True:
            states.append(made.available)
            await asyncio.sleep(0)

    watching = asyncio.create_task(watch())
    results = await made.score([image(fill=50)])
    watching.cancel()
    assert isinstance(results[0], Scores)
    assert False in states  # the breaker opened during the outage
    assert made.available
    assert health.triton_ok
    assert metrics.triton_errors.labels("UNAVAILABLE")._value.get() == 3


async def test_the_pool_adds_the_entropy_of_the_mean_prediction() -> None:
    primary, member = FakeClassifier(), FakeClassifier()
    made, _, _ = scorer(primary, [member])
    await made.connect()
    (result,) = await made.score([image(fill=127)])
    assert isinstance(result, Scores)
    p = np.array([1 - 127 / 254, 127 / 254], dtype=np.float32)
    assert result.pool_entropy == pytest.approx(float(entropy(p)), rel=1e-5)
    assert member.requests == [1]


async def test_a_pool_member_with_other_classes_is_refused() -> None:
    made, _, _ = scorer(FakeClassifier(), [FakeClassifier(spec(("a", "b", "c")))])
    with pytest.raises(ModelMismatch, match="same classes"):
        await made.connect()


def encoded(data: bytes) -> EncodedImage:
    return EncodedImage(data, 640, 480, "JPEG", 0.0)


async def test_encoded_images_go_to_the_bytes_model_and_refusals_keep_their_reason() -> None:
    primary = FakeClassifier()
    made, _, _ = scorer(primary)
    images: list[DecodedImage | EncodedImage] = [
        encoded(bytes([127])),
        image(fill=254),  # an animation the consumer decoded: to the pixel model
        encoded(b"refuse:image_corrupt"),
        encoded(bytes([0])),
        encoded(b"refuse:no_such_code"),
    ]
    results = await made.score(images)
    assert len(results) == 5
    first, decoded, corrupt, clean, unknown = results
    assert isinstance(first, Scores)
    assert first.probs[1] == pytest.approx(0.5)
    assert isinstance(decoded, Scores)
    assert decoded.probs[1] == pytest.approx(1.0)
    assert isinstance(clean, Scores)
    assert clean.probs[1] == 0.0
    assert isinstance(corrupt, ImageRejected)
    assert corrupt.code is ReasonCode.IMAGE_CORRUPT
    assert "bad bytes" in corrupt.message
    assert "decoded in Triton" in corrupt.message
    # A status the consumer does not know is still dead-lettered, never scored.
    assert isinstance(unknown, ImageRejected)
    assert unknown.code is ReasonCode.INTERNAL_ERROR
    assert "no_such_code" in unknown.message
    # one request per model: four encoded images together, the decoded one alone
    assert sorted(primary.requests) == [1, 4]


async def test_a_rejected_encoded_batch_is_bisected_like_a_decoded_one() -> None:
    primary = FakeClassifier()
    made, _, _ = scorer(primary)
    images: list[DecodedImage | EncodedImage] = [encoded(bytes([v])) for v in (1, POISON, 3, 4)]
    results = await made.score(images)
    assert [type(r).__name__ for r in results] == [
        "Scores",
        "InferenceRejected",
        "Scores",
        "Scores",
    ]
