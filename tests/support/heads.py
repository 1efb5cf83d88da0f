"""Heads for serving tests: QR-code composites on photos, embedded by the served backbone, and a
closed-form cosine head between the two class means. Enough to prove the serving machinery;
the trainer's own heads are tested in tests/unit/training and tests/integration."""

from __future__ import annotations

import io
import random

import numpy as np
import numpy.typing as npt
import qrcode

from bench.samples import photo_image
from consumer.moderation.heads import HeadCategory
from training.heads.trained import TrainedHeads

TRAIN_PHOTOS = ("astronaut", "rocket", "camera", "horse")
HELD_OUT_PHOTOS = ("coffee", "chelsea")


def qr_composite(photo: str, seed: int, with_qr: bool = True) -> bytes:
    """A crop of ``photo`` (with a scannable payment QR code pasted in when ``with_qr``)."""
    rng = random.Random(seed)
    base = photo_image(photo).resize((448, 448))
    left, top = rng.randint(0, 96), rng.randint(0, 96)
    image = base.crop((left, top, left + 352, top + 352))
    if with_qr:
        code = qrcode.make(f"https://pay.example/{rng.randrange(10**9)}").get_image()
        side = rng.randint(150, 230)
        corner = (rng.randint(0, 352 - side), rng.randint(0, 352 - side))
        image.paste(code.convert("RGB").resize((side, side)), corner)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=rng.randint(60, 95))
    return out.getvalue()


def cosine_head(
    positives: npt.NDArray[np.float32], negatives: npt.NDArray[np.float32], sharpness: float = 10.0
) -> tuple[npt.NDArray[np.float32], float]:
    """w·unit(x) + b separating the two class means at the midpoint of their projections."""

    def unit(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        result: npt.NDArray[np.float32] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return result

    direction = unit(positives).mean(0) - unit(negatives).mean(0)
    direction /= np.linalg.norm(direction)
    low, high = (unit(negatives) @ direction).mean(), (unit(positives) @ direction).mean()
    scale = sharpness / max(float(high - low), 1e-6)
    weight: npt.NDArray[np.float32] = (direction * scale).astype(np.float32)
    return weight, float(-scale * (low + high) / 2)


def heads_of(
    columns: list[tuple[HeadCategory, npt.NDArray[np.float32], float]],
    backbone: str,
    backbone_sha256: str,
) -> TrainedHeads:
    return TrainedHeads(
        categories=tuple(category for category, _, _ in columns),
        weight=np.stack([weight for _, weight, _ in columns], axis=1).astype(np.float32),
        bias=np.array([bias for _, _, bias in columns], dtype=np.float32),
        normalize=np.ones(len(columns), dtype=np.bool_),
        backbone=backbone,
        backbone_sha256=backbone_sha256,
    )
