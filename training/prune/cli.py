"""Prune, distil, export and compare: ``python -m training.prune``.

    python -m training.prune --ratio 0.2 0.4 --out bench/results --repo triton_repo
                             [--minutes 8] [--seed 0] [--demo-set DIR] [--labelled DIR]

For each ratio: prune that fraction of every convolution's filters from nsfwjs MobileNetV2,
distil it from the unpruned model for at most ``--minutes``, export it with the import's own
export (parity check included) as the Triton model ``nsfw_mobilenet_v2_pruned<NN>`` next to
the unpruned one, which stays as it is, and measure it against the unpruned model on the
held-out images. Writes ``<out>/pruning.json`` and ``<out>/pruning.png``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import onnxruntime as ort
import torch
import torch_pruning as tp

from bench.clone import clone_root
from consumer.errors import ConfigError, PolicyError
from training.nsfwjs.archive import NsfwjsArchive, default_cache_dir, fetch_tarball
from training.nsfwjs.errors import ImportFailed
from training.nsfwjs.export import ExportReport, export_to_repository
from training.nsfwjs.models import NsfwModel, load, parity_inputs
from training.prototypes import LabelledImage, compute_prototypes, load_labelled
from training.prune import agreement, report
from training.prune.data import ImageSet, distillation_set, held_out_set, standin_set
from training.prune.distill import DistillConfig, DistillReport, distill
from training.prune.filters import Size, measure, prune_filters
from training.prune.layers import to_stock_layers

logger = logging.getLogger(__name__)

BASE_MODEL = "mobilenet_v2"
UNPRUNED = "unpruned"


class _Parser(argparse.ArgumentParser):
    """Usage mistakes end in one line on stderr, like every other failure here."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratio {text!r} is not a number") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"ratio {text} must be between 0 and 1 (exclusive)")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be positive")
    return value


