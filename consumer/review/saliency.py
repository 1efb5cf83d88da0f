"""Grad-CAM heat maps on the served backbone: where in the image the model saw a category.

The backbone's ONNX file runs with one more output, the feature map A that a global average pool
turns into ``embedding`` e. The Gemm/ReLU classifier on e and the heads (``sigmoid(w·x + b)``)
are differentiated exactly in numpy; as the pool is a plain average, the Grad-CAM weight of
channel k is ``(∂y/∂e_k) / (H·W)`` and ``map = ReLU(Σ_k weight_k A_k)``. Graphs of another
shape are refused at load: a heat map of a guessed graph looks as convincing as a right one.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from PIL import Image
from pydantic import ValidationError

from consumer.errors import ConfigError, ModelMismatch
from consumer.inference import ensemble
from consumer.inference.ensemble import EMBEDDING, PIXEL_MODEL_PARAMETER, read_config
from consumer.inference.model_check import CLASS_NAMES_PARAMETER, PROBS_OUTPUT
from consumer.moderation.heads import (
    BACKBONE_MODEL_PARAMETER,
    BACKBONE_SHA_PARAMETER,
    HEADS_MODEL_PARAMETER,
    HeadsDescriptor,
)

Float64Array = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]

DEFAULT_HEADS_MODEL = "heads"
HEADS_WEIGHTS_FILE = "heads.npz"
HEADS_DESCRIPTOR_FILE = "heads.json"
MODEL_FILE = "model.onnx"
# Nodes that only rearrange a [1, C, 1, 1] pool output into [1, C]: with a single non-unit
# axis none of them can reorder the channels.
_RESHAPES = frozenset({"Flatten", "Transpose", "Reshape", "Squeeze"})
_POOLS = frozenset({"AveragePool", "GlobalAveragePool"})
_NO_PADDING = (b"NOTSET", b"VALID")
# How closely the numpy classifier must reproduce the graph's own outputs on the probe image.
_PROBE_TOLERANCE = 1e-4


class SaliencyUnavailable(Exception):
    """No heat map for this request; the message says why and what to do."""


class SaliencyUnsupported(ConfigError, SaliencyUnavailable):
    """The backbone's graph is not one whose Grad-CAM can be computed exactly."""


@dataclass(frozen=True)
class HeatMap:
    """Grad-CAM of one category, in the frame of the model's input (the whole image stretched)."""

    values: npt.NDArray[np.float32]
    """(size, size) in [0, 1]; size is the model's input size (224 for nsfw_mobilenet_v2)."""
    category: str
    score: float  # the model's score for ``category`` on this image


@dataclass(frozen=True)
class _Layer:
    """``x @ weight + bias`` (Gemm's alpha and beta folded in), then ReLU when ``relu``."""

    weight: Float64Array
    bias: Float64Array
    relu: bool


@dataclass(frozen=True)
class _Backbone:
    name: str
    session: ort.InferenceSession
    feature_map: str  # the tensor the global average pool reads
    layers: tuple[_Layer, ...]
    class_names: tuple[str, ...]
    sha256: str
    heads_dir: Path


@dataclass(frozen=True)
class _Heads:
    weight: Float64Array  # [embedding_dim, heads]
    bias: Float64Array
    normalize: npt.NDArray[np.bool_]
    names: tuple[str, ...]


