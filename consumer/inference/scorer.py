"""Score decoded images with Triton: chunking, outage retries, bisection, pool and frames.

The scorer owns everything between "these images need scores" and "here is one result per
image": requests no larger than the model's batch, retries through outages behind a circuit
breaker, splitting a batch Triton rejects until the bad image is isolated, the pool of models
measuring disagreement, and the reduction of an animation's frames to one score per category.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from consumer.errors import InferenceRejected, InferenceUnavailable, ModelMismatch
from consumer.imaging.decode import DecodedImage
from consumer.inference.breaker import BreakerState, CircuitBreaker
from consumer.inference.triton import BatchResult, ModelSpec
from consumer.runtime.health import HealthState
from consumer.runtime.metrics import Metrics
from consumer.runtime.retry import RetryPolicy

logger = logging.getLogger(__name__)


class Classifier(Protocol):
    """One served model (``TritonClassifier``)."""

    async def connect(self, min_batch_size: int) -> ModelSpec: ...

    async def classify(self, pixels: npt.NDArray[np.uint8]) -> BatchResult: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Scores:
    """One image's model outputs."""

    probs: npt.NDArray[np.float32]
    """Per category, the highest over the sampled frames."""
    embedding: npt.NDArray[np.float32]
    """Of the first frame."""
    seconds: float
    """Inference time of the requests that carried the image."""
    pool_entropy: float | None
    """Entropy of the pool's mean prediction, highest over the frames; None without a pool."""
    prototype_similarity: npt.NDArray[np.float32] | None
    """Per category, the lowest over the frames; None when the model has no prototypes."""


@dataclass(frozen=True)
class _Rows:
    """Results for every row (frame) sent, in order."""

    probs: npt.NDArray[np.float32]
    embeddings: npt.NDArray[np.float32]
    seconds: float
    prototype_similarity: npt.NDArray[np.float32] | None
    pool_entropy: npt.NDArray[np.float32] | None


@dataclass(frozen=True)
class BreakerSettings:
    failure_threshold: int
    open_s: float