def pruned_name(ratio: float) -> str:
    return f"{BASE_MODEL}_pruned{round(ratio * 100)}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="python -m training.prune", description=__doc__)
    parser.add_argument("--ratio", type=_ratio, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for pruning.json/png")
    parser.add_argument("--repo", type=Path, required=True, help="Triton model repository")
    parser.add_argument("--minutes", type=_positive, default=8.0, help="distillation per ratio")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--demo-set", type=Path, help="default: <clone>/.cache/heads-demo")
    parser.add_argument("--labelled", type=Path, help="prototype images (default: built-in)")
    parser.add_argument("--cache-dir", type=Path, help="default: <clone>/.cache/nsfwjs")
    parser.add_argument("--policy", type=Path, help="default: <clone>/policies/default.yaml")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads")
    parser.add_argument("--batch", type=int, default=16, help="distillation batch size")
    parser.add_argument("--max-steps", type=int, help="stop distilling after this many steps")
    parser.add_argument("--demo-limit", type=int, help="use at most this many demo images")
    parser.add_argument("--speed-seconds", type=_positive, default=2.0)
    parser.add_argument("--speed-rounds", type=int, default=3)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if len(set(map(pruned_name, args.ratio))) != len(args.ratio):
        parser.error("two ratios round to the same model name; give distinct percentages")
    for name in ("threads", "batch", "max_steps", "demo_limit", "speed_rounds"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        run(args)
    except (ImportFailed, ConfigError, PolicyError, OSError) as exc:
        sys.stderr.write(f"pruning failed: {exc}\n")
        return 1
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Everything ``main`` does; returns the report it writes."""
    torch.set_num_threads(args.threads)
    demo_set: Path = args.demo_set or clone_root() / ".cache" / "heads-demo"
    policy_path: Path = args.policy or clone_root() / "policies" / "default.yaml"
    policies = agreement.shipped_policy(policy_path)
    archive = NsfwjsArchive.open(fetch_tarball(args.cache_dir or default_cache_dir()))
    teacher = load(BASE_MODEL, archive=archive)
    size = teacher.cfg.input_size
    train = distillation_set(demo_set, size, args.demo_limit)
    held_out = held_out_set(demo_set, size, args.demo_limit)
    standins = standin_set(size)
    labelled, labelled_source = load_labelled(args.labelled)
    logger.info("distilling on %s; held out: %s", train.description, held_out.description)
    with tempfile.TemporaryDirectory(prefix="unpruned-") as scratch:
        # The unpruned model goes through the same export, so the speed comparison is between
        # two graphs built the same way.
        baseline = _export(teacher, Path(scratch), labelled, labelled_source)
        onnx_files = {UNPRUNED: Path(scratch) / baseline.triton_name / "1" / "model.onnx"}
        unpruned_sha = baseline.backbone_sha256
        teacher_session = agreement.open_session(onnx_files[UNPRUNED], args.threads)
        teacher_probs = {
            key: agreement.onnx_probs(teacher_session, images.pixels)
            for key, images in (("held_out", held_out), ("standins", standins))
        }
        unpruned_size = measure(to_stock_layers(copy.deepcopy(teacher)))
        rows = []
        for ratio in args.ratio:
            student, size_after, distilled = _prune_and_distill(teacher, ratio, train, args)
            exported = _export(student, args.repo, labelled, labelled_source)
            onnx_path = args.repo / exported.triton_name / "1" / "model.onnx"
            onnx_files[exported.triton_name] = onnx_path
            session = agreement.open_session(onnx_path, args.threads)
            rows.append(
                {
                    "ratio": ratio,
                    "triton_model": exported.triton_name,
                    "params": size_after.params,
                    "flops": size_after.flops,
                    "params_ratio": round(size_after.params / unpruned_size.params, 4),
                    "flops_ratio": round(size_after.flops / unpruned_size.flops, 4),
                    "onnx_bytes": exported.onnx_bytes,
                    "backbone_sha256": exported.backbone_sha256,
                    "parity": {
                        "max_probs_diff": exported.max_probs_diff,
                        "max_embedding_diff": exported.max_embedding_diff,
                    },
                    "distillation": dataclasses.asdict(distilled),
                    **{
                        key: agreement.agreement(
                            teacher_probs[key],
                            agreement.onnx_probs(session, images.pixels),
                            policies,
                            sorted(policies.tenants),
                        )
                        for key, images in (("held_out", held_out), ("standins", standins))
                    },
                }
            )
        logger.info("measuring onnxruntime images/s of %d models", len(onnx_files))
        speed = agreement.measure_speed(
            onnx_files,
            parity_inputs(teacher.cfg, count=1)[0],
            threads=args.threads,
            seconds=args.speed_seconds,
            rounds=args.speed_rounds,
        )
    for row in rows:
        mine = speed[row["triton_model"]]
        row["images_per_s"] = {str(b): round(v, 1) for b, v in mine.items()}
        row["speedup"] = {str(b): round(v / speed[UNPRUNED][b], 3) for b, v in mine.items()}
    result = _report(args, train, held_out, standins, unpruned_size, unpruned_sha, speed, rows)
    report.write_json(args.out / "pruning.json", result)
    report.plot(args.out / "pruning.png", rows)
    _log_summary(rows)
    return result


def _prune_and_distill(
    teacher: NsfwModel, ratio: float, train: ImageSet, args: argparse.Namespace
) -> tuple[NsfwModel, Size, DistillReport]:
    student = prune_filters(copy.deepcopy(teacher), ratio)
    size = measure(student)
    logger.info(
        "pruned %.0f%% of filters: %d parameters, %d MACs", ratio * 100, size.params, size.flops
    )
    cfg = DistillConfig(
        seconds=args.minutes * 60,
        max_steps=args.max_steps,
        batch=args.batch,
        seed=args.seed,
        progress=not args.no_progress,
    )
    distilled = distill(student, teacher, train, cfg)
    student.cfg = dataclasses.replace(
        teacher.cfg,
        name=pruned_name(ratio),
        source=(
            f"pruned from nsfwjs {teacher.cfg.nsfwjs_name} ({teacher.cfg.source}) at "
            f"{ratio:.0%} of filters (torch-pruning {tp.__version__}, L2 magnitude), distilled "
            f"for {distilled.steps} steps on {train.description} by python -m training.prune"
        ),
    )
    return student, size, distilled


def _export(
    model: NsfwModel, repo: Path, labelled: list[LabelledImage], labelled_source: str
) -> ExportReport:
    prototypes = compute_prototypes(model, labelled, labelled_source)
    exported = export_to_repository(model, repo, prototypes)
    logger.info(
        "exported %s to %s: max |Δprob| %.1e", model.cfg.name, repo, exported.max_probs_diff
    )
    return exported


def _report(
    args: argparse.Namespace,
    train: ImageSet,
    held_out: ImageSet,
    standins: ImageSet,
    unpruned: Size,
    unpruned_sha256: str,
    speed: dict[str, dict[int, float]],
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "model": BASE_MODEL,
        "method": (
            "torch-pruning MetaPruner, L2 magnitude importance, same ratio per layer, channels "
            "rounded to 8; the embedding convolution and dense head keep their outputs; batch "
            "norm statistics kept from the unpruned model; distilled: T^2 KL on the 5-class "
            "softmax (T=2) + 0.5 x relative embedding MSE, Adam (lr 1e-3), cosine learning "
            "rate over the time budget; "
            "images drawn with probability proportional to 0.25 + the unpruned model's "
            "hentai+porn+sexy probability"
        ),
        "distilled_on": train.description,
        "held_out": held_out.description,
        "standins": standins.description,
        "minutes_per_ratio": args.minutes,
        "seed": args.seed,
        "unpruned": {
            "params": unpruned.params,
            "flops": unpruned.flops,
            "backbone_sha256": unpruned_sha256,
            "images_per_s": {str(b): round(v, 1) for b, v in speed[UNPRUNED].items()},
        },
        "speed": {
            "threads": args.threads,
            "seconds_per_measurement": args.speed_seconds,
            "rounds": args.speed_rounds,
            "statistic": "median over rounds, models interleaved within each round",
        },
        "machine": {"platform": platform.platform(), "cpus": _cpus()},
        "versions": {
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "torch_pruning": tp.__version__,
            "numpy": np.__version__,
        },
        "pruned": rows,
    }


def _cpus() -> int | None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _log_summary(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        flips = row["held_out"]["action_flips"]["default"]
        logger.info(
            "%s: %.2fx params, %.2fx FLOPs, speed-up %.2fx (batch 1) %.2fx (batch 32), "
            "%d/%d action flips, mean KL %.4f",
            row["triton_model"],
            row["params_ratio"],
            row["flops_ratio"],
            row["speedup"]["1"],
            row["speedup"]["32"],
            flips["flips"],
            flips["images"],
            row["held_out"]["kl_mean"],
        )