class SaliencyModel:
    """A backbone of a Triton model repository, explaining its scores and its heads'.

    Thread-safe: ONNX Runtime sessions run concurrently; a lock guards the heads cache.
    """

    def __init__(self, backbone: _Backbone) -> None:
        self._backbone = backbone
        self._input = backbone.session.get_inputs()[0].name
        self._size = int(backbone.session.get_inputs()[0].shape[1])
        self._heads: dict[str, _Heads] = {}
        self._lock = threading.Lock()
        self._served_as: set[str] = {backbone.name}

    @classmethod
    def load(cls, repository: Path, model_name: str) -> SaliencyModel:
        """Load ``model_name`` (a backbone, or an ensemble wrapping one) from ``repository``.

        Raises ConfigError when the model is missing or not ONNX, its file is not the one its
        config's sha256 names, or (SaliencyUnsupported) its graph has no exact Grad-CAM.
        """
        name, config = model_name, read_config(repository / model_name / "config.pbtxt")
        heads_model = ensemble.string_parameter(config, HEADS_MODEL_PARAMETER)
        for _ in range(3):  # a bytes ensemble wraps the moderation ensemble, which wraps it
            if config.platform != "ensemble":
                break
            inner = ensemble.string_parameter(
                config, BACKBONE_MODEL_PARAMETER
            ) or ensemble.string_parameter(config, PIXEL_MODEL_PARAMETER)
            if inner is None:
                raise ConfigError(f"ensemble {name} names no backbone; load the backbone itself")
            name, config = inner, read_config(repository / inner / "config.pbtxt")
            heads_model = heads_model or ensemble.string_parameter(config, HEADS_MODEL_PARAMETER)
        if config.backend != "onnxruntime" and config.platform != "onnxruntime_onnx":
            raise ConfigError(f"{name} is not an ONNX Runtime model; heat maps need its ONNX file")
        path = _model_file(repository / name, config.default_model_filename or MODEL_FILE)
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        if (recorded := ensemble.string_parameter(config, BACKBONE_SHA_PARAMETER) or "none") != sha:
            raise ConfigError(
                f"{path} has sha256 {sha[:12]}, its config records {recorded[:12]} "
                f"({BACKBONE_SHA_PARAMETER}): export the backbone again (python -m "
                "training.nsfwjs.export, which records it) or restore the repository"
            )
        names = ensemble.string_parameter(config, CLASS_NAMES_PARAMETER) or ""
        class_names = tuple(part.strip() for part in names.split(","))
        if not all(class_names):
            raise ConfigError(f"{name}/config.pbtxt has no {CLASS_NAMES_PARAMETER}")
        try:
            graph = onnx.load_from_string(data)
        except Exception as exc:  # onnx raises protobuf's DecodeError or its own errors
            raise ConfigError(f"{path} is not a readable ONNX model: {exc}") from exc
        feature_map, layers = _analyse(graph, name)
        # The feature map becomes an output of this in-memory copy only; the file is untouched.
        graph.graph.output.append(
            onnx.helper.make_tensor_value_info(feature_map, onnx.TensorProto.FLOAT, None)
        )
        try:
            session = ort.InferenceSession(
                graph.SerializeToString(), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own untyped errors
            raise ConfigError(f"ONNX Runtime cannot load {path}: {exc}") from exc
        heads_dir = repository / (heads_model or DEFAULT_HEADS_MODEL)
        model = cls(_Backbone(name, session, feature_map, layers, class_names, sha, heads_dir))
        model._check_against_graph()
        # Decisions name the model the consumer called: the ensemble, when loaded through one.
        model._served_as.add(model_name)
        return model

    @property
    def name(self) -> str:
        """The backbone being explained (the one an ensemble names, when loaded through one)."""
        return self._backbone.name

    def explains(self, model_name: str) -> bool:
        """Whether decisions scored by ``model_name`` are this backbone's (itself, or the
        ensemble it was loaded through)."""
        return model_name in self._served_as

    @property
    def input_size(self) -> int:
        return self._size

    def categories(self, heads_version: str | None = None) -> list[str]:
        """The backbone's classes, then the heads of ``heads_version`` (None: no heads).

        Raises SaliencyUnavailable when that heads version is missing or was trained on
        another backbone.
        """
        names = list(self._backbone.class_names)
        if heads_version is not None:
            names.extend(self._heads_of(heads_version).names)
        return names

    def explain(
        self, pixels: npt.NDArray[np.uint8], category: str, heads_version: str | None = None
    ) -> HeatMap:
        """Grad-CAM of ``category`` on ``pixels`` (size x size x 3 uint8, the decoded input).

        Raises SaliencyUnavailable for an unknown category or heads version, or heads trained
        on another backbone; ValueError when ``pixels`` is not the model's input.
        """
        shape = (self._size, self._size, 3)
        if pixels.dtype != np.uint8 or pixels.shape != shape:
            raise ValueError(f"pixels must be uint8 {shape}, got {pixels.dtype} {pixels.shape}")
        known = self.categories(heads_version)
        if category not in known:
            hint = "" if heads_version else " (a head needs its heads version)"
            raise SaliencyUnavailable(f"no category {category!r}{hint}; choose one of {known}")
        feature_map, embedding, probs = self._run(pixels)
        if category in self._backbone.class_names:
            index = self._backbone.class_names.index(category)
            gradient = _class_gradient(self._backbone.layers, embedding, index)
            score = float(probs[index])
        else:
            heads = self._heads_of(str(heads_version))
            gradient, score = _head_gradient(heads, embedding, heads.names.index(category))
        return HeatMap(_grad_cam(feature_map, gradient, self._size), category, score)

    def _run(self, pixels: npt.NDArray[np.uint8]) -> tuple[Float64Array, Float64Array, Any]:
        probs, embedding, feature_map = self._backbone.session.run(
            [PROBS_OUTPUT, EMBEDDING, self._backbone.feature_map], {self._input: pixels[None]}
        )
        return feature_map[0].astype(np.float64), embedding[0].astype(np.float64), probs[0]

    def _check_against_graph(self) -> None:
        """Refuse unless the pool is global and the numpy classifier is the graph's own."""
        probe = np.random.default_rng(0).integers(0, 256, (self._size, self._size, 3), np.uint8)
        feature_map, embedding, probs = self._run(probe)
        logits = _forward(self._backbone.layers, embedding)[-1]
        softmax = np.exp(logits - logits.max())
        softmax /= softmax.sum()
        problems = []
        if feature_map.ndim != 3 or feature_map.shape[0] != embedding.shape[0]:
            problems.append(f"feature map {feature_map.shape} does not match the embedding")
        elif not np.allclose(feature_map.mean(axis=(1, 2)), embedding, atol=_PROBE_TOLERANCE):
            problems.append("the pool is not a global average")
        if len(self._backbone.class_names) != len(probs):
            problems.append(f"{len(self._backbone.class_names)} class names for {len(probs)} probs")
        elif not np.allclose(softmax, probs, atol=_PROBE_TOLERANCE):
            problems.append("the Gemm/Relu chain does not reproduce probs")
        if problems:
            raise SaliencyUnsupported(f"{self._backbone.name}: {'; '.join(problems)}; no heat maps")

    def _heads_of(self, version: str) -> _Heads:
        with self._lock:
            if version not in self._heads:
                self._heads[version] = _load_heads(self._backbone, version)
            return self._heads[version]


def _model_file(model_dir: Path, filename: str) -> Path:
    """The model file of the newest numeric version, the one Triton's default policy serves."""
    path = model_dir / str(max(ensemble.version_folders(model_dir), default=1)) / filename
    if path.is_file():
        return path
    raise ConfigError(
        f"no {filename} in the newest version of {model_dir}; export the backbone "
        "(python -m training.nsfwjs.export) or fetch the model repository"
    )


def _analyse(model: onnx.ModelProto, name: str) -> tuple[str, tuple[_Layer, ...]]:
    """The feature map pooled into ``embedding``, and the classifier from it to ``probs``."""
    nodes = list(model.graph.node)
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {output: node for node in nodes for output in node.output}

    def refuse(why: str) -> SaliencyUnsupported:
        return SaliencyUnsupported(
            f"{name}: {why}; heat maps need the embedding to be a global average pool of a "
            "feature map and probs a softmax of Gemm/Relu layers on it"
        )

    tensor = EMBEDDING
    while (node := producers.get(tensor)) is not None and node.op_type in _RESHAPES:
        tensor = node.input[0]
    if node is None or node.op_type not in _POOLS:
        found = node.op_type if node is not None else "a graph input"
        raise refuse(f"the embedding comes from {found}, not from an average pool")
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if any(attributes.get("pads", [])) or attributes.get("auto_pad", b"NOTSET") not in _NO_PADDING:
        raise refuse(f"the pool {node.name!r} pads its input")
    feature_map = node.input[0]

    layers: list[_Layer] = []
    tensor = EMBEDDING
    while True:
        consumers = [n for n in nodes if tensor in n.input]
        if tensor == EMBEDDING:
            # The embedding also feeds the prototype similarity; only its Gemm leads to probs.
            consumers = [n for n in consumers if n.op_type == "Gemm"]
        if len(consumers) != 1:
            raise refuse(f"{tensor!r} feeds {len(consumers)} classifier nodes, not one")
        node = consumers[0]
        if node.op_type == "Gemm":
            layers.append(_gemm(node, constants, refuse))
        elif node.op_type == "Relu" and layers:
            layers[-1] = _Layer(layers[-1].weight, layers[-1].bias, relu=True)
        elif node.op_type == "Softmax" and layers and node.output[0] == PROBS_OUTPUT:
            axis = onnx.helper.get_attribute_value(node.attribute[0]) if node.attribute else -1
            if axis not in (-1, 1):
                raise refuse(f"softmax over axis {axis}")
            return feature_map, tuple(layers)
        else:
            raise refuse(f"the classifier has a {node.op_type} node {node.name!r}")
        tensor = node.output[0]


def _gemm(node: Any, constants: dict[str, Any], refuse: Any) -> _Layer:
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attributes.get("transA", 0) or node.input[1] not in constants:
        raise refuse(f"Gemm {node.name!r} is not x @ W + b with constant W")
    weight = np.asarray(constants[node.input[1]], dtype=np.float64)
    if attributes.get("transB", 0):
        weight = weight.T
    weight = weight * float(attributes.get("alpha", 1.0))
    bias = np.zeros(weight.shape[1])
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in constants:
            raise refuse(f"Gemm {node.name!r} has a computed bias")
        bias = np.broadcast_to(constants[node.input[2]], (1, weight.shape[1]))[0]
        bias = np.asarray(bias, dtype=np.float64) * float(attributes.get("beta", 1.0))
    return _Layer(weight, bias, relu=False)


def _forward(layers: tuple[_Layer, ...], x: Float64Array) -> list[Float64Array]:
    """Pre-activations of every layer; the last one is the logits."""
    outputs = []
    for layer in layers:
        pre = x @ layer.weight + layer.bias
        outputs.append(pre)
        x = np.maximum(pre, 0.0) if layer.relu else pre
    return outputs


def _class_gradient(layers: tuple[_Layer, ...], e: Float64Array, index: int) -> Float64Array:
    """∂(pre-softmax logit ``index``)/∂e, through the Gemm/Relu chain."""
    pre = _forward(layers, e)
    gradient = np.zeros_like(pre[-1])
    gradient[index] = 1.0
    for layer, activation in zip(reversed(layers), reversed(pre), strict=True):
        if layer.relu:
            gradient = gradient * (activation > 0)
        gradient = layer.weight @ gradient
    return gradient


def _head_gradient(heads: _Heads, e: Float64Array, index: int) -> tuple[Float64Array, float]:
    """∂(w·x + b)/∂e of one head (x: e, or e/|e| for cosine heads), and sigmoid(w·x + b)."""
    w, x = heads.weight[:, index], e
    if heads.normalize[index]:
        norm = max(float(np.linalg.norm(e)), 1e-12)
        x = e / norm
        gradient = (w - (w @ x) * x) / norm
    else:
        gradient = w
    logit = float(w @ x + heads.bias[index])
    return gradient, float(1.0 / (1.0 + np.exp(-logit)))


def _grad_cam(feature_map: Float64Array, gradient: Float64Array, size: int) -> Float32Array:
    _, height, width = feature_map.shape
    cam = np.maximum(np.tensordot(gradient / (height * width), feature_map, axes=1), 0.0)
    upsampled = Image.fromarray(cam.astype(np.float32), mode="F").resize(
        (size, size), Image.Resampling.BILINEAR
    )
    values = np.maximum(np.asarray(upsampled, dtype=np.float32), 0.0)
    peak = float(values.max())
    return values / peak if peak > 0 else values


def _load_heads(backbone: _Backbone, version: str) -> _Heads:
    folder = backbone.heads_dir / version
    if not version.isdigit() or not folder.is_dir():
        raise SaliencyUnavailable(f"heads version {version!r} is not in {backbone.heads_dir}")
    try:
        descriptor = HeadsDescriptor.model_validate_json(
            (folder / HEADS_DESCRIPTOR_FILE).read_text()
        )
        descriptor.check_backbone(backbone.sha256)
        with np.load(folder / HEADS_WEIGHTS_FILE) as data:
            weight, bias, normalize = (data[key] for key in ("weight", "bias", "normalize"))
    except (OSError, ValueError, KeyError, ValidationError, ModelMismatch) as exc:
        raise SaliencyUnavailable(f"heads version {version}: {exc}") from exc
    names = descriptor.names()
    shape = (backbone.layers[0].weight.shape[0], len(names))
    if weight.shape != shape or bias.shape != shape[1:] or normalize.size != len(names):
        raise SaliencyUnavailable(
            f"heads version {version}: weights {weight.shape} do not fit {shape[1]} categories "
            f"on {backbone.name}'s {shape[0]}-d embedding; export the heads again"
        )
    if clash := set(names) & set(backbone.class_names):
        raise SaliencyUnavailable(f"heads version {version} reuses class names {sorted(clash)}")
    weights = np.asarray(weight, np.float64), np.asarray(bias, np.float64)
    return _Heads(*weights, np.asarray(normalize, np.bool_).reshape(-1), names)
