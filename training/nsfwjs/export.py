"""Export the imported nsfwjs networks to a Triton model repository, checked for parity.

    python -m training.nsfwjs.export [--repo triton_repo] [--model NAME ...] [--cache-dir DIR]

Each model becomes ``<repo>/nsfw_<name>/`` with ``config.pbtxt``, ``labels.txt`` and
``1/model.onnx``: input ``image`` uint8 NHWC at the model's size (``/255`` happens inside the
graph), outputs ``probs`` and ``embedding``. The ONNX file is run with onnxruntime against the
eager PyTorch model before it is installed; a mismatch fails the export and leaves the
repository as it was. The config says ``backend: "onnxruntime"``: NVIDIA's Triton image serves
it on GPU (and can build a TensorRT engine from it); ``consumer/local`` serves it on CPU.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch

from consumer.folders import replace_folder
from training.nsfwjs.archive import NsfwjsArchive, default_cache_dir, fetch_tarball
from training.nsfwjs.errors import ImportFailed
from training.nsfwjs.models import MODELS, NsfwModel, PretrainedConfig, load

logger = logging.getLogger(__name__)

TRITON_PREFIX = "nsfw_"
MAX_BATCH_SIZE = 32
OPSET = 17
# Parity bounds of the exported graph against the eager model on the same uint8 inputs.
PROBS_TOLERANCE = 1e-4
EMBEDDING_TOLERANCE = 1e-4

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


@dataclass(frozen=True)
class ExportReport:
    name: str
    triton_name: str
    onnx_bytes: int
    max_probs_diff: float
    max_embedding_diff: float
    seconds: float


def triton_name(model_name: str) -> str:
    return TRITON_PREFIX + model_name


def parity_inputs(cfg: PretrainedConfig, count: int = 6, seed: int = 0) -> npt.NDArray[np.uint8]:
    """Deterministic uint8 images: smooth gradients plus noise, at the model's input size."""
    rng = np.random.default_rng(seed)
    size = cfg.input_size
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    images = []
    for index in range(count):
        gradient = np.stack(
            [
                np.add.outer(ramp, ramp) / 2,
                np.add.outer(ramp[::-1], ramp) / 2,
                np.tile(ramp, (size, 1)),
            ],
            axis=-1,
        )
        noise = rng.normal(0, 12 * (index + 1), size=(size, size, 3))
        images.append(np.clip(gradient + noise, 0, 255).astype(np.uint8))
    return np.stack(images)


def export_onnx(model: NsfwModel, path: Path) -> None:
    """Write the uint8-input wrapper of ``model`` as ONNX with a dynamic batch dimension."""
    size = model.cfg.input_size
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    with torch.no_grad():
        torch.onnx.export(
            model.uint8_input(),
            (example,),
            str(path),
            input_names=["image"],
            output_names=["probs", "embedding"],
            dynamic_axes={"image": {0: "batch"}, "probs": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )


def check_parity(model: NsfwModel, onnx_path: Path) -> tuple[float, float]:
    """Max |Δ| of probs and embeddings between onnxruntime and eager PyTorch; raise if over."""
    images = parity_inputs(model.cfg)
    with torch.no_grad():
        eager_probs, eager_embedding = model.uint8_input()(torch.from_numpy(images))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    onnx_probs, onnx_embedding = session.run(["probs", "embedding"], {"image": images})
    probs_diff = float(np.max(np.abs(onnx_probs - eager_probs.numpy())))
    scale = max(1.0, float(np.max(np.abs(eager_embedding.numpy()))))
    embedding_diff = float(np.max(np.abs(onnx_embedding - eager_embedding.numpy())))
    if probs_diff > PROBS_TOLERANCE or embedding_diff > EMBEDDING_TOLERANCE * scale:
        raise ImportFailed(
            f"{onnx_path.name} of {model.cfg.name} does not match the eager model: max |Δprob| "
            f"{probs_diff:.2e} (limit {PROBS_TOLERANCE:.0e}), max |Δembedding| "
            f"{embedding_diff:.2e} (limit {EMBEDDING_TOLERANCE * scale:.1e}); the export is "
            "not installed"
        )
    return probs_diff, embedding_diff


def triton_config(cfg: PretrainedConfig) -> str:
    categories = ",".join(CATEGORIES[name] for name in cfg.class_names)
    size = cfg.input_size
    parameters = {
        "modstream.class_names": categories,
        "modstream.source_classes": ",".join(cfg.class_names),
        "modstream.input_size": str(size),
        "modstream.resize": "stretch_bilinear_align_corners",
        "modstream.scaling": "divide_255_in_graph",
        "modstream.source": cfg.source,
        "modstream.license": cfg.license,
        "modstream.tarball_sha256": cfg.tarball_sha256,
    }
    rendered = "\n".join(
        f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}'
        for key, value in parameters.items()
    )
    return f"""# nsfwjs {cfg.nsfwjs_name} ({cfg.license}), imported exactly and exported by
# `python -m training.nsfwjs.export`; edit that module, not this file.
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
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: 2000
}}
{rendered}
"""


def export_to_repository(model: NsfwModel, repo: Path) -> ExportReport:
    """Export, check parity, then swap ``<repo>/nsfw_<name>`` in atomically."""
    started = time.perf_counter()
    cfg = model.cfg
    target = repo / triton_name(cfg.name)
    repo.mkdir(parents=True, exist_ok=True)

    def fill(staging: Path) -> tuple[float, float]:
        (staging / "1").mkdir()
        onnx_path = staging / "1" / "model.onnx"
        export_onnx(model, onnx_path)
        diffs = check_parity(model, onnx_path)
        (staging / "config.pbtxt").write_text(triton_config(cfg))
        (staging / "labels.txt").write_text(
            "\n".join(CATEGORIES[name] for name in cfg.class_names) + "\n"
        )
        return diffs

    probs_diff, embedding_diff = replace_folder(target, fill)
    return ExportReport(
        name=cfg.name,
        triton_name=target.name,
        onnx_bytes=(target / "1" / "model.onnx").stat().st_size,
        max_probs_diff=probs_diff,
        max_embedding_diff=embedding_diff,
        seconds=time.perf_counter() - started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.nsfwjs.export", description=__doc__)
    parser.add_argument("--repo", type=Path, default=Path("triton_repo"))
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument(
        "--model", action="append", choices=sorted(MODELS), help="repeatable; default: all three"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        archive = NsfwjsArchive.open(fetch_tarball(args.cache_dir))
        for name in args.model or list(MODELS):
            report = export_to_repository(load(name, archive=archive), args.repo)
            logger.info(
                "exported %s to %s (%.1f MB) in %.1f s: max |Δprob| %.1e, max |Δembedding| %.1e",
                report.name,
                args.repo / report.triton_name,
                report.onnx_bytes / 1e6,
                report.seconds,
                report.max_probs_diff,
                report.max_embedding_diff,
            )
    except ImportFailed as exc:
        sys.stderr.write(f"export failed: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
