"""The imported networks on a CUDA GPU: parity with the CPU, and images/s by batch and precision.

    python -m bench.models.gpu_check [--out bench/results/gpu_model.json] [--seconds 2]

Runs eager PyTorch (the weights Triton serves as ONNX; TensorRT is not measured here). For
each model it compares the GPU's probabilities and embeddings with the CPU's on the same
uint8 images, in fp32 (TF32 off) and fp16, then times batches of 1, 32 and 256. Exits 1 with
one line when no GPU is visible. Run it from a clone: the nsfwjs cache and the results
(``bench/results/gpu_model.json``) default to folders of the clone.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from bench.clone import clone_root
from consumer.errors import ConfigError
from training.nsfwjs.archive import NsfwjsArchive, default_cache_dir, fetch_tarball
from training.nsfwjs.models import MODELS, Uint8NsfwModel, load, parity_inputs

logger = logging.getLogger(__name__)
BATCHES = (1, 32, 256)


def outputs(
    model: Uint8NsfwModel, images: torch.Tensor, half: bool
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=half):
        probs, embedding = model(images)
    return probs.float().cpu().numpy(), embedding.float().cpu().numpy()


def images_per_second(
    model: Uint8NsfwModel, batch: torch.Tensor, half: bool, seconds: float
) -> float:
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=half):
        for _ in range(3):
            model(batch)
        torch.cuda.synchronize()
        count = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            model(batch)
            count += len(batch)
        torch.cuda.synchronize()
    return count / (time.perf_counter() - started)


def check(name: str, archive: NsfwjsArchive, seconds: float) -> dict[str, object]:
    cpu_model = load(name, archive=archive)
    size = cpu_model.cfg.input_size
    images = torch.from_numpy(parity_inputs(cpu_model.cfg, count=16, noise_step=8))
    with torch.no_grad():
        cpu_probs, cpu_embedding = (t.numpy() for t in cpu_model.uint8_input()(images))
    gpu = load(name, archive=archive).cuda().uint8_input()
    result: dict[str, object] = {"model": name, "input_size": size}
    for precision, half in (("fp32", False), ("fp16", True)):
        probs, embedding = outputs(gpu, images.cuda(), half)
        scale = float(np.abs(cpu_embedding).max())
        result[f"{precision}_max_abs_dprob"] = float(np.abs(probs - cpu_probs).max())
        result[f"{precision}_max_rel_dembedding"] = (
            float(np.abs(embedding - cpu_embedding).max()) / scale
        )
        result[f"{precision}_top1_agreement"] = float(
            np.mean(probs.argmax(1) == cpu_probs.argmax(1))
        )
        for batch in BATCHES:
            tiled = images.repeat((batch + len(images) - 1) // len(images), 1, 1, 1)[:batch]
            rate = images_per_second(gpu, tiled.cuda(), half, seconds)
            result[f"{precision}_images_per_s_b{batch}"] = round(rate, 1)
        logger.info(
            "%s %s: %s", name, precision, {k: v for k, v in result.items() if precision in k}
        )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.models.gpu_check", description=__doc__)
    parser.add_argument("--out", type=Path, help="default: <clone>/bench/results/gpu_model.json")
    parser.add_argument("--cache-dir", type=Path, help="default: <clone>/.cache/nsfwjs")
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        cache_dir: Path = args.cache_dir or default_cache_dir()
        out: Path = args.out or clone_root() / "bench" / "results" / "gpu_model.json"
    except ConfigError as exc:
        sys.stderr.write(f"gpu check failed: {exc}\n")
        return 2
    if not torch.cuda.is_available():
        sys.stderr.write("gpu check failed: no CUDA device is visible to PyTorch\n")
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    archive = NsfwjsArchive.open(fetch_tarball(cache_dir))
    report = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "note": "eager PyTorch on the GPU; Triton serves the ONNX export (onnxruntime/TensorRT)",
        "results": [check(name, archive, args.seconds) for name in MODELS],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
