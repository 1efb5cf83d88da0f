"""Images/s of each imported model at batch 1 and 32: eager PyTorch vs the exported ONNX.

    python -m bench.models.speed [--repo triton_repo] [--threads 2] [--seconds 3] [--out FILE]

Both run in this process with the same thread count; results go to stdout as JSON lines and
to ``--out`` (default: ``bench/results/model_speed.json`` in the clone). Run it from a clone:
the model repository, the nsfwjs cache and the results default to folders of the clone.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from bench.clone import clone_root
from consumer.errors import ConfigError
from training.nsfwjs.archive import NsfwjsArchive, default_cache_dir, fetch_tarball
from training.nsfwjs.export import triton_name
from training.nsfwjs.models import MODELS, load, parity_inputs

logger = logging.getLogger(__name__)


def images_per_second(run: Callable[[], object], batch: int, seconds: float) -> float:
    run()
    count = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        run()
        count += batch
    return count / (time.perf_counter() - started)


def _run_eager(model: torch.nn.Module, images: torch.Tensor) -> object:
    with torch.no_grad():
        return model(images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.models.speed", description=__doc__)
    parser.add_argument("--repo", type=Path, help="model repository (default: <clone>/triton_repo)")
    parser.add_argument("--cache-dir", type=Path, help="default: <clone>/.cache/nsfwjs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path, help="default: <clone>/bench/results/model_speed.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        repo: Path = args.repo or clone_root() / "triton_repo"
        cache_dir: Path = args.cache_dir or default_cache_dir()
        out: Path = args.out or clone_root() / "bench" / "results" / "model_speed.json"
    except ConfigError as exc:
        sys.stderr.write(f"model speed: {exc}\n")
        return 2
    torch.set_num_threads(args.threads)
    archive = NsfwjsArchive.open(fetch_tarball(cache_dir))
    rows = []
    for name in MODELS:
        model = load(name, archive=archive).uint8_input()
        onnx_path = repo / triton_name(name) / "1" / "model.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        base = parity_inputs(model.cfg, count=1)
        for batch in (1, 32):
            images = np.repeat(base, batch, axis=0)
            tensor = torch.from_numpy(images)

            eager = functools.partial(_run_eager, model, tensor)
            onnx = functools.partial(session.run, None, {"image": images})
            row = {
                "model": name,
                "batch": batch,
                "torch_images_per_s": round(images_per_second(eager, batch, args.seconds), 1),
                "onnxruntime_images_per_s": round(images_per_second(onnx, batch, args.seconds), 1),
            }
            rows.append(row)
            sys.stdout.write(json.dumps(row) + "\n")
    report = {
        "threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "results": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
