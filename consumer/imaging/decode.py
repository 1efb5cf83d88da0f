"""Decode and resize images into model input, treating every byte as hostile.

``decode_image`` and ``decode_base64`` are CPU-bound and run in the pipeline's thread pool.
Every refusal is an ``ImageRejected`` whose ``code`` is a ``ReasonCode``, so dead letters and
metrics can be grouped by a stable reason.

Pillow's global settings (``MAX_IMAGE_PIXELS``, ``LOAD_TRUNCATED_IMAGES``) are left alone:
limits come from ``ImageLimits`` and are checked on the header before pixels are decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import time
import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, UnidentifiedImageError

from consumer.contract.reasons import ReasonCode
from consumer.errors import ImageRejected
from consumer.runtime.settings import ImagingSettings

logger = logging.getLogger(__name__)

# Pillow warns (on stderr, outside the JSON logs) about images past its own pixel guard and
# then decodes them anyway. As an error it is caught below and dead-letters the image; set
# once at import because warning filters are process-wide and decoding runs in threads.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

# Fairly accurate resampling at a fraction of the cost for large non-JPEG sources: Pillow
# box-reduces by an integer factor until the image is within 3x of the target, then
# resamples. JPEGs are already reduced in the DCT domain by draft mode.
_REDUCING_GAP = 3.0

_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "PA"})
_WHITE = (255, 255, 255, 255)

_ORIENTATION_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = frozenset({5, 6, 7, 8})


@dataclass(frozen=True)
class DecodedImage:
    """An image ready for the model, with what was learnt about its source."""

    pixels: npt.NDArray[np.uint8]
    """uint8, shape (size, size, 3), RGB, C-contiguous: the first frame."""
    frames: npt.NDArray[np.uint8]
    """uint8, shape (k, size, size, 3): the sampled frames, ``frames[0]`` is ``pixels``; k is
    1 for still images."""
    source_frames: int
    """Frames (or pages) in the file."""
    source_width: int
    """Width as displayed, i.e. after EXIF orientation."""
    source_height: int
    source_format: str
    """Pillow's format name: "JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF" or "MPO"."""
    decode_seconds: float
    draft_scale: int
    """Factor (1, 2, 4 or 8) by which the JPEG decoder downscaled in the DCT domain."""


@dataclass(frozen=True)
class ImageLimits:
    """Caps applied to every image before its pixels are decoded."""

    max_bytes: int
    max_pixels: int
    sample_frames: int = 4
    """Frames classified per animated image (or pages per multi-page file), evenly spaced."""
    max_frames: int = 1000
    """Animated images with more frames than this are refused."""

    @classmethod
    def from_settings(cls, settings: ImagingSettings) -> ImageLimits:
        return cls(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_pixels,
            sample_frames=settings.sample_frames,
            max_frames=settings.max_frames,
        )


def decode_base64(text: str, limits: ImageLimits) -> bytes:
    """Decode strict standard base64 (no whitespace, correct padding) into image bytes.

    Raises ImageRejected: ``image_too_large`` (judged from the text length, before decoding)
    or ``invalid_base64``.
    """
    padding = 2 if text.endswith("==") else 1 if text.endswith("=") else 0
    decoded_size = len(text) * 3 // 4 - padding
    if decoded_size > limits.max_bytes:
        raise ImageRejected(
            ReasonCode.IMAGE_TOO_LARGE,
            f"base64 payload decodes to about {decoded_size} bytes, over the limit of "
            f"{limits.max_bytes}",
        )
    if len(text) % 4:
        # Python's decoder forgives some padding mistakes; the contract says RFC 4648.
        raise ImageRejected(
            ReasonCode.INVALID_BASE64,
            f"image payload is not valid base64: its length {len(text)} is not a multiple of 4",
        )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageRejected(
            ReasonCode.INVALID_BASE64, f"image payload is not valid base64: {exc}"
        ) from exc


