"""Unlabelled images for distillation, a held-out set for agreement, and the augmentations.

Distillation sees the demo set's ``train`` split, the built-in prototype photos (with the
random crops, flips and re-encodes of ``training.prototypes``) and clip-art seeds
``0 .. 47``. The held-out set is disjoint from all of those: the demo set's ``test`` split,
the photos the prototypes leave out (chelsea, coffee) and clip-art from seed 10 000 on. The
bench stand-ins (benign photos perturbed to fool the unpruned model) are a third, separate
set: they say whether the pruned model would still be fooled, not how often it agrees.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812

from bench.samples import STANDINS_DIR, photo_image
from training.nsfwjs.errors import ImportFailed
from training.prototypes import (
    BUILTIN_DRAWINGS,
    HELD_OUT_DRAWING_SEED,
    HELD_OUT_PHOTOS,
    IMAGE_SUFFIXES,
    LabelledImage,
    builtin_labelled_set,
    clipart,
    decoded,
    encode,
)

logger = logging.getLogger(__name__)

HELD_OUT_DRAWINGS = 100


@dataclass(frozen=True)
class ImageSet:
    """uint8 NHWC images at the model's input size, and what they are."""

    pixels: npt.NDArray[np.uint8]
    description: str

    def __len__(self) -> int:
        return int(self.pixels.shape[0])


def _folder_images(folder: Path) -> list[LabelledImage]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return [LabelledImage("unlabelled", str(path), path.read_bytes()) for path in files]


def _demo_split(demo_set: Path, split: str, limit: int | None) -> list[LabelledImage]:
    folder = demo_set / "images" / split
    if not folder.is_dir():
        raise ImportFailed(
            f"{folder}: no demo set split here; make one with `python -m training.heads.demo_set` "
            "or pass --demo-set"
        )
    images = _folder_images(folder)
    if limit is not None:
        images = random.Random(0).sample(images, min(limit, len(images)))
    return images


def distillation_set(demo_set: Path, size: int, limit: int | None = None) -> ImageSet:
    """The images the student learns from (``limit`` caps the demo images, for tests)."""
    images = _demo_split(demo_set, "train", limit)
    if limit is None:
        images += builtin_labelled_set()
    pixels = decoded(images, size)
    return ImageSet(
        pixels,
        f"{len(images)} images: demo set train split ({demo_set}), scikit-image photos "
        f"with crops/flips/JPEG re-encodes, clip-art seeds 0-{BUILTIN_DRAWINGS - 1}",
    )


def held_out_set(demo_set: Path, size: int, limit: int | None = None) -> ImageSet:
    """Images never used for distillation (``limit`` caps the demo images, for tests)."""
    images = _demo_split(demo_set, "test", limit)
    drawings = HELD_OUT_DRAWINGS if limit is None else 4
    images += [
        LabelledImage("safe", f"skimage:{name}", encode(photo_image(name), "JPEG", quality=90))
        for name in HELD_OUT_PHOTOS
    ]
    images += [
        LabelledImage("safe_drawing", f"clipart:{seed}", encode(clipart(seed)))
        for seed in range(HELD_OUT_DRAWING_SEED, HELD_OUT_DRAWING_SEED + drawings)
    ]
    demo = len(images) - len(HELD_OUT_PHOTOS) - drawings
    return ImageSet(
        decoded(images, size),
        f"{len(images)} images: demo set test split ({demo}), scikit-image "
        f"{' and '.join(HELD_OUT_PHOTOS)}, clip-art seeds {HELD_OUT_DRAWING_SEED}-"
        f"{HELD_OUT_DRAWING_SEED + drawings - 1}",
    )


def standin_set(size: int) -> ImageSet:
    """The bench stand-ins, decoded as the consumer would."""
    images = _folder_images(STANDINS_DIR)
    return ImageSet(decoded(images, size), f"{len(images)} bench stand-ins ({STANDINS_DIR.name})")


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop (50-100% of each side) resized back, horizontal flip, brightness and
    contrast jitter: float NHWC in [0, 1] in, the same shape out."""
    n, height, width, _ = batch.shape
    nchw = batch.permute(0, 3, 1, 2)
    out = torch.empty_like(nchw)
    for index in range(n):
        scale = 0.5 + 0.5 * float(torch.rand((), generator=generator))
        crop_h, crop_w = max(1, int(height * scale)), max(1, int(width * scale))
        top = int(torch.randint(0, height - crop_h + 1, (), generator=generator))
        left = int(torch.randint(0, width - crop_w + 1, (), generator=generator))
        crop = nchw[index : index + 1, :, top : top + crop_h, left : left + crop_w]
        image = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=True)
        if float(torch.rand((), generator=generator)) < 0.5:
            image = image.flip(-1)
        brightness = 0.8 + 0.4 * float(torch.rand((), generator=generator))
        contrast = 0.8 + 0.4 * float(torch.rand((), generator=generator))
        mean = image.mean()
        out[index] = ((image - mean) * contrast + mean * brightness).clamp(0.0, 1.0)[0]
    return out.permute(0, 2, 3, 1).contiguous()
