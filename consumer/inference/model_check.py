"""Check a served model against what the consumer expects, before any event is scored.

Like Triton's client examples (``parse_model``): input and output names, dtypes, shapes and
``max_batch_size``, the class names and prototypes the config declares, heads outputs, and
for decoding in Triton, the bytes ensemble wrapping the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consumer.errors import ModelMismatch
from consumer.inference.preprocess_model import DETAIL_OUTPUT, STATUS_OUTPUT
from consumer.inference.preprocess_model import INPUT as BYTES_INPUT
from consumer.moderation.heads import (
    BACKBONE_SHA_PARAMETER,
    HEAD_SCORES_OUTPUT,
    HEADS_DESCRIPTOR_OUTPUT,
    HEADS_MODEL_PARAMETER,
)

INPUT_DTYPE = "UINT8"
PROBS_OUTPUT = "probs"
EMBEDDING_OUTPUT = "embedding"
# Optional: cosine similarity of the embedding to each category's prototype, computed in the
# graph so the prototypes travel with the model version (NaN for categories without one).
PROTOTYPE_OUTPUT = "prototype_similarity"
CLASS_NAMES_PARAMETER = "modstream.class_names"
PROTOTYPES_PARAMETER = "modstream.prototype_categories"

PIXEL_MODEL_PARAMETER = "modstream.pixel_model"


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
    prototype_categories = parameter_list(config, PROTOTYPES_PARAMETER)
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
        backbone_sha256=next(iter(parameter_list(config, BACKBONE_SHA_PARAMETER)), None),
        has_heads=HEAD_SCORES_OUTPUT in outputs,
        heads_model=next(iter(parameter_list(config, HEADS_MODEL_PARAMETER)), None),
    )


def check_bytes_model(metadata: dict[str, Any], config: dict[str, Any], pixel: ModelSpec) -> None:
    """Validate the ensemble that decodes encoded images for ``pixel`` (the model the consumer
    scores decoded images with): it must take ``image_bytes``, wrap that model, and return
    its outputs plus the per-image preprocess status. Raises ModelMismatch."""
    name = str(metadata["name"])
    problems = []
    inputs = metadata.get("inputs", [])
    outputs = {o["name"]: o for o in metadata.get("outputs", [])}
    shapes = [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in inputs]
    if shapes != [(BYTES_INPUT, "BYTES", [-1, 1])]:
        problems.append(f"expected one input {BYTES_INPUT!r} BYTES [-1, 1], found {shapes}")
    wrapped = next(iter(parameter_list(config, PIXEL_MODEL_PARAMETER)), None)
    if wrapped != pixel.name:
        problems.append(
            f"its {PIXEL_MODEL_PARAMETER} is {wrapped!r}, not the consumer's model {pixel.name!r}"
        )
    if _class_names(config) != pixel.class_names:
        problems.append(f"its classes {list(_class_names(config))} differ from {pixel.name}'s")
    for output in (STATUS_OUTPUT, DETAIL_OUTPUT):
        tensor = outputs.get(output)
        if tensor is None or tensor["datatype"] != "BYTES":
            problems.append(f"output {output!r} BYTES [-1, 1] is missing")
    for output in (PROBS_OUTPUT, EMBEDDING_OUTPUT):
        if output not in outputs:
            problems.append(f"output {output!r} is missing")
    if problems:
        raise ModelMismatch(
            f"bytes model {name!r} on Triton does not fit: {'; '.join(problems)}; write it with "
            "`python -m training.bytes_models --repo <model repository>` "
            "(MODSTREAM_TRITON__BYTES_MODEL_NAME)"
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
    return parameter_list(config, CLASS_NAMES_PARAMETER)


def parameter_list(config: dict[str, Any], key: str) -> tuple[str, ...]:
    """A comma-separated string parameter of the model config, as a tuple."""
    parameter = config.get("parameters", {}).get(key, {})
    raw = str(parameter.get("string_value", ""))
    return tuple(name.strip() for name in raw.split(",") if name.strip())
