"""``modstream train heads``: embed (cached), train, evaluate, report and optionally export.

    modstream train heads --data DIR_OR_MANIFEST [--repo triton_repo]
        [--backbone nsfw_mobilenet_v2] [--out bench/results] [--export]
    python -m training.heads train ...          the same command
    python -m training.heads report [--json bench/results/heads.json] [--card FILE]
                                                redraw plots and the model card from the JSON

Relative paths are taken from the current folder: run it from a clone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from consumer.errors import ConfigError
from training.heads import metrics, report
from training.heads.embed import Backbone, Embedded, TrainingFailed, embed_images
from training.heads.train import (
    LEARNING_SIZES,
    TEST,
    TRAIN,
    CategoryHead,
    EmbeddedRows,
    FitConfig,
    LearningCurves,
    Row,
    Trained,
    learning_curves,
    time_tenant_training,
    train_all,
)
from training.heads.trained import TrainedHeads

logger = logging.getLogger(__name__)

TENANT_CATEGORIES = 3
TENANT_LABELS = 100
"""The tenant-training benchmark: 3 categories x 100 labels per class, target 60 s."""
SPEED_SAMPLE = 64
"""Images embedded afresh to measure speed when the cache held (nearly) everything."""
BENIGN_PATTERN = r"(^|/)plain_photo[^/]*$"
"""Which unlabelled images are plain photos, matched against the image's manifest path or
file path (the demo set names them ``plain_photo-NNNN``)."""


@dataclass(frozen=True)
class TrainOptions:
    data: Path
    repo: Path = Path("triton_repo")
    backbone: str = "nsfw_mobilenet_v2"
    out: Path = Path("bench/results")
    card: Path | None = None
    """Model card whose heads block is regenerated; default ``<repo>/README.md``."""
    cache_dir: Path | None = Path(".cache/heads")
    export: bool = False
    threads: int = 2
    draws: int = 5
    sizes: tuple[int, ...] = LEARNING_SIZES
    benign: str = BENIGN_PATTERN
    seed: int = 0
    bootstrap_draws: int = metrics.BOOTSTRAP_DRAWS
    progress: bool = True


# ── data ──────────────────────────────────────────────────────────────────────────────────


def load_rows(data: Path) -> list[Row]:
    """Rows of a folder per category or a JSONL manifest (``training.heads.data``).

    Raises DatasetError (a ConfigError) naming the bad rows.
    """
    from training.heads.data import load_dataset

    return list(load_dataset(data))


def image_references(rows: Sequence[Row]) -> list[str]:
    """What each row's image is called: the manifest's ``image`` field for a manifest row
    (whose ``source`` is ``manifest.jsonl:LINE``), else the file path it was read from."""
    manifests: dict[str, list[str]] = {}
    found = []
    for row in rows:
        path, _, line = row.source.rpartition(":")
        if path and line.isdigit() and path.endswith(".jsonl"):
            if path not in manifests:
                try:
                    manifests[path] = Path(path).read_text(encoding="utf-8").splitlines()
                except OSError:
                    manifests[path] = []
            lines = manifests[path]
            number = int(line)
            if 0 < number <= len(lines):
                try:
                    found.append(str(json.loads(lines[number - 1])["image"]))
                    continue
                except (ValueError, KeyError, TypeError):
                    pass
        found.append(row.source)
    return found


def dataset_metadata(data: Path) -> dict[str, Any]:
    """``metadata.json`` beside the manifest (the demo set writes one), or nothing."""
    folder = data if data.is_dir() else data.parent
    try:
        found: dict[str, Any] = json.loads((folder / "metadata.json").read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def held_out_in_test(meta: dict[str, Any]) -> dict[str, list[str]]:
    """Factor values that appear only in the test split, by factor."""
    held = meta.get("held_out")
    if not isinstance(held, dict) or not {"train", "test"} <= held.keys():
        return {}

    def names(values: Sequence[Any]) -> list[str]:
        # Factors are plain names, or objects (QR styles) named by "id" or "name".
        return [
            str(v.get("id") or v.get("name") or v) if isinstance(v, dict) else str(v)
            for v in values
        ]

    return {
        factor: [v for v in names(values) if v not in set(names(held["train"].get(factor, [])))]
        for factor, values in held["test"].items()
    }


def resolve_splits(rows: Sequence[Row], test_fraction: float, seed: int) -> tuple[str, ...]:
    """Each row's split. ``val`` rows train (thresholds come from cross-validation on the
    train split, so no separate validation split is needed); rows without a split go to test
    by a seeded hash of their group, so a group (e.g. one background photo) never straddles
    the split.

    Raises TrainingFailed on any other split.
    """
    import hashlib

    splits = []
    for row in rows:
        if row.split in (TRAIN, TEST):
            splits.append(row.split)
        elif row.split == "val":
            splits.append(TRAIN)
        elif row.split is None:
            digest = hashlib.sha256(f"{seed}/{row.group}".encode()).digest()
            fraction = int.from_bytes(digest[:8], "big") / 2**64
            splits.append(TEST if fraction < test_fraction else TRAIN)
        else:
            raise TrainingFailed(f"{row.source}: split {row.split!r} is neither train nor test")
    return tuple(splits)


# ── the command ───────────────────────────────────────────────────────────────────────────


def train_command(options: TrainOptions) -> int:
    """Run the whole command; returns the exit status. Raises ConfigError (one line)."""
    started = time.perf_counter()
    rows = load_rows(options.data)
    backbone = Backbone.from_repo(options.repo, options.backbone)
    embedded = embed_images(
        [row.image for row in rows],
        backbone,
        cache_dir=options.cache_dir,
        threads=options.threads,
        progress=options.progress,
    )
    kept = [rows[i] for i in embedded.kept]
    data = EmbeddedRows(
        embeddings=embedded.embeddings,
        labels=tuple(row.labels for row in kept),
        tenants=tuple(row.tenant for row in kept),
        splits=resolve_splits(kept, 0.3, options.seed),
        sources=tuple(image_references(kept)),
        groups=tuple(row.group for row in kept),
    )
    speed = embedding_speed(embedded, [row.image for row in kept], backbone, options.threads)
    dataset = describe_dataset(options, data, dataset_metadata(options.data))
    dataset["refused_by_decode"] = len(embedded.rejected)
    dataset["refused_examples"] = [
        f"{rows[i].source}: {why}" for i, why in list(embedded.rejected.items())[:5]
    ]
    described = {
        "name": backbone.name,
        "file": _shown(backbone.path),
        "sha256": backbone.sha256,
        "input_size": backbone.input_size,
    }
    built, heads = train_and_report(data, options, backbone=described, dataset=dataset)
    built["timings"]["embedding"] = speed
    built["timings"]["total_seconds"] = round(time.perf_counter() - started, 3)
    card = options.card if options.card is not None else options.repo / "README.md"
    path = report.write_all(built, options.out, card, _shown(options.out / report.JSON_NAME))
    _say_results(built, path, card)
    if options.export:
        export(options.repo, heads)
    return 0


def train_and_report(
    data: EmbeddedRows,
    options: TrainOptions,
    *,
    backbone: dict[str, Any],
    dataset: dict[str, Any],
) -> tuple[dict[str, Any], TrainedHeads]:
    """Train, evaluate on the test split, draw learning curves and time tenant training.

    ``backbone`` needs ``name`` and ``sha256``. Returns the report (``timings.embedding``
    left for the caller) and the heads. Raises TrainingFailed when a split is empty.
    """
    if not data.split(TEST).any() or not data.split(TRAIN).any():
        raise TrainingFailed(f"{dataset['name']}: need images in both the train and test splits")
    cfg = FitConfig(seed=options.seed)
    trained = train_all(data, cfg, progress=options.progress)
    evaluations = evaluate_all(data, trained, options)
    learning_started = time.perf_counter()
    curves = learning_curves(
        data, trained, cfg, sizes=options.sizes, draws=options.draws, progress=options.progress
    )
    learning_seconds = time.perf_counter() - learning_started
    tenant_seconds, tenant_categories = time_tenant_training(
        data, trained, cfg, categories=TENANT_CATEGORIES, labels_per_class=TENANT_LABELS
    )
    built: dict[str, Any] = {
        "schema": report.SCHEMA,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": options.seed,
        "backbone": {**backbone, "embedding_dim": int(data.embeddings.shape[1])},
        "dataset": dataset,
        "method": method(cfg, options),
        "categories": {
            h.category.name: category_entry(h, evaluations[h.category.name]) for h in trained.heads
        },
        "learning_curves": curves_entry(curves),
        "timings": {
            "embedding": {},
            "training_seconds": round(trained.seconds, 3),
            "learning_curves_seconds": round(learning_seconds, 3),
            "tenant_training": {
                "categories": tenant_categories,
                "labels_per_class": TENANT_LABELS,
                "seconds": round(tenant_seconds, 3),
                "target_seconds": report.TENANT_TRAINING_TARGET_S,
                # Not measured unless there were 3 categories with 100 labels per class.
                "met": (
                    tenant_seconds <= report.TENANT_TRAINING_TARGET_S
                    if len(tenant_categories) >= TENANT_CATEGORIES
                    else None
                ),
                "threads": options.threads,
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
            },
        },
    }
    heads = trained.trained_heads(backbone["name"], backbone["sha256"], summary(built))
    return built, heads


def evaluate_all(
    data: EmbeddedRows, trained: Trained, options: TrainOptions
) -> dict[str, dict[str, Any]]:
    test = data.split(TEST)
    x = data.embeddings[test]
    benign = benign_mask(data, options.benign)[test]
    found = {}
    for head in trained.heads:
        y = data.target(head.category.name)[test]
        scores = head.head.scores(x)
        result = metrics.evaluate(
            y,
            scores,
            review_threshold=head.review_threshold,
            block_threshold=head.block_threshold,
            benign=benign,
            draws=options.bootstrap_draws,
            seed=options.seed,
        )
        result["pr_curve"] = metrics.curve_points(y, scores)
        found[head.category.name] = result
    return found


def embedding_speed(
    embedded: Embedded, images: Sequence[bytes], backbone: Backbone, threads: int
) -> dict[str, Any]:
    """Seconds per image of decode + backbone: from this run when it computed enough images,
    else from a fresh, uncached sample."""
    source = "this run"
    measured = embedded
    if embedded.computed < SPEED_SAMPLE:
        sample = images[:: max(1, len(images) // SPEED_SAMPLE)][:SPEED_SAMPLE]
        measured = embed_images(sample, backbone, cache_dir=None, threads=threads, progress=False)
        source = "a fresh uncached sample (this run found the rest in the cache)"
    per_image = measured.seconds_per_image
    return {
        "seconds_per_image": None if per_image is None else round(per_image, 5),
        "images_measured": measured.computed,
        "measured_on": source,
        "computed_this_run": embedded.computed,
        "cached_this_run": embedded.cached,
        "threads": threads,
        "batch": 32,
    }


def describe_dataset(
    options: TrainOptions, data: EmbeddedRows, meta: dict[str, Any]
) -> dict[str, Any]:
    train, test = data.split(TRAIN), data.split(TEST)
    unlabelled = np.array([not labels for labels in data.labels], dtype=bool)
    categories = {}
    for name in sorted({name for labels in data.labels for name in labels}):
        y = data.target(name)
        pairs = zip(data.tenants, data.labels, strict=True)
        owner = next(tenant for tenant, labels in pairs if name in labels)
        categories[name] = {
            "tenant": owner,
            "train_positives": int((y & train).sum()),
            "test_positives": int((y & test).sum()),
        }
    return {
        "name": str(meta.get("name") or options.data.name),
        "path": _shown(options.data),
        "note": meta.get("note"),
        # The demo set says so in its metadata; the model card then says what that means.
        "synthetic": "synthetic" in str(meta.get("note") or "").lower(),
        "images": {"train": int(train.sum()), "test": int(test.sum())},
        "unlabelled": {
            "train": int((unlabelled & train).sum()),
            "test": int((unlabelled & test).sum()),
        },
        "benign_photos_test": int((benign_mask(data, options.benign) & test).sum()),
        "benign_pattern": options.benign,
        "refused_by_decode": 0,
        "refused_examples": [],
        "categories": categories,
        "held_out_in_test": held_out_in_test(meta),
        # How to draw the same set again (the demo set records its seed, sizes and versions).
        "generator": {
            key: meta[key]
            for key in ("demo_set_version", "seed", "train_per_class", "test_per_class", "versions")
            if key in meta
        },
        "groups": {
            "train": len({g for g, s in zip(data.groups, data.splits, strict=True) if s == TRAIN}),
            "test": len({g for g, s in zip(data.groups, data.splits, strict=True) if s == TEST}),
        },
    }


def benign_mask(data: EmbeddedRows, pattern: str) -> npt.NDArray[np.bool_]:
    """Rows without any label whose source matches ``pattern``: the plain photos."""
    found = re.compile(pattern)
    return np.array(
        [
            not labels and bool(found.search(source))
            for labels, source in zip(data.labels, data.sources, strict=True)
        ],
        dtype=bool,
    )


def method(cfg: FitConfig, options: TrainOptions) -> dict[str, Any]:
    return {
        "selection": (
            "Platform heads are logistic regression on the standardised embedding. Each "
            "tenant head is the kind (logistic, prototype, pulled) with the best out-of-fold "
            f"PR-AUC in a {cfg.folds}-fold cross-validation on the train split, grouped by "
            "image group; test images never take part. Pulled heads start from the other "
            "platform head that best ranks the tenant's labels, or from the logistic fit on "
            "the same labels where there is none."
        ),
        "review_threshold": (
            "the score maximising F1 on the out-of-fold predictions of that cross-validation"
        ),
        "block_threshold": (
            "the lowest score whose out-of-fold precision reaches "
            f"{metrics.BLOCK_PRECISION_TARGET:.0%}, never below the review threshold; a head "
            "that never gets there has no block threshold and only sends images to review"
        ),
        "block_precision_target": metrics.BLOCK_PRECISION_TARGET,
        "intervals": (
            "Wilson score for precision, recall and the false-positive rate; a seeded "
            f"percentile bootstrap over test images, {options.bootstrap_draws} draws, for F1 "
            "and PR-AUC"
        ),
        "benign_photos": f"test images without any label whose path matches {options.benign!r}",
        "fit": {
            "l2": cfg.l2,
            "pull": cfg.pull,
            "calibration_l2": cfg.calibration_l2,
            "max_iter": cfg.max_iter,
            "folds": cfg.folds,
        },
    }


def category_entry(head: CategoryHead, evaluation: dict[str, Any]) -> dict[str, Any]:
    selection = head.selection
    return {
        "tenant": head.category.tenant,
        "head": head.head.kind,
        "normalize": head.head.normalize,
        "init": head.head.init,
        "cv_pr_auc": {
            k: None if v is None else round(v, 5) for k, v in selection.cv_pr_auc.items()
        },
        "cv_folds": selection.folds,
        "review_threshold": round(head.review_threshold, 6),
        "block_threshold": (
            None if head.block_threshold is None else round(head.block_threshold, 6)
        ),
        "train": {"positives": head.train_positives, "negatives": head.train_negatives},
        "test": evaluation,
    }


def curves_entry(curves: LearningCurves) -> dict[str, Any]:
    categories: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for name, points in curves.points.items():
        for point in points:
            entry = report.curve_summary(point.pr_auc)
            if entry["mean"] is None:
                continue
            categories.setdefault(name, {}).setdefault(point.kind, []).append(
                {"labels_per_class": point.labels_per_class, **entry}
            )
    return {
        "labels_per_class": list(curves.sizes),
        "draws": curves.draws,
        "metric": "test PR-AUC",
        "categories": categories,
    }


def summary(built: dict[str, Any]) -> dict[str, float]:
    """Held-out numbers per category for the heads descriptor."""
    found: dict[str, float] = {}
    for name, entry in built["categories"].items():
        test = entry["test"]
        values = {
            "precision": test["at_review"]["precision"]["value"],
            "recall": test["at_review"]["recall"]["value"],
            "f1": test["at_review"]["f1"]["value"],
            "pr_auc": test["pr_auc"]["value"],
            "benign_fpr": (test["benign_fpr_at_block"] or {}).get("value"),
            "review_threshold": entry["review_threshold"],
            "block_threshold": entry["block_threshold"],
        }
        found.update(
            {f"{name}.{k}": round(float(v), 6) for k, v in values.items() if v is not None}
        )
    return found


def export(repo: Path, heads: TrainedHeads) -> None:
    try:
        from training.heads.export import export_heads
    except ModuleNotFoundError as exc:
        if exc.name != "training.heads.export":
            raise
        logger.warning("not exported: training.heads.export is not in this checkout")
        return
    exported = export_heads(repo, heads)
    sys.stdout.write(f"exported heads version {exported.version} to {exported.path}\n")


def _shown(path: Path) -> str:
    """``path`` relative to the current folder when it is inside it, for stable reports."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def _say_results(built: dict[str, Any], path: Path, card: Path) -> None:
    for name, entry in built["categories"].items():
        test = entry["test"]
        sys.stdout.write(
            f"{name} ({entry['tenant'] or 'platform'}, {entry['head']}): "
            f"P {report.with_interval(test['at_review']['precision'])}  "
            f"R {report.with_interval(test['at_review']['recall'])}  "
            f"F1 {report.with_interval(test['at_review']['f1'])}  "
            f"PR-AUC {report.with_interval(test['pr_auc'])}\n"
        )
    sys.stdout.write(
        f"{report.tenant_timing_sentence(built)}\nwrote {path}, plots beside it, and {card}\n"
    )


# ── python -m training.heads ──────────────────────────────────────────────────────────────


def main(argv: Sequence[str] | None = None) -> int:
    """``train`` is ``modstream train heads``; ``report`` redraws from a heads.json."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["train"]:
        from consumer.cli import main as modstream

        return modstream(["train", "heads", *args[1:]])
    parser = argparse.ArgumentParser(prog="python -m training.heads", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    commands.add_parser("train", help="the same as modstream train heads")
    redraw = commands.add_parser("report", help="redraw plots and the model card from JSON")
    redraw.add_argument("--json", type=Path, default=Path("bench/results") / report.JSON_NAME)
    redraw.add_argument("--card", type=Path, default=Path("triton_repo/README.md"))
    parsed = parser.parse_args(args)
    try:
        built = report.read_json(parsed.json)
        report.write_all(built, parsed.json.parent, parsed.card, _shown(parsed.json))
    except ConfigError as exc:
        sys.stderr.write(f"python -m training.heads: {' '.join(str(exc).split())}\n")
        return 2
    sys.stdout.write(f"redrew plots beside {parsed.json} and the heads block of {parsed.card}\n")
    return 0
