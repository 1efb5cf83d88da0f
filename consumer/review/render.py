"""What a reviewer's browser receives for an image: never the uploaded file itself.

Every image is decoded under the consumer's limits (bytes, pixels, frames, decode memory)
and re-encoded as a JPEG of bounded size, so nothing in an upload but its pixels reaches the
browser (no metadata, no polyglot payload, no format the browser would sniff). CPU-bound:
the page runs these in a worker thread.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from dataclasses import dataclass

from PIL import Image, ImageOps

from consumer.errors import ImageRejected
from consumer.imaging.decode import DecodedImage, ImageLimits, decode_image
from consumer.review.overlay import overlay_jpeg
from consumer.review.records import RecordUnavailable
from consumer.review.saliency import SaliencyModel

MODEL_INPUT_SIZE = 224
JPEG_QUALITY = 85


@dataclass(frozen=True)
class Shown:
    """An image ready for the browser, and what the model saw of it."""

    display: Image.Image
    model_input: DecodedImage


def prepare(
    data: bytes, limits: ImageLimits, max_side: int, model_size: int = MODEL_INPUT_SIZE
) -> Shown:
    """Check ``data`` against every limit, then build the displayed picture (and the model's
    ``model_size`` input, for heat maps).

    Raises RecordUnavailable when the image breaks a limit or cannot be decoded.
    """
    try:
        # First, exactly the consumer's checks and decode: refuses what the consumer refused.
        model_input = decode_image(data, model_size, limits)
    except ImageRejected as exc:
        raise RecordUnavailable(f"the image cannot be shown: {exc}") from exc
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.draft("RGB", (max_side, max_side))
            upright = ImageOps.exif_transpose(opened)
            display = upright.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise RecordUnavailable(f"the image cannot be shown: {exc}") from exc
    display.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return Shown(display, model_input)


def display_jpeg(shown: Shown) -> bytes:
    buffer = io.BytesIO()
    shown.display.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def saliency_jpeg(
    shown: Shown, model: SaliencyModel, category: str, heads_version: str | None
) -> bytes:
    """The heat map of ``category`` over the displayed image. Raises SaliencyUnavailable."""
    heat = model.explain(shown.model_input.pixels, category, heads_version)
    return overlay_jpeg(shown.display, heat, quality=JPEG_QUALITY)


class ShownCache:
    """The last few prepared images: the image and its heat maps are separate requests, and
    a reviewer flips between categories; each should not read Kafka and decode again."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, str], Shown] = OrderedDict()

    def get(self, key: tuple[str, str]) -> Shown | None:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: tuple[str, str], shown: Shown) -> None:
        self._items[key] = shown
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)