class Scorer:
    """Scores batches of images on the primary model (and the pool, when there is one)."""

    def __init__(
        self,
        primary: Classifier,
        pool: Sequence[Classifier] = (),
        *,
        max_batch_size: int,
        retry: RetryPolicy,
        breaker: BreakerSettings,
        metrics: Metrics,
        health: HealthState,
    ) -> None:
        self._primary = primary
        self._pool = list(pool)
        self._max_batch_size = max_batch_size
        self._retry = retry
        self._metrics = metrics
        self._health = health
        self._breaker = CircuitBreaker(
            failure_threshold=breaker.failure_threshold,
            open_s=breaker.open_s,
            max_open_s=max(breaker.open_s, retry.max_s),
            on_change=self._on_breaker_change,
        )
        self._spec: ModelSpec | None = None

    async def connect(self) -> ModelSpec:
        """Check the primary model and every pool member; the primary's spec.

        Raises ModelMismatch when a model does not fit, InferenceUnavailable when Triton is
        not ready in time.
        """
        spec = await self._primary.connect(self._max_batch_size)
        for member in self._pool:
            _check_pool_member(spec, await member.connect(self._max_batch_size))
        self._spec = spec
        self._health.triton_ok = True
        return spec

    async def close(self) -> None:
        for classifier in (self._primary, *self._pool):
            await classifier.close()

    @property
    def available(self) -> bool:
        return self._breaker.closed

    async def score(self, images: Sequence[DecodedImage]) -> list[Scores | InferenceRejected]:
        """Score ``images``, splitting a batch Triton rejects to isolate the bad image.

        Every sampled frame of an animated image is classified; the image scores, per
        category, as high as its worst frame.
        """
        if not images:
            return []
        counts = [len(image.frames) for image in images]
        try:
            rows = await self._infer_rows(np.concatenate([image.frames for image in images]))
        except InferenceRejected as exc:
            if len(images) == 1:
                return [exc]
            middle = len(images) // 2
            return [*await self.score(images[:middle]), *await self.score(images[middle:])]
        results: list[Scores | InferenceRejected] = []
        start = 0
        for count in counts:
            frames = slice(start, start + count)
            entropies, similarity = rows.pool_entropy, rows.prototype_similarity
            results.append(
                Scores(
                    probs=rows.probs[frames].max(axis=0),
                    embedding=rows.embeddings[start],
                    seconds=rows.seconds,
                    pool_entropy=float(entropies[frames].max()) if entropies is not None else None,
                    prototype_similarity=(
                        similarity[frames].min(axis=0) if similarity is not None else None
                    ),
                )
            )
            start += count
        return results

    async def _infer_rows(self, rows: npt.NDArray[np.uint8]) -> _Rows:
        """Every row's results, in requests no larger than the batch; with a pool, also the
        entropy of the models' mean prediction per row."""
        results: list[BatchResult] = []
        entropies = []
        seconds = 0.0
        for start in range(0, len(rows), self._max_batch_size):
            chunk = rows[start : start + self._max_batch_size]
            primary, *members = await asyncio.gather(
                self._request(chunk, self._primary),
                *(self._request(chunk, member) for member in self._pool),
            )
            results.append(primary)
            if members:
                entropies.append(entropy(np.mean([primary.probs, *[m.probs for m in members]], 0)))
            seconds += max(r.seconds for r in [primary, *members])
        similarities = [r.prototype_similarity for r in results]
        return _Rows(
            probs=np.concatenate([r.probs for r in results]),
            embeddings=np.concatenate([r.embeddings for r in results]),
            seconds=seconds,
            prototype_similarity=(
                np.concatenate(similarities)  # type: ignore[arg-type]
                if all(s is not None for s in similarities)
                else None
            ),
            pool_entropy=np.concatenate(entropies) if entropies else None,
        )

    async def _request(self, pixels: npt.NDArray[np.uint8], classifier: Classifier) -> BatchResult:
        """One Triton request, retried through outages; InferenceRejected is raised as is."""
        attempts = self._retry.begin()
        while True:
            await self._breaker.acquire()
            try:
                result = await classifier.classify(pixels)
            except InferenceUnavailable as exc:
                self._health.triton_ok = False
                self._breaker.record_failure()
                self._metrics.triton_errors.labels(exc.code).inc()
                delay = attempts.next_delay()
                if delay is None:
                    raise
                logger.warning("Triton unavailable, retrying in %.2fs: %s", delay, exc)
                await asyncio.sleep(delay)
                continue
            except InferenceRejected as exc:
                # Triton answered: it is up, whatever it thought of this input.
                self._breaker.record_success()
                self._metrics.triton_errors.labels(exc.code).inc()
                raise
            self._breaker.record_success()
            self._health.triton_ok = True
            self._metrics.batch_size.observe(len(pixels))
            self._metrics.inference_seconds.observe(result.seconds)
            return result

    def _on_breaker_change(self, state: BreakerState) -> None:
        self._metrics.circuit_open.set(0 if state is BreakerState.CLOSED else 1)
        if state is not BreakerState.CLOSED:
            self._health.triton_ok = False


def entropy(probs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Shannon entropy (nats) of each row of class probabilities."""
    clipped = np.clip(probs, 1e-12, 1.0)
    result: npt.NDArray[np.float32] = -(clipped * np.log(clipped)).sum(axis=-1)
    return result


def _check_pool_member(primary: ModelSpec, member: ModelSpec) -> None:
    if (member.class_names, member.input_size) != (primary.class_names, primary.input_size):
        raise ModelMismatch(
            f"pool model {member.name} has classes {list(member.class_names)} at "
            f"{member.input_size}px, {primary.name} has {list(primary.class_names)} at "
            f"{primary.input_size}px; a pool needs the same classes and input size "
            "(MODSTREAM_TRITON__POOL_MODELS)"
        )
