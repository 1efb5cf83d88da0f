"""Read TensorFlow.js artifacts as nsfwjs ships them: browserify bundles of JS literals.

``model.min.js`` is a browserify bundle whose single module exports the ``model.json`` as a
minified JavaScript object literal (unquoted keys, ``!0`` / ``!1`` for booleans, numbers such as
``.03`` or ``1e-3``). Each ``group1-shardNofM.min.js`` exports one base64 string holding the raw
bytes of a weight shard. Nothing here runs JavaScript: a small parser reads the literal subset
that the minifier emits and refuses anything else with the offset where it stopped.

Weights are dequantized exactly as TensorFlow.js does it (``io.decodeWeights``): every value is
``q * scale + min`` computed in double precision and rounded once to float32.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from training.nsfwjs.errors import ImportFailed

logger = logging.getLogger(__name__)

JsValue: TypeAlias = "bool | int | float | str | list[JsValue] | dict[str, JsValue] | None"
JsObject: TypeAlias = "dict[str, JsValue]"
WeightArray: TypeAlias = "npt.NDArray[np.float32] | npt.NDArray[np.int32]"

_MAX_DEPTH = 256

_TOKEN = re.compile(
    r"""
    (?P<num>-?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?))
    |(?P<str>"[^"\\]*(?:\\[\s\S][^"\\]*)*"|'[^'\\]*(?:\\[\s\S][^'\\]*)*')
    |(?P<bang>![01](?![\w$.]))
    |(?P<ident>[A-Za-z_$][\w$]*)
    |(?P<punct>[{}\[\]:,])
    """,
    re.VERBOSE,
)
_SPACE = re.compile(r"\s*")
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]{1,6}\}|u[0-9a-fA-F]{4}|\r\n|[\s\S])")
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "0": "\0"}
_LINE_CONTINUATIONS = {"\n", "\r", "\r\n", "\u2028", "\u2029"}
_KEYWORDS: dict[str, JsValue] = {
    "true": True,
    "false": False,
    "null": None,
    "Infinity": math.inf,
    "NaN": math.nan,
}

# The browserify prelude calls module 1 as function(require, module, exports); the minifier
# renames the three parameters differently in every file, so capture the second one.
_BUNDLE_ENTRY = re.compile(
    r"\{1:\[function\(([\w$]+),([\w$]+),([\w$]+)\)\{\s*(?:\"use strict\";)?\s*\2\.exports\s*="
)
_BUNDLE_EXIT = re.compile(r"\s*;?\s*\}\s*,\s*\{\s*\}\s*\]")


class _Parser:
    """Recursive descent over the JS literal subset; positions are character offsets."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source

    def fail(self, pos: int, what: str) -> ImportFailed:
        snippet = self.text[pos : pos + 40].replace("\n", " ")
        return ImportFailed(
            f"{self.source}: {what} at offset {pos} (near {snippet!r}); "
            "the file is not the JS literal subset that nsfwjs bundles contain"
        )

    def skip_space(self, pos: int) -> int:
        match = _SPACE.match(self.text, pos)
        return pos if match is None else match.end()

    def token(self, pos: int) -> tuple[str, str, int]:
        """Return (kind, text, end) of the token at ``pos`` (whitespace skipped)."""
        pos = self.skip_space(pos)
        if pos >= len(self.text):
            raise self.fail(pos, "unexpected end of input")
        if self.text[pos] == '"':
            # Fast path for long escape-free strings such as a shard's base64 payload.
            end = self.text.find('"', pos + 1)
            if end > 0 and self.text.find("\\", pos + 1, end) < 0:
                return "str", self.text[pos : end + 1], end + 1
        match = _TOKEN.match(self.text, pos)
        if match is None or match.lastgroup is None:
            raise self.fail(pos, "unexpected character")
        return match.lastgroup, match.group(), match.end()

    def value(self, pos: int, depth: int = 0) -> tuple[JsValue, int]:
        if depth > _MAX_DEPTH:
            raise self.fail(pos, f"nesting deeper than {_MAX_DEPTH}")
        kind, text, end = self.token(pos)
        if kind == "num":
            return _number(text), end
        if kind == "str":
            return _string(text), end
        if kind == "bang":
            return text == "!0", end
        if kind == "ident":
            if text == "void":
                kind2, _, end2 = self.token(end)
                if kind2 == "num":
                    return None, end2
                raise self.fail(end, "expected a number after 'void'")
            if text in _KEYWORDS:
                return _KEYWORDS[text], end
            raise self.fail(pos, f"identifier {text!r} is not a literal")
        if text == "{":
            return self.object(end, depth + 1)
        if text == "[":
            return self.array(end, depth + 1)
        raise self.fail(pos, f"unexpected {text!r}")

    def object(self, pos: int, depth: int) -> tuple[JsObject, int]:
        result: JsObject = {}
        while True:
            kind, text, end = self.token(pos)
            if text == "}":
                return result, end
            if kind == "ident" or kind == "num":
                key = text
            elif kind == "str":
                key = _string(text)
            else:
                raise self.fail(pos, "expected a property name")
            colon_at = self.skip_space(end)
            _, colon, end = self.token(colon_at)
            if colon != ":":
                raise self.fail(colon_at, f"expected ':' after property {key!r}")
            result[key], pos = self.value(end, depth)
            _, sep, end = self.token(pos)
            if sep == "}":
                return result, end
            if sep != ",":
                raise self.fail(pos, "expected ',' or '}' in an object")
            pos = end

    def array(self, pos: int, depth: int) -> tuple[list[JsValue], int]:
        result: list[JsValue] = []
        while True:
            _, text, end = self.token(pos)
            if text == "]":
                return result, end
            item, pos = self.value(pos, depth)
            result.append(item)
            _, sep, end = self.token(pos)
            if sep == "]":
                return result, end
            if sep != ",":
                raise self.fail(pos, "expected ',' or ']' in an array")
            pos = end


def _number(text: str) -> int | float:
    body = text.lstrip("-")
    sign = -1 if text.startswith("-") else 1
    if body[:2] in ("0x", "0X"):
        return sign * int(body, 16)
    if body.isdigit():
        return sign * int(body)
    return float(text)


def _unescape(match: re.Match[str]) -> str:
    esc = match.group(1)
    if esc in _LINE_CONTINUATIONS:
        return ""
    if esc.startswith("x"):
        return chr(int(esc[1:], 16))
    if esc.startswith("u{"):
        return chr(int(esc[2:-1], 16))
    if esc.startswith("u"):
        return chr(int(esc[1:], 16))
    return _SIMPLE_ESCAPES.get(esc, esc)


def _string(token: str) -> str:
    body = token[1:-1]
    if "\\" not in body:
        return body
    text = _ESCAPE.sub(_unescape, body)
    # \uD83D\uDE00 style escapes leave surrogate halves; join them into real characters.
    return text.encode("utf-16", "surrogatepass").decode("utf-16")


def parse_js_literal(text: str, *, source: str = "<literal>") -> JsValue:
    """Parse one JS literal (object, array, string, number, ``!0``/``!1``, ...) filling ``text``.

    Raises ImportFailed naming ``source`` and the offset of the first thing it cannot read.
    """
    parser = _Parser(text, source)
    value, end = parser.value(0)
    end = parser.skip_space(end)
    if end != len(text):
        raise parser.fail(end, "trailing characters after the literal")
    return value


def bundle_export(bundle: str, *, source: str) -> JsValue:
    """Return the literal that a browserify bundle's entry module assigns to ``module.exports``.

    Raises ImportFailed when ``bundle`` is not such a bundle or the literal cannot be read.
    """
    entry = _BUNDLE_ENTRY.search(bundle)
    if entry is None:
        raise ImportFailed(
            f"{source}: no browserify module 1 assigning 'module.exports' was found; "
            "expected an nsfwjs 4.x model bundle (model.min.js or group1-shard*.min.js)"
        )
    parser = _Parser(bundle, source)
    value, end = parser.value(entry.end())
    if _BUNDLE_EXIT.match(bundle, end) is None:
        raise parser.fail(end, "the exported literal is followed by more code")
    return value


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
