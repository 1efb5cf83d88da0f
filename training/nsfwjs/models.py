"""The three pretrained nsfwjs networks, with the preprocessing that travels with their weights.

``load(name)`` returns an :class:`NsfwModel`: NHWC float RGB in [0, 1] at the model's input size
in, ``(probs [N, 5], embedding [N, D])`` out. ``probs`` is the softmax over
:data:`CLASS_NAMES`; ``embedding`` is the pooled penultimate features (the flattened global
average pool that the classification head reads).

Preprocessing, as nsfwjs 4.4.0 ``core.js`` does it: RGB, ``pixel / 255`` (no mean or std);
an image that is not already ``input_size`` x ``input_size`` is resized with bilinear
interpolation, ``align_corners=True``, stretched (the aspect ratio is not kept). See
:func:`preprocess`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from training.nsfwjs.archive import (
    PACKAGE_SPEC,
    TARBALL_SHA256,
    NsfwjsArchive,
    fetch_tarball,
)
from training.nsfwjs.errors import ImportFailed
from training.nsfwjs.graph import build_graph_model
from training.nsfwjs.jsliteral import bundle_export
from training.nsfwjs.layers import build_layers_model
from training.nsfwjs.ops import Dag
from training.nsfwjs.tfjs import decode_shard, parse_model_json, read_weights

logger = logging.getLogger(__name__)

CLASS_NAMES = ("Drawing", "Hentai", "Neutral", "Porn", "Sexy")

# The five nsfwjs classes, in output order, as the moderation categories policies name.
# drawing -> safe_drawing: non-sexual illustrations; hentai -> sexual_explicit_drawn;
# neutral -> safe; porn -> sexual_explicit; sexy -> suggestive (nudity-adjacent, not explicit).
CATEGORIES: dict[str, str] = {
    "Drawing": "safe_drawing",
    "Hentai": "sexual_explicit_drawn",
    "Neutral": "safe",
    "Porn": "sexual_explicit",
    "Sexy": "suggestive",
}

_MID_PREFIX = (
    "StatefulPartitionedCall/sequential/keras_layer/StatefulPartitionedCall/"
    "StatefulPartitionedCall/StatefulPartitionedCall/predict/"
)


NSFWJS_SOURCE = f"npm {PACKAGE_SPEC}, https://github.com/infinitered/nsfwjs"
"""Where the imported weights come from; a derived model states its own derivation."""


@dataclass(frozen=True)
class PretrainedConfig:
    """Everything needed to feed a model and read its outputs; travels with the weights."""

    name: str
    nsfwjs_name: str
    archive_dir: str
    format: Literal["layers-model", "graph-model"]
    input_size: int
    embedding_dim: int
    probs_output: str
    embedding_output: str
    class_names: tuple[str, ...] = CLASS_NAMES
    channel_order: str = "RGB"
    layout: str = "NHWC"
    input_divisor: float = 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize: str = (
        "bilinear, align_corners=True, stretched to input_size x input_size "
        "(aspect ratio not kept), applied after dividing by 255"
    )
    license: str = "MIT"
    source: str = field(default=NSFWJS_SOURCE)
    tarball_sha256: str = TARBALL_SHA256

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready copy, e.g. for export metadata."""
        return asdict(self)


MODELS: dict[str, PretrainedConfig] = {
    cfg.name: cfg
    for cfg in (
        PretrainedConfig(
            name="mobilenet_v2",
            nsfwjs_name="MobileNetV2",
            archive_dir="mobilenet_v2",
            format="layers-model",
            input_size=224,
            embedding_dim=1280,
            probs_output="dense_3",
            embedding_output="flatten_1",
        ),
        PretrainedConfig(
            name="mobilenet_v2_mid",
            nsfwjs_name="MobileNetV2Mid",
            archive_dir="mobilenet_v2_mid",
            format="graph-model",
            input_size=224,
            embedding_dim=1792,
            probs_output="Identity",
            embedding_output=_MID_PREFIX + "feature_vector/SpatialSqueeze",
        ),
        PretrainedConfig(
            name="inception_v3",
            nsfwjs_name="InceptionV3",
            archive_dir="inception_v3",
            format="layers-model",
            input_size=299,
            embedding_dim=2048,
            probs_output="dense_3",
            embedding_output="flatten_1",
        ),
    )
}


