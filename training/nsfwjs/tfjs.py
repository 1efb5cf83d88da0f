"""Read TensorFlow.js artifacts as nsfwjs ships them: ``model.json`` and its weight shards.

Both come as browserify bundles of JS literals (``training.nsfwjs.jsliteral``): the model
bundle exports the ``model.json`` object, each ``group1-shardNofM.min.js`` one base64 string
holding the raw bytes of a weight shard.

Weights are dequantized exactly as TensorFlow.js does it (``io.decodeWeights``): every value is
``q * scale + min`` computed in double precision and rounded once to float32.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from training.nsfwjs.errors import ImportFailed
from training.nsfwjs.jsliteral import JsObject, JsValue, bundle_export

logger = logging.getLogger(__name__)

WeightArray: TypeAlias = "npt.NDArray[np.float32] | npt.NDArray[np.int32]"


@dataclass(frozen=True)
class Quantization:
    """Per-tensor affine quantization: ``value = q * scale + min``."""

    dtype: str
    scale: float
    min: float


@dataclass(frozen=True)
class WeightSpec:
    """One tensor of the weights manifest, in the order its bytes are stored."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    quantization: Quantization | None

    @property
    def stored_dtype(self) -> str:
        return self.dtype if self.quantization is None else self.quantization.dtype


@dataclass(frozen=True)
class WeightGroup:
    """Shards (joined in ``paths`` order) and the tensors they hold back to back."""

    paths: tuple[str, ...]
    weights: tuple[WeightSpec, ...]


@dataclass(frozen=True)
class ModelJson:
    """The parts of a TensorFlow.js ``model.json`` that the import uses."""

    format: str | None
    topology: JsObject
    groups: tuple[WeightGroup, ...]


_STORED_DTYPES: dict[str, np.dtype[np.generic]] = {
    "float32": np.dtype("<f4"),
    "int32": np.dtype("<i4"),
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
}


def expect_object(value: JsValue, where: str) -> JsObject:
    """Return ``value`` as an object, or raise ImportFailed naming ``where``."""
    if not isinstance(value, dict):
        raise ImportFailed(f"{where}: expected an object, found {type(value).__name__}")
    return value


def expect_list(value: JsValue, where: str) -> list[JsValue]:
    """Return ``value`` as an array, or raise ImportFailed naming ``where``."""
    if not isinstance(value, list):
        raise ImportFailed(f"{where}: expected an array, found {type(value).__name__}")
    return value


def expect_str(value: JsValue, where: str) -> str:
    """Return ``value`` as a string, or raise ImportFailed naming ``where``."""
    if not isinstance(value, str):
        raise ImportFailed(f"{where}: expected a string, found {type(value).__name__}")
    return value


def expect_number(value: JsValue, where: str) -> float:
    """Return ``value`` as a float, or raise ImportFailed naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ImportFailed(f"{where}: expected a number, found {type(value).__name__}")
    return float(value)


def expect_int(value: JsValue, where: str) -> int:
    """Return ``value`` as an integer, or raise ImportFailed naming ``where``.

    Integral floats are accepted: JavaScript has one number type and minifiers write 1000 as
    ``1e3``.
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ImportFailed(f"{where}: expected an integer, found {value!r}")
    return value


def expect_ints(value: JsValue, where: str) -> tuple[int, ...]:
    """Return ``value`` as a tuple of integers, or raise ImportFailed naming ``where``."""
    return tuple(expect_int(v, where) for v in expect_list(value, where))


def _weight_spec(value: JsValue, where: str) -> WeightSpec:
    spec = expect_object(value, where)
    name = expect_str(spec.get("name"), f"{where}.name")
    where = f"{where} ({name!r})"
    shape = expect_ints(spec.get("shape"), f"{where}.shape")
    if any(d < 0 for d in shape):
        raise ImportFailed(f"{where}: negative dimension in shape {list(shape)}")
    dtype = expect_str(spec.get("dtype"), f"{where}.dtype")
    quantization = None
    if spec.get("quantization") is not None:
        quant = expect_object(spec["quantization"], f"{where}.quantization")
        quant_dtype = expect_str(quant.get("dtype"), f"{where}.quantization.dtype")
        if quant_dtype in ("uint8", "uint16"):
            quantization = Quantization(
                dtype=quant_dtype,
                scale=expect_number(quant.get("scale"), f"{where}.quantization.scale"),
                min=expect_number(quant.get("min"), f"{where}.quantization.min"),
            )
        else:
            quantization = Quantization(dtype=quant_dtype, scale=math.nan, min=math.nan)
    return WeightSpec(name=name, shape=shape, dtype=dtype, quantization=quantization)


