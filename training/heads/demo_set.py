"""A built-in demo set for tenant heads, drawn offline and deterministically from a seed.

    python -m training.heads.demo_set --out DIR [--seed 0] [--test-per-class 200]
        [--train-per-class 150] [--workers N] [--overwrite]

writes ``DIR/manifest.jsonl`` (the format ``training.heads.data`` reads, with ``split``,
``group`` and ``tenant`` filled in), the images under ``DIR/images/<split>/<label>/``,
``DIR/factors.jsonl`` (what each image was drawn with) and ``DIR/metadata.json`` (counts,
held-out factors, library versions, seed, and the share of QR codes OpenCV decodes).

Three categories, each a real moderation concern that a tenant might want to teach:

- ``qr_solicitation`` (platform-wide): scannable QR codes (``qrcode`` and ``segno``) carrying
  payment and contact links, on photos and on printed flyers, warped, blurred and recompressed;
- ``contact_overlay`` (tenant ``marketplace``): phone numbers, handles and URLs from ``faker``
  written over photos;
- ``payment_card`` (tenant ``tickets``): synthetic bank cards with a 16-digit number, warped
  onto photos.

Negatives (no label) are hard on purpose: barcodes, chessboards and QR-like mosaics, printed
pages, clip-art, plain photos and photos with harmless captions. Every image, whatever its
label, goes through the same backgrounds, sizes, blur and JPEG/PNG encoding, so none of those
gives the label away.

The test split holds out background photos and procedural textures, fonts and QR styles
(library, error correction, colours, quiet zone): none of them appears in train, so test
scores measure generalisation to new looks, not recall of seen ones. Nothing is downloaded;
the backgrounds are scikit-image's sample photos and generated textures.

These categories are synthetic: they prove the machinery (labelled data, heads, serving,
per-tenant visibility), not accuracy on real-world images, which needs real labelled data.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from faker import Faker
from PIL import features
from tqdm import tqdm

from consumer.errors import ConfigError
from training.heads.backgrounds import background, sample_photo
from training.heads.demo_negatives import NEGATIVE_SCENES, POSITIVE_SCENES
from training.heads.demo_plan import (
    CATEGORIES,
    DEMO_SET_VERSION,
    FACTORS,
    NAME,
    NEGATIVE_KINDS,
    NONE_FOLDER,
    PHOTO_SHARE,
    SPLITS,
    TENANTS,
    TEST,
    TRAIN,
    Drawn,
    Job,
    plan,
)
from training.heads.demo_scenes import (
    FAKER_LOCALES,
    Scene,
)
from training.heads.render import canvas_size, finish

logger = logging.getLogger(__name__)

_VERSIONED = (
    "pillow",
    "numpy",
    "qrcode",
    "segno",
    "faker",
    "python-barcode",
    "scikit-image",
    "opencv-python-headless",
)


class DemoSetError(ConfigError):
    """The demo set cannot be written where asked; the message says why."""


_faker: Faker | None = None


def _fake() -> Faker:
    # One per process: building a multi-locale Faker takes about 0.3 s; each image reseeds it.
    global _faker
    if _faker is None:
        _faker = Faker(list(FAKER_LOCALES))
    return _faker


def draw(job: Job, out: Path) -> Drawn:
    """Draw one image from its own seed, write it under ``out`` and describe it."""
    # A string seed is hashed with SHA-512, the same in every process and Python run.
    rng = random.Random(f"modstream-demo/{job.seed}/{job.split}/{job.kind}/{job.number}")
    factors = FACTORS[job.split]
    photos = [name for name in factors.backgrounds if name.startswith("photo:")]
    textures = [name for name in factors.backgrounds if name.startswith("procedural:")]
    backdrop = rng.choice(photos if rng.random() < PHOTO_SHARE else textures)
    fake = _fake()
    fake.seed_instance(rng.getrandbits(32))
    scene = Scene(rng, fake, factors, background(backdrop, canvas_size(rng), rng))
    (POSITIVE_SCENES | NEGATIVE_SCENES)[job.kind](scene)
    data, suffix = finish(scene.canvas, rng)
    path = f"{job.path}.{suffix}"
    target = out / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    # OpenCV reads back the test split's codes: the share it decodes is the realism check that
    # metadata.json reports (a check, not a filter: codes it misses stay in the set).
    checked = scene.payload is not None and job.split == "test"
    decoded = _qr_decodes(data, scene.payload) if checked and scene.payload else None
    return Drawn(
        job, path, backdrop, tuple(scene.fonts_used), scene.qr_style, scene.payload, decoded
    )


def _qr_decodes(data: bytes, payload: str) -> bool:
    """Whether OpenCV finds the code in the encoded image and reads ``payload`` from it."""
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    text, _points, _ = cv2.QRCodeDetector().detectAndDecode(pixels)
    return bool(text == payload)


def _init_worker() -> None:
    # One OpenCV thread per worker process: the processes already use every core.
    cv2.setNumThreads(1)


def _draw_all(jobs: Sequence[Job], out: Path, workers: int, progress: bool) -> Iterator[Drawn]:
    bar = tqdm(total=len(jobs), desc="demo set", unit="img", disable=not progress)
    try:
        if workers <= 1:
            _init_worker()
            for job in jobs:
                yield draw(job, out)
                bar.update()
            return
        with ProcessPoolExecutor(workers, initializer=_init_worker) as pool:
            # Results come back in job order, whatever finishes first: the output does not
            # depend on the number of workers.
            for drawn in pool.map(draw, jobs, [out] * len(jobs), chunksize=8):
                yield drawn
                bar.update()
    finally:
        bar.close()


def generate(
    out: Path,
    *,
    seed: int = 0,
    test_per_class: int = 200,
    train_per_class: int = 150,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Write the demo set to ``out`` and return its metadata.

    Raises DemoSetError when ``out`` holds anything but an earlier demo set (or one without
    ``overwrite``), and RenderError when a font or sample photo is missing.
    """
    if test_per_class < 1 or train_per_class < 1:
        raise DemoSetError("--test-per-class and --train-per-class must be at least 1")
    _prepare(out, overwrite)
    jobs = plan(seed, train_per_class, test_per_class)
    if workers is None:
        workers = min(4, len(os.sched_getaffinity(0)))
    if workers > 1:
        # Loaded once here, the photos and Faker's locales reach forked workers for free.
        _fake()
        for name in (*TRAIN.photos, *TEST.photos):
            sample_photo(name)
    drawn = list(_draw_all(jobs, out, workers, progress))
    rows = [_manifest_row(item) for item in drawn]
    (out / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (out / "factors.jsonl").write_text(
        "".join(json.dumps(_factor_row(item)) + "\n" for item in drawn)
    )
    info = _metadata(drawn, seed, test_per_class, train_per_class)
    (out / "metadata.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DemoSetError(f"{out} is a file; give a folder for the demo set")
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return
    meta = out / "metadata.json"
    try:
        earlier = json.loads(meta.read_text()).get("name") == NAME
    except (OSError, ValueError, AttributeError):
        earlier = False
    if not earlier:
        raise DemoSetError(f"{out} is not empty and holds no demo set; give an empty folder")
    if not overwrite:
        raise DemoSetError(f"{out} holds a demo set already; pass --overwrite to replace it")
    shutil.rmtree(out / "images", ignore_errors=True)
    for name in ("manifest.jsonl", "factors.jsonl", "metadata.json"):
        (out / name).unlink(missing_ok=True)


def _manifest_row(item: Drawn) -> dict[str, Any]:
    label = item.job.label
    return {
        "image": item.path,
        "label": label,
        "tenant": TENANTS[label] if label else None,
        "split": item.job.split,
        "group": item.background,
    }


def _factor_row(item: Drawn) -> dict[str, Any]:
    return {
        "image": item.path,
        "kind": item.job.kind,
        "background": item.background,
        "fonts": list(item.fonts),
        "qr_style": item.qr_style,
        "payload": item.payload,
        "qr_decoded": item.decoded,
    }


def _metadata(
    drawn: Sequence[Drawn], seed: int, test_per_class: int, train_per_class: int
) -> dict[str, Any]:
    counts: dict[str, dict[str, int]] = {}
    kinds: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        items = [d for d in drawn if d.job.split == split]
        labels = Counter(d.job.label or NONE_FOLDER for d in items)
        counts[split] = {name: labels[name] for name in (*CATEGORIES, NONE_FOLDER)}
        negatives = Counter(d.job.kind for d in items if d.job.label is None)
        kinds[split] = {name: negatives[name] for name in NEGATIVE_KINDS}
    codes = [d.decoded for d in drawn if d.decoded is not None]
    return {
        "name": NAME,
        "note": (
            "Synthetic categories: they prove the machinery, not accuracy on real-world images."
        ),
        "demo_set_version": DEMO_SET_VERSION,
        "seed": seed,
        "train_per_class": train_per_class,
        "test_per_class": test_per_class,
        "categories": [{"name": name, "tenant": TENANTS[name]} for name in CATEGORIES],
        "counts": counts,
        "negative_kinds": kinds,
        "held_out": {
            split: {
                "backgrounds": list(FACTORS[split].backgrounds),
                "fonts": list(FACTORS[split].fonts),
                "qr_styles": [asdict(style) for style in FACTORS[split].qr_styles],
            }
            for split in SPLITS
        },
        "qr_decode": {
            "split": "test",
            "detector": "cv2.QRCodeDetector",
            "codes": len(codes),
            "decoded": sum(codes),
            "share": round(sum(codes) / len(codes), 3) if codes else 0.0,
        },
        "versions": _versions(),
    }


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for dist in _VERSIONED:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    for feature in ("freetype2", "jpg", "zlib"):
        versions[feature] = features.version(feature)
    return versions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.heads.demo_set",
        description="Write the built-in demo set for tenant heads (synthetic, deterministic).",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write the set into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--train-per-class", type=int, default=150)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: cores)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier demo set")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    started = time.perf_counter()
    try:
        info = generate(
            args.out,
            seed=args.seed,
            test_per_class=args.test_per_class,
            train_per_class=args.train_per_class,
            workers=args.workers,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except ConfigError as exc:
        sys.stderr.write(f"demo set failed: {exc}\n")
        return 2
    for split in SPLITS:
        counts = ", ".join(f"{name} {count}" for name, count in info["counts"][split].items())
        logger.info("%s: %s", split, counts)
    qr = info["qr_decode"]
    logger.info(
        "QR codes of the test split that OpenCV decodes: %d of %d (%.0f%%)",
        qr["decoded"],
        qr["codes"],
        100 * qr["share"],
    )
    logger.info("wrote %s in %.1f s", args.out / "manifest.jsonl", time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
