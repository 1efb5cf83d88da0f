"""Deterministic fixture images for the nsfwjs parity test, at each model's input size.

    python training/nsfwjs/reference/make_images.py tests/fixtures/nsfwjs/images

PNG (lossless) and already at 224 and 299 pixels, so neither side resizes: the fixture tests
the networks, not two resize implementations.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from skimage import data

SIZES = (224, 299)


def _photo(load: Callable[[], Any]) -> Image.Image:
    return Image.fromarray(np.asarray(load())).convert("RGB")


def _logo_on_white() -> Image.Image:
    logo = Image.fromarray(np.asarray(data.logo())).convert("RGBA")  # type: ignore[no-untyped-call]
    white = Image.new("RGBA", logo.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, logo).convert("RGB")


def _cartoon() -> Image.Image:
    """A simple line drawing: face and body, flat colours, black outlines."""
    image = Image.new("RGB", (400, 400), (250, 250, 245))
    draw = ImageDraw.Draw(image)
    ink = (20, 20, 20)
    draw.ellipse((100, 60, 300, 260), outline=ink, width=6, fill=(255, 220, 120))
    draw.ellipse((150, 120, 180, 150), fill=ink)
    draw.ellipse((220, 120, 250, 150), fill=ink)
    draw.arc((140, 150, 260, 230), 20, 160, fill=ink, width=6)
    draw.rectangle((170, 260, 230, 360), outline=ink, width=6, fill=(90, 140, 220))
    return image


def _gradient() -> Image.Image:
    ramp = np.linspace(0, 255, 256)
    channels = [
        np.add.outer(ramp, ramp) / 2,
        np.tile(ramp, (256, 1)),
        np.tile(ramp[::-1, None], (1, 256)),
    ]
    return Image.fromarray(np.stack(channels, -1).astype(np.uint8))


def _noise() -> Image.Image:
    rng = np.random.default_rng(7)
    return Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))


def fixture_images() -> dict[str, Image.Image]:
    loaders: dict[str, Callable[[], Any]] = {
        "astronaut": data.astronaut,
        "coffee": data.coffee,
        "chelsea": data.chelsea,
        "rocket": data.rocket,
    }
    images = {name: _photo(load) for name, load in loaders.items()}
    images.update(logo=_logo_on_white(), cartoon=_cartoon(), gradient=_gradient(), noise=_noise())
    return images


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in fixture_images().items():
        for size in SIZES:
            resized = image.resize((size, size), Image.Resampling.LANCZOS)
            resized.save(folder / f"{name}_{size}.png")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
