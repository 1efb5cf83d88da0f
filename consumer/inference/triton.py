"""Triton client: check the served model at startup, classify batches, translate gRPC errors."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from consumer.errors import InferenceRejected, InferenceUnavailable, ModelMismatch
from consumer.moderation.heads import (
    BACKBONE_MODEL_PARAMETER,
    BACKBONE_SHA_PARAMETER,
    HEAD_SCORES_OUTPUT,
    HEADS_DESCRIPTOR_OUTPUT,
    HEADS_MODEL_PARAMETER,
)
from consumer.runtime.settings import TritonSettings

logger = logging.getLogger(__name__)

INPUT_DTYPE = "UINT8"
PROBS_OUTPUT = "probs"
EMBEDDING_OUTPUT = "embedding"
# Optional: cosine similarity of the embedding to each category's prototype, computed in the
# graph so the prototypes travel with the model version (NaN for categories without one).
PROTOTYPE_OUTPUT = "prototype_similarity"
CLASS_NAMES_PARAMETER = "modstream.class_names"
PROTOTYPES_PARAMETER = "modstream.prototype_categories"

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
class ModelSpec:
    """What the served model takes and returns, as read from Triton."""

    name: str
    version: str
    input_name: str
    input_size: int
    class_names: tuple[str, ...]
    embedding_dim: int
    max_batch_size: int
    prototype_categories: tuple[str, ...] = ()
    """Categories the model has a prototype for; empty when it has no prototype output."""
    backbone_sha256: str | None = None
    """sha256 of the backbone's model file (config parameter), which heads must match."""
    has_heads: bool = False
    """The model (an ensemble) also returns head scores and the heads descriptor."""
    heads_model: str | None = None
    """The heads model inside the ensemble (for shadow scoring a candidate version)."""


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
        deadline = time.monotonic() + self._settings.ready_timeout_s
        while True:
            if await self.is_ready():
                break
            if time.monotonic() > deadline:
                raise InferenceUnavailable(
                    f"model {self._settings.model_name!r} is not ready on Triton at "
                    f"{self._settings.url} after {self._settings.ready_timeout_s:.0f}s; check "
                    "that Triton runs and serves it (MODSTREAM_TRITON__URL, __MODEL_NAME)"
                )
            await asyncio.sleep(0.5)
        name, version = self._settings.model_name, self._settings.model_version
        try:
            metadata = await self._client.get_model_metadata(name, version, as_json=True)
            config = await self._client.get_model_config(name, version, as_json=True)
        except InferenceServerException as exc:
            raise translate(exc, f"reading model {name!r} from Triton") from exc
        self._spec = check_model(metadata, config["config"], version, min_batch_size)
        backbone = next(iter(_parameter_list(config["config"], BACKBONE_MODEL_PARAMETER)), None)
        if backbone is not None:
            # An ensemble repeats its backbone's parameters as they were when it was written;
            # the backbone's own config says what is served now (heads must match that).
            try:
                served = await self._client.get_model_config(backbone, as_json=True)
            except InferenceServerException as exc:
                raise translate(exc, f"reading backbone {backbone!r} from Triton") from exc
            sha = next(iter(_parameter_list(served["config"], BACKBONE_SHA_PARAMETER)), None)
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

    async def is_ready(self) -> bool:
        try:
            return bool(
                await self._client.is_model_ready(
                    self._settings.model_name, self._settings.model_version
                )
            )
        except InferenceServerException:
            return False

    async def classify(self, pixels: npt.NDArray[np.uint8]) -> BatchResult:
        """Run one batch (N, S, S, 3) uint8.

        Raises InferenceUnavailable for failures worth retrying and InferenceRejected when
        Triton refuses the input itself.
        """
        spec = self.spec
        tensor = InferInput(spec.input_name, list(pixels.shape), INPUT_DTYPE)
        tensor.set_data_from_numpy(pixels)
        names = [PROBS_OUTPUT, EMBEDDING_OUTPUT]
        if spec.prototype_categories:
            names.append(PROTOTYPE_OUTPUT)
        if spec.has_heads:
            names.extend((HEAD_SCORES_OUTPUT, HEADS_DESCRIPTOR_OUTPUT))
        outputs = [InferRequestedOutput(name) for name in names]
        started = time.perf_counter()
        try:
            result = await self._client.infer(
                spec.name,
                [tensor],
                model_version=self._settings.model_version,
                outputs=outputs,
                client_timeout=self._settings.timeout_s,
            )
        except InferenceServerException as exc:
            raise translate(exc, f"inference on {spec.name!r}") from exc
        elapsed = time.perf_counter() - started
        arrays = {name: result.as_numpy(name) for name in names}
        if any(array is None or len(array) != len(pixels) for array in arrays.values()):
            raise InferenceRejected(
                f"model {spec.name!r} returned outputs that do not match the batch of "
                f"{len(pixels)}; check the model repository"
            )
        floats = {
            name: np.asarray(array, dtype=np.float32)
            for name, array in arrays.items()
            if name != HEADS_DESCRIPTOR_OUTPUT
        }
        descriptor = arrays.get(HEADS_DESCRIPTOR_OUTPUT)
        return BatchResult(
            probs=floats[PROBS_OUTPUT],
            embeddings=floats[EMBEDDING_OUTPUT],
            seconds=elapsed,
            prototype_similarity=floats.get(PROTOTYPE_OUTPUT),
            head_scores=floats.get(HEAD_SCORES_OUTPUT),
            heads_descriptor=bytes(descriptor.reshape(-1)[0]) if descriptor is not None else None,
        )


