"""``python -m training.adapt``: adapt the backbone's last blocks, probe, measure drift, decide.

    python -m training.adapt --data DIR --out bench/results [--images DIR] [--steps N]
                             [--resume] [--skip-step-a] [--export --repo triton_repo]
    torchrun --nproc_per_node 2 -m training.adapt --data DIR --out bench/results

``--data`` is a labelled set with train and test splits (the demo set: ``python -m
training.heads.demo_set --out DIR``); its train images, labels unused, are the unlabelled
images unless ``--images`` names a folder. Every process trains; rank 0 alone probes, reports
and exports. The adapted model is accepted when the probe's macro PR-AUC improves (the paired
95% interval of the difference above 0) and the drift stays within the bound of
:mod:`training.adapt.drift`; only then does ``--export`` write ``nsfw_mobilenet_v2_adapted``.
Bad input exits 2 with one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
from torch import Tensor

from bench.samples import STANDINS_DIR
from training.adapt import data, drift, probe, report
from training.adapt.split import Prefix, Suffix, reestimate_batch_norm, split
from training.adapt.train import AdaptFailed, TrainConfig, train_contrastive, world
from training.nsfwjs import load
from training.nsfwjs.errors import ImportFailed
from training.nsfwjs.models import NsfwModel

logger = logging.getLogger(__name__)

MODEL = "mobilenet_v2"
ADAPTED = "mobilenet_v2_adapted"
BATCH = 32


def features_of(prefix: Prefix, images: Tensor, device: torch.device) -> Tensor:
    """The prefix's output for un-augmented images, batch by batch, kept on the CPU."""
    out = []
    with torch.no_grad():
        for start in range(0, len(images), BATCH):
            chunk = images[start : start + BATCH].to(device, torch.float32) / 255.0
            out.append(prefix(chunk).cpu())
    return torch.cat(out)


def embeddings(suffix: Suffix, features: Tensor, device: torch.device) -> npt.NDArray[np.float32]:
    with torch.no_grad():
        rows = [
            suffix(features[s : s + BATCH].to(device))[1].cpu()
            for s in range(0, len(features), BATCH)
        ]
    return torch.cat(rows).numpy()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.adapt", description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="labelled set with train/test")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--images", type=Path, help="unlabelled images (default: --data train)")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--batch", type=int, default=TrainConfig.global_batch, help="global")
    parser.add_argument("--checkpoint", type=Path, default=Path(".cache/adapt/checkpoint.pt"))
    parser.add_argument("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--policy", type=Path, default=Path("policies/default.yaml"))
    parser.add_argument("--reference", type=Path, default=Path("tests/fixtures/nsfwjs/images"))
    parser.add_argument("--standins", type=Path, default=STANDINS_DIR)
    parser.add_argument(
        "--skip-step-a",
        action="store_true",
        help="ablation: SimCLR on the original BatchNorm statistics",
    )
    parser.add_argument("--export", action="store_true", help="export if accepted")
    parser.add_argument("--repo", type=Path, default=Path("triton_repo"))
    return parser


