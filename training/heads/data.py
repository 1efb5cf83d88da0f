"""Labelled images for tenant heads: a folder per category, or a JSONL manifest.

Folder form::

    DIR/<category>/*.jpg|jpeg|png|webp|gif|bmp|tif|tiff
    DIR/none/...  or  DIR/negative/...        negatives (no label)
    DIR/<category>/<group>/*.jpg              images sharing a group (e.g. crops of one photo)

An image directly in a category folder is a group of its own; images in a sub-folder share
the sub-folder's name as their group, across categories. Hidden files (``.DS_Store``) are
not data and are passed over; any other file that is not an image is a bad row.

Manifest form (``manifest.jsonl``), one JSON object per line::

    {"image": "imgs/a.jpg", "label": "qr_solicitation", "tenant": "shop", "split": "train",
     "group": "beach"}

``image`` is a path relative to the manifest's folder (not leaving it) or an http(s) URL;
``label`` is a category name, a list of them (multi-label) or null / [] for a negative, and
must be given; ``tenant``, ``split`` (train, val or test) and ``group`` (default: the image
itself) are optional. Blank lines are allowed; other fields are not.

Every image is read, URLs through the service's own fetcher (``ImageFetcher``, so the egress
guard refuses private hosts), and decoded with the consumer's ``decode_image`` and limits: a
set that loads is a set the service can score. Nothing is skipped. Every bad row is
collected and the load fails with one ``DatasetError`` whose one-line message names the
first rows and the count; ``problems`` holds them all. Each problem names its row::

    manifest.jsonl:3: not valid JSON (Expecting ',' delimiter at column 14)
    manifest.jsonl:4: unknown field 'labels' (a row has image, label, tenant, split, group)
    manifest.jsonl:5: 'label' is missing (null or [] marks a negative)
    manifest.jsonl:6: split 'dev' is not one of train, val, test
    manifest.jsonl:7: label 'Weapons' is not a category name (a lowercase letter, then ...)
    manifest.jsonl:8: label 'weapons' is not one of the categories given (...)
    manifest.jsonl:9: image 'x.jpg' not found
    manifest.jsonl:10: image 'y.jpg' does not decode (image_corrupt: ...)
    manifest.jsonl:11: image 'https://...' cannot be fetched (image_url_blocked: ...)
    DIR/Weapons: folder 'Weapons' is not a category name (a lowercase letter, then ...)

    python -m training.heads.data PATH [--categories a,b,c]

checks a set the way training loads it and prints its counts as JSON (exit 2: bad rows).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from consumer.errors import ConfigError
from consumer.imaging.fetch import ImageFetcher
from consumer.runtime.settings import ImagingSettings
from training.heads.folders import load_folder
from training.heads.labelled import LabelledImage
from training.heads.manifest import MANIFEST_NAME, load_manifest


def load_dataset(
    path: Path,
    *,
    categories: Iterable[str] | None = None,
    settings: ImagingSettings | None = None,
    fetcher: ImageFetcher | None = None,
) -> list[LabelledImage]:
    """Load a manifest (a ``.jsonl`` file, or a folder holding ``manifest.jsonl``) or else a
    folder per category. Raises DatasetError naming every bad row."""
    if path.is_file():
        return load_manifest(path, categories=categories, settings=settings, fetcher=fetcher)
    if (path / MANIFEST_NAME).is_file():
        return load_manifest(
            path / MANIFEST_NAME, categories=categories, settings=settings, fetcher=fetcher
        )
    return load_folder(path, categories=categories, settings=settings)


def summary(images: Sequence[LabelledImage]) -> dict[str, Any]:
    """Counts of a loaded set: images, negatives, per label, split, tenant; groups."""
    labels: Counter[str] = Counter(label for image in images for label in image.labels)
    return {
        "images": len(images),
        "negatives": sum(1 for image in images if not image.labels),
        "labels": dict(sorted(labels.items())),
        "splits": dict(sorted(Counter(image.split or "unset" for image in images).items())),
        "tenants": dict(sorted(Counter(image.tenant or "platform" for image in images).items())),
        "groups": len({image.group for image in images}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.heads.data",
        description="Check a labelled set (folder per category or JSONL manifest).",
    )
    parser.add_argument("path", type=Path, help="manifest.jsonl, or a folder")
    parser.add_argument("--categories", help="allowed category names, comma-separated")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        images = load_dataset(args.path, categories=args.categories)
    except ConfigError as exc:
        sys.stderr.write(f"labelled set refused: {exc}\n")
        return 2
    sys.stdout.write(json.dumps(summary(images), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
