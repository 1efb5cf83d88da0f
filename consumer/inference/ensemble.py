"""The ``moderation`` ensemble: the backbone, then the heads, in one Triton request.

The ensemble is configuration only (no weights), so pinning it to another heads version is a
cheap reload that Triton performs while it keeps serving. Its ``parameters`` repeat the
backbone's (class names, prototypes, input size, backbone hash), so the consumer reads one
model's config whether it is pointed at the ensemble or at the backbone alone, and record
which heads version is live and which was live before (for rollback).

Configs are built and parsed with Triton's own model-config protobuf, so what is written is
what Triton reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeAlias

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as pb

from consumer.errors import ConfigError
from consumer.imaging.decode import ImageLimits
from consumer.inference import preprocess_model
from consumer.moderation.heads import (
    BACKBONE_MODEL_PARAMETER,
    HEAD_SCORES_OUTPUT,
    HEADS_DESCRIPTOR_OUTPUT,
    HEADS_MODEL_PARAMETER,
)

HEADS_VERSION_PARAMETER = "modstream.heads_version"
PREVIOUS_VERSION_PARAMETER = "modstream.previous_heads_version"
EMBEDDING = "embedding"
PREPROCESS_MODEL = "preprocess"
BYTES_SUFFIX = "_bytes"
PIXEL_MODEL_PARAMETER = "modstream.pixel_model"
# The decoded images between the two steps of a bytes ensemble.
_DECODED = "decoded_image"

# Triton's generated protobuf classes carry no type information.
ModelConfig: TypeAlias = Any


def read_config(path: Path) -> ModelConfig:
    """Parse a ``config.pbtxt``; ConfigError names the file when it does not parse."""
    try:
        return text_format.Parse(path.read_text(), pb.ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        raise ConfigError(f"{path}: not a readable Triton model config: {exc}") from exc


def render(config: ModelConfig) -> str:
    return str(text_format.MessageToString(config))


def as_json(config: ModelConfig) -> str:
    """The config as Triton's load API takes it (``load_model(name, config=...)``)."""
    return str(json_format.MessageToJson(config, preserving_proto_field_name=True))


def from_json(text: str) -> ModelConfig:
    return json_format.Parse(text, pb.ModelConfig(), ignore_unknown_fields=True)


def heads_config(backbone: ModelConfig, name: str) -> ModelConfig:
    """The heads model: the backbone's embedding in; scores and the descriptor out."""
    embedding = _output(backbone, EMBEDDING)
    config = pb.ModelConfig(name=name, backend="python", max_batch_size=backbone.max_batch_size)
    config.version_policy.all.SetInParent()
    config.input.add(name=EMBEDDING, data_type=pb.TYPE_FP32, dims=list(embedding.dims))
    config.output.add(name=HEAD_SCORES_OUTPUT, data_type=pb.TYPE_FP32, dims=[-1])
    config.output.add(name=HEADS_DESCRIPTOR_OUTPUT, data_type=pb.TYPE_STRING, dims=[1])
    config.dynamic_batching.SetInParent()
    return config


def ensemble_config(
    backbone: ModelConfig, heads_model: str, heads_version: str, name: str = "moderation"
) -> ModelConfig:
    """backbone → heads, exposing every backbone output plus the heads' two."""
    config = pb.ModelConfig(name=name, platform="ensemble", max_batch_size=backbone.max_batch_size)
    for tensor in backbone.input:
        config.input.add().CopyFrom(tensor)
    first = config.ensemble_scheduling.step.add(model_name=backbone.name, model_version=-1)
    for tensor in backbone.input:
        first.input_map[tensor.name] = tensor.name
    for tensor in backbone.output:
        added = config.output.add()
        added.CopyFrom(tensor)
        added.ClearField("label_filename")  # the labels file lives with the backbone
        first.output_map[tensor.name] = tensor.name
    heads = config.ensemble_scheduling.step.add(model_name=heads_model)
    heads.input_map[EMBEDDING] = EMBEDDING
    for output in (HEAD_SCORES_OUTPUT, HEADS_DESCRIPTOR_OUTPUT):
        heads.output_map[output] = output
    config.output.add(name=HEAD_SCORES_OUTPUT, data_type=pb.TYPE_FP32, dims=[-1])
    config.output.add(name=HEADS_DESCRIPTOR_OUTPUT, data_type=pb.TYPE_STRING, dims=[1])
    for key, value in backbone.parameters.items():
        config.parameters[key].string_value = value.string_value
    config.parameters[BACKBONE_MODEL_PARAMETER].string_value = backbone.name
    config.parameters[HEADS_MODEL_PARAMETER].string_value = heads_model
    return pin(config, heads_version)


