"""What scoring heads in the same request adds to Triton's time per image.

    python -m bench.heads_overhead [--heads 3] [--batch 32] [--rounds 6] [--out FILE]

Serves the backbone alone and the ``moderation`` ensemble (backbone → heads) from one
tritonserver, and times batches of the same images through each, alternating round by round
so drift and noise hit both alike. The heads' weights are random: their cost does not depend
on what they learnt. Target: the ensemble within 5% of the backbone's time per image.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import tritonclient.grpc as grpcclient

from bench.clone import clone_root
from bench.local.triton import TritonServer
from consumer.errors import ConfigError
from consumer.inference import ensemble
from consumer.moderation.heads import BACKBONE_SHA_PARAMETER, HeadCategory
from training.heads.export import export_heads
from training.heads.trained import TrainedHeads

logger = logging.getLogger(__name__)

BACKBONE = "nsfw_mobilenet_v2"
ENSEMBLE = "moderation"
TARGET_OVERHEAD = 0.05


def random_heads(repo: Path, count: int, seed: int = 0) -> TrainedHeads:
    config = ensemble.read_config(repo / BACKBONE / "config.pbtxt")
    dim = int(next(o for o in config.output if o.name == "embedding").dims[0])
    rng = np.random.default_rng(seed)
    return TrainedHeads(
        categories=tuple(HeadCategory(name=f"head_{n}") for n in range(count)),
        weight=rng.normal(size=(dim, count)).astype(np.float32),
        bias=rng.normal(size=count).astype(np.float32),
        normalize=np.arange(count) % 2 == 0,
        backbone=BACKBONE,
        backbone_sha256=config.parameters[BACKBONE_SHA_PARAMETER].string_value,
    )


def _time_batches(
    client: grpcclient.InferenceServerClient,
    model: str,
    pixels: npt.NDArray[np.uint8],
    batches: int,
) -> float:
    tensor = grpcclient.InferInput("image", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    started = time.perf_counter()
    for _ in range(batches):
        client.infer(model, [tensor])
    return (time.perf_counter() - started) / (batches * len(pixels))


def measure(heads: int, batch: int, rounds: int, batches_per_round: int) -> dict[str, object]:
    source = clone_root() / "triton_repo" / BACKBONE
    if not (source / "1" / "model.onnx").is_file():
        raise ConfigError(f"{source} is missing: run ./scripts/setup.sh first")
    with tempfile.TemporaryDirectory(prefix="modstream-heads-bench-") as scratch:
        repo = Path(scratch) / "repo"
        shutil.copytree(source, repo / BACKBONE)
        export_heads(repo, random_heads(repo, heads))
        with TritonServer(
            repo, work_dir=Path(scratch) / "triton", models=[BACKBONE, "heads", ENSEMBLE]
        ) as server:
            client = grpcclient.InferenceServerClient(server.grpc_url)
            pixels = np.random.default_rng(1).integers(0, 256, (batch, 224, 224, 3), np.uint8)
            for model in (BACKBONE, ENSEMBLE):  # warm-up: sessions, shared memory, caches
                _time_batches(client, model, pixels, 2)
            backbone, moderation = [], []
            for _ in range(rounds):
                backbone.append(_time_batches(client, BACKBONE, pixels, batches_per_round))
                moderation.append(_time_batches(client, ENSEMBLE, pixels, batches_per_round))
            client.close()
    overheads = [m / b - 1 for m, b in zip(moderation, backbone, strict=True)]
    overhead = statistics.median(overheads)
    return {
        "heads": heads,
        "batch": batch,
        "rounds": rounds,
        "images_per_round": batches_per_round * batch,
        "backbone_ms_per_image": [round(s * 1000, 3) for s in backbone],
        "ensemble_ms_per_image": [round(s * 1000, 3) for s in moderation],
        "overhead_per_round": [round(o, 4) for o in overheads],
        "backbone_ms_median": round(statistics.median(backbone) * 1000, 3),
        "ensemble_ms_median": round(statistics.median(moderation) * 1000, 3),
        "overhead_median": round(overhead, 4),
        "target": TARGET_OVERHEAD,
        "met": overhead <= TARGET_OVERHEAD,
        "note": "Triton on CPU (the wheel's tritonserver, Python stand-in for onnxruntime); "
        "heads in the Python backend; same images, alternating rounds, one run",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.heads_overhead", description=__doc__)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batches-per-round", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = args.out or clone_root() / "bench" / "results" / "heads_overhead.json"
        report = measure(args.heads, args.batch, args.rounds, args.batches_per_round)
    except ConfigError as exc:
        sys.stderr.write(f"heads_overhead: {exc}\n")
        return 2
    out.write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(
        f"backbone {report['backbone_ms_median']} ms/image, ensemble "
        f"{report['ensemble_ms_median']} ms/image, overhead {report['overhead_median']:+.1%} "
        f"(target at most {TARGET_OVERHEAD:.0%}); wrote {out}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
