"""The photos every phase sends: scikit-image's samples upscaled, with mild noise, as JPEG."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image

SAMPLE_PHOTOS: Final = ("astronaut", "coffee", "chelsea", "rocket")
JPEG_QUALITY: Final = 90
# Gaussian noise, in 8-bit levels, added to the upscaled photos: enough that the JPEGs are not
# trivially compressible, too little to see.
NOISE_SIGMA: Final = 3.0


@dataclass(frozen=True)
class BenchImage:
    """One generated photo as JPEG bytes."""

    name: str
    width: int
    height: int
    jpeg: bytes


def generate_images(megapixels: float, seed: int = 0) -> list[BenchImage]:
    """scikit-image's sample photos upscaled to about ``megapixels`` with noise, as JPEG."""
    from skimage import data

    rng = np.random.default_rng(seed)
    target = megapixels * 1e6
    images = []
    for name in SAMPLE_PHOTOS:
        photo = Image.fromarray(getattr(data, name)()).convert("RGB")
        scale = (target / (photo.width * photo.height)) ** 0.5
        size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
        upscaled = np.asarray(photo.resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
        noisy = upscaled + rng.normal(0.0, NOISE_SIGMA, upscaled.shape).astype(np.float32)
        out = io.BytesIO()
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(
            out, format="JPEG", quality=JPEG_QUALITY
        )
        images.append(BenchImage(name, size[0], size[1], out.getvalue()))
    return images
