"""Lay modstream's GPU serving configs over its CPU model repository, in place.

    python assemble.py --repository /models --gpu /etc/modstream/triton-gpu \\
        --backbone nsfw_mobilenet_v2 --target nsfw_mobilenet_v2

The Triton pod of deploy/overlays/gpu runs this in an init container (the consumer image:
it has Python and Triton's model-config protobuf) after the CPU repository has been copied
from the Triton image. Every config is derived from the one already in the repository, so
what the export and the preprocess model put there (classes, prototypes, backbone hash,
limits) is never copied by hand:

- ``preprocess/config.pbtxt``: the CPU step with ``preprocess.pbtxt`` overlaid (check-only);
- ``preprocess_dali/``: ``preprocess_dali.pbtxt`` and ``dali.py``, the nvJPEG step;
- ``<backbone>/config.pbtxt``: ``backbone-tensorrt.pbtxt`` overlaid (TensorRT fp16), and
  ``<backbone>/configs/fp32.pbtxt``: ``backbone-fp32.pbtxt`` overlaid, which Triton serves
  instead under ``--model-config-name=fp32``;
- ``<target>_bytes/config.pbtxt``: ``image_bytes`` → preprocess → preprocess_dali → target,
  returning the target's outputs and each image's status, like the CPU bytes ensemble.

An overlay replaces every top-level field it sets and merges ``parameters`` key by key, so a
second run over its own output writes the same files (the two backbone fragments set the same
fields for that, since a second run overlays them on the TensorRT config). Exits 1 with one
line when a config is missing or unreadable, or when the steps would not chain.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

PREPROCESS = "preprocess"
DALI = "preprocess_dali"
BYTES_SUFFIX = "_bytes"
BYTES_INPUT = "image_bytes"
CHECKED = "checked_bytes"
DECODED = "decoded_image"
STATUS_OUTPUTS = ("preprocess_status", "preprocess_detail")
PIXEL_MODEL_PARAMETER = "modstream.pixel_model"
FORMATS_PARAMETER = "modstream.encoded_formats"
FP32_CONFIG_NAME = "fp32"

# Triton's generated protobuf classes carry no type information.
ModelConfig = Any


class AssemblyError(Exception):
    """A config is missing, unreadable, or the GPU chain would not fit together."""


def read(path: Path) -> ModelConfig:
    try:
        return text_format.Parse(path.read_text(), pb.ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        raise AssemblyError(f"{path}: not a readable Triton model config: {exc}") from exc


def write(path: Path, config: ModelConfig) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text_format.MessageToString(config))
    except OSError as exc:
        raise AssemblyError(f"cannot write {path}: {exc}") from exc


def overlay(base: ModelConfig, fragment: ModelConfig) -> ModelConfig:
    """``base`` with each top-level field ``fragment`` sets replaced by the fragment's; the
    ``parameters`` map is merged key by key instead."""
    merged = pb.ModelConfig()
    merged.CopyFrom(base)
    for field, _ in fragment.ListFields():
        if field.name != "parameters":
            merged.ClearField(field.name)
    merged.MergeFrom(fragment)
    return merged


def bytes_ensemble(target: ModelConfig, check: ModelConfig, decode: ModelConfig) -> ModelConfig:
    """``<target>_bytes``: the check-only step, the DALI step, then ``target`` (a backbone or
    the ``moderation`` ensemble, whose heads pin then needs nothing here)."""
    target_input = _only(target.input, f"{target.name}'s inputs")
    decode_input = _only(decode.input, f"{decode.name}'s inputs")
    decode_output = _only(decode.output, f"{decode.name}'s outputs")
    checked = _tensor(check.output, CHECKED, check.name)
    _require_same(checked, decode_input, f"{check.name}.{CHECKED}", decode.name)
    _require_same(decode_output, target_input, f"{decode.name}.{decode_output.name}", target.name)
    if FORMATS_PARAMETER not in check.parameters:
        raise AssemblyError(f"{check.name} has no {FORMATS_PARAMETER} parameter")
    config = pb.ModelConfig(
        name=f"{target.name}{BYTES_SUFFIX}",
        platform="ensemble",
        max_batch_size=min(target.max_batch_size, check.max_batch_size, decode.max_batch_size),
    )
    config.input.add(name=BYTES_INPUT, data_type=pb.TYPE_STRING, dims=[1])
    first = config.ensemble_scheduling.step.add(model_name=check.name, model_version=-1)
    first.input_map[BYTES_INPUT] = BYTES_INPUT
    first.output_map[CHECKED] = CHECKED
    second = config.ensemble_scheduling.step.add(model_name=decode.name, model_version=-1)
    second.input_map[decode_input.name] = CHECKED
    second.output_map[decode_output.name] = DECODED
    third = config.ensemble_scheduling.step.add(model_name=target.name, model_version=-1)
    third.input_map[target_input.name] = DECODED
    for tensor in target.output:
        added = config.output.add()
        added.CopyFrom(tensor)
        added.ClearField("label_filename")  # the labels file lives with the backbone
        third.output_map[tensor.name] = tensor.name
    for name in STATUS_OUTPUTS:
        config.output.add().CopyFrom(_tensor(check.output, name, check.name))
        first.output_map[name] = name
    for key, value in target.parameters.items():
        config.parameters[key].CopyFrom(value)
    config.parameters[PIXEL_MODEL_PARAMETER].string_value = target.name
    # The consumer forwards only these formats; it decodes every other image itself.
    config.parameters[FORMATS_PARAMETER].CopyFrom(check.parameters[FORMATS_PARAMETER])
    return config


def gpu_backbone(cpu: ModelConfig, fragment: ModelConfig) -> ModelConfig:
    """``fragment`` overlaid on a backbone's CPU config, refused when the fragment's warm-up
    batch (and with it the TensorRT profile) is for another input."""
    image = _only(cpu.input, f"{cpu.name}'s inputs")
    for warmup in fragment.model_warmup:
        shapes = {name: list(tensor.dims) for name, tensor in warmup.inputs.items()}
        if shapes != {image.name: list(image.dims)}:
            raise AssemblyError(
                f"the GPU backbone config is for inputs {shapes}; {cpu.name} takes "
                f"{image.name!r} {list(image.dims)}"
            )
    return overlay(cpu, fragment)


def assemble(
    repository: Path, gpu: Path, backbones: Sequence[str], targets: Sequence[str]
) -> list[Path]:
    """Write the GPU configs into ``repository``; return the files written."""
    written: list[Path] = []

    def put(path: Path, config: ModelConfig) -> None:
        write(path, config)
        written.append(path)

    check = overlay(read(repository / PREPROCESS / "config.pbtxt"), read(gpu / "preprocess.pbtxt"))
    put(repository / PREPROCESS / "config.pbtxt", check)
    decode = read(gpu / f"{DALI}.pbtxt")
    put(repository / DALI / "config.pbtxt", decode)
    pipeline = repository / DALI / "1" / "dali.py"
    try:
        pipeline.parent.mkdir(exist_ok=True)
        shutil.copyfile(gpu / "dali.py", pipeline)
    except OSError as exc:
        raise AssemblyError(f"cannot copy the DALI pipeline to {pipeline}: {exc}") from exc
    written.append(pipeline)
    tensorrt, fp32 = read(gpu / "backbone-tensorrt.pbtxt"), read(gpu / "backbone-fp32.pbtxt")
    # The backbone's config.pbtxt is overwritten, so a later run starts from the TensorRT
    # config, not the CPU one: only fragments setting the same fields give the same result.
    if _fields(tensorrt) != _fields(fp32):
        raise AssemblyError(
            f"backbone-tensorrt.pbtxt sets {sorted(_fields(tensorrt))}, backbone-fp32.pbtxt "
            f"sets {sorted(_fields(fp32))}: they must set the same fields"
        )
    for name in backbones:
        cpu = read(repository / name / "config.pbtxt")
        put(repository / name / "config.pbtxt", gpu_backbone(cpu, tensorrt))
        put(repository / name / "configs" / f"{FP32_CONFIG_NAME}.pbtxt", gpu_backbone(cpu, fp32))
    for name in targets:
        ensemble = bytes_ensemble(read(repository / name / "config.pbtxt"), check, decode)
        put(repository / ensemble.name / "config.pbtxt", ensemble)
        (repository / ensemble.name / "1").mkdir(exist_ok=True)
    return written


def _fields(config: ModelConfig) -> set[str]:
    return {field.name for field, _ in config.ListFields()}


def _only(tensors: Any, what: str) -> Any:
    if len(tensors) != 1:
        raise AssemblyError(f"expected one tensor in {what}, found {len(tensors)}")
    return tensors[0]


def _tensor(tensors: Any, name: str, model: str) -> Any:
    for tensor in tensors:
        if tensor.name == name:
            return tensor
    raise AssemblyError(f"model {model!r} has no {name!r} tensor")


def _require_same(produced: Any, taken: Any, producer: str, consumer: str) -> None:
    if produced.data_type != taken.data_type or list(produced.dims) != list(taken.dims):
        raise AssemblyError(
            f"{producer} is {pb.DataType.Name(produced.data_type)} {list(produced.dims)} but "
            f"{consumer} takes {pb.DataType.Name(taken.data_type)} {list(taken.dims)}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="assemble.py", description=__doc__)
    parser.add_argument("--repository", type=Path, required=True, help="the CPU repository")
    parser.add_argument("--gpu", type=Path, required=True, help="the folder of this file")
    parser.add_argument("--backbone", action="append", default=[], help="served with TensorRT")
    parser.add_argument("--target", action="append", default=[], help="gets <name>_bytes")
    args = parser.parse_args(argv)
    try:
        written = assemble(args.repository, args.gpu, args.backbone, args.target)
    except AssemblyError as exc:
        sys.stderr.write(f"assembling the GPU model repository failed: {exc}\n")
        return 1
    sys.stdout.write("".join(f"wrote {path}\n" for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
