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
from typing import Protocol, TypeAlias

import numpy as np
import numpy.typing as npt

from consumer.errors import (
    ConfigError,
    EventRejected,
    InferenceRejected,
    InferenceUnavailable,
    ModelMismatch,
)
from consumer.imaging.decode import DecodedImage, EncodedImage
from consumer.inference.breaker import BreakerState, CircuitBreaker
from consumer.inference.model_check import ModelSpec
from consumer.inference.results import Rows, Scores, entropy, per_image
from consumer.inference.shadow import ShadowHeads
from consumer.inference.triton import BatchResult
from consumer.moderation.heads import HeadsDescriptor, LiveHeads
from consumer.runtime.health import HealthState
from consumer.runtime.metrics import Metrics
from consumer.runtime.retry import RetryPolicy

logger = logging.getLogger(__name__)


_REFUSED = object()

# Decoded frames (N, S, S, 3) uint8, or encoded images for the bytes ensemble.
ModelInput: TypeAlias = npt.NDArray[np.uint8] | list[bytes]


class Classifier(Protocol):
    """One served model (``TritonClassifier``)."""

    async def connect(self, min_batch_size: int) -> ModelSpec: ...

    async def connect_bytes(self, name: str) -> frozenset[str]: ...

    async def classify(self, pixels: npt.NDArray[np.uint8]) -> BatchResult: ...

    async def classify_encoded(self, images: Sequence[bytes]) -> BatchResult: ...

    async def close(self) -> None: ...


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
        heads: LiveHeads | None = None,
    ) -> None:
        self._shadow: ShadowHeads | None = None
        self._primary = primary
        self._heads = heads
        self._refused = False
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
        self.encoded_formats: frozenset[str] = frozenset()
        """What the bytes model's decoder reads (``connect``); empty: every format."""

    async def connect(self, bytes_model: str | None = None) -> ModelSpec:
        """Check the primary model and every pool member (and, to send images encoded, the
        bytes ensemble wrapping the primary); the primary's spec.

        Raises ModelMismatch when a model does not fit, ConfigError for a pool with encoded
        images, InferenceUnavailable when Triton is not ready in time.
        """
        if bytes_model is not None and self._pool:
            raise ConfigError(
                "a model pool needs decoded images: MODSTREAM_TRITON__POOL_MODELS cannot be used "
                "with MODSTREAM_IMAGING__DECODE_IN=triton"
            )
        spec = await self._primary.connect(self._max_batch_size)
        for member in self._pool:
            _check_pool_member(spec, await member.connect(self._max_batch_size))
        if bytes_model is not None:
            self.encoded_formats = await self._primary.connect_bytes(bytes_model)
        self._spec = spec
        self._health.triton_ok = True
        return spec

    async def learn_heads(
        self, heads: LiveHeads, input_size: int, shadow: ShadowHeads | None = None
    ) -> HeadsDescriptor:
        """Follow the served heads from now on (and score ``shadow``'s candidate beside them);
        learn the version serving now by scoring a blank image.

        Raises ModelMismatch or PolicyError when that version is unusable.
        """
        self._heads = heads
        self._shadow = shadow
        blank = np.zeros((1, input_size, input_size, 3), dtype=np.uint8)
        result = await self._primary.classify(blank)
        if result.heads_descriptor is None:
            raise ModelMismatch("the model declares heads outputs but returned no descriptor")
        return heads.accept(result.heads_descriptor)

    async def close(self) -> None:
        for classifier in (self._primary, *self._pool):
            await classifier.close()
        if self._shadow is not None:
            await self._shadow.close()

    @property
    def available(self) -> bool:
        """False while Triton is down or serves a heads version that was refused."""
        return self._breaker.closed and not self._refused

    async def score(
        self, images: Sequence[DecodedImage | EncodedImage]
    ) -> list[Scores | EventRejected | InferenceRejected]:
        """Score ``images``, splitting a batch Triton rejects to isolate the bad image.

        Every sampled frame of an animated image is classified; the image scores, per
        category, as high as its worst frame. Encoded images go to the bytes ensemble, whose
        preprocess step may refuse one: that image's result is an ImageRejected with the
        reason code the consumer's own decode would have given.
        """
        if not images:
            return []
        encoded = [isinstance(image, EncodedImage) for image in images]
        if any(encoded) and not all(encoded):
            return await self._score_apart(images, encoded)
        counts = [
            image.frames.shape[0] if isinstance(image, DecodedImage) else 1 for image in images
        ]
        try:
            rows = await self._infer_rows(_model_input(images))
        except InferenceRejected as exc:
            if len(images) == 1:
                return [exc]
            middle = len(images) // 2
            return [*await self.score(images[:middle]), *await self.score(images[middle:])]
        shadow = await self._shadow.score(rows.embeddings) if self._shadow is not None else None
        return per_image(rows, counts, shadow)

    async def _score_apart(
        self, images: Sequence[DecodedImage | EncodedImage], encoded: list[bool]
    ) -> list[Scores | EventRejected | InferenceRejected]:
        """Decoded images (animations) and encoded ones go to different models: score each
        group in its own requests, concurrently, and put the results back in order."""
        groups = [
            [i for i, flag in enumerate(encoded) if flag is wanted] for wanted in (False, True)
        ]
        scored = await asyncio.gather(*(self.score([images[i] for i in g]) for g in groups))
        results: dict[int, Scores | EventRejected | InferenceRejected] = {}
        for group, group_results in zip(groups, scored, strict=True):
            results.update(zip(group, group_results, strict=True))
        return [results[i] for i in range(len(images))]

    async def _infer_rows(self, rows: ModelInput) -> Rows:
        """Every row's results, in requests no larger than the batch; with a pool, also the
        entropy of the models' mean prediction per row.

        Requests of one call must be scored by one heads version: when a new version went live
        between two of them, the rows are scored again."""
        attempts = self._retry.begin()
        while True:
            scored = await self._infer_chunks(rows)
            if scored is not None:
                return scored
            await asyncio.sleep(attempts.next_delay() or self._retry.max_s)

    async def _infer_chunks(self, rows: ModelInput) -> Rows | None:
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
        if len({r.heads_descriptor for r in results}) > 1:
            return None
        served = self._served_heads(results[0])
        if served is _REFUSED:
            return None
        heads = served if isinstance(served, HeadsDescriptor) else None
        return Rows(
            probs=np.concatenate([r.probs for r in results]),
            embeddings=np.concatenate([r.embeddings for r in results]),
            seconds=seconds,
            prototype_similarity=(
                np.concatenate(similarities)  # type: ignore[arg-type]
                if all(s is not None for s in similarities)
                else None
            ),
            pool_entropy=np.concatenate(entropies) if entropies else None,
            head_scores=(
                np.concatenate([r.head_scores for r in results]) if heads is not None else None
            ),
            heads=heads,
            preprocess_status=tuple(s for r in results for s in r.preprocess_status or ()),
            preprocess_detail=tuple(d for r in results for d in r.preprocess_detail or ()),
        )

    def _served_heads(self, result: BatchResult) -> HeadsDescriptor | object | None:
        """The heads version that produced ``result`` (the one named in it, not the latest
        seen elsewhere), None without heads, or _REFUSED when it may not be used."""
        if self._heads is None or result.heads_descriptor is None:
            return None
        try:
            heads = self._heads.accept(result.heads_descriptor)
        except ConfigError:
            return _REFUSED  # refused since its request was answered, e.g. by a policy change
        return heads

    async def _request(self, pixels: ModelInput, classifier: Classifier) -> BatchResult:
        """One Triton request, retried through outages; InferenceRejected is raised as is."""
        attempts = self._retry.begin()
        while True:
            await self._breaker.acquire()
            try:
                if isinstance(pixels, np.ndarray):
                    result = await classifier.classify(pixels)
                else:
                    result = await classifier.classify_encoded(pixels)
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
            except Exception:
                # Never leave a probe half-open: the waiters behind it would wait for good.
                self._breaker.record_failure()
                raise
            self._breaker.record_success()
            if result.heads_descriptor is not None and not self._heads_accepted(result):
                delay = attempts.next_delay() or self._retry.max_s
                await asyncio.sleep(delay)
                continue
            self._health.triton_ok = True
            self._metrics.batch_size.observe(len(pixels))
            self._metrics.inference_seconds.observe(result.seconds)
            return result

    def _heads_accepted(self, result: BatchResult) -> bool:
        """Whether the heads version that answered may be used; a refused one holds the
        events (and pauses the partitions) until a usable version serves."""
        if self._heads is None or result.heads_descriptor is None:
            return True
        try:
            heads = self._heads.accept(result.heads_descriptor)
            if result.head_scores is None or result.head_scores.shape[1] != len(heads.categories):
                raise ModelMismatch(
                    f"heads version {heads.version} returned "
                    f"{None if result.head_scores is None else result.head_scores.shape[1]} "
                    f"scores for {len(heads.categories)} categories"
                )
        except ConfigError as exc:
            if not self._refused:
                logger.error("refusing the served heads version, holding events: %s", exc)
            self._refused = True
            self._health.triton_ok = False
            self._metrics.heads_refused.inc()
            return False
        self._refused = False
        return True

    def _on_breaker_change(self, state: BreakerState) -> None:
        self._metrics.circuit_open.set(0 if state is BreakerState.CLOSED else 1)
        if state is not BreakerState.CLOSED:
            self._health.triton_ok = False


def _model_input(images: Sequence[DecodedImage | EncodedImage]) -> ModelInput:
    """Every frame of decoded images as one array, or the bytes of encoded ones."""
    decoded = [image.frames for image in images if isinstance(image, DecodedImage)]
    if decoded:
        return np.concatenate(decoded)
    return [image.data for image in images if isinstance(image, EncodedImage)]


def _check_pool_member(primary: ModelSpec, member: ModelSpec) -> None:
    if (member.class_names, member.input_size) != (primary.class_names, primary.input_size):
        raise ModelMismatch(
            f"pool model {member.name} has classes {list(member.class_names)} at "
            f"{member.input_size}px, {primary.name} has {list(primary.class_names)} at "
            f"{primary.input_size}px; a pool needs the same classes and input size "
            "(MODSTREAM_TRITON__POOL_MODELS)"
        )
