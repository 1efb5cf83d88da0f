"""A decoded frame into model input: RGB at the target size, converted tile by tile.

The decoder's frame buffer is the one full-size copy of an image that decoding keeps:
conversion to RGB (alpha over white, 16-bit and float gray scaled to 8 bits), box reduction
towards the target and the final resampling never copy a whole frame (``TILE_OVERHEAD_BYTES``
bounds what they add, docs/memory.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image

from consumer.contract.reasons import ReasonCode
from consumer.errors import ImageRejected
from consumer.runtime.settings import MiB

logger = logging.getLogger(__name__)

# Fairly accurate resampling at a fraction of the cost for large non-JPEG sources: Pillow
# box-reduces by an integer factor until the image is within 3x of the target, then
# resamples. JPEGs are already reduced in the DCT domain by draft mode.
_REDUCING_GAP = 3.0

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "PA"})
_WHITE = (255, 255, 255)

_ORIENTATION_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SWAPS_AXES = frozenset({5, 6, 7, 8})
"""Orientations under which the displayed width is the stored height."""

# Tiles of at most this many pixels a side are converted and reduced at a time.
_TILE_SIDE = 1024
TILE_OVERHEAD_BYTES = 48 * MiB
"""Memory the conversion adds to the frame buffer, at most: a few copies of one tile (float64
for high-depth images) and the box-reduced frame (within 2 x the reducing gap of the target)."""


def frame_pixels(image: Image.Image, size: int, orientation: int) -> npt.NDArray[np.uint8]:
    """The current frame as ``size`` x ``size`` RGB, converted tile by tile.

    Converting a whole frame (to RGB, premultiplied alpha, 8-bit gray) would copy it at
    full size, several times for 16-bit and float images. Instead each tile is converted,
    then box-reduced by the same integer factor Pillow's ``reducing_gap`` would use, and
    only the reduced image is resampled: memory past the decoder's own buffer stays small.
    Box reduction is local to each block of pixels, so tiles aligned to the factor give the
    same result as reducing the whole frame.
    """
    to_rgb = _rgb_converter(image)
    width, height = image.size
    factor_x = max(1, int(width / size / _REDUCING_GAP))
    factor_y = max(1, int(height / size / _REDUCING_GAP))
    if factor_x == 1 and factor_y == 1:
        reduced = to_rgb(image)
    elif to_rgb is _same:
        reduced = image.reduce((factor_x, factor_y))  # nothing to convert: no tiles needed
    else:
        reduced = Image.new("RGB", (-(-width // factor_x), -(-height // factor_y)))
        tile_width = max(factor_x, _TILE_SIDE // factor_x * factor_x)
        tile_height = max(factor_y, _TILE_SIDE // factor_y * factor_y)
        for box in _tiles(width, height, tile_width, tile_height):
            tile = to_rgb(image.crop(box)).reduce((factor_x, factor_y))
            reduced.paste(tile, (box[0] // factor_x, box[1] // factor_y))
    resized = reduced.resize(
        (size, size),
        Image.Resampling.BILINEAR,
        box=(0, 0, width / factor_x, height / factor_y),
    )
    # Orientation is applied to the small output, not the source: for a square target,
    # stretching then rotating equals rotating then stretching, and costs far less.
    transpose = _ORIENTATION_TRANSPOSE.get(orientation)
    if transpose is not None:
        resized = resized.transpose(transpose)
    pixels = np.asarray(resized, dtype=np.uint8)
    if pixels.shape != (size, size, 3):
        raise ImageRejected(
            ReasonCode.IMAGE_CORRUPT, f"decoded to an unexpected pixel layout {pixels.shape}"
        )
    return pixels


def exif_orientation(image: Image.Image) -> int:
    """EXIF (or XMP) orientation, 1 when absent or unreadable."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        # Broken metadata is common in otherwise good photos; the pixels still decode.
        logger.debug("ignoring unreadable EXIF orientation", exc_info=True)
        return 1
    return value if isinstance(value, int) and value in _ORIENTATION_TRANSPOSE else 1