def decode_image(data: bytes, size: int, limits: ImageLimits) -> DecodedImage:
    """Decode ``data`` and stretch the whole image to ``size`` x ``size`` RGB.

    The aspect ratio is not kept, matching the nsfwjs preprocessing the models were trained
    with. Transparent areas are composited over white. Animated images (GIF, WebP, APNG) and
    multi-page TIFFs contribute up to ``limits.sample_frames`` frames, evenly spaced from the
    first to the last, so a bad frame late in an animation is seen too (MPO: first picture).

    Raises ImageRejected with code ``image_empty``, ``image_too_large``,
    ``image_too_many_pixels``, ``image_too_many_frames``, ``image_unsupported_format`` or
    ``image_corrupt``; no other exception escapes for bad input.
    """
    if size < 1:
        raise ValueError(f"target size must be positive, not {size}")
    started = time.perf_counter()
    if not data:
        raise ImageRejected(ReasonCode.IMAGE_EMPTY, "image payload is empty")
    if len(data) > limits.max_bytes:
        raise ImageRejected(
            ReasonCode.IMAGE_TOO_LARGE,
            f"image is {len(data)} bytes, over the limit of {limits.max_bytes}",
        )
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
            return _decode_opened(image, size, limits, started)
    except (ImageRejected, MemoryError):
        # Pixels are capped before decoding, so running out of memory says more about the
        # host than about this image: let it surface rather than dead-letter the event.
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(
            ReasonCode.IMAGE_TOO_MANY_PIXELS, f"image has too many pixels: {exc}"
        ) from exc
    except UnidentifiedImageError as exc:
        if data.startswith(_SUPPORTED_SIGNATURES):
            # The signature of a format we read, but Pillow could not even parse the header.
            raise ImageRejected(
                ReasonCode.IMAGE_CORRUPT,
                "image header is corrupt: it starts like a supported format",
            ) from exc
        raise ImageRejected(
            ReasonCode.IMAGE_UNSUPPORTED_FORMAT,
            f"not an image in a supported format ({', '.join(ALLOWED_FORMATS)})",
        ) from exc
    except Exception as exc:
        # Pillow's decoders raise a zoo of types on malformed input (OSError, SyntaxError,
        # struct.error, IndexError, ...): all of them mean the bytes are bad.
        raise ImageRejected(
            ReasonCode.IMAGE_CORRUPT,
            f"image data is corrupt or truncated: {type(exc).__name__}: {exc}",
        ) from exc


def _decode_opened(
    image: Image.Image, size: int, limits: ImageLimits, started: float
) -> DecodedImage:
    source_format = image.format or "unknown"
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageRejected(
            ReasonCode.IMAGE_CORRUPT, f"image declares an empty size {width}x{height}"
        )
    if width * height > limits.max_pixels:
        raise ImageRejected(
            ReasonCode.IMAGE_TOO_MANY_PIXELS,
            f"image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{limits.max_pixels}",
        )

    source_frames = int(getattr(image, "n_frames", 1) or 1)
    if source_frames > limits.max_frames:
        raise ImageRejected(
            ReasonCode.IMAGE_TOO_MANY_FRAMES,
            f"image has {source_frames} frames, over the limit of {limits.max_frames}",
        )
    # An MPO's extra pictures are other views (stereo, depth) of the same scene: the first
    # is enough, and keeps the DCT-domain downscaling that makes phone photos cheap.
    wanted = 1 if source_format == "MPO" else limits.sample_frames
    indices = sample_indices(source_frames, wanted)
    # Frames of GIF/APNG/WebP are deltas: reaching frame k decodes the k before it.
    decoded_pixels = (indices[-1] + 1) * width * height
    if decoded_pixels > limits.max_pixels * limits.sample_frames:
        raise ImageRejected(
            ReasonCode.IMAGE_TOO_MANY_PIXELS,
            f"sampling {len(indices)} of {source_frames} frames of {width}x{height} means "
            f"decoding {decoded_pixels} pixels, over the limit of "
            f"{limits.max_pixels * limits.sample_frames} (max pixels x frames sampled)",
        )

    draft_scale = 1
    if source_format in _DRAFT_FORMATS and indices == [0]:
        drafted = image.draft("RGB", (size, size))
        if drafted is not None and drafted[1][2] > 0:
            draft_scale = max(1, round(width / drafted[1][2]))

    image.load()
    orientation = _orientation(image)
    frames = []
    for index in indices:
        if index:
            image.seek(index)
            image.load()
        frames.append(_frame_pixels(image, size, orientation))
    if orientation in _SWAPS_AXES:
        width, height = height, width
    stacked = np.ascontiguousarray(np.stack(frames))
    return DecodedImage(
        pixels=stacked[0],
        frames=stacked,
        source_frames=source_frames,
        source_width=width,
        source_height=height,
        source_format=source_format,
        decode_seconds=time.perf_counter() - started,
        draft_scale=draft_scale,
    )


