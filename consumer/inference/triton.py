"""Triton client: connect to the served model (checked by ``model_check``), classify batches of
decoded or encoded images, translate gRPC errors."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from consumer.errors import InferenceRejected, InferenceUnavailable
from consumer.inference.model_check import (
    EMBEDDING_OUTPUT,
    INPUT_DTYPE,
    PROBS_OUTPUT,
    PROTOTYPE_OUTPUT,
    ModelSpec,
    check_bytes_model,
    check_model,
    parameter_list,
)
from consumer.inference.preprocess_model import (
    DETAIL_OUTPUT,
    ENCODED_FORMATS_PARAMETER,
    STATUS_OUTPUT,
)
from consumer.inference.preprocess_model import INPUT as BYTES_INPUT
from consumer.moderation.heads import (
    BACKBONE_MODEL_PARAMETER,
    BACKBONE_SHA_PARAMETER,
    HEAD_SCORES_OUTPUT,
    HEADS_DESCRIPTOR_OUTPUT,
)
from consumer.runtime.settings import TritonSettings

logger = logging.getLogger(__name__)

# How Triton's DALI backend starts the errors it answers a request with.
_DECODER_ERROR = "DALI"

# gRPC codes after which the same request can succeed later (server restarting, overloaded,
# model being reloaded); anything else is a property of the input.
_TRANSIENT_STATUS = {
    "StatusCode.UNAVAILABLE",
    "StatusCode.DEADLINE_EXCEEDED",
    "StatusCode.RESOURCE_EXHAUSTED",
    "StatusCode.CANCELLED",
    "StatusCode.ABORTED",
    "StatusCode.UNKNOWN",
    "StatusCode.NOT_FOUND",
    "StatusCode.INTERNAL",
}


@dataclass(frozen=True)
class BatchResult:
    probs: npt.NDArray[np.float32]
    embeddings: npt.NDArray[np.float32]
    seconds: float
    prototype_similarity: npt.NDArray[np.float32] | None = None
    head_scores: npt.NDArray[np.float32] | None = None
    """[N, K] with a heads model; K is the serving heads version's."""
    heads_descriptor: bytes | None = None
    """The serving heads version's descriptor (JSON), one per request."""
    preprocess_status: tuple[str, ...] | None = None
    """Per image sent encoded: empty, or the reason code Triton's preprocess step refused it
    with (``consumer.inference.preprocess_model``)."""
    preprocess_detail: tuple[str, ...] | None = None


def error_code(exc: InferenceServerException) -> str:
    """A short label for metrics, e.g. ``UNAVAILABLE``."""
    status = str(exc.status() or "StatusCode.UNKNOWN")
    return status.removeprefix("StatusCode.")


def translate(exc: InferenceServerException, what: str) -> InferenceUnavailable | InferenceRejected:
    status = str(exc.status() or "StatusCode.UNKNOWN")
    message = f"{what}: {exc.message()} ({status})"
    if status in _TRANSIENT_STATUS:
        return InferenceUnavailable(message, error_code(exc))
    return InferenceRejected(message, error_code(exc))


