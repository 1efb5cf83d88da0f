"""The images the adaptation reads: unlabelled ones to adapt on, labelled ones to probe with.

Every image is decoded by the consumer's own ``decode_image`` at the backbone's input size
with the service's default limits, so the adaptation sees pixels the way the service does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from consumer.errors import ConfigError, EventRejected
from consumer.imaging.decode import decode_image
from training.adapt.train import AdaptFailed
from training.heads.data import load_dataset
from training.heads.embed import default_limits
from training.heads.folders import IMAGE_SUFFIXES
from training.heads.labelled import LabelledImage

logger = logging.getLogger(__name__)

NEGATIVE = "none"


@dataclass(frozen=True)
class Probe:
    """The labelled demo set as a single-label problem: each category, or ``none``."""

    classes: tuple[str, ...]
    train: Tensor
    train_labels: npt.NDArray[np.int64]
    test: Tensor
    test_labels: npt.NDArray[np.int64]


def decode_all(blobs: Sequence[bytes], size: int, where: str) -> Tensor:
    """uint8 ``[N, size, size, 3]``; raises AdaptFailed naming the first image that fails."""
    limits = default_limits()
    pixels = []
    for index, blob in enumerate(blobs):
        try:
            pixels.append(decode_image(blob, size, limits).pixels)
        except EventRejected as exc:
            raise AdaptFailed(f"{where}: image {index} does not decode ({exc})") from exc
    return torch.from_numpy(np.stack(pixels))


def labelled(path: Path) -> list[LabelledImage]:
    try:
        return load_dataset(path)
    except ConfigError as exc:
        raise AdaptFailed(f"labelled set {path} refused: {exc}") from exc


def folder_images(folder: Path) -> list[bytes]:
    """Every image file under ``folder`` (recursively), in path order."""
    if not folder.is_dir():
        raise AdaptFailed(f"--images {folder} is not a folder")
    paths = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not paths:
        raise AdaptFailed(f"--images {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return [p.read_bytes() for p in paths]


def probe_set(images: Sequence[LabelledImage], size: int, where: str) -> Probe:
    """Train and test splits with one class per image; raises AdaptFailed when a split is
    missing or an image carries two labels."""
    multi = [image.source for image in images if len(image.labels) > 1]
    if multi:
        raise AdaptFailed(f"{where}: the probe needs one label per image; {multi[0]} has more")
    categories = sorted({label for image in images for label in image.labels})
    classes = (*categories, NEGATIVE)
    splits = {}
    for split in ("train", "test"):
        rows = [image for image in images if image.split == split]
        if not rows:
            raise AdaptFailed(f"{where}: no {split!r} split (the demo set has both)")
        labels = np.array([classes.index(next(iter(r.labels), NEGATIVE)) for r in rows])
        splits[split] = (decode_all([r.image for r in rows], size, where), labels)
    return Probe(classes, splits["train"][0], splits["train"][1], *splits["test"])