def sample_indices(frames: int, wanted: int) -> list[int]:
    """Up to ``wanted`` distinct frame indices, evenly spaced, always the first and last."""
    if frames <= 1 or wanted <= 1:
        return [0]
    count = min(frames, wanted)
    return sorted({round(i * (frames - 1) / (count - 1)) for i in range(count)})


def _frame_pixels(image: Image.Image, size: int, orientation: int) -> npt.NDArray[np.uint8]:
    resized = _to_rgb_or_rgba(image).resize(
        (size, size), Image.Resampling.BILINEAR, reducing_gap=_REDUCING_GAP
    )
    if resized.mode == "RGBA":
        background = Image.new("RGBA", resized.size, _WHITE)
        resized = Image.alpha_composite(background, resized).convert("RGB")
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


def _orientation(image: Image.Image) -> int:
    """EXIF (or XMP) orientation, 1 when absent or unreadable."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        # Broken metadata is common in otherwise good photos; the pixels still decode.
        logger.debug("ignoring unreadable EXIF orientation", exc_info=True)
        return 1
    return value if isinstance(value, int) and value in _ORIENTATION_TRANSPOSE else 1


def _to_rgb_or_rgba(image: Image.Image) -> Image.Image:
    """Convert any decoded mode to RGB, or RGBA when the image has transparency."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        gray = _high_depth_to_uint8(np.asarray(image))
        return Image.fromarray(gray).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return image if mode == "RGBA" else image.convert("RGBA")
    if mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageRejected(
            ReasonCode.IMAGE_UNSUPPORTED_FORMAT, f"pixel mode {mode} cannot be converted to RGB"
        ) from exc


def _high_depth_to_uint8(values: npt.NDArray[np.generic]) -> npt.NDArray[np.uint8]:
    """Map 16-bit, 32-bit integer or float gray levels onto 0..255 without clipping.

    16-bit samples are scaled by their nominal range, which keeps brightness. Pillow gives
    32-bit integer ("I") images no nominal range, so their values decide: 0..255 is taken
    as 8-bit, 0..65535 as 16-bit, anything else is stretched from its minimum to its
    maximum. Floats in 0..1 are scaled by 255, other floats stretched.
    """
    as_float = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low = float(as_float.min()) if as_float.size else 0.0
    high = float(as_float.max()) if as_float.size else 0.0
    kind = values.dtype.kind
    if kind == "u" and values.dtype.itemsize == 2:
        scaled = as_float / 257.0
    elif kind in "iu" and low >= 0 and high <= 255:
        scaled = as_float
    elif kind in "iu" and low >= 0 and high <= 65535:
        scaled = as_float / 257.0
    elif kind == "f" and low >= 0 and high <= 1:
        scaled = as_float * 255.0
    elif high > low:
        scaled = (as_float - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(as_float)
    gray: npt.NDArray[np.uint8] = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return gray


_SUPPORTED_SIGNATURES = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",  # JPEG
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
)
