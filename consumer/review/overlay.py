"""A heat map drawn over the image a reviewer sees, as JPEG."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from PIL import Image

if TYPE_CHECKING:
    from consumer.review.saliency import HeatMap

# Matplotlib's 'inferno' sampled at nine evenly spaced points: dark to bright with lightness
# rising steadily, so a stronger colour always means more evidence, in greyscale too.
_INFERNO_STOPS = np.array(
    [
        (0, 0, 4),
        (33, 12, 74),
        (87, 16, 110),
        (138, 34, 106),
        (188, 55, 84),
        (228, 90, 49),
        (249, 142, 9),
        (249, 203, 53),
        (252, 255, 164),
    ],
    dtype=np.float64,
)


def _lut(stops: npt.NDArray[np.float64]) -> npt.NDArray[np.uint8]:
    levels = np.linspace(0.0, 1.0, 256)
    anchors = np.linspace(0.0, 1.0, len(stops))
    channels = [np.interp(levels, anchors, stops[:, c]) for c in range(3)]
    lut: npt.NDArray[np.uint8] = np.round(np.stack(channels, axis=1)).astype(np.uint8)
    return lut


INFERNO: npt.NDArray[np.uint8] = _lut(_INFERNO_STOPS)
"""(256, 3) uint8 colour map."""


def overlay_jpeg(
    image: Image.Image, heat: HeatMap, *, alpha: float = 0.45, quality: int = 85
) -> bytes:
    """``heat`` coloured and blended over ``image`` at its own size, as JPEG bytes.

    The model saw the whole image stretched to a square, so resizing the map to the image's
    size puts every value back over the pixels it came from. Each pixel's blend weight is
    ``alpha`` times its heat, so areas without evidence keep their own colours.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = image.convert("RGB")
    heat_image = Image.fromarray(np.asarray(heat.values, dtype=np.float32), mode="F")
    values = np.clip(np.asarray(heat_image.resize(rgb.size, Image.Resampling.BILINEAR)), 0, 1)
    colours = INFERNO[np.round(values * 255).astype(np.uint8)].astype(np.float32)
    weight = (alpha * values)[..., None]
    blended = (1.0 - weight) * np.asarray(rgb, dtype=np.float32) + weight * colours
    out = io.BytesIO()
    Image.fromarray(np.clip(np.round(blended), 0, 255).astype(np.uint8)).save(
        out, format="JPEG", quality=quality
    )
    return out.getvalue()
