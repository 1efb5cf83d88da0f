"""Backgrounds of the demo set: scikit-image's sample photos, cropped and jittered, and
procedural textures (gradients, noise, tiles, stripes, speckle), each from the seed it is given.
"""

from __future__ import annotations

import functools
import random

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

from bench.samples import photo_image
from training.heads.render import RGB, RenderError, dark_colour, light_colour, random_colour

# Backgrounds are named "photo:<scikit-image sample>" or "procedural:<kind>".
PROCEDURAL_KINDS = (
    "linear_gradient",
    "value_noise",
    "tiles",
    "radial_gradient",
    "stripes",
    "speckle",
)


@functools.lru_cache(maxsize=32)
def sample_photo(name: str) -> tuple[Image.Image, bool]:
    """A sample photo, and whether it is grayscale."""
    try:
        photo = photo_image(name)
    except (AttributeError, ImportError, OSError, ValueError) as exc:
        raise RenderError(
            f"scikit-image sample photo {name!r} cannot be loaded ({exc}); install the local "
            "extra (pip install -e '.[local]')"
        ) from exc
    # Crops are at most 640 px: larger sources (retina, hubble_deep_field) only cost time.
    photo.thumbnail((900, 900), Image.Resampling.LANCZOS)
    small = np.asarray(photo.resize((32, 32)), dtype=np.int16)
    return photo, bool(np.ptp(small, axis=2).max() < 4)


def background(name: str, size: tuple[int, int], rng: random.Random) -> Image.Image:
    """The background ``name`` (``photo:coffee``, ``procedural:tiles``) as an RGB canvas."""
    family, _, kind = name.partition(":")
    if family == "photo":
        return _photo_crop(*sample_photo(kind), size, rng)
    if family == "procedural" and kind in PROCEDURAL_KINDS:
        return _procedural(kind, size, rng)
    raise ValueError(f"unknown background {name!r}")


def _photo_crop(
    photo: Image.Image, gray: bool, size: tuple[int, int], rng: random.Random
) -> Image.Image:
    """A random crop of the canvas's aspect ratio, flipped, colour-jittered and resized."""
    width, height = size
    src_w, src_h = photo.size
    aspect = width / height
    full_w, full_h = (src_w, src_w / aspect) if src_w / src_h < aspect else (src_h * aspect, src_h)
    scale = rng.uniform(0.45, 1.0)
    crop_w, crop_h = max(8.0, full_w * scale), max(8.0, full_h * scale)
    left, top = rng.uniform(0, src_w - crop_w), rng.uniform(0, src_h - crop_h)
    image = photo.resize(
        size, Image.Resampling.BILINEAR, box=(left, top, left + crop_w, top + crop_h)
    )
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if gray and rng.random() < 0.5:
        # A tint keeps the grayscale samples from being recognisable by colour alone.
        image = ImageOps.colorize(
            image.convert("L"), black=dark_colour(rng), white=light_colour(rng)
        )
    return _jitter(
        image,
        brightness=rng.uniform(0.75, 1.25),
        contrast=rng.uniform(0.75, 1.25),
        saturation=rng.uniform(0.6, 1.4),
    )


def _jitter(
    image: Image.Image, *, brightness: float, contrast: float, saturation: float
) -> Image.Image:
    """Pillow's ImageEnhance Brightness, Contrast and Color in two OpenCV passes (5x faster)."""
    pixels = np.asarray(image)
    gray = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    mean = float(gray.mean()) * brightness
    # Scaling by brightness, then stretching around the mean by contrast, is one linear map.
    pixels = cv2.convertScaleAbs(pixels, alpha=brightness * contrast, beta=mean * (1 - contrast))
    gray = cv2.cvtColor(cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return Image.fromarray(cv2.addWeighted(pixels, saturation, gray, 1 - saturation, 0))


def _numpy_rng(rng: random.Random) -> np.random.Generator:
    return np.random.default_rng(rng.getrandbits(64))


def _blend(a: RGB, b: RGB, t: npt.NDArray[np.float32]) -> Image.Image:
    """Colour ``a`` where ``t`` is 0 to ``b`` where it is 1 (clipped), per pixel."""
    levels = Image.fromarray((np.clip(t, 0, 1) * 255 + 0.5).astype(np.uint8), "L")
    # colorize maps gray levels through a lookup table: far cheaper than blending in numpy.
    return ImageOps.colorize(levels, black=a, white=b)


def _grid(size: tuple[int, int]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Row and column coordinates, shaped to broadcast against each other."""
    width, height = size
    return np.arange(height, dtype=np.float32)[:, None], np.arange(width, dtype=np.float32)[None]


def _unit(t: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    low = float(t.min())
    return (t - low) / max(1e-6, float(t.max()) - low)


def linear_gradient(size: tuple[int, int], a: RGB, b: RGB, angle: float) -> Image.Image:
    """From ``a`` to ``b`` along the direction ``angle`` (radians)."""
    ys, xs = _grid(size)
    t = xs / size[0] * np.float32(np.cos(angle)) + ys / size[1] * np.float32(np.sin(angle))
    return _blend(a, b, _unit(t))


def _procedural(kind: str, size: tuple[int, int], rng: random.Random) -> Image.Image:
    width, height = size
    a, b = random_colour(rng), random_colour(rng)
    ys, xs = _grid(size)
    nrng = _numpy_rng(rng)

    def grain(sigma: float) -> npt.NDArray[np.float32]:
        noise: npt.NDArray[np.float32] = nrng.standard_normal((height, width), np.float32)
        return noise * np.float32(sigma)

    if kind == "linear_gradient":
        return linear_gradient(size, a, b, rng.uniform(0, 2 * np.pi))
    if kind == "radial_gradient":
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        return _blend(a, b, _unit(np.hypot(xs - cx, ys - cy)))
    if kind == "value_noise":
        cells = nrng.random((rng.randint(3, 9), rng.randint(3, 9)))
        small = Image.fromarray((cells * 255).astype(np.uint8))
        smooth = np.asarray(small.resize(size, Image.Resampling.BICUBIC), np.float32) / 255
        return _blend(a, b, smooth + grain(rng.uniform(0.01, 0.05)))
    if kind == "stripes":
        period = rng.uniform(12, 70)
        angle = rng.uniform(0, np.pi)
        phase = (xs * np.float32(np.cos(angle)) + ys * np.float32(np.sin(angle))) / period
        return _blend(a, b, np.abs(np.floor(phase) % 2 - grain(0.02)))
    if kind == "tiles":
        tile, grout = rng.randint(24, 80), rng.randint(1, 5)
        palette = np.array([random_colour(rng) for _ in range(rng.randint(2, 4))], np.uint8)
        choice = nrng.integers(0, len(palette), (height // tile + 1, width // tile + 1))
        pixels = palette[choice].repeat(tile, 0).repeat(tile, 1)[:height, :width]
        lines = ((ys % tile) < grout) | ((xs % tile) < grout)
        pixels[lines] = np.array(b, np.uint8) // 2
        return Image.fromarray(pixels, "RGB")
    if kind == "speckle":
        paper = _blend(dark_colour(rng), light_colour(rng), 0.97 + grain(rng.uniform(0.01, 0.04)))
        pixels = np.array(paper)
        specks = nrng.random((height, width), np.float32) < rng.uniform(0.002, 0.02)
        pixels[specks] = np.array(a, np.uint8) // 2 + 40
        return Image.fromarray(pixels, "RGB")
    raise ValueError(f"unknown procedural background {kind!r}")
