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
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from consumer.errors import ConfigError
from training.heads import metrics, report
from training.heads.assemble import benign_mask, train_and_report
from training.heads.embed import Backbone, Embedded, TrainingFailed, embed_images
from training.heads.train import (
    LEARNING_SIZES,
    TEST,
    TRAIN,
    EmbeddedRows,
    Row,
    hashed_fraction,
)
from training.heads.trained import TrainedHeads

logger = logging.getLogger(__name__)

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

    splits = []
    for row in rows:
        if row.split in (TRAIN, TEST):
            splits.append(row.split)
        elif row.split == "val":
            splits.append(TRAIN)
        elif row.split is None:
            splits.append(TEST if hashed_fraction(f"{seed}/{row.group}") < test_fraction else TRAIN)
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