ToRgb = Callable[[Image.Image], Image.Image]


def _rgb_converter(image: Image.Image) -> ToRgb:
    """A function turning tiles of ``image`` (same mode) into RGB; alpha goes over white."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return _high_depth_converter(image)
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return _over_white
    if mode == "RGB":
        return _same
    try:
        Image.new(mode, (1, 1)).convert("RGB")
    except ValueError as exc:
        raise ImageRejected(
            ReasonCode.IMAGE_UNSUPPORTED_FORMAT, f"pixel mode {mode} cannot be converted to RGB"
        ) from exc
    return _plain_rgb


def _same(tile: Image.Image) -> Image.Image:
    return tile


def _plain_rgb(tile: Image.Image) -> Image.Image:
    return tile.convert("RGB")


def _over_white(tile: Image.Image) -> Image.Image:
    rgba = tile if tile.mode == "RGBA" else tile.convert("RGBA")
    flat = Image.new("RGB", rgba.size, _WHITE)
    # An RGBA source pasted with itself as the mask blends by its alpha: alpha compositing
    # over white, without the full-size premultiplied copy that resizing RGBA makes.
    flat.paste(rgba, mask=rgba)
    return flat


def _high_depth_converter(image: Image.Image) -> ToRgb:
    """Map 16-bit, 32-bit integer or float gray levels onto 0..255 without clipping.

    16-bit samples are scaled by their nominal range, which keeps brightness. Pillow gives
    32-bit integer ("I") images no nominal range, so their values decide: 0..255 is taken
    as 8-bit, 0..65535 as 16-bit, anything else is stretched from its minimum to its
    maximum. Floats in 0..1 are scaled by 255, other floats stretched. NaN and infinities
    count as 0. The range is measured over the whole frame, a tile at a time.
    """
    if image.mode in _SIXTEEN_BIT_MODES:
        return _gray_tiles(offset=0.0, scale=1 / 257.0)
    low, high = _finite_range(image)
    if image.mode == "I" and low >= 0 and high <= 255:
        return _gray_tiles(offset=0.0, scale=1.0)
    if image.mode == "I" and low >= 0 and high <= 65535:
        return _gray_tiles(offset=0.0, scale=1 / 257.0)
    if image.mode == "F" and low >= 0 and high <= 1:
        return _gray_tiles(offset=0.0, scale=255.0)
    if high > low:
        return _gray_tiles(offset=low, scale=255.0 / (high - low))
    return _gray_tiles(offset=0.0, scale=0.0)


def _finite_range(image: Image.Image) -> tuple[float, float]:
    width, height = image.size
    low, high = np.inf, -np.inf
    for box in _tiles(width, height, _TILE_SIDE, _TILE_SIDE):
        values = _finite(image.crop(box))
        low, high = min(low, float(values.min())), max(high, float(values.max()))
    return (0.0, 0.0) if low > high else (low, high)


def _tiles(
    width: int, height: int, tile_width: int, tile_height: int
) -> Iterator[tuple[int, int, int, int]]:
    for top in range(0, height, tile_height):
        for left in range(0, width, tile_width):
            yield left, top, min(width, left + tile_width), min(height, top + tile_height)


def _finite(tile: Image.Image) -> npt.NDArray[np.float64]:
    values = np.asarray(tile).astype(np.float64)
    return np.nan_to_num(values, copy=False, nan=0.0, posinf=0.0, neginf=0.0)


def _gray_tiles(*, offset: float, scale: float) -> ToRgb:
    def convert(tile: Image.Image) -> Image.Image:
        # In place: a tile's float64 copy is the largest buffer of this path.
        values = _finite(tile)
        values -= offset
        values *= scale
        np.rint(values, out=values)
        np.clip(values, 0, 255, out=values)
        return Image.fromarray(values.astype(np.uint8)).convert("RGB")

    return convert