def get_config(name: str) -> PretrainedConfig:
    """Return the registry entry for ``name``; raises ImportFailed listing the known names."""
    if name not in MODELS:
        raise ImportFailed(f"unknown nsfwjs model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]


class NsfwModel(nn.Module):
    """NHWC float RGB in [0, 1] -> (probs [N, 5], embedding [N, D])."""

    def __init__(self, net: Dag, cfg: PretrainedConfig) -> None:
        super().__init__()
        self.net = net
        self.cfg = cfg

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        size = self.cfg.input_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (size, size, 3):
            raise ValueError(
                f"{self.cfg.name} takes NHWC images of shape [N, {size}, {size}, 3], got "
                f"{list(images.shape)}; resize them with training.nsfwjs.models.preprocess"
            )
        probs, embedding = self.net(images)
        return probs, embedding

    def uint8_input(self) -> Uint8NsfwModel:
        """A wrapper taking uint8 NHWC RGB and dividing by 255 inside (for export)."""
        return Uint8NsfwModel(self)


class Uint8NsfwModel(nn.Module):
    """uint8 NHWC RGB at the input size -> (probs [N, 5], embedding [N, D])."""

    def __init__(self, model: NsfwModel) -> None:
        super().__init__()
        self.model = model
        self.cfg = model.cfg

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        probs, embedding = self.model(images.to(torch.float32) / self.cfg.input_divisor)
        return probs, embedding


def parity_inputs(
    cfg: PretrainedConfig, count: int = 6, seed: int = 0, noise_step: float = 12
) -> npt.NDArray[np.uint8]:
    """Deterministic uint8 images at the model's input size: one smooth gradient plus noise,
    standard deviation ``noise_step * (i + 1)`` for image i (not all one class)."""
    rng = np.random.default_rng(seed)
    size = cfg.input_size
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    gradient = np.stack(
        [
            np.add.outer(ramp, ramp) / 2,
            np.add.outer(ramp[::-1], ramp) / 2,
            np.tile(ramp, (size, 1)),
        ],
        axis=-1,
    )
    images = []
    for index in range(count):
        noise = rng.normal(0, noise_step * (index + 1), size=(size, size, 3))
        images.append(np.clip(gradient + noise, 0, 255).astype(np.uint8))
    return np.stack(images)


def preprocess(images: Tensor, cfg: PretrainedConfig) -> Tensor:
    """uint8 RGB ``[H, W, 3]`` or ``[N, H, W, 3]`` -> float NHWC in [0, 1] at the input size.

    Divides by 255 first, then resizes as nsfwjs does (bilinear, align_corners, stretched).
    """
    batch = images.unsqueeze(0) if images.dim() == 3 else images
    if batch.dim() != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected RGB images [N, H, W, 3], got {list(images.shape)}")
    x = batch.to(torch.float32) / cfg.input_divisor
    size = cfg.input_size
    if tuple(x.shape[1:3]) != (size, size):
        nchw = F.interpolate(
            x.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", align_corners=True
        )
        x = nchw.permute(0, 2, 3, 1).contiguous()
    return x


def load(
    name: str,
    cache_dir: Path | None = None,
    *,
    archive: NsfwjsArchive | None = None,
    npm: str = "npm",
) -> NsfwModel:
    """Import one pinned nsfwjs network into PyTorch, in eval mode.

    The tarball comes from ``archive`` when given, else from ``cache_dir`` (default
    ``<repo>/.cache/nsfwjs``), fetched with ``npm pack`` on first use. Raises ImportFailed
    naming the file, tensor or layer at fault.
    """
    cfg = get_config(name)
    started = time.perf_counter()
    if archive is None:
        archive = NsfwjsArchive.open(fetch_tarball(cache_dir, npm=npm))
    files = archive.model_files(cfg.archive_dir)
    where = f"dist/models/{cfg.archive_dir}"
    read = time.perf_counter()
    if "model.min.js" not in files:
        raise ImportFailed(f"{archive.name}: {where}/model.min.js is missing")
    source = f"{where}/model.min.js"
    model_json = parse_model_json(
        bundle_export(files["model.min.js"], source=source), source=source
    )
    fmt = model_json.format or "layers-model"
    if fmt != cfg.format:
        raise ImportFailed(f"{source}: format {fmt!r}, expected {cfg.format!r}")
    shards = {
        path: decode_shard(files[f"{path}.min.js"], source=f"{where}/{path}.min.js")
        for group in model_json.groups
        for path in group.paths
        if f"{path}.min.js" in files
    }
    weights = read_weights(model_json.groups, shards, source=where)
    parsed = time.perf_counter()
    outputs = [cfg.probs_output, cfg.embedding_output]
    build = build_layers_model if cfg.format == "layers-model" else build_graph_model
    net = build(model_json.topology, weights, outputs=outputs, source=where)
    expected_input = (cfg.input_size, cfg.input_size, 3)
    if net.input_shape != expected_input:
        raise ImportFailed(
            f"{where}: the network declares input {list(net.input_shape)}, but the registry "
            f"entry {name!r} expects {list(expected_input)}"
        )
    model = NsfwModel(net, cfg)
    model.eval()
    with torch.no_grad():
        probs, embedding = model(torch.zeros(1, cfg.input_size, cfg.input_size, 3))
    if probs.shape != (1, len(cfg.class_names)) or embedding.shape != (1, cfg.embedding_dim):
        raise ImportFailed(
            f"{where}: outputs have shapes {list(probs.shape)} and {list(embedding.shape)}, "
            f"expected [1, {len(cfg.class_names)}] and [1, {cfg.embedding_dim}]"
        )
    done = time.perf_counter()
    logger.info(
        "loaded nsfwjs %s: %d parameters in %.2f s (archive %.2f s, parse + dequantize %.2f s, "
        "build + check %.2f s)",
        name,
        sum(p.numel() for p in model.parameters()),
        done - started,
        read - started,
        parsed - read,
        done - parsed,
    )
    return model
