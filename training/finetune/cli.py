"""``python -m training.finetune``: fine-tune the last blocks with the heads, compare, export.

    python -m training.finetune --data DIR --out bench/results [--blocks 2] [--minutes 8]
                                [--seed S] [--name finetune] [--export --repo triton_repo]

``DIR`` is a labelled set as ``training.heads.data`` reads it, with ``train`` and ``test``
splits (the demo set: ``python -m training.heads.demo_set --out DIR``). Writes
``NAME.json`` and ``NAME.png`` under ``--out``. With ``--export``, the tuned backbone
becomes ``<repo>/nsfw_mobilenet_v2_tuned`` (parity-checked ONNX, new sha256) only when
fine-tuning wins; otherwise nothing is exported and the log says so. Bad input exits 2 with
one line.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from consumer.errors import ConfigError
from training.finetune.export import TUNED_NAME, builtin_prototypes, export_tuned, tuned_model
from training.finetune.features import cached_activations
from training.finetune.joint import JointConfig
from training.finetune.report import plot, write_json
from training.finetune.run import DIFFERENCE, Inputs, compare_methods
from training.finetune.split import MAX_BLOCKS, SplitBackbone, load_split
from training.heads.data import load_dataset
from training.heads.embed import TrainingFailed
from training.heads.train import TEST, TRAIN, categories_of
from training.nsfwjs.archive import TARBALL_SHA256, NsfwjsArchive, default_cache_dir, fetch_tarball
from training.nsfwjs.errors import ImportFailed

logger = logging.getLogger(__name__)

DRIFT_IMAGES = (Path("tests/fixtures/nsfwjs/images"), Path("bench/samples/standins"))
DRIFT_PATTERNS = ("*_224.png", "*.png")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.finetune", description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="labelled set (train + test)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--blocks", type=int, default=2, help=f"1 to {MAX_BLOCKS}")
    parser.add_argument("--minutes", type=float, default=8.0, help="time box for training")
    parser.add_argument("--epochs", type=int, default=JointConfig.epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draws", type=int, default=1000, help="bootstrap draws")
    parser.add_argument(
        "--export", action="store_true", help="export the tuned backbone if it wins"
    )
    parser.add_argument(
        "--name", default="finetune", help="report file stem: NAME.json and NAME.png"
    )
    parser.add_argument("--repo", type=Path, default=Path("triton_repo"))
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--activations", type=Path, default=Path(".cache/finetune"))
    return parser


def drift_images() -> list[tuple[str, bytes]]:
    """The nsfwjs reference fixtures and the stand-ins, where this checkout has them."""
    found: list[tuple[str, bytes]] = []
    for folder, pattern in zip(DRIFT_IMAGES, DRIFT_PATTERNS, strict=True):
        if not folder.is_dir():
            logger.warning("no drift images at %s (run from the repository root)", folder)
            continue
        found.extend(
            (f"{folder.name}/{p.name}", p.read_bytes()) for p in sorted(folder.glob(pattern))
        )
    return found


def prepare(args: argparse.Namespace, backbone: SplitBackbone) -> tuple[Inputs, dict[str, Any]]:
    rows = load_dataset(args.data)
    categories = tuple(
        c.name for c in categories_of([r.labels for r in rows], [r.tenant for r in rows])
    )
    parts = {name: [r for r in rows if r.split == name] for name in (TRAIN, TEST)}
    if not parts[TRAIN] or not parts[TEST]:
        raise TrainingFailed(
            f"{args.data}: needs rows with split train and split test (has "
            f"{len(parts[TRAIN])} and {len(parts[TEST])}); the comparison uses the given split"
        )
    if not categories:
        raise TrainingFailed(f"{args.data}: no labelled categories")
    drift = drift_images()
    images = (
        [r.image for r in parts[TRAIN]] + [r.image for r in parts[TEST]] + [d for _, d in drift]
    )
    sources = (
        [r.source for r in parts[TRAIN]] + [r.source for r in parts[TEST]] + [n for n, _ in drift]
    )
    activations = cached_activations(
        backbone, images, sources, cache_dir=args.activations, model_key=TARBALL_SHA256
    )
    n_train, n_test = len(parts[TRAIN]), len(parts[TEST])

    def labels(part: str) -> np.ndarray[Any, np.dtype[np.bool_]]:
        return np.array([[c in r.labels for c in categories] for r in parts[part]], dtype=bool)

    inputs = Inputs(
        categories=categories,
        train=activations[:n_train],
        train_labels=labels(TRAIN),
        test=activations[n_train : n_train + n_test],
        test_labels=labels(TEST),
        test_groups=tuple(r.group for r in parts[TEST]),
        drift=activations[n_train + n_test :],
        drift_names=tuple(n for n, _ in drift),
    )
    dataset = {
        "path": str(args.data),
        "synthetic_note": "synthetic categories prove the machinery, not real-world accuracy",
        "categories": list(categories),
        "train_images": n_train,
        "test_images": n_test,
        "test_groups": len(set(inputs.test_groups)),
        "train_positives": dict(zip(categories, map(int, inputs.train_labels.sum(0)), strict=True)),
        "test_positives": dict(zip(categories, map(int, inputs.test_labels.sum(0)), strict=True)),
    }
    return inputs, dataset


def _run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.minutes <= 0 or args.epochs < 1 or args.draws < 10:
        raise TrainingFailed("--minutes must be > 0, --epochs >= 1 and --draws >= 10")
    if not re.fullmatch(r"finetune[A-Za-z0-9_-]*", args.name):
        raise TrainingFailed(
            f"--name {args.name!r} must start with 'finetune' (letters, digits, _ or -)"
        )
    if not args.data.exists():
        raise TrainingFailed(f"--data {args.data}: no such file or folder")
    if not 1 <= args.blocks <= MAX_BLOCKS:
        raise TrainingFailed(f"--blocks must be between 1 and {MAX_BLOCKS}, not {args.blocks}")
    archive = NsfwjsArchive.open(fetch_tarball(args.cache_dir))
    backbone = load_split(archive, args.blocks)
    inputs, dataset = prepare(args, backbone)
    cfg = JointConfig(epochs=args.epochs, seconds=args.minutes * 60, seed=args.seed)
    report, _ = compare_methods(backbone, inputs, cfg, draws=args.draws)
    wins = report["finetune_wins"]
    export: dict[str, Any] = {"requested": bool(args.export), "exported": False}
    if args.export and wins:
        model = tuned_model(backbone)
        done = export_tuned(model, args.repo, builtin_prototypes(model))
        export.update(
            exported=True,
            model=done.folder.name,
            sha256=done.sha256,
            max_probs_diff=done.report.max_probs_diff,
            max_embedding_diff=done.report.max_embedding_diff,
        )
    elif args.export:
        logger.info(
            "fine-tuning did not win (interval of %s not above 0): nothing exported", DIFFERENCE
        )
    full = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": args.seed,
        "dataset": dataset,
        "backbone": {
            "model": "nsfw_mobilenet_v2",
            "tuned_model": f"nsfw_{TUNED_NAME}",
            "tarball_sha256": TARBALL_SHA256,
            "blocks": backbone.blocks,
            "stem_output": backbone.boundary,
            "tuned_parameters": sum(p.numel() for p in backbone.tuned_parameters()),
        },
        **report,
        "decision": {
            "rule": f"export only if the paired image-bootstrap 95% interval of {DIFFERENCE} "
            "macro PR-AUC lies above 0",
            "finetune_wins": wins,
            **export,
        },
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    json_path = write_json(full, args.out, args.name)
    plot(full, args.out, args.name)
    diff = report["results"]["differences"][DIFFERENCE]
    logger.info(
        "macro PR-AUC difference %s: %.3f [%.3f, %.3f]; fine-tuning %s; report %s",
        DIFFERENCE,
        diff["value"]["macro"],
        diff["image_bootstrap"]["macro"]["low"],
        diff["image_bootstrap"]["macro"]["high"],
        "wins" if wins else "does not win",
        json_path,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return _run(args)
    except (ConfigError, ImportFailed) as exc:
        message = " ".join(str(exc).split())
        sys.stderr.write(f"fine-tuning failed: {message}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