def pin(config: ModelConfig, heads_version: str) -> ModelConfig:
    """A copy of the ensemble serving ``heads_version``, remembering the version it replaces."""
    pinned = pb.ModelConfig()
    pinned.CopyFrom(config)
    step = heads_step(pinned)
    current = live_version(config)
    if current is not None and current != heads_version:
        pinned.parameters[PREVIOUS_VERSION_PARAMETER].string_value = current
    step.model_version = int(heads_version)
    pinned.parameters[HEADS_VERSION_PARAMETER].string_value = heads_version
    return pinned


def heads_step(config: ModelConfig) -> Any:
    model = config.parameters[HEADS_MODEL_PARAMETER].string_value
    for step in config.ensemble_scheduling.step:
        if step.model_name == model:
            return step
    raise ConfigError(f"ensemble {config.name} has no step for its heads model {model!r}")


def string_parameter(config: ModelConfig, key: str) -> str | None:
    """A config's ``parameters`` entry ``key``; None when absent or empty."""
    value = config.parameters.get(key)
    return str(value.string_value) if value is not None and value.string_value else None


def version_folders(model_dir: Path) -> list[int]:
    """The numeric version folders of a model in a repository, in order (none: empty)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and p.is_dir())


def live_version(config: ModelConfig) -> str | None:
    return string_parameter(config, HEADS_VERSION_PARAMETER)


def previous_version(config: ModelConfig) -> str | None:
    return string_parameter(config, PREVIOUS_VERSION_PARAMETER)


def _output(config: ModelConfig, name: str) -> Any:
    for tensor in config.output:
        if tensor.name == name:
            return tensor
    raise ConfigError(f"model {config.name} has no {name!r} output; heads need the embedding")


def preprocess_config(
    input_size: int,
    limits: ImageLimits,
    *,
    name: str = PREPROCESS_MODEL,
    max_batch_size: int = 32,
    instances: int = 2,
) -> ModelConfig:
    """The Python-backend step decoding ``image_bytes`` into the model's input, with the
    consumer's limits as parameters (``consumer.inference.preprocess_model``)."""
    config = pb.ModelConfig(name=name, backend="python", max_batch_size=max_batch_size)
    config.input.add(name=preprocess_model.INPUT, data_type=pb.TYPE_STRING, dims=[1])
    config.output.add(
        name=preprocess_model.IMAGE_OUTPUT,
        data_type=pb.TYPE_UINT8,
        dims=[input_size, input_size, 3],
    )
    for output in (preprocess_model.STATUS_OUTPUT, preprocess_model.DETAIL_OUTPUT):
        config.output.add(name=output, data_type=pb.TYPE_STRING, dims=[1])
    config.dynamic_batching.SetInParent()
    # Decoding is CPU-bound and a Python-backend instance is one process: one per core.
    config.instance_group.add(kind=pb.ModelInstanceGroup.KIND_CPU, count=instances)
    config.parameters[preprocess_model.INPUT_SIZE_PARAMETER].string_value = str(input_size)
    for field, parameter in preprocess_model.LIMIT_PARAMETERS.items():
        config.parameters[parameter].string_value = str(getattr(limits, field))
    return config


def bytes_ensemble_config(target: ModelConfig, preprocess: ModelConfig) -> ModelConfig:
    """``<target>_bytes``: encoded image bytes → preprocess → ``target`` (a backbone or the
    ``moderation`` ensemble), returning the target's outputs and the per-image status."""
    (target_input,) = target.input
    (image_output,) = [o for o in preprocess.output if o.name == preprocess_model.IMAGE_OUTPUT]
    if list(image_output.dims) != list(target_input.dims):
        raise ConfigError(
            f"{preprocess.name} makes {list(image_output.dims)} images, {target.name} takes "
            f"{list(target_input.dims)}: write a preprocess model for its input size"
        )
    config = pb.ModelConfig(
        name=f"{target.name}{BYTES_SUFFIX}",
        platform="ensemble",
        max_batch_size=min(target.max_batch_size, preprocess.max_batch_size),
    )
    config.input.add(name=preprocess_model.INPUT, data_type=pb.TYPE_STRING, dims=[1])
    first = config.ensemble_scheduling.step.add(model_name=preprocess.name, model_version=-1)
    first.input_map[preprocess_model.INPUT] = preprocess_model.INPUT
    first.output_map[preprocess_model.IMAGE_OUTPUT] = _DECODED
    second = config.ensemble_scheduling.step.add(model_name=target.name, model_version=-1)
    second.input_map[target_input.name] = _DECODED
    for tensor in target.output:
        added = config.output.add()
        added.CopyFrom(tensor)
        added.ClearField("label_filename")
        second.output_map[tensor.name] = tensor.name
    for output in (preprocess_model.STATUS_OUTPUT, preprocess_model.DETAIL_OUTPUT):
        first.output_map[output] = output
        config.output.add(name=output, data_type=pb.TYPE_STRING, dims=[1])
    for key, value in target.parameters.items():
        config.parameters[key].string_value = value.string_value
    config.parameters[PIXEL_MODEL_PARAMETER].string_value = target.name
    return config