class TritonClassifier:
    """Async gRPC client for one classification model."""

    def __init__(self, settings: TritonSettings) -> None:
        self._settings = settings
        self._client = triton_aio.InferenceServerClient(url=settings.url)
        self._spec: ModelSpec | None = None
        self._bytes_model: str | None = None

    @property
    def spec(self) -> ModelSpec:
        if self._spec is None:
            raise RuntimeError("call connect() before using the classifier")
        return self._spec

    async def close(self) -> None:
        await self._client.close()

    async def connect(self, min_batch_size: int) -> ModelSpec:
        """Wait for the model to be ready, then check it serves what the consumer needs.

        Raises ModelMismatch when the model's tensors differ from the expected interface and
        InferenceUnavailable when Triton is not ready within ``ready_timeout_s``.
        """
        await self._wait_ready(self._settings.model_name, self._settings.model_version)
        name, version = self._settings.model_name, self._settings.model_version
        try:
            metadata = await self._client.get_model_metadata(name, version, as_json=True)
            config = await self._client.get_model_config(name, version, as_json=True)
        except InferenceServerException as exc:
            raise translate(exc, f"reading model {name!r} from Triton") from exc
        self._spec = check_model(metadata, config["config"], version, min_batch_size)
        backbone = next(iter(parameter_list(config["config"], BACKBONE_MODEL_PARAMETER)), None)
        if backbone is not None:
            # An ensemble repeats its backbone's parameters as they were when it was written;
            # the backbone's own config says what is served now (heads must match that).
            try:
                served = await self._client.get_model_config(backbone, as_json=True)
            except InferenceServerException as exc:
                raise translate(exc, f"reading backbone {backbone!r} from Triton") from exc
            sha = next(iter(parameter_list(served["config"], BACKBONE_SHA_PARAMETER)), None)
            self._spec = replace(self._spec, backbone_sha256=sha)
        logger.info(
            "serving model %s version %s: input %s %dx%d, classes %s, embedding %d-d",
            self._spec.name,
            self._spec.version,
            self._spec.input_name,
            self._spec.input_size,
            self._spec.input_size,
            ",".join(self._spec.class_names),
            self._spec.embedding_dim,
            extra={"model": self._spec.name, "model_version": self._spec.version},
        )
        return self._spec

    async def connect_bytes(self, name: str) -> frozenset[str]:
        """Check ``name``, the ensemble taking encoded images for the connected model; the
        formats its decoder reads (empty: every format the consumer allows).

        Raises ModelMismatch when it does not wrap that model or lacks the per-image status,
        InferenceUnavailable when it is not ready within ``ready_timeout_s``."""
        await self._wait_ready(name, "")
        try:
            metadata = await self._client.get_model_metadata(name, as_json=True)
            config = await self._client.get_model_config(name, as_json=True)
        except InferenceServerException as exc:
            raise translate(exc, f"reading model {name!r} from Triton") from exc
        check_bytes_model(metadata, config["config"], self.spec)
        self._bytes_model = name
        return frozenset(parameter_list(config["config"], ENCODED_FORMATS_PARAMETER))

    async def is_ready(self) -> bool:
        return await self._is_ready(self._settings.model_name, self._settings.model_version)

    async def _is_ready(self, name: str, version: str) -> bool:
        try:
            return bool(await self._client.is_model_ready(name, version))
        except InferenceServerException:
            return False

    async def _wait_ready(self, name: str, version: str) -> None:
        deadline = time.monotonic() + self._settings.ready_timeout_s
        while not await self._is_ready(name, version):
            if time.monotonic() > deadline:
                raise InferenceUnavailable(
                    f"model {name!r} is not ready on Triton at {self._settings.url} after "
                    f"{self._settings.ready_timeout_s:.0f}s; check that Triton runs and serves "
                    "it (MODSTREAM_TRITON__URL, __MODEL_NAME, __BYTES_MODEL_NAME)"
                )
            await asyncio.sleep(0.5)

    async def classify(self, pixels: npt.NDArray[np.uint8]) -> BatchResult:
        """Run one batch (N, S, S, 3) uint8.

        Raises InferenceUnavailable for failures worth retrying and InferenceRejected when
        Triton refuses the input itself.
        """
        tensor = InferInput(self.spec.input_name, list(pixels.shape), INPUT_DTYPE)
        tensor.set_data_from_numpy(pixels)
        return await self._infer(self.spec.name, self._settings.model_version, tensor, ())

    async def classify_encoded(self, images: Sequence[bytes]) -> BatchResult:
        """Run one batch of encoded images through the bytes ensemble (``connect_bytes``);
        the result carries each image's preprocess status. Raises like ``classify``."""
        if self._bytes_model is None:
            raise RuntimeError("call connect_bytes() before classify_encoded()")
        column = np.empty((len(images), 1), dtype=np.object_)
        for index, data in enumerate(images):
            column[index, 0] = data
        tensor = InferInput(BYTES_INPUT, [len(images), 1], "BYTES")
        tensor.set_data_from_numpy(column)
        return await self._infer(self._bytes_model, "", tensor, (STATUS_OUTPUT, DETAIL_OUTPUT))

    async def _infer(
        self, model: str, version: str, tensor: InferInput, text_outputs: tuple[str, ...]
    ) -> BatchResult:
        spec = self.spec
        rows = int(tensor.shape()[0])
        names = [PROBS_OUTPUT, EMBEDDING_OUTPUT]
        if spec.prototype_categories:
            names.append(PROTOTYPE_OUTPUT)
        if spec.has_heads:
            names.extend((HEAD_SCORES_OUTPUT, HEADS_DESCRIPTOR_OUTPUT))
        names.extend(text_outputs)
        started = time.perf_counter()
        try:
            result = await self._client.infer(
                model,
                [tensor],
                model_version=version,
                outputs=[InferRequestedOutput(name) for name in names],
                client_timeout=self._settings.timeout_s,
            )
        except InferenceServerException as exc:
            error = translate(exc, f"inference on {model!r}")
            if text_outputs and _DECODER_ERROR in str(exc.message()):
                # A batch decoder (DALI) fails the whole request on one corrupt image: a
                # property of the input, so the scorer splits the batch to isolate it.
                raise InferenceRejected(str(error), error.code) from exc
            raise error from exc
        elapsed = time.perf_counter() - started
        arrays = {name: result.as_numpy(name) for name in names}
        if any(array is None or len(array) != rows for array in arrays.values()):
            raise InferenceRejected(
                f"model {model!r} returned outputs that do not match the batch of "
                f"{rows}; check the model repository"
            )
        texts = {HEADS_DESCRIPTOR_OUTPUT, *text_outputs}
        floats = {
            name: np.asarray(array, dtype=np.float32)
            for name, array in arrays.items()
            if name not in texts
        }
        descriptor = arrays.get(HEADS_DESCRIPTOR_OUTPUT)
        return BatchResult(
            probs=floats[PROBS_OUTPUT],
            embeddings=floats[EMBEDDING_OUTPUT],
            seconds=elapsed,
            prototype_similarity=floats.get(PROTOTYPE_OUTPUT),
            head_scores=floats.get(HEAD_SCORES_OUTPUT),
            heads_descriptor=bytes(descriptor.reshape(-1)[0]) if descriptor is not None else None,
            preprocess_status=_texts(arrays.get(STATUS_OUTPUT)),
            preprocess_detail=_texts(arrays.get(DETAIL_OUTPUT)),
        )


def _texts(array: npt.NDArray[Any] | None) -> tuple[str, ...] | None:
    if array is None:
        return None
    return tuple(bytes(item).decode("utf-8", "replace") for item in array.reshape(-1))