def parse_model_json(value: JsValue, *, source: str) -> ModelJson:
    """Check the structure of a ``model.json`` literal and return its typed form.

    Raises ImportFailed naming ``source`` and the field at fault.
    """
    root = expect_object(value, source)
    fmt = root.get("format")
    topology = expect_object(root.get("modelTopology"), f"{source}: modelTopology")
    groups = []
    manifest = expect_list(root.get("weightsManifest"), f"{source}: weightsManifest")
    for g, raw_group in enumerate(manifest):
        where = f"{source}: weightsManifest[{g}]"
        group = expect_object(raw_group, where)
        paths = tuple(
            expect_str(p, f"{where}.paths") for p in expect_list(group.get("paths"), where)
        )
        specs = tuple(
            _weight_spec(w, f"{where}.weights[{i}]")
            for i, w in enumerate(expect_list(group.get("weights"), f"{where}.weights"))
        )
        groups.append(WeightGroup(paths=paths, weights=specs))
    return ModelJson(
        format=fmt if isinstance(fmt, str) else None, topology=topology, groups=tuple(groups)
    )


def decode_shard(bundle: str, *, source: str) -> bytes:
    """Return the raw bytes of a ``group1-shardNofM.min.js`` bundle (one base64 string).

    Raises ImportFailed when the bundle does not export a valid base64 string.
    """
    value = bundle_export(bundle, source=source)
    if not isinstance(value, str):
        raise ImportFailed(f"{source}: expected the bundle to export a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ImportFailed(f"{source}: the exported string is not valid base64 ({exc})") from exc


def _decode_tensor(spec: WeightSpec, raw: bytes) -> WeightArray:
    stored = np.frombuffer(raw, dtype=_STORED_DTYPES[spec.stored_dtype])
    quant = spec.quantization
    if quant is None:
        if spec.dtype == "float32":
            return stored.astype(np.float32).reshape(spec.shape)
        return stored.astype(np.int32).reshape(spec.shape)
    # TensorFlow.js evaluates `v * scale + min` in doubles and stores the result into a typed
    # array; a table over every possible code gives the same values without a double pass.
    codes = np.arange(256 if spec.stored_dtype == "uint8" else 65536, dtype=np.float64)
    table = codes * quant.scale + quant.min
    if spec.dtype == "float32":
        values: npt.NDArray[np.float32] = table.astype(np.float32)[stored]
        return values.reshape(spec.shape)
    # Math.round rounds halves up; np.round would round them to even.
    ints: npt.NDArray[np.int32] = np.floor(table + 0.5).astype(np.int32)[stored]
    return ints.reshape(spec.shape)


def read_weights(
    groups: Sequence[WeightGroup], shards: Mapping[str, bytes], *, source: str
) -> dict[str, WeightArray]:
    """Dequantize every tensor of the manifest from the shard bytes keyed by manifest path.

    Raises ImportFailed for a missing shard, an unknown dtype, or shards too short for the
    tensors (naming the shard or tensor).
    """
    tensors: dict[str, WeightArray] = {}
    for g, group in enumerate(groups):
        parts = []
        for path in group.paths:
            if path not in shards:
                raise ImportFailed(
                    f"{source}: weight shard {path!r} is missing; the archive is incomplete, "
                    "delete the cached tarball and fetch nsfwjs again"
                )
            parts.append(shards[path])
        data = b"".join(parts)
        offset = 0
        for spec in group.weights:
            if spec.dtype not in ("float32", "int32"):
                raise ImportFailed(
                    f"{source}: tensor {spec.name!r} has unsupported dtype {spec.dtype!r} "
                    "(only float32 and int32 are supported)"
                )
            if spec.stored_dtype not in _STORED_DTYPES or (
                spec.quantization is not None and spec.stored_dtype not in ("uint8", "uint16")
            ):
                raise ImportFailed(
                    f"{source}: tensor {spec.name!r} has unsupported storage dtype "
                    f"{spec.stored_dtype!r} (supported: uint8/uint16 quantization or raw "
                    "float32/int32)"
                )
            size = math.prod(spec.shape) * _STORED_DTYPES[spec.stored_dtype].itemsize
            if offset + size > len(data):
                raise ImportFailed(
                    f"{source}: weights truncated at tensor {spec.name!r}: it needs bytes "
                    f"{offset}..{offset + size} but group {g} shards {list(group.paths)} "
                    f"hold {len(data)} bytes"
                )
            if spec.name in tensors:
                raise ImportFailed(f"{source}: tensor {spec.name!r} appears twice in the manifest")
            tensors[spec.name] = _decode_tensor(spec, data[offset : offset + size])
            offset += size
        if offset != len(data):
            logger.warning(
                "%s: group %d shards hold %d bytes after the last tensor; ignored",
                source,
                g,
                len(data) - offset,
            )
    return tensors