def check_model(
    metadata: dict[str, Any], config: dict[str, Any], wanted_version: str, min_batch_size: int
) -> ModelSpec:
    """Validate Triton's metadata/config of a model against the consumer's expectations."""
    name = str(metadata["name"])
    problems: list[str] = []
    inputs = metadata.get("inputs", [])
    outputs = {o["name"]: o for o in metadata.get("outputs", [])}
    max_batch_size = int(config.get("max_batch_size", 0))
    input_size = 0
    input_name = ""
    if len(inputs) != 1:
        problems.append(f"expected exactly one input, found {len(inputs)}")
    else:
        tensor = inputs[0]
        input_name = str(tensor["name"])
        shape = [int(d) for d in tensor["shape"]]
        if tensor["datatype"] != INPUT_DTYPE:
            problems.append(f"input {input_name!r} is {tensor['datatype']}, expected UINT8")
        if len(shape) != 4 or shape[0] != -1 or shape[3] != 3 or shape[1] != shape[2]:
            problems.append(
                f"input {input_name!r} has shape {shape}, expected [-1, S, S, 3] (batched NHWC)"
            )
        else:
            input_size = shape[1]
    probs = outputs.get(PROBS_OUTPUT)
    embedding = outputs.get(EMBEDDING_OUTPUT)
    class_count = 0
    embedding_dim = 0
    for label, tensor in ((PROBS_OUTPUT, probs), (EMBEDDING_OUTPUT, embedding)):
        if tensor is None:
            problems.append(f"output {label!r} is missing")
            continue
        shape = [int(d) for d in tensor["shape"]]
        if tensor["datatype"] != "FP32" or len(shape) != 2 or shape[0] != -1 or shape[1] < 1:
            problems.append(
                f"output {label!r} is {tensor['datatype']} {shape}, expected FP32 [-1, N]"
            )
        elif label == PROBS_OUTPUT:
            class_count = shape[1]
        else:
            embedding_dim = shape[1]
    class_names = _class_names(config)
    if not class_names:
        problems.append(f"model config has no parameter {CLASS_NAMES_PARAMETER!r}")
    elif class_count and len(class_names) != class_count:
        problems.append(
            f"{CLASS_NAMES_PARAMETER} lists {len(class_names)} classes, "
            f"output probs has {class_count}"
        )
    prototype_categories = _parameter_list(config, PROTOTYPES_PARAMETER)
    similarity = outputs.get(PROTOTYPE_OUTPUT)
    if similarity is not None:
        shape = [int(d) for d in similarity["shape"]]
        if similarity["datatype"] != "FP32" or shape != [-1, class_count]:
            problems.append(
                f"output {PROTOTYPE_OUTPUT!r} is {similarity['datatype']} {shape}, expected "
                f"FP32 [-1, {class_count}] (one similarity per class)"
            )
        strangers = sorted(set(prototype_categories) - set(class_names))
        if strangers:
            problems.append(f"{PROTOTYPES_PARAMETER} names unknown classes {strangers}")
    elif prototype_categories:
        problems.append(f"{PROTOTYPES_PARAMETER} is set but output {PROTOTYPE_OUTPUT!r} is missing")
    problems.extend(_heads_problems(outputs))
    if max_batch_size < min_batch_size:
        problems.append(
            f"model max_batch_size is {max_batch_size}; lower MODSTREAM_BATCHING__MAX_BATCH_SIZE "
            f"to at most that or raise it in config.pbtxt"
        )
    if problems:
        raise ModelMismatch(
            f"model {name!r} on Triton does not match what the consumer expects: "
            + "; ".join(problems)
        )
    versions = [str(v) for v in metadata.get("versions", [])]
    if wanted_version:
        version = wanted_version
    elif versions:
        version = max(versions, key=lambda v: int(v) if v.isdigit() else -1)
    else:
        version = "unknown"
    return ModelSpec(
        name=name,
        version=version,
        input_name=input_name,
        input_size=input_size,
        class_names=class_names,
        embedding_dim=embedding_dim,
        max_batch_size=max_batch_size,
        prototype_categories=prototype_categories if similarity is not None else (),
        backbone_sha256=next(iter(_parameter_list(config, BACKBONE_SHA_PARAMETER)), None),
        has_heads=HEAD_SCORES_OUTPUT in outputs,
        heads_model=next(iter(_parameter_list(config, HEADS_MODEL_PARAMETER)), None),
    )


def _heads_problems(outputs: dict[str, Any]) -> list[str]:
    """Head scores and the descriptor come together, as FP32 [-1, -1] and BYTES [-1, 1]."""
    scores, descriptor = outputs.get(HEAD_SCORES_OUTPUT), outputs.get(HEADS_DESCRIPTOR_OUTPUT)
    if scores is None and descriptor is None:
        return []
    if scores is None or descriptor is None:
        return [f"outputs {HEAD_SCORES_OUTPUT!r} and {HEADS_DESCRIPTOR_OUTPUT!r} come together"]
    problems = []
    if scores["datatype"] != "FP32" or [int(d) for d in scores["shape"]] != [-1, -1]:
        problems.append(f"output {HEAD_SCORES_OUTPUT!r} must be FP32 [-1, -1]")
    if descriptor["datatype"] != "BYTES" or [int(d) for d in descriptor["shape"]] != [-1, 1]:
        problems.append(f"output {HEADS_DESCRIPTOR_OUTPUT!r} must be BYTES [-1, 1]")
    return problems


def _class_names(config: dict[str, Any]) -> tuple[str, ...]:
    return _parameter_list(config, CLASS_NAMES_PARAMETER)


def _parameter_list(config: dict[str, Any], key: str) -> tuple[str, ...]:
    """A comma-separated string parameter of the model config, as a tuple."""
    parameter = config.get("parameters", {}).get(key, {})
    raw = str(parameter.get("string_value", ""))
    return tuple(name.strip() for name in raw.split(",") if name.strip())
