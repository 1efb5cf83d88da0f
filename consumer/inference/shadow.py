"""Score a candidate heads version on live traffic, beside the live one, routing nothing.

After the ensemble answered a batch, its embeddings go to the candidate version of the heads
model directly. A failure here never touches the live decision: the shadow scores are simply
missing for that batch (logged and counted).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from consumer.errors import ConfigError
from consumer.moderation.heads import (
    HEAD_SCORES_OUTPUT,
    HEADS_DESCRIPTOR_OUTPUT,
    HeadsDescriptor,
    LiveHeads,
)
from consumer.runtime.settings import TritonSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShadowScores:
    heads: HeadsDescriptor
    head_scores: npt.NDArray[np.float32]
    """[K] for one image (the highest over its frames)."""


class ShadowHeads:
    """The candidate version of the heads model, asked with the live request's embeddings."""

    def __init__(
        self, settings: TritonSettings, heads_model: str, version: str, max_batch_size: int = 32
    ) -> None:
        self._max_batch_size = max_batch_size
        self._client = triton_aio.InferenceServerClient(url=settings.url)
        self._timeout_s = settings.timeout_s
        self._model = heads_model
        self.version = version
        self._gate: LiveHeads | None = None
        self._disabled = False

    def expect(self, backbone_sha256: str | None, builtin: Iterable[str]) -> None:
        """Check every candidate descriptor like the live one's (backbone, category names);
        the candidate is compared, not served, so no policy check applies."""
        self._gate = LiveHeads(backbone_sha256, builtin, lambda heads: None, lambda heads: None)

    async def close(self) -> None:
        await self._client.close()

    async def score(
        self, embeddings: npt.NDArray[np.float32]
    ) -> tuple[HeadsDescriptor, npt.NDArray[np.float32]] | None:
        """The candidate's descriptor and [N, K] scores, or None when they cannot be had;
        never raises (a shadow must not fail the live request)."""
        if self._disabled:
            return None
        try:
            parts = [
                await self._score_chunk(embeddings[start : start + self._max_batch_size])
                for start in range(0, len(embeddings), self._max_batch_size)
            ]
        except Exception:
            logger.warning("shadow heads version %s failed", self.version, exc_info=True)
            return None
        if any(part is None for part in parts) or len({p[0].version for p in parts if p}) > 1:
            return None
        descriptor = parts[0][0]  # type: ignore[index]
        return descriptor, np.concatenate([p[1] for p in parts if p is not None])

    async def _score_chunk(
        self, embeddings: npt.NDArray[np.float32]
    ) -> tuple[HeadsDescriptor, npt.NDArray[np.float32]] | None:
        tensor = InferInput("embedding", list(embeddings.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
        try:
            result = await self._client.infer(
                self._model,
                [tensor],
                model_version=self.version,
                outputs=[
                    InferRequestedOutput(HEAD_SCORES_OUTPUT),
                    InferRequestedOutput(HEADS_DESCRIPTOR_OUTPUT),
                ],
                client_timeout=self._timeout_s,
            )
        except InferenceServerException as exc:
            logger.warning("shadow heads version %s did not answer: %s", self.version, exc)
            return None
        raw = bytes(result.as_numpy(HEADS_DESCRIPTOR_OUTPUT).reshape(-1)[0])
        if self._gate is None:
            raise RuntimeError("call expect() before scoring the shadow heads")
        try:
            descriptor = self._gate.accept(raw)
        except ConfigError as exc:
            # A candidate that cannot be compared stays off until the next restart.
            logger.error("shadow heads version %s refused: %s", self.version, exc)
            self._disabled = True
            return None
        scores = np.asarray(result.as_numpy(HEAD_SCORES_OUTPUT), dtype=np.float32)
        if scores.shape != (len(embeddings), len(descriptor.categories)):
            logger.error(
                "shadow heads version %s returned scores of shape %s for %d categories",
                self.version,
                scores.shape,
                len(descriptor.categories),
            )
            self._disabled = True
            return None
        return descriptor, scores