def _stage(
    name: str,
    suffix: Suffix,
    probed: data.Probe,
    feats: dict[str, Tensor],
    unadapted: npt.NDArray[np.float32],
    model: NsfwModel,
    shots: drift.DriftSet,
    policies: dict[str, drift.Thresholds],
    device: torch.device,
) -> tuple[dict[str, Any], npt.NDArray[np.float64], dict[str, Any]]:
    """Probe scores and drift of the model as it stands now."""
    categories = len(probed.classes) - 1
    scores = probe.fit_predict(
        embeddings(suffix, feats["train"], device),
        probed.train_labels,
        embeddings(suffix, feats["test"], device),
        len(probed.classes),
    )
    found = probe.evaluate(probed.test_labels, scores, categories)
    moved = drift.measure(unadapted, drift.probs_of(model, shots.pixels), shots, model, policies)
    logger.info(
        "%s: probe macro PR-AUC %.4f, accuracy %.4f; drift max |Δprob| %.4f",
        name,
        found["macro_pr_auc"]["value"],
        found["accuracy"]["value"],
        moved["max_abs_delta"],
    )
    return found, scores, moved


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    """The whole adaptation; the report on rank 0, None on the others."""
    rank, size = world()
    device = torch.device(
        f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    )
    timings: dict[str, float] = {}
    started = time.perf_counter()
    # The labelled set first: a bad set should fail before the model loads.
    labelled = data.labelled(args.data)
    model = load(MODEL).to(device)
    size_px = model.cfg.input_size
    probed = data.probe_set(labelled, size_px, str(args.data))
    unlabelled = (
        probed.train
        if args.images is None
        else data.decode_all(data.folder_images(args.images), size_px, str(args.images))
    )
    shots = drift.drift_images(args.reference, args.standins, size_px)
    # Before anything adapts it: the baseline every drift is measured against.
    unadapted = drift.probs_of(model, shots.pixels)
    policies = drift.policy_thresholds(args.policy)
    bound = drift.threshold_gap(policies) / 2
    timings["load_seconds"] = time.perf_counter() - started

    prefix, suffix = split(model)
    mark = time.perf_counter()
    feats = {"train": features_of(prefix, probed.train, device)}
    feats["test"] = features_of(prefix, probed.test, device)
    feats["unlabelled"] = (
        feats["train"] if args.images is None else features_of(prefix, unlabelled, device)
    )
    timings["prefix_seconds"] = time.perf_counter() - mark
    timings["prefix_images_per_second"] = (
        sum(len(f) for f in feats.values()) / timings["prefix_seconds"]
    )

    stages: dict[str, tuple[dict[str, Any], npt.NDArray[np.float64], dict[str, Any]]] = {}
    stage_args = (probed, feats, unadapted, model, shots, policies, device)
    if rank == 0:
        stages["before"] = _stage("before", suffix, *stage_args)
    if not args.skip_step_a:
        mark = time.perf_counter()
        reestimate_batch_norm(suffix, feats["unlabelled"].to(device))
        timings["step_a_seconds"] = time.perf_counter() - mark
        if rank == 0:
            stages["step_a"] = _stage("step A", suffix, *stage_args)

    cfg = TrainConfig(
        steps=args.steps,
        global_batch=args.batch,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
    )
    trained = train_contrastive(
        prefix,
        suffix,
        unlabelled,
        cfg,
        args.checkpoint,
        embedding_dim=model.cfg.embedding_dim,
        resume=args.resume,
        device=device,
    )
    if rank != 0:
        return None
    stages["step_b"] = _stage("step B", suffix, *stage_args)

    categories = len(probed.classes) - 1
    labels = probed.test_labels
    changes = {
        key: probe.paired_difference(labels, stages["before"][1], stages[key][1], categories)
        for key in ("step_a", "step_b")
        if key in stages
    }
    gain = changes["step_b"]
    drift_ok, drift_why = drift.within(stages["step_b"][2], bound)
    improved = gain["macro_pr_auc"]["low"] > 0
    accepted = improved and drift_ok
    why = (
        f"probe macro PR-AUC change {gain['macro_pr_auc']['value']:+.4f} "
        f"[{gain['macro_pr_auc']['low']:+.4f}, {gain['macro_pr_auc']['high']:+.4f}]"
        f"{' (improved)' if improved else ' (interval not above 0: no improvement shown)'}; "
        f"drift: {drift_why}"
    )
    return {
        "model": MODEL,
        "adapted_name": ADAPTED,
        "data": str(args.data),
        "unlabelled_images": len(unlabelled),
        "unlabelled_source": str(args.images or f"{args.data} (train split, labels unused)"),
        "probe_classes": list(probed.classes),
        "probe_train_images": len(probed.train),
        "probe_test_images": len(probed.test),
        "cut_node": prefix.cut,
        "trainable_parameters": sum(p.numel() for p in suffix.parameters() if p.requires_grad),
        "config": dataclasses.asdict(cfg),
        "world_size": size,
        "probe": {key: value[0] for key, value in stages.items()},
        "probe_change": changes,
        "step_a_applied": not args.skip_step_a,
        "drift_bound": {
            "max_abs_delta": bound,
            "why": "half the smallest gap between two thresholds of one category in "
            f"{args.policy}; also no top-class change and no policy action change",
        },
        "drift": {key: value[2] for key, value in stages.items() if key != "before"},
        "decision": {"accepted": accepted, "decides_on": "step_b", "why": why},
        "training": {
            **dataclasses.asdict(trained),
            "losses": [round(v, 4) for v in trained.losses],
        },
        "timings": {**timings, "total_seconds": time.perf_counter() - started},
        "_model": model,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world()[1]))
    torch.manual_seed(args.seed)
    try:
        if args.steps < 1 or args.batch < 2:
            raise AdaptFailed(
                f"--steps must be >= 1 and --batch >= 2, got {args.steps}, {args.batch}"
            )
        found = run(args)
        if found is not None:
            model: NsfwModel = found.pop("_model")
            if args.export and found["decision"]["accepted"]:
                from training.adapt.export import export_adapted

                found["export"] = export_adapted(model, args.repo, ADAPTED)
            elif args.export:
                logger.info("not exported: %s", found["decision"]["why"])
            report.write_json(args.out / "adaptation.json", found)
            report.plot(args.out / "adaptation.png", found)
            logger.info(
                "%s: %s",
                "accepted" if found["decision"]["accepted"] else "rejected",
                found["decision"]["why"],
            )
    except (AdaptFailed, ImportFailed) as exc:
        sys.stderr.write(f"adaptation failed: {exc}\n")
        return 2
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0
