"""Export the imported nsfwjs networks to a Triton model repository, checked for parity.

    python -m training.nsfwjs.export [--repo triton_repo] [--model NAME ...] [--cache-dir DIR]
                                     [--labelled DIR]

Each model becomes ``<repo>/nsfw_<name>/`` with ``config.pbtxt``, ``labels.txt`` and
``1/model.onnx``: input ``image`` uint8 NHWC at the model's size (``/255`` happens inside the
graph), outputs ``probs``, ``embedding`` and ``prototype_similarity`` (cosine of the embedding
to each category's prototype, from ``training.prototypes``; NaN for categories without
labelled examples). The ONNX file is run with onnxruntime against the
eager PyTorch model before it is installed; a mismatch fails the export and leaves the
repository as it was. The config says ``backend: "onnxruntime"``: NVIDIA's Triton image serves
it on GPU (and can build a TensorRT engine from it); ``bench/local`` serves it on CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch

from consumer.moderation.heads import BACKBONE_SHA_PARAMETER
from consumer.runtime.folders import replace_folder
from training.nsfwjs.archive import NsfwjsArchive, default_cache_dir, fetch_tarball
from training.nsfwjs.errors import ImportFailed
from training.nsfwjs.models import (
    CATEGORIES,
    MODELS,
    NSFWJS_SOURCE,
    NsfwModel,
    PretrainedConfig,
    load,
    parity_inputs,
)
from training.prototypes import CATEGORY_ORDER, Prototypes, compute_prototypes, load_labelled

logger = logging.getLogger(__name__)

TRITON_PREFIX = "nsfw_"
MAX_BATCH_SIZE = 32
OPSET = 17
# Parity bounds of the exported graph against the eager model on the same uint8 inputs.
PROBS_TOLERANCE = 1e-4
EMBEDDING_TOLERANCE = 1e-4


class ServedModel(torch.nn.Module):
    """uint8 NHWC -> probs, embedding, and the embedding's cosine to each prototype."""

    def __init__(self, model: NsfwModel, prototypes: Prototypes) -> None:
        super().__init__()
        self.model = model.uint8_input()
        self.prototypes: torch.Tensor
        self.register_buffer("prototypes", torch.from_numpy(prototypes.matrix.copy()))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        probs, embedding = self.model(images)
        unit = torch.nn.functional.normalize(embedding, dim=-1, eps=1e-12)
        similarity = unit @ self.prototypes.transpose(0, 1)
        return probs, embedding, similarity


@dataclass(frozen=True)
class ExportReport:
    name: str
    triton_name: str
    onnx_bytes: int
    max_probs_diff: float
    max_embedding_diff: float
    max_similarity_diff: float
    prototype_counts: dict[str, int]
    seconds: float
    backbone_sha256: str
    """Of the installed model.onnx: what its config records and heads are checked against."""


def triton_name(model_name: str) -> str:
    return TRITON_PREFIX + model_name


OUTPUTS = ("probs", "embedding", "prototype_similarity")


def export_onnx(served: ServedModel, path: Path) -> None:
    """Write ``served`` as ONNX with a dynamic batch dimension."""
    size = served.model.cfg.input_size
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    with torch.no_grad():
        torch.onnx.export(
            served,
            (example,),
            str(path),
            input_names=["image"],
            output_names=list(OUTPUTS),
            dynamic_axes={name: {0: "batch"} for name in ("image", *OUTPUTS)},
            opset_version=OPSET,
            dynamo=False,
        )


def check_parity(served: ServedModel, onnx_path: Path) -> tuple[float, float, float]:
    """Max |Δ| of every output between onnxruntime and eager PyTorch; raise if over."""
    cfg = served.model.cfg
    images = parity_inputs(cfg)
    with torch.no_grad():
        eager = [t.numpy() for t in served(torch.from_numpy(images))]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    exported = session.run(list(OUTPUTS), {"image": images})
    probs_diff, embedding_diff, similarity_diff = (
        _max_diff(name, a, b, onnx_path)
        for name, a, b in zip(OUTPUTS, exported, eager, strict=True)
    )
    scale = max(1.0, float(np.max(np.abs(eager[1]))))
    if (
        probs_diff > PROBS_TOLERANCE
        or embedding_diff > EMBEDDING_TOLERANCE * scale
        or similarity_diff > PROBS_TOLERANCE
    ):
        raise ImportFailed(
            f"{onnx_path.name} of {cfg.name} does not match the eager model: max |Δprob| "
            f"{probs_diff:.2e} (limit {PROBS_TOLERANCE:.0e}), max |Δembedding| "
            f"{embedding_diff:.2e} (limit {EMBEDDING_TOLERANCE * scale:.1e}), max "
            f"|Δsimilarity| {similarity_diff:.2e} (limit {PROBS_TOLERANCE:.0e}); the export is "
            "not installed"
        )
    return probs_diff, embedding_diff, similarity_diff


def _max_diff(
    name: str, exported: npt.NDArray[np.float32], eager: npt.NDArray[np.float32], path: Path
) -> float:
    """Max |Δ|, where a NaN (a category without prototype) must be NaN on both sides."""
    missing = np.isnan(eager)
    if not np.array_equal(missing, np.isnan(exported)):
        raise ImportFailed(
            f"{path.name}: output {name} has NaN where the eager model has none (or the other "
            "way round); the export is not installed"
        )
    return float(np.max(np.abs(exported[~missing] - eager[~missing]), initial=0.0))


def triton_config(cfg: PretrainedConfig, prototypes: Prototypes, model_sha256: str) -> str:
    categories = ",".join(CATEGORIES[name] for name in cfg.class_names)
    size = cfg.input_size
    counts = ",".join(f"{name}:{count}" for name, count in prototypes.counts.items())
    parameters = {
        "modstream.class_names": categories,
        "modstream.prototype_categories": ",".join(prototypes.categories),
        "modstream.prototype_examples": counts,
        "modstream.prototype_source": prototypes.source,
        "modstream.source_classes": ",".join(cfg.class_names),
        "modstream.input_size": str(size),
        "modstream.resize": "stretch_bilinear_align_corners",
        "modstream.scaling": "divide_255_in_graph",
        "modstream.source": cfg.source,
        "modstream.license": cfg.license,
        "modstream.tarball_sha256": cfg.tarball_sha256,
        # Heads trained on this model's embedding record it; others are refused.
        BACKBONE_SHA_PARAMETER: model_sha256,
    }
    rendered = "\n".join(
        f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}'
        for key, value in parameters.items()
    )
    origin = (
        "imported exactly"
        if cfg.source == NSFWJS_SOURCE
        else "a derived model (see modstream.source)"
    )
    return f"""# nsfwjs {cfg.nsfwjs_name} ({cfg.license}), {origin}, exported by
# `python -m training.nsfwjs.export`'s export path; edit the code, not this file.
name: "{triton_name(cfg.name)}"
backend: "onnxruntime"
max_batch_size: {MAX_BATCH_SIZE}
version_policy: {{ latest: {{ num_versions: 1 }} }}
input [
  {{
    name: "image"
    data_type: TYPE_UINT8
    format: FORMAT_NHWC
    dims: [ {size}, {size}, 3 ]
  }}
]
output [
  {{
    name: "probs"
    data_type: TYPE_FP32
    dims: [ {len(cfg.class_names)} ]
    label_filename: "labels.txt"
  }},
  {{
    name: "embedding"
    data_type: TYPE_FP32
    dims: [ {cfg.embedding_dim} ]
  }},
  {{
    name: "prototype_similarity"
    data_type: TYPE_FP32
    dims: [ {len(cfg.class_names)} ]
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: 2000
}}
{rendered}
"""


def export_to_repository(model: NsfwModel, repo: Path, prototypes: Prototypes) -> ExportReport:
    """Export with ``prototypes`` (of this model) built in, check parity, then swap
    ``<repo>/nsfw_<name>`` in."""
    started = time.perf_counter()
    cfg = model.cfg
    if tuple(CATEGORIES[name] for name in cfg.class_names) != CATEGORY_ORDER:
        raise ImportFailed(f"{cfg.name}: classes {cfg.class_names} are not in the expected order")
    served = ServedModel(model, prototypes)
    target = repo / triton_name(cfg.name)
    repo.mkdir(parents=True, exist_ok=True)

    def fill(staging: Path) -> tuple[tuple[float, float, float], str]:
        (staging / "1").mkdir()
        onnx_path = staging / "1" / "model.onnx"
        export_onnx(served, onnx_path)
        diffs = check_parity(served, onnx_path)
        model_sha256 = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
        (staging / "config.pbtxt").write_text(triton_config(cfg, prototypes, model_sha256))
        (staging / "labels.txt").write_text(
            "\n".join(CATEGORIES[name] for name in cfg.class_names) + "\n"
        )
        return diffs, model_sha256

    (probs_diff, embedding_diff, similarity_diff), model_sha256 = replace_folder(target, fill)
    return ExportReport(
        name=cfg.name,
        triton_name=target.name,
        onnx_bytes=(target / "1" / "model.onnx").stat().st_size,
        max_probs_diff=probs_diff,
        max_embedding_diff=embedding_diff,
        max_similarity_diff=similarity_diff,
        prototype_counts=prototypes.counts,
        seconds=time.perf_counter() - started,
        backbone_sha256=model_sha256,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.nsfwjs.export", description=__doc__)
    parser.add_argument("--repo", type=Path, default=Path("triton_repo"))
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument(
        "--model", action="append", choices=sorted(MODELS), help="repeatable; default: all three"
    )
    parser.add_argument(
        "--labelled",
        type=Path,
        help="folder of <category>/ image folders for the prototypes (default: built-in set)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        archive = NsfwjsArchive.open(fetch_tarball(args.cache_dir))
        labelled, source = load_labelled(args.labelled)
        for name in args.model or list(MODELS):
            model = load(name, archive=archive)
            prototypes = compute_prototypes(model, labelled, source)
            report = export_to_repository(model, args.repo, prototypes)
            logger.info(
                "exported %s to %s (%.1f MB) in %.1f s: max |Δprob| %.1e, max |Δembedding| "
                "%.1e, max |Δsimilarity| %.1e; prototypes from %s",
                report.name,
                args.repo / report.triton_name,
                report.onnx_bytes / 1e6,
                report.seconds,
                report.max_probs_diff,
                report.max_embedding_diff,
                report.max_similarity_diff,
                report.prototype_counts,
            )
    except ImportFailed as exc:
        sys.stderr.write(f"export failed: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
